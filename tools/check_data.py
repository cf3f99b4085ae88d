"""Check a folder of one's own data before a run: every problem at once, one line each.

    python -m tools.check_data --layout class_folders ROOT [--splits trn.txt val.txt test.txt] [--shot K]
                               [--foreground-threshold T] [--ignore-value V]
    python -m tools.check_data --layout semantic_labels ROOT --splits train.txt val.txt --num-classes N
                               [--fold-classes "[[1, 2], [3, 4]]"] [--shot K]
    python -m tools.check_data --config config/my_data.yaml [--shot K]

Class folders (``ROOT/<class>/<id>.jpg`` + ``<id>.png``; --splits: files of class names): every
image has its mask and every mask its image, both decode, their sizes match, every mask has a
foreground pixel under the mask rule, every class has at least K+1 usable images, and the split
files name only present class folders, no class twice and no class in two splits.
Semantic labels (--splits: base lists of ``<image> <label>`` lines relative to ROOT): every line
well formed, image and label present, decodable and of one size, labels single-channel 8-bit with
values 0, 1..N and 255 and some class in them, fold_classes valid, and in each list every class
covering 2,048 pixels (SemData's rule) of at least K+1 images: every class in the first (training)
list, the classes of fold_classes in the others (evaluation).
With --config the layout, root, lists, shot and mask rule come from the config (data_set 'fss' or
'class_folders' -> class folders, 'semantic' -> semantic labels).

Prints one line per problem and exits with status 2 when there is any; prints one summary line
and exits with 0 when the folder is clean. docs/DATASETS.md, "Your own data".
"""
from __future__ import annotations

import argparse
import ast
import sys
from typing import List, Optional

if not __package__:  # run as a file: the project's packages are not importable that way
    import _as_module  # noqa: F401  (tools/_as_module.py: says how to run it, exits)

from tools.data_checks import check_class_folders, check_semantic_labels
from util.cli import UserError, add_debug_argument, positive_int, run_entry_point
from util.config import load_config
from util.episode_data.class_folders import MaskRule

LAYOUTS = ("class_folders", "semantic_labels")
CONFIG_LAYOUTS = {"fss": "class_folders", "class_folders": "class_folders", "semantic": "semantic_labels"}


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.check_data", description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", help="the data folder (default with --config: its data_root)")
    parser.add_argument("--layout", choices=LAYOUTS, help="class_folders or semantic_labels (default with "
                        "--config: from its data_set)")
    parser.add_argument("--splits", nargs="+", default=[], metavar="FILE",
                        help="class folders: split files of class names; semantic labels: base lists, the "
                        "training list first (every class needs K+1 images there), then the evaluation lists "
                        "(the fold_classes need them)")
    parser.add_argument("--shot", type=positive_int, help="supports per episode (default 1, or the config's)")
    parser.add_argument("--foreground-threshold", type=int, help="class folders: mask values from this up are "
                        "foreground (default 1, or the config's foreground_threshold)")
    parser.add_argument("--ignore-value", type=int, help="class folders: this mask value is ignored (default "
                        "none, or the config's mask_ignore_value)")
    parser.add_argument("--num-classes", type=positive_int, help="semantic labels: class ids 1..N")
    parser.add_argument("--fold-classes", help="semantic labels: the folds' test classes, e.g. '[[1, 2], [3, 4]]'")
    parser.add_argument("--config", help="take the layout, root, lists, shot and mask rule from a config")
    add_debug_argument(parser)
    return parser.parse_args(argv)


def _settings(arguments) -> dict:
    """The checks' inputs: the command line over the config's values over the defaults."""
    settings = dict(layout=arguments.layout, root=arguments.root, splits=list(arguments.splits), shot=1,
                    threshold=1, ignore=None, num_classes=None, fold_classes=None)
    if arguments.config:
        cfg = load_config(arguments.config)
        if cfg.data_set not in CONFIG_LAYOUTS:
            raise UserError(f"--config {arguments.config}: data_set {cfg.data_set!r} is not one's own data "
                            f"(expected one of {', '.join(CONFIG_LAYOUTS)})")
        lists = [cfg.train_list, cfg.val_list] + ([cfg.test_list] if cfg.test_list else [])
        settings.update(layout=settings["layout"] or CONFIG_LAYOUTS[cfg.data_set], root=settings["root"] or
                        cfg.data_root, splits=settings["splits"] or lists, shot=cfg.shot,
                        threshold=cfg.foreground_threshold,
                        ignore=None if cfg.mask_ignore_value < 0 else cfg.mask_ignore_value,
                        num_classes=cfg.num_classes or None, fold_classes=cfg.fold_classes or None)
    overrides = dict(shot=arguments.shot, threshold=arguments.foreground_threshold, ignore=arguments.ignore_value,
                     num_classes=arguments.num_classes, fold_classes=_fold_classes(arguments.fold_classes))
    settings.update({key: value for key, value in overrides.items() if value is not None})
    if not settings["layout"] or not settings["root"]:
        raise UserError("give --layout and the data folder ROOT, or --config")
    return settings


def _fold_classes(text: Optional[str]):
    if text is None:
        return None
    try:
        return ast.literal_eval(text)  # a literal only, never code
    except (ValueError, SyntaxError):
        raise UserError(f"--fold-classes {text!r} is not a list of lists of class ids, "
                        f"e.g. '[[1, 2], [3, 4]]'") from None


def main(argv=None) -> int:
    settings = _settings(parse_arguments(argv))
    problems: List[str]
    if settings["layout"] == "class_folders":
        rule = MaskRule(settings["threshold"], settings["ignore"])
        problems, summary = check_class_folders(settings["root"], settings["splits"], settings["shot"], rule)
    else:
        problems, summary = check_semantic_labels(settings["root"], settings["splits"], settings["shot"],
                                                  settings["num_classes"], settings["fold_classes"])
    for problem in problems:
        print(problem, flush=True)
    if problems:
        print(f"check_data: {len(problems)} problem{'s' * (len(problems) > 1)} in {settings['root']}",
              file=sys.stderr, flush=True)
        return 2
    print(f"check_data: {settings['root']} is clean: {summary}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
