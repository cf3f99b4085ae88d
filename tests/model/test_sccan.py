"""SCCAN model (model/sccan.py): state_dict layout, parameter counts, forward contract, gradients,
min-max normalisation."""
import os

import pytest
import torch
from torch.testing import assert_close

from model import count_parameters
from model.backbone import Backbone
from model.loss import weighted_dice_loss
from model.sccan import SCCAN, SCCANOutput, min_max_normalise
from tests.support import FIXTURES


def reference_keys(layers):
    path = os.path.join(FIXTURES, f"sccan_resnet{layers}_state_dict.txt")
    entries = []
    with open(path) as handle:
        for line in handle:
            name, rest = line.strip().split(" ", 1)
            shape, dtype = rest.rsplit(" ", 1)
            entries.append((name, tuple(int(v) for v in shape.strip("()").split(",") if v.strip()),
                            dtype))
    return entries


@pytest.mark.parametrize("layers", [50, 101])
def test_state_dict_matches_reference_names_and_shapes(layers):
    model = SCCAN(Backbone(layers))
    actual = [(k, tuple(v.shape), str(v.dtype).replace("torch.", ""))
              for k, v in model.state_dict().items()]
    assert actual == reference_keys(layers)


def expected_parameters(layers):
    """{name: element count} of the model's parameters and the names of the trainable ones, from
    the reference state_dict list alone: every entry is a parameter except the batch norms of
    the frozen backbone (FrozenBatchNorm2d keeps its weight, bias and running statistics as
    buffers; a batch norm is the module whose entries include running_mean). Everything under
    ``backbone.`` is frozen (SCCAN's doc), every other parameter is trained."""
    entries = reference_keys(layers)
    batch_norms = {name[:-len("running_mean")] for name, _, _ in entries if name.endswith(".running_mean")}
    assert all(name.startswith("backbone.") for name in batch_norms)  # the meta learner has none
    sizes = {}
    for name, shape, dtype in entries:
        if name.rsplit(".", 1)[0] + "." in batch_norms:
            continue
        assert dtype == "float32", name
        count = 1
        for side in shape:
            count *= side
        sizes[name] = count
    return sizes, {name for name in sizes if not name.startswith("backbone.")}


@pytest.mark.parametrize("layers", [50, 101])
def test_parameter_counts(layers):
    sizes, trainable = expected_parameters(layers)
    model = SCCAN(Backbone(layers))
    parameters = dict(model.named_parameters())
    assert {name: p.numel() for name, p in parameters.items()} == sizes
    assert {name for name, p in parameters.items() if p.requires_grad} == trainable
    assert count_parameters(model) == (sum(sizes.values()), sum(sizes[name] for name in trainable))
    transformer = sum(p.numel() for p in model.transformer.parameters())
    assert transformer == sum(size for name, size in sizes.items() if name.startswith("transformer."))
    # What the reference lists give, as BENCHMARKS.md's table quotes it.
    assert (sum(sizes.values()), sum(sizes[name] for name in trainable)) == \
        {50: (34_951_618, 11_373_314), 101: (53_891_522, 11_373_314)}[layers]


def test_eval_forward_shapes(small_model):
    small_model.eval()
    x = torch.randn(2, 3, 65, 81)
    s_x = torch.randn(2, 2, 3, 65, 81)
    s_y = (torch.rand(2, 2, 65, 81) > 0.5).float()
    with torch.no_grad():
        output = small_model(x, s_x, s_y)
    assert isinstance(output, SCCANOutput) and output.logits.shape == (2, 2, 65, 81)
    # Without a base learner the meta learner's logits are the output's logits, and no base ones.
    assert output.meta is output.logits and output.base is None


def test_support_features_computed_once_give_the_same_logits(small_model):
    """Several queries of one support set (evaluation/predictor.py) reuse the supports' backbone
    features; the logits must be those of the plain forward."""
    small_model.eval()
    torch.manual_seed(1)
    s_x = torch.randn(1, 2, 3, 65, 65)
    s_y = (torch.rand(1, 2, 65, 65) > 0.5).float()
    with torch.no_grad():
        features = small_model.support_features(s_x)
        assert [level.shape[0] for level in features] == [2] * 4
        for _ in range(2):
            x = torch.randn(1, 3, 65, 65)
            assert torch.equal(small_model(x, s_x, s_y, support_features=features).logits,
                               small_model(x, s_x, s_y).logits)
        other = small_model.support_features(torch.randn(1, 2, 3, 65, 65))
        assert not torch.equal(small_model(x, s_x, s_y, support_features=other).logits,
                               small_model(x, s_x, s_y).logits)


def _dead_support_branch(name):
    # The support output of the last block is never used by the original, so its support
    # attention/MLP receive no gradient there (they are still learnable parameters).
    return name.startswith("transformer.layers.0.blocks.7.attn_s.") or \
        name.startswith("transformer.layers.0.blocks.7.mlp_s.")


def test_one_training_step_gradients(small_model):
    torch.manual_seed(1)
    small_model.train()
    small_model.zero_grad(set_to_none=True)
    x = torch.randn(2, 3, 65, 65)
    s_x = torch.randn(2, 2, 3, 65, 65)
    s_y = torch.zeros(2, 2, 65, 65)
    s_y[:, :, 10:40, 15:50] = 1
    s_y[:, :, 0:3] = 255
    y = torch.zeros(2, 65, 65, dtype=torch.long)
    y[:, 20:50, 20:45] = 1
    output = small_model(x, s_x, s_y)
    assert output.logits.shape == (2, 2, 65, 65) and output.base is None
    losses = small_model.losses(output, y)
    # The paper's SCCAN has one loss: the dice loss of its logits.
    assert list(losses) == ["main_loss"]
    assert_close(losses["main_loss"], weighted_dice_loss(output.logits, y))
    main_loss = losses["main_loss"]
    main_loss.backward()
    dead = []
    for name, parameter in small_model.named_parameters():
        if name.startswith("backbone."):
            assert not parameter.requires_grad and parameter.grad is None, name
        elif _dead_support_branch(name):
            dead.append(name)
            assert parameter.grad is None or not parameter.grad.any(), name
        else:
            assert parameter.requires_grad, name
            assert parameter.grad is not None, f"no gradient reaches {name}"
            assert torch.isfinite(parameter.grad).all(), name
            assert parameter.grad.abs().sum() > 0, f"zero gradient for {name}"
    assert len(dead) == 10  # attn_s: q, kv, proj (weight+bias); mlp_s: fc1, fc2


def test_train_mode_keeps_backbone_frozen(small_model):
    small_model.train()
    assert not small_model.backbone.training
    assert small_model.down_query.training


def test_min_max_maps_each_sample_to_unit_range():
    x = torch.tensor([[[[1.0, 3.0], [2.0, 5.0]]], [[[-4.0, -4.0], [0.0, -2.0]]]])  # (2, 1, 2, 2)
    scaled = min_max_normalise(x)
    torch.testing.assert_close(scaled.amin(dim=(1, 2, 3)), torch.zeros(2))
    torch.testing.assert_close(scaled.amax(dim=(1, 2, 3)), torch.ones(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(scaled[0, 0, 0, 1], torch.tensor(0.5))
