"""How busy this machine was while something was timed: the load average and the CPU time other processes (and a
hypervisor's steal) took from the CPUs this process may run on, read from ``/proc`` before and after (no runtime
imports; empty figures where ``/proc`` is absent, as on macOS).

A timing on a busy machine measures the machine's queue, not the model: two spinning runtimes on two cores that
other work also wants can run 6x slower at p50 and 100x at p90. The report names it (``host_load``) so a reader
knows which figures to distrust, and the latency budgets such a run fails are ANOMALOUS, not FAIL
(:func:`compress.profiles.budgets.anomalous_latency`).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PROC = Path("/proc")
#: other processes took at least this share of our CPUs' time while we timed (or the hypervisor stole it): busy
BUSY_SHARE = 0.25


@dataclass
class HostLoad:
    """What the rest of the machine did during a timing phase."""

    seconds: float  # the phase's wall time
    cpus: int  # the CPUs sampled (this process's affinity)
    load_average: float | None  # 1-minute load average at the end (runnable threads, ours included)
    other_cpu_share: float | None  # CPU time other processes used on those CPUs / (seconds x cpus)
    steal_share: float | None  # time a hypervisor gave those CPUs to other guests / (seconds x cpus)
    busy: bool  # other_cpu_share + steal_share >= BUSY_SHARE

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line for a report: 'the machine was busy: ...' or 'the machine was quiet: ...'."""
        parts = []
        if self.other_cpu_share is not None:
            parts.append(f"other processes used {self.other_cpu_share:.0%} of its {self.cpus} CPU(s)")
        if self.steal_share and self.steal_share >= 0.005:  # a rounded "steal 0%" says nothing
            parts.append(f"steal {self.steal_share:.0%}")
        if self.load_average is not None:
            parts.append(f"load average {self.load_average:.2f}")
        state = "busy" if self.busy else "quiet"
        return f"the machine was {state} while it timed ({', '.join(parts) or 'no /proc figures'})"


def _cpu_times(proc: Path, cpus: set[int] | None) -> tuple[float, float, float] | None:
    """(busy, steal, total) jiffies summed over ``cpus`` (every CPU when None) from ``proc/stat``."""
    try:
        lines = (proc / "stat").read_text().splitlines()
    except OSError:
        return None
    busy = steal = total = 0.0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or (cpus is not None and int(name[3:]) not in cpus):
            continue
        vals = [float(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        vals += [0.0] * (8 - len(vals))
        busy += vals[0] + vals[1] + vals[2] + vals[5] + vals[6]
        steal += vals[7]
        total += sum(vals)
    return (busy, steal, total) if total else None


def _load_average(proc: Path) -> float | None:
    try:
        return float((proc / "loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class LoadSampler:
    """Samples the machine over a phase: ``with LoadSampler() as s: ...`` then ``s.result`` (a :class:`HostLoad`)."""

    def __init__(self, proc: Path = PROC):
        self.proc = proc
        try:
            self.cpus: set[int] | None = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            self.cpus = None
        self.result: HostLoad | None = None

    def __enter__(self) -> LoadSampler:
        self._t0, self._own0 = time.perf_counter(), _own_cpu_s()
        self._stat0 = _cpu_times(self.proc, self.cpus)
        return self

    def __exit__(self, *exc) -> None:
        self.result = self.stop()

    def stop(self) -> HostLoad:
        seconds = time.perf_counter() - self._t0
        own = _own_cpu_s() - self._own0
        stat1 = _cpu_times(self.proc, self.cpus)
        ncpu = len(self.cpus) if self.cpus else (os.cpu_count() or 1)
        other = steal = None
        if self._stat0 is not None and stat1 is not None and stat1[2] > self._stat0[2]:
            tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
            busy_s = (stat1[0] - self._stat0[0]) / tick
            capacity = (stat1[2] - self._stat0[2]) / tick  # the CPUs' time in the window, from the kernel's counters
            other = round(min(1.0, max(0.0, (busy_s - own) / capacity)), 4)
            steal = round(min(1.0, max(0.0, (stat1[1] - self._stat0[1]) / tick / capacity)), 4)
        busy = other is not None and (other + (steal or 0.0)) >= BUSY_SHARE
        return HostLoad(seconds=round(seconds, 3), cpus=ncpu, load_average=_load_average(self.proc),
                        other_cpu_share=other, steal_share=steal, busy=busy)


def host_load_line(host_load: dict | None) -> str | None:
    """A report's ``host_load`` in words (:meth:`HostLoad.summary`), None when nothing was timed here."""
    return HostLoad(**host_load).summary() if host_load else None
