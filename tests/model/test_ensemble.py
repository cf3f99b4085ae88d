"""BAM's ensemble in SCCAN (model/ensemble.py, model/sccan.py with a base learner): the scene
difference, the K-shot weights, the merge, the training-time exclusion of the episode class, and
that the switch leaves the meta learner untouched."""
import itertools

import pytest
import torch
import torch.nn as nn
from torch.testing import assert_close

from engine.optimization import build_optimizers, SGD_GROUP_MODULES
from experiment.models import build_model, base_learner_checkpoint_path
from model.backbone import Backbone
from model.checkpoint import CheckpointError, load_model_weights
from model.ensemble import (base_foreground, build_kshot_reweighting, build_merge_conv, ensemble_merge,
                            gram_matrix, kshot_weights, low_feature_level, scene_differences)
from model.loss import weighted_dice_loss
from model.sccan import SCCAN

BASE_CLASSES = 3  # N: the toy base learner predicts background + 3 base classes
ENSEMBLE_KEYS = ["gram_merge.weight", "cls_merge.weight"]


def toy_learner_base() -> nn.Module:
    """A small stand-in for BAM's ``Sequential(ppm, cls)``: layer4 features -> N+1 logits."""
    return nn.Sequential(nn.Conv2d(2048, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                         nn.Conv2d(8, BASE_CLASSES + 1, 1))


def direct_gram(features):
    """G[b, i, j] = <f_i, f_j> / (|f_i| |f_j| + 1e-7), written with einsum over the pixels."""
    flat = features.flatten(2).double()  # (B, C, N)
    products = torch.einsum("bin,bjn->bij", flat, flat)  # (B, C, C)
    norms = flat.pow(2).sum(-1).sqrt()  # (B, C)
    return products / (torch.einsum("bi,bj->bij", norms, norms) + 1e-7)


# ------------------------------------------------------------------------ scene difference
def test_gram_matrix_equals_a_direct_computation():
    features = torch.randn(2, 5, 4, 3, generator=torch.Generator().manual_seed(0))
    assert_close(gram_matrix(features).double(), direct_gram(features), atol=1e-6, rtol=0)


def test_scene_difference_equals_a_direct_computation_per_shot():
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(2, 6, 5, 5, generator=generator)
    support = torch.randn(2, 3, 6, 5, 5, generator=generator)
    out = scene_differences(query, support)
    assert out.shape == (2, 3, 1, 1)
    for sample, shot in itertools.product(range(2), range(3)):
        difference = direct_gram(query[sample:sample + 1]) - direct_gram(support[sample, shot:shot + 1])
        # ||ones(C, C)||_F = sqrt(C * C) = C = 6
        expected = float(difference.pow(2).sum().sqrt()) / 6
        assert abs(float(out[sample, shot]) - expected) < 1e-6


def test_scene_difference_is_zero_for_identical_features():
    features = torch.randn(1, 8, 6, 6, generator=torch.Generator().manual_seed(2))
    out = scene_differences(features, features.unsqueeze(1).repeat(1, 2, 1, 1, 1))
    assert_close(out, torch.zeros(1, 2, 1, 1), atol=1e-6, rtol=0)


def test_scene_difference_is_invariant_to_scaling_a_channel():
    generator = torch.Generator().manual_seed(3)
    query = torch.randn(1, 4, 5, 5, generator=generator)
    support = torch.randn(1, 1, 4, 5, 5, generator=generator)
    scaled_query, scaled_support = query.clone(), support.clone()
    scaled_query[:, 2] *= 7.5   # the Gram matrix normalises every channel
    scaled_support[:, 0, 1] *= 0.01
    assert_close(scene_differences(scaled_query, scaled_support), scene_differences(query, support),
                 atol=1e-6, rtol=0)


# ------------------------------------------------------------------------- K-shot weights
@pytest.mark.parametrize("kshot_trans_dim", [0, 2])
def test_kshot_weights_sum_to_one_and_follow_a_permutation_of_the_shots(kshot_trans_dim):
    torch.manual_seed(4)
    reweighting = build_kshot_reweighting(4, kshot_trans_dim)
    if kshot_trans_dim == 0:  # at its 1/K start every shot weighs the same: make it uneven
        with torch.no_grad():
            reweighting.weight.copy_(torch.randn(reweighting.weight.shape))
    differences = torch.tensor([0.3, 0.1, 0.7, 0.5]).view(1, 4, 1, 1).repeat(2, 1, 1, 1)  # (B, K, 1, 1)
    differences[1] = differences[1] * 0.5
    weights = kshot_weights(differences, reweighting)
    assert weights.shape == (2, 4, 1, 1)
    assert_close(weights.sum(1), torch.ones(2, 1, 1))
    assert len(set(weights[0].flatten().tolist())) > 1  # a real reweighting, not uniform
    for permutation in ([2, 0, 3, 1], [3, 2, 1, 0]):
        permuted = kshot_weights(differences[:, permutation], reweighting)
        assert_close(permuted, weights[:, permutation])


def test_kshot_weight_is_one_for_one_shot():
    assert_close(kshot_weights(torch.rand(3, 1, 1, 1), None), torch.ones(3, 1, 1, 1))


def test_kshot_reweighting_layouts():
    single = build_kshot_reweighting(5, 0)
    assert single.bias is None and torch.all(single.weight == 0.2)
    two_layers = build_kshot_reweighting(5, 2)
    assert [tuple(p.shape) for p in two_layers.parameters()] == [(2, 5, 1, 1), (2,), (5, 2, 1, 1), (5,)]


# -------------------------------------------------------------------------------- merging
def test_final_foreground_is_the_meta_probability_at_the_initial_merge_weights():
    generator = torch.Generator().manual_seed(5)
    meta_logits = torch.randn(2, 2, 6, 6, generator=generator)
    base_logits = torch.randn(2, BASE_CLASSES + 1, 6, 6, generator=generator)
    psi = torch.rand(2, 1, 1, 1, generator=generator)
    gram_merge, cls_merge = build_merge_conv(), build_merge_conv()
    assert gram_merge.bias is None and gram_merge.weight.flatten().tolist() == [1.0, 0.0]
    final = ensemble_merge(meta_logits, base_logits, psi, gram_merge, cls_merge)
    assert_close(final[:, 1], meta_logits.softmax(1)[:, 1])
    assert_close(final[:, 0], meta_logits.softmax(1)[:, 0])  # [1, 0] passes p_m_bg through too


def test_merge_weights_mix_in_the_scene_difference_and_the_base_foreground():
    generator = torch.Generator().manual_seed(6)
    meta_logits = torch.randn(1, 2, 3, 3, generator=generator)
    base_logits = torch.randn(1, BASE_CLASSES + 1, 3, 3, generator=generator)
    psi = torch.full((1, 1, 1, 1), 0.25)
    gram_merge, cls_merge = build_merge_conv(), build_merge_conv()
    with torch.no_grad():
        gram_merge.weight.copy_(torch.tensor([2.0, -1.0]).view(1, 2, 1, 1))
        cls_merge.weight.copy_(torch.tensor([0.5, 3.0]).view(1, 2, 1, 1))
    final = ensemble_merge(meta_logits, base_logits, psi, gram_merge, cls_merge)
    meta, base = meta_logits.softmax(1), base_logits.softmax(1)
    assert_close(final[:, 1], 2.0 * meta[:, 1] - 0.25)
    assert_close(final[:, 0], 0.5 * (2.0 * meta[:, 0] - 0.25) + 3.0 * base[:, 1:].sum(1))


def test_base_foreground_leaves_out_the_episode_class_of_each_sample():
    probability = torch.rand(2, BASE_CLASSES + 1, 2, 2).softmax(1)
    everything = probability[:, 1:].sum(1, keepdim=True)
    assert_close(base_foreground(probability), everything)
    excluded = base_foreground(probability, torch.tensor([1, 3]))
    assert_close(excluded[0], everything[0] - probability[0, 1:2])
    assert_close(excluded[1], everything[1] - probability[1, 3:4])


# ------------------------------------------------------------------------ the SCCAN switch
def _pair_of_models(shot=1):
    """(ensemble-off model, ensemble-on model) holding the same meta-learner weights."""
    torch.manual_seed(0)
    off = SCCAN(Backbone(50), shot=shot, feature_size=16)
    on = SCCAN(Backbone(50), shot=shot, feature_size=16, learner_base=toy_learner_base())
    missing, unexpected = on.load_state_dict(off.state_dict(), strict=False)
    assert unexpected == [] and all(key.startswith(("learner_base.", "gram_merge.", "cls_merge.",
                                                    "kshot_rw.")) for key in missing)
    return off, on


def _episode(batch=1, shot=1, size=65, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=generator)
    s_x = torch.randn(batch, shot, 3, size, size, generator=generator)
    s_y = (torch.rand(batch, shot, size, size, generator=generator) > 0.5).long()
    return x, s_x, s_y


def test_switch_off_keeps_the_state_dict_and_the_switch_on_only_appends():
    off_keys = list(SCCAN(Backbone(50), shot=2).state_dict())
    assert off_keys == list(SCCAN(Backbone(50), shot=2, learner_base=None).state_dict())
    on_keys = list(SCCAN(Backbone(50), shot=2, learner_base=toy_learner_base()).state_dict())
    assert on_keys[:len(off_keys)] == off_keys
    added = on_keys[len(off_keys):]
    assert [key for key in added if not key.startswith("learner_base.")] == ENSEMBLE_KEYS + [
        "kshot_rw.0.weight", "kshot_rw.0.bias", "kshot_rw.2.weight", "kshot_rw.2.bias"]
    assert "kshot_rw.0.weight" not in SCCAN(Backbone(50), shot=1, learner_base=toy_learner_base()).state_dict()


def test_ensemble_meta_logits_equal_the_plain_model_logits_for_the_same_weights():
    off, on = _pair_of_models(shot=2)
    x, s_x, s_y = _episode(shot=2)
    with torch.no_grad():
        expected = off.eval()(x, s_x, s_y).logits
        outputs = on.eval().ensemble_outputs(x, s_x, s_y)
        final = on(x, s_x, s_y).logits
    assert_close(outputs.meta, expected, atol=1e-6, rtol=0)
    assert outputs.final.shape == (1, 2, 65, 65) and outputs.base.shape == (1, BASE_CLASSES + 1, 65, 65)
    assert_close(final, outputs.final)
    # At the initial merge weights the final foreground is the meta learner's probability (mixed
    # on the meta grid, then upsampled: softmax and upsampling commute only approximately).
    assert_close(outputs.final[:, 1], expected.softmax(1)[:, 1], atol=1e-4, rtol=0)


def test_episode_class_leaves_the_base_foreground_in_training_only():
    _, model = _pair_of_models()
    seen = []
    model.cls_merge.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0][:, 1:2]))
    x, s_x, s_y = _episode(batch=2)
    label = s_y[:, 0]
    with torch.no_grad():
        model.eval()(x, s_x, s_y)
        model.train()(x, s_x, s_y, cat_idx=[torch.tensor([0, 2])])
    evaluation, training = seen
    assert evaluation.shape == training.shape == (2, 1, 16, 16)  # the meta grid
    # Recompute p_B on the meta grid from the base logits, with and without the episode class.
    with torch.no_grad():
        logits = model.learner_base(model.backbone(x)[3])
        grid = nn.functional.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=True).softmax(1)
    assert_close(evaluation, grid[:, 1:].sum(1, keepdim=True))
    # cat_idx indexes the train (= base) class list: base class index + 1 leaves the sum.
    assert_close(training[0], grid[0, 1:].sum(0, keepdim=True) - grid[0, 1:2])
    assert_close(training[1], grid[1, 1:].sum(0, keepdim=True) - grid[1, 3:4])


def test_training_losses_and_gradients_of_the_ensemble(monkeypatch):
    """BAM's training losses: main_loss = CE(final, y_m), aux_loss2 = CE(base, y_b), both
    ignoring 255, checked against F.cross_entropy of the outputs the forward produced (recorded
    from ``_ensemble``: training mode runs dropout, so a second forward would differ); and which
    parameters get gradients."""
    _, model = _pair_of_models()
    model.train()
    recorded = []  # the EnsembleOutputs the forward takes its losses from
    ensemble = model._ensemble

    def recording_ensemble(*args, **kwargs):
        recorded.append(ensemble(*args, **kwargs))
        return recorded[-1]

    monkeypatch.setattr(model, "_ensemble", recording_ensemble)
    x, s_x, s_y = _episode(batch=2, seed=3)
    label = s_y[:, 0].clone()
    label[:, :4] = 255
    base_label = torch.randint(0, BASE_CLASSES + 1, label.shape)
    base_label[:, -5:] = 255  # ignored pixels in the base label too (a different region)
    output = model(x, s_x, s_y, cat_idx=[torch.tensor([1, 0])])
    losses = model.losses(output, label, base_label)
    assert list(losses) == ["main_loss", "aux_loss1", "aux_loss2"]
    main_loss, aux_loss1, aux_loss2 = losses.values()
    assert main_loss.requires_grad and aux_loss1.requires_grad and not aux_loss2.requires_grad
    (outputs,) = recorded
    with torch.no_grad():  # the final output is the merged probabilities, taken as logits (as BAM)
        assert_close(main_loss, nn.functional.cross_entropy(outputs.final, label, ignore_index=255))
        assert_close(aux_loss2, nn.functional.cross_entropy(outputs.base, base_label, ignore_index=255))
    assert output is outputs  # the forward returns what the losses were taken from
    assert float(aux_loss2) > 0
    (main_loss + aux_loss1 + aux_loss2).backward()
    assert model.gram_merge.weight.grad is not None and model.cls_merge.weight.grad is not None
    assert model.cls_meta[-1].weight.grad is not None
    assert all(not p.requires_grad and p.grad is None for p in model.learner_base.parameters())
    # The base learner's BatchNorm keeps its (trained) statistics in training mode.
    assert not model.learner_base[1].training and model.learner_base[0].training
    with pytest.raises(ValueError, match="y_b"):
        model.losses(output, label)
    with pytest.raises(ValueError, match="cat_idx"):
        model(x, s_x, s_y)


def test_training_dice_loss_is_the_meta_learners_loss():
    _, model = _pair_of_models()
    model.eval()
    for module in model.modules():  # no dropout: training and eval compute the same outputs
        if isinstance(module, nn.Dropout2d):
            module.p = 0.0
    x, s_x, s_y = _episode(seed=4)
    label = s_y[:, 0]
    with torch.no_grad():
        meta = model.ensemble_outputs(x, s_x, s_y).meta
        aux_loss1 = model.losses(model.train()(x, s_x, s_y, cat_idx=[torch.tensor([0])]), label,
                                 label)["aux_loss1"]
    assert_close(aux_loss1, weighted_dice_loss(meta, label))


def test_optimizer_groups_follow_bam_with_the_ensemble():
    model = SCCAN(Backbone(50), shot=2, feature_size=16, learner_base=toy_learner_base())
    sgd, _ = build_optimizers(model, base_lr=0.01)
    assert len(sgd.param_groups) == len(SGD_GROUP_MODULES) + 3
    assert sgd.param_groups[-3]["params"][0] is model.gram_merge.weight
    assert sgd.param_groups[-1]["params"][0] is model.kshot_rw[0].weight
    plain, _ = build_optimizers(SCCAN(Backbone(50), shot=2, feature_size=16), base_lr=0.01)
    assert len(plain.param_groups) == len(SGD_GROUP_MODULES)


def test_missing_base_learner_checkpoint_names_the_file_and_the_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = dict(base_learner=True, data_set="coco", split=2, layers=101)
    assert base_learner_checkpoint_path(cfg) == "initmodel/PSPNet/coco/split2/resnet101/best.pth"
    with pytest.raises(FileNotFoundError) as error:
        build_model(cfg)
    message = str(error.value)
    assert "\n" not in message
    assert "initmodel/PSPNet/coco/split2/resnet101/best.pth" in message
    assert "python train_base.py --config config/coco/coco_split2_resnet101_base.yaml" in message
    # base_learner_weights moves it (the toy runs are 'pascal' too and must not take BAM's place).
    moved = dict(cfg, base_learner_weights="exp/toy/base/best.pth")
    assert base_learner_checkpoint_path(moved) == "exp/toy/base/best.pth"
    with pytest.raises(FileNotFoundError, match="'exp/toy/base/best.pth' not found"):
        build_model(moved)


def test_a_checkpoint_of_the_other_kind_names_the_switch():
    off, on = _pair_of_models()
    with pytest.raises(CheckpointError, match="use base_learner: True"):
        load_model_weights(off, {"state_dict": on.state_dict()})
    with pytest.raises(CheckpointError, match="use base_learner: False"):
        load_model_weights(on, {"state_dict": off.state_dict()})
    load_model_weights(on, {"state_dict": on.state_dict()})  # strict, the same kind: fine


def test_build_model_takes_backbone_and_head_from_a_bam_base_learner_checkpoint(tmp_path):
    """The ensemble's frozen backbone and learner_base are the base learner's own layers: a
    BAM-format checkpoint (with DDP's ``module.`` prefix) of a PSPNet with non-trivial BatchNorm
    statistics gives SCCAN the same layer features and the same base logits."""
    from experiment.models import build_model
    from model.pspnet import PSPNet
    from tests.support.toy_experiment import CONFIG
    from util.config import load_config

    torch.manual_seed(0)
    pspnet = PSPNet(50, classes=16, pretrained_backbone=False).eval()
    generator = torch.Generator().manual_seed(1)
    for module in pspnet.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    path = str(tmp_path / "best.pth")
    torch.save({"epoch": 3, "state_dict": {"module." + key: value for key, value in pspnet.state_dict().items()},
                "optimizer": {}}, path)
    cfg = load_config(CONFIG, ["base_learner", "True", "base_learner_weights", repr(path),
                               "feature_size", "8", "window_size", "4"])
    model = build_model(cfg).eval()
    assert not any(p.requires_grad for p in model.learner_base.parameters())
    image = torch.randn(1, 3, 65, 65, generator=generator)
    with torch.no_grad():
        features = model.backbone(image)
        expected = pspnet.layer0(image)
        for level, layer in enumerate((pspnet.layer1, pspnet.layer2, pspnet.layer3, pspnet.layer4)):
            expected = layer(expected)
            torch.testing.assert_close(features[level], expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model.learner_base(features[3]), pspnet.cls(pspnet.ppm(expected)),
                                   rtol=1e-4, atol=1e-4)


def test_the_ensemble_pieces_refuse_what_they_cannot_build_in_one_line():
    with pytest.raises(ValueError, match="^the K-shot reweighting needs shot > 1, got 1$"):
        build_kshot_reweighting(1, 2)
    with pytest.raises(ValueError, match="^kshot_trans_dim must be >= 0, got -1$"):
        build_kshot_reweighting(5, -1)
    with pytest.raises(ValueError, match="^5 shots need the kshot_rw reweighting module$"):
        kshot_weights(torch.rand(2, 5, 1, 1), None)  # (B, K, 1, 1): K counted on dimension 1
    with pytest.raises(ValueError, match=r"^low_fea must be one of \['layer1', 'layer2', 'layer3', "
                                         r"'layer4'\], got 'layer5'$"):
        low_feature_level("layer5")
    assert [low_feature_level(f"layer{level}") for level in (1, 2, 3, 4)] == [0, 1, 2, 3]
