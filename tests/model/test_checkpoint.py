"""Checkpoint loading (model/checkpoint.py): released dict format, module. prefix, shape errors, and
the refusal of contents that are not weights (structure, number types, stored config)."""
import pytest
import torch

from experiment.checkpoints import stored_config
from model.backbone import Backbone
from model.checkpoint import CheckpointError, load_checkpoint, load_model_weights
from model.sccan import SCCAN
from tests.support.toy_experiment import CONFIG


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


# --------------------------------------- contents: kind, structure, number types, stored config
def _last_error(call, *arguments) -> str:
    with pytest.raises(CheckpointError) as error:
        call(*arguments)
    return str(error.value)


@pytest.mark.parametrize("content, fragment", [
    (torch.zeros(3), "holds a tensor of shape (3,) (float32), not weights"),
    ([{"a.weight": torch.zeros(1)}], "holds a list of 1 item, not weights"),
    ({}, "holds an empty dict, no weights"),
    ({"state_dict": torch.zeros(3)}, "its 'state_dict' is a tensor of shape (3,) (float32), expected a dict"),
    ({1: torch.zeros(1)}, "key 1 is an int, not a parameter name"),
    ({"a.weight": torch.zeros(1), "b.weight": 5}, "b.weight is an int (5), expected a tensor"),
    ({"state_dict": {"a.weight": "hello"}}, "('state_dict'): a.weight is text 'hello', expected a tensor"),
    ({"a.weight": torch.eye(3).to_sparse()}, "a.weight is a sparse_coo tensor; weights are dense tensors"),
    ({"model": {"a.weight": torch.zeros(1)}, "epoch": 3},
     "holds no weights (top-level keys: 'model', 'epoch'); expected a state_dict (parameter names -> "
     "tensors) or a training checkpoint (a dict with 'state_dict'); its 'model' entry holds 1 tensor"),
], ids=["tensor", "list", "empty", "state_dict-tensor", "int-key", "int-value", "text-value", "sparse",
        "nested"])
def test_a_file_without_a_state_dict_is_refused_at_load_naming_it(tmp_path, content, fragment):
    """Every file the project reads holds weights: anything else is refused when it is read, by
    a message naming the file, whatever reads it (resume, test, predictor, base learner)."""
    path = str(tmp_path / "odd.pth")
    torch.save(content, path)
    message = _last_error(load_checkpoint, path)
    assert message.startswith(path) and fragment in message, message


def test_empty_files_and_folders_are_named_for_what_they_are(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    assert _last_error(load_checkpoint, str(tmp_path / "empty.pth")) == (
        f"{tmp_path / 'empty.pth'} is empty (0 bytes), not a PyTorch checkpoint (an interrupted save, "
        f"copy or download?)")
    assert _last_error(load_checkpoint, str(tmp_path)) == f"{tmp_path} is a folder, not a checkpoint file"


def test_none_of_the_models_keys_gives_the_keys_and_a_shared_prefix(pair):
    model = pair[1]
    state = model.state_dict()
    message = _last_error(load_model_weights, model, {"conv.weight": torch.zeros(1), "fc.bias": torch.zeros(1)})
    assert message == ("checkpoint holds none of SCCAN's weights (2 tensors; keys: 'conv.weight', "
                       "'fc.bias'); expected a SCCAN checkpoint")
    message = _last_error(load_model_weights, model, {f"model.{key}": value for key, value in state.items()})
    assert message.startswith("checkpoint: every key carries the prefix 'model.' (e.g. 'model.")
    assert "which SCCAN's names lack" in message and len(message) < 400
    assert _last_error(load_model_weights, model, {"state_dict": {}}) == \
        "checkpoint holds an empty state_dict, none of SCCAN's weights"


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_tensors_of_another_number_type_are_refused(pair, dtype):
    """load_state_dict would cast them silently (a complex tensor loses its imaginary part)."""
    model = pair[1]
    state = dict(model.state_dict())
    key = "cls_meta.3.weight"
    state[key] = torch.zeros(state[key].shape, dtype=dtype)
    message = _last_error(load_model_weights, model, state, "cpu", "mine.pth")
    name = str(dtype).replace("torch.", "")
    assert message == (f"mine.pth does not fit SCCAN: keys of another number type: {key}: checkpoint "
                       f"{name} vs model float32")


def test_weights_of_another_float_precision_still_load():
    model = torch.nn.Linear(2, 2)
    load_model_weights(model, {key: value.half() for key, value in model.state_dict().items()})


@pytest.mark.parametrize("config, fragment", [
    ("hello", "its 'config' is text 'hello', expected the training config (a dict of config keys)"),
    ({"shot": "one"}, "its stored training config is damaged: config key shot expects an int, got 'one'"),
    ({"shot": 0}, "its stored training config is damaged: config key shot: expected an int >= 1, got 0"),
    ({"shot": True}, "config key shot expects an int, got True of type bool"),
    ({"layers": 34}, "config key layers: expected 50 or 101, got 34"),
], ids=["text", "shot-text", "shot-0", "shot-bool", "layers-34"])
def test_a_damaged_stored_config_is_refused_by_the_predictor(tmp_path, config, fragment):
    """tools.predict uses the stored shot as a number and compares the input and model keys."""
    from util.config import load_config
    from evaluation.predictor import load_checkpoint_model

    path = str(tmp_path / "run.pth")
    torch.save({"epoch": 1, "state_dict": {"transformer.weight": torch.zeros(1)}, "config": config}, path)
    message = _last_error(load_checkpoint_model, load_config(CONFIG), path)
    assert message.startswith(f"{path}: ") and fragment in message, message
    assert stored_config({"config": {"shot": 5, "data_set": "pascal"}}, path, ("shot",))["shot"] == 5
    assert stored_config({"epoch": 1}, path, ("shot",)) is None
