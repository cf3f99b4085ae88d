"""The paper's tables from test_sccan.py's result files: every result JSON under a folder,
placed in the layout of the paper's Tables 1 and 2 (per dataset, rows backbone x shot, columns
folds 0..3, their mean and the FB-IoU mean) beside the published figures
(evaluation/published_figures.py) and the difference, as a terminal table, Markdown, LaTeX
(booktabs) or CSV. ``python -m tools.results_table`` is its command line.

    collection = collect_results("exp")
    report = build_report(collection, load_published_figures())
    print(render(report, "markdown"))

Each result is placed by what its file records (test_num, hsnet_resize, the seeds' runs) and by
its config (dataset, fold, shot, backbone, workers, ...): the resolved config the file records
(``config_values``: the config file after test_sccan.py's ``--opts``), or, in a result written
before test_sccan.py recorded it, the config file it names, read again. A result of the paper's
protocol goes to the section of its test resize (the paper's † rows, or ‡ with
``--hsnet-resize``); one of any other protocol (another episode count, toy data, bbox supports,
another worker count, a baseline predictor, ...) to a section of its own, marked and explained in
a note and shown without published figures, so that it never shares a cell with a paper-protocol
result. The predictor is the one the file records (``predictor``), or, in an older file, the
one its ``weights`` text names. A cell with no result is missing ("—"), never zero; a mean over
the folds is shown only when all four folds are there. Two results for one cell: the newest by
the time each run finished (``finished_at``) when every one of them records it, else the first
in path order, is shown, and a note says which and why.
"""
from __future__ import annotations

import csv
import datetime
import io
import json
import os
import statistics
import warnings
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple

from evaluation.published_figures import RESIZES, PublishedFigures
from util.cli import UserError
from util.config import Config, ConfigError, load_config
from util.config_schema import check_type, default_values
from util.dataset import NUM_SPLITS, get_class_lists
from util.io import read_text

__all__ = ["FORMATS", "PAPER_EPISODES", "PAPER_SETTINGS", "Collection", "Report", "Result", "build_report",
           "collect_results", "protocol_deviations", "read_result", "render"]

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMATS = ("terminal", "markdown", "latex", "csv")
TOY, TOY_DATA = "toy", "toy data"
DATASET_NAMES = {"pascal": "PASCAL-5i", "coco": "COCO-20i", TOY: "toy data", "cross_domain": "cross-domain (PATNet)",
                 "fss": "FSS-1000",
                 "class_folders": "own data (class folders)", "semantic": "own data (semantic labels)"}
PAPER_TABLES = {"pascal": 1, "coco": 2}
# The paper's test protocol, as the original code runs it (https://github.com/Sam1224/SCCAN):
# test_sccan.py sets test_num 1000 for PASCAL and 4000 for COCO; every original config has
# workers 8, val_size 473, resized_val and ori_resize True, batch_size_val 1, manual_seed 321,
# ann_type 'mask', use_split_coco True for COCO. base_learner and amp are this project's
# extensions (BAM's ensemble, bfloat16), off in the paper's setting.
PAPER_EPISODES = {"pascal": 1000, "coco": 4000}
PAPER_SEED = 321
PAPER_SETTINGS = (("workers", 8), ("val_size", 473), ("resized_val", True), ("batch_size_val", 1),
                  ("ann_type", "mask"), ("base_learner", False), ("amp", "fp32"))
# test_sccan.py's predictor (evaluation/baselines.py) when no baseline flag is given.
TRAINED_PREDICTOR = "trained"
# What evaluation/baselines.build_predictor records as the weights of a predictor that is not
# a trained SCCAN checkpoint (how a result written before the predictor was recorded says it).
BASELINE_WEIGHTS = ("all-foreground baseline", "untrained model", "training-free prior baseline")
BASELINE_SUFFIX = " with the previous episode's supports"
COLUMNS = tuple(f"fold {fold}" for fold in range(NUM_SPLITS)) + ("mean", "FB-IoU")
# PATNet's cross-domain benchmark (docs/DATASETS.md): one section, a column per target dataset in
# PATNet's order (its README), each result placed in its dataset's column; mean and FB-IoU over
# the four. Its episodes per dataset: PATNet data/{deepglobe,isic,lung}.py num=600, data/fss.py
# one per test image (2,400).
CROSS_DOMAIN = "cross_domain"
CROSS_DOMAIN_BENCHMARKS = ("deepglobe", "isic", "lung", "fss")
CROSS_DOMAIN_COLUMNS = ("Deepglobe", "ISIC2018", "Chest X-ray", "FSS-1000", "mean", "FB-IoU")
CROSS_DOMAIN_EPISODES = {"deepglobe": 600, "isic": 600, "lung": 600, "fss": 2400}
RESULT_KEYS = ("config", "test_num", "hsnet_resize", "runs")
# The keys that place a result in its cell, checked in a recorded config.
CELL_KEYS = ("data_set", "split", "shot", "layers")


class NotAResult(Exception):
    """A JSON file that is no few-shot result of test_sccan.py (an episode file, a report)."""


class Unplaceable(Exception):
    """A result file that cannot be placed in the tables; the message says why."""


@dataclass(frozen=True)
class Result:
    """One result file: its cell (dataset, backbone, shot, fold), its protocol ('pfenet' or
    'hsnet', and what departs from the paper's), its seeds' mIoU and FB-IoU in percent, and when
    the run finished (None: not recorded)."""
    path: str
    dataset: str
    layers: int
    shot: int
    fold: int
    resize: str
    deviations: Tuple[str, ...]
    seeds: Tuple
    miou: Tuple[float, ...]
    fb_iou: Tuple[float, ...]
    finished_at: Optional[datetime.datetime] = None


@dataclass
class Collection:
    """The results found under ``folder``, the files skipped with the reason, and the count of
    other JSON files (not test results)."""
    folder: str
    results: List[Result] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    others: int = 0


@dataclass(frozen=True)
class Figure:
    """A table entry: ``value`` (percent) with the seeds' ``std``, printed with ``decimals``."""
    value: float
    std: Optional[float] = None
    decimals: int = 2
    signed: bool = False


@dataclass(frozen=True)
class Row:
    backbone: str
    shot: str
    kind: str                               # ours, ours [k], released, paper, Δ
    figures: Tuple[Optional[Figure], ...]   # one per COLUMNS entry; None: missing


@dataclass(frozen=True)
class Section:
    dataset: str
    title: str
    protocol: str                           # the CSV's protocol column
    groups: Tuple[Tuple[Row, ...], ...]     # one group of rows per backbone and shot
    columns: Tuple[str, ...] = COLUMNS     # the figures' columns (the cross-domain section: its datasets)


@dataclass(frozen=True)
class Report:
    sections: Tuple[Section, ...]
    notes: Tuple[str, ...]


# ----------------------------------------------------------------------------- collecting
def collect_results(folder: str) -> Collection:
    """Every result JSON of test_sccan.py under ``folder`` (recursively, in path order)."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: no such folder (give the folder holding test_sccan.py's result files, "
                        f"e.g. exp/)")
    collection = Collection(folder)
    looked_at = 0
    for root, folders, files in os.walk(folder):
        folders.sort()
        for name in sorted(files):
            if not name.lower().endswith(".json"):
                continue
            looked_at += 1
            path = os.path.join(root, name)
            shown = os.path.relpath(path, folder)
            try:
                collection.results.append(read_result(path, shown))
            except NotAResult:
                collection.others += 1
            except Unplaceable as reason:
                collection.skipped.append((shown, str(reason)))
    if not collection.results:
        skipped = "".join(f"; skipped {path}: {reason}" for path, reason in collection.skipped[:3])
        raise UserError(f"{folder}: no few-shot result file of test_sccan.py under it ({looked_at} JSON "
                        f"file{'s' * (looked_at != 1)} looked at){skipped}")
    return collection


def read_result(path: str, shown: Optional[str] = None) -> Result:
    """The result file ``path`` (named ``shown`` in the table), placed by its recorded config
    (else the config file it names). Raises
    :class:`NotAResult` for another JSON file, :class:`Unplaceable` for a result that cannot be
    placed (the message says why)."""
    shown = shown or path
    try:
        document = json.loads(read_text(path, "a result file"))
    except (ValueError, OSError) as error:
        raise Unplaceable(f"cannot be read ({error})") from None
    if not isinstance(document, dict) or "runs" not in document or "config" not in document:
        raise NotAResult(path)
    if document.get("test") == "gfss":
        raise Unplaceable("BAM's generalised test (--gfss), not a few-shot result of the paper's tables")
    missing = [key for key in RESULT_KEYS if key not in document]
    if missing:
        raise Unplaceable(f"lacks the key{'s' * (len(missing) > 1)} {', '.join(missing)}")
    runs = document["runs"]
    if not isinstance(runs, list) or not runs or not all(
            isinstance(run, dict) and _is_score(run.get("mIoU")) and _is_score(run.get("FB_IoU")) for run in runs):
        raise Unplaceable("its runs are not a list of runs with mIoU and FB_IoU between 0 and 1")
    if "config_values" in document:
        cfg = _recorded_config(document["config_values"], document["config"])
    else:  # written before test_sccan.py recorded its resolved config
        cfg = _config_of(document["config"])
    if cfg.data_set not in PAPER_EPISODES:  # FSS-1000, one's own data: a section of their own
        class_ids = document.get("class_ids")
    else:
        try:
            class_ids = get_class_lists(cfg.data_set, cfg.split, cfg.use_split_coco)[1]
        except ValueError as error:
            raise Unplaceable(f"its config does not name a fold ({error})") from None
    if document.get("class_ids") is not None and document["class_ids"] != class_ids:
        raise Unplaceable(f"its class ids {document['class_ids']} are not those of fold {cfg.split} of its config "
                          f"{document['config']} ({class_ids}): the config was changed since, or overridden "
                          f"with --opts")
    resize = "hsnet" if document["hsnet_resize"] else "pfenet"
    benchmark = cross_domain_benchmark(cfg)
    if benchmark is not None:  # the column of its target dataset in the cross-domain section
        return Result(shown, CROSS_DOMAIN, cfg.layers, cfg.shot, CROSS_DOMAIN_BENCHMARKS.index(benchmark), "pfenet",
                      cross_domain_deviations(benchmark, document), tuple(run.get("seed") for run in runs),
                      tuple(100 * run["mIoU"] for run in runs), tuple(100 * run["FB_IoU"] for run in runs),
                      _finished_at(document.get("finished_at")))
    deviations = protocol_deviations(cfg, document)
    dataset = TOY if TOY_DATA in deviations else cfg.data_set  # the toy data has PASCAL's layout
    return Result(shown, dataset, cfg.layers, cfg.shot, cfg.split, resize, deviations,
                  tuple(run.get("seed") for run in runs), tuple(100 * run["mIoU"] for run in runs),
                  tuple(100 * run["FB_IoU"] for run in runs), _finished_at(document.get("finished_at")))


def _is_score(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


def _recorded_config(values, config_file) -> Config:
    """The resolved config a result records (``config_values``: the config file after the run's
    ``--opts``), so that an override (workers, shot, data_root, amp, ...) is seen and a config
    file changed or deleted since does not matter. A key the record lacks (a result of an older
    version) takes its schema default."""
    if not isinstance(values, dict):
        raise Unplaceable(f"its config_values are not a mapping of config keys (got {type(values).__name__})")
    try:
        cfg = Config({**default_values(), "config_file": config_file, **values})
    except ConfigError as error:
        raise Unplaceable(f"its config_values cannot be read ({error})") from None
    for key in CELL_KEYS:
        try:
            check_type(key, cfg[key], convert=False)
        except TypeError as error:
            raise Unplaceable(f"its config_values cannot place it: {key} {error}") from None
    return cfg


def _finished_at(recorded) -> Optional[datetime.datetime]:
    """When the run finished (``finished_at``, ISO 8601; a time without a zone is taken as
    UTC), or None when the file does not record it readably."""
    if not isinstance(recorded, str):
        return None
    try:
        moment = datetime.datetime.fromisoformat(recorded)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


def _config_of(recorded):
    """The config a result names: the path as recorded (relative to the working directory it ran
    in, which is usually the repository root), else the same path under this repository, else its
    tail from config/ on (a result unpacked from another machine)."""
    if not isinstance(recorded, str) or not recorded:
        raise Unplaceable(f"its config {recorded!r} is not a path")
    parts = recorded.replace("\\", "/").split("/")
    candidates = [recorded, os.path.join(REPOSITORY_ROOT, recorded)]
    if "config" in parts:
        tail = parts[len(parts) - 1 - parts[::-1].index("config"):]
        candidates.append(os.path.join(REPOSITORY_ROOT, *tail))
    path = next((candidate for candidate in candidates if os.path.isfile(candidate)), None)
    if path is None:
        raise Unplaceable(f"its config {recorded} is not found (nor under {REPOSITORY_ROOT})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # legacy keys: the test ran with them
            return load_config(path)
    except (ValueError, OSError) as error:
        raise Unplaceable(f"its config {recorded} cannot be read ({error})") from None


def cross_domain_benchmark(cfg) -> Optional[str]:
    """The cross-domain target dataset of a result's config, or None: data_set 'deepglobe', 'isic'
    or 'lung', or FSS-1000 tested with a config of config/cross_domain/ (a PASCAL checkpoint)."""
    if cfg.data_set in CROSS_DOMAIN_BENCHMARKS and cfg.data_set != "fss":
        return cfg.data_set
    folder = os.path.basename(os.path.dirname(str(cfg.config_file).replace("\\", "/")))
    return "fss" if cfg.data_set == "fss" and folder == "cross_domain" else None


def cross_domain_deviations(benchmark: str, document: dict) -> Tuple[str, ...]:
    """The note of a cross-domain result's section, and what departs from PATNet's protocol."""
    deviations = ["PATNet's cross-domain benchmark, which the SCCAN paper does not report: a PASCAL-trained "
                  "checkpoint tested on each target dataset (columns); mean and FB-IoU over the four"]
    name = CROSS_DOMAIN_COLUMNS[CROSS_DOMAIN_BENCHMARKS.index(benchmark)]
    if document["test_num"] != CROSS_DOMAIN_EPISODES[benchmark]:
        deviations.append(f"{name}: {document['test_num']} episodes (PATNet {CROSS_DOMAIN_EPISODES[benchmark]})")
    predictor = document.get("predictor")
    if predictor is not None and predictor != TRAINED_PREDICTOR:
        deviations.append(f"predictor: {document.get('weights', '')} (test_sccan.py --{predictor})")
    return tuple(deviations)


def protocol_deviations(cfg, document: dict) -> Tuple[str, ...]:
    """What departs from the paper's protocol in a result (``document``) of config ``cfg``, one
    phrase each; empty for a paper-protocol result."""
    deviations = []
    episodes = document["test_num"]
    if cfg.data_set not in PAPER_EPISODES:
        # No table of the paper to compare with (FSS-1000 follows HSNet's protocol, docs/DATASETS.md):
        # one section per dataset, its results in the fold columns of their configs' split.
        return (f"{DATASET_NAMES.get(cfg.data_set, cfg.data_set)}, which the SCCAN paper does not report "
                f"({episodes} episodes, seed {document['runs'][0].get('seed')})",)
    if episodes != PAPER_EPISODES[cfg.data_set]:
        deviations.append(f"{episodes} episodes (paper {PAPER_EPISODES[cfg.data_set]})")
    folders = os.path.normpath(str(cfg.data_root)).replace("\\", "/").split("/")
    if "toy" in folders or os.path.basename(os.path.dirname(os.path.abspath(str(cfg.config_file)))) == "toy":
        deviations.append(TOY_DATA)
    settings = PAPER_SETTINGS + (() if document["hsnet_resize"] else (("ori_resize", True),))
    settings += (("use_split_coco", True),) if cfg.data_set == "coco" else ()
    deviations += [f"{key} {cfg.get(key)} (paper {value})" for key, value in settings if cfg.get(key) != value]
    first_seed = document["runs"][0].get("seed")
    if first_seed != PAPER_SEED:
        deviations.append(f"seed {first_seed} (paper {PAPER_SEED})")
    weights = str(document.get("weights", ""))
    predictor = document.get("predictor")
    if predictor is not None:  # recorded by test_sccan.py: its --<predictor> flag
        if predictor != TRAINED_PREDICTOR:
            deviations.append(f"predictor: {weights} (test_sccan.py --{predictor})")
    elif weights in BASELINE_WEIGHTS or weights.endswith(BASELINE_SUFFIX):
        deviations.append(f"predictor: {weights}")
    return tuple(deviations)


# ----------------------------------------------------------------------------- the tables
def build_report(collection: Collection, figures: PublishedFigures) -> Report:
    """The sections (per dataset: the paper's † protocol, its ‡ protocol, then each non-paper
    protocol) and the notes of ``collection``'s results beside ``figures``."""
    cells: Dict[tuple, List[Result]] = {}
    for result in sorted(collection.results, key=lambda found: found.path):
        # Section order: per dataset the † protocol, the ‡ protocol, then the others.
        rank = 2 if result.deviations else RESIZES.index(result.resize)
        section = ((_dataset_order(result.dataset), result.dataset), rank, result.deviations, result.resize)
        cells.setdefault(section + ((result.layers, result.shot, result.fold),), []).append(result)
    notes = [_legend(collection, figures)]
    sections, seed_notes, duplicate_notes, markers = [], [], [], {}
    for section_key in sorted({key[:4] for key in cells}):
        dataset, deviations, resize = section_key[0][1], section_key[2], section_key[3]
        if deviations:
            markers[section_key] = marker = f"[{len(markers) + 1}]"
            notes.append(f"{marker} not the paper's protocol: " + "; ".join(
                deviations + (("HSNet's test resize (--hsnet-resize)",) if resize == "hsnet" else ())))
        mark = markers.get(section_key, "†" if resize == "pfenet" else "‡")
        short = f"{DATASET_NAMES.get(dataset, dataset)} {mark}"
        groups = []
        for layers, shot in sorted({key[4][:2] for key in cells if key[:4] == section_key}):
            chosen = {}
            for fold in range(NUM_SPLITS):
                found = cells.get(section_key + ((layers, shot, fold),), [])
                if not found:
                    continue
                shown, why = _shown_result(found)
                chosen[fold] = shown
                where = f"{short} ResNet-{layers} {shot}-shot {_columns(dataset)[fold]}"
                if len(found) > 1:
                    duplicate_notes.append(
                        f"{where}: {len(found)} results; shown: {shown.path} ({why}); not shown: "
                        f"{', '.join(result.path for result in found if result is not shown)}")
                if len(shown.seeds) > 1:
                    seed_notes.append(f"{where}: {len(shown.seeds)} seeds "
                                      f"({', '.join(str(seed) for seed in shown.seeds)})")
            groups.append(_group(dataset, layers, shot, resize, chosen, markers.get(section_key), figures))
        sections.append(Section(dataset, _title(dataset, resize, markers.get(section_key)),
                                _protocol(resize, markers.get(section_key), notes[-1] if deviations else ""),
                                tuple(groups), _columns(dataset)))
    if seed_notes:
        notes.append("a ± b: the mean and standard deviation of a run's seeds; " + "; ".join(seed_notes))
    notes += duplicate_notes
    if collection.others:
        notes.append(f"not shown: {collection.others} other JSON file{'s' * (collection.others > 1)} under "
                     f"{collection.folder}, not few-shot test results (episode files, reports, ...)")
    notes += [f"skipped {path}: {reason}" for path, reason in collection.skipped]
    return Report(tuple(sections), tuple(notes))


def _shown_result(found: List[Result]) -> Tuple[Result, str]:
    """The result shown for a cell (``found``: its results in path order) and why: the newest by
    ``finished_at`` when every result records it (the first in path order among equal times),
    else the first in path order."""
    if len(found) > 1 and all(result.finished_at is not None for result in found):
        newest = max(found, key=lambda result: result.finished_at)  # max keeps the first of equals
        return newest, f"the newest: finished {newest.finished_at.isoformat()}"
    return found[0], "the first in path order" + (
        "; not every one records when it finished" if len(found) > 1 and any(
            result.finished_at is not None for result in found) else "")


def _dataset_order(dataset: str) -> int:
    return list(DATASET_NAMES).index(dataset) if dataset in DATASET_NAMES else len(DATASET_NAMES)


def _legend(collection: Collection, figures: PublishedFigures) -> str:
    source = figures.path
    if os.path.abspath(source).startswith(REPOSITORY_ROOT + os.sep):
        source = os.path.relpath(os.path.abspath(source), REPOSITORY_ROOT)
    return (f"mIoU and FB-IoU in %. ours: {len(collection.results)} result file"
            f"{'s' * (len(collection.results) != 1)} of test_sccan.py under {collection.folder} (paths below "
            f"relative to it); released: the mIoU in the name of the authors' released checkpoint; paper: "
            f"the paper's Table 1 (PASCAL-5i) and Table 2 (COCO-20i); Δ: ours - paper; mean and FB-IoU: "
            f"over folds 0-3, only when all four are there. The source of every published figure: {source}")


def _columns(dataset: str) -> Tuple[str, ...]:
    return CROSS_DOMAIN_COLUMNS if dataset == CROSS_DOMAIN else COLUMNS


def _title(dataset: str, resize: str, marker: Optional[str]) -> str:
    name = DATASET_NAMES.get(dataset, dataset)
    if dataset == CROSS_DOMAIN:
        return f"{name}: a PASCAL-trained checkpoint on each target dataset {marker}"
    if marker:
        return f"{name}: not the paper's protocol {marker}"
    table = PAPER_TABLES.get(dataset, "?")
    if resize == "pfenet":
        return f"{name}: the paper's protocol (Table {table}, rows †: PFENet's test resize, test_sccan.py's default)"
    return f"{name}: the paper's protocol (Table {table}, rows ‡: HSNet's test resize, test_sccan.py --hsnet-resize)"


def _protocol(resize: str, marker: Optional[str], note: str) -> str:
    if marker:
        return note
    return "paper † (PFENet's test resize)" if resize == "pfenet" else "paper ‡ (HSNet's test resize)"


def _group(dataset: str, layers: int, shot: int, resize: str, chosen: Dict[int, Result], marker: Optional[str],
           figures: PublishedFigures) -> Tuple[Row, ...]:
    """The rows of one backbone and shot: ours, and in a paper section the released checkpoints
    (the † rows only: their names are † figures), the paper and the difference."""
    folds = [chosen.get(fold) for fold in range(NUM_SPLITS)]
    ours_folds = [Figure(statistics.mean(result.miou), statistics.stdev(result.miou) if len(result.miou) > 1 else None)
                  if result else None for result in folds]
    complete = all(folds)
    ours = tuple(ours_folds) + (
        Figure(statistics.mean(figure.value for figure in ours_folds)) if complete else None,
        Figure(statistics.mean(statistics.mean(result.fb_iou) for result in folds)) if complete else None)
    label = dict(backbone=f"ResNet-{layers}", shot=str(shot))
    rows = [Row(kind=f"ours {marker}" if marker else "ours", figures=ours, **label)]
    if marker:
        return tuple(rows)
    if resize == "pfenet":
        released = [figures.checkpoint(dataset, layers, shot, fold) for fold in range(NUM_SPLITS)]
        rows.append(Row(kind="released", figures=tuple(
            Figure(entry.miou) if entry is not None and entry.miou is not None else None for entry in released
        ) + (None, None), backbone="", shot=""))
    published = figures.table_row(dataset, layers, shot, resize)
    paper = tuple(Figure(value, decimals=1) if value is not None else None for value in (
        published.miou + (published.miou_mean, published.fb_iou_mean) if published else (None,) * len(COLUMNS)))
    rows.append(Row(kind="paper", figures=paper, backbone="", shot=""))
    rows.append(Row(kind="Δ", backbone="", shot="", figures=tuple(
        Figure(mine.value - theirs.value, signed=True) if mine is not None and theirs is not None else None
        for mine, theirs in zip(ours, paper))))
    return tuple(rows)


# ----------------------------------------------------------------------------- output formats
def render(report: Report, output_format: str) -> str:
    """``report`` as text: 'terminal', 'markdown', 'latex' (booktabs) or 'csv' (the tables only;
    the notes are the caller's to show)."""
    if output_format not in FORMATS:
        raise UserError(f"unknown format {output_format!r}; expected one of {', '.join(FORMATS)}")
    return {"terminal": _terminal, "markdown": _markdown, "latex": _latex, "csv": _csv}[output_format](report)


def _number(figure: Optional[Figure], missing: str, plus_minus: str) -> str:
    if figure is None:
        return missing
    text = f"{figure.value:+.{figure.decimals}f}" if figure.signed else f"{figure.value:.{figure.decimals}f}"
    if text.startswith("-") and float(text) == 0:
        text = "+" + text[1:]  # no -0.00
    return text + (f"{plus_minus}{figure.std:.2f}" if figure.std is not None else "")


def _rows(section: Section, missing: str, plus_minus: str, kind=lambda kind: kind):
    """Each group's rows as lists of cell texts."""
    return [[[row.backbone, row.shot, kind(row.kind)] + [_number(figure, missing, plus_minus)
                                                          for figure in row.figures] for row in group]
            for group in section.groups]


def _terminal(report: Report) -> str:
    blocks = []
    for section in report.sections:
        header = ["backbone", "shot", ""] + list(section.columns)
        lines = [header] + [line for group in _rows(section, "—", " ± ") for line in group]
        widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
        text = [section.title] + ["  ".join(cell.ljust(width) if column < 3 else cell.rjust(width)
                                            for column, (cell, width) in enumerate(zip(line, widths))).rstrip()
                                  for line in lines]
        blocks.append("\n".join(text))
    return "\n\n".join(blocks) + "\n\n" + "".join(f"note: {note}\n" for note in report.notes)


def _markdown(report: Report) -> str:
    blocks = []
    for section in report.sections:
        lines = [f"### {section.title}", "", "| backbone | shot | | " + " | ".join(section.columns) + " |",
                 "|---|---|---|" + "---:|" * len(section.columns)]
        lines += ["| " + " | ".join(line) + " |" for group in _rows(section, "—", " ± ") for line in group]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n\n" + "".join(f"- {note}\n" for note in report.notes)


def _latex(report: Report) -> str:
    blocks = []
    for section in report.sections:
        lines = [f"% {section.title}", r"\begin{tabular}{lll" + "r" * len(section.columns) + "}", r"\toprule",
                 "Backbone & Shot & & " + " & ".join(column[0].upper() + column[1:] for column in section.columns)
                 + r" \\"]
        for group in _rows(section, "--", r" $\pm$ ", lambda kind: kind.replace("Δ", r"$\Delta$")):
            lines.append(r"\midrule")
            lines += [" & ".join(line) + r" \\" for line in group]
        lines += [r"\bottomrule", r"\end{tabular}"]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n\n" + "".join(f"% note: {note}\n" for note in report.notes)


def _csv_dataset(section: Section) -> str:
    """The CSV's dataset label; the cross-domain section says what its fold columns hold."""
    name = DATASET_NAMES.get(section.dataset, section.dataset)
    if section.columns == COLUMNS:
        return name
    return f"{name} (fold_0..fold_3: {', '.join(section.columns[:NUM_SPLITS])})"


def _csv(report: Report) -> str:
    """One line per table row, every label on every line; a multi-seed cell's standard deviation
    in its own column; a missing entry empty."""
    output = io.StringIO()
    writer = csv.writer(output, lineterminator="\n")
    folds = [f"fold_{fold}" for fold in range(NUM_SPLITS)]
    writer.writerow(["dataset", "protocol", "backbone", "shot", "row"]
                    + [name for fold in folds for name in (fold, f"{fold}_std")] + ["mean", "fb_iou"])
    for section in report.sections:
        for group in section.groups:
            for row in group:
                cells = [_number(figure and replace(figure, std=None), "", "").lstrip("+") for figure in row.figures]
                stds = ["" if figure is None or figure.std is None else f"{figure.std:.2f}"
                        for figure in row.figures[:NUM_SPLITS]]
                writer.writerow([_csv_dataset(section), section.protocol,
                                 group[0].backbone, group[0].shot, row.kind]
                                + [value for pair in zip(cells[:NUM_SPLITS], stds) for value in pair]
                                + cells[NUM_SPLITS:])
    return output.getvalue()

