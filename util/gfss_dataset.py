"""The episodes of BAM's generalised few-shot test (github.com/chunbolang/BAM: test_GFSS.py and
util/dataset.py): every image of the val list is a query, in order; its novel class is
:func:`choose_gfss_class`; its target :func:`gfss_target` (base class c -> base index + 1, the
chosen class -> N_base + 1, other novel classes -> 0, 255 kept); its supports are drawn as the
few-shot episodes draw them (util/dataset.py ``draw_supports``) from the val images that hold the
class (no pixel threshold). The prediction, the metrics and the test run are in
evaluation/gfss.py."""
from __future__ import annotations

import random
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from util import transform as transform_module
from util.episode import EvaluationEpisode
from util.dataset import (EXPECTED_LAYOUT, _label_classes, base_remap_label, draw_supports, get_class_lists,
                          read_image, read_label, read_pair_list, read_support, resolve_path,
                          transform_supports)

__all__ = ["GFSSData", "choose_gfss_class", "gfss_target"]


def choose_gfss_class(present_classes: Sequence[int], base_classes: Sequence[int],
                      novel_classes: Sequence[int]) -> int:
    """The episode's novel class (one ``random.choice``): a query without any base class gets
    one of its own novel classes; any other query one of ALL the fold's novel classes, which may
    be absent from it (the model must then predict no novel pixel). A query with no class at all
    (not in PASCAL's or COCO's val lists) is treated as one without base classes whose novel
    classes are all the fold's."""
    base = set(base_classes)
    if any(c in base for c in present_classes):
        return random.choice(list(novel_classes))
    own_novel = [c for c in present_classes if c in set(novel_classes)]
    return random.choice(own_novel or list(novel_classes))


def gfss_target(label: np.ndarray, base_classes: Sequence[int], chosen_class: int) -> np.ndarray:
    """The generalised target of a query label (H, W) uint8: base class c -> its index in
    ``base_classes`` + 1, ``chosen_class`` -> N_base + 1, other novel classes and the background
    -> 0, 255 kept."""
    target = base_remap_label(label, base_classes)
    target[label == chosen_class] = len(base_classes) + 1
    return target


class GFSSData(Dataset):
    """The generalised few-shot episodes of a fold (BAM's test_GFSS data).

    Args: as :class:`util.dataset.SemData` (``data_list`` is the val base list; every line is a
    query, in order). ``dataset[i]`` returns an :class:`~util.episode.EvaluationEpisode` (the
    layout of a validation episode, so that the evaluation protocol's targets
    (evaluation/protocol.py) apply as they are): query image (3, H, W), query label = the
    transformed target (H, W) int64, support images (K, 3, H, W), support labels (K, H, W),
    class index [index of the chosen class in the fold's novel list], raw label = the
    untransformed target (H0, W0) int64.
    """

    def __init__(self, split: int = 0, shot: int = 1, data_root: Optional[str] = None,
                 data_list: Optional[str] = None, data_set: str = "pascal", use_split_coco: bool = False,
                 transform=None, ann_type: str = "mask", show_progress: bool = True):
        self.shot = shot
        self.data_set = data_set
        self.ann_type = ann_type
        self.transform = transform
        self.base_classes, self.novel_classes = get_class_lists(data_set, split, use_split_coco)
        if data_list is None:
            raise FileNotFoundError(f"the generalised few-shot test needs the val base list; "
                                    f"expected layout: {EXPECTED_LAYOUT[data_set]}")
        pairs = [(resolve_path(image, data_root, data_set), resolve_path(label, data_root, data_set))
                 for image, label, _ in read_pair_list(data_list)]
        self.queries: List[tuple] = pairs
        # Supports of novel class c: every val image that contains it, whatever its area.
        self.support_files: Dict[int, List[tuple]] = {c: [] for c in self.novel_classes}
        novel = set(self.novel_classes)
        for pair in tqdm(pairs, desc="GFSS support lists", disable=not show_progress):
            for class_id in _label_classes(read_label(pair[1], data_set)):
                if class_id in novel:
                    self.support_files[class_id].append(pair)
        too_few = {c: len(files) for c, files in self.support_files.items() if len(files) < shot + 1}
        if too_few:
            raise ValueError(f"{data_list}: {shot}-shot generalised episodes need at least {shot + 1} "
                             f"val images per novel class; " +
                             ", ".join(f"class {c}: {n} image(s)" for c, n in too_few.items()))

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, index: int):
        image_path, label_path = self.queries[index]
        label = read_label(label_path, self.data_set)
        chosen = choose_gfss_class(_label_classes(label), self.base_classes, self.novel_classes)
        supports = draw_supports(self.support_files[chosen], (image_path, label_path), self.shot)
        image = read_image(image_path)
        if image.shape[:2] != label.shape[:2]:
            raise ValueError(f"query image and label sizes differ: {image_path!r}, {label_path!r}")
        target = gfss_target(label, self.base_classes, chosen)
        support_images, support_labels = zip(*(read_support(*pair, chosen, self.ann_type, self.data_set)
                                               for pair in supports))
        transform = self.transform if self.transform is not None else transform_module.ToTensor()
        image, transformed_target = transform(image, target)
        s_x, s_y = transform_supports(transform, support_images, support_labels)
        return EvaluationEpisode(image, transformed_target, s_x, s_y, [self.novel_classes.index(chosen)],
                                 torch.from_numpy(target).long())
