"""Few-shot segmentation episodes exactly as the original BAM/SCCAN `util/dataset.py` (SPEC section 7).

Pieces:

- `get_class_lists` — the fold's (train classes, val classes), 1-based, ascending.
- `make_fss_lists` — the FSS lists (``data_list`` and ``sub_class_file_list``) built from a base
  list; `load_fss_lists` / `write_fss_lists` read and write them in the original's file formats
  (``img lbl`` lines and a Python dict literal ``{1: [('img', 'lbl'), ...], ...}``).
- `SemData` — the episode dataset. ``SemData[i]`` draws one episode with Python's global
  `random` module in exactly the original order, so that a seed (and a DataLoader worker count)
  gives the original's episode stream.

Paths in lists: a path that is absolute is used as is; a relative path that already starts with
``data_root`` (the BAM/SCCAN released lists store ``data_root``-joined paths such as
``../data/VOCdevkit2012/VOC2012/JPEGImages/x.jpg``) is used as is, relative to the working
directory like the original; any other relative path is joined with ``data_root``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import warnings
import random
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from util import transform as transform_module

__all__ = [
    "DATA_SETS",
    "MODES",
    "ANNOTATION_TYPES",
    "MIN_CLASS_PIXELS",
    "EXPECTED_LAYOUT",
    "get_class_lists",
    "resolve_path",
    "read_pair_list",
    "make_fss_lists",
    "write_fss_lists",
    "load_fss_lists",
    "fss_list_paths",
    "binarize_label",
    "fill_bounding_boxes",
    "read_image",
    "read_label",
    "SemData",
]

DATA_SETS = ("pascal", "coco")
MODES = ("train", "val")
ANNOTATION_TYPES = ("mask", "bbox")
NUM_CLASSES = {"pascal": 20, "coco": 80}
NUM_SPLITS = 4
# A class counts for an image only if it covers at least 2*32*32 pixels (original constant).
MIN_CLASS_PIXELS = 2 * 32 * 32
IGNORE_LABEL = 255

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
}

PathPair = Tuple[str, str]


def _check_choice(name: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(repr(a) for a in allowed)}")


def get_class_lists(data_set: str, split: int, use_split_coco: bool = False) -> Tuple[List[int], List[int]]:
    """The fold's ``(train_classes, val_classes)``, 1-based class ids in ascending order.

    PASCAL (20 classes): fold i tests 5i+1 .. 5i+5. COCO (80 classes): with ``use_split_coco``
    fold i tests {i+1, i+5, ..., i+77}; without, 20i+1 .. 20i+20. The train classes are the rest.
    """
    _check_choice("data_set", data_set, DATA_SETS)
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


def resolve_path(path: str, data_root: str) -> str:
    """Resolve a list path: absolute, or already ``data_root``-prefixed, as is; else ``data_root/path``."""
    if os.path.isabs(path):
        return path
    root = os.path.normpath(data_root) if data_root else ""
    if root and root != "." and os.path.normpath(path).startswith(root + os.sep):
        return path
    return os.path.join(data_root, path)


def read_pair_list(list_path: str) -> List[Tuple[str, str, int]]:
    """Read ``<image path> <label path>`` lines -> ``[(image, label, line_number), ...]`` (paths unresolved).

    Blank lines are skipped; any other line without exactly two fields is an error naming the
    file and the line number.
    """
    pairs = []
    with open(list_path, "r") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise ValueError(
                    f"{list_path}:{line_number}: malformed list line {line.rstrip()!r}; "
                    "expected '<image path> <label path>'"
                )
            pairs.append((fields[0], fields[1], line_number))
    return pairs


def read_image(path: str) -> np.ndarray:
    """Read an RGB image as float32 ``(H, W, 3)`` (cv2 BGR -> RGB, as the original)."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path!r} (missing or not a readable image file)")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.float32(image)


def read_label(path: str) -> np.ndarray:
    """Read a label map as uint8 ``(H, W)`` (grayscale)."""
    label = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if label is None:
        raise FileNotFoundError(f"cannot read label {path!r} (missing or not a readable image file)")
    return label


def _label_classes(label: np.ndarray) -> List[int]:
    """Classes present in a label map minus {0, 255}, ascending (np.unique order, as the original)."""
    return [int(c) for c in np.unique(label) if c != 0 and c != IGNORE_LABEL]


def make_fss_lists(
    data_root: str,
    base_list: str,
    class_list: Sequence[int],
    filter_intersection: bool,
    show_progress: bool = True,
) -> Tuple[List[PathPair], Dict[int, List[PathPair]]]:
    """Build the FSS lists from a base list, in its order (SPEC 7).

    For each line: the label's classes minus {0, 255}; with ``filter_intersection`` (training)
    the image is skipped unless all its classes are in ``class_list``; a class of ``class_list``
    counts if it covers >= 2048 pixels; the image joins ``data_list`` if at least one class counts
    and ``sub_class_file_list[c]`` for every counting class c.

    Returns ``(data_list, sub_class_file_list)`` with the paths as written in the base list
    (typically relative to ``data_root``); ``sub_class_file_list`` has a key for every class of
    ``class_list`` (ascending).
    """
    class_set = set(class_list)
    pairs = read_pair_list(base_list)
    data_list: List[PathPair] = []
    sub_class_file_list: Dict[int, List[PathPair]] = {c: [] for c in sorted(class_list)}
    for image_path, label_path, line_number in tqdm(
        pairs, desc=f"building FSS lists from {os.path.basename(base_list)}", disable=not show_progress
    ):
        resolved_label = resolve_path(label_path, data_root)
        label = cv2.imread(resolved_label, cv2.IMREAD_GRAYSCALE)
        if label is None:
            raise FileNotFoundError(
                f"{base_list}:{line_number}: cannot read label {resolved_label!r} "
                f"(missing or not a readable image file)"
            )
        classes = _label_classes(label)
        if filter_intersection and not set(classes).issubset(class_set):
            continue
        counted = [c for c in classes if c in class_set and np.count_nonzero(label == c) >= MIN_CLASS_PIXELS]
        if counted:
            item = (image_path, label_path)
            data_list.append(item)
            for c in counted:
                sub_class_file_list[c].append(item)
    return data_list, sub_class_file_list


def fss_list_paths(list_root: str, mode: str, split: int) -> Tuple[str, str]:
    """``(<list_root>/<mode>/data_list_<split>.txt, <list_root>/<mode>/sub_class_file_list_<split>.txt)``."""
    directory = os.path.join(list_root, mode)
    return (
        os.path.join(directory, f"data_list_{split}.txt"),
        os.path.join(directory, f"sub_class_file_list_{split}.txt"),
    )


def _atomic_write(path: str, text: str) -> None:
    """Write via a temp file in the same folder + os.replace, so readers never see a partial file."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    handle, temp_path = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=".txt")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        # mkstemp creates 0600 files; lists are shared data like the original's plain open().
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp_path, 0o666 & ~umask)
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


def write_fss_lists(
    data_list_path: str,
    sub_class_file_list_path: str,
    data_list: Sequence[PathPair],
    sub_class_file_list: Dict[int, List[PathPair]],
) -> None:
    """Write the FSS lists in the original formats (``img lbl`` lines; ``str(dict)`` of tuples)."""
    _atomic_write(data_list_path, "".join(f"{image} {label}\n" for image, label in data_list))
    literal = {int(c): [(str(image), str(label)) for image, label in items] for c, items in sub_class_file_list.items()}
    _atomic_write(sub_class_file_list_path, str(literal))


def load_fss_lists(
    data_list_path: str, sub_class_file_list_path: str
) -> Tuple[List[PathPair], Dict[int, List[PathPair]]]:
    """Read FSS lists written by `write_fss_lists` or by BAM/SCCAN (paths unresolved).

    The dict literal is parsed with `ast.literal_eval` (never `eval`): the files are shared
    between users and must not execute code.
    """
    data_list = [(image, label) for image, label, _ in read_pair_list(data_list_path)]
    with open(sub_class_file_list_path, "r") as handle:
        text = handle.read()
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


def _base_list_fingerprint(base_list: str) -> str:
    with open(base_list, "rb") as handle:
        return hashlib.sha1(handle.read()).hexdigest()


def _cache_is_stale(data_list_path: str, base_list: Optional[str]) -> bool:
    """True when the cached lists record a base list whose content has changed since.

    Lists dropped in from the BAM/SCCAN releases carry no record and are always used as they are.
    """
    record = data_list_path + ".source.json"
    if not os.path.isfile(record) or not base_list or not os.path.isfile(base_list):
        return False
    with open(record) as handle:
        source = json.load(handle)
    return source.get("sha1") != _base_list_fingerprint(base_list)


def _write_cache_source(data_list_path: str, base_list: str) -> None:
    _atomic_write(data_list_path + ".source.json", json.dumps(
        {"base_list": os.path.abspath(base_list), "sha1": _base_list_fingerprint(base_list)}))


def _default_list_root(data_set: str) -> str:
    # Relative to the working directory, like the original's './lists/<data_set>/fss_list/'.
    return os.path.join(".", "lists", data_set, "fss_list")


class SemData(Dataset):
    """Episode dataset of the original (SPEC 7).

    Args:
        split: fold 0..3.
        shot: K supports per episode.
        data_root: dataset root (see `EXPECTED_LAYOUT`).
        data_list: base list (``<image> <label>`` lines); needed only when the FSS lists must be
            built (they are cached under ``list_root`` and reused when present).
        data_set: 'pascal' or 'coco' (the toy dataset is 'pascal').
        use_split_coco: COCO fold definition (see `get_class_lists`).
        transform: ``t(image, label) -> (image tensor (3, H, W), label tensor (H, W))`` applied to
            the query then to each support; None means `transform.ToTensor` only.
        mode: 'train' (train classes, filter_intersection) or 'val' (val classes).
        ann_type: 'mask' or 'bbox' (support labels become filled boxes).
        list_root: FSS list folder; None or '' means ``./lists/<data_set>/fss_list``
            (cwd-relative, as the original). Files: ``<list_root>/<mode>/data_list_<split>.txt`` and
            ``<list_root>/<mode>/sub_class_file_list_<split>.txt``.
        show_progress: tqdm bar while building the lists.

    ``dataset[i]`` returns, for train: ``(image (3,H,W) float32, label (H,W) int64,
    s_x (K,3,H,W) float32, s_y (K,H,W) int64, subcls_list [int])``; for val the same plus
    ``raw_label`` (the untransformed binarised query label, int64 ``(H0, W0)``).
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
    ):
        _check_choice("data_set", data_set, DATA_SETS)
        _check_choice("split", split, tuple(range(NUM_SPLITS)))
        _check_choice("mode", mode, MODES)
        _check_choice("ann_type", ann_type, ANNOTATION_TYPES)
        if not isinstance(shot, int) or shot < 1:
            raise ValueError(f"shot must be a positive int, got {shot!r}")
        if data_root is None or not os.path.isdir(data_root):
            raise FileNotFoundError(
                f"data_root {data_root!r} does not exist or is not a folder; expected layout: "
                f"{EXPECTED_LAYOUT[data_set]}"
            )
        self.split = split
        self.shot = shot
        self.data_root = data_root
        self.data_set = data_set
        self.mode = mode
        self.ann_type = ann_type
        self.transform = transform
        self.num_classes = NUM_CLASSES[data_set]
        self.train_classes, self.val_classes = get_class_lists(data_set, split, use_split_coco)
        # The mode's class list: episode classes and subcls indices come from it.
        self.class_list = self.train_classes if mode == "train" else self.val_classes
        # None or '' (the configs' spelling of 'default') -> the original's ./lists/<data_set>/fss_list.
        self.list_root = list_root if list_root else _default_list_root(data_set)
        self.data_list_path, self.sub_class_file_list_path = fss_list_paths(self.list_root, mode, split)

        cached = os.path.isfile(self.data_list_path) and os.path.isfile(self.sub_class_file_list_path)
        if cached and _cache_is_stale(self.data_list_path, data_list):
            warnings.warn(f"{self.data_list_path} was built from another version of {data_list}; "
                          f"rebuilding the FSS lists", stacklevel=2)
            cached = False
        if not cached:
            if data_list is None or not os.path.isfile(data_list):
                raise FileNotFoundError(
                    f"base list {data_list!r} not found (needed to build the missing FSS lists "
                    f"{self.data_list_path}); expected layout: {EXPECTED_LAYOUT[data_set]}"
                )
            built_data_list, built_sub_lists = make_fss_lists(
                data_root, data_list, self.class_list, filter_intersection=(mode == "train"),
                show_progress=show_progress,
            )
            write_fss_lists(self.data_list_path, self.sub_class_file_list_path, built_data_list, built_sub_lists)
            _write_cache_source(self.data_list_path, data_list)
        raw_data_list, raw_sub_lists = load_fss_lists(self.data_list_path, self.sub_class_file_list_path)
        self.data_list: List[PathPair] = [self._resolve_pair(pair) for pair in raw_data_list]
        self.sub_class_file_list: Dict[int, List[PathPair]] = {
            c: [self._resolve_pair(pair) for pair in items] for c, items in raw_sub_lists.items()
        }
        self._check_lists()

    # ----------------------------------------------------------------------------- construction
    def _resolve_pair(self, pair: PathPair) -> PathPair:
        return resolve_path(pair[0], self.data_root), resolve_path(pair[1], self.data_root)

    def _check_lists(self) -> None:
        if not self.data_list:
            raise ValueError(f"{self.data_list_path}: empty data list (no image has a class of {self.class_list})")
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
                    f"are joined with data_root={self.data_root!r} unless they already start with it; "
                    f"if the lists were built for another data_root, delete {os.path.join(self.list_root, self.mode)} "
                    f"to rebuild them. Expected layout: {EXPECTED_LAYOUT[self.data_set]}"
                )

    # --------------------------------------------------------------------------------- episodes
    def __len__(self) -> int:
        return len(self.data_list)

    def _sample(self, index: int):
        """Episode choice with the original's draws (SPEC 7 steps 1-5). Returns (episode dict, query label)."""
        image_path, label_path = self.data_list[index]
        label = read_label(label_path)
        candidates = [c for c in _label_classes(label) if c in self.class_list]
        if not candidates:
            raise ValueError(f"{label_path}: no class of {self.class_list} in the label of data_list entry {index}")
        class_chosen = candidates[random.randint(1, len(candidates)) - 1]

        files = self.sub_class_file_list[class_chosen]
        num_files = len(files)
        support_indices: List[int] = []
        supports: List[PathPair] = []
        for _ in range(self.shot):
            # Parity quirk: this first draw is always discarded, because the candidate path below
            # starts equal to the query's path and the loop therefore runs at least once.
            support_index = random.randint(1, num_files) - 1
            support_image_path, support_label_path = image_path, label_path
            while (
                (support_image_path == image_path and support_label_path == label_path)
                or support_index in support_indices
            ):
                support_index = random.randint(1, num_files) - 1
                support_image_path, support_label_path = files[support_index]
            support_indices.append(support_index)
            supports.append((support_image_path, support_label_path))
        episode = dict(query=(image_path, label_path), class_chosen=class_chosen, supports=supports)
        return episode, label

    def sample_episode(self, index: int) -> dict:
        """Draw episode ``index``'s choices exactly as `__getitem__` does (same `random` draws).

        Returns ``dict(query=(image_path, label_path), class_chosen=int, supports=[(image_path,
        label_path), ...])`` with K supports in shot order (resolved paths).
        """
        return self._sample(index)[0]

    def load_episode(self, query, class_chosen: int, supports, _query_label: Optional[np.ndarray] = None):
        """Build the return tuple of `__getitem__` for a given episode (no draws for the choice;
        the transforms still draw, query first then supports in shot order)."""
        image_path, label_path = query
        image = read_image(image_path)
        label = read_label(label_path) if _query_label is None else _query_label
        if image.shape[:2] != label.shape[:2]:
            raise ValueError(
                f"query image and label sizes differ: {image_path!r} is {image.shape[0]}x{image.shape[1]}, "
                f"{label_path!r} is {label.shape[0]}x{label.shape[1]}"
            )
        label = binarize_label(label, class_chosen)

        support_images, support_labels = [], []
        for support_image_path, support_label_path in supports:
            support_image = read_image(support_image_path)
            raw_support_label = read_label(support_label_path)
            support_label = np.zeros_like(raw_support_label)
            support_label[raw_support_label == class_chosen] = 1
            if self.ann_type == "bbox":
                support_label = fill_bounding_boxes(support_label)
            # 255 pixels are restored after the (optional) box filling, as the original does.
            support_label[raw_support_label == IGNORE_LABEL] = IGNORE_LABEL
            if support_image.shape[:2] != support_label.shape[:2]:
                raise ValueError(
                    f"support image and label sizes differ: {support_image_path!r} is "
                    f"{support_image.shape[0]}x{support_image.shape[1]}, {support_label_path!r} is "
                    f"{support_label.shape[0]}x{support_label.shape[1]}"
                )
            support_images.append(support_image)
            support_labels.append(support_label)

        raw_label = label.copy()
        transform = self.transform if self.transform is not None else transform_module.ToTensor()
        image, label = transform(image, label)
        transformed = [transform(support_images[k], support_labels[k]) for k in range(len(supports))]
        # Parity quirk: the original builds s_x by prepending each next shot, so the supports are
        # stacked in REVERSE shot order (s_x[0] is the last shot).
        try:
            s_x = torch.stack([pair[0] for pair in reversed(transformed)], 0)
            s_y = torch.stack([pair[1] for pair in reversed(transformed)], 0)
        except RuntimeError as error:
            raise ValueError(
                f"supports have different sizes after the transform ({error}); use a transform with a "
                "fixed output size (Crop or test_Resize)"
            ) from None

        if self.mode == "train":
            subcls_list = [self.train_classes.index(class_chosen)]
            return image, label, s_x, s_y, subcls_list
        subcls_list = [self.val_classes.index(class_chosen)]
        return image, label, s_x, s_y, subcls_list, torch.from_numpy(raw_label).long()

    def __getitem__(self, index: int):
        episode, query_label = self._sample(index)
        # Same as load_episode(**sample_episode(index)), without reading the query label twice.
        return self.load_episode(**episode, _query_label=query_label)
