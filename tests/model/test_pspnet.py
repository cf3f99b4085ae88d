"""model/pspnet.py: BAM's PSPNet base learner (names and shapes of BAM's released files, strict
loading, output size, training step) and its backbone mapped into SCCAN's frozen backbone."""
import os

import pytest
import torch
import torch.nn as nn

from model.backbone import Backbone, DilatedResNet
from model.checkpoint import CheckpointError, load_model_weights
from model.pspnet import PSPNet, pspnet_backbone_state
from tests.support import FIXTURES
from util.dataset import base_class_count


def _state_lines(model):
    return [f"{key} {tuple(value.shape)} {str(value.dtype).replace('torch.', '')}"
            for key, value in model.state_dict().items()]


@pytest.fixture(scope="module")
def pascal_model():
    torch.manual_seed(0)
    return PSPNet(layers=50, classes=16, zoom_factor=8, pretrained_backbone=False)


@pytest.mark.parametrize("layers", [50, 101])
@pytest.mark.parametrize("data_set", ["pascal", "coco"])
def test_state_dict_equals_bam_lists(layers, data_set):
    model = PSPNet(layers=layers, classes=base_class_count(data_set), pretrained_backbone=False)
    with open(os.path.join(FIXTURES, f"bam_pspnet_resnet{layers}_{data_set}_state_dict.txt")) as handle:
        expected = handle.read().splitlines()
    assert _state_lines(model) == expected


def test_encoder_registers_the_same_modules(pascal_model):
    assert pascal_model.encoder[1] is pascal_model.layer1
    state = pascal_model.state_dict()
    assert state["encoder.0.0.weight"].data_ptr() == state["layer0.0.weight"].data_ptr()


def test_bam_checkpoint_with_module_prefix_loads_strict(pascal_model, tmp_path):
    source = PSPNet(layers=50, classes=16, pretrained_backbone=False)
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.add_(0.5)
    path = str(tmp_path / "best.pth")
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in source.state_dict().items()},
                "optimizer": {}}, path)
    target = PSPNet(layers=50, classes=16, pretrained_backbone=False)
    load_model_weights(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    state = PSPNet(layers=50, classes=16, pretrained_backbone=False).state_dict()
    state.pop("cls.4.bias")
    state["cls.9.weight"] = torch.zeros(1)
    target = PSPNet(layers=50, classes=61, pretrained_backbone=False)
    with pytest.raises(CheckpointError) as error:
        load_model_weights(target, {"state_dict": state})
    message = str(error.value)
    assert "cls.4.bias" in message and "cls.9.weight" in message and "cls.4.weight" in message
    with pytest.raises(CheckpointError, match="ResNet-50"):
        load_model_weights(PSPNet(layers=101, classes=16, pretrained_backbone=False), {"state_dict": state})


@pytest.mark.parametrize("size, expected", [((65, 65), (65, 65)), ((49, 81), (49, 81))])
def test_eval_output_size(pascal_model, size, expected):
    pascal_model.eval()
    with torch.no_grad():
        logits = pascal_model(torch.randn(1, 3, *size))
    assert logits.shape == (1, 16, *expected)


def test_zoom_factor_and_bad_size():
    model = PSPNet(layers=50, classes=16, zoom_factor=4, pretrained_backbone=False).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 65, 65)).shape == (1, 16, 33, 33)
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.randn(1, 3, 64, 64))


def test_training_step_gives_gradients_everywhere(pascal_model):
    pascal_model.train()
    pascal_model.zero_grad()
    label = torch.randint(0, 16, (2, 33, 33))
    label[:, :3] = 255
    prediction, loss = pascal_model(torch.randn(2, 3, 33, 33), label)
    assert prediction.shape == (2, 33, 33) and prediction.dtype == torch.int64
    loss.backward()
    for name in ("layer0.0.weight", "layer1.0.conv1.weight", "layer4.2.bn3.weight",
                 "ppm.features.3.1.weight", "cls.0.weight", "cls.4.bias"):
        gradient = dict(pascal_model.named_parameters())[name].grad
        assert gradient is not None and gradient.abs().sum() > 0, name
    with pytest.raises(ValueError, match="needs the label"):
        pascal_model(torch.randn(1, 3, 33, 33))


def test_bam_dilation():
    model = PSPNet(layers=50, classes=16, pretrained_backbone=False)
    # BAM sets every conv2 of layer3 to dilation 2 and of layer4 to 4 (SCCAN's backbone keeps
    # the previous dilation in the first block).
    assert [block.conv2.dilation for block in model.layer3] == [(2, 2)] * 6
    assert [block.conv2.dilation for block in model.layer4] == [(4, 4)] * 3
    assert model.layer3[0].downsample[0].stride == (1, 1)
    sccan = DilatedResNet(50)
    assert sccan.layer3[0].conv2.dilation == (1, 1) and sccan.layer4[0].conv2.dilation == (2, 2)


def _randomise_batch_norm(model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.weight.data.copy_(0.5 + torch.rand(size, generator=generator))
            module.bias.data.copy_(0.1 * torch.randn(size, generator=generator))
            module.running_mean.copy_(0.1 * torch.randn(size, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(size, generator=generator))


def test_mapped_backbone_gives_the_same_features():
    torch.manual_seed(0)
    model = PSPNet(layers=50, classes=16, pretrained_backbone=False)
    _randomise_batch_norm(model)
    model.eval()
    mapped = pspnet_backbone_state({"module." + k: v for k, v in model.state_dict().items()},
                                   prefix="body.")
    assert not any("num_batches_tracked" in key or "encoder" in key for key in mapped)
    backbone = Backbone(50, dilate_first_block=True)
    backbone.load_state_dict(mapped, strict=True)
    image = torch.randn(1, 3, 33, 33, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        features = backbone(image)
        x = model.layer0(image)
        for level, layer in enumerate((model.layer1, model.layer2, model.layer3, model.layer4)):
            x = layer(x)
            torch.testing.assert_close(features[level], x, rtol=1e-4, atol=1e-4)


def test_mapped_names_are_sccan_backbone_names():
    with open(os.path.join(FIXTURES, "sccan_resnet101_state_dict.txt")) as handle:
        sccan = [line.split()[0] for line in handle if line.startswith("backbone.")]
    state = PSPNet(layers=101, classes=61, pretrained_backbone=False).state_dict()
    mapped = pspnet_backbone_state(state)
    assert sorted(mapped) == sorted(sccan)
    with pytest.raises(CheckpointError, match="no base-learner backbone"):
        pspnet_backbone_state({"cls.4.bias": torch.zeros(2)})


def test_imagenet_backbone_loads_into_layer0_to_layer4(tmp_path):
    backbone = DilatedResNet(50)
    with torch.no_grad():
        backbone.conv1.weight.fill_(0.25)
        backbone.layer4[2].bn3.running_var.fill_(3.0)
    state = dict(backbone.state_dict(), **{"fc.weight": torch.zeros(2, 2048), "fc.bias": torch.zeros(2)})
    path = str(tmp_path / "resnet50_v2.pth")
    torch.save(state, path)
    model = PSPNet(layers=50, classes=16, pretrained_backbone=True, backbone_weights=path)
    assert torch.equal(model.layer0[0].weight, torch.full_like(model.layer0[0].weight, 0.25))
    assert torch.equal(model.layer4[2].bn3.running_var, torch.full((2048,), 3.0))
    with pytest.raises(FileNotFoundError, match="Backbone weights not found"):
        PSPNet(layers=50, classes=16, pretrained_backbone=True, backbone_weights=str(tmp_path / "no.pth"))
