"""util/image_files.py: damaged and wrongly encoded image/label files are named, proper ones read
exactly as the original's cv2.imread calls read them."""
import cv2
import numpy as np
import pytest
from PIL import Image

from util.image_files import (ImageFileError, colour_problem, file_problem, label_value_problem,
                              read_image_file, read_label_file, truncation_problem)


@pytest.fixture
def label():
    values = np.zeros((37, 53), np.uint8)
    values[4:20, 6:30] = 3
    values[22:30, 10:50] = 17
    values[30:, 40:] = 255
    return values


def _picture(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def _cut(path, keep_fraction, out):
    data = open(path, "rb").read()
    with open(out, "wb") as handle:
        handle.write(data[:int(len(data) * keep_fraction)])
    return str(out)


def test_complete_files_have_no_truncation_problem(tmp_path):
    for name in ("a.jpg", "a.png", "a.bmp"):
        path = str(tmp_path / name)
        cv2.imwrite(path, _picture())
        assert truncation_problem(path) is None, name
    # padding after the end marker (some encoders write it) is still a complete file
    padded = tmp_path / "padded.jpg"
    padded.write_bytes((tmp_path / "a.jpg").read_bytes() + b"\x00" * 100)
    assert truncation_problem(str(padded)) is None


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_a_cut_jpeg_is_named_although_opencv_decodes_it(tmp_path, keep):
    path = str(tmp_path / "a.jpg")
    cv2.imwrite(path, _picture())
    cut = _cut(path, keep, tmp_path / "cut.jpg")
    assert cv2.imread(cut) is not None  # the silent grey fill this module exists for
    assert "truncated JPEG" in truncation_problem(cut)
    with pytest.raises(ImageFileError, match="cut.jpg.*truncated JPEG"):
        read_image_file(cut)


def test_a_cut_png_is_named_as_truncated_not_as_unreadable(tmp_path, label):
    path = str(tmp_path / "a.png")
    cv2.imwrite(path, label)
    cut = _cut(path, 0.6, tmp_path / "cut.png")
    with pytest.raises(ImageFileError, match="cut.png.*truncated PNG"):
        read_label_file(cut)


def test_a_missing_file_is_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        read_label_file(str(tmp_path / "nothing.png"))


def test_proper_labels_read_as_the_originals_greyscale_read(tmp_path, label):
    grey = str(tmp_path / "grey.png")
    cv2.imwrite(grey, label)
    as_rgb = str(tmp_path / "rgb.png")
    cv2.imwrite(as_rgb, np.repeat(label[:, :, None], 3, axis=2))
    grey_alpha = str(tmp_path / "la.png")
    Image.fromarray(label).convert("LA").save(grey_alpha)
    grey_palette = str(tmp_path / "grey_palette.png")
    image = Image.fromarray(label, mode="P")
    image.putpalette([value for index in range(256) for value in (index, index, index)])
    image.save(grey_palette)
    for path in (grey, as_rgb, grey_alpha, grey_palette):
        read = read_label_file(path, num_classes=20)
        np.testing.assert_array_equal(read, cv2.imread(path, cv2.IMREAD_GRAYSCALE), err_msg=path)
        np.testing.assert_array_equal(read, label, err_msg=path)
        assert read.dtype == np.uint8 and read.flags["C_CONTIGUOUS"]


def test_a_colour_palette_label_is_refused_not_turned_into_made_up_classes(tmp_path, label):
    path = str(tmp_path / "voc_palette.png")
    image = Image.fromarray(label, mode="P")
    palette = [0] * 768
    palette[3 * 3:3 * 3 + 3] = [128, 128, 0]
    palette[17 * 3:17 * 3 + 3] = [0, 64, 128]
    palette[255 * 3:255 * 3 + 3] = [224, 224, 192]
    image.putpalette(palette)
    image.save(path)
    # read as the original does, the colours become ids that are no class
    assert set(np.unique(cv2.imread(path, cv2.IMREAD_GRAYSCALE))) - {0, 3, 17, 255}
    with pytest.raises(ImageFileError, match=r"voc_palette.png.*3 channels with different values.*expected a"):
        read_label_file(path)


def test_a_16_bit_label_is_refused(tmp_path, label):
    path = str(tmp_path / "deep.png")
    cv2.imwrite(path, label.astype(np.uint16))
    assert cv2.imread(path, cv2.IMREAD_GRAYSCALE).max() == 0  # every id shifted away
    with pytest.raises(ImageFileError, match="deep.png.*16-bit"):
        read_label_file(path)


def test_values_outside_the_classes_are_listed(tmp_path, label):
    assert label_value_problem(label, num_classes=20) is None
    assert label_value_problem(label, num_classes=17) is None
    assert "17" in label_value_problem(label, num_classes=16)
    label[0, :8] = [21, 42, 42, 254, 60, 61, 62, 63]
    problem = label_value_problem(label, num_classes=20)
    assert "21, 42, 60, 61, 62, 63, ..." in problem and "1..20" in problem
    path = str(tmp_path / "wild.png")
    cv2.imwrite(path, label)
    np.testing.assert_array_equal(read_label_file(path), label)  # no class count given: no check
    with pytest.raises(ImageFileError, match="wild.png' has values 21, 42"):
        read_label_file(path, num_classes=20)
    assert label_value_problem(label, num_classes=20, ignore_label=254) is not None
    label[label > 20] = 255
    assert label_value_problem(label, num_classes=20) is None


def test_colour_problem_only_for_differing_colour_channels(label):
    assert colour_problem(label) is None
    assert colour_problem(np.repeat(label[:, :, None], 3, axis=2)) is None
    four = np.repeat(label[:, :, None], 4, axis=2)
    four[:, :, 3] = 7  # alpha is not a colour
    assert colour_problem(four) is None
    four[0, 0, 1] += 1
    assert "4 channels" in colour_problem(four)


def test_file_problem_says_why_a_path_is_no_image_file_without_decoding_it(tmp_path, monkeypatch):
    """Shared by the episode-file check and the predictor: missing (a relative path says from
    where it was looked up), a folder, a file of another kind; an image's signature is enough."""
    monkeypatch.chdir(tmp_path)
    assert file_problem("missing.png") == f"does not exist (relative to the working directory {tmp_path})"
    assert file_problem(tmp_path / "missing.png") == "does not exist"
    assert file_problem(tmp_path) == "is a folder, not an image file"
    (tmp_path / "notes.png").write_text("not an image")
    assert file_problem("notes.png") == "is not an image file OpenCV can read"
    cv2.imwrite(str(tmp_path / "mask.png"), np.zeros((4, 5), np.uint8))
    with open(tmp_path / "mask.png", "r+b") as handle:
        handle.truncate(40)  # the signature stays; the body is gone
    assert file_problem("mask.png") is None
