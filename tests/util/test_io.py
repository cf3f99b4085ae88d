"""Atomic writes, the output-folder lock and the output-path checks (util/io.py)."""
import errno
import json
import os
import socket
import time

import pytest
import torch

from util import io as io_module
from util.cli import UserError
from util.io import OutputFolderLock, atomic_torch_save, check_distinct_paths, same_path


def test_interrupted_atomic_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "latest.pth")
    atomic_torch_save({"epoch": 1, "value": torch.ones(3)}, path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed before rename")

    monkeypatch.setattr(io_module.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"epoch": 2, "value": torch.zeros(3)}, path)
    monkeypatch.undo()
    restored = torch.load(path, weights_only=True)
    assert restored["epoch"] == 1 and torch.equal(restored["value"], torch.ones(3))
    assert os.listdir(tmp_path) == ["latest.pth"]
    atomic_torch_save({"epoch": 2}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 2


# ---------------------------------------------------------------------- the output-folder lock
def _lock(tmp_path):
    return OutputFolderLock(str(tmp_path / "train_1shot.lock"), "exp/run (1-shot run)")


def _age(path, seconds):
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_the_lock_appears_with_its_owner_in_it(tmp_path, monkeypatch):
    """The race of a lock created empty and filled afterwards: whoever looks at the lock file
    the moment its name exists finds the owner in it."""
    lock = _lock(tmp_path)
    real_link, seen = os.link, []

    def link(source, destination):
        assert not os.path.exists(destination)
        real_link(source, destination)
        with open(destination) as handle:
            seen.append(json.load(handle))

    monkeypatch.setattr(io_module.os, "link", link)
    lock.acquire()
    assert seen and seen[0]["pid"] == os.getpid() and seen[0]["host"] == socket.gethostname()
    assert os.listdir(tmp_path) == ["train_1shot.lock"]  # no temporary file left
    lock.release()
    assert os.listdir(tmp_path) == []

    def no_hard_links(source, destination):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(io_module.os, "link", no_hard_links)  # e.g. a FAT or FUSE file system
    lock.acquire()
    assert json.loads((tmp_path / "train_1shot.lock").read_text())["pid"] == os.getpid()
    assert os.listdir(tmp_path) == ["train_1shot.lock"]


def test_an_empty_lock_created_just_now_is_held_not_taken_over(tmp_path):
    """Another run between creating its lock and writing its owner (a file system without hard
    links): its lock is young and empty, and must not be mistaken for a stale one."""
    lock = _lock(tmp_path)
    path = tmp_path / "train_1shot.lock"
    for content in ("", '{"pid": 12'):  # nothing yet, half the owner
        path.write_text(content)
        with pytest.raises(UserError) as refused:
            lock.acquire()
        assert str(refused.value).startswith("exp/run (1-shot run) is being claimed by another run right "
                                             f"now (its lock file {path} was created 0 s ago")
        assert path.read_text() == content  # not taken over
    _age(path, 60)  # no run fills a lock for a minute: left over, and named with what to do
    with pytest.raises(UserError) as refused:
        lock.acquire()
    assert str(refused.value) == (f"the lock file {path} does not name its run ('{{\"pid\": 12'); expected "
                                  f"JSON with the pid, host and start time of the run using exp/run (1-shot run): "
                                  f"if no run uses it, delete the lock file and start again")


@pytest.mark.parametrize("content, shown", [
    ("", "is empty"), ("[1]", "does not name its run ('[1]')"),
    ('{"pid": "abc", "host": "h"}', "does not name its run"), ("{}", "does not name its run ('{}')"),
    ('{"pid": 0, "host": "h"}', "does not name its run"),  # os.kill(0) would be the process group
    ('{"pid": true, "host": "h"}', "does not name its run"), ('{"pid": 5, "host": ""}', "does not name its run"),
    ('{"pid": 99999999999999999999, "host": "h"}', "does not name its run"), ("\xff\xfe", "does not name")])
def test_a_lock_that_names_no_run_is_refused_in_one_line(tmp_path, content, shown):
    lock = _lock(tmp_path)
    path = tmp_path / "train_1shot.lock"
    path.write_bytes(content.encode("latin-1"))
    _age(path, 60)
    with pytest.raises(UserError) as refused:
        lock.acquire()
    message = str(refused.value)
    assert message.startswith(f"the lock file {path} {shown}") and "\n" not in message
    assert message.endswith("if no run uses it, delete the lock file and start again")
    assert path.read_bytes() == content.encode("latin-1")
    lock.release()  # at exit: quiet, and leaves another's file alone
    assert path.exists()


def test_a_lock_that_cannot_be_read(tmp_path):
    lock = _lock(tmp_path)
    (tmp_path / "train_1shot.lock").mkdir()
    with pytest.raises(UserError, match=r"^the lock file .*train_1shot.lock is a folder: if no run uses "
                                        r"exp/run \(1-shot run\), delete it and start again$"):
        lock.acquire()


def test_a_live_owner_holds_and_a_dead_one_is_taken_over(tmp_path):
    lock = _lock(tmp_path)
    path = tmp_path / "train_1shot.lock"
    path.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))  # no start time
    with pytest.raises(UserError, match=rf"in use by another run \(process {os.getppid()}, started at an "
                                        r"unknown time\)"):
        lock.acquire()
    path.write_text(json.dumps({"pid": 2 ** 22 + 1, "host": socket.gethostname(), "started": "then"}))
    lock.acquire()  # above Linux's pid_max: no such process
    assert json.loads(path.read_text())["pid"] == os.getpid()


# ------------------------------------------------------------------------- distinct outputs
def test_same_path_sees_through_spellings_and_links(tmp_path):
    (tmp_path / "a.yaml").write_text("x")
    (tmp_path / "sub").mkdir()
    os.symlink(tmp_path / "a.yaml", tmp_path / "link.yaml")
    assert same_path(str(tmp_path / "sub" / ".." / "a.yaml"), str(tmp_path / "a.yaml"))
    assert same_path(str(tmp_path / "link.yaml"), str(tmp_path / "a.yaml"))
    assert same_path(str(tmp_path / "sub" / ".." / "new.json"), str(tmp_path / "new.json"))  # not there yet
    assert not same_path(str(tmp_path / "new.json"), str(tmp_path / "a.yaml"))
    check_distinct_paths([("--output", str(tmp_path / "r.json")), ("--dump-episodes", str(tmp_path / "e.json"))],
                         [("--config", str(tmp_path / "a.yaml"))])
    with pytest.raises(UserError) as refused:
        check_distinct_paths([("--output", str(tmp_path / "link.yaml"))], [("--config", str(tmp_path / "a.yaml"))])
    assert str(refused.value) == (f"--output {tmp_path / 'link.yaml'} is the same file as --config "
                                  f"{tmp_path / 'a.yaml'}: writing it would overwrite that input; give "
                                  f"--output another path")
    with pytest.raises(UserError, match=r"^--dump-episodes \S+ is the same file as --output: one output would "
                                        r"replace the other; give them different paths$"):
        check_distinct_paths([("--output", str(tmp_path / "r.json")),
                              ("--dump-episodes", str(tmp_path / "r.json"))])
