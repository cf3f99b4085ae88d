"""Atomic file writes and state-dict key clean-up: the one implementation every writer uses.

Every file the project writes (checkpoints, configs, few-shot lists, result and episode JSON,
prepared labels and lists) goes to a temporary file in the destination's folder and is then
renamed over the destination with ``os.replace``, which is atomic on one file system: a reader,
or a run resumed after a crash, sees the old file or the complete new one, never half a file.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import tempfile
import time
from typing import Any, BinaryIO, Callable, Dict, List, Mapping, Optional

from util.cli import UserError

__all__ = ["DiskFullError", "OutputFolderLock", "atomic_write", "check_output_path", "atomic_write_bytes",
           "atomic_write_text", "atomic_write_json", "atomic_copy", "atomic_torch_save",
           "read_text", "remove_stale_partial_files", "strip_module_prefix"]

# Write failures that mean "no room", whatever layer reports them: the file system (ENOSPC), a
# quota (EDQUOT) or the process's file-size limit (EFBIG).
_NO_ROOM = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
MEBIBYTE = 2 ** 20


class DiskFullError(UserError):
    """A write ran out of room; the destination file was left as it was."""


def _no_room_error(error: BaseException) -> Optional[OSError]:
    """The OSError meaning 'no room' behind ``error`` (torch.save's zip writer reports it as a
    RuntimeError whose context is the OSError), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _NO_ROOM:
            return error
        error = error.__cause__ or error.__context__
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True

# mkstemp creates files readable by the owner only; finished files get the usual permissions
# (0666 minus the umask), like any file written with open().
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


def atomic_write(destination: str, write: Callable[[BinaryIO], None], durable: bool = False,
                 expected_bytes: Optional[int] = None) -> None:
    """Call ``write(handle)`` on a temporary file beside ``destination``, then rename it over
    ``destination``. ``durable``: fsync the file and its folder, so that the rename survives a
    power cut too (for checkpoints, whose loss costs hours). A write that runs out of room is a
    :class:`DiskFullError` naming the file, the room needed (``expected_bytes``, else what was
    written when it failed) and free, and saying that ``destination`` was not changed."""
    folder = os.path.dirname(os.path.abspath(destination))
    os.makedirs(folder, exist_ok=True)
    # A leading '.', the writer's process id and the '.partial' suffix: a left-over temporary
    # file is never mistaken for a finished checkpoint, label or list, and the next run can tell
    # that its writer is dead (remove_stale_partial_files).
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(destination)}.{os.getpid()}.", suffix=".partial", dir=folder)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(temporary, _FILE_MODE)
        os.replace(temporary, destination)
    except BaseException as error:
        # BaseException on purpose: a KeyboardInterrupt must not leave the temporary file behind.
        written = os.path.getsize(temporary) if os.path.exists(temporary) else 0
        if os.path.exists(temporary):
            os.remove(temporary)
        no_room = _no_room_error(error)
        if no_room is None:
            raise
        raise DiskFullError(_no_room_message(destination, folder, no_room, expected_bytes,
                                             written)) from None
    if durable:
        _fsync_folder(folder)


def _no_room_message(destination: str, folder: str, error: OSError, expected_bytes: Optional[int],
                     written: int) -> str:
    needed = (f"about {expected_bytes / MEBIBYTE:.1f} MiB needed" if expected_bytes else
              f"more than the {written / MEBIBYTE:.1f} MiB written needed")
    try:
        free = f", {shutil.disk_usage(folder).free / MEBIBYTE:.1f} MiB free in {folder}"
    except OSError:
        free = ""
    kept = (f"the previous {os.path.basename(destination)} is intact" if os.path.exists(destination)
            else "nothing was written")
    return (f"no room to write {destination} ({os.strerror(error.errno)}; {needed}{free}): {kept}; "
            f"free some space or write elsewhere, then resume")


_PARTIAL = re.compile(r"^\..+\.(\d+)\.[^.]+\.partial$")


def remove_stale_partial_files(folder: str) -> List[str]:
    """Delete the temporary files that :func:`atomic_write` left in ``folder`` when its process
    was killed (kill -9, a node failure): those whose writer process is gone. Returns their
    paths. Temporary files of live processes (another rank still writing) are kept."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in os.listdir(folder):
        match = _PARTIAL.match(name)
        if match and not _pid_alive(int(match.group(1))):
            path = os.path.join(folder, name)
            try:
                os.remove(path)
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def _fsync_folder(folder: str) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on some platforms (Windows); the rename is still atomic
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def atomic_write_bytes(destination: str, payload: bytes) -> None:
    atomic_write(destination, lambda handle: handle.write(payload))


def atomic_write_text(destination: str, text: str) -> None:
    atomic_write_bytes(destination, text.encode("utf-8"))


def atomic_write_json(destination: str, content: Any, indent: int = 1) -> None:
    atomic_write_text(destination, json.dumps(content, indent=indent))


def atomic_copy(source: str, destination: str) -> None:
    with open(source, "rb") as origin:
        atomic_write(destination, lambda handle: shutil.copyfileobj(origin, handle))


def check_output_path(path: str, option: str, folder: bool = False) -> None:
    """Refuse, before any work, an output the run could not write at its end: a file path that
    is an existing folder (or a folder path that is a file), or one whose nearest existing
    parent folder is not writable (a read-only file system, another user's folder). Names the
    path as the user gave it."""
    if not path:
        return
    if not folder and os.path.isdir(path):
        raise UserError(f"{option} {path}: is a folder; give a file name (e.g. "
                        f"{os.path.join(path, 'result.json')})")
    if folder and os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{option} {path}: is a file; give a folder")
    parent = os.path.abspath(path if folder and os.path.isdir(path) else os.path.dirname(os.path.abspath(path)))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"{option} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot write there ({parent} is read-only or not "
                        f"yours); choose another path")


def _tensor_bytes(content: Any) -> int:
    import torch

    if isinstance(content, torch.Tensor):
        return content.numel() * content.element_size()
    if isinstance(content, Mapping):
        return sum(_tensor_bytes(value) for value in content.values())
    if isinstance(content, (list, tuple)):
        return sum(_tensor_bytes(value) for value in content)
    return 0


def atomic_torch_save(content: Any, destination: str) -> None:
    """``torch.save`` through :func:`atomic_write`, fsynced (checkpoints)."""
    import torch  # the data-preparation tools use this module without needing torch

    atomic_write(destination, lambda handle: torch.save(content, handle), durable=True,
                 expected_bytes=_tensor_bytes(content))


class OutputFolderLock:
    """A run's claim on its output files: ``path`` (e.g. ``<exp>/train_1shot.lock``) holds the
    owner's process id, host and start time while the run lives.

    :meth:`acquire` refuses, with a :class:`UserError`, while another live process on this host
    holds the lock (or a process on another host: its liveness cannot be checked, so the message
    says which file to delete once that run is over); a lock left by a dead process (kill -9) is
    taken over. The same process may acquire again (a run resumed in the process that was
    stopped). :meth:`release` deletes the file if it is still this process's."""

    def __init__(self, path: str, what: str):
        self.path, self.what = path, what

    def _owner(self) -> Optional[dict]:
        try:
            with open(self.path) as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None or self._stale(owner):
                    self._remove()
                    continue
                if owner.get("pid") == me["pid"] and owner.get("host") == me["host"]:
                    return
                where = (f"process {owner.get('pid')}" if owner.get("host") == me["host"] else
                         f"process {owner.get('pid')} on host {owner.get('host')}; delete "
                         f"{self.path} if that run has ended")
                raise UserError(f"{self.what} is in use by another run ({where}, started "
                                f"{owner.get('started')}): wait for it to finish, or write "
                                f"elsewhere") from None
            with os.fdopen(descriptor, "w") as handle:
                json.dump(me, handle)
            return
        raise UserError(f"could not take the lock {self.path}: it keeps reappearing")

    @staticmethod
    def _stale(owner: dict) -> bool:
        return owner.get("host") == socket.gethostname() and not _pid_alive(int(owner.get("pid", -1)))

    def _remove(self) -> None:
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        owner = self._owner()
        if owner is not None and owner.get("pid") == os.getpid():
            self._remove()


def strip_module_prefix(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """Remove the ``module.`` prefix that DistributedDataParallel puts on every key."""
    return {key[len("module."):] if key.startswith("module.") else key: value
            for key, value in state_dict.items()}


def read_text(path: str, what: str = "the file") -> str:
    """The UTF-8 text of ``path`` (a leading byte-order mark dropped; line ends as written).

    A byte that is not UTF-8 is a ValueError naming the file, the line, the column and the byte
    offset: Python's own message ("can't decode byte 0xff in position 812") names neither the
    file nor the line. Configs and lists are read through here."""
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line_start = data.rfind(b"\n", 0, error.start) + 1
        line = data.count(b"\n", 0, error.start) + 1
        raise ValueError(f"{path}, line {line}, column {error.start - line_start + 1} (byte offset "
                         f"{error.start}): byte 0x{data[error.start]:02x} is not UTF-8 ({error.reason}); "
                         f"{what} must be UTF-8 text: re-save it as UTF-8") from None
    return text[1:] if text.startswith("\ufeff") else text
