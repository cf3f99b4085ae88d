"""Nothing silently wrong, nothing lost: checkpoints of the wrong kind or with non-finite weights
are refused in one line, a run holds its output folder against a second run, a save that runs out
of room says so in one line and keeps the previous checkpoint, stale temporary files of killed
saves are cleaned up. Each class runs the scripts as a user would, from the repository root (in
this process, tests/support/entry_points.py, where no other process or injected fault is needed)."""
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from experiment.models import build_model
from model.pspnet import PSPNet
from tests.scripts.test_cli_errors import assert_user_error, run
from tests.support import REPOSITORY_ROOT
from tests.support.entry_points import run_subprocess
from tests.support.toy_experiment import BASE_CONFIG, CONFIG, reduced_train_list, toy_opts
from util.config import load_config
from util.io import DiskFullError, OutputFolderLock, atomic_torch_save, remove_stale_partial_files


@pytest.fixture(scope="module")
def toy(toy_data_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("safety")
    small = str(folder / "train_small.txt")
    reduced_train_list(toy_data_root, small)
    return {"folder": folder, "small": small, "root": toy_data_root}


def _opts(toy, out, **overrides):
    return toy_opts(toy["root"], str(out), list_root=str(toy["folder"] / "fss"), train_list=toy["small"],
                    **overrides)


@pytest.fixture(scope="module")
def sccan_state():
    torch.manual_seed(0)
    return build_model(load_config(CONFIG), backbone_from_checkpoint=True).state_dict()


# ------------------------------------------------------------------- non-finite, wrong kind
def test_checkpoints_with_non_finite_weights_are_refused(toy, sccan_state, tmp_path):
    state = dict(sccan_state)
    bad_key = sorted(key for key in state if key.startswith("transformer") and state[key].is_floating_point())[0]
    state[bad_key] = state[bad_key].clone()
    state[bad_key].view(-1)[3] = float("nan")
    path = str(tmp_path / "diverged.pth")
    torch.save({"epoch": 3, "state_dict": state}, path)
    out = tmp_path / "out.json"
    result = run("test_sccan.py", "--config", CONFIG, "--weight", path, "--output", str(out),
                 "--opts", *_opts(toy, tmp_path / "exp"))
    assert_user_error(result, path, f"{bad_key} has 1 NaN/inf value(s)", "non-finite weights")
    assert not out.exists()
    # the same file given to the predictor, and a base learner with an inf
    with open(toy["small"]) as handle:
        image, mask = [os.path.join(toy["root"], part) for part in handle.readline().split()]
    result = run("-m", "tools.predict", "--config", CONFIG, "--weight", path, "--support",
                 f"{image}:{mask}", "--query", image, "--out", str(tmp_path / "pred"))
    assert_user_error(result, path, bad_key)
    base = PSPNet(layers=50, classes=16, pretrained_backbone=False).state_dict()
    base["cls.4.bias"] = base["cls.4.bias"].clone().fill_(float("inf"))
    base_path = str(tmp_path / "base_best.pth")
    torch.save({"epoch": 1, "state_dict": base, "optimizer": {}}, base_path)
    # (a full checkpoint holds the base learner: the file is read where the model is built from
    # it, as for the untrained baseline)
    result = run("test_sccan.py", "--config", CONFIG, "--untrained", "--opts",
                 *_opts(toy, tmp_path / "exp", base_learner=True, base_learner_weights=base_path))
    assert_user_error(result, base_path, "cls.4.bias has 16 NaN/inf value(s)")
    # a training run that would read it is refused before its folder, config and log exist
    result = run("train_sccan.py", "--config", CONFIG, "--opts",
                 *_opts(toy, tmp_path / "train", base_learner=True, base_learner_weights=base_path))
    assert_user_error(result, base_path, "cls.4.bias has 16 NaN/inf value(s)")
    assert not (tmp_path / "train").exists()


def test_a_checkpoint_of_the_wrong_kind_says_what_it_is_and_where_it_belongs(toy, sccan_state, tmp_path):
    pspnet = str(tmp_path / "base.pth")
    torch.save({"epoch": 1, "state_dict": PSPNet(layers=50, classes=16, pretrained_backbone=False).state_dict(),
                "optimizer": {}}, pspnet)
    sccan = str(tmp_path / "sccan.pth")
    torch.save({"epoch": 3, "state_dict": sccan_state}, sccan)
    result = run("test_sccan.py", "--config", CONFIG, "--weight", pspnet, "--opts", *_opts(toy, tmp_path / "exp"))
    last = assert_user_error(result, pspnet, "is a base learner (BAM's PSPNet) checkpoint",
                             "base_learner_weights", "not a SCCAN checkpoint")
    assert len(last) < 300, last
    result = run("test_sccan.py", "--config", CONFIG, "--untrained", "--opts",
                 *_opts(toy, tmp_path / "exp", base_learner=True, base_learner_weights=sccan))
    assert_user_error(result, sccan, "is a SCCAN checkpoint", "not a base learner")
    # The plain checkpoint tested as an ensemble one: its missing base learner is named.
    result = run("test_sccan.py", "--config", CONFIG, "--weight", sccan, "--opts",
                 *_opts(toy, tmp_path / "exp", base_learner=True, base_learner_weights=pspnet))
    assert_user_error(result, sccan, "plain SCCAN one (no base learner)", "base_learner: False")


# --------------------------------------------------------------------------- the folder lock
def _train(toy, out, *extra, **overrides):
    return [sys.executable, "train_sccan.py", "--config", CONFIG, *extra, "--opts",
            *_opts(toy, out, **overrides)]


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_lives(toy, tmp_path):
    out = tmp_path / "exp"
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    first = subprocess.Popen(_train(toy, out, epochs=200, batch_size=8), cwd=REPOSITORY_ROOT,
                             env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = out / "train_1shot.lock"
    try:
        deadline = time.time() + 120
        while not (out / "snapshot" / "latest_1shot.pth").exists():
            assert first.poll() is None and time.time() < deadline, "the first run ended or stalled"
            time.sleep(0.2)
        assert json.loads(lock.read_text())["pid"] == first.pid
        config_before = (out / "config_1shot.yaml").read_bytes()
        log_before = (out / "train_1shot.log").read_bytes()
        second = run(*_train(toy, out, "--overwrite", epochs=1)[1:])
        last = assert_user_error(second, str(out), "is in use by another run", f"process {first.pid}")
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
        assert (out / "config_1shot.yaml").read_bytes() == config_before
        assert (out / "train_1shot.log").read_bytes().startswith(log_before)  # only the first writes
        # the 5-shot run of the same fold has its own files and lock
        assert lock.exists() and not (out / "train_5shot.lock").exists(), last
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # killed: its lock is stale and the next run takes it over; a temporary file of a save the
    # kill interrupted is removed
    assert lock.exists()
    stale = out / "snapshot" / f".latest_1shot.pth.{first.pid}.zz_k1m.partial"
    stale.write_bytes(b"\0" * 1000)
    again = run(*_train(toy, out, "--overwrite", epochs=1, batch_size=8)[1:])
    assert again.returncode == 0, again.stderr[-2000:]
    assert not lock.exists()  # released at the end of the run
    assert not stale.exists()


def test_the_lock_of_a_dead_process_is_taken_over_and_the_own_process_may_reenter(tmp_path):
    path = str(tmp_path / "train.lock")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    with open(path, "w") as handle:
        json.dump({"pid": int(dead), "host": os.uname().nodename, "started": "then"}, handle)
    lock = OutputFolderLock(path, "the folder")
    lock.acquire()
    assert json.load(open(path))["pid"] == os.getpid()
    lock.acquire()  # the same process again (a stopped run resumed in-process)
    lock.release()
    assert not os.path.exists(path)
    with open(path, "w") as handle:  # a lock held on another machine cannot be checked
        json.dump({"pid": 1, "host": "another-node", "started": "now"}, handle)
    with pytest.raises(Exception, match=r"the folder is in use by another run \(process 1 on host "
                                        r"another-node; delete .*train.lock if that run has ended"):
        lock.acquire()


def test_train_base_holds_its_folder_too(toy, tmp_path):
    out = tmp_path / "base"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / "train.lock").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename,
                                                    "started": "now"}))
        result = run("train_base.py", "--config", BASE_CONFIG, "--opts", "data_root", repr(toy["root"]),
                     "train_list", repr(toy["small"]), "val_list", repr(toy["small"]), "base_save_path",
                     repr(str(out)), "base_learner_weights", repr(str(tmp_path / "best.pth")),
                     "train_h", "33", "train_w", "33", "val_size", "33", "workers", "0")
        assert_user_error(result, str(out), "is in use by another run", f"process {holder.pid}")
        assert sorted(os.listdir(out)) == ["train.lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------------------------- disk full
class _RoomFor(io.RawIOBase):
    """A file handle on a disk with room for ``limit`` bytes."""

    def __init__(self, handle, limit):
        self.handle, self.limit, self.written = handle, limit, 0

    def writable(self):
        return True

    def write(self, data):
        if self.written + len(data) > self.limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.handle.write(data)

    def fileno(self):
        return self.handle.fileno()

    def flush(self):
        self.handle.flush()

    def close(self):
        self.handle.close()
        super().close()


def test_a_save_without_room_is_one_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "latest.pth")
    atomic_torch_save({"epoch": 0, "weights": torch.zeros(10)}, path)
    before = open(path, "rb").read()
    import util.io

    real_fdopen = os.fdopen
    monkeypatch.setattr(util.io.os, "fdopen", lambda descriptor, mode: _RoomFor(real_fdopen(descriptor, mode), 4096))
    with pytest.raises(DiskFullError) as raised:
        atomic_torch_save({"epoch": 1, "weights": torch.zeros(100000)}, path)
    message = str(raised.value)
    assert message.startswith(f"no room to write {path} (No space left on device; about 0.4 MiB needed")
    assert "MiB free in" in message and "the previous latest.pth is intact" in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["latest.pth"]  # no temporary file left


INJECT = """
import errno, os, sys
import util.io
real = util.io.atomic_write
def failing(destination, write, durable=False, expected_bytes=None):
    if os.path.basename(destination) == "latest_1shot.pth" and os.path.exists(destination):
        def write_then_fail(handle):
            handle.write(b"x" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(destination, write_then_fail, durable, expected_bytes)
    return real(destination, write, durable, expected_bytes)
util.io.atomic_write = failing
import train_sccan
from util.cli import run_entry_point
sys.exit(run_entry_point(train_sccan.main, sys.argv[1:]))
"""


def test_training_that_runs_out_of_room_stops_with_one_line(toy, tmp_path):
    out = tmp_path / "exp"
    result = run_subprocess("-c", INJECT, "--config", CONFIG, "--opts", *_opts(toy, out, epochs=2, batch_size=8))
    latest = out / "snapshot" / "latest_1shot.pth"
    assert_user_error(result, f"no room to write {latest}", "the previous latest_1shot.pth is intact",
                      "MiB needed")
    assert [line for line in result.stderr.splitlines() if "rror" in line] == \
        [result.stderr.strip().splitlines()[-1]]  # one line, after the progress bars
    assert torch.load(latest, weights_only=True)["epoch"] == 0  # the first epoch's, readable
    assert not [name for name in os.listdir(out / "snapshot") if name.endswith(".partial")]
    assert not (out / "train_1shot.lock").exists()


# ----------------------------------------------------------------------- stale partial files
def test_stale_partial_files_of_killed_saves_are_removed(tmp_path):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    stale = tmp_path / f".latest_1shot.pth.{dead}.k2j_x9.partial"
    live = tmp_path / f".latest_1shot.pth.{os.getpid()}.a8_bc1.partial"
    finished = tmp_path / "latest_1shot.pth"
    for path in (stale, live, finished):
        path.write_bytes(b"data")
    assert remove_stale_partial_files(str(tmp_path)) == [str(stale)]
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, finished.name])


# ----------------------------------------------------------------- files of the wrong kind
def test_episode_files_are_checked_for_kind_structure_and_fit(toy, sccan_state, tmp_path):
    weight = str(tmp_path / "sccan.pth")
    torch.save({"epoch": 3, "state_dict": sccan_state}, weight)
    result_file = tmp_path / "result.json"
    result_file.write_text(json.dumps({"config": CONFIG, "runs": [{"mIoU": 0.5}]}))
    result = run("test_sccan.py", "--config", CONFIG, "--weight", weight, "--episodes-from", str(result_file),
                 "--opts", *_opts(toy, tmp_path / "exp"))
    assert_user_error(result, f"{result_file} is a result file of test_sccan.py", "not an episode file",
                      "--dump-episodes")

    from evaluation.episodes import check_episodes_fit, load_episodes
    episodes_file = tmp_path / "episodes.json"
    episode = {"query": ["a.jpg", "a.png"], "class_chosen": 3, "supports": [["b.jpg", "b.png"]]}
    episodes_file.write_text(json.dumps({"meta": {"data_set": "pascal", "split": 0, "shot": 1},
                                         "episodes": [episode]}))
    episodes = load_episodes(str(episodes_file))
    check_episodes_fit(str(episodes_file), episodes, [1, 2, 3, 4, 5], 1)
    with pytest.raises(ValueError, match=r"episode 0 is of class 3, not one of this config's test classes "
                                         r"\[6, 7, 8, 9, 10\] \(the file was dumped with data_set pascal, "
                                         r"split 0, shot 1\)"):
        check_episodes_fit(str(episodes_file), episodes, [6, 7, 8, 9, 10], 1, {"data_set": "pascal",
                                                                               "split": 0, "shot": 1})
    with pytest.raises(ValueError, match=r"episode 0 has 1 supports but the config's shot is 5"):
        check_episodes_fit(str(episodes_file), episodes, [1, 2, 3, 4, 5], 5)
    for broken, message in ((dict(episode, class_chosen=3.0), "episode 0 is malformed"),
                            (dict(episode, supports=[]), "episode 0 is malformed"),
                            ({"query": ["a.jpg", "a.png"]}, r"episode 0 lacks \['class_chosen', 'supports'\]"),
                            ([1, 2], "episode 0 is a list")):
        episodes_file.write_text(json.dumps({"episodes": [broken]}))
        with pytest.raises(ValueError, match=message):
            load_episodes(str(episodes_file))
    episodes_file.write_bytes(b"\xff\xfe not json")
    with pytest.raises(ValueError, match="not an episode file"):
        load_episodes(str(episodes_file))


def test_output_paths_are_checked_before_any_work(toy, sccan_state, tmp_path):
    weight = str(tmp_path / "sccan.pth")
    torch.save({"epoch": 3, "state_dict": sccan_state}, weight)
    folder = tmp_path / "results"
    folder.mkdir()
    start = time.time()
    result = run("test_sccan.py", "--config", CONFIG, "--weight", weight, "--output", str(folder),
                 "--opts", *_opts(toy, tmp_path / "exp", test_num=1000))
    assert_user_error(result, f"--output {folder}: is a folder")
    assert "eval" not in result.stderr  # refused before the evaluation started
    (tmp_path / "a_file").write_text("")
    result = run("test_sccan.py", "--config", CONFIG, "--weight", weight, "--dump-episodes",
                 str(tmp_path / "a_file" / "episodes.json"), "--opts", *_opts(toy, tmp_path / "exp"))
    assert_user_error(result, "--dump-episodes", "a_file is a file, not a folder")
    assert not (tmp_path / "exp").exists() and time.time() - start < 60


def test_predict_skips_a_bad_query_names_it_and_fails_at_the_end(toy, sccan_state, tmp_path):
    import cv2
    import numpy as np

    weight = str(tmp_path / "sccan.pth")
    torch.save({"epoch": 3, "state_dict": sccan_state}, weight)
    with open(toy["small"]) as handle:
        pairs = [[os.path.join(toy["root"], part) for part in line.split()] for line in handle][:2]
    queries = tmp_path / "queries"
    queries.mkdir()
    for number, (image, _) in enumerate(pairs):
        os.link(image, queries / f"good{number}.jpg")
    cv2.imwrite(str(queries / "long.png"), np.zeros((10000, 10, 3), np.uint8))  # too elongated
    (queries / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "out"
    result = run("-m", "tools.predict", "--config", CONFIG, "--weight", weight, "--support",
                 f"{pairs[0][0]}:{pairs[0][1]}", "--query", str(queries), "--out", str(out),
                 "--opts", "train_h", "65", "train_w", "65", "val_size", "65", "feature_size", "8")
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3, result.stderr
    assert str(queries / "broken.jpg") in errors[0] and "(query skipped)" in errors[0]
    assert str(queries / "long.png") in errors[1] and "too elongated" in errors[1]
    assert errors[2].startswith("error: 2 of 4 queries failed and were skipped; the first: ")
    assert str(queries / "broken.jpg") in errors[2] and "is a truncated JPEG" in errors[2]
    assert sorted(os.listdir(out)) == ["good0_mask.png", "good0_overlay.png", "good1_mask.png",
                                       "good1_overlay.png"]


# ------------------------------------------------------------ episode files and FSS list folders
def test_an_episode_file_is_checked_completely_before_the_evaluation(toy, tmp_path):
    with open(os.path.join(toy["root"], "val.txt")) as handle:
        pairs = [[os.path.join(toy["root"], part) for part in line.split()] for line in handle][:3]
    episodes = [{"query": pairs[0], "class_chosen": 1, "supports": [pairs[1]]},
                {"query": pairs[1], "class_chosen": 1, "supports": [pairs[2]], "note": "hand-edited"}]
    episode_file = tmp_path / "episodes.json"
    episode_file.write_text(json.dumps({"meta": {"data_set": "pascal", "split": 0, "shot": 1}, "episodes": episodes}))
    output = tmp_path / "result.json"
    # FSS lists not built yet, in the test's folder: the file is refused before they are
    opts = toy_opts(toy["root"], str(tmp_path / "exp"), list_root=str(tmp_path / "fss"))
    result = run("test_sccan.py", "--config", CONFIG, "--all-foreground", "--episodes-from", str(episode_file),
                 "--output", str(output), "--opts", *opts)
    last = assert_user_error(result)
    assert last == (f"error: {episode_file}: episode 1 has unknown key(s) ['note']: an episode has exactly query, "
                    f"class_chosen and supports (episodes written by test_sccan.py --dump-episodes)")
    assert sorted(os.listdir(tmp_path)) == ["episodes.json"]  # no result, no chart, no run folder, no lists
    # A replay draws no episodes: recording one would silently write nothing.
    result = run("test_sccan.py", "--config", CONFIG, "--all-foreground", "--episodes-from", str(episode_file),
                 "--dump-episodes", str(tmp_path / "again.json"), "--output", str(output), "--opts", *opts)
    assert assert_user_error(result) == (
        f"error: --dump-episodes {tmp_path / 'again.json'} with --episodes-from: a replayed run draws no episodes "
        f"of its own to record (they are those of {episode_file}); copy that file instead")
    assert sorted(os.listdir(tmp_path)) == ["episodes.json"]


def test_a_list_root_that_is_a_file_is_refused_before_any_list_is_built(toy, tmp_path):
    a_file = tmp_path / "lists.txt"
    a_file.write_text("kept\n")
    result = run("test_sccan.py", "--config", CONFIG, "--all-foreground", "--output", str(tmp_path / "result.json"),
                 "--opts", *toy_opts(toy["root"], str(tmp_path / "exp"), list_root=str(a_file)))
    last = assert_user_error(result)
    assert last == (f"error: list_root '{a_file}' is a file, not a folder; list_root is the folder of the FSS lists "
                    f"(<list_root>/val/data_list_0.txt and sub_class_file_list_0.txt)")
    assert "building FSS lists" not in result.stderr  # refused before reading the labels of val_list
    assert sorted(os.listdir(tmp_path)) == ["lists.txt"] and a_file.read_text() == "kept\n"
