"""The training loop of BAM's base learner (train_base.py in github.com/chunbolang/BAM), run by
train_base.py.

:class:`BaseTrainer` trains model/pspnet.PSPNet on the base classes of a fold
(util/base_dataset.py): SGD with three parameter groups (encoder, ppm, cls; ``index_split: 0``
gives ppm and cls 10x the encoder's learning rate), the poly schedule of engine/optimization.py, cross
entropy ignoring 255 (SyncBatchNorm under DDP on CUDA, as BAM). After every epoch the
validation list is scored (mIoU over background and the base classes, intersection and union
summed over the whole list; under DDP each rank scores a share) and rank 0 keeps the best
weights at the base learner's path in BAM's format ``{'epoch', 'state_dict', 'optimizer'}``, so a
base learner trained here and one released by BAM are interchangeable. ``latest.pth`` and
``final.pth`` (and ``epoch_<e>.pth`` every ``save_freq`` epochs) carry the exact-resume state.
"""
from __future__ import annotations

import os
import time
from typing import Callable, List

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from engine.optimization import poly_learning_rate
from engine.trainer import (NonFiniteLossWatch, ResumeFormat, TrainingState, build_train_loader,
                            distributed_network, load_resume_checkpoint, refuse_to_overwrite,
                            restore_training_state, training_checkpoint)
from evaluation.metrics import EPSILON, intersection_and_union
from evaluation.protocol import inference_context
from experiment.build import build_base_dataset, base_experiment_dir
from experiment.models import base_learner_checkpoint_path
from model.backbone import initialise_random_backbone
from model.pspnet import PSPNet
from util.cli import UserError
from util.dataset import base_class_count
from util.io import atomic_torch_save
from util.runtime import (autocast, gather_from_ranks, get_rng_states, limit_opencv_threads, progress_bar,
                          set_seed)

__all__ = ["BaseTrainer", "build_base_model", "build_base_optimizer", "check_fresh_base_output",
           "sync_batch_norm_when_distributed", "BASE_CHECKPOINT_NAMES", "BASE_RESUME"]

# A checkpoint of another dataset, fold or depth cannot be resumed under this config.
BASE_RUN_IDENTITY_KEYS = ("data_set", "split", "layers")
BASE_RESUME_KEYS = ("state_dict", "optimizer", "epoch")
BASE_CHECKPOINT_NAMES = ("latest.pth", "final.pth")


def build_base_model(cfg) -> PSPNet:
    """The PSPNet of a base config: background + the fold's base classes, ImageNet backbone
    unless ``pretrained_backbone`` is False."""
    model = PSPNet(layers=cfg.layers, classes=base_class_count(cfg.data_set),
                   zoom_factor=cfg.zoom_factor, pretrained_backbone=cfg.pretrained_backbone,
                   backbone_weights=cfg.backbone_weights or None, ignore_label=cfg.ignore_label)
    if not cfg.pretrained_backbone:
        initialise_random_backbone(model.encoder, residual_gain=cfg.random_backbone_residual_gain)
    return model


def build_base_optimizer(model: PSPNet, cfg) -> torch.optim.SGD:
    """BAM's three SGD groups in its order: encoder (layer0..layer4), ppm, cls; the poly
    schedule gives groups above ``index_split`` 10x the learning rate."""
    groups = [{"params": list(module.parameters())} for module in (model.encoder, model.ppm, model.cls)]
    return torch.optim.SGD(groups, lr=cfg.base_lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay)


def _base_skeleton(cfg):
    # The structure of build_base_model's PSPNet without reading the ImageNet backbone file.
    model = PSPNet(layers=cfg.layers, classes=base_class_count(cfg.data_set), zoom_factor=cfg.zoom_factor,
                   pretrained_backbone=False, ignore_label=cfg.ignore_label)
    return model, {"optimizer": build_base_optimizer(model, cfg)}


BASE_RESUME = ResumeFormat("train_base.py", "pspnet", BASE_RESUME_KEYS, BASE_RUN_IDENTITY_KEYS,
                           lambda cfg: os.path.join(base_experiment_dir(cfg), "snapshot", "latest.pth"),
                           _base_skeleton)


def check_fresh_base_output(cfg, overwrite: bool) -> None:
    """Refuse to replace a base run, or a base learner at the base learner's path (perhaps BAM's
    released one), without --overwrite."""
    folder = os.path.join(base_experiment_dir(cfg), "snapshot")
    paths = [os.path.join(folder, name) for name in BASE_CHECKPOINT_NAMES]
    refuse_to_overwrite(paths, overwrite, cfg.resume,
                        f"{base_experiment_dir(cfg)} already holds a base learner run", paths[0],
                        "base_save_path")
    best = base_learner_checkpoint_path(cfg)
    if not (overwrite or cfg.resume) and os.path.exists(best):
        raise UserError(f"{best} already holds a base learner (BAM's released one or an earlier "
                        f"run) that this run would replace: start again with --overwrite, or "
                        f"write elsewhere with --opts base_learner_weights OTHER_PATH")


def sync_batch_norm_when_distributed(model: torch.nn.Module, context) -> torch.nn.Module:
    """BAM trains its PSPNet with SyncBatchNorm under DDP: with its 3 images per GPU (COCO)
    each GPU's own batch statistics would come from 3 images. Converted when distributed on
    CUDA, where PyTorch's SyncBatchNorm runs (it refuses CPU inputs, so gloo runs on the CPU
    keep per-process BatchNorm). The parameters and buffers are the same objects under the same
    state_dict names, so checkpoints are unchanged."""
    if context.distributed and context.device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def sum_over_ranks(values: torch.Tensor, context) -> torch.Tensor:
    """``values`` (a CPU tensor) summed over every DDP rank (on the process group's device)."""
    if not context.distributed:
        return values
    values = values.to(context.device)
    dist.all_reduce(values)
    return values.cpu()


class BaseTrainer:
    """One base-learner training run. ``epoch_end_callbacks``: functions ``f(trainer) -> bool``
    called after each epoch's checkpoints; True ends :meth:`fit` there without the final
    checkpoint, as if the process had been stopped (tests of exact resume)."""

    def __init__(self, cfg, context, logger, allow_config_change: bool = False):
        self.cfg, self.context, self.logger = cfg, context, logger
        self.allow_config_change = allow_config_change  # a resume may change run-shaping keys
        self.device = context.device
        self.snapshot_dir = os.path.join(base_experiment_dir(cfg), "snapshot")
        self.best_path = base_learner_checkpoint_path(cfg)
        self.epoch_end_callbacks: List[Callable[["BaseTrainer"], bool]] = []
        self.last_validation = None  # the latest validation result
        self.model = sync_batch_norm_when_distributed(build_base_model(cfg).to(self.device), context)
        self.optimizer = build_base_optimizer(self.model, cfg)
        self.state = TrainingState()
        if cfg.resume:
            self.resume(cfg.resume)
        # `self.model` is the one model; training steps go through its DDP wrapper when distributed.
        self._training_forward = distributed_network(self.model, context)
        self._build_loaders()
        self.writer = None
        if cfg.viz and context.is_main:
            from tensorboardX import SummaryWriter
            self.writer = SummaryWriter(os.path.join(base_experiment_dir(cfg), "tensorboard"))

    def _build_loaders(self) -> None:
        cfg, context = self.cfg, self.context
        # The last incomplete batch is dropped: a batch of one image would also stop the PPM's
        # 1x1-bin BatchNorm in training mode.
        self.train_loader, self.sampler = build_train_loader(build_base_dataset(cfg, "train"), cfg,
                                                             context, "images")
        self.val_loader = None
        if cfg.evaluate:
            # Every rank scores every world_size-th image (the validation transform draws nothing,
            # so the shares need no common seed); intersections and unions are summed over ranks.
            dataset = build_base_dataset(cfg, "val")
            share = Subset(dataset, range(context.rank, len(dataset), context.world_size))
            self.val_loader = DataLoader(share, batch_size=cfg.batch_size_val, shuffle=False,
                                         num_workers=cfg.workers, pin_memory=False,
                                         worker_init_fn=limit_opencv_threads)

    # ------------------------------------------------------------------------------ resume
    def resume(self, path: str) -> None:
        """Continue a run from a checkpoint written here (exactly) or from BAM's best.pth (at
        the epoch after its label, without the RNG states)."""
        checkpoint = load_resume_checkpoint(path, BASE_RESUME, self.cfg, self.logger, self.model,
                                            {"optimizer": self.optimizer}, self.allow_config_change)
        self.state = restore_training_state(checkpoint, path, self.logger, self.context)

    # ------------------------------------------------------------------------- checkpoints
    def save(self, name: str, epoch: int) -> str:
        """A training checkpoint with the exact-resume state in the snapshot folder. Called on
        every rank: each rank's RNG states are gathered, rank 0 writes the file."""
        rng_by_rank = gather_from_ranks(get_rng_states(), self.context)
        path = os.path.join(self.snapshot_dir, name)
        if self.context.is_main:
            atomic_torch_save(training_checkpoint(self.model, {"optimizer": self.optimizer}, epoch,
                                                  self.cfg, self.state, rng_by_rank), path)
        return path

    def save_best(self, epoch: int) -> None:
        """BAM's best.pth: exactly its three keys, so that BAM's code loads it too."""
        atomic_torch_save({"epoch": epoch, "state_dict": self.model.state_dict(),
                           "optimizer": self.optimizer.state_dict()}, self.best_path)

    # -------------------------------------------------------------------------- validation
    def evaluate(self) -> dict:
        """mIoU over background + base classes on the validation list (BAM's base validation:
        intersection and union of every class summed over all images, then the mean IoU).
        Under DDP each rank scores its share of the images and the sums are added up."""
        classes = self.model.classes
        intersection = torch.zeros(classes, dtype=torch.float64)
        union = torch.zeros(classes, dtype=torch.float64)
        progress = progress_bar(len(self.val_loader), "validation", self.context.is_main)
        with inference_context(self.model):
            for image, label in self.val_loader:
                with autocast(self.device, self.cfg.amp):
                    logits = self.model(image.to(self.device))
                label = label.to(self.device)
                if logits.shape[-2:] != label.shape[-2:]:
                    logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=True)
                area_intersection, area_union, _ = intersection_and_union(
                    logits.argmax(1), label, classes, self.cfg.ignore_label)
                intersection += area_intersection.cpu()
                union += area_union.cpu()
                progress.update(1)
        progress.close()
        intersection = sum_over_ranks(intersection, self.context)
        union = sum_over_ranks(union, self.context)
        iou = intersection / (union + EPSILON)
        return {"mIoU": float(iou.mean()), "class_IoU": iou.tolist()}

    def validate(self, epoch: int) -> None:
        """Every rank scores its share of the validation list (the same summed result on every
        rank); rank 0 keeps a better model as the base learner."""
        if self.val_loader is not None:
            result = self.evaluate()
            self.last_validation = result
            self.logger.info(f"val epoch {epoch + 1}: mIoU {result['mIoU']:.4f} (background + "
                             f"{self.model.classes - 1} base classes)")
            if self.writer is not None:
                self.writer.add_scalar("mIoU_val", result["mIoU"], epoch + 1)
            best = self.state.best
            if best.improves(result["mIoU"]):
                best.miou, best.epoch, best.path = result["mIoU"], epoch, self.best_path
                if self.context.is_main:
                    self.save_best(epoch)
                self.logger.info(f"new best mIoU {best.miou:.4f}: {self.best_path}")

    # ---------------------------------------------------------------------------- training
    def train_epoch(self, epoch: int) -> float:
        """One pass over the training list; returns the mean loss."""
        cfg = self.cfg
        self.model.train()
        iterations = len(self.train_loader)
        progress = progress_bar(iterations, f"epoch {epoch + 1}/{cfg.epochs}", self.context.is_main)
        start, total = time.time(), torch.zeros((), dtype=torch.float64, device=self.device)
        watch = NonFiniteLossWatch(self.device)  # no host synchronisation per iteration
        for index, (image, label) in enumerate(self.train_loader):
            current = epoch * iterations + index + 1
            poly_learning_rate(self.optimizer, cfg.base_lr, current, cfg.epochs * iterations,
                               power=cfg.power, index_split=cfg.index_split, warmup=cfg.warmup,
                               warmup_step=iterations // 2)
            with autocast(self.device, cfg.amp):
                _, loss = self._training_forward(image.to(self.device), label.to(self.device))
            watch.observe(loss, current)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.state.iteration = current
            total += loss.detach()
            progress.update(1)
            if (index + 1) % cfg.print_freq == 0 or index + 1 == iterations:
                watch.check(self.context, iterations, self.snapshot_dir)
            if (index + 1) % cfg.print_freq == 0:
                progress.set_postfix(loss=f"{loss.item():.4f}")
            if self.context.is_main and (index + 1) % cfg.print_freq == 0:
                learning_rate = self.optimizer.param_groups[0]["lr"]
                self.logger.info(f"epoch {epoch + 1} iteration {index + 1}/{iterations} loss "
                                 f"{loss.item():.4f} lr {learning_rate:.6f} "
                                 f"({(time.time() - start) / (index + 1):.2f}s/it)")
                if self.writer is not None:
                    self.writer.add_scalar("loss_train_batch", loss.item(), current)
                    self.writer.add_scalar("learning_rate", learning_rate, current)
        progress.close()
        return total.item() / iterations

    def fit(self) -> TrainingState:
        """Train from the current state to ``epochs``; returns the state."""
        cfg = self.cfg
        for epoch in range(self.state.epoch, cfg.epochs):
            if cfg.fix_random_seed_val:  # BAM reseeds manual_seed + epoch every epoch
                set_seed(cfg.manual_seed + epoch, cfg.seed_deterministic)
            if self.sampler is not None:
                self.sampler.set_epoch(epoch)
            loss = self.train_epoch(epoch)
            if self.context.is_main:
                self.logger.info(f"epoch {epoch + 1}: mean training loss {loss:.4f}")
                if self.writer is not None:
                    self.writer.add_scalar("loss_train", loss, epoch + 1)
            if cfg.evaluate:
                self.validate(epoch)
            self.state.epoch = epoch + 1
            self.save("latest.pth", epoch)
            if cfg.save_freq and self.state.epoch % cfg.save_freq == 0:
                self.save(f"epoch_{epoch}.pth", epoch)
            if self.context.distributed:
                dist.barrier()
            if any([callback(self) for callback in self.epoch_end_callbacks]):
                return self.state
        path = self.save("final.pth", self.state.epoch - 1)
        if self.context.is_main:
            outcome = (f"best mIoU {self.state.best.miou:.4f} after epoch "
                       f"{int(self.state.best.epoch) + 1} ({self.best_path})"
                       if self.state.best.path else "no best checkpoint was kept (evaluate: False "
                       "or no validation scored above 0)")
            self.logger.info(f"done after {self.state.epoch} epochs: final weights {path}; {outcome}")
        return self.state

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
