"""The files a test run writes: the result JSON and the per-class IoU chart beside it, checked
before any work (writable, no input of the run among them, no foreign file replaced) and written
atomically after it."""
from __future__ import annotations

import datetime
import os

import torch

from experiment.build import evaluated_list_key
from evaluation.visualisation import class_iou_chart, write_png
from util.cli import UserError
from util.io import atomic_write_json, check_distinct_paths, check_output_path

__all__ = ["chart_path", "check_default_result_output", "check_result_outputs", "run_record", "write_result"]


def chart_path(output: str) -> str:
    """The per-class IoU chart beside the result JSON: the same name, .png."""
    return os.path.splitext(output)[0] + ".png"


def check_result_outputs(arguments, cfg, output: str, output_name: str) -> None:
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
         ("--episodes-from", arguments.episodes_from), (f"config key {evaluated_list_key(cfg)}", cfg.val_list),
         ("config key base_learner_weights", cfg.base_learner_weights if cfg.base_learner else None)])
    if chart and os.path.isdir(chart):
        raise UserError(f"{output_name} {output}: its per-class chart is written beside it as {chart}, "
                        f"which is a folder; give {output_name} another name")
    if chart and os.path.lexists(chart) and not os.path.exists(output):
        # Beside an earlier result the PNG is that result's chart; alone, it is someone's picture.
        raise UserError(f"{output_name} {output}: its per-class chart is written beside it as {chart}, "
                        f"which exists and is not the chart of an earlier result (there is no "
                        f"{os.path.basename(output)}): move that file, or give {output_name} another name")


def check_default_result_output(arguments, cfg, default: str) -> None:
    """:func:`check_result_outputs` for the default result file, once its name is known (it
    depends on the checkpoint), when no ``--output`` was given."""
    if not arguments.output:
        check_result_outputs(arguments, cfg, default, "the result file (default of --output)")


def run_record(arguments, cfg) -> dict:
    """How a result was produced, beside its numbers, so that a table of results
    (evaluation/paper_table.py) can tell a paper-protocol run from another without the config
    file, which may have changed since or been overridden on the command line: the resolved
    config (after ``--opts``), the overrides themselves, the predictor, the replayed episode file,
    the library versions and the time the run finished (UTC, ISO 8601)."""
    return dict(config_values=_plain(cfg.to_dict()), opts=list(arguments.opts or []),
                predictor=arguments.predictor, episodes_from=arguments.episodes_from,
                torch=torch.__version__,
                finished_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def _plain(value):
    # JSON holds lists, not tuples; anything else a config holds (numbers, strings, booleans,
    # None, lists) passes as it is.
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def write_result(output: str, summary: dict, class_ids, runs, source: str) -> str:
    """The result JSON ``output`` (``summary``) and the per-class IoU bar chart beside it
    (:func:`chart_path`), whose path is returned."""
    atomic_write_json(output, summary)
    path = chart_path(output)
    seeds = ", ".join(str(run["seed"]) for run in runs)
    subtitle = f"{runs[0]['episodes']} episodes per run, seed{'s' * (len(runs) > 1)} {seeds}"
    if len(runs) > 1:
        subtitle += "; bars: mean, dots: each seed, whiskers: lowest to highest"
    write_png(path, class_iou_chart(class_ids, [run["class_IoU"] for run in runs],
                                    f"per-class IoU: {source}", subtitle))
    return path
