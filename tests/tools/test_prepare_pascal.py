"""Tests of tools/prepare_pascal.py and tools/prepare_coco.py on tiny inputs in the REAL formats.

The real datasets cannot be downloaded here, so every test generates a miniature version of the
release it needs: a VOC2012 devkit with palette PNGs (255 boundary bands), an SBD release with
MATLAB v5 .mat files holding the ``GTcls`` struct exactly as SBD lays it out, and a COCO
instances json with polygon, uncompressed-RLE and compressed-RLE annotations and non-contiguous
category ids. The COCO tests need pycocotools and are skipped (with the reason) without it.
"""

from __future__ import annotations

import json
import os
import sys

import cv2
import numpy as np
import pytest
import scipy.io
import scipy.sparse
from PIL import Image

from tools import prepare_coco, prepare_pascal
from tools.label_files import read_label_png
from tests.support import REPOSITORY_ROOT
from tools.preparation import write_list_file
from util import io as util_io

# --------------------------------------------------------------------------------------------
# PASCAL: a miniature VOC2012 devkit and SBD release
# --------------------------------------------------------------------------------------------

VOC_TRAIN_IDS = ["2007_000039", "2007_000032", "2008_000008"]  # not sorted: the train list sorts them
VOC_VAL_IDS = ["2008_000002", "2007_000033"]  # deliberately not sorted: the order must be kept
# 2007_000039 duplicates a VOC train id (must appear once, at its SBD position, with VOC's label).
SBD_TRAIN_NOVAL_IDS = ["2008_000100", "2007_000039", "2008_000101"]
SBD_TRAIN_IDS = SBD_TRAIN_NOVAL_IDS + ["2008_000102"]  # 2008_000102: labelled but in no list
SBD_VAL_IDS = ["2007_000033", "2008_000103"]  # 2007_000033 is also a VOC val id: VOC wins
SBD_ONLY_IMAGE_IDS = ["2008_000100", "2008_000103"]  # images absent from VOC JPEGImages

EXPECTED_VAL_LINES = [
    "JPEGImages/2008_000002.jpg SegmentationClassAug/2008_000002.png",
    "JPEGImages/2007_000033.jpg SegmentationClassAug/2007_000033.png",
]
# The original's rule: SBD train_noval ascending, then VOC train ascending, first occurrence kept.
EXPECTED_TRAIN_LINES = [
    "JPEGImages/2007_000039.jpg SegmentationClassAug/2007_000039.png",
    "JPEGImages/2008_000100.jpg SegmentationClassAug/2008_000100.png",
    "JPEGImages/2008_000101.jpg SegmentationClassAug/2008_000101.png",
    "JPEGImages/2007_000032.jpg SegmentationClassAug/2007_000032.png",
    "JPEGImages/2008_000008.jpg SegmentationClassAug/2008_000008.png",
]
SHIPPED_PASCAL_LISTS = os.path.join(REPOSITORY_ROOT, "lists", "pascal")


def _image_size(identifier: str) -> tuple[int, int]:
    """A different (height, width) per id, so size mix-ups would be caught."""
    number = int(identifier[-3:])
    return 12 + number % 5, 16 + number % 7


def _voc_label(identifier: str) -> np.ndarray:
    """A VOC-style label: an object of some class with a 255 'void' band around it."""
    height, width = _image_size(identifier)
    label = np.zeros((height, width), dtype=np.uint8)
    class_value = 1 + int(identifier[-3:]) % 20
    label[2:-2, 3:-3] = 255
    label[3:-3, 4:-4] = class_value
    label[0, 0] = 15 if class_value != 15 else 14  # a second class, a single pixel
    return label


def _sbd_label(identifier: str) -> np.ndarray:
    """An SBD-style label: classes only, no 255 band; differs from the VOC label of the same id."""
    height, width = _image_size(identifier)
    label = np.zeros((height, width), dtype=np.uint8)
    label[: height // 2, :] = 20
    label[height // 2 :, : width // 2] = 1 + int(identifier[-3:]) % 19
    return label


def _write_palette_png(path: str, label: np.ndarray) -> None:
    image = Image.fromarray(label, mode="P")
    image.putpalette(prepare_pascal.voc_colormap().flatten().tolist())
    image.save(path)


def _write_sbd_mat(path: str, label: np.ndarray) -> None:
    """An SBD cls/*.mat: struct GTcls with Segmentation (uint8), Boundaries (20x1 cell of sparse
    logical matrices) and CategoriesPresent (the classes present), as in benchmark_RELEASE."""
    boundaries = np.empty((20, 1), dtype=object)
    for index in range(20):
        boundaries[index, 0] = scipy.sparse.csc_matrix(label.shape, dtype=bool)
    present = np.unique(label)
    present = present[present > 0].astype(np.uint8).reshape(-1, 1)
    scipy.io.savemat(
        path, {"GTcls": {"Segmentation": label, "Boundaries": boundaries, "CategoriesPresent": present}}
    )


def _write_jpeg(path: str, identifier: str) -> None:
    height, width = _image_size(identifier)
    generator = np.random.default_rng(int(identifier[-3:]))
    assert cv2.imwrite(path, generator.integers(0, 255, (height, width, 3), dtype=np.uint8))


def _write_ids(path: str, identifiers) -> None:
    with open(path, "w") as handle:
        handle.write("".join(identifier + "\n" for identifier in identifiers))


@pytest.fixture()
def pascal_inputs(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    for folder in (voc / "JPEGImages", voc / "SegmentationClass", voc / "ImageSets" / "Segmentation", sbd / "cls", sbd / "img"):
        folder.mkdir(parents=True)
    voc_ids = VOC_TRAIN_IDS + VOC_VAL_IDS
    sbd_ids = list(dict.fromkeys(SBD_TRAIN_IDS + SBD_VAL_IDS))
    for identifier in voc_ids:
        _write_palette_png(str(voc / "SegmentationClass" / f"{identifier}.png"), _voc_label(identifier))
    for identifier in sbd_ids:
        _write_sbd_mat(str(sbd / "cls" / f"{identifier}.mat"), _sbd_label(identifier))
        _write_jpeg(str(sbd / "img" / f"{identifier}.jpg"), identifier)
    for identifier in dict.fromkeys(voc_ids + sbd_ids):
        if identifier not in SBD_ONLY_IMAGE_IDS:
            _write_jpeg(str(voc / "JPEGImages" / f"{identifier}.jpg"), identifier)
    _write_ids(str(voc / "ImageSets" / "Segmentation" / "train.txt"), VOC_TRAIN_IDS)
    _write_ids(str(voc / "ImageSets" / "Segmentation" / "val.txt"), VOC_VAL_IDS)
    _write_ids(str(sbd / "train_noval.txt"), SBD_TRAIN_NOVAL_IDS)
    _write_ids(str(sbd / "train.txt"), SBD_TRAIN_IDS)
    _write_ids(str(sbd / "val.txt"), SBD_VAL_IDS)
    return {"voc": str(voc), "sbd": str(sbd), "lists": str(tmp_path / "lists" / "pascal")}


def _read_lines(path: str) -> list[str]:
    with open(path) as handle:
        return handle.read().splitlines()


def _partial_files(root: str) -> list[str]:
    return [name for _, _, names in os.walk(root) for name in names if name.endswith(".partial")]


def test_convert_sbd_mat_reads_the_gtcls_struct(tmp_path):
    label = _sbd_label("2008_000100")
    path = str(tmp_path / "a.mat")
    _write_sbd_mat(path, label)
    converted = prepare_pascal.convert_sbd_mat(path)
    assert converted.dtype == np.uint8
    np.testing.assert_array_equal(converted, label)


def test_convert_sbd_mat_errors_name_the_file_and_the_field(tmp_path):
    wrong_variable = str(tmp_path / "wrong_variable.mat")
    scipy.io.savemat(wrong_variable, {"Something": np.zeros((3, 3))})
    with pytest.raises(prepare_pascal.PrepareError, match=r"wrong_variable\.mat.*'GTcls'.*'Segmentation'"):
        prepare_pascal.convert_sbd_mat(wrong_variable)

    missing_field = str(tmp_path / "missing_field.mat")
    scipy.io.savemat(missing_field, {"GTcls": {"Boundaries": np.zeros((3, 3))}})
    with pytest.raises(prepare_pascal.PrepareError, match=r"missing_field\.mat.*no field 'Segmentation'"):
        prepare_pascal.convert_sbd_mat(missing_field)

    instance_file = str(tmp_path / "instance.mat")
    scipy.io.savemat(instance_file, {"GTinst": {"Segmentation": np.zeros((3, 3), np.uint8)}})
    with pytest.raises(prepare_pascal.PrepareError, match=r"instance\.mat.*cls/"):
        prepare_pascal.convert_sbd_mat(instance_file)

    damaged = str(tmp_path / "damaged.mat")
    with open(damaged, "wb") as handle:
        handle.write(b"MATLAB 5.0 MAT-file, this is not really one")
    with pytest.raises(prepare_pascal.PrepareError, match=r"damaged\.mat"):
        prepare_pascal.convert_sbd_mat(damaged)


def test_read_voc_label_returns_palette_indices(tmp_path):
    label = _voc_label("2007_000032")
    palette_path = str(tmp_path / "palette.png")
    _write_palette_png(palette_path, label)
    np.testing.assert_array_equal(prepare_pascal.read_voc_label(palette_path), label)
    # The same label saved as colours maps back through the VOC palette.
    rgb_path = str(tmp_path / "rgb.png")
    Image.fromarray(prepare_pascal.voc_colormap()[label]).save(rgb_path)
    np.testing.assert_array_equal(prepare_pascal.read_voc_label(rgb_path), label)


def test_build_pascal_lists_keeps_order_and_first_occurrence():
    lists = prepare_pascal.build_pascal_lists(VOC_TRAIN_IDS, VOC_VAL_IDS, SBD_TRAIN_NOVAL_IDS)
    assert lists["val.txt"] == EXPECTED_VAL_LINES
    assert lists["voc_sbd_merge_noduplicate.txt"] == EXPECTED_TRAIN_LINES


def _shipped_ids(name: str) -> list[str]:
    return [os.path.splitext(os.path.basename(line.split()[0]))[0]
            for line in _read_lines(os.path.join(SHIPPED_PASCAL_LISTS, name))]


def _shipped_bytes(name: str) -> bytes:
    with open(os.path.join(SHIPPED_PASCAL_LISTS, name), "rb") as handle:
        return handle.read()


def test_the_train_list_rule_reproduces_the_shipped_lists_byte_for_byte(tmp_path):
    sbd_ids, voc_ids = _shipped_ids("sbd_data.txt"), _shipped_ids("voc_original_train.txt")
    assert len(sbd_ids) == 5623 and len(voc_ids) == 1464 and len(set(sbd_ids) & set(voc_ids)) == 1134
    # The original's intermediate lists: both ascending, and voc_sbd_merge.txt is SBD then VOC.
    assert sbd_ids == sorted(sbd_ids) and voc_ids == sorted(voc_ids)
    assert _read_lines(os.path.join(SHIPPED_PASCAL_LISTS, "voc_sbd_merge.txt")) == [
        prepare_pascal.list_line(identifier) for identifier in sbd_ids + voc_ids
    ]
    # Whatever order SBD's train_noval.txt comes in, the rule gives the shipped files exactly.
    lists = prepare_pascal.build_pascal_lists(voc_ids, _shipped_ids("val.txt"), sbd_ids[::-1])
    for name in ("voc_sbd_merge_noduplicate.txt", "val.txt"):
        write_list_file(str(tmp_path / name), lists[name])
        with open(tmp_path / name, "rb") as handle:
            assert handle.read() == _shipped_bytes(name), name
    assert len(lists["voc_sbd_merge_noduplicate.txt"]) == 5953


def test_prepare_pascal_keeps_existing_lists_unless_asked(pascal_inputs, capsys):
    voc, sbd, lists_dir = pascal_inputs["voc"], pascal_inputs["sbd"], pascal_inputs["lists"]
    train_path = os.path.join(lists_dir, "voc_sbd_merge_noduplicate.txt")
    val_path = os.path.join(lists_dir, "val.txt")
    os.makedirs(lists_dir)
    different = EXPECTED_TRAIN_LINES[:-1] + ["JPEGImages/2009_000001.jpg SegmentationClassAug/2009_000001.png"]
    write_list_file(train_path, different)
    write_list_file(val_path, EXPECTED_VAL_LINES[::-1])
    summary = prepare_pascal.prepare_pascal(voc, sbd, lists_dir=lists_dir)
    assert summary["lists"] == {"val.txt": "reordered", "voc_sbd_merge_noduplicate.txt": "kept"}
    assert _read_lines(train_path) == different and _read_lines(val_path) == EXPECTED_VAL_LINES[::-1]
    warning = capsys.readouterr().err
    assert f"{train_path} is kept, not replaced" in warning and "2009_000001" in warning and "2008_000008" in warning

    assert prepare_pascal.main(["--voc", voc, "--sbd", sbd, "--lists-dir", lists_dir, "--replace-lists"]) == 0
    assert _read_lines(train_path) == EXPECTED_TRAIN_LINES and _read_lines(val_path) == EXPECTED_VAL_LINES
    summary = prepare_pascal.prepare_pascal(voc, sbd, lists_dir=lists_dir)
    assert summary["lists"] == {"val.txt": "identical", "voc_sbd_merge_noduplicate.txt": "identical"}


def test_prepare_pascal_end_to_end(pascal_inputs, capsys):
    voc, sbd, lists_dir = pascal_inputs["voc"], pascal_inputs["sbd"], pascal_inputs["lists"]
    # Two workers here, to exercise the process pool; the other runs use one.
    assert prepare_pascal.main(["--voc", voc, "--sbd", sbd, "--lists-dir", lists_dir, "--workers", "2"]) == 0
    captured = capsys.readouterr()
    assert "reference 1,449" in captured.out and "reference 5,953" in captured.out
    assert "WARNING" in captured.err  # the tiny lists differ from the reference counts

    assert _read_lines(os.path.join(lists_dir, "val.txt")) == EXPECTED_VAL_LINES
    assert _read_lines(os.path.join(lists_dir, "voc_sbd_merge_noduplicate.txt")) == EXPECTED_TRAIN_LINES

    label_folder = os.path.join(voc, "SegmentationClassAug")
    voc_ids = set(VOC_TRAIN_IDS + VOC_VAL_IDS)
    all_ids = voc_ids | set(SBD_TRAIN_IDS + SBD_VAL_IDS)
    assert sorted(os.listdir(label_folder)) == sorted(f"{identifier}.png" for identifier in all_ids)
    for identifier in all_ids:
        with Image.open(os.path.join(label_folder, f"{identifier}.png")) as image:
            assert image.mode == "L"  # plain grayscale, no palette
            written = np.array(image)
        # VOC wins where both exist (2007_000039, 2007_000033); SBD labels are kept without a 255 band.
        expected = _voc_label(identifier) if identifier in voc_ids else _sbd_label(identifier)
        np.testing.assert_array_equal(written, expected, err_msg=identifier)
    # SBD-only images were copied byte for byte; VOC images were left alone.
    for identifier in SBD_ONLY_IMAGE_IDS:
        with open(os.path.join(voc, "JPEGImages", f"{identifier}.jpg"), "rb") as copied, open(
            os.path.join(sbd, "img", f"{identifier}.jpg"), "rb"
        ) as original:
            assert copied.read() == original.read()
    assert _partial_files(voc) == [] and _partial_files(lists_dir) == []


def test_prepare_pascal_separate_out_root_gets_every_listed_image(pascal_inputs, tmp_path):
    out_root = str(tmp_path / "data" / "VOC2012")
    summary = prepare_pascal.prepare_pascal(
        pascal_inputs["voc"], pascal_inputs["sbd"], out_root=out_root, lists_dir=pascal_inputs["lists"]
    )
    for line in _read_lines(os.path.join(pascal_inputs["lists"], "voc_sbd_merge_noduplicate.txt")):
        image_path, label_path = line.split()
        assert os.path.isfile(os.path.join(out_root, image_path))
        assert os.path.isfile(os.path.join(out_root, label_path))
    assert summary["train_count"] == len(EXPECTED_TRAIN_LINES) and summary["val_count"] == len(EXPECTED_VAL_LINES)
    assert not os.path.exists(os.path.join(pascal_inputs["voc"], "SegmentationClassAug"))


def test_prepare_pascal_resumes_repairs_and_forces(pascal_inputs, monkeypatch):
    arguments = dict(voc_root=pascal_inputs["voc"], sbd_root=pascal_inputs["sbd"], lists_dir=pascal_inputs["lists"])
    first = prepare_pascal.prepare_pascal(**arguments)
    total = first["labels_total"]
    assert first["labels_written"] == total and first["labels_skipped"] == 0

    second = prepare_pascal.prepare_pascal(**arguments)
    assert second["labels_written"] == 0 and second["labels_skipped"] == total
    assert second["images_copied"] == 0

    # A truncated label (as a non-atomic writer could leave) is detected and rewritten.
    label_folder = os.path.join(pascal_inputs["voc"], "SegmentationClassAug")
    damaged = os.path.join(label_folder, "2008_000101.png")
    with open(damaged, "rb") as handle:
        payload = handle.read()
    with open(damaged, "wb") as handle:
        handle.write(payload[: len(payload) // 2])
    third = prepare_pascal.prepare_pascal(**arguments)
    assert third["labels_written"] == 1 and third["labels_skipped"] == total - 1
    np.testing.assert_array_equal(read_label_png(damaged), _sbd_label("2008_000101"))

    forced = prepare_pascal.prepare_pascal(force=True, **arguments)
    assert forced["labels_written"] == total

    # An interruption between writing and renaming leaves neither a half label nor a temporary file.
    os.remove(damaged)

    def interrupted_replace(source, destination):
        raise KeyboardInterrupt

    monkeypatch.setattr(util_io.os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        prepare_pascal.prepare_pascal(**arguments)
    monkeypatch.undo()
    assert not os.path.exists(damaged)
    assert _partial_files(pascal_inputs["voc"]) == []
    resumed = prepare_pascal.prepare_pascal(**arguments)
    assert resumed["labels_written"] == 1


def test_prepare_pascal_clear_errors(pascal_inputs, tmp_path, capsys):
    voc, sbd, lists_dir = pascal_inputs["voc"], pascal_inputs["sbd"], pascal_inputs["lists"]
    missing = str(tmp_path / "nowhere")
    assert prepare_pascal.main(["--voc", missing, "--sbd", sbd, "--lists-dir", lists_dir]) == 2
    error_text = capsys.readouterr().err
    assert missing in error_text and "JPEGImages" in error_text
    assert error_text.startswith("error: ") and len(error_text.strip().splitlines()) == 1
    with pytest.raises(prepare_pascal.PrepareError, match="nowhere"):  # --debug: the traceback
        prepare_pascal.main(["--voc", missing, "--sbd", sbd, "--lists-dir", lists_dir, "--debug"])

    os.remove(os.path.join(sbd, "train_noval.txt"))
    assert prepare_pascal.main(["--voc", voc, "--sbd", sbd, "--lists-dir", lists_dir]) == 2
    assert "train_noval.txt" in capsys.readouterr().err

    # A listed id with neither a VOC PNG nor an SBD .mat.
    _write_ids(os.path.join(sbd, "train_noval.txt"), SBD_TRAIN_NOVAL_IDS + ["2009_999999"])
    assert prepare_pascal.main(["--voc", voc, "--sbd", sbd, "--lists-dir", lists_dir]) == 2
    assert "2009_999999" in capsys.readouterr().err

    # A broken .mat is reported by name through the CLI too.
    _write_ids(os.path.join(sbd, "train_noval.txt"), SBD_TRAIN_NOVAL_IDS)
    with open(os.path.join(sbd, "cls", "2008_000101.mat"), "wb") as handle:
        handle.write(b"not a mat file")
    assert prepare_pascal.main(["--voc", voc, "--sbd", sbd, "--lists-dir", lists_dir, "--workers", "1"]) == 2
    assert "2008_000101.mat" in capsys.readouterr().err


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
        assert _read_lines(os.path.join(lists_dir, list_name)) == [
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
    assert _partial_files(root) == [] and _partial_files(lists_dir) == []


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
    assert summaries["val2014"]["list_outcome"] == "reordered" and _read_lines(val_path) == lines
    # No train.txt was there: written in image-id order, and said so.
    assert summaries["train2014"]["list_outcome"] == "written"
    assert [line.split()[0] for line in _read_lines(train_path)] == [
        "train2014/COCO_train2014_000000000003.jpg", "train2014/COCO_train2014_000000000007.jpg"
    ]
    assert f"{train_path}: written in ascending image-id order" in capsys.readouterr().out

    # Other images than the data gives: kept, with a warning naming the difference.
    write_list_file(val_path, lines[:1])
    summaries = prepare_coco.build_coco(root, lists_dir, ["val2014"])
    assert summaries["val2014"]["list_outcome"] == "kept" and _read_lines(val_path) == lines[:1]
    warning = capsys.readouterr().err
    assert f"{val_path} is kept, not replaced" in warning and "COCO_val2014_000000000003.jpg" in warning
    summaries = prepare_coco.build_coco(root, lists_dir, ["val2014"], replace_lists=True)
    assert summaries["val2014"]["list_outcome"] == "written" and _read_lines(val_path) == lines[::-1]


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
