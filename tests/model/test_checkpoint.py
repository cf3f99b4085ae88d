"""Checkpoint loading (model/checkpoint.py): released dict format, module. prefix, shape errors."""
import pytest
import torch

from model.backbone import Backbone
from model.checkpoint import CheckpointError, load_model_weights
from model.sccan import SCCAN


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    return SCCAN(Backbone(50)), SCCAN(Backbone(50))


def _assert_same(a, b):
    for (key, left), right in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(left, right), key


def test_training_checkpoint_with_module_prefix_loads(pair, tmp_path):
    source, target = pair
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.add_(torch.randn_like(parameter))
    sgd = torch.optim.SGD(source.cls_meta.parameters(), lr=0.1)
    adamw = torch.optim.AdamW(source.transformer.parameters(), lr=0.1)
    released = {"epoch": 33.5,
                "state_dict": {"module." + k: v for k, v in source.state_dict().items()},
                "optimizer": sgd.state_dict(), "optimizer_swin": adamw.state_dict()}
    path = str(tmp_path / "train5_epoch_33.5_0.4571.pth")
    torch.save(released, path)
    loaded = load_model_weights(target, path)
    assert loaded["epoch"] == 33.5
    _assert_same(source, target)


def test_bare_state_dict_loads(pair, tmp_path):
    source, target = pair
    path = str(tmp_path / "bare.pth")
    torch.save(source.state_dict(), path)
    assert load_model_weights(target, path) is None
    _assert_same(source, target)


def test_wrong_shape_and_missing_keys_are_named(pair, tmp_path):
    source, target = pair
    state = dict(source.state_dict())
    state["cls_meta.3.weight"] = torch.zeros(3, 256, 1, 1)
    del state["res1_meta.0.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = str(tmp_path / "bad.pth")
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError) as error:
        load_model_weights(target, path)
    message = str(error.value)
    assert "cls_meta.3.weight" in message and "(3, 256, 1, 1)" in message and "(2, 256, 1, 1)" in message
    assert "res1_meta.0.weight" in message and "extra.weight" in message and "bad.pth" in message


def test_missing_checkpoint_file(pair, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_model_weights(pair[1], str(tmp_path / "nothing.pth"))


def test_pickled_objects_are_refused(pair, tmp_path):
    path = str(tmp_path / "evil.pth")
    torch.save({"state_dict": {}, "payload": object()}, path)
    with pytest.raises(CheckpointError, match="Python objects other than tensors"):
        load_model_weights(pair[1], path)
