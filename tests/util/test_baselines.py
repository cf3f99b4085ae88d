"""util/baselines.py: the training-free matching predictor (tools/probe_features.py,
test_sccan.py --prior-baseline)."""
from __future__ import annotations

import pytest
import torch

from model.backbone import Backbone, calibrate_frozen_batch_norm, initialise_random_backbone
from model.sccan import min_max_normalise
from util.baselines import FeatureMatching


def _scene(generator):
    """(1, 3, 65, 65) image: a red disc and a blue square on noise; masks of both."""
    image = 0.1 * torch.randn(1, 3, 65, 65, generator=generator)
    yy, xx = torch.meshgrid(torch.arange(65.0), torch.arange(65.0), indexing="ij")
    disc = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 12 ** 2)
    square = (yy >= 35) & (yy < 58) & (xx >= 35) & (xx < 58)
    image[0, 0][disc] += 2.0
    image[0, 2][square] += 2.0
    return image, disc, square


def _iou(prediction, target):
    return float((prediction & target).sum()) / float((prediction | target).sum())


def test_min_max_maps_each_sample_to_unit_range():
    x = torch.tensor([[[[1.0, 3.0], [2.0, 5.0]]], [[[-4.0, -4.0], [0.0, -2.0]]]])  # (2, 1, 2, 2)
    scaled = min_max_normalise(x)
    torch.testing.assert_close(scaled.amin(dim=(1, 2, 3)), torch.zeros(2))
    torch.testing.assert_close(scaled.amax(dim=(1, 2, 3)), torch.ones(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(scaled[0, 0, 0, 1], torch.tensor(0.5))


@pytest.mark.parametrize("level", [0, 1, "prior"])
def test_feature_matching_segments_the_support_class(level):
    generator = torch.Generator().manual_seed(0)
    backbone = Backbone(50)
    initialise_random_backbone(backbone, residual_gain=0.1)
    query, disc, square = _scene(generator)
    support, support_disc, _ = _scene(generator)
    calibrate_frozen_batch_norm(backbone, torch.cat([query, support]))
    backbone.eval()
    predictor = FeatureMatching(backbone, level, threshold=0.7)
    with torch.no_grad():
        logits = predictor(query, support.unsqueeze(1), support_disc.float()[None, None])  # (1, 2, 65, 65)
    assert logits.shape == (1, 2, 65, 65)
    assert torch.all(logits[:, 0] == 0.7)
    assert 0.0 <= float(logits[:, 1].min()) and float(logits[:, 1].max()) <= 1.0 + 1e-6
    prediction = logits.argmax(1)[0].bool()
    # The disc of the support is found in the query, the blue square is not.
    assert _iou(prediction, disc) > 0.5
    assert float((prediction & square).sum()) < 0.1 * float(square.sum())


def test_feature_matching_rejects_unknown_levels():
    with pytest.raises(ValueError, match="level"):
        FeatureMatching(Backbone(50), level=4)
