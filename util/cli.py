"""Command-line plumbing shared by every entry point: one-line errors and the ``--debug`` switch.

A user mistake (a missing file, a bad config value, a checkpoint that does not fit) should read
as one line, ``error: <what is wrong and what was expected>``, with exit status 2, like
argparse's own usage errors. ``--debug`` (placed before ``--opts``) or ``SCCAN_DEBUG=1`` in the
environment shows the full traceback instead, for bug reports.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Callable, Optional, Sequence

__all__ = ["UserError", "USER_ERROR_TYPES", "DEBUG_ENVIRONMENT_VARIABLE", "add_debug_argument",
           "positive_int", "non_negative_int", "error_message", "wants_debug", "run_entry_point"]

DEBUG_ENVIRONMENT_VARIABLE = "SCCAN_DEBUG"
EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem the user can fix (input files, configuration, command line)."""


# File and value errors come from the data, configs and checkpoints a user points the scripts
# at; the project's own error types (ConfigError, CheckpointError, ...) derive from these.
USER_ERROR_TYPES = (UserError, ValueError, OSError)


def add_debug_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--debug", action="store_true",
                        help=f"show the full traceback on errors (or set {DEBUG_ENVIRONMENT_VARIABLE}=1)")
    return parser


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (``--episodes 0`` would evaluate nothing and report zeros)."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0 (e.g. numpy's seeds)."""
    return _int_at_least(text, 0, "a non-negative integer")


# torch re-raises an error of a DataLoader worker with the worker's whole traceback as its message.
_WORKER_ERROR = re.compile(r"Caught \w+ (in DataLoader worker process \d+)\.\nOriginal Traceback")


def error_message(error: BaseException) -> str:
    """One line for ``error``; OSError's '[Errno 2] ...' prefix is dropped, newlines joined; an
    error of a DataLoader worker is its own message, without the worker's traceback."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        text = f"{error.strerror}: {error.filename!r}"
    else:
        text = str(error) or type(error).__name__
    worker = _WORKER_ERROR.match(text)
    if worker:
        # The error's own 'Type: message' lines follow the traceback's last indented line.
        lines = text.splitlines()
        last_frame = max(number for number, line in enumerate(lines) if line.startswith(" ") or number == 1)
        own = re.sub(r"^[\w.]+: ", "", "\n".join(lines[last_frame + 1:]).strip())
        text = f"{own} ({worker.group(1)})" if own else text
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def wants_debug(argv: Sequence[str]) -> bool:
    """``--debug`` before ``--opts`` (after it, everything is an override), or SCCAN_DEBUG set."""
    arguments = list(argv)
    if "--opts" in arguments:
        arguments = arguments[:arguments.index("--opts")]
    environment = os.environ.get(DEBUG_ENVIRONMENT_VARIABLE, "").strip().lower()
    return "--debug" in arguments or environment not in ("", "0", "false", "no")


def _close_progress_bars() -> None:
    # An error raised inside an evaluation would otherwise be printed on the line of its open
    # progress bar; closing the bars clears that line first.
    tqdm_module = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm_module, "tqdm", None), "_instances", None) or ()):
        bar.close()


def run_entry_point(main: Callable[[list], Any], argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)`` and return its exit status (its int result, else 0); a user error
    becomes ``error: ...`` on stderr and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        result = main(argv)
    except USER_ERROR_TYPES as error:
        if wants_debug(argv):
            raise
        _close_progress_bars()
        print(f"error: {error_message(error)}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
