"""Fixtures shared by the tests of model/."""
import pytest
import torch

from model.backbone import Backbone
from model.sccan import SCCAN


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return SCCAN(Backbone(50), shot=2, feature_size=16)
