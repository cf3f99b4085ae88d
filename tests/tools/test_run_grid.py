"""python -m tools.run_grid on the toy data: a 2x2 grid (folds 0 and 1, 1- and 5-shot) of tiny
checkpoints gives the same table through the local runner and through submitit's local executor,
and that table holds exactly the results of its cells; an interrupted grid continues without
running finished cells again, a missing checkpoint is one line, a failing cell is reported with
its log while the others run, and a cell that trains tests the checkpoint its training wrote. The Slurm jobs
are checked without Slurm (submitit's AutoExecutor replaced), the GPU sharing without GPUs, and
every user mistake is one line ``error: ...`` with exit status 2."""
import contextlib
import io
import json
import os
import shutil
import sys
import threading
import time
from dataclasses import replace

import pytest
import torch

from evaluation.paper_table import build_report, collect_results
from evaluation.published_figures import load_published_figures
from experiment.models import build_model
from tests.support import REPOSITORY_ROOT
from tests.support.toy_experiment import reduced_train_list
from tools import grid_jobs, results_table, run_grid
from tools.grid import Cell
from tools.grid_jobs import CellJob, CellOutcome, GpuPool, cuda_visible_devices, trained_checkpoint
from util.cli import run_entry_point
from util.config import load_config

EPISODES = 10
SECTION = "toy data: not the paper's protocol [1]"
DEVIATIONS = ("[1] not the paper's protocol: 10 episodes (paper 1000); toy data; workers 0 (paper 8); "
              "val_size 33 (paper 473)")


def tiny_opts(data_root, list_root):
    """--opts of a tiny toy run (33 px inputs, an 8x8 transformer grid)."""
    return ["data_root", data_root, "train_list", os.path.join(data_root, "train.txt"),
            "val_list", os.path.join(data_root, "val.txt"), "list_root", list_root,
            "train_h", "33", "train_w", "33", "val_size", "33", "feature_size", "8"]


@pytest.fixture(scope="module")
def workdir(toy_data_root, tmp_path_factory):
    """The grid's working folder, where the toy configs' exp/toy/SCCAN/split<f>/resnet50[_5s]/
    snapshot/ folders of folds 0 and 1 hold a checkpoint of each cell's config under its weight
    name (fold 2 has none); the module's tests run in it, their scripts with one thread each (the
    same arithmetic in the runners, and four submitit jobs at once share the cores)."""
    folder = tmp_path_factory.mktemp("grid")
    opts = tiny_opts(toy_data_root, str(folder / "fss"))
    for shot in (1, 5):
        saved = None
        for fold in (0, 1):
            cfg = load_config(Cell("toy", 50, shot, fold).config, opts)
            path = folder / cfg.save_path / "snapshot" / cfg.weight
            path.parent.mkdir(parents=True)
            if saved is None:
                torch.manual_seed(shot)
                torch.save(build_model(cfg).state_dict(), path)
                saved = path
            else:  # the same architecture: one file, linked (a ResNet-50 checkpoint is 134 MB)
                os.link(saved, path)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("OMP_NUM_THREADS", "1")
        yield folder


def grid(capsys, *arguments):
    """``python -m tools.run_grid ARGUMENTS`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        status = run_entry_point(run_grid.main, [str(argument) for argument in arguments])
    except SystemExit as exit:  # argparse's usage errors
        status = exit.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def toy_grid(capsys, toy_data_root, workdir, out, *arguments):
    return grid(capsys, "--dataset", "toy", "--episodes", EPISODES, "--out", out, *arguments,
                "--opts", *tiny_opts(toy_data_root, str(workdir / "fss")))


def table_of(output: str) -> str:
    """The table a grid printed at its end (from its first title on)."""
    return output[output.index(SECTION):]


def log_times(out):
    logs = out / "logs"
    return {name: os.stat(logs / name).st_mtime_ns for name in sorted(os.listdir(logs))}


@pytest.fixture(scope="module")
def local_grid(toy_data_root, workdir):
    """The 2x2 grid run with the local runner: (exit status, stdout, out folder)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # capsys is per test
        status = run_entry_point(run_grid.main, ["--dataset", "toy", "--folds", "0", "1", "--episodes", str(EPISODES),
                                                 "--out", "local", "--opts",
                                                 *tiny_opts(toy_data_root, str(workdir / "fss"))])
    return status, printed.getvalue(), workdir / "local"


CELLS = [f"toy_resnet50_{shot}shot_split{fold}" for shot in (1, 5) for fold in (0, 1)]


def test_the_local_grid_runs_every_cell_and_prints_their_table(local_grid):
    status, output, out = local_grid
    assert status == 0, output
    lines = output.splitlines()
    assert lines[0] == "grid: 4 cells of toy (test), 4 to run with --executor local; results and logs in local"
    for name in CELLS:
        fold, shot = name[-1], name.split("_")[2][0]
        snapshot = f"exp/toy/SCCAN/split{fold}/resnet50{'_5s' if shot == '5' else ''}/snapshot/final_{shot}shot.pth"
        assert f"test {name} ({snapshot})" in lines
        assert f"run  {name} (log {out}/logs/{name}.log)" in lines
        assert any(line.startswith(f"ok   {name} (") for line in lines)
    # The table holds exactly the four results, each where its cell is, in the toy section.
    report = build_report(collect_results(str(out)), load_published_figures())
    assert [section.title for section in report.sections] == [SECTION] and DEVIATIONS in report.notes
    for group, shot in zip(report.sections[0].groups, (1, 5)):
        ours = group[0]
        assert (ours.backbone, ours.shot, ours.kind) == ("ResNet-50", str(shot), "ours [1]")
        results = [json.loads((out / "toy" / "resnet50" / f"{shot}shot" / f"split{fold}.json").read_text())
                   for fold in (0, 1)]
        assert [result["runs"][0]["episodes"] for result in results] == [EPISODES, EPISODES]
        assert [figure and round(figure.value, 6) for figure in ours.figures] == [
            round(100 * result["runs"][0]["mIoU"], 6) for result in results] + [None] * 4
    # ... and is what python -m tools.results_table prints for the folder.
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert run_entry_point(results_table.main, ["local"]) == 0
    assert output.endswith("\n\n" + printed.getvalue())


def test_submitit_local_gives_the_same_table_as_the_local_runner(local_grid, toy_data_root, workdir, capsys):
    pytest.importorskip("submitit")  # optional: only --executor slurm and submitit-local need it
    status, output, out = toy_grid(capsys, toy_data_root, workdir, "submitit", "--folds", 0, 1,
                                   "--executor", "submitit-local", "--time", 5)
    assert status == 0, output
    assert (f"submitted 4 jobs (0 GPUs each) to submitit's local executor (submitit logs in "
            f"{workdir / 'submitit' / 'submitit'}): " + ", ".join(CELLS)) in output.splitlines()
    for name in CELLS:
        assert (workdir / "submitit" / "logs" / f"{name}.log").read_text().count("test_sccan.py") == 1
    assert table_of(output) == table_of(local_grid[1]).replace("under local", "under submitit")


def test_an_interrupted_grid_goes_on_and_a_failing_cell_is_reported(local_grid, toy_data_root, workdir, capsys):
    out = workdir / "resumed"
    shutil.copytree(local_grid[2], out)
    # Fold 0's 1-shot result removed (its chart is still there); fold 1's 1-shot test cannot
    # write its result (a folder in its place); fold 2 has no checkpoint.
    (out / "toy" / "resnet50" / "1shot" / "split0.json").unlink()
    blocked = out / "toy" / "resnet50" / "1shot" / "split1.json"
    blocked.unlink()
    blocked.mkdir()
    before = log_times(out)
    status, output, _ = toy_grid(capsys, toy_data_root, workdir, "resumed", "--folds", 0, 1, 2)
    assert status == 1
    lines = output.splitlines()
    assert lines[:7] == [
        "grid: 6 cells of toy (test), 2 to run with --executor local; results and logs in resumed",
        "test toy_resnet50_1shot_split0 (exp/toy/SCCAN/split0/resnet50/snapshot/final_1shot.pth)",
        "test toy_resnet50_1shot_split1 (exp/toy/SCCAN/split1/resnet50/snapshot/final_1shot.pth)",
        "skip toy_resnet50_1shot_split2: no checkpoint at exp/toy/SCCAN/split2/resnet50/snapshot/final_1shot.pth",
        "done toy_resnet50_5shot_split0: resumed/toy/resnet50/5shot/split0.json exists (--rerun runs it again)",
        "done toy_resnet50_5shot_split1: resumed/toy/resnet50/5shot/split1.json exists (--rerun runs it again)",
        "skip toy_resnet50_5shot_split2: no checkpoint at exp/toy/SCCAN/split2/resnet50_5s/snapshot/final_5shot.pth"]
    log = "resumed/logs/toy_resnet50_1shot_split1.log"
    assert lines[-2:] == [
        "grid: 1 of 2 cells failed:",
        f"  toy_resnet50_1shot_split1: test exit status 2: error: --output {blocked.relative_to(workdir)}: is a "
        f"folder, not a file; give a file path; log {log}"]
    after = log_times(out)
    assert {name for name in after if after[name] != before[name]} == {
        "toy_resnet50_1shot_split0.log", "toy_resnet50_1shot_split1.log"}
    assert table_of(output).count("—") > table_of(local_grid[1]).count("—")  # fold 1's 1-shot missing
    # Fixed, the grid runs the failed cell alone and has the local grid's table.
    blocked.rmdir()
    before = log_times(out)
    status, output, _ = toy_grid(capsys, toy_data_root, workdir, "resumed", "--folds", 0, 1)
    assert status == 0 and "1 to run" in output.splitlines()[0]
    after = log_times(out)
    assert [name for name in after if after[name] != before[name]] == ["toy_resnet50_1shot_split1.log"]
    assert table_of(output) == table_of(local_grid[1]).replace("under local", "under resumed")


def test_a_cell_trains_then_tests_the_checkpoint_its_training_wrote(tmp_path):
    # The scripts replaced by two small ones: the training writes a best and a final checkpoint,
    # the test writes its arguments as its result.
    snapshot, result = tmp_path / "snapshot", tmp_path / "result.json"
    train = (sys.executable, "-c", "import os, sys; os.makedirs(sys.argv[1]); print('trained'); [open(os.path.join("
             "sys.argv[1], name), 'w').close() for name in ('train_epoch_0_0.2500.pth', 'final_1shot.pth')]",
             str(snapshot))
    test = (sys.executable, "-c", "import json, sys; json.dump(sys.argv[1:], open(sys.argv[1], 'w'))", str(result))
    job = CellJob("cell", str(tmp_path), str(tmp_path / "logs" / "cell.log"), result=str(result),
                  chart=str(tmp_path / "result.png"), train=train, test=test, test_opts=("workers", "0"),
                  snapshot=str(snapshot), final=str(snapshot / "final_1shot.pth"), best_prefix="train_epoch_")
    (tmp_path / "result.png").write_bytes(b"the chart of a result removed since")
    outcome = grid_jobs.run_cell(job)
    assert outcome.ok and outcome.line().startswith("ok   cell (")
    assert json.loads(result.read_text()) == [str(result), "--weight", str(snapshot / "train_epoch_0_0.2500.pth"),
                                              "--opts", "workers", "0"]
    log = (tmp_path / "logs" / "cell.log").read_text()
    assert log.count(f" in {tmp_path}: {sys.executable} -c ") == 2 and "\ntrained\n" in log
    assert f"# removed {tmp_path / 'result.png'}: the chart of a result no longer there" in log
    assert not (tmp_path / "result.png").exists()
    # A failing training: its error line, and no test.
    result.unlink()
    failing = replace(job, train=(sys.executable, "-c", "import sys; print('error: no data here'); sys.exit(2)"))
    outcome = grid_jobs.run_cell(failing)
    assert (outcome.ok, outcome.problem) == (False, "training exit status 2: error: no data here")
    assert outcome.line() == f"FAILED cell: training exit status 2: error: no data here (log {job.log})"
    assert not result.exists()
    # A crash: the last line of its own output (not the earlier error in the log).
    crashing = replace(job, train=(sys.executable, "-c", "raise RuntimeError('boom')"))
    assert grid_jobs.run_cell(crashing).problem == "training exit status 1: RuntimeError: boom"
    # A training that wrote no checkpoint.
    silent = replace(job, train=(sys.executable, "-c", "pass"), snapshot=str(tmp_path / "none"),
                     final=str(tmp_path / "none" / "final_1shot.pth"))
    assert grid_jobs.run_cell(silent).problem == (
        f"no checkpoint of the training in {tmp_path / 'none'} (neither a best train_epoch_<epoch>_<mIoU>.pth "
        f"nor final_1shot.pth)")


def test_a_grid_that_trains_tests_what_its_training_wrote_and_reruns_only_the_missing_test(
        toy_data_root, tmp_path, monkeypatch, capsys):
    # The real scripts, one tiny cell: fold 0, 1-shot, one epoch of a 33 px model on a reduced list.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    reduced_train_list(toy_data_root, str(tmp_path / "train.txt"))
    opts = tiny_opts(toy_data_root, str(tmp_path / "fss"))
    opts[opts.index("train_list") + 1] = str(tmp_path / "train.txt")
    opts += ["epochs", "1", "batch_size", "4", "evaluate", "False"]
    arguments = ["--dataset", "toy", "--what", "both", "--folds", 0, "--shots", 1, "--episodes", 4,
                 "--out", "grid", "--opts", *opts]
    status, output, error = grid(capsys, *arguments)
    assert status == 0, output + error
    lines = output.splitlines()
    assert lines[1] == "train + test toy_resnet50_1shot_split0" and "ok   toy_resnet50_1shot_split0" in output
    final = tmp_path / "exp" / "toy" / "SCCAN" / "split0" / "resnet50" / "snapshot" / "final_1shot.pth"
    result = json.loads((tmp_path / "grid" / "toy" / "resnet50" / "1shot" / "split0.json").read_text())
    assert final.is_file() and result["runs"][0]["episodes"] == 4
    # Without validation the test is of the final checkpoint (no best one was written).
    log = (tmp_path / "grid" / "logs" / "toy_resnet50_1shot_split0.log").read_text()
    assert log.count("train_sccan.py --config") == 1 and log.count("test_sccan.py --config") == 1
    assert f"--weight {final}" in log
    # Finished: nothing runs again.
    status, output, _ = grid(capsys, *arguments)
    assert status == 0 and output.splitlines()[:2] == [
        "grid: 1 cell of toy (both), 0 to run with --executor local; results and logs in grid",
        "done toy_resnet50_1shot_split0: grid/toy/resnet50/1shot/split0.json exists (--rerun runs it again)"]
    # The result lost: the test alone runs again, on the same final checkpoint (not trained again).
    (tmp_path / "grid" / "toy" / "resnet50" / "1shot" / "split0.json").unlink()
    before = final.stat().st_mtime_ns
    status, output, _ = grid(capsys, *arguments)
    assert status == 0 and output.splitlines()[1] == "test toy_resnet50_1shot_split0"
    assert final.stat().st_mtime_ns == before
    log = (tmp_path / "grid" / "logs" / "toy_resnet50_1shot_split0.log").read_text()
    assert log.count("train_sccan.py --config") == 1 and log.count("test_sccan.py --config") == 2


# ----------------------------------------------------------------------------- the jobs
def test_the_best_checkpoint_of_a_training_is_its_highest_mIoU_else_its_final_one(tmp_path):
    for name in ("train_epoch_3_0.4000.pth", "train_epoch_5.5_0.4500.pth", "train5_epoch_9_0.9000.pth",
                 "train_epoch_96_0.6907.pth", "train_epoch_x_y.pth", "final_1shot.pth", "latest_1shot.pth"):
        (tmp_path / name).write_bytes(b"")
    job = CellJob("cell", str(tmp_path), "log", snapshot=str(tmp_path), final=str(tmp_path / "final_1shot.pth"),
                  best_prefix="train_epoch_", released="train_epoch_96_0.6907.pth")
    assert trained_checkpoint(job) == str(tmp_path / "train_epoch_5.5_0.4500.pth")
    five_shot = CellJob("cell", str(tmp_path), "log", snapshot=str(tmp_path), best_prefix="train5_epoch_",
                        final=str(tmp_path / "final_5shot.pth"))
    assert trained_checkpoint(five_shot) == str(tmp_path / "train5_epoch_9_0.9000.pth")
    no_validation = CellJob("cell", str(tmp_path), "log", snapshot=str(tmp_path), best_prefix="train_epoch_",
                            final=str(tmp_path / "final_1shot.pth"), evaluate=False)
    assert trained_checkpoint(no_validation) == str(tmp_path / "final_1shot.pth")
    (tmp_path / "final_1shot.pth").unlink()
    assert trained_checkpoint(no_validation) is None


def test_the_gpu_pool_hands_out_free_gpus_lowest_first():
    pool = GpuPool(4)
    assert pool.take(1) == (0,) and pool.take(2) == (1, 2)
    assert pool.take(2) is None and pool.take(1) == (3,)
    pool.give_back((1, 2))
    assert pool.take(4) is None and pool.take(2) == (1, 2)
    pool.give_back((0,))
    pool.give_back((3,))
    assert pool.free == [0, 3]
    with pytest.raises(ValueError, match="a job needs 5 GPUs, the machine has 4"):
        pool.take(5)
    assert cuda_visible_devices((2, 3)) == {"CUDA_VISIBLE_DEVICES": "2,3"}


def test_every_gpu_job_sees_only_gpus_no_other_job_holds():
    jobs = [CellJob(f"job{index}", "/", "/log", gpus=gpus) for index, gpus in enumerate((1, 1, 4, 2, 1, 2))]
    held, lock, seen = set(), threading.Lock(), {}

    def run(job, environment):
        gpus = {int(gpu) for gpu in environment["CUDA_VISIBLE_DEVICES"].split(",")}
        with lock:
            assert not gpus & held and len(gpus) == job.gpus and gpus <= {0, 1, 2, 3}
            held.update(gpus)
            seen[job.name] = environment["CUDA_VISIBLE_DEVICES"]
        time.sleep(0.02)
        with lock:
            held.difference_update(gpus)
        if job.name == "job4":
            raise RuntimeError("lost")
        return CellOutcome(job.name, True, job.log, 0.02)

    lines = []
    outcomes = grid_jobs.run_on_gpus(jobs, 4, lines.append, run=run)
    assert [outcome.name for outcome in outcomes] == [job.name for job in jobs]
    assert [outcome.ok for outcome in outcomes] == [True, True, True, True, False, True]
    assert outcomes[4].problem == "RuntimeError: lost"
    assert seen["job0"] == "0" and seen["job2"] == "0,1,2,3"  # the 4-GPU job waits for all four
    assert f"run  job2 on GPU 0,1,2,3 (log /log)" in lines


class FakeJob:
    def __init__(self, array, index, job):
        self.job_id, self.cell = f"{array}_{index}", job
        self.paths = type("Paths", (), {"stderr": f"/slurm/{array}_{index}_0_log.err"})()

    def done(self):
        return True

    def result(self):
        if self.cell.name.endswith("split1"):
            raise RuntimeError(f"Job {self.job_id} (task: 0) with path ... has not produced any output "
                               f"(state: TIMEOUT)")
        return CellOutcome(self.cell.name, True, self.cell.log, 1.0)


class FakeAutoExecutor:
    """submitit.AutoExecutor as the grid uses it, recording instead of submitting; its arrays
    are numbered 4242, 4243, ..."""
    made = []

    def __init__(self, folder, cluster=None):
        self.folder, self.cluster, self.parameters, self.arrays = folder, cluster, {}, []
        FakeAutoExecutor.made.append(self)

    def update_parameters(self, **parameters):
        self.parameters.update(parameters)

    def map_array(self, function, jobs):
        self.arrays.append((function, list(jobs), os.environ.get("PYTHONPATH", "")))
        array = 4241 + len(FakeAutoExecutor.made)
        return [FakeJob(array, index, job) for index, job in enumerate(jobs)]


@pytest.fixture
def fake_slurm(monkeypatch, tmp_path):
    submitit = pytest.importorskip("submitit")
    monkeypatch.setattr(submitit, "AutoExecutor", FakeAutoExecutor)
    FakeAutoExecutor.made = []
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_slurm_jobs_one_array_per_gpu_count_with_the_options_as_sbatch_parameters(fake_slurm, capsys):
    # Fold 2 trained already: its job only tests (one GPU); folds 0 and 1 train on 2 GPUs, then test.
    snapshot = fake_slurm / "exp" / "pascal" / "SCCAN" / "split2" / "resnet50" / "snapshot"
    snapshot.mkdir(parents=True)
    (snapshot / "final_1shot.pth").write_bytes(b"")
    pythonpath = os.environ.get("PYTHONPATH")
    status, output, _ = grid(capsys, "--dataset", "pascal", "--what", "both", "--folds", 0, 1, 2, "--shots", 1,
                             "--layers", 50, "--executor", "slurm", "--partition", "gpu", "--account", "fss",
                             "--time", 600, "--gpus-per-job", 2, "--cpus-per-job", 10, "--out", "grid",
                             "--opts", "workers", 4)
    assert status == 1  # fold 1's job timed out
    training, testing = FakeAutoExecutor.made
    for executor, gpus in ((training, 2), (testing, 1)):
        assert (executor.folder, executor.cluster) == (str(fake_slurm / "grid" / "submitit"), "slurm")
        assert executor.parameters == dict(name="sccan_grid", timeout_min=600, nodes=1, tasks_per_node=1,
                                           gpus_per_node=gpus, cpus_per_task=10, slurm_partition="gpu",
                                           slurm_account="fss")
    [(function, jobs, submitted_with)] = training.arrays
    assert function is grid_jobs.run_cell and submitted_with.split(os.pathsep)[0] == REPOSITORY_ROOT
    assert [job.name for job in jobs] == ["pascal_resnet50_1shot_split0", "pascal_resnet50_1shot_split1"]
    config = os.path.join(REPOSITORY_ROOT, "config", "pascal", "pascal_split0_resnet50.yaml")
    assert jobs[0].train == (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             os.path.join(REPOSITORY_ROOT, "train_sccan.py"), "--config", config,
                             "--opts", "workers", "4")
    assert jobs[0].test_command("best.pth") == [
        sys.executable, os.path.join(REPOSITORY_ROOT, "test_sccan.py"), "--config", config, "--output",
        os.path.join("grid", "pascal", "resnet50", "1shot", "split0.json"), "--weight", "best.pth", "--opts",
        "workers", "4"]
    assert (jobs[0].cwd, jobs[0].log, jobs[0].weight, jobs[0].gpus) == (
        str(fake_slurm), str(fake_slurm / "grid" / "logs" / "pascal_resnet50_1shot_split0.log"), "", 2)
    assert jobs[0].snapshot == str(fake_slurm / "exp" / "pascal" / "SCCAN" / "split0" / "resnet50" / "snapshot")
    [(_, [tested], _)] = testing.arrays
    assert (tested.name, tested.train, tested.weight, tested.gpus) == ("pascal_resnet50_1shot_split2", (), "", 1)
    lines = output.splitlines()
    assert lines[1:4] == ["train + test pascal_resnet50_1shot_split0", "train + test pascal_resnet50_1shot_split1",
                          "test pascal_resnet50_1shot_split2"]
    assert (f"submitted 2 jobs (2 GPUs each) to Slurm as job array 4242 (submitit logs in {training.folder}): "
            "pascal_resnet50_1shot_split0, pascal_resnet50_1shot_split1") in lines
    assert (f"submitted 1 job (1 GPU each) to Slurm as job 4243_0 (submitit logs in {testing.folder}): "
            "pascal_resnet50_1shot_split2") in lines
    assert "ok   pascal_resnet50_1shot_split0 (1 s)" in lines and "ok   pascal_resnet50_1shot_split2 (1 s)" in lines
    assert lines[-2:] == [
        "grid: 1 of 3 cells failed:",
        "  pascal_resnet50_1shot_split1: submitit job 4242_1 failed (Job 4242_1 (task: 0) with path ... has not "
        "produced any output (state: TIMEOUT); its log: /slurm/4242_1_0_log.err); log "
        "grid/logs/pascal_resnet50_1shot_split1.log"]
    assert "no table: grid: no few-shot result file of test_sccan.py under it (0 JSON files looked at)" in lines
    assert os.environ.get("PYTHONPATH") == pythonpath  # set for the submission only


def test_coco_trainings_take_four_gpus_under_torch_distributed(fake_slurm, capsys):
    status, output, _ = grid(capsys, "--dataset", "coco", "--what", "train", "--folds", 3, "--shots", 5,
                             "--layers", 101, "--executor", "slurm", "--out", "grid")
    assert status == 0, output
    [executor] = FakeAutoExecutor.made
    assert executor.parameters["gpus_per_node"] == 4 and executor.parameters["slurm_partition"] is None
    [(_, [job], _)] = executor.arrays
    assert job.train[:7] == (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4",
                             os.path.join(REPOSITORY_ROOT, "train_sccan.py"))
    assert job.result == "" and job.test == () and job.gpus == 4
    # An interrupted training continues from its latest checkpoint.
    snapshot = fake_slurm / "exp" / "coco" / "SCCAN" / "split3" / "resnet101" / "snapshot"
    snapshot.mkdir(parents=True)
    (snapshot / "latest_5shot.pth").write_bytes(b"")
    FakeAutoExecutor.made = []
    status, output, _ = grid(capsys, "--dataset", "coco", "--what", "train", "--folds", 3, "--shots", 5,
                             "--layers", 101, "--executor", "slurm", "--gpus-per-job", 2, "--out", "grid")
    [(_, [job], _)] = FakeAutoExecutor.made[0].arrays
    latest = os.path.join("exp", "coco", "SCCAN", "split3", "resnet101", "snapshot", "latest_5shot.pth")
    assert job.train[5] == "2" and job.train[-3:] == ("--opts", "resume", latest)
    assert f"train coco_resnet101_5shot_split3 (the training continues from {latest})" in output.splitlines()
    (snapshot / "final_5shot.pth").write_bytes(b"")
    status, output, _ = grid(capsys, "--dataset", "coco", "--what", "train", "--folds", 3, "--shots", 5,
                             "--layers", 101, "--executor", "slurm", "--out", "grid")
    assert status == 0 and "done coco_resnet101_5shot_split3: exp/coco/SCCAN/split3/resnet101/snapshot/" \
                           "final_5shot.pth exists (--rerun runs it again)" in output


# ----------------------------------------------------------------------------- user mistakes
@pytest.mark.parametrize("arguments, message", [
    (["--dataset", "voc"], "argument --dataset: invalid choice: 'voc' (choose from 'pascal', 'coco', 'toy')"),
    (["--dataset", "pascal", "--folds", "4"], "argument --folds: invalid choice: 4 (choose from 0, 1, 2, 3)"),
    (["--dataset", "pascal", "--executor", "local", "--partition", "gpu"],
     "--partition is an option of --executor slurm"),
    (["--dataset", "pascal", "--gpus", "2"], "--gpus is an option of --executor gpus and submitit-local"),
    (["--dataset", "pascal", "--opts", "split", "1"],
     "error: --opts split: the grid sets data_set, split, shot, layers, save_path, weight, resume per cell"),
    (["--dataset", "pascal", "--opts", "workerz", "1"],
     "error: --opts: unknown configuration key 'workerz'; did you mean 'workers'?"),
    (["--dataset", "coco", "--what", "train", "--executor", "gpus", "--gpus", "2"],
     "error: --gpus-per-job 4: more GPUs than the 2 of this machine"),
])
def test_user_mistakes_are_one_line_errors_with_status_2(arguments, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, output, error = grid(capsys, "--out", tmp_path / "grid", *arguments)
    assert status == 2 and message in error, error
    assert [line for line in error.splitlines() if "error:" in line] == [error.strip().splitlines()[-1]]


def test_without_submitit_or_slurm_the_error_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    arguments = ["--dataset", "pascal", "--what", "train", "--folds", 0, "--shots", 1, "--layers", 50,
                 "--out", "grid"]
    monkeypatch.setitem(sys.modules, "submitit", None)
    status, output, error = grid(capsys, *arguments, "--executor", "submitit-local")
    assert (status, output) == (2, "")
    assert error == ("error: --executor submitit-local needs submitit, which is not installed: pip install "
                     "submitit (requirements-test.txt names the verified versions)\n")
    monkeypatch.delitem(sys.modules, "submitit")
    pytest.importorskip("submitit")
    if shutil.which("srun"):
        pytest.skip("a Slurm cluster is reachable here")
    status, output, error = grid(capsys, *arguments, "--executor", "slurm")
    assert status == 2 and error.startswith("error: --executor slurm: no Slurm here (")
