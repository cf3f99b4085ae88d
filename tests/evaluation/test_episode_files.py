"""An episode file (test_sccan.py --episodes-from) is checked completely when it is read, before
the model is built: its structure, its meta against the config, its classes and supports, and
every file it names; what only decoding shows is named with the file and the episode."""
from __future__ import annotations

import json
import os
import re
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from evaluation.episodes import ReplayDataset, load_episode_file, read_episode_file
from tests.support.datasets import SMALL, block_label, write_mini_dataset
from util.dataset import SemData
from util.transform import build_val_transform

CONFIG = SimpleNamespace(data_set="pascal", split=0, shot=1, use_split_coco=False)
META = {"config": "config/toy/toy_split0_resnet50.yaml", "data_set": "pascal", "split": 0, "shot": 1,
        "seed": 321, "workers": 0, "test_num": 2}


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """Fold 0's test classes 1..5 with two images each, an image whose label has another size,
    and a text file among the images."""
    root = str(tmp_path_factory.mktemp("episode_files"))
    write_mini_dataset(root, [(f"c{c}_{k}", block_label([c]), None) for c in range(1, 6) for k in "ab"], "val.txt")
    rng = np.random.default_rng(0)
    cv2.imwrite(os.path.join(root, "JPEGImages", "odd.jpg"), rng.integers(0, 255, (64, 70, 3), dtype=np.uint8))
    cv2.imwrite(os.path.join(root, "SegmentationClassAug", "odd.png"), block_label([1]))
    with open(os.path.join(root, "JPEGImages", "notes.txt"), "w") as handle:
        handle.write("not an image\n")
    return root


def _pair(root, name):
    return [os.path.join(root, "JPEGImages", f"{name}.jpg"), os.path.join(root, "SegmentationClassAug", f"{name}.png")]


def _episode(root, query="c1_a", class_chosen=1, supports=("c1_b",)):
    return {"query": _pair(root, query), "class_chosen": class_chosen, "supports": [_pair(root, s) for s in supports]}


def _file(tmp_path, content) -> str:
    path = tmp_path / "episodes.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def _dumped(root, **meta):
    return {"meta": dict(META, **meta), "episodes": [_episode(root), _episode(root, "c2_a", 2, ("c2_b",))]}


def test_a_dumped_file_passes_every_check(mini, tmp_path):
    episodes = read_episode_file(_file(tmp_path, _dumped(mini)), CONFIG)
    assert episodes[1] == {"query": tuple(_pair(mini, "c2_a")), "class_chosen": 2,
                           "supports": [tuple(_pair(mini, "c2_b"))]}
    # a bare list (the oldest format) has no meta to compare
    assert read_episode_file(_file(tmp_path, _dumped(mini)["episodes"]), CONFIG) == episodes


def _with_second_episode(root, **fields):
    content = _dumped(root)
    content["episodes"][1].update(fields)
    return content


# (id, content made from the data root, the message after '<file>')
STRUCTURE_CASES = [
    ("unknown_episode_key", lambda r: _with_second_episode(r, note="x"),
     ": episode 1 has unknown key(s) ['note']: an episode has exactly query, class_chosen and supports"),
    ("repeated_episode_key", lambda r: json.dumps(_dumped(r)).replace('"class_chosen": 2', '"class_chosen": 2, "class_chosen": 3'),
     ": episode 1 has the key 'class_chosen' twice (JSON would keep only the last value); give each key once"),
    ("repeated_top_key", lambda r: json.dumps(_dumped(r))[:-1] + ', "episodes": []}',
     " has the key 'episodes' twice (JSON would keep only the last value)"),
    ("repeated_meta_key", lambda r: json.dumps(_dumped(r)).replace('"shot": 1', '"shot": 1, "shot": 5'),
     ": meta has the key 'shot' twice"),
    ("unknown_top_key", lambda r: dict(_dumped(r), notes="x"),
     " has unknown key(s) ['notes']; an episode file has 'meta' and 'episodes'"),
    ("meta_text", lambda r: dict(_dumped(r), meta="x"),
     ': meta is "x" (a string), expected an object with the data_set, split and shot'),
    ("meta_null", lambda r: dict(_dumped(r), meta=None), ": meta is null (a null), expected an object"),
    ("unknown_meta_key", lambda r: _dumped(r, shots=5), ": meta has unknown key(s) ['shots']; known: config, "),
    ("meta_split_text", lambda r: _dumped(r, split="0"), ': meta.split must be an integer, got "0" (a string)'),
    ("meta_shot_boolean", lambda r: _dumped(r, shot=True), ": meta.shot must be an integer, got true (a boolean)"),
    ("meta_seed_negative", lambda r: _dumped(r, seed=-1), ": meta.seed must not be negative, got -1"),
    ("meta_other_data_set", lambda r: _dumped(r, data_set="coco"),
     " was dumped with data_set coco, but the config has data_set pascal: replay it with the config it was "
     "dumped with (config/toy/toy_split0_resnet50.yaml)"),
    ("meta_other_shot", lambda r: _dumped(r, shot=5), " was dumped with shot 5, but the config has shot 1"),
    ("meta_other_split", lambda r: _dumped(r, split=1, data_set="coco"),
     " was dumped with data_set coco, split 1, but the config has data_set pascal, split 0"),
    ("class_text", lambda r: _with_second_episode(r, class_chosen="2"),
     ": episode 1 is of class '2', not one of this config's test classes [1, 2, 3, 4, 5]"),
    ("class_float", lambda r: _with_second_episode(r, class_chosen=2.0),
     ": episode 1 is malformed: class_chosen must be an integer class id or a class folder's name, got 2.0 (a number)"),
    ("class_boolean", lambda r: _with_second_episode(r, class_chosen=True),
     ": episode 1 is malformed: class_chosen must be an integer class id or a class folder's name, got true (a boolean)"),
    ("class_of_another_fold", lambda r: _with_second_episode(r, class_chosen=8),
     ": episode 1 is of class 8, not one of this config's test classes [1, 2, 3, 4, 5]"),
    ("query_one_path", lambda r: _with_second_episode(r, query=_pair(r, "c2_a")[:1]),
     ": episode 1 is malformed: query must be [image path, label path] (two non-empty strings), got"),
    ("query_empty_path", lambda r: _with_second_episode(r, query=["", _pair(r, "c2_a")[1]]),
     ": episode 1 is malformed: query must be [image path, label path]"),
    ("supports_empty", lambda r: _with_second_episode(r, supports=[]),
     ": episode 1 is malformed: supports must be a non-empty list of [image path, label path]"),
    ("support_one_path", lambda r: _with_second_episode(r, supports=[_pair(r, "c2_b")[:1]]),
     ": episode 1 is malformed: supports[0] must be [image path, label path]"),
    ("support_is_the_query", lambda r: _with_second_episode(r, supports=[[p.replace("/JPEG", "/./JPEG").replace(
        "/Seg", "/./Seg") for p in _pair(r, "c2_a")]]),
     ": episode 1: supports[0] is the query itself"),
    ("two_supports_for_one_shot", lambda r: _with_second_episode(r, supports=[_pair(r, "c2_b"), _pair(r, "c1_b")]),
     ": episode 1 has 2 supports but the config's shot is 1"),
    ("episodes_null", lambda r: dict(_dumped(r), episodes=None), ": expected a non-empty list of episodes, got null"),
    ("episode_a_list", lambda r: _dumped(r)["episodes"][:1] + [[1, 2]], ": episode 1 is a list, expected an object"),
]


@pytest.mark.parametrize("make, message", [case[1:] for case in STRUCTURE_CASES],
                         ids=[case[0] for case in STRUCTURE_CASES])
def test_a_mistake_in_the_structure_or_the_meta_is_named(mini, tmp_path, make, message):
    path = _file(tmp_path, make(mini))
    with pytest.raises(ValueError) as error:
        read_episode_file(path, CONFIG)
    assert str(error.value).startswith(path + message), str(error.value)


@pytest.mark.parametrize("name, field, error_type, problem", [
    ("missing", "query: image 'missing.jpg'", FileNotFoundError,
     f"does not exist (relative to the working directory {os.getcwd()})"),
    ("folder", "supports[0]: label", ValueError, "is a folder, not an image file"),
    ("text", "supports[0]: image", ValueError, "is not an image file OpenCV can read"),
    ("sizes", "supports[0]: image", ValueError, "is 64x70 but its label"),
])
def test_every_image_and_label_is_checked_and_named_with_its_episode(mini, tmp_path, name, field, error_type,
                                                                    problem):
    content = _dumped(mini)
    second = content["episodes"][1]
    if name == "missing":
        second["query"][0] = "missing.jpg"  # relative: read from the working directory
    elif name == "folder":
        second["supports"][0][1] = os.path.join(mini, "SegmentationClassAug")
    elif name == "text":
        second["supports"][0][0] = os.path.join(mini, "JPEGImages", "notes.txt")
    else:
        second.update(class_chosen=1, supports=[_pair(mini, "odd")])
    path = _file(tmp_path, content)
    with pytest.raises(error_type) as error:
        read_episode_file(path, CONFIG)
    assert str(error.value).startswith(f"{path}: episode 1, {field}"), str(error.value)
    assert problem in str(error.value)


def test_the_option_is_named_for_a_folder_or_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match=rf"^--episodes-from {re.escape(str(tmp_path))} is a folder, not an "
                                         r"episode file: pass the JSON file that test_sccan.py --dump-episodes wrote"):
        load_episode_file(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"^--episodes-from nope\.json: episode file not found \(relative "
                                                r"to the working directory"):
        load_episode_file("nope.json")


def test_what_only_decoding_shows_is_named_with_the_episode(mini, tmp_path):
    """A class that is not in the query's label or a support's (the original draws it from the
    query label, the supports among the images where it covers 2048 pixels); a truncated file."""
    dataset = SemData(0, 1, mini, os.path.join(mini, "val.txt"), mode="val", transform=build_val_transform(SMALL),
                      list_root=str(tmp_path / "lists"), show_progress=False)
    path = str(tmp_path / "episodes.json")
    replay = ReplayDataset(dataset, [{"query": tuple(_pair(mini, "c1_a")), "class_chosen": 1,
                                      "supports": [tuple(_pair(mini, "c1_b"))]},
                                     {"query": tuple(_pair(mini, "c2_a")), "class_chosen": 1,
                                      "supports": [tuple(_pair(mini, "c1_b"))]},
                                     {"query": tuple(_pair(mini, "c1_a")), "class_chosen": 1,
                                      "supports": [tuple(_pair(mini, "c3_b"))]}], source=path)
    assert len(replay[0]) == 7
    with pytest.raises(ValueError) as error:
        replay[1]
    assert str(error.value) == (f"{path}: episode 1: query label {_pair(mini, 'c2_a')[1]!r} has no pixel of the "
                                f"episode's class 1")
    with pytest.raises(ValueError, match=rf"^{re.escape(path)}: episode 2: support label .*c3_b\.png' has no "
                                         r"pixel of the episode's class 1$"):
        replay[2]
