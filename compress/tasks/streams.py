"""A streaming model's per-call outputs against its FP32 teacher's, sequence by sequence (the manifest's ``stream``):
what ``validate`` reports and quantize's parity check judges.

* **decisions** of a per-call probability (a task whose ``postprocess`` has a ``threshold``: multi-label
  classification, Silero VAD's ``labels: [speech]``): the share of calls whose decision is the teacher's;
* **fidelity** of each sequence's trace (the calls' outputs as one row): cosine of the whole trace, the lowest
  sequence's, SNR in dB, largest and mean absolute error. A per-call cosine of a one-value output is only its sign,
  so the trace is what is compared.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compress.tasks.outputs import output_fidelity

__all__ = ["decisions", "stream_figures"]


def decisions(m, values: np.ndarray) -> np.ndarray | None:
    """The per-call decisions (``[calls, classes]`` booleans) of a probability output: ``postprocess.threshold``
    (default 0.5) on the probability (the sigmoid of a score unless ``scores_are_probabilities``); None for a task
    without a threshold."""
    post = m.postprocess
    if not hasattr(post, "threshold"):
        return None
    x = values.reshape(len(values), -1).astype(np.float64)
    probs = x if post.scores_are_probabilities else 1.0 / (1.0 + np.exp(-x))
    return probs >= (post.threshold or 0.5)


def stream_figures(m, cand: list[np.ndarray], ref: list[np.ndarray]) -> dict[str, Any]:
    """The artifact's traces (one ``[calls, ...]`` array per sequence) against the teacher's: ``fidelity`` and, where
    the task has a threshold, ``decision_agreement`` (share of calls), ``calls_changed`` and each one's share of
    positive calls."""
    a, b = np.concatenate(cand), np.concatenate(ref)
    fid = output_fidelity(a.reshape(1, -1), b.reshape(1, -1))  # the whole trace as one row
    fid["cosine_min"] = min(float(output_fidelity(c.reshape(1, -1), r.reshape(1, -1))["cosine"])
                            for c, r in zip(cand, ref, strict=True))
    fid["mean_abs_error"] = float(np.abs(a.astype(np.float64) - b).mean())
    out: dict[str, Any] = {"fidelity": fid}
    da, db = decisions(m, a), decisions(m, b)
    if da is not None:
        same = (da == db).all(axis=1)
        out.update({"threshold": m.postprocess.threshold or 0.5, "decision_agreement": float(same.mean()),
                    "calls_changed": int((~same).sum()), "positive_share": float(da.mean()),
                    "teacher_positive_share": float(db.mean())})
    return out
