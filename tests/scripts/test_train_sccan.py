"""train_sccan.py on the toy dataset: smoke run, checkpoints, exact resume, DDP (gloo, CPU)."""
import os

import pytest
import torch

import train_sccan
from engine.loop import weighted_loss
from engine.optimization import build_optimizers, poly_learning_rate
from engine.trainer import NonFiniteLossError, Trainer, fast_optimizer_steps, sccan_loss_weights
from evaluation.protocol import EvaluationProtocol
from experiment import build as experiment_build
from experiment.build import build_dataset, build_experiment_model, build_val_loader
from model.checkpoint import load_model_weights
from tests.support.distributed import (averaged_reference_step, one_thread_as_in_each_rank, rank_results,
                                       recorded_training, train_on_two_processes)
from tests.support.toy_experiment import CONFIG, reduced_train_list, toy_opts
from util.cli import run_entry_point
from util.config import load_config


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
    assert checkpoint["epoch"] == 1 and checkpoint["config"]["train_h"] == 33
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

    def fake_run(protocol, model, loader, device, seed=None, observers=(), progress=False, context=None):
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


def test_ddp_two_processes_gloo_train_as_one_process_on_both_batches(toy_data_root, tmp_path, small_list):
    """Two gloo ranks draw disjoint halves of the training episodes and end with the same
    weights, which moved; their first step equals one process's step on both ranks' batches
    (each rank's loss on its own batch, their mean backward: DDP averages the gradients)."""
    argv = _argv(toy_data_root, tmp_path, small_list, epochs=1, batch_size=2)
    rank0, rank1 = train_on_two_processes("train_sccan", argv, tmp_path, record="engine.trainer")
    final = torch.load(tmp_path / "exp" / "snapshot" / "final_1shot.pth", weights_only=True)["state_dict"]
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(rank0[key], final[key]), key

    records = recorded_training(tmp_path)
    cfg = load_config(CONFIG, argv[argv.index("--opts") + 1:])
    episodes = len(build_dataset(cfg, "train"))
    assert episodes % 2 == 0  # else DistributedSampler repeats one episode to even the shares
    drawn = [set(record["drawn"]) for record in records]
    assert [len(record["drawn"]) for record in records] == [episodes // 2] * 2
    assert drawn[0].isdisjoint(drawn[1]) and drawn[0] | drawn[1] == set(range(episodes))

    before = records[0]["before"]
    for key in before:  # DDP starts every rank from rank 0's weights
        assert torch.equal(records[1]["before"][key], before[key]), key
    model = build_experiment_model(cfg, torch.device("cpu"))
    model.load_state_dict(before)
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    model.train()
    sgd, adamw = build_optimizers(model, cfg.base_lr, cfg.momentum, cfg.weight_decay, cfg.transformer_lr)
    fast_optimizer_steps(sgd, adamw)
    iterations = episodes // 2 // cfg.batch_size
    poly_learning_rate(sgd, cfg.base_lr, 1, cfg.epochs * iterations, power=cfg.power,
                       index_split=cfg.index_split, warmup=cfg.warmup, warmup_step=iterations // 2)
    averaged_reference_step(model, (sgd, adamw), records, lambda output, batch: weighted_loss(
        model.losses(output, batch["query_label"]), sccan_loss_weights(cfg)))
    after = records[0]["after"]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(after[key], value, rtol=1e-5, atol=1e-7, msg=key)
        assert torch.equal(records[1]["after"][key], after[key]), key
    moved = [key for key in trainable if not torch.equal(after[key], before[key])]
    assert len(moved) > len(trainable) // 2, (len(moved), len(trainable))
    assert all(not torch.equal(rank0[key], before[key]) for key in moved)  # and again at the end


def test_ddp_validation_is_split_across_ranks_and_equals_one_process(toy_data_root, tmp_path, small_list):
    """Two gloo ranks validate together: each scores half of the episodes, both end with the
    numbers that one process gets on every episode with the same weights (the end-of-epoch
    ``latest`` checkpoint holds the weights that were validated), both choose the same best
    checkpoint and stop early together; every rank's RNG states are in the checkpoint."""
    # Learning rates so small that the predictions, hence the scores, stay those of the first
    # validation: no epoch improves on it, and stop_interval 1 ends the 4-epoch run early.
    argv = _argv(toy_data_root, tmp_path, small_list, epochs=4, batch_size=4, evaluate=True,
                 SubEpoch_val=False, test_num=10, eval_feature_cache_mb=64, stop_interval=1,
                 base_lr=1e-12, transformer_lr=1e-12)
    train_on_two_processes("train_sccan", argv, tmp_path)
    rank0, rank1 = rank_results(tmp_path)
    assert [rank0["validation"]["episodes_here"], rank1["validation"]["episodes_here"]] == [5, 5]
    assert rank0["best"] == rank1["best"]
    # The first validation keeps a best checkpoint when its mIoU is above 0 (then the second,
    # no better, stops the run), else it already counts as an epoch without improvement.
    stopped_after = 2 if rank0["validation"]["mIoU"] > 0 else 1
    assert rank0["epochs"] == rank1["epochs"] == stopped_after
    latest = tmp_path / "exp" / "snapshot" / "latest_1shot.pth"
    checkpoint = torch.load(latest, weights_only=True)
    assert len(checkpoint["training_state"]["rng_by_rank"]) == 2

    cfg = load_config(CONFIG, argv[argv.index("--opts") + 1:])
    model = build_experiment_model(cfg, torch.device("cpu"))
    load_model_weights(model, str(latest))
    protocol = EvaluationProtocol.from_config(cfg, len(experiment_build.test_class_ids(cfg)), validation=True)
    with one_thread_as_in_each_rank():
        single = protocol.run(model, build_val_loader(cfg, build_dataset(cfg, "val")),
                              torch.device("cpu"), seed=protocol.seeds[0])
    assert single["episodes"] == single["episodes_here"] == 10
    for result in (rank0["validation"], rank1["validation"]):
        assert result["episodes"] == 10
        for key in ("mIoU", "FB_IoU", "pIoU", "class_IoU", "accuracy"):
            assert result[key] == single[key], key
        assert result["feature_cache"]["hits"] + result["feature_cache"]["misses"] == 20
    if single["mIoU"] > 0:  # a best checkpoint is kept only above 0
        assert rank0["best"]["miou"] == single["mIoU"] and os.path.exists(rank0["best"]["path"])


def test_resume_reads_the_checkpoint_on_the_cpu_whatever_the_training_device(toy_data_root, tmp_path,
                                                                             small_list, capsys):
    """On a GPU the checkpoint used to be read onto the training device: its RNG states became
    CUDA tensors, which the generators refuse. The meta device (no data at all) stands for the
    GPU here: nothing of the checkpoint may be read onto the training device."""
    train_sccan.main(_argv(toy_data_root, tmp_path / "a", small_list, epochs=1, batch_size=8))
    latest = str(tmp_path / "a" / "exp" / "snapshot" / "latest_1shot.pth")
    saved = torch.load(latest, weights_only=True)
    trainer = train_sccan.build_trainer(_argv(toy_data_root, tmp_path / "b", small_list, epochs=1,
                                              batch_size=8))
    trainer.device = torch.device("meta")
    torch.manual_seed(1234)
    trainer.resume(latest)
    assert torch.equal(torch.get_rng_state(), saved["training_state"]["rng"]["torch"])
    assert trainer.state.epoch == 1 and trainer.state.iteration == saved["training_state"]["iteration"]
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, saved["state_dict"][key]), key
    for optimizer in (trainer.sgd, trainer.adamw):
        for parameter, state in optimizer.state.items():
            assert all(value.device == parameter.device for name, value in state.items()
                       if torch.is_tensor(value) and name != "step")

    # A resume that changes keys shaping the run is refused before anything is written, unless
    # explicitly allowed (then the changes are logged).
    changed = _argv(toy_data_root, tmp_path / "c", small_list, epochs=2, batch_size=4, base_lr=0.5,
                    resume=latest)
    assert run_entry_point(train_sccan.main, changed) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the list-building bars
    assert error.startswith(f"error: resume: {latest} was trained with other values of keys that "
                            f"shape the run (base_lr 0.005 -> 0.5, epochs 1 -> 2, batch_size 8 -> 4)")
    assert "--allow-config-change" in error
    assert not os.path.exists(tmp_path / "c" / "exp" / "config_1shot.yaml")
    allowed = train_sccan.build_trainer(["--allow-config-change"] + changed)
    assert allowed.state.epoch == 1
    log = (tmp_path / "c" / "exp" / "train_1shot.log").read_text()
    assert "resuming" in log and "with changed keys (--allow-config-change): base_lr 0.005 -> 0.5" in log
