"""The FSS list cache follows changes of its source; dropped-in (shipped) lists are never rewritten,
and a missing class list is derived from its data list."""
import inspect
import json
import os
import shutil
import warnings

import cv2
import numpy as np
import pytest

from tests.support.datasets import all_fold0_train_classes_dataset, block_label
from util import dataset as dataset_module
from util.dataset import (SemData, fss_list_paths, get_class_lists, load_fss_lists, make_fss_lists,
                          write_fss_lists)


def assert_warned_at_the_caller(raised):
    """The rebuild warnings point at the line that built the dataset (the SemData call of this
    file's helpers), not into util/dataset.py nor further up."""
    calls = set()
    for helper in (_dataset, _train_dataset):
        source, start = inspect.getsourcelines(helper)
        calls |= {(__file__, start + offset) for offset, line in enumerate(source) if "SemData(" in line}
    if "MUTANT_UNDER_TEST" not in os.environ:  # mutmut's trampoline adds a frame of its own
        assert raised and all((warning.filename, warning.lineno) in calls for warning in raised)


def _dataset(root, base_list, list_root):
    return SemData(split=0, shot=1, data_root=root, data_list=base_list, data_set="pascal",
                   mode="val", list_root=list_root, show_progress=False)


def test_changed_base_list_rebuilds_the_cache(toy_data_root, tmp_path):
    full = os.path.join(toy_data_root, "val.txt")
    with open(full) as handle:
        lines = handle.readlines()
    base = str(tmp_path / "val.txt")
    shutil.copy(full, base)
    list_root = str(tmp_path / "fss")
    first = _dataset(toy_data_root, base, list_root)
    with open(base, "w") as handle:
        handle.writelines(lines[: len(lines) * 2 // 3])
    with pytest.warns(UserWarning, match="rebuilding") as raised:
        second = _dataset(toy_data_root, base, list_root)
    assert_warned_at_the_caller(raised)
    expected_data, expected_sub = _lists_by_hand(toy_data_root, lines[: len(lines) * 2 // 3])
    assert second.data_list == expected_data and second.sub_class_file_list == expected_sub
    assert len(second.data_list) < len(first.data_list)
    third = _dataset(toy_data_root, base, list_root)  # unchanged now: no rebuild, same lists
    assert third.data_list == second.data_list and third.sub_class_file_list == second.sub_class_file_list


def _lists_by_hand(root, lines, val_classes=(1, 2, 3, 4, 5), min_pixels=2 * 32 * 32):
    """The FSS validation lists of fold 0 (test classes 1-5) of base list ``lines``, in their
    order, as the original's make_dataset defines them: an image counts for each test class
    covering at least 2048 pixels of its label; it joins the data list if one class counts."""
    data_list, sub_lists = [], {c: [] for c in val_classes}
    for line in lines:
        image, label = (os.path.join(root, part) for part in line.split())
        values, counts = np.unique(cv2.imread(label, cv2.IMREAD_GRAYSCALE), return_counts=True)
        counted = [int(c) for c, n in zip(values, counts) if c in val_classes and n >= min_pixels]
        if counted:
            data_list.append((image, label))
        for c in counted:
            sub_lists[c].append((image, label))
    return data_list, sub_lists


def test_lists_without_a_source_record_are_used_as_they_are(toy_data_root, tmp_path):
    base = os.path.join(toy_data_root, "val.txt")
    list_root = str(tmp_path / "fss")
    built = _dataset(toy_data_root, base, list_root)
    os.remove(built.data_list_path + ".source.json")
    other = str(tmp_path / "other.txt")
    with open(base) as handle:
        lines = handle.readlines()
    with open(other, "w") as handle:
        handle.writelines(lines[:10])
    reused = _dataset(toy_data_root, other, list_root)
    assert reused.data_list == built.data_list


ORIGINAL_PASCAL_ROOT = "../data/VOCdevkit2012/VOC2012/"


def _as_shipped(pairs):
    """Paths joined with the original's data_root, as in the FSS lists it shipped."""
    return [(ORIGINAL_PASCAL_ROOT + image, ORIGINAL_PASCAL_ROOT + label) for image, label in pairs]


@pytest.mark.parametrize("mode", ["train", "val"])
def test_a_missing_class_list_is_derived_from_the_data_list_exactly(toy_data_root, tmp_path, monkeypatch, mode):
    base = os.path.join(toy_data_root, f"{mode}.txt")
    train_classes, val_classes = get_class_lists("pascal", 0)
    data_list, sub_lists = make_fss_lists(toy_data_root, base, train_classes if mode == "train" else val_classes,
                                          filter_intersection=(mode == "train"), show_progress=False)
    list_root = str(tmp_path / "fss")
    data_path, sub_path = fss_list_paths(list_root, mode, 0)
    write_fss_lists(data_path, sub_path, _as_shipped(data_list),
                    {c: _as_shipped(items) for c, items in sub_lists.items()})
    with open(sub_path, "rb") as handle:
        original_sub_bytes = handle.read()
    with open(data_path, "rb") as handle:
        data_bytes = handle.read()
    os.remove(sub_path)

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt from the base list although the data_list exists")

    monkeypatch.setattr(dataset_module, "make_fss_lists", fail)
    dataset = SemData(split=0, shot=1, data_root=toy_data_root, data_list=base, data_set="pascal",
                      mode=mode, list_root=list_root, show_progress=False)
    with open(sub_path, "rb") as handle:
        assert handle.read() == original_sub_bytes
    with open(data_path, "rb") as handle:
        assert handle.read() == data_bytes
    assert not os.path.exists(data_path + ".source.json")
    assert os.path.isfile(sub_path + ".source.json")
    # The original's data_root in the list paths is moved onto the configured one.
    assert dataset.data_list[0] == tuple(os.path.join(toy_data_root, path) for path in data_list[0])

    # Deriving again when the data_list changes; the shipped-style data_list itself is kept.
    kept = data_bytes.splitlines(keepends=True)[: len(data_list) // 2]
    with open(data_path, "wb") as handle:
        handle.writelines(kept)
    with pytest.warns(UserWarning, match="deriving it again"):
        rederived = SemData(split=0, shot=1, data_root=toy_data_root, data_list=base, data_set="pascal",
                            mode=mode, list_root=list_root, show_progress=False)
    kept_pairs = set(_as_shipped(data_list[: len(kept)]))
    expected = {c: [pair for pair in _as_shipped(items) if pair in kept_pairs] for c, items in sub_lists.items()}
    assert load_fss_lists(data_path, sub_path)[1] == expected
    assert len(rederived) == len(kept)


def test_a_class_list_without_its_data_list_is_an_error(toy_data_root, tmp_path):
    list_root = str(tmp_path / "fss")
    built = _dataset(toy_data_root, os.path.join(toy_data_root, "val.txt"), list_root)
    os.remove(built.data_list_path)
    os.remove(built.data_list_path + ".source.json")
    with pytest.raises(FileNotFoundError, match=r"sub_class_file_list_0\.txt exists but .*data_list_0\.txt does not"):
        _dataset(toy_data_root, os.path.join(toy_data_root, "val.txt"), list_root)


def _train_dataset(root, base_list, list_root):
    return SemData(split=0, shot=1, data_root=str(root), data_list=str(base_list), data_set="pascal",
                   mode="train", list_root=str(list_root), show_progress=False)


@pytest.fixture
def two_roots(tmp_path):
    """Two data roots with the same base list text; under the second, c6_a's label shows class 7."""
    first, second = tmp_path / "a", tmp_path / "b"
    all_fold0_train_classes_dataset(str(first), extra=[("c6_c", block_label([6]), None)])
    shutil.copytree(first, second)
    cv2.imwrite(str(second / "SegmentationClassAug" / "c6_a.png"), block_label([7]))
    return first, second


def _pair(root, name):
    return (os.path.join(str(root), "JPEGImages", f"{name}.jpg"),
            os.path.join(str(root), "SegmentationClassAug", f"{name}.png"))


def test_lists_built_from_another_data_root_are_rebuilt(two_roots, tmp_path):
    first, second = two_roots
    list_root = tmp_path / "fss"
    _train_dataset(first, first / "train.txt", list_root)
    with pytest.warns(UserWarning, match=rf"train/data_list_0\.txt was built from data_root '{first}', not the "
                                         rf"configured '{second}'; rebuilding the FSS lists") as raised:
        rebuilt = _train_dataset(second, second / "train.txt", list_root)
    assert_warned_at_the_caller(raised)
    assert _pair(second, "c6_a") in rebuilt.sub_class_file_list[7]
    assert _pair(second, "c6_a") not in rebuilt.sub_class_file_list[6]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # recorded now: no second rebuild
        _train_dataset(second, second / "train.txt", list_root)


def test_a_class_list_derived_under_another_data_root_is_derived_again(two_roots, tmp_path):
    first, second = two_roots
    list_root = tmp_path / "fss"
    built = _train_dataset(first, first / "train.txt", list_root)
    os.remove(built.data_list_path + ".source.json")  # a dropped-in data list, never rewritten
    os.remove(built.sub_class_file_list_path)
    _train_dataset(first, first / "train.txt", list_root)  # derives the class lists under the first root
    with open(built.data_list_path, "rb") as handle:
        data_list_bytes = handle.read()
    with pytest.warns(UserWarning, match=rf"sub_class_file_list_0\.txt was built from data_root '{first}', not "
                                         rf"the configured '{second}'; deriving it again") as raised:
        derived = _train_dataset(second, second / "train.txt", list_root)
    assert_warned_at_the_caller(raised)
    assert _pair(second, "c6_a") in derived.sub_class_file_list[7]
    with open(built.data_list_path, "rb") as handle:
        assert handle.read() == data_list_bytes


def _as_written_by_an_earlier_version(record):
    del record["data_root"], record["classes"]


def _for_other_classes(record):  # e.g. COCO lists built with the other use_split_coco
    record["classes"] = [1, 5, 9]


@pytest.mark.parametrize("edit, reason", [
    (_as_written_by_an_earlier_version, r"records no data_root \(written by an earlier version\)"),
    (_for_other_classes, r"was built for the classes \[1, 5, 9\], not \[6, 7, "),
], ids=["earlier_version", "other_classes"])
def test_lists_whose_record_names_other_classes_or_no_data_root_are_rebuilt(tmp_path, edit, reason):
    root = tmp_path / "data"
    base = all_fold0_train_classes_dataset(str(root))
    built = _train_dataset(root, base, tmp_path / "fss")
    record_path = built.data_list_path + ".source.json"
    with open(record_path) as handle:
        record = json.load(handle)
    edit(record)
    with open(record_path, "w") as handle:
        json.dump(record, handle)
    with pytest.warns(UserWarning, match=rf"data_list_0\.txt {reason}.*rebuilding the FSS lists"):
        _train_dataset(root, base, tmp_path / "fss")
    with open(record_path) as handle:
        assert json.load(handle)["data_root"] == str(root)


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not a JSON record"),
    ("[1, 2]", "expected a JSON object"),
])
def test_a_damaged_source_record_is_named_with_what_to_do(toy_data_root, tmp_path, content, problem):
    base = os.path.join(toy_data_root, "val.txt")
    list_root = str(tmp_path / "fss")
    built = _dataset(toy_data_root, base, list_root)
    record_path = built.data_list_path + ".source.json"
    with open(record_path, "w") as handle:
        handle.write(content)
    with pytest.raises(ValueError) as error:
        _dataset(toy_data_root, base, list_root)
    if problem == "not a JSON record":
        assert str(error.value) == (
            f"{record_path}: not a JSON record {{'sha1': ...}} of the file {built.data_list_path} was built "
            f"from (Expecting property name enclosed in double quotes: line 1 column 2 (char 1)); delete it "
            f"together with {built.data_list_path} to rebuild the list")
    else:
        assert str(error.value) == f"{record_path}: expected a JSON object, got list"


def test_a_list_folder_that_cannot_be_written_is_refused_before_building(toy_data_root, tmp_path, monkeypatch):
    # The tests may run as root, for whom every folder is writable: os.access is asked instead.
    list_root = str(tmp_path / "fss")
    os.makedirs(list_root)
    real_access = os.access
    asked = []

    def read_only(path, mode):
        asked.append((path, mode))
        return False if os.path.abspath(path) == list_root and mode == os.W_OK | os.X_OK else real_access(path, mode)

    monkeypatch.setattr(dataset_module.os, "access", read_only)
    with pytest.raises(PermissionError) as error:
        _dataset(toy_data_root, os.path.join(toy_data_root, "val.txt"), list_root)
    assert str(error.value) == (f"list_root {list_root!r}: cannot write the FSS lists there ({list_root} is "
                                f"read-only or not yours): set list_root to a writable folder")
    assert (list_root, os.W_OK | os.X_OK) in asked


def test_an_empty_shipped_data_list_names_no_source(tmp_path):
    # A data list without a record (shipped, or dropped in) that is empty: the message cannot
    # name the base list it came from.
    root = str(tmp_path)
    base = all_fold0_train_classes_dataset(root)
    list_root = str(tmp_path / "lists")
    data_path, sub_path = fss_list_paths(list_root, "val", 0)
    write_fss_lists(data_path, sub_path, [], {c: [] for c in range(1, 6)})
    with pytest.raises(ValueError) as error:
        _dataset(root, base, list_root)
    assert str(error.value) == (f"{data_path}: empty data list (no image has a class of [1, 2, 3, 4, 5] "
                                f"covering 2048 pixels of its label)")


def test_a_record_left_beside_a_missing_data_list_does_not_count(two_roots, tmp_path):
    # Lists built under one data root; both list files then deleted by hand, the data list's
    # record left: the lists are built again from the base list, with no word about the other
    # data root (the record of a missing list says nothing).
    first, second = two_roots
    list_root = str(tmp_path / "lists")
    built = _train_dataset(first, os.path.join(first, "train.txt"), list_root)
    os.remove(built.data_list_path)
    os.remove(built.sub_class_file_list_path)
    assert os.path.isfile(built.data_list_path + ".source.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = _train_dataset(second, os.path.join(second, "train.txt"), list_root)
    assert again.data_list and all(image.startswith(str(second)) for image, _ in again.data_list)
