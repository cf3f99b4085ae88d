"""Equivalence with the original implementation (tests/fixtures/sccan_parity_fixture.pt), for the
straightforward path written like the original and for the fast path (the default)."""
import os

import pytest
import torch
from torch.testing import assert_close

from model.backbone import Backbone
from model.loss import weighted_dice_loss
from model.sccan import SCCAN, prior_mask, prior_masks
from tests.support import FIXTURES
from tests.support.reference_weights import generate_reference_weights

FIXTURE = os.path.join(FIXTURES, "sccan_parity_fixture.pt")
TOLERANCE = dict(atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=True)


class _ReferenceModels(dict):
    """The fixture's models by depth, each built on first use: a test that needs ResNet-50 only
    (the transformer's) does not pay for ResNet-101 (mutation testing runs it once per mutant)."""

    def __missing__(self, layers):
        model = SCCAN(Backbone(layers), shot=1, fast_path=False).eval()
        generate_reference_weights(model)
        self[layers] = model
        return model


@pytest.fixture(scope="module")
def models():
    return _ReferenceModels()


PATHS = pytest.mark.parametrize("fast_path", [False, True], ids=["straightforward", "fast"])


@PATHS
@pytest.mark.parametrize("case_index", [0, 1, 2, 3])
def test_logits_and_dice_loss_match_original(fixture, models, case_index, fast_path):
    case = fixture["cases"][case_index]
    model = models[case["layers"]].set_fast_path(fast_path)
    state = model.state_dict()
    for key, expected in case["weight_sums"].items():
        assert abs(float(state[key].double().sum()) - expected) < 1e-6 * max(1.0, abs(expected)), key
    with torch.no_grad():
        logits = model(case["x"], case["s_x"], case["s_y"]).logits
    assert logits.shape == case["logits"].shape
    assert_close(logits, case["logits"], **TOLERANCE)
    assert_close(weighted_dice_loss(logits, case["y"]), case["dice_loss"], **TOLERANCE)


@PATHS
def test_transformer_matches_original(fixture, models, fast_path):
    reference = fixture["transformer"]
    assert "manual_seed(7)" in reference["inputs"]
    generator = torch.Generator().manual_seed(7)
    query = torch.randn(1, 256, 64, 64, generator=generator)
    support = torch.randn(1, 256, 64, 64, generator=generator)
    with torch.no_grad():
        out = models[50].set_fast_path(fast_path).transformer(query, support, reference["support_mask"])
    assert out.shape == (1, 256, 64, 64)
    assert_close(out[:, :, ::4, ::4], reference["out_every_4th_pixel"], **TOLERANCE)


def test_prior_matches_original(fixture):
    reference = fixture["prior"]
    out = prior_mask(reference["query_high"], reference["support_high"],
                     reference["support_mask"], (64, 64))
    assert_close(out, reference["out"], **TOLERANCE)


def test_fast_prior_matches_original(fixture):
    reference = fixture["prior"]
    out = prior_masks(reference["query_high"], reference["support_high"].unsqueeze(1),
                      reference["support_mask"].unsqueeze(1), (64, 64))  # (B, K=1, 1, 64, 64)
    assert_close(out[:, 0], reference["out"], **TOLERANCE)
