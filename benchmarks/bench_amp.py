"""bf16 against fp32 on a trained model: pixel agreement of the predictions, mIoU and time.

    python -m benchmarks.bench_amp --config config/toy/toy_split0_resnet50.yaml \\
        --weight exp/toy/SCCAN/split0/resnet50/snapshot/final_1shot.pth [--episodes 200]

Runs test_sccan.py's evaluation (the config's protocol, seed 321) of the checkpoint twice on
the same episodes, with ``amp: fp32`` and ``amp: bf16``, and prints for each precision mIoU,
FB-IoU and the seconds taken, and the share of pixels whose prediction is the same in both.
"""
from __future__ import annotations

import argparse
import os
import sys

if not __package__:  # run as a file: the project's packages are not importable that way
    sys.path[0] = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tools")
    import _as_module  # noqa: F401  (tools/_as_module.py: says how to run it, exits)

import torch

from benchmarks.benchmarking import header
from evaluation.baselines import build_predictor
from evaluation.protocol import EvaluationProtocol
from experiment.build import build_dataset, build_val_loader, test_class_ids
from util.cli import add_debug_argument, positive_int, run_entry_point
from util.config import load_config
from util.runtime import init_distributed

PRECISIONS = ("fp32", "bf16")


class PredictionRecorder:
    """Evaluation observer keeping every episode's prediction (input frame, on the CPU)."""

    def __init__(self):
        self.predictions = []

    def start(self) -> None:
        self.predictions.clear()

    def observe(self, batch) -> None:
        self.predictions.append(batch.input_prediction.cpu())


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_amp", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--weight", required=True, help="trained SCCAN checkpoint")
    parser.add_argument("--episodes", type=positive_int, default=None, help="default: the config's test_num")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides: key value ...")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.opts)
    device = init_distributed().device
    model, source = build_predictor(cfg, "trained", device, args.weight, log=lambda _: None)
    loader = build_val_loader(cfg, build_dataset(cfg, "val", show_progress=False))
    results, recorders = {}, {}
    for precision in PRECISIONS:
        cfg.amp = precision
        protocol = EvaluationProtocol.from_config(cfg, len(test_class_ids(cfg)), args.episodes)
        recorders[precision] = PredictionRecorder()
        results[precision] = protocol.run(model, loader, device, protocol.seeds[0],
                                          observers=[recorders[precision]])
    same = total = 0
    for fp32, bf16 in zip(recorders["fp32"].predictions, recorders["bf16"].predictions, strict=True):
        same += int((fp32 == bf16).sum())
        total += fp32.numel()
    print(header("bench_amp", argv, f"checkpoint {source}, {results['fp32']['episodes']} episodes "
                                    f"(val_size {cfg.val_size}, {cfg.shot}-shot), device {device}"))
    print("| precision | mIoU | FB-IoU | seconds | pixels predicted as in fp32 |")
    print("|---|---|---|---|---|")
    for precision in PRECISIONS:
        result = results[precision]
        agreement = "-" if precision == "fp32" else f"{same / total:.4%}"
        print(f"| {precision} | {result['mIoU']:.4f} | {result['FB_IoU']:.4f} | {result['seconds']:.1f} | "
              f"{agreement} |")
    print(f"\nmIoU difference (bf16 - fp32): {results['bf16']['mIoU'] - results['fp32']['mIoU']:+.4f}")


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
