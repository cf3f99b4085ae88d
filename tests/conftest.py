"""Shared pytest fixtures.

`toy_data_root`: a seeded toy few-shot dataset (PASCAL layout, 20 classes, 300 images) generated
once per test session into a temporary folder by `tools/make_toy_dataset.py`. Use it with
``data_set='pascal'``, ``data_root=toy_data_root``, base lists ``<root>/train.txt`` and
``<root>/val.txt``, and ``list_root=<root>/fss_list`` (never the default ``./lists/pascal``, which
belongs to the real PASCAL lists). Treat it as read-only except for ``fss_list`` caches.

`val_config`: the toy config loaded with the tiny-run overrides of tests/support/toy_experiment.py
(one per test module), for the evaluation tests of util/ and of test_sccan.py.
"""

from __future__ import annotations

import os

import pytest

from tests.support.toy_experiment import CONFIG, toy_opts
from tools.make_toy_dataset import make_toy_dataset
from util.config import load_config

TOY_NUM_IMAGES = 300
TOY_SEED = 0


@pytest.fixture(scope="session")
def toy_data_root(tmp_path_factory) -> str:
    """Path (str) of the session's toy dataset root (about 2-3 s to generate)."""
    out_dir = os.path.join(str(tmp_path_factory.mktemp("toy_dataset")), "toy")
    return make_toy_dataset(out_dir, num_images=TOY_NUM_IMAGES, seed=TOY_SEED)


@pytest.fixture(scope="module")
def val_config(toy_data_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("eval"))
    return load_config(CONFIG, toy_opts(toy_data_root, out, list_root=os.path.join(out, "fss")))
