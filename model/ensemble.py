"""The ensemble of the meta learner with a frozen base learner, as BAM builds it (Lang et al.,
CVPR 2022, "Learning What Not to Segment", github.com/chunbolang/BAM, model/BAM.py; SCCAN's
code is built on BAM and its configs still carry these keys).

Pieces, in the order of BAM's forward:

* scene difference: the Gram matrix of the channel-normalised low-level features (``low_fea``,
  layer2) of the query and of each support; psi_k = ||G_q - G_s,k||_F / ||ones(C, C)||_F
  (:func:`gram_matrix`, :func:`scene_differences`);
* K-shot reweighting (``kshot_rw``): the psi of the K shots, sorted ascending, go through a small
  1x1-conv net; the result, put back in shot order, is softmaxed over the shots and weighs the
  psi into one scalar per episode (:func:`build_kshot_reweighting`, :func:`kshot_weights`);
* the merge (``gram_merge``, ``cls_merge``: 1x1 convs 2 -> 1 without bias, initialised to
  [1, 0] so that the ensemble starts as the meta learner alone): :func:`ensemble_merge`.

All of it is pure tensor code; model/sccan.py owns the modules and calls these helpers.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

__all__ = ["GRAM_EPS", "LOW_FEATURE_LEVELS", "base_foreground", "build_kshot_reweighting",
           "build_merge_conv", "ensemble_merge", "gram_matrix", "kshot_weights",
           "low_feature_level", "scene_differences"]

# BAM's get_gram_matrix adds 1e-7 to the product of the channel norms.
GRAM_EPS = 1e-7
# ``low_fea`` values -> index in the backbone's output list [layer1, layer2, layer3, layer4].
LOW_FEATURE_LEVELS = {"layer1": 0, "layer2": 1, "layer3": 2, "layer4": 3}


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Channel-normalised Gram matrix (BAM's ``get_gram_matrix``).

    features: (B, C, H, W) -> (B, C, C) with G[i, j] = <f_i, f_j> / (|f_i| |f_j| + 1e-7), f_i the
    i-th channel flattened over the H*W pixels.
    """
    batch, channels = features.shape[:2]
    flat = features.reshape(batch, channels, -1)  # (B, C, H*W)
    norms = flat.norm(dim=2, keepdim=True)  # (B, C, 1)
    products = torch.bmm(flat, flat.transpose(1, 2))  # (B, C, C)
    norm_products = torch.bmm(norms, norms.transpose(1, 2))  # (B, C, C)
    return products / (norm_products + GRAM_EPS)


def scene_differences(query_low: torch.Tensor, support_low: torch.Tensor) -> torch.Tensor:
    """Scene difference psi of each shot (BAM's ``est_val_list``).

    query_low: (B, C, h, w); support_low: (B, K, C, h, w) -> (B, K, 1, 1) with
    psi_k = ||G_q - G_s,k||_F / ||ones(C, C)||_F, which lies in [0, 2] (the entries of a
    normalised Gram matrix lie in [-1, 1]).
    """
    batch, shot = support_low.shape[:2]
    query_gram = gram_matrix(query_low)  # (B, C, C)
    support_gram = gram_matrix(support_low.flatten(0, 1))  # (B*K, C, C)
    support_gram = support_gram.view(batch, shot, *support_gram.shape[1:])  # (B, K, C, C)
    # ||ones(C, C)||_F = C, written as BAM computes it so that the scale reads the same.
    largest = torch.ones_like(query_gram).norm(dim=(1, 2))  # (B,)
    difference = (query_gram.unsqueeze(1) - support_gram).norm(dim=(2, 3))  # (B, K)
    return (difference / largest.unsqueeze(1)).view(batch, shot, 1, 1)  # (B, K, 1, 1)


def build_kshot_reweighting(shot: int, kshot_trans_dim: int) -> nn.Module:
    """BAM's ``kshot_rw`` for ``shot`` > 1: 1x1 conv K -> kshot_trans_dim, ReLU, 1x1 conv back to
    K (both with bias, as BAM); with ``kshot_trans_dim`` 0 one K -> K conv without bias whose
    weights start at 1/K (a plain average of the sorted psi for every shot)."""
    if shot < 2:
        raise ValueError(f"the K-shot reweighting needs shot > 1, got {shot}")
    if kshot_trans_dim < 0:
        raise ValueError(f"kshot_trans_dim must be >= 0, got {kshot_trans_dim}")
    if kshot_trans_dim == 0:
        reweighting = nn.Conv2d(shot, shot, kernel_size=1, bias=False)
        nn.init.constant_(reweighting.weight, 1.0 / shot)
        return reweighting
    return nn.Sequential(nn.Conv2d(shot, kshot_trans_dim, kernel_size=1), nn.ReLU(inplace=True),
                         nn.Conv2d(kshot_trans_dim, shot, kernel_size=1))


def kshot_weights(differences: torch.Tensor, reweighting: Optional[nn.Module]) -> torch.Tensor:
    """Weights of the shots' scene differences (BAM's ``weight_soft``).

    differences: (B, K, 1, 1) -> weights (B, K, 1, 1) that sum to one over K. The reweighting
    net sees the psi sorted ascending (so that it learns from ranks, whatever the shot order);
    its outputs are put back in shot order before the softmax, so permuting the shots permutes
    the weights. K = 1 (``reweighting`` None): weight 1.
    """
    if differences.shape[1] == 1:
        return torch.ones_like(differences)
    if reweighting is None:
        raise ValueError(f"{differences.shape[1]} shots need the kshot_rw reweighting module")
    sorted_values, sorted_order = differences.sort(dim=1)  # (B, K, 1, 1) each
    # sorted_order[k] is the shot at sorted position k; its inverse permutation gives, for each
    # shot, its sorted position, which is where that shot's output sits.
    sorted_position = sorted_order.argsort(dim=1)  # (B, K, 1, 1)
    weights = reweighting(sorted_values).gather(1, sorted_position)  # (B, K, 1, 1)
    return weights.softmax(dim=1)


def build_merge_conv() -> nn.Conv2d:
    """BAM's ``gram_merge``/``cls_merge``: 1x1 conv 2 -> 1 without bias, weights [1, 0], so that
    at initialisation it passes its first input through."""
    merge = nn.Conv2d(2, 1, kernel_size=1, bias=False)
    with torch.no_grad():
        merge.weight.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))
    return merge


def base_foreground(base_probability: torch.Tensor,
                    episode_base_class: Optional[Sequence[int]] = None) -> torch.Tensor:
    """p_B, the base learner's probability that a pixel belongs to any base class.

    base_probability: (B, N+1, h, w), softmax over background + N base classes -> (B, 1, h, w),
    the sum over classes 1..N. ``episode_base_class`` (training only, BAM's ``cat_idx[0] + 1``):
    per sample, the episode class in the base numbering (1..N), left out of the sum, because in
    training the episode's class is a base class and must not count against the meta learner's
    foreground.
    """
    if episode_base_class is None:
        return base_probability[:, 1:].sum(dim=1, keepdim=True)
    batch, classes = base_probability.shape[:2]
    episode_class = torch.as_tensor(episode_base_class, device=base_probability.device)
    episode_class = episode_class.view(batch, 1)  # (B, 1)
    class_ids = torch.arange(classes, device=base_probability.device).view(1, classes)  # (1, N+1)
    keep = (class_ids != 0) & (class_ids != episode_class)  # (B, N+1)
    keep = keep.to(base_probability.dtype).view(batch, classes, 1, 1)  # (B, N+1, 1, 1)
    return (base_probability * keep).sum(dim=1, keepdim=True)


def ensemble_merge(meta_logits: torch.Tensor, base_logits: torch.Tensor, scene_difference: torch.Tensor,
                   gram_merge: nn.Module, cls_merge: nn.Module,
                   episode_base_class: Optional[Sequence[int]] = None) -> torch.Tensor:
    """BAM's classifier ensemble on one grid.

    meta_logits: (B, 2, h, w); base_logits: (B, N+1, h, w), already on the meta grid;
    scene_difference: (B, 1, 1, 1) psi; ``episode_base_class``: see :func:`base_foreground`.
    Returns final (B, 2, h, w) = [cls_merge([gram_merge([p_m_bg, psi]), p_B]),
    gram_merge([p_m_fg, psi])], p_m = softmax(meta_logits).
    """
    meta_probability = meta_logits.softmax(dim=1)
    base_map = base_foreground(base_logits.softmax(dim=1), episode_base_class)  # (B, 1, h, w)
    meta_background, meta_foreground = meta_probability[:, 0:1], meta_probability[:, 1:]
    psi = scene_difference.expand_as(meta_foreground)  # (B, 1, h, w)
    meta_background = gram_merge(torch.cat([meta_background, psi], dim=1))
    meta_foreground = gram_merge(torch.cat([meta_foreground, psi], dim=1))
    final_background = cls_merge(torch.cat([meta_background, base_map], dim=1))
    return torch.cat([final_background, meta_foreground], dim=1)


def low_feature_level(low_fea: str) -> int:
    """Index of ``low_fea`` ('layer1'..'layer4') in the backbone's output list."""
    if low_fea not in LOW_FEATURE_LEVELS:
        raise ValueError(f"low_fea must be one of {sorted(LOW_FEATURE_LEVELS)}, got {low_fea!r}")
    return LOW_FEATURE_LEVELS[low_fea]

