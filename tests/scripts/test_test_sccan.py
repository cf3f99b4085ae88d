"""test_sccan.py on the toy dataset: dump/replay, seeds, visualisation, the scored target of each
protocol (default, HSNet resize, ori_resize False), the configs' ignore/padding labels, the
baselines."""
import datetime
import json
import os
import re

import cv2
import numpy as np
import pytest
import torch

import test_sccan
from evaluation.baselines import PREDICTOR_CHOICES
from evaluation.protocol import EvaluationProtocol
from experiment.build import build_dataset
from tests.support.files import page_references
from tests.support.toy_experiment import CONFIG, toy_opts


def _run(toy_data_root, tmp_path, *extra, **overrides):
    opts = toy_opts(toy_data_root, str(tmp_path / "exp"), list_root=str(tmp_path / "fss"),
                    test_num=8, **overrides)
    choices = {f"--{name}" for name in PREDICTOR_CHOICES}
    predictor = [] if choices & set(extra) else ["--untrained"]
    return test_sccan.run(["--config", CONFIG, *predictor, *extra, "--opts", *opts])


def test_dump_and_replay_give_identical_numbers(toy_data_root, tmp_path):
    episodes = str(tmp_path / "episodes.json")
    first = _run(toy_data_root, tmp_path, "--dump-episodes", episodes,
                 "--output", str(tmp_path / "a.json"))
    with open(episodes) as handle:
        dumped = json.load(handle)
    assert len(dumped["episodes"]) == 8 and dumped["meta"]["seed"] == 321
    replay = _run(toy_data_root, tmp_path, "--episodes-from", episodes,
                  "--output", str(tmp_path / "b.json"))
    assert replay["test_num"] == 8
    for key in ("mIoU", "FB_IoU", "pIoU", "class_IoU"):
        assert first["runs"][0][key] == replay["runs"][0][key], key
    with open(tmp_path / "b.json") as handle:
        written = json.load(handle)
    assert written["runs"][0]["mIoU"] == replay["runs"][0]["mIoU"]
    # How the result was produced travels with it: the config as resolved after --opts, the
    # overrides, the predictor, the replayed file, the torch version and the finishing time.
    assert written["config_values"]["test_num"] == 8 and written["config_values"]["split"] == 0
    assert written["config_values"]["data_root"] == toy_data_root
    assert written["opts"][written["opts"].index("test_num") + 1] == "8"
    assert written["predictor"] == "untrained" and written["episodes_from"] == episodes
    assert first["episodes_from"] is None and written["torch"] == torch.__version__
    assert datetime.datetime.fromisoformat(written["finished_at"]).tzinfo is not None


def test_seeds_and_visualisation(toy_data_root, tmp_path):
    summary = _run(toy_data_root, tmp_path, "--seeds", "2", "--save-vis", str(tmp_path / "vis"),
                   "--all-foreground", "--output", str(tmp_path / "c.json"))
    assert [run["seed"] for run in summary["runs"]] == [321, 322]
    assert set(summary["mean"]) == set(summary["std"]) == {"mIoU", "FB_IoU", "pIoU"}
    for key in ("mIoU", "FB_IoU", "pIoU"):  # the sample mean and std of the two seeds' runs
        values = np.array([run[key] for run in summary["runs"]])
        assert values[0] != values[1]  # the seeds drew other episodes
        assert summary["mean"][key] == pytest.approx(values.mean(), abs=1e-12)
        assert summary["std"][key] == pytest.approx(values.std(ddof=1), abs=1e-12)
    pictures = sorted(name for name in os.listdir(tmp_path / "vis") if name.endswith(".png"))
    assert len(pictures) == 8 and os.path.isfile(tmp_path / "vis" / "index.html")
    names = [re.fullmatch(r"episode_(\d{5})_class(\d+)_iou(\d\.\d{3})\.png", name) for name in pictures]
    assert all(names) and [int(name.group(1)) for name in names] == list(range(8))
    assert {int(name.group(2)) for name in names} <= set(summary["class_ids"])
    references = page_references(str(tmp_path / "vis" / "index.html"))
    assert {reference for reference in references if reference.endswith(".png")} == set(pictures)
    assert all(os.path.isfile(tmp_path / "vis" / reference) for reference in references)
    # the per-class chart beside the JSON, with the seeds' spread
    chart = cv2.imread(str(tmp_path / "c.png"))
    assert chart is not None and chart.shape[1] >= 5 * 56


# At least 8e-4 from every i / (n - 1) with n <= 300 (toy images are 150-300 px, inputs 33): no
# pixel lies on the fence, where float rounding rather than the protocol would decide.
RAMP_THRESHOLD = 0.49916
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255


class CoordinateRamp:
    """A predictor whose foreground logit rises linearly from 0 to 1 across the input frame,
    down the rows on even episodes and along the columns on odd ones (portrait and landscape
    queries differ along one axis each), minus RAMP_THRESHOLD; background 0. Bilinear resizing
    with aligned corners keeps a linear ramp exact, so wherever the protocol scores the logits,
    at h x w, the argmax is foreground where i / (h - 1) (or j / (w - 1)) > RAMP_THRESHOLD: the
    scores tell the scored size and frame apart. It keeps the query inputs it was given."""

    def __init__(self):
        self.queries = []

    def __call__(self, x, s_x, s_y):
        along_rows = len(self.queries) % 2 == 0
        self.queries.append(x.clone())
        height, width = x.shape[-2:]
        ramp = (torch.linspace(0, 1, height).view(-1, 1).expand(height, width) if along_rows
                else torch.linspace(0, 1, width).view(1, -1).expand(height, width))
        return torch.stack([torch.zeros_like(ramp), ramp - RAMP_THRESHOLD]).expand(x.shape[0], -1, -1, -1)


def ramp_foreground(height: int, width: int, along_rows: bool) -> np.ndarray:
    ramp = np.broadcast_to(np.arange(height)[:, None] / (height - 1) if along_rows
                           else np.arange(width)[None, :] / (width - 1), (height, width))
    assert np.abs(ramp - RAMP_THRESHOLD).min() > 1e-5  # off the fence (see RAMP_THRESHOLD)
    return ramp > RAMP_THRESHOLD


def binary_query_label(episode) -> np.ndarray:
    label = cv2.imread(episode["query"][1], cv2.IMREAD_GRAYSCALE).astype(np.int64)
    return np.where(label == 255, 255, (label == episode["class_chosen"]).astype(np.int64))


def padded_to_square(label: np.ndarray) -> np.ndarray:
    canvas = np.full((max(label.shape),) * 2, 255)
    canvas[:label.shape[0], :label.shape[1]] = label
    return canvas


def resized_to_input(label: np.ndarray, size: int = 33) -> np.ndarray:
    """The label as the validation resize places it in the network input: the longer side to
    ``size``, each side then floored to a multiple of 8 (33 -> 32), top-left on a 255 canvas."""
    height, width = label.shape
    longer = max(height, width)
    new_height, new_width = (int(side * size / longer) // 8 * 8 for side in (height, width))
    canvas = np.full((size, size), 255)
    canvas[:new_height, :new_width] = cv2.resize(label.astype(np.uint8), (new_width, new_height),
                                                 interpolation=cv2.INTER_NEAREST)
    return canvas


def ramp_scores(episodes, class_ids, target_of) -> dict:
    """mIoU, FB-IoU, pIoU and class IoU of the ramp's prediction against ``target_of(binary raw
    label)`` of every episode, counted pixel by pixel."""
    intersection, union = np.zeros(2), np.zeros(2)
    class_intersection, class_union = np.zeros(len(class_ids)), np.zeros(len(class_ids))
    for number, episode in enumerate(episodes):
        target = target_of(binary_query_label(episode))
        foreground = ramp_foreground(*target.shape, along_rows=number % 2 == 0)
        counted = target != 255
        for value, predicted in ((0, ~foreground), (1, foreground)):
            intersection[value] += np.sum(counted & predicted & (target == value))
            union[value] += np.sum(counted & (predicted | (target == value)))
        index = class_ids.index(episode["class_chosen"])
        class_intersection[index] += np.sum(counted & foreground & (target == 1))
        class_union[index] += np.sum(counted & (foreground | (target == 1)))
    class_iou = class_intersection / (class_union + 1e-10)
    iou = intersection / (union + 1e-10)
    return dict(mIoU=class_iou.mean(), FB_IoU=iou.mean(), pIoU=iou[1], class_IoU=list(class_iou))


def assert_scores(summary, expected):
    run = summary["runs"][0]
    for key in ("mIoU", "FB_IoU", "pIoU", "class_IoU"):
        assert run[key] == pytest.approx(expected[key], abs=1e-12), key


@pytest.fixture(scope="module")
def ramp_runs(toy_data_root, tmp_path_factory):
    """test_sccan.py scoring the coordinate ramp on the same 8 episodes under the default
    protocol, --hsnet-resize and ori_resize False: ({name: (summary, ramp)}, episodes)."""
    folder = tmp_path_factory.mktemp("ramp")
    episodes = str(folder / "episodes.json")
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        for name, extra, overrides in (("default", ["--dump-episodes", episodes], {}),
                                       ("hsnet", ["--hsnet-resize", "--episodes-from", episodes], {}),
                                       ("input", ["--episodes-from", episodes], {"ori_resize": False})):
            ramp = CoordinateRamp()
            patch.setattr(test_sccan, "build_predictor", lambda *args, ramp=ramp: (ramp, "coordinate ramp"))
            runs[name] = _run(toy_data_root, folder, "--output", str(folder / f"{name}.json"), *extra,
                              **overrides), ramp
    with open(episodes) as handle:
        return runs, json.load(handle)["episodes"]


def test_default_protocol_scores_against_the_label_padded_to_a_square(ramp_runs):
    runs, episodes = ramp_runs
    summary, _ = runs["default"]
    assert_scores(summary, ramp_scores(episodes, summary["class_ids"], padded_to_square))


def test_hsnet_resize_stretches_the_query_and_scores_against_the_unpadded_label(ramp_runs):
    runs, episodes = ramp_runs
    summary, ramp = runs["hsnet"]
    assert summary["hsnet_resize"]
    assert_scores(summary, ramp_scores(episodes, summary["class_ids"], lambda label: label))
    # toy images are oblong: the unpadded label gives other scores than the padded square
    assert summary["runs"][0]["mIoU"] != runs["default"][0]["runs"][0]["mIoU"]
    assert len(ramp.queries) == len(episodes) == 8
    for episode, query, default_query in zip(episodes, ramp.queries, runs["default"][1].queries):
        image = cv2.cvtColor(cv2.imread(episode["query"][0]), cv2.COLOR_BGR2RGB).astype(np.float32)
        stretched = cv2.resize(image, (33, 33), interpolation=cv2.INTER_LINEAR)  # aspect ratio not kept
        expected = torch.from_numpy((stretched - IMAGENET_MEAN) / IMAGENET_STD).permute(2, 0, 1).float()
        assert torch.allclose(query[0], expected, atol=1e-4)
        assert not torch.allclose(default_query[0], expected, atol=1e-2)


def test_ori_resize_false_scores_against_the_input_size_label(ramp_runs):
    runs, episodes = ramp_runs
    summary, _ = runs["input"]
    assert_scores(summary, ramp_scores(episodes, summary["class_ids"], resized_to_input))
    assert summary["runs"][0]["mIoU"] != runs["default"][0]["runs"][0]["mIoU"]


def test_scripts_pass_the_configs_ignore_and_padding_labels(val_config, toy_data_root, tmp_path,
                                                              monkeypatch):
    cfg = val_config.copy()
    cfg.padding_label, cfg.ignore_label = 7, 9
    dataset = build_dataset(cfg, "train", show_progress=False)
    # toy images scaled by 0.32-0.65 are smaller than the crop, so the crop pads the label
    import random
    random.seed(0)
    labels = [dataset[index][1] for index in range(4)]
    assert any((label == 7).any() for label in labels)
    seen = []
    monkeypatch.setattr(EvaluationProtocol, "run", lambda protocol, *a, **k: seen.append(protocol.ignore_label)
                        or {"mIoU": 0.0, "FB_IoU": 0.0, "pIoU": 0.0, "class_IoU": [0.0] * 5, "episodes": 1,
                            "seconds": 0.0})
    opts = toy_opts(toy_data_root, str(tmp_path / "exp"), list_root=str(tmp_path / "fss"), ignore_label=9)
    test_sccan.run(["--config", CONFIG, "--all-foreground", "--output", str(tmp_path / "x.json"),
                    "--opts", *opts])
    assert seen == [9]


def test_missing_weights_are_a_clear_error(toy_data_root, tmp_path):
    opts = toy_opts(toy_data_root, str(tmp_path / "exp"), list_root=str(tmp_path / "fss"))
    with pytest.raises(FileNotFoundError, match="final_1shot.pth"):
        test_sccan.run(["--config", CONFIG, "--opts", *opts])


def test_prior_baseline_matches_the_support_without_learned_weights(toy_data_root, tmp_path):
    episodes = str(tmp_path / "episodes.json")
    # at 65 px (the layer4 grid of 33 px, 5x5, is too coarse for the prior to place objects)
    prior = _run(toy_data_root, tmp_path, "--prior-baseline", "--dump-episodes", episodes,
                 "--output", str(tmp_path / "prior.json"), val_size=65)
    assert prior["weights"] == "training-free prior baseline"
    everything = _run(toy_data_root, tmp_path, "--all-foreground", "--episodes-from", episodes,
                      "--output", str(tmp_path / "all.json"), val_size=65)
    # On the toy data the calibrated random backbone's prior finds the support's object among
    # the others: far above labelling everything foreground on the same episodes.
    assert prior["runs"][0]["mIoU"] > everything["runs"][0]["mIoU"] + 0.2
