"""How an artifact's outputs compare with the teacher's, whatever the task: per-sample cosines, the SNR, the largest
error and top-1 agreement over the class axis (:func:`output_fidelity`, reported for every task by validate)."""

from __future__ import annotations

from typing import Any

import numpy as np

from compress.tasks import TASKS

#: the SNR reported for outputs that match exactly (an infinite ratio is not a JSON number)
SNR_CAP_DB = 200.0


def unit(x: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (a zero row stays near zero)."""
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def class_axis(m, ndim: int) -> int | None:
    """The axis of the primary output holding class scores: ``postprocess.class_axis``, else the task's
    (``TASKS[task].class_axis``), else the last axis of a [batch, classes] output; None when the output holds no class
    scores edgecompress can name."""
    axis = getattr(m.postprocess, "class_axis", None)
    if axis is not None:
        return axis if -ndim <= axis < ndim else None
    own = TASKS[m.task].class_axis
    if own is not None:
        return own
    return -1 if ndim == 2 else None


def row_cosines(cand: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """The cosine of each sample (first axis) against the reference's, over every value of it (a map flattened). In
    float64, so outputs of 1e-20 (an untrained net's logits) still compare; two equal samples (two all-zero ones
    included) agree: 1.0."""
    c = cand.reshape(len(cand), -1).astype(np.float64)
    r = ref.reshape(len(ref), -1).astype(np.float64)
    den = np.linalg.norm(c, axis=1) * np.linalg.norm(r, axis=1)
    return np.where(np.all(c == r, axis=1), 1.0, (c * r).sum(axis=1) / np.clip(den, 1e-300, None))


def snr_db(signal: float, noise: float) -> float:
    """Signal-to-noise ratio in dB (sums of squares), :data:`SNR_CAP_DB` where the noise is zero or smaller still."""
    return SNR_CAP_DB if noise == 0 else float(min(SNR_CAP_DB, 10 * np.log10(max(signal, 1e-300) / noise)))


def _masked(cand: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``cand`` and ``ref`` with the positions either leaves NaN (what a row does not have) zeroed, and the mask of
    the valid ones (None when every position is)."""
    if not (np.isnan(ref).any() or np.isnan(cand).any()):
        return cand, ref, None
    valid = np.isfinite(ref) & np.isfinite(cand)
    return np.where(valid, cand, 0.0), np.where(valid, ref, 0.0), valid


def output_fidelity(cand: np.ndarray, ref: np.ndarray, axis: int | None = None) -> dict[str, Any]:
    """How far an output is from the FP32 model's on the same rows: mean and lowest per-row cosine, SNR in dB over
    all values, largest absolute error, and top-1 agreement over ``axis`` (class scores) when given. NaN marks what a
    row does not have (per-word scores beyond its words): left out of every figure."""
    cand, ref, valid = _masked(cand, ref)
    diff = cand.astype(np.float64) - ref.astype(np.float64)
    cos = row_cosines(cand, ref)
    out: dict[str, Any] = {"cosine": float(cos.mean()), "cosine_min": float(cos.min()),
                           "snr_db": snr_db(float((ref.astype(np.float64) ** 2).sum()), float((diff ** 2).sum())),
                           "max_abs_error": float(np.abs(diff).max()) if diff.size else 0.0}
    if axis is not None and cand.shape[axis] > 1:
        same = cand.argmax(axis) == ref.argmax(axis)
        out["top1_agreement"] = float(same.mean() if valid is None else same[valid.all(axis)].mean())
    return out


def fidelity_of(m, cand: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """:func:`output_fidelity` of the manifest ``m``'s primary output, top-1 agreement over its class axis unless its
    task's agreement is judged otherwise (embeddings: by neighbours)."""
    axis = class_axis(m, cand.ndim) if TASKS[m.task].agreement != "neighbours" else None
    return output_fidelity(cand, ref, axis)


class FidelityStream:
    """:func:`fidelity_of` batch by batch: the sums and extremes it is made of (rows, summed and lowest per-row
    cosine, signal and noise sums of squares, largest error, top-1 hits over the class axis), so its state does not
    grow with the batches. Equal to the array form up to the order of float sums."""

    def __init__(self, m) -> None:
        self.m = m
        self.rows = self.hits = self.positions = 0
        self.cos_sum, self.cos_min, self.signal, self.noise, self.max_err = 0.0, np.inf, 0.0, 0.0, 0.0
        self.axis: int | None = None
        self.agrees = False

    def update(self, cand: np.ndarray, ref: np.ndarray) -> None:
        """Add one batch of the artifact's outputs and the teacher's."""
        if not self.rows:
            self.axis = class_axis(self.m, cand.ndim) if TASKS[self.m.task].agreement != "neighbours" else None
            self.agrees = self.axis is not None and cand.shape[self.axis] > 1
        cand, ref, valid = _masked(cand, ref)
        diff = cand.astype(np.float64) - ref.astype(np.float64)
        cos = row_cosines(cand, ref)
        self.rows += len(cos)
        self.cos_sum += float(cos.sum())
        self.cos_min = min(self.cos_min, float(cos.min())) if len(cos) else self.cos_min
        self.signal += float((ref.astype(np.float64) ** 2).sum())
        self.noise += float((diff ** 2).sum())
        self.max_err = max(self.max_err, float(np.abs(diff).max()) if diff.size else 0.0)
        if self.agrees:
            same = cand.argmax(self.axis) == ref.argmax(self.axis)
            same = same if valid is None else same[valid.all(self.axis)]
            self.hits += int(same.sum())
            self.positions += same.size

    def result(self) -> dict[str, Any]:
        """What :func:`output_fidelity` gives on the batches joined."""
        out: dict[str, Any] = {"cosine": self.cos_sum / self.rows if self.rows else float("nan"),
                               "cosine_min": self.cos_min, "snr_db": snr_db(self.signal, self.noise),
                               "max_abs_error": self.max_err}
        if self.agrees:
            out["top1_agreement"] = self.hits / self.positions if self.positions else float("nan")
        return out
