"""Few-shot segmentation episodes exactly as the original BAM/SCCAN `util/dataset.py` (``SemData``).

Pieces:

- `get_class_lists` — the fold's (train classes, val classes), 1-based, ascending.
- `make_fss_lists` — the FSS lists (``data_list`` and ``sub_class_file_list``) built from a base
  list, like the original's ``make_dataset``; `derive_sub_class_file_list` rebuilds a missing
  ``sub_class_file_list`` from a ``data_list`` alone; `load_fss_lists` / `write_fss_lists` read
  and write them in the original's file formats (``img lbl`` lines and a Python dict literal
  ``{1: [('img', 'lbl'), ...], ...}``).
- `SemData` — the episode dataset. ``SemData[i]`` draws one episode with Python's global
  `random` module in exactly the original order, so that a seed (and a DataLoader worker count)
  gives the original's episode stream.

Paths in lists (`resolve_path`): a path that is absolute is used as is; a relative path that
already starts with ``data_root`` is used as is, relative to the working directory like the
original; a path that starts with the original's own data_root for the dataset
(``../data/VOCdevkit2012/VOC2012`` or ``../data/MSCOCO2014``, which the original's ``make_dataset``
joined into every line of the FSS lists shipped in ``lists/``) is re-rooted onto ``data_root``;
any other relative path is joined with ``data_root``.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import warnings
import random
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from model.constants import IGNORE_LABEL
from util import transform as transform_module
from util.episode import EvaluationEpisode, TrainingEpisode, TrainingEpisodeWithBaseLabel
from util.image_files import ImageFileError, describe_classes, read_image_file, read_label_file
from util.io import atomic_write_json, atomic_write_text, read_text, relative_to_cwd

__all__ = [
    "DATA_SETS",
    "PAPER_DATA_SETS",
    "MODES",
    "ANNOTATION_TYPES",
    "MIN_CLASS_PIXELS",
    "EXPECTED_LAYOUT",
    "get_class_lists",
    "ORIGINAL_DATA_ROOTS",
    "resolve_path",
    "relative_to_cwd",
    "read_pair_list",
    "make_fss_lists",
    "derive_sub_class_file_list",
    "write_fss_lists",
    "load_fss_lists",
    "fss_list_paths",
    "binarize_label",
    "base_remap_label",
    "draw_supports",
    "read_support",
    "transform_supports",
    "transform_with_base_label",
    "fill_bounding_boxes",
    "read_image",
    "read_label",
    "SemData",
]

# The paper's datasets, whose folds are fixed; 'semantic' (one's own labels) takes its folds from
# the config (get_class_lists).
PAPER_DATA_SETS = ("pascal", "coco")
DATA_SETS = PAPER_DATA_SETS + ("semantic",)
MODES = ("train", "val")
ANNOTATION_TYPES = ("mask", "bbox")
NUM_CLASSES = {"pascal": 20, "coco": 80}
NUM_SPLITS = 4
# A class counts for an image only if it covers at least 2*32*32 pixels (original constant).
MIN_CLASS_PIXELS = 2 * 32 * 32

EXPECTED_LAYOUT = {
    "pascal": (
        "data_root/JPEGImages/*.jpg, data_root/SegmentationClassAug/*.png (values 0..20, 255); "
        "base list lines '<image path> <label path>' relative to data_root, e.g. "
        "'JPEGImages/2007_000032.jpg SegmentationClassAug/2007_000032.png'"
    ),
    "coco": (
        "data_root/train2014/*.jpg, data_root/val2014/*.jpg, data_root/annotations/train2014/*.png, "
        "data_root/annotations/val2014/*.png (values 0..80, 255); base list lines "
        "'<image path> <label path>' relative to data_root, e.g. "
        "'train2014/COCO_train2014_000000000009.jpg annotations/train2014/COCO_train2014_000000000009.png'"
    ),
    "semantic": (
        "images and single-channel 8-bit label PNGs of class ids (0 background, 1..num_classes, 255 "
        "ignored) anywhere below data_root; base list lines '<image path> <label path>' relative to "
        "data_root, e.g. 'images/0001.jpg labels/0001.png'; the folds are the config's fold_classes"
    ),
}

# The data_root of the original's configs, joined by its make_dataset into every path of the FSS
# lists it wrote (the ones shipped in lists/<data_set>/fss_list).
ORIGINAL_DATA_ROOTS = {"pascal": "../data/VOCdevkit2012/VOC2012", "coco": "../data/MSCOCO2014"}

# The config key of each mode's base list, for the messages.
BASE_LIST_KEYS = {"train": "train_list", "val": "val_list"}

PathPair = Tuple[str, str]


def _check_choice(name: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(repr(a) for a in allowed)}")


def get_class_lists(data_set: str, split: int, use_split_coco: bool = False,
                    fold_classes: Optional[Sequence[Sequence[int]]] = None,
                    num_classes: Optional[int] = None) -> Tuple[List[int], List[int]]:
    """The fold's ``(train_classes, val_classes)``, 1-based class ids in ascending order.

    PASCAL (20 classes): fold i tests 5i+1 .. 5i+5. COCO (80 classes): with ``use_split_coco``
    fold i tests {i+1, i+5, ..., i+77}; without, 20i+1 .. 20i+20. 'semantic' (one's own data):
    fold i tests ``fold_classes[i]`` of the classes 1..``num_classes``. The train classes are the rest.
    """
    _check_choice("data_set", data_set, DATA_SETS)
    if data_set == "semantic":
        return _user_fold(split, fold_classes, num_classes)
    _check_choice("split", split, tuple(range(NUM_SPLITS)))
    class_list = list(range(1, NUM_CLASSES[data_set] + 1))
    if data_set == "pascal":
        val_classes = list(range(5 * split + 1, 5 * split + 6))
    elif use_split_coco:
        val_classes = list(range(split + 1, 81, 4))
    else:
        val_classes = list(range(20 * split + 1, 20 * split + 21))
    train_classes = [c for c in class_list if c not in val_classes]
    return train_classes, val_classes


def _user_fold(split: int, fold_classes, num_classes) -> Tuple[List[int], List[int]]:
    """data_set 'semantic': ``(train classes, test classes)`` of fold ``split`` of the config's
    ``fold_classes``; every mistake named with its config key."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"data_set 'semantic' needs config key num_classes: the class ids 1..num_classes of "
                         f"the labels (at least 2), got {num_classes!r}")
    if not isinstance(fold_classes, (list, tuple)) or not fold_classes or not all(
            isinstance(fold, (list, tuple)) and fold for fold in fold_classes):
        raise ValueError(f"data_set 'semantic' needs config key fold_classes: a list of folds, each a non-empty "
                         f"list of the class ids it tests, e.g. [[1, 2], [3, 4]]; got {fold_classes!r}")
    for fold, classes in enumerate(fold_classes):
        wrong = [c for c in classes if isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= num_classes]
        if wrong or len(set(classes)) != len(classes):
            raise ValueError(f"config key fold_classes: fold {fold} {list(classes)} must name distinct class ids "
                             f"1..{num_classes} (num_classes){f'; not class ids: {wrong}' if wrong else ''}")
    if not isinstance(split, int) or not 0 <= split < len(fold_classes):
        raise ValueError(f"config key split {split!r}: fold_classes defines folds 0..{len(fold_classes) - 1}")
    val_classes = sorted(fold_classes[split])
    train_classes = [c for c in range(1, num_classes + 1) if c not in val_classes]
    return train_classes, val_classes


def base_class_count(data_set: str) -> int:
    """Output classes of the base learner: background + the base classes of a fold (PASCAL 15,
    COCO 60: 16 and 61, as BAM's PSPNet)."""
    return len(get_class_lists(data_set, 0)[0]) + 1


def _strip_root(path: str, root: str) -> Optional[str]:
    """``path`` relative to ``root`` when it lies below it (by whole path components), else None."""
    root = os.path.normpath(root)
    normalised = os.path.normpath(path)
    if root in ("", ".") or not normalised.startswith(root + os.sep):
        return None
    return normalised[len(root) + 1:]


def resolve_path(path: str, data_root: str, data_set: Optional[str] = None) -> str:
    """Resolve a list path against ``data_root`` (the rules are in the module docstring).

    ``data_set`` ('pascal' or 'coco') enables re-rooting the original's data_root
    (`ORIGINAL_DATA_ROOTS`), so that the shipped FSS lists work wherever the data lives.
    """
    if os.path.isabs(path):
        return path
    if data_root and _strip_root(path, data_root) is not None:
        return path
    if data_set is not None:
        below_original_root = _strip_root(path, ORIGINAL_DATA_ROOTS.get(data_set, ""))
        if below_original_root is not None:
            return os.path.join(data_root, below_original_root)
    return os.path.join(data_root, path)


def read_pair_list(list_path: str, warn_repeats: bool = True) -> List[Tuple[str, str, int]]:
    """Read ``<image path> <label path>`` lines -> ``[(image, label, line_number), ...]`` (paths unresolved).

    Blank lines are skipped; any other line without exactly two fields is an error naming the
    file and the line number. Repeated lines are kept, as the original keeps them (each copy is
    its own query and support candidate), with a warning naming their line numbers.
    """
    pairs = []
    # UTF-8 (a stray byte is an error naming the file and the line); universal newlines, as open().
    with io.StringIO(read_text(list_path, "a list file"), newline=None) as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                spaces = " (list paths cannot contain spaces)" if len(fields) > 2 else ""
                raise ValueError(
                    f"{list_path}:{line_number}: malformed list line {line.rstrip()!r}: {len(fields)} "
                    f"field{'s' * (len(fields) > 1)}, expected '<image path> <label path>'{spaces}"
                )
            pairs.append((fields[0], fields[1], line_number))
    if warn_repeats:
        _warn_repeated_lines(list_path, pairs)
    return pairs


def _warn_repeated_lines(list_path: str, pairs: Sequence[Tuple[str, str, int]]) -> None:
    line_numbers: Dict[PathPair, List[int]] = {}
    for image, label, line_number in pairs:
        line_numbers.setdefault((image, label), []).append(line_number)
    repeated = [(pair, numbers) for pair, numbers in line_numbers.items() if len(numbers) > 1]
    if not repeated:
        return
    shown = "; ".join(f"lines {', '.join(map(str, numbers))}: '{image} {label}'"
                      for (image, label), numbers in repeated[:3])
    more = f" (and {len(repeated) - 3} more repeated pairs)" if len(repeated) > 3 else ""
    warnings.warn(f"{list_path} repeats lines: {shown}{more}; every copy is used (a query and a support "
                  f"candidate of its own, as in the original): remove the repeats to count each image once",
                  stacklevel=3)


def read_image(path: str) -> np.ndarray:
    """Read an RGB image as float32 ``(H, W, 3)`` (cv2 BGR -> RGB, as the original); a missing or
    truncated file is refused (libjpeg would fill a cut-off JPEG with grey)."""
    image = read_image_file(path)
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.float32(image)


def read_label(path: str, data_set: Optional[str] = None, num_classes: Optional[int] = None) -> np.ndarray:
    """Read a label map as uint8 ``(H, W)``: the original's ``cv2.imread(path, IMREAD_GRAYSCALE)``
    for every proper label. A missing, truncated, colour (e.g. VOC's palette PNG expanded to RGB)
    or 16-bit file is refused, naming it; with ``data_set``, so are values that are no class of
    that dataset, background or 255 (the original scores them silently as background).
    ``num_classes``: the class count of a dataset without a fixed one ('semantic')."""
    count = num_classes or NUM_CLASSES.get(data_set)
    if data_set is None or count is None:
        return read_label_file(path)
    return read_label_file(path, count, IGNORE_LABEL, expected=describe_classes(count, data_set, IGNORE_LABEL))


def _label_classes(label: np.ndarray) -> List[int]:
    """Classes present in a label map minus {0, 255}, ascending (np.unique order, as the original)."""
    return [int(c) for c in np.unique(label) if c != 0 and c != IGNORE_LABEL]


def _read_list_label(label_path: str, data_root: str, data_set: Optional[str], where: str,
                     num_classes: Optional[int] = None) -> np.ndarray:
    try:
        return read_label(resolve_path(label_path, data_root, data_set), data_set, num_classes)
    except (ImageFileError, FileNotFoundError) as error:
        raise type(error)(f"{where}: {error}") from None


def _counted_classes(label: np.ndarray, classes: Sequence[int], class_set: set) -> List[int]:
    """The classes of ``class_set`` among ``classes`` that cover >= 2048 pixels of ``label``."""
    return [c for c in classes if c in class_set and np.count_nonzero(label == c) >= MIN_CLASS_PIXELS]


def make_fss_lists(
    data_root: str,
    base_list: str,
    class_list: Sequence[int],
    filter_intersection: bool,
    show_progress: bool = True,
    data_set: Optional[str] = None,
    num_classes: Optional[int] = None,
) -> Tuple[List[PathPair], Dict[int, List[PathPair]]]:
    """Build the FSS lists from a base list, in its order, like the original's ``make_dataset``.

    For each line: the label's classes minus {0, 255}; with ``filter_intersection`` (training)
    the image is skipped unless all its classes are in ``class_list``; a class of ``class_list``
    counts if it covers >= 2048 pixels; the image joins ``data_list`` if at least one class counts
    and ``sub_class_file_list[c]`` for every counting class c.

    Returns ``(data_list, sub_class_file_list)`` with the paths as written in the base list
    (typically relative to ``data_root``); ``sub_class_file_list`` has a key for every class of
    ``class_list`` (ascending). ``data_set`` is passed on to `resolve_path`.
    """
    class_set = set(class_list)
    pairs = read_pair_list(base_list)
    data_list: List[PathPair] = []
    sub_class_file_list: Dict[int, List[PathPair]] = {c: [] for c in sorted(class_list)}
    for image_path, label_path, line_number in tqdm(
        pairs, desc=f"building FSS lists from {os.path.basename(base_list)}", disable=not show_progress
    ):
        label = _read_list_label(label_path, data_root, data_set, f"{base_list}:{line_number}", num_classes)
        classes = _label_classes(label)
        if filter_intersection and not set(classes).issubset(class_set):
            continue
        counted = _counted_classes(label, classes, class_set)
        if counted:
            item = (image_path, label_path)
            data_list.append(item)
            for c in counted:
                sub_class_file_list[c].append(item)
    return data_list, sub_class_file_list


def derive_sub_class_file_list(
    data_root: str,
    data_list_path: str,
    class_list: Sequence[int],
    show_progress: bool = True,
    data_set: Optional[str] = None,
    num_classes: Optional[int] = None,
) -> Dict[int, List[PathPair]]:
    """Rebuild the ``sub_class_file_list`` that belongs to an existing ``data_list`` file.

    The original's ``make_dataset`` writes both lists in one pass over the base list, so
    ``sub_class_file_list[c]`` is exactly the ``data_list`` entries, in ``data_list`` order, in
    which class c covers >= 2048 pixels (every entry already passed ``filter_intersection``). No
    base list is needed, which is why this reproduces the original's file even where its base
    list order is unknown (COCO training). Paths are kept as written in ``data_list``.
    """
    class_set = set(class_list)
    sub_class_file_list: Dict[int, List[PathPair]] = {c: [] for c in sorted(class_list)}
    without_class = []
    for image_path, label_path, line_number in tqdm(
        read_pair_list(data_list_path, warn_repeats=False),  # the caller's load_fss_lists warns
        desc=f"deriving the class lists of {os.path.basename(data_list_path)}", disable=not show_progress,
    ):
        label = _read_list_label(label_path, data_root, data_set, f"{data_list_path}:{line_number}", num_classes)
        counted = _counted_classes(label, _label_classes(label), class_set)
        if not counted:
            without_class.append(line_number)
        for c in counted:
            sub_class_file_list[c].append((image_path, label_path))
    if without_class:
        warnings.warn(
            f"{data_list_path}: {len(without_class)} entries (lines {without_class[:5]}...) have no class of "
            f"{sorted(class_set)} covering {MIN_CLASS_PIXELS} pixels in their label; these labels differ from "
            f"the ones the list was built from", stacklevel=2,
        )
    return sub_class_file_list


def fss_list_paths(list_root: str, mode: str, split: int) -> Tuple[str, str]:
    """``(<list_root>/<mode>/data_list_<split>.txt, <list_root>/<mode>/sub_class_file_list_<split>.txt)``."""
    directory = os.path.join(list_root, mode)
    return (
        os.path.join(directory, f"data_list_{split}.txt"),
        os.path.join(directory, f"sub_class_file_list_{split}.txt"),
    )


def _sub_class_file_list_text(sub_class_file_list: Dict[int, List[PathPair]]) -> str:
    """The original's ``str(dict)`` of ``(image, label)`` tuples."""
    return str({int(c): [(str(image), str(label)) for image, label in items] for c, items in sub_class_file_list.items()})


def write_fss_lists(
    data_list_path: str,
    sub_class_file_list_path: str,
    data_list: Sequence[PathPair],
    sub_class_file_list: Dict[int, List[PathPair]],
) -> None:
    """Write the FSS lists in the original formats (``img lbl`` lines; ``str(dict)`` of tuples)."""
    atomic_write_text(data_list_path, "".join(f"{image} {label}\n" for image, label in data_list))
    atomic_write_text(sub_class_file_list_path, _sub_class_file_list_text(sub_class_file_list))


def load_fss_lists(
    data_list_path: str, sub_class_file_list_path: str, warn_repeats: bool = True
) -> Tuple[List[PathPair], Dict[int, List[PathPair]]]:
    """Read FSS lists written by `write_fss_lists` or by BAM/SCCAN (paths unresolved).

    The dict literal is parsed with `ast.literal_eval` (never `eval`): the files are shared
    between users and must not execute code.
    """
    data_list = [(image, label) for image, label, _ in read_pair_list(data_list_path, warn_repeats)]
    text = read_text(sub_class_file_list_path, "a list file")
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError) as error:
        raise ValueError(
            f"{sub_class_file_list_path}: not a Python dict literal {{class: [('img', 'lbl'), ...]}} ({error})"
        ) from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{sub_class_file_list_path}: expected a dict literal, got {type(parsed).__name__}")
    sub_class_file_list: Dict[int, List[PathPair]] = {}
    for key, items in parsed.items():
        if not isinstance(key, int) or not isinstance(items, (list, tuple)):
            raise ValueError(f"{sub_class_file_list_path}: entry {key!r} is not 'int: [(img, lbl), ...]'")
        pairs = []
        for item in items:
            if not (isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(p, str) for p in item)):
                raise ValueError(f"{sub_class_file_list_path}: class {key}: malformed item {item!r}; expected ('img', 'lbl')")
            pairs.append((item[0], item[1]))
        sub_class_file_list[key] = pairs
    return data_list, sub_class_file_list


def binarize_label(label: np.ndarray, class_chosen: int) -> np.ndarray:
    """uint8 ``(H, W)``: 1 where ``label == class_chosen``, 255 where 255, 0 elsewhere (a new array)."""
    binary = np.zeros_like(label)
    binary[label == class_chosen] = 1
    binary[label == IGNORE_LABEL] = IGNORE_LABEL
    return binary


def fill_bounding_boxes(mask: np.ndarray) -> np.ndarray:
    """Fill the bounding box of every 8-connected component of ``mask == 1`` with 1.

    ``mask``: uint8 ``(H, W)`` with 0/1 values. Returns a new uint8 ``(H, W)`` 0/1 array. Same as
    the original's ``transform_anns(mask, 'bbox')`` (cv2.connectedComponentsWithStats, default
    connectivity 8, then ``cv2.rectangle(mask, (x, y), (x + w, y + h), 1, -1)`` per component).
    """
    binary = (mask == 1).astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    filled = binary.copy()
    for left, top, width, height, _ in stats[1:]:
        # Parity quirk: cv2.rectangle's end point (x + w, y + h) is inclusive, so the original's
        # boxes are one row and one column larger than the component (clipped at the border).
        filled[top:top + height + 1, left:left + width + 1] = 1
    return filled


SOURCE_RECORD_SUFFIX = ".source.json"


def _file_fingerprint(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha1(handle.read()).hexdigest()


def _read_source_record(list_path: str) -> Optional[dict]:
    """The record of the file a list was built from, or None for a list that was not built here
    (the lists shipped from the original repository, or dropped in from BAM/SCCAN releases)."""
    record_path = list_path + SOURCE_RECORD_SUFFIX
    if not os.path.isfile(record_path):
        return None
    try:
        with open(record_path) as handle:
            record = json.load(handle)
    except ValueError as error:
        raise ValueError(f"{record_path}: not a JSON record {{'sha1': ...}} of the file {list_path} was built from "
                         f"({error}); delete it together with {list_path} to rebuild the list") from None
    if not isinstance(record, dict):
        raise ValueError(f"{record_path}: expected a JSON object, got {type(record).__name__}")
    return record


def _source_changed(record: Optional[dict], source_path: Optional[str]) -> bool:
    """True when a list's record names a content of ``source_path`` other than the current one."""
    if record is None or not source_path or not os.path.isfile(source_path):
        return False
    return record.get("sha1") != _file_fingerprint(source_path)


def _write_source_record(list_path: str, source_key: str, source_path: str, data_root: str,
                         classes: Sequence[int]) -> None:
    # The labels under data_root and the class list decide the lists as much as the source's
    # text does: recorded, so that lists built for other data or another fold are rebuilt.
    atomic_write_json(list_path + SOURCE_RECORD_SUFFIX,
                      {source_key: os.path.abspath(source_path), "sha1": _file_fingerprint(source_path),
                       "data_root": os.path.abspath(data_root), "classes": [int(c) for c in classes]}, indent=None)


def _built_for_other_data(record: Optional[dict], data_root: str, classes: Sequence[int]) -> Optional[str]:
    """How a list's record differs from ``data_root`` and ``classes`` (' was built from data_root
    ...'), or None. A record of an earlier version, without them, differs too."""
    if record is None:
        return None
    recorded_root = record.get("data_root")
    if recorded_root is None:
        return " records no data_root (written by an earlier version)"
    if not isinstance(recorded_root, str) or os.path.realpath(recorded_root) != os.path.realpath(data_root):
        return f" was built from data_root {recorded_root!r}, not the configured {os.path.abspath(data_root)!r}"
    if record.get("classes") != [int(c) for c in classes]:
        return f" was built for the classes {record.get('classes')}, not {list(classes)}"
    return None


def _default_list_root(data_set: str) -> str:
    # Relative to the working directory, like the original's './lists/<data_set>/fss_list/'.
    return os.path.join(".", "lists", data_set, "fss_list")


def draw_supports(files: Sequence[PathPair], query: PathPair, shot: int) -> List[PathPair]:
    """``shot`` distinct support pairs of ``files`` that are not the query, with the original's
    draws from `random`: per shot, ``random.randint(1, n) - 1`` is drawn and thrown away (parity
    quirk: the candidate path starts equal to the query's path, so the loop below always runs),
    then drawn again while the pair is the query or the index was already chosen."""
    num_files = len(files)
    support_indices: List[int] = []
    supports: List[PathPair] = []
    for _ in range(shot):
        support_index = random.randint(1, num_files) - 1
        support_pair = query
        while support_pair == query or support_index in support_indices:
            support_index = random.randint(1, num_files) - 1
            support_pair = tuple(files[support_index])
        support_indices.append(support_index)
        supports.append(support_pair)
    return supports


def read_support(image_path: str, label_path: str, class_chosen: int, ann_type: str = "mask",
                 data_set: Optional[str] = None, num_classes: Optional[int] = None):
    """A support image and its label: 1 where ``class_chosen``, boxes for ``ann_type`` 'bbox',
    then 255 where the label was 255 (restored after the box filling, as the original does).
    ``data_set`` checks the label's values (`read_label`).
    Returns (image float32 (H, W, 3), label uint8 (H, W))."""
    support_image = read_image(image_path)
    raw_support_label = read_label(label_path, data_set, num_classes)
    support_label = np.zeros_like(raw_support_label)
    support_label[raw_support_label == class_chosen] = 1
    if ann_type == "bbox":
        support_label = fill_bounding_boxes(support_label)
    support_label[raw_support_label == IGNORE_LABEL] = IGNORE_LABEL
    if support_image.shape[:2] != support_label.shape[:2]:
        raise ValueError(
            f"support image and label sizes differ: {image_path!r} is "
            f"{support_image.shape[0]}x{support_image.shape[1]}, {label_path!r} is "
            f"{support_label.shape[0]}x{support_label.shape[1]}"
        )
    return support_image, support_label


def transform_supports(transform, support_images, support_labels, names: Optional[Sequence[str]] = None
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Transform the supports in shot order and stack them as the original does: in REVERSE shot
    order (parity quirk: it prepends each next shot, so s_x[0] is the last shot). Returns
    (s_x (K, 3, H, W), s_y (K, H, W)). ``names`` (the image paths) name a support the transform
    refuses (e.g. too elongated for val_size)."""
    transformed = []
    for number, (image, label) in enumerate(zip(support_images, support_labels)):
        try:
            transformed.append(transform(image, label))
        except ValueError as error:
            if names is None:
                raise
            raise ValueError(f"support image {names[number]!r}: {error}") from None
    try:
        s_x = torch.stack([pair[0] for pair in reversed(transformed)], 0)
        s_y = torch.stack([pair[1] for pair in reversed(transformed)], 0)
    except RuntimeError as error:
        raise ValueError(
            f"supports have different sizes after the transform ({error}); use a transform with a "
            "fixed output size (Crop or test_Resize)"
        ) from None
    return s_x, s_y


def base_remap_label(label: np.ndarray, base_classes: Sequence[int]) -> np.ndarray:
    """A label in the base learner's numbering (BAM's ``label_b``): base class c -> its index in
    ``base_classes`` + 1, every other class and the background -> 0, 255 kept. uint8 (H, W)."""
    lookup = np.zeros(256, np.uint8)
    lookup[IGNORE_LABEL] = IGNORE_LABEL
    for index, class_id in enumerate(base_classes):
        lookup[class_id] = index + 1
    return lookup[label]


def transform_with_base_label(transform, image: np.ndarray, label: np.ndarray, class_chosen: int,
                              base_classes: Sequence[int]):
    """Transform a training query with its binary episode label AND its base label (BAM's
    ``transform_tri``), with exactly the draws of ``transform(image, binarize_label(label,
    class_chosen))``, so that serving the base label never changes the episode stream.

    One label map carries both: the base label with the values 1 and (index of class_chosen + 1)
    swapped. Its pixels equal to 1 are exactly the episode class, so the crop's retry test
    (``label == 1`` pixels) sees the same counts; every other step moves values without reading
    them (nearest interpolation, padding with the ignore label). Returns (image, episode label
    (H, W) int64 {0, 1, 255}, base label (H, W) int64)."""
    base_label = base_remap_label(label, base_classes)
    chosen_value = list(base_classes).index(class_chosen) + 1
    carried = base_label.copy()
    carried[base_label == chosen_value] = 1
    carried[base_label == 1] = chosen_value
    image, carried = transform(image, carried)
    episode_label = torch.zeros_like(carried)
    episode_label[carried == 1] = 1
    padding = carried > len(base_classes)  # 255 and any other padding value stay as they are
    episode_label[padding] = carried[padding]
    base_label = carried.clone()
    base_label[carried == 1] = chosen_value
    base_label[carried == chosen_value] = 1
    return image, episode_label, base_label


class SemData(Dataset):
    """Episode dataset of the original's ``SemData`` (BAM/SCCAN ``util/dataset.py``).

    Args:
        split: fold 0..3.
        shot: K supports per episode.
        data_root: dataset root (see `EXPECTED_LAYOUT`).
        data_list: base list (``<image> <label>`` lines); needed only when the FSS lists must be
            built (they are kept under ``list_root`` and reused when present).
        data_set: 'pascal', 'coco' (the toy dataset is 'pascal') or 'semantic' (one's own).
        use_split_coco: COCO fold definition (see `get_class_lists`).
        transform: ``t(image, label) -> (image tensor (3, H, W), label tensor (H, W))`` applied to
            the query then to each support; None means `transform.ToTensor` only.
        mode: 'train' (train classes, filter_intersection) or 'val' (val classes).
        ann_type: 'mask' or 'bbox' (support labels become filled boxes).
        list_root: FSS list folder; None or '' means ``./lists/<data_set>/fss_list``
            (cwd-relative, as the original), where the original's lists are shipped. Files:
            ``<list_root>/<mode>/data_list_<split>.txt`` and
            ``<list_root>/<mode>/sub_class_file_list_<split>.txt``; see `_prepare_fss_lists` for
            which of them are written.
        show_progress: tqdm bar while building the lists.
        base_label: training with a base learner (BAM's ensemble): each training item also
            carries the query label in the base numbering (:func:`base_remap_label`), transformed
            with the same draws (:func:`transform_with_base_label`); off, the items are unchanged.
        fold_classes, num_classes: data_set 'semantic' (one's own labels): the test classes of
            each fold and the class count (:func:`get_class_lists`).

    ``dataset[i]`` returns a named tuple (util/episode.py) whose items read, by position, as the
    original's: for train a :class:`~util.episode.TrainingEpisode` ``(query_image (3,H,W)
    float32, query_label (H,W) int64, support_images (K,3,H,W) float32, support_labels (K,H,W)
    int64, class_index [int])`` (the original's ``image, label, s_x, s_y, subcls_list``); for val
    an :class:`~util.episode.EvaluationEpisode`, the same plus ``raw_label`` (the untransformed
    binarised query label, int64 ``(H0, W0)``). With ``base_label`` a training item is a
    :class:`~util.episode.TrainingEpisodeWithBaseLabel` ending with the base label (H, W) int64
    (BAM returns it third, as ``label_b``; here it comes last so that the first five items read
    the same either way).
    ``s_x[0]`` is the LAST shot (the original's stacking order).
    """

    def __init__(
        self,
        split: int = 0,
        shot: int = 1,
        data_root: Optional[str] = None,
        data_list: Optional[str] = None,
        data_set: str = "pascal",
        use_split_coco: bool = False,
        transform=None,
        mode: str = "train",
        ann_type: str = "mask",
        list_root: Optional[str] = None,
        show_progress: bool = True,
        base_label: bool = False,
        fold_classes: Optional[Sequence[Sequence[int]]] = None,
        num_classes: Optional[int] = None,
    ):
        _check_choice("data_set", data_set, DATA_SETS)
        if data_set != "semantic":  # the user's folds are checked by get_class_lists
            _check_choice("split", split, tuple(range(NUM_SPLITS)))
        _check_choice("mode", mode, MODES)
        _check_choice("ann_type", ann_type, ANNOTATION_TYPES)
        if not isinstance(shot, int) or shot < 1:
            raise ValueError(f"shot must be a positive int, got {shot!r}")
        if base_label and mode != "train":
            raise ValueError("base_label serves the base learner's training label: mode 'train' only")
        if data_root is None or not os.path.isdir(data_root):
            raise FileNotFoundError(
                f"data_root {data_root!r}{relative_to_cwd(data_root)} does not exist or is not a folder; "
                f"expected layout: "
                f"{EXPECTED_LAYOUT[data_set]}"
            )
        self.split = split
        self.shot = shot
        self.data_root = data_root
        self.data_set = data_set
        self.mode = mode
        self.ann_type = ann_type
        self.transform = transform
        self.base_label = base_label
        self.num_classes = num_classes if data_set == "semantic" else NUM_CLASSES[data_set]
        self.train_classes, self.val_classes = get_class_lists(data_set, split, use_split_coco, fold_classes,
                                                               num_classes)
        # The mode's class list: episode classes and subcls indices come from it.
        self.class_list = self.train_classes if mode == "train" else self.val_classes
        # None or '' (the configs' spelling of 'default') -> the original's ./lists/<data_set>/fss_list.
        self.list_root = list_root if list_root else _default_list_root(data_set)
        self.data_list_path, self.sub_class_file_list_path = fss_list_paths(self.list_root, mode, split)

        self._check_list_paths(data_list)
        built = self._prepare_fss_lists(data_list, show_progress)
        # Repeated lines of lists built here were named in the base list, with its line numbers.
        raw_data_list, raw_sub_lists = load_fss_lists(self.data_list_path, self.sub_class_file_list_path,
                                                      warn_repeats=not built)
        self.data_list: List[PathPair] = [self._resolve_pair(pair) for pair in raw_data_list]
        self.sub_class_file_list: Dict[int, List[PathPair]] = {
            c: [self._resolve_pair(pair) for pair in items] for c, items in raw_sub_lists.items()
        }
        self._check_lists()

    # ----------------------------------------------------------------------------- construction
    def _check_list_paths(self, base_list: Optional[str]) -> None:
        """Refuse, before any list is read or built, a base list that is a folder and a list_root
        (or a folder or file below it) that is a file where a folder belongs, or the reverse."""
        key = BASE_LIST_KEYS[self.mode]
        if base_list and os.path.isdir(base_list):
            raise ValueError(f"{key} {base_list!r}{relative_to_cwd(base_list)} is a folder, not a base list: "
                             f"expected a text file of '<image path> <label path>' lines; expected layout: "
                             f"{EXPECTED_LAYOUT[self.data_set]}")
        what = (f"list_root is the folder of the FSS lists (<list_root>/{self.mode}/"
                f"{os.path.basename(self.data_list_path)} and {os.path.basename(self.sub_class_file_list_path)})")
        folder = os.path.dirname(self.data_list_path)
        for path in (folder, self.list_root):
            if os.path.exists(path) and not os.path.isdir(path):
                named = "" if path == self.list_root else f": {path}"
                raise ValueError(f"list_root {self.list_root!r}{named} is a file, not a folder; {what}")
        parent = os.path.abspath(folder)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise ValueError(f"list_root {self.list_root!r}: {parent} is a file, not a folder; {what}")
        for path in (self.data_list_path, self.sub_class_file_list_path):
            for file in (path, path + SOURCE_RECORD_SUFFIX):
                if os.path.exists(file) and not os.path.isfile(file):
                    raise ValueError(f"{file} (below list_root {self.list_root!r}) is a folder, not a list "
                                     f"file: remove it, or set list_root to another folder")

    def _check_list_folder_writable(self) -> None:
        # Before building (minutes for COCO), not when the lists are written after it.
        parent = os.path.abspath(os.path.dirname(self.data_list_path))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(f"list_root {self.list_root!r}: cannot write the FSS lists there ({parent} is "
                                  f"read-only or not yours): set list_root to a writable folder")

    def _prepare_fss_lists(self, base_list: Optional[str], show_progress: bool) -> bool:
        """Make sure both FSS list files exist, writing only what is missing or was built here.

        A list without a ``.source.json`` record (shipped from the original repository) is never
        rewritten. A ``data_list`` whose ``sub_class_file_list`` is missing gets it derived from
        itself (`derive_sub_class_file_list`), which is exact; only when both are missing are they
        built from the base list. Lists built here are rebuilt when their source has changed, or
        when they were built from another data_root or for other classes (their record says).
        Returns whether the lists were built from the base list now.
        """
        data_record = _read_source_record(self.data_list_path)
        sub_record = _read_source_record(self.sub_class_file_list_path)
        base_exists = bool(base_list) and os.path.isfile(base_list)
        if not self._data_list_is_current(base_list, base_exists, data_record):
            # Both files were written together from the base list, so a stale or missing
            # data_list leaves no sub_class_file_list worth keeping.
            self._check_sub_list_without_data_list(sub_record)
            self._build_fss_lists(base_list, base_exists, sub_record, show_progress)
            return True
        if not self._sub_list_is_current(sub_record):
            self._derive_sub_list(show_progress)
        return False

    # The warnings below name the caller of SemData: stacklevel counts this helper,
    # _prepare_fss_lists and __init__.
    def _data_list_is_current(self, base_list: Optional[str], base_exists: bool, data_record: Optional[dict]) -> bool:
        """Whether the data_list exists and is kept as it is; warns when it is rebuilt, and refuses
        one built for other data when its base list, needed to rebuild it, is missing."""
        data_path = self.data_list_path
        if not os.path.isfile(data_path):
            return False
        if _source_changed(data_record, base_list):
            warnings.warn(f"{data_path} was built from another version of {base_list}; "
                          f"rebuilding the FSS lists", stacklevel=4)
            return False
        other_data = _built_for_other_data(data_record, self.data_root, self.class_list)
        if other_data is None:
            return True
        if base_exists:
            warnings.warn(f"{data_path}{other_data}; rebuilding the FSS lists", stacklevel=4)
            return False
        if data_record.get("data_root") is not None:  # a real difference, not an older record
            key = BASE_LIST_KEYS[self.mode]
            raise FileNotFoundError(
                f"{data_path}{other_data}, and {key} {base_list!r}, needed to rebuild it, "
                f"{'is not set' if not base_list else 'does not exist'}: set {key}, or set list_root "
                f"to another folder for this data")
        return True

    def _sub_list_is_current(self, sub_record: Optional[dict]) -> bool:
        """Whether the sub_class_file_list beside a current data_list exists and is kept as it is;
        warns when it is derived again."""
        data_path, sub_path = self.data_list_path, self.sub_class_file_list_path
        if not os.path.isfile(sub_path):
            return False
        reason = (f" was derived from another version of {data_path}" if _source_changed(sub_record, data_path)
                  else _built_for_other_data(sub_record, self.data_root, self.class_list))
        if reason is not None:
            warnings.warn(f"{sub_path}{reason}; deriving it again", stacklevel=4)
            return False
        return True

    def _check_sub_list_without_data_list(self, sub_record: Optional[dict]) -> None:
        """Refuse a shipped sub_class_file_list whose data_list is missing (one derived here from a
        data_list that is gone is simply rebuilt)."""
        data_path, sub_path = self.data_list_path, self.sub_class_file_list_path
        if not os.path.isfile(data_path) and os.path.isfile(sub_path) and sub_record is None:
            raise FileNotFoundError(
                f"{sub_path} exists but {data_path} does not; the original's make_dataset writes both "
                f"in one pass, so they cannot be completed from the class lists alone: add the matching "
                f"{os.path.basename(data_path)}, or delete {sub_path} to build both from the base list"
            )

    def _build_fss_lists(self, base_list: Optional[str], base_exists: bool, sub_record: Optional[dict],
                         show_progress: bool) -> None:
        """Build both FSS lists from the base list, with the data_list's source record."""
        key = BASE_LIST_KEYS[self.mode]
        data_path, sub_path = self.data_list_path, self.sub_class_file_list_path
        if not base_exists:
            raise FileNotFoundError(
                f"{key} {base_list!r}{relative_to_cwd(base_list)} not found (the base list, needed to build "
                f"the missing FSS lists {data_path}); expected layout: {EXPECTED_LAYOUT[self.data_set]}"
            )
        if not read_pair_list(base_list, warn_repeats=False):  # make_fss_lists warns
            raise ValueError(f"{key} {base_list!r} is empty (no '<image path> <label path>' lines): the FSS "
                             f"lists are built from it; expected layout: {EXPECTED_LAYOUT[self.data_set]}")
        self._check_list_folder_writable()
        built_data_list, built_sub_lists = make_fss_lists(
            self.data_root, base_list, self.class_list, filter_intersection=(self.mode == "train"),
            show_progress=show_progress, data_set=self.data_set, num_classes=self.num_classes,
        )
        write_fss_lists(data_path, sub_path, built_data_list, built_sub_lists)
        _write_source_record(data_path, "base_list", base_list, self.data_root, self.class_list)
        if sub_record is not None:
            os.remove(sub_path + SOURCE_RECORD_SUFFIX)

    def _derive_sub_list(self, show_progress: bool) -> None:
        """Derive the sub_class_file_list from the data_list beside it, with its source record."""
        self._check_list_folder_writable()
        derived = derive_sub_class_file_list(
            self.data_root, self.data_list_path, self.class_list, show_progress=show_progress, data_set=self.data_set,
            num_classes=self.num_classes
        )
        atomic_write_text(self.sub_class_file_list_path, _sub_class_file_list_text(derived))
        _write_source_record(self.sub_class_file_list_path, "data_list", self.data_list_path, self.data_root,
                             self.class_list)

    def _resolve_pair(self, pair: PathPair) -> PathPair:
        return (resolve_path(pair[0], self.data_root, self.data_set),
                resolve_path(pair[1], self.data_root, self.data_set))

    def _check_lists(self) -> None:
        if not self.data_list:
            record = _read_source_record(self.data_list_path) or {}
            source = (f" of {BASE_LIST_KEYS[self.mode]} {record['base_list']!r}"
                      if isinstance(record.get("base_list"), str) else "")
            raise ValueError(f"{self.data_list_path}: empty data list (no image{source} has a class of "
                             f"{self.class_list} covering {MIN_CLASS_PIXELS} pixels of its label)")
        # The original's support loop never ends when a class has too few distinct images
        # (it must find `shot` of them that differ from the query); fail at construction instead.
        counts = {c: len(self.sub_class_file_list.get(c, [])) for c in self.class_list}
        too_few = {c: n for c, n in counts.items() if n < self.shot + 1}
        if too_few:
            details = ", ".join(f"class {c}: {n} image(s)" for c, n in too_few.items())
            raise ValueError(
                f"{self.sub_class_file_list_path}: {self.mode} split {self.split} needs at least "
                f"shot+1 = {self.shot + 1} images per class for {self.shot}-shot episodes; {details}"
            )
        image_path, label_path = self.data_list[0]
        for path in (image_path, label_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"{path!r} (first entry of {self.data_list_path}) does not exist. Relative list paths "
                    f"are joined with data_root={self.data_root!r}{relative_to_cwd(self.data_root)} unless they already start with it "
                    f"(paths under the original's {ORIGINAL_DATA_ROOTS.get(self.data_set)!r} are moved onto it): "
                    f"check data_root (expected layout: {EXPECTED_LAYOUT[self.data_set]}); if "
                    f"{self.list_root} holds lists made for other data, set list_root to another folder "
                    f"(the shipped lists there are never rewritten)"
                )

    # --------------------------------------------------------------------------------- episodes
    def __len__(self) -> int:
        return len(self.data_list)

    def _sample(self, index: int):
        """Episode choice with the original's draws, in the order of its ``__getitem__``. Returns (episode dict, query label)."""
        image_path, label_path = self.data_list[index]
        label = read_label(label_path, self.data_set, self.num_classes)
        candidates = [c for c in _label_classes(label) if c in self.class_list]
        if not candidates:
            raise ValueError(f"{label_path}: no class of {self.class_list} in the label of data_list entry {index}")
        class_chosen = candidates[random.randint(1, len(candidates)) - 1]

        supports = draw_supports(self.sub_class_file_list[class_chosen], (image_path, label_path), self.shot)
        episode = dict(query=(image_path, label_path), class_chosen=class_chosen, supports=supports)
        return episode, label

    def sample_episode(self, index: int) -> dict:
        """Draw episode ``index``'s choices exactly as `__getitem__` does (same `random` draws).

        Returns ``dict(query=(image_path, label_path), class_chosen=int, supports=[(image_path,
        label_path), ...])`` with K supports in shot order (resolved paths).
        """
        return self._sample(index)[0]

    def load_episode(self, query, class_chosen: int, supports, _query_label: Optional[np.ndarray] = None):
        """Build what `__getitem__` returns for a given episode (no draws for the choice; the
        transforms still draw, query first then supports in shot order): a
        :class:`~util.episode.TrainingEpisode` (with the base label:
        :class:`~util.episode.TrainingEpisodeWithBaseLabel`) in train mode, an
        :class:`~util.episode.EvaluationEpisode` otherwise."""
        image_path, label_path = query
        image = read_image(image_path)
        label = read_label(label_path, self.data_set, self.num_classes) if _query_label is None else _query_label
        if image.shape[:2] != label.shape[:2]:
            raise ValueError(
                f"query image and label sizes differ: {image_path!r} is {image.shape[0]}x{image.shape[1]}, "
                f"{label_path!r} is {label.shape[0]}x{label.shape[1]}"
            )
        query_label = label
        label = binarize_label(label, class_chosen)
        # The original draws the class among the query label's classes and the supports among
        # the images where it covers 2048 pixels: an episode without it (a replayed file, a label
        # changed since the lists were built) would be scored against an empty mask.
        if not (label == 1).any():
            raise ValueError(f"query label {label_path!r} has no pixel of the episode's class {class_chosen}")
        support_images, support_labels = zip(*(read_support(*pair, class_chosen, self.ann_type, self.data_set,
                                                            self.num_classes)
                                               for pair in supports))
        for (_, support_label_path), support_label in zip(supports, support_labels):
            if not (support_label == 1).any():
                raise ValueError(f"support label {support_label_path!r} has no pixel of the episode's class "
                                 f"{class_chosen}")

        raw_label = label.copy()
        transform = self.transform if self.transform is not None else transform_module.ToTensor()
        try:
            if self.base_label:
                image, label, base_label = transform_with_base_label(transform, image, query_label, class_chosen,
                                                                     self.train_classes)
            else:
                image, label = transform(image, label)
        except ValueError as error:
            raise ValueError(f"query image {image_path!r}: {error}") from None
        s_x, s_y = transform_supports(transform, support_images, support_labels,
                                      [image for image, _ in supports])

        if self.mode == "train":
            subcls_list = [self.train_classes.index(class_chosen)]
            if self.base_label:
                return TrainingEpisodeWithBaseLabel(image, label, s_x, s_y, subcls_list, base_label)
            return TrainingEpisode(image, label, s_x, s_y, subcls_list)
        subcls_list = [self.val_classes.index(class_chosen)]
        return EvaluationEpisode(image, label, s_x, s_y, subcls_list, torch.from_numpy(raw_label).long())

    def __getitem__(self, index: int):
        episode, query_label = self._sample(index)
        # Same as load_episode(**sample_episode(index)), without reading the query label twice.
        return self.load_episode(**episode, _query_label=query_label)
