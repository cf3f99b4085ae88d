"""Pure tensor helpers of the SCCA transformer, on hand-built examples."""
import ast
import os
import re
from unittest import mock

import pytest
import torch

from model.transformer import (SCCABlock, SCCATransformer, WindowAttention, gather_windows, patch_alignment,
                               scca_attention, window_partition, window_reverse)
from tests.support import FIXTURES


def test_window_partition_layout_and_round_trip():
    x = torch.arange(2 * 16 * 24 * 3, dtype=torch.float32).view(2, 16, 24, 3)
    windows = window_partition(x, 8)
    assert windows.shape == (2, 6, 64, 3)
    # window 4 = second row of windows, second column: rows 8..15, cols 8..15, row-major tokens
    torch.testing.assert_close(windows[1, 4], x[1, 8:16, 8:16].reshape(64, 3))
    torch.testing.assert_close(window_reverse(windows, 8, 16, 24), x)


def _windows_from_prototypes(prototypes, tokens=4):
    return prototypes.unsqueeze(2).expand(-1, -1, tokens, -1).contiguous()


def test_alignment_picks_most_similar_foreground_patch():
    directions = torch.eye(4)
    # support windows: 0 bg, 1 fg along e1, 2 fg along e2, 3 bg along e3 (excluded: no mask)
    support = _windows_from_prototypes(torch.stack([directions[0], directions[1], directions[2],
                                                    directions[3]]).unsqueeze(0))
    mask = torch.zeros(1, 4, 4, 1)
    mask[0, 1] = 1
    mask[0, 2, :2] = 1
    # query windows point at e2, e1, e3 (only in background), mixture closer to e1
    query = _windows_from_prototypes(torch.stack([directions[2], directions[1], directions[3],
                                                  0.9 * directions[1] + 0.1 * directions[2]]).unsqueeze(0))
    index = patch_alignment(query, support, mask)
    # query e3 has cos 0 with both fg patches: the tie resolves to the first one (1)
    assert index.tolist() == [[2, 1, 1, 1]]


def test_alignment_without_foreground_falls_back_to_first_index():
    torch.manual_seed(0)
    query = torch.randn(2, 9, 16, 8)
    support = torch.randn(2, 9, 16, 8)
    index = patch_alignment(query, support, torch.zeros(2, 9, 16, 1))
    assert index.tolist() == [[0] * 9, [0] * 9]


def test_gather_windows():
    windows = torch.arange(2 * 3 * 2 * 1, dtype=torch.float32).view(2, 3, 2, 1)
    out = gather_windows(windows, torch.tensor([[2, 2, 0], [1, 0, 1]]))
    assert out[0, 0].tolist() == windows[0, 2].tolist() and out[1, 2].tolist() == windows[1, 1].tolist()


def _uniform_attention_block(shift):
    block = SCCABlock(dim=8, num_heads=2, window_size=8, shift=shift)
    with torch.no_grad():
        for attention in (block.attn_q, block.attn_s):
            attention.q.weight.zero_(); attention.q.bias.zero_()   # uniform attention
            attention.kv.bias.zero_(); attention.proj.bias.zero_()
        for mlp in (block.mlp_q, block.mlp_s):
            mlp.fc2.weight.zero_(); mlp.fc2.bias.zero_()
    return block


def test_padded_shift_keeps_output_aligned():
    """A single non-zero query token spreads (uniform attention) over exactly the window that
    contains it: windows start at 0, 8, ... unshifted and at -4, 4, 12, ... when shifted."""
    torch.manual_seed(0)
    size = 32
    query = torch.zeros(1, size, size, 8)
    query[0, 10, 10] = torch.randn(8)
    support = torch.zeros(1, size * size, 8)
    mask = torch.ones(1, size * size, 1)
    for shift, window in ((False, slice(8, 16)), (True, slice(4, 12))):
        block = _uniform_attention_block(shift).eval()
        with torch.no_grad():
            out, _ = block(query.view(1, -1, 8), support, mask, size, size)
        delta = (out.view(1, size, size, 8) - query).abs().sum(-1)[0]
        expected = torch.zeros(size, size, dtype=torch.bool)
        expected[window, window] = True
        assert torch.equal(delta > 1e-6, expected), f"shift={shift}"


def _seeded_transformer(window_size=4):
    torch.manual_seed(0)
    return SCCATransformer(dim=16, depth=2, num_heads=2, window_size=window_size).eval()


def test_a_feature_map_that_windows_do_not_tile_is_refused_naming_its_size():
    transformer = _seeded_transformer()
    for height, width in ((8, 6), (6, 8)):  # either side alone is enough
        with pytest.raises(ValueError, match=rf"^feature map {height}x{width} is not a multiple of the "
                                             r"window size 4$"):
            transformer(torch.zeros(1, 16, height, width), torch.zeros(1, 16, height, width),
                        torch.zeros(1, 1, height, width))


def test_set_fast_path_switches_every_attention_and_the_block_takes_it():
    """Both paths give the same numbers (test_fast_path.py), so a switch that does nothing would
    pass every equivalence test: count the fused attention calls instead."""
    transformer = _seeded_transformer()
    attentions = [module for module in transformer.modules() if isinstance(module, WindowAttention)]
    assert len(attentions) == 4  # 2 blocks x (query, support)
    generator = torch.Generator().manual_seed(1)
    query, support = torch.randn(2, 1, 16, 8, 8, generator=generator)
    mask = (torch.rand(1, 1, 8, 8, generator=generator) > 0.5).float()
    calls = {True: 0, False: 0}
    for enabled in (True, False):
        assert transformer.set_fast_path(enabled) is transformer
        assert all(attention.fast_path is enabled for attention in attentions)
        counted = mock.patch("model.transformer.scca_attention", side_effect=scca_attention)
        with counted as spy, torch.no_grad():
            transformer(query, support, mask)
        calls[enabled] = spy.call_count
    # the last block skips its support branch: 2 + 1 fused attentions on the fast path
    assert calls == {True: 3, False: 0}


def test_a_batch_is_its_episodes_each_alone():
    """Every reshape keeps the batch axis apart (a 1-episode batch cannot tell): two episodes
    together give what each gives alone, on both paths."""
    transformer = _seeded_transformer()
    generator = torch.Generator().manual_seed(2)
    query, support = torch.randn(2, 2, 16, 8, 12, generator=generator)
    mask = (torch.rand(2, 1, 8, 12, generator=generator) > 0.5).float()
    mask[1] = 0  # the second episode has no foreground: it falls back to the first window
    for fast_path in (False, True):
        transformer.set_fast_path(fast_path)
        with torch.no_grad():
            together = transformer(query, support, mask)
            alone = torch.cat([transformer(query[i:i + 1], support[i:i + 1], mask[i:i + 1]) for i in range(2)])
        torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
        assert together.shape == (2, 16, 8, 12)


def test_the_default_transformer_is_the_original_s_tensor_for_tensor():
    """The constructor's defaults (dim 256, depth 8, 8 heads, window 8, MLP ratio 1, q/kv biases)
    describe the paper's transformer: its state_dict is the original's ``transformer.*`` entries
    (tests/fixtures/sccan_resnet50_state_dict.txt, written from the original's model), with the
    same shapes. The head count does not show in the shapes: it is the 8 of the default."""
    expected = {}
    with open(os.path.join(FIXTURES, "sccan_resnet50_state_dict.txt")) as handle:
        for line in handle:
            name, shape, _ = re.fullmatch(r"(\S+) (\(.*\)) (\S+)", line.strip()).groups()
            if name.startswith("transformer."):
                expected[name[len("transformer."):]] = ast.literal_eval(shape)
    transformer = SCCATransformer()
    assert {name: tuple(tensor.shape) for name, tensor in transformer.state_dict().items()} == expected
    assert all(module.num_heads == 8 for module in transformer.modules() if isinstance(module, WindowAttention))
    # nor does the window: 8, and the shifted blocks (odd indices) pad by half of it
    assert transformer.window_size == 8
    blocks = transformer.layers[0].blocks
    assert [(block.window_size, block.shift_size) for block in blocks] == [(8, 0), (8, 4)] * 4
    # a bare transformer is the straightforward one until set_fast_path (SCCAN sets it)
    assert not any(module.fast_path for module in transformer.modules() if isinstance(module, WindowAttention))


def test_a_block_updates_the_support_unless_told_not_to():
    torch.manual_seed(3)
    block = SCCABlock(dim=8, num_heads=2, window_size=4, shift=False).eval()
    query, support = torch.randn(2, 1, 64, 8)
    mask = torch.ones(1, 64, 1)
    with torch.no_grad():
        _, updated = block(query, support, mask, 8, 8)
        _, kept = block(query, support, mask, 8, 8, update_support=False)
    assert kept is support and not torch.allclose(updated, support)
