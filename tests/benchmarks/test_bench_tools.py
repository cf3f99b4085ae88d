"""The speed benchmarks run end to end at tiny sizes and print their tables (timings themselves
are figures for BENCHMARKS.md, not tested)."""
import copy
import os
from types import SimpleNamespace

import pytest
import torch

from benchmarks import bench_amp, bench_eval, bench_model, bench_train
from experiment.build import build_experiment_model
from tests.scripts.test_cli_errors import assert_user_error, run
from tests.support.cuda import cuda_device, cuda_test
from tests.support.toy_experiment import CONFIG, reduced_train_list, toy_opts
from util.cli import run_entry_point
from util.config import load_config


def _rows(output: str, first_cell: str):
    return [line for line in output.splitlines() if line.startswith(f"| {first_cell} |")]


def test_bench_model_rows_per_variant(capsys):
    bench_model.main(["--devices", "cpu", "--layers", "50", "--shots", "1", "--size", "33", "--runs", "1",
                      "--warmup", "0", "--batch", "2", "--feature-size", "8", "--window-size", "4",
                      "--variants", "reference", "fast", "fast-bf16"])
    output = capsys.readouterr().out
    assert "input 33x33, feature grid 8x8 (window 4), batch 2" in output
    rows = _rows(output, "cpu")
    assert [row.split(" | ")[4] for row in rows] == ["reference", "fast", "fast-bf16"]
    assert all(row.split(" | ")[3] == "2" for row in rows)  # batch


def test_bench_train_rows_per_variant(toy_data_root, tmp_path, capsys):
    train_list = str(tmp_path / "train_small.txt")
    reduced_train_list(toy_data_root, train_list)
    opts = toy_opts(toy_data_root, str(tmp_path / "unused"), train_list=train_list,
                    list_root=str(tmp_path / "fss"))
    bench_train.main(["--config", CONFIG, "--iterations", "1", "--rounds", "1", "--warmup", "0",
                      "--variants", "reference", "fast", "--opts", *opts])
    rows = _rows(capsys.readouterr().out, "cpu")
    assert [row.split(" | ")[1] for row in rows] == ["reference", "fast"]
    assert rows[0].split(" | ")[4] == "1.00x"
    assert not os.path.exists(tmp_path / "unused")  # the trainer wrote into a temporary folder


def _optimizers_only_trainer(device):
    """What apply_variant touches of a trainer: the model's path switch, amp and the SGD and
    AdamW optimizers (here of one small parameter each)."""
    weights = [torch.nn.Parameter(torch.ones(4, device=device)) for _ in range(2)]
    return SimpleNamespace(model=SimpleNamespace(set_fast_path=lambda evaluation, training: None),
                           cfg=SimpleNamespace(amp="bf16"), sgd=torch.optim.SGD(weights[:1], lr=0.1, momentum=0.9),
                           adamw=torch.optim.AdamW(weights[1:], lr=0.1))


def _step(trainer):
    for optimizer in (trainer.sgd, trainer.adamw):
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                parameter.grad = torch.full_like(parameter, 0.5)
        optimizer.step()


def _reference_after_a_fast_variant(device):
    trainer = _optimizers_only_trainer(device)
    bench_train.apply_variant(trainer, "fast")
    _step(trainer)  # fused on a GPU, foreach on the CPU
    bench_train.apply_variant(trainer, "reference")
    assert trainer.cfg.amp == "fp32"
    assert all(group["foreach"] is False and group["fused"] is False
               for group in trainer.sgd.param_groups + trainer.adamw.param_groups)
    # AdamW's step counters where a one-tensor step keeps them (a fused step leaves them on the GPU)
    steps = [state["step"] for state in trainer.adamw.state.values()]
    assert steps and all(step.device.type == "cpu" and step.dtype == torch.float32 for step in steps)
    # The next step is exactly a one-tensor step from the state the fused one left. (Not two
    # one-tensor steps from the start: on a GPU the fused kernel's rounding differs from the
    # one-tensor arithmetic in the last bits.)
    fresh = _optimizers_only_trainer(device)
    bench_train.apply_variant(fresh, "reference")
    pairs = ((trainer.sgd, fresh.sgd), (trainer.adamw, fresh.adamw))
    for optimizer, expected in pairs:
        with torch.no_grad():
            expected.param_groups[0]["params"][0].copy_(optimizer.param_groups[0]["params"][0])
        expected.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # not sharing its buffers
    _step(trainer), _step(fresh)
    moved = torch.ones(4, device=device)
    for optimizer, expected in pairs:
        assert not torch.equal(optimizer.param_groups[0]["params"][0], moved)
        assert torch.equal(optimizer.param_groups[0]["params"][0], expected.param_groups[0]["params"][0])


def test_reference_variant_takes_one_tensor_steps_after_fast_ones():
    _reference_after_a_fast_variant(torch.device("cpu"))


@cuda_test
def test_reference_variant_takes_one_tensor_steps_after_fused_ones_on_the_gpu():
    _reference_after_a_fast_variant(cuda_device())


def test_bench_eval_measures_and_projects(toy_data_root, capsys):
    bench_eval.main(["--data-root", toy_data_root, "--shots", "1", "--size", "33", "--feature-size", "8",
                     "--window-size", "4", "--episodes", "30", "--test-num", "100"])
    output = capsys.readouterr().out
    measured, projected = _rows(output, "1")
    assert measured.split(" | ")[1] == "30" and projected.split(" | ")[1] == "100"


def test_image_uses_replays_the_protocol_draws(toy_data_root, tmp_path):
    from evaluation.episodes import EpisodeRecorder, RecordingDataset
    from evaluation.protocol import EvaluationProtocol
    from experiment.build import build_dataset, build_val_loader

    cfg = load_config(CONFIG, toy_opts(toy_data_root, str(tmp_path), list_root=str(tmp_path / "fss"), shot=2))
    dataset = build_dataset(cfg, "val", show_progress=False)
    recorder = EpisodeRecorder()
    loader = build_val_loader(cfg, RecordingDataset(dataset))
    count = len(dataset) + 5  # two loader passes
    EvaluationProtocol(test_num=count, num_test_classes=5).run(
        lambda x, s_x, s_y: torch.zeros(x.shape[0], 2, *x.shape[-2:]), loader, torch.device("cpu"),
        seed=bench_eval.SEED, observers=[recorder])
    expected = [path for episode in recorder.episodes
                for path in [episode["query"][0]] + [pair[0] for pair in episode["supports"]]]
    assert bench_eval.image_uses(dataset, count) == expected


def test_lru_misses():
    assert bench_eval.lru_misses("abcabc", 3) == 3
    assert bench_eval.lru_misses("abcabc", 2) == 6
    assert bench_eval.lru_misses("abacab", 2) == 4  # a stays recent: misses a b c b


def test_bench_amp_compares_precisions(toy_data_root, tmp_path, capsys):
    opts = toy_opts(toy_data_root, str(tmp_path), list_root=str(tmp_path / "fss"))
    model = build_experiment_model(load_config(CONFIG, opts), torch.device("cpu"))
    weight = str(tmp_path / "model.pth")
    torch.save({"state_dict": model.state_dict()}, weight)
    bench_amp.main(["--config", CONFIG, "--weight", weight, "--episodes", "3", "--opts", *opts])
    output = capsys.readouterr().out
    fp32, bf16 = _rows(output, "fp32"), _rows(output, "bf16")
    assert len(fp32) == len(bf16) == 1 and bf16[0].split(" | ")[-1].rstrip(" |").endswith("%")
    assert "mIoU difference (bf16 - fp32):" in output


@pytest.mark.parametrize("tool", ["bench_model", "bench_train", "bench_eval", "bench_amp"])
def test_tools_have_help(tool, capsys):
    module = {"bench_model": bench_model, "bench_train": bench_train, "bench_eval": bench_eval,
              "bench_amp": bench_amp}[tool]
    with pytest.raises(SystemExit) as exit_status:
        module.main(["--help"])
    assert exit_status.value.code == 0  # help is not an error
    output = capsys.readouterr()
    assert output.out.startswith(f"usage: python -m benchmarks.{tool}") and output.err == ""
    assert "--debug" in output.out  # every tool takes the traceback switch
    with pytest.raises(SystemExit) as exit_status:
        module.main(["--no-such-option"])
    assert exit_status.value.code == 2  # argparse's usage error: the one-line error status
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"python -m benchmarks.{tool}: error: ")  # a required option or the unknown one
    assert "required: --config" in last or last.endswith("unrecognized arguments: --no-such-option")


# ------------------------------------------------------------------ options checked before work
def _no_work(*args, **kwargs):
    raise AssertionError("the toy data was made before the options were checked")


def test_bench_eval_names_a_bad_option_before_any_work(monkeypatch, capsys):
    """An unknown device was a traceback, a GPU request on a machine without one exit status 1,
    a negative cache refused after minutes of measurement, sizes out of range said 'from --opts'."""
    result = run("-m", "benchmarks.bench_eval", "--device", "foo")  # as a user runs it
    assert_user_error(result)
    assert result.stderr.strip() == "error: --device 'foo': not a device; expected cpu, cuda or cuda:<index>"
    monkeypatch.setattr(bench_eval, "make_toy_dataset", _no_work)
    side = "an int 9..4097 with (value - 1) a multiple of 8, the backbone's stride (e.g. 473, 417, 65, 33)"
    for options, expected in [
            (["--device", "cuda"], "--device cuda: no usable CUDA device (PyTorch sees none, or SCCAN_FORCE_CPU=1 "
                                   "is set); use --device cpu"),  # the suite sets it around CPU tests
            (["--device", "mps"], "--device mps: the benchmarks run on cpu, cuda or cuda:<index>"),
            (["--cache-mb", "-1"], "config key eval_feature_cache_mb: expected a finite value >= 0 (0 = off), "
                                   "got -1.0 (from --cache-mb)"),
            (["--size", "10"], f"config key val_size: expected {side}, got 10 (from --size)"),
            (["--window-size", "3"], "config key window_size: expected 1 or an even int >= 2 (shifted windows pad "
                                     "half a window on each side), got 3 (from --window-size)"),
            (["--feature-size", "6", "--window-size", "4"],
             "config keys feature_size and window_size: expected feature_size a multiple of window_size (windows "
             "tile the transformer grid), got feature_size 6, window_size 4 (from --feature-size) (from "
             "--window-size)")]:
        assert run_entry_point(bench_eval.main, options) == 2
        assert capsys.readouterr().err.strip() == f"error: {expected}"
    # bench_model takes several devices: each is checked before the first model is built
    from benchmarks import bench_model

    monkeypatch.setattr(bench_model, "SCCAN", _no_work)
    assert run_entry_point(bench_model.main, ["--devices", "cpu", "foo"]) == 2
    assert capsys.readouterr().err.strip() == "error: --devices 'foo': not a device; expected cpu, cuda or cuda:<index>"


def test_bench_data_checks_its_sizes_and_data_root_before_any_work(tmp_path, monkeypatch, capsys):
    from benchmarks import bench_data

    a_file = tmp_path / "a_file"
    a_file.write_text("kept")
    assert run_entry_point(bench_data.main, ["--data-root", str(a_file), "--sizes", "33"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: --data-root {a_file}: is a file, not a folder; give a "
                                               f"folder path")
    assert sorted(os.listdir(tmp_path)) == ["a_file"]  # no half-made dataset beside it
    monkeypatch.setattr(bench_data, "make_toy_dataset", _no_work)
    assert run_entry_point(bench_data.main, ["--sizes", "33", "10"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: config key val_size: expected an int 9..4097 with (value - 1) a multiple of 8, the backbone's "
        "stride (e.g. 473, 417, 65, 33), got 10 (from --sizes)")
