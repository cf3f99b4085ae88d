"""Self-calibrated cross attention (SCCA) transformer: the ``transformer`` of the original's
``OneModel`` (model/SCCAN.py) and the SCCA block of the paper (Xu et al., ICCV 2023).

Pure tensor helpers (window partition/reverse, patch alignment, window gathering, the fused
attention) are module-level functions so that they can be tested on hand-built examples.

Two paths compute the same function (within float32 rounding, ~1e-6): the straightforward one,
written like the original (explicit logits, ``torch.cat`` of the scaled and the cosine logits,
softmax, windows reversed then projected), and the fast one (``fast_path=True``, the default of
SCCAN): one ``F.scaled_dot_product_attention`` call per attention (the cosine logits are folded
into the dot product, see :func:`scca_attention`), the query/key/value projections of a token
set in one matrix product, and the output projection applied after the padding of the shifted
blocks is cropped away, on the tokens that are kept only.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.constants import COSINE_EPS

ALIGNMENT_EPS = 5e-4   # added to the support patch foreground count (original constant)
UNIT_EPS = 1e-12       # F.normalize's floor: a zero vector stays zero (its cosine logits are 0)


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Split a channels-last map into non-overlapping windows, row-major.

    x: (B, H, W, C) with H, W multiples of window_size -> (B, nW, window_size**2, C).
    """
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window_size, window_size, width // window_size, window_size,
               channels)  # (B, nH, ws, nW_w, ws, C)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (B, nH, nW_w, ws, ws, C)
    return x.reshape(batch, -1, window_size * window_size, channels)  # (B, nW, ws*ws, C)


def window_reverse(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`.

    windows: (B, nW, window_size**2, C) -> (B, H, W, C).
    """
    batch, _, _, channels = windows.shape
    x = windows.view(batch, height // window_size, width // window_size, window_size, window_size,
                     channels)  # (B, nH, nW_w, ws, ws, C)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (B, nH, ws, nW_w, ws, C)
    return x.reshape(batch, height, width, channels)  # (B, H, W, C)


def patch_alignment(query_windows: torch.Tensor, support_windows: torch.Tensor,
                    mask_windows: torch.Tensor) -> torch.Tensor:
    """For every query patch, the index of the most similar support foreground patch.

    query_windows, support_windows: (B, nW, N, C); mask_windows: (B, nW, N, 1), N tokens per
    window. Returns (B, nW) long: index_j = argmax_i score[b, i, j] with
    score = (cos(support_proto_i, query_proto_j) + 1) / 2 * has_fg_i. Ties (e.g. a support without
    any foreground patch) resolve to the first maximal index, like torch.argmax.
    """
    query_proto = query_windows.mean(dim=2)  # (B, nW, C)
    count = mask_windows.sum(dim=2) + ALIGNMENT_EPS  # (B, nW, 1)
    support_proto = (support_windows * mask_windows).sum(dim=2) / count  # (B, nW, C)
    # The original marks background patches by comparing the padded count with the constant
    # itself; kept as is so that tiny mask values behave the same.
    has_foreground = (count != ALIGNMENT_EPS).to(support_proto.dtype)  # (B, nW, 1)
    dots = torch.bmm(support_proto, query_proto.transpose(1, 2))  # (B, nW_s, nW_q)
    norms = support_proto.norm(dim=2, keepdim=True) * query_proto.norm(dim=2).unsqueeze(1)
    cosine = dots / (norms + COSINE_EPS)  # (B, nW_s, nW_q)
    score = (cosine + 1) / 2 * has_foreground  # (B, nW_s, nW_q)
    return score.argmax(dim=1)  # (B, nW_q)


def gather_windows(windows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """windows: (B, nW, N, C), index: (B, nW) -> (B, nW, N, C) with out[b, j] = windows[b, index[b, j]]."""
    batch, num_windows, tokens, channels = windows.shape
    index = index.view(batch, num_windows, 1, 1).expand(-1, -1, tokens, channels)  # (B, nW, N, C)
    return torch.gather(windows, 1, index)


def scca_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                   k_context: Optional[torch.Tensor] = None,
                   v_context: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Self-calibrated cross attention as ONE ``F.scaled_dot_product_attention`` call.

    q, k, v: (B_, h, N, d); k_context, v_context: (B_, h, M, d) or None -> (B_, h, N, d).
    Without a context: softmax(q.k * scale) v. With one, the logits against the token keys are
    ``scale * q.k`` and against the context keys the cosine ``q.k_c / (|q||k_c|)``, one softmax
    over both. Both kinds are one dot product of 2d-dim vectors: the query is
    ``[scale * q, q/|q|]``, a token key ``[k, 0]`` and a context key ``[0, k_c/|k_c|]``. The
    original's cosine divides by ``|q||k_c| + 1e-7``: the same value to ~1e-7 relative for the
    norms of these projections (a zero vector gives 0 logits either way).
    """
    if k_context is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    head_dim, tokens = q.shape[-1], k.shape[-2]
    query = torch.cat([q * scale, F.normalize(q, dim=-1, eps=UNIT_EPS)], dim=-1)  # (B_, h, N, 2d)
    key = q.new_zeros(*k.shape[:-2], tokens + k_context.shape[-2], 2 * head_dim)  # (B_, h, N+M, 2d)
    key[..., :tokens, :head_dim] = k
    key[..., tokens:, head_dim:] = F.normalize(k_context, dim=-1, eps=UNIT_EPS)
    value = torch.cat([v, v_context], dim=-2)  # (B_, h, N+M, d)
    return F.scaled_dot_product_attention(query, key, value, scale=1.0)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., C) -> (..., C)."""
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head attention inside windows, with an optional second key/value set.

    Without ``context``: plain self-attention, logits q.k * head_dim**-0.5.
    With ``context`` (the aligned support window): keys/values are [tokens | context]; logits
    against the token keys are scaled dot products, logits against the context keys are the
    cosine q.k / (|q||k| + 1e-7) (no temperature); one softmax over both.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.fast_path = False  # set by SCCATransformer.set_fast_path

    def _heads(self, x: torch.Tensor, parts: int) -> torch.Tensor:
        batch, tokens, _ = x.shape
        x = x.view(batch, tokens, parts, self.num_heads, self.head_dim)  # (B_, N, P, h, d)
        return x.permute(2, 0, 3, 1, 4)  # (P, B_, h, N, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor = None) -> torch.Tensor:
        """The straightforward path: x (B_, N, C) window tokens; context (B_, M, C) or None ->
        (B_, N, C). The fast path is :meth:`attend`, called by :class:`SCCABlock` when
        ``fast_path`` is set, which projects only the tokens kept after cropping."""
        batch, tokens, channels = x.shape
        q = self._heads(self.q(x), 1)[0]  # (B_, h, N, d)
        k, v = self._heads(self.kv(x), 2)  # (B_, h, N, d) each
        logits = (q * self.scale) @ k.transpose(-2, -1)  # (B_, h, N, N)
        if context is not None:
            k_context, v_context = self._heads(self.kv(context), 2)  # (B_, h, M, d) each
            dots = q @ k_context.transpose(-2, -1)  # (B_, h, N, M)
            norms = q.norm(dim=-1, keepdim=True) * k_context.norm(dim=-1).unsqueeze(-2)
            logits = torch.cat([logits, dots / (norms + COSINE_EPS)], dim=-1)  # (B_, h, N, N+M)
            v = torch.cat([v, v_context], dim=2)  # (B_, h, N+M, d)
        attention = logits.softmax(dim=-1)
        out = attention @ v  # (B_, h, N, d)
        out = out.transpose(1, 2).reshape(batch, tokens, channels)  # (B_, N, C)
        return self.proj(out)

    def attend(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The fast path's attention, before the output projection: x (B_, N, C), context
        (B_, M, C) or None -> per-head outputs (B_, h, N, d). q and kv of the tokens come from one
        matrix product (their weights stacked, 3C outputs)."""
        weight = torch.cat([self.q.weight, self.kv.weight])  # (3C, C)
        bias = None if self.q.bias is None else torch.cat([self.q.bias, self.kv.bias])  # (3C,)
        q, k, v = self._heads(F.linear(x, weight, bias), 3)  # (B_, h, N, d) each
        k_context = v_context = None
        if context is not None:
            k_context, v_context = self._heads(self.kv(context), 2)  # (B_, h, M, d) each
        return scca_attention(q, k, v, self.scale, k_context, v_context)


class SCCABlock(nn.Module):
    """One SCCA block: patch-aligned cross attention for the query, window self-attention for
    the support. Shifted blocks zero-pad by half a window instead of rolling (original quirk)."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift: bool,
                 mlp_ratio: float = 1.0, qkv_bias: bool = True):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2 if shift else 0
        self.norm1 = nn.LayerNorm(dim)
        self.attn_q = WindowAttention(dim, num_heads, qkv_bias)
        self.attn_s = WindowAttention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp_q = Mlp(dim, hidden)
        self.mlp_s = Mlp(dim, hidden)

    def forward(self, query: torch.Tensor, support: torch.Tensor, mask: torch.Tensor,
                height: int, width: int, update_support: bool = True
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """query, support: (B, H*W, C); mask: (B, H*W, 1) -> (query, support), both (B, H*W, C).

        ``update_support=False`` skips the support branch and returns the support unchanged
        (the last block's support output is never used)."""
        batch, _, channels = query.shape
        shortcut_query, shortcut_support = query, support
        query = self.norm1(query).view(batch, height, width, channels)  # (B, H, W, C)
        support = self.norm1(support).view(batch, height, width, channels)  # (B, H, W, C)
        mask = mask.view(batch, height, width, 1)  # (B, H, W, 1)
        pad = self.shift_size
        if pad:
            query = F.pad(query, (0, 0, pad, pad, pad, pad))  # (B, H+2p, W+2p, C)
            support = F.pad(support, (0, 0, pad, pad, pad, pad))  # (B, H+2p, W+2p, C)
            mask = F.pad(mask, (0, 0, pad, pad, pad, pad))  # (B, H+2p, W+2p, 1)
        ws = self.window_size
        query_windows = window_partition(query, ws)  # (B, nW, ws*ws, C)
        support_windows = window_partition(support, ws)  # (B, nW, ws*ws, C)
        mask_windows = window_partition(mask, ws)  # (B, nW, ws*ws, 1)
        index = patch_alignment(query_windows, support_windows, mask_windows)  # (B, nW)
        aligned = gather_windows(support_windows, index)  # (B, nW, ws*ws, C)

        if self.attn_q.fast_path:
            query_heads = self.attn_q.attend(query_windows.flatten(0, 1), aligned.flatten(0, 1))  # (B*nW, h, ws*ws, d)
            query_out = self.attn_q.proj(self._kept_tokens(query_heads, batch, height, width))  # (B, H*W, C)
        else:
            query_out = self._tokens(self.attn_q(query_windows.flatten(0, 1), aligned.flatten(0, 1)),
                                     batch, height, width)  # (B, H*W, C)
        query = shortcut_query + query_out
        query = query + self.mlp_q(self.norm2(query))
        if not update_support:
            return query, shortcut_support
        if self.attn_s.fast_path:
            support_heads = self.attn_s.attend(support_windows.flatten(0, 1))  # (B*nW, h, ws*ws, d)
            support_out = self.attn_s.proj(self._kept_tokens(support_heads, batch, height, width))
        else:
            support_out = self._tokens(self.attn_s(support_windows.flatten(0, 1)), batch, height, width)
        support = shortcut_support + support_out  # (B, H*W, C)
        support = support + self.mlp_s(self.norm2(support))
        return query, support

    def _tokens(self, windows: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
        """(B*nW, ws*ws, C) windows of the (padded) map -> (B, H*W, C) tokens of the H x W map."""
        ws, pad, channels = self.window_size, self.shift_size, windows.shape[-1]
        merged = window_reverse(windows.view(batch, -1, ws * ws, channels), ws,
                                height + 2 * pad, width + 2 * pad)  # (B, H+2p, W+2p, C)
        if pad:
            merged = merged[:, pad:pad + height, pad:pad + width]  # (B, H, W, C)
        return merged.reshape(batch, height * width, channels)  # (B, H*W, C)

    def _kept_tokens(self, heads: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
        """Per-head window outputs (B*nW, h, ws*ws, d) of the (padded) map -> (B, H*W, h*d) tokens
        of the H x W map, heads merged and windows reversed in one copy; the padding is cropped
        before the output projection, which then runs on the kept tokens only."""
        ws, pad = self.window_size, self.shift_size
        _, num_heads, _, head_dim = heads.shape
        rows, columns = (height + 2 * pad) // ws, (width + 2 * pad) // ws
        merged = heads.view(batch, rows, columns, num_heads, ws, ws, head_dim)  # (B, nH, nW_w, h, ws, ws, d)
        merged = merged.permute(0, 1, 4, 2, 5, 3, 6)  # (B, nH, ws, nW_w, ws, h, d)
        merged = merged.reshape(batch, rows * ws, columns * ws, num_heads * head_dim)  # (B, H+2p, W+2p, C)
        if pad:
            merged = merged[:, pad:pad + height, pad:pad + width]  # (B, H, W, C)
        return merged.reshape(batch, height * width, num_heads * head_dim)  # (B, H*W, C)


class SCCALayer(nn.Module):
    """A stage of blocks alternating unshifted / shifted windows (``layers.0.blocks.*``)."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float = 1.0):
        super().__init__()
        self.blocks = nn.ModuleList([
            SCCABlock(dim, num_heads, window_size, shift=(index % 2 == 1), mlp_ratio=mlp_ratio)
            for index in range(depth)])

    def forward(self, query, support, mask, height, width):
        last = len(self.blocks) - 1
        for index, block in enumerate(self.blocks):
            # The last block's support output is unused by the original too: skip computing it.
            query, support = block(query, support, mask, height, width, update_support=index < last)
        return query, support


class SCCATransformer(nn.Module):
    """The SCCA transformer of SCCAN: 8 blocks, dim 256, 8 heads, window 8, MLP ratio 1."""

    def __init__(self, dim: int = 256, depth: int = 8, num_heads: int = 8, window_size: int = 8,
                 mlp_ratio: float = 1.0):
        super().__init__()
        self.window_size = window_size
        self.layers = nn.ModuleList([SCCALayer(dim, depth, num_heads, window_size, mlp_ratio)])
        self.norm0 = nn.LayerNorm(dim)

    def set_fast_path(self, enabled: bool) -> "SCCATransformer":
        """Switch every attention between the fast path and the straightforward one (same
        function, same parameters; see the module docstring)."""
        for module in self.modules():
            if isinstance(module, WindowAttention):
                module.fast_path = bool(enabled)
        return self

    def forward(self, query: torch.Tensor, support: torch.Tensor,
                support_mask: torch.Tensor) -> torch.Tensor:
        """query, support: (B, C, H, W); support_mask: (B, 1, H, W), H and W multiples of the
        window size -> refined query features (B, C, H, W)."""
        batch, channels, height, width = query.shape
        if height % self.window_size or width % self.window_size:
            raise ValueError(f"feature map {height}x{width} is not a multiple of the window size "
                             f"{self.window_size}")
        query = query.flatten(2).transpose(1, 2)  # (B, H*W, C)
        support = support.flatten(2).transpose(1, 2)  # (B, H*W, C)
        mask = support_mask.flatten(2).transpose(1, 2)  # (B, H*W, 1)
        for layer in self.layers:
            query, support = layer(query, support, mask, height, width)
        query = self.norm0(query)
        return query.transpose(1, 2).reshape(batch, channels, height, width)  # (B, C, H, W)
