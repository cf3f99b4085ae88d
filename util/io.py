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
from typing import Any, BinaryIO, Callable, List, Mapping, Optional, Sequence, Tuple

from util.cli import UserError

__all__ = ["DiskFullError", "OutputFolderLock", "atomic_write", "check_output_path", "check_distinct_paths",
           "first_same_path", "same_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
           "atomic_copy", "atomic_torch_save", "read_text", "remove_stale_partial_files"]

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
    is an existing folder (or a folder path that is a file), one below a file, or one whose
    nearest existing parent folder is not writable (a read-only file system, another user's
    folder). Names the path as the user gave it, after ``option`` (the option or config key)."""
    if not path:
        return
    if not folder and os.path.isdir(path):
        raise UserError(f"{option} {path}: is a folder, not a file; give a file path")
    if folder and os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{option} {path}: is a file, not a folder; give a folder path")
    parent = os.path.abspath(path if folder and os.path.isdir(path) else os.path.dirname(os.path.abspath(path)))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"{option} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot write there ({parent} is read-only or not "
                        f"yours); choose another path")


def _path_identity(path: str) -> tuple:
    """What makes two paths one file: the device and inode of an existing one, else the
    resolved, case-folded (where the file system ignores case) text."""
    try:
        status = os.stat(path)
        return "inode", status.st_dev, status.st_ino
    except (OSError, ValueError):
        return "name", os.path.normcase(os.path.realpath(path))


def same_path(first: str, second: str) -> bool:
    """Whether two paths name the same file or folder: through links, '..', another spelling
    or (on a case-insensitive file system) another case; paths that do not exist yet are
    compared as resolved text."""
    return _path_identity(first) == _path_identity(second)


def first_same_path(outputs: Sequence[Tuple[Any, Optional[str]]], inputs: Sequence[Tuple[Any, Optional[str]]] = ()
                    ) -> Optional[Tuple[Any, str, Tuple[Any, str], bool]]:
    """The first output of ``outputs`` (``(label, path)`` pairs) that is the same file as one of
    ``inputs`` or as an earlier output: ``(label, path, (other label, other path), is_input)``,
    or None. Empty paths are skipped; each path is looked at once (thousands of queries)."""
    seen_inputs = {}
    for label, path in inputs:
        if path:
            seen_inputs.setdefault(_path_identity(path), (label, path))
    seen_outputs = {}
    for label, path in outputs:
        if not path:
            continue
        identity = _path_identity(path)
        if identity in seen_inputs:
            return label, path, seen_inputs[identity], True
        if identity in seen_outputs:
            return label, path, seen_outputs[identity], False
        seen_outputs[identity] = (label, path)
    return None


def check_distinct_paths(outputs: Sequence[Tuple[str, Optional[str]]],
                         inputs: Sequence[Tuple[str, Optional[str]]] = ()) -> None:
    """Refuse, before any work, an output that is one of the command's inputs (writing it would
    destroy the input) or another of its outputs (one would silently replace the other).
    ``outputs`` and ``inputs``: ``(what, path)`` pairs, ``what`` naming the option as the user
    gave it (``--output``, ``the chart of --output``); empty paths are skipped."""
    clash = first_same_path(outputs, inputs)
    if clash is None:
        return
    what, path, (other_what, other_path), is_input = clash
    consequence = (f"writing it would overwrite that input; give {what} another path" if is_input else
                   "one output would replace the other; give them different paths")
    raise UserError(f"{what} {path} is the same file as {other_what}"
                    f"{'' if other_path == path else ' ' + other_path}: {consequence}")


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


# A lock file younger than this that holds no complete owner yet is being written by a run that
# is starting (where hard links are not available and the file is created, then filled): held.
LOCK_SETTLE_SECONDS = 10.0
# Process ids are positive and below 2**22 on Linux (pid_max); 0 and negative ones would make
# os.kill address a whole process group.
_MAX_PID = 2 ** 31 - 1
# Where os.link is not supported (some network and FUSE file systems, FAT).
_NO_HARD_LINKS = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOSYS,
                  getattr(errno, "ENOTSUP", errno.EPERM), getattr(errno, "EOPNOTSUPP", errno.EPERM)}


class OutputFolderLock:
    """A run's claim on its output files: ``path`` (e.g. ``<exp>/train_1shot.lock``) holds the
    owner's process id, host and start time (JSON) while the run lives.

    The file appears with its whole content at once (written beside it, then hard-linked to its
    name, which fails if the name exists), so a reader never sees a lock without its owner.
    :meth:`acquire` refuses, with a :class:`UserError`, while another live process on this host
    holds the lock (or a process on another host: its liveness cannot be checked, so the message
    says which file to delete once that run is over); a lock left by a dead process (kill -9) is
    taken over. A lock whose content is not an owner (empty, not JSON, a folder, unreadable) is
    refused with the file named and what to do; one just created and still empty is held. The
    same process may acquire again (a run resumed in the process that was stopped).
    :meth:`release` deletes the file if it is still this process's."""

    def __init__(self, path: str, what: str):
        self.path, self.what = path, what

    # ------------------------------------------------------------------------------ reading
    @staticmethod
    def _parse(data: bytes) -> Optional[dict]:
        """The owner recorded in ``data``, or None when it is not one."""
        try:
            owner = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return None
        if not isinstance(owner, dict):
            return None
        pid, host = owner.get("pid"), owner.get("host")
        if (isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid <= _MAX_PID
                or not isinstance(host, str) or not host):
            return None
        started = owner.get("started")
        return {"pid": pid, "host": host, "started": started if isinstance(started, str) else "at an unknown time"}

    def _read(self) -> Tuple[Optional[bytes], Optional[os.stat_result]]:
        """The lock file's bytes and status, (None, None) if it has gone; a lock that cannot be
        read is a :class:`UserError` saying what to do."""
        delete = f"if no run uses {self.what}, delete it and start again"
        try:
            status = os.stat(self.path)
            if os.path.isdir(self.path):
                raise UserError(f"the lock file {self.path} is a folder: {delete}")
            with open(self.path, "rb") as handle:
                return handle.read(4096), status
        except FileNotFoundError:
            return None, None
        except OSError as error:
            raise UserError(f"cannot read the lock file {self.path} ({error.strerror or error}): "
                            f"{delete}") from None

    def _owner_or_refusal(self, data: bytes, status: os.stat_result) -> dict:
        owner = self._parse(data)
        if owner is not None:
            return owner
        try:
            json.loads(data.decode("utf-8"))
            unfinished = False  # JSON, but not an owner
        except (UnicodeDecodeError, ValueError, RecursionError):
            unfinished = True  # empty or half written
        age = time.time() - status.st_mtime
        if unfinished and age < LOCK_SETTLE_SECONDS:
            raise UserError(f"{self.what} is being claimed by another run right now (its lock file "
                            f"{self.path} was created {max(age, 0):.0f} s ago and holds no owner yet): "
                            f"wait for that run to finish, or write elsewhere")
        shown = data.decode("utf-8", "replace").strip()
        problem = ("is empty" if not shown else
                   f"does not name its run ({shown if len(shown) <= 80 else shown[:77] + '...'!r})")
        raise UserError(f"the lock file {self.path} {problem}; expected JSON with the pid, host and "
                        f"start time of the run using {self.what}: if no run uses it, delete the "
                        f"lock file and start again")

    def _owner(self) -> Optional[dict]:
        """The recorded owner, None when there is none (no file, unreadable, malformed)."""
        try:
            data, _ = self._read()
        except UserError:
            return None
        return None if data is None else self._parse(data)

    # ------------------------------------------------------------------------------ writing
    def _create(self, me: dict) -> bool:
        """Create the lock file holding ``me``; False if it exists."""
        folder = os.path.dirname(os.path.abspath(self.path))
        # The '.partial' name of atomic_write: a left-over of a killed process is cleaned up.
        descriptor, temporary = tempfile.mkstemp(
            prefix=f".{os.path.basename(self.path)}.{os.getpid()}.", suffix=".partial", dir=folder)
        try:
            with os.fdopen(descriptor, "w") as handle:
                json.dump(me, handle)
            os.chmod(temporary, _FILE_MODE)
            try:
                os.link(temporary, self.path)
                return True
            except FileExistsError:
                return False
            except OSError as error:
                if error.errno not in _NO_HARD_LINKS:
                    raise
            return self._create_in_place(me)
        finally:
            try:
                os.remove(temporary)
            except FileNotFoundError:
                pass

    def _create_in_place(self, me: dict) -> bool:
        # Without hard links the file exists, empty, for a moment before its content: a reader
        # holds an empty young lock as taken (_owner_or_refusal).
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as handle:
            json.dump(me, handle)
        return True

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            if self._create(me):
                return
            data, status = self._read()
            if data is None:  # its run released it meanwhile
                continue
            owner = self._owner_or_refusal(data, status)
            if owner["pid"] == me["pid"] and owner["host"] == me["host"]:
                return
            if self._stale(owner):
                self._remove_if_unchanged(status)
                continue
            where = (f"process {owner['pid']}" if owner["host"] == me["host"] else
                     f"process {owner['pid']} on host {owner['host']}; delete "
                     f"{self.path} if that run has ended")
            raise UserError(f"{self.what} is in use by another run ({where}, started "
                            f"{owner['started']}): wait for it to finish, or write elsewhere")
        raise UserError(f"could not take the lock {self.path}: it keeps reappearing")

    @staticmethod
    def _stale(owner: dict) -> bool:
        return owner["host"] == socket.gethostname() and not _pid_alive(owner["pid"])

    def _remove_if_unchanged(self, status: os.stat_result) -> None:
        # Another starting run may have taken the stale lock over since it was read: only the
        # file that was read (same inode) is removed.
        try:
            now = os.stat(self.path)
            if (now.st_ino, now.st_dev, now.st_mtime_ns) == (status.st_ino, status.st_dev, status.st_mtime_ns):
                os.remove(self.path)
        except FileNotFoundError:
            pass

    def _remove(self) -> None:
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        owner = self._owner()
        if owner is not None and owner["pid"] == os.getpid() and owner["host"] == socket.gethostname():
            self._remove()


def relative_to_cwd(path) -> str:
    """' (relative to the working directory <cwd>)' for a relative ``path``, else ''. Paths in a
    config are not resolved against the repository: a script run from another folder reads
    them from there, and the messages say so."""
    if path is None or os.path.isabs(os.fspath(path)):
        return ""
    return f" (relative to the working directory {os.getcwd()})"


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
