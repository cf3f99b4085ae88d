"""Base-class data of BAM's base learner (``BaseData`` of util/dataset.py in
github.com/chunbolang/BAM): every image of a base list, in list order, its label remapped onto the
fold's base classes.

Remap (:func:`base_remap`): base class c -> its index in the fold's base-class list + 1
(PASCAL fold 0: 6 -> 1, ..., 20 -> 15), novel classes -> 0 (background: the base learner must not
learn them), 255 stays 255. Unlike the episode lists of util/dataset.py, no image is filtered out:
an image holding only novel classes still teaches the background.

The augmentation is BAM's (util/transform.build_train_transform: RandScale, RandRotate, Gaussian
blur, flip, random crop with padding, with the same random draws); validation is the
deterministic resize of util/transform.build_val_transform, scored on the transformed label.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
from torch.utils.data import Dataset

from util import transform as transforms
from util.episode import LabelledImage
from util.dataset import (DATA_SETS, EXPECTED_LAYOUT, IGNORE_LABEL, MODES, NUM_CLASSES, NUM_SPLITS,
                          _check_choice, base_remap_label, get_class_lists, read_image, read_label,
                          read_pair_list, resolve_path)

__all__ = ["BaseData", "base_remap"]


def base_remap(label: np.ndarray, data_set: str, base_classes: Sequence[int],
               where: str = "label", novel_label: int = 0) -> np.ndarray:
    """uint8 (H, W) label with classes 0..N (and 255) -> base numbering: base class c ->
    ``base_classes.index(c) + 1``, other classes -> ``novel_label`` (0, background, as BAM; 255
    leaves them out of the loss), background 0, 255 kept. A value outside 0..N and 255 is an
    error naming ``where`` (BAM would pass it on and fail later inside the loss)."""
    unknown = (label > NUM_CLASSES[data_set]) & (label != IGNORE_LABEL)
    if unknown.any():
        raise ValueError(f"{where}: label values {sorted(set(label[unknown].tolist()))[:5]} are "
                         f"no {data_set} class (expected 0..{NUM_CLASSES[data_set]} and 255)")
    return _remap_checked_label(label, base_classes, novel_label)


def _remap_checked_label(label: np.ndarray, base_classes: Sequence[int], novel_label: int) -> np.ndarray:
    """:func:`base_remap` of a label whose values are known to be classes of the dataset."""
    remapped = base_remap_label(label, base_classes)
    if novel_label != 0:
        remapped[(remapped == 0) & (label != 0)] = novel_label
    return remapped


class BaseData(Dataset):
    """Whole images of a base list with base labels (BAM's ``BaseData``).

    Args:
        split: fold 0..3 (its base classes are the training classes of util/dataset.get_class_lists).
        data_root: dataset root (see util/dataset.EXPECTED_LAYOUT).
        data_list: base list, ``<image> <label>`` lines (paths resolved as util/dataset.resolve_path).
        data_set: 'pascal' or 'coco'.
        use_split_coco: COCO fold definition.
        transform: ``t(image, label) -> (image (3, H, W) float32, label (H, W) int64)``;
            None means util/transform.ToTensor only.
        mode: 'train' or 'val' (recorded; both serve every image).
        novel_label: the label of novel-class pixels (0: background, BAM's choice; 255: ignored,
            so that a base learner trained from scratch is not taught that the novel classes
            are background).

    ``dataset[i]`` -> :class:`~util.episode.LabelledImage` ``(image (3, H, W) float32, label (H, W)
    int64)`` of line i, label values 0..len(base_classes) and 255.
    """

    def __init__(self, split: int = 0, data_root: Optional[str] = None, data_list: Optional[str] = None,
                 data_set: str = "pascal", use_split_coco: bool = False, transform=None,
                 mode: str = "train", novel_label: int = 0):
        _check_choice("data_set", data_set, DATA_SETS)
        _check_choice("novel_label", novel_label, (0, IGNORE_LABEL))
        _check_choice("split", split, tuple(range(NUM_SPLITS)))
        _check_choice("mode", mode, MODES)
        if data_root is None or not os.path.isdir(data_root):
            raise FileNotFoundError(f"data_root {data_root!r} does not exist or is not a folder; "
                                    f"expected layout: {EXPECTED_LAYOUT[data_set]}")
        if data_list is None or not os.path.isfile(data_list):
            raise FileNotFoundError(f"{mode} base list {data_list!r} not found (lines '<image path> "
                                    f"<label path>'); expected layout: {EXPECTED_LAYOUT[data_set]}")
        self.split, self.data_root, self.data_set, self.mode = split, data_root, data_set, mode
        self.novel_label = novel_label
        self.transform = transform if transform is not None else transforms.ToTensor()
        self.base_classes, self.novel_classes = get_class_lists(data_set, split, use_split_coco)
        self.data_list: List[Tuple[str, str]] = [
            (resolve_path(image, data_root, data_set), resolve_path(label, data_root, data_set))
            for image, label, _ in read_pair_list(data_list)]
        if not self.data_list:
            raise ValueError(f"{data_list}: empty base list")
        self.list_path = data_list

    @property
    def num_classes(self) -> int:
        """Output classes of the base learner: background + base classes (16 PASCAL, 61 COCO)."""
        return len(self.base_classes) + 1

    def __len__(self) -> int:
        return len(self.data_list)

    def __getitem__(self, index: int) -> LabelledImage:
        image_path, label_path = self.data_list[index]
        image, label = read_image(image_path), read_label(label_path, self.data_set)
        if image.shape[:2] != label.shape[:2]:
            raise ValueError(f"image and label sizes differ: {image_path!r} is {image.shape[0]}x"
                             f"{image.shape[1]}, {label_path!r} is {label.shape[0]}x{label.shape[1]}")
        # read_label(path, data_set) has refused values that are no class of the dataset
        label = _remap_checked_label(label, self.base_classes, self.novel_label)
        return LabelledImage(*self.transform(image, label))
