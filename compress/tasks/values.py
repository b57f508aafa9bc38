"""Regression and multi-label classification: metrics from scikit-learn's ``sklearn.metrics``.

* **Regression** (``task: regression``): MAE, RMSE and R² of the outputs against the target values. MAE is the
  metric. Lower is better (its entry in :data:`compress.tasks.TASKS` says so), so retention is the teacher's MAE over the artifact's (1.0 when they are equal, below 1
  when the artifact is worse): ``min_accuracy_retention: 0.99`` allows about 1% more error. ``mae_increase`` is the
  relative increase (``max_mae_increase`` budgets it). Agreement is R² of the artifact's outputs against the
  teacher's.
* **Multi-label** (``task: multi-label-classification``): a class is in where its probability passes the threshold
  (``postprocess.threshold``, default 0.5; probabilities are the sigmoid of the scores unless
  ``postprocess.scores_are_probabilities``). Micro F1 is the metric, macro F1 beside it. Agreement is the micro F1 of
  the artifact's classes against the teacher's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from compress.errors import DataError
from compress.tasks import StreamingMetric

__all__ = ["MultiLabelStream", "RegressionStream", "ThresholdPostprocess", "multilabel_metrics", "regression_metrics"]

DEFAULT_THRESHOLD = 0.5


class ThresholdPostprocess(BaseModel):
    """The ``postprocess`` block of multi-label classification and probability maps: where a class (a pixel) is
    in."""

    model_config = ConfigDict(extra="forbid")
    threshold: float | None = Field(
        None, gt=0, lt=1, description="A class (a pixel) is in where its probability (the sigmoid of its score, "
        "unless scores_are_probabilities) passes this (default 0.5).")
    scores_are_probabilities: bool = Field(False, description="The output holds probabilities already (no sigmoid).")
    class_axis: int | None = Field(
        None, description="The axis of the primary output that holds class scores, for top-1 agreement (a "
        "segmentation map's channels: 1); None: the task's (compress.tasks.TASKS), else the last axis of a "
        "[batch, classes] output.")


def _sklearn():
    from compress._optional import require

    require("sklearn", "regression and multi-label metrics")
    import sklearn.metrics

    return sklearn.metrics


def _rows(values: np.ndarray) -> np.ndarray:
    return values.reshape(len(values), -1).astype(np.float64)


def _targets(labels, cand: np.ndarray, what: str) -> np.ndarray | None:
    if labels is None:
        return None
    y = _rows(np.asarray(labels, dtype=np.float64))
    if y.shape != _rows(cand).shape:
        raise DataError(f"the labels hold {y.shape[1]} value(s) per sample but the model outputs {_rows(cand).shape[1]}",
                        hint=f"save labels as one row of {_rows(cand).shape[1]} {what} per sample")
    return y


def regression_metrics(cand: np.ndarray, ref: np.ndarray | None, labels) -> dict[str, Any]:
    """MAE (the metric), RMSE, R² against the targets; the teacher's; retention (teacher MAE / artifact MAE);
    agreement (R² against the teacher's outputs)."""
    sk = _sklearn()
    y, pred = _targets(labels, cand, "target values"), _rows(cand)
    metrics: dict[str, Any] = {"metric_name": "mae"}  # lower is better: TASKS says so

    def scores(p: np.ndarray) -> dict[str, float]:
        return {"mae": float(sk.mean_absolute_error(y, p)), "rmse": float(np.sqrt(sk.mean_squared_error(y, p))),
                "r2": float(sk.r2_score(y, p))}

    if y is not None:
        s = scores(pred)
        metrics.update(metric=s["mae"], rmse=s["rmse"], r2=s["r2"])
    if ref is not None:
        if y is not None:
            t = scores(_rows(ref))
            metrics.update(teacher_metric=t["mae"], teacher_rmse=t["rmse"], teacher_r2=t["r2"])
            if t["mae"] > 0:
                metrics["mae_increase"] = s["mae"] / t["mae"] - 1.0
                metrics["retention"] = t["mae"] / s["mae"] if s["mae"] > 0 else 1.0
        metrics["agreement"] = float(sk.r2_score(_rows(ref), pred))
        metrics["agreement_definition"] = "R² of the artifact's outputs against the teacher's"
    return metrics


def _classes(scores: np.ndarray, postprocess) -> np.ndarray:
    probs = _rows(scores) if postprocess.scores_are_probabilities else 1.0 / (1.0 + np.exp(-_rows(scores)))
    return (probs >= (postprocess.threshold or DEFAULT_THRESHOLD)).astype(np.int64)


def multilabel_metrics(postprocess, cand: np.ndarray, ref: np.ndarray | None, labels) -> dict[str, Any]:
    """Micro F1 (the metric) and macro F1 of the thresholded classes against the 0/1 labels; the teacher's;
    agreement (micro F1 against the teacher's classes)."""
    sk = _sklearn()
    y = _targets(labels, cand, "0/1 class flags")
    if y is not None and not np.isin(y, (0.0, 1.0)).all():
        raise DataError("multi-label labels must be 0 or 1 per class", hint="one row of 0/1 flags per sample")
    pred = _classes(cand, postprocess)
    metrics: dict[str, Any] = {"metric_name": "micro_f1",
                               "threshold": postprocess.threshold or DEFAULT_THRESHOLD}
    if y is not None:
        y = y.astype(np.int64)
        metrics["metric"] = float(sk.f1_score(y, pred, average="micro", zero_division=0))
        metrics["macro_f1"] = float(sk.f1_score(y, pred, average="macro", zero_division=0))
    if ref is not None:
        tpred = _classes(ref, postprocess)
        if y is not None:
            metrics["teacher_metric"] = float(sk.f1_score(y, tpred, average="micro", zero_division=0))
            metrics["teacher_macro_f1"] = float(sk.f1_score(y, tpred, average="macro", zero_division=0))
        metrics["agreement"] = float(sk.f1_score(tpred, pred, average="micro", zero_division=1))
        metrics["agreement_definition"] = "micro F1 of the artifact's classes against the teacher's"
    return metrics


class _Moments:
    """Per column: rows, mean and the sum of squared deviations from it, merged batch by batch by Chan et al.'s
    pairwise update (numerically stable: no sum of squares minus a squared sum)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x: np.ndarray) -> None:
        nb = len(x)
        if not nb:
            return
        mb = x.mean(axis=0)
        m2b = ((x - mb) ** 2).sum(axis=0)
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta ** 2 * (self.n * nb / n)
        self.n = n


class _Errors:
    """Per column: the summed absolute and squared errors of predictions against a truth, and the truth's
    :class:`_Moments`: MAE, RMSE and R² as scikit-learn's (uniform average over the columns)."""

    def __init__(self) -> None:
        self.abs, self.sq, self.truth = 0.0, 0.0, _Moments()

    def add(self, truth: np.ndarray, pred: np.ndarray) -> None:
        self.abs = self.abs + np.abs(pred - truth).sum(axis=0)
        self.sq = self.sq + ((truth - pred) ** 2).sum(axis=0)
        self.truth.add(truth)

    def scores(self) -> dict[str, float]:
        n = self.truth.n
        return {"mae": float(np.mean(self.abs / n)), "rmse": float(np.sqrt(np.mean(self.sq / n))), "r2": self.r2()}

    def r2(self) -> float:
        """``sklearn.metrics.r2_score``: NaN under two rows; a column of constant truth scores 1 when predicted
        exactly, else 0."""
        if self.truth.n < 2:
            return float("nan")
        res, tot = np.atleast_1d(self.sq), np.atleast_1d(self.truth.m2)
        out = np.ones(res.shape)
        valid = (tot != 0) & (res != 0)
        out[valid] = 1 - res[valid] / tot[valid]
        out[(res != 0) & (tot == 0)] = 0.0
        return float(np.mean(out))


class RegressionStream(StreamingMetric):
    """:func:`regression_metrics` batch by batch: per-column error sums and the truth's running moments
    (:class:`_Errors`) for the artifact and the teacher against the targets and for the artifact against the
    teacher; arrays of the column count, whatever the number of batches."""

    def __init__(self) -> None:
        self.own, self.teacher, self.agree = _Errors(), _Errors(), _Errors()

    def update(self, outputs: np.ndarray, labels=None, ref: np.ndarray | None = None) -> None:
        self.see(labels, ref)
        y, pred = _targets(labels, outputs, "target values"), _rows(outputs)
        if y is not None:
            self.own.add(y, pred)
        if ref is not None:
            if y is not None:
                self.teacher.add(y, _rows(ref))
            self.agree.add(_rows(ref), pred)

    def result(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {"metric_name": "mae"}
        if self.has_labels:
            s = self.own.scores()
            metrics.update(metric=s["mae"], rmse=s["rmse"], r2=s["r2"])
        if self.has_ref:
            if self.has_labels:
                t = self.teacher.scores()
                metrics.update(teacher_metric=t["mae"], teacher_rmse=t["rmse"], teacher_r2=t["r2"])
                if t["mae"] > 0:
                    metrics["mae_increase"] = s["mae"] / t["mae"] - 1.0
                    metrics["retention"] = t["mae"] / s["mae"] if s["mae"] > 0 else 1.0
            metrics["agreement"] = self.agree.r2()
            metrics["agreement_definition"] = "R² of the artifact's outputs against the teacher's"
        return metrics


class _FlagCounts:
    """Per class: true positives, predictions and truths of 0/1 flags; micro and macro F1 as scikit-learn's."""

    def __init__(self) -> None:
        self.tp, self.pred, self.true = 0, 0, 0

    def add(self, truth: np.ndarray, pred: np.ndarray) -> None:
        self.tp = self.tp + (truth & pred).sum(axis=0)
        self.pred = self.pred + pred.sum(axis=0)
        self.true = self.true + truth.sum(axis=0)

    @staticmethod
    def _f1(tp, pred, true, zero_division: float) -> np.ndarray:
        tp, denom = np.atleast_1d(tp).astype(float), np.atleast_1d(true + pred).astype(float)
        out = np.full(tp.shape, float(zero_division))
        out[denom != 0] = 2 * tp[denom != 0] / denom[denom != 0]
        return out

    def micro(self, zero_division: float) -> float:
        return float(self._f1(np.sum(self.tp), np.sum(self.pred), np.sum(self.true), zero_division)[0])

    def macro(self, zero_division: float) -> float:
        return float(np.mean(self._f1(self.tp, self.pred, self.true, zero_division)))


class MultiLabelStream(StreamingMetric):
    """:func:`multilabel_metrics` batch by batch: per-class TP, prediction and truth counts (:class:`_FlagCounts`)
    of the artifact and the teacher against the labels and of the artifact against the teacher."""

    def __init__(self, postprocess) -> None:
        self.post = postprocess
        self.own, self.teacher, self.agree = _FlagCounts(), _FlagCounts(), _FlagCounts()

    def update(self, outputs: np.ndarray, labels=None, ref: np.ndarray | None = None) -> None:
        self.see(labels, ref)
        y = _targets(labels, outputs, "0/1 class flags")
        if y is not None and not np.isin(y, (0.0, 1.0)).all():
            raise DataError("multi-label labels must be 0 or 1 per class", hint="one row of 0/1 flags per sample")
        pred = _classes(outputs, self.post)
        if y is not None:
            self.own.add(y.astype(np.int64), pred)
        if ref is not None:
            tpred = _classes(ref, self.post)
            if y is not None:
                self.teacher.add(y.astype(np.int64), tpred)
            self.agree.add(tpred, pred)

    def result(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {"metric_name": "micro_f1", "threshold": self.post.threshold or DEFAULT_THRESHOLD}
        if self.has_labels:
            metrics["metric"] = self.own.micro(0)
            metrics["macro_f1"] = self.own.macro(0)
        if self.has_ref:
            if self.has_labels:
                metrics["teacher_metric"] = self.teacher.micro(0)
                metrics["teacher_macro_f1"] = self.teacher.macro(0)
            metrics["agreement"] = self.agree.micro(1)
            metrics["agreement_definition"] = "micro F1 of the artifact's classes against the teacher's"
        return metrics
