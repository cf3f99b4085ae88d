"""Tests of tools/prepare_coco.py on a miniature COCO instances json in the REAL format.

The real dataset cannot be downloaded here, so the tests generate an instances json with polygon,
uncompressed-RLE and compressed-RLE annotations and non-contiguous category ids. They need
pycocotools and are skipped (with the reason) without it.
"""

from __future__ import annotations

import json
import os
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.support.files import partial_files, read_lines
from tools import prepare_coco
from tools.label_files import read_label_png
from tools.preparation import write_list_file

# --------------------------------------------------------------------------------------------
# COCO: a miniature instances json
# --------------------------------------------------------------------------------------------


CATEGORIES = [  # non-contiguous ids, deliberately not sorted in the json
    {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
]
CLASS_OF_CATEGORY = {1: 1, 3: 2, 90: 3}


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE: run lengths over the column-major flattening, starting with zeros."""
    flat = np.asfortranarray(mask).flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def _compressed_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _rectangle_polygon(left, top, right, bottom) -> list[list[float]]:
    return [[left, top, right, top, right, bottom, left, bottom]]


def _coco_json(split: str) -> dict:
    """Three images: 7 (two overlapping polygons, the small one listed FIRST so that json order
    would give the wrong answer), 3 (crowd uncompressed RLE + compressed RLE + a polygon part
    split in two), 11 (no annotation: gets a background label but is left out of the list)."""
    big_rle_mask = np.zeros((20, 30), np.uint8)
    big_rle_mask[2:18, 2:28] = 1
    small_rle_mask = np.zeros((20, 30), np.uint8)
    small_rle_mask[5:10, 5:12] = 1
    images = [
        {"id": 11, "file_name": f"COCO_{split}_000000000011.jpg", "height": 10, "width": 12},
        {"id": 7, "file_name": f"COCO_{split}_000000000007.jpg", "height": 24, "width": 32},
        {"id": 3, "file_name": f"COCO_{split}_000000000003.jpg", "height": 20, "width": 30},
    ]
    annotations = [
        {"id": 101, "image_id": 7, "category_id": 90, "iscrowd": 0, "area": 36.0,
         "segmentation": _rectangle_polygon(10, 10, 16, 16), "bbox": [10, 10, 6, 6]},
        {"id": 102, "image_id": 7, "category_id": 1, "iscrowd": 0, "area": 400.0,
         "segmentation": _rectangle_polygon(4, 4, 24, 24), "bbox": [4, 4, 20, 20]},
        {"id": 201, "image_id": 3, "category_id": 3, "iscrowd": 1, "area": float(big_rle_mask.sum()),
         "segmentation": _uncompressed_rle(big_rle_mask), "bbox": [2, 2, 26, 16]},
        {"id": 202, "image_id": 3, "category_id": 90, "iscrowd": 0, "area": float(small_rle_mask.sum()),
         "segmentation": _compressed_rle(small_rle_mask), "bbox": [5, 5, 7, 5]},
        {"id": 203, "image_id": 3, "category_id": 1, "iscrowd": 0, "area": 8.0,
         "segmentation": [[20, 12, 22, 12, 22, 14, 20, 14], [24, 12, 26, 12, 26, 14, 24, 14]],
         "bbox": [20, 12, 6, 2]},
    ]
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


@pytest.fixture()
def coco_inputs(tmp_path):
    pytest.importorskip("pycocotools", reason="pycocotools is not installed (pip install pycocotools)")
    coco_root = tmp_path / "MSCOCO2014"
    (coco_root / "annotations").mkdir(parents=True)
    for split in ("train2014", "val2014"):
        (coco_root / split).mkdir()
        data = _coco_json(split)
        with open(coco_root / "annotations" / f"instances_{split}.json", "w") as handle:
            json.dump(data, handle)
        for image in data["images"]:
            assert cv2.imwrite(str(coco_root / split / image["file_name"]), np.zeros((image["height"], image["width"], 3), np.uint8))
    return {"root": str(coco_root), "lists": str(tmp_path / "lists" / "coco")}


def _expected_coco_label(coco, image_id: int) -> np.ndarray:
    """The documented rule, built independently with pycocotools' own annToMask:
    paint by descending area (largest first), later = smaller wins, crowd included."""
    info = coco.imgs[image_id]
    label = np.zeros((info["height"], info["width"]), np.uint8)
    for annotation in sorted(coco.imgToAnns[image_id], key=lambda a: -a["area"]):
        label[coco.annToMask(annotation) > 0] = CLASS_OF_CATEGORY[annotation["category_id"]]
    return label


def test_coco_instance_label_paints_larger_first(coco_inputs):
    from pycocotools.coco import COCO

    coco = COCO(os.path.join(coco_inputs["root"], "annotations", "instances_val2014.json"))
    cat_to_class = prepare_coco.category_to_class_map(coco)
    assert cat_to_class == CLASS_OF_CATEGORY

    for image_id in (3, 7, 11):
        np.testing.assert_array_equal(
            prepare_coco.coco_instance_label(coco, image_id, cat_to_class), _expected_coco_label(coco, image_id)
        )
    # Image 7: the small toothbrush (class 3) lies on the big person (class 1) and stays visible,
    # although the json lists it first.
    label = prepare_coco.coco_instance_label(coco, 7, cat_to_class)
    assert label[13, 13] == 3 and label[6, 6] == 1 and label[0, 0] == 0
    assert set(np.unique(label)) == {0, 1, 3}
    # Image 3: crowd car (class 2) painted, compressed-RLE toothbrush on top, both polygon parts.
    label = prepare_coco.coco_instance_label(coco, 3, cat_to_class)
    assert label[3, 3] == 2 and label[7, 7] == 3 and label[0, 0] == 0
    assert label[13, 21] == 1 and label[13, 25] == 1 and label[13, 23] == 2
    # Image 11 has no annotation: all background.
    assert not prepare_coco.coco_instance_label(coco, 11, cat_to_class).any()


def test_build_coco_end_to_end_and_resume(coco_inputs, capsys):
    from pycocotools.coco import COCO

    root, lists_dir = coco_inputs["root"], coco_inputs["lists"]
    assert prepare_coco.main(["--coco-root", root, "--lists-dir", lists_dir, "--workers", "2"]) == 0
    captured = capsys.readouterr()
    assert "reference 40,137" in captured.out and "reference 82,081" in captured.out

    for split, list_name in (("train2014", "train.txt"), ("val2014", "val.txt")):
        # Ascending image id; image 11 (no annotation) left out.
        assert read_lines(os.path.join(lists_dir, list_name)) == [
            f"{split}/COCO_{split}_000000000003.jpg annotations/{split}/COCO_{split}_000000000003.png",
            f"{split}/COCO_{split}_000000000007.jpg annotations/{split}/COCO_{split}_000000000007.png",
        ]
        coco = COCO(os.path.join(root, "annotations", f"instances_{split}.json"))
        for image_id in (3, 7, 11):
            path = os.path.join(root, "annotations", split, f"COCO_{split}_{image_id:012d}.png")
            with Image.open(path) as image:
                assert image.mode == "L"
            np.testing.assert_array_equal(read_label_png(path), _expected_coco_label(coco, image_id))

    summaries = prepare_coco.build_coco(root, lists_dir, ["val2014"])
    assert summaries["val2014"]["labels_written"] == 0 and summaries["val2014"]["labels_skipped"] == 3
    # A half-written label is redone; --force redoes everything.
    damaged = os.path.join(root, "annotations", "val2014", "COCO_val2014_000000000003.png")
    with open(damaged, "rb") as handle:
        payload = handle.read()
    with open(damaged, "wb") as handle:
        handle.write(payload[:20])
    summaries = prepare_coco.build_coco(root, lists_dir, ["val2014"])
    assert summaries["val2014"]["labels_written"] == 1
    summaries = prepare_coco.build_coco(root, lists_dir, ["val2014"], force=True)
    assert summaries["val2014"]["labels_written"] == 3
    assert partial_files(root) == [] and partial_files(lists_dir) == []


def test_prepare_coco_keeps_the_order_of_an_existing_list(coco_inputs, capsys):
    root, lists_dir = coco_inputs["root"], coco_inputs["lists"]
    lines = [
        f"val2014/COCO_val2014_{image_id:012d}.jpg annotations/val2014/COCO_val2014_{image_id:012d}.png"
        for image_id in (7, 3)  # not in image-id order, like the shipped val.txt
    ]
    val_path, train_path = os.path.join(lists_dir, "val.txt"), os.path.join(lists_dir, "train.txt")
    os.makedirs(lists_dir)
    write_list_file(val_path, lines)
    summaries = prepare_coco.build_coco(root, lists_dir)
    assert summaries["val2014"]["list_outcome"] == "reordered" and read_lines(val_path) == lines
    # No train.txt was there: written in image-id order, and said so.
    assert summaries["train2014"]["list_outcome"] == "written"
    assert [line.split()[0] for line in read_lines(train_path)] == [
        "train2014/COCO_train2014_000000000003.jpg", "train2014/COCO_train2014_000000000007.jpg"
    ]
    assert f"{train_path}: written in ascending image-id order" in capsys.readouterr().out

    # Other images than the data gives: kept, with a warning naming the difference.
    write_list_file(val_path, lines[:1])
    summaries = prepare_coco.build_coco(root, lists_dir, ["val2014"])
    assert summaries["val2014"]["list_outcome"] == "kept" and read_lines(val_path) == lines[:1]
    warning = capsys.readouterr().err
    assert f"{val_path} is kept, not replaced" in warning and "COCO_val2014_000000000003.jpg" in warning
    summaries = prepare_coco.build_coco(root, lists_dir, ["val2014"], replace_lists=True)
    assert summaries["val2014"]["list_outcome"] == "written" and read_lines(val_path) == lines[::-1]


def test_build_coco_missing_annotation_file(coco_inputs, capsys):
    os.remove(os.path.join(coco_inputs["root"], "annotations", "instances_train2014.json"))
    assert prepare_coco.main(["--coco-root", coco_inputs["root"], "--lists-dir", coco_inputs["lists"]]) == 2
    assert "instances_train2014.json" in capsys.readouterr().err


def test_prepare_coco_without_pycocotools_says_how_to_install(tmp_path, monkeypatch, capsys):
    # None in sys.modules makes the import fail, as if the package were not installed.
    for name in ("pycocotools", "pycocotools.coco", "pycocotools.mask"):
        monkeypatch.setitem(sys.modules, name, None)
    assert prepare_coco.main(["--coco-root", str(tmp_path), "--lists-dir", str(tmp_path / "lists")]) == 2
    assert "pip install pycocotools" in capsys.readouterr().err
