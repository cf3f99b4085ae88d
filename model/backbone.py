"""Frozen deep-stem dilated ResNet ("ResNet v2" of PSPNet/PFENet/BAM), the backbone of the
original SCCAN's ``OneModel`` (model/SCCAN.py in github.com/Sam1224/SCCAN).

The state_dict names follow the original exactly (``backbone.body.conv1.weight`` ...), so the
released SCCAN checkpoints and the ``initmodel/resnet{50,101}_v2.pth`` ImageNet weights load
unchanged.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.checkpoint import check_state_dict, extract_state_dict, load_checkpoint

BLOCKS_PER_LAYER = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine terms, all stored as buffers.

    y = x * scale + (bias - running_mean * scale), scale = weight * rsqrt(running_var + eps).
    There is no ``num_batches_tracked`` buffer; a loaded dict that has one still loads.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        # Folded into the preceding conv by conv_frozen_bn; False makes this module run (and its
        # hooks fire), see separate_batch_norm().
        self.fold_into_conv = True
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Checkpoints made with nn.BatchNorm2d (PSPNet-style initmodel files, some releases)
        # carry num_batches_tracked; it has no meaning for frozen statistics.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def scale_and_shift(self) -> Tuple[torch.Tensor, torch.Tensor]:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        scale, shift = self.scale_and_shift()
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def conv_frozen_bn(x: torch.Tensor, conv: nn.Conv2d, bn: nn.Module) -> torch.Tensor:
    """bn(conv(x)) as ONE convolution with the frozen BN folded into its weights and bias.

    Mathematically identical to the two steps (the statistics never change); it saves a full
    pass over every feature map of the backbone, about a fifth of its CPU time. The fused
    weights are recomputed on each call (cheap), so loading new weights needs no cache reset.
    A trainable ``nn.BatchNorm2d`` (BAM's PSPNet base learner, model/pspnet.py) runs as its own
    step: its statistics change in training mode, so nothing can be folded.
    """
    if not isinstance(bn, FrozenBatchNorm2d) or not bn.fold_into_conv:
        return bn(conv(x))
    scale, shift = bn.scale_and_shift()
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    return F.conv2d(x, weight, shift, conv.stride, conv.padding, conv.dilation, conv.groups)


class Bottleneck(nn.Module):
    """ResNet bottleneck (expansion 4) with the stride and dilation on the 3x3 conv.

    ``norm_layer``: FrozenBatchNorm2d for SCCAN's frozen backbone, nn.BatchNorm2d for BAM's
    trainable base learner (model/pspnet.py); the state_dict names are the same."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, dilation: int = 1,
                 downsample: Optional[nn.Module] = None,
                 norm_layer: Callable[[int], nn.Module] = FrozenBatchNorm2d):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = norm_layer(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn2 = norm_layer(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = norm_layer(out_channels)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, H, W) -> (B, 4*width, H/stride, W/stride)."""
        identity = x if self.downsample is None else conv_frozen_bn(x, self.downsample[0],
                                                                    self.downsample[1])
        out = F.relu(conv_frozen_bn(x, self.conv1, self.bn1), inplace=True)
        out = F.relu(conv_frozen_bn(out, self.conv2, self.bn2), inplace=True)
        out = conv_frozen_bn(out, self.conv3, self.bn3)
        return F.relu(out.add_(identity), inplace=True)


class DilatedResNet(nn.Module):
    """Deep-stem ResNet with output stride 8 (layer3/layer4 dilated instead of strided).

    ``norm_layer``: see :class:`Bottleneck`. ``dilate_first_block``: where the first bottleneck
    of layer3/layer4 takes its dilation from. False (SCCAN, torchvision's
    replace_stride_with_dilation): it keeps the previous layer's (layer3.0: 1, layer4.0: 2).
    True (BAM's PSPNet, model/PSPNet.py in github.com/chunbolang/BAM, which sets the dilation of
    every ``conv2`` of layer3 to 2 and of layer4 to 4 after building a plain ResNet): it uses its
    own layer's. Shapes and state_dict names are the same either way; the features are not.
    """

    def __init__(self, layers: int = 50, norm_layer: Callable[[int], nn.Module] = FrozenBatchNorm2d,
                 dilate_first_block: bool = False):
        super().__init__()
        if layers not in BLOCKS_PER_LAYER:
            raise ValueError(f"layers must be one of {sorted(BLOCKS_PER_LAYER)}, got {layers!r}")
        blocks = BLOCKS_PER_LAYER[layers]
        self.norm_layer = norm_layer
        self.dilate_first_block = dilate_first_block
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = norm_layer(64)
        self.conv2 = nn.Conv2d(64, 64, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm_layer(64)
        self.conv3 = nn.Conv2d(64, 128, 3, stride=1, padding=1, bias=False)
        self.bn3 = norm_layer(128)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.in_channels = 128
        self.dilation = 1
        self.layer1 = self._make_layer(64, blocks[0])
        self.layer2 = self._make_layer(128, blocks[1], stride=2)
        self.layer3 = self._make_layer(256, blocks[2], dilate=True)
        self.layer4 = self._make_layer(512, blocks[3], dilate=True)

    def _make_layer(self, width: int, num_blocks: int, stride: int = 1,
                    dilate: bool = False) -> nn.Sequential:
        # Like torchvision's replace_stride_with_dilation: the first block of a dilated layer
        # keeps the previous dilation, the following blocks use the doubled one.
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= 2
            stride = 1
        first_dilation = self.dilation if self.dilate_first_block else previous_dilation
        out_channels = width * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(self.in_channels, out_channels, 1, stride=stride, bias=False),
                self.norm_layer(out_channels),
            )
        blocks = [Bottleneck(self.in_channels, width, stride, first_dilation, downsample,
                             self.norm_layer)]
        self.in_channels = out_channels
        blocks += [Bottleneck(out_channels, width, 1, self.dilation, norm_layer=self.norm_layer)
                   for _ in range(1, num_blocks)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """x: (B, 3, H, W) -> [layer1 (B,256,h,w), layer2 (B,512,h,w), layer3 (B,1024,h,w),
        layer4 (B,2048,h,w)] with h = (H-1)//8 + 1."""
        x = F.relu(conv_frozen_bn(x, self.conv1, self.bn1), inplace=True)
        x = F.relu(conv_frozen_bn(x, self.conv2, self.bn2), inplace=True)
        x = F.relu(conv_frozen_bn(x, self.conv3, self.bn3), inplace=True)
        x = self.maxpool(x)
        feat1 = self.layer1(x)
        feat2 = self.layer2(feat1)
        feat3 = self.layer3(feat2)
        feat4 = self.layer4(feat3)
        return [feat1, feat2, feat3, feat4]


class Backbone(nn.Module):
    """Frozen feature extractor; the ``body`` attribute gives the original key prefix.

    ``dilate_first_block``: see :class:`DilatedResNet`; True for a backbone taken from BAM's base
    learner (model/pspnet.pspnet_backbone_state), which was trained with that dilation."""

    def __init__(self, layers: int = 50, dilate_first_block: bool = False):
        super().__init__()
        self.body = DilatedResNet(layers, dilate_first_block=dilate_first_block)
        for parameter in self.body.parameters():
            parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> "Backbone":
        # Frozen: no dropout/BN inside, but keep the module in eval mode regardless.
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """x: (B, 3, H, W) -> the four layer outputs of :class:`DilatedResNet`."""
        return self.body(x)


@torch.no_grad()
def initialise_random_backbone(backbone: nn.Module, seed: int = 0, residual_gain: float = 1.0) -> None:
    """Kaiming-normal convs and identity BN, from a private generator so the global RNG
    (which drives the episode draws) is untouched.

    ``residual_gain`` is the weight of every bottleneck's last BN (``bn3``): the scale of each
    residual branch against its shortcut. At 1.0, sixteen random branches pile up and bury the
    image: on the toy data a training-free prototype match scores 0.60 mIoU on layer1 features
    but 0.21 on layer3 and 0.15 on layer4. At 0.1 the deep features stay close to random
    projections of the early ones (0.61 on layer3, 0.60 on layer4; BENCHMARKS.md), which is the
    property ImageNet features have and a few-shot learner needs."""
    if residual_gain < 0:
        raise ValueError(f"residual_gain must be >= 0, got {residual_gain}")
    generator = torch.Generator().manual_seed(seed)
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
            std = (2.0 / fan_out) ** 0.5
            module.weight.data.copy_(torch.randn(module.weight.shape, generator=generator) * std)
        elif isinstance(module, Bottleneck):
            module.bn3.weight.fill_(residual_gain)


def load_backbone_weights(backbone: Backbone, path: str) -> None:
    """Load a PSPNet-style ImageNet state_dict (``conv1.weight, bn1.*, layer1.0...``) into
    ``backbone.body``. ``fc.*`` and ``num_batches_tracked`` are ignored; anything else missing,
    unexpected or mis-shaped is an error naming the keys."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Backbone weights not found: {path!r}. Download the ImageNet-pretrained deep-stem "
            f"ResNet ('resnet50_v2.pth' / 'resnet101_v2.pth', the PSPNet/PFENet/BAM initmodel "
            f"files) and put them in initmodel/ (see initmodel/README.md), or set "
            f"'pretrained_backbone: False' to train from a random backbone (toy runs only).")
    state = extract_state_dict(load_checkpoint(path))
    state = {k: v for k, v in state.items()
             if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    check_state_dict(backbone.body, state, source=path)
    backbone.body.load_state_dict(state, strict=True)


def build_backbone(layers: int, weights_path: Optional[str], pretrained: bool = True,
                   random_residual_gain: float = 1.0) -> Backbone:
    """The frozen backbone: ImageNet weights from ``weights_path``, or (``pretrained=False``,
    toy runs and tests) a random one whose residual branches are scaled by
    ``random_residual_gain`` (see :func:`initialise_random_backbone`)."""
    backbone = Backbone(layers)
    if pretrained:
        load_backbone_weights(backbone, weights_path)
    else:
        warnings.warn(
            "pretrained_backbone is False: the frozen ResNet backbone is RANDOMLY initialised. "
            "Results are meaningless for PASCAL/COCO; use this only for the toy dataset or tests.",
            stacklevel=2)
        initialise_random_backbone(backbone, residual_gain=random_residual_gain)
    return backbone


@contextlib.contextmanager
def separate_batch_norm(module: nn.Module):
    """Run every FrozenBatchNorm2d of ``module`` as its own step (not folded into its conv), so
    that hooks registered on them see their inputs and outputs."""
    norms = [m for m in module.modules() if isinstance(m, FrozenBatchNorm2d)]
    for norm in norms:
        norm.fold_into_conv = False
    try:
        yield norms
    finally:
        for norm in norms:
            norm.fold_into_conv = True


@torch.no_grad()
def calibrate_frozen_batch_norm(backbone: Backbone, images: torch.Tensor) -> None:
    """Data-dependent initialisation of a RANDOM backbone: every frozen BN takes the per-channel
    mean/variance of its own input on ``images`` (B, 3, H, W), in forward order, so activations
    stay normalised through the depth. Without it the random features of the deep layers are
    badly scaled and carry little of the image (used only when no pretrained weights exist)."""
    def set_statistics(module, inputs):
        x = inputs[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))

    with separate_batch_norm(backbone) as norms:
        hooks = [norm.register_forward_pre_hook(set_statistics) for norm in norms]
        try:
            backbone(images)
        finally:
            for hook in hooks:
                hook.remove()
