"""Metrics every layer shares: accuracy, macro-F1, neighbour agreement, and the prediction metrics of an
artifact against its teacher (local and remote validation, accuracy-aware quantization)."""

from __future__ import annotations

from typing import Any

import numpy as np

from compress.artifact import Task


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float((pred == labels).mean())


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose label is among the ``k`` highest scores."""
    top = np.argsort(-scores, axis=-1)[:, :k]
    return float((top == np.asarray(labels)[:, None]).any(axis=1).mean())


def macro_f1(pred: np.ndarray, labels: np.ndarray, num_labels: int) -> float:
    scores = []
    for c in range(num_labels):
        tp = float(((pred == c) & (labels == c)).sum())
        fp = float(((pred == c) & (labels != c)).sum())
        fn = float(((pred != c) & (labels == c)).sum())
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def neighbour_agreement(reference: np.ndarray, candidate: np.ndarray, k: int = 1) -> float:
    """Share of rows whose nearest other row under ``reference`` is among the ``k`` nearest under ``candidate``.

    k=1: the same nearest neighbour; k=3 tolerates near-ties between neighbours, which short texts
    have many of (and which quantization noise legitimately reorders).
    """
    if len(reference) < 2:
        return 1.0

    def sims(e: np.ndarray) -> np.ndarray:
        u = _unit(e.astype(np.float64))
        sim = u @ u.T
        np.fill_diagonal(sim, -np.inf)
        return sim

    ref_nn = sims(reference).argmax(axis=1)
    cand_topk = np.argsort(-sims(candidate), axis=1)[:, : min(k, len(reference) - 1)]
    return float((cand_topk == ref_nn[:, None]).any(axis=1).mean())


def prediction_metrics(m, cand: np.ndarray, ref: np.ndarray | None, labels) -> dict[str, Any]:
    """Task metric, teacher metric, agreement and retention from the artifact's outputs ``cand`` and the
    teacher's ``ref`` (None: no teacher) on the eval rows; shared by local and remote validation."""
    metrics: dict[str, Any] = {"eval_samples": len(cand)}
    if m.task in (Task.text_classification, Task.image_classification):
        labels = np.asarray(labels)
        k = len(m.labels or [])
        pred = cand.argmax(-1)
        metrics["metric_name"] = "accuracy"
        metrics["metric"] = accuracy(pred, labels)
        metrics["macro_f1"] = macro_f1(pred, labels, k)
        # per row, in data order: what `edgecompress gate` pairs (McNemar) against a baseline report's rows
        metrics["correct"] = "".join("1" if ok else "0" for ok in (pred == labels))
        if k > 5:  # top-5, where it means something
            metrics["top5"] = top_k_accuracy(cand, labels, 5)
        if ref is not None:
            tpred = ref.argmax(-1)
            metrics["teacher_metric"] = accuracy(tpred, labels)
            metrics["teacher_macro_f1"] = macro_f1(tpred, labels, k)
            metrics["agreement"] = float((pred == tpred).mean())
            if k > 5:
                metrics["teacher_top5"] = top_k_accuracy(ref, labels, 5)
    else:
        metrics["metric_name"] = "cosine_to_teacher"
        if ref is not None:
            cos = (_unit(cand.astype(np.float64)) * _unit(ref.astype(np.float64))).sum(axis=1)
            metrics["metric"] = float(cos.mean())
            metrics["cosine_min"] = float(cos.min())
            metrics["teacher_metric"] = 1.0
            metrics["agreement"] = neighbour_agreement(ref, cand, k=3)
            metrics["agreement_top1"] = neighbour_agreement(ref, cand, k=1)
            metrics["agreement_definition"] = (
                "share of eval texts whose nearest neighbour under the teacher is among the artifact's 3 nearest"
            )
    if metrics.get("teacher_metric"):
        metrics["retention"] = metrics["metric"] / metrics["teacher_metric"]
    return metrics
