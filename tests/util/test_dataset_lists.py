"""Tests of util/dataset.py, the lists: class folds, list formats, the FSS list rule, list errors
and the list cache. The episodes are tested in test_dataset_episodes.py, changed base lists in
test_fss_list_cache.py."""

from __future__ import annotations

import json
import os
import random
import re
import warnings

import cv2
import numpy as np
import pytest

from tests.support.datasets import SMALL, all_fold0_train_classes_dataset, block_label, write_mini_dataset
from util import dataset as dataset_module
from util.dataset import (
    SemData,
    get_class_lists,
    load_fss_lists,
    make_fss_lists,
    read_pair_list,
    resolve_path,
    write_fss_lists,
)
from util.transform import build_val_transform


# ----------------------------------------------------------------------------------- class folds
def test_pascal_class_lists():
    for fold in range(4):
        train, val = get_class_lists("pascal", fold)
        assert val == [5 * fold + 1 + i for i in range(5)]
        assert train == sorted(set(range(1, 21)) - set(val))
    assert get_class_lists("pascal", 2)[0] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 17, 18, 19, 20]


def test_coco_class_lists():
    train, val = get_class_lists("coco", 0, use_split_coco=True)
    assert val == [1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 41, 45, 49, 53, 57, 61, 65, 69, 73, 77]
    assert len(train) == 60 and train == sorted(train) and not set(train) & set(val)
    assert get_class_lists("coco", 3, use_split_coco=True)[1][-1] == 80
    train, val = get_class_lists("coco", 1, use_split_coco=False)
    assert val == list(range(21, 41))
    assert train == list(range(1, 21)) + list(range(41, 81))


@pytest.mark.parametrize("args, word", [(("toy", 0), "data_set"), (("pascal", 4), "split"), (("coco", -1), "split")])
def test_class_lists_reject_unknown_values(args, word):
    with pytest.raises(ValueError) as error:
        get_class_lists(*args)
    message = str(error.value)
    assert word in message and repr(args[0] if word == "data_set" else args[1]) in message
    assert "allowed" in message


# ----------------------------------------------------------------------------------- list formats
def test_resolve_path_rules(tmp_path):
    assert resolve_path("/abs/JPEGImages/a.jpg", "data/voc") == "/abs/JPEGImages/a.jpg"
    assert resolve_path("JPEGImages/a.jpg", "data/voc") == os.path.join("data/voc", "JPEGImages/a.jpg")
    # Lists released with BAM/SCCAN hold data_root-joined paths: used unchanged.
    assert resolve_path("../data/VOC2012/JPEGImages/a.jpg", "../data/VOC2012") == "../data/VOC2012/JPEGImages/a.jpg"
    assert resolve_path("data/voc/JPEGImages/a.jpg", "data/voc/") == "data/voc/JPEGImages/a.jpg"
    # A path that merely shares a prefix string with data_root is still joined.
    assert resolve_path("data/voc2/a.jpg", "data/voc") == os.path.join("data/voc", "data/voc2/a.jpg")


def test_resolve_path_moves_the_original_data_root_onto_the_configured_one():
    shipped = "../data/VOCdevkit2012/VOC2012/JPEGImages/a.jpg"
    assert resolve_path(shipped, "/datasets/VOC2012", "pascal") == os.path.join("/datasets/VOC2012", "JPEGImages/a.jpg")
    assert resolve_path(shipped, "../data/VOCdevkit2012/VOC2012", "pascal") == shipped
    coco = "../data/MSCOCO2014/annotations/val2014/b.png"
    assert resolve_path(coco, "data/coco", "coco") == os.path.join("data/coco", "annotations/val2014/b.png")
    # Only the dataset's own original root, by whole path components; without data_set, joined.
    assert resolve_path(coco, "data/voc", "pascal") == os.path.join("data/voc", coco)
    assert resolve_path("../data/MSCOCO2014x/b.png", "data/coco", "coco") == os.path.join("data/coco", "../data/MSCOCO2014x/b.png")
    assert resolve_path(shipped, "/datasets/VOC2012") == os.path.join("/datasets/VOC2012", shipped)


def test_write_format_is_the_original_one(tmp_path):
    data_list = [("JPEGImages/a.jpg", "SegmentationClassAug/a.png"), ("JPEGImages/b.jpg", "SegmentationClassAug/b.png")]
    sub_lists = {1: [data_list[0]], 2: [data_list[0], data_list[1]], 3: []}
    data_path, sub_path = str(tmp_path / "data_list_0.txt"), str(tmp_path / "sub_class_file_list_0.txt")
    write_fss_lists(data_path, sub_path, data_list, sub_lists)
    # The original writes `img + ' ' + label + '\n'` lines and `str(dict)`.
    assert open(data_path).read() == "JPEGImages/a.jpg SegmentationClassAug/a.png\nJPEGImages/b.jpg SegmentationClassAug/b.png\n"
    assert open(sub_path).read() == (
        "{1: [('JPEGImages/a.jpg', 'SegmentationClassAug/a.png')], 2: [('JPEGImages/a.jpg', "
        "'SegmentationClassAug/a.png'), ('JPEGImages/b.jpg', 'SegmentationClassAug/b.png')], 3: []}"
    )
    assert load_fss_lists(data_path, sub_path) == (data_list, sub_lists)
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".partial")]  # atomic writes cleaned up


def _copy_toy_pair(toy_root, name, destination_root):
    for folder, extension in (("JPEGImages", ".jpg"), ("SegmentationClassAug", ".png")):
        os.makedirs(os.path.join(destination_root, folder), exist_ok=True)
        with open(os.path.join(toy_root, folder, name + extension), "rb") as source:
            with open(os.path.join(destination_root, folder, name + extension), "wb") as target:
                target.write(source.read())


@pytest.mark.parametrize("path_style", ["data_root_joined", "absolute", "relative"])
def test_reads_lists_in_the_released_formats(toy_data_root, tmp_path, monkeypatch, path_style):
    """A list pair as BAM/SCCAN ship it (dict literal with tuples; `img lbl` lines) drops in."""
    # Like the original: run from a work folder, data_root '../data/VOC2012' relative to it.
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    data_root = "../data/VOC2012" if path_style == "data_root_joined" else "data/VOC2012"
    # Three toy images that all contain class 3 (with >= 2048 px), found via the toy base list.
    names = []
    for line in open(os.path.join(toy_data_root, "val.txt")):
        label_rel = line.split()[1]
        label = cv2.imread(os.path.join(toy_data_root, label_rel), cv2.IMREAD_GRAYSCALE)
        if (label == 3).sum() >= 2048:
            names.append(os.path.splitext(os.path.basename(label_rel))[0])
        if len(names) == 3:
            break
    for name in names:
        _copy_toy_pair(toy_data_root, name, data_root)

    def path(folder, name, extension):
        relative = f"{folder}/{name}{extension}"
        if path_style == "data_root_joined":
            return f"{data_root}/{relative}"
        if path_style == "absolute":
            return os.path.abspath(os.path.join(data_root, relative))
        return relative

    pairs = [(path("JPEGImages", n, ".jpg"), path("SegmentationClassAug", n, ".png")) for n in names]
    list_dir = os.path.join("lists", "pascal", "fss_list", "val")  # the original's default location
    os.makedirs(list_dir)
    with open(os.path.join(list_dir, "data_list_0.txt"), "w") as handle:
        handle.writelines(f"{image} {label}\n" for image, label in pairs)
    literal = {c: (pairs if c == 3 else pairs[:2]) for c in range(1, 6)}
    with open(os.path.join(list_dir, "sub_class_file_list_0.txt"), "w") as handle:
        handle.write(str(literal))

    # list_root '' (the configs' "default") means the original's ./lists/<data_set>/fss_list.
    data = SemData(0, 1, data_root, None, data_set="pascal", mode="val", transform=build_val_transform(SMALL),
                   list_root="" if path_style == "absolute" else None)
    expected = [(resolve_path(i, data_root), resolve_path(l, data_root)) for i, l in pairs]
    if path_style != "relative":
        assert data.data_list == pairs  # used unchanged
    else:
        assert data.data_list == [(os.path.join(data_root, i), os.path.join(data_root, l)) for i, l in pairs]
    assert data.data_list == expected and data.sub_class_file_list[3] == expected
    random.seed(1)
    episode = data.sample_episode(0)
    assert episode["supports"][0] != episode["query"] and episode["supports"][0] in expected
    assert len(data[1]) == 6


# ----------------------------------------------------------------------------------- FSS lists
def test_make_fss_lists_rule_on_mini_data(tmp_path):
    """Hand-made labels where the expected lists are known without computing anything."""
    root = str(tmp_path)
    small = np.zeros((64, 64), np.uint8)
    small[:40, :40] = 7  # 1600 px < 2048: present but does not count
    entries = [
        ("a", block_label([6, 7]), None),   # both train classes (fold 0), both count
        ("b", block_label([6, 2]), None),   # class 2 is a test class of fold 0: filtered in train
        ("c", small, None),                 # class 7 too small: no class counts
        ("d", block_label([8]), None),
    ]
    base = write_mini_dataset(root, entries)
    train_classes, val_classes = get_class_lists("pascal", 0)
    data_list, sub_lists = make_fss_lists(root, base, train_classes, filter_intersection=True, show_progress=False)
    a = ("JPEGImages/a.jpg", "SegmentationClassAug/a.png")
    b = ("JPEGImages/b.jpg", "SegmentationClassAug/b.png")
    d = ("JPEGImages/d.jpg", "SegmentationClassAug/d.png")
    assert data_list == [a, d]
    assert sub_lists[6] == [a] and sub_lists[7] == [a] and sub_lists[8] == [d]
    assert sorted(sub_lists) == train_classes
    data_list, sub_lists = make_fss_lists(root, base, val_classes, filter_intersection=False, show_progress=False)
    assert data_list == [b] and sub_lists[2] == [b] and sub_lists[1] == []


# ----------------------------------------------------------------------------------- errors
def test_malformed_list_lines(tmp_path):
    root = str(tmp_path)
    base = write_mini_dataset(root, [("a", block_label([6]), None), ("b", block_label([6]), None)])
    with open(base, "a") as handle:
        handle.write("\nJPEGImages/c.jpg\n")
    with pytest.raises(ValueError, match=r"train\.txt:4: malformed list line"):
        read_pair_list(base)
    with pytest.raises(ValueError, match=r"train\.txt:4"):
        SemData(0, 1, root, base, list_root=os.path.join(root, "lists"), show_progress=False)


def test_malformed_dict_literal_is_not_executed(tmp_path):
    data_path, sub_path = tmp_path / "data_list_0.txt", tmp_path / "sub_class_file_list_0.txt"
    data_path.write_text("a.jpg a.png\n")
    marker = tmp_path / "executed"
    sub_path.write_text(f"{{1: [('a.jpg', 'a.png')], 2: open({str(marker)!r}, 'w')}}")
    with pytest.raises(ValueError, match="sub_class_file_list_0.txt"):
        load_fss_lists(str(data_path), str(sub_path))
    assert not marker.exists()
    sub_path.write_text("{1: [('a.jpg',)]}")
    with pytest.raises(ValueError, match="malformed item"):
        load_fss_lists(str(data_path), str(sub_path))


def test_unreadable_label_while_building_lists(tmp_path):
    root = str(tmp_path)
    base = write_mini_dataset(root, [("a", block_label([6]), None), ("b", block_label([6]), None)])
    with open(os.path.join(root, "SegmentationClassAug", "b.png"), "wb") as handle:
        handle.write(b"not a png")
    with pytest.raises(FileNotFoundError, match=r"train\.txt:2: cannot read label .*b\.png"):
        make_fss_lists(root, base, [6], filter_intersection=True, show_progress=False)


def test_lists_for_another_data_root_give_a_clear_error(tmp_path):
    root = str(tmp_path / "a")
    base = all_fold0_train_classes_dataset(root)
    built = SemData(0, 1, root, base, list_root=str(tmp_path / "lists"), show_progress=False)
    other = tmp_path / "b"
    other.mkdir()
    # Built here: the record names the data_root, and without the base list there is no rebuilding.
    with pytest.raises(FileNotFoundError, match=rf"data_list_0\.txt was built from data_root '{root}', not the "
                                                rf"configured '{other}', and train_list None, needed to rebuild "
                                                rf"it, is not set: set train_list, or set list_root"):
        SemData(0, 1, str(other), None, list_root=str(tmp_path / "lists"), show_progress=False)
    # Dropped in without a record (the shipped lists): the first entry is looked for.
    os.remove(built.data_list_path + ".source.json")
    with pytest.raises(FileNotFoundError, match="first entry of .*data_list_0.txt"):
        SemData(0, 1, str(other), None, list_root=str(tmp_path / "lists"), show_progress=False)


def test_lists_are_built_once_and_reused(tmp_path, monkeypatch):
    root = str(tmp_path)
    base = all_fold0_train_classes_dataset(root)
    list_root = os.path.join(root, "lists")
    first = SemData(0, 1, root, base, list_root=list_root, show_progress=False)
    assert os.path.isfile(os.path.join(list_root, "train", "data_list_0.txt"))

    def fail(*args, **kwargs):
        raise AssertionError("lists rebuilt although cached")

    monkeypatch.setattr(dataset_module, "make_fss_lists", fail)
    second = SemData(0, 1, root, base, list_root=list_root, show_progress=False)
    assert second.data_list == first.data_list and second.sub_class_file_list == first.sub_class_file_list
    assert len(first) == 30


def _refuse_building(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("lists built before the check")

    monkeypatch.setattr(dataset_module, "make_fss_lists", fail)


def test_list_lines_with_more_than_two_fields_say_that_paths_cannot_contain_spaces(tmp_path):
    base = tmp_path / "val.txt"
    base.write_text("JPEGImages/a.jpg SegmentationClassAug/a.png\nwith space/b.jpg with space/b.png\n")
    with pytest.raises(ValueError) as error:
        read_pair_list(str(base))
    assert str(error.value) == (f"{base}:2: malformed list line 'with space/b.jpg with space/b.png': 4 fields, "
                                f"expected '<image path> <label path>' (list paths cannot contain spaces)")
    base.write_text("JPEGImages/a.jpg\n")
    with pytest.raises(ValueError) as error:
        read_pair_list(str(base))
    assert str(error.value) == f"{base}:1: malformed list line 'JPEGImages/a.jpg': 1 field, expected '<image path> <label path>'"
    base.write_text("a.jpg b.png c\n")  # three fields: the hint too
    with pytest.raises(ValueError) as error:
        read_pair_list(str(base))
    assert str(error.value) == (f"{base}:1: malformed list line 'a.jpg b.png c': 3 fields, expected "
                                f"'<image path> <label path>' (list paths cannot contain spaces)")


def test_repeated_list_lines_are_kept_as_the_original_does_with_a_warning_naming_them(tmp_path):
    root = str(tmp_path)
    base = all_fold0_train_classes_dataset(root)
    with open(base) as handle:
        first = handle.readline()
    with open(base, "a") as handle:
        handle.write(first + first)  # lines 31 and 32 repeat line 1
    list_root = os.path.join(root, "lists")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = SemData(0, 1, root, base, list_root=list_root, show_progress=False)
    repeats = [str(warning.message) for warning in caught if "repeats lines" in str(warning.message)]
    assert repeats == [f"{base} repeats lines: lines 1, 31, 32: '{first.strip()}'; every copy is used (a query and "
                       f"a support candidate of its own, as in the original): remove the repeats to count each "
                       f"image once"]
    pair = tuple(os.path.join(root, part) for part in first.split())
    assert data.data_list.count(pair) == 3 and data.sub_class_file_list[6].count(pair) == 3
    # The cached data list keeps them: named again on every later run, with its own line numbers.
    with pytest.warns(UserWarning, match=r"train/data_list_0\.txt repeats lines: lines 1, 31, 32"):
        SemData(0, 1, root, base, list_root=list_root, show_progress=False)


def test_empty_and_folder_base_lists_are_named_by_their_config_key(tmp_path, monkeypatch):
    root = str(tmp_path)
    all_fold0_train_classes_dataset(root)
    _refuse_building(monkeypatch)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match=rf"^train_list '{re.escape(str(empty))}' is empty \(no '<image path> "
                                         r"<label path>' lines\): the FSS lists are built from it"):
        SemData(0, 1, root, str(empty), list_root=str(tmp_path / "lists"), show_progress=False)
    with pytest.raises(ValueError, match=rf"^val_list '{re.escape(root)}' is a folder, not a base list: expected "
                                         r"a text file of '<image path> <label path>' lines"):
        SemData(0, 1, root, root, mode="val", list_root=str(tmp_path / "lists"), show_progress=False)
    assert not (tmp_path / "lists").exists()


def test_a_base_list_without_a_test_class_names_the_list(tmp_path):
    root = str(tmp_path)
    base = all_fold0_train_classes_dataset(root)  # fold 0's base classes only
    with pytest.raises(ValueError, match=rf"val/data_list_0\.txt: empty data list \(no image of val_list "
                                         rf"'{re.escape(base)}' has a class of \[1, 2, 3, 4, 5\] covering 2048 pixels"):
        SemData(0, 1, root, base, mode="val", list_root=str(tmp_path / "lists"), show_progress=False)


def test_a_list_root_that_is_a_file_or_holds_folders_for_files_is_refused_before_building(tmp_path, monkeypatch):
    root = str(tmp_path / "data")
    base = all_fold0_train_classes_dataset(root)
    _refuse_building(monkeypatch)
    a_file = tmp_path / "lists.txt"
    a_file.write_text("kept")
    expected = "list_root is the folder of the FSS lists (<list_root>/train/data_list_0.txt and sub_class_file_list_0.txt)"
    for list_root, named in ((a_file, f"list_root '{a_file}' is a file"),
                             (a_file / "fss", f"list_root '{a_file / 'fss'}': {a_file} is a file")):
        with pytest.raises(ValueError) as error:
            SemData(0, 1, root, base, list_root=str(list_root), show_progress=False)
        assert str(error.value) == f"{named}, not a folder; {expected}"
    (tmp_path / "fss" / "train" / "data_list_0.txt").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"fss/train/data_list_0\.txt \(below list_root '.*fss'\) is a folder, "
                                         r"not a list file"):
        SemData(0, 1, root, base, list_root=str(tmp_path / "fss"), show_progress=False)
    assert a_file.read_text() == "kept"


def test_a_class_counts_from_exactly_2048_pixels(tmp_path):
    """The original's rule (make_dataset): a class joins an image's classes when it covers at
    least 2 x 32 x 32 = 2048 pixels; one pixel fewer and the image is not listed for it."""
    label = np.zeros((64, 96), np.uint8)
    label.reshape(-1)[:2048] = 6           # exactly 2048 px
    label.reshape(-1)[3000:3000 + 2047] = 7  # one short
    base_list = write_mini_dataset(str(tmp_path), [("edge", label, None)])
    data_list, sub_class_file_list = make_fss_lists(str(tmp_path), base_list, [6, 7], filter_intersection=False,
                                                    show_progress=False)
    pair = ("JPEGImages/edge.jpg", "SegmentationClassAug/edge.png")
    assert [tuple(entry) for entry in data_list] == [pair]
    assert [tuple(entry) for entry in sub_class_file_list[6]] == [pair] and sub_class_file_list[7] == []


def test_deriving_class_lists_warns_once_naming_the_entries_without_a_class(tmp_path, capsys):
    """derive_sub_class_file_list (a data_list whose class list is gone): entries whose label has
    no class of the fold covering 2048 pixels are listed in one warning (the first five line
    numbers), a repeated line is not warned about here (the caller's load_fss_lists does), and a
    data_list whose entries all have a class gives no warning at all. The progress bar names the
    list unless ``show_progress`` is off."""
    small = np.zeros((64, 64), np.uint8)
    small[:40, :40] = 6  # 1600 px: present, not counted
    entries = [(f"none{index}", small, None) for index in range(6)] + [("six", block_label([6]), None)]
    root = str(tmp_path)
    write_mini_dataset(root, entries)
    data_list = tmp_path / "data_list_0.txt"
    lines = [f"JPEGImages/{name}.jpg SegmentationClassAug/{name}.png\n" for name, _, _ in entries]
    data_list.write_text("".join(lines + lines[-1:]))  # the last entry twice
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        derived = dataset_module.derive_sub_class_file_list(root, str(data_list), [7, 6], data_set="pascal")
    six = ("JPEGImages/six.jpg", "SegmentationClassAug/six.png")
    assert derived == {6: [six, six], 7: []}
    assert [str(warning.message) for warning in caught] == [
        f"{data_list}: 6 entries (lines [1, 2, 3, 4, 5]...) have no class of [6, 7] covering 2048 pixels "
        f"in their label; these labels differ from the ones the list was built from"]
    if "MUTANT_UNDER_TEST" not in os.environ:  # mutmut's trampoline adds a frame of its own
        assert caught[0].filename == __file__  # stacklevel 2: the caller's line
    assert "deriving the class lists of data_list_0.txt" in capsys.readouterr().err

    data_list.write_text(lines[-1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert dataset_module.derive_sub_class_file_list(root, str(data_list), [6], show_progress=False,
                                                         data_set="pascal") == {6: [six]}
    assert caught == [] and capsys.readouterr().err == ""


def test_list_building_checks_label_values_against_the_dataset(tmp_path, capsys):
    """A label value that is no class of the dataset (42 in PASCAL) stops the building of the
    lists, named by its list line; the progress bar names the base list."""
    label = block_label([6])
    label[0, 0] = 42
    root = str(tmp_path)
    base = write_mini_dataset(root, [("six", block_label([6]), None), ("odd", label, None)])
    with pytest.raises(ValueError, match=r"train\.txt:2: .*odd\.png.*42"):
        make_fss_lists(root, base, [6], filter_intersection=False, data_set="pascal")
    assert "building FSS lists from train.txt" in capsys.readouterr().err
    data_list = tmp_path / "data_list_0.txt"
    data_list.write_text("JPEGImages/odd.jpg SegmentationClassAug/odd.png\n")
    with pytest.raises(ValueError, match=r"data_list_0\.txt:1: .*odd\.png.*42"):
        dataset_module.derive_sub_class_file_list(root, str(data_list), [6], show_progress=False, data_set="pascal")


def test_semdata_passes_its_progress_switch_and_dataset_to_the_list_building(tmp_path, capsys):
    """SemData builds its lists (and derives a missing class list) with its own ``show_progress``
    and checks the labels against its own dataset."""
    root = str(tmp_path)
    base = all_fold0_train_classes_dataset(root)
    lists = str(tmp_path / "lists")
    built = SemData(0, 1, root, base, list_root=lists, show_progress=False)
    assert "building FSS lists" not in capsys.readouterr().err
    os.remove(built.sub_class_file_list_path)  # derived from the data list next
    SemData(0, 1, root, base, list_root=lists, show_progress=False)
    assert "deriving the class lists" not in capsys.readouterr().err
    os.remove(built.sub_class_file_list_path)
    SemData(0, 1, root, base, list_root=lists, show_progress=True)
    assert "deriving the class lists of data_list_0.txt" in capsys.readouterr().err
    SemData(0, 1, root, base, list_root=str(tmp_path / "other_lists"), show_progress=True)
    assert "building FSS lists from train.txt" in capsys.readouterr().err
    odd = block_label([6])
    odd[0, 0] = 42
    write_mini_dataset(root, [("six", block_label([6]), None), ("odd", odd, None)], list_name="odd.txt")
    with pytest.raises(ValueError, match=r"odd\.txt:2: .*odd\.png.* has values 42 outside 0 \(background\), 1\.\.20 "
                                         r"\(the classes\) and 255 \(ignored\); expected .* pascal class ids"):
        SemData(0, 1, root, os.path.join(root, "odd.txt"), list_root=str(tmp_path / "odd_lists"),
                show_progress=False)


def test_a_derived_class_list_records_its_data_list_and_loses_the_record_when_both_are_rebuilt(tmp_path):
    root = str(tmp_path)
    base = all_fold0_train_classes_dataset(root)
    lists = str(tmp_path / "lists")
    built = SemData(0, 1, root, base, list_root=lists, show_progress=False)
    sub_record = built.sub_class_file_list_path + ".source.json"
    assert not os.path.exists(sub_record)  # both built from the base list: the data list's record says so
    os.remove(built.sub_class_file_list_path)
    SemData(0, 1, root, base, list_root=lists, show_progress=False)
    with open(sub_record) as handle:
        record = json.load(handle)
    assert set(record) == {"data_list", "sha1", "data_root", "classes"}
    assert record["data_list"] == os.path.abspath(built.data_list_path)
    with open(base, "a") as handle:  # the base list changes: both lists are built again from it
        handle.write("JPEGImages/c6_a.jpg SegmentationClassAug/c6_a.png\n")
    with pytest.warns(UserWarning, match="rebuilding the FSS lists"):
        SemData(0, 1, root, base, list_root=lists, show_progress=False)
    assert not os.path.exists(sub_record)


def _class_list_derived_for_other_classes(tmp_path):
    """Lists built from the mini dataset's base list, the class list then derived from the data
    list, and its record edited to name the classes [1, 2]: (root, base list, list_root, dataset)."""
    root = str(tmp_path)
    base = all_fold0_train_classes_dataset(root)
    lists = str(tmp_path / "lists")
    built = SemData(0, 1, root, base, list_root=lists, show_progress=False)
    os.remove(built.sub_class_file_list_path)
    SemData(0, 1, root, base, list_root=lists, show_progress=False)
    sub_record = built.sub_class_file_list_path + ".source.json"
    with open(sub_record) as handle:
        record = json.load(handle)
    with open(sub_record, "w") as handle:
        json.dump(dict(record, classes=[1, 2]), handle)
    return root, base, lists, built


def test_a_class_list_derived_for_other_classes_is_derived_again(tmp_path):
    root, base, lists, built = _class_list_derived_for_other_classes(tmp_path)
    with pytest.warns(UserWarning) as raised:
        SemData(0, 1, root, base, list_root=lists, show_progress=False)
    assert [str(warning.message) for warning in raised] == [
        f"{built.sub_class_file_list_path} was built for the classes [1, 2], not {list(range(6, 21))}; "
        f"deriving it again"]


def test_a_class_list_left_without_its_data_list_is_rebuilt_without_a_word_about_it(tmp_path):
    # The class list was derived (it has a record); its data list is then deleted: both are
    # built from the base list, and the stale class list gives no "deriving it again" warning.
    root, base, lists, built = _class_list_derived_for_other_classes(tmp_path)
    sub_record = built.sub_class_file_list_path + ".source.json"
    os.remove(built.data_list_path)
    os.remove(built.data_list_path + ".source.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rebuilt = SemData(0, 1, root, base, list_root=lists, show_progress=False)
    assert rebuilt.data_list and not os.path.exists(sub_record)


def test_missing_base_lists_are_named_as_given_and_as_set_or_missing(tmp_path, monkeypatch):
    root = str(tmp_path / "a")
    base = all_fold0_train_classes_dataset(root)
    lists = str(tmp_path / "lists")
    SemData(0, 1, root, base, list_root=lists, show_progress=False)
    other = tmp_path / "b"
    other.mkdir()
    gone = str(tmp_path / "gone.txt")
    with pytest.raises(FileNotFoundError) as error:  # built for other data, and the base list is missing
        SemData(0, 1, str(other), gone, list_root=lists, show_progress=False)
    assert str(error.value).startswith(f"{os.path.join(lists, 'train', 'data_list_0.txt')} was built from data_root "
                                       f"{root!r}, not the configured {str(other)!r}, and train_list {gone!r}, "
                                       f"needed to rebuild it, does not exist: set train_list, or set list_root")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:  # a relative base list: the folder it is relative to
        SemData(0, 1, root, "missing.txt", list_root=str(tmp_path / "new_lists"), show_progress=False)
    assert str(error.value).startswith(f"train_list 'missing.txt' (relative to the working directory "
                                       f"{tmp_path}) not found (the base list, needed to build the missing FSS "
                                       f"lists ")


def test_a_missing_first_entry_names_a_relative_data_root_with_its_folder(tmp_path, monkeypatch):
    root = tmp_path / "a"
    base = all_fold0_train_classes_dataset(str(root))
    lists = str(tmp_path / "lists")
    built = SemData(0, 1, str(root), base, list_root=lists, show_progress=False)
    os.remove(built.data_list_path + ".source.json")  # used as shipped: not rebuilt
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        SemData(0, 1, "b", None, list_root=lists, show_progress=False)
    assert f"are joined with data_root='b' (relative to the working directory {tmp_path}) unless" in str(error.value)


def test_the_repeated_lines_warning_shows_three_pairs_and_counts_the_rest(tmp_path):
    lines = [f"JPEGImages/{name}.jpg SegmentationClassAug/{name}.png\n" for name in "abcde"]
    base = tmp_path / "base.txt"
    base.write_text("".join(lines + lines[:4]))  # a..d twice each (lines 1-4 and 6-9), e once
    with pytest.warns(UserWarning) as raised:
        read_pair_list(str(base))
    shown = "; ".join(f"lines {n}, {n + 5}: 'JPEGImages/{name}.jpg SegmentationClassAug/{name}.png'"
                      for n, name in zip((1, 2, 3), "abc"))
    assert [str(warning.message) for warning in raised] == [
        f"{base} repeats lines: {shown} (and 1 more repeated pairs); every copy is used (a query and a support "
        f"candidate of its own, as in the original): remove the repeats to count each image once"]
    if "MUTANT_UNDER_TEST" not in os.environ:  # mutmut's trampoline adds a frame of its own
        assert raised[0].filename == __file__  # stacklevel 3: the caller of read_pair_list's caller
    base.write_text("".join(lines + lines[:3]))  # exactly three repeated pairs: no "more"
    with pytest.warns(UserWarning) as raised:
        read_pair_list(str(base))
    assert str(raised[0].message).startswith(f"{base} repeats lines: {shown}; every copy is used")


def test_list_files_must_be_utf8_and_may_end_lines_with_a_lone_carriage_return(tmp_path):
    base = tmp_path / "base.txt"
    base.write_bytes(b"JPEGImages/a.jpg SegmentationClassAug/a.png\rJPEGImages/b.jpg SegmentationClassAug/b.png\r")
    assert read_pair_list(str(base)) == [("JPEGImages/a.jpg", "SegmentationClassAug/a.png", 1),
                                         ("JPEGImages/b.jpg", "SegmentationClassAug/b.png", 2)]
    base.write_bytes(b"JPEGImages/\xff.jpg SegmentationClassAug/a.png\n")
    with pytest.raises(ValueError) as error:
        read_pair_list(str(base))
    assert str(error.value) == (f"{base}, line 1, column 12 (byte offset 11): byte 0xff is not UTF-8 (invalid start "
                                f"byte); a list file must be UTF-8 text: re-save it as UTF-8")


@pytest.mark.parametrize("content, problem", [
    (b"[1, 2]", "expected a dict literal, got list"),
    (b"{6: 5}", "entry 6 is not 'int: [(img, lbl), ...]'"),
    (b"{'6': []}", "entry '6' is not 'int: [(img, lbl), ...]'"),
    (b"{6: [('a', \xff)]}", None),
])
def test_a_malformed_class_list_file_is_named_with_its_problem(tmp_path, content, problem):
    data_list, sub_list = tmp_path / "data_list_0.txt", tmp_path / "sub_class_file_list_0.txt"
    data_list.write_text("a.jpg a.png\n")
    sub_list.write_bytes(content)
    with pytest.raises(ValueError) as error:
        load_fss_lists(str(data_list), str(sub_list))
    if problem is None:
        assert str(error.value) == (f"{sub_list}, line 1, column 12 (byte offset 11): byte 0xff is not UTF-8 "
                                    f"(invalid start byte); a list file must be UTF-8 text: re-save it as UTF-8")
    else:
        assert str(error.value) == f"{sub_list}: {problem}"


def test_loading_a_data_list_warns_about_repeats_unless_told_not_to(tmp_path):
    data_list, sub_list = tmp_path / "data_list_0.txt", tmp_path / "sub_class_file_list_0.txt"
    data_list.write_text("a.jpg a.png\na.jpg a.png\n")
    sub_list.write_text("{6: [('a.jpg', 'a.png')]}")
    with pytest.warns(UserWarning, match="repeats lines: lines 1, 2"):
        load_fss_lists(str(data_list), str(sub_list))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_fss_lists(str(data_list), str(sub_list), warn_repeats=False)


def test_class_lists_take_the_default_coco_folds_and_name_a_bad_choice():
    assert get_class_lists("coco", 1)[1] == list(range(21, 41))  # use_split_coco defaults to False
    for arguments, message in ((("toy", 0), "unknown data_set 'toy'; allowed: 'pascal', 'coco', 'semantic'"),
                               (("pascal", 4), "unknown split 4; allowed: 0, 1, 2, 3")):
        with pytest.raises(ValueError) as error:
            get_class_lists(*arguments)
        assert str(error.value) == message


def test_semdata_defaults_and_its_public_attributes(tmp_path, capsys):
    root = str(tmp_path)
    base = all_fold0_train_classes_dataset(root)
    data = SemData(data_root=root, data_list=base, list_root=str(tmp_path / "lists"))
    assert (data.split, data.shot, data.data_set, data.mode, data.num_classes) == (0, 1, "pascal", "train", 20)
    assert data.class_list == list(range(6, 21))  # fold 0 of PASCAL, whatever use_split_coco
    assert "building FSS lists from train.txt" in capsys.readouterr().err  # progress shown by default


def test_a_missing_data_root_and_a_folder_base_list_are_named_relative_to_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        SemData(0, 1, "nowhere", "train.txt", list_root="lists")
    assert str(error.value).startswith(f"data_root 'nowhere' (relative to the working directory {tmp_path}) does "
                                       f"not exist or is not a folder; expected layout: ")
    with pytest.raises(FileNotFoundError) as error:
        SemData(0, 1, None, "train.txt", list_root="lists")
    assert str(error.value).startswith("data_root None does not exist or is not a folder; expected layout: ")
    all_fold0_train_classes_dataset(str(tmp_path / "data"))
    (tmp_path / "folder_list").mkdir()
    with pytest.raises(ValueError) as error:
        SemData(0, 1, "data", "folder_list", list_root="lists")
    assert str(error.value).startswith(f"train_list 'folder_list' (relative to the working directory {tmp_path}) is "
                                       f"a folder, not a base list")


def test_a_file_below_list_root_where_a_folder_belongs_is_named(tmp_path):
    root = str(tmp_path / "data")
    base = all_fold0_train_classes_dataset(root)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train").write_text("not a folder")
    with pytest.raises(ValueError) as error:
        SemData(0, 1, root, base, list_root=str(lists), show_progress=False)
    assert str(error.value).startswith(f"list_root {str(lists)!r}: {lists / 'train'} is a file, not a folder; "
                                       f"list_root is the folder of the FSS lists")


def test_a_coco_dataset_takes_the_consecutive_folds_unless_told_otherwise(tmp_path):
    # SemData's use_split_coco defaults to False: COCO fold 0 tests classes 1..20 (with True it
    # would test 1, 5, 9, ..., 77, which this data lacks).
    root = str(tmp_path)
    entries = [(f"c{c}_{copy}", block_label([c]), None) for c in range(1, 21) for copy in "ab"]
    base = write_mini_dataset(root, entries)
    data = SemData(0, 1, root, base, data_set="coco", mode="val", list_root=str(tmp_path / "lists"),
                   show_progress=False)
    assert data.class_list == list(range(1, 21)) and data.num_classes == 80
