"""benchmarks/bench_data.py and benchmarks/probe_features.py report what they measured and scored: the
rows are checked against episode counts and scores computed here independently. Speeds are
figures for BENCHMARKS.md, never asserted (the clock here is a fake one); the error paths of
probe_features are tested in tests/scripts/test_cli_errors.py."""
from __future__ import annotations

import random
import re

import cv2
import pytest
import torch
import torch.nn.functional as F

from benchmarks import bench_data, probe_features
from evaluation.episodes import save_episodes
from experiment.build import build_dataset
from tests.support.toy_experiment import CONFIG, toy_opts
from util.config import load_config
from util.dataset import SemData


class FakeClock:
    """Stands in for bench_data's ``time`` module: time moves only when the test says so, so
    that the expected rates are known exactly whatever the machine's speed."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


# ------------------------------------------------------------------------------ bench_data
def test_measure_times_only_the_episodes_after_the_warmup(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(bench_data, "time", clock)

    class Episodes:
        def __init__(self):
            self.indices, self.draws, self.costs = [], [], []

        def __len__(self):
            return 3

        def __getitem__(self, index):
            # Each load costs more than the previous one: timing a warmup load shows in the rate.
            cost = 0.01 * (len(self.indices) + 1)
            self.indices.append(index)
            self.draws.append(random.random())
            self.costs.append(cost)
            clock.now += cost
            return index

    episodes = Episodes()
    rate = bench_data.measure(episodes, episodes=5, warmup=2, seed=7)
    assert episodes.indices == [0, 1] + [0, 1, 2, 0, 1]  # consecutive indices, wrapped at len
    assert rate == pytest.approx(5 / sum(episodes.costs[2:]))
    # The episode draws restart from the seed, so every row times the same episodes.
    random.seed(7)
    assert episodes.draws == [random.random() for _ in range(7)]


def _table_rows(output: str) -> dict:
    """{(mode, shot, size): (episodes/s, ms/episode)} of bench_data's markdown table."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] in ("train", "val"):
            rows[(cells[0], int(cells[1]), int(cells[2]))] = (float(cells[3]), float(cells[4]))
    return rows


def test_bench_data_rows_are_the_rates_of_the_loaded_episodes(toy_data_root, monkeypatch, capsys):
    clock = FakeClock()
    monkeypatch.setattr(bench_data, "time", clock)
    loads = {}  # dataset -> [(index, item, cost)]
    load_episode = SemData.__getitem__

    def timed_load(dataset, index):
        item = load_episode(dataset, index)  # the real files, draws and transforms
        calls = loads.setdefault(dataset, [])
        # A cost that differs between settings and grows with each load: rows swapped between
        # settings, or warmup loads counted, give other rates.
        cost = 0.001 * dataset.shot * item[0].shape[-1] * (2 if dataset.mode == "val" else 1) * (len(calls) + 1)
        calls.append((index, item, cost))
        clock.now += cost
        return item

    monkeypatch.setattr(SemData, "__getitem__", timed_load)
    threads = torch.get_num_threads(), cv2.getNumThreads()
    arguments = ["--data-root", toy_data_root, "--episodes", "2", "--sizes", "25", "17", "--split", "1",
                 "--threads", "1"]
    try:
        bench_data.main(arguments)
    finally:  # --threads 1 would otherwise slow every later test of this process
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])
    output = capsys.readouterr()

    expected = {}
    for dataset, calls in loads.items():
        size = calls[0][1][0].shape[-1]
        for _, item, _ in calls:
            image, label, support_images, support_labels = item[:4]
            assert image.shape == (3, size, size) and label.shape == (size, size)
            assert support_images.shape == (dataset.shot, 3, size, size)
            assert support_labels.shape == (dataset.shot, size, size)
            assert len(item) == (6 if dataset.mode == "val" else 5)  # a validation item has its raw label
        assert dataset.split == 1
        timed = calls[-2:]
        assert [index for index, _, _ in timed] == [0, 1]
        rate = 2 / sum(cost for _, _, cost in timed)
        expected[(dataset.mode, dataset.shot, size)] = (rate, 1000.0 / rate)
    assert set(expected) == {(mode, shot, size) for mode in ("train", "val") for shot in (1, 5)
                             for size in (25, 17)}

    rows = _table_rows(output.out)
    assert rows.keys() == expected.keys()
    for key, (rate, milliseconds) in expected.items():
        assert rows[key] == (pytest.approx(rate, abs=0.051), pytest.approx(milliseconds, abs=0.051)), key
        mode, shot, size = key
        progress = re.search(rf"^{mode}\s+{shot}-shot size {size}:\s+([\d.]+) episodes/s$", output.err, re.M)
        assert progress and float(progress.group(1)) == pytest.approx(rate, abs=0.051), key
    assert f"Command: `python -m benchmarks.bench_data {' '.join(arguments)}`" in output.out
    assert "1 thread(s)" in output.out and "fold 1, 2 episodes per row, workers=0" in output.out


# -------------------------------------------------------------------------- probe_features
def _similarity(query: torch.Tensor, support: torch.Tensor, support_mask: torch.Tensor, level) -> torch.Tensor:
    """The matching map of one shot, min-max scaled, from (C, h, w) features and the support's
    (h, w) mask at the feature size: the cosine to the masked-average prototype, or for the
    prior the mask averaged over the support pixels with the softmax of their cosines."""
    if level == "prior":
        support_vectors, query_vectors = support.flatten(1), query.flatten(1)  # (C, Ns), (C, Nq)
        cosine = support_vectors.T @ query_vectors / (
            support_vectors.norm(dim=0)[:, None] * query_vectors.norm(dim=0)[None] + 1e-7)
        score = support_mask.flatten() @ cosine.softmax(dim=0)
    else:
        prototype = (support * support_mask).sum((1, 2)) / (support_mask.sum() + 5e-4)
        score = (torch.einsum("chw,c->hw", query, prototype) / (query.norm(dim=0) * prototype.norm())).flatten()
    score = (score - score.min()) / (score.max() - score.min() + 1e-7)
    return score.view(query.shape[-2:])


def _bilinear(map_2d: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(map_2d[None, None], size=size, mode="bilinear", align_corners=True)[0, 0]


def _scores(backbone, dataset, episodes, threshold, num_test_classes=5):
    """{level: (mIoU, FB-IoU)} of thresholded matching maps, scored against each query's raw
    label padded with 255 to a square, with pixel counts summed per class over the episodes."""
    levels = [0, 1, 2, 3, "prior"]
    sums = {level: {"class": torch.zeros(num_test_classes, 2, dtype=torch.float64),
                    "binary": torch.zeros(2, 2, dtype=torch.float64)} for level in levels}
    for episode in episodes:
        image, _, support_images, support_labels, class_index, raw_label = dataset.load_episode(**episode)
        with torch.no_grad():
            query = [features[0].double() for features in backbone(image[None])]
            support = [features[0].double() for features in backbone(support_images)]
        side = max(raw_label.shape)
        target = torch.full((side, side), 255, dtype=torch.long)
        target[:raw_label.shape[0], :raw_label.shape[1]] = raw_label
        valid = target != 255
        for level in levels:
            features = 3 if level == "prior" else level
            support_mask = _bilinear((support_labels[0] == 1).double(), support[features].shape[-2:])
            score = _similarity(query[features], support[features], support_mask, level)
            foreground = _bilinear(_bilinear(score, image.shape[-2:]), (side, side)) > threshold
            for value, predicted in ((0, ~foreground), (1, foreground)):
                actual = target == value
                counts = torch.stack([(predicted & actual & valid).sum(), ((predicted | actual) & valid).sum()])
                sums[level]["binary"][value] += counts
                if value == 1:
                    sums[level]["class"][class_index[0]] += counts
    return {level: (float((sums[level]["class"][:, 0] / (sums[level]["class"][:, 1] + 1e-10)).mean()),
                    float((sums[level]["binary"][:, 0] / (sums[level]["binary"][:, 1] + 1e-10)).mean()))
            for level in levels}


def test_probe_features_scores_every_level_as_computed_directly(toy_data_root, tmp_path, monkeypatch, capsys):
    opts = toy_opts(toy_data_root, str(tmp_path))
    dataset = build_dataset(load_config(CONFIG, opts), "val", show_progress=False)
    # Two episodes of one class (its IoU sums both), one of another; the fold's three other test
    # classes have none and count as 0 in the mIoU.
    first, second = dataset.val_classes[:2]
    files = dataset.sub_class_file_list
    episodes = [dict(query=files[first][0], class_chosen=first, supports=[files[first][1]]),
                dict(query=files[first][2], class_chosen=first, supports=[files[first][3]]),
                dict(query=files[second][0], class_chosen=second, supports=[files[second][1]])]
    episode_file = str(tmp_path / "episodes.json")
    save_episodes(episode_file, episodes, meta={"data_set": "pascal", "split": 0, "shot": 1})
    models = []

    def keep_model(*arguments, **keywords):
        models.append(build_model(*arguments, **keywords))
        return models[-1]

    build_model = probe_features.build_experiment_model
    monkeypatch.setattr(probe_features, "build_experiment_model", keep_model)
    rows = probe_features.main(["--config", CONFIG, "--episodes-from", episode_file, "--threshold", "0.6",
                                "--opts", *opts])
    output = capsys.readouterr().out

    expected = _scores(models[0].backbone.eval(), dataset, episodes, threshold=0.6)
    names = ["layer1", "layer2", "layer3", "layer4", "SCCAN prior (layer4)"]
    assert list(rows) == names
    for name, level in zip(names, [0, 1, 2, 3, "prior"]):
        assert rows[name]["episodes"] == len(episodes)
        # A pixel whose score sits within rounding of the threshold may fall either way.
        assert (rows[name]["mIoU"], rows[name]["FB_IoU"]) == pytest.approx(expected[level], abs=2e-4), name
        assert f"| {name} | {rows[name]['mIoU']:.4f} | {rows[name]['FB_IoU']:.4f} |" in output
    # The levels score apart by more than that tolerance, so a row scored with another level's
    # features shows.
    assert min(max(abs(a - b) for a, b in zip(expected[one], expected[other]))
               for one in expected for other in expected if one != other) > 4e-4
    assert f"{len(episodes)} episodes, threshold 0.6, config {CONFIG}" in output
