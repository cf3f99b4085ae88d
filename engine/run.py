"""The frame of a training script (train_sccan.py, train_base.py): its command line, the checks
before anything is written, the output folder's lock, the run's start (process group, seed,
logger, recorded config) and its end (writer, lock and process group closed even on errors)."""
from __future__ import annotations

import atexit
import os
from typing import Any, Callable, Optional

import torch.distributed as dist

from util.cli import UserError
from util.config import config_argparser, config_from_arguments, save_config
from util.io import OutputFolderLock, remove_stale_partial_files
from util.runtime import check_amp, get_logger, init_distributed, set_seed


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


def start_under_lock(lock: Optional[OutputFolderLock], start: Callable[[], Any]):
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
