"""Where the benchmarks' things live, the facts of the host they ran on, and how their figures are written:
``results/<name>.json`` with the host, the installed versions and the command that reruns it; phases that save the
file after each one (a machine lent for minutes loses only the phase it was in); builds that resume."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  #: the repository
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"  #: the figures the docs cite
CACHE = BENCH / ".cache"  #: models, data subsets and artifacts the scripts build (kept between runs)
SHARED = ROOT.parent / "shared"  #: data and models beside the checkout (offline)


def host_and_versions() -> dict:
    """``host`` (CPU model, Python) and ``versions`` (installed backends) entries for a results JSON."""
    from compress.reports.doctor import environment_report

    env = environment_report()
    return {
        "host": {"cpu": env["cpu"], "python": platform.python_version()},
        "versions": {r["package"]: r["version"] for r in env["backends"] if r["version"]},
    }


def cuda_machine() -> dict:
    """The host as a GPU benchmark reports it: cores, Python, torch, transformers, CUDA and, where one is visible,
    the GPU (name, memory, capability, multiprocessors, driver)."""
    import subprocess

    import torch
    import transformers

    info = {"cpu_cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_mb=p.total_memory // 2**20, capability=f"{p.major}.{p.minor}",
                    multiprocessors=p.multi_processor_count)
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def command(argv: list[str] | None = None) -> str:
    """The command that reruns this script: ``python benchmarks/<wing>/<script>.py`` and its arguments."""
    argv = sys.argv if argv is None else argv
    script = Path(argv[0]).resolve()
    shown = script.relative_to(ROOT).as_posix() if script.is_relative_to(ROOT) else str(argv[0])
    return shlex.join(["python", shown, *argv[1:]])


def write_results(out: Path | str, result: dict[str, Any], *, facts: bool = True,
                  argv: list[str] | None = None) -> Path:
    """Write ``result`` as JSON to ``out`` (a path, or a bare name: ``results/<name>.json``), with ``command`` (the
    command that reruns it) and, with ``facts``, ``host`` and ``versions`` (:func:`host_and_versions`) where the
    result does not set them. Returns the path."""
    path = Path(out)
    if path.suffix != ".json" and len(path.parts) == 1:
        path = RESULTS / f"{path}.json"
    full = {"command": command(argv), **(host_and_versions() if facts else {}), **result}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(full, indent=2, default=plain) + "\n", encoding="utf-8")
    return path


def plain(value: Any) -> Any:
    """What JSON cannot write, as a results file keeps it: a NumPy scalar as its number, an array as its list,
    anything else as its ``str``."""
    if hasattr(value, "tolist") and type(value).__module__ == "numpy":
        return value.tolist()
    return str(value)


def cached_step(label: str, out: Path, make) -> Path:
    """``make()`` builds the artifact at ``out`` unless one is there (its manifest): a benchmark's build is resumable."""
    if (out / "manifest.json").is_file():
        print(f"cached: {label} ({out})", flush=True)
        return out
    t0 = time.perf_counter()
    make()
    print(f"built: {label} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


class Phases:
    """A benchmark's phases on a machine lent for minutes: the result file is written after every phase, a phase
    that fails costs only its own figures (its traceback printed, its error in ``result["errors"]``), and none starts
    after ``budget_s`` seconds."""

    def __init__(self, result: dict, out: Path, budget_s: float, tag: str, t0: float | None = None):
        self.result, self.out, self.budget_s, self.tag = result, out, budget_s, tag
        self.t0 = time.perf_counter() if t0 is None else t0  # the budget counts from t0 (perf_counter)
        result.setdefault("errors", [])

    def log(self, msg: str) -> None:
        print(f"[{self.tag}] {msg}", file=sys.stderr, flush=True)

    def save(self) -> None:
        self.result["seconds"] = round(time.perf_counter() - self.t0, 1)
        write_results(self.out, self.result, facts=False)

    def run(self, label: str, fn):
        """``fn()``'s value, or None where it failed or the budget was spent."""
        if time.perf_counter() - self.t0 > self.budget_s:
            self.log(f"skipped {label}: over --budget-s")
            self.result["errors"].append(f"{label}: skipped (time budget)")
            return None
        self.log(f"{label} ...")
        try:
            value = fn()
            self.log(f"{label}: {json.dumps(value, default=str)[:400]}")
            return value
        except Exception as exc:  # noqa: BLE001 - one phase failing must not lose the others' figures
            traceback.print_exc()
            self.result["errors"].append(f"{label}: {type(exc).__name__}: {exc}"[:2000])
            return None
        finally:
            self.save()

    def done(self) -> None:
        self.save()
        self.log(f"wrote {self.out} in {self.result['seconds']} s; errors: {self.result['errors'] or 'none'}")
