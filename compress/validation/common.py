"""What local and remote validation share: the report, the verdict's assembly, the teacher's FP32 baseline
and the texts latency is timed on."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from compress.artifact import Artifact, Format, load_artifact
from compress.formats import FORMATS
from compress.host.measure import LatencyStats
from compress.profiles.budgets import (
    MB,
    BudgetResult,
    anomalous_latency,
    emulated_timings,
    judge,
    noise_warning,
    own_check,
    verdict_of,
)
from compress.profiles.schema import DeviceProfile
from compress.progress import Progress
from compress.runtimes.base import RuntimeSettings
from compress.validation.metrics import size_breakdown

log = logging.getLogger(__name__)

REPORT_SCHEMA_VERSION = 1


@dataclass
class ValidationRun:
    """What one ``validate`` call carries from its start to its report, local or remote.

    ``settings`` are the profile's runtime settings (a local run on another machine times with its own: see
    ``compress.validation.local``); ``warnings`` gathers the report's warnings as the run goes; ``t_start`` is
    ``time.perf_counter()`` when it began (the report's seconds).
    """

    art: Artifact
    profile: DeviceProfile  # its runtime resolved for the artifact's format
    config: Any  # compress.validation.config.ValidateConfig
    settings: RuntimeSettings
    dataset: Any | None  # the eval rows (compress.data.inputs), None without --data
    teacher: Any | None  # the loaded teacher, None when it is not on this machine
    warnings: list[str]
    progress: Progress | None
    t_start: float
    user_metric: Callable | None = None
    host_load: Any | None = None  # compress.host.load.HostLoad over the timing phase, once timed here


class ValidationReport(BaseModel):
    schema_version: int = REPORT_SCHEMA_VERSION
    verdict: str
    budgets: list[BudgetResult]
    metrics: dict[str, Any]
    warnings: list[str] = Field(default_factory=list)
    artifact: dict[str, Any]
    teacher: dict[str, Any] | None
    profile: dict[str, Any]
    environment: dict[str, Any]
    seconds: float = 0.0
    data: dict[str, Any] | None = Field(
        None, description="The eval data the metrics were measured on: path, rows, sha256 of the rows' texts.")
    host_load: dict[str, Any] | None = Field(
        None, description="How busy the machine was while it timed (compress.host.load.HostLoad): seconds, cpus, "
        "load_average, other_cpu_share (CPU time other processes took on this process's CPUs), steal_share, busy "
        "(those two shares reach 25%). None where nothing was timed here (estimates, a remote device).")

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"


def baseline_artifact(teacher, runtime: str, art: Artifact, *, allow_pickle: bool = False) -> Artifact | None:
    """The teacher's FP32 model in the artifact's format, in the cache (compress.cache: baselines/KEY); None for a
    format whose :data:`~compress.formats.FORMATS` entry has no baseline. ``allow_pickle``: the teacher was loaded
    with it (a TorchScript archive, a pickled checkpoint), so is its export."""
    if not FORMATS[art.format].baseline:
        return None
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.teachers.load import teacher_format

    if teacher_format(teacher) is not Format.pytorch:  # an adopted file: itself, or converted as the artifact was
        if teacher_format(teacher) is art.format:
            return teacher.as_artifact()
        # converted with the inputs the artifact's own conversion was checked on (a file whose graph leaves a
        # dimension open cannot be checked on made-up inputs)
        given = next((s.config.get("sample_data") for s in reversed(art.manifest.steps)
                      if s.stage == "export" and (s.config or {}).get("sample_data")), None)
        cfg = ExportConfig(format=str(art.format), sample_data=given if given and Path(given).is_file() else None)
    elif not FORMATS[art.format].via_onnx:  # the FP32 program (Core ML: its FP16 package), as the artifact was
        cfg = ExportConfig(format=str(art.format), task=teacher.task, allow_pickle=allow_pickle)
    else:
        export_cfg = next((s.config for s in art.manifest.steps if s.stage == "export"), {})
        cfg = ExportConfig(
            format=str(art.format),
            task=teacher.task,
            opset=export_cfg.get("opset", 18),
            optimize=export_cfg.get("optimize", "O2"),
            allow_pickle=allow_pickle,
        )
    from compress import cache as ec_cache

    key = hashlib.sha256(f"{teacher.sha256}{cfg.model_dump_json()}".encode()).hexdigest()[:20]
    cache = ec_cache.kind_dir("baselines") / key
    if (cache / "manifest.json").is_file():
        try:
            art = load_artifact(cache)
            ec_cache.touch(cache)
            return art
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt
            log.warning("rebuilding damaged baseline cache %s", cache)
    log.info("exporting the teacher's FP32 baseline to %s", cache)
    art = export(teacher.path, cache, cfg, force=True)
    ec_cache.enforce_limit(keep=cache)
    return art


def input_shape(m, batch_size: int, sequence_length: int) -> dict[str, Any]:
    """The shape latency was timed at: batch x sequence for text, batch x channels x height x width for images."""
    from compress.data.inputs import is_image, preprocess_kind

    if preprocess_kind(m.preprocess) == "arrays":  # each input's per-sample shape, as timed
        return {"batch_size": batch_size,
                "inputs": {n: "x".join("?" if d is None else str(d) for d in s) for n, s in m.preprocess.shapes.items()}}
    if not is_image(m.preprocess):
        return {"batch_size": batch_size, "sequence_length": sequence_length}
    shape = next((t.shape for t in m.inputs if t.name == m.preprocess.input_name), None) or []
    dims = shape[1:] if m.preprocess.layout == "NCHW" else [shape[3], shape[1], shape[2]] if len(shape) == 4 else []
    c, h, w = (dims + [None, None, None])[:3] if dims else (None, None, None)
    return {"batch_size": batch_size, "channels": c, "height": h, "width": w}


def conclude(run: ValidationRun, metrics: dict[str, Any], stats: dict[str, LatencyStats],
             cold: dict[str, Any] | None, env: dict[str, Any]) -> ValidationReport:
    """Add latency, size and cold-start figures to ``metrics``, judge the budgets and build the report.

    Shared by local and remote validation: ``stats`` holds "artifact" (and "baseline") latency, ``cold``
    the fresh-process probe's result (None: not measured), ``env`` where the numbers were measured.
    """
    art, profile, teacher, warnings = run.art, run.profile, run.teacher, run.warnings
    m = art.manifest
    meas = profile.measure
    lat = stats["artifact"]
    metrics["latency_ms"] = lat.as_dict()
    metrics["throughput"] = lat.throughput
    metrics["input_shape"] = input_shape(m, meas.batch_size, meas.sequence_length)
    raw = {name: st.samples_ms for name, st in stats.items() if st.samples_ms}
    if raw:  # every timed call: what `edgecompress gate` tests instead of comparing two percentiles
        metrics["latency_samples_ms"] = raw
    if "baseline" in stats:
        b = stats["baseline"]
        metrics["baseline_latency_ms"] = b.as_dict()
        metrics["speedup"] = b.p50 / lat.p50
    table = next((s.metrics["layer_errors"] for s in reversed(m.steps) if s.metrics.get("layer_errors")), None)
    if table is not None:  # where quantization changed the model, measured when it was quantized
        metrics["layer_errors"] = table
    metrics["size_mb"] = art.size_bytes() / MB
    metrics["package_size_mb"] = art.size_bytes(model_only=False) / MB
    if cold is not None:
        metrics["cold_start"] = cold
        # a user's cold start: process launch to first result (interpreter, imports, session, inference)
        metrics["cold_start_ms"] = cold["process_wall_ms"]
        metrics["peak_rss_mb"] = cold["peak_rss_mb"]

    budgets = judge(profile.budgets, metrics)
    if "collapse" not in (metrics.get("generation") or {}):  # measured here (a generator's continuations): decides
        failed, said = own_check(m, budgets)
        budgets += [failed] if failed is not None else []
        warnings += [said] if said is not None else []
    if (emulated := emulated_timings(profile, budgets)) is not None:  # an emulator's timings: never judged
        warnings.append(emulated)
    if (noisy := noise_warning(lat, budgets)) is not None:
        warnings.append(noisy)
    load = run.host_load
    if load is not None and load.busy:
        warnings.append(f"{load.summary()}: its timings are the queue's as much as the model's; latency budgets it "
                        "fails are ANOMALOUS, not FAIL (measure again on a quiet machine)")
    anomalous_latency(lat, budgets, busy=load is not None and load.busy)
    for b in budgets:
        if b.measured is None:
            warnings.append(f"budget {b.name} could not be measured: {b.note}")
    verdict = verdict_of(budgets)
    return ValidationReport(
        verdict=verdict,
        budgets=budgets,
        metrics=metrics,
        warnings=warnings,
        artifact={
            "path": str(art.path), "format": str(m.format), "precision": str(m.precision), "task": str(m.task),
            "digest": art.digest, "steps": [s.stage for s in m.steps],
            "preprocess": m.preprocess.model_dump(mode="json"),
            "lineage": [{"stage": s.stage, "seconds": s.seconds, "versions": s.versions,
                         "settings": {k: v for k, v in s.config.items() if v not in (None, False, [], {})}}
                        for s in m.steps],
            "source": m.source.model_dump(mode="json"),
            "size_breakdown": size_breakdown(art),
        },
        teacher={"path": str(teacher.path), "sha256": teacher.sha256} if teacher is not None else None,
        profile=profile.model_dump(mode="json"),
        environment=env,
        seconds=round(time.perf_counter() - run.t_start, 2),
        host_load=load.as_dict() if load is not None else None,
    )


def scoring_batch(manifest, measure) -> int:
    """How many eval rows share one call when the artifact is scored: the profile's ``eval_batch_size``, except for an
    artifact whose activation scales are computed per call (ONNX Runtime's dynamic INT8: one scale per tensor over the
    whole call, the other rows and their padding included), whose answers depend on what shares its call. That one is
    scored at ``measure.batch_size``, the batch the device runs (1 by default), as it will answer there."""
    per_call = manifest.format is Format.onnx and any(
        s.stage == "quantize" and s.config.get("mode") == "dynamic" and s.config.get("precision") == "int8"
        for s in manifest.steps)
    return measure.batch_size if per_call else measure.eval_batch_size


def latency_texts(texts: list | None, batch_size: int, seq_len: int, preprocess=None) -> list:
    """One batch of raw inputs to time: texts long enough to fill ``seq_len`` tokens after padding/truncation, or
    images for an image model (:func:`compress.data.inputs.latency_inputs`)."""
    from compress.data.inputs import latency_inputs

    return latency_inputs(texts, batch_size, seq_len, preprocess)
