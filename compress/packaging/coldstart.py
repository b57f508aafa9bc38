"""Cold start of a bundle in fresh processes on this machine, under the function's memory and vCPUs."""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any

from compress.device.facts import cpu_model
from compress.errors import ConfigError, StageError
from compress.packaging.config import (
    _ARCH,
    _FORBIDDEN_IMPORTS,
    COLD_START_TIMEOUT_S,
    IMPORT_NAMES,
    MB,
    PackageConfig,
    first_request,
)
from compress.packaging.wheels import _pip_download, _pip_download_cmd, _unpack_wheel
from compress.progress import Progress, silent

log = logging.getLogger("compress.packaging.bundle")  # the verb's logger


# ----------------------------------------------------------------------------------------------------
# Cold start under the function's limits
# ----------------------------------------------------------------------------------------------------

#: the program each cold-start run executes, a file of the device code (compress/device/coldstart_driver.py)
DRIVER = "coldstart_driver.py"


def _cold_start(zip_path: Path, work: Path, own: dict[str, str], function: dict[str, Any], config: PackageConfig,
                pins: dict[str, str], target_arch: str, target_python: str, entry: str,
                progress: Progress = silent, preprocess=None, request: dict[str, Any] | None = None) -> dict[str, Any]:
    """Unpack the zip, run the handler in fresh processes under the function's limits; phases and medians.
    ``request``: the event each run sends (default: :func:`first_request` of ``preprocess``; a generator's: a
    prompt and the new tokens, so the first request is a whole generation)."""
    host_arch = _ARCH.get(platform.machine().lower(), platform.machine())
    host_python = f"{sys.version_info.major}.{sys.version_info.minor}"
    native = config.download and host_arch == target_arch and host_python == target_python
    work = Path(work).resolve()  # the handler runs with cwd=task: a relative path would be joined twice
    task = work / "run" / "task"
    task.mkdir(parents=True)
    notes: list[str] = []
    with zipfile.ZipFile(zip_path) as zf:
        if native:
            zf.extractall(task)
        else:  # our files only; the target's wheels cannot run here
            for name in zf.namelist():
                if name in own:
                    zf.extract(name, task)
    deps_path: list[str] = []
    if native:
        deps = {"source": "the bundle's own wheels", "stand_in": False}
    else:
        why = ("dependencies not downloaded (--no-download)" if not config.download else
               f"the target's wheels are for {target_arch} / CPython {target_python}, this host is "
               f"{host_arch} / CPython {host_python}")
        deps = None
        if config.download:
            req = work / "run" / "host-requirements.txt"
            req.write_text("".join(f"{n}=={v}\n" for n, v in pins.items()), encoding="utf-8")
            try:
                cmd = _pip_download_cmd(req, work / "run" / "host-wheels", [], None)
                progress({"phase": "host-wheels", "label": "downloading this host's wheels for the cold start"})
                host_dir = work / "run" / "host-deps"
                host_dir.mkdir()
                for whl in _pip_download(cmd, config.pip_timeout_s, f"this host ({host_arch}, CPython {host_python})"):
                    _unpack_wheel(whl, host_dir)
                deps_path = [str(host_dir)]
                deps = {"source": f"the same pinned versions' wheels for this host ({host_arch}, CPython "
                                  f"{host_python}), unpacked fresh", "stand_in": True, "why": why}
            except StageError as e:
                log.warning("could not download this host's wheels (%s); using this environment's packages", e)
        if deps is None:
            deps_path = _site_dirs(tuple(IMPORT_NAMES.get(n, n) for n in pins))
            deps = {"source": f"this environment's installed packages ({', '.join(deps_path)})", "stand_in": True,
                    "why": why}
            notes.append(f"cold start used this environment's installed {'/'.join(pins)}, whose "
                         "compiled bytecode is cached: imports are faster than from a fresh bundle")
        notes.append(f"cold start measured on this host ({host_arch}, CPython {host_python}) as a stand-in: {why}")
    driver = work / "run" / DRIVER
    driver.write_bytes((resources.files("compress.device") / DRIVER).read_bytes())
    module, _, func = entry.rpartition(".")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work / "run"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": os.pathsep.join([str(task), *deps_path]),
        "PYTHONDONTWRITEBYTECODE": "1",  # like a read-only /var/task: every run compiles the bundle's modules
        "PYTHONNOUSERSITE": "1",
        "LAMBDA_TASK_ROOT": str(task),
    }
    # -S: no site-packages of this environment, only the bundle (and the stand-in deps) on the path
    request = request if request is not None else first_request(preprocess)
    modules = [IMPORT_NAMES.get(n, n) for n in pins]
    cmd = [sys.executable, "-S", str(driver), str(task), module, func, json.dumps(request), json.dumps(modules)]
    runs: list[dict[str, Any]] = []
    limits_info: dict[str, Any] = {}
    error = None
    oom = False
    progress({"phase": "cold-start", "done": 0, "total": config.cold_start_runs})
    for i in range(config.cold_start_runs):
        with _Limits(function["memory_mb"], function["vcpus"], name=f"run{i}") as lim:
            t_spawn = time.time()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(task),
                                      preexec_fn=lim.preexec, timeout=COLD_START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise StageError(f"the bundle's handler did not answer within {COLD_START_TIMEOUT_S} s in the "
                                 "cold-start run", hint="rerun with -v; --no-cold-start skips the check") from None
            limits_info = lim.describe()
            oom = lim.oom_killed()
        if proc.returncode != 0:
            log.debug("cold-start run stderr:\n%s", proc.stderr)
            if oom or (proc.returncode == -signal.SIGKILL and lim.memory_dir is not None):
                oom = True
                error = f"the handler was killed by the {function['memory_mb']} MB memory limit (out of memory)"
                break
            last = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
            raise StageError(f"the bundle's handler failed in the cold-start run (exit {proc.returncode}): {last[0]}",
                             hint="rerun with -v for its output; --no-cold-start skips the check")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["interpreter_start_ms"] = max(0.0, (r["t_start"] - t_spawn) * 1e3)
        r["total_ms"] = (r["t_end"] - t_spawn) * 1e3
        runs.append(r)
        progress({"phase": "cold-start", "done": i + 1, "total": config.cold_start_runs})
    phases = ("interpreter_start_ms", "imports_ms", "session_ms", "first_inference_ms", "total_ms", "peak_rss_mb")
    median = {p: round(statistics.median(r[p] for r in runs), 2) for p in phases} if runs else {}
    forbidden = sorted({m for r in runs for m in _FORBIDDEN_IMPORTS if m in r["loaded_top_level"]})
    if forbidden:
        notes.append(f"the handler process imported {', '.join(forbidden)}: the bundle does not need it")
    if limits_info.get("cpu_note"):
        notes.append(limits_info["cpu_note"])
    if limits_info.get("memory_note"):
        notes.append(limits_info["memory_note"])
    return {
        "runs": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()
                  if k not in ("loaded_top_level", "t_start", "t_end")} for r in runs],
        "median": median,
        "n": len(runs),
        "error": error,
        "oom": oom,
        "dependencies": deps,
        "limits": limits_info,
        "first_request": {"image": f"a {len(request['image'])}-character base64 PNG"} if "image" in request else request,
        "imported_top_level": sorted({m for r in runs for m in r["loaded_top_level"]}),
        "forbidden_imports": forbidden,
        "measured_on": {"host": platform.node(), "arch": host_arch, "python": platform.python_version(),
                        "cpu": cpu_model(), "load_avg_1m": _load_avg(),
                        "host_cores": os.cpu_count()},
        "command": "python -S <driver> (imports, then `import handler`, then one invocation with the first request"
                   f"{': one generation' if 'prompt' in request else ''})",
        "notes": notes,
    }


def _load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _site_dirs(modules: tuple[str, ...]) -> list[str]:
    import importlib.util

    out: list[str] = []
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin:
            raise ConfigError(f"{name} is not installed here: no stand-in for the cold start",
                              hint=f"pip install {name}, or skip the measurement with --no-cold-start")
        site = str(Path(spec.origin).resolve().parent.parent)
        if site not in out:
            out.append(site)
    return out


def _own_cgroups() -> dict[str, Path]:
    """This process' cgroup directories by controller ('memory', 'cpu'; v2: both from the unified tree)."""
    try:
        cgroup_lines = Path("/proc/self/cgroup").read_text().splitlines()
        mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return {}
    mounts: list[tuple[str, str, str, set[str]]] = []  # (fstype, root, mountpoint, options)
    for line in mountinfo:
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        f, r = left.split(), right.split()
        if len(f) >= 5 and len(r) >= 3 and r[0] in ("cgroup", "cgroup2"):
            mounts.append((r[0], f[3], f[4], set(r[2].split(","))))
    out: dict[str, Path] = {}
    for line in cgroup_lines:
        hid, _, rest = line.partition(":")
        ctrls, _, path = rest.partition(":")
        for fstype, mroot, mpoint, opts in mounts:
            v2 = hid == "0" and ctrls == "" and fstype == "cgroup2"
            wanted = [c for c in ("memory", "cpu") if c in ctrls.split(",")] if fstype == "cgroup" else []
            if not v2 and not (wanted and set(wanted) <= opts):
                continue
            rel = os.path.relpath(path, mroot) if path.startswith(mroot) else path.lstrip("/")
            d = Path(mpoint) / ("" if rel == "." else rel)
            if not d.is_dir():
                continue
            if v2:
                try:
                    ctl = set((d / "cgroup.controllers").read_text().split())
                except OSError:
                    ctl = set()
                for c in ("memory", "cpu"):
                    if c in ctl:
                        out.setdefault(c, d)
                out.setdefault("v2", d)
            else:
                for c in wanted:
                    out[c] = d
    return out


class _Limits:
    """A child process' CPU and memory limits: cgroups when this process may create them, else affinity only.

    CPU: affinity to ceil(vCPUs) of this process' cores; a CFS quota of exactly ``vcpus`` on top when
    a cpu cgroup can be made (that is what emulates a fractional vCPU). Memory: a memory cgroup
    limited to the function memory (swap off for it). RLIMIT_AS is not used: it caps *virtual*
    memory, which onnxruntime and glibc reserve far beyond what they touch (a 1-thread session of a
    23 MB INT8 MiniLM peaks at ~222 MB virtual for ~90 MB resident), so it would kill functions that
    fit; without a cgroup the peak resident memory is judged against the function memory afterwards.
    """

    def __init__(self, memory_mb: int, vcpus: float, name: str) -> None:
        self.memory_mb = memory_mb
        self.vcpus = vcpus
        self.name = f"edgecompress-{os.getpid()}-{name}"
        try:
            self.available = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            self.available = []
        self.cores = self.available[: max(1, math.ceil(vcpus - 1e-9))] if self.available else []
        self.dirs: list[Path] = []
        self.procs: list[Path] = []
        self.memory_dir: Path | None = None
        self.memory_v2 = False
        self.cpu_quota = False

    def __enter__(self) -> _Limits:
        own = _own_cgroups()
        if "memory" in own:
            d = self._make(own["memory"])
            v2 = own.get("v2") == own["memory"]
            if d is not None and self._write(d, "memory.max" if v2 else "memory.limit_in_bytes",
                                             str(self.memory_mb * MB)):
                self.memory_dir, self.memory_v2 = d, v2
                self._write(d, "memory.swap.max" if v2 else "memory.memsw.limit_in_bytes",
                            "0" if v2 else str(self.memory_mb * MB))
                if not v2:
                    self._write(d, "memory.swappiness", "0")
                self.procs.append(d / "cgroup.procs")
        if "cpu" in own:
            d = self._make(own["cpu"])  # the same directory as memory's on a unified (v2) hierarchy
            if d is not None:
                v2 = own.get("v2") == own["cpu"]
                period = 100_000
                quota = max(1000, int(round(self.vcpus * period)))
                ok = (self._write(d, "cpu.max", f"{quota} {period}") if v2 else
                      self._write(d, "cpu.cfs_period_us", str(period)) and self._write(d, "cpu.cfs_quota_us", str(quota)))
                if ok:
                    self.cpu_quota = True
                    if d / "cgroup.procs" not in self.procs:
                        self.procs.append(d / "cgroup.procs")
        return self

    def _make(self, parent: Path) -> Path | None:
        d = parent / self.name
        if d in self.dirs:
            return d
        try:
            d.mkdir()
        except OSError as e:
            log.debug("cannot create cgroup %s: %s", d, e)
            return None
        self.dirs.append(d)
        return d

    @staticmethod
    def _write(d: Path, name: str, value: str) -> bool:
        try:
            (d / name).write_text(value)
            return True
        except OSError as e:
            log.debug("cannot write %s to %s: %s", value, d / name, e)
            return False

    def preexec(self) -> None:  # runs in the child between fork and exec
        pid = str(os.getpid())
        for procs in self.procs:
            with open(procs, "w") as f:
                f.write(pid)
        if self.cores:
            os.sched_setaffinity(0, self.cores)

    def oom_killed(self) -> bool:
        if self.memory_dir is None:
            return False
        name = "memory.events" if self.memory_v2 else "memory.oom_control"
        try:
            text = (self.memory_dir / name).read_text()
        except OSError:
            return False
        m = re.search(r"oom_kill (\d+)", text)
        return bool(m and int(m.group(1)) > 0)

    def describe(self) -> dict[str, Any]:
        n = len(self.cores)
        frac = abs(self.vcpus - round(self.vcpus)) > 1e-6
        info: dict[str, Any] = {
            "vcpus": self.vcpus,
            "affinity": self.cores,
            "host_cores_available": len(self.available),
            "cpu_quota": round(self.vcpus, 3) if self.cpu_quota else None,
            "memory_limit_mb": self.memory_mb if self.memory_dir is not None else None,
            "memory_mechanism": ("cgroup v2 memory.max" if self.memory_v2 else "cgroup v1 memory.limit_in_bytes")
            if self.memory_dir is not None else None,
        }
        cpu = f"CPU affinity to {n} core{'s' if n != 1 else ''} ({', '.join(map(str, self.cores)) or 'unknown'})"
        if self.cpu_quota:
            cpu += f" + CFS quota {self.vcpus:.2f} CPU"
        info["cpu_mechanism"] = cpu
        if math.ceil(self.vcpus - 1e-9) > len(self.available) and self.available:
            info["cpu_note"] = (f"the function gets {self.vcpus:g} vCPUs but this host offers "
                                f"{len(self.available)} cores: measured with {len(self.available)}")
        elif frac and not self.cpu_quota:
            info["cpu_note"] = (f"{self.vcpus:g} vCPUs cannot be emulated by CPU affinity (whole cores only) and no "
                                f"cpu cgroup could be created: measured with {n} full core(s), which is optimistic")
        elif frac:
            info["cpu_note"] = f"{self.vcpus:g} vCPUs emulated with a CFS quota (the CPU time per period the platform grants)"
        if self.memory_dir is None:
            info["memory_note"] = (f"no memory cgroup could be created here: the {self.memory_mb} MB limit was not "
                                   "enforced; the peak resident memory is judged against it instead")
        return info

    def __exit__(self, *exc: object) -> None:
        for d in reversed(self.dirs):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.02)
            else:
                log.debug("could not remove cgroup %s", d)
