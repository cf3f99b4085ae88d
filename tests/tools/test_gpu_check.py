"""tools/gpu_check.py without a GPU: the one-line answer after the CUDA tests collect, a
collection error's exit status, and the machinery of the GPU path (steps with time limits, the
report, the exit status) on small stand-in commands."""
import os
import subprocess
import sys
import time

from benchmarks.benchmarking import VARIANTS
from tests.support import REPOSITORY_ROOT
from tools import gpu_check
from tools.gpu_check import Step, benchmark_figures, format_report, junit_figures, run_steps
from util.cli import run_entry_point

PYTHON = sys.executable
BENCH_OUTPUT = """[2026-12-04 10:00:00 INFO] building the trainer
command: `python -m benchmarks.bench_model --devices cuda`
machine: x86_64, 16 CPU cores, torch 2.11.0, NVIDIA H200 (TF32 off)
input 473x473, batch 8, median of 5 after 1 warm-up, variants alternated

| device | backbone | shot | batch | variant | s/forward | episodes/s | peak memory |
|---|---|---|---|---|---|---|---|
| cuda | ResNet-50 | 1 | 8 | reference | 1.000 | 8.00 | 2.00 GiB |
| cuda | ResNet-50 | 1 | 8 | fast | 0.500 | 16.00 | 1.75 GiB |
| cuda | ResNet-50 | 1 | 8 | fast-bf16 | 0.250 | 32.00 | 1.50 GiB |
"""
MACHINE = {"device": "Stand-in GPU", "driver": "0.0", "torch": "2.x"}


def test_without_cuda_it_says_so_in_one_line_after_the_cuda_tests_collect(tmp_path):
    environment = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    environment.pop("SCCAN_FORCE_CPU", None)
    report = tmp_path / "report.md"
    completed = subprocess.run([PYTHON, "-m", "tools.gpu_check", "--out", str(report)], cwd=REPOSITORY_ROOT,
                               env=environment, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("no CUDA device found: "), completed.stdout
    count = int(lines[0].split("the ")[1].split(" CUDA-marked tests collect")[0])
    assert count >= 20  # tests/model, tests/scripts and tests/util hold CUDA-marked tests
    assert not report.exists() and not (tmp_path / "report_logs").exists()  # nothing measured, nothing written


def test_a_cuda_test_that_does_not_collect_fails_the_check(monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "cuda_usable", lambda: False)
    monkeypatch.setattr(gpu_check, "COLLECT_COMMAND", [
        PYTHON, "-c", "print('ERROR tests/scripts/test_broken.py'); print('3/9 tests collected, 1 error'); "
                      "raise SystemExit(2)"])
    assert gpu_check.main([]) == 1
    error = capsys.readouterr().err
    assert "test_broken.py" in error and "do not collect" in error
    monkeypatch.setattr(gpu_check, "COLLECT_COMMAND", [PYTHON, "-c", "print('3/9 tests collected in 0.1s')"])
    assert gpu_check.main([]) == 0
    assert "the 3 CUDA-marked tests collect" in capsys.readouterr().out


def test_steps_pass_fail_time_out_and_skip_into_one_report(tmp_path):
    (tmp_path / "bench.txt").write_text(BENCH_OUTPUT)
    table = [PYTHON, "-c", f"print(open({str(tmp_path / 'bench.txt')!r}).read())"]
    steps = [Step("passes", "prints a benchmark table", table, 60, benchmark_figures("s/forward", 3.0)),
             Step("fails", "exits with 3", [PYTHON, "-c", "print('boom'); raise SystemExit(3)"], 60),
             Step("hangs", "sleeps past its limit", [PYTHON, "-c", "import time; time.sleep(60)"], 1),
             Step("not here", "needs two GPUs", [PYTHON, "-c", "pass"], 60, skip_reason="1 CUDA device")]
    start = time.monotonic()
    results = run_steps(steps, str(tmp_path / "logs"))
    assert time.monotonic() - start < 30  # the hanging step was stopped at its limit
    assert [result.status for result in results] == ["pass", "fail", "fail", "skipped"]
    assert results[1].reason == "exit status 3" and "boom" in results[1].output_tail
    assert results[2].reason == "timed out after 1 s"
    assert "met" in results[0].figures.summary and "not met" not in results[0].figures.summary
    assert os.path.isfile(tmp_path / "logs" / "fails.log")
    report = format_report(MACHINE, results, 12.3, quick=False, date="2026-12-04")
    assert report.startswith("### GPU check: Stand-in GPU, 2026-12-04")
    assert "1 passed, 2 failed, 1 skipped" in report
    assert "| passes | pass |" in report and "| fails | fail |" in report
    assert "| not here | skipped | - | 1 CUDA device |" in report
    assert "fast-bf16 4.00x the fp32 reference, peak memory 1.50 GiB against 2.00 GiB" in report
    assert "| cuda | ResNet-50 | 1 | 8 | fast-bf16 | 0.250 | 32.00 | 1.50 GiB |" in report
    assert "building the trainer" not in report  # log lines stay in the log
    assert "command: `python -c 'print('\"'\"'boom'\"'\"'); raise SystemExit(3)'`" in report
    assert "```text\nboom\n```" in report
    assert gpu_check.exit_status(results) == 1
    assert gpu_check.exit_status([results[0], results[3]]) == 0
    # A step that finds the budget spent is not run, and fails the check.
    spent = run_steps(steps[:1], str(tmp_path / "logs"), budget=0)
    assert spent[0].status == "fail" and "budget was spent" in spent[0].reason


def test_junit_counts_failures_and_skips(tmp_path):
    path = tmp_path / "tests.xml"
    path.write_text('<testsuites><testsuite name="pytest">'
                    '<testcase classname="tests.a" name="test_ok" time="1.5"/>'
                    '<testcase classname="tests.a" name="test_bad" time="0.2">'
                    '<failure message="assert 1 == 2"/></testcase>'
                    '<testcase classname="tests.b" name="test_nccl" time="0"><skipped message="needs NCCL"/></testcase>'
                    '</testsuite></testsuites>')
    figures = junit_figures(str(path))("")
    assert figures.summary == "1 passed, 1 failed, 1 skipped" and not figures.ok
    assert "- FAILED tests.a::test_bad: failure: assert 1 == 2" in figures.details
    assert "- skipped tests.b::test_nccl: needs NCCL" in figures.details
    assert not junit_figures(str(tmp_path / "absent.xml"))("").ok


def test_the_gpu_steps_name_real_variants_and_skip_what_the_machine_lacks(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "bench_eval_times_a_gpu", lambda: False)
    steps = {step.name: step for step in gpu_check.gpu_steps(str(tmp_path), str(tmp_path), quick=False,
                                                                device_count=1)}
    assert list(steps) == ["cuda tests", "bench model", "bench train", "nccl 2 processes", "bench eval"]
    assert steps["nccl 2 processes"].skip_reason == "1 CUDA device: the 2-process NCCL run needs 2"
    assert "no --device option" in steps["bench eval"].skip_reason
    assert not steps["bench model"].skip_reason and not steps["cuda tests"].skip_reason
    for name in ("bench model", "bench train"):
        command = steps[name].command
        variants = command[command.index("--variants") + 1:]
        variants = variants[:next((i for i, word in enumerate(variants) if word.startswith("--")), len(variants))]
        assert set(variants) <= set(VARIANTS) and variants[0] == "reference" and "fast-bf16" in variants
    assert os.path.isfile(os.path.join(REPOSITORY_ROOT, gpu_check.TOY_CONFIG))
    quick = {step.name: step for step in gpu_check.gpu_steps(str(tmp_path), str(tmp_path), quick=True,
                                                               device_count=2)}
    assert quick["bench model"].skip_reason == "--quick" and not quick["nccl 2 processes"].skip_reason


def test_an_unwritable_report_folder_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "cuda_usable", lambda: True)
    assert run_entry_point(gpu_check.main, ["--out", "/proc/gpu_check/report.md"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: --out: ") and "\n" not in error
