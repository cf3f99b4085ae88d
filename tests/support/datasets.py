"""Datasets made on the fly for the tests of util/dataset.py: miniature PASCAL layouts with
hand-drawn labels."""
import os

import cv2
import numpy as np


SMALL = 64  # validation-resize size used to keep the episode tests fast


def block_label(classes, size=(64, 64)):
    """uint8 label with one 48x48 (2304 px >= 2048) block per class side by side, a 255 line."""
    height, width = size
    label = np.zeros((height, width * len(classes)), np.uint8)
    for i, c in enumerate(classes):
        label[4:52, i * width + 4:i * width + 52] = c
    label[60, :] = 255
    return label


def write_mini_dataset(root, entries, list_name="train.txt"):
    """entries: [(name, label array, image shape or None)] -> writes the PASCAL layout + base list."""
    os.makedirs(os.path.join(root, "JPEGImages"), exist_ok=True)
    os.makedirs(os.path.join(root, "SegmentationClassAug"), exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for name, label, image_shape in entries:
        shape = image_shape or (label.shape[0], label.shape[1], 3)
        cv2.imwrite(os.path.join(root, "JPEGImages", name + ".jpg"), rng.integers(0, 255, shape, dtype=np.uint8))
        cv2.imwrite(os.path.join(root, "SegmentationClassAug", name + ".png"), label)
        lines.append(f"JPEGImages/{name}.jpg SegmentationClassAug/{name}.png\n")
    with open(os.path.join(root, list_name), "w") as handle:
        handle.writelines(lines)
    return os.path.join(root, list_name)


def all_fold0_train_classes_dataset(root, extra=()):
    """Mini dataset with 2 images for every fold-0 train class (enough for 1-shot)."""
    entries = []
    for c in range(6, 21):
        entries += [(f"c{c}_a", block_label([c]), None), (f"c{c}_b", block_label([c]), None)]
    return write_mini_dataset(root, entries + list(extra))
