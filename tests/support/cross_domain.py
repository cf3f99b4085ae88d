"""Tiny generated copies of the cross-domain benchmark's layouts (PATNet, slei109/PATNet): the
prepared layouts its loaders read (``make_prepared_*``) and the published originals that the
preparation tools take (``make_original_*``). Seeded, a few images of a few tens of pixels.

Each image is a random picture; each mask is a rectangle whose position depends on the image, so
a test can tell which mask went with which image. The writers use OpenCV (images as the
datasets publish them: JPEG pictures, PNG masks).
"""
from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

# Deepglobe's land-cover colours (RGB), in the class order of PATNet's preparation
# (data/preprocess.py compares BGR pixels with its label set): class folder = index + 1.
DEEPGLOBE_COLOURS_RGB = [(255, 255, 0), (0, 255, 255), (255, 0, 255), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
DEEPGLOBE_UNKNOWN_RGB = (0, 0, 0)


def random_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A BGR uint8 picture (H, W, 3)."""
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def rectangle_mask(rng: np.random.Generator, height: int, width: int, value: int = 255) -> np.ndarray:
    """A uint8 (H, W) mask: ``value`` inside a random rectangle of at least 4 x 4, 0 elsewhere."""
    top, left = int(rng.integers(0, height - 4)), int(rng.integers(0, width - 4))
    bottom, right = int(rng.integers(top + 4, height + 1)), int(rng.integers(left + 4, width + 1))
    mask = np.zeros((height, width), np.uint8)
    mask[top:bottom, left:right] = value
    return mask


def _write(path: str, array: np.ndarray) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, array):
        raise OSError(f"could not write {path}")
    return path


def make_prepared_deepglobe(root: str, images_per_class: Sequence[int], size: int = 40, seed: int = 0
                            ) -> Dict[int, List[Tuple[str, str]]]:
    """``<root>/<c>/test/origin/<id>.jpg`` + ``<root>/<c>/test/groundtruth/<id>.png`` (masks 0/255,
    three channels as PATNet's cv2.imwrite of its binary map). Returns class -> [(image, mask)]."""
    rng = np.random.default_rng(seed)
    pairs: Dict[int, List[Tuple[str, str]]] = {}
    for class_id, count in enumerate(images_per_class, start=1):
        folder = os.path.join(root, str(class_id), "test")
        pairs[class_id] = []
        for number in range(count):
            name = f"{100 + number}_{class_id}{number}"
            mask = rectangle_mask(rng, size, size)
            pairs[class_id].append((
                _write(os.path.join(folder, "origin", name + ".jpg"), random_image(rng, size, size)),
                _write(os.path.join(folder, "groundtruth", name + ".png"), np.repeat(mask[:, :, None], 3, 2))))
    return pairs


def make_prepared_isic(root: str, images_per_class: Sequence[int], size: Tuple[int, int] = (36, 48), seed: int = 0
                       ) -> Dict[int, List[Tuple[str, str]]]:
    """``<root>/ISIC2018_Task1-2_Training_Input/<c>/ISIC_<n>.jpg`` +
    ``<root>/ISIC2018_Task1_Training_GroundTruth/ISIC_<n>_segmentation.png`` (0/255)."""
    rng = np.random.default_rng(seed)
    pairs: Dict[int, List[Tuple[str, str]]] = {}
    number = 0
    for class_id, count in enumerate(images_per_class, start=1):
        pairs[class_id] = []
        for _ in range(count):
            name = f"ISIC_{number:07d}"
            number += 1
            pairs[class_id].append((
                _write(os.path.join(root, "ISIC2018_Task1-2_Training_Input", str(class_id), name + ".jpg"),
                       random_image(rng, *size)),
                _write(os.path.join(root, "ISIC2018_Task1_Training_GroundTruth", name + "_segmentation.png"),
                       rectangle_mask(rng, *size))))
    return pairs


def make_prepared_lung(root: str, count: int, size: Tuple[int, int] = (44, 40), seed: int = 0
                       ) -> Dict[int, List[Tuple[str, str]]]:
    """``<root>/CXR_png/CHNCXR_<n>_0.png`` + ``<root>/masks/CHNCXR_<n>_0_mask.png`` (0/255)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for number in range(count):
        name = f"CHNCXR_{number:04d}_0"
        pairs.append((_write(os.path.join(root, "CXR_png", name + ".png"), random_image(rng, *size)),
                      _write(os.path.join(root, "masks", name + "_mask.png"), rectangle_mask(rng, *size))))
    return {1: pairs}
