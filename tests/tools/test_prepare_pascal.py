"""Tests of tools/prepare_pascal.py on tiny inputs in the REAL formats.

The real datasets cannot be downloaded here, so every test generates a miniature version of the
release it needs: a VOC2012 devkit with palette PNGs (255 boundary bands) and an SBD release with
MATLAB v5 .mat files holding the ``GTcls`` struct exactly as SBD lays it out. tools/prepare_coco.py
is tested in test_prepare_coco.py.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import scipy.io
import scipy.sparse
from PIL import Image

from tests.support import REPOSITORY_ROOT
from tests.support.files import partial_files, read_lines
from tools import prepare_pascal
from tools.label_files import read_label_png
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
            for line in read_lines(os.path.join(SHIPPED_PASCAL_LISTS, name))]


def _shipped_bytes(name: str) -> bytes:
    with open(os.path.join(SHIPPED_PASCAL_LISTS, name), "rb") as handle:
        return handle.read()


def test_the_train_list_rule_reproduces_the_shipped_lists_byte_for_byte(tmp_path):
    sbd_ids, voc_ids = _shipped_ids("sbd_data.txt"), _shipped_ids("voc_original_train.txt")
    assert len(sbd_ids) == 5623 and len(voc_ids) == 1464 and len(set(sbd_ids) & set(voc_ids)) == 1134
    # The original's intermediate lists: both ascending, and voc_sbd_merge.txt is SBD then VOC.
    assert sbd_ids == sorted(sbd_ids) and voc_ids == sorted(voc_ids)
    assert read_lines(os.path.join(SHIPPED_PASCAL_LISTS, "voc_sbd_merge.txt")) == [
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
    assert read_lines(train_path) == different and read_lines(val_path) == EXPECTED_VAL_LINES[::-1]
    warning = capsys.readouterr().err
    assert f"{train_path} is kept, not replaced" in warning and "2009_000001" in warning and "2008_000008" in warning

    assert prepare_pascal.main(["--voc", voc, "--sbd", sbd, "--lists-dir", lists_dir, "--replace-lists"]) == 0
    assert read_lines(train_path) == EXPECTED_TRAIN_LINES and read_lines(val_path) == EXPECTED_VAL_LINES
    summary = prepare_pascal.prepare_pascal(voc, sbd, lists_dir=lists_dir)
    assert summary["lists"] == {"val.txt": "identical", "voc_sbd_merge_noduplicate.txt": "identical"}


def test_prepare_pascal_end_to_end(pascal_inputs, capsys):
    voc, sbd, lists_dir = pascal_inputs["voc"], pascal_inputs["sbd"], pascal_inputs["lists"]
    # Two workers here, to exercise the process pool; the other runs use one.
    assert prepare_pascal.main(["--voc", voc, "--sbd", sbd, "--lists-dir", lists_dir, "--workers", "2"]) == 0
    captured = capsys.readouterr()
    assert "reference 1,449" in captured.out and "reference 5,953" in captured.out
    assert "WARNING" in captured.err  # the tiny lists differ from the reference counts

    assert read_lines(os.path.join(lists_dir, "val.txt")) == EXPECTED_VAL_LINES
    assert read_lines(os.path.join(lists_dir, "voc_sbd_merge_noduplicate.txt")) == EXPECTED_TRAIN_LINES

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
    assert partial_files(voc) == [] and partial_files(lists_dir) == []


def test_prepare_pascal_separate_out_root_gets_every_listed_image(pascal_inputs, tmp_path):
    out_root = str(tmp_path / "data" / "VOC2012")
    summary = prepare_pascal.prepare_pascal(
        pascal_inputs["voc"], pascal_inputs["sbd"], out_root=out_root, lists_dir=pascal_inputs["lists"]
    )
    for line in read_lines(os.path.join(pascal_inputs["lists"], "voc_sbd_merge_noduplicate.txt")):
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
    assert partial_files(pascal_inputs["voc"]) == []
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
