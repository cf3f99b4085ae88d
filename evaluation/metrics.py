"""Few-shot segmentation metrics (the original's util/util.py ``intersectionAndUnionGPU`` and
the sums of its test.py; docs/PROTOCOL.md section 1).

The protocol that produced the paper's numbers accumulates, over all test episodes:

* intersection and union per class {0 = background, 1 = foreground}: FB-IoU is the mean over
  the two classes of I / (U + 1e-10); pIoU is the foreground I / (U + 1e-10);
* for every test class of the fold, the foreground intersection and union summed over that
  class's episodes: class IoU = I / (U + 1e-10), and the headline mIoU is the mean over ALL of
  the fold's test classes (a class with no episode counts as 0, as in the original).

Pixels whose target is the ignore label (255) count for nothing. The original accumulated the
sums in float32 numpy arrays; here they are float64, which holds pixel counts exactly (the
difference is far below the 4 decimals that are reported).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from model.constants import IGNORE_LABEL

__all__ = [
    "EPSILON",
    "FewShotMeter",
    "intersection_and_union",
    "pad_to_square",
]

# Added to every IoU denominator, exactly as the original evaluation does.
EPSILON = 1e-10


def intersection_and_union(
    prediction: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: int = IGNORE_LABEL,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class pixel areas of intersection, union and target (BAM's intersectionAndUnionGPU).

    ``prediction`` and ``target`` are integer label maps of the same shape (any number of
    dimensions; a batch is pooled). Pixels where ``target == ignore_index`` are excluded from
    every count. Class ids outside ``0..num_classes-1`` are not counted, as with the original
    ``torch.histc(..., bins=K, min=0, max=K-1)``. Returns three float64 tensors of shape
    ``(num_classes,)`` on the inputs' device. The inputs are not modified (the original wrote
    the ignore label into the prediction in place).
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}"
        )
    prediction = prediction.reshape(-1)
    target = target.reshape(-1)
    # Ignored pixels take the ignore value in the prediction too, so they fall out of the
    # histogram range and out of the intersection.
    prediction = torch.where(target == ignore_index, torch.full_like(prediction, ignore_index),
                             prediction)
    intersection = prediction[prediction == target]

    # histc needs floating point input on the CPU; float64 keeps the counts exact.
    def histogram(values: torch.Tensor) -> torch.Tensor:
        return torch.histc(values.double(), bins=num_classes, min=0, max=num_classes - 1)

    area_intersection = histogram(intersection)
    area_prediction = histogram(prediction)
    area_target = histogram(target)
    area_union = area_prediction + area_target - area_intersection
    return area_intersection, area_union, area_target


def pad_to_square(raw_label: torch.Tensor, ignore_label: int = 255) -> torch.Tensor:
    """The ``ori_resize`` evaluation target: the raw label padded to a square.

    ``raw_label`` (B, H, W) (or (H, W)) is placed top-left on a (B, S, S) canvas filled with
    ``ignore_label``, S = max(H, W); the padding therefore sits at the bottom/right and is
    ignored by the metrics. Returns a long tensor on the label's device. (The original filled
    only batch element 0; with its batch size of 1 that is the same thing.)
    """
    squeeze = raw_label.dim() == 2
    if squeeze:
        raw_label = raw_label.unsqueeze(0)
    if raw_label.dim() != 3:
        raise ValueError(f"expected a (B, H, W) label, got shape {tuple(raw_label.shape)}")
    batch, height, width = raw_label.shape
    side = max(height, width)
    canvas = torch.full((batch, side, side), ignore_label, dtype=torch.long,
                        device=raw_label.device)
    canvas[:, :height, :width] = raw_label.long()
    return canvas[0] if squeeze else canvas


class FewShotMeter:
    """Accumulates the few-shot metrics of docs/PROTOCOL.md section 1 over episodes.

    ``num_test_classes`` is the number of test classes of the fold (5 on PASCAL-5i, 20 on
    COCO-20i); ``class_index`` in ``update`` is the episode's ``subcls``, the index of its
    class in the fold's test list. All sums are float64.
    """

    def __init__(self, num_test_classes: int, num_classes: int = 2, ignore_index: int = IGNORE_LABEL):
        if num_test_classes < 1:
            raise ValueError("num_test_classes must be positive")
        if num_classes != 2:
            # Foreground is class 1 of a binary episode; other layouts have no meaning here.
            raise ValueError("few-shot episodes are binary: num_classes must be 2")
        self.num_test_classes = int(num_test_classes)
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.reset()

    def reset(self) -> None:
        """Forget every accumulated episode."""
        self.intersection = np.zeros(self.num_classes, dtype=np.float64)
        self.union = np.zeros(self.num_classes, dtype=np.float64)
        self.target = np.zeros(self.num_classes, dtype=np.float64)
        self.class_intersection = np.zeros(self.num_test_classes, dtype=np.float64)
        self.class_union = np.zeros(self.num_test_classes, dtype=np.float64)
        self.class_episodes = np.zeros(self.num_test_classes, dtype=np.float64)

    # --------------------------------------------------------------------------- accumulate
    def update(
        self,
        prediction: torch.Tensor,
        target: torch.Tensor,
        class_index: int | Sequence[int] | torch.Tensor,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Add a batch of episodes.

        ``prediction`` and ``target`` are (B, h, w) integer maps (the argmax and the label,
        255 = ignore). ``class_index`` is one int for the whole batch (the original test loop,
        batch 1) or one index per sample. Returns the batch's (intersection, union, target)
        per class {0,1}, for logging.
        """
        if prediction.dim() == 2:
            prediction, target = prediction.unsqueeze(0), target.unsqueeze(0)
        if torch.is_tensor(class_index):
            class_index = class_index.reshape(-1).tolist()
        if isinstance(class_index, (int, np.integer)):
            indices = [int(class_index)] * prediction.shape[0]
        else:
            indices = [int(index) for index in class_index]
            if len(indices) == 1:
                indices = indices * prediction.shape[0]
            if len(indices) != prediction.shape[0]:
                raise ValueError(
                    f"{len(indices)} class indices for a batch of {prediction.shape[0]}"
                )
        for index in indices:
            if not 0 <= index < self.num_test_classes:
                raise IndexError(f"class index {index} outside 0..{self.num_test_classes - 1}")

        batch_intersection = np.zeros(self.num_classes)
        batch_union = np.zeros(self.num_classes)
        batch_target = np.zeros(self.num_classes)
        # Per sample, so that each episode's foreground goes to its own class.
        for sample, index in enumerate(indices):
            intersection, union, area_target = (
                area.cpu().numpy()
                for area in intersection_and_union(
                    prediction[sample], target[sample], self.num_classes, self.ignore_index
                )
            )
            batch_intersection += intersection
            batch_union += union
            batch_target += area_target
            self.class_intersection[index] += intersection[1]
            self.class_union[index] += union[1]
            self.class_episodes[index] += 1
        self.intersection += batch_intersection
        self.union += batch_union
        self.target += batch_target
        return batch_intersection, batch_union, batch_target

    # ------------------------------------------------------------------- several processes
    SUM_FIELDS = ("intersection", "union", "target", "class_intersection", "class_union",
                  "class_episodes")

    def sums(self) -> dict:
        """The accumulated sums (copies), to be added into another meter with :meth:`add_sums`."""
        return {name: getattr(self, name).copy() for name in self.SUM_FIELDS}

    def add_sums(self, sums: dict) -> None:
        """Add another meter's :meth:`sums` (e.g. another DDP rank's share of the episodes). The
        sums are pixel and episode counts, exact in float64, so the order of the additions
        changes nothing: shares summed here give the numbers of one meter fed every episode."""
        arrays = {name: np.asarray(sums[name], dtype=np.float64) for name in self.SUM_FIELDS}
        for name, values in arrays.items():  # all checked before any is added: no half-added meter
            if values.shape != getattr(self, name).shape:
                raise ValueError(f"{name}: shape {values.shape} does not match this meter's "
                                 f"{getattr(self, name).shape}")
        for name, values in arrays.items():
            getattr(self, name).__iadd__(values)

    # ------------------------------------------------------------------------------ results
    @property
    def episodes(self) -> int:
        """Number of episodes accumulated so far."""
        return int(self.class_episodes.sum())

    def summary(self) -> dict:
        """The metrics as Python floats.

        ``mIoU``: mean class IoU over all of the fold's test classes; ``FB_IoU``: mean of the
        background and foreground IoU; ``pIoU``: foreground IoU over all pixels; ``class_IoU``:
        list of per-class IoU; ``accuracy``: pixel accuracy (sum I / sum target, as BAM's
        allAcc); ``episodes``: count.
        """
        iou_per_class = self.intersection / (self.union + EPSILON)
        class_iou = self.class_intersection / (self.class_union + EPSILON)
        return {
            "mIoU": float(np.mean(class_iou)),
            "FB_IoU": float(np.mean(iou_per_class)),
            "pIoU": float(iou_per_class[1]),
            "class_IoU": [float(value) for value in class_iou],
            "accuracy": float(self.intersection.sum() / (self.target.sum() + EPSILON)),
            "episodes": self.episodes,
        }
