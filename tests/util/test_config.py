"""Tests for util/config.py, the key schema (util/config_schema.py) and the shipped configs
(config/{pascal,coco}/*.yaml, config/toy/*.yaml)."""

from __future__ import annotations

import ast
import copy
import glob
import os
import pickle
import textwrap
import warnings

import pytest
import yaml

import util.config
from tools import make_configs
from util.config import (
    Config,
    ConfigError,
    LegacyKeyWarning,
    apply_overrides,
    config_argparser,
    load_config,
    parse_args,
    save_config,
)
from tests.support import REPOSITORY_ROOT
from util.config_schema import SCHEMA, check_type, config_value, default_values


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
    Train:
      base_lr: 0.005
      epochs: 200
      resume: ''
    Method:
      low_fea: 'layer2'
    Test_Finetune:
      ann_type: 'mask'
    Runtime:
      local_rank:
    Empty_Section:
"""
SAMPLE_KEYS = {"data_root", "split", "scale_min", "use_split_coco", "base_lr", "epochs", "resume",
               "low_fea", "ann_type", "local_rank"}


@pytest.fixture(autouse=True)
def fresh_legacy_warnings():
    """Legacy keys warn once per process: forget the keys warned about by earlier tests."""
    util.config._warned_legacy_keys.clear()
    yield
    util.config._warned_legacy_keys.clear()


@pytest.fixture
def sample_path(tmp_path):
    return write_yaml(tmp_path, SAMPLE)


# ------------------------------------------------------------------------------- loading
def test_sections_flatten_into_one_namespace(sample_path):
    config = load_config(sample_path)
    assert config.data_root == "../data/somewhere"
    assert config["base_lr"] == 0.005
    assert config.low_fea == "layer2"
    assert config.local_rank is None
    assert set(config.keys()) == set(SCHEMA)  # the keys the file leaves out have their defaults
    assert config.section_of("epochs") == "Train"
    assert config.section_of("split") == "Data"
    assert config.section_of("local_rank") == "Runtime"
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
        "ann_type", "'bbox'",              # a quoted string literal
        "local_rank", "2",                 # an optional int
    ])
    assert config.split == 2 and type(config.split) is int
    assert config.scale_min == 0.75
    assert config.base_lr == 1.0 and type(config.base_lr) is float
    assert config.use_split_coco is True
    assert config.data_root == "/data/other path"
    assert config.ann_type == "bbox"
    assert config.local_rank == 2


def test_override_of_optional_key_and_empty_string(sample_path):
    config = load_config(sample_path, ["local_rank", "3", "resume", ""])
    assert config.local_rank == 3
    assert config.resume == ""
    assert load_config(sample_path, ["local_rank", "None"]).local_rank is None


def test_overrides_never_evaluate_code(sample_path, tmp_path):
    marker = tmp_path / "marker"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    config = load_config(sample_path, ["data_root", payload])
    assert config.data_root == payload  # kept as text, not executed
    assert not marker.exists()


@pytest.mark.parametrize("key, value, schema_type", [
    ("split", "0.5", "int"),        # float for int
    ("split", "True", "int"),       # bool is not accepted for int
    ("base_lr", "fast", "float"),   # str for float
    ("base_lr", "True", "float"),   # bool is an int subclass, but not accepted for float
    ("use_split_coco", "1", "bool"),
    ("resume", "None", "str"),      # None for a key that is not optional
    ("local_rank", "'a'", "int"),   # an optional key still has a type
    ("ann_type", "2", "str"),
])
def test_wrong_type_is_an_error_naming_key_type_and_value(sample_path, key, value, schema_type):
    with pytest.raises(ConfigError) as error:
        load_config(sample_path, [key, value])
    message = str(error.value)
    assert key in message and schema_type in message and value in message


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
    config.layer_list = [1, 2]  # a nested run-time value (no schema key holds a list)
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
    config = load_config(sample_path, ["base_lr", "0.02"])
    config.local_rank = 4  # a run-time key, in the Runtime section
    output = tmp_path / "out" / "resolved.yaml"
    save_config(config, output)
    saved = yaml.safe_load(output.read_text())
    assert {key for section in saved.values() for key in section} == set(SCHEMA)  # resolved
    reloaded = load_config(output)
    assert reloaded.to_dict() == config.to_dict()
    assert reloaded.section_of("base_lr") == "Train"
    assert reloaded.section_of("random_backbone_residual_gain") == "Method"  # a default's section
    assert reloaded.section_of("local_rank") == "Runtime"
    assert reloaded.config_file == sample_path  # the file it was resolved from, not the copy


def test_save_plain_dict(tmp_path):
    values = {"split": 1, "base_lr": 0.01, "local_rank": None, "data_root": "x"}
    save_config(values, tmp_path / "plain.yaml")
    loaded = load_config(tmp_path / "plain.yaml")
    assert {key: loaded[key] for key in values} == values
    assert loaded.section_of("split") == "Runtime" and loaded.epochs == SCHEMA["epochs"].default


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


# ------------------------------------------------------------------------------ the schema
def flat_yaml(path: str) -> dict:
    """Key -> value of a sectioned YAML file, read without the loader under test."""
    with open(path, encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    return {key: value for section in document.values() if section for key, value in section.items()}


SHIPPED_CONFIGS = sorted(glob.glob(os.path.join(REPOSITORY_ROOT, "config", "*", "*.yaml")))
PAPER_CONFIGS = [path for path in SHIPPED_CONFIGS if os.sep + "toy" + os.sep not in path]


def test_the_shipped_configs_are_32_paper_and_2_toy():
    assert len(SHIPPED_CONFIGS) == 34 and len(PAPER_CONFIGS) == 32


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=os.path.basename)
def test_shipped_config_loads_to_its_values_and_the_schema_defaults(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", LegacyKeyWarning)  # no shipped config sets a legacy key
        config = load_config(path)
    written = flat_yaml(path)
    for key, value in written.items():
        assert config[key] == value and type(config[key]) is type(value), key  # kept as written
    defaults = default_values()
    defaults["config_file"] = path
    for key in set(SCHEMA) - set(written):
        assert config[key] == defaults[key], key
        assert config.section_of(key) == SCHEMA[key].section
    assert set(config.keys()) == set(SCHEMA)


def test_schema_defaults_are_the_values_all_paper_configs_share():
    files = [flat_yaml(path) for path in PAPER_CONFIGS]
    shared = {key: value for key, value in files[0].items()
              if all(key in other and other[key] == value for other in files)}
    assert len(shared) > 40  # most keys are shared: the comparison is not vacuous
    for key, value in shared.items():
        assert SCHEMA[key].default == value, key
        check_type(key, value, convert=False)


def test_schema_entries_are_consistent():
    sections = {"Data", "Train", "Method", "Test_Finetune", "Distributed", "Runtime"}
    for key, entry in SCHEMA.items():
        assert entry.section in sections and entry.help, key
        check_type(key, entry.default, convert=False)  # every default has its own type
        assert not hasattr(Config, key), key  # would be shadowed by a Config method
    legacy = {key for key, entry in SCHEMA.items() if entry.legacy}
    assert legacy == {"classes", "dist_url", "dist_backend", "multiprocessing_distributed",
                      "world_size", "rank", "low_fea", "kshot_trans_dim", "merge", "merge_tau"}


def test_minimal_config_gets_the_schema_defaults(tmp_path):
    path = write_yaml(tmp_path, """\
        Data:
          split: 2
    """)
    config = load_config(path)
    assert config.split == 2
    assert config.base_lr == 0.005 and config.feature_dropout == 0.5 and config.layers == 50
    assert config.section_of("base_lr") == "Train" and config.section_of("layers") == "Method"
    assert config.config_file == path and config.local_rank is None
    assert load_config(write_yaml(tmp_path, "", name="empty.yaml")).to_dict().keys() == SCHEMA.keys()


def test_wrong_typed_file_values_are_errors_naming_file_key_and_type(tmp_path):
    path = write_yaml(tmp_path, """\
        Data:
          split: '0'
          data_root: 2012
        Train:
          base_lr: 0.005
          transformer_lr: 6e-5
          warmup: 0
          resume:
    """)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    lines = str(error.value).splitlines()
    assert len(lines) == 5  # every problem, one line each
    for line, key, expected in zip(lines, ("split", "data_root", "transformer_lr", "warmup", "resume"),
                                   ("an int", "a str", "a float", "a bool", "a str")):
        assert line.startswith(path) and repr(key) in line and f"expects {expected}," in line
    assert "reads 6e-5 as text" in lines[2] and "quote it" in lines[1]


def test_int_file_value_for_a_float_key_is_kept_and_an_override_converted(tmp_path):
    path = write_yaml(tmp_path, """\
        Train:
          base_lr: 1
    """)
    assert type(load_config(path).base_lr) is int  # as written (the shipped rotate_min: -10)
    assert type(load_config(path, ["base_lr", "2"]).base_lr) is float


def test_unknown_key_in_the_file_is_an_error_with_a_suggestion(tmp_path):
    path = write_yaml(tmp_path, """\
        Train:
          base_lr: 0.005
          bsae_lr: 0.01
          stop_intervall: 3
    """)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert path in message and "'Train'" in message
    assert "'bsae_lr'; did you mean 'base_lr'" in message
    assert "'stop_intervall'; did you mean 'stop_interval'" in message


def test_legacy_key_warns_once_and_only_when_changed(tmp_path):
    at_default = write_yaml(tmp_path, """\
        Data:
          classes: 2
        Distributed:
          world_size: 1
    """, name="default.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(at_default)
        load_config(at_default, ["rank", "0"])

    changed = write_yaml(tmp_path, """\
        Distributed:
          world_size: 4
    """, name="changed.yaml")
    with pytest.warns(LegacyKeyWarning) as record:
        config = load_config(changed)
        load_config(changed)  # the same key again: no second warning
        load_config(at_default, ["merge_tau", "0.5"])
    messages = [str(warning.message) for warning in record]
    assert len(messages) == 2
    assert "'world_size' = 4 has no effect" in messages[0] and "torchrun" in messages[0]
    assert record[0].filename == changed and record[1].filename == "--opts"
    assert "'merge_tau' = 0.5" in messages[1]
    assert config.world_size == 4  # still accepted and recorded


def test_config_value_falls_back_on_the_schema_default():
    class Namespace:
        layers = 101

    assert config_value(Namespace, "layers") == 101
    assert config_value(Namespace, "feature_size") == 64
    assert config_value({"shot": 5}, "shot") == 5 and config_value({}, "shot") == 1
    assert config_value(Config({"window_size": 4}), "window_size") == 4
    with pytest.raises(KeyError):
        config_value(Namespace, "not_a_key")


def _configuration_reads(path: str) -> set[str]:
    """Names read or set as ``cfg.X``, ``config.X``, ``self.cfg.X``, ``cfg["X"]``,
    ``cfg.get("X")`` or ``value("X")`` / ``config_value(cfg, "X")`` in one source file."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())

    def is_config(node) -> bool:
        return (isinstance(node, ast.Name) and node.id in ("cfg", "config")) or \
            (isinstance(node, ast.Attribute) and node.attr == "cfg")

    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_config(node.value):
            names.add(node.attr)
        elif isinstance(node, ast.Subscript) and is_config(node.value):
            names.add(getattr(node.slice, "value", None))
        elif isinstance(node, ast.Call) and node.args:
            function = node.func
            if isinstance(function, ast.Attribute) and function.attr == "get" and is_config(function.value):
                names.add(getattr(node.args[0], "value", None))
            elif isinstance(function, ast.Name) and function.id == "value":
                names.add(getattr(node.args[0], "value", None))
            elif isinstance(function, ast.Name) and function.id == "config_value":
                names.add(getattr(node.args[1], "value", None))
    return {name for name in names if isinstance(name, str)}  # not a key held in a variable


def test_every_key_the_code_reads_is_in_the_schema_and_every_other_key_is_legacy():
    sources = [os.path.join(REPOSITORY_ROOT, name) for name in ("train_sccan.py", "test_sccan.py")]
    for folder in ("model", "util", "tools"):
        sources += glob.glob(os.path.join(REPOSITORY_ROOT, folder, "*.py"))
    reads = set().union(*(_configuration_reads(path) for path in sources))
    config_api = {name for name in dir(Config) if not name.startswith("__")}
    assert {"base_lr", "feature_dropout", "use_split_coco", "transformer_lr"} <= reads
    assert reads - config_api - set(SCHEMA) == set()
    # ... and the keys no code reads are exactly the legacy ones (which warn when changed).
    assert set(SCHEMA) - reads == {key for key, entry in SCHEMA.items() if entry.legacy}


def test_model_and_optimizer_defaults_agree_with_the_schema():
    """The library's own parameter defaults (for use without a config) are the schema's."""
    import inspect

    from model.builder import build_optimizers, poly_learning_rate
    from model.sccan import SCCAN

    checked = []
    for function in (SCCAN.__init__, build_optimizers, poly_learning_rate):
        for parameter in inspect.signature(function).parameters.values():
            if parameter.name in SCHEMA and parameter.default is not inspect.Parameter.empty:
                assert parameter.default == SCHEMA[parameter.name].default, parameter.name
                checked.append(parameter.name)
    assert {"feature_size", "window_size", "feature_dropout", "transformer_lr", "power"} <= set(checked)
