"""``package``: a deployable serverless bundle (a zip) for an ONNX artifact, judged against the platform.

The bundle, as a zip deployment of AWS Lambda (and similar platforms) expects it, has everything at
the top level::

    handler.py               minimal handler: onnxruntime + numpy + tokenizers (text) or Pillow (images), session
                             at module scope; for a generator (text-generation) the generating handler, greedy
                             through the KV cache (compress/packaging/generation.py)
    edgecompress_device.py   pooling and session options, the same file the remote runner ships (compress/device/shipped.py)
    edgecompress_feeds.py    the feeds from the input description (compress/device/feeds.py), likewise
    edgecompress_facts.py    peak memory and the host facts, for the cold start (compress/device/facts.py), likewise
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
import logging
import math
import os
import platform
import shutil
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from compress import __version__
from compress.artifact import Artifact, load_artifact
from compress.device.facts import cpu_model, sha256_file
from compress.errors import ArtifactError, ConfigError, OutputExistsError
from compress.packaging import generation as gen
from compress.packaging.coldstart import _cold_start
from compress.packaging.config import (
    _ZIP_EPOCH,
    BUNDLE_INFO,
    MB,
    PACKAGE,
    Contributor,
    PackageConfig,
    PackageReport,
    dependencies_for,
    first_stream_request,
)
from compress.packaging.contents import pins_for, update_bundle_info, write_bundle_files, write_requirements
from compress.packaging.wheels import (
    _pip_download,
    _pip_download_cmd,
    _shell,
    _unpack_wheel,
    _wheel_name,
)
from compress.profiles.budgets import BudgetResult, BudgetStatus, verdict_of
from compress.progress import Progress, sink
from compress.tasks import TASKS, by_kind

log = logging.getLogger(__name__)

__all__ = [
    "package",
]


# ----------------------------------------------------------------------------------------------------
# The entry point
# ----------------------------------------------------------------------------------------------------


def package(artifact: Artifact | Path | str, out: Path | str, config: PackageConfig, *, force: bool = False,
            progress: Progress | None = None) -> PackageReport:
    """Build the bundle ``out`` (a .zip) for ``artifact`` on ``config.profile`` and judge it.

    The zip is written even when a budget fails (the report says so): a bundle over the direct-upload
    limit can still be deployed through object storage, layers or a container image. Raises only
    for bad input (profile, artifact, existing output) and for a dependency resolution that fails.
    ``progress`` receives ``{"phase": ..., "label": ...}`` as each stretch of work starts (model files, wheels,
    zip) and ``{"phase": "cold-start", "done": i, "total": n}`` around the cold-start runs (:mod:`compress.progress`).
    """
    say = sink(progress)
    t_start = time.perf_counter()
    out = Path(out)
    art, profile = _check_inputs(artifact, out, config, force)
    sl = profile.serverless
    function = _function(profile, config)
    pins = pins_for(config, dependencies_for(art.manifest.preprocess))
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
        say({"phase": "files", "label": "writing the model and the handler"})
        block = by_kind(_KINDS, art, "package").block(art, config.max_new_tokens)
        if block is not None:
            notes.append(gen.describe(block))
        own = write_bundle_files(root, art, profile, sl, function, config, pins, block)
        deps, wheels, dist_files = _resolve_wheels(root, work, sl, config, pins, notes, say)
        if config.download:
            own = {**own, "requirements.txt": "handler", BUNDLE_INFO: "handler"}
        zip_tmp = work / "bundle.zip"
        say({"phase": "zip", "label": "zipping the bundle"})
        bundle, contributors = _assemble(root, zip_tmp, out, own, dist_files, wheels, config)
        cold = None
        if config.cold_start:
            cold = _cold_start(zip_tmp, work, own, function, config, pins, function["arch"], sl.python_version,
                               sl.handler, progress=say, preprocess=art.manifest.preprocess,
                               request=gen.first_generation(block) if block is not None else
                               first_stream_request(art.manifest))
            _mark_imported(cold, contributors, notes)
        budgets, verdict = _verdict(profile, bundle, cold, function["memory_mb"], config, notes, warnings)
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


class _KindRoute(NamedTuple):
    """How package bundles a model of one kind."""

    check: Callable[[Artifact, int | None], None]  #: its refusals, (artifact, --max-new-tokens), before the format's
    #: model_config.json's generation block, (artifact, --max-new-tokens); None: one forward pass a request
    block: Callable[[Artifact, int | None], dict[str, Any] | None]


def _no_block(art: Artifact, max_new_tokens: int | None) -> None:
    """A model that does not generate: no generation block (its handler makes one forward pass a request)."""
    return None


#: how package bundles a model of each kind (:func:`compress.tasks.by_kind`)
_KINDS = {"forward": _KindRoute(gen.refuse_new_tokens, _no_block),
          "generation": _KindRoute(gen.check_generator, gen.generation_block),
          "stream": _KindRoute(gen.refuse_new_tokens, _no_block)}


def _check_inputs(artifact: Artifact | Path | str, out: Path, config: PackageConfig, force: bool):
    """(artifact, profile) once the output, the profile's serverless section and the artifact are fit to package."""
    from compress.profiles.load import load_profile

    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists", hint="choose another --out or pass --force to replace it")
    if out.is_dir():
        raise OutputExistsError(f"{out} is a directory", hint="--out names the zip file to write, e.g. bundle.zip")
    profile = load_profile(config.profile)
    if profile.serverless is None:
        raise ConfigError(
            f"profile {profile.name} has no serverless: section (platform limits, memory, wheels platform)",
            hint="use a serverless profile such as aws-lambda-arm64 (`edgecompress profiles list`) or add serverless: to yours",
        )
    art = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
    by_kind(_KINDS, art, "package").check(art, config.max_new_tokens)  # before the format check: a generator's
    # refusal names its route
    if (collapsed := art.manifest.collapsed()) is not None and not config.allow_collapsed:
        raise ArtifactError(f"{art.path}: quantize's own check found this model collapsed against its input "
                            f"({collapsed}), so it is not packaged",
                            hint="quantize it again with what its warning named, or, once validate --data shows its "
                            "accuracy holds, pass --allow-collapsed")
    PACKAGE.check(art)
    if TASKS[art.manifest.task].labels == "spans":  # its handler would return the start logits alone
        raise ConfigError(f"{art.path}: a {art.manifest.task} model: the serverless handler does not serve answer "
                          "spans yet (it would return the start logits only, no end logits and no answer text)",
                          hint="deploy it with a handler of your own (the artifact's model file and tokenizer.json); "
                          "package serves classifiers, token classifiers, encoders and generators")
    if art.manifest.preprocess.kind == "text" and not (art.path / art.manifest.preprocess.tokenizer_file).is_file():
        raise ArtifactError(f"{art.path}: no tokenizer.json", hint="the handler needs a fast tokenizer (tokenizer.json)")
    if out.suffix.lower() != ".zip":
        log.warning("%s does not end in .zip; writing a zip archive anyway", out)
    return art, profile


def _function(profile, config: PackageConfig) -> dict[str, Any]:
    """The function the bundle is judged as: platform, memory (checked against the platform's range), vCPUs,
    threads, handler, arch and Python."""
    sl = profile.serverless
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
    return {
        "platform": sl.platform, "memory_mb": memory_mb, "vcpus": vcpus, "vcpus_from": vcpu_source,
        "threads": threads, "handler": sl.handler, "arch": str(profile.hardware.arch), "python": sl.python_version,
    }


def _resolve_wheels(root: Path, work: Path, sl, config: PackageConfig, pins: dict[str, str], notes: list[str],
                    say: Progress) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, list[str]]]:
    """Download the target's wheels for ``pins`` and unpack them into ``root`` (unless ``--no-download``):
    (the report's dependencies, the wheels, each distribution's files)."""
    dist_files: dict[str, list[str]] = {}
    wheels: list[dict[str, Any]] = []
    deps: dict[str, Any] = {
        "measured": False, "requirements": dict(pins),
        "target": {"platforms": list(sl.pip_platforms), "python": sl.python_version, "implementation": "cp"},
    }
    if not config.download:
        deps["note"] = "not downloaded (--no-download): the bundle holds the model and handler only"
        notes.append("dependencies were not downloaded (--no-download): install requirements.txt into the "
                     "bundle (or a layer) before deploying; their size is not measured")
        return deps, wheels, dist_files
    req = work / "requirements.in"
    req.write_text("".join(f"{n}=={v}\n" for n, v in pins.items()), encoding="utf-8")
    cmd = _pip_download_cmd(req, work / "wheels", sl.pip_platforms, sl.python_version)
    say({"phase": "wheels", "label": f"downloading the wheels for {', '.join(sl.pip_platforms) or 'this host'}"})
    found = _pip_download(cmd, config.pip_timeout_s, f"{', '.join(sl.pip_platforms) or 'this host'} / "
                                                     f"Python {sl.python_version}")
    for whl in found:
        dist, version = _wheel_name(whl)
        files = _unpack_wheel(whl, root)
        dist_files[dist] = files
        wheels.append({"name": dist, "version": version, "file": whl.name, "bytes": whl.stat().st_size,
                       "sha256": sha256_file(whl)})
    resolved = {w["name"]: w["version"] for w in wheels}
    shown = _shell(cmd).replace(str(work / "wheels"), "WHEELS_DIR").replace(str(req), "requirements.in")
    deps.update(
        measured=True, resolved=resolved, wheels=wheels, command=shown,
        pulled_in=sorted(n for n in resolved if n not in pins),
    )
    write_requirements(root, pins, resolved, sl)
    update_bundle_info(root, wheels=wheels)
    return deps, wheels, dist_files


def _assemble(root: Path, zip_tmp: Path, out: Path, own: dict[str, str], dist_files: dict[str, list[str]],
              wheels: list[dict[str, Any]], config: PackageConfig) -> tuple[dict[str, Any], list[Contributor]]:
    """Zip ``root`` into ``zip_tmp``: the report's bundle figures and what each contributor adds."""
    entries = _zip_dir(root, zip_tmp)
    contributors = _contributors(root, entries, own, dist_files, wheels)
    zipped = zip_tmp.stat().st_size
    unzipped = sum(size for size, _ in entries.values())
    bundle = {
        "path": str(out), "zipped_bytes": zipped, "unzipped_bytes": unzipped,
        "zipped_mb": zipped / MB, "unzipped_mb": unzipped / MB, "files": len(entries),
        "sha256": sha256_file(zip_tmp), "complete": config.download,
        "model_bytes": sum(c.unzipped_bytes for c in contributors if c.kind == "model"),
        "dependencies_bytes": sum(c.unzipped_bytes for c in contributors if c.kind == "dependency")
        if config.download else None,
    }
    return bundle, contributors


def _mark_imported(cold: dict[str, Any], contributors: list[Contributor], notes: list[str]) -> None:
    """Mark which dependencies the cold start imported; note the ones it did not, and the cold start's notes."""
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


def _verdict(profile, bundle: dict[str, Any], cold: dict[str, Any] | None, memory_mb: int, config: PackageConfig,
             notes: list[str], warnings: list[str]) -> tuple[list[BudgetResult], str]:
    """The budgets judged (not measured: UNVERIFIED, never a pass, as in validate) and the verdict."""
    budgets = _judge(profile, profile.serverless, bundle, cold, memory_mb, config.download)
    for b in budgets:
        if b.measured is None:  # not measured is not a failure, and never a pass (as in validate)
            b.status, b.passed = BudgetStatus.unverified, False
            if b.note:
                warnings.append(f"{b.name}: {b.note}")
    failed = [b for b in budgets if b.status is BudgetStatus.failed]
    verdict = verdict_of(budgets)
    if failed:
        notes.append(_over_limit_advice(failed))
    return budgets, verdict


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
