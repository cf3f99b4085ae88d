"""A checkpoint to resume from is checked whole before a training run writes anything (its
config, log, folders): its kind, structure, saved config, epoch, training state, RNG states,
weights and optimizer states. A mistake is one line naming the file and what was expected, and
the run's earlier config and files are left as they were.

The contents are checked in memory against the trainer's structure (util/trainer.
check_resume_checkpoint, which the pre-check and the trainer's own load both run); the scripts
are run in-process (util/cli.run_entry_point, what ``python train_sccan.py`` runs) and once as a
subprocess."""
import math

import pytest
import torch

import train_base
import train_sccan
from engine.base_trainer import BASE_RESUME
from engine.trainer import SCCAN_RESUME, TrainingState, check_resume_checkpoint, training_checkpoint
from model.checkpoint import CheckpointError
from model.pspnet import PSPNet
from tests.scripts.test_cli_errors import assert_user_error, run
from tests.support.toy_experiment import BASE_CONFIG, CONFIG, toy_opts
from util.cli import run_entry_point
from util.config import load_config
from util.runtime import get_rng_states, set_rng_states

PATH = "/runs/latest_1shot.pth"


def _take_a_step(optimizers):
    # Zero gradients: every parameter gets its optimizer state (momentum, Adam moments).
    for optimizer in optimizers.values():
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                parameter.grad = torch.zeros_like(parameter)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.fixture(scope="module")
def sccan(tmp_path_factory):
    """The toy config (2 epochs), a model and optimizers of the trainer's structure with a
    state per parameter, and their training checkpoint after epoch 1 (in memory)."""
    cfg = load_config(CONFIG, toy_opts(str(tmp_path_factory.mktemp("data")), "unused", epochs=2))
    torch.manual_seed(0)
    model, optimizers = SCCAN_RESUME.skeleton(cfg)
    _take_a_step(optimizers)
    checkpoint = training_checkpoint(model, optimizers, 0, cfg, TrainingState(epoch=1, iteration=4))
    return cfg, model, optimizers, checkpoint


def _check(sccan, checkpoint, spec=SCCAN_RESUME, cfg=None):
    config, model, optimizers, _ = sccan
    return check_resume_checkpoint(checkpoint, PATH, spec, cfg or config, model, optimizers)


def _error(sccan, checkpoint) -> str:
    with pytest.raises(CheckpointError) as error:
        _check(sccan, checkpoint)
    return str(error.value)


def _with(checkpoint, **entries):
    """A shallow copy of ``checkpoint`` with ``entries`` replaced (None removes one)."""
    changed = dict(checkpoint, **entries)
    return {key: value for key, value in changed.items() if value is not None}


def _training(checkpoint, **fields):
    return _with(checkpoint, training_state=_with(checkpoint["training_state"], **fields))


def _first_state(optimizer_state, name, value):
    """``optimizer_state`` whose first parameter's ``name`` holds ``value`` at index 0."""
    state = dict(optimizer_state["state"])
    first = min(state)
    tensor = state[first][name].clone()
    tensor.view(-1)[0] = value
    state[first] = dict(state[first], **{name: tensor})
    return dict(optimizer_state, state=state)


def test_a_training_checkpoint_and_the_released_formats_pass(sccan):
    cfg, model, optimizers, checkpoint = sccan
    saved, changed = _check(sccan, checkpoint)
    assert saved["shot"] == 1 and changed == []
    # The original's {'epoch', 'state_dict', 'optimizer', 'optimizer_swin'} (DDP prefix, PyTorch
    # 1.7's int 'step'), resumed at the epoch after its label
    adamw = optimizers["optimizer_swin"].state_dict()
    adamw = dict(adamw, state={index: dict(state, step=12) for index, state in adamw["state"].items()})
    released = {"epoch": 33.5, "state_dict": {f"module.{key}": value for key, value in model.state_dict().items()},
                "optimizer": optimizers["optimizer"].state_dict(), "optimizer_swin": adamw}
    longer = cfg.copy()
    longer.epochs = 50
    assert _check(sccan, released, cfg=longer) == (None, [])
    # BAM's base learner {'epoch', 'state_dict', 'optimizer'} for train_base.py's resume
    base_cfg = load_config(BASE_CONFIG, ["epochs", "200"])
    base_model, base_optimizers = BASE_RESUME.skeleton(base_cfg)
    bam = {"epoch": 120, "state_dict": base_model.state_dict(),
           "optimizer": base_optimizers["optimizer"].state_dict()}
    assert check_resume_checkpoint(bam, PATH, BASE_RESUME, base_cfg, base_model, base_optimizers) == (None, [])


@pytest.mark.parametrize("change, expected", [
    # training state (F3)
    (lambda c: _training(c, best_miou=None),
     "its training_state lacks 'best_miou' (expected epoch, iteration, best_miou, best_epoch, best_path, rng"),
    (lambda c: _training(c, epoch="x"), "its training_state epoch is 'x', expected an int 0..2 (config key epochs 2)"),
    (lambda c: _training(c, epoch=-5), "its training_state epoch is -5, expected an int 0..2"),
    (lambda c: _training(c, epoch=99), "its training_state epoch is 99, expected an int 0..2"),
    (lambda c: _training(c, iteration=-1), "its training_state iteration is -1, expected an int >= 0"),
    (lambda c: _training(c, best_miou=math.nan), "its training_state best_miou is nan, expected a number 0..1"),
    (lambda c: _with(c, training_state="a state"), "its training_state is text 'a state', expected a dict"),
    (lambda c: _with(c, epoch="one", training_state=None),
     "its epoch label is 'one', expected a number -1..1 (the 0-based epoch it ended; config key epochs 2)"),
    (lambda c: _with(c, epoch=-5, training_state=None), "its epoch label is -5, expected a number -1..1"),
    (lambda c: _with(c, epoch=99, training_state=None), "its epoch label is 99, expected a number -1..1"),
    # RNG states
    (lambda c: _training(c, rng={"python": 1}), "its training_state rng: RNG states lack 'torch', 'numpy'"),
    (lambda c: _training(c, rng=dict(c["training_state"]["rng"], torch=torch.zeros(7, dtype=torch.uint8))),
     "its training_state rng: RNG state 'torch': 7 values are not a state of torch's CPU generator"),
    (lambda c: _training(c, rng=dict(c["training_state"]["rng"], python={"version": 3, "state": [1],
                                                                         "gauss_next": None})),
     "its training_state rng: RNG state 'python': expected 'version', 'state' (625 numbers)"),
    (lambda c: _training(c, rng=dict(c["training_state"]["rng"], numpy=dict(c["training_state"]["rng"]["numpy"],
                                                                            position=10 ** 6))),
     "its training_state rng: RNG state 'numpy': expected 'position' 0..624, 'has_gauss' 0 or 1"),
    (lambda c: _training(c, rng_by_rank="all"), "its training_state rng_by_rank is text 'all', expected a list"),
    # optimizer states (F3, F4)
    (lambda c: _with(c, optimizer="hello"),
     "'optimizer' is text 'hello', expected an optimizer state_dict (a dict with 'state' and 'param_groups')"),
    (lambda c: _with(c, optimizer=dict(c["optimizer"], param_groups=c["optimizer"]["param_groups"][:1])),
     "'optimizer' has 1 parameter group(s), this config's SGD 8"),
    (lambda c: _with(c, optimizer=dict(c["optimizer"], param_groups=[
        dict(c["optimizer"]["param_groups"][0], lr=math.nan)] + c["optimizer"]["param_groups"][1:])),
     "'optimizer': parameter group 0 has lr nan, expected a finite number"),
    (lambda c: _with(c, optimizer=dict(c["optimizer"], param_groups=[
        dict(c["optimizer"]["param_groups"][0], nesterov="yes")] + c["optimizer"]["param_groups"][1:])),
     "'optimizer': parameter group 0 has nesterov 'yes', expected True or False"),
    (lambda c: _with(c, optimizer_swin=dict(c["optimizer_swin"], param_groups=[
        dict(c["optimizer_swin"]["param_groups"][0], betas=(0.9,))])),
     "'optimizer_swin': parameter group 0 has betas (0.9,), expected 2 finite numbers"),
    (lambda c: _with(c, optimizer=_first_state(c["optimizer"], "momentum_buffer", math.nan)),
     "'optimizer' holds non-finite optimizer state: parameter 0 (down_query.0.weight) momentum_buffer has "
     "1 NaN/inf value(s) of 393216 (a diverged run or a damaged file); use an earlier checkpoint"),
    (lambda c: _with(c, optimizer_swin=_first_state(c["optimizer_swin"], "exp_avg_sq", math.inf)),
     "'optimizer_swin' holds non-finite optimizer state: parameter 0 (transformer.layers.0.blocks.0.norm1."
     "weight) exp_avg_sq has 1 NaN/inf value(s) of 256"),
    (lambda c: _with(c, optimizer=dict(c["optimizer"], state={0: {"momentum_buffer": torch.zeros(3)}})),
     "'optimizer': parameter 0 (down_query.0.weight) momentum_buffer has shape (3,), the parameter "
     "(256, 1536, 1, 1)"),
    (lambda c: _with(c, optimizer=dict(c["optimizer"], state={9999: {}})),
     "'optimizer' holds a state for parameter 9999, which no parameter group lists"),
    # weights (F5, F20), stored config (F21), kind (F18)
    (lambda c: _with(c, state_dict=dict(c["state_dict"], **{"cls_meta.3.bias": torch.tensor([0.0, math.nan])})),
     f"{PATH} holds non-finite weights: cls_meta.3.bias has 1 NaN/inf value(s) of 2"),
    (lambda c: _with(c, state_dict=dict(c["state_dict"], **{"cls_meta.3.bias": torch.zeros(2, dtype=torch.long)})),
     "keys of another number type: cls_meta.3.bias: checkpoint int64 vs model float32"),
    (lambda c: _with(c, config=[1, 2]), "its 'config' is a list of 2 items, expected the training config"),
    (lambda c: _with(c, config=dict(c["config"], shot="one")),
     "its stored training config is damaged: config key shot expects an int, got 'one' of type str"),
    (lambda c: _with(c, state_dict=PSPNet(layers=50, classes=16, pretrained_backbone=False).state_dict()),
     "is a base learner (BAM's PSPNet) checkpoint (for the config key base_learner_weights, or train_base.py's "
     "resume), not a SCCAN checkpoint: train_sccan.py resumes its own training checkpoints, such as"),
    (lambda c: c["state_dict"], "is a bare state_dict (weights only); resume needs a training checkpoint"),
], ids=["missing-field", "epoch-text", "epoch-negative", "epoch-past-the-end", "iteration-negative",
        "best-miou-nan", "state-text", "label-text", "label-negative", "label-past-the-end", "rng-lacks-torch",
        "rng-torch-size", "rng-python-size", "rng-numpy-position", "rng-by-rank", "optimizer-text", "optimizer-groups",
        "optimizer-lr-nan", "optimizer-nesterov-text", "adamw-betas", "sgd-momentum-nan", "adamw-inf", "optimizer-state-shape",
        "optimizer-unknown-parameter", "weights-nan", "weights-int", "config-list", "config-shot-text",
        "base-learner-kind", "bare-state-dict"])
def test_every_part_a_resume_reads_is_checked_and_named(sccan, change, expected):
    message = _error(sccan, change(sccan[3]))
    assert message.startswith(f"resume: {PATH}") and expected in message, message


def test_rng_states_a_generator_refuses_change_no_generator():
    states = get_rng_states()
    before = torch.get_rng_state()
    with pytest.raises(ValueError, match=r"^RNG state 'python': expected 'version'"):
        set_rng_states(dict(states, python={"version": 3, "state": [], "gauss_next": None}))
    assert torch.equal(torch.get_rng_state(), before)
    with pytest.raises(CheckpointError, match=r"^run.pth: its training_state lacks 'rng'"):
        TrainingState.from_dict({"epoch": 1, "iteration": 2, "best_miou": 0.0, "best_epoch": -1.0,
                                 "best_path": ""}, "run.pth")


# ---------------------------------------------------------------- the scripts write nothing first
@pytest.fixture
def earlier_run(tmp_path):
    """An output folder holding a run: its config, log and latest checkpoint must survive any
    refused resume unchanged."""
    exp = tmp_path / "exp"
    (exp / "snapshot").mkdir(parents=True)
    files = {exp / "config_1shot.yaml": "base_lr: 0.005\n", exp / "train_1shot.log": "epoch 1\n",
             exp / "snapshot" / "latest_1shot.pth": "weights\n", exp / "config.yaml": "base_lr: 0.01\n",
             exp / "train.log": "epoch 1\n"}
    for path, text in files.items():
        path.write_text(text)
    return exp, files


def _unchanged(exp, files):
    found = {path for path in exp.rglob("*") if path.is_file()}
    assert found == set(files), found ^ set(files)
    assert all(path.read_text() == text for path, text in files.items())


def _small_checkpoint(**entries):
    """A checkpoint with one SCCAN-named tensor, the resume keys and ``entries``."""
    return dict({"epoch": 0, "state_dict": {"transformer.weight": torch.zeros(1)}, "optimizer": {},
                 "optimizer_swin": {}}, **entries)


def test_train_sccan_checks_the_resume_checkpoint_before_writing(tmp_path, earlier_run, capsys):
    exp, files = earlier_run
    latest = exp / "snapshot" / "latest_1shot.pth"
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    torch.save(_small_checkpoint(training_state={"epoch": 1}), tmp_path / "damaged.pth")
    cases = {
        str(tmp_path / "lastest_1shot.pth"): f"error: resume: checkpoint '{tmp_path / 'lastest_1shot.pth'}' not "
                                             f"found (config key resume); train_sccan.py writes {latest} every epoch",
        str(tmp_path): f"error: resume: {tmp_path} is a folder; give the checkpoint file to continue from, "
                       f"such as {latest}",
        str(tmp_path / "empty.pth"): f"error: resume: {tmp_path / 'empty.pth'} is empty (0 bytes), not a PyTorch "
                                     f"checkpoint (an interrupted save, copy or download?)",
        str(tmp_path / "tensor.pth"): f"error: resume: {tmp_path / 'tensor.pth'} holds a tensor of shape (3,) "
                                      f"(float32), not weights; expected a state_dict",
        str(tmp_path / "damaged.pth"): f"error: resume: {tmp_path / 'damaged.pth'}: its training_state lacks "
                                       f"'iteration', 'best_miou', 'best_epoch', 'best_path', 'rng'",
    }
    for resume, expected in cases.items():
        argv = ["--config", CONFIG, "--opts",
                *toy_opts(str(tmp_path), str(exp), base_lr=0.5, epochs=2, resume=resume)]
        assert run_entry_point(train_sccan.main, argv) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith(expected) and "\n" not in error, (expected, error)
        _unchanged(exp, files)


def test_train_base_refuses_a_sccan_checkpoint_for_what_it_is_before_writing(tmp_path, earlier_run, capsys):
    exp, files = earlier_run
    torch.save(_small_checkpoint(config={"data_set": "pascal", "base_lr": 0.5}), tmp_path / "sccan.pth")
    argv = ["--config", BASE_CONFIG, "--opts", "data_root", repr(str(tmp_path)), "base_save_path", repr(str(exp)),
            "base_learner_weights", repr(str(exp / "best.pth")), "resume", repr(str(tmp_path / "sccan.pth"))]
    assert run_entry_point(train_base.main, argv) == 2
    error = capsys.readouterr().err.strip()
    assert error == (f"error: resume: {tmp_path / 'sccan.pth'} is a SCCAN checkpoint (for test_sccan.py "
                     f"--weight, tools.predict, or train_sccan.py's resume), not a base learner: train_base.py "
                     f"resumes its own training checkpoints, such as {exp / 'snapshot' / 'latest.pth'}")
    _unchanged(exp, files)


def test_a_mistyped_resume_path_keeps_the_runs_config(tmp_path, earlier_run):
    """The reported case, as a user runs it: a typo in the resume path with a changed base_lr
    used to rewrite the run's config_1shot.yaml before the checkpoint was looked at."""
    exp, files = earlier_run
    typo = str(exp / "snapshot" / "latest_1shto.pth")
    result = run("train_sccan.py", "--config", CONFIG, "--opts",
                 *toy_opts(str(tmp_path), str(exp), base_lr=0.5, resume=typo))
    assert_user_error(result, f"resume: checkpoint '{typo}' not found (config key resume)")
    _unchanged(exp, files)
