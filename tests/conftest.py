"""Shared pytest fixtures.

`toy_data_root`: a seeded toy few-shot dataset (PASCAL layout, 20 classes, 300 images) generated
once per test session into a temporary folder by `tools/make_toy_dataset.py`. Use it with
``data_set='pascal'``, ``data_root=toy_data_root``, base lists ``<root>/train.txt`` and
``<root>/val.txt``, and ``list_root=<root>/fss_list`` (never the default ``./lists/pascal``, which
belongs to the real PASCAL lists). Treat it as read-only except for ``fss_list`` caches.

`val_config`: the toy config loaded with the tiny-run overrides of tests/support/toy_experiment.py
(one per test module), for the evaluation tests of util/ and of test_sccan.py.

Tests not marked ``cuda`` run on the CPU whatever the machine has: ``SCCAN_FORCE_CPU=1`` is set
around each of them (and around the module-scoped fixtures of modules without the marker), so
the scripts, the predictor and the tools that would pick a GPU (util.runtime.default_device)
stay on the CPU, where the bit-exact tests hold. Tests marked ``cuda`` see the variable unset.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import pytest
import torch

from model.backbone import Backbone
from model.sccan import SCCAN
from tests.support.machine import available_memory_bytes, machine_summary, usable_cores, workers_for
from tests.support.toy_experiment import CONFIG, toy_opts
from tools.make_toy_dataset import make_toy_dataset
from util.config import load_config

TOY_NUM_IMAGES = 300
TOY_SEED = 0


def _share_the_cores_between_workers() -> None:
    # Each pytest-xdist worker would start as many torch threads as the machine has cores:
    # N workers x N threads on N cores spin against each other (several times slower than
    # serial). One worker's share of the cores keeps the total at the core count.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, usable_cores() // workers))


_share_the_cores_between_workers()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core this process may really use, and no more than the memory
    holds. xdist's own count is every core the kernel shows, which in a container limited by a
    CPU quota can be dozens on a 2-core budget: as many workers, each training models, thrash."""
    given = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    if given:
        return int(given)
    return workers_for(usable_cores(), available_memory_bytes())


def pytest_report_header(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return None
    return machine_summary(tempfile.gettempdir())


@contextlib.contextmanager
def _force_cpu(on: bool):
    with pytest.MonkeyPatch.context() as patch:
        if on:
            patch.setenv("SCCAN_FORCE_CPU", "1")
        else:
            patch.delenv("SCCAN_FORCE_CPU", raising=False)
        yield


def _module_is_cuda(module) -> bool:
    marks = getattr(module, "pytestmark", [])
    marks = marks if isinstance(marks, list) else [marks]
    return any(getattr(mark, "name", None) == "cuda" for mark in marks)


@pytest.fixture(scope="module", autouse=True)
def _module_device(request):
    """The module-scoped fixtures of a module of CPU tests build their models on the CPU."""
    with _force_cpu(not _module_is_cuda(request.module)):
        yield


@pytest.fixture(autouse=True)
def _test_device(request):
    with _force_cpu(request.node.get_closest_marker("cuda") is None):
        yield


@pytest.fixture(scope="session")
def toy_data_root(tmp_path_factory) -> str:
    """Path (str) of the session's toy dataset root (about 2-3 s to generate)."""
    out_dir = os.path.join(str(tmp_path_factory.mktemp("toy_dataset")), "toy")
    return make_toy_dataset(out_dir, num_images=TOY_NUM_IMAGES, seed=TOY_SEED)


@pytest.fixture(scope="module")
def val_config(toy_data_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("eval"))
    return load_config(CONFIG, toy_opts(toy_data_root, out, list_root=os.path.join(out, "fss")))


# The longest test modules (half a minute to two minutes each on 2 cores, measured 2026-12-03),
# longest first. pytest-xdist's loadscope hands out modules in collection order: starting these
# first leaves the many short modules for the end, where they fill the gaps, instead of one
# worker running a long module alone while the other has finished.
LONGEST_MODULES = (
    "tests/util/test_predictor_trained.py",
    "tests/scripts/test_train_sccan.py",
    "tests/scripts/test_train_base.py",
    "tests/scripts/test_train_speed.py",
    "tests/scripts/test_run_safety.py",
    "tests/scripts/test_cli_errors.py",
    "tests/tools/test_toy_demo.py",
    "tests/util/test_evaluation_speed.py",
    "tests/benchmarks/test_bench_tools.py",
    "tests/scripts/test_bad_data_files.py",
    "tests/scripts/test_config_errors.py",
    "tests/scripts/test_test_sccan.py",
    "tests/model/test_fast_path.py",
    "tests/model/test_gradient_layout.py",
    "tests/scripts/test_ensemble_scripts.py",
    "tests/evaluation/test_predictor.py",
    "tests/tools/test_gpu_check.py",
    "tests/model/test_parity.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: index for index, name in enumerate(LONGEST_MODULES)}

    def order(item):
        module = os.path.relpath(str(item.path), str(config.rootpath)).replace(os.sep, "/")
        return rank.get(module, len(LONGEST_MODULES))

    items.sort(key=order)  # stable: the order within a module and of the rest is kept


@pytest.fixture(scope="module")
def small_model():
    """A 2-shot SCCAN on a random ResNet-50 with a 16x16 feature grid (one per module)."""
    torch.manual_seed(0)
    return SCCAN(Backbone(50), shot=2, feature_size=16)
