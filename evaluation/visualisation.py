"""Pictures, drawn in one place for every part of the project that shows results:

* the predictor's overlay (tools/predict.py): the query with its predicted mask, the supports
  with theirs (:func:`prediction_overlay`);
* the evaluation's episode panels and their HTML index (``test_sccan.py --save-vis DIR``):
  query with the prediction, query with the ground truth, the supports, named by episode, class
  and IoU (:func:`episode_panel`, :class:`VisualisationWriter`, :func:`write_episode_index`);
* the per-class IoU bar chart written beside test_sccan.py's JSON (:func:`class_iou_chart`).

Everything is drawn on RGB uint8 arrays (H, W, 3) and written as PNG atomically: the pictures
with OpenCV, the chart with matplotlib (a Figure of its own and the Agg renderer, never pyplot, so
that a caller's matplotlib backend and open figures are left alone).
Masks follow the episode labels: 1 foreground, 0 background, 255 ignored.
"""
from __future__ import annotations

import html
import math
import os
import statistics
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties

from evaluation.metrics import EPSILON, intersection_and_union
from model.constants import IGNORE_LABEL
from util.io import atomic_write_bytes, atomic_write_text
from util.transform import IMAGE_MEAN, IMAGE_STD

__all__ = ["PREDICTION_COLOUR", "ANNOTATION_COLOUR", "VisualisationWriter", "class_iou_chart",
           "class_iou_figure", "denormalise", "episode_iou", "episode_panel", "mask_overlay", "prediction_overlay",
           "write_episode_index", "write_png"]

# RGB. Orange-red for what the model predicts, blue for what a person annotated (ground truth
# and support masks): told apart with either kind of red-green colour blindness.
PREDICTION_COLOUR = (255, 80, 30)
ANNOTATION_COLOUR = (30, 130, 255)
IGNORE_COLOUR = (255, 255, 255)
PAPER = (255, 255, 255)
INK = (25, 25, 25)
FAINT_INK = (120, 120, 120)
FONT = cv2.FONT_HERSHEY_SIMPLEX
GAP = 8
MEAN = np.array(IMAGE_MEAN)
STD = np.array(IMAGE_STD)
# Episode panels are shown at least this tall (toy inputs are ~100 px) and at most this tall.
PANEL_HEIGHT_RANGE = (200, 360)
INDEX_NAME = "index.html"


# ---------------------------------------------------------------------------------- basics
def denormalise(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) network input (normalised RGB) -> (H, W, 3) uint8 RGB."""
    array = image.detach().float().cpu().numpy().transpose(1, 2, 0) * STD + MEAN
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def write_png(path: str, image_rgb: np.ndarray) -> None:
    """Write an RGB (H, W, 3) or grey (H, W) uint8 image as PNG, atomically."""
    array = image_rgb[:, :, ::-1] if image_rgb.ndim == 3 else image_rgb
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    atomic_write_bytes(path, encoded.tobytes())


def mask_overlay(image: np.ndarray, mask: np.ndarray, colour: Tuple[int, int, int],
                 alpha: float = 0.45) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with the foreground (``mask == 1``) tinted in ``colour``, its
    outline drawn in that colour, and ignored pixels (255) washed out. Returns a new array."""
    out = image.astype(np.float32)
    foreground = mask == 1
    out[foreground] = (1 - alpha) * out[foreground] + alpha * np.array(colour, np.float32)
    ignored = mask == IGNORE_LABEL
    out[ignored] = 0.6 * out[ignored] + 0.4 * np.array(IGNORE_COLOUR, np.float32)
    out = out.astype(np.uint8)
    contours, _ = cv2.findContours(foreground.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(min(image.shape[:2]) / 150))
    cv2.drawContours(out, contours, -1, colour, thickness)
    return out


def _resize(image: np.ndarray, height: int, width: int, nearest: bool = False) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    shrinking = height * width < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return cv2.resize(image, (width, height), interpolation=interpolation)


def _scaled_pair(image: np.ndarray, mask: np.ndarray, height: int) -> Tuple[np.ndarray, np.ndarray]:
    """Image (smooth) and mask (nearest) resized to ``height``, aspect kept: masks are drawn
    at display size so that outlines stay sharp."""
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    return _resize(image, height, width), _resize(mask, height, width, nearest=True)


def _font_scale(height: int) -> float:
    """Text size for pictures ``height`` pixels tall: one size for every panel of a picture,
    and for every picture of a run, whatever their widths."""
    return float(np.clip(height / 340, 0.45, 0.8))


def _text_height(scale: float) -> int:
    return cv2.getTextSize("Ag", FONT, scale, 1)[0][1] + cv2.getTextSize("Ag", FONT, scale, 1)[1]


def _put_text(canvas: np.ndarray, text: str, origin: Tuple[int, int], scale: float,
              colour=INK, thickness: int = 1) -> None:
    """Draw ``text``, shortened at its start with '...' where it would leave the canvas (long
    paths keep their informative end)."""
    room = canvas.shape[1] - origin[0] - 4
    while len(text) > 4 and cv2.getTextSize(text, FONT, scale, thickness)[0][0] > room:
        text = "..." + text[4:]
    cv2.putText(canvas, text, origin, FONT, scale, colour, thickness, lineType=cv2.LINE_AA)


def _captioned(panel: np.ndarray, caption: str, swatch: Tuple[int, int, int], scale: float) -> np.ndarray:
    """``panel`` under a white caption bar, the text after a square of ``swatch``, the colour
    of the mask in the panel."""
    line = _text_height(scale)
    needed = line + 12 + cv2.getTextSize(caption, FONT, scale, 1)[0][0]
    if needed > panel.shape[1]:  # a narrow (portrait) panel: widened so its caption fits
        panel = np.pad(panel, [(0, 0), (0, needed - panel.shape[1]), (0, 0)], constant_values=255)
    bar = np.full((line + 10, panel.shape[1], 3), PAPER, np.uint8)
    cv2.rectangle(bar, (2, 4), (2 + line, 4 + line), swatch, thickness=-1)
    _put_text(bar, caption, (line + 8, line + 2), scale)
    return np.concatenate([bar, panel], axis=0)


def _join(panels: Sequence[np.ndarray], axis: int, gap: int = GAP) -> np.ndarray:
    """Panels side by side (axis 1) or stacked (axis 0) on white, aligned top/left, ``gap``
    pixels apart."""
    other = 1 - axis
    extent = max(panel.shape[other] for panel in panels)
    pieces = []
    for index, panel in enumerate(panels):
        padding = [(0, 0), (0, 0), (0, 0)]
        padding[other] = (0, extent - panel.shape[other])
        pieces.append(np.pad(panel, padding, constant_values=255))
        if index < len(panels) - 1:
            shape = [0, 0, 3]
            shape[axis], shape[other] = gap, extent
            pieces.append(np.full(shape, 255, np.uint8))
    return np.concatenate(pieces, axis=axis)


def _titled(picture: np.ndarray, lines: Sequence[str], scale: float) -> np.ndarray:
    """A header of text lines above ``picture``, with a white margin all round; a picture
    narrower than its title is widened (white) to fit it."""
    line = _text_height(scale) + 8
    text_width = max(cv2.getTextSize(text, FONT, scale, 2)[0][0] for text in lines) + 8
    if text_width > picture.shape[1]:
        picture = np.pad(picture, [(0, 0), (0, text_width - picture.shape[1]), (0, 0)], constant_values=255)
    header = np.full((line * len(lines) + 6, picture.shape[1], 3), PAPER, np.uint8)
    for number, text in enumerate(lines):
        _put_text(header, text, (2, line * (number + 1) - 4), scale, INK if number == 0 else FAINT_INK,
                  thickness=2 if number == 0 else 1)
    framed = np.concatenate([header, picture], axis=0)
    return np.pad(framed, [(GAP, GAP), (GAP, GAP), (0, 0)], constant_values=255)


# ------------------------------------------------------------------------ predictor overlay
def prediction_overlay(query: np.ndarray, mask: np.ndarray, supports: Sequence[np.ndarray],
                       support_masks: Sequence[np.ndarray], title: str,
                       height_range: Tuple[int, int] = (320, 720)) -> np.ndarray:
    """The query (H, W, 3) uint8 RGB with its predicted ``mask`` (H, W; 1 = foreground) tinted
    and outlined, and beside it the support images with their masks (0/1/255) as thumbnails
    (two rows at half the query's height). Returns the picture (RGB uint8)."""
    height = int(np.clip(query.shape[0], *height_range))
    query_panel = mask_overlay(*_scaled_pair(query, mask.astype(np.uint8), height), PREDICTION_COLOUR)
    scale = _font_scale(height) * 0.75  # one caption size for the query and its thumbnails
    panels = [_captioned(query_panel, "query: prediction", PREDICTION_COLOUR, scale)]
    thumbnail_height = (height - GAP) // 2
    thumbnails = [_captioned(mask_overlay(*_scaled_pair(image, support_mask, thumbnail_height),
                                          ANNOTATION_COLOUR), f"support {number}", ANNOTATION_COLOUR, scale)
                  for number, (image, support_mask) in enumerate(zip(supports, support_masks), start=1)]
    columns = [_join(thumbnails[index:index + 2], axis=0) for index in range(0, len(thumbnails), 2)]
    return _titled(_join(panels + columns, axis=1), [title], _font_scale(height))


# --------------------------------------------------------------------------- episode panels
def episode_iou(prediction: torch.Tensor, label: torch.Tensor, ignore_label: int = IGNORE_LABEL) -> float:
    """Foreground IoU of one episode: ``prediction`` and ``label`` (H, W) in the same frame,
    pixels labelled ``ignore_label`` left out (the protocol's per-pixel rule)."""
    intersection, union, _ = intersection_and_union(prediction.long(), label.long(), 2, ignore_label)
    return float(intersection[1] / (union[1] + EPSILON))


def _content_extent(image: np.ndarray, label: np.ndarray) -> Tuple[int, int]:
    """Height and width of the picture inside the validation canvas: test_Resize puts it
    top-left and pads with black (label 255) below and to the right."""
    inside = (image.max(axis=2) > 0) | (label != IGNORE_LABEL)
    rows, columns = np.nonzero(inside.any(axis=1))[0], np.nonzero(inside.any(axis=0))[0]
    return (int(rows[-1]) + 1 if rows.size else image.shape[0],
            int(columns[-1]) + 1 if columns.size else image.shape[1])


def _cropped(image: torch.Tensor, *masks: torch.Tensor) -> List[np.ndarray]:
    """A network input and its (H, W) masks as arrays, cropped to the picture's extent."""
    rgb = denormalise(image)
    arrays = [mask.detach().cpu().numpy().astype(np.uint8) for mask in masks]
    height, width = _content_extent(rgb, arrays[0])
    return [rgb[:height, :width]] + [array[:height, :width] for array in arrays]


def episode_panel(image: torch.Tensor, label: torch.Tensor, prediction: torch.Tensor,
                  support_images: torch.Tensor, support_labels: torch.Tensor,
                  title: str, subtitle: str = "") -> np.ndarray:
    """One evaluation episode in the network's input frame: the query with the prediction, the
    query with the ground truth, then the K supports with their masks, under ``title``.

    image (3, H, W) normalised; label, prediction (H, W); support_images (K, 3, H, W);
    support_labels (K, H, W). Returns the picture (RGB uint8)."""
    query, truth, predicted = _cropped(image, label, prediction)
    height = int(np.clip(query.shape[0], *PANEL_HEIGHT_RANGE))
    scaled_query, scaled_truth = _scaled_pair(query, truth, height)
    scaled_prediction = _resize(predicted, *scaled_query.shape[:2], nearest=True)
    scale = _font_scale(height)
    panels = [_captioned(mask_overlay(scaled_query, scaled_prediction, PREDICTION_COLOUR), "prediction",
                         PREDICTION_COLOUR, scale),
              _captioned(mask_overlay(scaled_query, scaled_truth, ANNOTATION_COLOUR), "ground truth",
                         ANNOTATION_COLOUR, scale)]
    # The supports stand in the stacked order of the dataset (the original's reversed shot order).
    for number, (support, support_label) in enumerate(zip(support_images, support_labels), start=1):
        picture, mask = _cropped(support, support_label)
        panels.append(_captioned(mask_overlay(*_scaled_pair(picture, mask, height), ANNOTATION_COLOUR),
                                 f"support {number}", ANNOTATION_COLOUR, scale))
    return _titled(_join(panels, axis=1), [title] + ([subtitle] if subtitle else []), scale * 1.1)


class VisualisationWriter:
    """Evaluation observer (evaluation/protocol.py): one PNG panel per episode in ``folder``, named
    ``episode_<n>_class<c>_iou<x.xxx>.png``, and :meth:`finish` writes ``index.html`` over them.

    ``class_ids``: the fold's test classes, to name each episode's class (the batches carry its
    index into them). The IoU is the episode's foreground IoU in the network's input frame."""

    def __init__(self, folder: str, class_ids: Optional[Sequence[int]] = None):
        self.folder = folder
        self.class_ids = list(class_ids) if class_ids is not None else None
        self.entries: List[dict] = []

    def start(self) -> None:
        os.makedirs(self.folder, exist_ok=True)
        self.entries = []

    def _class_id(self, batch, sample: int) -> Optional[int]:
        indices = getattr(batch, "class_indices", None)
        if indices is None or self.class_ids is None:
            return None
        return self.class_ids[int(torch.as_tensor(indices).reshape(-1)[sample])]

    def observe(self, batch) -> None:
        for sample in range(batch.image.shape[0]):
            episode = batch.first_episode + sample
            class_id = self._class_id(batch, sample)
            iou = episode_iou(batch.input_prediction[sample].cpu(), batch.label[sample].cpu())
            class_text = f"class {class_id}" if class_id is not None else "class ?"
            name = f"episode_{episode:05d}_class{class_id if class_id is not None else 'x'}_iou{iou:.3f}.png"
            panel = episode_panel(batch.image[sample], batch.label[sample], batch.input_prediction[sample],
                                  batch.support_images[sample], batch.support_labels[sample],
                                  f"episode {episode}, {class_text}, IoU {iou:.3f}")
            write_png(os.path.join(self.folder, name), panel)
            self.entries.append(dict(file=name, episode=episode, class_id=class_id, iou=iou))

    def finish(self, title: str = "SCCAN evaluation") -> str:
        """Write ``index.html`` for the episodes seen since :meth:`start`; returns its path."""
        return write_episode_index(self.folder, self.entries, title)


def write_episode_index(folder: str, entries: Sequence[dict], title: str) -> str:
    """``folder/index.html``: one static page with every episode picture as a thumbnail (a link
    to the full picture), worst IoU first, after a per-class summary. ``entries``: dicts with
    ``file`` (relative to ``folder``), ``episode``, ``class_id``, ``iou``."""
    ordered = sorted(entries, key=lambda entry: (entry["iou"], entry["episode"]))
    by_class = {}
    for entry in entries:
        by_class.setdefault(entry["class_id"], []).append(entry["iou"])
    rows = "\n".join(
        f"<tr><td>{html.escape(str(class_id))}</td><td>{len(values)}</td>"
        f"<td>{statistics.mean(values):.3f}</td><td>{min(values):.3f}</td></tr>"
        for class_id, values in sorted(by_class.items(), key=lambda item: str(item[0])))
    figures = "\n".join(
        f'<figure><a href="{html.escape(entry["file"])}"><img src="{html.escape(entry["file"])}" '
        f'loading="lazy" alt="episode {entry["episode"]}"></a><figcaption>IoU <b>{entry["iou"]:.3f}</b>'
        f' &middot; class {html.escape(str(entry["class_id"]))} &middot; episode {entry["episode"]}'
        f'</figcaption></figure>' for entry in ordered)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.3em; margin-bottom: 0.2em; }}
p {{ margin: 0.3em 0; max-width: 60em; }}
.key {{ display: inline-block; width: 0.9em; height: 0.9em; vertical-align: -0.1em; }}
table {{ border-collapse: collapse; margin: 0.8em 0 1.2em; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.7em; text-align: right; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }}
figure {{ margin: 0; border: 1px solid #ddd; padding: 4px; background: #fafafa; }}
figure img {{ height: 190px; width: auto; display: block; }}
figcaption {{ font-size: 0.9em; padding-top: 3px; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>{len(entries)} episodes, sorted by IoU, <b>worst first</b>. Each picture: the query with the
prediction (<span class="key" style="background:rgb{PREDICTION_COLOUR}"></span>), the query with
the ground truth and the supports with their masks
(<span class="key" style="background:rgb{ANNOTATION_COLOUR}"></span>); washed-out pixels are
ignored (label 255). IoU: the episode's foreground IoU in the network's input frame (the reported
class IoU pools the pixels of all episodes of a class instead). Click a picture for full size.</p>
<table><tr><th>class</th><th>episodes</th><th>mean episode IoU</th><th>worst</th></tr>
{rows}
</table>
<div class="grid">
{figures}
</div>
</body></html>
"""
    path = os.path.join(folder, INDEX_NAME)
    atomic_write_text(path, page)
    return path


# ------------------------------------------------------------------------- per-class chart
# The chart's layout in pixels at CHART_DPI: room above the plot for the title, subtitle and
# legend, below it for the class ids; at least CHART_SLOT pixels per class so that two-digit ids
# and their values stay legible with COCO's 20 classes per fold.
CHART_DPI = 100
CHART_LEFT, CHART_RIGHT, CHART_TOP, CHART_BOTTOM = 64, 24, 92, 56
CHART_PLOT_HEIGHT = 320
CHART_SLOT = 56
CHART_MIN_WIDTH = 480
TITLE_POINTS, SUBTITLE_POINTS, LABEL_POINTS = 12, 9, 8


def _unit(colour: Tuple[int, int, int]) -> Tuple[float, ...]:
    """An RGB colour of this module (0..255) as matplotlib takes it (0..1)."""
    return tuple(channel / 255 for channel in colour)


def _text_width(text: str, points: float, weight: str = "normal") -> float:
    """Width in pixels of ``text`` as the chart's renderer sets it at ``points``, as plain text."""
    width, _, _ = RendererAgg(1, 1, CHART_DPI).get_text_width_height_descent(
        text, FontProperties(size=points, weight=weight), ismath=False)
    return width


def _chart_size(class_count: int, title: str, subtitle: str) -> Tuple[int, int]:
    """(width, height) of the chart in pixels: a slot per class, widened to fit the title."""
    text_width = max(_text_width(title, TITLE_POINTS, "bold"), _text_width(subtitle, SUBTITLE_POINTS))
    width = max(CHART_LEFT + CHART_SLOT * class_count + CHART_RIGHT, math.ceil(text_width) + 24, CHART_MIN_WIDTH)
    return width, CHART_TOP + CHART_PLOT_HEIGHT + CHART_BOTTOM


def _draw_chart_frame(axes, class_ids: Sequence) -> None:
    """The IoU axis from 0 to 1 with its grid behind the bars, and the class ids below the bars."""
    axes.set_xlim(-0.5, len(class_ids) - 0.5)
    axes.set_ylim(0, 1)
    axes.set_xticks(range(len(class_ids)), [str(class_id) for class_id in class_ids])
    axes.set_yticks(np.linspace(0, 1, 6), [f"{tick:.1f}" for tick in np.linspace(0, 1, 6)])
    axes.tick_params(axis="y", colors=_unit(FAINT_INK), labelsize=SUBTITLE_POINTS)
    axes.tick_params(axis="x", length=0, labelsize=SUBTITLE_POINTS + 1)
    axes.grid(axis="y", color=_unit((225, 225, 225)), linewidth=1)
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    axes.set_ylabel("IoU", color=_unit(FAINT_INK), fontsize=SUBTITLE_POINTS)
    axes.set_xlabel("class", loc="left", color=_unit(FAINT_INK), fontsize=SUBTITLE_POINTS)


def _draw_class_bars(axes, values: np.ndarray, bar_width: float) -> None:
    """A bar per class at the mean of ``values`` (runs, classes), its value above it; with several
    runs a dot per run and a whisker from the lowest to the highest. A NaN IoU draws nothing
    (matplotlib skips it) and is labelled as such."""
    positions = np.arange(values.shape[1])
    means = values.mean(axis=0)
    axes.bar(positions, means, bar_width, color=_unit(ANNOTATION_COLOUR), zorder=2)
    tops = means
    if len(values) > 1:
        low, high = values.min(axis=0), values.max(axis=0)
        axes.errorbar(positions, means, yerr=(means - low, high - means), fmt="none", ecolor=_unit(INK),
                      elinewidth=1, capsize=4.5, zorder=3)
        axes.scatter(np.repeat(positions[None], len(values), axis=0), values, s=12, color=_unit(INK), zorder=4)
        tops = np.maximum(means, high)
    for position, mean, top in zip(positions, means, tops):
        # The label sits on the higher of the bar and its whisker, on paper so the grid stays behind.
        axes.annotate("nan" if np.isnan(mean) else f"{mean:.2f}", (position, 0 if np.isnan(top) else top),
                      xytext=(0, 4), textcoords="offset points", ha="center", va="bottom", fontsize=LABEL_POINTS,
                      color=_unit(INK), bbox={"facecolor": _unit(PAPER), "edgecolor": "none", "pad": 1},
                      zorder=5, annotation_clip=False)


def _draw_miou_line(axes, values: np.ndarray) -> None:
    """The mIoU (the mean of the bars) as a dashed line behind the bars, named in a legend above the plot."""
    miou = float(values.mean(axis=0).mean())
    line = axes.axhline(miou, color=_unit(PREDICTION_COLOUR), linewidth=2, linestyle=(0, (3, 3)), zorder=1,
                        label=f"mIoU {miou:.3f} (mean of the bars)")
    axes.legend(handles=[line], loc="lower right", bbox_to_anchor=(1, 1.02), frameon=False,
                fontsize=SUBTITLE_POINTS + 1, labelcolor=_unit(PREDICTION_COLOUR), borderaxespad=0)


def class_iou_figure(class_ids: Sequence, runs: Sequence[Sequence[float]], title: str,
                     subtitle: str = "") -> Figure:
    """The per-class IoU bar chart as a matplotlib Figure (not rendered; see
    :func:`class_iou_chart`): one bar per class at the mean over ``runs`` (each run: the IoU of
    every class, in ``class_ids`` order), its value on top, a dashed line at the mean of the bars
    (the mIoU); with several runs, each run as a dot and a whisker from the lowest to the highest.
    A Figure of its own, without pyplot, so that the caller's matplotlib backend is left alone."""
    values = np.asarray(runs, dtype=np.float64).reshape(len(runs), len(class_ids))  # (runs, classes)
    if not subtitle and len(values) > 1:
        subtitle = f"bars: mean of {len(values)} runs; dots: each run; whiskers: lowest to highest"
    width, height = _chart_size(len(class_ids), title, subtitle)
    figure = Figure(figsize=(width / CHART_DPI, height / CHART_DPI), dpi=CHART_DPI, facecolor=_unit(PAPER))
    plot_width = width - CHART_LEFT - CHART_RIGHT
    axes = figure.add_axes((CHART_LEFT / width, CHART_BOTTOM / height, plot_width / width, CHART_PLOT_HEIGHT / height))
    _draw_chart_frame(axes, class_ids)
    _draw_miou_line(axes, values)
    slot = plot_width / len(class_ids)
    _draw_class_bars(axes, values, min(slot - 16, 72) / slot)
    # Titles read as plain text: a '$' in a checkpoint's path is not the start of a formula.
    figure.text(12 / width, 1 - 28 / height, title, fontsize=TITLE_POINTS, fontweight="bold",
                color=_unit(INK), parse_math=False)
    if subtitle:
        figure.text(12 / width, 1 - 52 / height, subtitle, fontsize=SUBTITLE_POINTS, color=_unit(FAINT_INK),
                    parse_math=False)
    return figure


def class_iou_chart(class_ids: Sequence, runs: Sequence[Sequence[float]], title: str,
                    subtitle: str = "") -> np.ndarray:
    """:func:`class_iou_figure` rendered by matplotlib's Agg renderer: (H, W, 3) RGB uint8."""
    canvas = FigureCanvasAgg(class_iou_figure(class_ids, runs, title, subtitle))
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[:, :, :3])
