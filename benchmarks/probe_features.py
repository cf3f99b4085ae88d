"""Training-free few-shot baselines: how much of a task the frozen backbone's features solve.

    python -m benchmarks.probe_features --config config/toy/toy_split0_resnet50.yaml \
        [--episodes-from FILE] [--episodes N] [--threshold 0.7] [--opts key value ...]

For every backbone level (layer1..layer4) the support's masked-average prototype is matched
to every query position by cosine similarity; the similarity map is min-max scaled per episode
and thresholded. The last row is SCCAN's own training-free prior mask (layer4,
`model.sccan.prior_mask`) with the same threshold. Everything runs through the shared evaluator
on the validation episodes of the config (or replays a ``--dump-episodes`` file of
test_sccan.py), so the numbers compare directly with test_sccan.py's. With a random backbone
(``pretrained_backbone: False``) this is the check that its deep features still carry the image
(see ``random_backbone_residual_gain``).
"""
from __future__ import annotations

import os
import sys

if not __package__:  # run as a file: the project's packages are not importable that way
    sys.path[0] = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tools")
    import _as_module  # noqa: F401  (tools/_as_module.py: says how to run it, exits)

import torch

from evaluation.baselines import LEVELS, FeatureMatching
from evaluation.episodes import build_episode_loader
from evaluation.protocol import EvaluationProtocol
from experiment.build import build_dataset, build_experiment_model, test_class_ids
from util.cli import positive_int, run_entry_point
from util.config import config_argparser, load_config


def main(argv=None):
    parser = config_argparser(__doc__.splitlines()[0], prog="python -m benchmarks.probe_features")
    parser.add_argument("--episodes-from", default=None, help="replay a test_sccan.py --dump-episodes file")
    parser.add_argument("--episodes", type=positive_int, default=None,
                        help="episodes (default: the config's test_num)")
    parser.add_argument("--threshold", type=float, default=0.7,
                        help="foreground threshold on the min-max normalised similarity map (default 0.7)")
    arguments = parser.parse_args(argv)
    cfg = load_config(arguments.config, arguments.opts)
    device = torch.device("cpu")
    loader, replayed = build_episode_loader(cfg, build_dataset(cfg, "val"), arguments.episodes_from)
    protocol = EvaluationProtocol.from_config(cfg, len(test_class_ids(cfg)), replayed or arguments.episodes)
    test_num = protocol.test_num
    backbone = build_experiment_model(cfg, device).backbone.eval()
    rows = {}
    for name, level in list(zip(LEVELS, range(4))) + [("SCCAN prior (layer4)", "prior")]:
        result = protocol.run(FeatureMatching(backbone, level, arguments.threshold), loader, device,
                              seed=protocol.seeds[0])
        rows[name] = result
        print(f"{name}: mIoU {result['mIoU']:.4f} FB-IoU {result['FB_IoU']:.4f}", flush=True)
    print(f"\n{test_num} episodes, threshold {arguments.threshold}, config {arguments.config} "
          f"{' '.join(arguments.opts)}\n\n| features | mIoU | FB-IoU |\n|---|---|---|")
    for name, result in rows.items():
        print(f"| {name} | {result['mIoU']:.4f} | {result['FB_IoU']:.4f} |")
    return rows


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
