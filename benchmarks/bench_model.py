"""Eval-forward speed of SCCAN per episode and parameter counts, for each forward variant.

    python -m benchmarks.bench_model                       # CPU, and CUDA when present; batch 1
    python -m benchmarks.bench_model --devices cpu --layers 50 --shots 1 --runs 5
    python -m benchmarks.bench_model --devices cuda --layers 50 --shots 1 --batch 8 \\
        --variants reference fast fast-bf16           # the CUDA rows of BENCHMARKS.md

Prints a markdown table: median seconds per forward over --runs (after --warmup), episodes per
second (batch / seconds), peak GPU memory, parameter counts. The variants of one configuration
are timed in alternation (first run of each, second run of each, ...) so that a machine whose
speed drifts favours none of them. Weights are random: speed does not depend on them.
"""
from __future__ import annotations

import argparse
import os
import sys

if not __package__:  # run as a file: the project's packages are not importable that way
    sys.path[0] = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tools")
    import _as_module  # noqa: F401  (tools/_as_module.py: says how to run it, exits)

import torch

from benchmarks.benchmarking import (VARIANTS, add_variant_argument, format_memory, header, median,
                                     parse_device, peak_memory, reset_peak_memory, set_strict_fp32, timed)
from model.backbone import Backbone
from model.parameters import count_parameters
from model.sccan import SCCAN
from util.cli import add_debug_argument, positive_int, run_entry_point
from util.runtime import autocast, cuda_usable


def episode_inputs(batch: int, shot: int, size: int, device: torch.device):
    """Random (x, s_x, s_y) of ``batch`` episodes on ``device``."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=generator)
    s_x = torch.randn(batch, shot, 3, size, size, generator=generator)
    s_y = (torch.rand(batch, shot, size, size, generator=generator) > 0.5).float()
    return x.to(device), s_x.to(device), s_y.to(device)


def time_variants(model: SCCAN, variants, inputs, device: torch.device, runs: int, warmup: int):
    """{variant: (median seconds per forward, peak bytes)}, the variants in alternation."""
    seconds = {name: [] for name in variants}
    peaks = {name: 0 for name in variants}
    with torch.inference_mode():
        for index in range(warmup + runs):
            for name in variants:
                variant = VARIANTS[name]
                model.set_fast_path(variant.fast_path)
                reset_peak_memory(device)
                with autocast(device, variant.amp):
                    elapsed = timed(lambda: model(*inputs), device)
                peaks[name] = max(peaks[name], peak_memory(device))
                if index >= warmup:
                    seconds[name].append(elapsed)
    return {name: (median(seconds[name]), peaks[name]) for name in variants}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_model", description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=None,
                        help="torch devices to time, e.g. cpu cuda (default: cpu, and cuda when present)")
    parser.add_argument("--layers", nargs="+", type=int, choices=[50, 101], default=[50, 101],
                        help="backbone depths to time (default: 50 101)")
    parser.add_argument("--shots", nargs="+", type=positive_int, default=[1, 5],
                        help="shots to time (default: 1 5)")
    parser.add_argument("--size", type=positive_int, default=473,
                        help="square input side; (size - 1) must be a multiple of 8 (default 473)")
    parser.add_argument("--batch", type=positive_int, default=1, help="episodes per forward (default 1)")
    parser.add_argument("--feature-size", type=positive_int, default=64,
                        help="side of the transformer's feature grid, the config's feature_size (default 64, "
                             "the paper's)")
    parser.add_argument("--window-size", type=positive_int, default=8,
                        help="attention window side, the config's window_size; must divide --feature-size "
                             "(default 8)")
    add_variant_argument(parser)
    parser.add_argument("--runs", type=positive_int, default=3, help="timed runs; the median is printed")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch.set_num_threads (default: torch's choice)")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    if (args.size - 1) % 8:
        raise ValueError(f"--size {args.size}: (size - 1) must be a multiple of 8, e.g. 473 or 225")
    if args.feature_size % args.window_size:
        raise ValueError(f"--feature-size {args.feature_size} must be a multiple of --window-size {args.window_size}")
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [parse_device(name, "--devices") for name in args.devices or
               (["cpu"] + (["cuda"] if cuda_usable() else []))]  # before any model is built
    print(header("bench_model", argv, f"input {args.size}x{args.size}, feature grid {args.feature_size}x"
                                      f"{args.feature_size} (window {args.window_size}), batch {args.batch}, median of "
                                      f"{args.runs} after {args.warmup} warm-up, variants alternated"))
    print("| device | backbone | shot | batch | variant | s/forward | episodes/s | peak memory | "
          "total params | learnable params |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for layers in args.layers:
        torch.manual_seed(0)
        for shot in args.shots:
            model = SCCAN(Backbone(layers), shot=shot, feature_size=args.feature_size,
                          window_size=args.window_size).eval()
            total, learnable = count_parameters(model)
            for device in devices:
                set_strict_fp32(device)
                model.to(device)
                inputs = episode_inputs(args.batch, shot, args.size, device)
                results = time_variants(model, args.variants, inputs, device, args.runs, args.warmup)
                for variant, (seconds, peak) in results.items():
                    print(f"| {device} | ResNet-{layers} | {shot} | {args.batch} | {variant} | {seconds:.3f} | "
                          f"{args.batch / seconds:.2f} | {format_memory(peak)} | {total:,} | {learnable:,} |",
                          flush=True)


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
