"""``validate`` of a streaming model (the manifest's ``stream``: Silero VAD and any model called chunk by chunk with a
recurrent state fed back).

Every sequence of ``--data`` (a ``.wav`` or a folder of them, an ``.npz`` of ordered rows:
:func:`compress.data.streams.read_sequences`) runs call by call through the artifact and through the FP32 teacher, the
state each call returns fed into the next and reset per sequence (:meth:`~compress.runtimes.base.RuntimeBackend
.run_stream`). What is judged:

Both figures are :mod:`compress.tasks.streams`':

- **decisions**: for a per-call probability (``task: multi-label-classification`` with its ``postprocess.threshold``,
  default 0.5), the share of calls whose thresholded decision (speech / no speech) is the teacher's:
  ``decision_agreement``, the report's ``agreement``. Without labels it is also the metric (the teacher's is 1.0,
  retention = agreement); with per-call ``labels`` (an ``.npz``) the task's own metric (micro F1) is the metric;
- **fidelity** of the primary output's trace over each sequence (cosine of the whole trace, ``cosine_min`` the lowest sequence's, SNR
  in dB, largest and mean absolute error), for any task;
- **latency per call** (one chunk with the state fed back, :class:`compress.host.measure.Stream`) of the artifact and
  of the teacher's FP32 model in the same runtime and threads, p50/p90 side by side; the cold start of one call.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from compress.host.measure import LatencyStats, Stream, probe_cold_start
from compress.progress import start_phase
from compress.validation.common import ValidationRun, baseline_artifact, conclude
from compress.validation.stream_metrics import stream_metrics, stream_outputs

__all__ = ["validate_stream"]

#: the calls of the first sequence timed per pass, and the passes of each model (alternating)
TIMED_CALLS = 256
TIMED_PASSES = 5


def _timed(backends: dict[str, Any], sequences, calls) -> dict[str, Any]:
    """Per-call latency of each backend over the first sequence's first calls, the state fed back
    (:class:`~compress.host.measure.Stream`): one untimed pass each, then :data:`TIMED_PASSES` rounds in which each
    backend streams once in turn, so a busy moment of the machine falls on both alike."""
    windows = calls.split(sequences[0].values)[:TIMED_CALLS]
    constants = calls.constant_feeds()
    chunks = [{calls.input: w[None], **constants} for w in windows]
    streams = {name: Stream(b, chunks) for name, b in backends.items()}
    for s in streams.values():
        s.run_stream()
    samples: dict[str, list[float]] = {name: [] for name in streams}
    for _ in range(TIMED_PASSES):
        for name, s in streams.items():
            samples[name] += s.run_stream()[0]
    return {name: LatencyStats.from_samples(v, 1) for name, v in samples.items()}


def validate_stream(art, run: ValidationRun, runtime_name: str, run_settings, device, estimating: bool, *,
                    tdir: Path | None, environment, remote=None):
    """Validate a streaming artifact (see the module doc); ``run`` is the
    :class:`~compress.validation.common.ValidationRun` without data or teacher, ``tdir`` the teacher (None: not on
    this machine), ``environment(backend, cache)`` the report's environment. ``remote``
    (:class:`~compress.validation.ssh.RemoteTarget`): the device streams the sequences and times the calls
    (:func:`compress.validation.remote.validate_remote`), the teacher streams here."""
    from compress.data.streams import sequences_for
    from compress.runtimes.base import load_runtime
    from compress.teachers.load import load_teacher

    config, warnings, progress, m = run.config, run.warnings, run.progress, art.manifest
    if estimating:
        warnings.append(f"{device.reason}: a stream's per-call latency is timed on this machine, not estimated")
    sequences = sequences_for(m, config.data, config.limit) if config.data else None
    teacher = load_teacher(tdir, m.task, allow_pickle=config.allow_pickle) if tdir is not None else None
    if teacher is None:
        warnings.append("no teacher: the recorded source is not on this machine; pass --teacher")
    run.teacher = teacher
    if remote is not None:
        from compress.validation.fleet import measure_remote

        run.dataset = sequences
        report = measure_remote(remote, run)
        chunk = m.stream.chunk
        return report.model_copy(update={"data": _data_record(config, sequences, chunk) if config.data else None})
    backend = load_runtime(art, runtime_name, run_settings)
    calls = backend.stream_calls
    ref_backend = None
    if teacher is not None:
        base = baseline_artifact(teacher, runtime_name, art, allow_pickle=config.allow_pickle)
        ref_backend = load_runtime(base or teacher.as_artifact(), runtime_name if base else None, run_settings)
    metrics: dict[str, Any] = {}
    if sequences is not None:
        cand = stream_outputs(backend, sequences, progress, "streaming the artifact")
        ref = stream_outputs(ref_backend, sequences, progress, "streaming the teacher") if ref_backend else None
        labels = [row for s in sequences for row in s.labels] if all(s.labels is not None for s in sequences) else None
        metrics.update(stream_metrics(m, cand, ref, labels, run.user_metric))
        metrics.setdefault("stream", {}).update({"chunk": calls.chunk, "context": calls.context,
                                                 "state": dict(calls.state)})
    else:
        from compress.data.streams import seeded_sequence

        warnings.append("no --data: accuracy, agreement and fidelity were not measured (pass a .wav, a folder of "
                        "them, or an .npz of the calls' rows)")
        sequences = [seeded_sequence(calls.chunk, TIMED_CALLS)]

    start_phase(progress, "timing calls with the state fed back")
    timed = {"artifact": backend}
    if ref_backend is not None and config.measure.baseline:
        timed["baseline"] = ref_backend
        metrics["speedup_baseline"] = "the teacher's FP32 model, same runtime and threads, per call, in alternating passes"
    stats = _timed(timed, sequences, calls)
    env = environment(backend, {})
    backend.close()
    if ref_backend is not None:
        ref_backend.close()
    cold = None
    if config.measure.cold_start:
        start_phase(progress, "cold start in a fresh process")
        first = calls.first_call({calls.input: calls.split(sequences[0].values)[:1]})
        cold = probe_cold_start(art, runtime_name, run.settings.threads, run.settings.provider, 1, calls.window,
                                feeds=first)
    report = conclude(run, metrics, stats, cold, env)
    return report.model_copy(update={"data": _data_record(config, sequences, calls.chunk) if config.data else None})


def _data_record(config, sequences, chunk: int) -> dict[str, Any]:
    h = hashlib.sha256()
    for s in sequences:
        h.update(s.name.encode())
        h.update(np.ascontiguousarray(s.values).tobytes())
    return {"path": str(Path(config.data).resolve()), "rows": int(sum(s.calls(chunk) for s in sequences)),
            "sequences": [s.name for s in sequences], "limit": config.limit, "sha256": h.hexdigest()}

