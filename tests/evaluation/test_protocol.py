"""The shared evaluator (evaluation/protocol.py): protocol passes, determinism, the ignore label.
test_sccan.py, which runs it, is tested in tests/scripts/test_test_sccan.py."""
import pytest
import torch

from evaluation.baselines import AllForeground
from evaluation.episodes import EpisodeRecorder, RecordingDataset
from evaluation.protocol import EvaluationProtocol, evaluation_passes, inference_context
from experiment.build import build_dataset, build_val_loader
from util.episode import EvaluationEpisode


@pytest.mark.parametrize("test_num,length,batch,expected", [
    (1000, 364, 1, 3), (1000, 445, 1, 3), (1000, 592, 1, 2), (1000, 336, 1, 3),
    (4000, 4000, 1, 2), (100, 101, 1, 1), (300, 52, 1, 6)])
def test_evaluation_passes(test_num, length, batch, expected):
    assert evaluation_passes(test_num, length, batch) == expected


def test_evaluation_passes_rejects_tiny_loader():
    with pytest.raises(ValueError, match="too few episodes"):
        evaluation_passes(10, 1, 1)


class CountingLoader:
    """A loader that counts how many iterators (passes) the evaluator creates."""

    def __init__(self, loader):
        self.loader, self.batch_size, self.iterators = loader, loader.batch_size, 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.iterators += 1
        return iter(self.loader)


class LabelEcho(torch.nn.Module):
    """Predicts the support-independent 'query is everything foreground' except a fixed band:
    cheap and deterministic, enough to exercise the protocol."""

    def forward(self, x, s_x=None, s_y=None):
        logits = torch.zeros(x.shape[0], 2, *x.shape[-2:])
        logits[:, 1, : x.shape[-2] // 2] = 1.0
        return logits


def test_passes_episodes_and_determinism(val_config):
    dataset = RecordingDataset(build_dataset(val_config, "val", show_progress=False))
    loader = CountingLoader(build_val_loader(val_config, dataset))
    length = len(loader)
    test_num = 2 * length + 3  # needs 3 passes: ceil(test_num / (length - 1))
    protocol = EvaluationProtocol(test_num=test_num, num_test_classes=5)
    records = []
    results = []
    for _ in range(2):
        recorder = EpisodeRecorder()
        results.append(protocol.run(LabelEcho(), loader, torch.device("cpu"), observers=[recorder]))
        records.append(list(recorder.episodes))
    assert loader.iterators == 2 * evaluation_passes(test_num, length, 1) == 6
    assert results[0]["episodes"] == test_num == len(records[0])
    assert records[0] == records[1]
    for key in ("mIoU", "FB_IoU", "pIoU", "class_IoU"):
        assert results[0][key] == results[1][key]
    # a different seed draws other episodes
    other = EpisodeRecorder()
    protocol.run(LabelEcho(), loader, torch.device("cpu"), seed=322, observers=[other])
    assert other.episodes != records[0]
    # every query holds its class, supports differ from the query
    for episode in records[0]:
        assert episode["query"] not in episode["supports"]


class OneEpisodeLoader:
    """Two copies of one hand-made validation batch (the protocol needs more than one batch)."""
    batch_size = 1

    def __init__(self, raw_label):
        label = torch.tensor(raw_label)[None]
        self.batch = EvaluationEpisode(
            query_image=torch.zeros(1, 3, *label.shape[-2:]), query_label=label,
            support_images=torch.zeros(1, 1, 3, *label.shape[-2:]),
            support_labels=torch.zeros(1, 1, *label.shape[-2:]), class_index=[torch.tensor([0])], raw_label=label)

    def __len__(self):
        return 2

    def __iter__(self):
        return iter([self.batch, self.batch])


def test_ignore_label_reaches_the_metrics_and_the_square_padding():
    loader = OneEpisodeLoader([[1, 1, 0], [7, 0, 1]])
    cpu = torch.device("cpu")
    scored = EvaluationProtocol(1, 1, ignore_label=7).run(AllForeground(), loader, cpu)
    # By hand: ori_resize pads to 3x3 with the ignore label 7, so 5 pixels count (three 1s, two
    # 0s); predicting all foreground gives I1 = 3, U1 = 5 and I0 = 0, U0 = 2.
    assert scored["pIoU"] == pytest.approx(3 / 5) and scored["FB_IoU"] == pytest.approx(0.3)
    default = EvaluationProtocol(1, 1).run(AllForeground(), loader, cpu)
    # With 255 ignored instead, the pixel labelled 7 is scored: predicted 1, so U1 = 6.
    assert default["pIoU"] == pytest.approx(3 / 6)


class ModeRecorder(torch.nn.Module):
    """All foreground, recording the mode and the gradient switch it is called in; ``fail``
    raises inside the evaluation."""

    def __init__(self, fail: bool = False):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.fail, self.calls = fail, []

    def forward(self, x, s_x=None, s_y=None):
        self.calls.append((self.training, torch.is_grad_enabled()))
        if self.fail:
            raise RuntimeError("planted failure")
        logits = torch.zeros(x.shape[0], 2, *x.shape[-2:])
        logits[:, 1] = self.weight
        return logits


@pytest.mark.parametrize("start_in_training", [True, False])
def test_the_protocol_runs_in_evaluation_mode_and_gives_the_mode_back(start_in_training):
    loader, cpu = OneEpisodeLoader([[1, 0], [0, 1]]), torch.device("cpu")
    predictor = ModeRecorder().train(start_in_training)
    EvaluationProtocol(1, 1).run(predictor, loader, cpu)
    assert predictor.calls == [(False, False)]  # evaluation mode, no gradients
    assert predictor.training is start_in_training and torch.is_grad_enabled()
    failing = ModeRecorder(fail=True).train(start_in_training)
    with pytest.raises(RuntimeError, match="planted failure"):
        EvaluationProtocol(1, 1).run(failing, loader, cpu)
    assert failing.training is start_in_training and torch.is_grad_enabled()


def test_inference_context_runs_a_plain_function_without_gradients():
    def predictor(x, s_x=None, s_y=None):
        return x

    with inference_context(predictor) as inside:
        assert inside is predictor and not torch.is_grad_enabled()
    assert torch.is_grad_enabled()
