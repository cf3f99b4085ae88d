"""The fast path (the default) computes what the straightforward path computes: the fused
attention, the kept-token projection, the one-product priors and whole models of both depths,
shots and window kinds, in evaluation and in training (losses and gradients)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from model.backbone import Backbone, initialise_random_backbone
from model.sccan import SCCAN, prior_mask, prior_masks
from model.transformer import SCCABlock, scca_attention

TOLERANCE = dict(atol=1e-4, rtol=0)  # the parity fixture's tolerance


def _explicit_attention(q, k, v, scale, k_context=None, v_context=None):
    """The original's formula written out: scaled self logits, cosine context logits with
    1e-7 in the denominator, one softmax."""
    logits = (q * scale) @ k.transpose(-2, -1)
    if k_context is not None:
        dots = q @ k_context.transpose(-2, -1)
        norms = q.norm(dim=-1, keepdim=True) * k_context.norm(dim=-1).unsqueeze(-2)
        logits = torch.cat([logits, dots / (norms + 1e-7)], dim=-1)
        v = torch.cat([v, v_context], dim=2)
    return logits.softmax(-1) @ v


@pytest.mark.parametrize("with_context", [False, True])
def test_scca_attention_is_the_explicit_formula(with_context):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 4, 16, 8, generator=generator) for _ in range(3))
    k_context, v_context = (torch.randn(6, 4, 16, 8, generator=generator) * 3 for _ in range(2))
    contexts = (k_context, v_context) if with_context else (None, None)
    scale = 8 ** -0.5
    assert_close(scca_attention(q, k, v, scale, *contexts),
                 _explicit_attention(q, k, v, scale, *contexts), atol=1e-6, rtol=0)


def test_scca_attention_zero_query_has_zero_cosine_logits():
    q = torch.zeros(1, 1, 2, 4)
    k = torch.randn(1, 1, 2, 4)
    v = torch.arange(8.0).view(1, 1, 2, 4)
    v_context = torch.arange(8.0, 16.0).view(1, 1, 2, 4)
    out = scca_attention(q, k, v, 0.5, torch.randn(1, 1, 2, 4), v_context)
    # all four logits are 0: a uniform average of the four values
    assert_close(out, torch.cat([v, v_context], dim=2).mean(2, keepdim=True).expand(1, 1, 2, 4))


@pytest.mark.parametrize("shift", [False, True], ids=["unshifted", "shifted"])
@pytest.mark.parametrize("update_support", [True, False])
def test_block_fast_equals_straightforward(shift, update_support):
    torch.manual_seed(0)
    block = SCCABlock(dim=32, num_heads=4, window_size=4, shift=shift).eval()
    height, width = 12, 8
    query = torch.randn(2, height * width, 32)
    support = torch.randn(2, height * width, 32)
    mask = (torch.rand(2, height * width, 1) > 0.6).float()
    with torch.no_grad():
        for attention in (block.attn_q, block.attn_s):
            attention.fast_path = False
        expected = block(query, support, mask, height, width, update_support)
        for attention in (block.attn_q, block.attn_s):
            attention.fast_path = True
        actual = block(query, support, mask, height, width, update_support)
    for fast, straightforward in zip(actual, expected):
        assert_close(fast, straightforward, atol=1e-5, rtol=0)


def test_priors_of_all_shots_equal_the_per_shot_prior():
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 32, 7, 9, generator=generator).relu()
    support = torch.randn(2, 3, 32, 8, 8, generator=generator).relu()
    support[0, 1, :, :2] = 0  # zero feature vectors: cosine 0 in both
    masks = (torch.rand(2, 3, 1, 8, 8, generator=generator) > 0.5).float()
    fast = prior_masks(query, support, masks, (8, 8))
    assert fast.shape == (2, 3, 1, 8, 8)
    for shot in range(3):
        assert_close(fast[:, shot], prior_mask(query, support[:, shot], masks[:, shot], (8, 8)),
                     atol=1e-5, rtol=0)


def test_priors_under_bf16_autocast_are_the_float32_priors():
    """The cosines of a bf16 forward would swamp the prior (its softmax is nearly uniform): both
    prior functions leave autocast and compute in float32, giving the float32 maps exactly."""
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(2, 16, 5, 6, generator=generator).relu()
    support = torch.randn(2, 2, 16, 4, 4, generator=generator).relu()
    masks = (torch.rand(2, 2, 1, 4, 4, generator=generator) > 0.5).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = [prior_mask(query.bfloat16(), support[:, 0].bfloat16(), masks[:, 0], (7, 7)),
                    prior_masks(query.bfloat16(), support.bfloat16(), masks, (7, 7))]
    # bf16 inputs are rounded features: compare with the float32 priors of those same values
    rounded = [prior_mask(query.bfloat16().float(), support[:, 0].bfloat16().float(), masks[:, 0], (7, 7)),
               prior_masks(query.bfloat16().float(), support.bfloat16().float(), masks, (7, 7))]
    for inside, outside in zip(autocast, rounded):
        assert inside.dtype == torch.float32
        assert_close(inside, outside, atol=0, rtol=0)


def _model(layers, shot, window_size):
    torch.manual_seed(layers + shot)
    backbone = Backbone(layers)
    initialise_random_backbone(backbone, seed=layers, residual_gain=0.1)
    model = SCCAN(backbone, shot=shot, feature_size=16, window_size=window_size, fast_path=False)
    with torch.no_grad():  # biases and norms away from their identity initialisation
        for name, parameter in model.named_parameters():
            if not name.startswith("backbone.") and parameter.dim() == 1:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


def _episode(shot, size=65, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, size, size, generator=generator)
    s_x = torch.randn(2, shot, 3, size, size, generator=generator)
    s_y = (torch.rand(2, shot, size, size, generator=generator) > 0.5).float()
    s_y[:, :, :3] = 255
    y = (torch.rand(2, size, size, generator=generator) > 0.5).long()
    return x, s_x, s_y, y


# window 8 on a 16x16 grid: unshifted blocks use 4 windows, shifted ones pad to 24x24 (9 windows)
# and crop; window 4: 16 and 25 windows.
@pytest.mark.parametrize("layers,shot,window_size", [(50, 1, 8), (50, 5, 4), (101, 1, 4), (101, 5, 8)])
def test_model_fast_equals_straightforward_in_evaluation(layers, shot, window_size):
    model = _model(layers, shot, window_size).eval()
    x, s_x, s_y, _ = _episode(shot)
    with torch.no_grad():
        expected = model.set_fast_path(False)(x, s_x, s_y).logits
        actual = model.set_fast_path(True)(x, s_x, s_y).logits
    assert expected.abs().max() > 0.1  # not a degenerate comparison
    assert_close(actual, expected, **TOLERANCE)


def _training_step(model, fast_path, batch):
    model.set_fast_path(fast_path, training=fast_path).train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)  # the same dropout masks on both paths
    x, s_x, s_y, y = batch
    loss = model.losses(model(x, s_x, s_y), y)["main_loss"]
    loss.backward()
    return loss.detach(), {name: parameter.grad.clone() for name, parameter in model.named_parameters()
                           if parameter.grad is not None}


@pytest.mark.parametrize("shot", [1, 2])
def test_model_fast_equals_straightforward_in_training(shot):
    model = _model(50, shot, 4)
    batch = _episode(shot, size=33, seed=1)
    loss, gradients = _training_step(model, False, batch)
    fast_loss, fast_gradients = _training_step(model, True, batch)
    assert_close(fast_loss, loss, atol=1e-5, rtol=0)
    assert fast_gradients.keys() == gradients.keys()
    for name, gradient in gradients.items():
        scale = max(gradient.abs().max().item(), 1e-12)
        assert_close(fast_gradients[name] / scale, gradient / scale, atol=1e-4, rtol=0, msg=name)


def test_fast_path_feeds_the_backbone_channels_last():
    model = _model(50, 1, 8).eval()
    seen = []
    model.backbone.register_forward_pre_hook(
        lambda module, inputs: seen.append(inputs[0].is_contiguous(memory_format=torch.channels_last)))
    x, s_x, s_y, _ = _episode(1, size=33)
    with torch.no_grad():
        model.set_fast_path(False)(x, s_x, s_y)
        calls = len(seen)
        model.set_fast_path(True)(x, s_x, s_y)
    # evaluation on the CPU: one backbone call per image (2 queries, 2 supports)
    assert calls == 4 and seen == [False] * 4 + [True] * 4


def test_training_and_evaluation_modes_take_their_own_path():
    model = _model(50, 1, 8)  # fast_path False for both
    model.set_fast_path(True)  # evaluation only; training keeps the straightforward path
    attentions = [module for name, module in model.named_modules() if name.endswith(("attn_q", "attn_s"))]
    model.train()
    assert not model.uses_fast_path and not any(attention.fast_path for attention in attentions)
    model.eval()
    assert model.uses_fast_path and all(attention.fast_path for attention in attentions)
    model.set_fast_path(False, training=True).train()
    assert model.uses_fast_path and all(attention.fast_path for attention in attentions)
    assert SCCAN(Backbone(50)).fast_path and not SCCAN(Backbone(50)).fast_path_training  # defaults
