"""SCCAN's training run (the original train.py; optimisation in docs/PROTOCOL.md section 4,
validation and checkpoints in section 5), run by train_sccan.py.

:class:`Trainer` supplies the shared loop (engine/loop.py) with SCCAN's model, its two
optimizers (SGD under the poly schedule, the transformer's AdamW), its losses (model/sccan.py
``SCCAN.losses``, weighted by the config), the validation protocol (evaluation/protocol.py; under
DDP every rank scores its share of the same episodes) and the original's best checkpoint names;
the per-shot ``latest``/``epoch_<e>``/``final`` checkpoints and exact resume are the loop's.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import torch

from engine.best_checkpoint import format_epoch_label
from engine.loop import (NonFiniteLossError, NonFiniteLossWatch, TrainingLoop, build_train_loader,  # noqa: F401
                         distributed_network)
from engine.optimization import build_optimizers
from engine.resume import (ResumeFormat, TrainingState, check_resume_checkpoint, fast_optimizer_steps,  # noqa: F401
                           load_resume_checkpoint, place_optimizer_state, precheck_resume,
                           restore_training_state, rng_states_of_this_rank, training_checkpoint,
                           training_state_problem)
from engine.run import (claim_output_folder, fit_and_close, parse_training_arguments,  # noqa: F401
                        refuse_to_overwrite, start_training_run, start_under_lock)
from evaluation.protocol import EvaluationProtocol, format_cache_statistics
from experiment.build import (build_dataset, build_experiment_model, build_val_loader, experiment_dir,
                              per_shot_name, snapshot_dir, tensorboard_writer, test_class_ids)
from experiment.models import build_model

# The names above marked noqa are re-exported: code and tests written against this module's
# earlier layout import them from here.
__all__ = ["Trainer", "check_fresh_output", "SCCAN_RESUME", "sccan_loss_weights", "NonFiniteLossError", "NonFiniteLossWatch",
           "TrainingState", "refuse_to_overwrite", "load_resume_checkpoint", "restore_training_state",
           "training_checkpoint", "parse_training_arguments", "start_training_run", "fit_and_close",
           "build_train_loader", "claim_output_folder", "distributed_network", "precheck_resume",
           "start_under_lock", "fast_optimizer_steps", "place_optimizer_state", "rng_states_of_this_rank",
           "ResumeFormat", "check_resume_checkpoint", "training_state_problem"]

# A checkpoint trained for another of these cannot be resumed under this config.
RUN_IDENTITY_KEYS = ("data_set", "split", "layers", "shot")
RESUME_KEYS = ("state_dict", "optimizer", "optimizer_swin", "epoch")


def check_fresh_output(cfg, overwrite: bool) -> None:
    """Refuse to silently replace another run of the same shot in the shared output folder."""
    names = [per_shot_name(cfg, stem, ".pth") for stem in ("latest", "final")]
    refuse_to_overwrite([os.path.join(snapshot_dir(cfg), name) for name in names], overwrite,
                        cfg.resume, f"{experiment_dir(cfg)} already holds a {cfg.shot}-shot run",
                        os.path.join(snapshot_dir(cfg), names[0]), "save_path")


def sccan_loss_weights(cfg) -> Dict[str, float]:
    """The weight of each of SCCAN's named losses (model/sccan.py ``SCCAN.losses``): BAM's
    ``main_loss + aux_weight1 * aux_loss1 + aux_weight2 * aux_loss2`` with a base learner; the
    paper's SCCAN has the main loss alone."""
    return {"main_loss": 1.0, "aux_loss1": cfg.aux_weight1, "aux_loss2": cfg.aux_weight2}


def _sccan_skeleton(cfg):
    # The structure only: with backbone_from_checkpoint no weight file is read, the base
    # learner's neither (a checkpoint's state_dict holds it).
    model = build_model(cfg, backbone_from_checkpoint=True)
    sgd, adamw = build_optimizers(model, cfg.base_lr, cfg.momentum, cfg.weight_decay, cfg.transformer_lr)
    return model, {"optimizer": sgd, "optimizer_swin": adamw}


SCCAN_RESUME = ResumeFormat("train_sccan.py", "sccan", RESUME_KEYS, RUN_IDENTITY_KEYS,
                            lambda cfg: os.path.join(snapshot_dir(cfg), per_shot_name(cfg, "latest", ".pth")),
                            _sccan_skeleton)


class Trainer(TrainingLoop):
    """One SCCAN training run (the loop itself: engine/loop.TrainingLoop). ``resume_checkpoint``
    and ``base_learner_state``: what the script's prechecks read and checked
    (:func:`engine.resume.precheck_resume`, :func:`experiment.models.precheck_base_learner`), so
    that no file is read twice; None reads them here."""

    early_stop = True

    def __init__(self, cfg, context, logger, allow_config_change: bool = False,
                 resume_checkpoint: Optional[dict] = None, base_learner_state: Optional[dict] = None):
        super().__init__(cfg, context, logger, allow_config_change)
        self.snapshot_dir = snapshot_dir(cfg)
        self.resume_format = SCCAN_RESUME
        self.model = build_experiment_model(cfg, self.device, base_learner_state=base_learner_state)
        self.sgd, self.adamw = build_optimizers(self.model, cfg.base_lr, cfg.momentum,
                                                cfg.weight_decay, cfg.transformer_lr)
        self.optimizers = {"optimizer": self.sgd, "optimizer_swin": self.adamw}
        self.scheduled_optimizer = self.sgd  # the transformer's AdamW keeps its learning rate
        self.loss_weights = sccan_loss_weights(cfg)
        if cfg.resume:
            self.resume(cfg.resume, resume_checkpoint)
        fast_optimizer_steps(self.sgd, self.adamw)
        # `self.model` is the one model (checkpoints, validation); training steps go through its
        # DDP wrapper when distributed, which all-reduces the gradients. The last block's support
        # branch gets no gradient (its output is unused), hence find_unused_parameters.
        self.training_forward = distributed_network(self.model, context, find_unused_parameters=True)
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

    # ------------------------------------------------------------------------ the loop's steps
    def losses(self, batch) -> Dict[str, torch.Tensor]:
        """A batch of :class:`~util.episode.TrainingEpisode` (with a base learner
        :class:`~util.episode.TrainingEpisodeWithBaseLabel`) -> SCCAN's named losses."""
        base_label = getattr(batch, "base_label", None)
        output = self.training_forward(x=self.to_device(batch.query_image),
                                       s_x=self.to_device(batch.support_images),
                                       s_y=self.to_device(batch.support_labels), cat_idx=batch.class_index)
        return self.model.losses(output, self.to_device(batch.query_label),
                                 None if base_label is None else self.to_device(base_label))

    def evaluate(self) -> Optional[dict]:
        """The validation protocol's result (mIoU, FB_IoU, pIoU, ...; every rank scores its share
        of the same episodes and the result is summed)."""
        if self.protocol is None:
            return None
        return self.protocol.run(self.model, self.val_loader, self.device, seed=self.protocol.seeds[0],
                                 progress=self.context.is_main, context=self.context)

    def half_epoch_validation(self, epoch: int) -> bool:
        cfg = self.cfg
        return bool(cfg.evaluate and cfg.SubEpoch_val and cfg.epochs <= 100 and epoch > 0)

    def report_validation(self, label: float, result: dict) -> None:
        self.logger.info(f"val epoch {format_epoch_label(label)}: mIoU {result['mIoU']:.4f} "
                         f"FB-IoU {result['FB_IoU']:.4f} pIoU {result['pIoU']:.4f} "
                         f"({result['episodes']} episodes, {result['seconds']:.0f}s)")
        if "feature_cache" in result:
            self.logger.info(format_cache_statistics(result["feature_cache"]))
        if self.writer is not None:
            self.writer.add_scalar("mIoU_val", result["mIoU"], label)
            self.writer.add_scalar("FBIoU_val", result["FB_IoU"], label)

    def keep_best(self, label: float, result: dict) -> None:
        """The original's best checkpoint (``train_epoch_<label>_<mIoU>.pth``, a full training
        checkpoint) replaces the previous best of this run's snapshot folder."""
        best = self.state.best
        previous = best.replace(self.snapshot_dir, self.cfg.shot, label, result["mIoU"])
        self.save(os.path.basename(best.path), label)
        # Only a best checkpoint of this run's snapshot folder is replaced: a path recorded in a
        # resumed checkpoint may name another run's file.
        if self.context.is_main and previous and os.path.exists(previous) and \
                os.path.dirname(os.path.abspath(previous)) == os.path.abspath(self.snapshot_dir):
            os.remove(previous)

    def checkpoint_name(self, stem: str) -> str:
        return per_shot_name(self.cfg, stem, ".pth")

    def outcome(self) -> str:
        best = self.state.best
        if not self.cfg.evaluate:
            return "validation was off (evaluate: False), so no best checkpoint was kept"
        if best.path:
            return f"best mIoU {best.miou:.4f} at epoch {format_epoch_label(best.epoch)} ({best.path})"
        return "no validation scored above 0, so no best checkpoint was kept"
