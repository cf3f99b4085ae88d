"""One conversion function over many files, with a tqdm progress bar, optionally in worker
processes (the data-preparation tools convert thousands of labels this way)."""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from typing import Callable, Sequence

from tqdm import tqdm


def default_worker_count() -> int:
    """A conservative default: the conversions are light, and the machines are often shared."""
    return max(1, min(8, os.cpu_count() or 1))


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
