"""Atomic file writes and state-dict key clean-up: the one implementation every writer uses.

Every file the project writes (checkpoints, configs, few-shot lists, result and episode JSON,
prepared labels and lists) goes to a temporary file in the destination's folder and is then
renamed over the destination with ``os.replace``, which is atomic on one file system: a reader,
or a run resumed after a crash, sees the old file or the complete new one, never half a file.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, BinaryIO, Callable, Dict, Mapping

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
           "atomic_copy", "atomic_torch_save", "strip_module_prefix"]

# mkstemp creates files readable by the owner only; finished files get the usual permissions
# (0666 minus the umask), like any file written with open().
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


def atomic_write(destination: str, write: Callable[[BinaryIO], None], durable: bool = False) -> None:
    """Call ``write(handle)`` on a temporary file beside ``destination``, then rename it over
    ``destination``. ``durable``: fsync the file and its folder, so that the rename survives a
    power cut too (for checkpoints, whose loss costs hours)."""
    folder = os.path.dirname(os.path.abspath(destination))
    os.makedirs(folder, exist_ok=True)
    # A leading '.' and the '.partial' suffix: a left-over temporary file is never mistaken for
    # a finished checkpoint, label or list.
    descriptor, temporary = tempfile.mkstemp(prefix="." + os.path.basename(destination) + ".",
                                             suffix=".partial", dir=folder)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(temporary, _FILE_MODE)
        os.replace(temporary, destination)
    except BaseException:
        # BaseException on purpose: a KeyboardInterrupt must not leave the temporary file behind.
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    if durable:
        _fsync_folder(folder)


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


def atomic_torch_save(content: Any, destination: str) -> None:
    """``torch.save`` through :func:`atomic_write`, fsynced (checkpoints)."""
    import torch  # the data-preparation tools use this module without needing torch

    atomic_write(destination, lambda handle: torch.save(content, handle), durable=True)


def strip_module_prefix(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """Remove the ``module.`` prefix that DistributedDataParallel puts on every key."""
    return {key[len("module."):] if key.startswith("module.") else key: value
            for key, value in state_dict.items()}
