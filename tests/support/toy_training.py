"""A brief training of SCCAN on the toy data, inside a test and on one CPU core.

The frozen backbone is most of an iteration's cost, so the training draws a fixed set of
augmented episodes once and trains on batches from it: every image then goes through the
backbone once, its features kept by :class:`FrozenFeatures` (exactly what the backbone returns,
only not recomputed, through the evaluation's feature cache). Everything else is the real model,
loss and optimizers of engine/trainer.py.
"""
from __future__ import annotations

import os
import random
import warnings
from typing import List, Tuple

import numpy as np
import torch
import torch.nn as nn

from engine.optimization import build_optimizers, poly_learning_rate
from experiment.build import build_experiment_model
from model.feature_cache import FeatureCache
from tests.support.toy_experiment import CONFIG, toy_opts
from util.config import Config, load_config
from util.dataset import SemData
from util.transform import build_train_transform


class FrozenFeatures(nn.Module):
    """Stands in for the frozen backbone: the features of an image seen before (same tensor
    content) come from the evaluation's :class:`~model.feature_cache.FeatureCache`, new images
    go through the backbone (eval mode, no gradient)."""

    def __init__(self, backbone: nn.Module, budget_mb: float = 4096.0):
        super().__init__()
        self.backbone = backbone
        self.cache = FeatureCache(budget_mb)

    def train(self, mode: bool = True) -> "FrozenFeatures":
        return self  # frozen: SCCAN.train() must not switch the backbone's BN to training

    def forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        with torch.no_grad():
            return self.cache.features(self.backbone, images)


def train_briefly(data_root: str, folder: str, size: int, grid: int, window: int, episodes: int,
                  iterations: int, batch: int = 4, seed: int = 0) -> Tuple[nn.Module, Config]:
    """SCCAN (the toy config: random calibrated backbone) trained for ``iterations`` updates of
    ``batch`` episodes drawn from ``episodes`` training episodes of fold 0's base classes,
    augmented as in training (random scale, rotation, blur, flip, crop to ``size``), with the
    config's optimizers and poly learning-rate schedule (engine/trainer.py's); ``grid`` and
    ``window``: the transformer grid and window. Returns the model in
    eval mode and its config (``val_size`` = ``size``)."""
    cfg = load_config(CONFIG, toy_opts(data_root, os.path.join(folder, "exp"), list_root=os.path.join(folder, "fss"),
                                       train_h=size, train_w=size, val_size=size, feature_size=grid,
                                       window_size=window))
    torch.manual_seed(seed)
    random.seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random backbone's warning
        model = build_experiment_model(cfg, torch.device("cpu"))
    data = SemData(split=0, shot=1, data_root=data_root, data_list=cfg.train_list, data_set="pascal",
                   mode="train", list_root=cfg.list_root, show_progress=False,
                   transform=build_train_transform(size, size, cfg.scale_min, cfg.scale_max, cfg.rotate_min,
                                                   cfg.rotate_max))
    fixed = [data[index % len(data)][:4] for index in range(episodes)]
    backbone = model.backbone
    model.backbone = FrozenFeatures(backbone)
    sgd, adamw = build_optimizers(model, cfg.base_lr, cfg.momentum, cfg.weight_decay, cfg.transformer_lr)
    model.train()
    order = np.random.default_rng(seed)
    for iteration in range(1, iterations + 1):
        poly_learning_rate(sgd, cfg.base_lr, iteration, iterations, power=cfg.power, index_split=cfg.index_split)
        chosen = order.choice(episodes, batch, replace=False)
        x, y, s_x, s_y = (torch.stack([fixed[index][part] for index in chosen]) for part in range(4))
        loss = model.losses(model(x, s_x, s_y), y)["main_loss"]
        sgd.zero_grad()
        adamw.zero_grad()
        loss.backward()
        sgd.step()
        adamw.step()
    model.backbone = backbone
    return model.eval(), cfg
