"""A streaming model's figures from its outputs, sequence by sequence: what local (:mod:`compress.validation.stream`)
and remote (:mod:`compress.validation.remote`) validation of a stream share."""

from __future__ import annotations

from typing import Any

import numpy as np

from compress.progress import start_phase
from compress.tasks.streams import stream_figures
from compress.validation.metrics import prediction_metrics

__all__ = ["stream_metrics", "stream_outputs"]


def stream_outputs(backend, sequences, progress=None, phase: str = "streaming") -> list[np.ndarray]:
    """The primary output of every call of each sequence, ``[calls, ...]`` per sequence, the state carried."""
    name = backend.artifact.manifest.outputs[0].name
    chunk = backend.artifact.manifest.stream.chunk
    tick = start_phase(progress, phase, sum(s.calls(chunk) for s in sequences)) if progress else None
    out = []
    for seq in sequences:
        out.append(np.asarray(backend.run_stream(seq.values)[name], dtype=np.float32))
        if tick:
            tick(len(out[-1]))
    return out


def stream_metrics(m, cand: list[np.ndarray], ref: list[np.ndarray] | None, labels, user_metric) -> dict[str, Any]:
    """The report's metrics from the artifact's outputs on each sequence (``cand``) and the teacher's (``ref``, None
    without a teacher), local or remote: the task's, then the stream's figures (see the module doc)."""
    a = np.concatenate(cand)
    metrics = prediction_metrics(m, a, None if ref is None else np.concatenate(ref), labels, user_metric)
    metrics["stream"] = {"sequences": len(cand), "calls": int(len(a)), "state_carried": True,
                         "first_outputs": [float(v) for v in cand[0].reshape(len(cand[0]), -1)[:4, 0]]}
    if ref is None:
        return metrics
    figures = stream_figures(m, cand, ref)
    name = m.outputs[0].name
    metrics["output_fidelity"] = {name: figures["fidelity"]}
    metrics["output_cosine"], metrics["output_snr_db"] = figures["fidelity"]["cosine"], figures["fidelity"]["snr_db"]
    if "decision_agreement" in figures:
        if "agreement" in metrics:
            metrics["agreement_f1"] = metrics.pop("agreement")
        metrics["agreement"] = figures["decision_agreement"]
        metrics["agreement_definition"] = (f"share of calls whose decision at threshold {figures['threshold']} is the "
                                           "teacher's (the state carried through each sequence)")
        if labels is None and user_metric is None:  # no labels: agreeing with the FP32 decisions is the measure
            metrics.update({"metric_name": "decision_agreement", "metric": figures["decision_agreement"],
                            "teacher_metric": 1.0, "retention": figures["decision_agreement"]})
    metrics["stream"].update({k: v for k, v in figures.items() if k != "fidelity"})
    return metrics
