"""The shared evaluator and test_sccan.py: protocol passes, determinism, dump/replay, options."""
import json
import os

import pytest
import torch

import test_sccan
from tests.support.toy_experiment import CONFIG, toy_opts
from util.baselines import PREDICTOR_CHOICES, AllForeground, PreviousSupport
from util.episodes import EpisodeRecorder, RecordingDataset
from util.evaluation import EvaluationProtocol, evaluation_passes
from util.experiment import build_dataset, build_val_loader
from util.config import load_config


@pytest.mark.parametrize("test_num,length,batch,expected", [
    (1000, 364, 1, 3), (1000, 445, 1, 3), (1000, 592, 1, 2), (1000, 336, 1, 3),
    (4000, 4000, 1, 2), (100, 101, 1, 1), (300, 52, 1, 6)])
def test_evaluation_passes(test_num, length, batch, expected):
    assert evaluation_passes(test_num, length, batch) == expected


def test_evaluation_passes_rejects_tiny_loader():
    with pytest.raises(ValueError, match="too few episodes"):
        evaluation_passes(10, 1, 1)


class CountingLoader:
    """A loader that counts how many iterators (passes) the evaluator creates."""

    def __init__(self, loader):
        self.loader, self.batch_size, self.iterators = loader, loader.batch_size, 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.iterators += 1
        return iter(self.loader)


class LabelEcho(torch.nn.Module):
    """Predicts the support-independent 'query is everything foreground' except a fixed band:
    cheap and deterministic, enough to exercise the protocol."""

    def forward(self, x, s_x=None, s_y=None):
        logits = torch.zeros(x.shape[0], 2, *x.shape[-2:])
        logits[:, 1, : x.shape[-2] // 2] = 1.0
        return logits


@pytest.fixture(scope="module")
def val_config(toy_data_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("eval"))
    return load_config(CONFIG, toy_opts(toy_data_root, out, list_root=os.path.join(out, "fss")))


def test_passes_episodes_and_determinism(val_config):
    dataset = RecordingDataset(build_dataset(val_config, "val", show_progress=False))
    loader = CountingLoader(build_val_loader(val_config, dataset))
    length = len(loader)
    test_num = 2 * length + 3  # needs 3 passes: ceil(test_num / (length - 1))
    protocol = EvaluationProtocol(test_num=test_num, num_test_classes=5)
    records = []
    results = []
    for _ in range(2):
        recorder = EpisodeRecorder()
        results.append(protocol.run(LabelEcho(), loader, torch.device("cpu"), observers=[recorder]))
        records.append(list(recorder.episodes))
    assert loader.iterators == 2 * evaluation_passes(test_num, length, 1) == 6
    assert results[0]["episodes"] == test_num == len(records[0])
    assert records[0] == records[1]
    for key in ("mIoU", "FB_IoU", "pIoU", "class_IoU"):
        assert results[0][key] == results[1][key]
    # a different seed draws other episodes
    other = EpisodeRecorder()
    protocol.run(LabelEcho(), loader, torch.device("cpu"), seed=322, observers=[other])
    assert other.episodes != records[0]
    # every query holds its class, supports differ from the query
    for episode in records[0]:
        assert episode["query"] not in episode["supports"]


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
    assert set(summary["mean"]) == {"mIoU", "FB_IoU", "pIoU"} and "std" in summary
    assert len(os.listdir(tmp_path / "vis")) == 8
    hsnet = _run(toy_data_root, tmp_path, "--hsnet-resize", "--all-foreground",
                 "--output", str(tmp_path / "d.json"))
    assert hsnet["hsnet_resize"] and 0 < hsnet["runs"][0]["FB_IoU"] < 1


class OneEpisodeLoader:
    """Two copies of one hand-made validation batch (the protocol needs more than one batch)."""
    batch_size = 1

    def __init__(self, raw_label):
        label = torch.tensor(raw_label)[None]
        self.batch = (torch.zeros(1, 3, *label.shape[-2:]), label, torch.zeros(1, 1, 3, *label.shape[-2:]),
                      torch.zeros(1, 1, *label.shape[-2:]), [torch.tensor([0])], label)

    def __len__(self):
        return 2

    def __iter__(self):
        return iter([self.batch, self.batch])


def test_ignore_label_reaches_the_metrics_and_the_square_padding():
    loader = OneEpisodeLoader([[1, 1, 0], [7, 0, 1]])
    cpu = torch.device("cpu")
    scored = EvaluationProtocol(1, 1, ignore_label=7).run(AllForeground(), loader, cpu)
    # By hand: ori_resize pads to 3x3 with the ignore label 7, so 5 pixels count (three 1s, two
    # 0s); predicting all foreground gives I1 = 3, U1 = 5 and I0 = 0, U0 = 2.
    assert scored["pIoU"] == pytest.approx(3 / 5) and scored["FB_IoU"] == pytest.approx(0.3)
    default = EvaluationProtocol(1, 1).run(AllForeground(), loader, cpu)
    # With 255 ignored instead, the pixel labelled 7 is scored: predicted 1, so U1 = 6.
    assert default["pIoU"] == pytest.approx(3 / 6)


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


def test_previous_support_diagnostic_feeds_the_last_episodes_support():
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x, s_x, s_y):
            seen.append(int(s_x.flatten()[0]))
            return torch.zeros(1, 2, 1, 1)

    wrapper = PreviousSupport(Recorder())
    for value in (1, 2, 3):
        wrapper(torch.zeros(1), torch.full((1, 1), float(value)), torch.zeros(1))
    assert seen == [1, 1, 2]


def test_prior_baseline_matches_the_support_without_learned_weights(toy_data_root, tmp_path):
    episodes = str(tmp_path / "episodes.json")
    prior = _run(toy_data_root, tmp_path, "--prior-baseline", "--dump-episodes", episodes,
                 "--output", str(tmp_path / "prior.json"))
    assert prior["weights"] == "training-free prior baseline"
    everything = _run(toy_data_root, tmp_path, "--all-foreground", "--episodes-from", episodes,
                      "--output", str(tmp_path / "all.json"))
    # On the toy data the calibrated random backbone's prior finds the support's object among
    # the others: far above labelling everything foreground on the same episodes.
    assert prior["runs"][0]["mIoU"] > everything["runs"][0]["mIoU"] + 0.2
