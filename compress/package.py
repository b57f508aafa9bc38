"""``package``: a deployable serverless bundle (a zip) for an ONNX artifact, judged against the platform.

The bundle, as a zip deployment of AWS Lambda (and similar platforms) expects it, has everything at
the top level::

    handler.py               minimal handler: onnxruntime + tokenizers + numpy, session at module scope
    edgecompress_device.py   pooling and session options, the same file the remote runner ships (compress/device.py)
    model_config.json        what the handler needs: task, labels, post-processing, inputs, threads, ...
    model/                   the model file(s), tokenizer.json, tokenizer_config.json, manifest.json
    requirements.txt         exact pins (==) of the direct dependencies and, when resolved, their closure
    edgecompress-bundle.json the resolved packaging configuration and where every wheel came from
    onnxruntime/ numpy/ ...  the dependency wheels for the *target* platform, unpacked

Sizes are the real ones: the target's wheels are resolved with ``pip download --only-binary=:all:
--platform TAG --python-version X.Y --implementation cp`` (the whole dependency closure, every
package it pulls in counted and listed), unpacked, and zipped with deflate. The unzipped size is the
sum of the file sizes. Each dependency is marked with whether the handler imported it in the
cold-start run.

Cold start is measured in fresh processes on this machine from an unpacked copy of the zip, under
the function's memory (a memory cgroup when one can be created) and vCPUs (CPU affinity to
ceil(vCPUs) cores, plus a CFS quota for the fraction when a cpu cgroup can be created). When the
target's wheels cannot run here (another architecture or Python), the same pinned versions for this
host stand in, and the report says so.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from compress import __version__
from compress.artifact import (
    Artifact,
    Format,
    Task,
    check_output,
    load_artifact,
    staged_dir,
)
from compress.cpu import cpu_model
from compress.errors import ArtifactError, ConfigError, OutputExistsError, StageError
from compress.budgets import BudgetResult, BudgetStatus, verdict_of

log = logging.getLogger(__name__)

__all__ = [
    "PackageConfig",
    "Contributor",
    "PackageReport",
    "package",
    "write_package_report",
    "report_paths",
    "render_package_report",
    "package_report_markdown",
    "DIRECT_DEPENDENCIES",
]

REPORT_SCHEMA_VERSION = 1
MB = 1024 * 1024
DIRECT_DEPENDENCIES = ("onnxruntime", "tokenizers", "numpy")
TOP_CONTRIBUTORS = 10
COLD_START_TIMEOUT_S = 600
MODEL_DIR = "model"
BUNDLE_INFO = "edgecompress-bundle.json"
# A zip entry's timestamp: fixed, so the same inputs give the same bytes (SOURCE_DATE_EPOCH wins).
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_FIRST_TEXT = "the bundle starts cold and answers its first request."
_FORBIDDEN_IMPORTS = ("torch", "transformers", "optimum", "compress")
_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


class PackageConfig(BaseModel):
    """Settings of ``edgecompress package``."""

    model_config = ConfigDict(extra="forbid")

    profile: str = Field(
        description="Serverless device profile (built-in name such as aws-lambda-arm64, or a YAML path); "
                    "it must have a serverless: section."
    )
    memory_mb: int | None = Field(
        None, gt=0,
        description="Function memory in MB to measure under (default: the profile's serverless.memory_mb); "
                    "sets the vCPUs through the profile's memory_to_vcpu mapping.",
    )
    download: bool = Field(
        True,
        description="Resolve and bundle the target's dependency wheels with pip download; off: model and "
                    "handler only, dependency sizes not measured.",
    )
    cold_start: bool = Field(True, description="Measure cold start and peak memory in fresh processes.")
    cold_start_runs: int = Field(3, ge=1, le=25, description="Fresh processes to time; the median is judged.")
    pins: dict[str, str] = Field(
        default_factory=dict,
        description="Exact versions to pin instead of the installed ones, e.g. {onnxruntime: 1.20.1}.",
    )
    max_batch_size: int = Field(32, gt=0, description="Texts per model run inside the handler.")
    pip_timeout_s: float = Field(900, gt=0, description="Give up on one pip download after this many seconds.")

    @field_validator("pins")
    @classmethod
    def _known_pins(cls, value: dict[str, str]) -> dict[str, str]:
        out = {}
        for name, version in value.items():
            key = _canonical(name)
            if key not in DIRECT_DEPENDENCIES:
                raise ValueError(f"cannot pin {name!r}: the bundle's direct dependencies are "
                                 f"{', '.join(DIRECT_DEPENDENCIES)}")
            if not re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version.strip()):
                raise ValueError(f"{name}: {version!r} is not an exact version (e.g. 1.20.1)")
            out[key] = version.strip()
        return out


class Contributor(BaseModel):
    """One thing that takes space in the bundle: a dependency distribution or a file of our own."""

    name: str = Field(description="Distribution name, or the bundle file's path.")
    kind: str = Field(description="'dependency', 'model', 'tokenizer' or 'handler'.")
    version: str | None = None
    unzipped_bytes: int
    zipped_bytes: int = Field(description="Compressed size of its entries inside the zip.")
    files: int
    top_level: list[str] = Field(default_factory=list, description="Top-level folders/files it puts in the bundle.")
    imported: bool | None = Field(
        None, description="Whether the handler's cold-start run imported it (None: not measured / not a package)."
    )
    wheel: str | None = None


class PackageReport(BaseModel):
    schema_version: int = REPORT_SCHEMA_VERSION
    verdict: str = Field(description="pass, fail (a budget failed), or unverified (none failed, some not measured).")
    budgets: list[BudgetResult]
    bundle: dict[str, Any]
    contributors: list[Contributor]
    dependencies: dict[str, Any]
    function: dict[str, Any]
    cold_start: dict[str, Any] | None
    artifact: dict[str, Any]
    profile: dict[str, Any]
    environment: dict[str, Any]
    notes: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def top_contributors(self, n: int = TOP_CONTRIBUTORS) -> list[Contributor]:
        return sorted(self.contributors, key=lambda c: -c.unzipped_bytes)[:n]


# ----------------------------------------------------------------------------------------------------
# The entry point
# ----------------------------------------------------------------------------------------------------


def package(artifact: Artifact | Path | str, out: Path | str, config: PackageConfig, *, force: bool = False) -> PackageReport:
    """Build the bundle ``out`` (a .zip) for ``artifact`` on ``config.profile`` and judge it.

    The zip is written even when a budget fails (the report says so): a bundle over the direct-upload
    limit can still be deployed through object storage, layers or a container image. Raises only
    for bad input (profile, artifact, existing output) and for a dependency resolution that fails.
    """
    from compress.profiles import load_profile

    t_start = time.perf_counter()
    out = Path(out)
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists", hint="choose another --out or pass --force to replace it")
    if out.is_dir():
        raise OutputExistsError(f"{out} is a directory", hint="--out names the zip file to write, e.g. bundle.zip")
    profile = load_profile(config.profile)
    sl = profile.serverless
    if sl is None:
        raise ConfigError(
            f"profile {profile.name} has no serverless: section (platform limits, memory, wheels platform)",
            hint="use a serverless profile such as aws-lambda-arm64 (`edgecompress profiles list`) or add serverless: to yours",
        )
    art = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
    if art.format is not Format.onnx:
        raise ConfigError(
            f"{art.path}: {art.format} artifacts cannot be packaged: the serverless handler runs ONNX Runtime",
            hint="package an ONNX artifact (`edgecompress export TEACHER --out DIR`, then quantize it)",
        )
    if not (art.path / "tokenizer.json").is_file():
        raise ArtifactError(f"{art.path}: no tokenizer.json", hint="the handler needs a fast tokenizer (tokenizer.json)")
    if out.suffix.lower() != ".zip":
        log.warning("%s does not end in .zip; writing a zip archive anyway", out)

    memory_mb = config.memory_mb or sl.memory_mb
    for bound, limit, word in ((sl.max_memory_mb, lambda m, b: m > b, "above"), (sl.min_memory_mb, lambda m, b: m < b, "below")):
        if bound is not None and limit(memory_mb, bound):
            raise ConfigError(
                f"--memory-mb {memory_mb} is {word} what {sl.platform} allows a function "
                f"({sl.min_memory_mb or '?'}–{sl.max_memory_mb or '?'} MB, profile {profile.name})",
                hint=f"give --memory-mb between {sl.min_memory_mb or 1} and {sl.max_memory_mb or memory_mb}",
            )
    vcpus = sl.vcpus_for(memory_mb)
    vcpu_source = "serverless.memory_to_vcpu"
    if vcpus is None:
        vcpus, vcpu_source = float(profile.hardware.cores), "hardware.cores (no memory_to_vcpu mapping)"
    threads = profile.runtime.threads or max(1, math.ceil(vcpus - 1e-9))
    target_arch = str(profile.hardware.arch)
    pins = _pins(config)
    function = {
        "platform": sl.platform, "memory_mb": memory_mb, "vcpus": vcpus, "vcpus_from": vcpu_source,
        "threads": threads, "handler": sl.handler, "arch": target_arch, "python": sl.python_version,
    }
    notes: list[str] = []
    warnings: list[str] = []
    if not sl.pip_platforms and config.download:
        warnings.append(f"profile {profile.name} lists no serverless.pip_platforms: wheels are resolved for "
                        "this host's platform, which may not be the target's")

    from compress import storage

    out.parent.mkdir(parents=True, exist_ok=True)
    storage.sweep_stale(out)  # a previous run of this bundle that was killed
    work = storage.make_staging(out)
    try:
        root = work / "bundle"
        root.mkdir()
        own = _write_bundle_files(root, art, profile, sl, function, config, pins)

        # dependencies for the target
        dist_files: dict[str, list[str]] = {}
        wheels: list[dict[str, Any]] = []
        deps: dict[str, Any] = {
            "measured": False, "requirements": dict(pins),
            "target": {"platforms": list(sl.pip_platforms), "python": sl.python_version, "implementation": "cp"},
        }
        if config.download:
            req = work / "requirements.in"
            req.write_text("".join(f"{n}=={v}\n" for n, v in pins.items()), encoding="utf-8")
            cmd = _pip_download_cmd(req, work / "wheels", sl.pip_platforms, sl.python_version)
            found = _pip_download(cmd, config.pip_timeout_s, f"{', '.join(sl.pip_platforms) or 'this host'} / "
                                                             f"Python {sl.python_version}")
            for whl in found:
                dist, version = _wheel_name(whl)
                files = _unpack_wheel(whl, root)
                dist_files[dist] = files
                wheels.append({"name": dist, "version": version, "file": whl.name, "bytes": whl.stat().st_size,
                               "sha256": _sha256(whl)})
            resolved = {w["name"]: w["version"] for w in wheels}
            shown = _shell(cmd).replace(str(work / "wheels"), "WHEELS_DIR").replace(str(req), "requirements.in")
            deps.update(
                measured=True, resolved=resolved, wheels=wheels, command=shown,
                pulled_in=sorted(n for n in resolved if n not in pins),
            )
            _write_requirements(root, pins, resolved, sl)
            _update_bundle_info(root, wheels=wheels)
            own = {**own, "requirements.txt": "handler", BUNDLE_INFO: "handler"}
        else:
            deps["note"] = "not downloaded (--no-download): the bundle holds the model and handler only"
            notes.append("dependencies were not downloaded (--no-download): install requirements.txt into the "
                         "bundle (or a layer) before deploying; their size is not measured")

        zip_tmp = work / "bundle.zip"
        entries = _zip_dir(root, zip_tmp)
        contributors = _contributors(root, entries, own, dist_files, wheels)
        zipped = zip_tmp.stat().st_size
        unzipped = sum(size for size, _ in entries.values())
        bundle = {
            "path": str(out), "zipped_bytes": zipped, "unzipped_bytes": unzipped,
            "zipped_mb": zipped / MB, "unzipped_mb": unzipped / MB, "files": len(entries),
            "sha256": _sha256(zip_tmp), "complete": config.download,
            "model_bytes": sum(c.unzipped_bytes for c in contributors if c.kind == "model"),
            "dependencies_bytes": sum(c.unzipped_bytes for c in contributors if c.kind == "dependency")
            if config.download else None,
        }

        cold = None
        if config.cold_start:
            cold = _cold_start(zip_tmp, work, own, function, config, pins, target_arch, sl.python_version,
                               sl.handler)
            imported = set(cold.get("imported_top_level") or [])
            if imported:
                for c in contributors:
                    if c.kind == "dependency":
                        c.imported = any(t in imported for t in c.top_level)
                unused = [c for c in contributors if c.kind == "dependency" and c.imported is False]
                if unused:
                    mb = sum(c.unzipped_bytes for c in unused) / MB
                    notes.append(
                        f"{len(unused)} of {sum(c.kind == 'dependency' for c in contributors)} dependency "
                        f"distributions ({mb:.1f} MB unzipped: {', '.join(c.name for c in unused)}) were not "
                        "imported by the handler's cold start and first request; pip installs them because the "
                        "packages above declare them"
                    )
            notes.extend(cold.get("notes", []))

        budgets = _judge(profile, sl, bundle, cold, memory_mb, config.download)
        for b in budgets:
            if b.measured is None:  # not measured is not a failure, and never a pass (as in validate)
                b.status, b.passed = BudgetStatus.unverified, False
                if b.note:
                    warnings.append(f"{b.name}: {b.note}")
        failed = [b for b in budgets if b.status is BudgetStatus.failed]
        verdict = verdict_of(budgets)
        if failed:
            notes.append(_over_limit_advice(failed))
        os.replace(zip_tmp, out)
    except Exception as e:
        found = storage.classify(e, out)  # a full disk or unwritable location: named as --out, not the staging dir
        if found is None:
            raise
        written = storage.tree_bytes(work)
        shutil.rmtree(work, ignore_errors=True)
        raise storage.describe((found[0], None), out, written_bytes=written) from e
    finally:
        shutil.rmtree(work, ignore_errors=True)

    m = art.manifest
    return PackageReport(
        verdict=verdict,
        budgets=budgets,
        bundle=bundle,
        contributors=sorted(contributors, key=lambda c: -c.unzipped_bytes),
        dependencies=deps,
        function=function,
        cold_start=cold,
        artifact={"path": str(art.path), "format": str(m.format), "precision": str(m.precision),
                  "task": str(m.task), "digest": art.digest, "steps": [s.stage for s in m.steps]},
        profile={"name": profile.name, "source": profile.source, "description": profile.description.strip(),
                 "serverless": sl.model_dump(mode="json"), "budgets": profile.budgets.model_dump(mode="json")},
        environment=_environment(),
        notes=notes,
        warnings=warnings,
        seconds=round(time.perf_counter() - t_start, 2),
    )


# ----------------------------------------------------------------------------------------------------
# Bundle files
# ----------------------------------------------------------------------------------------------------


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(config: PackageConfig) -> dict[str, str]:
    """Exact versions of the direct dependencies: the configured ones, else the versions installed here."""
    from compress._optional import version_of

    pins = {}
    for name in DIRECT_DEPENDENCIES:
        version = config.pins.get(name) or version_of(name)
        if version is None:
            raise ConfigError(
                f"{name} is not installed here, so there is no version to pin for the bundle",
                hint=f"install it (pip install {name}) or pin one: --pin {name}==VERSION",
            )
        pins[name] = version.split("+")[0]  # a local build tag (1.20.1+cpu) is not on PyPI
    return pins


def _handler_source(entry: str) -> tuple[str, str]:
    """The handler module's file name and source; the entry point's function is aliased to ours."""
    module, _, func = entry.rpartition(".")
    if not module or not func or not all(p.isidentifier() for p in (*module.split("."), func)) or "." in module:
        raise ConfigError(f"serverless.handler {entry!r} is not MODULE.FUNCTION", hint="e.g. handler.handler")
    src = (resources.files("compress") / "bundle_template" / "handler.py").read_text(encoding="utf-8")
    if func != "handler":
        src += f"\n\n{func} = handler  # the entry point named in the profile\n"
    return f"{module}.py", src


def _pad_id(art: Artifact) -> int:
    """The pad token id exactly as the library's TextEncoder finds it (tokenizer_config.json's pad_token)."""
    from compress.tokenization import TextEncoder

    return int(TextEncoder.from_dir(art.path, [t.name for t in art.manifest.inputs], art.manifest.max_length).pad_id)


def _write_bundle_files(root: Path, art: Artifact, profile, sl, function: dict[str, Any], config: PackageConfig,
                        pins: dict[str, str]) -> dict[str, str]:
    """Write handler, model config, model and tokenizer files; return {relative path: contributor kind}."""
    m = art.manifest
    own: dict[str, str] = {}
    mdir = root / MODEL_DIR
    mdir.mkdir()
    for name in art.model_files():
        (mdir / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(art.path / name, mdir / name)
        own[f"{MODEL_DIR}/{name}"] = "model"
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "manifest.json"):
        if (art.path / name).is_file():
            shutil.copyfile(art.path / name, mdir / name)
            own[f"{MODEL_DIR}/{name}"] = "tokenizer" if name != "manifest.json" else "handler"
    model_config = {
        "task": str(m.task),
        "labels": m.labels if m.task is Task.text_classification else None,
        "model_file": f"{MODEL_DIR}/{m.model_file}",
        "tokenizer_file": f"{MODEL_DIR}/tokenizer.json",
        "input_names": [t.name for t in m.inputs],
        "output_name": m.outputs[0].name if m.outputs else None,
        "max_length": m.max_length,
        "pad_id": _pad_id(art),
        "postprocess": m.postprocess.model_dump(),
        "threads": function["threads"],
        "max_batch_size": config.max_batch_size,
    }
    (root / "model_config.json").write_text(json.dumps(model_config, indent=2) + "\n", encoding="utf-8")
    own["model_config.json"] = "handler"
    fname, src = _handler_source(sl.handler)
    (root / fname).write_text(src, encoding="utf-8")
    own[fname] = "handler"
    from compress.device import SHIPPED_NAME

    # the device code the handler shares with the runtimes and the remote runner, byte for byte
    (root / SHIPPED_NAME).write_bytes((resources.files("compress") / "device.py").read_bytes())
    own[SHIPPED_NAME] = "handler"
    _write_requirements(root, pins, None, sl)
    own["requirements.txt"] = "handler"
    info = {
        "edgecompress": __version__,
        "config": config.model_dump(mode="json"),
        "profile": {"name": profile.name, "source": profile.source},
        "function": function,
        "artifact": {"path": str(art.path), "digest": art.digest, "precision": str(m.precision)},
        "requirements": pins,
        "wheels": None,
    }
    (root / BUNDLE_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    own[BUNDLE_INFO] = "handler"
    return own


def _update_bundle_info(root: Path, **changes: Any) -> None:
    path = root / BUNDLE_INFO
    info = json.loads(path.read_text(encoding="utf-8"))
    info.update(changes)
    path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _write_requirements(root: Path, pins: dict[str, str], resolved: dict[str, str] | None, sl) -> None:
    target = f"{', '.join(sl.pip_platforms) or 'the build host'}, CPython {sl.python_version}"
    lines = [f"# written by edgecompress {__version__} for {sl.platform} ({target})",
             *(f"{n}=={v}" for n, v in pins.items())]
    extra = {n: v for n, v in (resolved or {}).items() if n not in pins}
    if extra:
        lines.append("# pulled in by the packages above (resolved by pip for the target; bundled too)")
        lines += [f"{n}=={v}" for n, v in sorted(extra.items())]
    (root / "requirements.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------
# Wheels
# ----------------------------------------------------------------------------------------------------


def _pip_download_cmd(requirements: Path, dest: Path, platforms: list[str], python_version: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--dest", str(dest),
           "-r", str(requirements), "--disable-pip-version-check", "--no-input", "--progress-bar", "off"]
    if platforms:
        for tag in platforms:
            cmd += ["--platform", tag]
        cmd += ["--implementation", "cp"]
    if python_version:
        cmd += ["--python-version", python_version]
        if not platforms:
            cmd += ["--implementation", "cp"]
    return cmd


def _shell(cmd: list[str]) -> str:
    import shlex

    shown = ["pip", *cmd[3:]] if cmd[1:3] == ["-m", "pip"] else cmd
    return " ".join(shlex.quote(c) for c in shown)


_NET_ERRORS = ("Failed to establish a new connection", "Network is unreachable", "Temporary failure in name resolution",
               "Name or service not known", "ConnectTimeoutError", "Max retries exceeded", "ProxyError",
               "No route to host", "Connection refused", "Read timed out")


def _pip_download(cmd: list[str], timeout_s: float, target: str) -> list[Path]:
    """Run pip download; the wheels it saved. Errors name the target and the fix."""
    dest = Path(cmd[cmd.index("--dest") + 1])
    dest.mkdir(parents=True, exist_ok=True)
    log.info("resolving wheels for %s: %s", target, _shell(cmd))
    env = dict(os.environ, PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise StageError(f"pip download for {target} took longer than {timeout_s:.0f} s",
                         hint="check the network or the index (PIP_INDEX_URL), or package with --no-download") from None
    if proc.returncode != 0:
        text = proc.stderr + proc.stdout
        if any(s in text for s in _NET_ERRORS):
            raise StageError(f"pip download for {target}: the package index is unreachable",
                             hint="check the network or set PIP_INDEX_URL to a reachable mirror, or package with "
                                  "--no-download (sizes of the dependencies are then not measured)")
        missing = re.search(r"No matching distribution found for (\S+)", text)
        if missing:
            raise StageError(
                f"pip download: no wheel of {missing.group(1)} for {target}",
                hint="pin a version that publishes wheels for the target, e.g. --pin onnxruntime==VERSION "
                     "(see its files on pypi.org)",
            )
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-3:]
        raise StageError(f"pip download for {target} failed: {' / '.join(last)}", hint="rerun with -v to see pip's command")
    found = sorted(dest.glob("*.whl"))
    if not found:
        raise StageError(f"pip download for {target} saved no wheels", hint="rerun with -v to see pip's command")
    return found


def _wheel_name(whl: Path) -> tuple[str, str]:
    parts = whl.name[:-4].split("-")
    if len(parts) < 5:
        raise StageError(f"{whl.name}: not a wheel file name", hint="report this as a bug")
    return _canonical(parts[0]), parts[1]


def _safe_member(name: str) -> str | None:
    p = Path(name)
    if p.is_absolute() or ".." in p.parts or not name or name.endswith("/"):
        return None
    return p.as_posix()


def _unpack_wheel(whl: Path, root: Path) -> list[str]:
    """Unpack a wheel into ``root`` the way an install would lay it out (purelib/platlib at the top)."""
    written = []
    with zipfile.ZipFile(whl) as zf:
        for info in zf.infolist():
            rel = _safe_member(info.filename)
            if rel is None:
                continue
            first, _, rest = rel.partition("/")
            if first.endswith(".data"):
                kind, _, inner = rest.partition("/")
                if kind not in ("purelib", "platlib") or not inner:
                    continue  # scripts, headers, data: not importable, not needed by a handler
                rel = inner
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(target, 0o755 if mode & 0o111 else 0o644)
            written.append(rel)
    return written


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------
# Zip and sizes
# ----------------------------------------------------------------------------------------------------


def _zip_time() -> tuple[int, int, int, int, int, int]:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch and epoch.isdigit():
        t = _dt.datetime.fromtimestamp(max(int(epoch), 315532800), _dt.UTC)
        return (t.year, t.month, t.day, t.hour, t.minute, t.second)
    return _ZIP_EPOCH


def _zip_dir(root: Path, dest: Path) -> dict[str, tuple[int, int]]:
    """Zip every file under ``root`` (sorted, fixed timestamps, deflate); {name: (size, compressed size)}."""
    stamp = _zip_time()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for p in files:
            rel = p.relative_to(root).as_posix()
            info = zipfile.ZipInfo(rel, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, so the permission bits below are honoured
            executable = os.stat(p).st_mode & 0o111
            info.external_attr = ((0o100755 if executable else 0o100644) & 0xFFFF) << 16
            with open(p, "rb") as src, zf.open(info, "w", force_zip64=p.stat().st_size > (1 << 31)) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    with zipfile.ZipFile(dest) as zf:
        return {i.filename: (i.file_size, i.compress_size) for i in zf.infolist()}


def _top_level(files: list[str]) -> list[str]:
    tops = {f.split("/", 1)[0] for f in files}
    return sorted(t for t in tops if not t.endswith(".dist-info"))


def _contributors(root: Path, entries: dict[str, tuple[int, int]], own: dict[str, str],
                  dist_files: dict[str, list[str]], wheels: list[dict[str, Any]]) -> list[Contributor]:
    out: list[Contributor] = []
    versions = {w["name"]: (w["version"], w["file"]) for w in wheels}
    claimed: set[str] = set()
    for dist, files in dist_files.items():
        present = [f for f in dict.fromkeys(files) if f in entries and f not in claimed]
        claimed.update(present)
        version, wheel = versions.get(dist, (None, None))
        out.append(Contributor(
            name=dist, kind="dependency", version=version, wheel=wheel,
            unzipped_bytes=sum(entries[f][0] for f in present), zipped_bytes=sum(entries[f][1] for f in present),
            files=len(present), top_level=_top_level(present),
        ))
    groups: dict[str, list[str]] = {}
    for rel, kind in own.items():
        if rel in entries and rel not in claimed:
            # each model file on its own; tokenizer files together; handler + configs together
            key = rel if kind == "model" else kind
            groups.setdefault(key, []).append(rel)
            claimed.add(rel)
    for key, files in groups.items():
        kind = own[files[0]]
        name = key if kind == "model" else {"tokenizer": "tokenizer files", "handler": "handler + configs"}[kind]
        out.append(Contributor(
            name=name, kind=kind, unzipped_bytes=sum(entries[f][0] for f in files),
            zipped_bytes=sum(entries[f][1] for f in files), files=len(files), top_level=sorted(files),
        ))
    rest = [f for f in entries if f not in claimed]
    if rest:
        out.append(Contributor(name="other files", kind="other", unzipped_bytes=sum(entries[f][0] for f in rest),
                               zipped_bytes=sum(entries[f][1] for f in rest), files=len(rest),
                               top_level=_top_level(rest)))
    return out


# ----------------------------------------------------------------------------------------------------
# Cold start under the function's limits
# ----------------------------------------------------------------------------------------------------

_DRIVER = r'''
import json, os, sys, time
T_START = time.time()


def hwm_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


task, module, func, text = sys.argv[1:5]
rss_start = hwm_mb()
t0 = time.perf_counter()
import numpy, onnxruntime, tokenizers  # noqa: E401,F401  the handler's dependencies
t_imports = time.perf_counter() - t0
t0 = time.perf_counter()
mod = __import__(module)  # module scope: tokenizer + InferenceSession
t_init = time.perf_counter() - t0
t0 = time.perf_counter()
result = getattr(mod, func)({"text": text}, None)
t_first = time.perf_counter() - t0
t_end = time.time()
stdlib = set(getattr(sys, "stdlib_module_names", ())) | set(sys.builtin_module_names) | {"__main__", "__future__"}
top = sorted({n.split(".")[0] for n, m in list(sys.modules.items()) if m is not None} - stdlib - {module})
print(json.dumps({
    "t_start": T_START, "t_end": t_end,
    "imports_ms": t_imports * 1e3, "session_ms": t_init * 1e3, "first_inference_ms": t_first * 1e3,
    "peak_rss_mb": hwm_mb(), "rss_at_start_mb": rss_start,
    "threads_in_config": getattr(mod, "THREADS", None),
    "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__, "tokenizers": tokenizers.__version__,
    "python": sys.version.split()[0],
    "loaded_top_level": top,
    "result_keys": sorted(result) if isinstance(result, dict) else None,
}))
'''


def _cold_start(zip_path: Path, work: Path, own: dict[str, str], function: dict[str, Any], config: PackageConfig,
                pins: dict[str, str], target_arch: str, target_python: str, entry: str) -> dict[str, Any]:
    """Unpack the zip, run the handler in fresh processes under the function's limits; phases and medians."""
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
            deps_path = _site_dirs(DIRECT_DEPENDENCIES)
            deps = {"source": f"this environment's installed packages ({', '.join(deps_path)})", "stand_in": True,
                    "why": why}
            notes.append("cold start used this environment's installed onnxruntime/tokenizers/numpy, whose "
                         "compiled bytecode is cached: imports are faster than from a fresh bundle")
        notes.append(f"cold start measured on this host ({host_arch}, CPython {host_python}) as a stand-in: {why}")
    driver = work / "run" / "coldstart_driver.py"
    driver.write_text(_DRIVER, encoding="utf-8")
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
    cmd = [sys.executable, "-S", str(driver), str(task), module, func, _FIRST_TEXT]
    runs: list[dict[str, Any]] = []
    limits_info: dict[str, Any] = {}
    error = None
    oom = False
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
        "first_request": {"text": _FIRST_TEXT},
        "imported_top_level": sorted({m for r in runs for m in r["loaded_top_level"]}),
        "forbidden_imports": forbidden,
        "measured_on": {"host": platform.node(), "arch": host_arch, "python": platform.python_version(),
                        "cpu": cpu_model(), "load_avg_1m": _load_avg(),
                        "host_cores": os.cpu_count()},
        "command": "python -S <driver> (imports, then `import handler`, then one invocation with one text)",
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


# ----------------------------------------------------------------------------------------------------
# Judging
# ----------------------------------------------------------------------------------------------------


def _judge(profile, sl, bundle: dict[str, Any], cold: dict[str, Any] | None, memory_mb: int,
           complete: bool) -> list[BudgetResult]:
    """Size against the platform limits and the profile's budgets; cold start and peak memory. An
    unmeasured budget never passes; a bundle without its dependencies that is already over a size
    limit fails (the full bundle is only larger)."""
    b = profile.budgets
    out: list[BudgetResult] = []
    sizes = (("zipped", bundle["zipped_mb"]), ("unzipped", bundle["unzipped_mb"]))
    for name, limit, which in (
        (f"{sl.platform}: max_zipped_mb", sl.max_zipped_mb, 0),
        (f"{sl.platform}: max_unzipped_mb", sl.max_unzipped_mb, 1),
        ("max_package_zipped_mb", b.max_package_zipped_mb, 0),
        ("max_package_unzipped_mb", b.max_package_unzipped_mb, 1),
    ):
        if limit is None:
            continue
        kind, value = sizes[which]
        if complete:
            out.append(BudgetResult(name=name, limit=limit, measured=value, passed=value <= limit, unit="MB"))
        elif value > limit:
            out.append(BudgetResult(name=name, limit=limit, measured=value, passed=False, unit="MB",
                                    note=f"already over without the dependencies (--no-download); the {kind} "
                                         "bundle with them is larger"))
        else:
            out.append(BudgetResult(name=name, limit=limit, measured=None, passed=False, unit="MB",
                                    note=f"not measured: dependencies not downloaded (--no-download); without them "
                                         f"the bundle is {value:.2f} MB {kind}"))
    med = (cold or {}).get("median") or {}
    stand_in = bool(((cold or {}).get("dependencies") or {}).get("stand_in"))
    where = " (measured on this host as a stand-in for the target)" if stand_in else None
    failed_note = f"not measured: {cold['error']}" if cold and cold.get("error") else "not measured: cold start disabled"
    checks = [("max_cold_start_ms", b.max_cold_start_ms, med.get("total_ms"), "ms"),
              ("function_memory_mb", float(memory_mb), med.get("peak_rss_mb"), "MB"),
              ("max_peak_memory_mb", b.max_peak_memory_mb, med.get("peak_rss_mb"), "MB")]
    for name, limit, value, unit in checks:
        if limit is None:
            continue
        if value is None and cold and cold.get("oom") and name == "function_memory_mb":
            out.append(BudgetResult(name=name, limit=limit, measured=float(memory_mb), passed=False, unit=unit,
                                    note=f"killed at the {memory_mb} MB memory limit: it needs more"))
        elif value is None:
            out.append(BudgetResult(name=name, limit=limit, measured=None, passed=False, unit=unit, note=failed_note))
        else:
            out.append(BudgetResult(name=name, limit=limit, measured=float(value), passed=value <= limit, unit=unit,
                                    note=where))
    return out


def _over_limit_advice(failed: list[BudgetResult]) -> str:
    names = " ".join(b.name for b in failed)
    parts = ["the bundle was written anyway"]
    if "zipped_mb" in names and "unzipped" not in names.replace("max_zipped", ""):
        parts.append("a zip over the direct-upload limit can still be deployed from object storage (S3) "
                     "if the unzipped size fits")
    if "unzipped" in names:
        parts.append("over the unzipped limit it cannot deploy as a zip at all: move dependencies to layers "
                     "(the limit counts them too) or use a container image")
    if "cold_start" in names or "memory" in names:
        parts.append("raise the function memory (--memory-mb, more vCPUs) or use a smaller model")
    return "; ".join(parts)


def _environment() -> dict[str, Any]:
    from compress._optional import version_of

    return {
        "host": platform.node(), "machine": platform.machine(), "cpu": cpu_model(),
        "python": platform.python_version(), "edgecompress": __version__, "pip": version_of("pip"),
    }


# ----------------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------------


def report_paths(out: Path | str, report_dir: Path | str | None = None) -> tuple[Path, Path, Path]:
    """Where the JSON, Markdown and JUnit reports go: ``DIR/report.json|md`` and ``DIR/junit.xml`` (validate's
    names), or beside the zip (``X.report.json|md``, ``X.junit.xml``)."""
    if report_dir is not None:
        d = Path(report_dir)
        return d / "report.json", d / "report.md", d / "junit.xml"
    out = Path(out)
    stem = out.with_suffix("") if out.suffix else out
    return (stem.with_name(stem.name + ".report.json"), stem.with_name(stem.name + ".report.md"),
            stem.with_name(stem.name + ".junit.xml"))


def check_report_output(out: Path | str, report_dir: Path | str | None, force: bool) -> None:
    """Fail early when a report would overwrite something without ``force``."""
    if report_dir is not None:
        check_output(report_dir, force)
        return
    for p in report_paths(out):
        if p.exists() and not force:
            raise OutputExistsError(f"{p} already exists", hint="pass --force to replace it, or --report-dir DIR")


def write_package_report(report: PackageReport, out: Path | str, report_dir: Path | str | None = None,
                         force: bool = False) -> tuple[Path, Path, Path]:
    """Write ``report.json``, ``report.md`` and the JUnit XML (into ``report_dir``, staged, or beside the zip)."""
    from compress.report import budgets_junit

    paths = report_paths(out, report_dir)
    texts = (report.model_dump_json(indent=2) + "\n", package_report_markdown(report),
             budgets_junit(f"edgecompress.package.{report.profile['name']}", report.profile["name"], report.budgets,
                           report.seconds))
    if report_dir is not None:
        with staged_dir(report_dir, force) as tmp:
            for path, text in zip(paths, texts):
                (tmp / path.name).write_text(text, encoding="utf-8")
        return paths
    for path, text in zip(paths, texts):
        if path.exists() and not force:
            raise OutputExistsError(f"{path} already exists", hint="pass --force to replace it")
        tmp = path.with_name(f".{path.name}.partial")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return paths


def _mb(v: float | int | None) -> str:
    return "—" if v is None else f"{v / MB:.2f}"


def _num(v: float | None, unit: str) -> str:
    if v is None:
        return "not measured"
    return f"{v:.2f} {unit}" if abs(v) < 100 else f"{v:.1f} {unit}"


def _cold_lines(report: PackageReport) -> list[str]:
    c = report.cold_start
    if not c:
        return ["cold start: not measured (--no-cold-start)"]
    if c.get("error") and not c.get("median"):
        return [f"cold start: FAILED — {c['error']}"]
    m = c["median"]
    lim = c.get("limits", {})
    f = report.function
    lines = [
        f"cold start (median of {c['n']} fresh process{'es' if c['n'] != 1 else ''}): {m['total_ms']:.0f} ms from "
        f"process launch to the first result; phase medians: interpreter {m['interpreter_start_ms']:.0f}, imports "
        f"{m['imports_ms']:.0f}, tokenizer & session at module scope {m['session_ms']:.0f}, first request "
        f"{m['first_inference_ms']:.0f} ms; peak RSS {m['peak_rss_mb']:.0f} MB (VmHWM)",
        f"limits: {f['memory_mb']} MB → {f['vcpus']:g} vCPU, {f['threads']} intra-op thread(s); "
        f"{lim.get('cpu_mechanism', '?')}; memory: {lim.get('memory_mechanism') or 'not enforced'}",
        f"measured on {c['measured_on']['host']} ({c['measured_on']['arch']}, CPython {c['measured_on']['python']}, "
        f"{c['measured_on']['cpu']}, load average {c['measured_on'].get('load_avg_1m')} on "
        f"{c['measured_on'].get('host_cores')} cores); dependencies: {c['dependencies']['source']}",
    ]
    if c.get("error"):
        lines.append(f"a later run failed: {c['error']}")
    return lines


def _dirs_label(k: Contributor) -> str:
    """The folders a dependency adds, where they are not simply its own name (numpy.libs, google, _yaml)."""
    if k.kind != "dependency":
        return ""
    own = k.name.replace("-", "_")
    extra = [t for t in k.top_level if t.lower() != own]
    if not extra:
        return ""
    return f" ({', '.join(extra[:3])}{'…' if len(extra) > 3 else ''})"


def render_package_report(report: PackageReport, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    b = report.bundle
    f = report.function
    console.print(
        f"[bold]{escape(b['path'])}[/] for [bold]{report.profile['name']}[/] ({escape(f['platform'])}, {f['arch']}, "
        f"Python {f['python']}): {_mb(b['zipped_bytes'])} MB zipped, {_mb(b['unzipped_bytes'])} MB unzipped"
        + ("" if b["complete"] else " [yellow](without dependencies)[/]")
    )
    t = Table(title="budgets", title_justify="left")
    for col in ("budget", "limit", "measured", "result"):
        t.add_column(col, justify="right" if col in ("limit", "measured") else "left")
    for r in report.budgets:
        res = "[green]PASS[/]" if r.passed else ("[red]FAIL[/]" if r.measured is not None else "[yellow]NOT MEASURED[/]")
        t.add_row(escape(r.name), f"{r.comparison} {_num(r.limit, r.unit)}", _num(r.measured, r.unit), res)
    console.print(t)
    total = max(1, b["unzipped_bytes"])
    c = Table(title=f"biggest contributors (top {TOP_CONTRIBUTORS} of {len(report.contributors)})", title_justify="left")
    for col in ("contributor", "version", "unzipped MB", "zipped MB", "share", "imported"):
        c.add_column(col, justify="right" if col in ("unzipped MB", "zipped MB", "share") else "left")
    for k in report.top_contributors():
        imp = {True: "yes", False: "[yellow]no[/]", None: "—"}[k.imported]
        label = k.name + _dirs_label(k)
        c.add_row(escape(label), k.version or "", _mb(k.unzipped_bytes), _mb(k.zipped_bytes),
                  f"{k.unzipped_bytes / total:.0%}", imp)
    console.print(c)
    for line in _cold_lines(report):
        console.print("  " + escape(line))
    for n in report.notes:
        console.print(f"[dim]note:[/] {escape(n)}")
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}")
    colour = {"pass": "green", "fail": "red"}.get(report.verdict, "yellow")
    bad = [r.name for r in report.budgets if not r.passed]
    console.print(f"[bold {colour}]{report.verdict.upper()}[/]" + (f": {escape(', '.join(bad))}" if bad else ""))


def package_report_markdown(report: PackageReport) -> str:
    b = report.bundle
    f = report.function
    a = report.artifact
    out = [
        f"# edgecompress package: {report.verdict.upper()}",
        "",
        f"- bundle: `{b['path']}` — **{_mb(b['zipped_bytes'])} MB zipped, {_mb(b['unzipped_bytes'])} MB unzipped**, "
        f"{b['files']} files, sha256 `{b['sha256'][:16]}…`" + ("" if b["complete"] else " (without dependencies)"),
        f"- artifact: `{a['path']}` ({a['format']}/{a['precision']}, {a['task']})",
        f"- profile: `{report.profile['name']}` — {f['platform']}, {f['arch']}, Python {f['python']}, "
        f"{f['memory_mb']} MB → {f['vcpus']:g} vCPU, {f['threads']} thread(s)",
    ]
    deps = report.dependencies
    if deps.get("measured"):
        out.append(f"- wheels: `{deps['command']}`")
    out += ["", "| budget | limit | measured | result |", "|---|---|---|---|"]
    for r in report.budgets:
        res = "PASS" if r.passed else ("FAIL" if r.measured is not None else "NOT MEASURED")
        out.append(f"| {r.name} | {r.comparison} {_num(r.limit, r.unit)} | {_num(r.measured, r.unit)} | {res} |")
    total = max(1, b["unzipped_bytes"])
    out += ["", f"## Biggest contributors (top {TOP_CONTRIBUTORS} of {len(report.contributors)})", "",
            "| contributor | version | unzipped MB | zipped MB | share | imported at cold start |",
            "|---|---|---:|---:|---:|---|"]
    for k in report.top_contributors():
        imp = {True: "yes", False: "no", None: "—"}[k.imported]
        out.append(f"| {k.name}{_dirs_label(k)} | {k.version or ''} | {_mb(k.unzipped_bytes)} | {_mb(k.zipped_bytes)} | "
                   f"{k.unzipped_bytes / total:.0%} | {imp} |")
    out += ["", "## Cold start", ""] + [f"- {line}" for line in _cold_lines(report)]
    c = report.cold_start
    if c and c.get("runs"):
        out += ["", "| run | interpreter ms | imports ms | session ms | first request ms | total ms | peak RSS MB |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for i, r in enumerate(c["runs"], 1):
            out.append(f"| {i} | {r['interpreter_start_ms']:.0f} | {r['imports_ms']:.0f} | {r['session_ms']:.0f} | "
                       f"{r['first_inference_ms']:.0f} | {r['total_ms']:.0f} | {r['peak_rss_mb']:.0f} |")
    if report.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    if report.warnings:
        out += ["", "## Warnings", ""] + [f"- {w}" for w in report.warnings]
    return "\n".join(out) + "\n"

