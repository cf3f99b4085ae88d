"""The jobs of ``python -m tools.run_grid`` and the ways to run them.

One job per cell (dataset, fold, shot, backbone): its training (``train_sccan.py``, or under
``torch.distributed.run`` on several GPUs) and then its test (``test_sccan.py``) as subprocesses,
both appending to the cell's log. Four executors run the jobs:

* :func:`run_one_after_another`: here, one job after the other (``--executor local``);
* :func:`run_on_gpus`: here, as many jobs at once as the free GPUs allow, each job with its own
  ``CUDA_VISIBLE_DEVICES`` (:class:`GpuPool`) (``--executor gpus``);
* :func:`run_with_submitit`: one submitit job per cell, as job arrays, on Slurm (submitit's
  ``AutoExecutor``, ``--executor slurm``) or as processes here (its ``LocalExecutor``,
  ``--executor submitit-local``, which needs no Slurm).

This module imports only the standard library and util/cli.py (submitit where it is used): a
Slurm job imports it to unpickle its :class:`CellJob`, before it starts the scripts that import
torch.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from util.cli import UserError

__all__ = ["CellJob", "CellOutcome", "GpuPool", "SUBMITIT_MISSING", "cuda_visible_devices", "import_submitit",
           "run_cell", "run_one_after_another", "run_on_gpus", "run_with_submitit", "submitit_executor",
           "trained_checkpoint"]

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBMITIT_MISSING = ("--executor {executor} needs submitit, which is not installed: pip install submitit "
                    "(requirements-test.txt names the verified versions)")


@dataclass(frozen=True)
class CellJob:
    """What one cell runs: plain data, so that it pickles into a Slurm job. Paths are absolute;
    the commands run in ``cwd`` (where the configs' relative paths, data/ and exp/, point)."""
    name: str                       # e.g. pascal_resnet50_1shot_split0
    cwd: str
    log: str                        # <out>/logs/<name>.log, appended to by every command
    result: str = ""                # the result JSON the test writes; '' = no test (--what train)
    chart: str = ""                 # the per-class chart the test writes beside it
    train: Tuple[str, ...] = ()     # the training command; () = no training
    test: Tuple[str, ...] = ()      # the test command before --weight and --opts
    test_opts: Tuple[str, ...] = ()
    weight: str = ""                # the checkpoint to test; '' = the one the training wrote
    snapshot: str = ""              # the training's snapshot folder
    final: str = ""                 # its final checkpoint (final_<K>shot.pth)
    best_prefix: str = ""           # its best checkpoints' names: <best_prefix><epoch>_<mIoU>.pth
    evaluate: bool = True           # the training validates (and keeps a best checkpoint)
    released: str = ""              # the config's weight: a released file, never the training's best
    gpus: int = 1                   # the GPUs the job needs (its training's; the test uses one)

    def test_command(self, weight: str) -> List[str]:
        return list(self.test) + ["--weight", weight] + (["--opts", *self.test_opts] if self.test_opts else [])


@dataclass(frozen=True)
class CellOutcome:
    """How a job ended: ``ok``, else ``problem`` (which step, its exit status and the last error
    line of its log)."""
    name: str
    ok: bool
    log: str
    seconds: float
    problem: str = ""

    def line(self) -> str:
        if self.ok:
            return f"ok   {self.name} ({self.seconds:.0f} s)"
        return f"FAILED {self.name}: {self.problem} (log {self.log})"


def trained_checkpoint(job: CellJob) -> Optional[str]:
    """The checkpoint a training of ``job`` wrote: with validation on, its best one (the highest
    mIoU in the names ``<best_prefix><epoch>_<mIoU>.pth`` of its snapshot folder, the config's
    released file excluded), else, or when no validation scored above 0, its final one; None
    when there is neither."""
    best = []
    if job.evaluate and os.path.isdir(job.snapshot):
        for name in os.listdir(job.snapshot):
            if not name.startswith(job.best_prefix) or not name.endswith(".pth") or name == job.released:
                continue
            epoch, _, miou = name[len(job.best_prefix):-len(".pth")].partition("_")
            try:
                best.append((float(miou), float(epoch), name))
            except ValueError:
                continue
    if best:
        return os.path.join(job.snapshot, max(best)[2])
    return job.final if os.path.isfile(job.final) else None


def _run_step(command: Sequence[str], job: CellJob, handle, environment: Dict[str, str]) -> str:
    """Run one step of ``job`` into its log (``handle``); '' when it succeeded, else its exit
    status and its last ``error: ...`` line (the scripts' one-line errors), or its last line (a
    traceback's)."""
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    handle.write(f"\n# {stamp} in {job.cwd}: {shlex.join(command)}\n")
    handle.flush()
    start = handle.tell()
    env = dict(os.environ, PYTHONUNBUFFERED="1", **environment)
    status = subprocess.run(list(command), cwd=job.cwd, stdout=handle, stderr=subprocess.STDOUT, env=env,
                            check=False).returncode
    if not status:
        return ""
    with open(job.log, "rb") as log:
        log.seek(start)
        text = log.read().decode("utf-8", errors="replace").replace("\r", "\n")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return f"exit status {status}: {(errors or lines or [''])[-1]}"


def run_cell(job: CellJob, environment: Optional[Dict[str, str]] = None) -> CellOutcome:
    """Run ``job``: its training, if any, then its test, each as a subprocess writing into the
    cell's log. Never raises for a failing step: the outcome says what failed."""
    start = time.monotonic()

    def failed(problem: str) -> CellOutcome:
        return CellOutcome(job.name, False, job.log, time.monotonic() - start, problem)

    try:
        os.makedirs(os.path.dirname(job.log), exist_ok=True)
        with open(job.log, "a", encoding="utf-8") as handle:
            if job.train:
                problem = _run_step(job.train, job, handle, environment or {})
                if problem:
                    return failed(f"training {problem}")
            if not job.result:
                return CellOutcome(job.name, True, job.log, time.monotonic() - start)
            weight = job.weight or trained_checkpoint(job)
            if weight is None:
                return failed(f"no checkpoint of the training in {job.snapshot} (neither a best "
                              f"{job.best_prefix}<epoch>_<mIoU>.pth nor {os.path.basename(job.final)})")
            if job.chart and os.path.isfile(job.chart) and not os.path.lexists(job.result):
                # The grid's own chart of a result removed since (test_sccan.py keeps a chart
                # without its result, as someone else's picture).
                os.remove(job.chart)
                handle.write(f"\n# removed {job.chart}: the chart of a result no longer there\n")
            problem = _run_step(job.test_command(weight), job, handle, environment or {})
            if problem:
                return failed(f"test {problem}")
    except OSError as error:
        return failed(f"{type(error).__name__}: {error}")
    return CellOutcome(job.name, True, job.log, time.monotonic() - start)


# ----------------------------------------------------------------------------- one machine
def run_one_after_another(jobs: Sequence[CellJob], report: Callable[[str], None],
                          run: Callable[..., CellOutcome] = run_cell) -> List[CellOutcome]:
    """``--executor local``: the jobs here, one after the other."""
    outcomes = []
    for job in jobs:
        report(f"run  {job.name} (log {job.log})")
        outcomes.append(run(job))
        report(outcomes[-1].line())
    return outcomes


class GpuPool:
    """The GPUs of this machine (0..count-1) that no job holds, handed out lowest first."""

    def __init__(self, count: int):
        self.count = count
        self.free = list(range(count))

    def take(self, wanted: int) -> Optional[Tuple[int, ...]]:
        """``wanted`` free GPUs, or None while fewer are free."""
        if wanted > self.count:
            raise ValueError(f"a job needs {wanted} GPUs, the machine has {self.count}")
        if wanted > len(self.free):
            return None
        taken, self.free = tuple(self.free[:wanted]), self.free[wanted:]
        return taken

    def give_back(self, gpus: Sequence[int]) -> None:
        self.free = sorted(self.free + list(gpus))


def cuda_visible_devices(gpus: Sequence[int]) -> Dict[str, str]:
    """The environment of a job that holds ``gpus``: it sees only those, as cuda:0, cuda:1, ..."""
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(gpu) for gpu in gpus)}


def run_on_gpus(jobs: Sequence[CellJob], gpus: int, report: Callable[[str], None],
                run: Callable[..., CellOutcome] = run_cell) -> List[CellOutcome]:
    """``--executor gpus``: the jobs here, in order, each started as soon as the GPUs it needs
    (``job.gpus``) are free, with ``CUDA_VISIBLE_DEVICES`` naming them; the outcomes in the jobs'
    order."""
    pool, changed = GpuPool(gpus), threading.Condition()
    outcomes: Dict[str, CellOutcome] = {}

    def work(job: CellJob, held: Tuple[int, ...]) -> None:
        try:
            outcome = run(job, cuda_visible_devices(held))
        except Exception as error:  # noqa: BLE001  (a job's failure is reported, the grid goes on)
            outcome = CellOutcome(job.name, False, job.log, 0.0, f"{type(error).__name__}: {error}")
        with changed:
            pool.give_back(held)
            outcomes[job.name] = outcome
            changed.notify_all()
        report(outcome.line())

    threads = []
    for job in jobs:
        with changed:
            held = pool.take(job.gpus)
            while held is None:
                changed.wait()
                held = pool.take(job.gpus)
        report(f"run  {job.name} on GPU {','.join(map(str, held))} (log {job.log})")
        threads.append(threading.Thread(target=work, args=(job, held), name=job.name))
        threads[-1].start()
    for thread in threads:
        thread.join()
    return [outcomes[job.name] for job in jobs]


# ----------------------------------------------------------------------------- submitit
def import_submitit(executor: str):
    """submitit, or a one-line error naming how to install it."""
    try:
        import submitit
    except ImportError:
        raise UserError(SUBMITIT_MISSING.format(executor=executor)) from None
    return submitit


@dataclass(frozen=True)
class SubmititSettings:
    """The resources of every job (``gpus`` is set per job array) and where submitit writes."""
    folder: str                     # submitit's pickles and each job's stdout/stderr
    timeout_min: int
    partition: Optional[str] = None
    account: Optional[str] = None
    cpus_per_task: Optional[int] = None
    name: str = "sccan_grid"


def submitit_executor(kind: str, settings: SubmititSettings, gpus: int):
    """submitit's executor for ``--executor slurm`` (``AutoExecutor`` on the Slurm cluster: one
    sbatch job array per call of map_array) or ``submitit-local`` (``LocalExecutor``: the jobs
    as processes here, all at once), with the jobs' resources."""
    submitit = import_submitit(kind)
    if kind == "slurm":
        try:
            executor = submitit.AutoExecutor(folder=settings.folder, cluster="slurm")
        except RuntimeError as error:  # submitit's 'Could not detect "srun"'
            raise UserError(f"--executor slurm: no Slurm here ({error}); run the grid on a machine that "
                          f"submits to the cluster (sbatch and srun on its PATH), or use --executor "
                          f"local, gpus or submitit-local") from None
        executor.update_parameters(name=settings.name, timeout_min=settings.timeout_min, nodes=1,
                                   tasks_per_node=1, gpus_per_node=gpus, cpus_per_task=settings.cpus_per_task,
                                   slurm_partition=settings.partition, slurm_account=settings.account)
    else:
        executor = submitit.LocalExecutor(folder=settings.folder)
        executor.update_parameters(timeout_min=settings.timeout_min, gpus_per_node=gpus)
    return executor


@contextlib.contextmanager
def _project_importable():
    """Submissions inherit the environment: with the repository on PYTHONPATH, a job started in
    any folder unpickles its :class:`CellJob` (this module) by name."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([REPOSITORY_ROOT] + ([before] if before else []))
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


def run_with_submitit(jobs: Sequence[CellJob], kind: str, settings: SubmititSettings,
                      report: Callable[[str], None], gpus_of_local_jobs: int = 0) -> List[CellOutcome]:
    """``--executor slurm|submitit-local``: one job per cell, submitted as one job array per GPU
    count (``executor.map_array``), then waited for; a job that submitit reports failed (a time
    limit, a node failure) is a failed cell naming submitit's log of it. The outcomes in the
    jobs' order. ``gpus_of_local_jobs``: the GPUs every submitit-local job sees (none: CPU)."""
    submitit = import_submitit(kind)
    by_gpus: Dict[int, List[CellJob]] = {}
    for job in jobs:
        by_gpus.setdefault(job.gpus if kind == "slurm" else gpus_of_local_jobs, []).append(job)
    submitted = []
    with _project_importable():
        for gpus, group in by_gpus.items():
            executor = submitit_executor(kind, settings, gpus)
            array = executor.map_array(run_cell, group)
            where = "submitit's local executor"
            if kind == "slurm":  # one job is submitted as a job, several as an array
                where = f"Slurm as job array {array[0].job_id.split('_')[0]}" if len(group) > 1 else \
                    f"Slurm as job {array[0].job_id}"
            report(f"submitted {len(group)} job{'s' * (len(group) != 1)} ({gpus} GPU{'s' * (gpus != 1)} each) to "
                   f"{where} (submitit logs in {settings.folder}): " + ", ".join(job.name for job in group))
            submitted += list(zip(group, array))
    outcomes: Dict[str, CellOutcome] = {}
    waiting = {id(handle): job for job, handle in submitted}
    # How often to look: a local process at once, a Slurm job without flooding the scheduler.
    poll_seconds = 30 if kind == "slurm" else 0.5
    for handle in submitit.helpers.as_completed([handle for _, handle in submitted], poll_frequency=poll_seconds):
        job = waiting[id(handle)]
        try:
            outcome = handle.result()
        except Exception as error:  # noqa: BLE001  (submitit's UncompletedJobError, FailedJobError, ...)
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            outcome = CellOutcome(job.name, False, job.log, 0.0,
                                  f"submitit job {handle.job_id} failed ({message}; its log: {handle.paths.stderr})")
        outcomes[job.name] = outcome
        report(outcome.line())
    return [outcomes[job.name] for job in jobs]
