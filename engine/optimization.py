"""The optimizers and the learning-rate schedule of a SCCAN training run (the original's
train.py and util/util.py ``poly_learning_rate``; BAM's get_optim for the ensemble's groups)."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn

# SGD parameter groups in the original order: poly_learning_rate's index_split refers to it.
SGD_GROUP_MODULES = ("down_query", "down_supp", "init_merge_query", "init_merge_supp",
                     "ASPP_meta", "res1_meta", "res2_meta", "cls_meta")
# With a base learner, BAM's get_optim (model/BAM.py) adds these groups after the meta learner's;
# absent modules (no base learner, or kshot_rw with one shot) add no group.
ENSEMBLE_GROUP_MODULES = ("gram_merge", "cls_merge", "kshot_rw")


def build_optimizers(model: nn.Module, base_lr: float, momentum: float = 0.9,
                     weight_decay: float = 1e-4, transformer_lr: float = 6e-5
                     ) -> Tuple[torch.optim.SGD, torch.optim.AdamW]:
    """SGD over the 8 meta-learner groups (in the original order), then, with a base learner,
    ``gram_merge``, ``cls_merge`` and ``kshot_rw`` (BAM's order); AdamW over every trainable
    parameter whose name contains ``transformer``."""
    model = getattr(model, "module", model)
    names = SGD_GROUP_MODULES + tuple(name for name in ENSEMBLE_GROUP_MODULES
                                      if getattr(model, name, None) is not None)
    groups = [{"params": list(getattr(model, name).parameters())} for name in names]
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
