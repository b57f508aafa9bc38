"""Classification (``text-classification``, ``image-classification``, and a ``generic`` model whose manifest names
classes): accuracy is the metric, macro-F1 and top-5 beside it, agreement is the share of samples whose top class is
the teacher's. A generic model without classes is judged by its outputs' cosine to the teacher's."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from compress.tasks import StreamingMetric
from compress.tasks.outputs import FidelityStream, fidelity_of


class ClassPostprocess(BaseModel):
    """The ``postprocess`` block of a task judged by class scores or by its outputs (text and image
    classification, semantic segmentation, token classification, regression, generic): where the class scores lie."""

    model_config = ConfigDict(extra="forbid")
    class_axis: int | None = Field(
        None, description="The axis of the primary output that holds class scores, for top-1 agreement (a "
        "segmentation map's channels: 1); None: the task's (compress.tasks.TASKS), else the last axis of a "
        "[batch, classes] output.")


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
    return _cosine_metrics(fidelity_of(m, cand, ref) if ref is not None else None)


def _cosine_metrics(fid: dict[str, Any] | None) -> dict[str, Any]:
    """The output-cosine metric of a model without classes, from its fidelity to the teacher (None: no teacher)."""
    metrics: dict[str, Any] = {"metric_name": "output_cosine"}
    if fid is not None:
        metrics["metric"] = fid["cosine"]
        metrics["teacher_metric"] = 1.0
        if "top1_agreement" in fid:
            metrics["agreement"] = fid["top1_agreement"]
            metrics["agreement_definition"] = "share of outputs whose top class (over the class axis) is the teacher's"
    return metrics


class _ClassCounts:
    """One model's per-class counts against the labels: hits (the confusion matrix's diagonal), predictions and
    labels per class (its margins), rows right; enough for accuracy and macro-F1."""

    def __init__(self, k: int) -> None:
        self.k, self.right = k, 0
        self.tp, self.pred, self.true = (np.zeros(k, dtype=np.int64) for _ in range(3))

    def add(self, pred: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        """Count one batch; each row's hit (False throughout without labels, as the array form compares to None)."""
        hit = np.zeros(len(pred), dtype=bool) if labels is None else pred == labels
        self.right += int(hit.sum())
        self.pred += np.bincount(pred[pred < self.k], minlength=self.k)[:self.k]
        if labels is not None:
            named = np.isin(labels, np.arange(self.k))
            self.true += np.bincount(labels[named].astype(np.int64), minlength=self.k)[:self.k]
            self.tp += np.bincount(pred[hit & (pred < self.k)], minlength=self.k)[:self.k]
        return hit

    def macro_f1(self) -> float:
        """:func:`macro_f1` from the counts."""
        tp, fp, fn = (self.tp.astype(float), (self.pred - self.tp).astype(float), (self.true - self.tp).astype(float))
        seen = tp + fp + fn > 0
        scores = 2 * tp[seen] / (2 * tp[seen] + fp[seen] + fn[seen])
        return float(np.mean(scores)) if scores.size else 0.0


def _top_k_hits(scores: np.ndarray, labels: np.ndarray | None, k: int) -> int:
    if labels is None:
        return 0
    return int((np.argsort(-scores, axis=-1)[:, :k] == labels[:, None]).any(axis=1).sum())


class ClassificationStream(StreamingMetric):
    """:func:`classification_metrics` batch by batch: per-class counts of the artifact and of the teacher
    (:class:`_ClassCounts`: arrays of the class count), top-5 hits and top-class agreements, so the state does not
    grow with the batches; the per-row ``correct`` string is the one part that does, one character per sample, as
    the report holds it."""

    def __init__(self, m) -> None:
        self.k = len(m.labels or [])
        self.rows = self.top5 = self.teacher_top5 = self.agree = 0
        self.own, self.teacher = _ClassCounts(self.k), _ClassCounts(self.k)
        self.correct = ""

    def update(self, outputs: np.ndarray, labels=None, ref: np.ndarray | None = None) -> None:
        self.see(labels, ref)
        labels = None if labels is None else np.asarray(labels)
        pred = outputs.argmax(-1)
        self.rows += len(pred)
        hit = self.own.add(pred, labels)
        self.correct += "".join("1" if ok else "0" for ok in hit)
        if self.k > 5:
            self.top5 += _top_k_hits(outputs, labels, 5)
        if ref is not None:
            tpred = ref.argmax(-1)
            self.teacher.add(tpred, labels)
            self.agree += int((pred == tpred).sum())
            if self.k > 5:
                self.teacher_top5 += _top_k_hits(ref, labels, 5)

    def result(self) -> dict[str, Any]:
        n = self.rows
        metrics: dict[str, Any] = {"metric_name": "accuracy", "metric": self.own.right / n,
                                   "macro_f1": self.own.macro_f1(), "correct": self.correct}
        if self.k > 5:
            metrics["top5"] = self.top5 / n
        if self.has_ref:
            metrics["teacher_metric"] = self.teacher.right / n
            metrics["teacher_macro_f1"] = self.teacher.macro_f1()
            metrics["agreement"] = self.agree / n
            if self.k > 5:
                metrics["teacher_top5"] = self.teacher_top5 / n
        return metrics


class OutputCosineStream(StreamingMetric):
    """:func:`output_cosine_metrics` batch by batch, through :class:`~compress.tasks.outputs.FidelityStream`."""

    def __init__(self, m) -> None:
        self.fidelity = FidelityStream(m)

    def update(self, outputs: np.ndarray, labels=None, ref: np.ndarray | None = None) -> None:
        self.see(labels, ref)
        if ref is not None:
            self.fidelity.update(outputs, ref)

    def result(self) -> dict[str, Any]:
        return _cosine_metrics(self.fidelity.result() if self.has_ref else None)
