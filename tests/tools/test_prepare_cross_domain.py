"""The cross-domain benchmark's preparation tools on tiny generated copies of the published
originals: Deepglobe's tiling and filtering, ISIC's class file, the lung masks' names; each
output is read back by the benchmark's dataset, and each wrong input is one line, exit 2."""
from __future__ import annotations

import hashlib
import os

import cv2
import numpy as np
import pytest

from tests.support.cross_domain import DEEPGLOBE_COLOURS_RGB, random_image, rectangle_mask
from tools import prepare_deepglobe, prepare_isic, prepare_lung
from util.episode_data.cross_domain import CrossDomainData
from util.transform import build_hsnet_val_transform

TILE = 8  # 48-pixel originals cut 6 x 6


def _rgb_to_bgr(colour):
    return tuple(reversed(colour))


def _deepglobe_mask() -> np.ndarray:
    """A 48 x 48 BGR mask whose tiles test the filter: (0,0) one colour; (0,1) forest on 3 of 64
    pixels (4.7 %, dropped); (0,2) forest on 4 (6.25 %, kept: urban and forest); (1,0) half
    agriculture, half water; (1,1) rangeland, barren and unknown (black, no class) in thirds;
    every other tile all agriculture (one colour)."""
    agriculture, urban, rangeland, forest, water, barren = (_rgb_to_bgr(c) for c in DEEPGLOBE_COLOURS_RGB)
    mask = np.zeros((48, 48, 3), np.uint8)
    mask[:, :] = agriculture
    mask[0:8, 0:8] = urban
    mask[0:8, 8:16] = urban
    mask[0, 8:11] = forest
    mask[0:8, 16:24] = urban
    mask[0, 16:20] = forest
    mask[8:16, 0:4] = agriculture
    mask[8:16, 4:8] = water
    mask[8:16, 8:11] = rangeland
    mask[8:16, 11:14] = barren
    mask[8:16, 14:16] = (0, 0, 0)
    return mask


@pytest.fixture()
def deepglobe_source(tmp_path):
    source = tmp_path / "train"
    source.mkdir()
    rng = np.random.default_rng(0)
    for name in ("100", "200"):
        cv2.imwrite(str(source / f"{name}_sat.jpg"), random_image(rng, 48, 48))
        cv2.imwrite(str(source / f"{name}_mask.png"), _deepglobe_mask())
    return source


def test_deepglobe_tiles_are_filtered_and_split_by_class(deepglobe_source, tmp_path):
    out = tmp_path / "Deepglobe"
    assert prepare_deepglobe.main(["--source", str(deepglobe_source), "--out", str(out)]) == 0
    expected = {1: "10", 2: "02", 3: "11", 4: "02", 5: "10", 6: "11"}  # class -> its one tile
    for class_id, tile in expected.items():
        folder = out / str(class_id) / "test"
        assert sorted(os.listdir(folder / "origin")) == [f"100_{tile}.jpg", f"200_{tile}.jpg"]
        assert sorted(os.listdir(folder / "groundtruth")) == [f"100_{tile}.png", f"200_{tile}.png"]
    forest = cv2.imread(str(out / "4" / "test" / "groundtruth" / "100_02.png"), cv2.IMREAD_UNCHANGED)
    expected_forest = np.zeros((TILE, TILE), np.uint8)
    expected_forest[0, 0:4] = 255
    assert np.array_equal(forest, expected_forest)
    water = cv2.imread(str(out / "5" / "test" / "groundtruth" / "200_10.png"), cv2.IMREAD_UNCHANGED)
    assert water.shape == (TILE, TILE) and (water[:, 4:] == 255).all() and (water[:, :4] == 0).all()
    # The image tile is the original's rows 8..16, columns 0..8 (JPEG written twice: close, not equal).
    original = cv2.imread(str(deepglobe_source / "100_sat.jpg"))[8:16, 0:8].astype(float)
    tile = cv2.imread(str(out / "1" / "test" / "origin" / "100_10.jpg")).astype(float)
    assert tile.shape == original.shape and np.abs(tile - original).mean() < 25
    dataset = CrossDomainData("deepglobe", str(out), 1, build_hsnet_val_transform(17), episodes=6)
    assert [dataset.sample_episode(index)["class_chosen"] for index in range(6)] == [1, 2, 3, 4, 5, 6]
    assert dataset[4].raw_label.sum() > 0


def test_deepglobe_refuses_a_wrong_folder_in_one_line(deepglobe_source, tmp_path, capsys):
    assert prepare_deepglobe.main(["--source", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "holds no <n>_sat.jpg image" in capsys.readouterr().err
    os.remove(deepglobe_source / "200_mask.png")
    assert prepare_deepglobe.main(["--source", str(deepglobe_source), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "1 image(s) of --source" in error and "200_mask.png" in error
    assert not (tmp_path / "o").exists()


def _isic_source(root, ids):
    rng = np.random.default_rng(1)
    for image_id in ids:
        os.makedirs(root / "images", exist_ok=True)
        os.makedirs(root / "masks", exist_ok=True)
        cv2.imwrite(str(root / "images" / f"{image_id}.jpg"), random_image(rng, 30, 40))
        cv2.imwrite(str(root / "masks" / f"{image_id}_segmentation.png"), rectangle_mask(rng, 30, 40))


IDS = [f"ISIC_{number:07d}" for number in range(7)]


def test_isic_images_go_to_the_class_folders_of_the_class_file(tmp_path):
    _isic_source(tmp_path, IDS)
    class_file = tmp_path / "class_id.csv"
    classes = ["nevus", "melanoma", "seborrheic_keratosis", "nevus", "melanoma", "seborrheic_keratosis"]
    class_file.write_bytes(("ID,Class\r\n" + "".join(f"{i},{c}\r\n" for i, c in zip(IDS, classes))).encode())
    out = tmp_path / "ISIC"
    assert prepare_isic.main(["--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
                              "--out", str(out), "--class-file", str(class_file)]) == 0
    folders = out / "ISIC2018_Task1-2_Training_Input"
    assert {c: sorted(os.listdir(folders / c)) for c in "123"} == {
        "1": ["ISIC_0000000.jpg", "ISIC_0000003.jpg"], "2": ["ISIC_0000001.jpg", "ISIC_0000004.jpg"],
        "3": ["ISIC_0000002.jpg", "ISIC_0000005.jpg"]}  # ISIC_0000006: not in the class file
    assert sorted(os.listdir(out / "ISIC2018_Task1_Training_GroundTruth")) == [f"{i}_segmentation.png" for i in IDS[:6]]
    assert (folders / "2" / "ISIC_0000004.jpg").read_bytes() == (tmp_path / "images" / "ISIC_0000004.jpg").read_bytes()
    dataset = CrossDomainData("isic", str(out), 1, build_hsnet_val_transform(17), episodes=3)
    assert [dataset.sample_episode(index)["class_chosen"] for index in range(3)] == [1, 2, 3]


def test_isic_reads_the_one_hot_class_file_and_the_shipped_one(tmp_path):
    one_hot = tmp_path / "gt.csv"
    one_hot.write_text("image_id,melanoma,seborrheic_keratosis\nISIC_1,0.0,0.0\nISIC_2,1.0,0.0\nISIC_3,0,1\n")
    assert prepare_isic.read_class_file(str(one_hot)) == {"ISIC_1": 1, "ISIC_2": 2, "ISIC_3": 3}
    shipped = prepare_isic.read_class_file(prepare_isic.DEFAULT_CLASS_FILE)
    # PATNet's data/isic/class_id.csv: 1,867 nevus, 519 melanoma, 208 seborrheic_keratosis rows.
    assert len(shipped) == 2594
    assert [list(shipped.values()).count(c) for c in (1, 2, 3)] == [1867, 519, 208]


def test_isic_refuses_wrong_inputs_in_one_line(tmp_path, capsys):
    _isic_source(tmp_path, IDS[:3])
    class_file = tmp_path / "class_id.csv"
    arguments = ["--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
                 "--out", str(tmp_path / "out"), "--class-file", str(class_file)]
    cases = [("ID,Class\nISIC_0000000,nevus\nISIC_0000009,melanoma\n",
              "1 image(s) of the class file missing from --images"),
             ("ID,Class\nISIC_0000000,naevus\n", "line 2: expected '<image id>,<class>'"),
             ("image,MEL,NV\nISIC_0000000,1,0\n", "header 'image,MEL,NV' is neither")]
    for content, message in cases:
        class_file.write_text(content)
        assert prepare_isic.main(arguments) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and message in error, error
    os.remove(tmp_path / "masks" / "ISIC_0000001_segmentation.png")
    class_file.write_text("ID,Class\nISIC_0000000,nevus\nISIC_0000001,melanoma\n")
    assert prepare_isic.main(arguments) == 2
    assert "1 mask(s) of the class file missing from --masks" in capsys.readouterr().err
    assert prepare_isic.main([*arguments[:1], str(tmp_path / "absent"), *arguments[2:]]) == 2
    assert "--images" in capsys.readouterr().err and not (tmp_path / "out").exists()


def _lung_source(root):
    rng = np.random.default_rng(2)
    names = {"CHNCXR_0001_0": "CHNCXR_0001_0_mask.png", "CHNCXR_0002_0": "CHNCXR_0002_0_mask.png",
             "MCUCXR_0001_0": "MCUCXR_0001_0.png", "MCUCXR_0002_0": "MCUCXR_0002_0.png", "test_0": None}
    masks = {}
    for image_id, mask_name in names.items():
        os.makedirs(root / "CXR_png", exist_ok=True)
        os.makedirs(root / "masks", exist_ok=True)
        cv2.imwrite(str(root / "CXR_png" / f"{image_id}.png"), random_image(rng, 36, 30))
        if mask_name:
            masks[image_id] = rectangle_mask(rng, 36, 30)
            cv2.imwrite(str(root / "masks" / mask_name), masks[image_id])
    return masks


def test_lung_masks_get_patnets_names(tmp_path):
    masks = _lung_source(tmp_path / "source")
    out = tmp_path / "LungSegmentation"
    assert prepare_lung.main(["--source", str(tmp_path / "source"), "--out", str(out)]) == 0
    assert sorted(os.listdir(out / "masks")) == sorted(f"{image_id}_mask.png" for image_id in masks)
    assert sorted(os.listdir(out / "CXR_png")) == sorted(f"{image_id}.png" for image_id in masks)
    for image_id, mask in masks.items():
        assert np.array_equal(cv2.imread(str(out / "masks" / f"{image_id}_mask.png"), cv2.IMREAD_UNCHANGED), mask)
    dataset = CrossDomainData("lung", str(out), 2, build_hsnet_val_transform(17), episodes=4)
    query_image, query_mask = dataset.sample_episode(3)["query"]
    assert os.path.basename(query_mask) == os.path.basename(query_image)[:-4] + "_mask.png"


def test_lung_refuses_wrong_inputs_in_one_line(tmp_path, capsys):
    _lung_source(tmp_path / "source")
    arguments = ["--source", str(tmp_path / "source"), "--out", str(tmp_path / "out")]
    os.remove(tmp_path / "source" / "CXR_png" / "MCUCXR_0002_0.png")
    assert prepare_lung.main(arguments) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "1 mask(s) without their radiograph" in error and "MCUCXR_0002_0.png" in error
    assert prepare_lung.main(["--source", str(tmp_path / "source" / "masks"), "--out", str(tmp_path / "out")]) == 2
    assert "has no CXR_png/ folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_shipped_class_file_is_patnets():
    # git blob id of data/isic/class_id.csv at slei109/PATNet 0155c5f (lists/cross_domain/README.md).
    with open(prepare_isic.DEFAULT_CLASS_FILE, "rb") as handle:
        content = handle.read()
    blob = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
    assert blob == "eb0ae62ef11403fae1cefa7f09a0a5445b4e9485"
