"""How the training step weighs the model's losses: BAM's ``main_loss + aux_weight1 * aux_loss1 +
aux_weight2 * aux_loss2`` (docs/PROTOCOL.md, the base learner's losses) with the config's weights,
both in the loss it returns and in the backward it runs."""
import pytest
import torch
import torch.nn as nn

from engine.loop import weighted_loss
from engine.optimization import build_optimizers
from engine.trainer import Trainer, sccan_loss_weights
from model.backbone import Backbone, initialise_random_backbone
from model.sccan import SCCAN
from tests.support.toy_experiment import CONFIG
from util.config import load_config
from util.episode import TrainingEpisodeWithBaseLabel

BASE_CLASSES = 3
SIZE = 33


@pytest.fixture(scope="module")
def ensemble_model():
    """A small SCCAN with a base learner: without one both aux losses are 0 and no weight could
    show. The head stands in for BAM's frozen ``Sequential(ppm, cls)`` on layer4."""
    torch.manual_seed(0)
    backbone = Backbone(50)
    initialise_random_backbone(backbone, residual_gain=0.1)
    head = nn.Sequential(nn.Conv2d(2048, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                         nn.Conv2d(8, BASE_CLASSES + 1, 1))
    return SCCAN(backbone, shot=1, feature_size=8, window_size=4, feature_dropout=0.0, learner_base=head)


def training_batch(seed: int):
    """A batch of two episodes as the training loader with a base learner serves it: image,
    label, supports, support labels, the collated ``subcls_list`` and the base label."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(2, 3, SIZE, SIZE, generator=generator)
    label = (torch.rand(2, SIZE, SIZE, generator=generator) > 0.5).long()
    label[:, :3] = 255
    support_images = torch.randn(2, 1, 3, SIZE, SIZE, generator=generator)
    support_labels = (torch.rand(2, 1, SIZE, SIZE, generator=generator) > 0.5).float()
    base_label = torch.randint(0, BASE_CLASSES + 1, (2, SIZE, SIZE), generator=generator)
    return TrainingEpisodeWithBaseLabel(image, label, support_images, support_labels, [torch.tensor([0, 2])],
                                        base_label)


def trainer_around(model, cfg):
    """A Trainer with only what its training step uses (config, device, model and forward,
    optimizers, loss weights): a whole Trainer would build the datasets and load a base-learner
    checkpoint."""
    trainer = Trainer.__new__(Trainer)
    trainer.cfg, trainer.device, trainer.model = cfg, torch.device("cpu"), model
    trainer.training_forward = model
    trainer.sgd, trainer.adamw = build_optimizers(model, cfg.base_lr, cfg.momentum, cfg.weight_decay,
                                                  cfg.transformer_lr)
    trainer.optimizers = {"optimizer": trainer.sgd, "optimizer_swin": trainer.adamw}
    trainer.scheduled_optimizer = trainer.sgd
    trainer.loss_weights = sccan_loss_weights(cfg)
    return trainer


@pytest.mark.parametrize("aux_weight1, aux_weight2", [(0.25, 2.0), (1.5, 0.5)])
def test_training_step_weighs_the_aux_losses_with_the_config(ensemble_model, aux_weight1, aux_weight2, monkeypatch):
    cfg = load_config(CONFIG, ["aux_weight1", str(aux_weight1), "aux_weight2", str(aux_weight2)])
    trainer = trainer_around(ensemble_model, cfg)
    terms, gradients = {}, {}
    model_losses = ensemble_model.losses

    def losses_recording_the_terms(*arguments):
        losses = model_losses(*arguments)
        for name, term in losses.items():
            terms[name] = term.item()
            if term.requires_grad:  # aux_loss2 (the frozen base learner's CE) carries no gradient
                term.register_hook(lambda gradient, name=name: gradients.__setitem__(name, gradient.item()))
        return losses

    monkeypatch.setattr(ensemble_model, "losses", losses_recording_the_terms)
    ensemble_model.train()
    loss, losses = trainer.train_step(training_batch(seed=0), 1, 10)

    assert list(terms) == ["main_loss", "aux_loss1", "aux_loss2"]
    assert min(terms.values()) > 0  # every term is there to be weighed
    assert {name: value.item() for name, value in losses.items()} == terms
    expected = terms["main_loss"] + aux_weight1 * terms["aux_loss1"] + aux_weight2 * terms["aux_loss2"]
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # d(backpropagated loss)/d(term) is the term's weight: the backward ran on the weighed sum.
    assert gradients == pytest.approx({"main_loss": 1.0, "aux_loss1": aux_weight1})


def test_weighted_loss_is_the_original_sum_bit_for_bit():
    generator = torch.Generator().manual_seed(3)
    main, aux1, aux2 = torch.rand(3, generator=generator, dtype=torch.float32).unbind()
    losses = {"main_loss": main, "aux_loss1": aux1, "aux_loss2": aux2}
    weights = {"main_loss": 1.0, "aux_loss1": 0.3, "aux_loss2": 0.7}
    # The original's expression, term order and all (float32 rounding makes the order visible).
    assert torch.equal(weighted_loss(losses, weights), main + 0.3 * aux1 + 0.7 * aux2)
    # One loss weighted 1 is that very loss (the paper's SCCAN: its dice loss alone).
    assert weighted_loss({"main_loss": main}, weights) is main
    assert torch.equal(weighted_loss({"main_loss": main}, {"main_loss": 2.0}), 2.0 * main)


def test_weighted_loss_refuses_a_loss_without_a_weight_and_no_loss():
    with pytest.raises(KeyError, match="aux_loss1"):
        weighted_loss({"main_loss": torch.ones(()), "aux_loss1": torch.ones(())}, {"main_loss": 1.0})
    with pytest.raises(ValueError, match="no loss"):
        weighted_loss({}, {"main_loss": 1.0})
