"""evaluation/visualisation.py: overlays, episode IoU, episode pictures and their HTML index, the
per-class IoU chart."""
import os
import re

import cv2
import numpy as np
import pytest
import torch

from evaluation.protocol import EvaluatedBatch
from evaluation.visualisation import (ANNOTATION_COLOUR, PREDICTION_COLOUR, VisualisationWriter,
                                      class_iou_chart, episode_iou, mask_overlay, prediction_overlay)
from tests.support.files import page_references
from util.transform import IMAGE_MEAN, IMAGE_STD


def test_mask_overlay_tints_the_foreground_outlines_it_and_washes_out_ignored_pixels():
    image = np.full((60, 60, 3), 100, np.uint8)
    mask = np.zeros((60, 60), np.uint8)
    mask[20:40, 20:40] = 1
    mask[:5] = 255
    out = mask_overlay(image, mask, PREDICTION_COLOUR)
    assert np.array_equal(out[50, 5], image[50, 5])  # background far from the outline: untouched
    inside = out[30, 30].astype(int)
    assert inside[0] > 100 and inside[2] < 100  # towards orange-red
    assert np.array_equal(out[20, 30], PREDICTION_COLOUR)  # the outline on the mask's edge
    assert (out[2, 30] > 100).all()  # ignored: lighter


def test_episode_iou_counts_foreground_pixels_and_leaves_ignored_ones_out():
    label = torch.zeros(20, 20, dtype=torch.long)
    label[:10, :10] = 1
    prediction = torch.zeros(20, 20, dtype=torch.long)
    prediction[:10, 5:15] = 1  # 50 shared of 150 in the union
    assert episode_iou(prediction, label) == pytest.approx(1 / 3)
    label[:, 10:] = 255  # the 50 predicted pixels outside the object are now ignored
    assert episode_iou(prediction, label) == pytest.approx(0.5)


def _network_image(height, width, canvas, seed):
    """A picture of (height, width) placed top-left on a canvas, normalised like test_Resize's output."""
    raw = np.zeros((canvas, canvas, 3), np.float32)
    raw[:height, :width] = np.random.default_rng(seed).integers(30, 255, (height, width, 3))
    return ((torch.from_numpy(raw).permute(2, 0, 1) - torch.tensor(IMAGE_MEAN).view(3, 1, 1))
            / torch.tensor(IMAGE_STD).view(3, 1, 1))


def _batch(first_episode, class_index, overlap, canvas=64):
    label = torch.full((canvas, canvas), 255, dtype=torch.long)
    label[:48, :40] = 0
    label[10:30, 10:30] = 1
    prediction = torch.zeros(canvas, canvas, dtype=torch.long)
    prediction[10:30, 10:10 + overlap] = 1
    return EvaluatedBatch(first_episode, _network_image(48, 40, canvas, first_episode)[None], label[None],
                          _network_image(40, 48, canvas, 99)[None, None], label[None, None], prediction[None],
                          (), torch.tensor([class_index]))


def test_writer_names_pictures_by_episode_class_and_iou_and_indexes_them_worst_first(tmp_path):
    writer = VisualisationWriter(str(tmp_path / "vis"), class_ids=[1, 2, 3, 4, 5])
    writer.start()
    for episode, (class_index, overlap) in enumerate([(0, 20), (3, 5), (1, 10)]):
        writer.observe(_batch(episode, class_index, overlap))
    index = writer.finish("toy run")
    names = sorted(name for name in os.listdir(tmp_path / "vis") if name.endswith(".png"))
    assert names == ["episode_00000_class1_iou1.000.png", "episode_00001_class4_iou0.250.png",
                     "episode_00002_class2_iou0.500.png"]
    picture = cv2.imread(str(tmp_path / "vis" / names[1]))
    assert picture.shape[0] >= 200 and picture.shape[1] > 500  # prediction, truth, support side by side
    references = page_references(index)
    pictures = [reference for reference in references if reference.endswith(".png")]
    assert set(pictures) == set(names)
    assert all(os.path.isfile(os.path.join(tmp_path / "vis", reference)) for reference in references)
    # thumbnails in order of IoU, worst first (each appears as link and image)
    assert pictures[::2] == [names[1], names[2], names[0]]
    with open(index, encoding="utf-8") as handle:
        page = handle.read()
    assert "worst first" in page and "toy run" in page
    assert re.search(r"<td>4</td><td>1</td><td>0\.250</td>", page)


def test_prediction_overlay_shows_the_query_beside_its_supports():
    query = np.full((150, 100, 3), 90, np.uint8)
    mask = np.zeros((150, 100), bool)
    mask[40:90, 30:70] = True
    supports = [np.full((80, 120, 3), 60, np.uint8)] * 3
    support_masks = [np.pad(np.ones((20, 20), np.uint8), 30)[:80, :120]] * 3
    picture = prediction_overlay(query, mask, supports, support_masks, "query.jpg: 13.3% foreground")
    assert picture.shape[0] > 320 and picture.dtype == np.uint8
    is_prediction = (np.abs(picture.astype(int) - PREDICTION_COLOUR).sum(axis=2) < 10)
    is_annotation = (np.abs(picture.astype(int) - ANNOTATION_COLOUR).sum(axis=2) < 10)
    assert is_prediction.any() and is_annotation.any()
    # the query panel on the left, the support thumbnails to its right
    assert np.nonzero(is_prediction)[1].max() < np.nonzero(is_annotation)[1].min()


def _is_bar(pixels):
    return np.abs(pixels.astype(int) - ANNOTATION_COLOUR).sum(axis=-1) < 10


def _bars(chart):
    """(centre column, height in pixels) of each bar, found by its colour, left to right; the
    height is read a quarter of the way in, beside the whisker that runs down the centre."""
    columns = _is_bar(chart).any(axis=0)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], columns.astype(int), [0]])))
    return [((start + end) // 2, int(_is_bar(chart[:, (3 * start + end) // 4]).sum()))
            for start, end in zip(edges[::2], edges[1::2])]


def test_chart_bars_follow_the_class_iou_and_show_the_spread_of_several_runs():
    bars = _bars(class_iou_chart([1, 2, 3], [[0.2, 0.8, 0.05]], "one run"))
    assert len(bars) == 3 and bars[0][0] < bars[1][0] < bars[2][0]
    assert bars[1][1] == pytest.approx(4 * bars[0][1], rel=0.05)
    assert bars[0][1] == pytest.approx(4 * bars[2][1], rel=0.1)
    spread = class_iou_chart([1, 2, 3], [[0.2, 0.8, 0.05], [0.4, 0.6, 0.05]], "two runs")
    (_, low), (centre, middle), _ = _bars(spread)
    assert middle == pytest.approx(bars[1][1] * 0.7 / 0.8, rel=0.05)  # the mean of 0.8 and 0.6
    assert low == pytest.approx(bars[1][1] * 0.3 / 0.8, rel=0.05)
    # whisker caps of dark ink at the two runs' values, 0.8 and 0.6
    quarter = (3 * (centre - 10) + centre + 10) // 4
    bottom = np.flatnonzero(_is_bar(spread[:, quarter])).max()
    per_unit = bars[1][1] / 0.8
    for value in (0.8, 0.6):
        row = int(round(bottom - value * per_unit))
        rows = spread[row - 2:row + 3, centre + 5].astype(int).sum(axis=1)
        assert (rows < 200).any(), value
