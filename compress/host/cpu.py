"""What the host CPU can do, read cheaply (no runtime imports)."""

from __future__ import annotations

import functools
import math
import os
import platform
from pathlib import Path


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (x86 ``flags``, Arm ``Features``); empty when unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def has_vnni(flags: frozenset[str] | set[str] | list[str] | None = None) -> bool:
    """True when the CPU has 8-bit dot-product instructions (x86 VNNI or Arm dotprod)."""
    flags = cpu_flags() if flags is None else flags
    return any("vnni" in f for f in flags) or "asimddp" in flags or "dotprod" in flags


def is_x86(arch: str | None = None) -> bool:
    return (arch or platform.machine()).lower() in ("x86_64", "amd64", "i686", "x86")


CGROUP = Path("/sys/fs/cgroup")  # the process's cgroup root (a container's own, in its namespace)


def _read_fields(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def cgroup_cpu_quota(root: Path = CGROUP) -> float | None:
    """CPUs' worth of time this process's cgroup may use (quota / period: 1.5 = one and a half cores), None when
    unlimited or unknown. cgroup v2 ``cpu.max`` ("max 100000" or "150000 100000"), else v1 ``cpu/cpu.cfs_quota_us``
    over ``cpu/cpu.cfs_period_us`` (a quota of -1 is unlimited)."""
    v2 = _read_fields(root / "cpu.max")
    try:
        if v2:
            return None if v2[0] == "max" else int(v2[0]) / int(v2[1])
        quota = _read_fields(root / "cpu" / "cpu.cfs_quota_us") or _read_fields(root / "cpu.cfs_quota_us")
        period = _read_fields(root / "cpu" / "cpu.cfs_period_us") or _read_fields(root / "cpu.cfs_period_us")
        if quota and period and int(quota[0]) > 0 and int(period[0]) > 0:
            return int(quota[0]) / int(period[0])
    except (ValueError, IndexError, ZeroDivisionError):
        pass
    return None


def usable_cpus(root: Path = CGROUP) -> int:
    """How many CPUs this process may really keep busy: the CPUs its affinity allows (``taskset``, a container's
    cpuset), capped by its cgroup's CPU quota rounded up (``docker --cpus 1.5`` gives 2); at least 1. The one answer
    to "how many threads by default": more threads than this only take turns on the same cores (and spinning ones
    starve each other)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(root)
    if quota:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)
