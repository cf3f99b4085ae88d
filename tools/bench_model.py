"""Eval-forward speed of SCCAN per episode (batch 1) and parameter counts.

    python -m tools.bench_model                       # CPU, and CUDA when present
    python -m tools.bench_model --devices cpu --size 473 --runs 3 --warmup 1

Prints a markdown table (median seconds per episode over --runs after --warmup runs) and the
command line that produced it. Weights are random: speed does not depend on them.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings

if not __package__:  # run as a file: the project's packages are not importable that way
    raise SystemExit(f"error: run the tools as modules from the repository root: python -m tools.{os.path.splitext(os.path.basename(__file__))[0]} ...")

import torch

from model.backbone import Backbone
from model.builder import count_parameters
from model.sccan import SCCAN
from util.cli import add_debug_argument, positive_int, run_entry_point


def time_forward(model, shot, size, device, runs, warmup):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, size, size, generator=generator).to(device)
    s_x = torch.randn(1, shot, 3, size, size, generator=generator).to(device)
    s_y = (torch.rand(1, shot, size, size, generator=generator) > 0.5).float().to(device)
    timings = []
    with torch.inference_mode():
        for index in range(warmup + runs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x, s_x, s_y)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if index >= warmup:
                timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.bench_model", description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=None,
                        help="torch devices to time, e.g. cpu cuda (default: cpu, and cuda when present)")
    parser.add_argument("--layers", nargs="+", type=int, choices=[50, 101], default=[50, 101],
                        help="backbone depths to time (default: 50 101)")
    parser.add_argument("--shots", nargs="+", type=positive_int, default=[1, 5],
                        help="shots to time (default: 1 5)")
    parser.add_argument("--size", type=positive_int, default=473,
                        help="square input side; (size - 1) must be a multiple of 8 (default 473)")
    parser.add_argument("--runs", type=positive_int, default=3, help="timed runs; the median is printed")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch.set_num_threads (default: torch's choice)")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    if (args.size - 1) % 8:
        raise ValueError(f"--size {args.size}: (size - 1) must be a multiple of 8, e.g. 473 or 225")
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    print(f"command: python -m tools.bench_model {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
    print(f"input {args.size}x{args.size}, batch 1, fp32, median of {args.runs} after {args.warmup} warm-up\n")
    print("| device | backbone | shot | s/episode | total params | learnable params |")
    print("|---|---|---|---|---|---|")
    for layers in args.layers:
        torch.manual_seed(0)
        for shot in args.shots:
            model = SCCAN(Backbone(layers), shot=shot).eval()
            total, learnable = count_parameters(model)
            for name in devices:
                device = torch.device(name)
                model.to(device)
                seconds = time_forward(model, shot, args.size, device, args.runs, args.warmup)
                print(f"| {name} | ResNet-{layers} | {shot} | {seconds:.3f} | {total:,} | {learnable:,} |",
                      flush=True)


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
