"""Latency estimated instead of measured (validate's estimate mode: this machine is not the profiled device): the
roofline of the artifact, and of the teacher's FP32 baseline, on the profile's peaks (:func:`estimate_latency`),
as :class:`~compress.host.measure.LatencyStats` holding one figure; whether this machine is the profiled device
(:func:`device_check`), the report marked estimated (:func:`mark_estimated`: those figures' budgets UNVERIFIED), and
the run of an artifact whose runtime does not exist here at all (:func:`validate_unrunnable`)."""

from __future__ import annotations

import platform
import sys
import time
from typing import Any

from compress import __version__
from compress.artifact import Format
from compress.device.facts import cpu_model
from compress.host.measure import LatencyStats
from compress.profiles.budgets import ESTIMATED_BUDGETS, BudgetStatus, judge, verdict_of
from compress.profiles.schema import SpeedupBaseline
from compress.progress import start_phase
from compress.validation.common import ValidationReport, ValidationRun, baseline_artifact, conclude
from compress.validation.config import EstimateMode, ValidateConfig

__all__ = ["device_check", "estimate_latency", "host_settings", "mark_estimated", "note_device", "point_stats",
           "validate_unrunnable"]


def point_stats(ms: float, batch_size: int) -> LatencyStats:
    """A LatencyStats holding one estimated figure (no runs, no spread)."""
    return LatencyStats(n=0, p50=ms, p90=ms, p95=ms, p99=ms, mean=ms, std=0.0, min=ms, max=ms, cv=0.0, total_s=0.0,
                        batch_size=batch_size, throughput=batch_size * 1000.0 / ms if ms > 0 else 0.0)


def estimate_latency(run: ValidationRun, runtime_name: str) -> tuple[dict[str, LatencyStats], dict[str, Any]]:
    """Roofline estimates of the artifact (and the teacher's FP32 baseline) on the profile's peaks."""
    from compress.errors import EdgeCompressError
    from compress.estimates.roofline import estimate, host_peaks, profile_peaks

    art, profile, teacher, config, warnings = run.art, run.profile, run.teacher, run.config, run.warnings
    meas = profile.measure
    try:
        peaks = host_peaks() if profile.source == "detected" else profile_peaks(profile)
        est = estimate(art, profile, peaks=peaks)
    except EdgeCompressError as exc:
        warnings.append(f"no latency estimate: {exc}")
        return {"artifact": point_stats(float("nan"), meas.batch_size)}, {}
    out: dict[str, Any] = {"artifact": est}
    stats = {"artifact": point_stats(est.latency_ms, meas.batch_size)}
    if config.measure.baseline and teacher is not None and profile.measure.speedup_baseline is SpeedupBaseline.pytorch:
        warnings.append("speedup against the PyTorch teacher (measure.speedup_baseline: pytorch) is measured on the "
                        "device, not estimated: no speedup")
    elif config.measure.baseline and teacher is not None and art.format is not Format.pytorch:
        base_art = baseline_artifact(teacher, runtime_name, art, allow_pickle=config.allow_pickle)
        if base_art is not None:
            out["baseline"] = estimate(base_art, profile, peaks=peaks)
            stats["baseline"] = point_stats(out["baseline"].latency_ms, meas.batch_size)
    return stats, out


# -- estimate mode: this machine is not the profiled device --------------------------------------

def device_check(profile, config: ValidateConfig, warnings: list[str]):
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


def host_settings(settings):
    """The profile's runtime settings with threads capped at the CPUs this process may use (affinity and cgroup
    quota: :func:`compress.host.cpu.usable_cpus`): what runs on this machine runs no more threads than it has."""
    import dataclasses

    from compress.host.cpu import usable_cpus

    cores = usable_cpus()
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


def validate_unrunnable(run: ValidationRun, device, runtime_name: str) -> ValidationReport:
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
    return mark_estimated(conclude(run, {}, stats, None, env), run, device, estimates,
                          not_run=f"{runtime_name} does not run on this machine ({sys.platform})")


def note_device(report: ValidationReport, device) -> ValidationReport:
    """Record which machine measured a local run (for a class profile: this host's CPU)."""
    env = dict(report.environment)
    env["device_match"] = device.as_dict()
    return report.model_copy(update={"environment": env})
