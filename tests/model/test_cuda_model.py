"""The model on a CUDA device (``pytest -m cuda``; skipped without one; dry run on the CPU: see
tests/support/cuda.py): the parity fixture in fp32 with TF32 off on both forward paths, and bf16
autocast against fp32 on a trained model."""
import os

import pytest
import torch
from torch.testing import assert_close

from model.backbone import Backbone
from model.sccan import SCCAN
from tests.support.square_task import square_episodes, train_small_model
from tests.support import FIXTURES
from tests.support.cuda import CUDA, cuda_device, strict_fp32
from tests.support.reference_weights import generate_reference_weights
from util.runtime import autocast

pytestmark = CUDA
DEVICE = cuda_device()


@pytest.fixture(scope="module")
def fixture():
    return torch.load(os.path.join(FIXTURES, "sccan_parity_fixture.pt"), weights_only=True)


@pytest.mark.parametrize("fast_path", [False, True], ids=["straightforward", "fast"])
@strict_fp32()
def test_parity_fixture_on_the_gpu(fixture, fast_path):
    models = {}
    for case in fixture["cases"]:
        if case["layers"] not in models:
            model = SCCAN(Backbone(case["layers"]), shot=1, fast_path=fast_path).eval()
            generate_reference_weights(model)
            models[case["layers"]] = model.to(DEVICE)
        with torch.no_grad():
            logits = models[case["layers"]](case["x"].to(DEVICE), case["s_x"].to(DEVICE),
                                            case["s_y"].to(DEVICE)).logits
        assert_close(logits.cpu(), case["logits"], atol=1e-4, rtol=0)


@strict_fp32()
def test_bf16_autocast_agrees_with_fp32_on_the_gpu():
    model = train_small_model().to(DEVICE)
    x, s_x, s_y, _ = (tensor.to(DEVICE) for tensor in square_episodes(16, torch.Generator().manual_seed(1)))
    with torch.no_grad():
        fp32 = model(x, s_x, s_y).logits
        with autocast(DEVICE, "bf16"):
            bf16 = model(x, s_x, s_y).logits
    assert bf16.dtype == torch.float32 and not torch.equal(fp32, bf16)
    assert (fp32.argmax(1) == bf16.argmax(1)).float().mean() >= 0.995
