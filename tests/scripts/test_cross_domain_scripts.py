"""test_sccan.py on a tiny generated copy of PATNet's prepared ISIC layout, with the shipped
cross-domain config: the all-foreground baseline's mIoU computed by hand from the dumped
episodes (scored at PATNet's 400 x 400) and other episodes for another seed, a tiny random model over two seeds with pictures, and
the replay of the dumped episodes with another worker count."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch

import test_sccan
from experiment.models import build_model
from tests.support import REPOSITORY_ROOT
from tests.support.cross_domain import make_prepared_isic
from util.config import load_config

CONFIG = os.path.join(REPOSITORY_ROOT, "config", "cross_domain", "isic_resnet50.yaml")
EPISODES = 6


def _opts(data_root, tmp_path, **overrides):
    values = dict(data_root=data_root, save_path=str(tmp_path / "exp"), val_size=33, feature_size=8,
                  test_num=EPISODES, workers=0, pretrained_backbone=False)
    values.update(overrides)
    return [str(item) for pair in values.items() for item in pair]


@pytest.fixture(scope="module")
def isic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("isic") / "ISIC"
    make_prepared_isic(str(root), [3, 2, 3], size=(30, 44))
    return str(root)


@pytest.fixture(scope="module")
def tiny_checkpoint(isic_root, tmp_path_factory):
    """The weights of a random SCCAN at the tiny settings (ResNet-50, an 8 x 8 grid)."""
    path = tmp_path_factory.mktemp("weights") / "random.pth"
    torch.manual_seed(0)
    torch.save(build_model(load_config(CONFIG, _opts(isic_root, path.parent))).state_dict(), path)
    return str(path)


def _scored_mask(path: str) -> np.ndarray:
    """A mask file as PATNet scores it: 255 -> 1, resized to 400 x 400 by taking input pixel
    floor(i * in / 400) for output pixel i."""
    mask = (cv2.imread(path, cv2.IMREAD_GRAYSCALE) >= 128).astype(np.int64)
    rows, columns = (np.arange(400) * mask.shape[0]) // 400, (np.arange(400) * mask.shape[1]) // 400
    return mask[rows][:, columns]


def test_the_all_foreground_baseline_scores_the_400_pixel_masks(isic_root, tmp_path):
    episodes = str(tmp_path / "episodes.json")
    summary = test_sccan.run(["--config", CONFIG, "--all-foreground", "--seeds", "2", "--dump-episodes", episodes,
                              "--output", str(tmp_path / "all.json"), "--opts", *_opts(isic_root, tmp_path)])
    with open(episodes) as handle:
        dumped = json.load(handle)["episodes"]
    assert [episode["class_chosen"] for episode in dumped] == [1, 2, 3, 1, 2, 3]
    # Every pixel predicted foreground: a class's IoU is its foreground pixels over all its pixels.
    foreground, pixels = np.zeros(3), np.zeros(3)
    for episode in dumped:
        foreground[episode["class_chosen"] - 1] += _scored_mask(episode["query"][1]).sum()
        pixels[episode["class_chosen"] - 1] += 400 * 400
    assert summary["class_ids"] == [1, 2, 3]
    assert summary["runs"][0]["class_IoU"] == pytest.approx(list(foreground / pixels), abs=1e-9)
    assert summary["runs"][0]["mIoU"] == pytest.approx(float(np.mean(foreground / pixels)), abs=1e-9)
    assert os.path.isfile(tmp_path / "all.json")
    # The protocol gives each run's seed to the draws: seed 322 scored other queries.
    assert summary["runs"][1]["seed"] == 322 and summary["runs"][1]["mIoU"] != summary["runs"][0]["mIoU"]


def test_a_tiny_model_over_seeds_with_pictures_then_replayed(isic_root, tiny_checkpoint, tmp_path):
    episodes = str(tmp_path / "episodes.json")
    first = test_sccan.run(["--config", CONFIG, "--weight", tiny_checkpoint, "--seeds", "2",
                            "--dump-episodes", episodes, "--save-vis", str(tmp_path / "vis"),
                            "--output", str(tmp_path / "first.json"), "--opts", *_opts(isic_root, tmp_path)])
    assert [run["seed"] for run in first["runs"]] == [321, 322] and set(first["mean"]) >= {"mIoU", "FB_IoU"}
    assert len([name for name in os.listdir(tmp_path / "vis") if name.endswith(".png")]) == EPISODES
    with open(tmp_path / "first.json") as handle:
        assert json.load(handle)["runs"][0]["mIoU"] == first["runs"][0]["mIoU"]
    replay = test_sccan.run(["--config", CONFIG, "--weight", tiny_checkpoint, "--episodes-from", episodes,
                             "--output", str(tmp_path / "replay.json"),
                             "--opts", *_opts(isic_root, tmp_path, workers=2)])
    for key in ("mIoU", "FB_IoU", "class_IoU"):
        assert replay["runs"][0][key] == first["runs"][0][key], key
