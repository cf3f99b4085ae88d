"""Evaluate SCCAN on the novel classes of a fold with the paper's protocol (docs/PROTOCOL.md).

    python test_sccan.py --config config/pascal/pascal_split0_resnet50.yaml [--weight CKPT] [--seeds 5]
    python test_sccan.py --config ... --dump-episodes episodes.json      # write the episodes
    python test_sccan.py --config ... --episodes-from episodes.json      # replay them exactly
    python test_sccan.py --config ... --opts base_learner True --gfss   # BAM's generalised test

Seed 123 at start-up, then one run per seed (321, 322, ...): test_num episodes (1000 PASCAL,
4000 COCO) in loader passes, batch 1, ori_resize. Prints per-class IoU, mIoU, FB-IoU and pIoU
and writes them as JSON, with a bar chart of the per-class IoU beside it (PNG). A model with a
base learner is scored as its ensemble and its meta learner alone, on the same episodes.
``--gfss``: BAM's generalised test (evaluation/gfss.py), mIoU_n, mIoU_b, mIoU_t.
"""
from __future__ import annotations

import os
import sys

from evaluation.baselines import build_predictor
from evaluation.command_line import evaluation_argument_parser
from evaluation.episodes import (EpisodeRecorder, build_episode_loader, episode_file_meta, read_episode_file,
                                 save_episodes)
from evaluation.gfss import check_gfss_request, run_generalised_test
from evaluation.protocol import EvaluationProtocol, run_seeds, summarise_runs
from evaluation.results import check_default_result_output, check_result_outputs, run_record, write_result
from evaluation.visualisation import VisualisationWriter
from experiment.build import build_dataset, default_result_path, tensorboard_writer, test_class_ids, test_config
from util.cli import run_entry_point
from util.config import load_config
from util.runtime import get_logger, init_distributed, set_seed

STARTUP_SEED = 123


def parse_arguments(argv=None):
    """The command line and the config it evaluates (test_list in place of val_list when set,
    test_num from --episodes: experiment/build.test_config)."""
    arguments = evaluation_argument_parser().parse_args(argv)
    return arguments, test_config(load_config(arguments.config, arguments.opts), arguments.episodes)


def run(argv=None) -> dict:
    arguments, cfg = parse_arguments(argv)
    check_result_outputs(arguments, cfg, arguments.output, "--output")  # before any work, not after the evaluation
    context = init_distributed(arguments.local_rank)
    if context.world_size > 1:
        raise SystemExit("test_sccan.py runs in one process (the protocol is sequential)")
    logger = get_logger("sccan.test")
    set_seed(STARTUP_SEED, cfg.seed_deterministic)
    if arguments.gfss:
        return run_gfss(arguments, cfg, context, logger)
    # The episode file is checked whole before the lists are built or the model is loaded.
    episodes = read_episode_file(arguments.episodes_from, cfg) if arguments.episodes_from else None
    class_ids = test_class_ids(cfg)
    dataset = build_dataset(cfg, "val", hsnet_resize=arguments.hsnet_resize)
    loader, replayed = build_episode_loader(cfg, dataset, arguments.episodes_from,
                                            record=bool(arguments.dump_episodes), episodes=episodes)
    protocol = EvaluationProtocol.from_config(cfg, len(class_ids), replayed or arguments.episodes,
                                              arguments.seeds, arguments.hsnet_resize)
    predictor, source = build_predictor(cfg, arguments.predictor, context.device, arguments.weight,
                                        logger.info)
    check_default_result_output(arguments, cfg, default_result_path(cfg, source))
    recorder = EpisodeRecorder() if arguments.dump_episodes and not replayed else None
    pictures = VisualisationWriter(arguments.save_vis, class_ids) if arguments.save_vis else None
    writer = tensorboard_writer(cfg, "test") if arguments.viz else None
    runs = run_seeds(protocol, predictor, loader, context.device, class_ids, source,
                     [o for o in (recorder, pictures) if o is not None], writer)
    if recorder is not None:
        save_episodes(arguments.dump_episodes, recorder.episodes,
                      meta=episode_file_meta(cfg, arguments.config, protocol.seeds[0], protocol.test_num))
    if pictures is not None:
        index = pictures.finish(f"{source}: {len(pictures.entries)} episodes, seed {protocol.seeds[0]}")
        logger.info(f"wrote {len(pictures.entries)} episode pictures and {index}")
    statistics, table = summarise_runs(runs)
    print(table, flush=True)
    summary = dict(config=arguments.config, weights=source, class_ids=class_ids, test_num=protocol.test_num,
                   hsnet_resize=arguments.hsnet_resize, runs=runs, **statistics, **run_record(arguments, cfg))
    output = arguments.output or default_result_path(cfg, source)
    logger.info(f"wrote {output} and {write_result(output, summary, class_ids, runs, source)}")
    return summary


def run_gfss(arguments, cfg, context, logger) -> dict:
    """BAM's generalised few-shot test (evaluation/gfss.run_generalised_test)."""
    check_gfss_request(cfg, arguments.predictor, {f"--{name.replace('_', '-')}": getattr(arguments, name) for name in
                                                  ("dump_episodes", "episodes_from", "save_vis", "hsnet_resize")})
    predictor, source = build_predictor(cfg, arguments.predictor, context.device, arguments.weight,
                                        logger.info)
    output = arguments.output or default_result_path(cfg, "gfss_" + os.path.basename(source))
    check_default_result_output(arguments, cfg, output)
    writer = tensorboard_writer(cfg, "test_gfss") if arguments.viz else None
    summary = run_generalised_test(cfg, predictor, context.device, arguments.episodes, arguments.seeds,
                                   title=source, writer=writer)
    summary = dict(config=arguments.config, weights=source, **summary, **run_record(arguments, cfg))
    class_ids = list(range(1, len(summary["runs"][0]["class_IoU"]) + 1))
    logger.info(f"wrote {output} and {write_result(output, summary, class_ids, summary['runs'], source)}")
    return summary


if __name__ == "__main__":
    sys.exit(run_entry_point(run))
