"""Atomic writes (util/io.py)."""
import os

import pytest
import torch

from util import io as io_module
from util.io import atomic_torch_save


def test_interrupted_atomic_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "latest.pth")
    atomic_torch_save({"epoch": 1, "value": torch.ones(3)}, path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed before rename")

    monkeypatch.setattr(io_module.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"epoch": 2, "value": torch.zeros(3)}, path)
    monkeypatch.undo()
    restored = torch.load(path, weights_only=True)
    assert restored["epoch"] == 1 and torch.equal(restored["value"], torch.ones(3))
    assert os.listdir(tmp_path) == ["latest.pth"]
    atomic_torch_save({"epoch": 2}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 2
