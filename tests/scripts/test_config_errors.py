"""A bad config, list or --opts is one line ``error: ...`` (exit status 2) before anything is written.

One run per class of mistake, as a user would run it from the repository root (in this process,
tests/support/entry_points.py; the relative-path case in a subprocess from another folder): a file the
YAML parser rejects or that is not UTF-8, a key given twice in --opts, values outside what the
network and the pipeline can take; each checks the exact line, the status and that the output
folder was not created. The many siblings of each class are unit-tested in-process
(tests/util/test_config.py, tests/util/test_config_schema.py and below).
"""
import os
import re
import subprocess
import sys

import pytest

from experiment.build import check_data_root
from tests.support import REPOSITORY_ROOT
from tests.support.entry_points import run_in_process
from tests.support.toy_experiment import CONFIG, toy_opts
from util.cli import error_message
from util.config import load_config
from util.dataset import load_fss_lists, read_pair_list
from util.transform import test_Resize


#: A script or tool run as ``python ARGUMENTS...`` would run it (here: in this process).
run = run_in_process


def assert_one_line(result, expected: str) -> None:
    """Exit status 2 and exactly ``expected`` as the whole of stderr."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert result.stderr.strip() == expected, result.stderr[-3000:]


def files_below(folder) -> list:
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, _, names in os.walk(folder) for name in names)


# ------------------------------------------------------------------------ unreadable files
def test_a_yaml_syntax_error_and_a_non_utf8_config_are_one_line(tmp_path):
    tab = tmp_path / "tab.yaml"
    tab.write_text(f"Data:\n  data_set: 'pascal'\nTrain:\n  save_path: {tmp_path / 'exp'}\n\tepochs: 1\n")
    assert_one_line(run("train_sccan.py", "--config", str(tab)),
                    f"error: {tab}, line 5, column 1: invalid YAML: found character '\\t' that cannot "
                    f"start any token (while scanning for the next token); YAML indents with spaces, "
                    f"not tabs")

    latin = tmp_path / "latin.yaml"
    latin.write_bytes(f"Train:\n  base_save_path: {tmp_path / 'exp'}  # caf\xe9\n".encode("latin-1"))
    data = latin.read_bytes()
    offset = data.index(b"\xe9")
    column = offset - data.index(b"\n")  # 1-based, on line 2
    assert_one_line(run("train_base.py", "--config", str(latin)),
                    f"error: {latin}, line 2, column {column} (byte offset {offset}): byte 0xe9 is not "
                    f"UTF-8 (invalid continuation byte); a configuration file must be UTF-8 text: "
                    f"re-save it as UTF-8")
    assert files_below(tmp_path) == ["latin.yaml", "tab.yaml"]  # nothing written

    # Not a config at all: an empty file (every key would take the original's PASCAL defaults)
    # and a folder.
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    assert_one_line(run("train_sccan.py", "--config", str(empty)),
                    f"error: {empty} is empty (no sections, only comments or blank lines): a config names "
                    f"at least its data set, e.g. copy config/toy/toy_split0_resnet50.yaml")
    assert_one_line(run("test_sccan.py", "--config", str(tmp_path)),
                    f"error: {tmp_path} is a folder, not a configuration file (config/ holds the YAML files, "
                    f"e.g. config/pascal/pascal_split0_resnet50.yaml)")
    assert files_below(tmp_path) == ["empty.yaml", "latin.yaml", "tab.yaml"]


def test_list_files_that_are_not_utf8_name_the_file_and_the_line(tmp_path):
    base_list = tmp_path / "train.txt"
    base_list.write_bytes(b"JPEGImages/a.jpg SegmentationClassAug/a.png\r\n"
                          b"JPEGImages/b\xff.jpg SegmentationClassAug/b.png\r\n")
    with pytest.raises(ValueError) as error:
        read_pair_list(str(base_list))
    assert str(error.value) == (f"{base_list}, line 2, column 13 (byte offset 57): byte 0xff is not UTF-8 "
                                f"(invalid start byte); a list file must be UTF-8 text: re-save it as UTF-8")
    base_list.write_bytes(b"JPEGImages/a.jpg SegmentationClassAug/a.png\r\n"
                          b"JPEGImages/b.jpg SegmentationClassAug/b.png")  # CRLF, no final newline
    assert [pair[:2] for pair in read_pair_list(str(base_list))] == [
        ("JPEGImages/a.jpg", "SegmentationClassAug/a.png"), ("JPEGImages/b.jpg", "SegmentationClassAug/b.png")]
    classes = tmp_path / "sub_class_file_list_0.txt"
    classes.write_bytes(b"{1: [('a.jpg', 'a.png')],\n 2: [('\xe9.jpg', 'b.png')]}")
    where = re.escape(f"{classes}, line 2, column 8 (byte offset 33): byte 0xe9 is not UTF-8")
    with pytest.raises(ValueError, match=f"^{where}"):
        load_fss_lists(str(base_list), str(classes))


# -------------------------------------------------------------------------- --opts twice
def test_a_key_given_twice_in_opts_is_one_line(tmp_path):
    assert_one_line(run("test_sccan.py", "--config", CONFIG, "--opts", "save_path", repr(str(tmp_path / "exp")),
                        "test_num", "3", "test_num=5"),
                    "error: --opts: duplicate key 'test_num' (given '3' and then '5'); give each key once")
    assert files_below(tmp_path) == []


# ------------------------------------------------------------------------ values out of range
def test_values_out_of_range_are_one_line_before_anything_is_written(tmp_path):
    save_path = tmp_path / "exp"
    result = run("train_sccan.py", "--config", CONFIG, "--opts", "save_path", repr(str(save_path)),
                 "shot", "0", "batch_size", "0", "window_size", "3", "epochs", "0")
    assert_one_line(result, "error: " + "; ".join([
        "config key shot: expected an int >= 1, got 0 (from --opts)",
        "config key batch_size: expected an int >= 1, got 0 (from --opts)",
        "config key epochs: expected an int >= 1, got 0 (from --opts)",
        "config key window_size: expected 1 or an even int >= 2 (shifted windows pad half a window on "
        "each side), got 3 (from --opts)"]))
    assert not save_path.exists()  # no config_0shot.yaml, no log, no folder
    assert_one_line(run("test_sccan.py", "--config", CONFIG, "--opts", "val_size", "10"),
                    "error: config key val_size: expected an int 9..4097 with (value - 1) a multiple of 8, the "
                    f"backbone's stride (e.g. 473, 417, 65, 33), got 10 (from --opts)")
    # An extra digit: refused by the range (it was an allocation failure inside OpenCV, exit 1).
    assert_one_line(run("test_sccan.py", "--config", CONFIG, "--opts", "val_size", "100000001"),
                    "error: config key val_size: expected an int 9..4097 with (value - 1) a multiple of 8, the "
                    f"backbone's stride (e.g. 473, 417, 65, 33), got 100000001 (from --opts)")
    # A tool with two override lists names the one that holds the bad value.
    assert_one_line(run("-m", "tools.toy_demo", "--base-opts", "shot", "0"),
                    "error: config key shot: expected an int >= 1, got 0 (from --base-opts)")


def test_an_image_too_elongated_for_val_size_names_the_file(toy_data_root, tmp_path):
    """val_size 9 is a valid network input, but the validation resize floors the shorter side of
    the toy's non-square images to 0 px: the query is named with the val_size that fits it (a
    cv2.error traceback before)."""
    opts = toy_opts(toy_data_root, str(tmp_path / "exp"), list_root=str(tmp_path / "fss"), val_size=9)
    result = run("test_sccan.py", "--config", CONFIG, "--all-foreground", "--episodes", "2", "--opts", *opts)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    message = result.stderr.strip().splitlines()[-1].split("error: ", 1)[1]
    assert message.startswith(f"query image '{toy_data_root}/JPEGImages/") and \
        "image is too elongated for val_size 9: its shorter side would shrink below 8 px" in message and \
        message.endswith("or more keeps it"), message


def test_too_elongated_message_and_worker_errors_without_traceback():
    import numpy as np

    with pytest.raises(ValueError, match=r"^a 10x300 \(height x width\) image is too elongated for val_size 65: "
                                         r".* val_size 241 or more keeps it$"):
        test_Resize(65)(np.zeros((10, 300, 3), np.float32), np.zeros((10, 300), np.uint8))
    # torch re-raises a DataLoader worker's error with the worker's traceback as its message.
    wrapped = ValueError("Caught ValueError in DataLoader worker process 3.\nOriginal Traceback (most recent "
                         "call last):\n  File \"util/dataset.py\", line 700, in load_episode\n    raise "
                         "ValueError(...)\nValueError: query image 'a.jpg': too elongated\n")
    assert error_message(wrapped) == "query image 'a.jpg': too elongated (in DataLoader worker process 3)"
    assert error_message(ValueError("two\nlines")) == "two; lines"


# ------------------------------------------------------------------------ relative paths
def test_a_relative_data_root_is_named_as_relative_to_the_working_directory(tmp_path, monkeypatch):
    """Run from another folder, the toy config's relative data_root is looked up there: the message
    says so, and points to the repository root when the path exists there."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([sys.executable, os.path.join(REPOSITORY_ROOT, "train_sccan.py"), "--config", CONFIG,
                             "--opts", "data_root", "'no_such_data/toy'", "save_path", repr(str(tmp_path / "exp"))],
                            cwd=str(elsewhere), capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"))
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: data_root 'no_such_data/toy' (config key data_root) (relative to the "
                           f"working directory {elsewhere}) is not a folder"), last
    assert files_below(tmp_path) == []

    monkeypatch.chdir(elsewhere)
    cfg = load_config(CONFIG, ["data_root", "'lists/pascal'"])  # a folder of the repository
    with pytest.raises(FileNotFoundError, match=f"it exists under the repository root {REPOSITORY_ROOT}: run "
                                                f"from there, or give data_root as an absolute path"):
        check_data_root(cfg)
    monkeypatch.chdir(REPOSITORY_ROOT)
    check_data_root(cfg)
