"""Loading released SCCAN checkpoints and bare state_dicts (SPEC section 5)."""
from __future__ import annotations

import os
from typing import Dict, Mapping, Optional

import torch
import torch.nn as nn


class CheckpointError(RuntimeError):
    """A checkpoint does not fit the model; the message names the offending keys."""


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Remove the ``module.`` prefix that DistributedDataParallel puts on every key."""
    return {key[len("module."):] if key.startswith("module.") else key: value
            for key, value in state_dict.items()}


def extract_state_dict(checkpoint) -> Dict[str, torch.Tensor]:
    """A training checkpoint ``{'epoch', 'state_dict', 'optimizer', 'optimizer_swin'}`` or a bare
    state_dict -> the model state_dict without a ``module.`` prefix."""
    if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint and isinstance(
            checkpoint["state_dict"], Mapping):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"expected a state_dict or a dict with 'state_dict', got "
                              f"{type(checkpoint).__name__}")
    return strip_module_prefix(checkpoint)


def _list(keys, limit: int = 20) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                     source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = set(expected) - set(state_dict)
    unexpected = set(state_dict) - set(expected)
    mis_shaped = [f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model "
                  f"{tuple(expected[key].shape)}"
                  for key in sorted(set(expected) & set(state_dict))
                  if tuple(state_dict[key].shape) != tuple(expected[key].shape)]
    problems = []
    if mis_shaped:
        problems.append("mis-shaped keys: " + "; ".join(mis_shaped[:20]))
    if missing:
        problems.append("missing keys: " + _list(missing))
    if unexpected:
        problems.append("unexpected keys: " + _list(unexpected))
    if problems:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " +
                              " | ".join(problems))


def load_checkpoint(path: str, map_location="cpu"):
    """torch.load with weights_only=True and a clear error for a missing file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path!r}")
    return torch.load(path, map_location=map_location, weights_only=True)


def load_model_weights(model: nn.Module, source, map_location="cpu") -> Optional[dict]:
    """Load a released/training checkpoint (path or loaded object) into ``model`` strictly.

    Returns the full checkpoint dict when it was a training checkpoint, else None.
    """
    name = source if isinstance(source, str) else "checkpoint"
    checkpoint = load_checkpoint(source, map_location) if isinstance(source, str) else source
    state_dict = extract_state_dict(checkpoint)
    check_state_dict(model, state_dict, source=name)
    model.load_state_dict(state_dict, strict=True)
    return checkpoint if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint else None


def save_checkpoint_atomic(obj, path: str) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename over ``path``: a crash
    at any moment leaves either the old file or the new one, never a truncated file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    try:  # make the rename itself durable
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:
        pass
