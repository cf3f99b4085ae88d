"""Train SCCAN on one fold, as the original's train.py does (docs/PROTOCOL.md sections 4 and 5).

    python train_sccan.py --config config/pascal/pascal_split0_resnet50.yaml [--opts key value ...]
    torchrun --nproc_per_node 4 train_sccan.py --config config/coco/coco_split0_resnet50.yaml

One process on CPU or one GPU needs no launcher; under torchrun each process trains on its own
GPU (NCCL) or on the CPU (gloo) with a DistributedSampler. Only rank 0 logs, validates and writes.
The training loop itself is util/trainer.py.
"""
from __future__ import annotations

import os
import sys

import torch.distributed as dist

from util.cli import run_entry_point
from util.config import config_argparser, config_from_arguments, save_config
from util.experiment import check_data_root, experiment_dir, per_shot_name, snapshot_dir
from util.runtime import get_logger, init_distributed, set_seed
from util.trainer import Trainer, check_fresh_output


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


def build_trainer(argv=None) -> Trainer:
    """Parse the command line, check the inputs, prepare the output folder, build the trainer."""
    arguments, cfg = parse_arguments(argv)
    check_data_root(cfg)  # before anything is written into the output folder
    check_fresh_output(cfg, arguments.overwrite)
    context = init_distributed(cfg.local_rank)
    set_seed(cfg.manual_seed, cfg.seed_deterministic)
    out_dir = experiment_dir(cfg)
    logger = get_logger("sccan.train", os.path.join(out_dir, per_shot_name(cfg, "train", ".log")),
                        context.is_main)
    if context.is_main:
        os.makedirs(snapshot_dir(cfg), exist_ok=True)
        save_config(cfg, os.path.join(out_dir, per_shot_name(cfg, "config", ".yaml")))
        logger.info(f"config {cfg.source}; outputs in {out_dir}; device {context.device}; "
                    f"world size {context.world_size}")
    return Trainer(cfg, context, logger)


def main(argv=None) -> Trainer:
    """Train from a command line; returns the :class:`Trainer` (model, optimizers, state)."""
    trainer = build_trainer(argv)
    try:
        trainer.fit()
        return trainer
    finally:
        trainer.close()
        if trainer.context.distributed and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
