"""The shared training loop (engine/loop.py) driven by a stand-in trainer that supplies only the
steps a trainer supplies (named losses, named metrics, what it keeps of a better validation):
what the loop does around them is the same for SCCAN's and the base learner's trainers."""
import logging

import pytest
import torch
import torch.nn as nn
from torch.testing import assert_close

from engine.loop import TrainingLoop
from tests.support.toy_experiment import CONFIG
from util.config import load_config
from util.runtime import DistributedContext


class LineLoop(TrainingLoop):
    """Fits y = 3x with one weight; two named losses (the second weighted 0.5); validation
    scores come from a list, one per validation, so that the best and early stop are chosen by
    the test."""

    def __init__(self, cfg, scores, tmp_path, early_stop=False):
        super().__init__(cfg, DistributedContext(), logging.getLogger("test_loop"))
        self.early_stop = early_stop
        self.model = nn.Linear(1, 1, bias=False)
        nn.init.zeros_(self.model.weight)
        self.training_forward = self.model
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.base_lr)
        self.optimizers = {"optimizer": self.optimizer}
        self.scheduled_optimizer = self.optimizer
        self.loss_weights = {"squared": 1.0, "absolute": 0.5}
        self.snapshot_dir = str(tmp_path)
        x = torch.linspace(-1, 1, 8)[:, None]
        self.train_loader = [(x[i:i + 2], 3 * x[i:i + 2]) for i in range(0, 8, 2)]
        self.sampler = None
        self.scores, self.kept, self.seen_losses = list(scores), [], []

    def losses(self, batch):
        x, y = batch
        error = self.training_forward(x) - y
        losses = {"squared": (error ** 2).mean(), "absolute": error.abs().mean()}
        self.seen_losses.append({name: value.item() for name, value in losses.items()})
        return losses

    def evaluate(self):
        return {"mIoU": self.scores.pop(0)} if self.scores else None

    def report_validation(self, label, result):
        pass

    def keep_best(self, label, result):
        self.state.best.miou, self.state.best.epoch, self.state.best.path = result["mIoU"], label, "best"
        self.kept.append((label, result["mIoU"]))

    def checkpoint_name(self, stem):
        return f"{stem}.pth"

    def outcome(self):
        return "outcome"


def _config(**overrides):
    opts = dict(epochs=4, print_freq=1, evaluate=True, stop_interval=2, base_lr=0.01, warmup=False,
                power=0.9, index_split=-1, save_freq=0, fix_random_seed_val=True, amp="fp32")
    opts.update(overrides)
    return load_config(CONFIG, [item for key, value in opts.items() for item in (key, str(value))])


def test_a_step_weighs_the_named_losses_and_steps_every_optimizer(tmp_path):
    loop = LineLoop(_config(), [], tmp_path)
    batch = loop.train_loader[0]
    loss, losses = loop.train_step(batch, 1, 4)
    assert list(losses) == ["squared", "absolute"]
    assert_close(loss, losses["squared"] + 0.5 * losses["absolute"])
    # The step ran the poly schedule (iteration 1 of 4 epochs x 4; index_split -1 gives every
    # group 10x) and the backward of the weighted sum: w = 0 - lr * dL/dw.
    x, y = batch
    gradient = (2 * (0 - y) * x).mean() + 0.5 * (torch.sign(0 - y) * x).mean()
    learning_rate = 0.01 * 10 * (1 - 1 / 16) ** 0.9
    assert loop.optimizer.param_groups[0]["lr"] == pytest.approx(learning_rate)
    assert_close(loop.model.weight.detach()[0, 0], -learning_rate * gradient)


def test_fit_trains_validates_keeps_the_strictly_better_and_writes_the_checkpoints(tmp_path, caplog):
    loop = LineLoop(_config(), [0.2, 0.5, 0.5, 0.4], tmp_path)
    with caplog.at_level(logging.INFO, logger="test_loop"):
        state = loop.fit()
    assert state.epoch == 4 and state.iteration == 16 and len(loop.seen_losses) == 16
    assert loop.kept == [(0, 0.2), (1, 0.5)]  # an equal mIoU does not replace the best
    assert loop.last_validation == {"mIoU": 0.4}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["final.pth", "latest.pth"]
    final = torch.load(tmp_path / "final.pth", weights_only=True)
    assert final["epoch"] == 3 and final["training_state"]["best_miou"] == 0.5
    assert abs(loop.model.weight.item() - 3) < abs(0 - 3)  # it learned something
    text = caplog.text
    assert "iteration 1/4 loss" in text and "squared" in text and "absolute" in text  # several terms
    assert text.count("mean training loss") == 4 and "new best mIoU 0.5000: best" in text
    assert "done after 4 epochs" in text and "outcome" in text


def test_early_stop_only_where_the_trainer_asks_for_it(tmp_path):
    stopping = LineLoop(_config(epochs=6), [0.3, 0.1, 0.1, 0.1, 0.1, 0.1], tmp_path / "a", early_stop=True)
    (tmp_path / "a").mkdir()
    assert stopping.fit().epoch == 3  # best at epoch label 0, two epochs without a better one
    running = LineLoop(_config(epochs=6), [0.3, 0.1, 0.1, 0.1, 0.1, 0.1], tmp_path / "b")
    (tmp_path / "b").mkdir()
    assert running.fit().epoch == 6


def test_an_epoch_end_callback_stops_the_run_without_the_final_checkpoint(tmp_path):
    loop = LineLoop(_config(evaluate=False), [], tmp_path)
    loop.epoch_end_callbacks.append(lambda trainer: trainer.state.epoch == 2)
    assert loop.fit().epoch == 2
    assert sorted(path.name for path in tmp_path.iterdir()) == ["latest.pth"]
