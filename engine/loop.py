"""The training loop both trainers share (SCCAN's in engine/trainer.py, the base learner's in
engine/base_trainer.py), after the original train.py and BAM's train_base.py.

:class:`TrainingLoop` owns everything around a step: epochs (reseeding, the sampler's epoch), the
poly learning rate, the weighted sum of the named losses, backward and the optimizer steps, the
non-finite loss watch, logging and TensorBoard, validation at the end of an epoch (and at its
half where a trainer asks), keeping the best, early stop, the ``latest``/``epoch_<e>``/``final``
checkpoints with the exact-resume state, and resume. A trainer supplies its model and optimizers
and a few small steps: :meth:`TrainingLoop.losses` (a batch -> named losses),
:meth:`TrainingLoop.evaluate` (-> named metrics, ``mIoU`` among them) and what it keeps of a
better validation (:meth:`TrainingLoop.keep_best`)."""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, List, Mapping, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from engine.best_checkpoint import epoch_label, format_epoch_label, half_epoch_index
from engine.optimization import poly_learning_rate
from engine.resume import (TrainingState, load_resume_checkpoint, restore_training_state,
                           training_checkpoint)
from util.cli import UserError
from util.io import atomic_torch_save
from util.runtime import autocast, gather_from_ranks, get_rng_states, limit_opencv_threads, progress_bar, set_seed


class NonFiniteLossError(UserError):
    pass


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


def weighted_loss(losses: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """The training loss: ``sum(weights[name] * losses[name])`` in the order of ``losses``, every
    name weighted (a loss without a weight is a programming error, not a silent 1). A weight of
    1 multiplies nothing, so that ``main_loss + w1 * aux_loss1 + w2 * aux_loss2`` is the
    original's sum bit for bit and a single loss weighted 1 is that loss itself."""
    total = None
    for name, value in losses.items():
        weight = weights[name]
        term = value if weight == 1 else weight * value
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no loss to weigh")
    return total


class TrainingLoop:
    """Fit / validate / save / resume / log / early stop for one training run.

    A trainer sets, in its constructor: ``model`` (the one model of checkpoints and validation),
    ``optimizers`` ({checkpoint key: optimizer}, zeroed and stepped in this order),
    ``scheduled_optimizer`` (the one the poly learning rate drives), ``loss_weights`` ({loss
    name: weight}), ``snapshot_dir``, ``resume_format`` (engine/resume.ResumeFormat),
    ``train_loader`` and ``sampler`` (:func:`build_train_loader`), ``writer`` (TensorBoard or
    None) and ``training_forward`` (the model, or its DDP wrapper, that :meth:`losses` calls);
    and it defines :meth:`losses`, :meth:`evaluate`, :meth:`report_validation`,
    :meth:`keep_best`, :meth:`checkpoint_name` and :meth:`outcome`.

    ``epoch_end_callbacks``: functions ``f(trainer) -> bool`` called after each epoch's
    checkpoints; True ends :meth:`fit` there, without the final checkpoint, as if the process
    had been stopped (tests of exact resume; time-limited jobs).
    """

    early_stop = False  # the original's stop after ``stop_interval`` epochs without a better mIoU

    def __init__(self, cfg, context, logger, allow_config_change: bool = False):
        self.cfg, self.context, self.logger = cfg, context, logger
        self.allow_config_change = allow_config_change  # a resume may change run-shaping keys
        self.device = context.device
        self.epoch_end_callbacks: List[Callable[["TrainingLoop"], bool]] = []
        self.last_validation: Optional[dict] = None  # the latest validation result
        self.state = TrainingState()
        self.writer = None

    # --------------------------------------------------------------------- what a trainer adds
    def losses(self, batch) -> Dict[str, torch.Tensor]:
        """A training batch -> the named losses of its forward (under autocast), unweighted."""
        raise NotImplementedError

    def evaluate(self) -> Optional[dict]:
        """The named metrics of one validation (``mIoU`` among them, the one the best is chosen
        by), the same on every rank; None when the run does not validate."""
        raise NotImplementedError

    def report_validation(self, label: float, result: dict) -> None:
        """Log (and write to TensorBoard) a validation result."""
        raise NotImplementedError

    def keep_best(self, label: float, result: dict) -> None:
        """Record a validation that beats the best (``self.state.best``) and write its weights."""
        raise NotImplementedError

    def checkpoint_name(self, stem: str) -> str:
        """The file name of the ``latest``, ``final`` and ``epoch_<e>`` checkpoints."""
        raise NotImplementedError

    def outcome(self) -> str:
        """What the run kept, for the last line of the log."""
        raise NotImplementedError

    def half_epoch_validation(self, epoch: int) -> bool:
        """Whether ``epoch`` (0-based) validates at its half too (the original's SubEpoch_val)."""
        return False

    # ----------------------------------------------------------------------------- resume
    def resume(self, path: str, checkpoint: Optional[dict] = None) -> None:
        """Continue the run of a training checkpoint written here (exactly) or by the original
        script (from its epoch label, without the RNG states). ``checkpoint``: the file's content
        when the script has read and checked it already (engine/resume.precheck_resume)."""
        checkpoint = load_resume_checkpoint(path, self.resume_format, self.cfg, self.logger, self.model,
                                            self.optimizers, self.allow_config_change, checkpoint)
        self.state = restore_training_state(checkpoint, path, self.logger, self.context)

    # ------------------------------------------------------------------------- checkpoints
    def save(self, name: str, label: float) -> str:
        """Write a training checkpoint (the original's keys plus config and exact-resume state)
        into the snapshot folder. Called on every rank: each rank's RNG states are gathered,
        rank 0 writes the file."""
        rng_by_rank = gather_from_ranks(get_rng_states(), self.context)
        path = os.path.join(self.snapshot_dir, name)
        if self.context.is_main:
            atomic_torch_save(training_checkpoint(self.model, self.optimizers, label, self.cfg, self.state,
                                                  rng_by_rank), path)
        return path

    # -------------------------------------------------------------------------- validation
    def validate(self, label: float) -> None:
        """Every rank scores its share of the validation; the summed result is the same on every
        rank, so every rank takes the same best-epoch and early-stop decisions."""
        result = self.evaluate()
        if result is None:
            return
        self.last_validation = result
        self.report_validation(label, result)
        if self.state.best.improves(result["mIoU"]):
            self.keep_best(label, result)
            self.logger.info(f"new best mIoU {self.state.best.miou:.4f}: {self.state.best.path}")

    # ---------------------------------------------------------------------------- training
    def train_step(self, batch, current: int, iterations: int):
        """One update on ``batch`` at global iteration ``current`` (1-based) of ``iterations``
        per epoch: the poly learning rate, the forward and losses (under ``amp``'s autocast),
        the weighted sum, backward and every optimizer's step. Returns ``(loss, {name: loss})``
        as device tensors, without synchronising."""
        cfg = self.cfg
        poly_learning_rate(self.scheduled_optimizer, cfg.base_lr, current, cfg.epochs * iterations,
                           power=cfg.power, index_split=cfg.index_split, warmup=cfg.warmup,
                           warmup_step=iterations // 2)
        with autocast(self.device, cfg.amp):
            losses = self.losses(batch)
            loss = weighted_loss(losses, self.loss_weights)
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in self.optimizers.values():
            optimizer.step()
        return loss, losses

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        # Pinned batches (CUDA) copy asynchronously; on the CPU this is the tensor itself.
        return tensor.to(self.device, non_blocking=True)

    def train_epoch(self, epoch: int) -> float:
        """One pass over the training loader; returns the mean loss."""
        cfg = self.cfg
        self.model.train()
        iterations = len(self.train_loader)
        half_epoch_validation = self.half_epoch_validation(epoch)
        progress = progress_bar(iterations, f"epoch {epoch + 1}/{cfg.epochs}", self.context.is_main)
        start, total = time.time(), torch.zeros((), dtype=torch.float64, device=self.device)
        # No host synchronisation per iteration (it would stall a GPU's queue): losses are read
        # every print_freq iterations, non-finite ones caught by the watch (see its doc).
        watch = NonFiniteLossWatch(self.device)
        for index, batch in enumerate(self.train_loader):
            current = epoch * iterations + index + 1
            loss, losses = self.train_step(batch, current, iterations)
            watch.observe(loss, current)
            self.state.iteration = current
            total += loss.detach()
            progress.update(1)
            half_epoch = half_epoch_validation and index == half_epoch_index(iterations)
            if (index + 1) % cfg.print_freq == 0 or half_epoch or index + 1 == iterations:
                watch.check(self.context, iterations, self.snapshot_dir)
            if (index + 1) % cfg.print_freq == 0:
                progress.set_postfix(loss=f"{loss.item():.4f}")
                if self.context.is_main:
                    # Several losses (BAM's with a base learner): each is logged too.
                    terms = {name: value.item() for name, value in losses.items()} if len(losses) > 1 else {}
                    self._log_iteration(epoch, index, iterations, loss.item(), start, terms)
            if half_epoch:
                self.validate(epoch_label(epoch, half=True))
        progress.close()
        return total.item() / iterations

    def _log_iteration(self, epoch: int, index: int, iterations: int, loss: float, start: float,
                       terms: Dict[str, float]) -> None:
        learning_rate = self.scheduled_optimizer.param_groups[0]["lr"]
        details = "".join(f" {name} {value:.4f}" for name, value in terms.items())
        self.logger.info(f"epoch {epoch + 1} iteration {index + 1}/{iterations} loss {loss:.4f}{details} "
                         f"lr {learning_rate:.6f} ({(time.time() - start) / (index + 1):.2f}s/it)")
        if self.writer is not None:
            self.writer.add_scalar("loss_train_batch", loss, self.state.iteration)
            self.writer.add_scalar("learning_rate", learning_rate, self.state.iteration)
            for name, value in terms.items():
                self.writer.add_scalar(f"{name}_train_batch", value, self.state.iteration)

    def fit(self) -> TrainingState:
        """Train from the current state to ``epochs`` (or the early stop); returns the state."""
        cfg = self.cfg
        for epoch in range(self.state.epoch, cfg.epochs):
            if cfg.fix_random_seed_val:  # the original (and BAM) reseed every epoch
                set_seed(cfg.manual_seed + epoch, cfg.seed_deterministic)
            if self.sampler is not None:
                self.sampler.set_epoch(epoch)
            mean_loss = self.train_epoch(epoch)
            if self.context.is_main:
                self.logger.info(f"epoch {epoch + 1}: mean training loss {mean_loss:.4f}")
                if self.writer is not None:
                    self.writer.add_scalar("loss_train", mean_loss, epoch + 1)
            label = epoch_label(epoch)
            if cfg.evaluate:
                self.validate(label)
            self.state.epoch = epoch + 1
            self.save(self.checkpoint_name("latest"), label)
            if cfg.save_freq and self.state.epoch % cfg.save_freq == 0:
                self.save(self.checkpoint_name(f"epoch_{format_epoch_label(label)}"), label)
            if self.context.distributed:
                dist.barrier()
            if self.early_stop and cfg.evaluate and self.state.best.should_stop(label, cfg.stop_interval):
                self.logger.info(f"early stop: no better mIoU for {cfg.stop_interval} epochs "
                                 f"(best {self.state.best.miou:.4f} at epoch "
                                 f"{format_epoch_label(self.state.best.epoch)})")
                break
            if any([callback(self) for callback in self.epoch_end_callbacks]):
                return self.state
        path = self.save(self.checkpoint_name("final"), epoch_label(self.state.epoch - 1))
        if self.context.is_main:
            self.logger.info(f"done after {self.state.epoch} epochs: final weights {path}; {self.outcome()}")
        return self.state

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
