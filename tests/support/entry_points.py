"""Run the scripts and tools as a user runs them from the repository root, in a subprocess or,
about 3 s faster per run (no new interpreter importing torch and OpenCV), in this process.

Both return a :class:`Completed` with the exit status and everything written to stdout and
stderr, so a test may use either. The in-process run executes the script's file (or the tool's
module) as ``__main__`` with ``sys.argv``, the working folder and the environment a subprocess
would have, and reports ``SystemExit`` and an uncaught exception as the interpreter does (status
and traceback). ``tests/scripts/test_cli_errors.py`` checks that both runs report the same.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import os
import runpy
import subprocess
import sys
import traceback
import warnings
from typing import Mapping, Optional

from tests.support import REPOSITORY_ROOT


@dataclasses.dataclass
class Completed:
    """What a run of a script left: its exit status and its whole stdout and stderr."""

    returncode: int
    stdout: str
    stderr: str


def _environment(environment: Optional[Mapping[str, str]]) -> dict:
    # A user's shell has no SCCAN_DEBUG; warnings (deprecations of the installed libraries) are
    # not part of what a script reports.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("SCCAN_DEBUG", None)
    env.update(environment or {})
    return env


def run_subprocess(*arguments: str, environment: Optional[Mapping[str, str]] = None,
                   timeout: float = 600) -> Completed:
    """``python ARGUMENTS...`` in a new interpreter, from the repository root."""
    result = subprocess.run([sys.executable, *arguments], cwd=REPOSITORY_ROOT, env=_environment(environment),
                            capture_output=True, text=True, timeout=timeout)
    return Completed(result.returncode, result.stdout, result.stderr)


@contextlib.contextmanager
def _as_a_new_process(argv: list, environment: Mapping[str, str]):
    """``sys.argv``, the working folder and ``os.environ`` of a new process, restored after."""
    saved_argv, saved_folder, saved_environment = sys.argv, os.getcwd(), dict(os.environ)
    sys.argv = argv
    os.chdir(REPOSITORY_ROOT)
    os.environ.clear()
    os.environ.update(environment)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved_environment)
        os.chdir(saved_folder)
        sys.argv = saved_argv


def _exit_status(code, stderr: io.StringIO) -> int:
    """The status the interpreter gives ``sys.exit(code)``: None is 0, a string is printed, 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=stderr)
    return 1


def run_in_process(*arguments: str, environment: Optional[Mapping[str, str]] = None) -> Completed:
    """``python SCRIPT.py ...`` or ``python -m PACKAGE.MODULE ...``, run in this process."""
    if arguments[0] == "-m":
        module, argv = arguments[1], list(arguments[2:])
        path = importlib.util.find_spec(module).origin

        def execute():
            with warnings.catch_warnings():
                # runpy's note that the tool's module was imported before (by an earlier test):
                # it runs the module's code afresh as __main__ all the same.
                warnings.filterwarnings("ignore", "'.*' found in sys.modules", RuntimeWarning)
                runpy.run_module(module, run_name="__main__")
    elif arguments[0].startswith("-"):
        raise ValueError(f"run_in_process runs a script file or -m MODULE, not {arguments[0]}; "
                         "use run_subprocess")
    else:
        path, argv = os.path.join(REPOSITORY_ROOT, arguments[0]), list(arguments[1:])

        def execute():
            runpy.run_path(path, run_name="__main__")
    stdout, stderr = io.StringIO(), io.StringIO()
    with _as_a_new_process([path, *argv], _environment(environment)), \
            contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            execute()
            status = 0
        except SystemExit as exit_request:
            status = _exit_status(exit_request.code, stderr)
        except Exception:  # as the interpreter reports an uncaught exception
            traceback.print_exc(file=stderr)
            status = 1
    return Completed(status, stdout.getvalue(), stderr.getvalue())
