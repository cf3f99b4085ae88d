"""The predictors test_sccan.py can evaluate besides a trained SCCAN, in one place: the
training-free matcher on the frozen backbone (``--prior-baseline``, ``python -m benchmarks.probe_features``), the
all-foreground baseline and the previous-support diagnostic; and :func:`build_predictor`, which
picks one from the command line's choice."""
from __future__ import annotations

import os
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from experiment.build import build_experiment_model, snapshot_dir
from model.checkpoint import load_model_weights
from model.sccan import masked_average_pooling, min_max_normalise, prior_mask, resize

LEVELS = ("layer1", "layer2", "layer3", "layer4")


class FeatureMatching(nn.Module):
    """Foreground where the min-max scaled similarity to the support exceeds ``threshold``.

    Args:
        backbone: the frozen backbone (returns the four level features).
        level: 0..3 matches the support's masked-average prototype on that backbone level by
            cosine similarity; ``"prior"`` uses SCCAN's own training-free prior mask (layer4,
            `model.sccan.prior_mask`). K supports are averaged like the model does.
        threshold: on the [0, 1] map.
    """

    def __init__(self, backbone: nn.Module, level: Union[int, str] = "prior", threshold: float = 0.7):
        super().__init__()
        if level != "prior" and level not in range(len(LEVELS)):
            raise ValueError(f"level must be 0..3 or 'prior', got {level!r}")
        self.backbone = backbone
        self.level = level
        self.threshold = threshold

    def forward(self, x: torch.Tensor, s_x: torch.Tensor, s_y: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W), s_x: (B, K, 3, H, W), s_y: (B, K, H, W) -> logits (B, 2, H, W)."""
        query = self.backbone(x)
        maps = []
        for shot in range(s_x.shape[1]):
            support = self.backbone(s_x[:, shot])
            mask = (s_y[:, shot] == 1).float().unsqueeze(1)  # (B, 1, H, W)
            if self.level == "prior":
                maps.append(prior_mask(query[3], support[3], resize(mask, support[3].shape[-2:]),
                                       query[3].shape[-2:]))  # (B, 1, h4, w4)
            else:
                features = support[self.level]
                prototype = masked_average_pooling(features, resize(mask, features.shape[-2:]))  # (B, C, 1, 1)
                similarity = F.cosine_similarity(query[self.level], prototype, dim=1)  # (B, h, w)
                maps.append(min_max_normalise(similarity.unsqueeze(1)))  # (B, 1, h, w)
        score = resize(torch.stack(maps).mean(0), x.shape[-2:])  # (B, 1, H, W)
        return torch.cat([torch.full_like(score, self.threshold), score], dim=1)  # (B, 2, H, W)


class AllForeground(nn.Module):
    """Baseline predictor: every pixel foreground."""

    def forward(self, x: torch.Tensor, s_x=None, s_y=None) -> torch.Tensor:
        """x: (B, 3, H, W) -> logits (B, 2, H, W) that favour foreground everywhere."""
        logits = torch.zeros(x.shape[0], 2, *x.shape[-2:], device=x.device)
        logits[:, 1] = 1.0
        return logits


class PreviousSupport(nn.Module):
    """Diagnostic wrapper: segments each query with the supports of the previous episode (the
    first episode keeps its own). With 5 test classes the previous class is the same ~20% of the
    time, so the drop it shows is a lower bound of the model's use of its support."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.previous = None

    def forward(self, x: torch.Tensor, s_x: torch.Tensor, s_y: torch.Tensor) -> torch.Tensor:
        """Same shapes as the wrapped model's eval forward."""
        supports, self.previous = (self.previous or (s_x, s_y)), (s_x, s_y)
        return self.model(x=x, s_x=supports[0], s_y=supports[1])


class EnsembleAndMeta(nn.Module):
    """Scores SCCAN with a base learner twice on the same episodes, from one forward: the
    ensemble's final output (the headline) and the meta learner alone (as BAM's test reports
    both)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, s_x: torch.Tensor, s_y: torch.Tensor) -> dict:
        """Same inputs as SCCAN -> {'ensemble': final (B, 2, h, w), 'meta': logits (B, 2, h, w)}."""
        outputs = self.model.ensemble_outputs(x, s_x, s_y)
        return {"ensemble": outputs.final, "meta": outputs.meta}


def _with_meta_scores(model: nn.Module) -> nn.Module:
    return EnsembleAndMeta(model) if getattr(model, "learner_base", None) is not None else model


# test_sccan.py's alternatives to the trained model: --<name>, with this help.
PREDICTOR_CHOICES = {
    "untrained": "skip loading weights (baseline: the untrained model)",
    "all-foreground": "baseline: predict every pixel as foreground",
    "prior-baseline": "training-free baseline: SCCAN's prior mask (layer4 query/support matching of the "
                      "frozen backbone, no learned weights) thresholded at 0.7",
    "previous-support": "diagnostic: give the model the supports of the PREVIOUS episode (usually another "
                        "class); a model that uses its support scores lower",
}


def add_predictor_arguments(parser) -> None:
    """test_sccan.py's mutually exclusive --<choice> flags; ``arguments.predictor`` defaults to
    'trained'."""
    group = parser.add_mutually_exclusive_group()
    for name, help_text in PREDICTOR_CHOICES.items():
        group.add_argument(f"--{name}", dest="predictor", action="store_const", const=name, help=help_text)
    parser.set_defaults(predictor="trained")


def build_predictor(cfg, choice: str, device: torch.device, weight: Optional[str] = None,
                    log=print) -> Tuple[nn.Module, str]:
    """``(predictor, description)`` for 'trained' or one of :data:`PREDICTOR_CHOICES`. The trained choices
    load ``weight`` (default: the config's ``weight`` in the run's snapshot folder). A model with a
    base learner (``base_learner: True``) is scored as its ensemble and its meta learner alone."""
    if choice == "all-foreground":
        return AllForeground(), "all-foreground baseline"
    if choice in ("untrained", "prior-baseline"):
        model = build_experiment_model(cfg, device)
        if choice == "untrained":
            return _with_meta_scores(model), "untrained model"
        return FeatureMatching(model.backbone, "prior", threshold=0.7), "training-free prior baseline"
    if weight and os.path.isdir(weight):
        raise FileNotFoundError(f"--weight {weight!r} is a folder, not a checkpoint file (e.g. "
                                f"<folder>/snapshot/train_epoch_<e>_<mIoU>.pth)")
    if weight and not os.path.isfile(weight):
        raise FileNotFoundError(f"--weight {weight!r}: no such checkpoint file")
    if not weight and not cfg.weight:
        raise FileNotFoundError("no checkpoint to test: the config's 'weight' key is empty (the "
                                "_bam configs have no released checkpoint); pass --weight PATH")
    weight = weight or os.path.join(snapshot_dir(cfg), cfg.weight)
    if not os.path.isfile(weight):
        raise FileNotFoundError(
            f"weights not found: {weight!r} (the config's 'weight' key, looked up in "
            f"{snapshot_dir(cfg)}/). Put the released checkpoint '{cfg.weight}' there, or pass "
            f"--weight PATH (README, 'Quick start')")
    # A full SCCAN checkpoint holds the backbone too: the ImageNet files in initmodel/ are not read.
    model = build_experiment_model(cfg, device, backbone_from_checkpoint=True)
    # Read on the CPU: only the weights are needed, copied onto the model's device by
    # load_state_dict; a training checkpoint's optimizer and RNG states would otherwise fill
    # GPU memory for nothing.
    checkpoint = load_model_weights(model, weight, map_location="cpu")
    epoch = checkpoint.get("epoch") if checkpoint else None
    log(f"loaded {weight}" + (f" (epoch {epoch})" if epoch is not None else ""))
    if choice == "previous-support":
        return PreviousSupport(_with_meta_scores(model)), weight + " with the previous episode's supports"
    return _with_meta_scores(model), weight
