"""Tiny generated copies of the two layouts of one's own data (docs/DATASETS.md, "Your own data"):
class folders (FSS-1000's: <root>/<class>/<id>.jpg + <id>.png) and semantic labels (VOC-like:
images, label PNGs of class ids, a base list)."""
from __future__ import annotations

import os
from typing import Dict, List, Sequence

import cv2
import numpy as np


def random_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def rectangle(rng: np.random.Generator, height: int, width: int) -> tuple:
    """(top, bottom, left, right) of a rectangle covering at least a quarter of each side."""
    top, left = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
    bottom = top + height // 4 + int(rng.integers(1, height // 4))
    right = left + width // 4 + int(rng.integers(1, width // 4))
    return top, bottom, left, right


def write_class_folders(root: str, images_per_class: Dict[str, int], size: int = 41, seed: int = 0,
                        foreground: int = 255, sizes: Sequence[int] = ()) -> Dict[str, List[str]]:
    """``images_per_class``: class name -> count; images ``1.jpg .. n.jpg`` with masks of one
    rectangle of value ``foreground`` on 0. ``sizes``: per-image sides to cycle through (default
    all ``size``). Returns class name -> image paths."""
    rng = np.random.default_rng(seed)
    written: Dict[str, List[str]] = {}
    for name, count in images_per_class.items():
        folder = os.path.join(root, name)
        os.makedirs(folder, exist_ok=True)
        written[name] = []
        for number in range(1, count + 1):
            side = sizes[(number - 1) % len(sizes)] if sizes else size
            mask = np.zeros((side, side), np.uint8)
            top, bottom, left, right = rectangle(rng, side, side)
            mask[top:bottom, left:right] = foreground
            image_path = os.path.join(folder, f"{number}.jpg")
            cv2.imwrite(image_path, random_image(rng, side, side))
            cv2.imwrite(os.path.join(folder, f"{number}.png"), mask)
            written[name].append(image_path)
    return written


def write_split(path: str, names: Sequence[str]) -> str:
    with open(path, "w") as handle:
        handle.write("".join(f"{name}\n" for name in names))
    return path


def write_semantic_labels(root: str, count: int, num_classes: int, size: int = 48, seed: int = 0,
                          list_name: str = "train.txt") -> str:
    """VOC-like layout: ``images/<i>.jpg``, ``labels/<i>.png`` with two class blocks each (class
    ids 1..num_classes, each block >= 2048 px so that SemData counts it, a 255 line), and the base
    list ``<root>/<list_name>``. Image i holds the classes ``i mod n + 1`` and ``(i + 1) mod n + 1``."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "labels"), exist_ok=True)
    lines = []
    for index in range(count):
        label = np.zeros((size, 2 * size), np.uint8)
        first, second = index % num_classes + 1, (index + 1) % num_classes + 1
        label[:size - 2, :size] = first
        label[:size - 2, size:] = second
        label[size - 1, :] = 255
        cv2.imwrite(os.path.join(root, "images", f"{index}.jpg"), random_image(rng, size, 2 * size))
        cv2.imwrite(os.path.join(root, "labels", f"{index}.png"), label)
        lines.append(f"images/{index}.jpg labels/{index}.png\n")
    with open(os.path.join(root, list_name), "w") as handle:
        handle.writelines(lines)
    return os.path.join(root, list_name)
