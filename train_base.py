"""Train BAM's base learner (a PSPNet on the base classes of one fold), as BAM's train_base.py
(github.com/chunbolang/BAM); SCCAN's ensemble variant then takes its backbone and predictions.

    python train_base.py --config config/pascal/pascal_split0_resnet50_base.yaml [--opts key value ...]
    torchrun --nproc_per_node 4 train_base.py --config config/coco/coco_split0_resnet50_base.yaml \
        --opts batch_size 3

The best weights go to initmodel/PSPNet/<dataset>/split<i>/resnet<L>/best.pth (config key
base_learner_weights) in BAM's format, so BAM's released base learners and these are
interchangeable; the log, config and latest/final checkpoints go to
exp/<dataset>/PSPNet/split<i>/resnet<L>/ (base_save_path). The base learner's part is engine/base_trainer.py, the loop engine/loop.py.
"""
from __future__ import annotations

import os
import sys

from engine.base_trainer import BASE_CHECKPOINT_NAMES, BASE_RESUME, BaseTrainer, check_fresh_base_output
from engine.resume import precheck_resume
from engine.run import claim_output_folder, fit_and_close, parse_training_arguments, start_training_run, start_under_lock
from experiment.build import base_experiment_dir, check_data_root
from experiment.models import base_learner_checkpoint_path
from util.cli import UserError, run_entry_point
from util.io import check_distinct_paths, check_output_path


def parse_arguments(argv=None):
    return parse_training_arguments(
        argv, "Train BAM's base learner (PSPNet) on the base classes of a fold",
        overwrite_help="start again where a base run (latest/final) or a base learner (best.pth) "
                       "already exists; they are replaced",
        viz_help="write TensorBoard event files to <base_save_path>/tensorboard/")


def build_trainer(argv=None) -> BaseTrainer:
    """Parse the command line, check the inputs, prepare the output folder, build the trainer."""
    arguments, cfg = parse_arguments(argv)
    if cfg.batch_size < 2:
        # The pyramid pooling's 1x1 bin gives BatchNorm one value per channel and image.
        raise UserError(f"config key batch_size: train_base.py needs at least 2 images per process "
                        f"(PSPNet's 1x1 pyramid-pooling BatchNorm), got {cfg.batch_size}")
    check_data_root(cfg)  # before anything is written into the output folder
    out_dir = base_experiment_dir(cfg)
    snapshots, best = os.path.join(out_dir, "snapshot"), base_learner_checkpoint_path(cfg)
    for where, path, folder in (("config key base_save_path", out_dir, True),
                                ("the snapshot folder of config key base_save_path", snapshots, True),
                                ("config key base_learner_weights", best, False)):
        check_output_path(path, where, folder)
    check_distinct_paths([(f"the run's {name}", os.path.join(snapshots, name)) for name in BASE_CHECKPOINT_NAMES]
                         + [("config key base_learner_weights", best)])
    # The resume checkpoint is read-only here: refused before the lock creates the output folder.
    resume_checkpoint = precheck_resume(cfg, BASE_RESUME, arguments.allow_config_change)  # read once
    lock = claim_output_folder(out_dir, "train.lock", f"{out_dir} (base learner run)")

    def start() -> BaseTrainer:
        check_fresh_base_output(cfg, arguments.overwrite)
        context, logger = start_training_run(cfg, "sccan.train_base", out_dir,
                                             os.path.join(out_dir, "snapshot"), "train.log", "config.yaml")
        return BaseTrainer(cfg, context, logger, arguments.allow_config_change, resume_checkpoint)
    return start_under_lock(lock, start)


def main(argv=None) -> BaseTrainer:
    """Train from a command line; returns the :class:`BaseTrainer` (model, optimizer, state)."""
    return fit_and_close(build_trainer(argv))


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
