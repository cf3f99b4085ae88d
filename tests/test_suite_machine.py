"""The suite's own sizing (tests/support/machine.py): the worker count follows the CPU quota and
the memory of a container, not only the cores the kernel shows."""
import pytest

from tests.support import machine


def _cgroup(tmp_path, **files):
    for name, text in files.items():
        path = tmp_path / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path)


@pytest.mark.parametrize("files, cores", [
    ({"cpu.max": "200000 100000\n"}, 2.0),  # v2: 2 cores' worth of time per period
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "max 100000\n"}, None),  # no quota
    ({"cpu__cpu.cfs_quota_us": "300000\n", "cpu__cpu.cfs_period_us": "100000\n"}, 3.0),  # v1
    ({"cpu__cpu.cfs_quota_us": "-1\n", "cpu__cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_the_cpu_quota_of_the_control_group(tmp_path, files, cores):
    assert machine.cgroup_cpu_limit(_cgroup(tmp_path, **files)) == cores


def test_usable_cores_are_lowered_to_the_quota_and_never_below_one(tmp_path, monkeypatch):
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert machine.usable_cores(_cgroup(tmp_path / "a", **{"cpu.max": "200000 100000"})) == 2
    assert machine.usable_cores(_cgroup(tmp_path / "b", **{"cpu.max": "50000 100000"})) == 1
    assert machine.usable_cores(_cgroup(tmp_path / "c", **{"cpu.max": "max 100000"})) == 64


def test_available_memory_is_the_smaller_of_the_kernel_and_the_group(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   20000000 kB\n")
    gib = 1024 ** 3
    no_group = _cgroup(tmp_path / "none")
    assert machine.available_memory_bytes(str(meminfo), no_group) == 20000000 * 1024
    group = _cgroup(tmp_path / "group", **{"memory.max": str(8 * gib), "memory.current": str(2 * gib)})
    assert machine.available_memory_bytes(str(meminfo), group) == 6 * gib
    unlimited = _cgroup(tmp_path / "unlimited", **{"memory.max": "max", "memory.current": str(2 * gib)})
    assert machine.available_memory_bytes(str(meminfo), unlimited) == 20000000 * 1024


def test_workers_are_one_per_core_as_many_as_the_memory_holds():
    per_worker = machine.WORKER_MEMORY_BYTES
    assert machine.workers_for(2, 22 * 1024 ** 3) == 2
    assert machine.workers_for(64, 22 * 1024 ** 3) == 22 * 1024 ** 3 // per_worker
    assert machine.workers_for(8, per_worker - 1) == 1
    assert machine.workers_for(3, None) == 3


def test_the_report_header_warns_of_a_disk_too_small(monkeypatch, tmp_path):
    usage = type("Usage", (), {"free": machine.SUITE_DISK_BYTES // 2})
    monkeypatch.setattr(machine.shutil, "disk_usage", lambda path: usage)
    lines = machine.machine_summary(str(tmp_path)).splitlines()
    assert lines[0].startswith("machine: ") and f"free in {tmp_path}" in lines[0]
    assert lines[1].startswith("WARNING: ") and "TMPDIR" in lines[1]
    usage.free = machine.SUITE_DISK_BYTES * 2
    assert len(machine.machine_summary(str(tmp_path)).splitlines()) == 1
