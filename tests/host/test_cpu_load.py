"""The CPUs a process may really use (affinity and cgroup quota) and the machine's load over a timing phase, read
from faked /sys/fs/cgroup and /proc files."""

from __future__ import annotations

import os

import pytest

from compress.host import cpu
from compress.host.cpu import cgroup_cpu_quota, usable_cpus
from compress.host.load import HostLoad, LoadSampler, host_load_line


@pytest.fixture
def four_cpus(monkeypatch):
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)


def test_cgroup_v2_quota_caps_the_affinity(tmp_path, four_cpus):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.5
    assert usable_cpus(tmp_path) == 2  # a quota of 1.5 CPUs keeps two threads busy


def test_cgroup_v2_without_a_quota_leaves_the_affinity(tmp_path, four_cpus):
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    assert usable_cpus(tmp_path) == 4


def test_cgroup_v1_quota(tmp_path, four_cpus):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cpus(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # unlimited
    assert usable_cpus(tmp_path) == 4


def test_no_cgroup_files_and_a_small_quota_still_give_one(tmp_path, four_cpus):
    assert usable_cpus(tmp_path / "absent") == 4
    (tmp_path / "cpu.max").write_text("10000 100000\n")
    assert usable_cpus(tmp_path) == 1


def test_the_host_profile_counts_usable_cpus(monkeypatch):
    from compress.profiles import host

    monkeypatch.setattr(host, "usable_cpus", lambda: 3)
    assert host._host_data()["hardware"]["cores"] == 3


def _proc(tmp, rows: dict[int, list[int]], load: str = "3.50 2.00 1.00 3/100 123") -> None:
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"] + [f"cpu{n} " + " ".join(map(str, v)) + " 0 0" for n, v in rows.items()]
    (tmp / "stat").write_text("\n".join(lines) + "\n")
    (tmp / "loadavg").write_text(load + "\n")


def test_load_sampler_reads_other_processes_share_and_steal(tmp_path, monkeypatch):
    from compress.host import load

    monkeypatch.setattr(load.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    tick = os.sysconf("SC_CLK_TCK")
    _proc(tmp_path, {0: [0, 0, 0, 100, 0, 0, 0, 0], 1: [0, 0, 0, 100, 0, 0, 0, 0], 2: [0] * 8})
    own = iter([10.0, 10.0 + 1.0])  # this process used 1 s of CPU in the window
    monkeypatch.setattr(load, "_own_cpu_s", lambda: next(own))
    sampler = LoadSampler(tmp_path).__enter__()
    # 2 CPUs x 2 s: 4 s of CPU time; 2.5 s busy (1 s ours, 1.5 s others), 0.2 s stolen; cpu2 is not ours
    _proc(tmp_path, {0: [int(1.5 * tick), 0, 0, 100 + int(0.4 * tick), 0, 0, 0, int(0.1 * tick)],
                     1: [int(1.0 * tick), 0, 0, 100 + int(0.9 * tick), 0, 0, 0, int(0.1 * tick)],
                     2: [int(2.0 * tick), 0, 0, 0, 0, 0, 0, 0]})
    result = sampler.stop()
    assert result.cpus == 2 and result.load_average == 3.5
    assert result.other_cpu_share == pytest.approx(0.375, abs=0.01)
    assert result.steal_share == pytest.approx(0.05, abs=0.01)
    assert result.busy
    line = host_load_line(result.as_dict())
    assert line.startswith("the machine was busy") and "other processes used 38%" in line


def test_load_sampler_without_proc_says_so(tmp_path):
    with LoadSampler(tmp_path / "absent") as s:
        pass
    assert s.result.other_cpu_share is None and not s.result.busy
    assert "no /proc figures" in HostLoad(**s.result.as_dict()).summary()
    assert host_load_line(None) is None


def test_the_command_line_makes_openmp_waits_passive_unless_the_user_chose(monkeypatch):
    from compress._entry import passive_waits

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    passive_waits()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    passive_waits()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_a_command_runs_with_passive_openmp_waits(tmp_path):
    """The entry sets it before anything imports torch (libgomp reads it once, when it loads)."""
    import subprocess
    import sys

    code = ("import sys, os; sys.argv = ['edgecompress', '--help']\n"
            "from compress._entry import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('POLICY', os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert "POLICY PASSIVE False" in out
