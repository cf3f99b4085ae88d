"""The published SCCAN figures (evaluation/published/sccan.yaml) read and checked: the SCCAN rows
of the paper's Tables 1 and 2 (both test resizes, † and ‡) and the mIoU in the names of the
authors' released checkpoints, every figure with its source.

    figures = load_published_figures()
    figures.table_row("pascal", 50, 1, "pfenet").miou      # (67.5, 72.6, 67.2, 60.5)
    figures.checkpoint("coco", 101, 5, 0).file              # 'train5_epoch_47_0.4903.pth'

A file that does not hold what this module expects is refused whole, with the file and the key
named: an unknown key, a value that is not a number (or null), a figure without a source, a
duplicate entry, a released checkpoint whose name disagrees with its figure.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import yaml

from util.dataset import NUM_SPLITS, PAPER_DATA_SETS
from util.io import read_text

__all__ = ["PUBLISHED_FIGURES", "RESIZES", "PublishedFigures", "PublishedFiguresError", "ReleasedCheckpoint",
           "TableRow", "load_published_figures"]

PUBLISHED_FIGURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "published", "sccan.yaml")
# The paper's two test protocols: 'pfenet' the rows marked † (test_sccan.py's default test),
# 'hsnet' the rows marked ‡ (test_sccan.py --hsnet-resize).
RESIZES = ("pfenet", "hsnet")
LAYERS = (50, 101)
TABLE_KEYS = ("dataset", "layers", "shot", "resize", "miou", "miou_mean", "fb_iou_mean", "source")
CHECKPOINT_KEYS = ("dataset", "layers", "shot", "fold", "file", "miou", "source")
# A released checkpoint's name ends with its validation mIoU: ..._0.6753.pth.
_NAME_MIOU = re.compile(r"_(\d\.\d+)\.pth$")


class PublishedFiguresError(ValueError):
    """The published-figure file does not hold what it should (a ValueError: one line 'error: ...')."""


@dataclass(frozen=True)
class TableRow:
    """One SCCAN row of the paper's tables: mIoU per fold (0..3), its mean and the FB-IoU mean, in
    percent; None where nothing was published."""
    dataset: str
    layers: int
    shot: int
    resize: str
    miou: Tuple[Optional[float], ...]
    miou_mean: Optional[float]
    fb_iou_mean: Optional[float]
    source: Optional[str]


@dataclass(frozen=True)
class ReleasedCheckpoint:
    """A released checkpoint of one fold and the mIoU (percent) its name states."""
    dataset: str
    layers: int
    shot: int
    fold: int
    file: str
    miou: Optional[float]
    source: Optional[str]


@dataclass(frozen=True)
class PublishedFigures:
    path: str
    table_rows: Dict[Tuple[str, int, int, str], TableRow]
    checkpoints: Dict[Tuple[str, int, int, int], ReleasedCheckpoint]

    def table_row(self, dataset: str, layers: int, shot: int, resize: str) -> Optional[TableRow]:
        return self.table_rows.get((dataset, layers, shot, resize))

    def checkpoint(self, dataset: str, layers: int, shot: int, fold: int) -> Optional[ReleasedCheckpoint]:
        return self.checkpoints.get((dataset, layers, shot, fold))


class _Entry:
    """One mapping of the file being checked; every problem names the file and the entry's key."""

    def __init__(self, path: str, where: str, entry, keys: Tuple[str, ...]):
        self.path, self.where = path, where
        if not isinstance(entry, dict):
            self.fail(f"expected a mapping with the keys {', '.join(keys)}, got {entry!r}")
        unknown = sorted(str(key) for key in entry if key not in keys)
        if unknown:
            self.fail(f"unknown key{'s' * (len(unknown) > 1)} {', '.join(unknown)} (known: {', '.join(keys)})")
        missing = [key for key in keys if key not in entry]
        if missing:
            self.fail(f"missing key{'s' * (len(missing) > 1)} {', '.join(missing)} (null if nothing was "
                      f"published)")
        self.entry = entry

    def fail(self, problem: str, key: str = ""):
        raise PublishedFiguresError(f"{self.path}: {self.where}{'.' + key if key else ''}: {problem}")

    def choice(self, key: str, choices):
        value = self.entry[key]
        if type(value) is not type(choices[0]) or value not in choices:  # no True for 1, no 50.0 for 50
            self.fail(f"expected one of {', '.join(map(str, choices))}, got {value!r}", key)
        return value

    def figure(self, key: str, value=None, name: Optional[str] = None) -> Optional[float]:
        """A percentage or None (``value``: an item of a list under ``key``, named ``name``)."""
        value = self.entry[key] if name is None else value
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(f"expected a number (a percentage) or null, got {value!r}", name or key)
        if not 0 <= value <= 100:
            self.fail(f"expected a percentage between 0 and 100, got {value!r}", name or key)
        return float(value)

    def text(self, key: str) -> Optional[str]:
        value = self.entry[key]
        if value is not None and (not isinstance(value, str) or not value.strip()):
            self.fail(f"expected a non-empty text or null, got {value!r}", key)
        return value

    def source(self, figures) -> Optional[str]:
        """The entry's source, which every published figure needs."""
        source = self.text("source")
        if source is None and any(value is not None for value in figures):
            self.fail("a figure without a source: say where it is published (a URL or the paper's table "
                      "and row), or set the figure to null", "source")
        return source


def _table_row(path: str, index: int, entry) -> TableRow:
    checked = _Entry(path, f"tables[{index}]", entry, TABLE_KEYS)
    dataset, resize = checked.choice("dataset", PAPER_DATA_SETS), checked.choice("resize", RESIZES)
    layers, shot = checked.choice("layers", LAYERS), _shot(checked)
    folds = entry["miou"]
    if not isinstance(folds, list) or len(folds) != NUM_SPLITS:
        checked.fail(f"expected a list of {NUM_SPLITS} figures (folds 0..{NUM_SPLITS - 1}, null where none "
                     f"was published), got {folds!r}", "miou")
    miou = tuple(checked.figure("miou", value, f"miou[{fold}]") for fold, value in enumerate(folds))
    mean, fb_iou = checked.figure("miou_mean"), checked.figure("fb_iou_mean")
    source = checked.source(miou + (mean, fb_iou))
    return TableRow(dataset, layers, shot, resize, miou, mean, fb_iou, source)


def _checkpoint(path: str, index: int, entry) -> ReleasedCheckpoint:
    checked = _Entry(path, f"checkpoints[{index}]", entry, CHECKPOINT_KEYS)
    dataset, layers, shot = checked.choice("dataset", PAPER_DATA_SETS), checked.choice("layers", LAYERS), _shot(checked)
    fold = checked.choice("fold", tuple(range(NUM_SPLITS)))
    file, miou = checked.text("file"), checked.figure("miou")
    named = _NAME_MIOU.search(file or "")
    if miou is not None and (named is None or abs(float(named.group(1)) * 100 - miou) > 1e-9):
        checked.fail(f"{miou} is not the mIoU in the checkpoint's name {file!r} (the name ends with "
                     f"_<mIoU>.pth, e.g. _0.6753.pth for 67.53)", "miou")
    return ReleasedCheckpoint(dataset, layers, shot, fold, file, miou, checked.source((miou,)))


def _shot(checked: _Entry) -> int:
    shot = checked.entry["shot"]
    if isinstance(shot, bool) or not isinstance(shot, int) or shot < 1:
        checked.fail(f"expected a positive whole number, got {shot!r}", "shot")
    return shot


def _keyed(path: str, section: str, items, key) -> dict:
    found = {}
    for index, item in enumerate(items):
        identity = key(item)
        if identity in found:
            raise PublishedFiguresError(f"{path}: {section}[{index}]: a second entry for {identity} "
                                        f"(the first is {section}[{found[identity][0]}])")
        found[identity] = (index, item)
    return {identity: item for identity, (_, item) in found.items()}


def load_published_figures(path: str = PUBLISHED_FIGURES) -> PublishedFigures:
    """The published figures of ``path`` (default: the project's evaluation/published/sccan.yaml),
    checked whole."""
    text = read_text(path, "the published-figure file")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PublishedFiguresError(f"{path}: invalid YAML: {error}") from None
    if not isinstance(document, dict):
        raise PublishedFiguresError(f"{path}: expected a mapping with the keys tables and checkpoints")
    unknown = sorted(str(key) for key in document if key not in ("tables", "checkpoints"))
    if unknown:
        raise PublishedFiguresError(f"{path}: unknown key{'s' * (len(unknown) > 1)} {', '.join(unknown)} "
                                    f"(known: tables, checkpoints)")
    sections = {}
    for section in ("tables", "checkpoints"):
        items = document.get(section) or []
        if not isinstance(items, list):
            raise PublishedFiguresError(f"{path}: {section}: expected a list of entries, got {items!r}")
        sections[section] = items
    rows = _keyed(path, "tables", [_table_row(path, index, entry) for index, entry in enumerate(sections["tables"])],
                  lambda row: (row.dataset, row.layers, row.shot, row.resize))
    checkpoints = _keyed(path, "checkpoints", [_checkpoint(path, index, entry)
                                               for index, entry in enumerate(sections["checkpoints"])],
                         lambda entry: (entry.dataset, entry.layers, entry.shot, entry.fold))
    return PublishedFigures(path, rows, checkpoints)
