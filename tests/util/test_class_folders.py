"""util/episode_data/class_folders.py on tiny generated class folders (FSS-1000's layout)."""
import glob
import json
import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from evaluation.episodes import RecordingDataset, ReplayDataset
from tests.support.own_data import write_class_folders, write_split
from util.episode_data.class_folders import (ClassFolderData, MaskRule, class_images, mask_to_grey,
                                             natural_key, read_class_split, read_mask)
from util.transform import build_train_transform, build_val_transform

CLASSES = {"cat": 10, "dog": 10, "eel": 10}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("class_folders")
    write_class_folders(str(folder), CLASSES, size=33)
    return str(folder)


def evaluation_data(root, shot=1, episodes=12, seed=0, transform=None):
    return ClassFolderData(root, ["eel", "cat", "dog"], shot=shot, mode="val", episodes=episodes, seed=seed,
                           transform=transform, mask_rule=MaskRule(128))


def test_mask_rule_thresholds_and_ignore_by_hand():
    grey = np.array([[0, 1, 127, 128, 254, 255]], np.uint8)
    assert MaskRule(1).binarise(grey).tolist() == [[0, 1, 1, 1, 1, 1]]
    assert MaskRule(128).binarise(grey).tolist() == [[0, 0, 0, 1, 1, 1]]
    assert MaskRule(1, ignore_value=255).binarise(grey).tolist() == [[0, 1, 1, 1, 1, 255]]
    with pytest.raises(ValueError, match="foreground_threshold"):
        MaskRule(0)


def test_colour_masks_become_grey_as_pil_convert_l(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    path = str(tmp_path / "colour.png")
    Image.fromarray(rgb).save(path)
    expected = np.array(Image.open(path).convert("L"))
    assert np.array_equal(mask_to_grey(cv2.imread(path, cv2.IMREAD_UNCHANGED)), expected)
    assert np.array_equal(read_mask(path, MaskRule(128)), (expected >= 128).astype(np.uint8))


def test_split_file_and_natural_order(tmp_path):
    path = write_split(str(tmp_path / "split.txt"), ["dog", "", "cat"])
    assert read_class_split(path) == ["cat", "dog"]
    write_split(str(tmp_path / "twice.txt"), ["dog", "cat", "dog"])
    with pytest.raises(ValueError, match="names the class 'dog' twice"):
        read_class_split(str(tmp_path / "twice.txt"))
    assert sorted(["10.jpg", "2.jpg", "1.jpg"], key=natural_key) == ["1.jpg", "2.jpg", "10.jpg"]


def test_images_in_hsnet_order_and_pairs(root):
    pairs = class_images(root, "cat")
    names = [os.path.basename(image) for image, _ in pairs]
    assert names == ["1.jpg", "10.jpg"] + [f"{n}.jpg" for n in range(2, 10)]
    assert all(mask == image[:-4] + ".png" for image, mask in pairs)


def test_evaluation_episodes_class_shot_shapes(root):
    data = evaluation_data(root, shot=2, transform=build_val_transform(33))
    assert data.class_names == ["cat", "dog", "eel"] and len(data) == 12
    for index in range(len(data)):
        episode = data.sample_episode(index)
        name = episode["class_chosen"]
        assert all(os.path.dirname(pair[0]) == os.path.join(root, name) for pair in episode["supports"])
        assert episode["query"] not in episode["supports"] and len(episode["supports"]) == 2
        item = data[index]
        assert item.query_image.shape == (3, 33, 33) and item.support_images.shape == (2, 3, 33, 33)
        assert item.support_labels.shape == (2, 33, 33) and item.class_index == [data.class_names.index(name)]
        mask = cv2.imread(episode["query"][1], cv2.IMREAD_GRAYSCALE)
        assert torch.equal(item.raw_label, torch.from_numpy((mask >= 128).astype(np.int64)))
    # Every image of the split is a query once, classes in name order (10 images each).
    assert [data.sample_episode(i)["class_chosen"] for i in (0, 9, 10, 11)] == ["cat", "cat", "dog", "dog"]


def hsnet_supports(root, class_names, shot, episodes, seed):
    """HSNet data/fss.py's sampling, written out from its code: sorted categories, sorted glob of
    each class folder's jpg files as queries, np.random.choice(range(1, 11)) per shot until it is
    not the query, one global numpy stream seeded by test.py."""
    np.random.seed(seed)
    queries = [path for name in sorted(class_names) for path in sorted(glob.glob(os.path.join(root, name, "*")))
               if os.path.basename(path).split(".")[1] == "jpg"]
    result = []
    for index in range(episodes):
        query = queries[index]
        supports = []
        while True:
            number = np.random.choice(range(1, 11), 1, replace=False)[0]
            support = os.path.join(os.path.dirname(query), str(number)) + ".jpg"
            if query != support:
                supports.append(support)
            if len(supports) == shot:
                break
        result.append((query, supports))
    return result


@pytest.mark.parametrize("shot", [1, 5])
def test_evaluation_draws_are_hsnets_for_the_seed(root, shot):
    data = evaluation_data(root, shot=shot, episodes=30, seed=0)
    drawn = [(data.sample_episode(i)["query"][0], [pair[0] for pair in data.sample_episode(i)["supports"]])
             for i in range(30)]
    assert drawn == hsnet_supports(root, CLASSES, shot, 30, seed=0)


def test_evaluation_episodes_follow_the_seed_not_the_workers(root):
    data = evaluation_data(root, shot=1, episodes=12, seed=5, transform=build_val_transform(33))

    def supports_of(workers):
        loader = DataLoader(RecordingDataset(data), batch_size=1, num_workers=workers)
        return [json.loads(batch.record[0])["supports"] for batch in loader]

    first = supports_of(0)
    assert supports_of(2) == first
    data.set_episode_seed(6)
    assert supports_of(0) != first
    data.set_episode_seed(5)
    assert supports_of(0) == first


def test_dump_and_replay_give_the_same_items(root):
    data = evaluation_data(root, shot=2, episodes=5, transform=build_val_transform(33))
    recorded = [RecordingDataset(data)[index] for index in range(5)]
    episodes = [json.loads(item.record) for item in recorded]
    replay = ReplayDataset(evaluation_data(root, shot=2, episodes=1, seed=9, transform=build_val_transform(33)),
                           [dict(query=tuple(e["query"]), class_chosen=e["class_chosen"],
                                 supports=[tuple(p) for p in e["supports"]]) for e in episodes])
    for first, second in zip(recorded, (replay[index] for index in range(5))):
        assert first.record == second.record
        assert torch.equal(first.query_image, second.query_image) and torch.equal(first.support_labels,
                                                                                    second.support_labels)


def test_training_episodes_each_image_once_distinct_supports(root):
    data = ClassFolderData(root, ["dog", "cat"], shot=3, mode="train",
                           transform=build_train_transform(33, 33, 0.9, 1.1, -10, 10))
    assert len(data) == 20
    queries = set()
    for index in range(len(data)):
        episode = data.sample_episode(index)
        supports = episode["supports"]
        assert len(set(supports)) == 3 and episode["query"] not in supports
        assert {os.path.basename(os.path.dirname(p[0])) for p in supports} == {episode["class_chosen"]}
        queries.add(episode["query"])
    assert len(queries) == 20
    item = data[0]
    assert item.query_image.shape == (3, 33, 33) and item.support_labels.shape == (3, 33, 33)
    assert item.class_index == [0]


def test_refusals_name_the_problem(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="class folder .*owl.* not found"):
        ClassFolderData(root, ["cat", "owl"], mode="val")
    write_class_folders(str(tmp_path), {"few": 2})
    with pytest.raises(ValueError, match="class 'few' .* has 2 image.* 2-shot episodes need at least 3"):
        ClassFolderData(str(tmp_path), ["few"], shot=2, mode="val")
    data = ClassFolderData(str(tmp_path), ["few"], shot=1, mode="val", episodes=2)
    cv2.imwrite(os.path.join(str(tmp_path), "few", "1.png"), np.zeros((41, 41), np.uint8))
    with pytest.raises(ValueError, match="has no foreground pixel"):
        data.load_episode(**dict(data.sample_episode(0), query=class_images(str(tmp_path), "few")[0],
                                 supports=[class_images(str(tmp_path), "few")[1]]))


def test_the_shipped_fss_split_is_hsnets_520_240_240():
    from tests.support import REPOSITORY_ROOT
    splits = {name: read_class_split(os.path.join(REPOSITORY_ROOT, "lists", "fss", f"{name}.txt"))
              for name in ("trn", "val", "test")}
    assert [len(splits[name]) for name in ("trn", "val", "test")] == [520, 240, 240]
    assert len(set().union(*map(set, splits.values()))) == 1000  # disjoint
    assert all(name == name.strip() and name for names in splits.values() for name in names)


def test_the_fss_config_tests_the_test_split_with_hsnets_settings(root, tmp_path):
    from experiment import build
    from util.config import load_config
    train = write_split(str(tmp_path / "trn.txt"), ["cat"])
    test = write_split(str(tmp_path / "test.txt"), ["dog", "eel"])
    cfg = load_config("config/fss/fss_resnet50_5s.yaml", ["data_root", root, "train_list", train, "val_list", train,
                                                         "test_list", test, "val_size", "33"])
    assert build.test_class_ids(cfg) == ["cat"]  # training validates on val_list
    tested = build.test_config(cfg, episodes=20)
    assert build.test_class_ids(tested) == ["dog", "eel"] and tested.test_num == 20 and cfg.test_num == 2400
    data = build.build_dataset(tested, "val", show_progress=False)
    assert isinstance(data, ClassFolderData) and data.mask_rule == MaskRule(128) and data.shot == 5
    drawn = [(data.sample_episode(i)["query"][0], [pair[0] for pair in data.sample_episode(i)["supports"]])
             for i in range(20)]
    assert drawn == hsnet_supports(root, ["dog", "eel"], 5, 20, seed=0)  # manual_seed 0: HSNet's episodes
    assert data[0].query_image.shape == (3, 33, 33)
