"""train_sccan.py on the toy dataset: smoke run, checkpoints, exact resume, DDP (gloo, CPU)."""
import glob
import os

import pytest
import torch

import train_sccan
from util.evaluation import EvaluationProtocol
from util.trainer import NonFiniteLossError, Trainer
from tests.support.distributed import train_on_two_processes
from tests.support.toy_experiment import CONFIG, reduced_train_list, toy_opts


@pytest.fixture(scope="module")
def small_list(toy_data_root, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("lists") / "train_small.txt")
    length = reduced_train_list(toy_data_root, path)
    return path, length


def _argv(toy_data_root, tmp_path, small_list, flags=(), **overrides):
    path, length = small_list
    values = dict(train_list=path, list_root=str(tmp_path / "fss_list"))
    values.update(overrides)
    return ["--config", CONFIG, *flags, "--opts", *toy_opts(toy_data_root, str(tmp_path / "exp"), **values)]


def _parameters(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_smoke_training_writes_checkpoints(toy_data_root, tmp_path, small_list):
    trainer = train_sccan.main(_argv(toy_data_root, tmp_path, small_list, flags=["--viz"], epochs=2,
                                     batch_size=4, evaluate=True, SubEpoch_val=True, test_num=4,
                                     save_freq=1))
    snapshot = tmp_path / "exp" / "snapshot"
    names = sorted(os.listdir(snapshot))
    # Everything this implementation adds is per shot; epochs carry the original's labels (0, 1).
    assert {"latest_1shot.pth", "final_1shot.pth", "epoch_0_1shot.pth", "epoch_1_1shot.pth"} <= set(names)
    checkpoint = torch.load(snapshot / "latest_1shot.pth", weights_only=True)
    assert set(checkpoint) >= {"epoch", "state_dict", "optimizer", "optimizer_swin", "config"}
    assert checkpoint["epoch"] == 1 and checkpoint["config"]["train_h"] == 65
    assert trainer.state.iteration == 2 * (small_list[1] // 4)
    assert (tmp_path / "exp" / "config_1shot.yaml").exists()
    assert (tmp_path / "exp" / "train_1shot.log").exists()
    events = os.listdir(tmp_path / "exp" / "tensorboard_1shot")  # --viz
    assert any(name.startswith("events.out.tfevents") for name in events)
    for name, parameter in trainer.model.named_parameters():
        assert torch.isfinite(parameter).all(), name


def test_best_checkpoint_naming_and_early_stop(toy_data_root, tmp_path, small_list, monkeypatch):
    scores = iter([0.10, 0.30, 0.20, 0.25, 0.29, 0.28, 0.27])
    calls, iterations_done = [], []
    holder = {}

    def fake_run(protocol, model, loader, device, seed=None, observers=(), progress=False):
        calls.append(seed)
        iterations_done.append(holder["trainer"].state.iteration)
        return {"mIoU": next(scores), "FB_IoU": 0.5, "pIoU": 0.1, "episodes": 4, "seconds": 0.0}

    original_fit = Trainer.fit

    def fit(self, *args, **kwargs):
        holder["trainer"] = self
        return original_fit(self, *args, **kwargs)

    monkeypatch.setattr(EvaluationProtocol, "run", fake_run)
    monkeypatch.setattr(Trainer, "fit", fit)
    trainer = train_sccan.main(_argv(toy_data_root, tmp_path, small_list, epochs=5, batch_size=8,
                                     evaluate=True, SubEpoch_val=True, stop_interval=2, shot=1))
    # The original's labels: end of 0-based epoch e -> e, half of epoch e (e > 0) -> e - 0.5.
    # Validations 0, 0.5, 1, 1.5, 2, 2.5, 3 -> best 0.30 at 0.5; 3 - 0.5 >= 2 stops after 4 epochs.
    assert calls == [321] * 7
    names = sorted(os.listdir(tmp_path / "exp" / "snapshot"))
    assert [n for n in names if n.startswith("train")] == ["train_epoch_0.5_0.3000.pth"]
    assert trainer.state.best.epoch == 0.5 and trainer.state.epoch == 4
    best = torch.load(tmp_path / "exp" / "snapshot" / "train_epoch_0.5_0.3000.pth", weights_only=True)
    assert best["epoch"] == 0.5
    # The half-epoch validation follows the iteration whose 0-based index is round(L / 2).
    length = small_list[1] // 8
    half = {1: 0, 2: 1, 3: 2, 4: 2, 5: 2, 6: 3, 7: 4}[length]  # Python's round, by hand
    assert iterations_done[:3] == [length, length + half + 1, 2 * length]


def test_resume_is_exact(toy_data_root, tmp_path, small_list):
    batch = small_list[1] // 2  # two iterations per epoch
    straight = train_sccan.main(_argv(toy_data_root, tmp_path / "a", small_list, epochs=2,
                                      batch_size=batch))
    first = train_sccan.build_trainer(_argv(toy_data_root, tmp_path / "b", small_list, epochs=2,
                                            batch_size=batch))
    # Stopped after the first epoch's checkpoints, as if the process had been killed there.
    first.epoch_end_callbacks.append(lambda trainer: trainer.state.epoch >= 1)
    first.fit()
    assert not (tmp_path / "b" / "exp" / "snapshot" / "final_1shot.pth").exists()
    assert first.state.iteration == 2
    latest = str(tmp_path / "b" / "exp" / "snapshot" / "latest_1shot.pth")
    resumed = train_sccan.main(_argv(toy_data_root, tmp_path / "b", small_list, epochs=2,
                                     batch_size=batch, resume=latest))
    assert straight.state.iteration == resumed.state.iteration == 4
    reference, result = _parameters(straight), _parameters(resumed)
    for key in reference:
        assert torch.equal(reference[key], result[key]), key
    # and the run really trained: parameters differ from the interrupted run's
    assert any(not torch.equal(first.model.state_dict()[k], result[k]) for k in result)
    for group_a, group_b in zip(straight.sgd.param_groups, resumed.sgd.param_groups):
        assert group_a["lr"] == group_b["lr"]


def test_non_finite_loss_stops_with_iteration(toy_data_root, tmp_path, small_list, monkeypatch):
    import model.sccan as sccan_module
    original = sccan_module.weighted_dice_loss
    calls = {"n": 0}

    def poisoned(logits, target):
        calls["n"] += 1
        loss = original(logits, target)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(sccan_module, "weighted_dice_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match="iteration 2"):
        train_sccan.main(_argv(toy_data_root, tmp_path, small_list, epochs=1, batch_size=4))


def test_ddp_two_processes_gloo_keep_identical_parameters(toy_data_root, tmp_path, small_list):
    argv = _argv(toy_data_root, tmp_path, small_list, epochs=1, batch_size=2)
    rank0, rank1 = train_on_two_processes("train_sccan", argv, tmp_path)
    initial = torch.load(glob.glob(str(tmp_path / "exp" / "snapshot" / "final_1shot.pth"))[0],
                         weights_only=True)["state_dict"]
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(rank0[key], initial[key]), key
