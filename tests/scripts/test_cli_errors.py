"""User mistakes at every entry point end in one line ``error: ...`` and exit status 2.

Each case runs the script as a user would, from the repository root, and checks the message,
the exit status and that no traceback is shown; ``--debug`` / SCCAN_DEBUG=1 bring the traceback
back. Most cases run the script in this process (tests/support/entry_points.py: the same
``sys.argv``, folder and environment, about 3 s less per case); a missing config file at every
entry point and the traceback of ``--debug`` run in a subprocess, and the first also checks that
both ways report the same.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from experiment.models import build_model
from tests.support import REPOSITORY_ROOT
from tests.support.entry_points import run_in_process, run_subprocess
from tests.support.toy_experiment import CONFIG, reduced_train_list, toy_opts
from util.config import load_config, merge_opts

#: A script or tool run as ``python ARGUMENTS...`` would run it (here: in this process).
run = run_in_process


def assert_names_a_readme_section(message):
    section = message.split("README, '")[1].split("'")[0]
    with open(os.path.join(REPOSITORY_ROOT, "README.md")) as handle:
        headings = [line.lstrip("#").strip() for line in handle if line.startswith("## ") or
                    line.startswith("### ")]
    assert section in headings, (section, headings)


def assert_user_error(result, *fragments, absent=()):
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "error: " in last, result.stderr
    for fragment in fragments:
        assert fragment in last, (fragment, last)
    for fragment in absent:
        assert fragment not in last, (fragment, last)
    return last


@pytest.fixture(scope="module")
def toy(toy_data_root, tmp_path_factory):
    """The toy config's --opts for a tiny run, and a tiny training list."""
    folder = tmp_path_factory.mktemp("cli")
    small = str(folder / "train_small.txt")
    reduced_train_list(toy_data_root, small)
    opts = toy_opts(toy_data_root, str(folder / "exp"), list_root=str(folder / "fss"), train_list=small)
    return {"folder": folder, "opts": opts, "small_list": small}


@pytest.fixture(scope="module")
def checkpoints(toy):
    """A full SCCAN checkpoint of the toy config (ResNet-50) and a ResNet-101 one."""
    folder = toy["folder"]
    paths = {}
    torch.manual_seed(0)
    for layers in (50, 101):
        cfg = load_config(CONFIG, ["layers", str(layers)])
        state = build_model(cfg, backbone_from_checkpoint=True).state_dict()
        paths[layers] = str(folder / f"sccan_resnet{layers}.pth")
        torch.save({"epoch": 3, "state_dict": state}, paths[layers])
    paths["bare"] = str(folder / "bare_state_dict.pth")
    torch.save(torch.load(paths[50], weights_only=True)["state_dict"], paths["bare"])
    return paths


# ------------------------------------------------------------------------ configs and --opts
@pytest.mark.parametrize("command", [["train_sccan.py"], ["train_base.py"], ["test_sccan.py"],
                                     ["-m", "benchmarks.probe_features"]],
                         ids=["train_sccan", "train_base", "test_sccan", "benchmarks.probe_features"])
def test_missing_config_file(command):
    """In a new interpreter, as a user types it; the in-process run reports exactly the same."""
    result = run_subprocess(*command, "--config", "config/nope.yaml")
    assert_user_error(result, "configuration file not found", "config/nope.yaml")
    assert run_in_process(*command, "--config", "config/nope.yaml") == result


def test_unknown_and_mistyped_opts_and_misplaced_flags():
    last = assert_user_error(run("test_sccan.py", "--config", CONFIG, "--opts", "base_lrr", "0.1",
                                 "shot", "'five'"),
                             "unknown configuration key 'base_lrr'", "did you mean 'base_lr'")
    assert "--opts shot" in last and "int" in last  # both problems in one line
    assert_user_error(run("test_sccan.py", "--config", CONFIG, "--opts", "shot", "1", "--weight", "x.pth"),
                      "'--weight' looks like a flag", "flags go before --opts")


def test_opts_accept_key_equals_value(toy):
    """``test_num=3`` as typed on the command line (no --episodes to override it), beside
    ``key value`` pairs: the run evaluates 3 episodes, not the toy opts' 6 or the config's 200."""
    pairs = toy["opts"]
    opts = [item for key, value in zip(pairs[::2], pairs[1::2]) if key != "test_num" for item in (key, value)]
    output = toy["folder"] / "equals.json"
    result = run("test_sccan.py", "--config", CONFIG, "--all-foreground", "--output", str(output),
                 "--opts", *opts, "test_num=3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| episodes | 3 |" in result.stdout
    summary = json.loads(output.read_text())
    assert summary["test_num"] == 3 and [entry["episodes"] for entry in summary["runs"]] == [3]


@pytest.mark.parametrize("flag, value", [("--episodes", "0"), ("--seeds", "-1")])
def test_non_positive_counts(flag, value):
    last = assert_user_error(run("test_sccan.py", "--config", CONFIG, flag, value))
    assert last == f"test_sccan.py: error: argument {flag}: expected a positive integer, got {value}"


def test_debug_flag_and_environment_show_the_traceback():
    """The error propagates as Python reports an uncaught exception: status 1, the traceback
    ending in the exception itself, and no one-line ``error: ...``."""
    for result in (run_subprocess("test_sccan.py", "--config", "config/nope.yaml", "--debug"),
                   run_subprocess("test_sccan.py", "--config", "config/nope.yaml",
                                  environment={"SCCAN_DEBUG": "1"})):
        assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
        lines = result.stderr.strip().splitlines()
        assert lines[0] == "Traceback (most recent call last):", result.stderr
        assert lines[-1] == "FileNotFoundError: configuration file not found: config/nope.yaml"
        assert not any(line.startswith("error: ") for line in lines)


# --------------------------------------------------------------------------------- data
def test_missing_toy_data_root_names_the_key_and_the_generator(tmp_path):
    missing = str(tmp_path / "toy")
    assert_user_error(run("train_sccan.py", "--config", CONFIG, "--opts", "data_root", repr(missing),
                          "save_path", repr(str(tmp_path / "exp"))),
                      "data_root", missing, "python -m tools.make_toy_dataset")
    assert not (tmp_path / "exp").exists()  # nothing is written before the inputs are checked
    pascal = os.path.join("config", "pascal", "pascal_split0_resnet50.yaml")
    missing_voc = str(tmp_path / "VOC2012")
    last = assert_user_error(run("test_sccan.py", "--config", pascal, "--opts", "data_root", repr(missing_voc)),
                             "data_root", "python -m tools.prepare_pascal")
    assert_names_a_readme_section(last)


def test_empty_training_list_with_a_random_backbone(toy, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    opts = merge_opts(toy["opts"], ["train_list", repr(str(empty)), "save_path", repr(str(tmp_path / "exp"))])
    assert_user_error(run("train_sccan.py", "--config", CONFIG, "--opts", *opts),
                      "train_list", "is empty", "random backbone")


# -------------------------------------------------------------------------- checkpoints
def test_garbage_and_truncated_checkpoints(toy, checkpoints, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"<html>quota exceeded</html>")
    truncated = tmp_path / "truncated.pth"
    with open(checkpoints[50], "rb") as handle:
        truncated.write_bytes(handle.read()[:100_000])
    for path in (garbage, truncated):
        last = assert_user_error(run("test_sccan.py", "--config", CONFIG, "--weight", str(path),
                                     "--opts", *toy["opts"]),
                                 str(path), "is not a PyTorch checkpoint", "truncated or failed download")
        assert "weights_only" not in last


def test_checkpoint_of_the_other_depth_names_the_config_to_use(toy, checkpoints):
    last = assert_user_error(run("test_sccan.py", "--config", CONFIG, "--weight", checkpoints[101],
                                 "--opts", *toy["opts"]),
                             "ResNet-101 backbone", "builds ResNet-50", "resnet101")
    assert "missing keys" not in last and len(last) < 400


def test_weights_not_found_messages(toy, tmp_path):
    missing = str(tmp_path / "nope.pth")
    assert_user_error(run("test_sccan.py", "--config", CONFIG, "--weight", missing, "--opts", *toy["opts"]),
                      f"--weight {missing!r}", absent=("pass --weight",))
    assert_user_error(run("test_sccan.py", "--config", CONFIG, "--weight", str(tmp_path), "--opts", *toy["opts"]),
                      f"--weight {str(tmp_path)!r} is a folder, not a checkpoint file")
    last = assert_user_error(run("test_sccan.py", "--config", CONFIG, "--opts", *toy["opts"]),
                             "weights not found", "final_1shot.pth", "--weight PATH")
    assert_names_a_readme_section(last)


def test_released_checkpoint_evaluates_without_backbone_files(toy, checkpoints, tmp_path):
    # pretrained_backbone True and no ImageNet file: a full checkpoint needs none ...
    opts = toy["opts"] + ["pretrained_backbone", "True",
                          "backbone_weights", repr(str(tmp_path / "initmodel" / "resnet50_v2.pth"))]
    result = run("test_sccan.py", "--config", CONFIG, "--weight", checkpoints[50], "--episodes", "2",
                 "--output", str(tmp_path / "released.json"), "--opts", *opts)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "released.json").exists()
    # ... while the untrained model, which has no checkpoint, does need it.
    assert_user_error(run("test_sccan.py", "--config", CONFIG, "--untrained", "--opts", *opts),
                      "Backbone weights not found", "resnet50_v2.pth")


# ------------------------------------------------------------------------------ training
def test_resume_needs_a_training_checkpoint(toy, checkpoints, tmp_path):
    for path, fragment in ((checkpoints["bare"], "bare state_dict"),
                           (checkpoints[50], "without 'optimizer', 'optimizer_swin'")):
        opts = merge_opts(toy["opts"], ["resume", repr(path), "save_path", repr(str(tmp_path / "exp"))])
        assert_user_error(run("train_sccan.py", "--config", CONFIG, "--opts", *opts),
                          fragment, "resume needs a training checkpoint", "latest_1shot.pth")


def test_resume_refuses_another_shot_fold_or_backbone(toy, checkpoints, tmp_path):
    other = torch.load(checkpoints[50], weights_only=True)
    other.update(optimizer={}, optimizer_swin={}, config={"data_set": "pascal", "split": 2, "shot": 5,
                                                           "layers": 50, "config_file": "other.yaml"})
    path = str(tmp_path / "other_run.pth")
    torch.save(other, path)
    opts = merge_opts(toy["opts"], ["resume", repr(path), "save_path", repr(str(tmp_path / "exp"))])
    assert_user_error(run("train_sccan.py", "--config", CONFIG, "--opts", *opts),
                      "belongs to another run", "split 2", "shot 5", "other.yaml")


def test_rerun_into_a_used_folder_and_validation_off(toy, tmp_path):
    save_path = str(tmp_path / "exp")
    opts = merge_opts(toy["opts"], ["save_path", repr(save_path), "epochs", "1", "batch_size", "8"])
    snapshot = os.path.join(save_path, "snapshot")
    os.makedirs(snapshot)
    with open(os.path.join(snapshot, "latest_1shot.pth"), "wb") as handle:
        handle.write(b"an earlier run")
    assert_user_error(run("train_sccan.py", "--config", CONFIG, "--opts", *opts),
                      "already holds a 1-shot run", f"--opts resume {snapshot}/latest_1shot.pth",
                      "--overwrite")
    # A 5-shot run does not collide with the 1-shot one (its files carry its shot).
    assert not os.path.exists(os.path.join(snapshot, "latest_5shot.pth"))
    result = run("train_sccan.py", "--config", CONFIG, "--overwrite", "--opts", *opts)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "validation was off" in result.stdout and "best mIoU 0.0000" not in result.stdout
    assert torch.load(os.path.join(snapshot, "latest_1shot.pth"), weights_only=True)["epoch"] == 0


# --------------------------------------------------------------------------------- tools
def test_tools_report_user_errors_in_one_line(tmp_path):
    assert_user_error(run("-m", "tools.make_toy_dataset", "--out", str(tmp_path / "toy"), "--num-images", "20"),
                      "too small")
    assert_user_error(run("-m", "benchmarks.bench_model", "--size", "100"), "--size 100", "multiple of 8")
    assert_user_error(run("-m", "tools.toy_demo", "--config", "config/nope.yaml"),
                      "configuration file not found")
    assert_user_error(run("-m", "benchmarks.probe_features", "--config", CONFIG, "--opts", "data_root",
                          repr(str(tmp_path / "none"))), "data_root")
    assert_user_error(run("-m", "tools.prepare_pascal", "--voc", str(tmp_path / "none"), "--sbd", str(tmp_path)),
                      "missing folder", "none")
    # Output places are checked before the labels are converted (minutes on the real datasets).
    a_file = tmp_path / "a_file"
    a_file.write_text("kept")
    for tool, inputs in (("tools.prepare_pascal", ["--voc", str(tmp_path / "none"), "--sbd", str(tmp_path)]),
                         ("tools.prepare_coco", ["--coco-root", str(tmp_path / "none")])):
        result = run("-m", tool, *inputs, "--lists-dir", str(a_file))
        assert result.returncode == 2 and result.stderr.strip() == (
            f"error: --lists-dir {a_file}: is a file, not a folder; give a folder path"), result.stderr
    assert a_file.read_text() == "kept"


def test_tools_run_as_files_say_how_to_run_them():
    """Every tool and benchmark that needs the project's packages: a user mistake, so exit status
    2 (README, Errors). They stop before importing them (~40 ms each), all started at once, through
    the one guard they share (tools/_as_module.py)."""
    files = sorted(os.path.join(folder, name) for folder in ("tools", "benchmarks")
                   for name in os.listdir(os.path.join(REPOSITORY_ROOT, folder))
                   if name.endswith(".py") and "import _as_module" in
                   open(os.path.join(REPOSITORY_ROOT, folder, name)).read())
    assert {"tools/toy_demo.py", "tools/predict.py", "benchmarks/bench_model.py"} <= set(files)
    processes = {path: subprocess.Popen([sys.executable, path, "--help"], cwd=REPOSITORY_ROOT,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for path in files}
    for path, process in processes.items():
        stdout, stderr = process.communicate(timeout=120)
        module = path[:-3].replace(os.sep, ".")
        assert process.returncode == 2, (path, process.returncode, stderr)
        assert stdout == "" and stderr == ("error: run the tools as modules from the repository root: "
                                           f"python -m {module} ...\n"), (path, stderr)
