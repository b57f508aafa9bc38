"""Dense maps: semantic segmentation (mean IoU over classes) and probability maps (IoU of the map binarised at a
threshold). IoU is scikit-learn's Jaccard index (``sklearn.metrics.jaccard_score``) over the pixels of every eval
sample together.

* **Semantic segmentation** (``task: semantic-segmentation``): the output holds class scores on
  ``postprocess.class_axis`` (default 1: ``[batch, classes, height, width]``); a pixel's class is its top score. The
  labels are class ids per pixel, ``[samples, height, width]``. Mean IoU over the classes present in the labels or
  the predictions is the metric (pixel accuracy beside it); agreement is the mean IoU of the artifact's map against
  the teacher's.
* **Probability map** (``task: probability-map``): one probability per pixel (``[batch, height, width]``, or with a
  channel axis of 1: ``[batch, 1, height, width]``, or ``[batch, height, width, 1]`` as LiteRT files give), the
  sigmoid of the output unless ``postprocess.scores_are_probabilities``, binarised at ``postprocess.threshold``
  (default 0.5). The labels are 0/1 per pixel. IoU of the foreground is the metric;
  agreement is the IoU against the teacher's binarised map.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compress.errors import DataError
from compress.tasks import StreamingMetric, postprocess_for

__all__ = ["ProbabilityMapStream", "SegmentationStream", "mask_agreement", "probability_map_metrics",
           "segmentation_metrics"]

DEFAULT_THRESHOLD = 0.5


def _sklearn():
    from compress._optional import require

    require("sklearn", "IoU of dense maps")
    import sklearn.metrics

    return sklearn.metrics


def _label_maps(labels, shape: tuple[int, ...], what: str) -> np.ndarray | None:
    if labels is None:
        return None
    y = np.asarray(labels)
    if y.shape != shape:
        raise DataError(f"the labels are maps of shape {list(y.shape[1:])} but the model's maps are {list(shape[1:])}",
                        hint=f"save labels as one {' x '.join(map(str, shape[1:]))} map of {what} per sample")
    return y


def segmentation_metrics(postprocess, cand: np.ndarray, ref: np.ndarray | None, labels) -> dict[str, Any]:
    """Mean IoU (the metric) and pixel accuracy of the top-score map against the labels; the teacher's; agreement
    (mean IoU against the teacher's map)."""
    sk = _sklearn()
    axis = postprocess.class_axis if postprocess.class_axis is not None else 1
    pred = cand.argmax(axis)
    y = _label_maps(labels, pred.shape, "class ids")
    y = None if y is None else y.astype(np.int64)
    classes = cand.shape[axis]
    if y is not None and ((y < 0) | (y >= classes)).any():
        raise DataError(f"the label maps hold class ids outside the model's {classes} classes",
                        hint=f"class ids 0..{classes - 1} per pixel")

    def miou(a: np.ndarray, b: np.ndarray) -> float:
        present = np.union1d(np.unique(a), np.unique(b))
        return float(sk.jaccard_score(a.ravel(), b.ravel(), labels=present, average="macro", zero_division=0))

    metrics: dict[str, Any] = {"metric_name": "mean_iou", "classes": classes}
    if y is not None:
        metrics["metric"] = miou(y, pred)
        metrics["pixel_accuracy"] = float((y == pred).mean())
    if ref is not None:
        tpred = ref.argmax(axis)
        if y is not None:
            metrics["teacher_metric"] = miou(y, tpred)
            metrics["teacher_pixel_accuracy"] = float((y == tpred).mean())
        metrics["agreement"] = miou(tpred, pred)
        metrics["agreement_definition"] = "mean IoU of the artifact's class map against the teacher's"
    return metrics


def _one_map(scores: np.ndarray) -> np.ndarray:
    """``[batch, height, width]``: the map of a channel axis of one, first (``[batch, 1, h, w]``) or last
    (``[batch, h, w, 1]``, channel-last as LiteRT and TensorFlow models give it)."""
    if scores.ndim == 4 and scores.shape[1] == 1:
        return scores[:, 0]
    if scores.ndim == 4 and scores.shape[-1] == 1:
        return scores[..., 0]
    return scores


def probability_map_metrics(postprocess, cand: np.ndarray, ref: np.ndarray | None, labels) -> dict[str, Any]:
    """IoU of the binarised map against the 0/1 labels (the metric); the teacher's; agreement (IoU against the
    teacher's binarised map)."""
    sk = _sklearn()
    pred = _binary(cand, postprocess)
    y = _label_maps(labels, pred.shape, "0/1 flags")
    if y is not None and not np.isin(y, (0, 1)).all():
        raise DataError("probability-map labels must be 0 or 1 per pixel", hint="one 0/1 map per sample")

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        return float(sk.jaccard_score(a.ravel(), b.ravel(), zero_division=1))

    metrics: dict[str, Any] = {"metric_name": "iou", "threshold": postprocess.threshold or DEFAULT_THRESHOLD}
    if y is not None:
        metrics["metric"] = iou(y.astype(np.int64), pred)
    if ref is not None:
        tpred = _binary(ref, postprocess)
        if y is not None:
            metrics["teacher_metric"] = iou(y.astype(np.int64), tpred)
        metrics["agreement"] = iou(tpred, pred)
        metrics["agreement_definition"] = "IoU of the artifact's binarised map against the teacher's"
    return metrics


def _probabilities(scores: np.ndarray, postprocess) -> np.ndarray:
    maps = _one_map(scores).astype(np.float64)
    return maps if postprocess.scores_are_probabilities else 1.0 / (1.0 + np.exp(-maps))


def _binary(scores: np.ndarray, postprocess) -> np.ndarray:
    return (_probabilities(scores, postprocess) >= (postprocess.threshold or DEFAULT_THRESHOLD)).astype(np.int64)


def mask_agreement(m, cand: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """How closely a probability map follows the teacher's on the same inputs, without labels, what quantize's
    held-out check judges (``TaskInfo.output_agreement``): the IoU of the foreground of the maps binarised at the
    task's threshold (``mask_iou``; 1.0 when neither holds any), and the cosine of the probability maps of all the
    rows together (``map_cosine``). A view without foreground has a map near 0 everywhere, whose own cosine to the
    teacher's is noise (PP-OCRv4's text map on a photo without text: 0.0 for a candidate whose pooled cosine is
    0.96, ``benchmarks/vision/paddle_ocr.py``), so the check reads the pooled one instead of the mean over rows."""
    post = postprocess_for(m.task, m.postprocess)
    a, b = _binary(cand, post).astype(bool), _binary(ref, post).astype(bool)
    union = int((a | b).sum())
    p, q = _probabilities(cand, post), _probabilities(ref, post)
    norm = float(np.sqrt((p * p).sum() * (q * q).sum()))
    return {"mask_iou": float((a & b).sum() / union) if union else 1.0,
            "map_cosine": float((p * q).sum() / norm) if norm else float(not p.any() and not q.any())}


class _Overlap:
    """Per class: the pixels where two maps both hold it (intersection) and where either does (union), summed over
    the batches; IoU per class is their ratio."""

    def __init__(self, classes: int) -> None:
        self.classes = classes
        self.inter = np.zeros(classes, dtype=np.int64)
        self.union = np.zeros(classes, dtype=np.int64)
        self.same = 0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = a.ravel(), b.ravel()
        both = np.bincount(a[a == b], minlength=self.classes)
        self.inter += both
        self.union += np.bincount(a, minlength=self.classes) + np.bincount(b, minlength=self.classes) - both
        self.same += int((a == b).sum())

    def mean_iou(self) -> float:
        """Mean IoU over the classes either map holds (``jaccard_score(..., labels=present, average="macro")``)."""
        present = self.union > 0
        return float(np.mean(self.inter[present] / self.union[present])) if present.any() else 0.0


class SegmentationStream(StreamingMetric):
    """:func:`segmentation_metrics` batch by batch: per-class intersection and union pixel counts (:class:`_Overlap`)
    of the artifact's and the teacher's class maps against the labels and of the artifact's against the teacher's;
    arrays of the class count, whatever the number of batches."""

    def __init__(self, postprocess) -> None:
        self.axis = postprocess.class_axis if postprocess.class_axis is not None else 1
        self.classes = self.pixels = 0
        self.own = self.teacher = self.agree = None

    def update(self, outputs: np.ndarray, labels=None, ref: np.ndarray | None = None) -> None:
        self.see(labels, ref)
        pred = outputs.argmax(self.axis)
        y = _label_maps(labels, pred.shape, "class ids")
        y = None if y is None else y.astype(np.int64)
        classes = outputs.shape[self.axis]
        if y is not None and ((y < 0) | (y >= classes)).any():
            raise DataError(f"the label maps hold class ids outside the model's {classes} classes",
                            hint=f"class ids 0..{classes - 1} per pixel")
        if self.own is None:
            self.classes = classes
            self.own, self.teacher, self.agree = _Overlap(classes), _Overlap(classes), _Overlap(classes)
        self.pixels += pred.size
        if y is not None:
            self.own.add(y, pred)
        if ref is not None:
            tpred = ref.argmax(self.axis)
            if y is not None:
                self.teacher.add(y, tpred)
            self.agree.add(tpred, pred)

    def result(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {"metric_name": "mean_iou", "classes": self.classes}
        if self.has_labels:
            metrics["metric"] = self.own.mean_iou()
            metrics["pixel_accuracy"] = self.own.same / self.pixels
        if self.has_ref:
            if self.has_labels:
                metrics["teacher_metric"] = self.teacher.mean_iou()
                metrics["teacher_pixel_accuracy"] = self.teacher.same / self.pixels
            metrics["agreement"] = self.agree.mean_iou()
            metrics["agreement_definition"] = "mean IoU of the artifact's class map against the teacher's"
        return metrics


class ProbabilityMapStream(StreamingMetric):
    """:func:`probability_map_metrics` batch by batch: the foreground's intersection and union pixel counts of the
    artifact's and the teacher's binarised maps against the labels and of the artifact's against the teacher's."""

    def __init__(self, postprocess) -> None:
        self.post = postprocess
        self.own, self.teacher, self.agree = _Overlap(2), _Overlap(2), _Overlap(2)

    def update(self, outputs: np.ndarray, labels=None, ref: np.ndarray | None = None) -> None:
        self.see(labels, ref)
        pred = _binary(outputs, self.post)
        y = _label_maps(labels, pred.shape, "0/1 flags")
        if y is not None and not np.isin(y, (0, 1)).all():
            raise DataError("probability-map labels must be 0 or 1 per pixel", hint="one 0/1 map per sample")
        if y is not None:
            self.own.add(y.astype(np.int64), pred)
        if ref is not None:
            tpred = _binary(ref, self.post)
            if y is not None:
                self.teacher.add(y.astype(np.int64), tpred)
            self.agree.add(tpred, pred)

    @staticmethod
    def _iou(o: _Overlap) -> float:
        """The foreground's IoU (``jaccard_score``, 1.0 where neither map holds any)."""
        return float(o.inter[1] / o.union[1]) if o.union[1] else 1.0

    def result(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {"metric_name": "iou", "threshold": self.post.threshold or DEFAULT_THRESHOLD}
        if self.has_labels:
            metrics["metric"] = self._iou(self.own)
        if self.has_ref:
            if self.has_labels:
                metrics["teacher_metric"] = self._iou(self.teacher)
            metrics["agreement"] = self._iou(self.agree)
            metrics["agreement_definition"] = "IoU of the artifact's binarised map against the teacher's"
        return metrics
