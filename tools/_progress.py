"""Small helpers shared by the dataset preparation tools (``prepare_pascal.py``, ``prepare_coco.py``).

Everything here exists so that a preparation run can be interrupted at any moment and simply
started again:

* ``write_bytes_atomically`` / ``write_label_png`` / ``copy_file_atomically`` / ``write_list_file``
  write to a temporary file in the destination folder and then ``os.replace`` it into place.
  ``os.replace`` is atomic on the same file system, so a reader (or a resumed run) sees either
  the old file, no file, or the complete new file -- never a half-written one.
* ``is_valid_label_png`` decides whether an existing label file can be kept by a resumed run.
* ``run_tasks`` runs one conversion function over many tasks with a tqdm progress bar,
  optionally in worker processes.
* ``report_count`` prints a produced count beside the count the paper's lists have.
* ``write_list_unless_present`` keeps a list that is already there (the shipped original lists).

This module is a private helper of the tools; it is not part of the training code.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import tempfile
from collections import Counter
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm


# mkstemp creates files readable by the owner only; finished files should get the usual
# permissions (0666 minus the umask), like any file written with open().
_CURRENT_UMASK = os.umask(0)
os.umask(_CURRENT_UMASK)
_FILE_MODE = 0o666 & ~_CURRENT_UMASK


class PrepareError(Exception):
    """A problem with the input data that the user has to fix; printed without a traceback."""


def _temporary_path_beside(destination: str) -> tuple[int, str]:
    """Create a temporary file in the destination's folder (same file system, so os.replace is
    atomic). The name starts with '.' and does not end in the destination's extension, so that
    a left-over temporary file can never be mistaken for a finished label or image."""
    folder = os.path.dirname(os.path.abspath(destination))
    os.makedirs(folder, exist_ok=True)
    descriptor, temporary_path = tempfile.mkstemp(
        prefix="." + os.path.basename(destination) + ".", suffix=".partial", dir=folder
    )
    os.chmod(temporary_path, _FILE_MODE)
    return descriptor, temporary_path


def write_bytes_atomically(destination: str, payload: bytes) -> None:
    """Write ``payload`` to ``destination`` so that an interruption never leaves a half file."""
    descriptor, temporary_path = _temporary_path_beside(destination)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
        os.replace(temporary_path, destination)
    except BaseException:
        # BaseException on purpose: a KeyboardInterrupt must not leave the temporary file behind.
        if os.path.exists(temporary_path):
            os.remove(temporary_path)
        raise


def copy_file_atomically(source: str, destination: str) -> None:
    """Copy ``source`` to ``destination`` through a temporary file and ``os.replace``."""
    descriptor, temporary_path = _temporary_path_beside(destination)
    os.close(descriptor)
    try:
        shutil.copyfile(source, temporary_path)
        os.replace(temporary_path, destination)
    except BaseException:
        if os.path.exists(temporary_path):
            os.remove(temporary_path)
        raise


def write_label_png(destination: str, label: np.ndarray) -> None:
    """Write a plain single-channel 8-bit PNG (no palette), atomically."""
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"a label must be a 2-D uint8 array, got shape {label.shape} dtype {label.dtype}")
    succeeded, encoded = cv2.imencode(".png", label)
    if not succeeded:
        raise PrepareError(f"OpenCV could not encode the label PNG for {destination}")
    write_bytes_atomically(destination, encoded.tobytes())


def write_list_file(destination: str, lines: Sequence[str]) -> None:
    """Write a list file (one entry per line, trailing newline), atomically."""
    write_bytes_atomically(destination, "".join(line + "\n" for line in lines).encode("utf-8"))


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


def read_label_png(path: str) -> np.ndarray:
    """Read a label PNG as its stored values (palette indices for palette PNGs)."""
    with Image.open(path) as image:
        return np.array(image)


def is_valid_label_png(
    path: str,
    expected_height_width: tuple[int, int] | None,
    allowed_values: np.ndarray,
) -> bool:
    """True when ``path`` is a complete single-channel 8-bit PNG of the expected size whose values
    are all allowed. A resumed run keeps such files and rewrites anything else."""
    if not os.path.isfile(path):
        return False
    try:
        with Image.open(path) as image:
            if image.format != "PNG" or image.mode != "L":
                return False
            # load() decodes every row; a truncated file raises here.
            image.load()
            values = np.array(image)
    except (OSError, SyntaxError, ValueError):
        return False
    if expected_height_width is not None and values.shape != tuple(expected_height_width):
        return False
    return bool(np.isin(values, allowed_values).all())


def image_height_width(path: str) -> tuple[int, int]:
    """Height and width of an image, read from its header only (no decoding)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except OSError as error:
        raise PrepareError(f"cannot read the image {path}: {error}") from error
    return height, width


def run_tasks(
    function: Callable[[object], str],
    tasks: Sequence[object],
    workers: int,
    description: str,
) -> Counter:
    """Apply ``function`` to every task with a progress bar and count the returned outcome words
    (for example 'written' / 'skipped'). ``function`` must be a module-level function so that it
    can be sent to worker processes."""
    outcomes: Counter = Counter()
    if not tasks:
        return outcomes
    progress_bar = tqdm(total=len(tasks), desc=description, unit="file", dynamic_ncols=True)
    try:
        if workers <= 1:
            for task in tasks:
                outcomes[function(task)] += 1
                progress_bar.update(1)
        else:
            # Small chunks keep the progress bar moving while still amortising the IPC cost.
            chunk_size = max(1, min(64, len(tasks) // (workers * 8)))
            with multiprocessing.Pool(processes=workers) as pool:
                for outcome in pool.imap_unordered(function, tasks, chunksize=chunk_size):
                    outcomes[outcome] += 1
                    progress_bar.update(1)
    finally:
        progress_bar.close()
    return outcomes


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


def default_worker_count() -> int:
    """A conservative default: the conversions are light, and the machines are often shared."""
    return max(1, min(8, os.cpu_count() or 1))


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
