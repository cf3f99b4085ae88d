"""The key schema (util/config_schema.py): defaults, types, legacy keys, and the keys the code reads."""

from __future__ import annotations

import ast
import glob
import os
import warnings

import pytest
import yaml

from tests.support import REPOSITORY_ROOT
from tests.support.files import write_yaml
from util.config import Config, ConfigError, LegacyKeyWarning, load_config
from util.config_schema import (RANGES, SCHEMA, check_type, config_value, default_values, is_number_between,
                                range_problems)

pytestmark = pytest.mark.usefixtures("fresh_legacy_warnings")


# ------------------------------------------------------------------------------ the schema
def flat_yaml(path: str) -> dict:
    """Key -> value of a sectioned YAML file, read without the loader under test."""
    with open(path, encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    return {key: value for section in document.values() if section for key, value in section.items()}


SHIPPED_CONFIGS = sorted(glob.glob(os.path.join(REPOSITORY_ROOT, "config", "*", "*.yaml")))
TOY_CONFIGS = [path for path in SHIPPED_CONFIGS if os.sep + "toy" + os.sep in path]
ENSEMBLE_CONFIGS = [path for path in SHIPPED_CONFIGS if path.endswith("_bam.yaml") and path not in TOY_CONFIGS]
# The base-learner configs (train_base.py) set only the keys BAM's base training reads.
BASE_CONFIGS = [path for path in SHIPPED_CONFIGS if path.endswith("_base.yaml")]
# The configs of the datasets beyond the paper's two (docs/DATASETS.md): FSS-1000 and the
# cross-domain benchmark; their own tests check them.
OTHER_DATA_CONFIGS = [path for path in SHIPPED_CONFIGS
                      if os.path.basename(os.path.dirname(path)) in ("fss", "cross_domain")]
PAPER_CONFIGS = [path for path in SHIPPED_CONFIGS if path not in TOY_CONFIGS and path not in OTHER_DATA_CONFIGS
                 and path not in ENSEMBLE_CONFIGS and path not in BASE_CONFIGS]


def test_the_shipped_configs_are_32_paper_32_ensemble_16_base_and_10_toy():
    assert len(PAPER_CONFIGS) == 32 and len(ENSEMBLE_CONFIGS) == 32 and len(BASE_CONFIGS) == 17
    assert [os.path.basename(path) for path in TOY_CONFIGS] == [
        "toy_split0_resnet50.yaml", "toy_split0_resnet50_5s.yaml",
        "toy_split0_resnet50_bam.yaml", "toy_split0_resnet50_base.yaml"] + [
        f"toy_split{split}_resnet50{suffix}.yaml" for split in (1, 2, 3) for suffix in ("", "_5s")]
    assert len(SHIPPED_CONFIGS) == 32 + 32 + 16 + 10 + len(OTHER_DATA_CONFIGS)  # toy base: one of BASE_CONFIGS
    assert {os.path.basename(path) for path in OTHER_DATA_CONFIGS} >= {
        f"fss_resnet{layers}{suffix}.yaml" for layers in (50, 101) for suffix in ("", "_5s")}


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
                      "world_size", "rank", "fix_bn"}


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


@pytest.mark.parametrize("text", ["", "# only a comment\n\n", "---\n"])
def test_an_empty_config_file_is_refused(tmp_path, text):
    """Every key at its default would describe the original's PASCAL layout, which the user never
    named: an empty file is a mistake (a wrong file, a failed copy), not a config."""
    path = write_yaml(tmp_path, text, name="empty.yaml")
    with pytest.raises(ConfigError, match=rf"^{path} is empty \(no sections, only comments or blank lines\)"):
        load_config(path)


def test_a_folder_given_as_the_config_is_named_as_a_folder(tmp_path):
    with pytest.raises(ConfigError, match=rf"^{tmp_path} is a folder, not a configuration file"):
        load_config(str(tmp_path))


def test_override_hints_speak_of_the_option_not_of_yaml(tmp_path):
    """--opts values are Python literals: YAML 1.1's reading of 6e-5 as text does not apply, and
    a value meant as text must be quoted twice on a shell command line."""
    path = write_yaml(tmp_path, "Data:\n  split: 0\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, ["base_lr", "-inf", "resume", "5"])
    assert str(error.value).splitlines() == [
        "--opts base_lr: expects a float, got '-inf' of type str (--opts reads Python literals: -inf is "
        "not a finite number)",
        "--opts resume: expects a str, got 5 of type int (to give it as text, quote it twice: "
        "--opts resume \"'5'\")"]
    with pytest.raises(ConfigError, match=r"^--base-opts: duplicate key 'shot' .*\n--base-opts epochs: "
                                          r"expects an int, got 'x' of type str$"):
        load_config(path, ["shot", "1", "shot", "2", "epochs", "x"], opts_name="--base-opts")
    with pytest.raises(ConfigError, match=r"^config key val_size: .* got 10 \(from --base-opts\)$"):
        load_config(path, ["val_size", "10"], opts_name="--base-opts")


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
        load_config(at_default, ["classes", "3"])
    messages = [str(warning.message) for warning in record]
    assert len(messages) == 2
    assert "'world_size' = 4 has no effect" in messages[0] and "torchrun" in messages[0]
    assert record[0].filename == changed and record[1].filename == "--opts"
    assert "'classes' = 3" in messages[1]
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
    sources = [os.path.join(REPOSITORY_ROOT, name) for name in ("train_sccan.py", "train_base.py", "test_sccan.py")]
    for folder in ("model", "util", "experiment", "evaluation", "engine", "tools", "benchmarks"):
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

    from engine.optimization import build_optimizers, poly_learning_rate
    from model.sccan import SCCAN

    checked = []
    for function in (SCCAN.__init__, build_optimizers, poly_learning_rate):
        for parameter in inspect.signature(function).parameters.values():
            if parameter.name in SCHEMA and parameter.default is not inspect.Parameter.empty:
                assert parameter.default == SCHEMA[parameter.name].default, parameter.name
                checked.append(parameter.name)
    assert {"feature_size", "window_size", "feature_dropout", "transformer_lr", "power"} <= set(checked)


# ------------------------------------------------------------------------------- the ranges
NAN, INF = float("nan"), float("inf")
# key -> (values accepted, values refused), each checked alone on the schema defaults; the
# boundary values are the first of each list.
RANGE_CASES = {
    "split": ([0, 3], [-1]),  # 4 for PASCAL/COCO: a relation with data_set (test_semantic_labels.py)
    "shot": ([1, 5], [0, -1]),
    "train_h": ([9, 17, 473, 4097], [8, 10, 1, 0, 472, 4105, 100001]),
    "train_w": ([9, 417, 4097], [8, 16, -7, 4105]),
    "val_size": ([9, 65, 4097], [8, 1, 64, 0, 4105, 100000001]),
    "scale_min": ([1e-3], [0, -0.5, NAN]),
    "scale_max": ([100.0], [0, -1, INF]),
    "rotate_min": ([-180], [-INF, NAN]),
    "rotate_max": ([180], [INF]),
    "ignore_label": ([0, 255], [-1, 256]),
    "padding_label": ([0, 255], [-1, 256]),
    "workers": ([0, 16], [-1]),
    "batch_size": ([1], [0, -4]),
    "epochs": ([1], [0, -1]),
    "base_lr": ([1e-9], [0, -0.005, NAN, INF]),
    "transformer_lr": ([1e-9], [0, -6e-5]),
    "power": ([0, 0.9], [-0.1]),
    "momentum": ([0, 0.99], [-0.1, 1]),
    "weight_decay": ([0], [-1e-4]),
    "stop_interval": ([1], [0]),
    "print_freq": ([1], [0]),
    "save_freq": ([0, 1], [-1]),
    "batch_size_val": ([1], [0]),
    "manual_seed": ([0, 2 ** 31 - 1], [-1, 2 ** 31]),
    "layers": ([50, 101], [18, 152]),
    "base_novel_label": ([0, 255], [1, 7]),
    "zoom_factor": ([1, 2, 4, 8], [0, 3, 16]),
    "feature_size": ([8, 64, 512], [0, -8, 513, 640]),
    "window_size": ([1, 2, 8], [0, 3, 5, -2]),
    "feature_dropout": ([0, 1], [-0.1, 1.5]),
    "kshot_trans_dim": ([0], [-1]),
    "merge_tau": ([0, 1], [-0.1, 1.1]),
    "test_num": ([1], [0]),
    "foreground_threshold": ([1, 128, 255], [0, 256]),
    "mask_ignore_value": ([-1, 0, 255], [-2, 256]),
    "num_classes": ([0, 2, 254], [-1, 255]),
    "eval_feature_cache_mb": ([0], [-1, INF]),
    "distributed_timeout_minutes": ([0.5], [0, -1, INF]),
}
# Numeric keys whose every value is legal (a learning-rate split index, scales and loss weights).
UNBOUNDED = {"index_split", "random_backbone_residual_gain", "aux_weight1", "aux_weight2", "local_rank"}


def test_every_numeric_key_has_a_range_and_a_test_case():
    numeric = {key for key, entry in SCHEMA.items() if entry.type in (int, float) and not entry.legacy}
    assert set(RANGES) - set(SCHEMA) == set()
    assert numeric - set(RANGES) == UNBOUNDED  # a new numeric key needs a range (or a reason)
    assert set(RANGE_CASES) == set(RANGES)
    assert range_problems(default_values()) == []  # the defaults are valid


@pytest.mark.parametrize("key", sorted(RANGE_CASES))
def test_range_boundaries(key):
    accepted, refused = RANGE_CASES[key]
    for value in accepted:
        assert range_problems({**default_values(), key: value}) == [], (key, value)
    for value in refused:
        problems = range_problems({**default_values(), key: value}, lambda name: " (file x.yaml)")
        assert len(problems) == 1, (key, value, problems)
        assert problems[0].startswith(f"config key {key}: expected ") and \
            problems[0].endswith(f", got {value!r} (file x.yaml)"), problems


def test_relations_between_keys():
    def problems(**values):
        return range_problems({**default_values(), **values})

    assert problems(scale_min=0.5, scale_max=0.5) == [
        "config keys scale_min and scale_max: expected scale_min < scale_max, got scale_min 0.5, "
        "scale_max 0.5"]
    assert problems(rotate_min=10, rotate_max=-10)[0].startswith("config keys rotate_min and rotate_max")
    assert problems(feature_size=12, window_size=8)[0].startswith(
        "config keys feature_size and window_size: expected feature_size a multiple of window_size")
    assert problems(feature_size=16, window_size=8) == problems(feature_size=1, window_size=1) == []
    # A key out of range is reported alone, not again in its relations.
    assert len(problems(scale_min=-1.0)) == 1 and len(problems(window_size=3, feature_size=64)) == 1


def test_ranges_are_checked_by_the_loader_for_the_file_and_for_opts(tmp_path):
    path = write_yaml(tmp_path, """\
        Data:
          val_size: 10
        Train:
          epochs: 0
    """)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    lines = str(error.value).splitlines()
    assert lines == [f"config key val_size: expected an int 9..4097 with (value - 1) a multiple of 8, the "
                     f"backbone's stride (e.g. 473, 417, 65, 33), got 10 (file {path})",
                     f"config key epochs: expected an int >= 1, got 0 (file {path})"]
    with pytest.raises(ConfigError, match=r"^config key epochs: expected an int >= 1, got 0 \(from --opts\)$"):
        load_config(path, ["val_size", "9", "epochs", "0"])
    assert load_config(path, ["val_size", "9", "epochs", "1"]).val_size == 9
    with pytest.raises(ConfigError, match=r"config keys scale_min and scale_max: .* \(from --opts\) \(file "):
        load_config(path, ["val_size", "9", "epochs", "1", "scale_min", "2"])


@pytest.mark.filterwarnings("ignore:pretrained_backbone is False")
def test_the_smallest_accepted_sizes_run_and_the_next_smaller_do_not(tmp_path):
    """Side 9 (one 8-pixel cell of the stride-8 backbone) trains and evaluates, SCCAN, BAM's
    ensemble (K = 2) and the base learner alike; grids of 1 and 2 with windows of 1 and 2 too.
    An odd window above 1 cannot tile the shifted grid, and the base learner refuses a side 8."""
    import torch

    from experiment.models import build_model
    from model.pspnet import PSPNet
    from tests.support.toy_experiment import CONFIG

    torch.manual_seed(0)
    side = 9
    pspnet = PSPNet(50, classes=16, pretrained_backbone=False)
    base_learner_weights = str(tmp_path / "base_learner.pth")
    torch.save({"state_dict": pspnet.state_dict()}, base_learner_weights)
    for grid, window, base_learner, shot in ((2, 2, False, 1), (1, 1, True, 2)):
        cfg = load_config(CONFIG, ["train_h", str(side), "train_w", str(side), "val_size", str(side),
                                   "feature_size", str(grid), "window_size", str(window), "shot", str(shot),
                                   "base_learner", str(base_learner),
                                   "base_learner_weights", repr(base_learner_weights)])
        model = build_model(cfg)
        x, s_x = torch.randn(2, 3, side, side), torch.randn(2, shot, 3, side, side)
        s_y = torch.zeros(2, shot, side, side, dtype=torch.long)
        s_y[..., 2:6, 2:6] = 1
        with torch.no_grad():
            assert model.eval()(x, s_x, s_y).logits.shape == (2, 2, side, side)
        if not base_learner:
            output = model.train()(x, s_x, s_y)
            main_loss = model.losses(output, s_y[:, 0])["main_loss"]
            assert output.logits.shape == (2, 2, side, side) and torch.isfinite(main_loss)
    pspnet.train()
    assert pspnet(torch.randn(2, 3, side, side), torch.zeros(2, side, side, dtype=torch.long))[0].shape == \
        (2, side, side)
    with pytest.raises(ValueError, match="minus 1 must be multiples of 8"):
        pspnet.output_size(side - 1, side - 1)
    odd = build_model(load_config(CONFIG, ["feature_size", "6", "window_size", "2"]))
    odd.transformer = type(odd.transformer)(dim=256, depth=8, num_heads=8, window_size=3)
    with pytest.raises(RuntimeError):
        odd.eval()(x, s_x[:, :1], s_y[:, :1])


def test_is_number_between_takes_ints_and_floats_within_both_bounds_and_nothing_else():
    infinity = float("inf")
    assert is_number_between(0, 0, 1) and is_number_between(1.0, 0, 1) and is_number_between(-1, -1, infinity)
    assert is_number_between(infinity, 0, infinity)
    assert not is_number_between(1.0001, 0, 1) and not is_number_between(-0.5, 0, 1)
    assert not is_number_between(-2, -1, infinity)
    # a bool is an int to Python but no probability or epoch; NaN compares false with every bound
    for other in (True, False, None, "0.5", [0.5], float("nan")):
        assert not is_number_between(other, -infinity, infinity), other
