"""Loading released SCCAN checkpoints and bare state_dicts (the files the original's train.py
saves; their names are explained in docs/PROTOCOL.md section 5)."""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from typing import Dict, Mapping, Optional

import torch
import torch.nn as nn

from util.cli import UserError
from util.io import strip_module_prefix


class CheckpointError(UserError):
    """A checkpoint is unreadable or does not fit the model; the message says what to do."""


# layer3 of the deep-stem ResNet has 6 bottlenecks in ResNet-50 and 23 in ResNet-101.
DEPTH_BY_LAYER3_BLOCKS = {6: 50, 23: 101}
_LAYER3_BLOCK = re.compile(r"(?:^|\.)layer3\.(\d+)\.")


def backbone_depth(state_dict: Mapping[str, torch.Tensor]) -> Optional[int]:
    """50 or 101 from the number of layer3 blocks in a state_dict's keys; None if unknown."""
    blocks = {int(match.group(1)) for key in state_dict for match in [_LAYER3_BLOCK.search(key)] if match}
    return DEPTH_BY_LAYER3_BLOCKS.get(max(blocks) + 1) if blocks else None


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


# State-dict prefixes of the modules that SCCAN registers only with a base learner.
ENSEMBLE_PREFIXES = ("learner_base.", "gram_merge.", "cls_merge.", "kshot_rw.")


def _list(keys, limit: int = 20) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


# What each kind of checkpoint is, and where it belongs (the messages of a checkpoint given in
# the wrong place).
CHECKPOINT_KINDS = {
    "sccan": "a SCCAN checkpoint (for test_sccan.py --weight, tools.predict, or train_sccan.py's "
             "resume)",
    "pspnet": "a base learner (BAM's PSPNet) checkpoint (for the config key base_learner_weights, "
              "or train_base.py's resume)",
    "resnet": "ImageNet ResNet backbone weights (for initmodel/resnet<layers>_v2.pth, config key "
              "backbone_weights)",
}


def checkpoint_kind(keys) -> Optional[str]:
    """'sccan', 'pspnet' or 'resnet' from a state_dict's key names; None when unrecognised."""
    prefixes = {key.split(".", 1)[0] for key in keys}
    if prefixes & {"transformer", "down_query", "down_supp", "cls_meta"}:
        return "sccan"
    if {"ppm", "cls"} <= prefixes:
        return "pspnet"
    if {"conv1", "layer1", "layer4"} <= prefixes:
        return "resnet"
    return None


def check_finite(state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming the first floating tensor that holds NaN or inf
    (weights of a diverged run, a damaged file): every number computed from it is meaningless."""
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and \
                not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(
                f"{source} holds non-finite weights: {key} has {bad} NaN/inf value(s) of "
                f"{value.numel()} (a diverged run or a damaged file); use an earlier checkpoint")


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                     source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming missing, unexpected and mis-shaped keys (or, for
    a checkpoint of the other ResNet depth, the depth found and the config to use; for a
    checkpoint of another kind, what it is and where it belongs), or the first non-finite
    tensor."""
    expected = model.state_dict()
    found_kind, expected_kind = checkpoint_kind(state_dict), checkpoint_kind(expected)
    if found_kind and expected_kind and found_kind != expected_kind:
        raise CheckpointError(f"{source} is {CHECKPOINT_KINDS[found_kind]}, not "
                              f"{CHECKPOINT_KINDS[expected_kind].split(' (')[0]} as needed here")
    found_depth, model_depth = backbone_depth(state_dict), backbone_depth(expected)
    if found_depth and model_depth and found_depth != model_depth:
        raise CheckpointError(
            f"{source} holds a ResNet-{found_depth} backbone but the config builds ResNet-"
            f"{model_depth}: use a resnet{found_depth} config (config/<dataset>/<dataset>_split<i>"
            f"_resnet{found_depth}[_5s].yaml) or --opts layers {found_depth}")
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
    # The most likely cause of a whole family of missing or unexpected keys: the checkpoint and
    # the config disagree on BAM's ensemble (its modules join the state dict only when it is on).
    if any(key.startswith(ENSEMBLE_PREFIXES) for key in unexpected):
        problems.append("the checkpoint holds BAM's base learner and ensemble: use base_learner: "
                        "True (a _bam config, or --opts base_learner True)")
    elif any(key.startswith(ENSEMBLE_PREFIXES) for key in missing) and \
            not any(key.startswith(ENSEMBLE_PREFIXES) for key in state_dict):
        problems.append("the checkpoint is a plain SCCAN one (no base learner): use base_learner: False")
    if problems:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " +
                              " | ".join(problems))
    check_finite(state_dict, source)


def load_checkpoint(path: str, map_location="cpu"):
    """torch.load with weights_only=True and clear errors for a missing or damaged file.

    Never falls back to full unpickling: a checkpoint that holds arbitrary Python objects could
    run code, so such a file is refused with an explanation instead.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path!r}")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    # torch.save writes a zip archive ('PK\x03\x04'); files of old PyTorch versions are a bare
    # pickle (protocol byte 0x80). Anything else (an HTML error page, a partial download) would
    # otherwise surface as torch's advice to retry with weights_only=False, which is unsafe.
    if not (magic.startswith(b"PK") or magic[:1] == b"\x80"):
        raise CheckpointError(_not_a_checkpoint(path, ValueError(f"starts with {magic!r}")))
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if magic.startswith(b"PK"):
            raise CheckpointError(
                f"{path} holds Python objects other than tensors, numbers and containers; it is "
                f"not loaded because unpickling them could run code. Re-save its 'state_dict' "
                f"with torch.save from the code that wrote it") from None
        raise CheckpointError(_not_a_checkpoint(path, error)) from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(_not_a_checkpoint(path, error)) from None


def _not_a_checkpoint(path: str, error: BaseException) -> str:
    # torch's own text goes on with advice about loading options; its first sentence is the fact.
    reason = str(error).splitlines()[0].split(". ")[0] if str(error) else type(error).__name__
    return (f"{path} is not a PyTorch checkpoint ({os.path.getsize(path)} bytes; truncated or "
            f"failed download?): {reason}")


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
