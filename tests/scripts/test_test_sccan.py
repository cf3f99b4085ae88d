"""test_sccan.py on the toy dataset: dump/replay, seeds, visualisation, the HSNet resize, the
configs' ignore/padding labels, the baselines."""
import json
import os
import re

import cv2
import numpy as np
import pytest

import test_sccan
from tests.support.files import page_references
from tests.support.toy_experiment import CONFIG, toy_opts
from util.baselines import PREDICTOR_CHOICES
from util.evaluation import EvaluationProtocol
from util.experiment import build_dataset


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
        assert json.load(handle)["runs"][0]["mIoU"] == replay["runs"][0]["mIoU"]


def test_seeds_visualisation_and_hsnet_resize(toy_data_root, tmp_path):
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
    hsnet = _run(toy_data_root, tmp_path, "--hsnet-resize", "--all-foreground",
                 "--output", str(tmp_path / "d.json"))
    assert hsnet["hsnet_resize"] and 0 < hsnet["runs"][0]["FB_IoU"] < 1


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
