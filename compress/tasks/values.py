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

from compress.errors import DataError

__all__ = ["multilabel_metrics", "regression_metrics"]

DEFAULT_THRESHOLD = 0.5


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
