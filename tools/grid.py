"""The cells of ``python -m tools.run_grid`` and the job of each: which config, which checkpoint,
which commands, and whether a cell is done already.

A cell is (dataset, fold, shot, backbone); its config is the shipped
``config/<dataset>/<dataset>_split<f>_resnet<L>[_5s].yaml`` (the toy configs are ResNet-50 only)
with the grid's ``--opts``, and its result ``<out>/<dataset>/resnet<L>/<K>shot/split<f>.json``.

* ``--what test``: test_sccan.py on the checkpoint the config's ``weight`` key names in the run's
  snapshot folder (the released one for the paper configs); without that file the cell is
  skipped, in one line.
* ``--what train``: train_sccan.py (continued from its ``latest`` checkpoint when an earlier
  grid was interrupted); done when its ``final`` checkpoint exists.
* ``--what both``: the training unless its ``final`` checkpoint exists, then the test of the
  best checkpoint it wrote (tools/grid_jobs.trained_checkpoint).

A cell whose result (``train``: final checkpoint) exists is done and not run again, unless
``--rerun``. The commands run in the working directory of the grid, where the configs'
relative paths (data/, exp/) point, as for the scripts themselves.
"""
from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from engine.best_checkpoint import best_checkpoint_prefix
from evaluation.results import chart_path
from experiment.build import per_shot_name, snapshot_dir
from tools.grid_jobs import CellJob
from util.cli import UserError
from util.config import load_config
from util.dataset import NUM_SPLITS

__all__ = ["DATASETS", "GRID_KEYS", "Cell", "GridRequest", "Plan", "plan_cell", "select_cells"]

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASETS = ("pascal", "coco", "toy")
FOLDS, SHOTS, LAYERS = tuple(range(NUM_SPLITS)), (1, 5), (50, 101)
TOY_LAYERS = (50,)
# Keys a cell sets itself (its config file, its output folder and checkpoints): refused in --opts.
GRID_KEYS = ("data_set", "split", "shot", "layers", "save_path", "weight", "resume")
WHAT = ("test", "train", "both")
# The paper trains COCO on 4 GPUs (config batch_size 2 per GPU); everything else on one.
DEFAULT_TRAINING_GPUS = {"coco": 4}


@dataclass(frozen=True, order=True)
class Cell:
    dataset: str
    layers: int
    shot: int
    fold: int

    @property
    def name(self) -> str:
        return f"{self.dataset}_resnet{self.layers}_{self.shot}shot_split{self.fold}"

    @property
    def config(self) -> str:
        stem = f"{self.dataset}_split{self.fold}_resnet{self.layers}" + ("_5s" if self.shot == 5 else "")
        return os.path.join(REPOSITORY_ROOT, "config", self.dataset, stem + ".yaml")

    def result(self, out: str) -> str:
        return os.path.join(out, self.dataset, f"resnet{self.layers}", f"{self.shot}shot", f"split{self.fold}.json")


@dataclass(frozen=True)
class GridRequest:
    """What the command line asks of every cell."""
    what: str
    out: str                                # absolute
    cwd: str                                # absolute: where the commands run
    opts: Tuple[str, ...] = ()
    rerun: bool = False
    episodes: Optional[int] = None
    seeds: Optional[int] = None
    gpus_per_job: Optional[int] = None      # a training's GPUs; None: DEFAULT_TRAINING_GPUS or 1
    python: str = sys.executable


@dataclass(frozen=True)
class Plan:
    """A cell's job, or None with the one line that says why nothing runs (done, skipped)."""
    cell: Cell
    job: Optional[CellJob]
    line: str = ""


def select_cells(dataset: str, folds: Sequence[int], shots: Sequence[int],
                 layers: Sequence[int]) -> Tuple[List[Cell], List[str]]:
    """The cells of the grid in table order (backbone, shot, fold), and one line per backbone
    that has no configs for ``dataset`` (the toy data: ResNet-50 only)."""
    lines, kept = [], []
    for depth in sorted(set(layers)):
        if dataset == "toy" and depth not in TOY_LAYERS:
            lines.append(f"skip toy ResNet-{depth}: the toy configs are ResNet-50 only "
                         f"(config/toy/toy_split<f>_resnet50[_5s].yaml)")
        else:
            kept.append(depth)
    return [Cell(dataset, depth, shot, fold) for depth in kept for shot in sorted(set(shots))
            for fold in sorted(set(folds))], lines


def shown(path: str, cwd: str) -> str:
    """``path`` relative to ``cwd`` when it lies under it (as the messages of the scripts)."""
    relative = os.path.relpath(path, cwd)
    return path if relative == os.pardir or relative.startswith(os.pardir + os.sep) else relative


def cell_config(cell: Cell, opts: Sequence[str]):
    """The cell's config with the grid's ``--opts``; an override of a key the cell sets itself
    (GRID_KEYS) is refused."""
    if not os.path.isfile(cell.config):
        raise UserError(f"{cell.name}: no config {cell.config} (python -m tools.make_configs writes the shipped ones)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a legacy key warns in the scripts themselves
        cfg = load_config(cell.config, list(opts))
        plain = load_config(cell.config) if opts else cfg
    overridden = [key for key in GRID_KEYS if cfg[key] != plain[key]]
    if overridden:
        raise UserError(f"--opts {' '.join(overridden)}: the grid sets {', '.join(GRID_KEYS)} per cell (its config, "
                        f"output folder and checkpoints); choose cells with --folds, --shots and --layers")
    return cfg


def plan_cell(cell: Cell, request: GridRequest) -> Plan:
    """The job of ``cell`` for ``request``, or the line saying it is done or has no checkpoint."""
    cfg = cell_config(cell, request.opts)
    cwd = request.cwd
    snapshot = os.path.join(cwd, snapshot_dir(cfg))
    final = os.path.join(snapshot, per_shot_name(cfg, "final", ".pth"))
    latest = os.path.join(snapshot, per_shot_name(cfg, "latest", ".pth"))
    result = cell.result(request.out)
    testing, training = request.what in ("test", "both"), request.what in ("train", "both")
    finished = result if testing else final
    if not request.rerun and os.path.isfile(finished):
        return Plan(cell, None, f"done {cell.name}: {shown(finished, cwd)} exists (--rerun runs it again)")
    weight = ""
    if request.what == "test":
        if not cfg.weight:
            return Plan(cell, None, f"skip {cell.name}: no checkpoint (config key weight is empty)")
        weight = os.path.join(snapshot, cfg.weight)
        if not os.path.isfile(weight):
            return Plan(cell, None, f"skip {cell.name}: no checkpoint at {shown(weight, cwd)}")
    config = shown(cell.config, cwd)
    train: Tuple[str, ...] = ()
    gpus = 1
    if training and (request.rerun or not os.path.isfile(final)):
        gpus = request.gpus_per_job or DEFAULT_TRAINING_GPUS.get(cell.dataset, 1)
        launcher = [request.python]
        if gpus > 1:  # one process per GPU (DDP), on a free port of this node
            launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus)]
        resume = [] if request.rerun or not os.path.isfile(latest) else ["resume", shown(latest, cwd)]
        opts = list(request.opts) + resume
        train = tuple(launcher + [os.path.join(REPOSITORY_ROOT, "train_sccan.py"), "--config", config]
                      + (["--overwrite"] if request.rerun else []) + (["--opts", *opts] if opts else []))
    test: Tuple[str, ...] = ()
    if testing:
        test = tuple([request.python, os.path.join(REPOSITORY_ROOT, "test_sccan.py"), "--config", config,
                      "--output", shown(result, cwd)]
                     + (["--episodes", str(request.episodes)] if request.episodes else [])
                     + (["--seeds", str(request.seeds)] if request.seeds else []))
    job = CellJob(name=cell.name, cwd=cwd, log=os.path.join(request.out, "logs", cell.name + ".log"),
                  result=result if testing else "", chart=chart_path(result) if testing else "",
                  train=train, test=test, test_opts=tuple(request.opts),
                  weight=weight, snapshot=snapshot, final=final, best_prefix=best_checkpoint_prefix(cell.shot),
                  evaluate=bool(cfg.evaluate), released=cfg.weight, gpus=gpus)
    steps = " + ".join(step for step, command in (("train", train), ("test", test)) if command)
    details = [shown(weight, cwd)] if weight else []
    details += [f"the training continues from {shown(latest, cwd)}"] if train and resume else []
    return Plan(cell, job, f"{steps} {cell.name}" + (f" ({'; '.join(details)})" if details else ""))
