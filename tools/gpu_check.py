"""One command for the first GPU machine: every CUDA check of the project in at most 8 minutes,
written up as one Markdown report that can be pasted into BENCHMARKS.md.

    python -m tools.gpu_check [--out exp/gpu_check/report.md] [--quick]

On a machine with a CUDA device, one step after the other, each with its own time limit inside
the 8-minute budget (a step that finds the budget spent is recorded as failed, not run):

1. ``python -m pytest -m cuda``: the CUDA-marked tests (the parity fixture on the GPU in fp32,
   bf16 autocast, training, resume, validation with the feature cache, test_sccan.py on the
   ensemble, its meta learner, the baselines, ``--gfss``, the episode recorder and pictures,
   train_base.py, 5-shot, ``fast_path_training``, single-process NCCL DDP); counts from a JUnit
   file;
2. the CUDA rows of BENCHMARKS.md: benchmarks/bench_model.py (eval forward, ResNet-50 1-shot, batch 8,
   473x473: the fp32 reference against the fast path and fast + bf16, peak memory) and
   benchmarks/bench_train.py (a training iteration at 473x473, the same variants); benchmarks/bench_eval.py
   (the cached evaluation) once it can time a GPU (a ``--device`` option), else skipped with the
   reason;
3. with two or more GPUs, a 2-process NCCL run of train_sccan.py under torchrun (a toy epoch with
   validation); with one, skipped with the reason.

The report holds the device, driver, CUDA, cuDNN, NCCL, torch and Python versions, each step's
result, seconds, figures (with the benchmark targets met or not) and exact command, and the tail
of the output of a failed step; each step's whole output goes to ``<report>_logs/<step>.log``.
The exit status is 1 when any step failed, else 0. ``--quick`` runs the tests and the NCCL run
only (the benchmarks are recorded as skipped), to recheck a fix in about half the time.

Without a CUDA device (or with ``SCCAN_FORCE_CPU=1``) it says so in one line, checks that every
CUDA-marked test collects (``pytest -m cuda --collect-only``; exit status 1 when one does not)
and exits 0. The steps import nothing that the GPU machines lack (tensorboardX and pycocotools
are imported only where used).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

if not __package__:  # run as a file: the project's packages are not importable that way
    import _as_module  # noqa: F401  (tools/_as_module.py: says how to run it, exits)

import torch

from util.cli import UserError, add_debug_argument, run_entry_point
from util.runtime import cuda_usable

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_REPORT = os.path.join("exp", "gpu_check", "report.md")
# The whole check fits one command of the GPU machines we borrow (10 minutes each, 15 in all).
BUDGET_SECONDS = 480.0
TOY_ROOT = os.path.join("data", "toy")
TOY_CONFIG = os.path.join("config", "toy", "toy_split0_resnet50.yaml")
PYTHON = sys.executable
# One process (the CUDA tests share the GPU, and their timings are figures of the report), with
# or without pytest-xdist installed: the ini's "-n auto" is replaced.
PYTEST = [PYTHON, "-m", "pytest", "-o", "addopts=-ra", "-p", "no:xdist", "-p", "no:cacheprovider"]
COLLECT_COMMAND = [*PYTEST, "-m", "cuda", "--collect-only", "-q"]
OUTPUT_TAIL_LINES = 40


# --------------------------------------------------------------------------------------- steps
@dataclass
class Figures:
    """What a finished step reports: one line for the summary table, Markdown lines for its own
    section, and whether the step passed on its own terms (beyond its exit status)."""
    summary: str
    details: List[str] = field(default_factory=list)
    ok: bool = True


def no_figures(output: str) -> Figures:
    return Figures("")


@dataclass
class Step:
    """One check: a command run from the repository root with a time limit (seconds).
    ``figures`` reads the finished command's output; ``skip_reason`` records the step as
    skipped without running it."""
    name: str
    what: str
    command: List[str]
    timeout: float
    figures: Callable[[str], Figures] = no_figures
    skip_reason: str = ""


@dataclass
class StepResult:
    step: Step
    status: str             # 'pass', 'fail' or 'skipped'
    seconds: float
    figures: Figures
    reason: str = ""        # why it failed or was skipped
    output_tail: str = ""   # the last lines of a failed step's output


def command_text(command: Sequence[str]) -> str:
    """The command as a user would type it (the interpreter's path shortened to ``python``)."""
    words = ["python" if word == PYTHON else word for word in command]
    return " ".join(shlex.quote(word) for word in words)


def _stop(process: subprocess.Popen) -> None:
    """End a step that ran out of time: its whole process group (loader workers, torchrun's
    ranks), politely first."""
    for sign, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sign)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(step: Step, deadline: float, log_dir: str) -> StepResult:
    """Run ``step`` within its limit and the overall ``deadline`` (time.monotonic()); its whole
    output goes to ``<log_dir>/<name>.log``."""
    if step.skip_reason:
        return StepResult(step, "skipped", 0.0, Figures(""), step.skip_reason)
    remaining = deadline - time.monotonic()
    if remaining < 5:
        return StepResult(step, "fail", 0.0, Figures(""),
                          f"not run: the {BUDGET_SECONDS / 60:g}-minute budget was spent")
    timeout = min(step.timeout, remaining)
    print(f"gpu_check: {step.name} (at most {timeout:.0f} s): {command_text(step.command)}", flush=True)
    log_path = os.path.join(log_dir, f"{step.name.replace(' ', '_')}.log")
    environment = dict(os.environ)
    # The steps are the CUDA checks: a CPU-only switch inherited from a test run must not apply.
    environment.pop("SCCAN_FORCE_CPU", None)
    start = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(step.command, cwd=REPOSITORY_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=environment, start_new_session=True)
        try:
            returncode: Optional[int] = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(process)
            returncode = None
    seconds = time.monotonic() - start
    with open(log_path, errors="replace") as log:
        output = log.read()
    tail = "\n".join(output.splitlines()[-OUTPUT_TAIL_LINES:])
    try:
        figures = step.figures(output)
    except Exception as error:  # a figure that cannot be read is a failed check, not a crash
        figures = Figures("", ok=False, details=[f"figures not readable: {type(error).__name__}: {error}"])
    if returncode is None:
        return StepResult(step, "fail", seconds, figures, f"timed out after {timeout:.0f} s", tail)
    if returncode != 0:
        return StepResult(step, "fail", seconds, figures, f"exit status {returncode}", tail)
    if not figures.ok:
        return StepResult(step, "fail", seconds, figures, "its output does not show what it checks", tail)
    return StepResult(step, "pass", seconds, figures)


def run_steps(steps: Sequence[Step], log_dir: str, budget: float = BUDGET_SECONDS) -> List[StepResult]:
    """Every step in order, within ``budget`` seconds in all."""
    os.makedirs(log_dir, exist_ok=True)
    deadline = time.monotonic() + budget
    results = []
    for step in steps:
        result = run_step(step, deadline, log_dir)
        line = f"gpu_check: {step.name}: {result.status}"
        if result.status != "skipped":
            line += f" ({result.seconds:.1f} s)"
        print(line + (f": {result.reason}" if result.reason else "") +
              (f"; {result.figures.summary}" if result.figures.summary else ""), flush=True)
        results.append(result)
    return results


# ------------------------------------------------------------------------------------- figures
def markdown_tables(output: str) -> List[List[Dict[str, str]]]:
    """The Markdown tables printed in ``output``: each a list of rows, column name -> cell."""
    tables, lines = [], []
    for line in output.splitlines() + [""]:
        if line.startswith("|"):
            lines.append(line)
            continue
        if len(lines) >= 2:
            header = [cell.strip() for cell in lines[0].strip("|").split("|")]
            rows = [dict(zip(header, (cell.strip() for cell in row.strip("|").split("|")))) for row in lines[2:]]
            tables.append(rows)
        lines = []
    return tables


def tool_report_lines(output: str) -> List[str]:
    """What a benchmark tool prints after its ``command:`` line (its machine line, settings and
    tables), without that line (the report has the command) and without log lines."""
    lines = output.splitlines()
    starts = [index for index, line in enumerate(lines) if line.startswith("command:")]
    kept = lines[starts[-1] + 1:] if starts else [line for line in lines if line.startswith("|")]
    blocks: List[str] = []
    for line in kept:
        if not line.strip() or re.match(r"\[\d{4}-\d\d-\d\d ", line):
            continue
        # Each sentence its own paragraph, and a blank line before a table, as Markdown needs.
        if blocks and not (line.startswith("|") and blocks[-1].startswith("|")):
            blocks.append("")
        blocks.append(line)
    return blocks


def memory_gib(text: str) -> float:
    """'3.21 GiB' -> 3.21; '-' (not measured) -> 0."""
    match = re.match(r"([\d.]+) GiB", text.strip())
    return float(match.group(1)) if match else 0.0


def bf16_target(rows: List[Dict[str, str]], seconds_column: str, factor: float) -> Tuple[str, bool]:
    """'fast-bf16 at least ``factor`` times as fast as the fp32 reference, at no more peak
    memory' (the targets of BENCHMARKS.md's CUDA rows): a sentence and whether it is met."""
    by_variant = {row["variant"]: row for row in rows}
    reference, bf16 = by_variant["reference"], by_variant["fast-bf16"]
    speed_up = float(reference[seconds_column]) / float(bf16[seconds_column])
    reference_memory, bf16_memory = memory_gib(reference["peak memory"]), memory_gib(bf16["peak memory"])
    met = speed_up >= factor and bf16_memory <= reference_memory
    return (f"fast-bf16 {speed_up:.2f}x the fp32 reference, peak memory {bf16['peak memory']} against "
            f"{reference['peak memory']}: target ({factor:g}x at no more memory) {'met' if met else 'not met'}",
            met)


def benchmark_figures(seconds_column: str, factor: float) -> Callable[[str], Figures]:
    """Figures of bench_model / bench_train: their table, and the bf16 target."""
    def read(output: str) -> Figures:
        tables = markdown_tables(output)
        if not tables or not tables[-1]:
            return Figures("no table printed", ok=False)
        rows = tables[-1]
        if {"reference", "fast-bf16"} <= {row.get("variant") for row in rows}:
            sentence, _ = bf16_target(rows, seconds_column, factor)
        else:
            sentence = f"{len(rows)} rows"
        return Figures(sentence, tool_report_lines(output))
    return read


def eval_figures(output: str) -> Figures:
    """Figures of bench_eval: its measured and projected tables, the cached speed-up per shot."""
    tables = markdown_tables(output)
    if not tables or not tables[0]:
        return Figures("no table printed", ok=False)
    summary = ", ".join(f"{row['shot']}-shot cached {row['speed-up']} ({row['hit rate']} hits)" for row in tables[0])
    return Figures(summary, tool_report_lines(output))


def junit_figures(path: str) -> Callable[[str], Figures]:
    """Figures of the pytest step from its JUnit file: counts, failures, skips, slowest tests."""
    def read(output: str) -> Figures:
        if not os.path.isfile(path):
            return Figures("no JUnit report written", ok=False)
        root = ElementTree.parse(path).getroot()
        cases = list(root.iter("testcase"))
        failed, skipped = [], []
        for case in cases:
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            for child in case:
                message = (child.get("message") or child.text or "").strip().splitlines()
                first = message[0][:300] if message else ""
                if child.tag in ("failure", "error"):
                    failed.append(f"{name}: {child.tag}: {first}")
                elif child.tag == "skipped":
                    skipped.append(f"{name}: {first}")
        passed = len(cases) - len(failed) - len(skipped)
        summary = f"{passed} passed, {len(failed)} failed, {len(skipped)} skipped"
        details = [f"- {summary} ({len(cases)} tests)"]
        details += [f"- FAILED {line}" for line in failed]
        details += [f"- skipped {line}" for line in skipped]
        slowest = sorted(cases, key=lambda case: -float(case.get("time") or 0))[:5]
        if slowest:
            details.append("- slowest: " + "; ".join(
                f"{case.get('name')} {float(case.get('time') or 0):.1f} s" for case in slowest))
        return Figures(summary, details, ok=bool(cases) and not failed)
    return read


def nccl_figures(save_path: str) -> Callable[[str], Figures]:
    """Figures of the 2-process run: its validation line and the final checkpoint's presence."""
    def read(output: str) -> Figures:
        validations = [line.split("] ", 1)[-1] for line in output.splitlines() if "val epoch" in line]
        final = os.path.join(save_path, "snapshot", "final_1shot.pth")
        written = os.path.isfile(final)
        summary = (validations[-1] if validations else "no validation logged") + \
            ("" if written else "; final_1shot.pth missing")
        return Figures(summary, [f"- {line}" for line in validations], ok=bool(validations) and written)
    return read


# ------------------------------------------------------------------------------- the checks
def bench_eval_times_a_gpu() -> bool:
    """Whether benchmarks/bench_eval.py has a ``--device`` option (it timed the CPU only before)."""
    completed = subprocess.run([PYTHON, "-m", "benchmarks.bench_eval", "--help"], cwd=REPOSITORY_ROOT,
                               capture_output=True, text=True, timeout=60)
    return completed.returncode == 0 and "--device" in completed.stdout


def gpu_steps(log_dir: str, scratch: str, quick: bool, device_count: int) -> List[Step]:
    """The checks of a machine with ``device_count`` CUDA devices; ``scratch``: a folder for
    what they write besides the logs (the NCCL run's checkpoints)."""
    junit = os.path.join(log_dir, "cuda_tests.xml")
    benchmarks_skipped = "--quick" if quick else ""
    steps = [Step("cuda tests", "the CUDA-marked tests (pytest -m cuda)",
                  [*PYTEST, "-m", "cuda", "-q", "-o", "junit_family=xunit2",
                   f"--junitxml={junit}"], 300, junit_figures(junit)),
             Step("bench model", "eval forward, ResNet-50 1-shot, batch 8, 473x473: fp32 reference, fast, "
                  "fast + bf16, peak memory (target: fast-bf16 >= 3x reference at <= its memory)",
                  [PYTHON, "-m", "benchmarks.bench_model", "--devices", "cuda", "--layers", "50", "--shots", "1",
                   "--batch", "8", "--variants", "reference", "fast", "fast-bf16", "--runs", "5"], 90,
                  benchmark_figures("s/forward", 3.0), benchmarks_skipped),
             Step("bench train", "a training iteration, batch 8, 473x473, 64x64 grid, window 8, 8 loader "
                  "workers (target: fast-bf16 >= 2x reference at <= its memory)",
                  [PYTHON, "-m", "benchmarks.bench_train", "--config", TOY_CONFIG, "--variants", "reference",
                   "fast-steps", "fast", "fast-bf16", "--opts", "train_h", "473", "train_w", "473",
                   "feature_size", "64", "window_size", "8", "batch_size", "8", "workers", "8"], 150,
                  benchmark_figures("s/iteration", 2.0), benchmarks_skipped)]
    nccl_save = os.path.join(scratch, "nccl_run")
    steps.append(Step(
        "nccl 2 processes", "train_sccan.py under torchrun with 2 processes (NCCL): one toy epoch with "
        "validation split across the ranks",
        [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train_sccan.py",
         "--config", TOY_CONFIG, "--overwrite", "--opts", "save_path", nccl_save, "epochs", "1", "evaluate", "True",
         "SubEpoch_val", "False", "test_num", "40", "workers", "2"], 150, nccl_figures(nccl_save),
        "" if device_count >= 2 else f"{device_count} CUDA device: the 2-process NCCL run needs 2"))
    eval_command = [PYTHON, "-m", "benchmarks.bench_eval", "--data-root", TOY_ROOT, "--shots", "1", "5",
                    "--episodes", "100", "--device", "cuda"]
    eval_skip = benchmarks_skipped
    if not eval_skip and not bench_eval_times_a_gpu():
        eval_skip = ("benchmarks/bench_eval.py times the CPU only (it has no --device option), and its "
                     "CPU run at 473x473 would not fit the budget")
    steps.append(Step("bench eval", "evaluation with and without the backbone-feature cache, toy data at "
                      "473x473, 100 episodes per shot (measured and projected to 1,000)",
                      eval_command, 120, eval_figures, eval_skip))
    return steps


def machine_description() -> Dict[str, str]:
    """Device and software versions of this machine, for the report."""
    properties = torch.cuda.get_device_properties(0)
    driver = "unknown (no nvidia-smi)"
    try:
        completed = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=30)
        if completed.returncode == 0 and completed.stdout.strip():
            driver = completed.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        nccl = ".".join(str(part) for part in torch.cuda.nccl.version())
    except Exception:  # a build without NCCL
        nccl = "none"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPOSITORY_ROOT,
                                capture_output=True, text=True, timeout=30).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown (no git)"
    return {
        "device": torch.cuda.get_device_name(0),
        "devices": str(torch.cuda.device_count()),
        "memory": f"{properties.total_memory / 2 ** 30:.1f} GiB",
        "compute capability": f"{properties.major}.{properties.minor}",
        "driver": driver,
        "CUDA (torch build)": str(torch.version.cuda),
        "cuDNN": str(torch.backends.cudnn.version()),
        "NCCL": nccl,
        "torch": torch.__version__,
        "Python": platform.python_version(),
        "system": f"{platform.platform()}, {os.cpu_count()} CPU cores",
        "commit": commit,
    }


# ------------------------------------------------------------------------------------- report
def format_report(machine: Dict[str, str], results: Sequence[StepResult], seconds: float, quick: bool,
                  date: Optional[str] = None) -> str:
    """The Markdown report: machine, a table of the steps, then each step's command and figures."""
    date = date or datetime.date.today().isoformat()
    counts = {status: sum(result.status == status for result in results) for status in ("pass", "fail", "skipped")}
    lines = [f"### GPU check: {machine.get('device', 'unknown device')}, {date}", "",
             f"`python -m tools.gpu_check{' --quick' if quick else ''}` ({BUDGET_SECONDS / 60:g}-minute budget) "
             f"took {seconds:.0f} s: {counts['pass']} passed, {counts['fail']} failed, {counts['skipped']} skipped.",
             "", "machine: " + "; ".join(f"{key} {value}" for key, value in machine.items()), "",
             "| check | result | seconds | figures |", "|---|---|---|---|"]
    for result in results:
        figures = result.figures.summary or result.reason
        if result.reason and result.figures.summary:
            figures = f"{result.reason}; {result.figures.summary}"
        seconds_text = f"{result.seconds:.1f}" if result.status != "skipped" else "-"
        lines.append(f"| {result.step.name} | {result.status} | {seconds_text} | {figures.replace('|', '/')} |")
    for result in results:
        lines += ["", f"#### {result.step.name}: {result.status}", "", result.step.what, "",
                  f"command: `{command_text(result.step.command)}`"]
        if result.reason:
            lines += ["", f"{'skipped' if result.status == 'skipped' else 'failed'}: {result.reason}"]
        if result.figures.details:
            lines += [""] + result.figures.details
        if result.output_tail:
            lines += ["", "last lines of its output:", "", "```text", result.output_tail, "```"]
    return "\n".join(lines) + "\n"


def exit_status(results: Sequence[StepResult]) -> int:
    return 1 if any(result.status == "fail" for result in results) else 0


# ------------------------------------------------------------------------------- without CUDA
def collect_cuda_tests(command: Sequence[str] = ()) -> Tuple[bool, int, str]:
    """``pytest -m cuda --collect-only``: (every CUDA test collects and there is one at least,
    the number collected, pytest's output)."""
    completed = subprocess.run(list(command or COLLECT_COMMAND), cwd=REPOSITORY_ROOT, capture_output=True,
                               text=True, timeout=600, stdin=subprocess.DEVNULL)
    output = completed.stdout + completed.stderr
    counted = re.search(r"(\d+)(?:/\d+)? tests? collected", output)
    count = int(counted.group(1)) if counted else 0
    return completed.returncode == 0 and count > 0, count, output


def check_without_cuda() -> int:
    """The whole check of a machine without CUDA: one line, after the CUDA tests collect."""
    why = "SCCAN_FORCE_CPU=1 hides the CUDA device" if torch.cuda.is_available() else "no CUDA device found"
    ok, count, output = collect_cuda_tests()
    if not ok:
        print(output[-4000:], file=sys.stderr)
        print(f"{why}, and the CUDA-marked tests do not collect ({count} collected): see above",
              file=sys.stderr, flush=True)
        return 1
    print(f"{why}: nothing to measure here; the {count} CUDA-marked tests collect; run "
          f"python -m tools.gpu_check on a machine with a GPU", flush=True)
    return 0


def check_writable(folder: str) -> None:
    """A one-line user error when the report cannot be written into ``folder`` (created if absent)."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out: cannot create the report's folder {folder!r} ({error.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"--out: the report's folder {folder!r} is not writable")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_REPORT, help=f"the Markdown report (default {DEFAULT_REPORT}; "
                        "each step's output goes to <report>_logs/)")
    parser.add_argument("--quick", action="store_true", help="the tests and the NCCL run only, no benchmarks")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    if not cuda_usable():
        return check_without_cuda()
    report = os.path.abspath(args.out)
    log_dir = os.path.splitext(report)[0] + "_logs"
    check_writable(os.path.dirname(report))  # before minutes of work
    os.makedirs(log_dir, exist_ok=True)
    from tools.make_toy_dataset import make_toy_dataset
    start = time.monotonic()
    make_toy_dataset(os.path.join(REPOSITORY_ROOT, TOY_ROOT), num_images=300, seed=0)  # the benchmarks' data
    machine = machine_description()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        steps = gpu_steps(log_dir, scratch, args.quick, torch.cuda.device_count())
        results = run_steps(steps, log_dir, BUDGET_SECONDS - (time.monotonic() - start))
    text = format_report(machine, results, time.monotonic() - start, args.quick)
    with open(report, "w") as handle:
        handle.write(text)
    print(text, flush=True)
    print(f"gpu_check: wrote {report}", flush=True)
    return exit_status(results)


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
