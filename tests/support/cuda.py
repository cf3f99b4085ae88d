"""The ``cuda`` marker of the GPU tests: ``pytest -m cuda`` runs them on a machine with a CUDA
device; elsewhere they are skipped (the CPU suite still collects them)."""
import pytest
import torch

#: ``pytestmark = CUDA`` in a module of GPU tests.
CUDA = [pytest.mark.cuda,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def strict_fp32() -> None:
    """fp32 matrix products and convolutions without TF32 (parity needs full fp32)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
