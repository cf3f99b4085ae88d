"""Parameter counts of a model (frozen-BN statistics are buffers, not parameters)."""
from typing import Tuple

import torch.nn as nn


def count_parameters(model: nn.Module) -> Tuple[int, int]:
    """(total, learnable) parameter counts; frozen-BN buffers are not parameters."""
    total = sum(p.numel() for p in model.parameters())
    learnable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, learnable
