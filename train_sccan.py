"""Train SCCAN on one fold, as the original's train.py does (docs/PROTOCOL.md sections 1 and 5).

    python train_sccan.py --config config/pascal/pascal_split0_resnet50.yaml [--opts key value ...]
    torchrun --nproc_per_node 4 train_sccan.py --config config/coco/coco_split0_resnet50.yaml

One process on CPU or one GPU needs no launcher; under torchrun each process trains on its own
GPU (NCCL) or on the CPU (gloo) with a DistributedSampler. Only rank 0 logs, validates and writes.
"""
from __future__ import annotations

import datetime
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from model import build_optimizers, poly_learning_rate
from model.checkpoint import (CheckpointError, load_checkpoint, load_model_weights,
                              save_checkpoint_atomic)
from util.cli import UserError, run_entry_point
from util.config import config_argparser, config_from_arguments, save_config
from util.evaluation import evaluate
from util.experiment import (build_dataset, build_experiment_model, build_val_loader,
                             check_data_root, experiment_dir, per_shot_name, snapshot_dir,
                             test_class_ids)
from util.runtime import get_logger, get_rng_states, init_distributed, set_rng_states, set_seed

# A checkpoint trained for another of these cannot be resumed under this config.
RUN_IDENTITY_KEYS = ("data_set", "split", "layers", "shot")


class NonFiniteLossError(UserError):
    pass


@dataclass
class TrainingState:
    epoch: int = 0            # completed epochs
    iteration: int = 0        # completed iterations
    best_miou: float = 0.0
    best_epoch: float = -1.0  # epoch label of the best validation (-1: none yet)
    best_path: str = ""


def epoch_label(epoch: int, half: bool = False):
    """The original's label of a validation in 0-based epoch ``epoch``: ``epoch`` at its end,
    ``epoch - 0.5`` at its half (the released ``train_epoch_43_0.6753.pth`` is the end of the
    44th epoch, ``train_epoch_33.5_...`` the half of the 35th)."""
    return epoch - 0.5 if half else epoch


def format_epoch_label(value: float) -> str:
    """43 -> '43', 33.5 -> '33.5' (as in the released checkpoint names)."""
    return str(int(value)) if float(value).is_integer() else str(float(value))


def half_epoch_index(iterations: int) -> int:
    """0-based index of the iteration after which the half-epoch validation runs: the original
    tests ``i == round(len(train_loader) / 2)`` (Python's round: 2.5 -> 2, 3.5 -> 4)."""
    return round(iterations / 2)


def best_checkpoint_name(shot: int, label: float, miou: float) -> str:
    """The original's best-checkpoint name: train_epoch_<label>_<miou>.pth, train<K>_... for K > 1."""
    prefix = "train" if shot == 1 else f"train{shot}"
    return f"{prefix}_epoch_{format_epoch_label(label)}_{miou:.4f}.pth"


def fix_batch_norm(module: torch.nn.Module) -> None:
    """fix_bn: keep any trainable BatchNorm in eval mode (the backbone's BN is frozen anyway)."""
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        module.eval()


class Trainer:
    def __init__(self, cfg, context, logger):
        self.cfg, self.context, self.logger = cfg, context, logger
        self.device = context.device
        self.snapshot_dir = snapshot_dir(cfg)
        self.model = build_experiment_model(cfg, self.device)
        self.sgd, self.adamw = build_optimizers(self.model, cfg.base_lr, cfg.momentum,
                                                cfg.weight_decay, cfg.get("transformer_lr", 6e-5))
        self.state = TrainingState()
        if cfg.resume:
            self._resume(cfg.resume)
        self.network = self.model
        if context.distributed:
            # The last block's support branch gets no gradient (its output is unused).
            self.network = DistributedDataParallel(
                self.model, device_ids=[context.local_rank] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        train_data = build_dataset(cfg, "train", show_progress=context.is_main)
        self.sampler = DistributedSampler(train_data) if context.distributed else None
        self.train_loader = DataLoader(train_data, batch_size=cfg.batch_size,
                                       shuffle=self.sampler is None, sampler=self.sampler,
                                       num_workers=cfg.workers, pin_memory=self.device.type == "cuda",
                                       drop_last=True)
        if len(self.train_loader) == 0:
            raise ValueError(f"{cfg.train_list}: {len(train_data)} training episodes are fewer than "
                             f"one batch of {cfg.batch_size}")
        self.val_loader = None
        self.test_classes = test_class_ids(cfg)
        if cfg.evaluate and context.is_main:
            self.val_loader = build_val_loader(cfg, build_dataset(cfg, "val"))
        self.writer = None
        if cfg.get("viz", False) and context.is_main:
            from tensorboardX import SummaryWriter
            self.writer = SummaryWriter(os.path.join(experiment_dir(cfg),
                                                     per_shot_name(cfg, "tensorboard")))

    # ----------------------------------------------------------------------------- resume
    def _resume(self, path: str) -> None:
        checkpoint = load_checkpoint(path, map_location=self.device)
        latest = os.path.join(self.snapshot_dir, per_shot_name(self.cfg, "latest", ".pth"))
        needed = ("state_dict", "optimizer", "optimizer_swin", "epoch")
        missing = [key for key in needed if not (isinstance(checkpoint, dict) and key in checkpoint)]
        if missing:
            what = "a bare state_dict (weights only)" if "state_dict" in missing else \
                f"a checkpoint without {', '.join(repr(key) for key in missing)}"
            raise CheckpointError(
                f"resume: {path} is {what}; resume needs a training checkpoint with "
                f"{', '.join(repr(key) for key in needed)} such as {latest} (written by "
                f"train_sccan.py every epoch)")
        self._check_same_run(checkpoint, path)
        load_model_weights(self.model, checkpoint)
        self.sgd.load_state_dict(checkpoint["optimizer"])
        self.adamw.load_state_dict(checkpoint["optimizer_swin"])
        training = checkpoint.get("training_state")
        if training is None:  # a checkpoint of the original code: an epoch label only
            # label e ends 0-based epoch e (e + 1 done); label e - 0.5 lies inside epoch e (e done)
            self.state.epoch = int(math.floor(checkpoint["epoch"])) + 1
            self.logger.warning(f"{path} has no training state (RNG, best mIoU): resuming at "
                                f"epoch {self.state.epoch + 1} without exact continuation")
        else:
            self.state = TrainingState(**{k: v for k, v in training.items() if k != "rng"})
            set_rng_states(training["rng"])
        self.logger.info(f"resumed from {path} at epoch {self.state.epoch}, iteration "
                         f"{self.state.iteration}, best mIoU {self.state.best_miou:.4f}")

    def _check_same_run(self, checkpoint: dict, path: str) -> None:
        saved = checkpoint.get("config")
        if not isinstance(saved, dict):
            self.logger.warning(f"{path} records no config: its dataset, fold and shot cannot be "
                                f"checked against this config (the backbone depth is)")
            return
        differences = [f"{key} {saved[key]!r} (config: {self.cfg[key]!r})" for key in RUN_IDENTITY_KEYS
                       if key in saved and saved[key] != self.cfg[key]]
        if differences:
            raise CheckpointError(
                f"resume: {path} belongs to another run: {', '.join(differences)}; resume it with "
                f"the config it was trained with ({saved.get('config_file', 'see its config')}), "
                f"or start this run without resume")

    # ------------------------------------------------------------------------- checkpoints
    def _checkpoint(self, epoch_value: float) -> dict:
        training = asdict(self.state)
        training["rng"] = get_rng_states()
        return {"epoch": epoch_value, "state_dict": self.model.state_dict(),
                "optimizer": self.sgd.state_dict(), "optimizer_swin": self.adamw.state_dict(),
                "config": self.cfg.to_dict(), "training_state": training}

    def _save(self, name: str, epoch_value: float) -> str:
        path = os.path.join(self.snapshot_dir, name)
        save_checkpoint_atomic(self._checkpoint(epoch_value), path)
        return path

    # -------------------------------------------------------------------------- validation
    def validate(self, epoch_value: float) -> None:
        """Rank 0 evaluates and keeps the best checkpoint; the other ranks wait."""
        if self.context.is_main and self.val_loader is not None:
            cfg = self.cfg
            result = evaluate(self.model, self.val_loader, test_num=cfg.test_num,
                              num_test_classes=len(self.test_classes), device=self.device,
                              seed=cfg.manual_seed if cfg.fix_random_seed_val else None,
                              seed_deterministic=cfg.seed_deterministic, ori_resize=cfg.ori_resize,
                              ignore_label=cfg.ignore_label, progress=True)
            self.logger.info(f"val epoch {format_epoch_label(epoch_value)}: mIoU {result['mIoU']:.4f} "
                             f"FB-IoU {result['FB_IoU']:.4f} pIoU {result['pIoU']:.4f} "
                             f"({result['episodes']} episodes, {result['seconds']:.0f}s)")
            if self.writer is not None:
                self.writer.add_scalar("mIoU_val", result["mIoU"], epoch_value)
                self.writer.add_scalar("FBIoU_val", result["FB_IoU"], epoch_value)
            if result["mIoU"] > self.state.best_miou:
                previous = self.state.best_path
                self.state.best_miou, self.state.best_epoch = result["mIoU"], epoch_value
                name = best_checkpoint_name(cfg.shot, epoch_value, result["mIoU"])
                self.state.best_path = os.path.join(self.snapshot_dir, name)
                self._save(name, epoch_value)
                if previous and previous != self.state.best_path and os.path.exists(previous):
                    os.remove(previous)
                self.logger.info(f"new best mIoU {result['mIoU']:.4f}: {self.state.best_path}")
            self.model.train()
        if self.context.distributed:
            dist.barrier()
            # Everyone needs the best epoch for the early-stop decision.
            best = torch.tensor([self.state.best_epoch, self.state.best_miou], dtype=torch.float64,
                                device=self.device)
            dist.broadcast(best, 0)
            self.state.best_epoch, self.state.best_miou = float(best[0]), float(best[1])

    # ---------------------------------------------------------------------------- training
    def train_epoch(self, epoch: int) -> None:
        cfg = self.cfg
        self.network.train()
        if cfg.fix_bn:
            self.model.apply(fix_batch_norm)
        iterations = len(self.train_loader)
        max_iteration = cfg.epochs * iterations
        half_epoch_validation = (cfg.evaluate and cfg.SubEpoch_val and cfg.epochs <= 100
                                 and epoch > 0)
        progress = None
        if self.context.is_main:
            from tqdm import tqdm
            progress = tqdm(total=iterations, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                            dynamic_ncols=True)
        start = time.time()
        for index, (image, label, support_images, support_labels, subcls) in enumerate(self.train_loader):
            current = epoch * iterations + index + 1
            poly_learning_rate(self.sgd, cfg.base_lr, current, max_iteration, power=cfg.power,
                               index_split=cfg.index_split, warmup=cfg.warmup,
                               warmup_step=iterations // 2)
            image, label = image.to(self.device), label.to(self.device)
            support_images = support_images.to(self.device)
            support_labels = support_labels.to(self.device)
            _, main_loss, aux_loss1, aux_loss2 = self.network(
                x=image, s_x=support_images, s_y=support_labels, y_m=label, cat_idx=subcls)
            loss = main_loss + cfg.aux_weight1 * aux_loss1 + cfg.aux_weight2 * aux_loss2
            self._check_finite(loss, epoch, index, current)
            self.sgd.zero_grad(set_to_none=True)
            self.adamw.zero_grad(set_to_none=True)
            loss.backward()
            self.sgd.step()
            self.adamw.step()
            self.state.iteration = current
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.4f}")
            if self.context.is_main and (index + 1) % cfg.print_freq == 0:
                self.logger.info(f"epoch {epoch + 1} iteration {index + 1}/{iterations} "
                                 f"loss {loss.item():.4f} lr {self.sgd.param_groups[0]['lr']:.6f} "
                                 f"({(time.time() - start) / (index + 1):.2f}s/it)")
                if self.writer is not None:
                    self.writer.add_scalar("loss_train_batch", loss.item(), current)
            if half_epoch_validation and index == half_epoch_index(iterations):
                self.validate(epoch_label(epoch, half=True))
        if progress is not None:
            progress.close()

    def _check_finite(self, loss: torch.Tensor, epoch: int, index: int, current: int) -> None:
        bad = torch.tensor([0.0 if torch.isfinite(loss).item() else 1.0], device=self.device)
        if self.context.distributed:
            dist.all_reduce(bad)  # every rank must stop together
        if bad.item():
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, iteration {index + 1} "
                f"(global iteration {current}); training stopped, the last good checkpoints in "
                f"{self.snapshot_dir} are kept")

    def fit(self, interrupt_after_epochs: Optional[int] = None) -> TrainingState:
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
            if self.context.is_main:
                self._save(per_shot_name(cfg, "latest", ".pth"), label)
                if cfg.save_freq and self.state.epoch % cfg.save_freq == 0:
                    self._save(per_shot_name(cfg, f"epoch_{label}", ".pth"), label)
            if self.context.distributed:
                dist.barrier()
            if cfg.evaluate and label - self.state.best_epoch >= cfg.stop_interval:
                self.logger.info(f"early stop: no better mIoU for {cfg.stop_interval} epochs "
                                 f"(best {self.state.best_miou:.4f} at epoch "
                                 f"{format_epoch_label(self.state.best_epoch)})")
                break
            if interrupt_after_epochs is not None and self.state.epoch >= interrupt_after_epochs:
                return self.state  # simulated crash point (tests of exact resume)
        if self.context.is_main:
            path = self._save(per_shot_name(cfg, "final", ".pth"), epoch_label(self.state.epoch - 1))
            if not cfg.evaluate:
                outcome = "validation was off (evaluate: False), so no best checkpoint was kept"
            elif self.state.best_path:
                outcome = (f"best mIoU {self.state.best_miou:.4f} at epoch "
                           f"{format_epoch_label(self.state.best_epoch)} ({self.state.best_path})")
            else:
                outcome = "no validation scored above 0, so no best checkpoint was kept"
            self.logger.info(f"done after {self.state.epoch} epochs: final weights {path}; {outcome}")
        return self.state


def parse_arguments(argv=None):
    parser = config_argparser("Train SCCAN")
    parser.add_argument("--overwrite", action="store_true",
                        help="start again in an output folder that already holds a run of this shot "
                             "(its latest/final checkpoints are replaced; best checkpoints are kept)")
    parser.add_argument("--viz", action="store_true",
                        help="write TensorBoard event files to <exp>/tensorboard_<K>shot/")
    arguments = parser.parse_args(argv)
    cfg = config_from_arguments(arguments)
    if arguments.viz:
        cfg.viz = True
    return arguments, cfg


def check_fresh_output(cfg, overwrite: bool) -> None:
    """Refuse to silently replace another run of the same shot in the shared output folder."""
    if cfg.resume or overwrite:
        return
    names = [per_shot_name(cfg, stem, ".pth") for stem in ("latest", "final")]
    existing = [name for name in names if os.path.exists(os.path.join(snapshot_dir(cfg), name))]
    if existing:
        latest = os.path.join(snapshot_dir(cfg), names[0])
        raise UserError(
            f"{experiment_dir(cfg)} already holds a {cfg.shot}-shot run ({', '.join(existing)}): "
            f"continue it with --opts resume {latest}, or start again with --overwrite "
            f"(or --opts save_path OTHER_FOLDER)")


def main(argv=None, interrupt_after_epochs: Optional[int] = None) -> Trainer:
    """Train from a command line; returns the :class:`Trainer` (model, optimizers, state)."""
    arguments, cfg = parse_arguments(argv)
    check_data_root(cfg)  # before anything is written into the output folder
    check_fresh_output(cfg, arguments.overwrite)
    context = init_distributed(cfg.get("local_rank"))
    set_seed(cfg.manual_seed, cfg.seed_deterministic)
    out_dir = experiment_dir(cfg)
    logger = get_logger("sccan.train", os.path.join(out_dir, per_shot_name(cfg, "train", ".log")),
                        context.is_main)
    if context.is_main:
        os.makedirs(snapshot_dir(cfg), exist_ok=True)
        save_config(cfg, os.path.join(out_dir, per_shot_name(cfg, "config", ".yaml")))
        logger.info(f"config {cfg.source}; outputs in {out_dir}; device {context.device}; "
                    f"world size {context.world_size}")
    trainer = Trainer(cfg, context, logger)
    try:
        trainer.fit(interrupt_after_epochs)
        return trainer
    finally:
        if trainer.writer is not None:
            trainer.writer.close()
        if context.distributed and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
