"""What the machine running the suite can give it: the cores this process may really use, the
memory still available, and the disk space free for the temporary folders. The suite's worker
count (tests/conftest.py) is derived from the first two; all three head the test report, so that
a run that fails for want of one of them says so."""
from __future__ import annotations

import os
import shutil

# What one pytest-xdist worker holds at most (its own memory and that of the processes it starts:
# the DDP ranks, the scripts, their loader workers): the machine's used memory peaked 6.3 GB
# above idle over the whole suite on 2 workers (2026-12-03). Workers are limited so that each
# has this much.
WORKER_MEMORY_BYTES = int(3.5 * 1024 ** 3)

# What the suite's temporary folders hold at once: 2.2 GB at the peak on 2 workers (2026-12-03;
# checkpoints of the full ResNet-50 model are about 200 MB each, and pytest.ini deletes a passed
# test's folder at once).
SUITE_DISK_BYTES = 3 * 1024 ** 3


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's control group in cores (cgroup v2 ``cpu.max``, or v1's
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); None when there is no quota."""
    text = _read(os.path.join(root, "cpu.max"))
    if text:
        quota, _, period = text.partition(" ")
        if quota != "max" and period:
            return int(quota) / int(period)
        return None
    quota = _read(os.path.join(root, "cpu", "cpu.cfs_quota_us")) or _read(os.path.join(root, "cpu.cfs_quota_us"))
    period = _read(os.path.join(root, "cpu", "cpu.cfs_period_us")) or _read(os.path.join(root, "cpu.cfs_period_us"))
    if quota and period and int(quota) > 0:
        return int(quota) / int(period)
    return None


def usable_cores(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """Cores this process may run on (its affinity), lowered to the control group's CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cores = min(cores, max(1, int(limit)))
    return max(1, cores)


def available_memory_bytes(meminfo: str = "/proc/meminfo", cgroup_root: str = "/sys/fs/cgroup") -> int | None:
    """Memory still available: the kernel's MemAvailable, lowered to what the control group's
    limit leaves (v2 ``memory.max`` - ``memory.current``); None when neither can be read."""
    available = None
    text = _read(meminfo)
    if text:
        for line in text.splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    limit = _read(os.path.join(cgroup_root, "memory.max"))
    current = _read(os.path.join(cgroup_root, "memory.current"))
    if limit and limit != "max" and current:
        left = int(limit) - int(current)
        available = left if available is None else min(available, left)
    return available


def workers_for(cores: int, memory_bytes: int | None) -> int:
    """One worker per usable core, as many as the memory holds, at least one."""
    workers = cores
    if memory_bytes is not None:
        workers = min(workers, memory_bytes // WORKER_MEMORY_BYTES)
    return max(1, int(workers))


def machine_summary(temporary_folder: str) -> str:
    memory = available_memory_bytes()
    free = shutil.disk_usage(temporary_folder).free
    line = (f"machine: {usable_cores()} usable cores (the kernel shows {os.cpu_count()}), "
            f"{'unknown' if memory is None else f'{memory / 1024 ** 3:.1f} GiB'} memory available, "
            f"{free / 1024 ** 3:.1f} GiB free in {temporary_folder}")
    if free < SUITE_DISK_BYTES:
        line += (f"\nWARNING: the suite's temporary files need about {SUITE_DISK_BYTES / 1024 ** 3:.0f} GiB "
                 f"at once; with {free / 1024 ** 3:.1f} GiB free in {temporary_folder}, tests will fail "
                 f"for want of space (set TMPDIR to a folder on a larger disk)")
    return line
