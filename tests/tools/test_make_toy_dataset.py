"""Tests of tools/make_toy_dataset.py and of the FSS lists built from the toy data."""

from __future__ import annotations

import filecmp
import json
import os

import cv2
import numpy as np
import pytest

from tools import make_toy_dataset as toy
from util.cli import UserError
from util.dataset import SemData, get_class_lists

CLASSES = range(1, 21)


def _entries(root, subset):
    pairs = []
    for line in open(os.path.join(root, f"{subset}.txt")):
        image_rel, label_rel = line.split()
        pairs.append((image_rel, label_rel))
    return pairs


@pytest.fixture(scope="module")
def toy_labels(toy_data_root):
    """{subset: [(image path, label path, label array)]} read once for the module."""
    return {
        subset: [
            (os.path.join(toy_data_root, i), os.path.join(toy_data_root, l),
             cv2.imread(os.path.join(toy_data_root, l), cv2.IMREAD_GRAYSCALE))
            for i, l in _entries(toy_data_root, subset)
        ]
        for subset in ("train", "val")
    }


def test_layout_and_base_lists(toy_data_root, toy_labels):
    assert len(toy_labels["train"]) == 200 and len(toy_labels["val"]) == 100
    for subset in ("train", "val"):
        for image_rel, label_rel in _entries(toy_data_root, subset):
            name = os.path.splitext(os.path.basename(image_rel))[0]
            assert image_rel == f"JPEGImages/{name}.jpg" and label_rel == f"SegmentationClassAug/{name}.png"
    names = {os.path.splitext(n)[0] for n in os.listdir(os.path.join(toy_data_root, "JPEGImages"))}
    assert len(names) == 300


def test_images_and_labels_follow_the_recipe(toy_labels):
    square, sides = 0, []
    for subset in ("train", "val"):
        for image_path, _, label in toy_labels[subset]:
            image = cv2.imread(image_path)
            assert image.shape[:2] == label.shape
            height, width = label.shape
            sides += [height, width]
            square += height == width
            values = set(np.unique(label).tolist())
            assert values <= set(range(0, 21)) | {255} and 0 in values and 255 in values
            classes = sorted(values - {0, 255})
            assert 1 <= len(classes) <= 3  # distinct classes: one object per class
            for c in classes:
                assert int((label == c).sum()) >= 2048
            # The 255 band separates every object from the background (no 4-neighbour contact).
            objects = (label != 0) & (label != 255)
            background = label == 0
            assert not (objects[1:] & background[:-1]).any() and not (objects[:, 1:] & background[:, :-1]).any()
            # The background is cluttered/noisy, not flat.
            assert image[background].std() > 10
    assert square == 0 and min(sides) >= 150 and max(sides) <= 300
    multi = sum(len(set(np.unique(l).tolist()) - {0, 255}) > 1 for _, _, l in toy_labels["train"])
    assert multi > 100  # most queries need the support to know what to segment


def _brute_force(entries, class_list, training):
    data_list, sub_lists = [], {c: [] for c in class_list}
    for image_path, label_path, label in entries:
        present = [c for c in CLASSES if (label == c).any()]
        if training and any(c not in class_list for c in present):
            continue
        counting = [c for c in present if c in class_list and int((label == c).sum()) >= 2048]
        if counting:
            data_list.append((image_path, label_path))
        for c in counting:
            sub_lists[c].append((image_path, label_path))
    return data_list, sub_lists


@pytest.mark.parametrize("split", [0, 1, 2, 3])
def test_fss_lists_equal_brute_force_and_cover_every_fold(toy_data_root, toy_labels, split):
    for mode, subset in (("train", "train"), ("val", "val")):
        data = SemData(split, 5, toy_data_root, os.path.join(toy_data_root, f"{subset}.txt"), data_set="pascal",
                       mode=mode, list_root=os.path.join(toy_data_root, "fss_list"), show_progress=False)
        train_classes, val_classes = get_class_lists("pascal", split)
        class_list = train_classes if mode == "train" else val_classes
        data_list, sub_lists = _brute_force(toy_labels[subset], class_list, training=(mode == "train"))
        assert data.data_list == data_list
        assert data.sub_class_file_list == sub_lists
        assert min(len(v) for v in sub_lists.values()) >= 6  # enough for 5-shot episodes
        assert len(data_list) >= (100 if mode == "train" else 35)


def test_meta_and_readme(toy_data_root):
    meta = json.load(open(os.path.join(toy_data_root, "meta.json")))
    assert meta["parameters"] == {"generator_version": toy.GENERATOR_VERSION, "num_images": 300, "seed": 0}
    assert meta["data_set"] == "pascal" and len(meta["classes"]) == 20
    descriptions = {(d["shape"], d["style"]) for d in meta["classes"].values()}
    assert len(descriptions) == 20  # 20 distinct shape x style combinations
    for fold in range(4):  # each fold's test classes use several styles (not one style per fold)
        assert len({meta["classes"][str(c)]["style"] for c in range(5 * fold + 1, 5 * fold + 6)}) >= 3
    readme = open(os.path.join(toy_data_root, "README.txt")).read()
    assert "seed=0" in readme and "triangle" in readme


def test_rerun_with_same_parameters_is_a_no_op(toy_data_root, capsys):
    meta_path = os.path.join(toy_data_root, "meta.json")
    before = os.stat(meta_path).st_mtime_ns
    assert toy.main(["--out", toy_data_root, "--seed", "0", "--num-images", "300"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert os.stat(meta_path).st_mtime_ns == before


def test_regeneration_is_deterministic_and_replaces_an_older_toy_dataset(toy_data_root, tmp_path):
    out = tmp_path / "toy"
    (out / "fss_list").mkdir(parents=True)
    (out / "meta.json").write_text(json.dumps({"parameters": {"generator_version": 0, "num_images": 10, "seed": 0}}))
    toy.make_toy_dataset(str(out), num_images=300, seed=0)
    assert not (out / "fss_list").exists()  # stale cached lists went with the old dataset
    for folder in ("JPEGImages", "SegmentationClassAug"):
        names = sorted(os.listdir(out / folder))
        match, mismatch, errors = filecmp.cmpfiles(out / folder, os.path.join(toy_data_root, folder), names, shallow=False)
        assert len(match) == 300 and not mismatch and not errors
    assert filecmp.cmp(out / "train.txt", os.path.join(toy_data_root, "train.txt"), shallow=False)


def test_another_seed_gives_other_images():
    first = toy._render_image([3, 9], np.random.default_rng(0))
    again = toy._render_image([3, 9], np.random.default_rng(0))
    other = toy._render_image([3, 9], np.random.default_rng(1))
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[0].shape != other[0].shape or not np.array_equal(first[0], other[0])


def test_refuses_foreign_folders_and_too_few_images(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "photo.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        toy.make_toy_dataset(str(foreign), num_images=300, seed=0)
    assert (foreign / "photo.jpg").exists()
    with pytest.raises(ValueError, match="too small"):
        toy.make_toy_dataset(str(tmp_path / "tiny"), num_images=12, seed=0)
    assert not (tmp_path / "tiny").exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".toy_")]  # temp folders cleaned up


def test_out_and_seed_are_checked_before_any_image_is_drawn(tmp_path, capsys):
    """--out a file (or below one) was found at the final rename, after the whole dataset was
    drawn; --seed -1 was numpy's message without the option."""
    from tests.scripts.test_cli_errors import assert_user_error, run

    a_file = tmp_path / "a_file"
    a_file.write_text("kept")
    result = run("-m", "tools.make_toy_dataset", "--out", str(a_file))  # as a user runs it
    assert_user_error(result)
    assert result.stderr.strip() == f"error: --out {a_file}: is a file, not a folder; give a folder path"
    with pytest.raises(UserError) as refused:
        toy.make_toy_dataset(str(a_file / "toy"), option="--data-root")
    assert str(refused.value) == f"--data-root {a_file / 'toy'}: {a_file} is a file, not a folder"
    assert sorted(os.listdir(tmp_path)) == ["a_file"] and a_file.read_text() == "kept"
    for option, value, expected in (("--seed", "-1", "expected a non-negative integer, got -1"),
                                    ("--num-images", "0", "expected a positive integer, got 0")):
        with pytest.raises(SystemExit) as exit_status:
            toy.main(["--out", str(tmp_path / "toy"), option, value])
        assert exit_status.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == \
            f"python -m tools.make_toy_dataset: error: argument {option}: {expected}"
    assert sorted(os.listdir(tmp_path)) == ["a_file"]
