"""train_sccan.py's speed changes on the toy dataset: the same losses as the straightforward step,
multi-tensor optimizer steps, the deferred non-finite check, bf16 training."""
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

import model.sccan as sccan_module
import train_sccan
import engine.trainer
from engine.trainer import NonFiniteLossError, NonFiniteLossWatch
from tests.support.distributed import ddp_and_plain_training_steps, free_port
from tests.support.toy_experiment import CONFIG, reduced_train_list, toy_opts

ITERATIONS = 8
# The fast path's rounding differences were measured at 65 px (BENCHMARKS.md).
SIZE_65 = dict(train_h=65, train_w=65)


@pytest.fixture(scope="module")
def small_list(toy_data_root, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("lists") / "train_small.txt")
    return path, reduced_train_list(toy_data_root, path)


def _argv(toy_data_root, tmp_path, small_list, **overrides):
    values = dict(train_list=small_list[0], list_root=str(tmp_path / "fss_list"))
    values.update(overrides)
    return ["--config", CONFIG, "--opts", *toy_opts(toy_data_root, str(tmp_path / "exp"), **values)]


def _recorded_losses(monkeypatch):
    losses = []
    original = sccan_module.weighted_dice_loss

    def recording(logits, target):
        loss = original(logits, target)
        losses.append(loss.item())
        return loss

    monkeypatch.setattr(sccan_module, "weighted_dice_loss", recording)
    return losses


def _first_losses(toy_data_root, tmp_path, small_list, monkeypatch, name, iterations=ITERATIONS, **overrides):
    epochs = -(-iterations // (small_list[1] // 4))  # enough epochs of batch 4 for the iterations
    losses = _recorded_losses(monkeypatch)
    trainer = train_sccan.main(_argv(toy_data_root, tmp_path / name, small_list, epochs=epochs, **overrides))
    assert len(losses) >= iterations
    return trainer, losses[:iterations]


def test_default_training_step_keeps_the_losses_exactly(toy_data_root, tmp_path, small_list, monkeypatch):
    with monkeypatch.context() as before:
        # the step as it was: the straightforward forward everywhere, one-tensor optimizer steps
        before.setattr(engine.trainer, "fast_optimizer_steps", lambda *optimizers: None)
        reference, reference_losses = _first_losses(toy_data_root, tmp_path, small_list, before,
                                                    "reference", fast_path=False)
    trainer, losses = _first_losses(toy_data_root, tmp_path, small_list, monkeypatch, "default")
    assert not any(group["foreach"] for group in reference.sgd.param_groups)
    assert all(group["foreach"] for group in trainer.sgd.param_groups + trainer.adamw.param_groups)
    assert trainer.model.fast_path and not trainer.model.fast_path_training
    assert len(set(reference_losses)) > ITERATIONS // 2  # the loss moves
    assert losses == reference_losses  # bit for bit


def test_fast_training_path_keeps_the_first_losses_close(toy_data_root, tmp_path, small_list, monkeypatch):
    # the first epoch only: the comparison is on the first 5 losses
    _, reference_losses = _first_losses(toy_data_root, tmp_path, small_list, monkeypatch, "reference",
                                        iterations=6, **SIZE_65)
    trainer, losses = _first_losses(toy_data_root, tmp_path, small_list, monkeypatch, "fast", iterations=6,
                                    fast_path_training=True, **SIZE_65)
    assert trainer.model.fast_path_training
    # rounding differences grow over the iterations (BENCHMARKS.md): the first ones agree closely
    for step, (expected, actual) in enumerate(zip(reference_losses[:5], losses[:5])):
        assert abs(actual - expected) <= 1e-5, f"iteration {step + 1}: {actual} != {expected}"
    assert losses != reference_losses  # really another path


def test_non_finite_loss_is_reported_at_the_next_check(toy_data_root, tmp_path, small_list,
                                                       monkeypatch):
    losses = _recorded_losses(monkeypatch)
    original = sccan_module.weighted_dice_loss

    def poisoned(logits, target):
        loss = original(logits, target)
        return loss * float("nan") if len(losses) == 2 else loss

    monkeypatch.setattr(sccan_module, "weighted_dice_loss", poisoned)
    # checked every 3 iterations: found at the third, named as the second
    with pytest.raises(NonFiniteLossError, match=r"\(nan\) at epoch 1, iteration 2 \(global iteration 2\)"):
        train_sccan.main(_argv(toy_data_root, tmp_path, small_list, epochs=1, batch_size=2,
                               print_freq=3))
    assert len(losses) == 3
    assert not (tmp_path / "exp" / "snapshot" / "latest_1shot.pth").exists()


def _two_training_steps(toy_data_root, tmp_path, small_list, amp):
    """The first two updates of train_sccan.py's trainer under ``amp``: their losses, the dtypes
    of every convolution's and linear layer's output during them, and the trainer."""
    trainer = train_sccan.build_trainer(_argv(toy_data_root, tmp_path / amp, small_list, amp=amp, evaluate=False,
                                              batch_size=2, train_h=33, train_w=33))
    dtypes = set()

    def record(module, inputs, output):
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and module.training:
            dtypes.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        batches = iter(trainer.train_loader)
        losses = [trainer.train_step(next(batches), step, len(trainer.train_loader))[0].item()
                  for step in (1, 2)]
    finally:
        handle.remove()
        trainer.close()
        trainer.output_lock.release()
    return losses, dtypes, trainer


def test_bf16_training_autocasts_and_stays_close_to_fp32(toy_data_root, tmp_path, small_list):
    """amp: bf16 really runs the trainable layers in bf16 (an ignored amp key would give float32
    outputs and the fp32 losses exactly), the parameters and optimizer states stay float32, and
    the losses of the same two updates stay close to the fp32 ones."""
    fp32_losses, fp32_dtypes, _ = _two_training_steps(toy_data_root, tmp_path, small_list, "fp32")
    bf16_losses, bf16_dtypes, trainer = _two_training_steps(toy_data_root, tmp_path, small_list, "bf16")
    assert fp32_dtypes == {torch.float32}
    assert torch.bfloat16 in bf16_dtypes
    assert bf16_losses != fp32_losses  # really another precision
    for fp32, bf16 in zip(fp32_losses, bf16_losses):
        assert abs(bf16 - fp32) <= 0.02 * abs(fp32), (fp32_losses, bf16_losses)
    for name, parameter in trainer.model.named_parameters():
        assert parameter.dtype == torch.float32 and torch.isfinite(parameter).all(), name
    for state in trainer.adamw.state.values():
        assert all(value.dtype == torch.float32 for value in state.values() if value.is_floating_point())


def test_unknown_amp_value_is_one_clear_error(toy_data_root, tmp_path, small_list, capsys):
    status = train_sccan.run_entry_point(train_sccan.main, _argv(toy_data_root, tmp_path, small_list,
                                                                  amp="fp16"))
    assert status == 2
    assert capsys.readouterr().err.strip() == \
        "error: config key amp: expected one of 'fp32', 'bf16', got 'fp16'"


def test_non_finite_watch_reduces_over_the_process_group():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        watch = NonFiniteLossWatch(torch.device("cpu"))
        context = SimpleNamespace(distributed=True)
        watch.observe(torch.tensor(0.5), 7)
        watch.check(context, iterations=5, folder="exp")  # all finite: nothing raised
        watch.observe(torch.tensor(float("-inf")), 8)
        watch.observe(torch.tensor(float("nan")), 9)  # the first one is reported
        with pytest.raises(NonFiniteLossError, match=r"\(-inf\) at epoch 2, iteration 3 \(global iteration 8\)"):
            watch.check(context, iterations=5, folder="exp")
    finally:
        dist.destroy_process_group()


def test_single_process_gloo_ddp_steps_match_the_plain_model():
    """The CPU twin of the CUDA suite's NCCL run (tests/scripts/test_cuda_training.py)."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        initial, plain, wrapped = ddp_and_plain_training_steps(torch.device("cpu"))
    finally:
        dist.destroy_process_group()
    for key, expected in plain.items():
        assert torch.equal(wrapped[key], expected), key
    assert any(not torch.equal(plain[key], value) for key, value in initial.items())  # it trained
