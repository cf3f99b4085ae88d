"""engine/base_trainer.py: the base learner built from a base config."""
import pytest
import torch

from engine.base_trainer import build_base_model
from model.backbone import Bottleneck
from tests.support.toy_experiment import BASE_CONFIG
from util.config import load_config


@pytest.mark.parametrize("gain", [0.1, 1.0])
def test_random_start_is_kaiming_with_scaled_residual_branches(gain):
    cfg = load_config(BASE_CONFIG, ["pretrained_backbone", "False",
                                    "random_backbone_residual_gain", str(gain)])
    model = build_base_model(cfg)
    last_norms = [module.bn3 for module in model.encoder.modules() if isinstance(module, Bottleneck)]
    assert len(last_norms) == 16
    for norm in last_norms:
        assert torch.all(norm.weight == gain) and norm.weight.requires_grad  # trained from there
    conv = model.layer3[2].conv2  # 256 -> 256, 3x3: Kaiming normal (fan-out) std sqrt(2 / 2304)
    expected_std = (2.0 / (conv.out_channels * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.02)
    # PyTorch's default (Kaiming uniform, a = sqrt(5)) would have std sqrt(1 / (3 * fan_in))
    assert abs(conv.weight.std().item() - (1.0 / (3 * 2304)) ** 0.5) > 0.1 * expected_std
