"""The dilated ResNet backbone (model/backbone.py): frozen batch norm, output sizes, dilations,
ImageNet weight files, the calibrated random backbone."""
import pytest
import torch

from experiment.models import build_model
from model.backbone import Backbone, FrozenBatchNorm2d
from model.checkpoint import CheckpointError


def test_frozen_batch_norm_formula_and_legacy_key():
    bn = FrozenBatchNorm2d(3)
    bn.load_state_dict({"weight": torch.tensor([1.0, 2.0, 0.5]), "bias": torch.tensor([0.0, 1.0, -1.0]),
                        "running_mean": torch.tensor([0.5, -1.0, 2.0]),
                        "running_var": torch.tensor([1.0, 4.0, 0.25]),
                        "num_batches_tracked": torch.tensor(7)})
    x = torch.randn(2, 3, 4, 4)
    reference = torch.nn.BatchNorm2d(3, eps=1e-5).eval()
    reference.load_state_dict({**bn.state_dict(), "num_batches_tracked": torch.tensor(0)})
    torch.testing.assert_close(bn(x), reference(x))


def test_folded_and_separate_batch_norm_agree():
    from model.backbone import separate_batch_norm
    torch.manual_seed(0)
    backbone = Backbone(50)
    for name, buffer in backbone.named_buffers():
        buffer.copy_(torch.rand_like(buffer) + 0.5)
    x = torch.randn(1, 3, 41, 41)
    folded = backbone(x)
    with separate_batch_norm(backbone):
        separate = backbone(x)
    for a, b in zip(folded, separate):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_backbone_output_sizes():
    features = Backbone(50)(torch.randn(1, 3, 97, 97))
    assert [tuple(f.shape) for f in features] == [(1, 256, 25, 25), (1, 512, 13, 13),
                                                  (1, 1024, 13, 13), (1, 2048, 13, 13)]


def test_dilation_pattern():
    body = Backbone(50).body
    assert [b.conv2.dilation[0] for b in body.layer3] == [1, 2, 2, 2, 2, 2]
    assert [b.conv2.dilation[0] for b in body.layer4] == [2, 4, 4]
    assert body.layer3[0].downsample[0].stride == (1, 1)
    assert body.layer2[0].conv2.stride == (2, 2)


def test_backbone_weights_file_loads_and_ignores_fc(tmp_path):
    source = Backbone(50)
    for name, buffer in source.body.named_buffers():
        buffer.normal_()
    state = dict(source.body.state_dict())
    state["fc.weight"] = torch.zeros(1000, 2048)
    state["fc.bias"] = torch.zeros(1000)
    state["bn1.num_batches_tracked"] = torch.tensor(3)
    path = tmp_path / "resnet50_v2.pth"
    torch.save(state, path)

    class Config:
        layers = 50
        backbone_weights = str(path)

    model = build_model(Config)
    for key, value in source.body.state_dict().items():
        torch.testing.assert_close(model.backbone.body.state_dict()[key], value)
    state["layer1.0.conv1.weight"] = torch.zeros(3, 3, 1, 1)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"layer1\.0\.conv1\.weight"):
        build_model(Config)


def test_calibrated_random_backbone_normalises_every_frozen_bn():
    from model.backbone import (calibrate_frozen_batch_norm, initialise_random_backbone,
                                separate_batch_norm)
    backbone = Backbone(50)
    initialise_random_backbone(backbone)
    images = torch.randn(4, 3, 33, 33)
    calibrate_frozen_batch_norm(backbone, images)
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = output.clone()  # the next ReLU is in place
        return hook

    hooks = [module.register_forward_hook(record(name)) for name, module in backbone.named_modules()
             if isinstance(module, FrozenBatchNorm2d)]
    with separate_batch_norm(backbone):
        backbone(images)
    for hook in hooks:
        hook.remove()
    assert len(seen) == 55  # 3 stem + 16 blocks x 3 + 4 downsample
    for name, output in seen.items():
        torch.testing.assert_close(output.mean(dim=(0, 2, 3)), torch.zeros(output.shape[1]),
                                   atol=1e-3, rtol=0, msg=name)
        torch.testing.assert_close(output.var(dim=(0, 2, 3), unbiased=False),
                                   torch.ones(output.shape[1]), atol=2e-2, rtol=0, msg=name)


def test_random_backbone_residual_gain_scales_the_residual_branches():
    from model.backbone import Bottleneck, initialise_random_backbone
    backbone = Backbone(50)
    initialise_random_backbone(backbone, residual_gain=0.0)
    # Gain 0 silences every residual branch: a block without a downsample then passes its
    # (post-ReLU, non-negative) input through unchanged.
    block = backbone.body.layer1[1]
    assert block.downsample is None
    x = torch.relu(torch.randn(2, 256, 9, 9, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(block(x), x)
    initialise_random_backbone(backbone, residual_gain=1.0)
    assert not torch.allclose(block(x), x)
    with pytest.raises(ValueError, match="residual_gain"):
        initialise_random_backbone(backbone, residual_gain=-1.0)

    class Config:
        layers = 50
        pretrained_backbone = False
        random_backbone_residual_gain = 0.1

    with pytest.warns(UserWarning, match="RANDOMLY"):
        model = build_model(Config)
    blocks = [m for m in model.backbone.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16
    for module in model.backbone.modules():
        if isinstance(module, FrozenBatchNorm2d):
            expected = 0.1 if any(module is b.bn3 for b in blocks) else 1.0
            torch.testing.assert_close(module.weight, torch.full_like(module.weight, expected))


def test_frozen_batch_norm_repr_names_its_size():
    assert repr(FrozenBatchNorm2d(4)) == "FrozenBatchNorm2d(4, eps=1e-05)"
