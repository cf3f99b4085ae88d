"""How the training step weighs the model's losses: BAM's ``main_loss + aux_weight1 * aux_loss1 +
aux_weight2 * aux_loss2`` (docs/PROTOCOL.md, the base learner's losses) with the config's weights,
both in the loss it returns and in the backward it runs."""
import pytest
import torch
import torch.nn as nn

from engine.optimization import build_optimizers
from engine.trainer import Trainer
from model.backbone import Backbone, initialise_random_backbone
from model.sccan import SCCAN
from tests.support.toy_experiment import CONFIG
from util.config import load_config

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
    return image, label, support_images, support_labels, [torch.tensor([0, 2])], base_label


def trainer_around(model, cfg):
    """A Trainer with only what its training step uses (its config, device and optimizers; the
    test sets the forward): a whole Trainer would build the datasets and load a base-learner
    checkpoint."""
    trainer = Trainer.__new__(Trainer)
    trainer.cfg, trainer.device, trainer.model = cfg, torch.device("cpu"), model
    trainer.sgd, trainer.adamw = build_optimizers(model, cfg.base_lr, cfg.momentum, cfg.weight_decay,
                                                  cfg.transformer_lr)
    return trainer


@pytest.mark.parametrize("aux_weight1, aux_weight2", [(0.25, 2.0), (1.5, 0.5)])
def test_training_step_weighs_the_aux_losses_with_the_config(ensemble_model, aux_weight1, aux_weight2):
    cfg = load_config(CONFIG, ["aux_weight1", str(aux_weight1), "aux_weight2", str(aux_weight2)])
    trainer = trainer_around(ensemble_model, cfg)
    terms, gradients = {}, {}

    def forward_recording_the_terms(**inputs):
        outputs = ensemble_model(**inputs)
        for name, term in zip(("main", "aux1", "aux2"), outputs[1:]):
            terms[name] = term.item()
            if term.requires_grad:  # aux_loss2 (the frozen base learner's CE) carries no gradient
                term.register_hook(lambda gradient, name=name: gradients.__setitem__(name, gradient.item()))
        return outputs

    trainer._training_forward = forward_recording_the_terms
    ensemble_model.train()
    loss, main_loss, aux_loss1, aux_loss2 = trainer.train_step(training_batch(seed=0), 1, 10)

    assert min(terms.values()) > 0  # every term is there to be weighed
    assert [main_loss.item(), aux_loss1.item(), aux_loss2.item()] == [terms["main"], terms["aux1"], terms["aux2"]]
    expected = terms["main"] + aux_weight1 * terms["aux1"] + aux_weight2 * terms["aux2"]
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # d(backpropagated loss)/d(term) is the term's weight: the backward ran on the weighed sum.
    assert gradients == pytest.approx({"main": 1.0, "aux1": aux_weight1})
