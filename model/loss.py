"""Weighted dice loss of SCCAN (the main loss of the original's ``OneModel``, model/SCCAN.py)."""
from __future__ import annotations

import torch


def weighted_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """logits: (B, 2, H, W); target: (B, H, W) long with values {0, 1, 255} -> scalar.

    Per (sample, channel): 1 - 2*sum(p*t) / clamp(sum(p^2) + sum(t^2), 1e-8), with
    p = sigmoid(logits) and t = [target == 0, target == 1] (255 is 0 in both channels);
    summed over samples and channels, divided by B.
    """
    batch = logits.shape[0]
    logits = logits.float()  # float32 sums under bf16 autocast too
    onehot = torch.stack([target == 0, target == 1], dim=1).to(logits.dtype)  # (B, 2, H, W)
    probability = logits.sigmoid().flatten(2)  # (B, 2, H*W)
    onehot = onehot.flatten(2)  # (B, 2, H*W)
    intersection = (probability * onehot).sum(-1)  # (B, 2)
    denominator = (probability * probability).sum(-1) + (onehot * onehot).sum(-1)  # (B, 2)
    dice = 1 - 2 * intersection / denominator.clamp(min=1e-8)
    return dice.sum() / batch
