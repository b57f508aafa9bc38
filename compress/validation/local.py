"""``validate``: measure an artifact on a device profile and judge it against the profile's budgets.

What is measured (and how):
- task metric of the teacher (PyTorch FP32, the reference) and of the artifact on labelled eval data:
  accuracy and macro-F1 for classifiers; for sentence embeddings the metric is the mean cosine
  similarity to the teacher's embeddings (teacher = 1.0);
- agreement with the teacher: same predicted label (classifiers); for embeddings, the share of eval
  texts whose teacher-nearest neighbour is among the artifact's 3 nearest (top-1 is reported too);
- latency at the profile's input shape (batch × sequence length): warm-up, then alternating rounds of
  the artifact and the teacher's FP32 baseline *on the same runtime* until both reach the minimum
  run count and duration; nearest-rank percentiles with run count and coefficient of variation;
- model size on disk, and a fresh process that loads the artifact and runs one inference:
  import, session creation and first-inference times, and its peak resident memory.
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from compress import __version__
from compress.artifact import Artifact, Format
from compress.device.facts import cpu_model
from compress.errors import ConfigError, MissingBackendError
from compress.host.measure import ForwardPass, probe_cold_start
from compress.profiles.budgets import ESTIMATED_BUDGETS, BudgetStatus, judge, verdict_of
from compress.profiles.schema import SpeedupBaseline
from compress.progress import Progress, start_phase
from compress.settings import Section, Settings
from compress.tasks import TASKS, kind_of
from compress.validation.common import (
    ValidationReport,
    ValidationRun,
    baseline_artifact,
    conclude,
    latency_texts,
    scoring_batch,
)
from compress.validation.estimated import estimate_latency
from compress.validation.metrics import prediction_metrics
from compress.validation.teacher_outputs import predict_all

log = logging.getLogger(__name__)


class EstimateMode(StrEnum):
    """When validate estimates latency instead of measuring it."""

    auto = "auto"  # estimate when this machine is not the profiled device (arch or identify differs)
    always = "always"  # estimate even on the device (e.g. to compare the estimator with a measurement)
    never = "never"  # time on this machine whatever the profile says (its figures are this machine's)


#: 2: the measurement options nested in ``measure`` (baseline, cold_start, estimate); a flat v1 key names its new home
CONFIG_VERSION = 2


class MeasureOptions(Section):
    """What validate measures beside accuracy: the FP32 baseline, the cold start, and when latency is estimated."""

    baseline: bool = Field(
        True, description="Time the teacher's FP32 baseline (speedup; the profile's measure.speedup_baseline says which).")
    cold_start: bool = Field(True, description="Measure cold start and peak memory in a fresh process.")
    estimate: EstimateMode = Field(
        EstimateMode.auto,
        description="auto: estimate latency (roofline, UNVERIFIED) when this machine is not the profiled device; "
        "always: estimate even on it; never: time on this machine regardless.",
    )


class GenerationOptions(Section):
    """Text generators (task text-generation): the prompts continued, the prompt and generation lengths timed, the
    perplexity window."""

    prompts: str | None = Field(
        None, description="Prompts to continue (.txt one a line, .jsonl prompt/text; at most `limit`, default 8); "
        "default: the first sentence of each --data document or paragraph.")
    prompt_tokens: int = Field(128, ge=1, description="Prompt length timed (TTFT, prefill tokens/s), "
                               "capped by the model's context.")
    new_tokens: int = Field(128, ge=1, description="Tokens generated per prompt (decode tokens/s, "
                            "continuations), capped at half the model's context when it leaves no room for a prompt.")
    window: int | None = Field(None, ge=4, description="Perplexity window in tokens (default: the "
                               "artifact's, 256, cut to the model's context; a longer one given is refused).")


class ValidateConfig(Settings):
    """Settings of ``edgecompress validate``; the measurement options in ``measure`` (the CLI's flat flags and a
    version-1 recipe's keys ``baseline``, ``cold_start``, ``estimate`` nest there through ``MOVED``)."""

    MOVED: ClassVar[dict[str, str]] = {**{k: f"measure.{k}" for k in MeasureOptions.model_fields},
                                       **{k: f"generation.{k}" for k in GenerationOptions.model_fields}}

    profile: str = Field("host", description="Built-in profile name, 'host', or a profile YAML path.")
    data: str | None = Field(None, description="Labelled eval data (CSV/TSV/JSONL/Parquet/datasets dir).")
    teacher: str | None = Field(
        None, description="Teacher checkpoint; default: the source recorded in the artifact's manifest."
    )
    text_column: str | None = Field(None, description="Text column (auto-detected when omitted).")
    text_pair_column: str | None = Field(None, description="Second text column for pair tasks.")
    label_column: str | None = Field(None, description="Label column (auto-detected when omitted).")
    limit: int | None = Field(None, ge=1, description="Evaluate at most this many rows (text generators: perplexity "
                              "windows and prompts; default 16 windows, 8 prompts).")
    measure: MeasureOptions = Field(default_factory=MeasureOptions, description="What is measured beside accuracy.")
    allow_pickle: bool = Field(False, description="Allow a pickled teacher checkpoint.")
    trust_remote_code: bool = Field(False, description="Allow the teacher's own Python code to run.")
    cache: bool = Field(True, description="Reuse and store the teacher's outputs on the eval data in the cache "
                        "(compress.cache); False runs the teacher afresh and stores nothing.")
    remote: str | None = Field(
        None, description="Measure on a device over SSH, user@host[:port] (system ssh; ~/.ssh/config applies)."
    )
    metric: str | None = Field(
        None, description="A user's metric, module:function, called with the outputs and labels (higher is better); "
        "it runs that code (compress.validation.user_metric).")
    remote_python: str = Field("python3", description="Python 3 on the remote device (with numpy and the runtime).")
    ssh_config: str | None = Field(
        None, description="ssh_config file for ssh -F (default: ssh's own, i.e. ~/.ssh/config)."
    )
    generation: GenerationOptions = Field(default_factory=GenerationOptions,
                                          description="Text generators: prompts, lengths, window.")


# -- the check ----------------------------------------------------------------------------------

def _teacher_dir(art: Artifact, given: str | None) -> Path | None:
    if given:
        return Path(given)
    from compress.artifact import reference_teacher

    src = Path(reference_teacher(art.manifest)[0])
    origin = art.manifest.source.origin or {}
    if not src.exists() and Path(origin.get("path", "")).is_file():  # the checkpoint a GGUF dequantized to, dropped
        from compress.device.facts import sha256_file  # from the cache: made again from the file, if it is the same
        from compress.teachers.gguf_checkpoint import gguf_checkpoint

        if sha256_file(origin["path"]) == origin.get("sha256"):
            return gguf_checkpoint(origin["path"])
    return src if src.exists() else None  # a checkpoint directory, or an adopted model file


def validate(
    artifact: Artifact | Path | str,
    config: ValidateConfig | None = None,
    *,
    progress: Progress | None = None,
) -> ValidationReport:
    """Measure ``artifact`` on ``config.profile`` and judge it. Raises only for bad input.

    ``progress`` receives :mod:`compress.progress` events, one phase after another (evaluating, timing, cold
    start, ...): counted by rows, or by the ``fraction`` reached; the CLI draws bars, library users can ignore it.
    """
    from compress.cache import usage as cache_usage
    from compress.profiles.load import load_profile
    from compress.runtimes.base import RuntimeSettings, load_runtime, runtime_class
    from compress.runtimes.host import runtime_for

    t_start = time.perf_counter()
    config = config or ValidateConfig()
    profile = load_profile(config.profile)
    from compress.validation.user_metric import load_metric

    user_metric = load_metric(config.metric) if config.metric else None  # fails before anything is measured
    if isinstance(artifact, Artifact):
        art = artifact
    else:
        from compress.teachers.load import load_source

        art = load_source(artifact, allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code)
    profile = runtime_for(profile, art.format)  # host: the runtime the artifact's format needs
    runtime_name = profile.runtime.name
    cls = runtime_class(runtime_name)
    remote = None
    if config.remote:  # checked before any data or teacher is loaded
        if TASKS[art.manifest.task].labels == "spans":
            raise ConfigError("--remote does not measure a question-answering model yet (its windows and best spans "
                              "are read here)", hint="validate on the host, or run validate on the device itself")
        from compress.validation.fleet import remote_of

        remote = remote_of(config, profile, art)
    # threads: the profile's, else one per core of the profiled device (the target's parallelism, not ours)
    settings = RuntimeSettings(
        threads=profile.runtime.threads or profile.hardware.cores,
        provider=profile.runtime.provider,
        options=dict(profile.runtime.options),
    )
    m = art.manifest
    warnings: list[str] = []
    if remote is None:
        # Is this machine the profiled device? If not, latency is a roofline estimate (UNVERIFIED) while
        # accuracy is still measured here: the artifact's arithmetic is the same on any CPU.
        device, estimating = _device_check(profile, config, warnings)
        run_settings = _host_settings(settings) if estimating else settings
        cls.check_artifact(art, run_settings)  # a missing device/provider/engine target fails before data loads
        if not cls.runs_here() and not estimating:
            raise MissingBackendError(f"{runtime_name} does not run on this machine ({sys.platform}), so "
                                      f"{profile.name} cannot be measured here",
                                      hint="run validate on the device (or --remote), or let it estimate "
                                      "(--estimate auto or always)")

    if (kind := kind_of(m)) in _KINDS:  # a generation or a stream: measured its own way
        run = ValidationRun(art, profile, config, settings, None, None, warnings, progress, t_start, user_metric)
        return _KINDS[kind](run, runtime_name, remote, None if remote else (run_settings, device, estimating))

    dataset = _eval_data(config, m)
    teacher = _teacher(art, config, warnings)
    run = ValidationRun(art, profile, config, settings, dataset, teacher, warnings, progress, t_start, user_metric)
    if remote is not None:  # the device measures; this machine tokenizes, runs the teacher and judges
        from compress.validation.fleet import measure_remote

        report = measure_remote(remote, run)
        return report.model_copy(update={"data": _data_record(config, dataset)})

    if not cls.runs_here():  # Core ML away from Apple's systems: nothing runs, the latency is estimated
        return _validate_unrunnable(run, device, runtime_name, dataset)
    log.info("loading %s in %s", art.path, runtime_name)
    backend = load_runtime(art, runtime_name, run_settings)
    metrics: dict[str, Any] = {}
    cache_use: dict[str, Any] = {}

    # accuracy, agreement and fidelity
    if dataset is not None:
        metrics.update(_accuracy(backend, run, run_settings, cache_use))

    # latency: artifact and the teacher's FP32 baseline, interleaved, same runtime and settings
    stats, estimates, batch = _latency(backend, run, runtime_name, metrics, estimating)
    env = _environment(backend, {**cache_usage(), **cache_use})
    backend.close()

    # cold start, peak memory
    cold = None
    if config.measure.cold_start:
        start_phase(progress, "cold start in a fresh process")
        cold = probe_cold_start(art, runtime_name, settings.threads, settings.provider, profile.measure.batch_size,
                                profile.measure.sequence_length, feeds=_plain_feeds(batch))
    report = conclude(run, metrics, stats, cold, env)
    report = report.model_copy(update={"data": _data_record(config, dataset)})
    return mark_estimated(report, run, device, estimates) if estimating else _note_device(report, device)


def _validate_generation(run: ValidationRun, runtime_name: str, remote, here) -> ValidationReport:
    """A causal LM: prompts through its KV cache, tokens/s, perplexity (``here``: the run settings, device and whether
    latency is estimated, for a run on this machine)."""
    from compress.validation.generation import validate_generation

    if remote is not None:
        raise ConfigError("--remote does not measure a text generator yet", hint="run validate on the device")
    return validate_generation(run.art, run, runtime_name, *here, tdir=_teacher_dir(run.art, run.config.teacher),
                               environment=_environment)


def _validate_stream(run: ValidationRun, runtime_name: str, remote, here) -> ValidationReport:
    """A streaming model: each sequence call by call, the state carried (here or on the ``remote`` device)."""
    from compress.validation.stream import validate_stream

    run_settings, device, estimating = here or (None, None, False)
    return validate_stream(run.art, run, runtime_name, run_settings, device, estimating,
                           tdir=_teacher_dir(run.art, run.config.teacher), environment=_environment, remote=remote)


#: how validate measures a model of each kind other than one forward pass (:func:`compress.tasks.kind_of`); a forward
#: model's rows are predicted and scored in :func:`validate` itself
_KINDS: dict[str, Callable[..., ValidationReport]] = {"generation": _validate_generation, "stream": _validate_stream}


def _eval_data(config: ValidateConfig, m):
    """``config.data`` read as the manifest ``m`` describes inputs and labels (SQuAD JSON for QA); None without."""
    from compress.data.inputs import load_inputs

    if config.data and TASKS[m.task].labels == "spans":  # question answering: SQuAD-format JSON
        from compress.data.squad import load_squad

        return load_squad(config.data, limit=config.limit)
    if not config.data:
        return None
    one_label = m.labels is not None and TASKS[m.task].labels != "values"  # labels named by class
    label2id = {name: i for i, name in enumerate(m.labels)} if one_label else None
    return load_inputs(config.data, m.preprocess, text_column=config.text_column,
                       text_pair_column=config.text_pair_column, label_column=config.label_column, label2id=label2id,
                       num_labels=len(m.labels) if one_label else None, require_labels=one_label, limit=config.limit,
                       targets=TASKS[m.task].targets)


def _teacher(art: Artifact, config: ValidateConfig, warnings: list[str]):
    """The teacher (``--teacher``, else the recorded source if it is here), with a warning when it is not the recorded
    one or there is none (None)."""
    from compress.artifact import reference_teacher
    from compress.teachers.load import load_teacher

    m = art.manifest
    tdir = _teacher_dir(art, config.teacher)
    if tdir is None:
        if config.teacher is None:
            warnings.append("no teacher: the recorded source is not on this machine; pass --teacher")
        return None
    teacher = load_teacher(tdir, m.task, allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code)
    ref_path, ref_sha = reference_teacher(m)
    if teacher.sha256 != ref_sha:
        warnings.append(f"teacher {tdir} differs from the artifact's recorded teacher ({ref_path}, "
                        f"sha256 {ref_sha[:12]}…): retention is measured against the teacher given")
    return teacher


def _latency(backend, run: ValidationRun, runtime_name: str, metrics: dict[str, Any], estimating: bool):
    """The artifact's and its FP32 baseline's latency (same runtime and settings) timed interleaved, or estimated
    (roofline): (stats, estimates or None, the artifact's batch)."""
    meas, m, dataset = run.profile.measure, run.art.manifest, run.dataset
    texts = latency_texts(dataset.inputs if dataset is not None else None, meas.batch_size, meas.sequence_length,
                          m.preprocess)
    batch = backend.encode(texts, pad_to=meas.sequence_length)
    if estimating:  # roofline of the artifact (and the FP32 baseline) against the profile's peaks
        start_phase(run.progress, "estimating latency (roofline)")
        stats, estimates = estimate_latency(run, runtime_name)
        return stats, estimates, batch
    runs: dict[str, Callable[[], Any]] = {"artifact": _runner(backend, batch)}
    baseline_backend = None
    if run.config.measure.baseline and run.teacher is not None:
        baseline_backend = _baseline_backend(run, runtime_name, metrics)
        if baseline_backend is not None:
            runs["baseline"] = _runner(baseline_backend, baseline_backend.encode(texts, pad_to=meas.sequence_length))
    stats = ForwardPass(runs, batch_size=meas.batch_size, warmup=meas.warmup, min_runs=meas.min_runs,
                        min_duration_s=meas.min_duration_s, max_runs=meas.max_runs,
                        phase=f"timing {' and '.join(runs)}").measure(run.progress)
    if baseline_backend is not None:
        baseline_backend.close()
    return stats, None, batch


def validate_on_devices(artifact, config, *, progress=None):
    """:func:`validate` that also measures on several devices: with ``config.remote`` a comma list or a fleet file it
    returns a :class:`compress.validation.fleet.FleetReport` (what ``edgecompress validate`` calls); plain
    ``validate`` refuses several devices, since its callers (a recipe's step, a search) read one device's report."""
    from compress.validation.fleet import accepting_fleets

    with accepting_fleets():
        return validate(artifact, config, progress=progress)


def _plain_feeds(batch) -> dict[str, Any] | None:
    """The timed batch for the cold-start probe when it is plain arrays by input name (else the probe makes its own)."""
    import numpy as np

    if isinstance(batch, dict) and batch and all(isinstance(v, np.ndarray) and v.dtype != object for v in batch.values()):
        return batch
    return None


def _baseline_backend(run: ValidationRun, runtime_name: str, metrics: dict[str, Any]):
    """The teacher's FP32 baseline loaded for timing beside the artifact: in PyTorch on every core when the profile's
    ``measure.speedup_baseline`` asks for what the artifact replaces, else in the artifact's runtime and settings
    (the baseline exported once and cached: :func:`~compress.validation.common.baseline_artifact`); None where
    there is none (the artifact is the PyTorch model itself: noted in the warnings)."""
    from compress.runtimes.base import RuntimeSettings, load_runtime
    from compress.teachers.load import teacher_format

    art, teacher, profile = run.art, run.teacher, run.profile
    if art.format is Format.pytorch:
        run.warnings.append("the artifact is the PyTorch model itself: no separate FP32 baseline")
        return None
    if profile.measure.speedup_baseline is SpeedupBaseline.pytorch and teacher_format(teacher) is Format.pytorch:
        metrics["speedup_baseline"] = f"teacher in PyTorch FP32 on {profile.hardware.cores} thread(s)"
        return load_runtime(teacher.as_artifact(), "torch", RuntimeSettings(threads=profile.hardware.cores))
    base_art = baseline_artifact(teacher, runtime_name, art, allow_pickle=run.config.allow_pickle)
    return None if base_art is None else load_runtime(base_art, runtime_name, run.settings)


def _environment(backend, cache: dict[str, Any]) -> dict[str, Any]:
    """Where the figures were measured: this machine, its Python and edgecompress, the runtime, the cache."""
    return {
        "host": platform.node(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "edgecompress": __version__,
        "runtime": backend.describe(),
        "measured_on": "local",
        "cache": cache,
    }


def _accuracy(backend, run: ValidationRun, settings, cache_use: dict[str, Any]) -> dict[str, Any]:
    """The artifact's outputs on the eval rows against the teacher's (from the cache when this teacher already ran
    on these rows): the task metric (or the user's), agreement, retention, and every output's fidelity."""
    from compress.validation.teacher_outputs import other_outputs_fidelity, teacher_outputs

    m = backend.artifact.manifest
    teacher, dataset, bs = run.teacher, run.dataset, scoring_batch(m, run.profile.measure)
    cand = predict_all(backend, dataset, bs, start_phase(run.progress, "evaluating the artifact", len(dataset)))
    ref = None
    if teacher is not None:
        ref, cache_use["teacher_outputs"] = teacher_outputs(
            teacher, dataset, batch_size=run.profile.measure.eval_batch_size, threads=settings.threads,
            use_cache=run.config.cache, progress=run.progress)
    metrics = {**prediction_metrics(m, cand, ref, dataset.labels, run.user_metric), "eval_batch_size": bs}
    if len(m.outputs) > 1 and teacher is not None and "output_fidelity" in metrics:
        metrics["output_fidelity"].update(other_outputs_fidelity(backend, run, settings))
    return metrics


def _data_record(config: ValidateConfig, dataset) -> dict[str, Any] | None:
    """Which data the report's metrics come from (None without --data)."""
    if dataset is None:
        return None
    from compress.validation.teacher_outputs import data_digest

    return {"path": str(Path(config.data).resolve()), "rows": len(dataset), "limit": config.limit,
            "sha256": data_digest(dataset)}


def _runner(backend, batch) -> Callable[[], Any]:
    def run():
        out = backend.run(batch)
        backend.synchronize()
        return out

    return run


# -- estimate mode: this machine is not the profiled device --------------------------------------

def _device_check(profile, config: ValidateConfig, warnings: list[str]):
    """(DeviceMatch, estimate?) for a local run of ``profile`` under ``config.measure.estimate``."""
    from compress.profiles.host import match_device

    device = match_device(profile)
    mode = EstimateMode(config.measure.estimate)
    if mode is EstimateMode.always:
        return device, True
    if device.is_device:
        if device.how == "class":
            from compress.profiles.load import detect_host

            missing = [f for f in profile.hardware.simd if f not in detect_host().hardware.simd]
            if missing:
                warnings.append(
                    f"this machine lacks {', '.join(missing)} that {profile.name} lists: its timings may not be "
                    f"representative of {profile.name}")
        return device, False
    if mode is EstimateMode.never:
        warnings.append(f"{device.reason}: latency and cold start were timed on this machine, not on {profile.name} "
                        "(--estimate never)")
        return device, False
    return device, True


def _host_settings(settings):
    """The profile's runtime settings with threads capped at this machine's cores (accuracy runs here)."""
    import dataclasses
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return dataclasses.replace(settings, threads=min(settings.threads or cores, cores))


def _estimated_latency(est, label: str) -> dict[str, Any]:
    ms = round(est.latency_ms, 4)
    return {"p50": ms, "p90": ms, "p95": ms, "p99": ms, "mean": ms, "n": 0, "estimated": True, "measured_on": label,
            "note": "a roofline gives one figure: p90/p95/p99 equal p50 (no tail)"}


def mark_estimated(report: ValidationReport, run: ValidationRun, device, estimates: dict[str, Any], *,
                   not_run: str | None = None) -> ValidationReport:
    """Turn a local run's report into an estimate-mode report.

    Latency, throughput, speedup and cold start become the roofline estimates, flagged ``estimated``
    with where they come from; their budgets are UNVERIFIED (never PASS). Accuracy, agreement and
    size stay measured (the arithmetic and the files are the same on any CPU). Peak memory is this
    host's measurement: judged when the device has this machine's arch, UNVERIFIED otherwise (another
    arch runs another build of the runtime). Verdict: fail if a measured budget fails, else
    unverified if any budget is, else pass. ``not_run`` (why the artifact could not run here at all): only its size
    was measured; every other budget is UNVERIFIED with that reason.
    """
    from compress.estimates.roofline import MEASURED_ERROR, estimate_cold_start
    from compress.profiles.load import detect_host

    profile = run.profile
    met = dict(report.metrics)
    env = dict(report.environment)
    label = f"estimate (roofline from {profile.name} peaks)"
    host = f"this host ({env.get('cpu')}, {device.host_arch})"
    same_arch = device.host_arch == profile.hardware.arch.value
    est = estimates.get("artifact")
    estimated: list[str] = []
    if est is None:
        for key in ("latency_ms", "throughput", "baseline_latency_ms", "speedup"):
            met.pop(key, None)
    else:
        met["latency_ms"] = _estimated_latency(est, label)
        met["throughput"] = est.throughput
        met["estimate"] = {**est.as_dict(), "estimated": True, "measured_on": label}
        if MEASURED_ERROR:
            met["estimate"]["error_on_calibration_host"] = dict(MEASURED_ERROR)
        estimated += ["latency_ms", "throughput"]
        if "baseline" in estimates:
            met["baseline_latency_ms"] = _estimated_latency(estimates["baseline"], label)
            met["speedup"] = estimates["baseline"].latency_ms / est.latency_ms
            estimated.append("speedup")
        else:
            met.pop("baseline_latency_ms", None)
            met.pop("speedup", None)
    if "cold_start" in met:
        met["cold_start"] = {**met["cold_start"], "measured_on": host}
        met["cold_start_ms_this_host"] = met.pop("cold_start_ms", None)
        if est is not None:
            met["cold_start_ms"] = round(estimate_cold_start(
                met["cold_start"], detect_host().hardware.clock_ghz, profile.hardware.clock_ghz, est.latency_ms), 2)
            estimated.append("cold_start_ms")
    met["estimated"] = True
    met["measured_on"] = label
    met["estimated_metrics"] = estimated
    met["measured_on_this_host"] = [k for k in ("metric", "agreement", "retention", "size_mb", "peak_rss_mb")
                                    if k in met]
    if not_run:
        met["not_run"] = not_run

    budgets = judge(profile.budgets, met)
    for b in budgets:
        if b.name in ESTIMATED_BUDGETS:
            b.status, b.passed = BudgetStatus.unverified, False
            b.measured_on = label if b.measured is not None else None
            b.estimated = b.measured is not None
            if b.measured is None:
                b.note = f"no estimate ({b.note or 'not available'}); not measured on {profile.name}"
            else:
                holds = b.measured <= b.limit if b.comparison == "<=" else b.measured >= b.limit
                b.note = (f"estimated, not measured on {profile.name}: the estimate "
                          + ("is within the limit" if holds else "misses the limit (likely to fail on the device)"))
        elif not_run and b.measured is None:
            b.note = f"not measured: {not_run}"
        elif b.name == "max_peak_memory_mb" and not same_arch:  # another build of the runtime: not ours to judge
            b.status, b.passed = BudgetStatus.unverified, False
            b.measured_on = host if b.measured is not None else None
            b.note = (f"{'measured on this host' if b.measured is not None else 'not measured'} "
                      f"({device.host_arch}); {profile.name} is {profile.hardware.arch.value}, whose runtime build "
                      "differs")
        elif b.name == "max_peak_memory_mb" and b.measured is not None:
            b.measured_on = host
            b.note = f"measured on this host, same arch as {profile.name}"
    unmeasured = [b.name for b in budgets] if not_run else ESTIMATED_BUDGETS  # their notes say why
    warnings = [w for w in report.warnings
                if not any(w.startswith(f"budget {n} could not be measured") for n in unmeasured)]
    warnings.insert(0, (
        f"{not_run}: latency, throughput and speedup are ESTIMATED from {profile.name}'s peaks (roofline of the "
        "artifact's own graph) and their budgets are UNVERIFIED, as are accuracy, agreement, cold start and peak "
        "memory, which were not measured; only the size was. Run validate on the device for real figures."
    ) if not_run else (
        f"{device.reason}: latency, throughput, speedup and cold start are ESTIMATED from {profile.name}'s peaks "
        "(roofline, compress.estimates.roofline) and their budgets are UNVERIFIED; accuracy, agreement, size and peak memory "
        f"were measured on this host. For real figures run on the device or pass --remote user@host."))
    verdict = verdict_of(budgets)
    env["device_match"] = device.as_dict()
    env["latency_source"] = label
    return report.model_copy(update={
        "verdict": verdict, "budgets": budgets, "metrics": met, "warnings": warnings, "environment": env,
        "seconds": round(time.perf_counter() - run.t_start, 2),
    })


def _validate_unrunnable(run: ValidationRun, device, runtime_name: str, dataset) -> ValidationReport:
    """An artifact whose runtime does not exist on this machine (Core ML off Apple's systems): its size is measured,
    its latency estimated from its own graph, and accuracy, agreement, cold start and peak memory are not measured
    (their budgets UNVERIFIED)."""
    start_phase(run.progress, "estimating latency (roofline)")
    stats, estimates = estimate_latency(run, runtime_name)
    from compress.runtimes.base import runtime_class

    env = {"host": platform.node(), "machine": platform.machine(), "cpu": cpu_model(),
           "python": platform.python_version(), "edgecompress": __version__,
           "runtime": {"runtime": runtime_name, "version": runtime_class(runtime_name).version(), "ran": False,
                       "format": str(run.art.format), "precision": str(run.art.precision)},
           "measured_on": "not run: estimated"}
    report = conclude(run, {}, stats, None, env)
    report = report.model_copy(update={"data": _data_record(run.config, dataset)})
    return mark_estimated(report, run, device, estimates,
                          not_run=f"{runtime_name} does not run on this machine ({sys.platform})")


def _note_device(report: ValidationReport, device) -> ValidationReport:
    """Record which machine measured a local run (for a class profile: this host's CPU)."""
    env = dict(report.environment)
    env["device_match"] = device.as_dict()
    return report.model_copy(update={"environment": env})
