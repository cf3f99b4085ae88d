"""The training loop of the original train.py (optimisation in docs/PROTOCOL.md section 4,
validation and checkpoints in section 5), run by train_sccan.py.

:class:`Trainer` builds the model, optimizers and loaders of a config, trains epoch by epoch with
the poly schedule, validates with the shared :class:`EvaluationProtocol` (under DDP every rank
scores its share of the same episodes), keeps the best checkpoint under the original's name,
writes per-shot ``latest``/``epoch_<e>``/``final`` checkpoints atomically, and resumes exactly
(weights, optimizers, every rank's RNG states, bookkeeping).

The module-level helpers (command line, run start, loader, DDP wrapping, overwrite refusal,
resume, checkpoint content, non-finite loss) are shared with the base learner's loop,
engine/base_trainer.py.
"""
from __future__ import annotations

import atexit
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from engine.best_checkpoint import BestCheckpoint, epoch_label, format_epoch_label, half_epoch_index
from engine.optimization import build_optimizers, poly_learning_rate
from evaluation.protocol import EvaluationProtocol, format_cache_statistics
from experiment.build import (build_dataset, build_experiment_model, build_val_loader, experiment_dir,
                              per_shot_name, snapshot_dir, tensorboard_writer, test_class_ids)
from experiment.checkpoints import check_optimizer_state, stored_config
from experiment.models import build_model
from model.checkpoint import (CHECKPOINT_KINDS, CheckpointError, check_state_dict, checkpoint_kind,
                              describe_value, extract_state_dict, load_checkpoint)
from util.cli import UserError
from util.config import config_argparser, config_from_arguments, save_config
from util.io import OutputFolderLock, atomic_torch_save, remove_stale_partial_files
from util.runtime import (autocast, check_amp, gather_from_ranks, get_logger, get_rng_states,
                          init_distributed, limit_opencv_threads, progress_bar, rng_states_problem,
                          set_rng_states, set_seed)

__all__ = ["NonFiniteLossError", "NonFiniteLossWatch", "TrainingState", "Trainer", "check_fresh_output",
           "refuse_to_overwrite", "load_resume_checkpoint", "restore_training_state",
           "training_checkpoint", "parse_training_arguments", "start_training_run", "fit_and_close",
           "build_train_loader", "check_saved_config", "claim_output_folder", "distributed_network",
           "precheck_resume", "start_under_lock", "fast_optimizer_steps", "place_optimizer_state",
           "rng_states_of_this_rank", "ResumeFormat", "SCCAN_RESUME", "check_resume_checkpoint",
           "training_state_problem"]

# A checkpoint trained for another of these cannot be resumed under this config.
RUN_IDENTITY_KEYS = ("data_set", "split", "layers", "shot")
RESUME_KEYS = ("state_dict", "optimizer", "optimizer_swin", "epoch")
# Keys that shape a run (optimisation, schedule, data draws, model): a resume that changes one
# is no longer the continuation of the saved run, so it needs --allow-config-change.
RUN_SHAPING_KEYS = ("base_lr", "transformer_lr", "power", "momentum", "weight_decay", "index_split",
                    "warmup", "epochs", "batch_size", "train_list", "train_h", "train_w", "scale_min",
                    "scale_max", "rotate_min", "rotate_max", "padding_label", "workers", "manual_seed",
                    "fix_random_seed_val", "fix_bn", "aux_weight1", "aux_weight2", "amp",
                    "fast_path_training", "feature_size", "window_size", "feature_dropout",
                    "zoom_factor", "pretrained_backbone", "random_backbone_residual_gain",
                    "base_learner", "low_fea", "kshot_trans_dim", "base_novel_label")


class NonFiniteLossError(UserError):
    pass


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


def _in_range(value, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


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
    if not _in_range(values["best_miou"], 0, 1):
        return f"its training_state best_miou is {values['best_miou']!r}, expected a number 0..1"
    if not _in_range(values["best_epoch"], -1, math.inf):
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


def refuse_to_overwrite(paths, overwrite: bool, resume: str, run: str, latest: str,
                        output_key: str) -> None:
    """Refuse to silently replace another run: ``paths`` are the files a fresh run would
    overwrite; any of them existing is an error unless the run resumes or --overwrite is given."""
    if resume or overwrite:
        return
    existing = [os.path.basename(path) for path in paths if os.path.exists(path)]
    if existing:
        raise UserError(
            f"{run} ({', '.join(existing)}): continue it with --opts resume {latest}, or start "
            f"again with --overwrite (or --opts {output_key} OTHER_FOLDER)")


def check_fresh_output(cfg, overwrite: bool) -> None:
    """Refuse to silently replace another run of the same shot in the shared output folder."""
    names = [per_shot_name(cfg, stem, ".pth") for stem in ("latest", "final")]
    refuse_to_overwrite([os.path.join(snapshot_dir(cfg), name) for name in names], overwrite,
                        cfg.resume, f"{experiment_dir(cfg)} already holds a {cfg.shot}-shot run",
                        os.path.join(snapshot_dir(cfg), names[0]), "save_path")


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


def _sccan_skeleton(cfg):
    values = cfg.to_dict()
    if values.get("base_learner"):
        # Only the structure of the base learner's head is needed: a path that cannot exist makes
        # build_model skip reading the base learner (the trainer's own build reads and checks it).
        values["base_learner_weights"] = os.path.join(os.devnull, "base_learner_not_read.pth")
    model = build_model(values, backbone_from_checkpoint=True)
    sgd, adamw = build_optimizers(model, cfg.base_lr, cfg.momentum, cfg.weight_decay, cfg.transformer_lr)
    return model, {"optimizer": sgd, "optimizer_swin": adamw}


SCCAN_RESUME = ResumeFormat("train_sccan.py", "sccan", RESUME_KEYS, RUN_IDENTITY_KEYS,
                            lambda cfg: os.path.join(snapshot_dir(cfg), per_shot_name(cfg, "latest", ".pth")),
                            _sccan_skeleton)


def _as_resume_error(error: CheckpointError) -> CheckpointError:
    text = str(error)
    return CheckpointError(text if text.startswith("resume: ") else f"resume: {text}")


def read_resume_checkpoint(path: str, spec: ResumeFormat, cfg, mmap: bool = False):
    """The checkpoint at ``path`` (config key resume), read onto the CPU; errors say what to give."""
    if os.path.isdir(path):
        raise CheckpointError(f"resume: {path} is a folder; give the checkpoint file to continue from, "
                              f"such as {spec.latest(cfg)}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"resume: checkpoint {path!r} not found (config key resume); "
                                f"{spec.script} writes {spec.latest(cfg)} every epoch")
    try:
        return load_checkpoint(path, map_location="cpu", mmap=mmap)
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
    finite = _in_range(label, -math.inf, math.inf) and math.isfinite(label)
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
                           allow_config_change: bool = False) -> dict:
    """Read and check (:func:`check_resume_checkpoint`) a checkpoint to resume from, then load its
    weights into ``model`` and its optimizer states into ``optimizers`` ({checkpoint key:
    optimizer}); returns the checkpoint, whose training state :func:`restore_training_state`
    restores.

    The checkpoint is read onto the CPU whatever the training device: its RNG states must stay
    CPU byte tensors, ``load_state_dict`` copies the weights onto the model's device, and
    :func:`place_optimizer_state` moves the optimizer state where the steps need it."""
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


def precheck_resume(cfg, spec: ResumeFormat, allow_config_change: bool) -> None:
    """Before a run writes anything (its config, log, folders): the checkpoint to resume
    (config key resume) passes every check of :func:`check_resume_checkpoint`, against a model
    and optimizers of ``spec``'s structure. The file is memory-mapped, so only the tensors the
    checks read (for finite values) are read; the trainer's load reads it again."""
    if not cfg.resume:
        return
    checkpoint = read_resume_checkpoint(cfg.resume, spec, cfg, mmap=True)
    model, optimizers = spec.skeleton(cfg)
    check_resume_checkpoint(checkpoint, cfg.resume, spec, cfg, model, optimizers, allow_config_change)


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


def distributed_network(model, context, find_unused_parameters: bool = False):
    """``model`` wrapped in DistributedDataParallel under torchrun (one device per process),
    else ``model`` itself."""
    if not context.distributed:
        return model
    return DistributedDataParallel(
        model, device_ids=[context.local_rank] if context.device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters)


def build_train_loader(dataset, cfg, context, items: str):
    """``(loader, sampler)``: shuffled batches of ``batch_size`` (a DistributedSampler under
    torchrun), the last incomplete batch dropped; fewer ``items`` than one batch is an error.
    On CUDA the batches come in pinned memory (asynchronous copies), and ``persistent_workers``
    keeps the workers between epochs."""
    sampler = DistributedSampler(dataset) if context.distributed else None
    on_cuda = context.device.type == "cuda"
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=cfg.workers, pin_memory=on_cuda, drop_last=True,
                        worker_init_fn=limit_opencv_threads,
                        persistent_workers=bool(cfg.persistent_workers and on_cuda and cfg.workers > 0))
    if len(loader) == 0:
        raise ValueError(f"{cfg.train_list}: {len(dataset)} training {items} are fewer than one "
                         f"batch of {cfg.batch_size}")
    return loader, sampler


class NonFiniteLossWatch:
    """Watches the training loss for NaN/inf without a host synchronisation per iteration.

    :meth:`observe` folds each loss into two device tensors (the first global iteration whose
    loss was not finite, and that loss), which costs no synchronisation; :meth:`check` reads
    them (one synchronisation) and stops every rank together with a
    :class:`NonFiniteLossError` naming the first bad iteration. The training loops check every
    ``print_freq`` iterations and at the end of each epoch, before any validation or checkpoint,
    so a non-finite loss is reported at most ``print_freq - 1`` iterations after it happened and
    no weights updated from it are ever validated or saved.
    """

    NONE = -1

    def __init__(self, device: torch.device):
        self.first = torch.full((), self.NONE, dtype=torch.long, device=device)
        self.value = torch.zeros((), device=device)

    def observe(self, loss: torch.Tensor, current: int) -> None:
        """Record ``loss`` of global iteration ``current`` (1-based) on its device."""
        loss = loss.detach().float()
        new = ~torch.isfinite(loss) & (self.first == self.NONE)
        self.first = torch.where(new, torch.full_like(self.first, current), self.first)
        self.value = torch.where(new, loss, self.value)

    def check(self, context, iterations: int, folder: str) -> None:
        """Raise on every rank if any rank saw a non-finite loss; ``iterations`` per epoch turn
        the global iteration into the epoch and iteration of the message."""
        first = torch.where(self.first == self.NONE, torch.full_like(self.first, 2 ** 62), self.first)
        if context.distributed:
            dist.all_reduce(first, op=dist.ReduceOp.MIN)  # every rank must stop together
        first = int(first.item())
        if first == 2 ** 62:
            return
        epoch, index = divmod(first - 1, iterations)
        value = f"{self.value.item()}" if int(self.first.item()) == first else "on another rank"
        raise NonFiniteLossError(
            f"non-finite loss ({value}) at epoch {epoch + 1}, iteration {index + 1} "
            f"(global iteration {first}); training stopped, the last good checkpoints in "
            f"{folder} are kept")


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


class Trainer:
    """One training run. ``epoch_end_callbacks``: functions ``f(trainer) -> bool`` called after
    each epoch's checkpoints; True ends :meth:`fit` there, without the final checkpoint, as if
    the process had been stopped (tests of exact resume; time-limited jobs)."""

    def __init__(self, cfg, context, logger, allow_config_change: bool = False):
        self.cfg, self.context, self.logger = cfg, context, logger
        self.allow_config_change = allow_config_change  # a resume may change run-shaping keys
        self.device = context.device
        self.snapshot_dir = snapshot_dir(cfg)
        self.epoch_end_callbacks: List[Callable[["Trainer"], bool]] = []
        self.last_validation: Optional[dict] = None  # the latest validation result
        self.model = build_experiment_model(cfg, self.device)
        self.sgd, self.adamw = build_optimizers(self.model, cfg.base_lr, cfg.momentum,
                                                cfg.weight_decay, cfg.transformer_lr)
        self.state = TrainingState()
        if cfg.resume:
            self.resume(cfg.resume)
        fast_optimizer_steps(self.sgd, self.adamw)
        # `self.model` is the one model (checkpoints, validation); training steps go through its
        # DDP wrapper when distributed, which all-reduces the gradients. The last block's support
        # branch gets no gradient (its output is unused), hence find_unused_parameters.
        self._training_forward = distributed_network(self.model, context, find_unused_parameters=True)
        self._build_loaders()
        self.writer = tensorboard_writer(cfg) if cfg.viz and context.is_main else None

    def _build_loaders(self) -> None:
        cfg, context = self.cfg, self.context
        self.train_loader, self.sampler = build_train_loader(
            build_dataset(cfg, "train", show_progress=context.is_main), cfg, context, "episodes")
        self.val_loader, self.protocol = None, None
        if cfg.evaluate:
            # Every rank draws the same validation episodes and scores its share of them
            # (EvaluationProtocol.run), so no rank idles in a collective while another validates.
            self.val_loader = build_val_loader(cfg, build_dataset(cfg, "val", show_progress=context.is_main))
            self.protocol = EvaluationProtocol.from_config(cfg, len(test_class_ids(cfg)), validation=True)

    # ----------------------------------------------------------------------------- resume
    def resume(self, path: str) -> None:
        """Continue the run of a training checkpoint written by this trainer (exactly) or by the
        original train.py (from its epoch label, without the RNG states)."""
        checkpoint = load_resume_checkpoint(path, SCCAN_RESUME, self.cfg, self.logger, self.model,
                                            {"optimizer": self.sgd, "optimizer_swin": self.adamw},
                                            self.allow_config_change)
        self.state = restore_training_state(checkpoint, path, self.logger, self.context)

    # ------------------------------------------------------------------------- checkpoints
    def save(self, name: str, label: float) -> str:
        """Write a training checkpoint (the original's keys plus config and exact-resume state).
        Called on every rank: each rank's RNG states are gathered, rank 0 writes the file."""
        rng_by_rank = gather_from_ranks(get_rng_states(), self.context)
        path = os.path.join(self.snapshot_dir, name)
        if self.context.is_main:
            checkpoint = training_checkpoint(self.model, {"optimizer": self.sgd, "optimizer_swin": self.adamw},
                                             label, self.cfg, self.state, rng_by_rank)
            atomic_torch_save(checkpoint, path)
        return path

    # -------------------------------------------------------------------------- validation
    def validate(self, label: float) -> None:
        """Every rank scores its share of the validation episodes; the summed result is the
        same on every rank (and the same as one process's), so every rank takes the same
        best-epoch and early-stop decisions. Rank 0 logs and writes the best checkpoint."""
        if self.protocol is not None:
            result = self.protocol.run(self.model, self.val_loader, self.device,
                                       seed=self.protocol.seeds[0], progress=self.context.is_main,
                                       context=self.context)
            self.last_validation = result
            self.logger.info(f"val epoch {format_epoch_label(label)}: mIoU {result['mIoU']:.4f} "
                             f"FB-IoU {result['FB_IoU']:.4f} pIoU {result['pIoU']:.4f} "
                             f"({result['episodes']} episodes, {result['seconds']:.0f}s)")
            if "feature_cache" in result:
                self.logger.info(format_cache_statistics(result["feature_cache"]))
            if self.writer is not None:
                self.writer.add_scalar("mIoU_val", result["mIoU"], label)
                self.writer.add_scalar("FBIoU_val", result["FB_IoU"], label)
            best = self.state.best
            if best.improves(result["mIoU"]):
                previous = best.replace(self.snapshot_dir, self.cfg.shot, label, result["mIoU"])
                self.save(os.path.basename(best.path), label)
                # Only a best checkpoint of this run's snapshot folder is replaced: a path
                # recorded in a resumed checkpoint may name another run's file.
                if self.context.is_main and previous and os.path.exists(previous) and \
                        os.path.dirname(os.path.abspath(previous)) == os.path.abspath(self.snapshot_dir):
                    os.remove(previous)
                self.logger.info(f"new best mIoU {result['mIoU']:.4f}: {best.path}")

    # ---------------------------------------------------------------------------- training
    def set_training_mode(self) -> None:
        """The model in training mode. (``fix_bn`` needs no step here: the backbone's BatchNorm is
        frozen, the meta learner has none, and SCCAN.train keeps the base learner's in eval mode.)"""
        self.model.train()

    def train_epoch(self, epoch: int) -> None:
        cfg = self.cfg
        self.set_training_mode()
        iterations = len(self.train_loader)
        half_epoch_validation = cfg.evaluate and cfg.SubEpoch_val and cfg.epochs <= 100 and epoch > 0
        progress = progress_bar(iterations, f"epoch {epoch + 1}/{cfg.epochs}", self.context.is_main)
        start = time.time()
        # No host synchronisation per iteration (it would stall a GPU's queue): losses are read
        # every print_freq iterations, non-finite ones caught by the watch (see its doc).
        watch = NonFiniteLossWatch(self.device)
        for index, batch in enumerate(self.train_loader):
            current = epoch * iterations + index + 1
            loss, main_loss, aux_loss1, aux_loss2 = self.train_step(batch, current, iterations)
            watch.observe(loss, current)
            self.state.iteration = current
            progress.update(1)
            half_epoch = half_epoch_validation and index == half_epoch_index(iterations)
            if (index + 1) % cfg.print_freq == 0 or half_epoch or index + 1 == iterations:
                watch.check(self.context, iterations, self.snapshot_dir)
            if (index + 1) % cfg.print_freq == 0:
                progress.set_postfix(loss=f"{loss.item():.4f}")
                if self.context.is_main:
                    # With a base learner the terms differ (BAM's losses): log each of them too.
                    terms = dict(main_loss=main_loss.item(), aux_loss1=aux_loss1.item(),
                                 aux_loss2=aux_loss2.item()) if len(batch) > 5 else {}
                    self._log_iteration(epoch, index, iterations, loss.item(), start, terms)
            if half_epoch:
                self.validate(epoch_label(epoch, half=True))
        progress.close()

    def train_step(self, batch, current: int, iterations: int):
        """One update on a training ``batch`` at global iteration ``current`` (1-based) of
        ``iterations`` per epoch: the poly learning rate, the forward (under ``amp``'s
        autocast), the backward and both optimizer steps. Returns ``(loss, main_loss,
        aux_loss1, aux_loss2)`` as device tensors, without synchronising."""
        cfg = self.cfg
        image, label, support_images, support_labels, subcls = batch[:5]
        # With a base learner the dataset adds the base label (BAM's y_b) as a sixth item.
        base_label = {"y_b": self._to_device(batch[5])} if len(batch) > 5 else {}
        poly_learning_rate(self.sgd, cfg.base_lr, current, cfg.epochs * iterations, power=cfg.power,
                           index_split=cfg.index_split, warmup=cfg.warmup, warmup_step=iterations // 2)
        with autocast(self.device, cfg.amp):
            _, main_loss, aux_loss1, aux_loss2 = self._training_forward(
                x=self._to_device(image), s_x=self._to_device(support_images),
                s_y=self._to_device(support_labels), y_m=self._to_device(label), cat_idx=subcls,
                **base_label)
            loss = main_loss + cfg.aux_weight1 * aux_loss1 + cfg.aux_weight2 * aux_loss2
        self.sgd.zero_grad(set_to_none=True)
        self.adamw.zero_grad(set_to_none=True)
        loss.backward()
        self.sgd.step()
        self.adamw.step()
        return loss, main_loss, aux_loss1, aux_loss2

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        # Pinned batches (CUDA) copy asynchronously; on the CPU this is the tensor itself.
        return tensor.to(self.device, non_blocking=True)

    def _log_iteration(self, epoch: int, index: int, iterations: int, loss: float, start: float,
                       terms: Optional[dict] = None) -> None:
        learning_rate = self.sgd.param_groups[0]["lr"]
        details = "".join(f" {name} {value:.4f}" for name, value in (terms or {}).items())
        self.logger.info(f"epoch {epoch + 1} iteration {index + 1}/{iterations} loss {loss:.4f}{details} "
                         f"lr {learning_rate:.6f} ({(time.time() - start) / (index + 1):.2f}s/it)")
        if self.writer is not None:
            self.writer.add_scalar("loss_train_batch", loss, self.state.iteration)
            self.writer.add_scalar("learning_rate", learning_rate, self.state.iteration)
            for name, value in (terms or {}).items():
                self.writer.add_scalar(f"{name}_train_batch", value, self.state.iteration)

    def fit(self) -> TrainingState:
        """Train from the current state to ``epochs`` (or the early stop); returns the state."""
        cfg = self.cfg
        for epoch in range(self.state.epoch, cfg.epochs):
            if cfg.fix_random_seed_val:  # the original reseeds every epoch
                set_seed(cfg.manual_seed + epoch, cfg.seed_deterministic)
            if self.sampler is not None:
                self.sampler.set_epoch(epoch)
            self.train_epoch(epoch)
            label = epoch_label(epoch)
            if cfg.evaluate:
                self.validate(label)
            self.state.epoch = epoch + 1
            self.save(per_shot_name(cfg, "latest", ".pth"), label)
            if cfg.save_freq and self.state.epoch % cfg.save_freq == 0:
                self.save(per_shot_name(cfg, f"epoch_{format_epoch_label(label)}", ".pth"), label)
            if self.context.distributed:
                dist.barrier()
            if cfg.evaluate and self.state.best.should_stop(label, cfg.stop_interval):
                self.logger.info(f"early stop: no better mIoU for {cfg.stop_interval} epochs "
                                 f"(best {self.state.best.miou:.4f} at epoch "
                                 f"{format_epoch_label(self.state.best.epoch)})")
                break
            if any([callback(self) for callback in self.epoch_end_callbacks]):
                return self.state
        self._finish()
        return self.state

    def _finish(self) -> None:
        path = self.save(per_shot_name(self.cfg, "final", ".pth"), epoch_label(self.state.epoch - 1))
        if not self.context.is_main:
            return
        best = self.state.best
        if not self.cfg.evaluate:
            outcome = "validation was off (evaluate: False), so no best checkpoint was kept"
        elif best.path:
            outcome = f"best mIoU {best.miou:.4f} at epoch {format_epoch_label(best.epoch)} ({best.path})"
        else:
            outcome = "no validation scored above 0, so no best checkpoint was kept"
        self.logger.info(f"done after {self.state.epoch} epochs: final weights {path}; {outcome}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ------------------------------------------------------------------ the training scripts' frame
def parse_training_arguments(argv, description: str, overwrite_help: str, viz_help: str):
    """``(arguments, cfg)`` of a training script: --config, --opts, --debug, --overwrite, --viz."""
    parser = config_argparser(description)
    parser.add_argument("--overwrite", action="store_true", help=overwrite_help)
    parser.add_argument("--viz", action="store_true", help=viz_help)
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume although keys that shape the run (learning rates, batch size, "
                             "schedule, model) differ from the checkpoint's; the changes are logged")
    arguments = parser.parse_args(argv)
    cfg = config_from_arguments(arguments)
    check_amp(cfg.amp)  # before anything is written
    if arguments.viz:
        cfg.viz = True
    return arguments, cfg


def start_training_run(cfg, logger_name: str, out_dir: str, snapshot_folder: str, log_name: str,
                       config_name: str):
    """Process group, seed, logger; rank 0 creates the output folders and records the config.
    Returns ``(context, logger)``."""
    context = init_distributed(cfg.local_rank, cfg.distributed_timeout_minutes)
    set_seed(cfg.manual_seed, cfg.seed_deterministic)
    logger = get_logger(logger_name, os.path.join(out_dir, log_name), context.is_main)
    if context.is_main:
        os.makedirs(snapshot_folder, exist_ok=True)
        save_config(cfg, os.path.join(out_dir, config_name))
        logger.info(f"config {cfg.source}; outputs in {out_dir}; device {context.device}; "
                    f"world size {context.world_size}")
    return context, logger


def claim_output_folder(out_dir: str, lock_name: str, what: str) -> Optional[OutputFolderLock]:
    """Rank 0's lock on a run's output files (``<out_dir>/<lock_name>``), taken before anything
    is written there and released at the end of the run or of the process; a second run into
    the same files is refused while the first is alive. Temporary files of saves that a killed
    process left behind are deleted. None on the other ranks (torchrun sets RANK)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    lock = OutputFolderLock(os.path.join(out_dir, lock_name), what)
    lock.acquire()
    atexit.register(lock.release)
    for folder in (out_dir, os.path.join(out_dir, "snapshot")):
        remove_stale_partial_files(folder)
    return lock


def start_under_lock(lock: Optional[OutputFolderLock], start: Callable[[], "Trainer"]):
    """``start()`` (the remaining checks of a run, its output folder and its trainer) while
    ``lock`` (:func:`claim_output_folder`) is held: a refused or failed start releases it, a
    started trainer keeps it until :func:`fit_and_close`."""
    try:
        trainer = start()
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    trainer.output_lock = lock
    return trainer


def fit_and_close(trainer):
    """Run ``trainer.fit()``, then close its writer, its output lock and the process group,
    even on errors."""
    try:
        trainer.fit()
        return trainer
    finally:
        trainer.close()
        if getattr(trainer, "output_lock", None) is not None:
            trainer.output_lock.release()
        if trainer.context.distributed and dist.is_initialized():
            dist.destroy_process_group()
