"""train_base.py on the toy dataset: the loss falls, best.pth is BAM's format and loads strict into
PSPNet, resume is exact, errors are one line."""
import os
import re

import numpy as np
import pytest
import torch

import train_base
import engine.base_trainer as base_trainer
from engine.optimization import poly_learning_rate
from experiment.build import build_base_dataset
from model.checkpoint import load_model_weights
from model.pspnet import PSPNet
from tests.support.distributed import (averaged_reference_step, one_thread_as_in_each_rank, rank_results,
                                       recorded_training, train_on_two_processes)
from tests.support.toy_experiment import BASE_CONFIG
from util.cli import run_entry_point
from util.config import load_config


@pytest.fixture(scope="module")
def small_list(toy_data_root, tmp_path_factory):
    """The first 8 training images (4 batches of 2)."""
    path = str(tmp_path_factory.mktemp("base_lists") / "train_small.txt")
    with open(os.path.join(toy_data_root, "train.txt")) as handle:
        lines = handle.readlines()[:8]
    with open(path, "w") as handle:
        handle.writelines(lines)
    return path


def _argv(toy_data_root, out, small_list, flags=(), **overrides):
    """A tiny run: 33 px crops, batch 2, validation on the same 8 images."""
    values = dict(data_root=toy_data_root, train_list=small_list, val_list=small_list,
                  base_save_path=str(out / "exp"), base_learner_weights=str(out / "best.pth"),
                  train_h=33, train_w=33, val_size=33, batch_size=2, epochs=1, workers=0,
                  print_freq=1, base_lr=0.01)
    values.update(overrides)
    opts = []
    for key, value in values.items():
        opts += [key, repr(value) if isinstance(value, str) else str(value)]
    return ["--config", BASE_CONFIG, *flags, "--opts", *opts]


def _parameters(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _base_validation_miou(model, weights, dataset, classes=16):
    """BAM's base validation recomputed apart from the trainer: the weights' predictions at the
    validation size, a confusion matrix of every scored pixel (label 255 left out) over
    background + base classes, IoU per class over the whole list, the mean over all classes
    (a class absent from both prediction and label counts as 0)."""
    load_model_weights(model, weights)
    confusion = np.zeros(classes * classes, dtype=np.int64)
    with torch.no_grad():
        for image, label in dataset:
            prediction = model(image[None]).argmax(1)[0].numpy()
            label = label.numpy()
            assert prediction.shape == label.shape  # scored at the label's resolution, no resize
            scored = label != 255
            confusion += np.bincount(label[scored] * classes + prediction[scored], minlength=classes * classes)
    confusion = confusion.reshape(classes, classes)
    intersection = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    return float(np.mean(intersection / (union + 1e-10)))


def _fingerprint(state_dict):
    """Every tensor of up to 64k values (BatchNorm statistics and affine, biases, the last
    classifier): enough to tell apart the weights of two epochs without keeping six models."""
    return {key: value.clone() for key, value in state_dict.items() if value.numel() <= 65536}


def test_training_lowers_the_loss_and_writes_bam_best(toy_data_root, tmp_path, small_list, monkeypatch):
    losses = []
    original = train_base.BaseTrainer.train_epoch

    def record(self, epoch):
        losses.append(original(self, epoch))
        return losses[-1]

    # The same two images every epoch, scaled down to about the crop size: the loss measures
    # fitting, not the draw of the crops.
    two_images = str(tmp_path / "two.txt")
    with open(small_list) as source, open(two_images, "w") as handle:
        handle.writelines(source.readlines()[:2])
    monkeypatch.setattr(train_base.BaseTrainer, "train_epoch", record)
    argv = _argv(toy_data_root, tmp_path, small_list, flags=["--viz"], train_list=two_images, epochs=6,
                 evaluate=True, scale_min=0.12, scale_max=0.13, base_lr=0.0025)
    # Each epoch's validated weights are its latest.pth (written right after the validation):
    # scored here apart from the trainer, next to the mIoU the trainer reported for that epoch.
    validation_set = build_base_dataset(load_config(BASE_CONFIG, argv[argv.index("--opts") + 1:]), "val")
    # Built before the run: its random initialisation must not draw from the training's generator.
    scorer = PSPNet(layers=50, classes=16, pretrained_backbone=False).eval()
    reported, recomputed, fingerprints = [], [], []
    save = train_base.BaseTrainer.save

    def save_and_rescore(self, name, epoch):
        path = save(self, name, epoch)
        if name == "latest.pth":
            checkpoint = torch.load(path, weights_only=True, mmap=True)
            reported.append(self.last_validation["mIoU"])
            recomputed.append(_base_validation_miou(scorer, checkpoint, validation_set))
            fingerprints.append(_fingerprint(checkpoint["state_dict"]))
        return path

    monkeypatch.setattr(train_base.BaseTrainer, "save", save_and_rescore)
    trainer = train_base.main(argv)
    assert losses[-1] < 0.5 * losses[0], losses
    assert len(recomputed) == 6
    for epoch in range(6):
        assert reported[epoch] == pytest.approx(recomputed[epoch], abs=1e-12), (epoch, reported, recomputed)
    with open(tmp_path / "exp" / "train.log") as handle:
        logged = [float(value) for value in re.findall(r"val epoch \d+: mIoU (\d\.\d+)", handle.read())]
    assert logged == [round(value, 4) for value in recomputed]
    # best.pth: the first epoch of the highest mIoU (only a strictly higher one replaces it);
    # the run's state and final.pth record that epoch and its score.
    best_epoch = int(np.argmax(recomputed))
    assert recomputed[best_epoch] > 0
    best = torch.load(tmp_path / "best.pth", weights_only=True)
    assert set(best) == {"epoch", "state_dict", "optimizer"}  # BAM's format, nothing more
    assert len(best["optimizer"]["param_groups"]) == 3
    assert best["epoch"] == best_epoch
    kept = _fingerprint(best["state_dict"])
    for epoch, fingerprint in enumerate(fingerprints):
        same = all(torch.equal(kept[key], fingerprint[key]) for key in fingerprint)
        assert same == (epoch == best_epoch), (epoch, best_epoch, recomputed)
    final = torch.load(tmp_path / "exp" / "snapshot" / "final.pth", weights_only=True, mmap=True)["training_state"]
    for state in (trainer.state.to_dict(), final):
        assert state["best_epoch"] == best_epoch and state["best_path"] == str(tmp_path / "best.pth")
        assert state["best_miou"] == pytest.approx(recomputed[best_epoch], abs=1e-12)
    model = PSPNet(layers=50, classes=16, pretrained_backbone=False)
    load_model_weights(model, str(tmp_path / "best.pth"))
    snapshot = tmp_path / "exp" / "snapshot"
    assert {"latest.pth", "final.pth"} <= set(os.listdir(snapshot))
    assert (tmp_path / "exp" / "config.yaml").exists() and (tmp_path / "exp" / "train.log").exists()
    assert any(name.startswith("events.out") for name in os.listdir(tmp_path / "exp" / "tensorboard"))
    assert trainer.state.iteration == 6
    # index_split 0: the encoder at the base learning rate, ppm and cls at 10x
    model = trainer.model
    assert [len(group["params"]) for group in trainer.optimizer.param_groups] == \
        [len(list(module.parameters())) for module in (model.encoder, model.ppm, model.cls)]
    rates = [group["lr"] for group in trainer.optimizer.param_groups]
    assert rates[1] == pytest.approx(10 * rates[0]) and rates[2] == pytest.approx(10 * rates[0])


def test_resume_is_exact(toy_data_root, tmp_path, small_list):
    straight = train_base.main(_argv(toy_data_root, tmp_path / "a", small_list, epochs=2))
    first = train_base.build_trainer(_argv(toy_data_root, tmp_path / "b", small_list, epochs=2))
    first.epoch_end_callbacks.append(lambda trainer: trainer.state.epoch >= 1)
    first.fit()
    assert not (tmp_path / "b" / "exp" / "snapshot" / "final.pth").exists()
    latest = str(tmp_path / "b" / "exp" / "snapshot" / "latest.pth")
    resumed = train_base.main(_argv(toy_data_root, tmp_path / "b", small_list, epochs=2, resume=latest))
    assert straight.state.iteration == resumed.state.iteration == 8
    reference, result = _parameters(straight), _parameters(resumed)
    for key in reference:
        assert torch.equal(reference[key], result[key]), key


def test_resume_reads_the_checkpoint_on_the_cpu_whatever_the_training_device(toy_data_root, tmp_path,
                                                                             small_list):
    """The meta device stands for a GPU: nothing of the checkpoint may be read onto it (the RNG
    states must stay CPU byte tensors)."""
    train_base.main(_argv(toy_data_root, tmp_path / "a", small_list, epochs=1))
    latest = str(tmp_path / "a" / "exp" / "snapshot" / "latest.pth")
    saved = torch.load(latest, weights_only=True)
    trainer = train_base.build_trainer(_argv(toy_data_root, tmp_path / "b", small_list, epochs=1))
    trainer.device = torch.device("meta")
    torch.manual_seed(1234)
    trainer.resume(latest)
    assert torch.equal(torch.get_rng_state(), saved["training_state"]["rng"]["torch"])
    assert trainer.state.epoch == 1
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, saved["state_dict"][key]), key


def test_amp_bf16_autocasts_training_and_validation(toy_data_root, tmp_path, small_list, monkeypatch):
    seen = []
    build = base_trainer.build_base_model

    def build_with_hook(cfg):
        model = build(cfg)
        model.cls.register_forward_hook(
            lambda module, inputs, output: seen.append((module.training, output.dtype)))
        return model

    monkeypatch.setattr(base_trainer, "build_base_model", build_with_hook)
    two_images = str(tmp_path / "two.txt")  # one bf16 iteration and two validation images
    with open(small_list) as source, open(two_images, "w") as handle:
        handle.writelines(source.readlines()[:2])
    trainer = train_base.main(_argv(toy_data_root, tmp_path, small_list, epochs=1, evaluate=True,
                                    amp="bf16", train_list=two_images, val_list=two_images))
    assert (True, torch.bfloat16) in seen and (False, torch.bfloat16) in seen
    assert torch.float32 not in {dtype for _, dtype in seen}
    assert all(parameter.dtype == torch.float32 for parameter in trainer.model.parameters())
    assert trainer.last_validation is not None and 0 <= trainer.last_validation["mIoU"] <= 1


def test_errors_are_one_line(toy_data_root, tmp_path, small_list, capsys):
    argv = _argv(toy_data_root, tmp_path, small_list, data_root=str(tmp_path / "missing"))
    assert run_entry_point(train_base.main, argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: data_root") and "\n" not in error
    # a batch of one image cannot train the pyramid pooling's BatchNorm
    assert run_entry_point(train_base.main, _argv(toy_data_root, tmp_path / "one", small_list, batch_size=1)) == 2
    error = capsys.readouterr().err.strip()
    assert error == ("error: config key batch_size: train_base.py needs at least 2 images per process "
                     "(PSPNet's 1x1 pyramid-pooling BatchNorm), got 1")
    assert not (tmp_path / "one").exists()
    # an existing base learner is not replaced without --overwrite
    (tmp_path / "best.pth").write_bytes(b"")
    assert run_entry_point(train_base.main, _argv(toy_data_root, tmp_path, small_list)) == 2
    error = capsys.readouterr().err.strip()
    assert "best.pth already holds a base learner" in error and "--overwrite" in error
    assert "\n" not in error
    (tmp_path / "exp" / "snapshot").mkdir(parents=True)
    (tmp_path / "exp" / "snapshot" / "latest.pth").write_bytes(b"")
    assert run_entry_point(train_base.main, _argv(toy_data_root, tmp_path, small_list)) == 2
    error = capsys.readouterr().err.strip()
    assert "already holds a base learner run (latest.pth)" in error and "--opts resume" in error
    # BAM's best.pth cannot be resumed exactly, a bare state_dict not at all
    torch.save(PSPNet(layers=50, classes=16, pretrained_backbone=False).state_dict(), tmp_path / "bare.pth")
    argv = _argv(toy_data_root, tmp_path / "c", small_list, resume=str(tmp_path / "bare.pth"))
    assert run_entry_point(train_base.main, argv) == 2
    error = capsys.readouterr().err.strip()
    assert "bare state_dict" in error and "latest.pth" in error and "\n" not in error


def _is_statistic(key: str) -> bool:
    return "running_" in key or "num_batches_tracked" in key


def test_ddp_two_processes_gloo_train_as_one_process_on_both_batches(toy_data_root, tmp_path, small_list):
    """Two gloo ranks draw disjoint halves of the 8 images and end with the same weights, which
    moved; their first step equals one process's step on both ranks' batches (each rank's loss
    on its own batch, their mean backward: DDP averages the gradients); both validate."""
    argv = _argv(toy_data_root, tmp_path, small_list, epochs=1, evaluate=True)
    rank0, rank1 = train_on_two_processes("train_base", argv, tmp_path, record="engine.base_trainer")
    final = torch.load(tmp_path / "exp" / "snapshot" / "final.pth", weights_only=True)["state_dict"]
    for key in rank0:
        assert torch.equal(rank0[key], final[key]), key
        # BatchNorm statistics are per process (no SyncBN on the CPU); the weights are shared.
        if not _is_statistic(key):
            assert torch.equal(rank0[key], rank1[key]), key

    records = recorded_training(tmp_path)
    drawn = [set(record["drawn"]) for record in records]
    assert [len(record["drawn"]) for record in records] == [4, 4]
    assert drawn[0].isdisjoint(drawn[1]) and drawn[0] | drawn[1] == set(range(8))
    cfg = load_config(BASE_CONFIG, argv[argv.index("--opts") + 1:])
    before = records[0]["before"]
    model = base_trainer.build_base_model(cfg)
    model.load_state_dict(before)
    model.train()
    optimizer = base_trainer.build_base_optimizer(model, cfg)
    iterations = 4 // cfg.batch_size
    poly_learning_rate(optimizer, cfg.base_lr, 1, cfg.epochs * iterations, power=cfg.power,
                       index_split=cfg.index_split, warmup=cfg.warmup, warmup_step=iterations // 2)
    averaged_reference_step(model, (optimizer,), records, lambda output, batch: output[1])
    after = records[0]["after"]
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    for key, value in model.state_dict().items():
        if not _is_statistic(key):
            assert torch.equal(records[1]["before"][key], before[key]), key
            torch.testing.assert_close(after[key], value, rtol=1e-5, atol=1e-7, msg=key)
            assert torch.equal(records[1]["after"][key], after[key]), key
    moved = [key for key in trainable if not torch.equal(after[key], before[key])]
    assert len(moved) == len(trainable), sorted(set(trainable) - set(moved))[:5]
    assert all(not torch.equal(rank0[key], before[key]) for key in moved)  # and again at the end
    # Both ranks validated (each a share of the 8 images, sums added up) and agree; the numbers
    # are those of an independent single-process pass over all 8 images with the validated
    # weights (the end-of-epoch checkpoint).
    results = rank_results(tmp_path)
    assert results[0] == results[1] and results[0]["best"]["path"] == str(tmp_path / "best.pth")
    scorer = PSPNet(layers=50, classes=16, pretrained_backbone=False).eval()
    with one_thread_as_in_each_rank():
        expected = _base_validation_miou(scorer, str(tmp_path / "exp" / "snapshot" / "latest.pth"),
                                         build_base_dataset(cfg, "val"))
    assert results[0]["validation"]["mIoU"] == pytest.approx(expected, abs=1e-12)
    assert (tmp_path / "best.pth").exists() == (expected > 0)
