"""The ``cuda`` marker of the GPU tests: ``pytest -m cuda`` runs them on a machine with a CUDA
device; elsewhere they are skipped (the CPU suite still collects them). ``pytestmark = CUDA``
marks a module of GPU tests, ``@cuda_test`` one test among CPU tests.

A dry run without a GPU: ``SCCAN_CUDA_TESTS_ON_CPU=1 python -m pytest -m cuda`` runs the
CUDA-marked tests on the CPU instead of skipping them (:func:`cuda_device` then returns the CPU,
and the scripts pick the CPU because no CUDA device exists). It exercises the test code itself
(fixtures, arguments, assertions, the CPU-side comparisons) before a GPU is lent; it is no
evidence about CUDA. On a machine with a CUDA device the switch changes nothing: the tests run
on the GPU.

Pin full fp32 arithmetic (no TF32) around a comparison with ``with strict_fp32():``, or for a
whole test by decorating it with ``@strict_fp32()``.
"""
import contextlib
import os
from typing import Iterator

import pytest
import torch

#: The environment switch of the dry run on the CPU (see the module docstring).
ON_CPU_SWITCH = "SCCAN_CUDA_TESTS_ON_CPU"


def cuda_tests_on_cpu() -> bool:
    """True when the CUDA-marked tests are dry-run on the CPU: the switch is set and there is
    no CUDA device (a real GPU always wins)."""
    return os.environ.get(ON_CPU_SWITCH, "0") == "1" and not torch.cuda.is_available()


def cuda_device() -> torch.device:
    """The device of the CUDA-marked tests: the current CUDA device, or the CPU in a dry run."""
    return torch.device("cpu") if cuda_tests_on_cpu() else torch.device("cuda")


#: ``pytestmark = CUDA`` in a module of GPU tests.
CUDA = [pytest.mark.cuda,
        pytest.mark.skipif(not torch.cuda.is_available() and not cuda_tests_on_cpu(),
                           reason=f"needs a CUDA device ({ON_CPU_SWITCH}=1 dry-runs it on the CPU)")]


def cuda_test(test):
    """The :data:`CUDA` marks on one test of a module of CPU tests."""
    for mark in CUDA:
        test = mark(test)
    return test


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """fp32 matrix products and convolutions without TF32 inside the block, or inside the test
    it decorates (parity needs full fp32); the previous flags come back afterwards, so no later
    test inherits them."""
    previous = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous
