"""Training speed of SCCAN: seconds per iteration of train_sccan.py's step, for each variant.

    python -m benchmarks.bench_train --config config/toy/toy_split0_resnet50.yaml      # the toy run (CPU)
    python -m benchmarks.bench_train --config config/toy/toy_split0_resnet50.yaml \\
        --variants reference fast-steps fast fast-bf16 --opts train_h 473 train_w 473 \\
        feature_size 64 window_size 8 batch_size 8 workers 8   # CUDA: batch 8, 473x473, R50 1-shot

One trainer (engine/trainer.py) is built from the config, in a temporary output folder, and its
``train_step`` runs on the config's training loader, loading included (as in training). Rounds
alternate the variants, --iterations timed steps of each per round after --warmup untimed ones:
reference = the straightforward forward, one-tensor optimizer steps and the loss read every
iteration (the step before the speed work; its optimizer state placed as a one-tensor step
keeps it, also in a round after multi-tensor or fused steps); fast-steps = training's default (the same forward,
multi-tensor steps, no per-step read); fast = also the fast forward (``fast_path_training``);
fast-bf16 = fast with ``amp: bf16``. The weights move (these are real steps), which does not change the cost. Prints
the median seconds per iteration, iterations per second, the speed-up over the first variant and
the peak GPU memory.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

if not __package__:  # run as a file: the project's packages are not importable that way
    sys.path[0] = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tools")
    import _as_module  # noqa: F401  (tools/_as_module.py: says how to run it, exits)

import torch

from benchmarks.benchmarking import (VARIANTS, add_variant_argument, format_memory, header, median,
                                     peak_memory, reset_peak_memory, set_strict_fp32, timed)
from engine.trainer import fast_optimizer_steps, place_optimizer_state
from util.cli import add_debug_argument, positive_int, run_entry_point
from util.config import merge_opts


def endless(loader):
    while True:
        yield from loader


def apply_variant(trainer, name: str) -> None:
    """Switch the trainer's model, arithmetic and optimizers to the variant ``name``."""
    variant = VARIANTS[name]
    trainer.model.set_fast_path(variant.fast_path, training=variant.fast_path)
    trainer.cfg.amp = variant.amp
    if variant.fast_steps:
        fast_optimizer_steps(trainer.sgd, trainer.adamw)
        return
    for optimizer in (trainer.sgd, trainer.adamw):
        for group in optimizer.param_groups:
            group["foreach"] = group["fused"] = False
        # A fused CUDA step leaves AdamW's step counters on the GPU, where the one-tensor step
        # would read each back with .item() (a synchronisation per parameter): the reference
        # must be timed as it ran, with its counters on the CPU.
        place_optimizer_state(optimizer)


def parse_arguments(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="training config (its data must exist)")
    add_variant_argument(parser, default=("reference", "fast-steps", "fast"))
    parser.add_argument("--iterations", type=positive_int, default=4, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=positive_int, default=2, help="rounds of all variants (default 2)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each variant first")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides: key value ...")
    add_debug_argument(parser)
    return parser.parse_args(argv)


def time_variants(trainer, args):
    """({variant: seconds of each timed step}, {variant: peak memory}) over alternating rounds."""
    device = trainer.device
    iterations = len(trainer.train_loader)
    total = trainer.cfg.epochs * iterations
    batches = endless(trainer.train_loader)
    step = [0]

    def one_step(read_loss: bool):
        step[0] += 1
        loss = trainer.train_step(next(batches), 1 + step[0] % (total - 1), iterations)[0]
        if read_loss:  # the old loop synchronised on every iteration
            loss.item()

    trainer.model.train()
    seconds = {name: [] for name in args.variants}
    peaks = {name: 0 for name in args.variants}
    for round_index in range(args.rounds):
        for name in args.variants:
            apply_variant(trainer, name)
            read_loss = not VARIANTS[name].fast_steps
            for _ in range(args.warmup if round_index == 0 else 0):
                one_step(read_loss)
            reset_peak_memory(device)
            seconds[name] += [timed(lambda: one_step(read_loss), device) for _ in range(args.iterations)]
            peaks[name] = max(peaks[name], peak_memory(device))
    return seconds, peaks


def print_table(argv, args, cfg, device, seconds: dict, peaks: dict) -> None:
    print(header("bench_train", argv, f"config {args.config}: batch {cfg.batch_size}, {cfg.shot}-shot, "
                 f"ResNet-{cfg.layers}, crop {cfg.train_h}x{cfg.train_w}, grid {cfg.feature_size} / "
                 f"window {cfg.window_size}, workers {cfg.workers}, device {device}; median of "
                 f"{args.rounds * args.iterations} steps per variant ({args.rounds} alternating rounds)"))
    print("| device | variant | s/iteration | iterations/s | speed-up | peak memory |")
    print("|---|---|---|---|---|---|")
    first = median(seconds[args.variants[0]])
    for name in args.variants:
        value = median(seconds[name])
        print(f"| {device.type} | {name} | {value:.3f} | {1 / value:.2f} | {first / value:.2f}x | "
              f"{format_memory(peaks[name])} |", flush=True)


def main(argv=None):
    args = parse_arguments(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import train_sccan  # the training script's own trainer construction

    with tempfile.TemporaryDirectory() as folder:
        trainer = train_sccan.build_trainer(
            ["--config", args.config, "--overwrite", "--opts",
             *merge_opts(args.opts, ["save_path", folder, "evaluate", "False", "resume", "''"])])
        set_strict_fp32(trainer.device)
        seconds, peaks = time_variants(trainer, args)
        trainer.close()
    print_table(argv, args, trainer.cfg, trainer.device, seconds, peaks)


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
