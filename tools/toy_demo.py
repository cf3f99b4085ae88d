"""The README's default run: toy data -> train on base classes -> test on novel classes.

    python -m tools.toy_demo [--config config/toy/toy_split0_resnet50.yaml] [--opts key value ...]

1. generates the toy dataset into data/toy if absent (seeded, a few seconds);
2. trains SCCAN (random frozen backbone: no ImageNet weights here) on the 15 base classes of
   fold 0 with train_sccan.py;
3. evaluates on the 5 novel classes with test_sccan.py, recording the episodes, then replays
   exactly those episodes for two baselines (the untrained model; "everything foreground"), a
   training-free reference (SCCAN's prior mask of the same backbone, thresholded) and one
   diagnostic (the trained model given the previous episode's support: a model that really
   uses its support scores lower there);
4. prints the comparison table (also written to exp/toy/.../result/toy_demo.json).
"""
from __future__ import annotations

import os
import sys
import time

if not __package__:  # run as a file: the project's packages are not importable that way
    raise SystemExit(f"error: run the tools as modules from the repository root: python -m tools.{os.path.splitext(os.path.basename(__file__))[0]} ...")

import test_sccan
import train_sccan
from tools.make_toy_dataset import make_toy_dataset
from util.cli import run_entry_point
from util.config import config_argparser, load_config
from util.experiment import result_dir
from util.io import atomic_write_json


# (row, test_sccan.py flags, result file name) of the comparison table, in the order they run.
ROWS = [
    ("SCCAN, trained on base classes", [], "toy_trained"),
    ("SCCAN, trained, given the previous episode's support", ["--previous-support"], "toy_previous_support"),
    ("untrained model (same random backbone)", ["--untrained"], "toy_untrained"),
    ("training-free prior mask, threshold 0.7 (same backbone)", ["--prior-baseline"], "toy_prior_baseline"),
    ("predict everything foreground", ["--all-foreground"], "toy_all_foreground"),
]


def main(argv=None):
    parser = config_argparser(__doc__.splitlines()[0] + " (config/toy/toy_split0_resnet50_5s.yaml: "
                              "5-shot; --opts go to both scripts)", prog="python -m tools.toy_demo",
                              default_config="config/toy/toy_split0_resnet50.yaml")
    parser.add_argument("--skip-training", action="store_true",
                        help="reuse the final checkpoint (the config's 'weight') of a previous run")
    arguments = parser.parse_args(argv)
    cfg = load_config(arguments.config, arguments.opts)
    start = time.time()

    if not os.path.isfile(os.path.join(cfg.data_root, "meta.json")):
        print(f"generating the toy dataset in {cfg.data_root} ...", flush=True)
        make_toy_dataset(cfg.data_root)
    common = ["--config", arguments.config]
    opts = ["--opts", *arguments.opts] if arguments.opts else []

    if not arguments.skip_training:
        # The demo is a fresh run by definition: it replaces an earlier toy run's checkpoints.
        train_sccan.main(common + ["--overwrite"] + opts)
    trained_at = time.time()

    out = result_dir(cfg)
    episodes = os.path.join(out, "toy_demo_episodes.json")
    rows = {}
    for number, (name, flags, stem) in enumerate(ROWS):
        # The first row draws and records the episodes; every other row replays exactly those.
        episode_flags = ["--dump-episodes" if number == 0 else "--episodes-from", episodes]
        output = ["--output", os.path.join(out, f"{stem}.json")]
        rows[name] = test_sccan.run(common + episode_flags + flags + output + opts)

    total = time.time() - start
    first = rows[ROWS[0][0]]
    lines = ["", f"Toy fold {cfg.split}, {cfg.shot}-shot, novel classes {first['class_ids']}, "
             f"{first['test_num']} identical episodes for every row:",
             "", "| predictor | mIoU | FB-IoU | pIoU |", "|---|---|---|---|"]
    for name, summary in rows.items():
        run = summary["runs"][0]
        lines.append(f"| {name} | {run['mIoU']:.4f} | {run['FB_IoU']:.4f} | {run['pIoU']:.4f} |")
    lines.append("")
    lines.append(f"training {trained_at - start:.0f}s, total {total:.0f}s")
    print("\n".join(lines), flush=True)
    atomic_write_json(os.path.join(out, "toy_demo.json"), {name: s["runs"][0] for name, s in rows.items()})
    return rows


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
