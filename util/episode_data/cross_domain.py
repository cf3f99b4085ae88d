"""The cross-domain few-shot benchmark of PATNet (Lei et al., ECCV 2022, slei109/PATNet): a model
trained on PASCAL is tested on Deepglobe (satellite), ISIC2018 (skin lesions) and Chest X-ray
(lungs). This module serves those three test sets as :class:`~util.episode.EvaluationEpisode`
items with the benchmark's protocol; FSS-1000, its fourth set, uses the class-folder data.

The protocol's facts, each from PATNet's code (docs/DATASETS.md, "Cross-domain benchmark"):

* layouts after PATNet's preparation (``data/deepglobe.py``, ``data/isic.py``, ``data/lung.py``):
  Deepglobe ``<root>/<class 1..6>/test/origin/<id>.jpg`` with ``.../test/groundtruth/<id>.png``;
  ISIC ``<root>/ISIC2018_Task1-2_Training_Input/<class 1..3>/<id>.jpg`` with
  ``<root>/ISIC2018_Task1_Training_GroundTruth/<id>_segmentation.png``; lung
  ``<root>/masks/<id>_mask.png`` with ``<root>/CXR_png/<id>.png`` (one class);
* masks read as greyscale (``convert('L')``) and binarised at 128 (``read_mask``);
* episode ``i`` is of class ``i mod (number of classes)``; its query is drawn uniformly among the
  class's images, each support uniformly among them again until it is not the query (the
  supports are drawn independently, so two shots may be the same image) (``sample_episode``);
* 600 episodes per dataset (``__len__``: ``num=600``, never changed by ``data/dataset.py``);
* images resized to 400 x 400 and each mask resized to 400 x 400 by nearest-neighbour
  interpolation (``test.py``: ``img_size=400``; ``F.interpolate(..., mode='nearest')``); the
  prediction is scored against that 400 x 400 mask (``test.py``, ``common/evaluation.py``).

Here the model input is the image resized to ``val_size`` squared (SCCAN's 473; aspect ratio not
kept, as PATNet's resize) with util/transform.build_hsnet_val_transform, and ``raw_label`` is the
mask at PATNet's 400 x 400, so the protocol scores the logits resized to 400 x 400 (the target
'original' of a square label and 'raw' are the same label). PATNet draws every episode from one
global numpy stream seeded 0 with no loader workers; here episode ``i`` is drawn from its own
generator seeded by ``(seed, i)``, so the same seed gives the same episodes with any worker count
(the same distribution as PATNet's, not its very draws).
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from util.dataset import read_image, transform_supports
from util.episode import EvaluationEpisode
from util.image_files import ImageFileError, file_problem, truncation_problem
from util.io import relative_to_cwd

__all__ = ["BENCHMARK_LABEL_SIZE", "BENCHMARK_EPISODES", "CROSS_DOMAIN_LAYOUTS", "CrossDomainLayout",
           "CrossDomainData", "read_benchmark_mask", "resize_label_nearest", "class_pairs"]

# PATNet test.py: FSSDataset.initialize(img_size=400, ...); every mask is resized to it.
BENCHMARK_LABEL_SIZE = 400
# PATNet data/{deepglobe,isic,lung}.py: __init__(..., num=600), __len__ returns num.
BENCHMARK_EPISODES = 600
# PATNet read_mask: pixels < 128 are background, >= 128 foreground.
MASK_THRESHOLD = 128

PathPair = Tuple[str, str]


@dataclass(frozen=True)
class CrossDomainLayout:
    """One benchmark's prepared layout: the class names its class folders stand for (folders
    ``class_ids`` 1..N, in PATNet's ``categories`` order), the layout in words (``describe``, for
    the error messages) and the tool that writes it."""
    name: str
    class_names: Tuple[str, ...]
    describe: str
    prepare_tool: str

    @property
    def class_ids(self) -> List[int]:
        return list(range(1, len(self.class_names) + 1))


CROSS_DOMAIN_LAYOUTS: Dict[str, CrossDomainLayout] = {
    # PATNet data/preprocess.py, step 3: label set [0,255,255], [255,255,0], [255,0,255], [0,255,0],
    # [255,0,0], [255,255,255] compared with cv2.imread pixels, i.e. BGR: agriculture (RGB 255,255,0),
    # urban (0,255,255), rangeland, forest, water (0,0,255), barren; class folder = index + 1.
    "deepglobe": CrossDomainLayout(
        "deepglobe", ("agriculture", "urban", "rangeland", "forest", "water", "barren"),
        "<data_root>/<class 1..6>/test/origin/<id>.jpg and <data_root>/<class>/test/groundtruth/<id>.png",
        "tools.prepare_deepglobe"),
    # The folders 1, 2, 3 stand for the classes of PATNet's data/isic/class_id.csv; PATNet does not
    # say which is which: nevus, melanoma, seborrheic keratosis is the order of the preparation
    # script of DMTNet (ChenJiayi68/DMTNet data/isic_preprocess.py), which reuses PATNet's loader.
    "isic": CrossDomainLayout(
        "isic", ("nevus", "melanoma", "seborrheic_keratosis"),
        "<data_root>/ISIC2018_Task1-2_Training_Input/<class 1..3>/<id>.jpg and "
        "<data_root>/ISIC2018_Task1_Training_GroundTruth/<id>_segmentation.png",
        "tools.prepare_isic"),
    "lung": CrossDomainLayout(
        "lung", ("lung",),
        "<data_root>/masks/<id>_mask.png and <data_root>/CXR_png/<id>.png",
        "tools.prepare_lung"),
}


def _jpg_files(folder: str) -> List[str]:
    # PATNet keeps the files whose extension is jpg, in sorted order.
    return sorted(path for path in glob.glob(os.path.join(glob.escape(folder), "*"))
                  if os.path.splitext(path)[1] == ".jpg")


def _deepglobe_pairs(data_root: str, class_id: int) -> List[PathPair]:
    folder = os.path.join(data_root, str(class_id), "test")
    return [(image, os.path.join(folder, "groundtruth", os.path.splitext(os.path.basename(image))[0] + ".png"))
            for image in _jpg_files(os.path.join(folder, "origin"))]


def _isic_pairs(data_root: str, class_id: int) -> List[PathPair]:
    masks = os.path.join(data_root, "ISIC2018_Task1_Training_GroundTruth")
    images = _jpg_files(os.path.join(data_root, "ISIC2018_Task1-2_Training_Input", str(class_id)))
    return [(image, os.path.join(masks, os.path.splitext(os.path.basename(image))[0] + "_segmentation.png"))
            for image in images]


def _lung_pairs(data_root: str, class_id: int) -> List[PathPair]:
    # PATNet lists the masks (not the images) and cuts '_mask.png' off a mask's name for its image.
    masks = sorted(path for path in glob.glob(os.path.join(glob.escape(os.path.join(data_root, "masks")), "*"))
                   if os.path.splitext(path)[1] == ".png")
    suffix = "_mask.png"
    unnamed = [os.path.basename(mask) for mask in masks if not mask.endswith(suffix)]
    if unnamed:
        raise ValueError(f"{os.path.join(data_root, 'masks')}: {len(unnamed)} mask(s) not named <id>{suffix} "
                         f"(first {unnamed[0]!r}); python -m tools.prepare_lung writes the names PATNet reads")
    return [(os.path.join(data_root, "CXR_png", os.path.basename(mask)[:-len(suffix)] + ".png"), mask)
            for mask in masks]


_PAIR_FINDERS: Dict[str, Callable[[str, int], List[PathPair]]] = {
    "deepglobe": _deepglobe_pairs, "isic": _isic_pairs, "lung": _lung_pairs}


def class_pairs(benchmark: str, data_root: str) -> Dict[int, List[PathPair]]:
    """The (image, mask) paths of every class of ``benchmark`` under ``data_root``, in PATNet's
    order (sorted image names). Paths are not checked here."""
    if benchmark not in CROSS_DOMAIN_LAYOUTS:
        raise ValueError(f"unknown cross-domain benchmark {benchmark!r}; expected one of "
                         f"{', '.join(CROSS_DOMAIN_LAYOUTS)}")
    return {class_id: _PAIR_FINDERS[benchmark](data_root, class_id)
            for class_id in CROSS_DOMAIN_LAYOUTS[benchmark].class_ids}


def read_benchmark_mask(path: str) -> np.ndarray:
    """A benchmark mask as PATNet reads it: greyscale (PIL ``convert('L')``, so a colour mask
    becomes its luma), 1 where >= 128, else 0. Returns uint8 (H, W) in {0, 1}; a missing,
    unreadable or truncated file is refused, naming it."""
    problem = file_problem(path) or truncation_problem(path)
    if problem is not None:
        error = FileNotFoundError if not os.path.exists(path) else ImageFileError
        raise error(f"mask {path!r} {problem}")
    with Image.open(path) as mask:
        grey = np.asarray(mask.convert("L"))
    return (grey >= MASK_THRESHOLD).astype(np.uint8)


def resize_label_nearest(label: np.ndarray, size: int) -> torch.Tensor:
    """``label`` (H, W) resized to (size, size) as PATNet resizes its masks (torch nearest
    interpolation). Returns int64 (size, size)."""
    tensor = torch.from_numpy(np.ascontiguousarray(label)).float()[None, None]
    return F.interpolate(tensor, size=(size, size), mode="nearest")[0, 0].long()


def _check_pairs(benchmark: str, data_root: str, pairs: Dict[int, List[PathPair]]) -> None:
    """Refuse, with one line, a layout the episodes cannot be drawn from: a class with fewer than
    two images (PATNet's support loop would never end: a support must differ from the query) or
    an image without its mask."""
    layout = CROSS_DOMAIN_LAYOUTS[benchmark]
    hint = f"expected layout: {layout.describe} (python -m {layout.prepare_tool} writes it)"
    too_few = {class_id: len(items) for class_id, items in pairs.items() if len(items) < 2}
    if too_few:
        details = ", ".join(f"class {class_id} ({layout.class_names[class_id - 1]}): {count} image(s)"
                            for class_id, count in too_few.items())
        raise ValueError(f"{benchmark} data_root {data_root!r}: every class needs at least 2 images (a query "
                         f"and a different support); {details}; {hint}")
    for class_id, items in pairs.items():
        missing = [pair for pair in items if not os.path.isfile(pair[0]) or not os.path.isfile(pair[1])]
        if missing:
            image, mask = missing[0]
            absent = mask if os.path.isfile(image) else image
            raise FileNotFoundError(f"{benchmark} class {class_id}: {len(missing)} image(s) without their image or "
                                    f"mask file, first {absent!r}; {hint}")


class CrossDomainData(Dataset):
    """Evaluation episodes of one cross-domain benchmark (PATNet's protocol, module docstring).

    Args:
        benchmark: 'deepglobe', 'isic' or 'lung'.
        data_root: the benchmark's prepared folder (``CROSS_DOMAIN_LAYOUTS[benchmark].describe``).
        shot: K supports per episode.
        transform: ``t(image, label) -> (image (3, H, W), label (H, W))`` for the model input, the
            query then each support (util/transform.build_hsnet_val_transform(val_size)).
        episodes: the dataset's length (PATNet's ``num``: 600).
        seed: the draws' seed until :meth:`set_episode_seed` changes it (the protocol sets each
            run's seed).
        label_size: side of the label the prediction is scored against (PATNet's 400).

    ``dataset[i]`` is an :class:`~util.episode.EvaluationEpisode`: query image (3, S, S) float32,
    query label (S, S) int64 {0, 1} at the input size S, support images (K, 3, S, S), support
    labels (K, S, S) (``s_x[0]`` the last shot, as SemData stacks them), class_index [i mod
    classes], raw_label (label_size, label_size) int64 {0, 1}, the mask the protocol scores.
    """

    def __init__(self, benchmark: str, data_root: str, shot: int, transform, episodes: int = BENCHMARK_EPISODES,
                 seed: int = 0, label_size: int = BENCHMARK_LABEL_SIZE):
        if benchmark not in CROSS_DOMAIN_LAYOUTS:
            raise ValueError(f"unknown cross-domain benchmark {benchmark!r}; expected one of "
                             f"{', '.join(CROSS_DOMAIN_LAYOUTS)}")
        if not isinstance(shot, int) or shot < 1:
            raise ValueError(f"shot must be a positive int, got {shot!r}")
        if not isinstance(episodes, int) or episodes < 1:
            raise ValueError(f"episodes must be a positive int, got {episodes!r}")
        layout = CROSS_DOMAIN_LAYOUTS[benchmark]
        if not os.path.isdir(data_root):
            raise FileNotFoundError(f"{benchmark} data_root {data_root!r}{relative_to_cwd(data_root)} is not a "
                                    f"folder; expected layout: {layout.describe} (python -m {layout.prepare_tool})")
        self.benchmark, self.data_root, self.shot = benchmark, data_root, shot
        self.transform, self.episodes, self.label_size = transform, episodes, label_size
        self.class_ids = layout.class_ids
        self.class_names = layout.class_names
        self.pairs = class_pairs(benchmark, data_root)
        _check_pairs(benchmark, data_root, self.pairs)
        self.seed = seed

    def set_episode_seed(self, seed: int) -> None:
        """Draw the episodes of the run with ``seed`` (set before the loader's workers start, so
        they receive it with the dataset)."""
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.episodes

    def sample_episode(self, index: int) -> dict:
        """Episode ``index``'s draws, from a generator seeded by (seed, index) only. Returns
        ``dict(query=(image, mask), class_chosen=class id 1.., supports=[(image, mask)] * K)``."""
        generator = np.random.default_rng([self.seed, index])
        class_id = self.class_ids[index % len(self.class_ids)]
        items = self.pairs[class_id]
        query = items[int(generator.integers(len(items)))]
        supports: List[PathPair] = []
        while len(supports) < self.shot:  # PATNet: each support drawn anew until it is not the query
            candidate = items[int(generator.integers(len(items)))]
            if candidate != query:
                supports.append(candidate)
        return dict(query=query, class_chosen=class_id, supports=supports)

    def _read_pair(self, pair: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = pair
        image, mask = read_image(image_path), read_benchmark_mask(mask_path)
        if image.shape[:2] != mask.shape[:2]:
            raise ValueError(f"image and mask sizes differ: {image_path!r} is {image.shape[0]}x{image.shape[1]}, "
                             f"{mask_path!r} is {mask.shape[0]}x{mask.shape[1]}")
        return image, mask

    def load_episode(self, query: Sequence[str], class_chosen: int, supports: Sequence[Sequence[str]]
                     ) -> EvaluationEpisode:
        """The episode of given draws (a recorded one is replayed through here)."""
        if class_chosen not in self.class_ids:
            raise ValueError(f"class {class_chosen} is not a class of {self.benchmark} ({self.class_ids})")
        image, mask = self._read_pair(query)
        raw_label = resize_label_nearest(mask, self.label_size)
        try:
            image, label = self.transform(image, mask)
        except ValueError as error:
            raise ValueError(f"query image {query[0]!r}: {error}") from None
        support_images, support_masks = zip(*(self._read_pair(pair) for pair in supports))
        s_x, s_y = transform_supports(self.transform, support_images, support_masks, [pair[0] for pair in supports])
        return EvaluationEpisode(image, label.long(), s_x, s_y.long(), [self.class_ids.index(class_chosen)],
                                 raw_label)

    def __getitem__(self, index: int) -> EvaluationEpisode:
        return self.load_episode(**self.sample_episode(index))
