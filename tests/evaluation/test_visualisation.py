"""evaluation/visualisation.py: overlays, episode IoU, episode pictures and their HTML index, the
per-class IoU chart."""
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.container import BarContainer, ErrorbarContainer

from evaluation.protocol import EvaluatedBatch
from evaluation.visualisation import (ANNOTATION_COLOUR, PREDICTION_COLOUR, VisualisationWriter,
                                      class_iou_chart, class_iou_figure, episode_iou, mask_overlay,
                                      prediction_overlay)
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


def _is_ink(pixels):
    return pixels.astype(int).sum(axis=-1) < 200


def _bar_columns(chart):
    """(first column, column after the last) of each bar, found by its colour, left to right."""
    columns = _is_bar(chart).any(axis=0)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], columns.astype(int), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def _bars(chart):
    """(centre column, height in pixels) of each bar, left to right; the height is read a quarter
    of the way in, beside the whisker that runs down the centre."""
    return [((start + end) // 2, int(_is_bar(chart[:, (3 * start + end) // 4]).sum()))
            for start, end in _bar_columns(chart)]


def _ink_inside_bars(chart):
    """Dark pixels within the rectangles of the bars (their top and bottom read a quarter of the way in)."""
    count = 0
    for start, end in _bar_columns(chart):
        rows = np.flatnonzero(_is_bar(chart[:, (3 * start + end) // 4]))
        count += int(_is_ink(chart[rows.min():rows.max() + 1, start:end]).sum())
    return count


def _bar_heights(figure):
    (bars,) = [container for container in figure.axes[0].containers if isinstance(container, BarContainer)]
    return [patch.get_height() for patch in bars]


def _dots(figure):
    return [collection for collection in figure.axes[0].collections if isinstance(collection, PathCollection)]


def _whiskers(figure):
    return [container for container in figure.axes[0].containers if isinstance(container, ErrorbarContainer)]


def test_chart_figure_has_a_bar_per_class_at_its_iou_with_its_value_and_the_miou_line():
    figure = class_iou_figure([3, 7, 12], [[0.2, 0.8, 0.05]], "one run", "seed 123")
    axes = figure.axes[0]
    assert _bar_heights(figure) == pytest.approx([0.2, 0.8, 0.05])
    assert axes.get_ylim() == (0, 1)
    assert [label.get_text() for label in axes.get_xticklabels()] == ["3", "7", "12"]
    assert [text.get_text() for text in axes.texts] == ["0.20", "0.80", "0.05"]
    assert [text.get_text() for text in figure.texts] == ["one run", "seed 123"]
    (miou,) = [line for line in axes.get_lines() if line.get_label().startswith("mIoU")]
    assert miou.get_ydata() == pytest.approx([0.35, 0.35])
    assert axes.get_legend().get_texts()[0].get_text() == "mIoU 0.350 (mean of the bars)"
    assert _dots(figure) == [] and _whiskers(figure) == []  # one run: no spread to show


def test_chart_figure_shows_each_run_as_a_dot_and_the_spread_as_a_whisker():
    figure = class_iou_figure([1, 2, 3], [[0.2, 0.8, 0.05], [0.4, 0.6, 0.05]], "two runs")
    axes = figure.axes[0]
    assert _bar_heights(figure) == pytest.approx([0.3, 0.7, 0.05])
    (dots,) = _dots(figure)
    assert np.allclose(sorted(map(tuple, dots.get_offsets().tolist())),
                       [(0, 0.2), (0, 0.4), (1, 0.6), (1, 0.8), (2, 0.05), (2, 0.05)])
    (whiskers,) = _whiskers(figure)
    segments = [sorted(segment[:, 1]) for segment in whiskers.lines[2][0].get_segments()]
    assert segments == [pytest.approx([0.2, 0.4]), pytest.approx([0.6, 0.8]), pytest.approx([0.05, 0.05])]
    # each value label sits on the higher of the bar and its whisker
    assert [text.xy[1] for text in axes.texts] == pytest.approx([0.4, 0.8, 0.05])
    assert figure.texts[1].get_text() == "bars: mean of 2 runs; dots: each run; whiskers: lowest to highest"


def test_rendered_chart_is_rgb_with_bar_heights_proportional_to_the_iou_and_ink_only_for_several_runs():
    one = class_iou_chart([1, 2, 3], [[0.2, 0.8, 0.05]], "one run")
    assert one.ndim == 3 and one.shape[2] == 3 and one.dtype == np.uint8
    bars = _bars(one)
    assert len(bars) == 3 and bars[0][0] < bars[1][0] < bars[2][0]
    assert bars[1][1] == pytest.approx(4 * bars[0][1], rel=0.05)
    assert bars[0][1] == pytest.approx(4 * bars[2][1], rel=0.1)
    spread = class_iou_chart([1, 2, 3], [[0.2, 0.8, 0.05], [0.4, 0.6, 0.05]], "two runs")
    (_, low), (centre, middle), _ = _bars(spread)
    assert middle == pytest.approx(bars[1][1] * 0.7 / 0.8, rel=0.05)  # the mean of 0.8 and 0.6
    assert low == pytest.approx(bars[1][1] * 0.3 / 0.8, rel=0.05)
    # Inside the bars only the runs' dots and whiskers are dark.
    assert _ink_inside_bars(one) == 0 and _ink_inside_bars(spread) > 0
    # whisker caps of dark ink beside the centre, at the two runs' values 0.8 and 0.6
    bottom = np.flatnonzero(_is_bar(spread[:, centre - 8])).max()
    per_unit = bars[1][1] / 0.8
    for value in (0.8, 0.6):
        row = int(round(bottom - value * per_unit))
        assert _is_ink(spread[row - 2:row + 3, centre + 4]).any(), value


def test_chart_draws_no_bar_for_a_class_of_iou_0_or_nan_and_still_labels_it():
    runs = [[0.5, 0.0, float("nan")]]
    chart = class_iou_chart([1, 2, 3], runs, "zero and nan")
    assert chart.dtype == np.uint8 and len(_bars(chart)) == 1
    figure = class_iou_figure([1, 2, 3], runs, "zero and nan")
    assert [text.get_text() for text in figure.axes[0].texts] == ["0.50", "0.00", "nan"]
    assert figure.axes[0].get_legend().get_texts()[0].get_text() == "mIoU nan (mean of the bars)"
    # a NaN in one run leaves the other run's dot
    figure = class_iou_figure([1, 2], [[0.5, float("nan")], [0.5, 0.25]], "one nan of two")
    (dots,) = _dots(figure)
    offsets = np.asarray(dots.get_offsets())
    second = offsets[offsets[:, 0] == 1, 1]
    assert np.isnan(second).sum() == 1 and np.nanmax(second) == pytest.approx(0.25)


def test_chart_widens_for_a_long_title_and_reads_it_as_plain_text():
    title = "per-class IoU: exp/run_$\\frac$/" + "pascal/split0/resnet50/" * 4
    figure = class_iou_figure([1, 2], [[0.5, 0.5]], title, "seed $\\x$")
    canvas = FigureCanvasAgg(figure)
    canvas.draw()  # a title read as a formula would fail here: \frac without its arguments
    assert figure.bbox.width > 480 and figure.texts[0].get_window_extent().x1 <= figure.bbox.width
    assert class_iou_chart([1, 2], [[0.5, 0.5]], title).shape[1] == figure.bbox.width


def test_the_chart_leaves_pyplot_and_its_backend_alone():
    code = ("import sys; from evaluation.visualisation import class_iou_chart; "
            "class_iou_chart([1, 2], [[0.5, 0.25], [0.4, 0.2]], 'chart'); print('matplotlib.pyplot' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert result.stdout.strip() == "False"
