"""The list files shipped in lists/ (the original SCCAN repository's) agree with this project's
list builder (`util.dataset.make_fss_lists`), and `SemData` reads them without rewriting them."""

from __future__ import annotations

import functools
import os

import cv2
import numpy as np
import pytest

from util.dataset import (
    ORIGINAL_DATA_ROOTS,
    SemData,
    fss_list_paths,
    get_class_lists,
    load_fss_lists,
    make_fss_lists,
    read_pair_list,
)
from tests.support import REPOSITORY_ROOT

LISTS = os.path.join(REPOSITORY_ROOT, "lists")
PASCAL_SIZES = {"train": [4208, 3726, 2752, 4510], "val": [364, 445, 592, 336]}
PASCAL_BASE_LISTS = {"train": "voc_sbd_merge_noduplicate.txt", "val": "val.txt"}


@functools.lru_cache(maxsize=None)
def _base_pairs(path: str) -> tuple:
    return tuple((image, label) for image, label, _ in read_pair_list(path))


@functools.lru_cache(maxsize=None)
def _shipped_fss_lists(data_set: str, mode: str, split: int):
    data_path, sub_path = fss_list_paths(os.path.join(LISTS, data_set, "fss_list"), mode, split)
    return load_fss_lists(data_path, sub_path)


def _strip_original_root(pairs, data_set: str):
    prefix = ORIGINAL_DATA_ROOTS[data_set] + "/"
    for image, label in pairs:
        assert image.startswith(prefix) and label.startswith(prefix), (image, label)
    return [(image[len(prefix):], label[len(prefix):]) for image, label in pairs]


def _assert_in_order_within(items, sequence, what: str) -> None:
    """``items`` is a subsequence of ``sequence`` (same order, no repeats)."""
    position = {item: index for index, item in enumerate(sequence)}
    indices = [position.get(item) for item in items]
    missing = [item for item, index in zip(items, indices) if index is None]
    assert not missing, f"{what}: {len(missing)} entries not found, e.g. {missing[:2]}"
    assert all(a < b for a, b in zip(indices, indices[1:])), f"{what}: not in the same order"


def _check_structure(data_list, sub_lists, class_list, what: str) -> None:
    # The original's make_dataset fills the dict with the fold's classes in ascending order.
    assert list(sub_lists) == list(class_list), what
    listed = set().union(*map(set, sub_lists.values()))
    assert set(data_list) == listed, f"{what}: data_list and the class lists hold different images"
    for c, items in sub_lists.items():
        _assert_in_order_within(items, data_list, f"{what} class {c}")


@pytest.mark.parametrize("mode", ["train", "val"])
@pytest.mark.parametrize("split", range(4))
def test_shipped_pascal_fss_lists_follow_the_builder_rules(mode, split):
    data_list, sub_lists = _shipped_fss_lists("pascal", mode, split)
    assert len(data_list) == PASCAL_SIZES[mode][split]
    train_classes, val_classes = get_class_lists("pascal", split)
    # The train class lists have only train classes as keys, and every entry passed the filter.
    _check_structure(data_list, sub_lists, train_classes if mode == "train" else val_classes, f"pascal {mode} {split}")
    base = _base_pairs(os.path.join(LISTS, "pascal", PASCAL_BASE_LISTS[mode]))
    _assert_in_order_within(_strip_original_root(data_list, "pascal"), base, f"pascal {mode} {split} vs base list")


def _draw_label(classes, small_class=None) -> np.ndarray:
    """One 50x60 band (3000 pixels) per class; ``small_class`` gets a 100-pixel patch (< 2048)."""
    label = np.zeros((50 * len(classes) + 10, 60), np.uint8)
    for index, c in enumerate(classes):
        label[50 * index:50 * (index + 1)] = c
    if small_class is not None:
        label[-10:, :10] = small_class
    return label


@pytest.mark.parametrize("mode", ["train", "val"])
def test_the_builder_reproduces_shipped_pascal_entries_from_matching_labels(tmp_path, mode):
    data_list, sub_lists = _shipped_fss_lists("pascal", mode, 0)
    train_classes, val_classes = get_class_lists("pascal", 0)
    class_list = train_classes if mode == "train" else val_classes
    classes_of = {}
    for c, items in sub_lists.items():
        for pair in _strip_original_root(items, "pascal"):
            classes_of.setdefault(pair, []).append(c)
    base = list(_base_pairs(os.path.join(LISTS, "pascal", PASCAL_BASE_LISTS[mode])))
    in_lists = [pair for pair in base if pair in classes_of][:12]
    not_in_lists = [pair for pair in base if pair not in classes_of][:8]
    lines = sorted(in_lists + not_in_lists, key=base.index)
    (tmp_path / "SegmentationClassAug").mkdir()
    for pair in lines:
        if pair in classes_of:
            label = _draw_label(classes_of[pair])
        elif mode == "train":
            label = _draw_label([6, 1])  # a test class in a training image: filtered out
        else:
            label = _draw_label([10], small_class=1)  # the fold's class too small to count
        assert cv2.imwrite(str(tmp_path / pair[1]), label)
    base_path = tmp_path / "base.txt"
    base_path.write_text("".join(f"{image} {label}\n" for image, label in lines))
    built_data, built_sub = make_fss_lists(str(tmp_path), str(base_path), class_list,
                                           filter_intersection=(mode == "train"), show_progress=False)
    assert built_data == in_lists
    chosen = set(in_lists)
    assert built_sub == {c: [pair for pair in _strip_original_root(items, "pascal") if pair in chosen]
                         for c, items in sub_lists.items()}


def test_shipped_coco_val_fss_lists_follow_the_builder_rules():
    base = _base_pairs(os.path.join(LISTS, "coco", "val.txt"))
    assert len(base) == 40137
    for split in range(4):
        data_path, sub_path = fss_list_paths(os.path.join(LISTS, "coco", "fss_list"), "val", split)
        data_list = [(image, label) for image, label, _ in read_pair_list(data_path)]
        _assert_in_order_within(_strip_original_root(data_list, "coco"), base, f"coco val {split} vs val.txt")
        if split == 0:
            assert not os.path.exists(sub_path)  # not recovered: derived on first use
            continue
        _, sub_lists = load_fss_lists(data_path, sub_path)
        _check_structure(data_list, sub_lists, get_class_lists("coco", split, use_split_coco=True)[1],
                         f"coco val {split}")


def _touch_first_entry(data_root, data_list_path: str, data_set: str) -> tuple:
    """Create the first image and label of a shipped data_list under ``data_root`` (SemData checks them)."""
    image, label = _strip_original_root([read_pair_list(data_list_path)[0][:2]], data_set)[0]
    for relative in (image, label):
        path = os.path.join(data_root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").close()
    return os.path.join(data_root, image), os.path.join(data_root, label)


@pytest.mark.parametrize("data_set, split", [("pascal", 0), ("pascal", 1), ("pascal", 2), ("pascal", 3), ("coco", 1)])
def test_semdata_reads_the_shipped_val_lists_without_rewriting_them(tmp_path, data_set, split):
    list_root = os.path.join(LISTS, data_set, "fss_list")
    paths = fss_list_paths(list_root, "val", split)
    before = {path: (open(path, "rb").read(), os.stat(path).st_mtime_ns) for path in paths}
    data_root = str(tmp_path / "datasets" / data_set)
    first_entry = _touch_first_entry(data_root, paths[0], data_set)
    dataset = SemData(split=split, shot=1, data_root=data_root, data_list=None, data_set=data_set,
                      use_split_coco=True, mode="val", list_root=list_root, show_progress=False)
    for path in paths:
        assert (open(path, "rb").read(), os.stat(path).st_mtime_ns) == before[path]
        assert not os.path.exists(path + ".source.json")
    if data_set == "pascal":
        assert len(dataset) == PASCAL_SIZES["val"][split]
    assert dataset.data_list[0] == first_entry
    assert all(image.startswith(data_root + os.sep) and label.startswith(data_root + os.sep)
               for image, label in dataset.data_list)
