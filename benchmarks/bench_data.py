"""Benchmark episode loading: episodes per second for one loader worker (in-process, workers=0).

Usage::

    python -m benchmarks.bench_data [--data-root data/toy] [--episodes 100] [--sizes 473 225] [--threads 1]

Measures `SemData.__getitem__` (file reads, episode draws, transforms, stacking) for training
and validation episodes, 1- and 5-shot, at each crop / validation size, on the toy dataset
(generated first when missing, idempotent). ``--threads 1`` limits torch and OpenCV to one thread,
like one DataLoader worker process on its own core. Prints a markdown table and the command.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shlex
import sys
import time

if not __package__:  # run as a file: the project's packages are not importable that way
    sys.path[0] = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tools")
    import _as_module  # noqa: F401  (tools/_as_module.py: says how to run it, exits)

import cv2
import torch

from benchmarks.benchmarking import check_options_as_config
from tools.make_toy_dataset import make_toy_dataset
from util.cli import add_debug_argument, positive_int, run_entry_point
from util.dataset import SemData
from util.transform import build_train_transform, build_val_transform


def measure(data: SemData, episodes: int, warmup: int = 3, seed: int = 0) -> float:
    """Episodes per second over ``episodes`` consecutive indices (after ``warmup`` episodes)."""
    random.seed(seed)
    for index in range(warmup):
        data[index % len(data)]
    start = time.perf_counter()
    for index in range(episodes):
        data[index % len(data)]
    return episodes / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="data/toy", help="toy dataset root (generated if missing)")
    parser.add_argument("--episodes", type=positive_int, default=100, help="timed episodes per row")
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=[473, 225], help="train crop = val size")
    parser.add_argument("--split", type=int, choices=range(4), default=0, help="fold 0..3 (default 0)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch/OpenCV threads (1 = one worker on one core)")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    # A size is the training crop (train_h = train_w) and the validation size, keys of one range:
    # checked before the training rows are measured, not at the first validation image.
    check_options_as_config([{"val_size": ("--sizes", size)} for size in args.sizes])

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    make_toy_dataset(args.data_root, num_images=300, seed=0, option="--data-root")
    list_root = os.path.join(args.data_root, "fss_list")

    rows = []
    for mode in ("train", "val"):
        for shot in (1, 5):
            for size in args.sizes:
                if mode == "train":
                    transform = build_train_transform(size, size, 0.9, 1.1, -10, 10)
                else:
                    transform = build_val_transform(size)
                base_list = os.path.join(args.data_root, f"{mode}.txt")
                data = SemData(args.split, shot, args.data_root, base_list, data_set="pascal", transform=transform,
                               mode=mode, list_root=list_root, show_progress=False)
                rate = measure(data, args.episodes)
                rows.append((mode, shot, size, rate))
                print(f"{mode:5s} {shot}-shot size {size}: {rate:7.1f} episodes/s", file=sys.stderr)

    command = "python -m benchmarks.bench_data " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    print(f"Command: `{command.strip()}`  ")
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"torch {torch.__version__}, OpenCV {cv2.__version__}, {args.threads} thread(s), "
          f"toy data (300 images, 150-300 px), fold {args.split}, {args.episodes} episodes per row, workers=0.\n")
    print("| episodes | shot | crop / val size | episodes/s (one worker) | ms/episode |")
    print("|---|---|---|---|---|")
    for mode, shot, size, rate in rows:
        print(f"| {mode} | {shot} | {size} | {rate:.1f} | {1000.0 / rate:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
