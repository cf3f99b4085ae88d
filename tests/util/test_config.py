"""Tests for util/config.py: loading sectioned YAML, --opts overrides, the Config object, the
command line. The key schema is tested in test_config_schema.py, the shipped configs in
test_shipped_configs.py."""

from __future__ import annotations

import copy
import pickle
import re

import pytest
import yaml

from tests.support.files import write_yaml
from util.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_argparser,
    config_from_arguments,
    load_config,
    merge_opts,
    save_config,
)
from util.config_schema import SCHEMA

pytestmark = pytest.mark.usefixtures("fresh_legacy_warnings")

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


# Files the YAML parser rejects -> (text, the line and column named, a fragment of the message).
BROKEN_YAML = {
    "tab": ("Data:\n  split: 0\n\tshot: 1\n", "line 3, column 1",
            "found character '\\t' that cannot start any token (while scanning for the next token); "
            "YAML indents with spaces, not tabs"),
    "unclosed quote": ("Data:\n  data_root: 'abc\n  split: 0\n", "line 4, column 1",
                       "found unexpected end of stream (while scanning a quoted scalar that starts at "
                       "line 2, column 14)"),
    "bad mapping": ("Data:\n  split: 0\n   shot: 1\n", "line 3, column 8", "mapping values are not allowed here"),
    "missing colon": ("Data:\n  split: 0\nTrain\n  epochs: 1\n", "line 4, column 9",
                      "could not find expected ':' (while scanning a simple key that starts at line 3, column 1)"),
    "unclosed flow": ("Data: {split: 0\n", "line 2, column 1", "expected ',' or '}', but got '<stream end>'"),
    "python tag": ("Data:\n  split: !!python/object:os.system x\n", "line 2, column 10",
                   "could not determine a constructor for the tag"),
    "control character": ("Data:\n  split: \x07\n", "line 2", "the control character U+0007 is not allowed"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_YAML))
def test_yaml_syntax_errors_name_the_file_line_and_column(tmp_path, case):
    text, where, fragment = BROKEN_YAML[case]
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(str(path))
    message = str(error.value)
    assert message.startswith(f"{path}, {where}: invalid YAML: ") and fragment in message, message
    assert "\n" not in message


def test_a_config_that_is_not_utf8_names_the_file_line_and_byte(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("Data:\n  split: 0\n  data_root: caf\xe9  # Latin-1\n".encode("latin-1"))
    with pytest.raises(ValueError) as error:
        load_config(str(path))
    assert str(error.value) == (f"{path}, line 3, column 17 (byte offset 33): byte 0xe9 is not UTF-8 "
                                f"(invalid continuation byte); a configuration file must be UTF-8 text: "
                                f"re-save it as UTF-8")
    path.write_bytes("\ufeffData:\n  data_root: café\n".encode("utf-8"))  # UTF-8 with a BOM is fine
    assert load_config(str(path)).data_root == "café"


def test_top_level_scalar_is_rejected(tmp_path):
    path = write_yaml(tmp_path, """\
        Train:
          epochs: 3
        base_lr: 0.1
    """)
    with pytest.raises(ConfigError, match="base_lr"):
        load_config(path)


def test_missing_file_is_reported(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(FileNotFoundError, match=f"^configuration file not found: {re.escape(missing)}$"):
        load_config(missing)


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


@pytest.mark.parametrize("opts", [["split", "1", "split", "2"], ["split=1", "split", "2"],
                                  ["split", "1", "split=2"], ["split", "1", "split", "1"]])
def test_a_key_given_twice_in_opts_is_an_error_like_in_a_file(sample_path, opts):
    with pytest.raises(ConfigError) as error:
        load_config(sample_path, opts + ["epochs", "3"])
    second = opts[-1].split("=")[-1]
    assert str(error.value) == f"--opts: duplicate key 'split' (given '1' and then {second!r}); give each key once"


def test_merge_opts_lets_a_later_list_replace_keys(sample_path):
    assert merge_opts(["split", "1", "epochs=3"], ["epochs", "4", "base_lr", "0.1"]) == \
        ["split", "1", "epochs", "4", "base_lr", "0.1"]
    config = load_config(sample_path, merge_opts(["split", "1", "epochs", "3"], ["epochs", "4"]))
    assert (config.split, config.epochs) == (1, 4)
    # A key repeated within one list stays repeated, and so is still refused.
    with pytest.raises(ConfigError, match="duplicate key 'split'"):
        load_config(sample_path, merge_opts(["split", "1", "split", "2"], ["epochs", "4"]))
    assert merge_opts(["split"], ["epochs", "4"]) == ["split", "epochs", "4"]  # not split: reported later


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
def test_argument_parser_and_config_from_arguments(sample_path):
    parser = config_argparser("test")
    arguments = parser.parse_args(["--config", sample_path, "--local_rank=1",
                                   "--opts", "split", "2", "base_lr", "0.1"])
    assert arguments.config == sample_path
    assert arguments.local_rank == 1
    assert arguments.opts == ["split", "2", "base_lr", "0.1"]

    config = config_from_arguments(parser.parse_args(["--local-rank", "3", "--config", sample_path, "--opts", "epochs", "7"]))
    assert config.epochs == 7
    assert config.local_rank == 3
    assert config.config_file == sample_path

    config = config_from_arguments(parser.parse_args(["--config", sample_path]))
    assert config.local_rank is None and config.split == 0
    with pytest.raises(SystemExit):
        config_argparser("test").parse_args([])  # --config is required
