"""Object detection: boxes, scores and classes from a declared output layout, judged by COCO mAP.

A detector declares its layout in ``postprocess`` (``model.yaml``):

* ``boxes: xyxy | cxcywh`` and ``normalized`` (fractions of the input's width and height, else input pixels);
* ``nms: true``: the graph ends in non-maximum suppression and outputs ``[batch, boxes, 6]`` (box, score, class);
  padding rows score 0. Otherwise the output is ``[batch, boxes, 4 + classes]`` (YOLOv8-style class scores) or
  ``[batch, boxes, 5 + classes]`` (YOLOv5-style: an objectness score first), or either transposed (``[batch, 4 +
  classes, boxes]``, as ultralytics exports it). Scores go through a sigmoid unless ``scores_are_probabilities``; a
  box's score is its best class's (times objectness), and greedy NMS per class in numpy at ``iou_threshold`` keeps
  at most ``max_detections`` boxes that score at least ``score_threshold``.

Boxes are mapped back to each image's own pixels (undoing the ``exact`` resize or the ``letterbox``) and judged
against the labels (:mod:`compress.data.boxes`) by COCO's own evaluation, pycocotools: mAP over IoU 0.50:0.95 is the
metric, mAP at IoU 0.5 beside it. Agreement is the same mAP of the artifact's boxes with the teacher's boxes that
score at least ``threshold`` (default 0.5) as the ground truth. pycocotools is COCO's reference implementation;
faster-coco-eval computes the same figures faster, which matters for tens of thousands of images, not for an eval
set. Its streaming form keeps every batch (:class:`compress.tasks.CollectedMetric`): COCO's evaluation ranks the
detections of all images together.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from compress.errors import ConfigError, DataError

__all__ = ["DetectionPostprocess", "check_layout", "check_postprocess", "check_preprocess", "decode", "detection_metrics", "nms", "to_image"]

#: a teacher box counts as ground truth for agreement from this score on, unless postprocess.threshold says
AGREEMENT_SCORE = 0.5
#: boxes considered by NMS per image at most (the best-scoring), as torchvision and ultralytics cap them
MAX_CANDIDATES = 30000


class DetectionPostprocess(BaseModel):
    """The ``postprocess`` block of ``object-detection``: the output's layout, and how boxes are kept."""

    model_config = ConfigDict(extra="forbid")
    boxes: Literal["xyxy", "cxcywh"] | None = Field(
        None, description="How a box is written (corners, or centre and size); required.")
    normalized: bool = Field(
        False, description="Box coordinates are fractions of the input's width and height, not pixels.")
    nms: bool = Field(
        False, description="The graph ends in non-maximum suppression and outputs [batch, boxes, 6] (box, score, "
        "class); else it outputs [batch, boxes, 4 + classes] (or 5 + classes with an objectness score, or either "
        "transposed) and edgecompress suppresses with numpy.")
    iou_threshold: float = Field(0.5, gt=0, lt=1, description="The IoU above which NMS drops a box.")
    score_threshold: float = Field(
        0.001, ge=0, lt=1, description="Detections scoring less are dropped (low, as COCO mAP wants).")
    max_detections: int = Field(100, ge=1, description="The most boxes kept per image.")
    threshold: float | None = Field(
        None, gt=0, lt=1, description="Agreement: a teacher box counts as ground truth from this score on "
        "(default AGREEMENT_SCORE, 0.5).")
    scores_are_probabilities: bool = Field(False, description="The output holds probabilities already (no sigmoid).")


def check_layout(post, shape, num_classes: int | None) -> bool:
    """Whether an output of ``shape`` ([batch, a, b], dims may be None or names) is ``post``'s layout for
    ``num_classes``; True when it is read transposed. Raises ConfigError naming the expected shapes when not."""
    if post.boxes is None:
        raise ConfigError("object detection needs postprocess.boxes (xyxy or cxcywh) to read the output",
                          hint="declare it in model.yaml: postprocess: {boxes: cxcywh, normalized: false}")
    if not num_classes:
        raise ConfigError("object detection needs the class names (labels) to read the output",
                          hint="list them in model.yaml: labels: [person, car, ...]")
    if len(shape) != 3:
        raise ConfigError(f"object detection reads a [batch, boxes, values] output; this one is {list(shape)}",
                          hint="make the boxes output the first one")
    wanted = (6,) if post.nms else (4 + num_classes, 5 + num_classes)
    last, mid = shape[2], shape[1]
    if not isinstance(last, int) and not isinstance(mid, int):
        return False  # symbolic: checked on the first real output
    if last in wanted:
        return False
    if not post.nms and mid in wanted:
        return True
    expect = ("[batch, boxes, 6] (x1, y1, x2, y2, score, class) with nms: true" if post.nms else
              f"[batch, boxes, {4 + num_classes}] (box + {num_classes} class scores), [batch, boxes, "
              f"{5 + num_classes}] (box, objectness, scores) or either transposed")
    raise ConfigError(f"output {list(shape)} does not fit object detection with {num_classes} labels: expected "
                      f"{expect}", hint="check labels (their number) and postprocess.nms in model.yaml")


def check_postprocess(post, shape, labels: list[str] | None, preprocess, where: str) -> None:
    """A model file's postprocess block (its output layout) against its output's ``shape`` and its labels, and its
    preprocess (boxes map back through an exact or letterboxed resize); ConfigError starting with ``where`` if not."""
    try:
        check_layout(post, shape, len(labels or []))
        check_preprocess(preprocess)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e.message}", hint=e.hint) from None


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def _xyxy(b: np.ndarray, form: str) -> np.ndarray:
    if form == "xyxy":
        return b
    cx, cy, w, h = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression within each class, best score first."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    span = float(boxes.max() - boxes.min()) + 1.0
    shifted = boxes + (classes.astype(np.float64) * span)[:, None]  # each class apart: classes never overlap
    x1, y1, x2, y2 = shifted.T
    area = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = (np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])).clip(0)
        h = (np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])).clip(0)
        inter = w * h
        order = rest[inter / np.maximum(area[i] + area[rest] - inter, 1e-12) <= iou]
    return np.asarray(keep, dtype=np.int64)


def decode(post, out: np.ndarray, num_classes: int, input_hw: tuple[int, int]):
    """Each image's (boxes xyxy in input pixels, scores, class ids) from the primary output."""
    transposed = check_layout(post, out.shape, num_classes)
    if transposed:
        out = out.transpose(0, 2, 1)
    height, width = input_hw
    scale = np.array([width, height, width, height], dtype=np.float64) if post.normalized else 1.0
    result = []
    for rows in out.astype(np.float64):
        if post.nms:
            boxes, scores, classes = rows[:, :4], rows[:, 4], rows[:, 5].round().astype(np.int64)
        else:
            obj = rows[:, 4] if rows.shape[1] == 5 + num_classes else None
            cls = rows[:, -num_classes:]
            if not post.scores_are_probabilities:
                cls = _sigmoid(cls)
                obj = None if obj is None else _sigmoid(obj)
            classes = cls.argmax(axis=1)
            scores = cls[np.arange(len(cls)), classes] * (1.0 if obj is None else obj)
            boxes = rows[:, :4]
        keep = scores >= post.score_threshold
        boxes, scores, classes = _xyxy(boxes[keep], post.boxes) * scale, scores[keep], classes[keep]
        if len(scores) > MAX_CANDIDATES:
            top = np.argsort(-scores)[:MAX_CANDIDATES]
            boxes, scores, classes = boxes[top], scores[top], classes[top]
        if not post.nms:
            kept = nms(boxes, scores, classes, post.iou_threshold)
            boxes, scores, classes = boxes[kept], scores[kept], classes[kept]
        top = np.argsort(-scores, kind="stable")[:post.max_detections]
        result.append((boxes[top], scores[top], classes[top]))
    return result


def to_image(boxes: np.ndarray, size: tuple[int, int], preprocess) -> np.ndarray:
    """Boxes in input pixels mapped to the pixels of the original ``size`` (w, h) image."""
    from compress.device.shipped import letterbox_geometry

    w, h = size
    height, width = preprocess.size
    if preprocess.resize == "letterbox":
        new_w, new_h, left, top = letterbox_geometry(w, h, height, width, preprocess.letterbox_align)
        sx, sy, dx, dy = w / new_w, h / new_h, left, top
    else:
        sx, sy, dx, dy = w / width, h / height, 0, 0
    out = (boxes - np.array([dx, dy, dx, dy])) * np.array([sx, sy, sx, sy])
    return out.clip(0, [w, h, w, h])


def check_preprocess(preprocess) -> tuple[int, int]:
    if getattr(preprocess, "kind", None) != "image" or preprocess.resize not in ("exact", "letterbox") \
            or preprocess.crop:
        raise ConfigError("object detection reads images resized exactly or letterboxed (no crop): boxes are mapped "
                          "back to each image through that resize",
                          hint="set preprocess: {resize: letterbox, size: [H, W]} (or resize: exact) in model.yaml")
    return tuple(preprocess.size)


def _coco_map(truth: list[tuple[np.ndarray, np.ndarray]], sizes, dets, num_classes: int) -> tuple[float, float]:
    """(mAP@[.5:.95], mAP@.5) of ``dets`` against ``truth`` (per image: boxes xyxy, classes) by pycocotools."""
    from compress._optional import require

    require("pycocotools", "COCO mAP of object detection")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = [{"id": i, "width": int(w), "height": int(h)} for i, (w, h) in enumerate(sizes)]
    anns = []
    for i, (boxes, classes) in enumerate(truth):
        for b, c in zip(boxes, classes):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c) + 1, "iscrowd": 0,
                         "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h})
    if not anns:
        return float("nan"), float("nan")
    rows = [[i, b[0], b[1], b[2] - b[0], b[3] - b[1], s, c + 1]
            for i, (boxes, scores, classes) in enumerate(dets) for b, s, c in zip(boxes, scores, classes)]
    if not rows:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and the summary table
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(np.asarray(rows, dtype=np.float64)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(max(ev.stats[0], 0.0)), float(max(ev.stats[1], 0.0))


def _truth(labels, n: int) -> list[dict]:
    if not isinstance(labels, (list, tuple)) or len(labels) != n or \
            not all(isinstance(x, dict) and "boxes" in x for x in labels):
        raise DataError("the eval labels do not match the output layout: object detection needs boxes per image",
                        hint="pass a COCO .json or a .csv of image,x1,y1,x2,y2,label as --data")
    return list(labels)


def detection_metrics(m, cand: np.ndarray, ref: np.ndarray | None, labels) -> dict[str, Any]:
    """mAP@[.5:.95] (the metric) and mAP@.5 of the artifact, the teacher's, and agreement (mAP against the
    teacher's confident boxes)."""
    num_classes = len(m.labels or [])
    post, hw = m.postprocess, check_preprocess(m.preprocess)
    if labels is None:
        raise DataError("object detection needs labelled images to find each image's size",
                        hint="pass a COCO .json or a .csv of image,x1,y1,x2,y2,label as --data")
    truth = _truth(labels, len(cand))
    sizes = [t["size"] for t in truth]

    def dets_of(out):
        return [(to_image(b, size, m.preprocess), s, c) for (b, s, c), size in zip(decode(post, out, num_classes, hw),
                                                                                      sizes)]

    mine = dets_of(cand)
    gt = [(t["boxes"], t["classes"]) for t in truth]
    out: dict[str, Any] = {"metric_name": "mAP@[.5:.95]", "boxes_per_image": float(np.mean([len(d[1]) for d in mine]))}
    out["metric"], out["map50"] = _coco_map(gt, sizes, mine, num_classes)
    if ref is not None:
        theirs = dets_of(ref)
        out["teacher_metric"], out["teacher_map50"] = _coco_map(gt, sizes, theirs, num_classes)
        cut = post.threshold if post.threshold is not None else AGREEMENT_SCORE
        confident = [(b[s >= cut], c[s >= cut]) for b, s, c in theirs]
        agreement, _ = _coco_map(confident, sizes, mine, num_classes)
        if np.isfinite(agreement):
            out["agreement"] = agreement
            out["agreement_definition"] = (f"mAP@[.5:.95] of the artifact's boxes against the teacher's boxes scoring "
                                           f">= {cut:g}")
    if not np.isfinite(out["metric"]):
        raise DataError("the eval labels hold no boxes: mAP needs at least one", hint="label the objects in the images")
    return out
