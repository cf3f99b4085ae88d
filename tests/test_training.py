"""train_sccan.py on the toy dataset: smoke run, checkpoints, exact resume, DDP (gloo, CPU)."""
import glob
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import train_sccan
from tests.toy_experiment import CONFIG, reduced_train_list, toy_opts


@pytest.fixture(scope="module")
def small_list(toy_data_root, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("lists") / "train_small.txt")
    length = reduced_train_list(toy_data_root, path)
    return path, length


def _argv(toy_data_root, tmp_path, small_list, **overrides):
    path, length = small_list
    values = dict(train_list=path, list_root=str(tmp_path / "fss_list"))
    values.update(overrides)
    return ["--config", CONFIG, "--opts", *toy_opts(toy_data_root, str(tmp_path / "exp"), **values)]


def _parameters(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_smoke_training_writes_checkpoints(toy_data_root, tmp_path, small_list):
    trainer = train_sccan.main(_argv(toy_data_root, tmp_path, small_list, epochs=2, batch_size=4,
                                     evaluate=True, SubEpoch_val=True, test_num=4, save_freq=1))
    snapshot = tmp_path / "exp" / "snapshot"
    names = sorted(os.listdir(snapshot))
    assert "latest.pth" in names and "final.pth" in names and "epoch_1.pth" in names
    checkpoint = torch.load(snapshot / "latest.pth", weights_only=True)
    assert set(checkpoint) >= {"epoch", "state_dict", "optimizer", "optimizer_swin", "config"}
    assert checkpoint["epoch"] == 2 and checkpoint["config"]["train_h"] == 65
    assert trainer.state.iteration == 2 * (small_list[1] // 4)
    assert (tmp_path / "exp" / "config.yaml").exists() and (tmp_path / "exp" / "train.log").exists()
    for name, parameter in trainer.model.named_parameters():
        assert torch.isfinite(parameter).all(), name


def test_best_checkpoint_naming_and_early_stop(toy_data_root, tmp_path, small_list, monkeypatch):
    scores = iter([0.10, 0.30, 0.20, 0.25, 0.29, 0.28, 0.27])
    calls = []

    def fake_evaluate(model, loader, **kwargs):
        calls.append(kwargs["seed"])
        return {"mIoU": next(scores), "FB_IoU": 0.5, "pIoU": 0.1, "episodes": 4, "seconds": 0.0}

    monkeypatch.setattr(train_sccan, "evaluate", fake_evaluate)
    trainer = train_sccan.main(_argv(toy_data_root, tmp_path, small_list, epochs=5, batch_size=8,
                                     evaluate=True, SubEpoch_val=True, stop_interval=2, shot=1))
    # validations: 1, 1.5, 2, 2.5, 3, 3.5, 4 -> best 0.30 at 1.5; 4 - 1.5 >= 2 stops before epoch 5
    assert calls == [321] * 7
    names = sorted(os.listdir(tmp_path / "exp" / "snapshot"))
    assert [n for n in names if n.startswith("train")] == ["train_epoch_1.5_0.3000.pth"]
    assert trainer.state.best_epoch == 1.5 and trainer.state.epoch == 4
    best = torch.load(tmp_path / "exp" / "snapshot" / "train_epoch_1.5_0.3000.pth", weights_only=True)
    assert best["epoch"] == 1.5


def test_resume_is_exact(toy_data_root, tmp_path, small_list):
    batch = small_list[1] // 2  # two iterations per epoch
    straight = train_sccan.main(_argv(toy_data_root, tmp_path / "a", small_list, epochs=2,
                                      batch_size=batch))
    first = train_sccan.main(_argv(toy_data_root, tmp_path / "b", small_list, epochs=2,
                                   batch_size=batch), interrupt_after_epochs=1)
    assert first.state.iteration == 2
    latest = str(tmp_path / "b" / "exp" / "snapshot" / "latest.pth")
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
    with pytest.raises(train_sccan.NonFiniteLossError, match="iteration 2"):
        train_sccan.main(_argv(toy_data_root, tmp_path, small_list, epochs=1, batch_size=4))


def _free_port():
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def _ddp_worker(rank, world_size, port, argv, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), SCCAN_FORCE_CPU="1")
    torch.set_num_threads(1)
    trainer = train_sccan.main(argv)
    torch.save({k: v.cpu() for k, v in trainer.model.state_dict().items()},
               os.path.join(out_dir, f"rank{rank}.pt"))


def test_ddp_two_processes_gloo_keep_identical_parameters(toy_data_root, tmp_path, small_list):
    argv = _argv(toy_data_root, tmp_path, small_list, epochs=1, batch_size=2)
    mp.spawn(_ddp_worker, args=(2, _free_port(), argv, str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    initial = torch.load(glob.glob(str(tmp_path / "exp" / "snapshot" / "final.pth"))[0],
                         weights_only=True)["state_dict"]
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(rank0[key], initial[key]), key


def test_toy_configs_load_and_mark_their_cost_cuts():
    from util.config import load_config
    folder = os.path.dirname(CONFIG)
    names = sorted(os.listdir(folder))
    assert names == ["toy_split0_resnet50.yaml", "toy_split0_resnet50_5s.yaml"]
    for name in names:
        cfg = load_config(os.path.join(folder, name))
        assert cfg.pretrained_backbone is False and cfg.data_root == "data/toy"
        assert cfg.list_root.startswith("data/toy") and cfg.save_path.startswith("exp/toy/")
        assert (cfg.train_h - 1) % 8 == 0 and cfg.feature_size % cfg.window_size == 0
        with open(os.path.join(folder, name)) as handle:
            assert "COST CUT" in handle.read()
    assert load_config(os.path.join(folder, names[1])).shot == 5
