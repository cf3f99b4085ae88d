"""Run the paper's grid (every fold, shot and backbone of a dataset) and print its table.

    python -m tools.run_grid --dataset pascal|coco|toy [--what test|train|both] [--folds 0 1 2 3]
        [--shots 1 5] [--layers 50 101] [--out exp/grid] [--executor local|gpus|slurm|submitit-local]
        [--gpus N] [--gpus-per-job N] [--rerun] [--episodes N] [--seeds N]
        [--partition P] [--account A] [--time MINUTES] [--cpus-per-job N] [--slurm-log-dir DIR]
        [--opts key value ...]

One cell per (fold, shot, backbone): config/<dataset>/<dataset>_split<f>_resnet<L>[_5s].yaml, run
as the scripts themselves (``train_sccan.py``, ``test_sccan.py --output
<out>/<dataset>/resnet<L>/<K>shot/split<f>.json``) with each cell's output in
<out>/logs/<cell>.log. ``--what test`` tests the checkpoint the config's ``weight`` names in the
run's snapshot folder (the released ones of exp.zip); ``both`` trains and tests the best
checkpoint of the training; ``train`` only trains. A cell without its checkpoint is skipped in
one line; a finished cell (its result, or for ``train`` its final checkpoint) is not run again
unless ``--rerun``, so an interrupted grid continues where it stopped; a failing cell is reported
at the end with its log, the others still run, and the exit status is 1. At the end the table of
evaluation/paper_table.py for <out>, as ``python -m tools.results_table <out>`` prints it.

Executors: ``local`` one cell after the other; ``gpus`` one cell per free GPU at a time (each with
its own CUDA_VISIBLE_DEVICES; a training of --gpus-per-job GPUs under torch.distributed.run);
``slurm`` one Slurm job per cell, as job arrays through submitit (partition, account, time limit,
GPUs and CPUs per job); ``submitit-local`` the same jobs through submitit's local executor (no
Slurm needed). The planning is tools/grid.py, the jobs and executors tools/grid_jobs.py.
"""
from __future__ import annotations

import argparse
import os
import sys

if not __package__:  # run as a file: the project's packages are not importable that way
    import _as_module  # noqa: F401  (tools/_as_module.py: says how to run it, exits)

from tools import results_table
from tools.grid import DATASETS, FOLDS, LAYERS, SHOTS, TOY_LAYERS, WHAT, GridRequest, cell_config, plan_cell, \
    select_cells, shown
from tools.grid_jobs import (SubmititSettings, import_submitit, run_on_gpus, run_one_after_another,
                             run_with_submitit)
from tools.make_toy_dataset import make_toy_dataset
from util.cli import UserError, add_debug_argument, positive_int, run_entry_point

EXECUTORS = ("local", "gpus", "slurm", "submitit-local")
DEFAULT_TIME_MINUTES = 24 * 60


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.run_grid", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--dataset", required=True, choices=DATASETS)
    add("--what", choices=WHAT, default="test",
        help="test the checkpoints the configs name (default), train, or train and test the best checkpoint")
    add("--folds", type=int, nargs="+", choices=FOLDS, default=list(FOLDS), metavar="F", help="default 0 1 2 3")
    add("--shots", type=int, nargs="+", choices=SHOTS, default=list(SHOTS), metavar="K", help="default 1 5")
    add("--layers", type=int, nargs="+", choices=LAYERS, metavar="L",
        help="backbone depths, default 50 101 (toy: 50, its only configs)")
    add("--out", default=os.path.join("exp", "grid"),
        help="results <out>/<dataset>/resnet<L>/<K>shot/split<f>.json and logs <out>/logs/ (default exp/grid)")
    add("--executor", choices=EXECUTORS, default="local", help="default local (one cell after the other)")
    add("--gpus", type=positive_int, metavar="N",
        help="gpus: the GPUs to share out (default: every GPU torch sees); submitit-local: the GPUs every "
             "job sees (default none: CPU)")
    add("--gpus-per-job", type=positive_int, metavar="N",
        help="GPUs of a training (torch.distributed.run with N processes when N > 1; default 4 for COCO, "
             "as the paper, else 1); a test uses one")
    add("--rerun", action="store_true", help="run finished cells again (trainings with --overwrite)")
    add("--episodes", type=positive_int, metavar="N", help="test_sccan.py --episodes (default: the config's test_num)")
    add("--seeds", type=positive_int, metavar="N", help="test_sccan.py --seeds (default 1)")
    slurm = parser.add_argument_group("Slurm (--executor slurm; --time and --slurm-log-dir also for submitit-local)")
    slurm.add_argument("--partition", help="sbatch --partition")
    slurm.add_argument("--account", help="sbatch --account")
    slurm.add_argument("--time", type=positive_int, default=DEFAULT_TIME_MINUTES, metavar="MINUTES",
                       help=f"time limit of each job (sbatch --time; default {DEFAULT_TIME_MINUTES})")
    slurm.add_argument("--cpus-per-job", type=positive_int, metavar="N",
                       help="sbatch --cpus-per-task (default: the cluster's; the configs load with 8 workers)")
    slurm.add_argument("--slurm-log-dir", metavar="DIR",
                       help="submitit's job files and each job's stdout/stderr (default <out>/submitit)")
    add_debug_argument(parser)
    add("--opts", nargs=argparse.REMAINDER, default=[],
        help="config overrides for every cell's scripts, as theirs ('key value' pairs; must come last)")
    arguments = parser.parse_args(argv)
    if arguments.executor != "slurm":
        for option in ("partition", "account", "cpus_per_job"):
            if getattr(arguments, option) is not None:
                parser.error(f"--{option.replace('_', '-')} is an option of --executor slurm")
    if arguments.gpus is not None and arguments.executor not in ("gpus", "submitit-local"):
        parser.error("--gpus is an option of --executor gpus and submitit-local")
    if arguments.layers is None:
        arguments.layers = list(TOY_LAYERS) if arguments.dataset == "toy" else list(LAYERS)
    return arguments


def machine_gpus(arguments) -> int:
    """--executor gpus: the GPUs to share out."""
    if arguments.gpus:
        return arguments.gpus
    import torch
    count = torch.cuda.device_count()
    if not count:
        raise UserError("--executor gpus: torch sees no GPU here; give --gpus N or use --executor local")
    return count


def ensure_toy_data(cfg) -> None:
    """The toy dataset is generated where the toy configs look for it, as tools.toy_demo does."""
    if not os.path.isfile(os.path.join(str(cfg.data_root), "meta.json")):
        print(f"generating the toy dataset in {cfg.data_root} ...", flush=True)
        make_toy_dataset(str(cfg.data_root))


def execute(jobs, arguments, out: str):
    """Run ``jobs`` with the chosen executor; their outcomes in the jobs' order."""
    report = lambda line: print(line, flush=True)  # noqa: E731
    if arguments.executor == "local":
        return run_one_after_another(jobs, report)
    if arguments.executor == "gpus":
        gpus = machine_gpus(arguments)
        too_big = [job.name for job in jobs if job.gpus > gpus]
        if too_big:
            raise UserError(f"--gpus-per-job {max(job.gpus for job in jobs)}: more GPUs than the {gpus} of this "
                            f"machine ({', '.join(too_big)}); give --gpus-per-job {gpus} or fewer")
        return run_on_gpus(jobs, gpus, report)
    settings = SubmititSettings(folder=os.path.abspath(arguments.slurm_log_dir or os.path.join(out, "submitit")),
                                timeout_min=arguments.time, partition=arguments.partition,
                                account=arguments.account, cpus_per_task=arguments.cpus_per_job)
    return run_with_submitit(jobs, arguments.executor, settings, report, gpus_of_local_jobs=arguments.gpus or 0)


def print_table(out: str) -> None:
    """The table of ``out``, as ``python -m tools.results_table <out>`` prints it."""
    print(flush=True)
    try:
        results_table.main([shown(out, os.getcwd())])
    except UserError as error:  # e.g. --what train: no result yet
        print(f"no table: {error}", flush=True)
    sys.stdout.flush()


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    if arguments.executor in ("slurm", "submitit-local"):
        import_submitit(arguments.executor)  # before anything runs
    cwd = os.getcwd()
    out = os.path.abspath(arguments.out)
    request = GridRequest(what=arguments.what, out=out, cwd=cwd, opts=tuple(arguments.opts), rerun=arguments.rerun,
                          episodes=arguments.episodes, seeds=arguments.seeds, gpus_per_job=arguments.gpus_per_job)
    cells, lines = select_cells(arguments.dataset, arguments.folds, arguments.shots, arguments.layers)
    plans = [plan_cell(cell, request) for cell in cells]  # every config is loaded and checked before a run
    jobs = [plan.job for plan in plans if plan.job is not None]
    print(f"grid: {len(cells)} cell{'s' * (len(cells) != 1)} of {arguments.dataset} ({arguments.what}), "
          f"{len(jobs)} to run with --executor {arguments.executor}; results and logs in {shown(out, cwd)}", flush=True)
    for line in lines + [plan.line for plan in plans]:
        print(line, flush=True)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    if jobs and arguments.dataset == "toy":
        ensure_toy_data(cell_config(cells[0], request.opts))
    outcomes = execute(jobs, arguments, out) if jobs else []
    print_table(out)
    failed = [outcome for outcome in outcomes if not outcome.ok]
    if failed:
        print(f"grid: {len(failed)} of {len(outcomes)} cell{'s' * (len(outcomes) != 1)} failed:", flush=True)
        for outcome in failed:
            print(f"  {outcome.name}: {outcome.problem}; log {shown(outcome.log, cwd)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
