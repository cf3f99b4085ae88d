"""The scripts with BAM's ensemble switched on (base_learner: True), on the toy dataset, with a
small stand-in for the base learner's checkpoint: training passes the base label, the plain test
scores the ensemble and the meta learner alone, ``--gfss`` runs the generalised test. The scores
are checked against pixel counts made here from the recorded outputs and the label files."""
import json
import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import evaluation.baselines
import experiment.models
import model.sccan
import test_sccan
import train_sccan
import util.gfss_dataset
from tests.support.toy_experiment import CONFIG, reduced_train_list, toy_opts

TOY_BASE_CLASSES = 15  # the toy dataset has PASCAL's folds: 15 base classes per fold
# PASCAL's fold 0, written out here rather than read from util.dataset.
NOVEL_CLASSES = [1, 2, 3, 4, 5]
BASE_CLASSES = list(range(6, 21))
IGNORE_LABEL = 255


class StandInBaseLearner(nn.Module):
    """A small head on layer4 plus a fixed seeded logit map. The random backbone's layer4 hardly
    varies across a toy image, so the head alone predicts one base class on every pixel; the map
    gives the stand-in background and several base classes in different places, as a trained
    base learner has, so the generalised scores and the ensemble's base term have something to
    count."""

    def __init__(self):
        super().__init__()
        # Its own generator: the global RNG, which builds the meta learner, is untouched.
        generator = torch.Generator().manual_seed(0)
        self.head = nn.Sequential(nn.Conv2d(2048, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                  nn.Conv2d(8, TOY_BASE_CLASSES + 1, 1))
        for parameter in self.head.parameters():
            parameter.data.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.head(features)  # (B, N+1, h, w)
        pattern = torch.randn(logits.shape[1:], generator=torch.Generator().manual_seed(1))
        pattern[0] += 1.0  # background then wins on about a third of the pixels
        return logits + pattern.to(logits)


@pytest.fixture
def stand_in_base_learner(monkeypatch):
    """load_base_learner without a PSPNet checkpoint: :class:`StandInBaseLearner`."""
    calls = []

    def load(cfg, backbone, state=None):
        calls.append(backbone)
        return StandInBaseLearner()

    monkeypatch.setattr(experiment.models, "load_base_learner", load)
    # train_sccan.py checks the base learner's file before it writes anything: there is none
    monkeypatch.setattr(train_sccan, "precheck_base_learner", lambda cfg: None)
    return calls


def _opts(toy_data_root, tmp_path, **overrides):
    return toy_opts(toy_data_root, str(tmp_path / "exp"), list_root=str(tmp_path / "fss"),
                    base_learner=True, **overrides)


def _record_ensemble_outputs(patch, context=lambda: None):
    """Every ensemble forward's (context(), EnsembleOutputs), in order: both tests call
    ensemble_outputs once per scored episode."""
    recorded = []
    original = model.sccan.SCCAN.ensemble_outputs

    def recording(self, *args, **kwargs):
        outputs = original(self, *args, **kwargs)
        recorded.append((context(), outputs))
        return outputs

    patch.setattr(model.sccan.SCCAN, "ensemble_outputs", recording)
    return recorded


def _read_label(data_root: str, path: str) -> np.ndarray:
    label = cv2.imread(os.path.join(data_root, path), cv2.IMREAD_GRAYSCALE)
    assert label is not None, path
    return label


def _scores_on_label(logits: torch.Tensor, label: np.ndarray) -> torch.Tensor:
    """Logits (1, C, h, w) resized, as the ori_resize protocol does, to the raw label padded to
    a square; the padding (all ignored) is cropped off -> (C, H, W) on the label's pixels."""
    height, width = label.shape
    side = max(height, width)
    resized = F.interpolate(logits.float(), size=(side, side), mode="bilinear", align_corners=True)
    return resized[0, :, :height, :width]


def _iou(intersection, union) -> np.ndarray:
    intersection, union = np.asarray(intersection, np.float64), np.asarray(union, np.float64)
    return np.divide(intersection, union, out=np.zeros_like(union), where=union > 0)


def _few_shot_class_iou(logits_per_episode, episodes, data_root) -> list:
    """Per novel class: foreground pixels shared by prediction and label over those in either,
    summed over the class's episodes (255 counts for nothing; a class without episodes is 0)."""
    intersection = dict.fromkeys(NOVEL_CLASSES, 0)
    union = dict.fromkeys(NOVEL_CLASSES, 0)
    for logits, episode in zip(logits_per_episode, episodes, strict=True):
        label = _read_label(data_root, episode["query"][1])
        scores = _scores_on_label(logits, label)
        predicted = (scores[1] > scores[0]).numpy()  # argmax, ties to background
        truth = label == episode["class_chosen"]
        counted = label != IGNORE_LABEL
        intersection[episode["class_chosen"]] += np.count_nonzero(predicted & truth & counted)
        union[episode["class_chosen"]] += np.count_nonzero((predicted | truth) & counted)
    return _iou([intersection[c] for c in NOVEL_CLASSES], [union[c] for c in NOVEL_CLASSES]).tolist()


def _generalised_class_iou(episodes, merge: str, merge_tau: float) -> np.ndarray:
    """IoU of classes 0..20 over generalised episodes (label (H, W), chosen novel class,
    EnsembleOutputs). Prediction per pixel: novel where softmax(final)_fg > merge_tau (with merge
    'base' only where the base learner's argmax is background), else the base argmax, whose
    index i stands for BASE_CLASSES[i - 1]. In the label, each base class is itself, the chosen
    class is the novel one, and background and the other novel classes are background."""
    intersection = np.zeros(len(NOVEL_CLASSES) + len(BASE_CLASSES) + 1)
    union = np.zeros_like(intersection)
    novel_index = len(BASE_CLASSES) + 1
    for label, chosen, outputs in episodes:
        base_argmax = _scores_on_label(outputs.base, label).argmax(0).numpy()
        novel = (_scores_on_label(outputs.final, label).softmax(0)[1] > merge_tau).numpy()
        if merge == "base":
            novel &= base_argmax == 0
        prediction = np.where(novel, novel_index, base_argmax)
        counted = label != IGNORE_LABEL
        background = ~np.isin(label, BASE_CLASSES + [chosen])
        for index, class_id, truth in [(0, 0, background), (novel_index, chosen, label == chosen)] + \
                [(i, c, label == c) for i, c in enumerate(BASE_CLASSES, start=1)]:
            predicted = prediction == index
            intersection[class_id] += np.count_nonzero(predicted & truth & counted)
            union[class_id] += np.count_nonzero((predicted | truth) & counted)
    return _iou(intersection, union)


def test_training_with_the_ensemble_passes_the_base_label(toy_data_root, tmp_path, stand_in_base_learner):
    train_list = str(tmp_path / "train_small.txt")
    reduced_train_list(toy_data_root, train_list)
    seen = []
    original_losses = model.sccan.SCCAN.losses

    def spy(self, output, y_m, y_b=None):
        seen.append(y_b)
        return original_losses(self, output, y_m, y_b)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model.sccan.SCCAN, "losses", spy)
        trainer = train_sccan.main(["--config", CONFIG, "--opts",
                                    *_opts(toy_data_root, tmp_path, train_list=train_list, epochs=1)])
    assert stand_in_base_learner and trainer.state.iteration > 0
    base_labels = [label for label in seen if label is not None]
    assert base_labels and base_labels[0].shape == (4, 33, 33)
    assert set(base_labels[0].unique().tolist()) <= set(range(TOY_BASE_CLASSES + 1)) | {255}


def test_plain_test_reports_the_ensemble_and_the_meta_learner(toy_data_root, tmp_path, stand_in_base_learner):
    # gram_merge and cls_merge start at [1, 0], which makes the ensemble's output softmax(meta):
    # the base learner has no say and both scores agree but for resizing. A trained cls_merge
    # adds the base learner's foreground to the background; at 0.02 it flips some of the
    # untrained meta learner's pixels (whose margins are a few hundredths), not all.
    original_build = evaluation.baselines.build_experiment_model

    def build_with_a_trained_merge(*args, **kwargs):
        built = original_build(*args, **kwargs)
        with torch.no_grad():
            built.cls_merge.weight.copy_(torch.tensor([1.0, 0.02]).view(1, 2, 1, 1))
        return built

    output, episode_file = str(tmp_path / "plain.json"), str(tmp_path / "episodes.json")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluation.baselines, "build_experiment_model", build_with_a_trained_merge)
        recorded = _record_ensemble_outputs(patch)
        summary = test_sccan.run(["--config", CONFIG, "--untrained", "--output", output,
                                  "--dump-episodes", episode_file, "--opts",
                                  *_opts(toy_data_root, tmp_path, test_num=4)])
    with open(episode_file) as handle:
        episodes = json.load(handle)["episodes"]
    assert len(episodes) == len(recorded) == 4
    ensemble = _few_shot_class_iou([outputs.final for _, outputs in recorded], episodes, toy_data_root)
    meta = _few_shot_class_iou([outputs.meta for _, outputs in recorded], episodes, toy_data_root)
    # Different enough that reporting one output under the other's name cannot pass.
    assert abs(np.mean(ensemble) - np.mean(meta)) > 0.01

    run = summary["runs"][0]
    assert list(run["outputs"]) == ["ensemble", "meta"]
    for name, class_iou in (("ensemble", ensemble), ("meta", meta)):
        reported = run["outputs"][name]
        assert reported["class_IoU"] == pytest.approx(class_iou, rel=1e-9, abs=1e-12), name
        assert reported["mIoU"] == pytest.approx(np.mean(class_iou), rel=1e-9, abs=1e-12), name
        assert reported["episodes"] == 4
    assert run["mIoU"] == pytest.approx(np.mean(ensemble), rel=1e-9, abs=1e-12)  # the headline
    with open(output) as handle:
        written = json.load(handle)["runs"][0]["outputs"]
    assert {name: scores["mIoU"] for name, scores in written.items()} == \
        {name: scores["mIoU"] for name, scores in run["outputs"].items()}


def test_gfss_reports_novel_base_and_total_miou(toy_data_root, tmp_path, stand_in_base_learner):
    # The untrained meta learner's foreground probability stays within a few hundredths of 0.5,
    # and the initial ensemble outputs probabilities, whose softmax never exceeds sigmoid(1) =
    # 0.73: at the config's merge_tau 0.9 no pixel would ever be novel.
    merge, merge_tau, test_num = "base", 0.5, 5
    output = str(tmp_path / "gfss.json")
    queries = []
    original_item = util.gfss_dataset.GFSSData.__getitem__

    def recording_item(self, index):
        item = original_item(self, index)
        queries.append((index, NOVEL_CLASSES[item[4][0]]))
        return item

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(util.gfss_dataset.GFSSData, "__getitem__", recording_item)
        # The loader draws the episode just before its forward (workers 0): the latest query.
        recorded = _record_ensemble_outputs(patch, lambda: queries[-1])
        summary = test_sccan.run(["--config", CONFIG, "--untrained", "--gfss", "--seeds", "2",
                                  "--output", output, "--opts",
                                  *_opts(toy_data_root, tmp_path, test_num=test_num, merge=merge,
                                         merge_tau=merge_tau)])
    assert summary["test"] == "gfss" and summary["merge"] == merge and len(summary["runs"]) == 2
    assert summary["novel_classes"] == NOVEL_CLASSES and summary["base_classes"] == BASE_CLASSES
    assert len(recorded) == 2 * test_num

    with open(os.path.join(toy_data_root, "val.txt")) as handle:
        label_paths = [line.split()[1] for line in handle if line.strip()]
    scored = []
    for number, run in enumerate(summary["runs"]):
        seed_episodes = recorded[number * test_num:(number + 1) * test_num]
        # Every val image is a query, in list order, each run from the first.
        assert [index for (index, _), _ in seed_episodes] == list(range(test_num))
        iou = _generalised_class_iou([(_read_label(toy_data_root, label_paths[index]), chosen, outputs)
                                      for (index, chosen), outputs in seed_episodes], merge, merge_tau)
        scored.append(iou)
        assert run["episodes"] == test_num
        assert run["class_IoU"] == pytest.approx(iou[1:].tolist(), rel=1e-9, abs=1e-12)
        assert run["background_IoU"] == pytest.approx(iou[0], rel=1e-9, abs=1e-12)
        for key, classes in (("mIoU_n", NOVEL_CLASSES), ("mIoU_b", BASE_CLASSES),
                             ("mIoU_t", NOVEL_CLASSES + BASE_CLASSES)):
            assert run[key] == pytest.approx(np.mean(iou[classes]), rel=1e-9, abs=1e-12), (number, key)
    # Novel and base pixels were both predicted right somewhere: no score is zero by default.
    assert max(iou[NOVEL_CLASSES].max() for iou in scored) > 0
    assert min(iou[BASE_CLASSES].max() for iou in scored) > 0
    for key in ("mIoU_n", "mIoU_b", "mIoU_t"):
        assert summary["mean"][key] == pytest.approx(np.mean([run[key] for run in summary["runs"]]))
    with open(output) as handle:
        written = json.load(handle)
    assert written["novel_classes"] == NOVEL_CLASSES
    assert [run["mIoU_t"] for run in written["runs"]] == [run["mIoU_t"] for run in summary["runs"]]


def test_gfss_needs_the_base_learner(toy_data_root, tmp_path):
    with pytest.raises(ValueError, match="base_learner: True"):
        test_sccan.run(["--config", CONFIG, "--untrained", "--gfss", "--opts",
                        *toy_opts(toy_data_root, str(tmp_path / "exp"), list_root=str(tmp_path / "fss"))])
    with pytest.raises(ValueError, match="--prior-baseline"):
        test_sccan.run(["--config", CONFIG, "--prior-baseline", "--gfss", "--opts",
                        *_opts(toy_data_root, tmp_path)])
