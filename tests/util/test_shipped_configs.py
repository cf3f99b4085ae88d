"""The shipped configs (config/{pascal,coco}/*.yaml, config/toy/*.yaml) as util/config.py loads them."""
import os

import pytest

from tests.support import REPOSITORY_ROOT
from tests.support.toy_experiment import BASE_CONFIG, CONFIG
from util.config import ConfigError, load_config, save_config

pytestmark = pytest.mark.usefixtures("fresh_legacy_warnings")


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


def _shipped_names():
    shipped = set()
    for dataset in ("pascal", "coco"):
        folder = os.path.join(REPOSITORY_ROOT, "config", dataset)
        shipped |= {name[:-5] for name in os.listdir(folder) if name.endswith(".yaml")}
    return shipped


def test_exactly_the_32_configs_their_ensemble_variants_and_16_base_configs_are_shipped():
    base = {f"{dataset}_split{split}_resnet{layers}_base" for dataset in ("pascal", "coco")
            for split in range(4) for layers in (50, 101)}
    ensemble = {name + "_bam" for name in EXPECTED_WEIGHTS}
    assert _shipped_names() == set(EXPECTED_WEIGHTS) | ensemble | base


# BAM's base-learner training (train_base.py and its base configs), checked with their types.
BASE_VALUES = {
    "train_h": 417, "train_w": 417, "val_size": 417, "scale_min": 0.5, "scale_max": 2.0,
    "rotate_min": -10, "rotate_max": 10, "ignore_label": 255, "padding_label": 255,
    "batch_size": 12, "base_lr": 0.00025, "power": 0.9, "momentum": 0.9, "weight_decay": 0.0001,
    "index_split": 0, "evaluate": True, "resized_val": True, "ori_resize": False,
    "batch_size_val": 1, "manual_seed": 321, "zoom_factor": 8, "pretrained_backbone": True,
    "base_save_path": "", "base_learner_weights": "", "resume": "",
}


@pytest.mark.parametrize("dataset", ["pascal", "coco"])
@pytest.mark.parametrize("split", range(4))
@pytest.mark.parametrize("layers", [50, 101])
def test_base_config_values(dataset, split, layers):
    config = load_config(shipped_config_path(f"{dataset}_split{split}_resnet{layers}_base"))
    expected = dict(BASE_VALUES, data_set=dataset, split=split, layers=layers,
                    epochs={"pascal": 100, "coco": 20}[dataset],
                    use_split_coco=dataset == "coco",
                    data_root=DATASET_VALUES[dataset]["data_root"],
                    train_list=DATASET_VALUES[dataset]["train_list"],
                    val_list=DATASET_VALUES[dataset]["val_list"],
                    backbone_weights=f"initmodel/resnet{layers}_v2.pth")
    for key, value in expected.items():
        assert config[key] == value, f"{dataset} {split} {layers}: {key} = {config[key]!r}, expected {value!r}"
        assert type(config[key]) is type(value), f"{key} has type {type(config[key])}"


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


def test_shipped_config_overrides_and_round_trip(tmp_path):
    config = load_config(shipped_config_path("coco_split2_resnet101_5s"),
                         ["split", "3", "base_lr", "0.01", "weight", "my_model.pth",
                          "SubEpoch_val", "False"])
    assert (config.split, config.base_lr, config.weight, config.SubEpoch_val) == (3, 0.01, "my_model.pth", False)
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        load_config(shipped_config_path("coco_split2_resnet101_5s"), ["batchsize", "4"])


def test_toy_configs_load_and_mark_their_cost_cuts():
    from util.config import load_config
    folder = os.path.dirname(CONFIG)
    names = sorted(os.listdir(folder))
    assert names == ["toy_split0_resnet50.yaml", "toy_split0_resnet50_5s.yaml",
                     "toy_split0_resnet50_bam.yaml", "toy_split0_resnet50_base.yaml"] + [
        f"toy_split{split}_resnet50{suffix}.yaml" for split in (1, 2, 3) for suffix in ("", "_5s")]
    for name in [name for name in names if not name.endswith("_base.yaml")]:
        cfg = load_config(os.path.join(folder, name))
        assert cfg.pretrained_backbone is False and cfg.data_root == "data/toy"
        assert cfg.list_root.startswith("data/toy") and cfg.save_path.startswith("exp/toy/")
        assert (cfg.train_h - 1) % 8 == 0 and cfg.feature_size % cfg.window_size == 0
        with open(os.path.join(folder, name)) as handle:
            assert "COST CUT" in handle.read()
    assert load_config(os.path.join(folder, names[1])).shot == 5


@pytest.mark.parametrize("split", [1, 2, 3])
@pytest.mark.parametrize("shot, suffix", [(1, ""), (5, "_5s")])
def test_the_toy_configs_of_every_fold_differ_from_fold_0_only_in_the_fold(split, shot, suffix):
    folder = os.path.dirname(CONFIG)
    fold0 = load_config(os.path.join(folder, f"toy_split0_resnet50{suffix}.yaml"))
    config = load_config(os.path.join(folder, f"toy_split{split}_resnet50{suffix}.yaml"))
    assert {key for key in fold0 if config[key] != fold0[key]} == {"split", "save_path", "config_file"}
    assert (config.split, config.shot, config.layers) == (split, shot, 50)
    assert config.save_path == f"exp/toy/SCCAN/split{split}/resnet50{suffix}"
    assert config.weight == f"final_{shot}shot.pth"
    # 1-shot and 5-shot of one fold: the shot, its output names and the 5-shot's shorter training.
    one_shot = load_config(os.path.join(folder, f"toy_split{split}_resnet50.yaml"))
    assert {key for key in one_shot if config[key] != one_shot[key]} == (
        set() if shot == 1 else {"shot", "save_path", "weight", "epochs", "config_file"})


def test_toy_base_config_marks_its_cost_cuts_and_keeps_the_real_base_learner():
    cfg = load_config(BASE_CONFIG)
    assert cfg.pretrained_backbone is False and cfg.data_root == "data/toy" and cfg.workers == 0
    assert (cfg.train_h - 1) % 8 == 0 and cfg.index_split == 0 and cfg.ori_resize is False
    # toy data is 'pascal': its base learner must not land on the real PASCAL one in initmodel/
    assert cfg.base_save_path.startswith("exp/toy/") and cfg.base_learner_weights.startswith("exp/toy/")
    with open(BASE_CONFIG) as handle:
        text = handle.read()
    for key in ("train_h", "epochs", "base_lr", "workers", "pretrained_backbone"):
        line = next(line for line in text.splitlines() if line.strip().startswith(key + ":"))
        assert "COST CUT" in line, key
