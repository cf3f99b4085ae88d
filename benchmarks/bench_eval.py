"""Evaluation speed with and without the backbone-feature cache, on the toy dataset.

    python -m benchmarks.bench_eval --shots 1 --episodes 40            # measured: 40 episodes each way
    python -m benchmarks.bench_eval --shots 5 --episodes 16 --test-num 1000 --with-reference
    python -m benchmarks.bench_eval --device cuda --shots 1 5 --episodes 100      # on a GPU

The evaluation of test_sccan.py (evaluation/protocol.py, fold 0, batch 1, by default the paper's
model: 64x64 grid, window 8) runs the first --episodes episodes of the protocol twice, without the cache and
with it (``eval_feature_cache_mb``), and prints both times, the speed-up and the hit rate; both
runs must give the same numbers. ``--with-reference`` adds a plain run of the straightforward
path (the loop before the speed work).

A --test-num evaluation (1,000 episodes) takes about an hour per shot on a 2-core CPU, so it is
also projected: the two measured runs give the cost of an episode without its backbone passes
(r) and of one image's backbone pass (b), plain = N (r + (1 + K) b) and cached = N r + misses b;
the misses of the full run come from replaying its episode draws (no model) through a cache of
the same budget. The table says which figures are measured and which projected.

On a GPU (``--device cuda``; fp32 without TF32) the cache keeps its features in GPU memory, its
budget capped to a share of the free memory (model/feature_cache.py), and the two runs may
differ in the last bits of a logit (cuDNN picks algorithms per batch size), so a difference in
the scores is reported instead of failing; on the CPU they must be identical.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
from collections import OrderedDict

if not __package__:  # run as a file: the project's packages are not importable that way
    sys.path[0] = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tools")
    import _as_module  # noqa: F401  (tools/_as_module.py: says how to run it, exits)

import torch

from benchmarks.benchmarking import check_options_as_config, header, parse_device, set_strict_fp32
from evaluation.protocol import EvaluationProtocol, evaluation_passes
from experiment.build import build_dataset, build_experiment_model, build_val_loader
from tools.make_toy_dataset import make_toy_dataset
from util.cli import add_debug_argument, positive_int, run_entry_point
from util.config import load_config
from util.runtime import set_seed

CONFIG = os.path.join("config", "toy", "toy_split0_resnet50.yaml")
SEED = 321
SCORES = ("mIoU", "FB_IoU", "pIoU", "class_IoU")


def image_uses(dataset, test_num: int, seed: int = SEED):
    """The image paths an evaluation of ``test_num`` episodes looks up, in order (query, then
    the supports), replaying the protocol's draws (seed, then loader passes over the dataset)."""
    set_seed(seed)
    uses, done = [], 0
    for _ in range(evaluation_passes(test_num, len(dataset))):
        for index in range(len(dataset)):
            if done >= test_num:
                break
            episode = dataset.sample_episode(index)
            uses += [episode["query"][0]] + [pair[0] for pair in episode["supports"]]
            done += 1
    return uses


def lru_misses(keys, capacity: int) -> int:
    """Misses of a least-recently-used cache holding ``capacity`` entries over ``keys``."""
    entries, misses = OrderedDict(), 0
    for key in keys:
        if key in entries:
            entries.move_to_end(key)
            continue
        misses += 1
        entries[key] = True
        if len(entries) > capacity:
            entries.popitem(last=False)
    return misses


def parse_arguments(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_eval", description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data/toy", help="toy dataset root (generated if missing)")
    parser.add_argument("--shots", nargs="+", type=positive_int, default=[1, 5])
    parser.add_argument("--size", type=positive_int, default=473, help="val_size (default 473)")
    parser.add_argument("--layers", type=int, choices=[50, 101], default=50)
    parser.add_argument("--feature-size", type=positive_int, default=64, help="transformer grid (default 64)")
    parser.add_argument("--window-size", type=positive_int, default=8, help="transformer window (default 8)")
    parser.add_argument("--episodes", type=positive_int, default=40, help="measured episodes per run")
    parser.add_argument("--test-num", type=positive_int, default=1000, help="projected evaluation length")
    parser.add_argument("--cache-mb", type=float, default=4096.0, help="eval_feature_cache_mb of the cached run")
    parser.add_argument("--with-reference", action="store_true",
                        help="also time the plain loop of the straightforward path")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:index]")
    add_debug_argument(parser)
    return parser.parse_args(argv)


def check_options(args) -> None:
    """Check the options as the config keys they become, for every shot."""
    check_options_as_config(
        [{"shot": ("--shots", shot), "val_size": ("--size", args.size), "layers": ("--layers", args.layers),
          "feature_size": ("--feature-size", args.feature_size),
          "window_size": ("--window-size", args.window_size),
          "eval_feature_cache_mb": ("--cache-mb", args.cache_mb)} for shot in args.shots]
        + [{"test_num": ("--test-num", args.test_num)}, {"test_num": ("--episodes", args.episodes)}])


def shot_config(args, shot: int):
    """The toy config with the options of this benchmark and ``shot``."""
    # Paths quoted: an override is read as a Python literal first (a root named 1 would be an int).
    root = args.data_root
    return load_config(CONFIG, ["data_root", repr(root), "train_list", repr(f"{root}/train.txt"),
                                "val_list", repr(f"{root}/val.txt"), "list_root",
                                repr(f"{root}/fss_list"), "val_size", str(args.size), "shot", str(shot),
                                "layers", str(args.layers), "feature_size", str(args.feature_size),
                                "window_size", str(args.window_size)])


def time_runs(model, loader, device, args, shot: int) -> dict:
    """{run name: protocol result} of the first --episodes episodes: the straightforward path
    (with --with-reference), then the fast path plain and cached."""
    runs = {}
    if device.type != "cpu":  # kernel selection and allocator growth out of the first timed run
        EvaluationProtocol(test_num=2, num_test_classes=5).run(model, loader, device, seed=SEED)
    for name, budget, fast in (("reference", 0.0, False), ("plain", 0.0, True), ("cached", args.cache_mb, True)):
        if name == "reference" and not args.with_reference:
            continue
        model.set_fast_path(fast)
        protocol = EvaluationProtocol(test_num=args.episodes, num_test_classes=5, feature_cache_mb=budget)
        runs[name] = protocol.run(model, loader, device, seed=SEED)
        print(f"{shot}-shot {name}: {runs[name]['seconds']:.1f} s", file=sys.stderr, flush=True)
    return runs


def score_difference(runs: dict, device, shot: int):
    """None when the cached run scored as the plain one; otherwise a line for the table on a GPU,
    an error on the CPU (where they must be identical)."""
    if not any(runs["cached"][key] != runs["plain"][key] for key in SCORES):
        return None
    if device.type == "cpu":
        raise RuntimeError("the cached evaluation scored differently from the plain one")
    return f"{shot}-shot: cached mIoU {runs['cached']['mIoU']:.6f}, plain {runs['plain']['mIoU']:.6f}"


def projection(args, shot: int, dataset, statistics: dict, plain: float, cached: float) -> tuple:
    """Projected row of a --test-num evaluation: (shot, episodes, plain seconds, cached seconds,
    hit rate, b: seconds per image's backbone pass, r: seconds per episode without them)."""
    lookups = args.episodes * (1 + shot)
    if statistics["hits"] == 0:
        raise ValueError(f"--episodes {args.episodes}: no image came back in the measured {shot}-shot "
                         f"run, so nothing can be projected; measure more episodes")
    image_cost = (plain - cached) / (lookups - statistics["misses"])
    rest = (cached - statistics["misses"] * image_cost) / args.episodes
    per_image_mb = statistics["stored_mb"] / max(statistics["entries"], 1)
    uses = image_uses(dataset, args.test_num)
    if lru_misses(uses[:lookups], len(uses)) != statistics["misses"]:
        raise RuntimeError("replayed episode draws do not match the measured run")
    misses = lru_misses(uses, int(statistics["budget_mb"] // per_image_mb) if per_image_mb else len(uses))
    return (shot, args.test_num, args.test_num * (rest + (1 + shot) * image_cost),
            args.test_num * rest + misses * image_cost, 1 - misses / len(uses), image_cost, rest)


def measure_shot(args, shot: int, device):
    """(measured row, projected row, score difference or None, cache statistics) of one shot."""
    cfg = shot_config(args, shot)
    dataset = build_dataset(cfg, "val", show_progress=False)
    loader = build_val_loader(cfg, dataset)
    model = build_experiment_model(cfg, device)
    runs = time_runs(model, loader, device, args, shot)
    difference = score_difference(runs, device, shot)
    statistics = runs["cached"]["feature_cache"]
    plain, cached = runs["plain"]["seconds"], runs["cached"]["seconds"]
    measured = (shot, args.episodes, runs.get("reference", {}).get("seconds"), plain, cached,
                statistics["hit_rate"])
    return measured, projection(args, shot, dataset, statistics, plain, cached), difference, statistics


def print_measured(measured: list) -> None:
    print("Measured (the first episodes of the protocol, the same for every run):\n")
    print("| shot | episodes | straightforward path, plain (s) | plain (s) | cached (s) | speed-up | hit rate |")
    print("|---|---|---|---|---|---|---|")
    for shot, episodes, reference, plain, cached, hit_rate in measured:
        reference_text = f"{reference:.1f}" if reference is not None else "-"
        print(f"| {shot} | {episodes} | {reference_text} | {plain:.1f} | {cached:.1f} | "
              f"{plain / cached:.2f}x | {hit_rate:.1%} |")


def print_projected(projected: list) -> None:
    print("\nProjected to the full evaluation (fitted per-image backbone cost b and per-episode rest r):\n")
    print("| shot | episodes | plain (s) | cached (s) | speed-up | hit rate | b (s/image) | r (s/episode) |")
    print("|---|---|---|---|---|---|---|---|")
    unusable = False
    for shot, episodes, plain, cached, hit_rate, image_cost, rest in projected:
        if image_cost <= 0 or rest <= 0:  # the time saved by a few hits was within the noise
            unusable = True
            print(f"| {shot} | {episodes} | - | - | - | {hit_rate:.1%} | {image_cost:.3f} | {rest:.3f} |")
            continue
        print(f"| {shot} | {episodes} | {plain:.0f} | {cached:.0f} | {plain / cached:.2f}x | {hit_rate:.1%} | "
              f"{image_cost:.3f} | {rest:.3f} |")
    if unusable:
        print("\n-: no projection, the fit gave a cost <= 0 (too few hits against the timing noise); "
              "measure more episodes")


def main(argv=None):
    args = parse_arguments(argv)
    # Every option before the toy data and the minutes of measurement.
    device = parse_device(args.device)
    check_options(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    set_strict_fp32(device)
    make_toy_dataset(args.data_root, num_images=300, seed=0, option="--data-root")
    differences, measured, projected = [], [], []
    for shot in args.shots:
        measured_row, projected_row, difference, statistics = measure_shot(args, shot, device)
        measured.append(measured_row)
        projected.append(projected_row)
        if difference is not None:
            differences.append(difference)

    print(header("bench_eval", argv, f"toy data fold 0, val_size {args.size}, ResNet-{args.layers}, "
                                     f"{args.feature_size}x{args.feature_size} grid / window "
                                     f"{args.window_size}, random calibrated backbone, batch 1, cache "
                                     f"{args.cache_mb:g} MiB (in {statistics['memory']} memory, "
                                     f"{statistics['budget_mb']:g} MiB after the cap), device {device}, "
                                     f"fast path unless stated"))
    if differences:
        print("Scores of the cached run differ from the plain run's (last bits on a GPU): "
              + "; ".join(differences) + "\n")
    print_measured(measured)
    print_projected(projected)


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
