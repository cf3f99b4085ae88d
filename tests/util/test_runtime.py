"""util/runtime.py and the trainer helpers that a GPU run depends on, emulated on the CPU: RNG
states captured per device and restored on another device count, the optimizer state of a
released checkpoint placed for fused steps, the CPU tests kept on the CPU, OpenCV's threads in
loader workers, the process-group timeout, SyncBatchNorm for the base learner."""
import copy
import logging
import os
import random
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

import util.runtime as runtime
from engine.base_trainer import sync_batch_norm_when_distributed
from engine.trainer import fast_optimizer_steps, place_optimizer_state, rng_states_of_this_rank
from model.pspnet import PSPNet
from tests.support.distributed import free_port

LOGGER = logging.getLogger("test_runtime")


def _draws():
    return (torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)])


# ------------------------------------------------------------------------------- RNG states
def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    runtime.set_seed(5)
    states = runtime.get_rng_states()
    expected = _draws()
    torch.save({"rng": states}, tmp_path / "states.pth")
    runtime.set_seed(99)
    runtime.set_rng_states(torch.load(tmp_path / "states.pth", weights_only=True)["rng"])
    assert _draws() == expected


def test_an_rng_state_without_data_is_one_clear_error():
    states = runtime.get_rng_states()
    states["torch"] = states["torch"].to("meta")  # what map_location='meta' leaves of it
    with pytest.raises(ValueError, match=r"RNG state 'torch': expected a byte tensor with data, "
                                         r"got Tensor on the meta device"):
        runtime.set_rng_states(states)


class _FakeCuda:
    """torch.cuda's generator functions on a machine with ``devices`` GPUs, recording calls."""

    def __init__(self, monkeypatch, devices: int, current: int = 0):
        self.restored = []
        monkeypatch.delenv("SCCAN_FORCE_CPU", raising=False)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.full((8,), current,
                                                                                            dtype=torch.uint8))
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": self.restored.append(state))

        def refuse(*arguments):
            raise AssertionError("per-visible-GPU RNG calls index GPUs this process may not have")
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", refuse)
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", refuse)


def test_only_the_current_devices_cuda_state_is_captured(monkeypatch):
    _FakeCuda(monkeypatch, devices=4, current=2)
    states = runtime.get_rng_states()
    assert torch.equal(states["cuda"], torch.full((8,), 2, dtype=torch.uint8))


def test_a_checkpoint_with_four_cuda_states_resumes_in_a_one_gpu_process(monkeypatch):
    """Checkpoints written before per-device capture hold get_rng_state_all(): one state per
    visible GPU of the saving machine."""
    fake = _FakeCuda(monkeypatch, devices=1, current=0)
    states = runtime.get_rng_states()
    states["cuda"] = [torch.full((8,), index, dtype=torch.uint8) for index in range(4)]
    runtime.set_rng_states(states)
    assert len(fake.restored) == 1 and torch.equal(fake.restored[0], states["cuda"][0])


def test_each_device_restores_its_own_state_of_an_old_checkpoint():
    saved = [torch.full((8,), index, dtype=torch.uint8) for index in range(4)]
    assert torch.equal(runtime.cuda_rng_state_for_this_device(saved, 3), saved[3])
    assert torch.equal(runtime.cuda_rng_state_for_this_device(saved[:1], 3), saved[0])
    assert torch.equal(runtime.cuda_rng_state_for_this_device(saved[2], 0), saved[2])
    assert runtime.cuda_rng_state_for_this_device(None, 0) is None


def test_each_rank_restores_its_own_rng_states(caplog):
    training = {"rng": "rank 0", "rng_by_rank": ["rank 0", "rank 1"]}
    assert rng_states_of_this_rank(training, SimpleNamespace(rank=1, world_size=2), "x.pth", LOGGER) == "rank 1"
    with caplog.at_level(logging.WARNING, logger="test_runtime"):
        assert rng_states_of_this_rank(training, SimpleNamespace(rank=0, world_size=1), "x.pth",
                                       LOGGER) == "rank 0"
        assert rng_states_of_this_rank({"rng": "rank 0"}, SimpleNamespace(rank=2, world_size=4),
                                       "x.pth", LOGGER) == "rank 0"
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "x.pth was written by 2 process(es) and resumes in 1: every rank restores rank 0's random "
        "states, so the continuation is not exactly the uninterrupted run's",
        "x.pth was written by 1 process(es) and resumes in 4: every rank restores rank 0's random "
        "states, so the continuation is not exactly the uninterrupted run's"]
    assert rng_states_of_this_rank({"rng": "rank 0"}, None, "x.pth", LOGGER) == "rank 0"


# -------------------------------------------------------------------------- optimizer state
def _released_adamw_state(parameter: torch.Tensor) -> dict:
    """An AdamW state as PyTorch 1.7 saved it: ``step`` a plain int, no foreach/fused flags."""
    generator = torch.Generator().manual_seed(0)
    return {"state": {0: {"step": 12, "exp_avg": torch.randn(parameter.shape, generator=generator),
                          "exp_avg_sq": torch.rand(parameter.shape, generator=generator)}},
            "param_groups": [{"lr": 6e-5, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01,
                              "amsgrad": False, "params": [0]}]}


def test_a_released_int_step_resumes_with_foreach_steps():
    start = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    gradient = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    released = _released_adamw_state(start)

    parameter = torch.nn.Parameter(start.clone())
    optimizer = torch.optim.AdamW([parameter], lr=1.0)
    optimizer.load_state_dict(copy.deepcopy(released))  # the steps update the moments in place
    fast_optimizer_steps(optimizer)
    step = optimizer.state[parameter]["step"]
    assert torch.is_tensor(step) and step.dtype == torch.float32 and step.device.type == "cpu"
    parameter.grad = gradient.clone()
    optimizer.step()

    # The update written out: AdamW of step 13 from the released moments.
    state = released["state"][0]
    beta1, beta2, lr, eps, decay = 0.9, 0.999, 6e-5, 1e-8, 0.01
    exp_avg = beta1 * state["exp_avg"] + (1 - beta1) * gradient
    exp_avg_sq = beta2 * state["exp_avg_sq"] + (1 - beta2) * gradient * gradient
    denominator = (exp_avg_sq / (1 - beta2 ** 13)).sqrt() + eps
    expected = start * (1 - lr * decay) - lr / (1 - beta1 ** 13) * exp_avg / denominator
    torch.testing.assert_close(parameter.detach(), expected, rtol=1e-6, atol=1e-9)
    assert optimizer.state[parameter]["step"].item() == 13


def test_fused_steps_find_the_state_on_the_parameters_device():
    """A fused kernel reads ``step`` and the moments on the parameters' device (CUDA in real
    runs; the meta device stands for it here, since loading puts the released int step on the
    CPU)."""
    parameter = torch.nn.Parameter(torch.empty(4, 3, device="meta"))
    optimizer = torch.optim.AdamW([parameter], lr=1.0)
    optimizer.load_state_dict(_released_adamw_state(torch.empty(4, 3)))
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, False
    place_optimizer_state(optimizer)
    state = optimizer.state[parameter]
    assert state["step"].device.type == "meta" and state["step"].dtype == torch.float32
    assert all(state[key].device.type == "meta" for key in ("exp_avg", "exp_avg_sq"))

    # SGD's momentum buffers follow their parameter, in its dtype.
    weight = torch.nn.Parameter(torch.empty(2, device="meta", dtype=torch.float64))
    sgd = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
    sgd.state[weight]["momentum_buffer"] = torch.ones(2)
    place_optimizer_state(sgd)
    buffer = sgd.state[weight]["momentum_buffer"]
    assert buffer.device.type == "meta" and buffer.dtype == torch.float64


# ------------------------------------------------------------------------- CPU tests on CPU
def test_tests_without_the_cuda_marker_run_on_the_cpu_even_where_cuda_exists(monkeypatch):
    assert os.environ.get("SCCAN_FORCE_CPU") == "1"  # tests/conftest.py
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: pytest.fail("picked a GPU"))
    assert runtime.default_device() == torch.device("cpu")
    assert runtime.init_distributed().device == torch.device("cpu")
    monkeypatch.delenv("SCCAN_FORCE_CPU")
    assert runtime.default_device() == torch.device("cuda")


# ------------------------------------------------------------------- loader workers, timeout
class _OpenCVThreads(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        return torch.tensor([cv2.getNumThreads(), int(cv2.ocl.useOpenCL())])


def test_loader_workers_run_opencv_single_threaded():
    # Every loader of the project passes this worker_init_fn (engine/trainer.py, experiment/build.py,
    # evaluation/episodes.py, engine/base_trainer.py).
    loader = DataLoader(_OpenCVThreads(), batch_size=1, num_workers=1,
                        worker_init_fn=runtime.limit_opencv_threads)
    for batch in loader:
        assert batch[0].tolist() == [1, 0]  # threads, OpenCL in use


def test_limit_opencv_threads_draws_no_random_number():
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    threads = cv2.getNumThreads()
    try:
        runtime.limit_opencv_threads(0)
        after = _draws()
    finally:
        cv2.setNumThreads(threads)
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    assert after == _draws()


def test_the_process_group_gets_the_configured_timeout(monkeypatch):
    seen = {}
    monkeypatch.setattr(dist, "init_process_group", lambda **arguments: seen.update(arguments))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    context = runtime.init_distributed(timeout_minutes=90)
    assert (context.rank, context.world_size, context.device) == (1, 2, torch.device("cpu"))
    assert seen["backend"] == "gloo" and seen["timeout"].total_seconds() == 90 * 60


# ------------------------------------------------------------------------------- SyncBatchNorm
def test_the_base_learner_uses_sync_batch_norm_when_distributed_on_cuda():
    model = PSPNet(layers=50, classes=16, pretrained_backbone=False)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    single = SimpleNamespace(distributed=False, device=torch.device("cuda"))
    gloo = SimpleNamespace(distributed=True, device=torch.device("cpu"))
    assert sync_batch_norm_when_distributed(model, single) is model
    assert sync_batch_norm_when_distributed(model, gloo) is model  # SyncBatchNorm refuses CPU inputs
    batch_norms = sum(isinstance(module, torch.nn.BatchNorm2d) for module in model.modules())
    converted = sync_batch_norm_when_distributed(model, SimpleNamespace(distributed=True,
                                                                        device=torch.device("cuda")))
    assert sum(isinstance(module, torch.nn.SyncBatchNorm) for module in converted.modules()) == batch_norms
    assert not any(type(module) is torch.nn.BatchNorm2d for module in converted.modules())
    after = converted.state_dict()
    assert list(after) == list(before)  # BAM's checkpoint names
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert converted.encoder is model.encoder  # the optimizer's groups still hold its parameters
