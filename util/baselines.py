"""Training-free few-shot predictors on the frozen backbone: reference rows for the toy demo
(``test_sccan.py --prior-baseline``) and the feature probe (``python -m tools.probe_features``)."""
from __future__ import annotations

from typing import Union

import torch
import torch.nn as nn
import torch.nn.functional as F

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
