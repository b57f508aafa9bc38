"""Object detection: boxes, scores and classes from a declared output layout, judged by COCO mAP.

A detector declares its layout in ``postprocess`` (``model.yaml``): ``layout: decoded`` (the default) for boxes the
graph already decoded, or the raw layout of a family whose rule :mod:`compress.tasks.box_layouts` implements with the
parameters declared beside it: ``layout: yolox`` (grid offsets over ``strides``) or ``layout: ssd`` (a regression
per anchor, the anchors generated from ``anchors``; keypoints beside the box, carried in the decoded detections).
A decoded layout declares

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
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from compress.errors import ConfigError, DataError
from compress.tasks.box_layouts import SsdAnchors, anchor_decode, grid_cells, grid_decode, ssd_anchors

__all__ = ["DetectionPostprocess", "LAYOUTS", "check_layout", "join_scores", "keypoints_to_image", "check_postprocess", "check_preprocess", "decode", "detection_metrics", "nms", "score_agreement", "to_image"]

#: a teacher box counts as ground truth for agreement from this score on, unless postprocess.threshold says
AGREEMENT_SCORE = 0.5
#: a cell counts in :func:`score_agreement`'s box IoU from this teacher score on
SCORED_CELL = 0.3
#: boxes considered by NMS per image at most (the best-scoring), as torchvision and ultralytics cap them
MAX_CANDIDATES = 30000
#: the output layouts a detector may declare (``postprocess.layout``), and what each one reads
LAYOUTS = {
    "decoded": "boxes already decoded: [batch, boxes, 4 + classes] or [batch, boxes, 5 + classes] (either "
               "transposed), or NMS'd [batch, boxes, 6]; declare boxes: xyxy or cxcywh",
    "yolox": "YOLOX's grid offsets [batch, sum(cells), 5 + classes] over the declared strides; declare strides",
    "ssd": "a box regression per anchor [batch, anchors, 4 + 2*keypoints (+ classes)], the anchors generated from "
           "the declared anchors block (MediaPipe's SsdAnchorsCalculator); declare anchors and box_scale",
}
#: the postprocess fields only one layout reads (docs/guides/tasks.md's table); the thresholds, max_detections and
#: scores_are_probabilities apply to every layout
LAYOUT_FIELDS = {
    "decoded": ("boxes", "normalized", "nms"),
    "yolox": ("strides",),
    "ssd": ("anchors", "box_scale", "box_order", "exponential_box_size", "keypoints", "scores_output"),
}


class DetectionPostprocess(BaseModel):
    """The ``postprocess`` block of ``object-detection``: the output's layout, and how boxes are kept."""

    model_config = ConfigDict(extra="forbid")
    layout: str = Field("decoded", description="The output's layout: decoded (boxes as the graph wrote them), yolox "
                        "(grid offsets over strides) or ssd (a regression per generated anchor).")
    boxes: Literal["xyxy", "cxcywh"] | None = Field(
        None, description="How a decoded box is written (corners, or centre and size); required by layout decoded.")
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
    strides: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, description="yolox: the grids' strides, in the output's order ([8, 16, 32]); each grid is input // "
        "stride cells per side.")
    anchors: SsdAnchors | None = Field(None, description="ssd: how the anchors are generated (MediaPipe's "
                                       "SsdAnchorsCalculator options, the input size being preprocess.size).")
    box_scale: tuple[float, float, float, float] | None = Field(
        None, description="ssd: x_scale, y_scale, w_scale, h_scale the raw regression is divided by (BlazeFace: "
        "128 each, the input's size).")
    box_order: Literal["yxhw", "xywh"] = Field(
        "yxhw", description="ssd: the order of a box's four raw values (MediaPipe's default yxhw; BlazeFace and "
        "palm: xywh), keypoints (y, x) or (x, y) alike.")
    exponential_box_size: bool = Field(False, description="ssd: size = exp(raw / scale) * anchor size (SSD-MobileNet), "
                                       "else raw / scale * anchor size (BlazeFace).")
    keypoints: int = Field(0, ge=0, description="ssd: keypoints (x, y) after the box in each row.")
    scores_output: str | None = Field(
        None, description="ssd: the output holding the class scores [batch, anchors, classes]; none: they follow "
        "the box and keypoints in the first output's rows.")


def check_layout(post, shape, num_classes: int | None, input_hw: tuple[int, int] | None = None) -> bool:
    """Whether an output of ``shape`` ([batch, a, b], dims may be None or names) is ``post``'s layout for
    ``num_classes`` on an input of ``input_hw`` (needed by the yolox and ssd layouts); True when it is read
    transposed. Raises ConfigError naming the expected shapes when not."""
    if post.layout not in LAYOUTS:
        raise ConfigError(f"unknown detection layout {post.layout!r}",
                          hint=f"postprocess.layout is one of {', '.join(LAYOUTS)} (docs/guides/tasks.md, Object detection)")
    _check_fields(post)
    if post.layout == "decoded" and post.boxes is None:
        raise ConfigError("object detection needs postprocess.boxes (xyxy or cxcywh) to read the output",
                          hint="declare it in model.yaml: postprocess: {boxes: cxcywh, normalized: false}")
    if not num_classes:
        raise ConfigError("object detection needs the class names (labels) to read the output",
                          hint="list them in model.yaml: labels: [person, car, ...]")
    if len(shape) != 3:
        raise ConfigError(f"object detection reads a [batch, boxes, values] output; this one is {list(shape)}",
                          hint="make the boxes output the first one")
    if post.layout == "yolox":
        _check_grid(post, shape, num_classes, input_hw)
        return False
    if post.layout == "ssd":
        _check_anchors(post, shape, num_classes, input_hw)
        return False
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


def _check_fields(post) -> None:
    """Refuse a parameter another layout reads, set to other than its default (it would be silently ignored)."""
    fields = type(post).model_fields
    for layout, names in LAYOUT_FIELDS.items():
        if layout == post.layout:
            continue
        for name in names:
            value = getattr(post, name)
            if value != fields[name].get_default(call_default_factory=True):
                own = ", ".join(LAYOUT_FIELDS[post.layout])
                raise ConfigError(f"postprocess.{name} ({value}) does not apply to layout {post.layout}: it is read "
                                  f"by layout {layout} only (layout {post.layout} reads {own})",
                                  hint=f"remove {name} from model.yaml's postprocess block, or declare the layout "
                                  "the model's output has (docs/guides/tasks.md, Object detection)")


def _check_grid(post, shape, num_classes: int, input_hw) -> None:
    if not post.strides:
        raise ConfigError("layout yolox needs postprocess.strides (the grids' strides, in the output's order)",
                          hint="declare them in model.yaml: postprocess: {layout: yolox, strides: [8, 16, 32]}")
    if input_hw is None:
        return
    cells = grid_cells(post.strides, input_hw)
    rows = sum(r * c for r, c in cells)
    mid, last = shape[1], shape[2]
    if isinstance(mid, int) and mid != rows:
        parts = " + ".join(f"{r}x{c}" for r, c in cells)
        raise ConfigError(f"layout yolox: strides {post.strides} on the {input_hw[0]}x{input_hw[1]} input give "
                          f"{rows} cells ({parts}), but the output {list(shape)} has {mid} rows",
                          hint="declare the strides the model was built with (YOLOX: [8, 16, 32]) and its input "
                          "size (preprocess.size)")
    if isinstance(last, int) and last != 5 + num_classes:
        raise ConfigError(f"layout yolox reads rows of [tx, ty, tw, th, obj, {num_classes} class scores] "
                          f"({5 + num_classes} values), but the output {list(shape)} has {last}",
                          hint="check labels (their number) in model.yaml")


def _check_anchors(post, shape, num_classes: int, input_hw) -> None:
    need = [k for k in ("anchors", "box_scale") if getattr(post, k) is None]
    if need:
        raise ConfigError(f"layout ssd needs postprocess.{' and postprocess.'.join(need)} to decode the boxes",
                          hint="declare them in model.yaml, as BlazeFace's: anchors: {num_layers: 4, strides: [8, "
                          "16, 16, 16], min_scale: 0.1484375, max_scale: 0.75, fixed_anchor_size: true}, box_scale: "
                          "[128, 128, 128, 128]")
    mid, last = shape[1], shape[2]
    if input_hw is not None and isinstance(mid, int):
        count = len(ssd_anchors(post.anchors, input_hw))
        if mid != count:
            raise ConfigError(f"layout ssd: the anchors declared give {count} anchors on the {input_hw[0]}x"
                              f"{input_hw[1]} input, but the boxes output {list(shape)} has {mid} rows",
                              hint="declare the anchor options the model was trained with (num_layers, strides, "
                              "aspect_ratios, interpolated_scale_aspect_ratio, reduce_boxes_in_lowest_layer)")
    coords = 4 + 2 * post.keypoints
    want = (coords, coords + num_classes) if post.scores_output else (coords + num_classes,)  # joined: join_scores
    if isinstance(last, int) and last not in want:
        what = (f"4 box values + {post.keypoints} keypoints x 2" if post.scores_output else
                f"4 box values + {post.keypoints} keypoints x 2 + {num_classes} class scores")
        raise ConfigError(f"layout ssd reads rows of {what} ({want[0]} values), but the output {list(shape)} has "
                          f"{last}", hint="check postprocess.keypoints, postprocess.scores_output and labels in "
                          "model.yaml")


def check_postprocess(post, shape, labels: list[str] | None, preprocess, where: str) -> None:
    """A model file's postprocess block (its output layout) against its output's ``shape`` and its labels, and its
    preprocess (boxes map back through an exact or letterboxed resize); ConfigError starting with ``where`` if not."""
    try:
        hw = check_preprocess(preprocess)
        check_layout(post, shape, len(labels or []), hw)
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


def decode(post, out: np.ndarray, num_classes: int, input_hw: tuple[int, int], scores: np.ndarray | None = None,
           keypoints: bool = False) -> list[tuple]:
    """Each image's (boxes xyxy in input pixels, scores, class ids) from the primary output ``out`` by ``post``'s
    layout; (..., keypoints [k, keypoints, 2] x, y in input pixels) with ``keypoints`` (empty for a layout without).
    ``scores``: the ssd layout's scores output where ``post.scores_output`` names one."""
    transposed = check_layout(post, out.shape, num_classes, input_hw)
    if transposed:
        out = out.transpose(0, 2, 1)
    if post.layout == "ssd":
        return _decode_anchors(post, out, num_classes, input_hw, scores, keypoints)
    form = post.boxes
    if post.layout == "yolox":
        out, form = grid_decode(out, post.strides, input_hw), "cxcywh"
    height, width = input_hw
    scale = np.array([width, height, width, height], dtype=np.float64) if post.normalized else 1.0
    result = []
    for rows in out.astype(np.float64):
        if post.nms:
            boxes, conf, classes = rows[:, :4], rows[:, 4], rows[:, 5].round().astype(np.int64)
        else:
            obj = rows[:, 4] if rows.shape[1] == 5 + num_classes else None
            conf, classes = _best_class(rows[:, -num_classes:], post)
            if obj is not None:
                conf = conf * (obj if post.scores_are_probabilities else _sigmoid(obj))
            boxes = rows[:, :4]
        boxes = _xyxy(boxes, form) * scale
        kept = _select(post, boxes, conf, classes, suppress=not post.nms)
        found = (boxes[kept], conf[kept], classes[kept])
        result.append(found + (np.zeros((len(kept), 0, 2)),) if keypoints else found)
    return result


def _best_class(cls: np.ndarray, post) -> tuple[np.ndarray, np.ndarray]:
    """Each row's best class score (through a sigmoid unless the scores are probabilities) and its class id."""
    if not post.scores_are_probabilities:
        cls = _sigmoid(cls)
    classes = cls.argmax(axis=1)
    return cls[np.arange(len(cls)), classes], classes


def _select(post, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, suppress: bool) -> np.ndarray:
    """The indices of the detections kept: scoring at least ``score_threshold``, the best ``MAX_CANDIDATES``, then
    NMS per class (``suppress``), the best ``max_detections``, best first."""
    idx = np.flatnonzero(scores >= post.score_threshold)
    if len(idx) > MAX_CANDIDATES:
        idx = idx[np.argsort(-scores[idx])[:MAX_CANDIDATES]]
    if suppress:
        idx = idx[nms(boxes[idx], scores[idx], classes[idx], post.iou_threshold)]
    return idx[np.argsort(-scores[idx], kind="stable")[:post.max_detections]]


def _decode_anchors(post, out: np.ndarray, num_classes: int, input_hw: tuple[int, int], scores, keypoints: bool):
    """The ssd layout: MediaPipe's anchor rule (:func:`compress.tasks.box_layouts.anchor_decode`) per image."""
    anchors = ssd_anchors(post.anchors, input_hw)
    coords = 4 + 2 * post.keypoints
    if post.scores_output and scores is None and out.shape[2] == coords + num_classes:
        out, scores = out[..., :coords], out[..., coords:]  # joined by join_scores
    if post.scores_output:
        if scores is None:
            raise ConfigError(f"layout ssd reads the class scores from output {post.scores_output!r}, which was not "
                              "given", hint="decode with compress.tasks.detection.decode(..., scores=...), or join the "
                              "outputs first (join_scores)")
        scores = np.asarray(scores)
        if scores.ndim == 2:  # [batch, anchors]: one class
            scores = scores[..., None]
        if scores.shape != (len(out), len(anchors), num_classes):
            raise ConfigError(f"layout ssd: output {post.scores_output!r} is {list(scores.shape)}, expected "
                              f"[{len(out)}, {len(anchors)}, {num_classes}] (a score per anchor and label)",
                              hint="check postprocess.scores_output and labels in model.yaml")
    height, width = input_hw
    size = np.array([width, height], dtype=np.float64)
    result = []
    for i, rows in enumerate(out.astype(np.float64)):
        boxes, points = anchor_decode(rows[:, :coords], anchors, post.box_scale, post.box_order,
                                      post.exponential_box_size, post.keypoints)
        conf, classes = _best_class(scores[i].astype(np.float64) if post.scores_output else rows[:, coords:], post)
        boxes, points = boxes * np.tile(size, 2), points * size
        valid = (boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])  # MediaPipe drops negative sizes
        kept = _select(post, boxes, np.where(valid, conf, -1.0), classes, suppress=True)
        found = (boxes[kept], conf[kept], classes[kept])
        result.append(found + (points[kept],) if keypoints else found)
    return result


def join_scores(post, outputs: dict[str, np.ndarray], primary: str) -> np.ndarray:
    """What the metric reads of a detector's named ``outputs``: the ``primary`` one, with the ``ssd`` layout's
    ``scores_output`` joined after each row's box and keypoints (decoded as if given apart). A runtime that hands
    validate one array per batch calls this; the other layouts read the primary output alone."""
    out = outputs[primary]
    name = getattr(post, "scores_output", None) if getattr(post, "layout", None) == "ssd" else None
    if not name:
        return out
    if name not in outputs:
        raise ConfigError(f"layout ssd reads the class scores from output {name!r}, but the model's outputs are "
                          f"{', '.join(outputs)}", hint="name one of them as postprocess.scores_output in model.yaml")
    scores = outputs[name]
    return np.concatenate([out, scores[..., None] if scores.ndim == 2 else scores], axis=-1)


def _mapping(size: tuple[int, int], preprocess) -> tuple[float, float, float, float]:
    """(sx, sy, dx, dy): input pixel (x, y) is image pixel ((x - dx)·sx, (y - dy)·sy)."""
    from compress.device.feeds import letterbox_geometry

    w, h = size
    height, width = preprocess.size
    if preprocess.resize == "letterbox":
        new_w, new_h, left, top = letterbox_geometry(w, h, height, width, preprocess.letterbox_align)
        return w / new_w, h / new_h, left, top
    return w / width, h / height, 0, 0


def keypoints_to_image(points: np.ndarray, size: tuple[int, int], preprocess) -> np.ndarray:
    """Keypoints [..., 2] (x, y) in input pixels mapped to the pixels of the original ``size`` (w, h) image."""
    sx, sy, dx, dy = _mapping(size, preprocess)
    return (points - np.array([dx, dy])) * np.array([sx, sy])


def to_image(boxes: np.ndarray, size: tuple[int, int], preprocess) -> np.ndarray:
    """Boxes in input pixels mapped to the pixels of the original ``size`` (w, h) image."""
    w, h = size
    sx, sy, dx, dy = _mapping(size, preprocess)
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


def _cell_scores(post, out: np.ndarray, num_classes: int, input_hw: tuple[int, int]):
    """Every cell's (or box row's) score and box (xyxy, input pixels) before any threshold or NMS, for the layouts
    whose rows are one candidate each (yolox; decoded without NMS); None for the others."""
    if post.layout not in ("yolox", "decoded") or post.nms:
        return None
    if check_layout(post, out.shape, num_classes, input_hw):
        out = out.transpose(0, 2, 1)
    form = "cxcywh" if post.layout == "yolox" else post.boxes
    rows = grid_decode(out, post.strides, input_hw) if post.layout == "yolox" else out.astype(np.float64)
    conf, _ = _best_class(rows[..., -num_classes:].reshape(-1, num_classes), post)
    conf = conf.reshape(rows.shape[:2])
    if rows.shape[-1] == 5 + num_classes:
        obj = rows[..., 4]
        conf = conf * (obj if post.scores_are_probabilities else _sigmoid(obj))
    height, width = input_hw
    scale = np.array([width, height, width, height], dtype=np.float64) if post.normalized else 1.0
    return conf, _xyxy(rows[..., :4].reshape(-1, 4), form).reshape(*rows.shape[:2], 4) * scale


def score_agreement(m, cand: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """How closely a detector's dense outputs follow the teacher's on the same images, without labels: the cosine of
    the per-cell score maps (best class times objectness, before NMS: what decides which boxes exist and how they
    rank) and the mean IoU of the boxes of the cells the teacher scores >= :data:`SCORED_CELL`. Dense figures over
    every cell, so a few dozen images measure them steadily, where mAP against the teacher's boxes on so few swings
    with each box. The raw output's cosine misses what they see: box offsets dominate it (YOLOX-Nano: a candidate at
    output cosine 0.993 kept 0.78 of the teacher's mAP, its score maps at cosine 0.93). Empty for a layout whose
    rows are not one candidate each (ssd, NMS'd)."""
    num_classes = len(m.labels or [])
    hw = check_preprocess(m.preprocess)
    got, want = (_cell_scores(m.postprocess, x, num_classes, hw) for x in (cand, ref))
    if got is None or want is None or not num_classes:
        return {}
    a, b = got[0].ravel(), want[0].ravel()
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    out: dict[str, Any] = {"score_cosine": float(a @ b / den) if den > 0 else float(np.array_equal(a, b))}
    keep = want[0] >= SCORED_CELL
    if keep.any():
        p, q = got[1][keep], want[1][keep]
        w = np.clip(np.minimum(p[:, 2], q[:, 2]) - np.maximum(p[:, 0], q[:, 0]), 0, None)
        h = np.clip(np.minimum(p[:, 3], q[:, 3]) - np.maximum(p[:, 1], q[:, 1]), 0, None)
        inter = w * h
        union = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1]) + (q[:, 2] - q[:, 0]) * (q[:, 3] - q[:, 1]) - inter
        out["box_iou"] = float(np.mean(inter / np.clip(union, 1e-12, None)))
    return out
