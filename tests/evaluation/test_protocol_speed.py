"""The evaluator's speed options on toy data: the backbone-feature cache gives exactly the plain
loop's logits and numbers (1-shot and 5-shot), reports its hit rate and takes its keys from the
host batch (each image hashed once, never a device tensor); bf16 autocast runs."""
import pytest
import torch

import model.feature_cache as feature_cache
from evaluation.protocol import EvaluationProtocol, format_cache_statistics
from experiment.build import build_dataset, build_experiment_model, build_val_loader
from tests.support.cuda import cuda_device, cuda_test
from tests.support.toy_experiment import CONFIG, toy_opts
from util.config import load_config

CPU = torch.device("cpu")


class Centred(torch.nn.Module):
    """The model's logits with the foreground logit shifted so that about half of each
    episode's pixels are foreground (an untrained model would predict background everywhere and
    score 0, which would hide differences); keeps every episode's logits for comparison."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.outputs = []

    def forward(self, x, s_x, s_y):
        logits = self.model(x=x, s_x=s_x, s_y=s_y).logits
        difference = (logits[:, 1] - logits[:, 0]).flatten(1)  # (B, h*w)
        logits[:, 1] -= difference.median(dim=1).values.view(-1, 1, 1)
        self.outputs.append(logits.clone())
        return logits


def _experiment(toy_data_root, tmp_path, shot, device=CPU):
    cfg = load_config(CONFIG, toy_opts(toy_data_root, str(tmp_path), list_root=str(tmp_path / "fss"),
                                       shot=shot))
    loader = build_val_loader(cfg, build_dataset(cfg, "val", show_progress=False))
    return cfg, loader, build_experiment_model(cfg, device)


class Watched(Centred):
    """Centred, telling whether its forward (the model, the cache's lookups) is running."""

    def __init__(self, model):
        super().__init__(model)
        self.running = False

    def forward(self, x, s_x, s_y):
        self.running = True
        try:
            return super().forward(x, s_x, s_y)
        finally:
            self.running = False


def _each_image_hashed_once_on_the_host(toy_data_root, tmp_path, monkeypatch, device):
    shot, episodes = 2, 6
    _, loader, model = _experiment(toy_data_root, tmp_path, shot, device)
    predictor, hashed, real = Watched(model), [], feature_cache.image_key
    monkeypatch.setattr(feature_cache, "image_key",
                        lambda image: hashed.append((image.device, predictor.running)) or real(image))
    result = EvaluationProtocol(test_num=episodes, num_test_classes=5, feature_cache_mb=64).run(
        predictor, loader, device, seed=321)
    lookups = episodes * (1 + shot)
    assert result["feature_cache"]["hits"] + result["feature_cache"]["misses"] == lookups
    # each image hashed once, from the loader's batch before the forward, never at lookup
    # (where it would be the device tensor: a copy to the host and a synchronisation on a GPU)
    assert len(hashed) == lookups and set(hashed) == {(CPU, False)}
    assert result["feature_cache"]["memory"] == str(next(model.parameters()).device)


def test_cache_keys_come_from_the_host_batch(toy_data_root, tmp_path, monkeypatch):
    _each_image_hashed_once_on_the_host(toy_data_root, tmp_path, monkeypatch, CPU)


@cuda_test
def test_cache_keys_come_from_the_host_batch_on_the_gpu(toy_data_root, tmp_path, monkeypatch):
    _each_image_hashed_once_on_the_host(toy_data_root, tmp_path, monkeypatch, cuda_device())


@pytest.mark.parametrize("shot,episodes", [(1, 30), (5, 12)])
def test_cached_evaluation_equals_the_plain_loop(toy_data_root, tmp_path, shot, episodes):
    cfg, loader, model = _experiment(toy_data_root, tmp_path, shot)
    results, predictors = {}, {}
    for budget in (0, 256):
        predictors[budget] = Centred(model)
        protocol = EvaluationProtocol(test_num=episodes, num_test_classes=5, feature_cache_mb=budget)
        results[budget] = protocol.run(predictors[budget], loader, CPU, seed=321)
    plain, cached = results[0], results[256]
    assert "feature_cache" not in plain
    statistics = cached.pop("feature_cache")
    plain.pop("seconds"), cached.pop("seconds")
    assert cached == plain
    assert 0 < plain["mIoU"] < 1  # a comparison that could tell
    for expected, actual in zip(predictors[0].outputs, predictors[256].outputs, strict=True):
        assert torch.equal(actual, expected)
    # every episode looks up its query and its supports; the toy fold has 52 query images
    assert statistics["hits"] + statistics["misses"] == episodes * (1 + shot)
    assert statistics["hits"] > 0 and statistics["hit_rate"] == statistics["hits"] / (episodes * (1 + shot))
    assert f"{statistics['hit_rate']:.1%} of {episodes * (1 + shot)} image lookups" in \
        format_cache_statistics(statistics)


def test_cache_budget_comes_from_the_config(toy_data_root, tmp_path):
    cfg = load_config(CONFIG, toy_opts(toy_data_root, str(tmp_path), eval_feature_cache_mb=12.5,
                                       amp="bf16"))
    protocol = EvaluationProtocol.from_config(cfg, 5)
    assert protocol.feature_cache_mb == 12.5 and protocol.amp == "bf16"
    with pytest.raises(ValueError, match="eval_feature_cache_mb"):
        EvaluationProtocol(test_num=1, num_test_classes=1, feature_cache_mb=-1)
    with pytest.raises(ValueError, match="config key amp: expected one of 'fp32', 'bf16', got 'fp16'"):
        EvaluationProtocol(test_num=1, num_test_classes=1, amp="fp16")


def test_bf16_evaluation_runs_and_scores(toy_data_root, tmp_path):
    _, loader, model = _experiment(toy_data_root, tmp_path, 1)
    predictor = Centred(model)
    result = EvaluationProtocol(test_num=4, num_test_classes=5, amp="bf16").run(predictor, loader, CPU)
    assert result["episodes"] == 4 and 0 <= result["mIoU"] <= 1
    assert all(output.dtype == torch.float32 for output in predictor.outputs)  # logits leave as float32
