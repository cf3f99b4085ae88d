"""Config -> model: SCCAN with its backbone, and BAM's base learner for the ensemble (as set up
in the original's train.py and BAM's model/BAM.py). The model package itself takes explicit
constructor arguments and knows nothing of configs; this module reads the config keys."""
from __future__ import annotations

import os
from typing import Optional

import torch.nn as nn

from model.backbone import Backbone, build_backbone
from model.checkpoint import check_state_dict, extract_state_dict, load_checkpoint
from model.pspnet import PSPNet, pspnet_backbone_state
from model.sccan import SCCAN
from util.config_schema import config_value
from util.dataset import base_class_count

__all__ = ["base_learner_checkpoint_path", "base_learner_training_command", "build_model", "load_base_learner",
           "precheck_base_learner"]


def base_learner_checkpoint_path(cfg) -> str:
    """The config's ``base_learner_weights``, by default where BAM keeps the base learner of a
    fold (model/BAM.py reads initmodel/PSPNet/<data_set>/split<i>/<backbone>/best.pth); another
    path serves runs that must not use that place (the toy dataset is 'pascal' too)."""
    if config_value(cfg, "base_learner_weights"):
        return config_value(cfg, "base_learner_weights")
    return os.path.join("initmodel", "PSPNet", config_value(cfg, "data_set"),
                        f"split{config_value(cfg, 'split')}", f"resnet{config_value(cfg, 'layers')}",
                        "best.pth")


def base_learner_training_command(cfg) -> str:
    """The command that trains the base learner of a config's fold and backbone."""
    data_set, split, layers = (config_value(cfg, key) for key in ("data_set", "split", "layers"))
    return (f"python train_base.py --config "
            f"config/{data_set}/{data_set}_split{split}_resnet{layers}_base.yaml")


def load_base_learner(cfg, backbone: Optional[Backbone], state: Optional[dict] = None) -> nn.Module:
    """The trained base learner of the config's fold (BAM's PSPNet checkpoint): copies its
    layer0..layer4 onto ``backbone`` (SCCAN's backbone names) and returns its frozen head
    ``learner_base = Sequential(ppm, cls)`` (layer4 features (B, 2048, h, w) -> (B, N+1, h, w)
    logits), as BAM's OneModel does. ``state``: its weights, already read and checked
    (:func:`precheck_base_learner`); None reads them.

    ``backbone`` None: a full ensemble checkpoint is loaded next, which holds ``learner_base``
    too, so only the head's structure is built and no file is read. Otherwise a missing
    checkpoint is a one-line error naming the expected file and the command that makes it.
    The PSPNet itself lives in model/pspnet.py (BAM's base learner)."""
    pspnet = _base_learner_network(cfg)
    if backbone is None:
        return _frozen_head(pspnet)
    if state is None:
        path = base_learner_checkpoint_path(cfg)
        if not os.path.isfile(path):
            raise _missing_base_learner(cfg, path)
        state = _checked_base_learner_state(pspnet, path)
    pspnet.load_state_dict(state, strict=True)
    backbone.load_state_dict(pspnet_backbone_state(state, prefix="body."), strict=True)
    return _frozen_head(pspnet)


def precheck_base_learner(cfg) -> Optional[dict]:
    """Before a training run writes anything: the base learner a ``base_learner: True`` config
    reads exists, is a PSPNet checkpoint of the fold's structure and holds finite weights.
    Returns its weights (None without a base learner), which the model build takes instead of
    reading the file again (:func:`build_model`'s ``base_learner_state``)."""
    if not config_value(cfg, "base_learner"):
        return None
    path = base_learner_checkpoint_path(cfg)
    if not os.path.isfile(path):
        raise _missing_base_learner(cfg, path)
    return _checked_base_learner_state(_base_learner_network(cfg), path)


def _missing_base_learner(cfg, path: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"base learner checkpoint {path!r} not found (config keys base_learner: True, "
        f"base_learner_weights): train it with '{base_learner_training_command(cfg)}' or put "
        f"BAM's released base learner there")


def _base_learner_network(cfg) -> nn.Module:
    return PSPNet(int(config_value(cfg, "layers")), base_class_count(config_value(cfg, "data_set")),
                  pretrained_backbone=False)


def _checked_base_learner_state(pspnet: nn.Module, path: str) -> dict:
    state = extract_state_dict(load_checkpoint(path))
    check_state_dict(pspnet, state, source=path)  # names, shapes, number types, finite values
    return state


def _frozen_head(pspnet: nn.Module) -> nn.Module:
    head = nn.Sequential(pspnet.ppm, pspnet.cls)  # (B, 2048, h, w) -> (B, N+1, h, w)
    for parameter in head.parameters():
        parameter.requires_grad_(False)
    return head.eval()


def build_model(cfg, backbone_from_checkpoint: bool = False, base_learner_state: Optional[dict] = None) -> SCCAN:
    """Map a config namespace (``layers, shot, zoom_factor, backbone_weights,
    pretrained_backbone, random_backbone_residual_gain, feature_size, window_size,
    feature_dropout, fast_path, fast_path_training``) to an :class:`SCCAN`. A key the namespace (a Config, dict or object)
    lacks takes its default from util/config_schema.py.

    ``backbone_from_checkpoint``: the caller loads a full SCCAN checkpoint next (it holds the
    backbone too, and strict loading replaces every tensor), so the ImageNet backbone file is
    neither needed nor read.

    ``base_learner: True`` builds BAM's ensemble (``low_fea``, ``kshot_trans_dim``): the backbone
    and the head ``learner_base`` come from the fold's base learner (:func:`load_base_learner`;
    ``base_learner_state``: its weights when already read), not from the ImageNet file."""
    def value(key):
        return config_value(cfg, key)

    layers = int(value("layers"))
    weights = value("backbone_weights") or f"initmodel/resnet{layers}_v2.pth"
    with_base_learner = bool(value("base_learner"))
    if backbone_from_checkpoint or with_base_learner:
        # BAM's base learner dilates the first block of layer3/layer4 too; its backbone is
        # SCCAN's in the ensemble, so the ensemble's backbone must be built the same way.
        backbone = Backbone(layers, dilate_first_block=with_base_learner)
    else:
        backbone = build_backbone(
            layers, weights, pretrained=bool(value("pretrained_backbone")),
            random_residual_gain=float(value("random_backbone_residual_gain")))
    learner_base = None
    if with_base_learner:
        learner_base = load_base_learner(cfg, None if backbone_from_checkpoint else backbone,
                                         base_learner_state)
    return SCCAN(backbone, shot=int(value("shot")), zoom_factor=int(value("zoom_factor")),
                 feature_size=int(value("feature_size")), window_size=int(value("window_size")),
                 feature_dropout=float(value("feature_dropout")), learner_base=learner_base,
                 low_fea=str(value("low_fea")), kshot_trans_dim=int(value("kshot_trans_dim")),
                 fast_path=bool(value("fast_path")),
                 fast_path_training=bool(value("fast_path_training")))
