"""Classification (``text-classification``, ``image-classification``, and a ``generic`` model whose manifest names
classes): accuracy is the metric, macro-F1 and top-5 beside it, agreement is the share of samples whose top class is
the teacher's. A generic model without classes is judged by its outputs' cosine to the teacher's."""

from __future__ import annotations

from typing import Any

import numpy as np

from compress.tasks.outputs import fidelity_of


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


def classification_metrics(m, cand: np.ndarray, ref: np.ndarray | None, labels) -> dict[str, Any]:
    """Accuracy (the metric), macro-F1, the per-row ``correct`` string (what ``edgecompress gate`` pairs), top-5 for
    more than 5 classes; the teacher's; agreement (the same top class as the teacher)."""
    labels = np.asarray(labels)
    k = len(m.labels or [])
    pred = cand.argmax(-1)
    metrics: dict[str, Any] = {"metric_name": "accuracy", "metric": accuracy(pred, labels),
                               "macro_f1": macro_f1(pred, labels, k)}
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
    return metrics


def output_cosine_metrics(m, cand: np.ndarray, ref: np.ndarray | None, labels) -> dict[str, Any]:
    """A model without classes edgecompress can name: the output's cosine to the teacher's is the metric, top-1
    agreement over the class axis where it has one."""
    metrics: dict[str, Any] = {"metric_name": "output_cosine"}
    if ref is not None:
        fid = fidelity_of(m, cand, ref)
        metrics["metric"] = fid["cosine"]
        metrics["teacher_metric"] = 1.0
        if "top1_agreement" in fid:
            metrics["agreement"] = fid["top1_agreement"]
            metrics["agreement_definition"] = "share of outputs whose top class (over the class axis) is the teacher's"
    return metrics
