"""This machine as a device: host detection, hardware peaks (roofline estimates), and whether this machine is a
given profile's device."""

from __future__ import annotations

import logging
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.device.facts import ARM_PARTS, arm_core, cpu_model, cpuinfo
from compress.errors import ProfileError
from compress.host.cpu import usable_cpus
from compress.profiles.schema import (
    _ARCH_ALIASES,
    _ARM_KEEP,
    _CGROUP,
    _CPUINFO,
    _DEVICE_TREE_MODEL,
    _LIST_HINT,
    _SIMD_ALIASES,
    _X86_KEEP,
    HOST,
    HOST_BUDGETS,
    Arch,
    DeviceProfile,
)

log = logging.getLogger("compress.profiles.load")  # one logger for everything about profiles


# --------------------------------------------------------------------------------------------------
# Host detection
# --------------------------------------------------------------------------------------------------


def _read_cpuinfo() -> dict[str, str]:
    """First value of each key in /proc/cpuinfo ({} where there is none, e.g. macOS/Windows)."""
    try:
        text = _CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    return cpuinfo(text)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _host_memory_mb() -> int:
    import psutil

    total = psutil.virtual_memory().total
    for limit_file in (_CGROUP / "memory.max", _CGROUP / "memory" / "memory.limit_in_bytes"):
        limit = _read_int(limit_file)
        if limit and 0 < limit < total:
            total = limit
    return max(1, total // (1 << 20))


def _host_simd(arch: str, info: dict[str, str]) -> list[str]:
    if arch == Arch.x86_64:
        raw = info.get("flags", "").split()
        if not raw:
            log.warning("could not read CPU flags (no /proc/cpuinfo); host profile lists no SIMD extensions")
        present = set(raw)
        return [f for f in _X86_KEEP if f in present] + sorted(f for f in present if f.startswith("amx"))
    raw = info.get("features", "").split()
    present = {_SIMD_ALIASES.get(f, f) for f in raw}
    if not raw:
        present = {"neon"}  # AArch64 mandates Advanced SIMD
        if platform.system() == "Darwin":
            present.add("dotprod")  # every Apple silicon core (M1 = ARMv8.5-A) has it
    return [f for f in _ARM_KEEP if f in present]


def closest_builtin(arch: Arch | str, simd: list[str]) -> str:
    """The built-in profile whose budgets suit a machine with this arch and these SIMD flags."""
    if Arch(arch) is Arch.arm64:
        return "cpu-arm64-neon"
    if any("vnni" in f for f in simd):
        return "cpu-x86-avx512-vnni"
    if "avx2" not in simd:
        log.warning("this x86-64 CPU has no AVX2; judging it with cpu-x86-avx2 budgets, which it may not meet")
    return "cpu-x86-avx2"


def _host_data() -> dict[str, Any]:
    machine = platform.machine()
    arch = _ARCH_ALIASES.get(machine.lower())
    if arch is None:
        raise ProfileError(
            f"cannot describe this machine as a device profile: unsupported architecture {machine!r}",
            hint=f"profiles support x86_64 and arm64; pass a built-in profile name or a profile file ({_LIST_HINT})",
        )
    info = _read_cpuinfo()
    cores = usable_cpus()
    simd = _host_simd(arch, info)
    cpu = cpu_model(info, _read_text_quiet(_DEVICE_TREE_MODEL) or "")
    clock = _host_clock_ghz(info)
    fp32, int8 = derive_peaks(arch, simd, cores, clock, info)
    return {
        "name": HOST,
        "extends": HOST_BUDGETS,  # relative budgets only: they hold on this machine loaded or idle
        "description": f"This machine ({cpu or arch}, {cores} cores); relative budgets (speedup over the "
                       f"FP32 baseline timed alongside, retention, agreement, size, memory), no absolute latency.",
        "hardware": {
            "arch": arch,
            "cores": cores,
            "simd": simd,
            "vnni": any("vnni" in f for f in simd),
            "memory_mb": _host_memory_mb(),
            "cpu_model": cpu,
            "clock_ghz": clock,
            "peak_gflops_fp32": fp32,
            "peak_gops_int8": int8,
            "identify": None,  # the host is always itself
        },
        "runtime": {"name": "onnxruntime", "threads": cores},
    }


# --------------------------------------------------------------------------------------------------
# Peaks of this machine (roofline estimates) and "is this machine that device?"
# --------------------------------------------------------------------------------------------------

_DMI_PRODUCT = Path("/sys/class/dmi/id/product_name")
_CPUFREQ_MAX = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")


def _host_clock_ghz(info: dict[str, str]) -> float | None:
    """Core clock: the kernel's max cpufreq, else /proc/cpuinfo 'cpu MHz' (constant on most VMs)."""
    khz = _read_int(_CPUFREQ_MAX)
    if khz:
        return round(khz / 1e6, 3)
    try:
        mhz = float(info.get("cpu mhz", ""))
    except ValueError:
        return None
    return round(mhz / 1e3, 3) if mhz > 0 else None


def flops_per_cycle(arch: Arch | str, simd: list[str], info: dict[str, str] | None = None) -> tuple[int, int]:
    """FP32 FLOP/cycle/core and the INT8 op multiple over FP32, from the ISA (and vendor/family where known).

    x86: vector width × 2 (FMA) × 2 FMA pipes — AVX2+FMA 32; AVX-512 64 (Intel Xeon Gold/Platinum and
    AMD Zen 5 have two 512-bit FMA pipes), except AMD Zen 4 (family 25) and Intel client cores, whose
    AVX-512 runs at 32 (Zen 4 double-pumps 256-bit pipes). INT8: VNNI (vpdpbusd) does 4× the FP32
    rate, AVX2's vpmaddubsw path about 2×. Arm: 8 (Cortex-A72/A53), 16 (two 128-bit pipes: A76, A78,
    N1), 32 (four: Neoverse V1/V2); INT8 dot product (sdot/udot) 4×, plain NEON (smlal) 2×.
    Peaks are what the hardware can issue, not what a runtime reaches: estimates multiply them by an
    efficiency calibrated on a machine we measure (see :mod:`compress.estimates.roofline`).
    """
    info = info or {}
    if Arch(_ARCH_ALIASES.get(str(arch).lower(), arch)) is Arch.arm64:
        part = info.get("cpu part", "").lower()
        flops = ARM_PARTS.get(part, ("", None))[1] or 16  # the core's, where the one table knows it
        return flops, (4 if "dotprod" in simd else 2)
    vendor = info.get("vendor_id", "")
    family = info.get("cpu family", "")
    if "avx512f" in simd:
        zen4 = vendor == "AuthenticAMD" and family == "25"
        client = "core(tm)" in info.get("model name", "").lower()
        flops = 32 if (zen4 or client) else 64
    elif "avx2" in simd and "fma" in simd:
        flops = 32
    elif "avx" in simd:
        flops = 16
    else:
        flops = 8
    vnni = any("vnni" in f for f in simd)
    return flops, (4 if vnni else 2 if "avx2" in simd else 1)


def derive_peaks(arch: Arch | str, simd: list[str], cores: int, clock_ghz: float | None,
                 info: dict[str, str] | None = None) -> tuple[float | None, float | None]:
    """(peak GFLOP/s FP32, peak GOP/s INT8) = cores × GHz × FLOP/cycle; (None, None) without a clock."""
    if not clock_ghz:
        return None, None
    per_cycle, int8_multiple = flops_per_cycle(arch, simd, info)
    fp32 = round(cores * clock_ghz * per_cycle, 1)
    return fp32, round(fp32 * int8_multiple, 1)


def _serverless_platform() -> str | None:
    """The serverless platform this process runs in, from the variables the platform sets."""
    if os.environ.get("AWS_LAMBDA_FUNCTION_NAME") or os.environ.get("AWS_EXECUTION_ENV", "").startswith("AWS_Lambda"):
        return "AWS Lambda"
    if os.environ.get("K_SERVICE") and os.environ.get("K_REVISION"):
        return "Google Cloud Run"
    return None


def _read_text_quiet(path: Path) -> str | None:
    try:
        text = path.read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None
    return text or None


def machine_model() -> str:
    """This machine's model string, which ``hardware.identify`` regexes are matched against.

    The non-empty parts of, joined with '; ': the serverless platform (``AWS Lambda`` when
    AWS_LAMBDA_FUNCTION_NAME is set, ``Google Cloud Run`` with K_SERVICE and K_REVISION), the board
    (``/proc/device-tree/model``, e.g. ``Raspberry Pi 5 Model B Rev 1.0``), the DMI product name
    (e.g. ``NUC12WSHi5``, ``c7g.large``), and the CPU (``model name`` from /proc/cpuinfo, or the Arm
    core name from its ``CPU part``, e.g. ``Neoverse-V1``).
    """
    info = _read_cpuinfo()
    parts = [
        _serverless_platform(),
        _read_text_quiet(_DEVICE_TREE_MODEL),
        _read_text_quiet(_DMI_PRODUCT),
        info.get("model name") or info.get("cpu model") or info.get("hardware"),
    ]
    parts.append(arm_core(info))
    out: list[str] = []
    for p in parts:
        if p and p not in out:
            out.append(p)
    return "; ".join(out) or platform.processor() or platform.machine()


def host_arch() -> Arch | None:
    """This machine's architecture, or None when profiles cannot describe it."""
    arch = _ARCH_ALIASES.get(platform.machine().lower())
    return Arch(arch) if arch else None


@dataclass(frozen=True)
class DeviceMatch:
    """Whether the machine running the command is the profiled device (so its timings are the device's).

    ``how``: ``host`` (the detected host profile), ``class`` (a profile for a class of CPUs, no
    ``identify``, same arch: measured on this machine's CPU), ``identified`` (``identify`` matched),
    ``arch-mismatch`` or ``not-identified`` (this machine is not the device: estimate instead).
    """

    is_device: bool
    how: str
    reason: str
    host_arch: str | None
    host_model: str

    def as_dict(self) -> dict[str, Any]:
        return {"is_device": self.is_device, "how": self.how, "reason": self.reason,
                "host_arch": self.host_arch, "host_model": self.host_model}


def match_device(profile: DeviceProfile, *, model: str | None = None) -> DeviceMatch:
    """Is this machine ``profile``'s device? The arch must match, then ``identify`` (if any) must match."""
    arch = host_arch()
    shown = model if model is not None else machine_model()
    arch_s = arch.value if arch else platform.machine()
    if profile.source == "detected":
        return DeviceMatch(True, "host", "the host profile describes this machine", arch_s, shown)
    want = profile.hardware.arch
    if arch is not want:
        return DeviceMatch(False, "arch-mismatch",
                           f"this machine is {arch_s}, profile {profile.name} is {want.value}", arch_s, shown)
    pattern = profile.hardware.identify
    if pattern is None:
        return DeviceMatch(True, "class",
                           f"{profile.name} describes a class of {want.value} CPUs: measured on this machine's CPU "
                           f"({shown})", arch_s, shown)
    if re.search(pattern, shown, flags=re.IGNORECASE):
        return DeviceMatch(True, "identified", f"this machine ({shown}) matches {profile.name}'s identify "
                           f"/{pattern}/", arch_s, shown)
    return DeviceMatch(False, "not-identified", f"this machine ({shown}) does not match {profile.name}'s identify "
                       f"/{pattern}/", arch_s, shown)


# --------------------------------------------------------------------------------------------------
# Public loading API
# --------------------------------------------------------------------------------------------------
