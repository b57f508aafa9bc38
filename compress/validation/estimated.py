"""Latency estimated instead of measured (validate's estimate mode: this machine is not the profiled device): the
roofline of the artifact, and of the teacher's FP32 baseline, on the profile's peaks (:func:`estimate_latency`),
as :class:`~compress.host.measure.LatencyStats` holding one figure. :mod:`compress.validation.local` marks the report
estimated."""

from __future__ import annotations

from typing import Any

from compress.artifact import Format
from compress.host.measure import LatencyStats
from compress.profiles.schema import SpeedupBaseline
from compress.validation.common import ValidationRun, baseline_artifact

__all__ = ["estimate_latency", "point_stats"]


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
