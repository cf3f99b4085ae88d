"""SCCAN model: state_dict layout, parameter counts, forward contract, gradients."""
import math
import os

import pytest
import torch

from model import build_model, build_optimizers, count_parameters, poly_learning_rate
from model.backbone import Backbone, FrozenBatchNorm2d
from model.checkpoint import CheckpointError
from model.sccan import SCCAN
from tests.support import FIXTURES


def reference_keys(layers):
    path = os.path.join(FIXTURES, f"sccan_resnet{layers}_state_dict.txt")
    entries = []
    with open(path) as handle:
        for line in handle:
            name, rest = line.strip().split(" ", 1)
            shape, dtype = rest.rsplit(" ", 1)
            entries.append((name, tuple(int(v) for v in shape.strip("()").split(",") if v.strip()),
                            dtype))
    return entries


@pytest.mark.parametrize("layers", [50, 101])
def test_state_dict_matches_reference_names_and_shapes(layers):
    model = SCCAN(Backbone(layers))
    actual = [(k, tuple(v.shape), str(v.dtype).replace("torch.", ""))
              for k, v in model.state_dict().items()]
    assert actual == reference_keys(layers)


@pytest.mark.parametrize("layers,total", [(50, 34_951_618), (101, 53_891_522)])
def test_parameter_counts(layers, total):
    model = SCCAN(Backbone(layers))
    assert count_parameters(model) == (total, 11_373_314)
    transformer = sum(p.numel() for p in model.transformer.parameters())
    assert transformer == 6_324_736


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


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return SCCAN(Backbone(50), shot=2, feature_size=16)


def test_eval_forward_shapes(small_model):
    small_model.eval()
    x = torch.randn(2, 3, 65, 81)
    s_x = torch.randn(2, 2, 3, 65, 81)
    s_y = (torch.rand(2, 2, 65, 81) > 0.5).float()
    with torch.no_grad():
        logits = small_model(x, s_x, s_y)
    assert logits.shape == (2, 2, 65, 81)


def _dead_support_branch(name):
    # The support output of the last block is never used by the original, so its support
    # attention/MLP receive no gradient there (they are still learnable parameters).
    return name.startswith("transformer.layers.0.blocks.7.attn_s.") or \
        name.startswith("transformer.layers.0.blocks.7.mlp_s.")


def test_one_training_step_gradients(small_model):
    torch.manual_seed(1)
    small_model.train()
    small_model.zero_grad(set_to_none=True)
    x = torch.randn(2, 3, 65, 65)
    s_x = torch.randn(2, 2, 3, 65, 65)
    s_y = torch.zeros(2, 2, 65, 65)
    s_y[:, :, 10:40, 15:50] = 1
    s_y[:, :, 0:3] = 255
    y = torch.zeros(2, 65, 65, dtype=torch.long)
    y[:, 20:50, 20:45] = 1
    prediction, main_loss, aux1, aux2 = small_model(x, s_x, s_y, y)
    assert prediction.shape == (2, 65, 65) and prediction.dtype == torch.long
    assert torch.isfinite(main_loss) and float(aux1) == 0 and float(aux2) == 0
    main_loss.backward()
    dead = []
    for name, parameter in small_model.named_parameters():
        if name.startswith("backbone."):
            assert not parameter.requires_grad and parameter.grad is None, name
        elif _dead_support_branch(name):
            dead.append(name)
            assert parameter.grad is None or not parameter.grad.any(), name
        else:
            assert parameter.requires_grad, name
            assert parameter.grad is not None, f"no gradient reaches {name}"
            assert torch.isfinite(parameter.grad).all(), name
            assert parameter.grad.abs().sum() > 0, f"zero gradient for {name}"
    assert len(dead) == 10  # attn_s: q, kv, proj (weight+bias); mlp_s: fc1, fc2


def test_train_mode_keeps_backbone_frozen(small_model):
    small_model.train()
    assert not small_model.backbone.training
    assert small_model.down_query.training


def test_optimizer_groups_follow_original_order(small_model):
    sgd, adamw = build_optimizers(small_model, base_lr=0.005)
    assert len(sgd.param_groups) == 8
    first = next(small_model.down_query.parameters())
    last = list(small_model.cls_meta.parameters())[-1]
    assert sgd.param_groups[0]["params"][0] is first
    assert sgd.param_groups[7]["params"][-1] is last
    transformer_ids = {id(p) for p in small_model.transformer.parameters()}
    assert {id(p) for p in adamw.param_groups[0]["params"]} == transformer_ids
    assert adamw.param_groups[0]["lr"] == 6e-5 and adamw.param_groups[0]["weight_decay"] == 0.01
    assert sgd.param_groups[0]["momentum"] == 0.9 and sgd.param_groups[0]["weight_decay"] == 1e-4
    sgd_ids = {id(p) for g in sgd.param_groups for p in g["params"]}
    trainable = {id(p) for p in small_model.parameters() if p.requires_grad}
    assert sgd_ids | transformer_ids == trainable and not sgd_ids & transformer_ids


def test_poly_learning_rate_values():
    optimizer = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)]} for _ in range(3)],
                                lr=1.0)
    max_iteration = 200 * 100
    for current in (1, 57, 10_000, 19_999):
        lr = poly_learning_rate(optimizer, 0.005, current, max_iteration, power=0.9)
        expected = 0.005 * (1 - current / max_iteration) ** 0.9
        assert math.isclose(lr, expected)
        assert all(math.isclose(g["lr"], 10 * expected) for g in optimizer.param_groups)
    poly_learning_rate(optimizer, 0.005, 10, max_iteration, index_split=1)
    lrs = [g["lr"] for g in optimizer.param_groups]
    base = 0.005 * (1 - 10 / max_iteration) ** 0.9
    assert math.isclose(lrs[0], base) and math.isclose(lrs[1], base) and math.isclose(lrs[2], 10 * base)
    lr = poly_learning_rate(optimizer, 0.005, 25, max_iteration, warmup=True, warmup_step=50)
    assert math.isclose(lr, 0.005 * (0.1 + 0.9 * 25 / 50))
    lr = poly_learning_rate(optimizer, 0.005, 50, max_iteration, warmup=True, warmup_step=50)
    assert math.isclose(lr, 0.005 * (1 - 50 / max_iteration) ** 0.9)


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
