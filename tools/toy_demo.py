"""The README's default run: toy data -> base learner -> SCCAN + ensemble -> test on novel classes.

    python -m tools.toy_demo [--config config/toy/toy_split0_resnet50_bam.yaml]
                             [--base-config config/toy/toy_split0_resnet50_base.yaml] [--opts key value ...]

The two stages of BAM's pipeline (which SCCAN's ensemble variant follows), on the toy data:

1. generates the toy dataset into data/toy if absent (seeded, a few seconds);
2. stage 1, train_base.py: BAM's PSPNet base learner on the 15 base classes of fold 0 (the novel
   classes are background), from a random start (no ImageNet weights here); its best weights
   (base_learner_weights) are what stage 2 reads;
3. stage 2, train_sccan.py: SCCAN's meta learner on the base learner's frozen backbone, ensembled
   with the base learner's predictions (base_learner: True), on base-class episodes only;
4. test_sccan.py on the 5 novel classes, recording the episodes, then replaying exactly those
   episodes for every other row: the trained model scored as its ensemble and as its meta
   learner alone (one forward), the trained model given the previous episode's support (a
   diagnostic: a model that really uses its support scores lower there), the untrained model,
   the training-free prior mask of the same backbone, and "everything foreground";
5. BAM's generalised few-shot test (test_sccan.py --gfss): base and novel classes together;
6. prints the tables (also written to exp/toy/SCCAN_BAM/.../result/toy_demo.json).

--opts go to the stage-2 config (and so to every test); --base-opts to the stage-1 config.
``--config config/toy/toy_split0_resnet50.yaml`` (no base learner) runs the one-stage version
instead: SCCAN on a random frozen backbone, the same rows without the ensemble and the
generalised test.
"""
from __future__ import annotations

import os
import sys
import time

if not __package__:  # run as a file: the project's packages are not importable that way
    import _as_module  # noqa: F401  (tools/_as_module.py: says how to run it, exits)

import test_sccan
import train_base
import train_sccan
from experiment.build import result_dir
from experiment.models import base_learner_checkpoint_path
from tools.make_toy_dataset import make_toy_dataset
from util.cli import UserError, run_entry_point
from util.config import config_argparser, load_config
from util.dataset import base_class_count
from util.io import atomic_write_json

DEFAULT_CONFIG = "config/toy/toy_split0_resnet50_bam.yaml"
DEFAULT_BASE_CONFIG = "config/toy/toy_split0_resnet50_base.yaml"

# (row, test_sccan.py flags, result file name, output scored: 'ensemble', 'meta' or None for a
# single-output predictor), in the order they are printed. Rows with the same flags share a run.
# BASELINE_ROWS need no trained model; both tables end with them.
BASELINE_ROWS = [
    ("training-free prior mask, threshold 0.7 (same backbone)", ["--prior-baseline"],
     "toy_prior_baseline", None),
    ("predict everything foreground", ["--all-foreground"], "toy_all_foreground", None),
]
ROWS = [
    ("SCCAN + base-learner ensemble (BAM), trained", [], "toy_trained", "ensemble"),
    ("SCCAN meta learner alone (same trained model)", [], "toy_trained", "meta"),
    ("SCCAN + ensemble, given the previous episode's support", ["--previous-support"],
     "toy_previous_support", "ensemble"),
    ("SCCAN meta learner alone, given the previous episode's support", ["--previous-support"],
     "toy_previous_support", "meta"),
    ("untrained meta learner + the same base learner (ensemble)", ["--untrained"], "toy_untrained",
     "ensemble"),
] + BASELINE_ROWS
# The one-stage run (a config without base_learner, e.g. config/toy/toy_split0_resnet50.yaml):
# SCCAN on a random frozen backbone, no base learner, no generalised test.
ONE_STAGE_ROWS = [
    ("SCCAN, trained on base classes", [], "toy_trained", None),
    ("SCCAN, trained, given the previous episode's support", ["--previous-support"],
     "toy_previous_support", None),
    ("untrained model (same random backbone)", ["--untrained"], "toy_untrained", None),
] + BASELINE_ROWS

def scored_run(summary: dict, output) -> dict:
    """The first seed's result of one output ('ensemble', 'meta') or of a single-output predictor."""
    run = summary["runs"][0]
    return run["outputs"][output] if output else run


def parse_arguments(argv):
    parser = config_argparser(__doc__.splitlines()[0] + " (--opts go to the SCCAN stage and the tests)",
                              prog="python -m tools.toy_demo", default_config=DEFAULT_CONFIG)
    parser.add_argument("--base-config", default=DEFAULT_BASE_CONFIG,
                        help=f"stage-1 config for train_base.py (default {DEFAULT_BASE_CONFIG})")
    parser.add_argument("--base-opts", nargs="*", default=[], metavar="KEY VALUE",
                        help="overrides for the stage-1 config")
    parser.add_argument("--skip-training", action="store_true",
                        help="reuse the base learner and the final SCCAN checkpoint of a previous run")
    return parser.parse_args(argv)


def load_configs(arguments):
    """(stage-2 config, stage-1 config); refused when stage 2 would not read stage 1's base learner."""
    cfg = load_config(arguments.config, arguments.opts)
    base_cfg = load_config(arguments.base_config, arguments.base_opts, opts_name="--base-opts")
    if cfg.base_learner and base_learner_checkpoint_path(base_cfg) != base_learner_checkpoint_path(cfg):
        raise UserError(f"stage 1 writes its base learner to {base_learner_checkpoint_path(base_cfg)!r} "
                        f"but stage 2 reads {base_learner_checkpoint_path(cfg)!r}: set the same "
                        f"base_learner_weights in {arguments.base_config} and {arguments.config}")
    return cfg, base_cfg


def script_opts(values) -> list:
    """``values`` as a script's --opts arguments (none when empty)."""
    return ["--opts", *values] if values else []


def run_training(arguments, base_cfg, two_stages: bool, start: float) -> dict:
    """Run stage 1 (two-stage configs only) and stage 2; returns the seconds of each stage.
    Stage 1 counts from ``start`` (the toy data generation included)."""
    stages = {}
    if two_stages:
        # The demo is a fresh run by definition: it replaces an earlier toy run's checkpoints.
        base_trainer = train_base.main(["--config", arguments.base_config, "--overwrite"]
                                       + script_opts(arguments.base_opts))
        stages["stage 1 (base learner)"] = time.time() - start
        print(f"stage 1: base learner val mIoU {base_trainer.state.best.miou:.4f} (background + "
              f"{base_class_count(base_cfg.data_set) - 1} base classes), "
              f"{stages['stage 1 (base learner)']:.0f}s", flush=True)
    stage_2_start = time.time()
    train_sccan.main(["--config", arguments.config, "--overwrite"] + script_opts(arguments.opts))
    stages["stage 2 (SCCAN + ensemble)" if two_stages else "training"] = time.time() - stage_2_start
    return stages


def run_tests(arguments, out: str, table: list, two_stages: bool):
    """Run test_sccan.py once per distinct run of ``table`` (and the generalised test of a
    two-stage config); returns ({result stem: summary}, generalised summary or None)."""
    common = ["--config", arguments.config]
    opts = script_opts(arguments.opts)
    episodes = os.path.join(out, "toy_demo_episodes.json")
    summaries = {}
    for _, flags, stem, _ in table:
        if stem not in summaries:
            # The first run draws and records the episodes; every other run replays exactly those.
            episode_flags = ["--episodes-from", episodes] if summaries else ["--dump-episodes", episodes]
            summaries[stem] = test_sccan.run(common + episode_flags + flags +
                                             ["--output", os.path.join(out, f"{stem}.json")] + opts)
    gfss = None
    if two_stages:
        gfss = test_sccan.run(common + ["--gfss", "--output", os.path.join(out, "toy_gfss.json")] + opts)
    return summaries, gfss


def results_text(cfg, first: dict, rows: dict, gfss, stages: dict, total_seconds: float) -> str:
    """The printed tables: one row per predictor, the generalised test, the time of each stage."""
    lines = ["", f"Toy fold {cfg.split}, {cfg.shot}-shot, novel classes {first['class_ids']}, "
             f"{first['test_num']} identical episodes for every row:",
             "", "| predictor | mIoU | FB-IoU | pIoU |", "|---|---|---|---|"]
    for name, run in rows.items():
        lines.append(f"| {name} | {run['mIoU']:.4f} | {run['FB_IoU']:.4f} | {run['pIoU']:.4f} |")
    if gfss is not None:
        run = gfss["runs"][0]
        lines += ["", f"Generalised few-shot test (BAM), {gfss['test_num']} episodes, merge "
                  f"{gfss['merge']} tau {gfss['merge_tau']}:", "",
                  "| mIoU_n (novel) | mIoU_b (base) | mIoU_t (total) |", "|---|---|---|",
                  f"| {run['mIoU_n']:.4f} | {run['mIoU_b']:.4f} | {run['mIoU_t']:.4f} |"]
    lines.append("")
    timing = ", ".join(f"{stage} {seconds:.0f}s" for stage, seconds in stages.items())
    lines.append(f"{timing}, total {total_seconds:.0f}s")
    return "\n".join(lines)


def main(argv=None):
    arguments = parse_arguments(argv)
    cfg, base_cfg = load_configs(arguments)
    two_stages = bool(cfg.base_learner)
    start = time.time()
    if not os.path.isfile(os.path.join(cfg.data_root, "meta.json")):
        print(f"generating the toy dataset in {cfg.data_root} ...", flush=True)
        make_toy_dataset(cfg.data_root)

    stages = {} if arguments.skip_training else run_training(arguments, base_cfg, two_stages, start)
    tested_at = time.time()
    out = result_dir(cfg)
    table = ROWS if two_stages else ONE_STAGE_ROWS
    summaries, gfss = run_tests(arguments, out, table, two_stages)
    stages["tests"] = time.time() - tested_at

    rows = {name: scored_run(summaries[stem], output) for name, _, stem, output in table}
    first = summaries[table[0][2]]
    print(results_text(cfg, first, rows, gfss, stages, time.time() - start), flush=True)
    atomic_write_json(os.path.join(out, "toy_demo.json"),
                      dict(rows=rows, gfss=gfss and gfss["runs"][0], seconds=stages))
    return dict(rows=rows, gfss=gfss, seconds=stages)


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
