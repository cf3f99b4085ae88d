"""python -m tools.check_data: every planted fault of a folder found in one run, one line each."""
import os

import cv2
import numpy as np
import pytest

from tests.support.entry_points import run_in_process
from tests.support.files import write_yaml
from tests.support.own_data import write_class_folders, write_semantic_labels, write_split


@pytest.fixture
def clean_folders(tmp_path):
    root = tmp_path / "data"
    write_class_folders(str(root), {"cat": 4, "dog": 4, "eel": 3}, size=33)
    train = write_split(str(tmp_path / "trn.txt"), ["cat", "dog"])
    test = write_split(str(tmp_path / "test.txt"), ["eel"])
    return str(root), train, test


def test_a_clean_class_folder_passes_with_a_summary(clean_folders):
    root, train, test = clean_folders
    completed = run_in_process("-m", "tools.check_data", "--layout", "class_folders", root, "--splits", train, test,
                               "--shot", "2")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout.splitlines() == [
        f"check_data: {root} is clean: 3 classes, 11 image/mask pairs, at least 3 per class"]


def test_every_planted_fault_is_one_line_in_one_run(clean_folders, tmp_path):
    root, train, test = clean_folders
    os.remove(os.path.join(root, "cat", "3.png"))                                        # missing mask
    cv2.imwrite(os.path.join(root, "dog", "2.png"), np.full((20, 33), 255, np.uint8))      # size mismatch
    cv2.imwrite(os.path.join(root, "dog", "4.png"), np.zeros((33, 33), np.uint8))          # empty mask
    for number in (2, 3):                                                                  # eel keeps 1 image
        os.remove(os.path.join(root, "eel", f"{number}.jpg"))
        os.remove(os.path.join(root, "eel", f"{number}.png"))
    absent = write_split(str(tmp_path / "val.txt"), ["owl"])                              # absent class
    completed = run_in_process("-m", "tools.check_data", "--layout", "class_folders", root,
                               "--splits", train, absent, test, "--shot", "1")
    assert completed.returncode == 2
    lines = completed.stdout.splitlines()
    expected = [
        f"{absent}: names the class 'owl', which has no folder in {root}",
        f"{root}/cat/3.jpg: missing mask 3.png",
        f"{root}/dog/2.png: mask is 20x33 but its image 2.jpg is 33x33 (height x width)",
        f"{root}/dog/4.png: empty mask: no pixel reaches the foreground threshold 1",
        f"{root}/eel: class 'eel' has 1 usable image(s); 1-shot episodes need at least 2 (a query and 1 other "
        f"supports)",
    ]
    assert lines == expected
    assert completed.stderr.strip().endswith(f"check_data: 5 problems in {root}")


def test_the_threshold_and_the_config_are_used(clean_folders, tmp_path):
    root, train, test = clean_folders
    cv2.imwrite(os.path.join(root, "eel", "1.png"), np.full((33, 33), 100, np.uint8))  # below 128 only
    config = write_yaml(tmp_path, f"Data:\n  data_set: 'class_folders'\n  data_root: {root}\n  train_list: {train}\n"
                                  f"  val_list: {test}\n  foreground_threshold: 128\n  shot: 2\n")
    completed = run_in_process("-m", "tools.check_data", "--config", config)
    assert completed.returncode == 2
    assert completed.stdout.splitlines() == [
        f"{root}/eel/1.png: empty mask: no pixel reaches the foreground threshold 128",
        f"{root}/eel: class 'eel' has 2 usable image(s); 2-shot episodes need at least 3 (a query and 2 other "
        f"supports)"]
    assert run_in_process("-m", "tools.check_data", "--config", config, "--foreground-threshold", "1").returncode == 0


def test_semantic_labels_faults(tmp_path):
    root = str(tmp_path / "voc")
    train = write_semantic_labels(root, 12, num_classes=4)
    completed = run_in_process("-m", "tools.check_data", "--layout", "semantic_labels", root, "--splits", train,
                               "--num-classes", "4", "--fold-classes", "[[1, 2], [3, 4]]", "--shot", "2")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    cv2.imwrite(os.path.join(root, "labels", "0.png"), np.full((48, 96), 7, np.uint8))     # value 7 > 4
    cv2.imwrite(os.path.join(root, "labels", "1.png"), np.zeros((10, 10), np.uint8))       # size, empty
    os.remove(os.path.join(root, "images", "2.jpg"))                                       # missing image
    completed = run_in_process("-m", "tools.check_data", "--layout", "semantic_labels", root, "--splits", train,
                               "--num-classes", "4", "--fold-classes", "[[1, 5]]", "--shot", "2")
    assert completed.returncode == 2
    lines = completed.stdout.splitlines()
    assert lines[0].startswith("fold_classes: config key fold_classes: fold 0 [1, 5] must name distinct class ids")
    assert lines[1] == (f"{train}:1: label {root}/labels/0.png has values 7 outside 0 (background), 1..4 (the "
                        f"classes) and 255 (ignored)")
    assert lines[2] == f"{train}:2: label {root}/labels/1.png is 10x10 but its image is 48x96 (height x width)"
    assert lines[3] == f"{train}:2: empty label {root}/labels/1.png: no class pixel (only background and 255)"
    assert lines[4].startswith(f"{root}/images/2.jpg: image does not exist")
    assert len(lines) == 5
