"""experiment/models.py: a config becomes SCCAN."""
import pytest

from experiment.models import build_model


def test_build_model_from_config(tmp_path):
    class Config:
        layers = 50
        shot = 5
        zoom_factor = 8
        feature_size = 32
        window_size = 8
        pretrained_backbone = True
        backbone_weights = str(tmp_path / "missing_resnet50_v2.pth")

    with pytest.raises(FileNotFoundError, match="initmodel"):
        build_model(Config)
    Config.pretrained_backbone = False
    with pytest.warns(UserWarning, match="RANDOMLY"):
        model = build_model(Config)
    assert model.shot == 5 and model.feature_size == 32
