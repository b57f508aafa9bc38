"""The host facts, read the same way on this machine, on a board and in a serverless function: the CPU's name and the
one table of Arm cores, file hashes, peak memory, and a fresh process's cold-start record. Part of the code that runs
on a device (with :mod:`compress.device.shipped`): shipped as ``edgecompress_facts.py`` beside the remote runner and
inside every serverless bundle, and edgecompress reads this machine with the same functions. Standard library only;
Python 3.8+: it must import on a bare board and in a serverless function.
"""

import hashlib
import platform
import sys

#: Arm Ltd cores (``CPU implementer`` 0x41) by /proc/cpuinfo ``CPU part``, as the Linux kernel
#: (arch/arm64/include/asm/cputype.h) and util-linux (sys-utils/lscpu-arm.c) number them: the core's name and its
#: FP32 FLOP/cycle/core where known (128-bit FMA pipes x 4 lanes x 2; Cortex-A72 has two 64-bit-wide FMA paths: 8,
#: per vfpbench), else None (roofline estimates then assume 16). The only table of Arm parts in edgecompress.
ARM_PARTS = {
    "0xc07": ("Cortex-A7", None), "0xc09": ("Cortex-A9", None), "0xc0f": ("Cortex-A15", None),
    "0xd03": ("Cortex-A53", 8), "0xd04": ("Cortex-A35", None), "0xd05": ("Cortex-A55", 8),
    "0xd07": ("Cortex-A57", None), "0xd08": ("Cortex-A72", 8), "0xd09": ("Cortex-A73", None),
    "0xd0a": ("Cortex-A75", None), "0xd0b": ("Cortex-A76", 16), "0xd0c": ("Neoverse-N1", 16),
    "0xd0d": ("Cortex-A77", None), "0xd40": ("Neoverse-V1", 32), "0xd41": ("Cortex-A78", 16),
    "0xd42": ("Cortex-A78AE", 16), "0xd44": ("Cortex-X1", 32), "0xd46": ("Cortex-A510", None),
    "0xd47": ("Cortex-A710", None), "0xd48": ("Cortex-X2", None), "0xd49": ("Neoverse-N2", 16),
    "0xd4b": ("Cortex-A78C", None), "0xd4d": ("Cortex-A715", None), "0xd4e": ("Cortex-X3", None),
    "0xd4f": ("Neoverse-V2", 32), "0xd80": ("Cortex-A520", None), "0xd81": ("Cortex-A720", None),
    "0xd82": ("Cortex-X4", None), "0xd84": ("Neoverse-V3", None), "0xd8e": ("Neoverse-N3", None),
}


def read_text(path):
    """A small file's text, '' when it cannot be read (/proc and /sys files where there are none)."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def cpuinfo(text=None):
    """The first value of each key of /proc/cpuinfo (``text``), keys lower-cased; {} where there is none."""
    fields = {}
    for line in (read_text("/proc/cpuinfo") if text is None else text).splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def arm_core(fields):
    """The Arm core's name from cpuinfo ``fields`` (implementer 0x41 and its ``CPU part``), else None."""
    if fields.get("cpu implementer", "").lower() != "0x41":
        return None
    return ARM_PARTS.get(fields.get("cpu part", "").lower(), (None, None))[0]


def cpu_model(fields=None, board=None):
    """The CPU's name, the most informative first: cpuinfo's ``model name`` (x86), ``cpu model``, ``Hardware`` (an
    Arm board's SoC), the Arm core from its ``CPU part``, the board (``/proc/device-tree/model``), macOS's brand
    string, then the platform's guess. ``fields``: :func:`cpuinfo`'s (read here when None); ``board``: the
    device-tree model (read here when None)."""
    fields = cpuinfo() if fields is None else fields
    for key in ("model name", "cpu model", "hardware"):
        if fields.get(key):
            return fields[key]
    core = arm_core(fields)
    if core:
        return core
    board = read_text("/proc/device-tree/model").strip("\x00 \n") if board is None else board
    if board:
        return board
    if sys.platform == "darwin":
        import subprocess

        try:
            return subprocess.check_output(["sysctl", "-n", "machdep.cpu.brand_string"], text=True).strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def sha256_file(path, chunk=1 << 20):
    """The sha256 of a file, read in ``chunk``-byte blocks (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def peak_rss_mb():
    """Peak resident memory of this process: Linux VmHWM (reset at exec, unlike ru_maxrss, which a child inherits
    from the parent that spawned it), else ru_maxrss (bytes on macOS, KiB elsewhere); 0.0 when neither is readable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0
    except (ImportError, OSError):
        return 0.0


def cold_start_record(runtime, t_start, t_import, t_session, t_first, rss_before):
    """The fresh process's cold start, as the probe (here) and the remote runner (on the device) report it: the
    phases in ms (``t_start``: ``time.perf_counter()`` when the process began its work) and the peak memory."""
    import time

    peak = peak_rss_mb()
    return {
        "runtime": runtime,
        "import_ms": round(t_import * 1e3, 2),
        "session_create_ms": round(t_session * 1e3, 2),
        "first_inference_ms": round(t_first * 1e3, 2),
        "cold_start_ms": round((t_import + t_session + t_first) * 1e3, 2),
        "in_process_total_ms": round((time.perf_counter() - t_start) * 1e3, 2),
        "peak_rss_mb": round(peak, 2),
        "baseline_rss_mb": round(rss_before, 2),
        "peak_rss_growth_mb": round(peak - rss_before, 2),
        "torch_imported": "torch" in sys.modules,
    }
