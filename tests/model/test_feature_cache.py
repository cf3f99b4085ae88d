"""The backbone-feature cache of evaluation (model/feature_cache.py): keys, the LRU budget,
statistics, and an SCCAN forward that gives the same logits with it as without."""
import pytest
import torch

from model.backbone import Backbone, initialise_random_backbone
from model.feature_cache import MEBIBYTE, FeatureCache, attached_feature_cache, image_key
from model.sccan import SCCAN


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
                                  "entries": 4, "stored_mb": round(4 * 3 * 48 * 4 / MEBIBYTE, 1)}


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
        plain = [model(x, s_x[None], masks) for x, s_x in episodes]
        with attached_feature_cache(model, budget_mb=64) as cache:
            cached = [model(x, s_x[None], masks) for x, s_x in episodes]
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
