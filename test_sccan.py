"""Evaluate SCCAN on the novel classes of a fold with the paper's protocol (the original's
test.py; docs/PROTOCOL.md section 1).

    python test_sccan.py --config config/pascal/pascal_split0_resnet50.yaml
    python test_sccan.py --config ... --weight exp/.../train_epoch_43_0.6753.pth --seeds 5
    python test_sccan.py --config ... --dump-episodes episodes.json      # write the episodes
    python test_sccan.py --config ... --episodes-from episodes.json      # replay them exactly

Default: seed 123 at start-up, seed 321 before the run, test_num episodes (1000 PASCAL, 4000
COCO) in loader passes, batch 1, the config's worker count, ori_resize. Prints per-class IoU,
mIoU, FB-IoU and pIoU and writes them as JSON.
"""
from __future__ import annotations

import json
import os
import statistics
import sys

import torch
from torch.utils.data import DataLoader

from model.checkpoint import load_model_weights
from util.baselines import FeatureMatching
from util.cli import positive_int, run_entry_point
from util.config import config_argparser, load_config
from util.evaluation import (RecordingDataset, ReplayDataset, evaluate, format_result_table,
                             load_episodes, save_episodes)
from util.experiment import (build_dataset, build_experiment_model, build_val_loader,
                             experiment_dir, per_shot_name, result_dir, snapshot_dir,
                             test_class_ids)
from util.runtime import get_logger, init_distributed, set_seed

STARTUP_SEED = 123


def parse_arguments(argv=None):
    parser = config_argparser("Test SCCAN (few-shot evaluation protocol)")
    parser.add_argument("--weight", default=None,
                        help="checkpoint (released training checkpoint or bare state_dict); default "
                             "exp/<dataset>/SCCAN/split<i>/resnet<L>/snapshot/<config weight>")
    parser.add_argument("--seeds", type=positive_int, default=1,
                        help="evaluate with N seeds (321, 322, ...): per-seed rows, mean and std")
    parser.add_argument("--episodes", type=positive_int, default=None, help="override test_num")
    parser.add_argument("--viz", action="store_true",
                        help="write TensorBoard event files (mIoU, FB-IoU, per-class IoU per seed) to "
                             "<exp>/tensorboard_<K>shot/test/")
    parser.add_argument("--save-vis", default=None, metavar="DIR",
                        help="write one PNG panel per episode (support+mask, query+GT, query+prediction)")
    parser.add_argument("--dump-episodes", default=None, metavar="FILE",
                        help="write the exact (query, class, supports) list of the run as JSON")
    parser.add_argument("--episodes-from", default=None, metavar="FILE",
                        help="evaluate exactly the episodes of FILE (from --dump-episodes)")
    parser.add_argument("--hsnet-resize", action="store_true",
                        help="HSNet-style test: inputs resized to val_size x val_size, logits resized "
                             "to the original label size (the paper's double-dagger rows)")
    parser.add_argument("--output", default=None, metavar="JSON",
                        help="result file (default: <exp>/result/test_<weight>.json)")
    parser.add_argument("--untrained", action="store_true",
                        help="skip loading weights (baseline: the untrained model)")
    parser.add_argument("--all-foreground", action="store_true",
                        help="baseline: predict every pixel as foreground")
    parser.add_argument("--prior-baseline", action="store_true",
                        help="training-free baseline: SCCAN's prior mask (layer4 query/support matching "
                             "of the frozen backbone, no learned weights) thresholded at 0.7")
    parser.add_argument("--previous-support", action="store_true",
                        help="diagnostic: give the model the supports of the PREVIOUS episode (usually "
                             "another class); a model that uses its support scores lower")
    arguments = parser.parse_args(argv)
    cfg = load_config(arguments.config, arguments.opts)
    return arguments, cfg


class PreviousSupport(torch.nn.Module):
    """Diagnostic wrapper: segments each query with the supports of the previous episode (the
    first episode keeps its own). With 5 test classes the previous class is the same ~20% of the
    time, so the drop it shows is a lower bound of the model's use of its support."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.previous = None

    def forward(self, x, s_x, s_y):
        supports, self.previous = (self.previous or (s_x, s_y)), (s_x, s_y)
        return self.model(x=x, s_x=supports[0], s_y=supports[1])


class AllForeground(torch.nn.Module):
    """Baseline predictor: every pixel foreground."""

    def forward(self, x, s_x=None, s_y=None):
        logits = torch.zeros(x.shape[0], 2, *x.shape[-2:], device=x.device)
        logits[:, 1] = 1.0
        return logits


def build_predictor(cfg, arguments, device, logger):
    if arguments.all_foreground:
        return AllForeground(), "all-foreground baseline"
    if arguments.prior_baseline or arguments.untrained:
        model = build_experiment_model(cfg, device)
        if arguments.prior_baseline:
            return FeatureMatching(model.backbone, "prior", threshold=0.7), "training-free prior baseline"
        return model, "untrained model"
    weight = arguments.weight or os.path.join(snapshot_dir(cfg), cfg.weight)
    if arguments.weight and not os.path.isfile(weight):
        raise FileNotFoundError(f"--weight {weight!r}: no such checkpoint file")
    if not os.path.isfile(weight):
        raise FileNotFoundError(
            f"weights not found: {weight!r} (the config's 'weight' key, looked up in "
            f"{snapshot_dir(cfg)}/). Put the released checkpoint '{cfg.weight}' there, or pass "
            f"--weight PATH (README, 'Quick start')")
    # A full SCCAN checkpoint holds the backbone too: the ImageNet files in initmodel/ are not read.
    model = build_experiment_model(cfg, device, backbone_from_checkpoint=True)
    checkpoint = load_model_weights(model, weight, map_location=device)
    epoch = checkpoint.get("epoch") if checkpoint else None
    logger.info(f"loaded {weight}" + (f" (epoch {epoch})" if epoch is not None else ""))
    if arguments.previous_support:
        return PreviousSupport(model), weight + " with the previous episode's supports"
    return model, weight


def run(argv=None) -> dict:
    arguments, cfg = parse_arguments(argv)
    context = init_distributed(arguments.local_rank)
    if context.world_size > 1:
        raise SystemExit("test_sccan.py runs in one process (the protocol is sequential)")
    logger = get_logger("sccan.test")
    set_seed(STARTUP_SEED, cfg.seed_deterministic)
    device = context.device
    test_num = arguments.episodes or cfg.test_num
    class_ids = test_class_ids(cfg)
    dataset = build_dataset(cfg, "val", hsnet_resize=arguments.hsnet_resize)
    if arguments.episodes_from:
        episodes = load_episodes(arguments.episodes_from)
        dataset = ReplayDataset(dataset, episodes)
        test_num = len(episodes)
        loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=cfg.workers)
        replaying = True
    else:
        if arguments.dump_episodes:
            dataset = RecordingDataset(dataset)
        loader = build_val_loader(cfg, dataset)
        replaying = False
    predictor, source = build_predictor(cfg, arguments, device, logger)
    record = [] if (arguments.dump_episodes or arguments.episodes_from) else None

    writer = None
    if arguments.viz:
        from tensorboardX import SummaryWriter
        writer = SummaryWriter(os.path.join(experiment_dir(cfg), per_shot_name(cfg, "tensorboard"), "test"))
    rows = []
    for seed_index in range(arguments.seeds):
        seed = cfg.manual_seed + seed_index
        if record is not None:
            record.clear()
        result = evaluate(predictor, loader, test_num=test_num, num_test_classes=len(class_ids),
                          device=device, seed=seed, seed_deterministic=cfg.seed_deterministic,
                          ori_resize=cfg.ori_resize, hsnet_resize=arguments.hsnet_resize,
                          ignore_label=cfg.ignore_label, record=record,
                          visualisation_dir=arguments.save_vis if seed_index == 0 else None,
                          progress=True)
        result["seed"] = seed
        rows.append(result)
        if writer is not None:
            for key in ("mIoU", "FB_IoU", "pIoU"):
                writer.add_scalar(f"test/{key}", result[key], seed)
            for class_id, iou in zip(class_ids, result["class_IoU"]):
                writer.add_scalar(f"test/class_{class_id}_IoU", iou, seed)
        print(format_result_table(result, class_ids, title=f"{source}, seed {seed}"), flush=True)
        if arguments.dump_episodes and seed_index == 0 and not replaying:
            save_episodes(arguments.dump_episodes, record,
                          meta={"config": cfg.get("config_file", arguments.config), "seed": seed,
                                "workers": cfg.workers, "test_num": test_num})
            logger.info(f"wrote {len(record)} episodes to {arguments.dump_episodes}")

    if writer is not None:
        writer.close()
    summary = {"config": arguments.config, "weights": source, "class_ids": class_ids,
               "test_num": test_num, "hsnet_resize": arguments.hsnet_resize, "runs": rows}
    if len(rows) > 1:
        summary["mean"] = {key: statistics.mean(r[key] for r in rows) for key in ("mIoU", "FB_IoU", "pIoU")}
        summary["std"] = {key: statistics.stdev(r[key] for r in rows) for key in ("mIoU", "FB_IoU", "pIoU")}
        print("\n| seed | mIoU | FB-IoU | pIoU |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['seed']} | {r['mIoU']:.4f} | {r['FB_IoU']:.4f} | {r['pIoU']:.4f} |")
        print(f"| mean ± std | {summary['mean']['mIoU']:.4f} ± {summary['std']['mIoU']:.4f} | "
              f"{summary['mean']['FB_IoU']:.4f} ± {summary['std']['FB_IoU']:.4f} | "
              f"{summary['mean']['pIoU']:.4f} ± {summary['std']['pIoU']:.4f} |")
    output = arguments.output
    if output is None:
        tag = os.path.splitext(os.path.basename(source))[0].replace(" ", "_")
        output = os.path.join(result_dir(cfg), per_shot_name(cfg, f"test_{tag}", ".json"))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output + ".tmp", "w") as handle:
        json.dump(summary, handle, indent=1)
    os.replace(output + ".tmp", output)
    logger.info(f"wrote {output}")
    return summary


if __name__ == "__main__":
    sys.exit(run_entry_point(run))
