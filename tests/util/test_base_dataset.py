"""util/base_dataset.py: BAM's base-class data (remap, list order, transforms, errors)."""
import os

import numpy as np
import pytest
import torch

from experiment.build import build_base_dataset
from tests.support.datasets import write_mini_dataset
from tests.support.toy_experiment import BASE_CONFIG
from util.base_dataset import BaseData, base_remap
from util.config import load_config


@pytest.mark.parametrize("novel_label", [0, 255])
def test_base_remap_by_hand(novel_label):
    # PASCAL fold 1 tests 6..10; its base classes are 1..5 (-> 1..5) and 11..20 (-> 6..15);
    # novel classes become background (BAM) or ignored (base_novel_label: 255).
    label = np.array([[0, 1, 5, 6],
                      [10, 11, 20, 255]], np.uint8)
    n = novel_label
    expected = np.array([[0, 1, 5, n],
                         [n, 6, 15, 255]], np.uint8)
    base_classes = [1, 2, 3, 4, 5] + list(range(11, 21))
    assert np.array_equal(base_remap(label, "pascal", base_classes, novel_label=novel_label), expected)
    with pytest.raises(ValueError, match=r"label values \[21\]"):
        base_remap(np.array([[21]], np.uint8), "pascal", base_classes, novel_label=novel_label)


@pytest.fixture
def mini_root(tmp_path):
    root = str(tmp_path / "mini")
    labels = []
    for index, class_id in enumerate([7, 2, 19]):  # fold 0: 2 is novel, 7 -> 2, 19 -> 14
        label = np.zeros((40, 50), np.uint8)
        label[5:20, 5:30] = class_id
        label[39, :] = 255
        labels.append((f"image{index}", label, None))
    write_mini_dataset(root, labels)
    return root


def test_every_image_in_list_order_with_base_labels(mini_root):
    dataset = BaseData(split=0, data_root=mini_root, data_list=os.path.join(mini_root, "train.txt"))
    assert len(dataset) == 3 and dataset.num_classes == 16
    assert [os.path.basename(image) for image, _ in dataset.data_list] == \
        ["image0.jpg", "image1.jpg", "image2.jpg"]
    values = []
    for index in range(3):
        image, label = dataset[index]
        assert image.shape == (3, 40, 50) and image.dtype == torch.float32
        assert label.dtype == torch.int64
        values.append(sorted(torch.unique(label).tolist()))
    assert values == [[0, 2, 255], [0, 255], [0, 14, 255]]


def test_config_key_base_novel_label_reaches_the_data(mini_root):
    cfg = load_config(BASE_CONFIG, ["data_root", mini_root, "val_list", os.path.join(mini_root, "train.txt"),
                                    "base_novel_label", "255"])
    dataset = build_base_dataset(cfg, "val")
    assert dataset.novel_label == 255
    _, label = dataset[1]  # image1 holds only class 2, novel in fold 0
    assert set(torch.unique(label).tolist()) == {0, 255} and (label == 255).sum() > 25 * 15
    with pytest.raises(ValueError, match="novel_label"):
        BaseData(split=0, data_root=mini_root, data_list=os.path.join(mini_root, "train.txt"), novel_label=3)


def test_validation_transform_size(mini_root):
    cfg = load_config(BASE_CONFIG, ["data_root", mini_root, "val_list", os.path.join(mini_root, "train.txt"),
                                    "val_size", "65"])
    dataset = build_base_dataset(cfg, "val")
    image, label = dataset[0]
    assert image.shape == (3, 65, 65) and label.shape == (65, 65)
    # the longer side (50) is resized to 65 -> 64 (floored to a multiple of 8); the rest is 255
    assert torch.all(label[:, 64:] == 255) and cfg.ori_resize is False


def test_training_transform_crop(mini_root):
    cfg = load_config(BASE_CONFIG, ["data_root", mini_root, "train_list", os.path.join(mini_root, "train.txt")])
    image, label = build_base_dataset(cfg, "train")[2]
    assert image.shape == (3, cfg.train_h, cfg.train_w) and label.shape == (cfg.train_h, cfg.train_w)
    assert set(torch.unique(label).tolist()) <= {0, 14, 255}


def test_missing_inputs_are_one_line_errors(mini_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="data_root .* does not exist") as error:
        BaseData(split=0, data_root=str(tmp_path / "none"), data_list="x.txt")
    assert "\n" not in str(error.value)
    with pytest.raises(FileNotFoundError, match="train base list .*missing.txt.* not found") as error:
        BaseData(split=0, data_root=mini_root, data_list=os.path.join(mini_root, "missing.txt"))
    assert "\n" not in str(error.value)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty base list"):
        BaseData(split=0, data_root=mini_root, data_list=str(empty))
