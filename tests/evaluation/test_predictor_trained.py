"""A model trained briefly on the toy data, inside this test, segments toy objects of classes it
never saw through the predictor clearly better than chance: the predictor's input preparation,
support encoding and mapping back onto the query's pixels work end to end (a flipped or shifted
mapping would land the masks beside the objects). The same trained model predicts the same
pixels under bf16 autocast (config key ``amp: bf16``) as in float32.

About 90 s on 2 cores, 110 s on one (one training for both tests): tiny inputs, a fixed set of augmented
training episodes whose backbone features are computed once (tests/support/toy_training.py)."""
import random

import numpy as np
import pytest
import torch

from evaluation.predictor import Predictor
from tests.support.toy_training import train_briefly
from util.dataset import SemData, binarize_label, read_label
from util.runtime import autocast

# 65 px, an 8x8 grid of 4x4 windows. Mean IoU measured 2026-12-03 (torch 2.14.1) against 0.10 for
# all-foreground and 0.12-0.13 for the misplaced mask: 150 updates 0.29 (seed 0); 120 updates
# 0.24 / 0.28 (seeds 0 / 1); 200 updates 0.34 / 0.27. At 41 px and a 4x4 grid it was 0.14-0.21.
SIZE, GRID, WINDOW, EPISODES, ITERATIONS = 65, 8, 4, 128, 150
TEST_EPISODES = 40


def _iou(mask, label):
    valid, target = label != 255, label == 1
    return (mask & target & valid).sum() / max(((mask | target) & valid).sum(), 1)


@pytest.fixture(scope="module")
def trained(toy_data_root, tmp_path_factory):
    """(predictor around the briefly trained model, its config, the fold-0 val episodes)."""
    model, cfg = train_briefly(toy_data_root, str(tmp_path_factory.mktemp("brief")), SIZE, GRID, WINDOW,
                               EPISODES, ITERATIONS)
    episodes = SemData(split=0, shot=1, data_root=toy_data_root, data_list=cfg.val_list, data_set="pascal",
                       mode="val", list_root=cfg.list_root, show_progress=False)
    return Predictor.from_model(model, cfg, device="cpu"), cfg, episodes


def _episode(predictor, episodes, index):
    """Sets the supports of val episode ``index``; returns (query image path, binary label,
    the supports' arguments of ``set_support``)."""
    episode = episodes.sample_episode(index)
    chosen = episode["class_chosen"]
    supports = ([image for image, _ in episode["supports"]],
                [binarize_label(read_label(label), chosen) for _, label in episode["supports"]])
    predictor.set_support(*supports)
    image_path, label_path = episode["query"]
    return image_path, binarize_label(read_label(label_path), chosen), supports


@pytest.fixture(scope="module")
def scores(trained):
    """Per novel-class episode: IoU of the predicted mask, of an all-foreground mask and of the
    predicted mask turned upside down (same size and shape, wrong place)."""
    predictor, _, episodes = trained
    random.seed(1)
    rows = []
    for index in range(TEST_EPISODES):
        image_path, label, _ = _episode(predictor, episodes, index)
        mask = predictor.predict(image_path)
        assert mask.shape == label.shape
        rows.append((_iou(mask, label), _iou(np.ones_like(mask), label), _iou(mask[::-1, ::-1], label)))
    return np.array(rows)


def test_briefly_trained_masks_overlap_novel_objects_clearly_better_than_chance(scores):
    predicted, everything, misplaced = scores.mean(axis=0)
    assert predicted > 2 * everything, (predicted, everything)
    assert predicted > misplaced + 0.1, (predicted, misplaced)
    assert (scores[:, 0] > scores[:, 1]).mean() > 0.6


def test_bf16_predicts_the_pixels_of_float32(trained):
    """The trained model under bf16 autocast: its layers really run in bf16, the probabilities
    differ from float32's a little and the masks agree on at least 99.5% of the pixels."""
    predictor, _, episodes = trained
    random.seed(2)
    agreement, largest_difference = [], 0.0
    for index in range(8):
        image_path, _, supports = _episode(predictor, episodes, index)
        mask, probability = predictor.predict(image_path, return_probability=True)
        with autocast(torch.device("cpu"), "bf16"):
            assert predictor.model.down_query[0](torch.randn(1, 1536, 2, 2)).dtype == torch.bfloat16
            predictor.set_support(*supports)  # the supports encoded in bf16 too
            mask_bf16, probability_bf16 = predictor.predict(image_path, return_probability=True)
        assert probability_bf16.dtype == probability.dtype
        largest_difference = max(largest_difference, float(np.abs(probability_bf16 - probability).max()))
        agreement.append((mask == mask_bf16).mean())
    assert largest_difference > 0  # bf16 really ran
    assert np.mean(agreement) >= 0.995, agreement
