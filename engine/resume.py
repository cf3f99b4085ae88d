"""Training checkpoints and exact resume, shared by both training loops (engine/loop.py): what a
checkpoint holds (:func:`training_checkpoint`), the bookkeeping it restores
(:class:`TrainingState`), and every check a checkpoint passes before a resume uses it
(:func:`check_resume_checkpoint`), run before a training run writes anything too
(:func:`precheck_resume`), whose checked checkpoint the trainer then loads without reading the
file again."""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from engine.best_checkpoint import BestCheckpoint
from experiment.checkpoints import check_optimizer_state, stored_config
from model.checkpoint import (CHECKPOINT_KINDS, CheckpointError, check_state_dict, checkpoint_kind,
                              describe_value, extract_state_dict, load_checkpoint)
from util.config_schema import is_number_between
from util.runtime import get_rng_states, rng_states_problem, set_rng_states


# Keys that shape a run (optimisation, schedule, data draws, model): a resume that changes one
# is no longer the continuation of the saved run, so it needs --allow-config-change.
RUN_SHAPING_KEYS = ("base_lr", "transformer_lr", "power", "momentum", "weight_decay", "index_split",
                    "warmup", "epochs", "batch_size", "train_list", "train_h", "train_w", "scale_min",
                    "scale_max", "rotate_min", "rotate_max", "padding_label", "workers", "manual_seed",
                    "fix_random_seed_val", "fix_bn", "aux_weight1", "aux_weight2", "amp",
                    "fast_path_training", "feature_size", "window_size", "feature_dropout",
                    "zoom_factor", "pretrained_backbone", "random_backbone_residual_gain",
                    "base_learner", "low_fea", "kshot_trans_dim", "base_novel_label")


@dataclass
class TrainingState:
    epoch: int = 0            # completed epochs
    iteration: int = 0        # completed iterations
    best: BestCheckpoint = field(default_factory=BestCheckpoint)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "iteration": self.iteration, "best_miou": self.best.miou,
                "best_epoch": self.best.epoch, "best_path": self.best.path}

    @classmethod
    def from_dict(cls, values: dict, source: str = "checkpoint") -> "TrainingState":
        """The state a checkpoint's ``training_state`` records; a CheckpointError naming
        ``source`` when it is unusable (:func:`training_state_problem`)."""
        problem = training_state_problem(values)
        if problem:
            raise CheckpointError(f"{source}: {problem}")
        return cls(values["epoch"], values["iteration"],
                   BestCheckpoint(values["best_miou"], values["best_epoch"], values["best_path"]))


TRAINING_STATE_FIELDS = ("epoch", "iteration", "best_miou", "best_epoch", "best_path", "rng")


def training_state_problem(values, epochs: Optional[int] = None) -> Optional[str]:
    """What makes a checkpoint's ``training_state`` unusable, or None: a missing or mistyped
    field, an epoch outside 0..``epochs`` (the config's; a negative one would train epoch -4, one
    past the end would train nothing and write the final checkpoint), RNG states a generator
    refuses."""
    if not isinstance(values, Mapping):
        return f"its training_state is {describe_value(values)}, expected a dict"
    missing = [name for name in TRAINING_STATE_FIELDS if name not in values]
    if missing:
        return (f"its training_state lacks {', '.join(map(repr, missing))} (expected "
                f"{', '.join(TRAINING_STATE_FIELDS)}: a damaged file?)")
    epoch = values["epoch"]
    last = math.inf if epochs is None else epochs
    if type(epoch) is not int or not 0 <= epoch <= last:
        expected = "an int >= 0" if epochs is None else f"an int 0..{epochs} (config key epochs {epochs})"
        return f"its training_state epoch is {epoch!r}, expected {expected}"
    if type(values["iteration"]) is not int or values["iteration"] < 0:
        return f"its training_state iteration is {values['iteration']!r}, expected an int >= 0"
    if not is_number_between(values["best_miou"], 0, 1):
        return f"its training_state best_miou is {values['best_miou']!r}, expected a number 0..1"
    if not is_number_between(values["best_epoch"], -1, math.inf):
        return f"its training_state best_epoch is {values['best_epoch']!r}, expected an epoch label >= -1"
    if not isinstance(values["best_path"], str):
        return f"its training_state best_path is {describe_value(values['best_path'])}, expected a path"
    problem = rng_states_problem(values["rng"])
    if problem:
        return f"its training_state rng: {problem}"
    by_rank = values.get("rng_by_rank")
    if by_rank is not None:
        if not isinstance(by_rank, (list, tuple)) or not by_rank:
            return (f"its training_state rng_by_rank is {describe_value(by_rank)}, expected a list of "
                    f"every rank's RNG states")
        for rank, states in enumerate(by_rank):
            problem = rng_states_problem(states)
            if problem:
                return f"its training_state rng_by_rank[{rank}]: {problem}"
    return None


@dataclass(frozen=True)
class ResumeFormat:
    """The training checkpoints a script resumes from, and how it checks them."""
    script: str                      # the script that writes them
    kind: str                        # the kind of their weights (model/checkpoint.CHECKPOINT_KINDS)
    required_keys: Tuple[str, ...]   # the keys a resume reads
    identity_keys: Tuple[str, ...]   # config keys that must equal the saved config's
    latest: Callable[[Any], str]     # cfg -> the checkpoint the script writes every epoch
    # cfg -> (model, {checkpoint key: optimizer}) with the trainer's structure, for checks only:
    # built on the CPU without reading any file.
    skeleton: Callable[[Any], Tuple[torch.nn.Module, Dict[str, torch.optim.Optimizer]]]


def _as_resume_error(error: CheckpointError) -> CheckpointError:
    text = str(error)
    return CheckpointError(text if text.startswith("resume: ") else f"resume: {text}")


def read_resume_checkpoint(path: str, spec: ResumeFormat, cfg):
    """The checkpoint at ``path`` (config key resume), read onto the CPU; errors say what to give."""
    if os.path.isdir(path):
        raise CheckpointError(f"resume: {path} is a folder; give the checkpoint file to continue from, "
                              f"such as {spec.latest(cfg)}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"resume: checkpoint {path!r} not found (config key resume); "
                                f"{spec.script} writes {spec.latest(cfg)} every epoch")
    try:
        return load_checkpoint(path, map_location="cpu")
    except CheckpointError as error:
        raise _as_resume_error(error) from None


def check_resume_checkpoint(checkpoint, path: str, spec: ResumeFormat, cfg, model, optimizers: dict,
                            allow_config_change: bool = False) -> Tuple[Optional[dict], list]:
    """Everything a resume reads, checked before it is used (and, by :func:`precheck_resume`,
    before a run writes anything): a training checkpoint of ``spec``'s kind (not a bare state_dict,
    nor another script's), of the same run as ``cfg`` (:func:`check_saved_config`), whose epoch
    label and training state are usable with ``cfg``'s epochs, whose weights fit ``model``
    (keys, shapes, number types, finite) and whose optimizer states fit ``optimizers``
    (structure, shapes, finite). Returns ``(saved config or None, changed run-shaping keys)``;
    every error is one CheckpointError starting 'resume: ' and naming the file."""
    try:
        return _check_resume(checkpoint, path, spec, cfg, model, optimizers, allow_config_change)
    except CheckpointError as error:
        raise _as_resume_error(error) from None


def _check_resume(checkpoint, path, spec, cfg, model, optimizers, allow_config_change):
    state_dict = extract_state_dict(checkpoint, path)
    missing = [key for key in spec.required_keys if key not in checkpoint]
    if missing:
        what = "a bare state_dict (weights only)" if "state_dict" in missing else \
            f"a checkpoint without {', '.join(repr(key) for key in missing)}"
        raise CheckpointError(
            f"resume: {path} is {what}; resume needs a training checkpoint with "
            f"{', '.join(repr(key) for key in spec.required_keys)} such as {spec.latest(cfg)} (written by "
            f"{spec.script} every epoch)")
    found = checkpoint_kind(state_dict)
    if found and found != spec.kind:
        raise CheckpointError(f"{path} is {CHECKPOINT_KINDS[found]}, not "
                              f"{CHECKPOINT_KINDS[spec.kind].split(' (')[0]}: {spec.script} resumes "
                              f"its own training checkpoints, such as {spec.latest(cfg)}")
    saved = stored_config(checkpoint, path, spec.identity_keys)
    changed = check_saved_config(path, saved, cfg, spec.identity_keys, allow_config_change) \
        if saved is not None else []
    # The label of the 0-based epoch the checkpoint ended: all that the original's checkpoints
    # record of their progress (without a training_state the resume starts after it).
    label = checkpoint["epoch"]
    finite = is_number_between(label, -math.inf, math.inf) and math.isfinite(label)
    if not finite or not 0 <= math.floor(label) + 1 <= cfg.epochs:
        raise CheckpointError(
            f"{path}: its epoch label is {label!r}, expected a number -1..{cfg.epochs - 1} (the "
            f"0-based epoch it ended; config key epochs {cfg.epochs})")
    training = checkpoint.get("training_state")
    if training is not None:
        problem = training_state_problem(training, cfg.epochs)
        if problem:
            raise CheckpointError(f"{path}: {problem}")
    check_state_dict(model, state_dict, source=path)
    names = {parameter: name for name, parameter in model.named_parameters()}
    for key, optimizer in optimizers.items():
        check_optimizer_state(checkpoint[key], optimizer, path, key, names)
    return saved, changed


def load_resume_checkpoint(path: str, spec: ResumeFormat, cfg, logger, model, optimizers: dict,
                           allow_config_change: bool = False, checkpoint: Optional[dict] = None) -> dict:
    """Read and check (:func:`check_resume_checkpoint`) a checkpoint to resume from, then load its
    weights into ``model`` and its optimizer states into ``optimizers`` ({checkpoint key:
    optimizer}); returns the checkpoint, whose training state :func:`restore_training_state`
    restores. ``checkpoint``: the file's content, when :func:`precheck_resume` has read it
    (it is checked again, against the trainer's own model and optimizers, but not read again).

    The checkpoint is read onto the CPU whatever the training device: its RNG states must stay
    CPU byte tensors, ``load_state_dict`` copies the weights onto the model's device, and
    :func:`place_optimizer_state` moves the optimizer state where the steps need it."""
    if checkpoint is None:
        checkpoint = read_resume_checkpoint(path, spec, cfg)
    saved, changed = check_resume_checkpoint(checkpoint, path, spec, cfg, model, optimizers,
                                             allow_config_change)
    if saved is None:
        logger.warning(f"{path} records no config: its dataset, fold and shot cannot be "
                       f"checked against this config (the backbone depth is)")
    elif changed:
        logger.warning(f"resuming {path} with changed keys (--allow-config-change): {', '.join(changed)}")
    model.load_state_dict(extract_state_dict(checkpoint, path), strict=True)
    for key, optimizer in optimizers.items():
        optimizer.load_state_dict(checkpoint[key])
    return checkpoint


def check_saved_config(path: str, saved: dict, cfg, identity_keys, allow_config_change: bool) -> list:
    """Refuse a resume under a config of another run (``identity_keys``) or, unless allowed, with
    other values of the keys that shape the run; returns those changes ('key old -> new')."""
    differences = [f"{key} {saved[key]!r} (config: {cfg[key]!r})" for key in identity_keys
                   if key in saved and saved[key] != cfg[key]]
    if differences:
        raise CheckpointError(
            f"resume: {path} belongs to another run: {', '.join(differences)}; resume it with "
            f"the config it was trained with ({saved.get('config_file', 'see its config')}), "
            f"or start this run without resume")
    changed = [f"{key} {saved[key]!r} -> {cfg[key]!r}" for key in RUN_SHAPING_KEYS
               if key in saved and key in cfg and saved[key] != cfg[key]]
    if changed and not allow_config_change:
        raise CheckpointError(
            f"resume: {path} was trained with other values of keys that shape the run "
            f"({', '.join(changed)}), so the resumed run would not continue it exactly; resume with "
            f"the saved values, or pass --allow-config-change to continue with the new ones")
    return changed


def precheck_resume(cfg, spec: ResumeFormat, allow_config_change: bool) -> Optional[dict]:
    """Before a run writes anything (its config, log, folders): the checkpoint to resume
    (config key resume) passes every check of :func:`check_resume_checkpoint`, against a model
    and optimizers of ``spec``'s structure. Returns the checkpoint (None without resume), which
    the trainer loads instead of reading the file again.

    Read whole, not memory-mapped: the optimizer states loaded from it would keep a mapping of
    the file open, and the run replaces that file (``latest``) at the end of its first epoch,
    which Windows refuses for a mapped file."""
    if not cfg.resume:
        return None
    checkpoint = read_resume_checkpoint(cfg.resume, spec, cfg)
    model, optimizers = spec.skeleton(cfg)
    check_resume_checkpoint(checkpoint, cfg.resume, spec, cfg, model, optimizers, allow_config_change)
    return checkpoint


def restore_training_state(checkpoint: dict, path: str, logger, context=None) -> "TrainingState":
    """The bookkeeping and RNG states of a checkpoint written here (exact continuation); for a
    checkpoint of the original code, which has only its epoch label, the next epoch. Under DDP
    each rank restores its own states (``rng_by_rank``) when the world size is unchanged. The
    checkpoint has passed :func:`check_resume_checkpoint`."""
    training = checkpoint.get("training_state")
    if training is None:
        state = TrainingState()
        # label e ends 0-based epoch e (e + 1 done); label e - 0.5 lies inside epoch e (e done)
        state.epoch = int(math.floor(checkpoint["epoch"])) + 1
        logger.warning(f"{path} has no training state (RNG, best mIoU): resuming at "
                       f"epoch {state.epoch + 1} without exact continuation")
    else:
        state = TrainingState.from_dict(training, path)
        set_rng_states(rng_states_of_this_rank(training, context, path, logger))
    logger.info(f"resumed from {path} at epoch {state.epoch}, iteration {state.iteration}, "
                f"best mIoU {state.best.miou:.4f}")
    return state


def rng_states_of_this_rank(training: dict, context, path: str, logger) -> dict:
    """The RNG states a process restores from a checkpoint's ``training_state``: its own rank's
    (``rng_by_rank``, written under DDP) when the world size is the one that saved them, else
    rank 0's (``rng``), with a warning when that makes the continuation inexact."""
    rank, world_size = (context.rank, context.world_size) if context is not None else (0, 1)
    by_rank = training.get("rng_by_rank")
    if by_rank and len(by_rank) == world_size:
        return by_rank[rank]
    saved_world = len(by_rank) if by_rank else 1
    if saved_world != world_size:
        logger.warning(f"{path} was written by {saved_world} process(es) and resumes in "
                       f"{world_size}: every rank restores rank 0's random states, so the "
                       f"continuation is not exactly the uninterrupted run's")
    return training["rng"]


def place_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Every state tensor on its parameter's device (floating ones in its dtype), and AdamW's
    ``step`` where the configured kernel reads it: a float32 tensor on the parameter's device
    for fused or capturable steps, a float32 CPU tensor otherwise.

    The released checkpoints (PyTorch 1.7) hold ``step`` as a plain int, which loads as a CPU
    tensor, and ``load_state_dict`` places it according to the *saved* flags (which the
    released files do not have), so a fused CUDA step would otherwise meet tensors on two
    devices."""
    for group in optimizer.param_groups:
        on_parameter_device = bool(group.get("fused") or group.get("capturable"))
        for parameter in group["params"]:
            state = optimizer.state.get(parameter)
            if not state:
                continue
            for key, value in state.items():
                if key == "step":
                    device = parameter.device if on_parameter_device else torch.device("cpu")
                    state[key] = torch.as_tensor(value, dtype=torch.float32).to(device)
                elif isinstance(value, torch.Tensor):
                    dtype = parameter.dtype if value.is_floating_point() else value.dtype
                    state[key] = value.to(device=parameter.device, dtype=dtype)


def fast_optimizer_steps(*optimizers: torch.optim.Optimizer) -> None:
    """Multi-tensor optimizer steps: ``fused`` kernels for CUDA parameters, ``foreach`` (one
    call per group instead of one per tensor) elsewhere; the same update formulas. Applied
    after construction and again after ``load_state_dict``, which restores the saved flags;
    the state is then placed for the chosen kernels (:func:`place_optimizer_state`)."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            on_cuda = all(parameter.is_cuda for parameter in group["params"])
            group["fused"], group["foreach"] = (True, False) if on_cuda else (False, True)
        place_optimizer_state(optimizer)


def training_checkpoint(model, optimizers: dict, label: float, cfg, state: "TrainingState",
                        rng_by_rank: Optional[list] = None) -> dict:
    """The original's checkpoint keys (``epoch``, ``state_dict``, each optimizer's state under
    its key) plus the config and the exact-resume state (bookkeeping and RNG states; under DDP
    ``rng_by_rank`` holds every rank's, gathered by :func:`gather_from_ranks`)."""
    training = dict(state.to_dict(), rng=rng_by_rank[0] if rng_by_rank else get_rng_states())
    if rng_by_rank and len(rng_by_rank) > 1:
        training["rng_by_rank"] = rng_by_rank
    return {"epoch": label, "state_dict": model.state_dict(),
            **{key: optimizer.state_dict() for key, optimizer in optimizers.items()},
            "config": cfg.to_dict(), "training_state": training}
