"""Damaged or wrongly encoded data files stop a run in one line naming the file and what it
should be, with exit status 2 and nothing written: label values that are no class of the dataset,
colour (palette) labels, 16-bit labels, truncated images. Run as a user would, from the repository root
(in this process: tests/support/entry_points.py)."""
import os
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.scripts.test_cli_errors import assert_user_error, run
from tests.support.toy_experiment import BASE_CONFIG, CONFIG, reduced_list, toy_opts


@pytest.fixture(scope="module")
def val_pairs(toy_data_root, tmp_path_factory):
    """A few val images of the toy data (every fold-0 test class twice), as (image, label) paths
    relative to the toy root."""
    listing = str(tmp_path_factory.mktemp("bad_data") / "val_small.txt")
    reduced_list(toy_data_root, listing, mode="val")
    with open(listing) as handle:
        return [tuple(line.split()) for line in handle if line.strip()]


def _copy_data(toy_data_root, pairs, root):
    """A data root holding only ``pairs`` and the base lists val.txt / train.txt naming them."""
    for relative in (path for pair in pairs for path in pair):
        os.makedirs(os.path.dirname(os.path.join(root, relative)), exist_ok=True)
        shutil.copyfile(os.path.join(toy_data_root, relative), os.path.join(root, relative))
    for name in ("val.txt", "train.txt"):
        with open(os.path.join(root, name), "w") as handle:
            handle.writelines(f"{image} {label}\n" for image, label in pairs)
    return str(root)


def _files_under(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files)


def _value_42(path):
    label = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    label[:3, :3] = 42
    cv2.imwrite(path, label)


def _palette(path):
    label = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    image = Image.fromarray(label, mode="P")
    rng = np.random.default_rng(0)
    image.putpalette(rng.integers(0, 256, 768).tolist())  # VOC-style colours, index = class id
    image.save(path)


def _sixteen_bit(path):
    cv2.imwrite(path, cv2.imread(path, cv2.IMREAD_GRAYSCALE).astype(np.uint16))


LABEL_FAULTS = {
    "a value that is no pascal class": (_value_42, ["has values 42 outside 0 (background), 1..20", "expected a "
                                                    "single-channel 8-bit PNG of pascal class ids"]),
    "a colour palette label": (_palette, ["3 channels with different values", "palette"]),
    "a 16-bit label": (_sixteen_bit, ["is a 16-bit image", "8-bit PNG"]),
}


@pytest.mark.parametrize("fault", sorted(LABEL_FAULTS))
def test_a_bad_label_is_named_with_its_list_line_before_any_work(fault, toy_data_root, val_pairs, tmp_path):
    root = _copy_data(toy_data_root, val_pairs, tmp_path / "data")
    damage, fragments = LABEL_FAULTS[fault]
    line = 3  # the third list line's label
    bad_label = os.path.join(root, val_pairs[line - 1][1])
    damage(bad_label)
    before = _files_under(root)
    out = tmp_path / "result.json"
    result = run("test_sccan.py", "--config", CONFIG, "--all-foreground", "--output", str(out), "--opts",
                 *toy_opts(root, str(tmp_path / "exp"), list_root=str(tmp_path / "fss")))
    assert_user_error(result, f"val.txt:{line}: label {bad_label!r}", *fragments)
    assert not out.exists() and not (tmp_path / "exp").exists() and not (tmp_path / "fss").exists()
    assert _files_under(root) == before


def test_a_bad_label_stops_the_base_learner_too(toy_data_root, val_pairs, tmp_path):
    root = _copy_data(toy_data_root, val_pairs, tmp_path / "data")
    bad_label = os.path.join(root, val_pairs[0][1])
    _sixteen_bit(bad_label)
    result = run("train_base.py", "--config", BASE_CONFIG, "--opts",
                 *toy_opts(root, str(tmp_path / "exp"), list_root=str(tmp_path / "fss"), epochs=1, batch_size=2))
    assert_user_error(result, f"label {bad_label!r} is a 16-bit image")
    assert not any(name.endswith(".pth") for name in _files_under(tmp_path)), _files_under(tmp_path)


def test_a_truncated_jpeg_is_named_not_scored_grey(toy_data_root, val_pairs, tmp_path):
    root = _copy_data(toy_data_root, val_pairs, tmp_path / "data")
    truncated = []
    for image, _ in val_pairs:  # every query, so that the first episode meets one
        path = os.path.join(root, image)
        data = open(path, "rb").read()
        with open(path, "wb") as handle:
            handle.write(data[:len(data) * 2 // 3])
        truncated.append(path)
    out = tmp_path / "result.json"
    result = run("test_sccan.py", "--config", CONFIG, "--all-foreground", "--output", str(out), "--opts",
                 *toy_opts(root, str(tmp_path / "exp"), list_root=str(tmp_path / "fss")))
    last = assert_user_error(result, "is a truncated JPEG", "copy or download it again")
    assert any(repr(path) in last for path in truncated), last
    assert not out.exists()
