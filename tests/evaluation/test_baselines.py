"""evaluation/baselines.py: the training-free matching predictor (benchmarks/probe_features.py,
test_sccan.py --prior-baseline) and the previous-support diagnostic."""
from __future__ import annotations

import pytest
import torch

from evaluation.baselines import FeatureMatching, PreviousSupport
from model.backbone import Backbone, calibrate_frozen_batch_norm, initialise_random_backbone


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
