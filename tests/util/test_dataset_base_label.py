"""The base label of training episodes for BAM's ensemble (util/dataset.py ``base_label``): the
remap, and that serving it changes neither the episodes nor their draws."""
import os
import random

import numpy as np
import pytest
import torch

from tests.support.datasets import block_label, write_mini_dataset
from util.dataset import SemData, base_remap_label, get_class_lists, read_label, transform_with_base_label
from util.transform import ToTensor, build_train_transform

FOLD0_BASE = get_class_lists("pascal", 0)[0]  # 6..20


def test_base_remap_of_a_hand_made_label():
    label = np.array([[0, 6, 7, 255],
                      [1, 5, 20, 6]], np.uint8)  # 1..5 are fold 0's novel classes
    expected = np.array([[0, 1, 2, 255],
                         [0, 0, 15, 1]], np.uint8)  # base class c -> c - 5 (its index + 1)
    np.testing.assert_array_equal(base_remap_label(label, FOLD0_BASE), expected)


def test_one_label_map_carries_both_labels_through_a_transform_for_every_base_class():
    """transform_with_base_label on a hand-made label holding the first and the last base class
    (indices 1 and 15, the swapped pair's neighbours), the ignore label and a padding value: the
    episode label is 1 on the chosen class only, the base label the plain remap, for each choice."""
    label = np.array([[0, 6, 7, 20],
                      [255, 3, 13, 20]], np.uint8)  # 3 is a novel class of fold 0
    image = np.zeros((2, 4, 3), np.float32)

    def pad_corner(image, label):  # a transform that moves nothing but writes a padding value
        image, label = ToTensor()(image, label)
        label[0, 0] = 250
        return image, label

    for chosen in (6, 7, 13, 20):
        _, episode_label, base_label = transform_with_base_label(pad_corner, image, label, chosen, FOLD0_BASE)
        expected_episode = np.where(label == chosen, 1, np.where(label == 255, 255, 0))
        expected_episode[0, 0] = 250
        expected_base = base_remap_label(label, FOLD0_BASE).astype(np.int64)
        expected_base[0, 0] = 250
        np.testing.assert_array_equal(episode_label.numpy(), expected_episode, err_msg=f"chosen {chosen}")
        np.testing.assert_array_equal(base_label.numpy(), expected_base, err_msg=f"chosen {chosen}")


def _mixed_dataset(root):
    """Images holding two base classes each (training lists keep only images whose classes are all
    base classes), so that the base label differs from the episode label."""
    entries = []
    for first in range(6, 20):
        entries.append((f"mix{first}_a", block_label([first, first + 1]), None))
        entries.append((f"mix{first}_b", block_label([first + 1, first]), None))
    return write_mini_dataset(root, entries)


def _dataset(root, base_label):
    transform = build_train_transform(57, 57, 0.7, 1.3, -10, 10)
    return SemData(0, 1, root, os.path.join(root, "train.txt"), data_set="pascal", transform=transform,
                   mode="train", list_root=os.path.join(root, "fss_list"), show_progress=False,
                   base_label=base_label)


def test_base_label_leaves_the_episodes_and_their_draws_unchanged(tmp_path):
    root = str(tmp_path)
    _mixed_dataset(root)
    plain, with_base = _dataset(root, False), _dataset(root, True)
    several_classes = 0
    for index in range(len(plain)):
        random.seed(index)
        expected = plain[index]
        after_plain = random.random()
        random.seed(index)
        item = with_base[index]
        assert random.random() == after_plain  # the same number of draws
        assert len(expected) == 5 and len(item) == 6
        for want, got in zip(expected[:4], item[:4]):
            assert torch.equal(want, got)
        assert expected[4] == item[4]
        episode_label, base_label = item[1], item[5]
        chosen_value = item[4][0] + 1  # the train class index + 1: the base numbering
        assert torch.equal(base_label == chosen_value, episode_label == 1)
        assert torch.equal(base_label == 255, episode_label == 255)
        assert set(base_label.unique().tolist()) <= set(range(16)) | {255}
        several_classes += len(set(base_label.unique().tolist()) - {0, 255}) >= 2
    assert several_classes > 0  # crops that show more than the episode class


def test_base_label_is_the_remapped_query_without_a_transform(tmp_path):
    root = str(tmp_path)
    _mixed_dataset(root)
    dataset = SemData(0, 1, root, os.path.join(root, "train.txt"), data_set="pascal", mode="train",
                      list_root=os.path.join(root, "fss_list"), show_progress=False, base_label=True)
    random.seed(0)
    episode = dataset.sample_episode(3)
    random.seed(0)
    base_label = dataset[3][5]
    expected = base_remap_label(read_label(episode["query"][1]), FOLD0_BASE)
    np.testing.assert_array_equal(base_label.numpy(), expected)


def test_base_label_is_for_training_only(tmp_path):
    with pytest.raises(ValueError, match="mode 'train' only"):
        SemData(0, 1, str(tmp_path), None, mode="val", base_label=True)
