"""What the host CPU can do, read cheaply (no runtime imports)."""

from __future__ import annotations

import functools
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
