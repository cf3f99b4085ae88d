"""Atrous spatial pyramid pooling of the meta learner (``ASPP_meta.*`` of the original's
``OneModel``, model/SCCAN.py)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _conv_relu(channels: int, kernel_size: int, dilation: int = 1) -> nn.Sequential:
    padding = dilation if kernel_size == 3 else 0
    return nn.Sequential(
        nn.Conv2d(channels, channels, kernel_size, padding=padding, dilation=dilation, bias=True),
        nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Five branches (image pooling, 1x1, 3x3 with dilation 6/12/18), concatenated."""

    def __init__(self, channels: int = 256):
        super().__init__()
        self.layer6_0 = _conv_relu(channels, 1)
        self.layer6_1 = _conv_relu(channels, 1)
        self.layer6_2 = _conv_relu(channels, 3, dilation=6)
        self.layer6_3 = _conv_relu(channels, 3, dilation=12)
        self.layer6_4 = _conv_relu(channels, 3, dilation=18)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, 5*C, H, W)."""
        height, width = x.shape[-2:]
        pooled = self.layer6_0(F.adaptive_avg_pool2d(x, 1))  # (B, C, 1, 1)
        pooled = pooled.expand(-1, -1, height, width)  # (B, C, H, W)
        return torch.cat([pooled, self.layer6_1(x), self.layer6_2(x), self.layer6_3(x),
                          self.layer6_4(x)], dim=1)
