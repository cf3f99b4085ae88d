"""Train SCCAN on one fold, as the original's train.py does (docs/PROTOCOL.md sections 4 and 5).

    python train_sccan.py --config config/pascal/pascal_split0_resnet50.yaml [--opts key value ...]
    torchrun --nproc_per_node 4 train_sccan.py --config config/coco/coco_split0_resnet50.yaml

One process on CPU or one GPU needs no launcher; under torchrun each process trains on its own
GPU (NCCL) or on the CPU (gloo) with a DistributedSampler. Only rank 0 logs, validates and writes.
SCCAN's part of the training is engine/trainer.py, the loop itself engine/loop.py.
"""
from __future__ import annotations

import sys

from engine.resume import precheck_resume
from engine.run import claim_output_folder, fit_and_close, parse_training_arguments, start_training_run, start_under_lock
from engine.trainer import SCCAN_RESUME, Trainer, check_fresh_output
from experiment.build import check_data_root, experiment_dir, per_shot_name, snapshot_dir
from experiment.models import precheck_base_learner
from util.cli import run_entry_point
from util.io import check_output_path


def parse_arguments(argv=None):
    return parse_training_arguments(
        argv, "Train SCCAN",
        overwrite_help="start again in an output folder that already holds a run of this shot "
                       "(its latest/final checkpoints are replaced; best checkpoints are kept)",
        viz_help="write TensorBoard event files to <exp>/tensorboard_<K>shot/")


def build_trainer(argv=None) -> Trainer:
    """Parse the command line, check the inputs, prepare the output folder, build the trainer."""
    arguments, cfg = parse_arguments(argv)
    check_data_root(cfg)  # before anything is written into the output folder
    for where, path in (("config key save_path", experiment_dir(cfg)),
                        ("the snapshot folder of config key save_path", snapshot_dir(cfg))):
        check_output_path(path, where, folder=True)
    # The checkpoints are read-only here: refused before the lock creates the output folder.
    # Both are read once: the trainer takes what the checks read.
    resume_checkpoint = precheck_resume(cfg, SCCAN_RESUME, arguments.allow_config_change)
    base_learner_state = precheck_base_learner(cfg)  # the model is built from it on resume too
    lock = claim_output_folder(experiment_dir(cfg), per_shot_name(cfg, "train", ".lock"),
                               f"{experiment_dir(cfg)} ({cfg.shot}-shot run)")

    def start() -> Trainer:
        check_fresh_output(cfg, arguments.overwrite)
        context, logger = start_training_run(cfg, "sccan.train", experiment_dir(cfg), snapshot_dir(cfg),
                                             per_shot_name(cfg, "train", ".log"),
                                             per_shot_name(cfg, "config", ".yaml"))
        return Trainer(cfg, context, logger, arguments.allow_config_change, resume_checkpoint,
                       base_learner_state)
    return start_under_lock(lock, start)


def main(argv=None) -> Trainer:
    """Train from a command line; returns the :class:`Trainer` (model, optimizers, state)."""
    return fit_and_close(build_trainer(argv))


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
