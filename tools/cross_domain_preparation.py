"""What the three preparation tools of the cross-domain benchmark (``tools.prepare_deepglobe``,
``tools.prepare_isic``, ``tools.prepare_lung``) share: checking the folders they are given, and
copying a file into the prepared layout without rewriting one that is already there."""
from __future__ import annotations

import argparse
import os
from typing import Sequence

from tools.preparation import PrepareError, first_few
from util.cli import add_debug_argument
from util.io import atomic_copy, check_output_path


def require_folder(path: str, option: str, expected: str) -> None:
    """Refuse ``path`` (given as ``option``) unless it is a folder; ``expected`` says what it holds."""
    if not os.path.isdir(path):
        what = "is a file, not a folder" if os.path.exists(path) else "is not a folder"
        raise PrepareError(f"{option} {path!r} {what}: expected {expected}")


def refuse_missing(what: str, names: Sequence[str], hint: str) -> None:
    """One line naming how many ``what`` are missing and the first of them, or nothing."""
    if names:
        raise PrepareError(f"{len(names)} {what} (first: {first_few(list(names), 3)}); {hint}")


def copy_into(source: str, destination: str) -> bool:
    """Copy ``source`` to ``destination`` (atomically) unless a file of the same size is there;
    returns whether it was copied."""
    if os.path.isfile(destination) and os.path.getsize(destination) == os.path.getsize(source):
        return False
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    atomic_copy(source, destination)
    return True


def output_parser(program: str, description: str) -> argparse.ArgumentParser:
    """The argument parser of a preparation tool with its --out and --debug."""
    parser = argparse.ArgumentParser(prog=f"python -m {program}", description=description)
    parser.add_argument("--out", required=True, help="the prepared benchmark folder to write (the config's data_root)")
    add_debug_argument(parser)
    return parser


def check_out_folder(path: str) -> None:
    """The output folder can be created or written (before any work)."""
    check_output_path(path, "--out", folder=True)
