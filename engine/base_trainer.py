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
from typing import Dict, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from engine.loop import TrainingLoop, build_train_loader, distributed_network
from engine.resume import ResumeFormat
from engine.run import refuse_to_overwrite
from evaluation.metrics import EPSILON, intersection_and_union
from evaluation.protocol import inference_context
from experiment.build import base_experiment_dir, build_base_dataset
from experiment.models import base_learner_checkpoint_path
from model.backbone import initialise_random_backbone
from model.pspnet import PSPNet
from util.cli import UserError
from util.dataset import base_class_count
from util.io import atomic_torch_save
from util.runtime import autocast, limit_opencv_threads, progress_bar

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


class BaseTrainer(TrainingLoop):
    """One base-learner training run on the shared loop (engine/loop.TrainingLoop): BAM's PSPNet,
    its SGD, its cross entropy and its validation (mIoU over background and the base classes).
    ``resume_checkpoint``: the checkpoint the script's precheck read (engine/resume.precheck_resume)."""

    def __init__(self, cfg, context, logger, allow_config_change: bool = False,
                 resume_checkpoint: Optional[dict] = None):
        super().__init__(cfg, context, logger, allow_config_change)
        self.snapshot_dir = os.path.join(base_experiment_dir(cfg), "snapshot")
        self.resume_format = BASE_RESUME
        self.best_path = base_learner_checkpoint_path(cfg)
        self.model = sync_batch_norm_when_distributed(build_base_model(cfg).to(self.device), context)
        self.optimizer = build_base_optimizer(self.model, cfg)
        self.optimizers = {"optimizer": self.optimizer}
        self.scheduled_optimizer = self.optimizer
        self.loss_weights = {"cross_entropy": 1.0}
        if cfg.resume:
            self.resume(cfg.resume, resume_checkpoint)
        # `self.model` is the one model; training steps go through its DDP wrapper when distributed.
        self.training_forward = distributed_network(self.model, context)
        self._build_loaders()
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

    # ------------------------------------------------------------------------ the loop's steps
    def losses(self, batch) -> Dict[str, torch.Tensor]:
        """A batch of :class:`~util.episode.LabelledImage` -> BAM's cross entropy (ignoring 255)."""
        _, loss = self.training_forward(self.to_device(batch.image), self.to_device(batch.label))
        return {"cross_entropy": loss}

    def evaluate(self) -> Optional[dict]:
        """mIoU over background + base classes on the validation list (BAM's base validation:
        intersection and union of every class summed over all images, then the mean IoU).
        Under DDP each rank scores its share of the images and the sums are added up."""
        if self.val_loader is None:
            return None
        classes = self.model.classes
        intersection = torch.zeros(classes, dtype=torch.float64)
        union = torch.zeros(classes, dtype=torch.float64)
        progress = progress_bar(len(self.val_loader), "validation", self.context.is_main)
        with inference_context(self.model):
            for batch in self.val_loader:
                with autocast(self.device, self.cfg.amp):
                    logits = self.model(batch.image.to(self.device))
                label = batch.label.to(self.device)
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

    def report_validation(self, label: float, result: dict) -> None:
        self.logger.info(f"val epoch {int(label) + 1}: mIoU {result['mIoU']:.4f} (background + "
                         f"{self.model.classes - 1} base classes)")
        if self.writer is not None:
            self.writer.add_scalar("mIoU_val", result["mIoU"], int(label) + 1)

    def keep_best(self, label: float, result: dict) -> None:
        """BAM's best.pth at the base learner's path: exactly its three keys, so that BAM's code
        loads it too."""
        best = self.state.best
        best.miou, best.epoch, best.path = result["mIoU"], int(label), self.best_path
        if self.context.is_main:
            atomic_torch_save({"epoch": int(label), "state_dict": self.model.state_dict(),
                               "optimizer": self.optimizer.state_dict()}, self.best_path)

    def checkpoint_name(self, stem: str) -> str:
        return f"{stem}.pth"

    def outcome(self) -> str:
        best = self.state.best
        if best.path:
            return f"best mIoU {best.miou:.4f} after epoch {int(best.epoch) + 1} ({self.best_path})"
        return "no best checkpoint was kept (evaluate: False or no validation scored above 0)"
