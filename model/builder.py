"""Config -> model, optimizers and learning-rate schedule (as set up in the original's train.py,
with util/util.py ``poly_learning_rate``)."""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn as nn

from model.backbone import Backbone, build_backbone
from model.sccan import SCCAN
from util.config_schema import config_value

# SGD parameter groups in the original order: poly_learning_rate's index_split refers to it.
SGD_GROUP_MODULES = ("down_query", "down_supp", "init_merge_query", "init_merge_supp",
                     "ASPP_meta", "res1_meta", "res2_meta", "cls_meta")


def build_model(cfg, backbone_from_checkpoint: bool = False) -> SCCAN:
    """Map a config namespace (``layers, shot, zoom_factor, backbone_weights,
    pretrained_backbone, random_backbone_residual_gain, feature_size, window_size,
    feature_dropout``) to an :class:`SCCAN`. A key the namespace (a Config, dict or object)
    lacks takes its default from util/config_schema.py.

    ``backbone_from_checkpoint``: the caller loads a full SCCAN checkpoint next (it holds the
    backbone too, and strict loading replaces every tensor), so the ImageNet backbone file is
    neither needed nor read."""
    def value(key):
        return config_value(cfg, key)

    layers = int(value("layers"))
    weights = value("backbone_weights") or f"initmodel/resnet{layers}_v2.pth"
    if backbone_from_checkpoint:
        backbone = Backbone(layers)
    else:
        backbone = build_backbone(
            layers, weights, pretrained=bool(value("pretrained_backbone")),
            random_residual_gain=float(value("random_backbone_residual_gain")))
    return SCCAN(backbone, shot=int(value("shot")), zoom_factor=int(value("zoom_factor")),
                 feature_size=int(value("feature_size")), window_size=int(value("window_size")),
                 feature_dropout=float(value("feature_dropout")))


def build_optimizers(model: SCCAN, base_lr: float, momentum: float = 0.9,
                     weight_decay: float = 1e-4, transformer_lr: float = 6e-5
                     ) -> Tuple[torch.optim.SGD, torch.optim.AdamW]:
    """SGD over the 8 meta-learner groups (in the original order) and AdamW over every
    trainable parameter whose name contains ``transformer``."""
    model = getattr(model, "module", model)
    groups = [{"params": list(getattr(model, name).parameters())} for name in SGD_GROUP_MODULES]
    sgd = torch.optim.SGD(groups, lr=base_lr, momentum=momentum, weight_decay=weight_decay)
    transformer_params = [p for n, p in model.named_parameters()
                          if "transformer" in n and p.requires_grad]
    adamw = torch.optim.AdamW([{"params": transformer_params}], lr=transformer_lr)
    return sgd, adamw


def poly_learning_rate(optimizer: torch.optim.Optimizer, base_lr: float, current_iteration: int,
                       max_iteration: int, power: float = 0.9, index_split: int = -1,
                       scale_lr: float = 10.0, warmup: bool = False, warmup_step: int = 500) -> float:
    """Set the poly learning rate on every group; groups with index > index_split get
    ``lr * scale_lr`` (with the shipped index_split = -1, all of them). Returns the base lr."""
    if warmup and current_iteration < warmup_step:
        lr = base_lr * (0.1 + 0.9 * (current_iteration / warmup_step))
    else:
        lr = base_lr * (1 - float(current_iteration) / max_iteration) ** power
    for index, group in enumerate(optimizer.param_groups):
        group["lr"] = lr if index <= index_split else lr * scale_lr
    return lr


def count_parameters(model: nn.Module) -> Tuple[int, int]:
    """(total, learnable) parameter counts; frozen-BN buffers are not parameters."""
    total = sum(p.numel() for p in model.parameters())
    learnable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, learnable
