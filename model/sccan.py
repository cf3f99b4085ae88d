"""The SCCAN meta learner (the original's ``OneModel`` in model/SCCAN.py)."""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.aspp import ASPP
from model.backbone import Backbone
from model.constants import COSINE_EPS, IGNORE_LABEL
from model.ensemble import (build_kshot_reweighting, build_merge_conv, ensemble_merge, kshot_weights,
                            low_feature_level, scene_differences)
from model.loss import weighted_dice_loss
from model.transformer import SCCATransformer

PROTOTYPE_EPS = 5e-4
PER_IMAGE_BACKBONE_PIXELS = 300 * 300


def resize(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear, align_corners=True, as everywhere in the original."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def masked_average_pooling(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """features: (B, C, H, W), mask: (B, 1, H, W) -> prototype (B, C, 1, 1) =
    sum(features*mask) / (sum(mask) + 5e-4)."""
    total = (features * mask).sum(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    area = mask.sum(dim=(2, 3), keepdim=True) + PROTOTYPE_EPS  # (B, 1, 1, 1)
    return total / area


def min_max_normalise(x: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max scaling of x (B, ...) to [0, 1], as the original scales its prior;
    COSINE_EPS keeps a constant map finite."""
    flat = x.flatten(1)  # (B, N)
    low = flat.min(dim=1, keepdim=True)[0]
    high = flat.max(dim=1, keepdim=True)[0]
    return ((flat - low) / (high - low + COSINE_EPS)).view_as(x)


def prior_mask(query_high: torch.Tensor, support_high: torch.Tensor, support_mask: torch.Tensor,
               output_size: Tuple[int, int]) -> torch.Tensor:
    """Training-free prior of one shot (the prior mask of the original's ``OneModel.forward``).

    query_high: (B, C, hq, wq) at its native size; support_high: (B, C, hs, ws);
    support_mask: (B, 1, hs, ws) -> (B, 1, *output_size), min-max normalised per sample.
    """
    if torch.is_autocast_enabled(query_high.device.type):  # bf16 cosines would swamp the prior
        with torch.autocast(query_high.device.type, enabled=False):
            return prior_mask(query_high.float(), support_high.float(), support_mask.float(),
                              output_size)
    batch, channels, query_height, query_width = query_high.shape
    support = support_high.flatten(2).transpose(1, 2)  # (B, hs*ws, C)
    query = query_high.flatten(2)  # (B, C, hq*wq)
    similarity = torch.bmm(support, query)  # (B, hs*ws, hq*wq)
    norms = support.norm(dim=2, keepdim=True) * query.norm(dim=1, keepdim=True)  # (B, hs*ws, hq*wq)
    similarity = similarity / (norms + COSINE_EPS)
    # The softmax weights are nearly uniform and the min-max step below divides by a tiny
    # range, so float32 rounding here alone moves the prior by ~1e-4; float64 for this cheap
    # part matches the original to ~1e-5 (the costly C-dim product above stays float32).
    weights = similarity.double().softmax(dim=1)  # softmax over support pixels
    mask = support_mask.flatten(2).double()  # (B, 1, hs*ws)
    prior = min_max_normalise(torch.bmm(mask, weights).squeeze(1))  # (B, hq*wq)
    prior = prior.to(query_high.dtype).view(batch, 1, query_height, query_width)  # (B, 1, hq, wq)
    return resize(prior, output_size)


def prior_masks(query_high: torch.Tensor, support_high: torch.Tensor, support_masks: torch.Tensor,
                output_size: Tuple[int, int]) -> torch.Tensor:
    """The fast path's :func:`prior_mask` of all K shots: the same maps (to ~1e-6).

    query_high: (B, C, hq, wq); support_high: (B, K, C, hs, ws); support_masks: (B, K, 1, hs, ws)
    -> (B, K, 1, *output_size), each map min-max normalised.

    The features are normalised once (the query once for all shots), so the similarity is one
    matrix product per shot with no (hs*ws, hq*wq) norm tensor to build and divide by. The softmax
    over support pixels needs no max shift (a cosine is at most 1): its numerators are exp(cos)
    in float32, and only the two sums it needs, the mask-weighted one and the plain one, are
    accumulated in float64 (the min-max step amplifies their rounding; see :func:`prior_mask`).
    """
    batch, shots = support_high.shape[:2]
    query_height, query_width = query_high.shape[-2:]
    with torch.autocast(query_high.device.type, enabled=False):  # cosines need float32 at least
        query = F.normalize(query_high.float().flatten(2), dim=1, eps=COSINE_EPS)  # (B, C, hq*wq)
        priors = []
        for shot in range(shots):
            support = F.normalize(support_high[:, shot].float().flatten(2), dim=1, eps=COSINE_EPS)  # (B, C, hs*ws)
            numerators = torch.bmm(support.transpose(1, 2), query).exp_()  # (B, hs*ws, hq*wq)
            mask = support_masks[:, shot].flatten(2).double()  # (B, 1, hs*ws)
            sums = torch.bmm(torch.cat([mask, torch.ones_like(mask)], dim=1), numerators.double())  # (B, 2, hq*wq)
            priors.append(min_max_normalise(sums[:, 0] / sums[:, 1]).float())  # (B, hq*wq)
        prior = torch.stack(priors, dim=1).view(batch * shots, 1, query_height, query_width)  # (B*K, 1, hq, wq)
        return resize(prior, output_size).view(batch, shots, 1, *output_size)


def _conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, bias=False)


def lay_out_like_gradient(weight: torch.Tensor, channels_last: bool) -> None:
    """Give a 1x1 convolution's weight (C_out, C_in, 1, 1) the strides its gradient comes
    with: channels-last (C_in, 1, C_in, C_in) when the convolution runs channels-last (its input
    is), contiguous (C_in, 1, 1, 1) otherwise. Both describe the same memory (the kernel dims
    have size 1), so no value moves and the convolution computes the same bits; but autograd
    keeps a gradient whose strides differ only on size-1 dims as it comes, while
    DistributedDataParallel compares all strides with the parameter's and, when they differ,
    warns "Grad strides do not match bucket view strides" and copies every step."""
    in_channels = weight.shape[1]
    strides = (in_channels, 1, in_channels, in_channels) if channels_last else (in_channels, 1, 1, 1)
    if weight.shape[2:] != (1, 1) or not weight.is_contiguous():
        raise ValueError(f"expected a contiguous 1x1 convolution weight, got shape {tuple(weight.shape)} "
                         f"strides {weight.stride()}")
    if weight.stride() != strides:
        weight.data = weight.data.as_strided(weight.shape, strides)


class SCCANOutput(NamedTuple):
    """What :meth:`SCCAN.forward` returns, in training and in evaluation mode alike, each at the
    output size (B, *, h, w):

    - ``logits`` (B, 2, h, w): the scores the prediction is the argmax of. Without a base
      learner the meta learner's logits; with one the ensemble's merged probabilities (not
      logits: BAM scores and trains on them as they are, its ``final_out``).
    - ``meta`` (B, 2, h, w): the meta learner's logits alone (``logits`` itself without a base
      learner; BAM's ``meta_out``).
    - ``base`` (B, N+1, h, w): the base learner's logits (BAM's ``base_out``); None without one.
    """
    logits: torch.Tensor
    meta: torch.Tensor
    base: Optional[torch.Tensor] = None

    @property
    def final(self) -> torch.Tensor:
        """BAM's name for :attr:`logits` with a base learner (``final_out``)."""
        return self.logits


# The name this type had when only the ensemble returned it (code written against it keeps working).
EnsembleOutputs = SCCANOutput


def episode_base_classes(cat_idx, batch: int) -> torch.Tensor:
    """BAM's ``cat_idx[0] + 1``: the episode class of each training sample in the base numbering
    (1..N). ``cat_idx`` is the collated ``subcls_list`` of a training batch (a list holding one
    (B,) tensor of indices into the train class list, which is the base class list) or that
    tensor itself -> (B,) long."""
    indices = cat_idx[0] if isinstance(cat_idx, (list, tuple)) else cat_idx
    indices = torch.as_tensor(indices).reshape(-1).long()  # (B,)
    if indices.numel() != batch:
        raise ValueError(f"cat_idx holds {indices.numel()} class indices for a batch of {batch}")
    return indices + 1


class SCCAN(nn.Module):
    """Self-calibrated cross attention network for few-shot segmentation.

    Args:
        backbone: the frozen :class:`Backbone` (ResNet-50/101).
        shot: number of support images K.
        zoom_factor: output scale relative to the backbone stride (8 returns full resolution).
        feature_size: side of the square grid the mid-level features are resized to (64 in the
            paper; any multiple of ``window_size``).
        window_size: transformer window (patch) size.
        reduce_dim: channel width of the meta learner.
        feature_dropout: Dropout2d rate after ``down_query``/``down_supp`` (0.5 in the paper).
        learner_base: None (the paper's SCCAN, exactly) or BAM's frozen base-learner head
            (``learner_base = Sequential(ppm, cls)`` of the PSPNet whose layers the backbone
            holds), mapping layer4 features (B, 2048, h, w) to (B, N+1, h, w) logits. It switches
            on BAM's ensemble (model/ensemble.py): the modules ``learner_base``, ``gram_merge``,
            ``cls_merge`` and, for ``shot`` > 1, ``kshot_rw`` join the state dict.
        low_fea: backbone level of the scene difference ('layer2' in BAM's configs); ensemble only.
        kshot_trans_dim: width of ``kshot_rw`` (0: one K -> K conv); ensemble with shot > 1 only.
        fast_path: True (default) computes the same logits in evaluation mode (the parity
            fixture within 1e-4) with fewer operations: fused attention (model/transformer.py),
            channels-last backbone input, the priors of all shots from pre-normalised features
            (:func:`prior_masks`). False runs the straightforward path written like the original
            (what the parity tests also run).
        fast_path_training: the same choice in training mode, False by default: the fast path
            rounds differently (~1e-7) and training amplifies that, so the losses of a run would
            drift from the straightforward path's (by ~1e-4 after 20 toy iterations, as much as
            running the original on 1 thread instead of 2 does; BENCHMARKS.md), for ~4% less
            time per CPU iteration. Both can be switched later with :meth:`set_fast_path`;
            neither changes a parameter's values (only the strides of four 1x1 weights, see
            :meth:`_lay_out_weights_like_gradients`).
    """

    def __init__(self, backbone: Backbone, shot: int = 1, zoom_factor: int = 8,
                 feature_size: int = 64, window_size: int = 8, reduce_dim: int = 256,
                 feature_dropout: float = 0.5, learner_base: Optional[nn.Module] = None,
                 low_fea: str = "layer2", kshot_trans_dim: int = 2, fast_path: bool = True,
                 fast_path_training: bool = False):
        super().__init__()
        if feature_size % window_size:
            raise ValueError(f"feature_size {feature_size} must be a multiple of window_size "
                             f"{window_size}")
        self.shot = shot
        self.zoom_factor = zoom_factor
        self.feature_size = feature_size
        self.backbone = backbone
        mid_channels = 512 + 1024
        self.down_query = nn.Sequential(_conv1x1(mid_channels, reduce_dim), nn.ReLU(inplace=True),
                                        nn.Dropout2d(p=feature_dropout))
        self.down_supp = nn.Sequential(_conv1x1(mid_channels, reduce_dim), nn.ReLU(inplace=True),
                                       nn.Dropout2d(p=feature_dropout))
        self.init_merge_query = nn.Sequential(_conv1x1(reduce_dim * 2 + 1, reduce_dim))
        self.init_merge_supp = nn.Sequential(_conv1x1(reduce_dim * 2 + 1, reduce_dim))
        self.transformer = SCCATransformer(dim=reduce_dim, depth=8, num_heads=8,
                                           window_size=window_size, mlp_ratio=1.0)
        self.ASPP_meta = ASPP(reduce_dim)
        self.res1_meta = nn.Sequential(_conv1x1(reduce_dim * 5, reduce_dim), nn.ReLU(inplace=True))
        self.res2_meta = nn.Sequential(
            nn.Conv2d(reduce_dim, reduce_dim, 3, padding=1, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(reduce_dim, reduce_dim, 3, padding=1, bias=False), nn.ReLU(inplace=True))
        self.cls_meta = nn.Sequential(
            nn.Conv2d(reduce_dim, reduce_dim, 3, padding=1, bias=False), nn.ReLU(inplace=True),
            nn.Dropout2d(p=0.1), nn.Conv2d(reduce_dim, 2, 1))
        # Registered after the meta learner, and only when switched on, so that without a base
        # learner the state dict (names, order, values) is the original SCCAN's.
        self.learner_base = learner_base
        self.gram_merge = self.cls_merge = self.kshot_rw = None
        if learner_base is not None:
            self.low_feature_level = low_feature_level(low_fea)
            for parameter in learner_base.parameters():
                parameter.requires_grad_(False)  # frozen, as BAM's freeze_modules
            self.gram_merge = build_merge_conv()
            self.cls_merge = build_merge_conv()
            if shot > 1:
                self.kshot_rw = build_kshot_reweighting(shot, kshot_trans_dim)
        self.fast_path_training = bool(fast_path_training)
        self.set_fast_path(fast_path)  # also lays out the weights (_lay_out_weights_like_gradients)
        # Evaluation only: a model.feature_cache.FeatureCache (see attached_feature_cache).
        self.feature_cache = None

    def set_fast_path(self, evaluation: bool, training: Optional[bool] = None) -> "SCCAN":
        """Choose the fast path (True) or the straightforward one (False) for evaluation mode
        and, when given, for training mode; see the class doc."""
        self.fast_path = bool(evaluation)
        if training is not None:
            self.fast_path_training = bool(training)
        self.transformer.set_fast_path(self.uses_fast_path)
        self._lay_out_weights_like_gradients()
        return self

    def _lay_out_weights_like_gradients(self) -> None:
        """The 1x1 weights whose convolutions run channels-last get channels-last strides
        (:func:`lay_out_like_gradient`), so that every gradient has its parameter's strides:
        the ASPP's image-pooling and 1x1 branches always (the transformer returns a transposed
        (B, C, H, W) view, whose strides are channels-last), ``down_query``/``down_supp`` when
        the current mode takes the fast path (its backbone features are channels-last). Called
        whenever the mode or the path changes; DistributedDataParallel, built in training mode,
        sees the training path's layout after every validation."""
        fast = self.uses_fast_path
        for convolution, channels_last in ((self.ASPP_meta.layer6_0[0], True),
                                           (self.ASPP_meta.layer6_1[0], True),
                                           (self.down_query[0], fast), (self.down_supp[0], fast)):
            lay_out_like_gradient(convolution.weight, channels_last)

    @property
    def uses_fast_path(self) -> bool:
        """Whether the current mode (training or evaluation) runs the fast path."""
        return self.fast_path_training if self.training else self.fast_path

    def train(self, mode: bool = True) -> "SCCAN":
        """The base learner's BatchNorm layers stay in eval mode: their statistics are the base
        training's (BAM's fix_bn does the same with its shipped ``fix_bn: True``). Its dropout
        follows the mode, as in BAM's training. The transformer takes the mode's path."""
        super().train(mode)
        self.transformer.set_fast_path(self.uses_fast_path)
        self._lay_out_weights_like_gradients()
        if self.learner_base is not None:
            for module in self.learner_base.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def feature_levels(self) -> Tuple[int, ...]:
        """Indices of the backbone levels the model reads: layer2 and layer3 (mid-level), layer4
        (prior, base learner) and, with a base learner, the scene-difference level."""
        levels = {1, 2, 3}
        if self.learner_base is not None:
            levels.add(self.low_feature_level)
        return tuple(sorted(levels))

    def _backbone(self, images: torch.Tensor):
        """Backbone features of (N, 3, H, W) images, from the attached :class:`FeatureCache
        <model.feature_cache.FeatureCache>` where it has them (evaluation only)."""
        if self.feature_cache is not None and not self.training:
            return self.feature_cache.features(self._run_backbone, images)
        return self._run_backbone(images)

    def _run_backbone(self, images: torch.Tensor):
        """On the CPU, large images go one at a time: the dilated feature maps of a batch of them
        fall out of cache, and per-image calls measure ~25% faster at 473x473 on 2 cores (see
        BENCHMARKS.md). So do all images in evaluation, where batches are one episode: an
        image's features then never depend on the batch it came in (channels-last convolutions
        round differently for another batch size), which keeps the feature cache's results
        exactly those of the plain loop. Small training images and accelerators get the whole
        batch at once. The fast path feeds the backbone channels-last images (~9% faster
        convolutions on the CPU, the same features to ~1e-6)."""
        if self.uses_fast_path:
            images = images.contiguous(memory_format=torch.channels_last)
        small = images.shape[-2] * images.shape[-1] < PER_IMAGE_BACKBONE_PIXELS
        if images.device.type != "cpu" or images.shape[0] == 1 or (small and self.training):
            return self.backbone(images)
        parts = [self.backbone(images[index:index + 1]) for index in range(images.shape[0])]
        return [torch.cat(level) for level in zip(*parts)]

    def _mid_features(self, features) -> torch.Tensor:
        return torch.cat([features[1], features[2]], dim=1)  # (N, 512+1024, h, w)

    def _output_size(self, x: torch.Tensor) -> Tuple[int, int]:
        height, width = x.shape[-2:]
        return (int((height - 1) / 8 * self.zoom_factor + 1),
                int((width - 1) / 8 * self.zoom_factor + 1))

    def _to_output_size(self, logits: torch.Tensor, output_size: Tuple[int, int]) -> torch.Tensor:
        return resize(logits, output_size) if self.zoom_factor != 1 else logits

    def support_features(self, s_x: torch.Tensor):
        """The frozen backbone's features of the supports s_x (B, K, 3, H, W): four levels, each
        (B*K, C, h, w). Passed back to :meth:`forward` or :meth:`ensemble_outputs` as
        ``support_features``, they serve several queries of the same supports without a second
        backbone pass (evaluation/predictor.py)."""
        return self._backbone(s_x.flatten(0, 1))

    def _meta_forward(self, x: torch.Tensor, s_x: torch.Tensor, s_y: torch.Tensor, support_features=None):
        """The meta learner: (logits on the feature grid (B, 2, g, g), query backbone features,
        support backbone features (each level (B*K, C, h, w)))."""
        batch = x.shape[0]
        shot = s_x.shape[1]
        grid = (self.feature_size, self.feature_size)

        query_features = self._backbone(x)
        if support_features is None:
            support_features = self.support_features(s_x)  # each (B*K, C, h, w)

        query_mid = resize(self.down_query(self._mid_features(query_features)), grid)  # (B, 256, g, g)
        support_mid = resize(self.down_supp(self._mid_features(support_features)), grid)  # (B*K, 256, g, g)
        support_mid = support_mid.view(batch, shot, *support_mid.shape[1:])  # (B, K, 256, g, g)
        support_high = resize(support_features[3], grid)  # (B*K, 2048, g, g)
        support_high = support_high.view(batch, shot, *support_high.shape[1:])  # (B, K, 2048, g, g)
        query_high = query_features[3]  # (B, 2048, hq, wq), native size on purpose (original)

        masks, masked_features, prototypes, priors = [], [], [], []
        for k in range(shot):
            mask = resize((s_y[:, k] == 1).float().unsqueeze(1), grid)  # (B, 1, g, g)
            masks.append(mask)
            masked_features.append(support_mid[:, k] * mask)
            prototypes.append(masked_average_pooling(support_mid[:, k], mask))
            if not self.uses_fast_path:
                priors.append(prior_mask(query_high, support_high[:, k], mask, grid))
        support_mask = torch.stack(masks).mean(0)  # (B, 1, g, g)
        support_feature = torch.stack(masked_features).mean(0)  # (B, 256, g, g)
        prototype = torch.stack(prototypes).mean(0).expand(-1, -1, *grid)  # (B, 256, g, g)
        if self.uses_fast_path:
            prior = prior_masks(query_high, support_high, torch.stack(masks, dim=1), grid).mean(1)  # (B, 1, g, g)
        else:
            prior = torch.stack(priors).mean(0)  # (B, 1, g, g)

        query_merged = self.init_merge_query(torch.cat([query_mid, prototype, prior], dim=1))
        support_merged = self.init_merge_supp(
            torch.cat([support_feature, prototype, support_mask], dim=1))
        query_refined = F.relu(self.transformer(query_merged, support_merged, support_mask))

        meta = self.res1_meta(self.ASPP_meta(query_refined))  # (B, 256, g, g)
        meta = self.res2_meta(meta) + meta
        # float32 logits under bf16 autocast too: the resizing, losses and scores stay float32.
        return self.cls_meta(meta).float(), query_features, support_features  # logits (B, 2, g, g)

    def _ensemble(self, meta_grid: torch.Tensor, query_features, support_features, shot: int,
                  output_size: Tuple[int, int], episode_base_class=None) -> SCCANOutput:
        """BAM's scene difference, K-shot reweighting and classifier ensemble. SCCAN's meta
        logits live on its feature grid (g x g, 64 in the paper) while the base learner's live on
        layer4's grid: the base logits are resized to the meta grid before the mix; every output
        is then brought to the output size, the base one from its own grid (as BAM upsamples
        ``base_out``)."""
        batch = meta_grid.shape[0]
        query_low = query_features[self.low_feature_level]  # (B, C, h, w)
        support_low = support_features[self.low_feature_level]  # (B*K, C, h, w)
        support_low = support_low.view(batch, shot, *support_low.shape[1:])  # (B, K, C, h, w)
        with torch.autocast(query_low.device.type, enabled=False):  # float32 Gram matrices
            differences = scene_differences(query_low.float(), support_low.float())  # (B, K, 1, 1)
        psi = (kshot_weights(differences, self.kshot_rw) * differences).sum(1, keepdim=True)  # (B, 1, 1, 1)
        with torch.no_grad():  # frozen head on frozen features
            base_native = self.learner_base(query_features[3]).float()  # (B, N+1, hq, wq)
        base_grid = resize(base_native, meta_grid.shape[-2:])  # (B, N+1, g, g)
        final_grid = ensemble_merge(meta_grid, base_grid, psi, self.gram_merge, self.cls_merge,
                                    episode_base_class).float()  # (B, 2, g, g)
        if self.zoom_factor == 1:
            return SCCANOutput(final_grid, meta_grid, base_grid)
        return SCCANOutput(resize(final_grid, output_size), resize(meta_grid, output_size),
                           resize(base_native, output_size))

    @torch.no_grad()
    def ensemble_outputs(self, x: torch.Tensor, s_x: torch.Tensor, s_y: torch.Tensor,
                         support_features=None) -> SCCANOutput:
        """The evaluation forward of a model with a base learner, without gradient (the
        generalised few-shot test, scoring the meta learner alone): :meth:`forward`'s output,
        refused for a model without a base learner. The episode class is never left out of p_B
        here (inference)."""
        if self.learner_base is None:
            raise ValueError("ensemble_outputs needs a model built with a base learner "
                             "(config key base_learner: True)")
        meta_grid, query_features, support_features = self._meta_forward(x, s_x, s_y, support_features)
        return self._ensemble(meta_grid, query_features, support_features, s_x.shape[1],
                              self._output_size(x))

    def forward(self, x: torch.Tensor, s_x: torch.Tensor, s_y: torch.Tensor, cat_idx=None,
                support_features=None) -> SCCANOutput:
        """Segment the support class in the query.

        Args:
            x: query images (B, 3, H, W), (H-1) and (W-1) multiples of 8.
            s_x: support images (B, K, 3, H, W).
            s_y: support labels (B, K, H, W), values {0, 1, 255}.
            cat_idx: the episode classes of a training batch (the collated ``subcls_list``: a
                list holding the (B,) train-class indices, or that tensor); needed in training
                mode with a base learner only (the episode class leaves p_B, BAM's ``cat_idx``).
            support_features: :meth:`support_features` of ``s_x``, computed earlier (optional).
        Returns:
            :class:`SCCANOutput` at the output size h = (H-1)/8*zoom_factor + 1 (w alike), the
            same type in both modes; :meth:`losses` turns it into the training losses.
        """
        output_size = self._output_size(x)
        meta_grid, query_features, support_features = self._meta_forward(x, s_x, s_y, support_features)
        if self.learner_base is None:
            logits = self._to_output_size(meta_grid, output_size)  # (B, 2, h, w)
            return SCCANOutput(logits, logits)
        episode_class = None
        if self.training:
            if cat_idx is None:
                raise ValueError("training with a base learner needs cat_idx (the batch's subcls_list)")
            episode_class = episode_base_classes(cat_idx, x.shape[0]).to(x.device)
        return self._ensemble(meta_grid, query_features, support_features, s_x.shape[1],
                              output_size, episode_class)

    def losses(self, output: SCCANOutput, y_m: torch.Tensor, y_b: Optional[torch.Tensor] = None
               ) -> Dict[str, torch.Tensor]:
        """The training losses of a :meth:`forward` output, by name (the training step weighs
        and sums them).

        Args:
            output: :meth:`forward`'s output in training mode.
            y_m: query labels (B, h, w) with values {0, 1, 255}.
            y_b: query labels in the base numbering (B, h, w) (0, base class index + 1, 255;
                BAM's ``y_b``); needed with a base learner only.
        Returns:
            without a base learner ``{"main_loss": dice(logits, y_m)}`` (the original's loss);
            with one BAM's three: ``main_loss`` = CE(final, y_m), ``aux_loss1`` = the meta
            learner's dice loss, ``aux_loss2`` = CE(base, y_b) without gradient (the base
            learner is frozen; logged).
        """
        if self.learner_base is None:
            return {"main_loss": weighted_dice_loss(output.logits, y_m.long())}
        if y_b is None:
            raise ValueError("training with a base learner needs the base label y_b (the training "
                             "dataset serves it with base_label=True)")
        main_loss = F.cross_entropy(output.logits, y_m.long(), ignore_index=IGNORE_LABEL)
        aux_loss1 = weighted_dice_loss(output.meta, y_m.long())
        with torch.no_grad():
            aux_loss2 = F.cross_entropy(output.base, y_b.long(), ignore_index=IGNORE_LABEL)
        return {"main_loss": main_loss, "aux_loss1": aux_loss1, "aux_loss2": aux_loss2}
