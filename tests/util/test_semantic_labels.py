"""data_set 'semantic': one's own VOC-like labels with the folds of the config (fold_classes), served
by util/dataset.SemData; and the class-folder layout built from the same data gives the same masks."""
import os
import shutil

import cv2
import numpy as np
import pytest
import torch

from experiment import build
from tests.support.own_data import write_semantic_labels
from util.config import load_config
from util.dataset import SemData, get_class_lists
from util.episode_data.class_folders import ClassFolderData, MaskRule
from util.transform import build_val_transform

FOLDS = [[1, 2], [3, 4]]


@pytest.fixture(scope="module")
def semantic_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("semantic"))
    write_semantic_labels(root, 16, num_classes=5, list_name="train.txt")
    write_semantic_labels(root, 8, num_classes=5, seed=1, list_name="val.txt")
    return root


def semantic_data(root, mode, split=0, shot=1, list_root=None):
    return SemData(split=split, shot=shot, data_root=root, data_list=os.path.join(root, f"{mode}.txt"),
                   data_set="semantic", transform=build_val_transform(33), mode=mode,
                   list_root=list_root or os.path.join(root, f"fss_list_{split}"), show_progress=False,
                   fold_classes=FOLDS, num_classes=5)


def test_folds_come_from_the_config_by_hand():
    assert get_class_lists("semantic", 0, fold_classes=FOLDS, num_classes=5) == ([3, 4, 5], [1, 2])
    assert get_class_lists("semantic", 1, fold_classes=FOLDS, num_classes=5) == ([1, 2, 5], [3, 4])
    for folds, classes, message in [
            (FOLDS, None, "needs config key num_classes"), ([], 5, "needs config key fold_classes"),
            ([[1, 6]], 5, r"fold 0 \[1, 6\] must name distinct class ids 1..5 .*not class ids: \[6\]"),
            ([[1, 1]], 5, "must name distinct class ids"), ([[1]], 5, "config key split 1: fold_classes defines "
                                                                  "folds 0..0")]:
        with pytest.raises(ValueError, match=message):
            get_class_lists("semantic", 1, fold_classes=folds, num_classes=classes)


@pytest.mark.parametrize("split", [0, 1])
def test_episodes_of_the_folds_classes(semantic_root, split):
    val = semantic_data(semantic_root, "val", split=split)
    train = semantic_data(semantic_root, "train", split=split)
    assert val.val_classes == FOLDS[split] and train.train_classes == [c for c in range(1, 6) if c not in FOLDS[split]]
    for index in range(len(val)):
        episode = val.sample_episode(index)
        assert episode["class_chosen"] in FOLDS[split]
        label = cv2.imread(episode["query"][1], cv2.IMREAD_GRAYSCALE)
        assert (label == episode["class_chosen"]).any()
    item = val[0]
    assert item.query_image.shape == (3, 33, 33) and item.support_labels.shape == (1, 33, 33)
    for index in range(len(train)):  # training images hold no test class of the fold (filter_intersection)
        label = cv2.imread(train.data_list[index][1], cv2.IMREAD_GRAYSCALE)
        assert not set(np.unique(label).tolist()) & set(FOLDS[split])


def test_the_config_builds_it(semantic_root, tmp_path):
    opts = ["data_set", "semantic", "data_root", semantic_root, "train_list", os.path.join(semantic_root, "train.txt"),
            "val_list", os.path.join(semantic_root, "val.txt"), "list_root", str(tmp_path / "lists"),
            "fold_classes", "[[1, 2], [3, 4]]", "num_classes", "5", "split", "1", "val_size", "33"]
    cfg = load_config(os.path.join("config", "toy", "toy_split0_resnet50.yaml"), opts)
    assert build.test_class_ids(cfg) == [3, 4]
    data = build.build_dataset(cfg, "val", show_progress=False)
    assert isinstance(data, SemData) and data.val_classes == [3, 4] and data.num_classes == 5


def test_label_values_beyond_num_classes_are_named(tmp_path):
    root = str(tmp_path)
    write_semantic_labels(root, 6, num_classes=5, list_name="val.txt")
    cv2.imwrite(os.path.join(root, "labels", "0.png"), np.full((48, 96), 9, np.uint8))
    with pytest.raises(ValueError, match=r"labels/0.png' has values 9 outside 0 \(background\), 1..5"):
        semantic_data(root, "val")


def as_class_folders(root, class_folders, data_list):
    """One folder per class of the semantic data: each image that holds class c, copied byte for
    byte to class_<c>/<stem>.jpg, its mask 128 where the label is c, 255 where it is 255, else 0."""
    for image, label_path in data_list:
        label = cv2.imread(label_path, cv2.IMREAD_GRAYSCALE)
        stem = os.path.splitext(os.path.basename(image))[0]
        for class_id in set(np.unique(label).tolist()) - {0, 255}:
            folder = os.path.join(class_folders, f"class_{class_id}")
            os.makedirs(folder, exist_ok=True)
            shutil.copyfile(image, os.path.join(folder, stem + ".jpg"))
            mask = np.where(label == class_id, 128, np.where(label == 255, 255, 0)).astype(np.uint8)
            cv2.imwrite(os.path.join(folder, stem + ".png"), mask)


@pytest.mark.parametrize("shot", [1, 2])
def test_class_folders_of_a_semantic_dataset_give_the_same_episodes(semantic_root, tmp_path, shot):
    semantic = semantic_data(semantic_root, "val", split=1, shot=shot, list_root=str(tmp_path / f"lists{shot}"))
    folders = str(tmp_path / "folders")
    as_class_folders(semantic_root, folders, semantic.data_list)
    class_folders = ClassFolderData(folders, ["class_3", "class_4"], shot=shot, mode="val", episodes=1,
                                    transform=build_val_transform(33), mask_rule=MaskRule(1, ignore_value=255))

    def moved(pair, class_id):
        stem = os.path.splitext(os.path.basename(pair[0]))[0]
        return tuple(os.path.join(folders, f"class_{class_id}", stem + extension) for extension in (".jpg", ".png"))

    for index in range(len(semantic)):
        episode = semantic.sample_episode(index)
        chosen = episode["class_chosen"]
        expected = semantic.load_episode(**episode)
        got = class_folders.load_episode(moved(episode["query"], chosen), f"class_{chosen}",
                                         [moved(pair, chosen) for pair in episode["supports"]])
        for field in ("query_image", "query_label", "support_images", "support_labels", "raw_label"):
            assert torch.equal(getattr(expected, field), getattr(got, field)), (index, field)
        assert (expected.raw_label == 255).any() and (expected.raw_label == 1).any()


def test_the_fold_number_is_checked_against_the_folds_of_the_data_set():
    from util.config_schema import range_problems
    six_folds = [[c] for c in range(1, 7)]
    assert range_problems({"data_set": "semantic", "split": 5, "fold_classes": six_folds}) == []
    assert range_problems({"data_set": "pascal", "split": 3, "fold_classes": []}) == []
    expected = "expected split 0..3 (the four folds), or with data_set 'semantic' 0..len(fold_classes) - 1"
    for values in ({"data_set": "pascal", "split": 4, "fold_classes": []},
                   {"data_set": "coco", "split": 5, "fold_classes": six_folds},
                   {"data_set": "semantic", "split": 6, "fold_classes": six_folds}):
        [problem] = range_problems(values)
        assert problem.startswith("config keys data_set and split and fold_classes: " + expected), problem
    assert range_problems({"data_set": "semantic", "split": -1, "fold_classes": six_folds}) == [
        "config key split: expected an int >= 0, got -1"]
