"""No output overwrites an input or another output of the same command, every output path is
checked before any work (naming the option or config key the user gave), and a lock file that
names no run is refused in one line, never taken over. The tools' own checks are in
tests/tools/ (test_predict.py, test_make_toy_dataset.py, test_bench_tools.py); the lock's unit
tests in tests/util/test_io.py."""
import os
import time

import pytest

import test_sccan
import train_base
import train_sccan
from evaluation.results import check_result_outputs
from tests.scripts.test_cli_errors import assert_user_error, run
from tests.support.toy_experiment import BASE_CONFIG, CONFIG
from util.cli import run_entry_point


def _files(tmp_path):
    """The names of every file and folder below ``tmp_path``, to see that nothing was written."""
    return sorted(os.path.relpath(os.path.join(folder, name), tmp_path)
                  for folder, folders, names in os.walk(tmp_path) for name in folders + names)


def _error(capsys, main, argv):
    """One in-process run of an entry point (the subprocess tests show that it is the same)."""
    status = run_entry_point(main, argv)
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 2, error
    assert len(error) == 1 and error[0].startswith("error: "), error
    return error[0][len("error: "):]


# --------------------------------------------------------------------------------- test_sccan
@pytest.fixture
def inputs(tmp_path):
    """A copy of the toy config, an episode file, a checkpoint file and a picture of the user's."""
    files = {"config": tmp_path / "config.yaml", "episodes": tmp_path / "episodes.json",
             "weight": tmp_path / "weight.pth", "picture": tmp_path / "holiday.png"}
    with open(CONFIG) as handle:
        files["config"].write_text(handle.read())
    for name in ("episodes", "weight", "picture"):
        files[name].write_text(name)
    return {name: str(path) for name, path in files.items()}


def _test_argv(tmp_path, inputs, *options):
    return ["--config", inputs["config"], *options, "--opts", "save_path", repr(str(tmp_path / "exp")),
            "list_root", repr(str(tmp_path / "fss")), "data_root", repr(str(tmp_path / "data"))]


def test_test_sccan_output_is_never_one_of_its_inputs(tmp_path, inputs):
    """As a user runs it: --output the --config file, refused in one line before any work."""
    before = _files(tmp_path)
    result = run("test_sccan.py", *_test_argv(tmp_path, inputs, "--output", inputs["config"]))
    assert_user_error(result)
    assert result.stderr.strip() == (f"error: --output {inputs['config']} is the same file as --config: writing "
                                     f"it would overwrite that input; give --output another path")
    assert _files(tmp_path) == before
    with open(CONFIG) as handle:
        assert open(inputs["config"]).read() == handle.read()


def test_test_sccan_outputs_and_the_chart_overwrite_nothing(tmp_path, inputs, capsys):
    """The siblings: an output that is another input (--weight, --episodes-from), two outputs in
    one file (the chart beside --output and --dump-episodes), the chart over a picture that is not
    an earlier chart, or over a folder, and a .png --output, which would be its own chart."""
    result = str(tmp_path / "result.json")
    cases = [
        (["--weight", inputs["weight"], "--output", inputs["weight"]],
         f"--output {inputs['weight']} is the same file as --weight: writing it would overwrite that input; "
         f"give --output another path"),
        (["--episodes-from", inputs["episodes"], "--output", os.path.join(str(tmp_path), ".", "episodes.json")],
         f"--output {tmp_path}/./episodes.json is the same file as --episodes-from {inputs['episodes']}: writing "
         f"it would overwrite that input; give --output another path"),
        (["--episodes-from", inputs["episodes"], "--dump-episodes", inputs["episodes"]],
         f"--dump-episodes {inputs['episodes']} with --episodes-from: a replayed run draws no episodes of its own "
         f"to record (they are those of {inputs['episodes']}); copy that file instead"),
        (["--output", result, "--dump-episodes", str(tmp_path / "result.png")],
         f"--dump-episodes {tmp_path / 'result.png'} is the same file as the chart of --output (<name>.png): one "
         f"output would replace the other; give them different paths"),
        (["--output", str(tmp_path / "chart.png")],
         f"--output {tmp_path / 'chart.png'}: the result is JSON and its per-class chart is written beside it as "
         f"<name>.png, this very file; give a .json name"),
        (["--output", str(tmp_path / "holiday.json")],
         f"--output {tmp_path / 'holiday.json'}: its per-class chart is written beside it as {inputs['picture']}, "
         f"which exists and is not the chart of an earlier result (there is no holiday.json): move that file, "
         f"or give --output another name"),
        (["--output", str(tmp_path / "pictures.json"), "--save-vis", str(tmp_path / "pictures.png")],
         f"--save-vis {tmp_path / 'pictures.png'} is the same file as the chart of --output (<name>.png): one "
         f"output would replace the other; give them different paths"),
    ]
    before = _files(tmp_path)
    for options, expected in cases:
        assert _error(capsys, test_sccan.run, _test_argv(tmp_path, inputs, *options)) == expected
    (tmp_path / "folder.png").mkdir()
    folder_argv = _test_argv(tmp_path, inputs, "--output", str(tmp_path / "folder.json"))
    message = _error(capsys, test_sccan.run, folder_argv)
    assert message == (f"--output {tmp_path / 'folder.json'}: its per-class chart is written beside it as "
                       f"{tmp_path / 'folder.png'}, which is a folder; give --output another name")
    assert _files(tmp_path) == sorted(before + ["folder.png"])
    assert open(inputs["picture"]).read() == "picture" and open(inputs["episodes"]).read() == "episodes"
    # an earlier result and its chart are replaced, as a run again is meant to
    (tmp_path / "earlier.json").write_text("{}")
    (tmp_path / "earlier.png").write_text("chart")
    argv = _test_argv(tmp_path, inputs, "--output", str(tmp_path / "earlier.json"))
    arguments, cfg = test_sccan.parse_arguments(argv)
    check_result_outputs(arguments, cfg, arguments.output, "--output")


# ------------------------------------------------------------------------ training outputs
def _train_argv(tmp_path, config, *opts):
    return ["--config", config, "--opts", "data_root", repr(str(tmp_path)), "list_root",
            repr(str(tmp_path / "fss")), *opts]


def test_training_output_folders_are_checked_before_anything_is_written(tmp_path, capsys):
    """save_path / base_save_path a file, below a file, a file where the snapshot folder goes,
    the base learner's best checkpoint a folder or one of the run's own checkpoints."""
    a_file = tmp_path / "a_file"
    a_file.write_text("kept")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "snapshot").write_text("kept")
    best = str(tmp_path / "base" / "snapshot" / "final.pth")
    cases = [
        (train_sccan.main, CONFIG, ["save_path", repr(str(a_file))],
         f"config key save_path {a_file}: is a file, not a folder; give a folder path"),
        (train_sccan.main, CONFIG, ["save_path", repr(str(a_file / "run"))],
         f"config key save_path {a_file / 'run'}: {a_file} is a file, not a folder"),
        (train_sccan.main, CONFIG, ["save_path", repr(str(tmp_path / "run"))],
         f"the snapshot folder of config key save_path {tmp_path / 'run' / 'snapshot'}: is a file, not a "
         f"folder; give a folder path"),
        (train_base.main, BASE_CONFIG, ["base_save_path", repr(str(a_file))],
         f"config key base_save_path {a_file}: is a file, not a folder; give a folder path"),
        (train_base.main, BASE_CONFIG, ["base_save_path", repr(str(tmp_path / "base")), "base_learner_weights",
                                        repr(str(tmp_path))],
         f"config key base_learner_weights {tmp_path}: is a folder, not a file; give a file path"),
        (train_base.main, BASE_CONFIG, ["base_save_path", repr(str(tmp_path / "base")), "base_learner_weights",
                                        repr(best)],
         f"config key base_learner_weights {best} is the same file as the run's final.pth: one output would "
         f"replace the other; give them different paths"),
    ]
    before = _files(tmp_path)
    _, config, opts, expected = cases[0]  # as a user runs it
    result = run("train_sccan.py", *_train_argv(tmp_path, config, *opts))
    assert_user_error(result)
    assert result.stderr.strip() == f"error: {expected}"
    for main, config, opts, expected in cases[1:]:
        assert _error(capsys, main, _train_argv(tmp_path, config, *opts)) == expected
    assert _files(tmp_path) == before and a_file.read_text() == "kept"


def test_a_lock_file_that_names_no_run_is_refused_not_taken_over(tmp_path, capsys):
    """The race of two runs starting together: the other run's lock, created a moment ago and
    still empty, is held (the old lock took an empty file for a stale one and removed it); one
    left empty for a minute says which file to delete."""
    out = tmp_path / "exp"
    out.mkdir()
    lock = out / "train_1shot.lock"
    lock.write_text("")
    argv = _train_argv(tmp_path, CONFIG, "save_path", repr(str(out)))
    result = run("train_sccan.py", *argv)  # as a user runs it
    assert_user_error(result)
    message = result.stderr.strip()
    assert message.startswith(f"error: {out} (1-shot run) is being claimed by another run right now (its lock "
                              f"file {lock} was created ")
    assert message.endswith("s ago and holds no owner yet): wait for that run to finish, or write elsewhere")
    then = time.time() - 60
    os.utime(lock, (then, then))
    assert _error(capsys, train_sccan.main, argv) == (
        f"the lock file {lock} is empty; expected JSON with the pid, host and start time of the run using {out} "
        f"(1-shot run): if no run uses it, delete the lock file and start again")
    assert os.listdir(out) == ["train_1shot.lock"] and lock.read_text() == ""
