"""Best-validation bookkeeping of the original train.py: epoch labels, checkpoint names, keeping
only the best checkpoint, early stop (docs/PROTOCOL.md section 5).

The original labels a validation at the end of its 0-based epoch ``e`` as ``e`` and the
half-epoch validation inside it as ``e - 0.5``: the released ``train_epoch_43_0.6753.pth`` is
the end of the 44th epoch, ``train5_epoch_33.5_0.4571.pth`` the middle of the 35th.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["epoch_label", "format_epoch_label", "half_epoch_index", "best_checkpoint_prefix",
           "best_checkpoint_name", "BestCheckpoint"]


def epoch_label(epoch: int, half: bool = False) -> float:
    """The original's label of a validation in 0-based epoch ``epoch`` (at its end or its half)."""
    return epoch - 0.5 if half else epoch


def format_epoch_label(value: float) -> str:
    """43 -> '43', 33.5 -> '33.5' (as in the released checkpoint names)."""
    return str(int(value)) if float(value).is_integer() else str(float(value))


def half_epoch_index(iterations: int) -> int:
    """0-based index of the iteration after which the half-epoch validation runs: the original
    tests ``i == round(len(train_loader) / 2)`` (Python's round: 2.5 -> 2, 3.5 -> 4)."""
    return round(iterations / 2)


def best_checkpoint_prefix(shot: int) -> str:
    """What every best checkpoint name of a ``shot``-shot training starts with: ``train_epoch_``,
    or ``train<K>_epoch_`` for K > 1."""
    return ("train" if shot == 1 else f"train{shot}") + "_epoch_"


def best_checkpoint_name(shot: int, label: float, miou: float) -> str:
    """train_epoch_<label>_<miou>.pth, or train<K>_epoch_... for K > 1 (the released names)."""
    return f"{best_checkpoint_prefix(shot)}{format_epoch_label(label)}_{miou:.4f}.pth"


@dataclass
class BestCheckpoint:
    """The best validation so far: its mIoU, epoch label (-1: none yet) and checkpoint path."""
    miou: float = 0.0
    epoch: float = -1.0
    path: str = ""

    def improves(self, miou: float) -> bool:
        """Only a strictly higher mIoU replaces the best (the original's ``>``)."""
        return miou > self.miou

    def replace(self, folder: str, shot: int, label: float, miou: float) -> str:
        """Record a new best in ``folder``; returns the previous best's path, which the caller
        deletes once the new file is written ('' when there is none to delete)."""
        previous = self.path
        self.miou, self.epoch = miou, label
        self.path = os.path.join(folder, best_checkpoint_name(shot, label, miou))
        return previous if previous != self.path else ""

    def epochs_without_improvement(self, label: float) -> float:
        return label - self.epoch

    def should_stop(self, label: float, stop_interval: int) -> bool:
        """The original's early stop: ``stop_interval`` epochs without a better validation."""
        return self.epochs_without_improvement(label) >= stop_interval
