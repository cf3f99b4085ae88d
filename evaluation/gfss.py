"""BAM's generalised few-shot test (Lang et al., CVPR 2022, github.com/chunbolang/BAM:
test_GFSS.py and util/dataset.py): every validation image is a query in which the model must
segment the base classes (with its base learner) AND one novel class (with the meta learner and
its supports), so a model that calls base objects novel, or novel objects base, pays for it.

Pieces:

* the episode (:class:`util.gfss_dataset.GFSSData`): the queries are every image of the val list, in order; the
  chosen novel class is :func:`choose_gfss_class`; the target is :func:`gfss_target` (base class
  c -> base index + 1, the chosen class -> N_base + 1, other novel classes -> 0, 255 kept); the
  supports are drawn as the few-shot episodes draw them (util/dataset.py ``draw_supports``) from
  the val images that contain the class (no pixel threshold);
* the prediction (:func:`merge_gfss_prediction`): novel = softmax(final)_fg > merge_tau, base =
  argmax(base), merged by the rule ``merge`` ('final' or 'base');
* the metrics (:class:`GFSSMeter`): intersection/union per class over classes 0..N_base+1,
  accumulated over episodes with the novel slot credited to the episode's chosen class;
  mIoU_n over the novel classes, mIoU_b over the base classes, mIoU_t over all of them;
* :class:`GFSSScoring` and :class:`GFSSPredictor` plug these into evaluation/protocol.py's protocol.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from evaluation.metrics import EPSILON, intersection_and_union
from evaluation.protocol import EvaluationProtocol, run_seeds, summarise_runs
from experiment.build import build_gfss_dataset, build_val_loader
from model.constants import IGNORE_LABEL

__all__ = ["check_gfss_request", "run_generalised_test", "MERGE_RULES", "GFSSMeter", "GFSSPredictor", "GFSSScoring",
           "format_gfss_table", "merge_gfss_prediction"]

MERGE_RULES = ("final", "base")
SUMMARY_KEYS = ("mIoU_n", "mIoU_b", "mIoU_t")


# ----------------------------------------------------------------------------- prediction
def merge_gfss_prediction(final: torch.Tensor, base: torch.Tensor, merge: str = "final",
                          merge_tau: float = 0.9) -> torch.Tensor:
    """The generalised prediction (B, h, w) long from the ensemble's final output (B, 2, h, w)
    and the base logits (B, N+1, h, w) at the same size: novel pixels (softmax(final)_fg >
    merge_tau) take the id N+1, the others the base argmax. ``merge`` 'final': every novel pixel
    is novel; 'base': only where the base learner sees background."""
    if merge not in MERGE_RULES:
        raise ValueError(f"merge must be one of {MERGE_RULES}, got {merge!r}")
    novel = final.softmax(dim=1)[:, 1] > merge_tau  # (B, h, w)
    prediction = base.argmax(dim=1)  # (B, h, w)
    novel_id = base.shape[1]  # N + 1
    if merge == "base":
        novel = novel & (prediction == 0)
    return prediction.masked_fill(novel, novel_id)


class GFSSPredictor(nn.Module):
    """Gives the protocol the three outputs of an ensemble model (model/sccan.py
    ``ensemble_outputs``) instead of its final logits alone."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if getattr(model, "learner_base", None) is None:
            raise ValueError("the generalised few-shot test needs SCCAN with its base learner "
                             "(config key base_learner: True)")
        self.model = model

    def forward(self, x: torch.Tensor, s_x: torch.Tensor, s_y: torch.Tensor):
        """x (B, 3, H, W), s_x (B, K, 3, H, W), s_y (B, K, H, W) -> EnsembleOutputs (final
        (B, 2, h, w), meta (B, 2, h, w), base (B, N+1, h, w))."""
        return self.model.ensemble_outputs(x, s_x, s_y)


# -------------------------------------------------------------------------------- metrics
class GFSSMeter:
    """Per-class intersection and union of the generalised test, accumulated over episodes.

    Slots of a prediction/target: 0 background, i = base_classes[i-1], N+1 the episode's chosen
    novel class. Sums are kept per real class id (0..C), float64."""

    def __init__(self, base_classes: Sequence[int], novel_classes: Sequence[int],
                 ignore_index: int = IGNORE_LABEL):
        self.base_classes = list(base_classes)
        self.novel_classes = list(novel_classes)
        self.ignore_index = ignore_index
        self.num_classes = len(self.base_classes) + len(self.novel_classes)
        self.intersection = np.zeros(self.num_classes + 1, np.float64)
        self.union = np.zeros(self.num_classes + 1, np.float64)
        self.episodes = 0

    def update(self, prediction: torch.Tensor, target: torch.Tensor, chosen_class: int) -> None:
        """One episode: prediction and target (h, w) or (1, h, w) with slots 0..N+1 (255 ignored
        in the target); ``chosen_class`` the real id of the novel slot."""
        slots = len(self.base_classes) + 2
        intersection, union, _ = (area.cpu().numpy() for area in intersection_and_union(
            prediction, target, slots, self.ignore_index))
        class_ids = [0] + self.base_classes + [int(chosen_class)]
        np.add.at(self.intersection, class_ids, intersection)
        np.add.at(self.union, class_ids, union)
        self.episodes += 1

    def summary(self) -> dict:
        """mIoU_n (novel classes), mIoU_b (base classes), mIoU_t (all classes, background
        excluded), class_IoU (classes 1..C in id order), background_IoU, episodes."""
        iou = self.intersection / (self.union + EPSILON)
        return {
            "mIoU_n": float(np.mean(iou[self.novel_classes])),
            "mIoU_b": float(np.mean(iou[self.base_classes])),
            "mIoU_t": float(np.mean(iou[1:])),
            "class_IoU": [float(value) for value in iou[1:]],
            "background_IoU": float(iou[0]),
            "episodes": self.episodes,
        }


class GFSSScoring:
    """The protocol's scoring of a generalised episode (evaluation/protocol.py): upsample the final
    and base outputs to the target, merge, accumulate in a :class:`GFSSMeter`."""

    summary_keys = SUMMARY_KEYS

    def __init__(self, base_classes: Sequence[int], novel_classes: Sequence[int], merge: str = "final",
                 merge_tau: float = 0.9, ignore_index: int = IGNORE_LABEL):
        if merge not in MERGE_RULES:
            raise ValueError(f"merge must be one of {MERGE_RULES}, got {merge!r}")
        self.merge, self.merge_tau = merge, merge_tau
        self.novel_classes = list(novel_classes)
        self.meter = GFSSMeter(base_classes, novel_classes, ignore_index)

    def update(self, outputs, target: torch.Tensor, class_index: int) -> torch.Tensor:
        """outputs: EnsembleOutputs of one episode (batch 1); target (1, h, w) -> the merged
        prediction in the input frame (1, H, W), for observers."""
        if target.dim() == 3 and target.shape[0] != 1:
            raise ValueError("generalised episodes are scored one at a time (batch_size_val 1)")
        size = target.shape[-2:]
        final = F.interpolate(outputs.final.float(), size=size, mode="bilinear", align_corners=True)
        base = F.interpolate(outputs.base.float(), size=size, mode="bilinear", align_corners=True)
        self.meter.update(merge_gfss_prediction(final, base, self.merge, self.merge_tau), target,
                          self.novel_classes[int(class_index)])
        return merge_gfss_prediction(outputs.final, outputs.base, self.merge, self.merge_tau)

    def summary(self) -> dict:
        return self.meter.summary()


def format_gfss_table(result: dict, title: str = "") -> str:
    """Markdown table: per-class IoU (classes 1..C), then mIoU_n, mIoU_b, mIoU_t."""
    lines = [f"### {title}" if title else "", "| class | IoU |", "|---|---|"]
    lines += [f"| {class_id} | {iou:.4f} |" for class_id, iou in enumerate(result["class_IoU"], start=1)]
    lines += [f"| **{key}** | {result[key]:.4f} |" for key in SUMMARY_KEYS]
    lines += [f"| episodes | {result['episodes']} |"]
    return "\n".join(line for line in lines if line != "" or title)


def write_gfss_scalars(writer, run: dict, class_ids: Sequence[int], step: int) -> None:
    """TensorBoard scalars of one generalised run: mIoU_n, mIoU_b, mIoU_t."""
    for key in SUMMARY_KEYS:
        writer.add_scalar(f"test_gfss/{key}", run[key], step)


# The generalised test scores the model itself (its ensemble outputs), trained or not.
GFSS_PREDICTORS = ("trained", "untrained")


def check_gfss_request(cfg, predictor_choice: str, other_flags: Dict[str, object]) -> None:
    """One clear error for a --gfss request the test cannot serve."""
    unsupported = [flag for flag, value in other_flags.items() if value]
    if predictor_choice not in GFSS_PREDICTORS:
        unsupported.append(f"--{predictor_choice}")
    if unsupported:
        raise ValueError(f"--gfss does not combine with {', '.join(unsupported)}")
    if not cfg.base_learner:
        raise ValueError("--gfss needs SCCAN with its base learner: set base_learner: True in the "
                         "config or pass --opts base_learner True")


def run_generalised_test(cfg, predictor: nn.Module, device: torch.device, episodes: Optional[int],
                         number_of_seeds: int, title: str = "", writer=None) -> dict:
    """BAM's generalised few-shot test (test_GFSS.py): the few-shot test's protocol (seeds,
    passes, ori_resize target) on :class:`GFSSData`'s episodes with :class:`GFSSScoring`. Prints
    one table per seed; returns the summary (runs, mean/std over seeds, the class lists)."""
    dataset = build_gfss_dataset(cfg)
    loader = build_val_loader(cfg, dataset)
    protocol = EvaluationProtocol.from_config(cfg, len(dataset.novel_classes), episodes, number_of_seeds)
    predictor = GFSSPredictor(getattr(predictor, "model", predictor))  # unwrap EnsembleAndMeta
    runs = run_seeds(protocol, predictor, loader, device, dataset.novel_classes,
                     f"{title}, generalised, merge {cfg.merge} tau {cfg.merge_tau}", writer=writer,
                     new_scoring=lambda: GFSSScoring(dataset.base_classes, dataset.novel_classes, cfg.merge,
                                                     cfg.merge_tau, cfg.ignore_label),
                     table=lambda result, class_ids, label: format_gfss_table(result, title=label),
                     scalars=write_gfss_scalars)
    statistics, table = summarise_runs(runs, SUMMARY_KEYS)
    print(table, flush=True)
    return dict(test="gfss", merge=cfg.merge, merge_tau=cfg.merge_tau, base_classes=dataset.base_classes,
                novel_classes=dataset.novel_classes, test_num=protocol.test_num, runs=runs, **statistics)
