"""The scripts with BAM's ensemble switched on (base_learner: True), on the toy dataset, with a
small stand-in for the base learner's checkpoint: training passes the base label, the plain test
scores the ensemble and the meta learner alone, ``--gfss`` runs the generalised test."""
import json

import pytest
import torch
import torch.nn as nn

import model.builder
import test_sccan
import train_sccan
from tests.support.toy_experiment import CONFIG, reduced_train_list, toy_opts

TOY_BASE_CLASSES = 15  # the toy dataset has PASCAL's folds: 15 base classes per fold


@pytest.fixture
def stand_in_base_learner(monkeypatch):
    """load_base_learner without a PSPNet checkpoint: a small head from its own generator (the
    global RNG, which builds the meta learner, is untouched)."""
    calls = []

    def load(cfg, backbone):
        calls.append(backbone)
        generator = torch.Generator().manual_seed(0)
        head = nn.Sequential(nn.Conv2d(2048, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                             nn.Conv2d(8, TOY_BASE_CLASSES + 1, 1))
        for parameter in head.parameters():
            parameter.data.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
        return head

    monkeypatch.setattr(model.builder, "load_base_learner", load)
    return calls


def _opts(toy_data_root, tmp_path, **overrides):
    return toy_opts(toy_data_root, str(tmp_path / "exp"), list_root=str(tmp_path / "fss"),
                    base_learner=True, **overrides)


def test_training_with_the_ensemble_passes_the_base_label(toy_data_root, tmp_path, stand_in_base_learner):
    train_list = str(tmp_path / "train_small.txt")
    reduced_train_list(toy_data_root, train_list)
    seen = []
    original_forward = model.sccan.SCCAN.forward

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("y_b"))
        return original_forward(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model.sccan.SCCAN, "forward", spy)
        trainer = train_sccan.main(["--config", CONFIG, "--opts",
                                    *_opts(toy_data_root, tmp_path, train_list=train_list, epochs=1)])
    assert stand_in_base_learner and trainer.state.iteration > 0
    base_labels = [label for label in seen if label is not None]
    assert base_labels and base_labels[0].shape == (4, 33, 33)
    assert set(base_labels[0].unique().tolist()) <= set(range(TOY_BASE_CLASSES + 1)) | {255}


def test_plain_test_reports_the_ensemble_and_the_meta_learner(toy_data_root, tmp_path, stand_in_base_learner):
    output = str(tmp_path / "plain.json")
    summary = test_sccan.run(["--config", CONFIG, "--untrained", "--output", output, "--opts",
                              *_opts(toy_data_root, tmp_path, test_num=4)])
    run = summary["runs"][0]
    assert set(run["outputs"]) == {"ensemble", "meta"}
    assert run["mIoU"] == run["outputs"]["ensemble"]["mIoU"]
    assert run["outputs"]["meta"]["episodes"] == 4
    with open(output) as handle:
        assert set(json.load(handle)["runs"][0]["outputs"]) == {"ensemble", "meta"}


def test_gfss_reports_novel_base_and_total_miou(toy_data_root, tmp_path, stand_in_base_learner):
    output = str(tmp_path / "gfss.json")
    summary = test_sccan.run(["--config", CONFIG, "--untrained", "--gfss", "--seeds", "2", "--output", output,
                              "--opts", *_opts(toy_data_root, tmp_path, test_num=5, merge="base")])
    assert summary["test"] == "gfss" and summary["merge"] == "base" and len(summary["runs"]) == 2
    run = summary["runs"][0]
    assert run["episodes"] == 5 and len(run["class_IoU"]) == 20
    for key in ("mIoU_n", "mIoU_b", "mIoU_t"):
        assert 0.0 <= run[key] <= 1.0 and key in summary["mean"]
    with open(output) as handle:
        assert json.load(handle)["novel_classes"] == [1, 2, 3, 4, 5]


def test_gfss_needs_the_base_learner(toy_data_root, tmp_path):
    with pytest.raises(ValueError, match="base_learner: True"):
        test_sccan.run(["--config", CONFIG, "--untrained", "--gfss", "--opts",
                        *toy_opts(toy_data_root, str(tmp_path / "exp"), list_root=str(tmp_path / "fss"))])
    with pytest.raises(ValueError, match="--prior-baseline"):
        test_sccan.run(["--config", CONFIG, "--prior-baseline", "--gfss", "--opts",
                        *_opts(toy_data_root, tmp_path)])
