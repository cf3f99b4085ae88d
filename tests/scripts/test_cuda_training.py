"""train_sccan.py on a CUDA device (``pytest -m cuda``; skipped without one; dry run on the CPU,
with gloo for NCCL: see tests/support/cuda.py): a few iterations, a resume, a single-process NCCL
DistributedDataParallel run and the non-finite loss check over NCCL."""
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

import train_sccan
from engine.trainer import NonFiniteLossError, NonFiniteLossWatch
from tests.support.cuda import CUDA, cuda_device, strict_fp32
from tests.support.distributed import ddp_and_plain_training_steps, free_port
from tests.support.toy_experiment import CONFIG, reduced_train_list, toy_opts

pytestmark = CUDA
DEVICE = cuda_device()
# Multi-tensor optimizer steps: fused kernels for CUDA parameters (engine.trainer.fast_optimizer_steps).
STEP_KIND = "fused" if DEVICE.type == "cuda" else "foreach"


@pytest.fixture(scope="module")
def small_list(toy_data_root, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("lists") / "train_small.txt")
    return path, reduced_train_list(toy_data_root, path)


def _argv(toy_data_root, tmp_path, small_list, **overrides):
    values = dict(train_list=small_list[0], list_root=str(tmp_path / "fss_list"), workers=2)
    values.update(overrides)
    return ["--config", CONFIG, "--opts", *toy_opts(toy_data_root, str(tmp_path / "exp"), **values)]


@pytest.mark.parametrize("amp", ["fp32", "bf16"])
@strict_fp32()
def test_training_iterations_on_the_gpu(toy_data_root, tmp_path, small_list, amp):
    trainer = train_sccan.main(_argv(toy_data_root, tmp_path, small_list, epochs=1, amp=amp))
    assert trainer.device.type == DEVICE.type and trainer.state.iteration == small_list[1] // 4
    assert all(group[STEP_KIND] for group in trainer.sgd.param_groups + trainer.adamw.param_groups)
    for name, parameter in trainer.model.named_parameters():
        assert parameter.device.type == DEVICE.type and torch.isfinite(parameter).all(), name
    checkpoint = torch.load(tmp_path / "exp" / "snapshot" / "final_1shot.pth", weights_only=True,
                            map_location="cpu")
    assert torch.equal(checkpoint["state_dict"]["cls_meta.3.bias"],
                       trainer.model.state_dict()["cls_meta.3.bias"].cpu())


@strict_fp32()
def test_resume_on_the_gpu_continues_the_run(toy_data_root, tmp_path, small_list):
    batch = small_list[1] // 2  # two iterations per epoch
    common = dict(epochs=2, batch_size=batch, seed_deterministic=True)
    straight = train_sccan.main(_argv(toy_data_root, tmp_path / "a", small_list, **common))
    first = train_sccan.build_trainer(_argv(toy_data_root, tmp_path / "b", small_list, **common))
    first.epoch_end_callbacks.append(lambda trainer: trainer.state.epoch >= 1)
    first.fit()
    latest = str(tmp_path / "b" / "exp" / "snapshot" / "latest_1shot.pth")
    resumed = train_sccan.main(_argv(toy_data_root, tmp_path / "b", small_list, resume=latest, **common))
    assert resumed.state.iteration == straight.state.iteration == 4
    assert all(group[STEP_KIND] for group in resumed.sgd.param_groups)  # re-applied after loading
    # GPU backward passes accumulate with atomics (bilinear resizing, gathers): equal up to
    # their rounding, not bit for bit as on the CPU.
    reference = straight.model.state_dict()
    for key, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, reference[key], atol=1e-4, rtol=1e-4, msg=key)


@pytest.fixture
def nccl_group():
    """A one-process group: NCCL on the GPU, gloo in the dry run on the CPU."""
    backend = "nccl" if DEVICE.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@strict_fp32()
def test_single_process_nccl_ddp_steps_match_the_plain_model(nccl_group):
    initial, plain, wrapped = ddp_and_plain_training_steps(DEVICE)
    # CUDA backward passes accumulate with atomics (bilinear resizing, gathers), so the plain and
    # the wrapped model get gradients equal up to rounding, summed in another order, and three
    # AdamW steps grow the difference: the weights agree at 1e-4, as in the resume test above.
    # Some tensors move less than that in three steps (from ~2e-5 on), so the update itself is
    # compared too: each tensor's DDP update is the plain one to 1% of its size, where a missing
    # gradient all-reduce, a gradient scaled by the world size or a skipped step differ by 100%.
    trained = 0
    for key, expected in plain.items():
        torch.testing.assert_close(wrapped[key], expected, atol=1e-4, rtol=1e-4, msg=key)
        update = (expected - initial[key]).double() if expected.is_floating_point() else None
        if update is None or update.norm() == 0:
            continue  # the frozen backbone, and the last block's support branch (no gradient)
        trained += 1
        difference = (wrapped[key] - expected).double().norm()
        assert difference <= 0.01 * update.norm(), (key, float(difference), float(update.norm()))
    assert trained >= 100  # the meta learner's ~200 trained tensors, not a model that never moved


def test_non_finite_loss_check_over_nccl(nccl_group):
    watch = NonFiniteLossWatch(DEVICE)
    context = SimpleNamespace(distributed=True)
    watch.observe(torch.tensor(1.0, device=DEVICE), 1)
    watch.check(context, iterations=4, folder="exp")  # finite so far
    watch.observe(torch.tensor(float("inf"), device=DEVICE), 2)
    watch.observe(torch.tensor(float("nan"), device=DEVICE), 3)
    with pytest.raises(NonFiniteLossError, match=r"\(inf\) at epoch 1, iteration 2"):
        watch.check(context, iterations=4, folder="exp")
