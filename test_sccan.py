"""Evaluate SCCAN on the novel classes of a fold with the paper's protocol (docs/PROTOCOL.md).

    python test_sccan.py --config config/pascal/pascal_split0_resnet50.yaml [--weight CKPT] [--seeds 5]
    python test_sccan.py --config ... --dump-episodes episodes.json      # write the episodes
    python test_sccan.py --config ... --episodes-from episodes.json      # replay them exactly
    python test_sccan.py --config ... --opts base_learner True --gfss   # BAM's generalised test

Seed 123 at start-up, then one run per seed (321, 322, ...): test_num episodes (1000 PASCAL,
4000 COCO) in loader passes, batch 1, ori_resize. Prints per-class IoU, mIoU, FB-IoU and pIoU
and writes them as JSON, with a bar chart of the per-class IoU beside it (PNG). A model with a
base learner (``base_learner: True``) is scored as its ensemble and as its meta learner alone,
on the same episodes. ``--gfss`` runs BAM's generalised
few-shot test instead (evaluation/gfss.py): every val image as a query, base and novel classes,
``merge``/``merge_tau`` from the config; it reports mIoU_n, mIoU_b, mIoU_t and per-class IoU.
"""
from __future__ import annotations

import os
import sys

from evaluation.baselines import add_predictor_arguments, build_predictor
from util.cli import UserError, positive_int, run_entry_point
from util.config import config_argparser, load_config
from evaluation.episodes import EpisodeRecorder, build_episode_loader, read_episode_file, save_episodes
from evaluation.protocol import EvaluationProtocol, run_seeds, summarise_runs
from experiment.build import build_dataset, default_result_path, tensorboard_writer, test_class_ids
from evaluation.gfss import check_gfss_request, run_generalised_test
from util.io import atomic_write_json, check_distinct_paths, check_output_path
from util.runtime import get_logger, init_distributed, set_seed
from evaluation.visualisation import VisualisationWriter, class_iou_chart, write_png

STARTUP_SEED = 123


def parse_arguments(argv=None):
    parser = config_argparser("Test SCCAN (few-shot evaluation protocol)")
    add = parser.add_argument
    add("--weight", help="checkpoint (released training checkpoint or bare state_dict); default "
        "exp/<dataset>/SCCAN/split<i>/resnet<L>/snapshot/<config weight>")
    add("--seeds", type=positive_int, default=1, help="N runs with seeds 321, 322, ...: rows, mean and std")
    add("--episodes", type=positive_int, help="override test_num")
    add("--viz", action="store_true", help="TensorBoard event files in <exp>/tensorboard_<K>shot/test/")
    add("--save-vis", metavar="DIR", help="one PNG panel per episode of the first seed's run (named by "
        "episode, class and IoU) and DIR/index.html, the episodes sorted by IoU, worst first")
    add("--dump-episodes", metavar="FILE", help="write the first run's exact episodes as JSON")
    add("--episodes-from", metavar="FILE", help="evaluate exactly the episodes of FILE")
    add("--hsnet-resize", action="store_true", help="HSNet-style test: inputs resized to val_size squared, "
        "logits to the original label (the paper's double-dagger rows)")
    add("--output", metavar="JSON", help="result file (default <exp>/result/test_<weight>_<K>shot.json)")
    add("--gfss", action="store_true", help="BAM's generalised few-shot test (needs base_learner: True): every "
        "val image as a query, its base classes and one novel class; merge and merge_tau from the config")
    add_predictor_arguments(parser)
    arguments = parser.parse_args(argv)
    return arguments, load_config(arguments.config, arguments.opts)


def run(argv=None) -> dict:
    arguments, cfg = parse_arguments(argv)
    check_outputs(arguments, cfg, arguments.output, "--output")  # before any work, not after the evaluation
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
    if not arguments.output:
        check_outputs(arguments, cfg, default_result_path(cfg, source), "the result file (default of --output)")
    recorder = EpisodeRecorder() if arguments.dump_episodes and not replayed else None
    pictures = VisualisationWriter(arguments.save_vis, class_ids) if arguments.save_vis else None
    writer = tensorboard_writer(cfg, "test") if arguments.viz else None
    runs = run_seeds(protocol, predictor, loader, context.device, class_ids, source,
                     [o for o in (recorder, pictures) if o is not None], writer)
    if recorder is not None:
        save_episodes(arguments.dump_episodes, recorder.episodes, meta=dict(
            config=arguments.config, data_set=cfg.data_set, split=cfg.split, shot=cfg.shot,
            use_split_coco=cfg.use_split_coco, seed=protocol.seeds[0], workers=cfg.workers,
            test_num=protocol.test_num))
    if pictures is not None:
        index = pictures.finish(f"{source}: {len(pictures.entries)} episodes, seed {protocol.seeds[0]}")
        logger.info(f"wrote {len(pictures.entries)} episode pictures and {index}")
    statistics, table = summarise_runs(runs)
    print(table, flush=True)
    summary = dict(config=arguments.config, weights=source, class_ids=class_ids, test_num=protocol.test_num,
                   hsnet_resize=arguments.hsnet_resize, runs=runs, **statistics)
    output = arguments.output or default_result_path(cfg, source)
    atomic_write_json(output, summary)
    logger.info(f"wrote {output} and {write_chart(output, class_ids, runs, source)}")
    return summary


def chart_path(output: str) -> str:
    """The per-class IoU chart beside the result JSON: the same name, .png."""
    return os.path.splitext(output)[0] + ".png"


def check_outputs(arguments, cfg, output: str, output_name: str) -> None:
    """Refuse, before any work, an output that could not be written or that would destroy a file:
    the result (``output``, given as ``output_name``), its chart, the episode file and the
    pictures' folder must be writable, none of them an input of the run or another output, and
    the chart may only replace the chart of an earlier result."""
    chart = chart_path(output) if output else None
    for option, path, folder in ((output_name, output, False), ("--save-vis", arguments.save_vis, True),
                                 ("--dump-episodes", arguments.dump_episodes, False)):
        check_output_path(path, option, folder)
    if arguments.dump_episodes and arguments.episodes_from:
        # A replay draws nothing: its episodes are the file's, which a copy of that file keeps.
        raise UserError(f"--dump-episodes {arguments.dump_episodes} with --episodes-from: a replayed run "
                        f"draws no episodes of its own to record (they are those of "
                        f"{arguments.episodes_from}); copy that file instead")
    if output and os.path.splitext(output)[1].lower() == ".png":
        raise UserError(f"{output_name} {output}: the result is JSON and its per-class chart is written "
                        f"beside it as <name>.png, this very file; give a .json name")
    check_distinct_paths(
        [(output_name, output), (f"the chart of {output_name} (<name>.png)", chart),
         ("--dump-episodes", arguments.dump_episodes), ("--save-vis", arguments.save_vis)],
        [("--config", arguments.config), ("--weight", arguments.weight),
         ("--episodes-from", arguments.episodes_from), ("config key val_list", cfg.val_list),
         ("config key base_learner_weights", cfg.base_learner_weights if cfg.base_learner else None)])
    if chart and os.path.isdir(chart):
        raise UserError(f"{output_name} {output}: its per-class chart is written beside it as {chart}, "
                        f"which is a folder; give {output_name} another name")
    if chart and os.path.lexists(chart) and not os.path.exists(output):
        # Beside an earlier result the PNG is that result's chart; alone, it is someone's picture.
        raise UserError(f"{output_name} {output}: its per-class chart is written beside it as {chart}, "
                        f"which exists and is not the chart of an earlier result (there is no "
                        f"{os.path.basename(output)}): move that file, or give {output_name} another name")


def write_chart(output: str, class_ids, runs, source: str) -> str:
    """The per-class IoU bar chart beside the result JSON (:func:`chart_path`)."""
    path = chart_path(output)
    seeds = ", ".join(str(run["seed"]) for run in runs)
    subtitle = f"{runs[0]['episodes']} episodes per run, seed{'s' * (len(runs) > 1)} {seeds}"
    if len(runs) > 1:
        subtitle += "; bars: mean, dots: each seed, whiskers: lowest to highest"
    write_png(path, class_iou_chart(class_ids, [run["class_IoU"] for run in runs],
                                    f"per-class IoU: {source}", subtitle))
    return path


def run_gfss(arguments, cfg, context, logger) -> dict:
    """BAM's generalised few-shot test (util/gfss.run_generalised_test)."""
    check_gfss_request(cfg, arguments.predictor, {"--dump-episodes": arguments.dump_episodes,
                                                  "--episodes-from": arguments.episodes_from,
                                                  "--save-vis": arguments.save_vis,
                                                  "--hsnet-resize": arguments.hsnet_resize})
    predictor, source = build_predictor(cfg, arguments.predictor, context.device, arguments.weight,
                                        logger.info)
    output = arguments.output or default_result_path(cfg, "gfss_" + os.path.basename(source))
    if not arguments.output:
        check_outputs(arguments, cfg, output, "the result file (default of --output)")
    writer = tensorboard_writer(cfg, "test_gfss") if arguments.viz else None
    summary = run_generalised_test(cfg, predictor, context.device, arguments.episodes, arguments.seeds,
                                   title=source, writer=writer)
    summary = dict(config=arguments.config, weights=source, **summary)
    atomic_write_json(output, summary)
    class_ids = list(range(1, len(summary["runs"][0]["class_IoU"]) + 1))
    logger.info(f"wrote {output} and {write_chart(output, class_ids, summary['runs'], source)}")
    return summary

if __name__ == "__main__":
    sys.exit(run_entry_point(run))
