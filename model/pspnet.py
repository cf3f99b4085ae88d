"""BAM's base learner: the PSPNet of model/PSPNet.py in github.com/chunbolang/BAM (Lang et al.,
"Learning What Not to Segment", CVPR 2022), trained on the base classes of a fold by
train_base.py.

The module names are BAM's, so its released base learners
(``initmodel/PSPNet/<dataset>/split<i>/resnet<L>/best.pth``, a dict with ``state_dict``, keys with
or without DistributedDataParallel's ``module.`` prefix) load unchanged and strictly:

- ``layer0``: the deep stem as one 10-item Sequential (conv1, bn1, relu, conv2, bn2, relu, conv3,
  bn3, relu, maxpool), so its tensors are ``layer0.{0,1,3,4,6,7}.*``;
- ``layer1`` .. ``layer4``: the bottleneck layers of model/backbone.py with trainable BatchNorm and
  BAM's dilation (every block of layer3 dilation 2, of layer4 dilation 4);
- ``encoder``: Sequential(layer0 .. layer4) registering the SAME modules again, as BAM does, so
  every backbone tensor appears twice in the state_dict (``layer1.0.conv1.weight`` and
  ``encoder.1.0.conv1.weight``);
- ``ppm.features.{0..3}``: the pyramid pooling branches (bins 1, 2, 3, 6);
- ``cls``: 3x3 conv, BN, ReLU, Dropout2d(0.1), 1x1 conv to ``classes`` (background + base).

model/checkpoint.load_model_weights loads such a checkpoint strictly, with errors naming keys.

:func:`pspnet_backbone_state` maps the backbone tensors onto SCCAN's frozen backbone names
(``backbone.body.conv1.weight`` ...), so the meta learner can take its backbone from a base
learner, as BAM's meta learner does.
"""
from __future__ import annotations

import re
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.backbone import Backbone, DilatedResNet, load_backbone_weights
from model.checkpoint import CheckpointError, strip_module_prefix

__all__ = ["PPM", "PSPNet", "PYRAMID_BINS", "pspnet_backbone_state"]

PYRAMID_BINS = (1, 2, 3, 6)
BACKBONE_LAYERS = ("layer0", "layer1", "layer2", "layer3", "layer4")
# layer0's Sequential index -> the deep-stem attribute of model/backbone.DilatedResNet (and of
# the ImageNet files initmodel/resnet<L>_v2.pth); indices 2, 5, 8 are ReLUs, 9 the max-pool.
STEM_NAMES = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "6": "conv3", "7": "bn3"}
_STEM_KEY = re.compile(r"^layer0\.(\d+)\.(.+)$")


class PPM(nn.Module):
    """Pyramid pooling module (BAM's model/PPM.py): per bin AdaptiveAvgPool2d(bin), 1x1 conv
    without bias, BatchNorm, ReLU; every branch upsampled back and concatenated after the input."""

    def __init__(self, in_channels: int = 2048, reduction_channels: int = 512,
                 bins: Sequence[int] = PYRAMID_BINS):
        super().__init__()
        self.features = nn.ModuleList([
            nn.Sequential(nn.AdaptiveAvgPool2d(bin_size),
                          nn.Conv2d(in_channels, reduction_channels, kernel_size=1, bias=False),
                          nn.BatchNorm2d(reduction_channels),
                          nn.ReLU(inplace=True))
            for bin_size in bins])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, h, w) -> (B, C + len(bins) * reduction_channels, h, w)."""
        size = x.shape[2:]
        pooled = [F.interpolate(branch(x), size, mode="bilinear", align_corners=True)
                  for branch in self.features]
        return torch.cat([x] + pooled, dim=1)


class PSPNet(nn.Module):
    """BAM's PSPNet base learner (``OneModel`` of BAM's model/PSPNet.py).

    Args:
        layers: ResNet depth, 50 or 101.
        classes: output classes (background + base classes: 16 PASCAL, 61 COCO).
        zoom_factor: the logits are upsampled to (H-1)/8*zoom_factor+1.
        pretrained_backbone: load ImageNet weights (``backbone_weights``, default
            ``initmodel/resnet<layers>_v2.pth``) into layer0..layer4; False leaves PyTorch's
            default initialisation (cheap; tests, toy runs, loading a released base learner).
        ignore_label: label value the cross entropy ignores.
    """

    def __init__(self, layers: int = 50, classes: int = 16, zoom_factor: int = 8,
                 pretrained_backbone: bool = True, backbone_weights: Optional[str] = None,
                 ignore_label: int = 255):
        super().__init__()
        if zoom_factor not in (1, 2, 4, 8):
            raise ValueError(f"zoom_factor must be 1, 2, 4 or 8, got {zoom_factor!r}")
        if classes < 2:
            raise ValueError(f"classes must be >= 2 (background + base classes), got {classes!r}")
        self.layers, self.classes, self.zoom_factor = layers, classes, zoom_factor
        self.criterion = nn.CrossEntropyLoss(ignore_index=ignore_label)
        resnet = DilatedResNet(layers, norm_layer=nn.BatchNorm2d, dilate_first_block=True)
        # BAM takes the ResNet's modules apart into these attributes (registration order gives
        # its state_dict order: layer0..layer4, encoder, ppm, cls).
        self.layer0 = nn.Sequential(resnet.conv1, resnet.bn1, nn.ReLU(inplace=True),
                                    resnet.conv2, resnet.bn2, nn.ReLU(inplace=True),
                                    resnet.conv3, resnet.bn3, nn.ReLU(inplace=True),
                                    resnet.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = (resnet.layer1, resnet.layer2,
                                                              resnet.layer3, resnet.layer4)
        self.encoder = nn.Sequential(self.layer0, self.layer1, self.layer2, self.layer3, self.layer4)
        feature_channels = 2048
        self.ppm = PPM(feature_channels, feature_channels // len(PYRAMID_BINS), PYRAMID_BINS)
        self.cls = nn.Sequential(
            nn.Conv2d(feature_channels * 2, 512, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(512),
            nn.ReLU(inplace=True),
            nn.Dropout2d(p=0.1),
            nn.Conv2d(512, classes, kernel_size=1))
        if pretrained_backbone:
            self.load_imagenet_backbone(backbone_weights or f"initmodel/resnet{layers}_v2.pth")

    def load_imagenet_backbone(self, path: str) -> None:
        """ImageNet weights (``conv1.weight, bn1.*, layer1.0...``, the PSPNet/PFENet/BAM
        initmodel files) into layer0..layer4, through model/backbone.py's loader and its
        checks (missing file, depth, missing or mis-shaped keys)."""
        frozen = Backbone(self.layers)
        load_backbone_weights(frozen, path)
        state = {_pspnet_name(key): value for key, value in frozen.body.state_dict().items()}
        result = self.load_state_dict(state, strict=False)
        # Only the head, the encoder aliases and the BN counters are not in an ImageNet file.
        not_loaded = [key for key in result.missing_keys
                      if not key.startswith(("encoder.", "ppm.", "cls."))
                      and not key.endswith("num_batches_tracked")]
        if result.unexpected_keys or not_loaded:
            raise CheckpointError(f"{path}: ImageNet weights do not fit the PSPNet backbone "
                                  f"(unexpected {result.unexpected_keys[:5]}, missing {not_loaded[:5]})")

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        """(H-1)/8*zoom_factor+1 for each side, as BAM (H-1 and W-1 multiples of 8)."""
        if (height - 1) % 8 or (width - 1) % 8:
            raise ValueError(f"PSPNet input sides minus 1 must be multiples of 8 (e.g. 417, 473), "
                             f"got {height}x{width}")
        return (height - 1) // 8 * self.zoom_factor + 1, (width - 1) // 8 * self.zoom_factor + 1

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """x: (B, 3, H, W) images; y: (B, H', W') int64 labels (0..classes-1, 255 ignored) with
        (H', W') the output size, needed in training mode.

        Eval: logits (B, classes, h, w), h = (H-1)/8*zoom_factor+1. Training: (prediction
        (B, h, w) int64 argmax, cross-entropy loss scalar), as BAM's PSPNet.
        """
        height, width = self.output_size(x.shape[2], x.shape[3])
        if self.training and y is None:
            raise ValueError("PSPNet in training mode needs the label y to compute its loss")
        logits = self.cls(self.ppm(self.encoder(x)))
        if self.zoom_factor != 1:
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=True)
        if not self.training:
            return logits
        return logits.max(1)[1], self.criterion(logits, y.long())


def _pspnet_name(resnet_key: str) -> str:
    """``conv1.weight`` (model/backbone.DilatedResNet, ImageNet files) -> ``layer0.0.weight``."""
    head, _, rest = resnet_key.partition(".")
    for index, name in STEM_NAMES.items():
        if head == name:
            return f"layer0.{index}.{rest}"
    return resnet_key


def pspnet_backbone_state(state_dict: Mapping[str, torch.Tensor],
                          prefix: str = "backbone.body.") -> Dict[str, torch.Tensor]:
    """The backbone of a base-learner state_dict (BAM names, with or without ``module.``) under
    SCCAN's frozen-backbone names: ``layer0.{0,1,3,4,6,7}.*`` -> ``<prefix>{conv1,bn1,conv2,bn2,
    conv3,bn3}.*``, ``layerN.*`` -> ``<prefix>layerN.*``. The ``encoder.*`` aliases, the head
    (``ppm``, ``cls``) and ``num_batches_tracked`` are dropped. ``prefix='body.'`` gives the names
    of a :class:`model.backbone.Backbone`. Build that backbone with ``dilate_first_block=True``:
    the base learner was trained with BAM's dilation."""
    state_dict = strip_module_prefix(state_dict)
    mapped = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked") or not key.startswith(BACKBONE_LAYERS):
            continue
        stem = _STEM_KEY.match(key)
        if stem:
            if stem.group(1) not in STEM_NAMES:
                raise CheckpointError(f"unexpected base-learner key {key!r}: layer0 holds tensors "
                                      f"only at indices {', '.join(STEM_NAMES)}")
            key = f"{STEM_NAMES[stem.group(1)]}.{stem.group(2)}"
        mapped[prefix + key] = value
    if not mapped:
        raise CheckpointError("the state_dict holds no base-learner backbone keys (layer0..layer4): "
                              "is it a BAM PSPNet (initmodel/PSPNet/<dataset>/split<i>/resnet<L>/best.pth)?")
    return mapped
