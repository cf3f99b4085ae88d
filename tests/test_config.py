"""Tests for util/config.py and the 32 shipped configs (config/{pascal,coco}/*.yaml)."""

from __future__ import annotations

import copy
import os
import pickle
import textwrap

import pytest

from tools import make_configs
from util.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_argparser,
    load_config,
    parse_args,
    save_config,
)

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_yaml(tmp_path, text: str, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


SAMPLE = """\
    Data:
      data_root: ../data/somewhere
      split: 0
      scale_min: 0.9
      use_split_coco: False
      layer_list: [1, 2]
    Train:
      base_lr: 0.005
      epochs: 200
      resume: ''
      optional_thing:
    Method:
      low_fea: 'layer2'
    Empty_Section:
"""


@pytest.fixture
def sample_path(tmp_path):
    return write_yaml(tmp_path, SAMPLE)


# ------------------------------------------------------------------------------- loading
def test_sections_flatten_into_one_namespace(sample_path):
    config = load_config(sample_path)
    assert config.data_root == "../data/somewhere"
    assert config["base_lr"] == 0.005
    assert config.low_fea == "layer2"
    assert config.optional_thing is None
    assert set(config.keys()) == {
        "data_root", "split", "scale_min", "use_split_coco", "layer_list",
        "base_lr", "epochs", "resume", "optional_thing", "low_fea",
    }
    assert config.section_of("epochs") == "Train"
    assert config.section_of("split") == "Data"
    assert config.to_dict()["layer_list"] == [1, 2]
    assert "epochs" in config and "missing" not in config
    assert config.get("missing", 7) == 7


def test_key_in_two_sections_is_an_error_naming_both(tmp_path):
    path = write_yaml(tmp_path, """\
        Data:
          layers: 50
        Train:
          epochs: 3
        Method:
          layers: 101
    """)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "layers" in message and "'Data'" in message and "'Method'" in message


def test_key_repeated_in_one_section_is_an_error(tmp_path):
    path = write_yaml(tmp_path, """\
        Train:
          epochs: 3
          epochs: 4
    """)
    with pytest.raises(ConfigError, match="duplicate key 'epochs'"):
        load_config(path)


def test_top_level_scalar_is_rejected(tmp_path):
    path = write_yaml(tmp_path, """\
        Train:
          epochs: 3
        base_lr: 0.1
    """)
    with pytest.raises(ConfigError, match="base_lr"):
        load_config(path)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_config(str(tmp_path / "nope.yaml"))


# ----------------------------------------------------------------------------- overrides
def test_overrides_parse_and_keep_types(sample_path):
    config = load_config(sample_path, [
        "split", "2",                      # int
        "scale_min", "0.75",               # float
        "base_lr", "1",                    # int accepted for float, stored as float
        "use_split_coco", "True",          # bool
        "data_root", "/data/other path",   # not a literal: the raw string is kept
        "low_fea", "'layer3'",             # a quoted string literal
        "layer_list", "(3, 4, 5)",         # tuple accepted for list, stored as list
        "optional_thing", "[1, 'a']",      # None in the file accepts anything
    ])
    assert config.split == 2 and type(config.split) is int
    assert config.scale_min == 0.75
    assert config.base_lr == 1.0 and type(config.base_lr) is float
    assert config.use_split_coco is True
    assert config.data_root == "/data/other path"
    assert config.low_fea == "layer3"
    assert config.layer_list == [3, 4, 5] and type(config.layer_list) is list
    assert config.optional_thing == [1, "a"]


def test_override_of_none_field_and_empty_string(sample_path):
    config = load_config(sample_path, ["optional_thing", "3", "resume", ""])
    assert config.optional_thing == 3
    assert config.resume == ""


def test_overrides_never_evaluate_code(sample_path, tmp_path):
    marker = tmp_path / "marker"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    config = load_config(sample_path, ["data_root", payload])
    assert config.data_root == payload  # kept as text, not executed
    assert not marker.exists()


@pytest.mark.parametrize("key, value, file_type", [
    ("split", "0.5", "int"),        # float for int
    ("split", "True", "int"),       # bool is not accepted for int
    ("base_lr", "fast", "float"),   # str for float
    ("base_lr", "True", "float"),   # bool is an int subclass, but not accepted for float
    ("use_split_coco", "1", "bool"),
    ("resume", "None", "str"),      # None for a non-None value
    ("layer_list", "7", "list"),
    ("low_fea", "2", "str"),
])
def test_wrong_type_is_an_error_naming_key_type_and_value(sample_path, key, value, file_type):
    with pytest.raises(ConfigError) as error:
        load_config(sample_path, [key, value])
    message = str(error.value)
    assert key in message and file_type in message and value in message


def test_unknown_key_fails_with_suggestion(sample_path):
    with pytest.raises(ConfigError) as error:
        load_config(sample_path, ["bsae_lr", "0.1"])
    assert "bsae_lr" in str(error.value) and "base_lr" in str(error.value)
    with pytest.raises(ConfigError, match="USE_SPLIT_COCO.*use_split_coco"):
        load_config(sample_path, ["USE_SPLIT_COCO", "True"])
    with pytest.raises(ConfigError, match="no similar key"):
        load_config(sample_path, ["zzzzqqqq", "1"])


def test_dangling_key_is_an_error(sample_path):
    with pytest.raises(ConfigError, match="'epochs' has no value"):
        load_config(sample_path, ["split", "1", "epochs"])


def test_all_problems_reported_and_nothing_applied(sample_path):
    config = load_config(sample_path)
    with pytest.raises(ConfigError) as error:
        apply_overrides(config, ["split", "3", "epoch", "5", "base_lr", "x"])
    message = str(error.value)
    assert "epoch" in message and "epochs" in message and "base_lr" in message
    assert config.split == 0  # the valid override was not applied either


# ---------------------------------------------------------------------------- the object
def test_attribute_and_item_access_and_runtime_keys(sample_path):
    config = load_config(sample_path)
    config.split = 3
    config["epochs"] = 9
    config.distributed = True  # a run-time key
    assert config["split"] == 3 and config.epochs == 9 and config.distributed is True
    assert config.section_of("distributed") == "Runtime"
    with pytest.raises(AttributeError, match="did you mean 'epochs'"):
        config.epoch
    with pytest.raises(KeyError):
        config["epoch"]
    with pytest.raises(ConfigError, match="reserved"):
        config.copy = 1
    with pytest.raises(ConfigError, match="reserved"):
        Config({"to_dict": 1})


def test_pickle_and_copy(sample_path):
    config = load_config(sample_path)
    restored = pickle.loads(pickle.dumps(config))
    assert restored == config and restored.to_dict() == config.to_dict()
    assert restored.section_of("epochs") == "Train"

    shallow = copy.copy(config)
    assert shallow == config
    deep = copy.deepcopy(config)
    deep.layer_list.append(99)
    assert config.layer_list == [1, 2]
    independent = config.copy()
    independent.split = 1
    assert config.split == 0

    exported = config.to_dict()
    exported["layer_list"].append(5)
    assert config.layer_list == [1, 2]
    assert type(exported) is dict


def test_save_and_load_round_trip(sample_path, tmp_path):
    config = load_config(sample_path, ["base_lr", "0.02", "layer_list", "[7]"])
    config.world_size = 4  # run-time key goes to the Runtime section
    output = tmp_path / "out" / "resolved.yaml"
    save_config(config, output)
    reloaded = load_config(output)
    assert reloaded.to_dict() == config.to_dict()
    assert reloaded.section_of("base_lr") == "Train"
    assert reloaded.section_of("world_size") == "Runtime"


def test_save_plain_dict(tmp_path):
    values = {"a": 1, "b": (1, 2), "c": None, "d": "x"}
    save_config(values, tmp_path / "plain.yaml")
    assert load_config(tmp_path / "plain.yaml").to_dict() == {"a": 1, "b": [1, 2], "c": None, "d": "x"}


# --------------------------------------------------------------------------- command line
def test_argument_parser_and_parse_args(sample_path):
    parser = config_argparser("test")
    arguments = parser.parse_args(["--config", sample_path, "--local_rank=1",
                                   "--opts", "split", "2", "base_lr", "0.1"])
    assert arguments.config == sample_path
    assert arguments.local_rank == 1
    assert arguments.opts == ["split", "2", "base_lr", "0.1"]

    config = parse_args(["--local-rank", "3", "--config", sample_path, "--opts", "epochs", "7"])
    assert config.epochs == 7
    assert config.local_rank == 3
    assert config.config_file == sample_path

    config = parse_args(["--config", sample_path])
    assert config.local_rank is None and config.split == 0
    with pytest.raises(SystemExit):
        config_argparser("test").parse_args([])  # --config is required


# -------------------------------------------------------------------- the shipped configs
# The released checkpoint names of the original SCCAN repository, transcribed by hand (an
# independent source from tools/make_configs.py).
EXPECTED_WEIGHTS = {
    "pascal_split0_resnet101": "train_epoch_96_0.6907.pth",
    "pascal_split0_resnet101_5s": "train5_epoch_33_0.7155.pth",
    "pascal_split0_resnet50": "win8_train_epoch_43_0.6753.pth",
    "pascal_split0_resnet50_5s": "win8_train5_epoch_21_0.6987.pth",
    "pascal_split1_resnet101": "train_epoch_136_0.7397.pth",
    "pascal_split1_resnet101_5s": "train5_epoch_79_0.7524.pth",
    "pascal_split1_resnet50": "win8_train_epoch_124_0.7262.pth",
    "pascal_split1_resnet50_5s": "win8_train5_epoch_150_0.7425.pth",
    "pascal_split2_resnet101": "train_epoch_36_0.6629.pth",
    "pascal_split2_resnet101_5s": "train5_epoch_46_0.6945.pth",
    "pascal_split2_resnet50": "win8_train_epoch_47_0.6718.pth",
    "pascal_split2_resnet50_5s": "win8_train5_epoch_48_0.7014.pth",
    "pascal_split3_resnet101": "train_epoch_192_0.6158.pth",
    "pascal_split3_resnet101_5s": "train5_epoch_42_0.6652.pth",
    "pascal_split3_resnet50": "win8_train_epoch_93_0.6053.pth",
    "pascal_split3_resnet50_5s": "win8_train5_epoch_45_0.6687.pth",
    "coco_split0_resnet101": "train_epoch_43_0.4168.pth",
    "coco_split0_resnet101_5s": "train5_epoch_47_0.4903.pth",
    "coco_split0_resnet50": "train_epoch_36_0.3953.pth",
    "coco_split0_resnet50_5s": "train5_epoch_33.5_0.4571.pth",
    "coco_split1_resnet101": "train_epoch_24.5_0.5129.pth",
    "coco_split1_resnet101_5s": "train5_epoch_46.5_0.5927.pth",
    "coco_split1_resnet50": "train_epoch_37.5_0.4933.pth",
    "coco_split1_resnet50_5s": "train5_epoch_46.5_0.5641.pth",
    "coco_split2_resnet101": "train_epoch_41.5_0.4836.pth",
    "coco_split2_resnet101_5s": "train5_epoch_32.5_0.5936.pth",
    "coco_split2_resnet50": "train_epoch_41.5_0.4734.pth",
    "coco_split2_resnet50_5s": "train5_epoch_43.5_0.5649.pth",
    "coco_split3_resnet101": "train_epoch_42.5_0.4671.pth",
    "coco_split3_resnet101_5s": "train5_epoch_49_0.5271.pth",
    "coco_split3_resnet50": "train_epoch_48.5_0.4428.pth",
    "coco_split3_resnet50_5s": "train5_epoch_48_0.5066.pth",
}

# Values shared by every paper config (the original's, plus keys this re-implementation adds),
# checked with their types.
SHARED_VALUES = {
    "train_h": 473, "train_w": 473, "val_size": 473,
    "rotate_min": -10, "rotate_max": 10,
    "ignore_label": 255, "padding_label": 255,
    "base_lr": 0.005, "transformer_lr": 0.00006, "power": 0.9, "momentum": 0.9,
    "weight_decay": 0.0001, "index_split": -1, "warmup": False, "stop_interval": 75,
    "evaluate": True, "SubEpoch_val": True, "fix_random_seed_val": True, "batch_size_val": 1,
    "resized_val": True, "ori_resize": True, "workers": 8, "fix_bn": True, "manual_seed": 321,
    "seed_deterministic": False, "zoom_factor": 8, "aux_weight1": 1.0, "aux_weight2": 1.0,
    "low_fea": "layer2", "kshot_trans_dim": 2, "merge": "final", "merge_tau": 0.9,
    "ann_type": "mask", "print_freq": 10, "classes": 2, "pretrained_backbone": True,
    "feature_size": 64, "window_size": 8, "resume": "", "viz": False,
}

DATASET_VALUES = {
    "pascal": {
        "data_set": "pascal", "data_root": "../data/VOCdevkit2012/VOC2012",
        "train_list": "./lists/pascal/voc_sbd_merge_noduplicate.txt",
        "val_list": "./lists/pascal/val.txt",
        "scale_min": 0.9, "scale_max": 1.1, "batch_size": 8, "epochs": 200, "save_freq": 10,
        "test_num": 1000, "use_split_coco": False,
    },
    "coco": {
        "data_set": "coco", "data_root": "../data/MSCOCO2014",
        "train_list": "./lists/coco/train.txt", "val_list": "./lists/coco/val.txt",
        "scale_min": 0.8, "scale_max": 1.25, "batch_size": 2, "epochs": 50, "save_freq": 5,
        "test_num": 4000, "use_split_coco": True,
    },
}


def shipped_config_path(name: str) -> str:
    dataset = name.split("_")[0]
    return os.path.join(REPOSITORY_ROOT, "config", dataset, name + ".yaml")


def test_exactly_the_32_configs_are_shipped():
    shipped = set()
    for dataset in ("pascal", "coco"):
        folder = os.path.join(REPOSITORY_ROOT, "config", dataset)
        shipped |= {name[:-5] for name in os.listdir(folder) if name.endswith(".yaml")}
    assert shipped == set(EXPECTED_WEIGHTS)


@pytest.mark.parametrize("name", sorted(EXPECTED_WEIGHTS))
def test_shipped_config_values(name):
    config = load_config(shipped_config_path(name))
    dataset, split_part, backbone_part = name.split("_")[:3]
    expected = dict(SHARED_VALUES)
    expected.update(DATASET_VALUES[dataset])
    layers = int(backbone_part[len("resnet"):])
    expected.update({
        "split": int(split_part[len("split"):]),
        "layers": layers,
        "shot": 5 if name.endswith("_5s") else 1,
        "weight": EXPECTED_WEIGHTS[name],
        "backbone_weights": f"initmodel/resnet{layers}_v2.pth",
    })
    for key, value in expected.items():
        assert key in config, f"{name}: missing {key}"
        assert config[key] == value, f"{name}: {key} = {config[key]!r}, expected {value!r}"
        assert type(config[key]) is type(value), f"{name}: {key} has type {type(config[key])}"
    assert {"Data", "Train", "Method", "Test_Finetune"} <= set(config.sections())


def test_shipped_configs_share_one_key_set_and_layout():
    reference = load_config(shipped_config_path("pascal_split0_resnet50"))
    for name in EXPECTED_WEIGHTS:
        config = load_config(shipped_config_path(name))
        assert config.sections() == reference.sections(), name


def test_shipped_configs_match_the_generator():
    for relative_path, text in make_configs.all_configs().items():
        with open(os.path.join(REPOSITORY_ROOT, relative_path), encoding="utf-8") as handle:
            assert handle.read() == text, f"{relative_path} is out of date: run python -m tools.make_configs"


def test_shipped_config_overrides_and_round_trip(tmp_path):
    config = load_config(shipped_config_path("coco_split2_resnet101_5s"),
                         ["split", "3", "base_lr", "0.01", "weight", "my_model.pth",
                          "SubEpoch_val", "False"])
    assert (config.split, config.base_lr, config.weight, config.SubEpoch_val) == (3, 0.01, "my_model.pth", False)
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        load_config(shipped_config_path("coco_split2_resnet101_5s"), ["batchsize", "4"])
