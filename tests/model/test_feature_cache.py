"""The backbone-feature cache of evaluation (model/feature_cache.py): keys (hashed from the host
batch and handed over, or hashed at lookup), the LRU budget and its cap on a GPU, statistics,
and an SCCAN forward that gives the same logits with it as without."""
from types import SimpleNamespace

import pytest
import torch

import model.feature_cache as feature_cache
from model.backbone import Backbone, initialise_random_backbone
from model.feature_cache import (DEVICE_MEMORY_FRACTION, MEBIBYTE, FeatureCache, attached_feature_cache,
                                 device_budget_mb, image_key, image_keys, keys_from_host)
from model.sccan import SCCAN
from tests.support.cuda import cuda_device, cuda_test


class CountingBackbone:
    """compute(images) -> [images * level for level 1..3], recording every batch it gets."""

    def __init__(self):
        self.batches = []

    def __call__(self, images):
        self.batches.append(images.clone())
        return [images * level for level in (1.0, 2.0, 3.0)]


def _images(count, seed=0, size=4):
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_key_depends_on_content_shape_and_dtype_only():
    image = _images(1)[0]
    assert image_key(image) == image_key(image.clone())
    channels_last = image.permute(1, 2, 0).contiguous().permute(2, 0, 1)  # same values, other strides
    assert not channels_last.is_contiguous() and image_key(channels_last) == image_key(image)
    changed = image.clone()
    changed[0, 0, 0] += 1e-6
    assert image_key(changed) != image_key(image)
    assert image_key(image.double()) != image_key(image)
    assert image_key(image.reshape(3, 2, 8)) != image_key(image)


def test_key_survives_a_round_trip_through_another_dtype_or_device():
    image = _images(1)[0]
    assert image_key(image.clone()) == image_key(image)
    assert image_key(image.double().float()) == image_key(image)  # float32 -> float64 is exact
    assert image_keys(image[None]) == [image_key(image)]


@cuda_test
def test_key_survives_a_round_trip_through_the_gpu():
    image = _images(1)[0]
    on_device = image.to(cuda_device())
    assert image_key(on_device) == image_key(image) == image_key(on_device.cpu())


def _refusing_to_hash(monkeypatch, refused):
    """Make image_key raise for the tensors in ``refused`` (the 'device' copies), hash others."""
    real = feature_cache.image_key

    def guarded(image):
        if any(image.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr()
               for tensor in refused):
            raise AssertionError("a looked-up (device) tensor was hashed")
        return real(image)

    monkeypatch.setattr(feature_cache, "image_key", guarded)


def test_keys_handed_over_from_the_host_batch_are_used_at_lookup(monkeypatch):
    host_query, host_supports = _images(1, seed=0), _images(2, seed=1)[None]  # (1, 3, h, w), (1, 2, 3, h, w)
    device_query, device_supports = host_query.clone(), host_supports.clone()  # stand-ins for .to(device)
    backbone = CountingBackbone()
    cache = FeatureCache(budget_mb=1)
    model = SimpleNamespace(feature_levels=lambda: (0, 1, 2), feature_cache=cache)  # what SCCAN offers
    _refusing_to_hash(monkeypatch, [device_query, device_supports])
    with keys_from_host(model, (device_query, host_query),
                        (device_supports.flatten(0, 1), host_supports.flatten(0, 1))):
        cache.features(backbone, device_query)
        cache.features(backbone, device_supports.flatten(0, 1))  # a new view of the same memory
    # the keys stored are those of the host images, the ones a later hashing lookup computes
    assert list(cache.entries) == image_keys(host_query) + image_keys(host_supports[0])
    assert not cache.handed_keys  # dropped with the batch
    with pytest.raises(AssertionError, match="device"):  # without keys: hashed at lookup
        cache.features(backbone, device_query)
    monkeypatch.undo()
    cache.features(backbone, host_supports[0])
    assert cache.statistics()["hits"] == 2 and len(backbone.batches) == 2


def test_a_tensor_changed_in_place_after_the_hand_over_is_hashed_again():
    host = _images(1)
    device = host.clone()
    cache = FeatureCache(budget_mb=1)
    with cache.handed_over((device, image_keys(host))):
        device.add_(1.0)  # no longer the image the keys were computed from
        cache.features(CountingBackbone(), device)
    assert list(cache.entries) == image_keys(device)
    with pytest.raises(ValueError, match="2 keys for a batch of 1"):
        with cache.handed_over((device, image_keys(host) * 2)):
            pass


def test_gpu_budget_is_capped_to_a_share_of_the_free_memory():
    gibibyte = 2 ** 30
    cuda = torch.device("cuda", 0)
    assert device_budget_mb(4096, cuda, free_bytes=2 * gibibyte) == DEVICE_MEMORY_FRACTION * 2048
    assert device_budget_mb(4096, cuda, free_bytes=100 * gibibyte) == 4096  # the config's budget
    assert device_budget_mb(4096, torch.device("cpu")) == 4096  # host memory: no device to ask


def test_attach_caps_the_budget_for_the_models_device_and_says_where(monkeypatch, model):
    asked = []
    monkeypatch.setattr(feature_cache, "device_budget_mb",
                        lambda budget_mb, device: asked.append((budget_mb, device)) or 3.0)
    with attached_feature_cache(model, budget_mb=64) as cache:
        statistics = cache.statistics()
    assert asked == [(64, torch.device("cpu"))]
    assert statistics["budget_mb"] == 3.0 and statistics["memory"] == "cpu"


@cuda_test
def test_attach_on_the_gpu_keeps_the_budget_in_its_free_memory(model):
    device = cuda_device()
    on_device = model.to(device)
    try:
        with attached_feature_cache(on_device, budget_mb=10 ** 7) as cache:  # more than any GPU has
            statistics = cache.statistics()
        # the parameters' own device: "cuda:0" where the tests asked for plain "cuda"
        assert torch.device(statistics["memory"]) == next(on_device.parameters()).device
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            assert statistics["budget_mb"] <= free / MEBIBYTE
    finally:
        model.to("cpu")


def test_misses_are_computed_once_and_hits_reused():
    images = _images(3)
    backbone = CountingBackbone()
    cache = FeatureCache(budget_mb=1)
    first = cache.features(backbone, images)
    # images 1 and 2 again, in another order, with a new one: only the new one is computed
    again = torch.stack([images[2], _images(1, seed=1)[0], images[1]])
    second = cache.features(backbone, again)
    assert [batch.shape[0] for batch in backbone.batches] == [3, 1]
    assert torch.equal(backbone.batches[1][0], again[1])
    for level in range(3):
        assert torch.equal(second[level], again * (level + 1.0))
        assert torch.equal(first[level], images * (level + 1.0))
    assert cache.statistics() == {"hits": 2, "misses": 4, "hit_rate": 2 / 6, "evictions": 0,
                                  "entries": 4, "stored_mb": round(4 * 3 * 48 * 4 / MEBIBYTE, 1),
                                  "budget_mb": 1.0, "memory": "cpu"}


def test_same_image_twice_in_one_batch():
    image = _images(1)
    backbone = CountingBackbone()
    cache = FeatureCache(budget_mb=1)
    out = cache.features(backbone, torch.cat([image, image]))
    assert torch.equal(out[2], torch.cat([image, image]) * 3.0)
    assert cache.statistics()["entries"] == 1 and cache.statistics()["misses"] == 2


def test_budget_evicts_least_recently_used():
    entry_bytes = 3 * 48 * 4  # three levels of a (1, 3, 4, 4) float32 image
    cache = FeatureCache(budget_mb=2.5 * entry_bytes / MEBIBYTE)  # room for two entries
    backbone = CountingBackbone()
    a, b, c = _images(3)
    cache.features(backbone, a[None])
    cache.features(backbone, b[None])
    cache.features(backbone, a[None])  # a is now the most recently used
    cache.features(backbone, c[None])  # evicts b
    assert cache.statistics()["evictions"] == 1 and cache.stored_bytes == 2 * entry_bytes
    calls = len(backbone.batches)
    cache.features(backbone, a[None])
    assert len(backbone.batches) == calls  # a still there
    cache.features(backbone, b[None])
    assert len(backbone.batches) == calls + 1  # b was evicted


def test_levels_not_kept_are_none_and_cost_nothing():
    cache = FeatureCache(budget_mb=1, levels=[2])
    out = cache.features(CountingBackbone(), _images(2))
    assert out[0] is None and out[1] is None and out[2].shape == (2, 3, 4, 4)
    assert cache.stored_bytes == 2 * 48 * 4


def test_zero_budget_stores_nothing_and_negative_is_refused():
    cache = FeatureCache(budget_mb=0)
    backbone = CountingBackbone()
    cache.features(backbone, _images(1))
    cache.features(backbone, _images(1))
    assert len(backbone.batches) == 2 and cache.statistics()["entries"] == 0
    with pytest.raises(ValueError, match="budget_mb"):
        FeatureCache(budget_mb=-1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    backbone = Backbone(50)
    initialise_random_backbone(backbone, residual_gain=0.1)
    return SCCAN(backbone, shot=2, feature_size=8, window_size=4).eval()


def test_sccan_with_cache_returns_identical_logits(model):
    images = _images(4, size=33)
    episodes = [(images[0:1], images[1:3]), (images[1:2], torch.stack([images[0], images[3]])),
                (images[3:4], images[0:2])]  # every image comes back in another role
    masks = (torch.rand(1, 2, 33, 33, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    with torch.no_grad():
        plain = [model(x, s_x[None], masks).logits for x, s_x in episodes]
        with attached_feature_cache(model, budget_mb=64) as cache:
            cached = [model(x, s_x[None], masks).logits for x, s_x in episodes]
    assert model.feature_cache is None  # detached again
    for expected, actual in zip(plain, cached):
        assert torch.equal(actual, expected)
    statistics = cache.statistics()
    assert statistics["misses"] == 4 and statistics["hits"] == 5  # 9 lookups of 4 images
    assert all(level is None for level in next(iter(cache.entries.values()))[:1])  # layer1 unused


def test_attach_only_to_models_with_a_backbone_cache_hook(model):
    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.model = inner

    with attached_feature_cache(Wrapper(model), budget_mb=1) as cache:
        assert cache is not None and model.feature_cache is cache
    with attached_feature_cache(model, budget_mb=0) as cache:
        assert cache is None and model.feature_cache is None
    with attached_feature_cache(torch.nn.Identity(), budget_mb=1) as cache:
        assert cache is None


def test_training_mode_bypasses_the_cache(model):
    with attached_feature_cache(model, budget_mb=64) as cache:
        try:
            model.train()
            with torch.no_grad():
                model._backbone(_images(1, size=33))
        finally:
            model.eval()
        assert cache.statistics()["misses"] == 0 and not cache.entries
        with torch.no_grad():
            model._backbone(_images(1, size=33))
        assert cache.statistics()["misses"] == 1
