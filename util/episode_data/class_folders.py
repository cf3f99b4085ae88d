"""Few-shot episodes from class folders: FSS-1000's layout, and the layout of one's own data.

Layout: ``<root>/<class name>/<id>.jpg`` (or ``.jpeg``) with its mask ``<root>/<class name>/<id>.png``
beside it. A split is a text file of class names, one per line (HSNet's ``data/splits/fss/
{trn,val,test}.txt``, shipped as lists/fss/). Classes are used in sorted name order; the
``class_index`` of an episode indexes that sorted list.

Masks (`MaskRule`): a mask is read as one grey channel (a colour or palette mask is converted
with the ITU-R 601 luma of PIL's ``convert('L')``, as HSNet reads FSS-1000); a pixel is
foreground when its value is at least ``foreground_threshold``, else background; with
``ignore_value`` set, pixels of exactly that value are ignored (255 in the episode labels).
The default threshold 1 makes every non-zero value foreground (0/1 and 0/255 masks alike); the
FSS-1000 configs use 128, HSNet's ``read_mask`` (juhongm999/hsnet ``data/fss.py``:
``mask < 128 -> 0``, ``mask >= 128 -> 1``).

Episodes:

* training (`mode` 'train'): item ``i`` has the ``i``-th image of the split as its query (every
  image once per epoch, like SemData's data list) and ``shot`` distinct other images of its class
  as supports, drawn with Python's global `random` (seeded per epoch and worker by the loop, like
  SemData), then the training transform;
* evaluation (`mode` 'val'): ``episodes`` items. Episode ``i``'s query is image ``i mod N`` of the
  split in HSNet's order (classes sorted by name, images sorted by file name: ``1, 10, 2, ...``);
  each support is drawn uniformly among the images of the query's class, numbered in natural
  order (``1, 2, ..., 10``), again while it is the query; supports are drawn independently, so
  two shots may be the same image (HSNet ``data/fss.py`` ``sample_episode``:
  ``np.random.choice(range(1, 11), 1, replace=False)`` until it is not the query). The draws of
  all episodes come, in episode order, from one ``numpy.random.RandomState(seed)``: with FSS-1000
  (images ``1.jpg`` .. ``10.jpg``), 2,400 episodes and seed 0 these are HSNet's test episodes
  (its ``test.py`` seeds numpy with 0 and loads with no workers). They are drawn in the main
  process when the seed is set (:meth:`ClassFolderData.set_episode_seed`, which the evaluation
  protocol calls with each run's seed), so they do not depend on the loader's worker count.
"""
from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from model.constants import IGNORE_LABEL
from util import transform as transform_module
from util.dataset import ANNOTATION_TYPES, MODES, fill_bounding_boxes, read_image, transform_supports
from util.episode import EvaluationEpisode, TrainingEpisode
from util.image_files import LABEL_READ_FLAGS, ImageFileError, read_checked
from util.io import read_text, relative_to_cwd

__all__ = ["IMAGE_EXTENSIONS", "MASK_EXTENSION", "CLASS_FOLDER_LAYOUT", "MaskRule", "read_class_split",
           "class_images", "natural_key", "read_mask", "mask_to_grey", "read_labelled_image", "ClassFolderData"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg")
MASK_EXTENSION = ".png"
CLASS_FOLDER_LAYOUT = ("data_root/<class name>/<id>.jpg with the mask data_root/<class name>/<id>.png "
                       "(0 background, foreground from foreground_threshold up); split files of class "
                       "names, one per line")

PathPair = Tuple[str, str]


@dataclass(frozen=True)
class MaskRule:
    """How a mask's grey values become an episode label: ``value >= foreground_threshold`` is
    foreground (1), below it background (0); ``ignore_value`` (None: none) is ignored (255)."""
    foreground_threshold: int = 1
    ignore_value: Optional[int] = None

    def __post_init__(self):
        if not 1 <= self.foreground_threshold <= 255:
            raise ValueError(f"foreground_threshold must be 1..255, got {self.foreground_threshold}")
        if self.ignore_value is not None and not 0 <= self.ignore_value <= 255:
            raise ValueError(f"the mask's ignore value must be 0..255 or none, got {self.ignore_value}")

    def binarise(self, grey: np.ndarray) -> np.ndarray:
        """uint8 (H, W) grey mask -> uint8 (H, W) label of 0, 1 and 255 (a new array)."""
        label = (grey >= self.foreground_threshold).astype(np.uint8)
        if self.ignore_value is not None:
            label[grey == self.ignore_value] = IGNORE_LABEL
        return label


def read_class_split(path: str, what: str = "split file") -> List[str]:
    """The class names of a split file (one per line; blank lines skipped), sorted as HSNet
    sorts them (``sorted(categories)``). A repeated name or an empty file is an error."""
    try:
        text = read_text(path, f"a {what}")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path!r}{relative_to_cwd(path)} not found (a text file of class "
                                f"names, one per line)") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{what} {path!r} names no class (expected class folder names, one per line)")
    seen = set()
    for number, name in enumerate(names, start=1):
        if name in seen:
            raise ValueError(f"{what} {path!r} names the class {name!r} twice (entry {number})")
        seen.add(name)
    return sorted(names)


def natural_key(name: str) -> tuple:
    """Sort key putting '2' before '10' (digit runs compared as numbers)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", name) if part)


def class_images(data_root: str, class_name: str) -> List[PathPair]:
    """(image, mask) paths of a class folder, sorted by image file name (HSNet's order). Images
    without a mask are left out here (python -m tools.check_data names them)."""
    folder = os.path.join(data_root, class_name)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"class folder {folder!r}{relative_to_cwd(folder)} not found (named by the "
                                f"split; expected layout: {CLASS_FOLDER_LAYOUT})")
    pairs = []
    for name in sorted(os.listdir(folder)):
        stem, extension = os.path.splitext(name)
        mask = os.path.join(folder, stem + MASK_EXTENSION)
        if extension.lower() in IMAGE_EXTENSIONS and os.path.isfile(mask):
            pairs.append((os.path.join(folder, name), mask))
    return pairs


def mask_to_grey(mask: np.ndarray) -> np.ndarray:
    """A decoded mask (H, W) or (H, W, 3|4) BGR[A] uint8 -> (H, W) uint8 grey, colour converted
    with PIL's ``convert('L')`` arithmetic (R*19595 + G*38470 + B*7471 + 2**15) >> 16; alpha unused."""
    if mask.ndim == 2:
        return mask
    blue, green, red = (mask[:, :, channel].astype(np.uint32) for channel in range(3))
    return ((red * 19595 + green * 38470 + blue * 7471 + 0x8000) >> 16).astype(np.uint8)


def read_mask(path: str, rule: MaskRule) -> np.ndarray:
    """A mask file -> uint8 (H, W) episode label {0, 1, 255} (`MaskRule`). A missing, truncated
    or 16-bit file is refused, naming it."""
    mask = read_checked(path, LABEL_READ_FLAGS, "mask")
    if mask.dtype != np.uint8:
        raise ImageFileError(f"mask {path!r} is a {mask.dtype.itemsize * 8}-bit image; expected an 8-bit "
                             f"mask (0 background, foreground from the threshold up)")
    return rule.binarise(mask_to_grey(mask))


def read_labelled_image(image_path: str, mask_path: str, rule: MaskRule, role: str):
    """An episode's image float32 (H, W, 3) and its label uint8 (H, W) {0, 1, 255}, refused (naming
    the ``role``: 'query' or 'support') when their sizes differ or the label has no foreground."""
    image, label = read_image(image_path), read_mask(mask_path, rule)
    if image.shape[:2] != label.shape[:2]:
        raise ValueError(f"{role} image and mask sizes differ: {image_path!r} is {image.shape[0]}x"
                         f"{image.shape[1]}, {mask_path!r} is {label.shape[0]}x{label.shape[1]}")
    if not (label == 1).any():
        raise ValueError(f"{role} mask {mask_path!r} has no foreground pixel")
    return image, label


def read_support(image_path: str, mask_path: str, rule: MaskRule, ann_type: str = "mask"):
    """A support image and label (:func:`read_labelled_image`); with ``ann_type`` 'bbox' the
    foreground becomes the filled boxes of its components (as SemData's supports)."""
    image, label = read_labelled_image(image_path, mask_path, rule, "support")
    if ann_type == "bbox":
        boxes = fill_bounding_boxes(label)
        boxes[label == IGNORE_LABEL] = IGNORE_LABEL
        label = boxes
    return image, label


def _draw_evaluation_supports(rng: np.random.RandomState, files: Sequence[PathPair], query: PathPair,
                              shot: int) -> List[PathPair]:
    """HSNet's support draws: per shot, ``rng.choice(range(1, n + 1), 1, replace=False)`` picks
    image number r (natural order) until it is not the query; shots may repeat."""
    supports: List[PathPair] = []
    while len(supports) < shot:
        number = int(rng.choice(range(1, len(files) + 1), 1, replace=False)[0])
        if tuple(files[number - 1]) != tuple(query):
            supports.append(tuple(files[number - 1]))
    return supports


class ClassFolderData(Dataset):
    """Episodes of class folders (the module docstring has the rules).

    Args:
        data_root: the folder holding one folder per class.
        class_names: the split's classes (any order; used sorted).
        shot: K supports per episode.
        mode: 'train' (every image a query once, random supports, ``transform`` with its draws)
            or 'val' (``episodes`` fixed episodes of ``seed``).
        transform: ``t(image, label) -> (image (3, H, W), label (H, W))``; None: ToTensor only.
        mask_rule: how masks become labels.
        episodes: evaluation episodes (test_num).
        seed: the evaluation draws until :meth:`set_episode_seed` sets another.
        ann_type: 'mask' or 'bbox' supports.

    Items: :class:`~util.episode.TrainingEpisode` / :class:`~util.episode.EvaluationEpisode`
    (query image (3, H, W), query label (H, W) {0, 1, 255}, supports (K, 3, H, W) and (K, H, W) in
    SemData's reversed shot order, ``class_index`` into ``self.class_names``, ``raw_label`` the
    untransformed query label (H0, W0)).
    """

    def __init__(self, data_root: str, class_names: Sequence[str], shot: int = 1, mode: str = "val",
                 transform=None, mask_rule: MaskRule = MaskRule(), episodes: int = 1000, seed: int = 0,
                 ann_type: str = "mask"):
        if mode not in MODES or ann_type not in ANNOTATION_TYPES:
            raise ValueError(f"mode must be one of {MODES} and ann_type one of {ANNOTATION_TYPES}, "
                             f"got {mode!r}, {ann_type!r}")
        if not isinstance(shot, int) or shot < 1 or not isinstance(episodes, int) or episodes < 1:
            raise ValueError(f"shot and episodes must be positive ints, got {shot!r}, {episodes!r}")
        if not os.path.isdir(str(data_root)):
            raise FileNotFoundError(f"data_root {data_root!r}{relative_to_cwd(str(data_root))} is not a folder; "
                                    f"expected layout: {CLASS_FOLDER_LAYOUT}")
        self.data_root, self.shot, self.mode, self.transform = data_root, shot, mode, transform
        self.mask_rule, self.episodes, self.ann_type = mask_rule, episodes, ann_type
        self.class_names = sorted(class_names)
        self.class_files: Dict[str, List[PathPair]] = {}
        self.images: List[Tuple[str, PathPair]] = []  # (class name, pair) in HSNet's order
        for name in self.class_names:
            pairs = class_images(data_root, name)
            needed = shot + 1
            if len(pairs) < needed:
                raise ValueError(f"class {name!r} ({os.path.join(data_root, name)}) has {len(pairs)} image(s) "
                                 f"with a mask; {shot}-shot episodes need at least {needed} (python -m "
                                 f"tools.check_data lists every problem of the folder)")
            self.images += [(name, pair) for pair in pairs]
            self.class_files[name] = sorted(pairs, key=lambda pair: natural_key(os.path.basename(pair[0])))
        self.seed: Optional[int] = None
        self._evaluation_episodes: List[dict] = []
        if mode == "val":
            self.set_episode_seed(seed)

    def set_episode_seed(self, seed: Optional[int]) -> None:
        """Draw the evaluation episodes of ``seed`` (None keeps the current ones); the
        evaluation protocol calls this at the start of each run."""
        if seed is None or self.mode != "val" or seed == self.seed:
            return
        rng = np.random.RandomState(seed)
        episodes = []
        for index in range(self.episodes):
            name, query = self.images[index % len(self.images)]
            supports = _draw_evaluation_supports(rng, self.class_files[name], query, self.shot)
            episodes.append(dict(query=query, class_chosen=name, supports=supports))
        self.seed, self._evaluation_episodes = seed, episodes

    def __len__(self) -> int:
        return self.episodes if self.mode == "val" else len(self.images)

    def sample_episode(self, index: int) -> dict:
        """``dict(query=(image, mask), class_chosen=class name, supports=[(image, mask), ...])``:
        evaluation episodes as drawn for the seed; training ones drawn now with `random`."""
        if self.mode == "val":
            episode = self._evaluation_episodes[index]
            return dict(query=episode["query"], class_chosen=episode["class_chosen"],
                        supports=list(episode["supports"]))
        name, query = self.images[index]
        others = [pair for pair in self.class_files[name] if pair != query]
        return dict(query=query, class_chosen=name, supports=random.sample(others, self.shot))

    def load_episode(self, query, class_chosen: str, supports):
        """The item of an episode (no draws but the transform's: query first, then the supports
        in shot order)."""
        if class_chosen not in self.class_files:
            raise ValueError(f"class {class_chosen!r} is not one of this split's {len(self.class_names)} classes")
        image_path, mask_path = query
        image, label = read_labelled_image(image_path, mask_path, self.mask_rule, "query")
        support_images, support_labels = zip(*(read_support(*pair, self.mask_rule, self.ann_type)
                                               for pair in supports))
        raw_label = torch.from_numpy(label.copy()).long()
        transform = self.transform if self.transform is not None else transform_module.ToTensor()
        try:
            image, label = transform(image, label)
        except ValueError as error:
            raise ValueError(f"query image {image_path!r}: {error}") from None
        s_x, s_y = transform_supports(transform, support_images, support_labels, [pair[0] for pair in supports])
        class_index = [self.class_names.index(class_chosen)]
        if self.mode == "train":
            return TrainingEpisode(image, label, s_x, s_y, class_index)
        return EvaluationEpisode(image, label, s_x, s_y, class_index, raw_label)

    def __getitem__(self, index: int):
        return self.load_episode(**self.sample_episode(index))
