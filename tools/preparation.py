"""What the two data-preparation tools (``tools.prepare_pascal``, ``tools.prepare_coco``) share:
their error type, reading id lists, writing base lists without replacing shipped ones, and
comparing produced counts with the reference counts of the paper's data."""

from __future__ import annotations

import os
import sys
from typing import Iterable, Sequence

from util.cli import UserError, add_debug_argument
from util.io import atomic_write_text


class PrepareError(UserError):
    """A problem with the input data that the user has to fix; printed without a traceback."""


def add_output_arguments(parser, shipped_example: str) -> None:
    """The flags both preparation tools share: worker count, label rewriting, list replacement
    and --debug (``shipped_example`` names a shipped list the tool would keep)."""
    from tools.parallel import default_worker_count

    parser.add_argument("--workers", type=int, default=default_worker_count(),
                        help="worker processes (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rewrite labels even when valid ones exist")
    parser.add_argument("--replace-lists", action="store_true",
                        help=f"write the built lists over lists already in --lists-dir (by default an "
                             f"existing list, such as {shipped_example}, is kept and compared with the "
                             f"built one)")
    add_debug_argument(parser)


def write_list_file(destination: str, lines: Sequence[str]) -> None:
    """Write a list file (one entry per line, trailing newline), atomically."""
    atomic_write_text(destination, "".join(line + "\n" for line in lines))


def write_list_unless_present(destination: str, lines: Sequence[str], replace: bool = False) -> str:
    """Write a list file only where none is there yet (or ``replace``), and compare otherwise.

    An existing list may be the one shipped from the original repository, whose ORDER (not only
    its entries) fixes the FSS lists and so the episode stream; a rebuilt list must not silently
    take its place. Returns 'written', 'identical', 'reordered' (same entries, the existing order
    kept) or 'kept' (different entries, the existing file kept; a warning says how they differ).
    """
    if replace or not os.path.isfile(destination):
        write_list_file(destination, lines)
        return "written"
    with open(destination, "r", encoding="utf-8") as handle:
        existing = [line for line in handle.read().splitlines() if line.strip()]
    if existing == list(lines):
        print(f"{destination}: already there and identical to the list built from the data")
        return "identical"
    only_existing = sorted(set(existing) - set(lines))
    only_built = sorted(set(lines) - set(existing))
    if not only_existing and not only_built:
        print(f"{destination}: already there with the same {len(existing):,} entries in another order; "
              "its order is kept (the FSS lists are built in base-list order)")
        return "reordered"
    print(
        f"WARNING: {destination} is kept, not replaced: it differs from the list built from the data "
        f"({len(only_existing):,} entries only in it: {first_few(only_existing, 2)}; {len(only_built):,} only in "
        f"the built list: {first_few(only_built, 2)}). Pass --replace-lists to write the built list over it.",
        file=sys.stderr,
    )
    return "kept"


def report_count(what: str, produced: int, reference: int | None) -> bool:
    """Print ``produced`` beside the reference count; warn on stderr when they differ.
    Returns True when they agree (or when there is no reference)."""
    if reference is None:
        print(f"{what}: {produced:,}")
        return True
    print(f"{what}: {produced:,} (reference {reference:,})")
    if produced != reference:
        print(
            f"WARNING: {what}: {produced:,} differs from the reference {reference:,}; "
            "the input data is incomplete or is a different release.",
            file=sys.stderr,
        )
        return False
    return True


def read_id_list(path: str) -> list[str]:
    """Read an image-id list (one id per line; blank lines ignored; only the first column kept,
    so lists in the 'id label' style also work)."""
    identifiers = []
    with open(path, "r", encoding="utf-8") as handle:
        for line in handle:
            stripped = line.strip()
            if stripped:
                identifiers.append(stripped.split()[0])
    return identifiers


def first_few(items: Iterable[str], limit: int = 5) -> str:
    """A short, readable preview of a possibly long collection for error messages."""
    items = list(items)
    preview = ", ".join(items[:limit])
    if len(items) > limit:
        preview += f", ... ({len(items):,} in all)"
    return preview
