"""Loading released SCCAN checkpoints and bare state_dicts (the files the original's train.py
saves; their names are explained in docs/PROTOCOL.md section 5), and the checks of what a
checkpoint holds before anything uses it: a state_dict at all (structure, when the file is read),
of the right kind and depth, fitting the model (keys, shapes, number types), finite. Every refusal
is one CheckpointError naming the file. (The optimizer states and the stored training config a
checkpoint carries besides its weights are checked in experiment/checkpoints.py.)"""
from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import torch
import torch.nn as nn


class CheckpointError(ValueError):
    """A checkpoint is unreadable or does not fit the model; the message says what to do (a
    ValueError: the scripts report it as one line, as every bad input)."""


# layer3 of the deep-stem ResNet has 6 bottlenecks in ResNet-50 and 23 in ResNet-101.
DEPTH_BY_LAYER3_BLOCKS = {6: 50, 23: 101}
_LAYER3_BLOCK = re.compile(r"(?:^|\.)layer3\.(\d+)\.")


def strip_module_prefix(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """Remove the ``module.`` prefix that DistributedDataParallel puts on every key."""
    return {key[len("module."):] if key.startswith("module.") else key: value
            for key, value in state_dict.items()}


def backbone_depth(state_dict: Mapping[str, torch.Tensor]) -> Optional[int]:
    """50 or 101 from the number of layer3 blocks in a state_dict's keys; None if unknown."""
    blocks = {int(match.group(1)) for key in state_dict for match in [_LAYER3_BLOCK.search(key)] if match}
    return DEPTH_BY_LAYER3_BLOCKS.get(max(blocks) + 1) if blocks else None


def describe_value(value: Any) -> str:
    """A short description of what a checkpoint holds where something else was expected:
    'a tensor of shape (3,) (float32)', 'a list of 2 items', "text 'abc'", 'an int (5)'."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} ({str(value.dtype).replace('torch.', '')})"
    if isinstance(value, Mapping):
        return f"a dict of {len(value)} entries"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, str):
        return f"text {value[:40]!r}"
    name = type(value).__name__
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name} ({str(value)[:40]})"


def _tensors(count: int) -> str:
    return f"{count} tensor{'' if count == 1 else 's'}"


def _some_keys(keys: Iterable, limit: int = 5) -> str:
    keys = list(keys)
    shown = ", ".join(repr(key) for key in keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


_EXPECTED_WEIGHTS = ("expected a state_dict (parameter names -> tensors) or a training checkpoint "
                     "(a dict with 'state_dict')")


def _no_weights(checkpoint: Mapping, source: str) -> str:
    if not checkpoint:
        return f"{source} holds an empty dict, no weights; {_EXPECTED_WEIGHTS}"
    hint = ""
    # Other projects nest the weights (under 'model', 'net', 'state_dict_ema', ...): name the
    # entry, since loading it under a guessed name could load the wrong tensors silently.
    for key, value in checkpoint.items():
        if isinstance(value, Mapping):
            tensors = sum(isinstance(item, torch.Tensor) for item in value.values())
            hint = (f"; its {key!r} entry holds {_tensors(tensors)}: if those are the weights, save them "
                    f"under 'state_dict' (torch.save({{'state_dict': checkpoint[{key!r}]}}, PATH))"
                    if tensors else f"; its {key!r} entry is {describe_value(value)} without tensors")
            break
    return (f"{source} holds no weights (top-level keys: {_some_keys(checkpoint)}); "
            f"{_EXPECTED_WEIGHTS}{hint}")


def _weights_of(checkpoint, source: str) -> Tuple[Mapping, str]:
    """The state_dict inside ``checkpoint`` and how to name it in messages; a CheckpointError
    naming ``source`` when there is none."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{source} holds {describe_value(checkpoint)}, not weights; "
                              f"{_EXPECTED_WEIGHTS}")
    if "state_dict" in checkpoint:
        state = checkpoint["state_dict"]
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{source}: its 'state_dict' is {describe_value(state)}, expected a dict "
                                  f"of parameter names -> tensors")
        return state, f"{source} ('state_dict')"
    if not any(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        raise CheckpointError(_no_weights(checkpoint, source))
    return checkpoint, source


def check_structure(checkpoint, source: str = "checkpoint") -> Mapping:
    """Raise :class:`CheckpointError` naming ``source`` unless ``checkpoint`` holds a state_dict
    (at its top level or under 'state_dict') whose keys are names and whose values are dense
    tensors; returns that state_dict. Reads no tensor data (a memory-mapped file stays unread)."""
    state, where = _weights_of(checkpoint, source)
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{where}: key {key!r} is {describe_value(key).split(' (')[0]}, not a "
                                  f"parameter name (text); {_EXPECTED_WEIGHTS}")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{where}: {key} is {describe_value(value)}, expected a tensor")
        if value.layout != torch.strided:
            raise CheckpointError(f"{where}: {key} is a {str(value.layout).replace('torch.', '')} tensor; "
                                  f"weights are dense tensors (re-save it with .to_dense())")
    return state


def extract_state_dict(checkpoint, source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """A training checkpoint ``{'epoch', 'state_dict', 'optimizer', 'optimizer_swin'}`` or a bare
    state_dict -> the model state_dict without a ``module.`` prefix (its structure checked by
    :func:`check_structure`, errors naming ``source``)."""
    return strip_module_prefix(check_structure(checkpoint, source))


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


def _dtype_family(tensor: torch.Tensor) -> str:
    if tensor.is_complex():
        return "complex"
    if tensor.is_floating_point():
        return "floating"
    return "bool" if tensor.dtype == torch.bool else "integer"


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).replace("torch.", "")


def _shared_prefix(keys, expected) -> str:
    """The dotted prefix that every key of a state_dict carries and whose removal gives the
    model's names ('model.', 'net.module.'), or ''."""
    keys = list(keys)
    if not keys:
        return ""
    first = keys[0]
    for end in [index + 1 for index, character in enumerate(first) if character == "."]:
        prefix = first[:end]
        if all(key.startswith(prefix) for key in keys) and \
                any(key[end:] in expected for key in keys):
            return prefix
    return ""


def _none_of_the_model(model: nn.Module, expected: Mapping, state_dict: Mapping, source: str) -> str:
    name = type(model).__name__
    if not state_dict:
        return f"{source} holds an empty state_dict, none of {name}'s weights"
    prefix = _shared_prefix(state_dict, expected)
    if prefix:
        return (f"{source}: every key carries the prefix {prefix!r} (e.g. {next(iter(state_dict))!r}), "
                f"which {name}'s names lack: re-save the state_dict without it "
                f"({{key[{len(prefix)}:]: value for key, value in state_dict.items()}})")
    kind = checkpoint_kind(expected)
    wanted = (CHECKPOINT_KINDS[kind].split(" (")[0] if kind else
              f"{name}'s state_dict (keys such as {_some_keys(expected, 3)})")
    return (f"{source} holds none of {name}'s weights ({_tensors(len(state_dict))}; keys: "
            f"{_some_keys(state_dict)}); expected {wanted}")


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                     source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming missing, unexpected, mis-shaped keys and keys of
    another number type (integer, bool or complex where the model has floats, or the reverse);
    for a checkpoint of the other ResNet depth, the depth found and the config to use; for a
    checkpoint of another kind, what it is and where it belongs; for one holding none of the
    model's keys, its keys (and a prefix that every key carries); or the first non-finite
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
    if expected and not set(expected) & set(state_dict):
        raise CheckpointError(_none_of_the_model(model, expected, state_dict, source))
    missing = set(expected) - set(state_dict)
    unexpected = set(state_dict) - set(expected)
    shared = sorted(set(expected) & set(state_dict))
    mis_shaped = [f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model "
                  f"{tuple(expected[key].shape)}"
                  for key in shared if tuple(state_dict[key].shape) != tuple(expected[key].shape)]
    # load_state_dict would cast silently: integers into floats, a complex tensor's real part.
    mis_typed = [f"{key}: checkpoint {_dtype_name(state_dict[key])} vs model {_dtype_name(expected[key])}"
                 for key in shared if _dtype_family(state_dict[key]) != _dtype_family(expected[key])]
    problems = []
    if mis_shaped:
        problems.append("mis-shaped keys: " + "; ".join(mis_shaped[:20]))
    if mis_typed:
        problems.append("keys of another number type: " + "; ".join(mis_typed[:20]))
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


def load_checkpoint(path: str, map_location="cpu", mmap: bool = False):
    """torch.load with weights_only=True and clear errors for a missing, empty or damaged file,
    and for one that holds no state_dict (:func:`check_structure`; every file read here holds
    weights). ``mmap``: map the file instead of reading it (tensors are read when used; files of
    old PyTorch versions, which cannot be mapped, are read).

    Never falls back to full unpickling: a checkpoint that holds arbitrary Python objects could
    run code, so such a file is refused with an explanation instead.
    """
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path!r}")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if not magic:
        raise CheckpointError(f"{path} is empty (0 bytes), not a PyTorch checkpoint (an interrupted "
                              f"save, copy or download?)")
    # torch.save writes a zip archive ('PK\x03\x04'); files of old PyTorch versions are a bare
    # pickle (protocol byte 0x80). Anything else (an HTML error page, a partial download) would
    # otherwise surface as torch's advice to retry with weights_only=False, which is unsafe.
    if not (magic.startswith(b"PK") or magic[:1] == b"\x80"):
        raise CheckpointError(_not_a_checkpoint(path, ValueError(f"starts with {magic!r}")))
    try:
        with warnings.catch_warnings():
            # torch warns on stderr while it validates a sparse tensor, which check_structure
            # refuses anyway: the refusal is the one line to show.
            warnings.filterwarnings("ignore", message="Validating sparse tensor invariants")
            checkpoint = torch.load(path, map_location=map_location, weights_only=True,
                                    mmap=mmap and magic.startswith(b"PK"))
    except pickle.UnpicklingError as error:
        if magic.startswith(b"PK"):
            raise CheckpointError(
                f"{path} holds Python objects other than tensors, numbers and containers; it is "
                f"not loaded because unpickling them could run code. Re-save its 'state_dict' "
                f"with torch.save from the code that wrote it") from None
        raise CheckpointError(_not_a_checkpoint(path, error)) from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(_not_a_checkpoint(path, error)) from None
    check_structure(checkpoint, path)
    return checkpoint


def _not_a_checkpoint(path: str, error: BaseException) -> str:
    # torch's own text goes on with advice about loading options; its first sentence is the fact.
    # A zip that torch.save did not write reads "[enforce fail at inline_container.cc:180] . <fact>".
    text = re.sub(r"^\[enforce fail at [^\]]*\][\s.]*", "", str(error))
    reason = text.splitlines()[0].split(". ")[0] if text else type(error).__name__
    return (f"{path} is not a PyTorch checkpoint ({os.path.getsize(path)} bytes; truncated or "
            f"failed download?): {reason}")


def load_model_weights(model: nn.Module, source, map_location="cpu", name: Optional[str] = None
                       ) -> Optional[dict]:
    """Load a released/training checkpoint (path or loaded object) into ``model`` strictly;
    ``name``: the file a loaded object came from, for the messages (default: the path).

    Returns the full checkpoint dict when it was a training checkpoint, else None.
    """
    name = name or (source if isinstance(source, str) else "checkpoint")
    checkpoint = load_checkpoint(source, map_location) if isinstance(source, str) else source
    state_dict = extract_state_dict(checkpoint, name)
    check_state_dict(model, state_dict, source=name)
    model.load_state_dict(state_dict, strict=True)
    return checkpoint if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint else None


def non_finite_count(tensor: torch.Tensor) -> int:
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return 0
    return 0 if bool(torch.isfinite(tensor).all()) else int((~torch.isfinite(tensor)).sum())


