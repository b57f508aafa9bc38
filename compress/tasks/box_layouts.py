"""The raw output layouts a detector may end in before its boxes are decoded, one rule per family, as its authors
wrote it:

* **grid** (YOLOX, ``layout: yolox``): ``[batch, sum(cells), 5 + classes]``, the cells of every stride's grid over
  the input, row by row, strides in the declared order; each row ``[tx, ty, tw, th, obj, cls...]``. YOLOX's
  ``demo_postprocess``: x = (tx + grid_x)·stride, y = (ty + grid_y)·stride, w = exp(tw)·stride, h = exp(th)·stride,
  a grid of ``input // stride`` cells per side. :func:`grid_decode`.
* **anchors** (SSD, ``layout: ssd``): a box regression per anchor, the anchors generated from declared strides and
  scales by MediaPipe's ``SsdAnchorsCalculator`` (as BlazeFace and the palm detector configure it), decoded by
  MediaPipe's ``TensorsToDetectionsCalculator``: centre = raw / scale · anchor size + anchor centre, size = raw /
  scale · anchor size (or exp(raw / scale) · anchor size), keypoints by the centre's rule. :func:`ssd_anchors`,
  :func:`anchor_decode`.

A leaf of :mod:`compress.tasks`: numpy and pydantic only.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["SsdAnchors", "anchor_decode", "grid_cells", "grid_decode", "ssd_anchors"]


def grid_cells(strides: list[int], input_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """Each stride's grid (rows, columns) over an input of ``input_hw``: ``input // stride`` cells per side."""
    height, width = input_hw
    return [(height // s, width // s) for s in strides]


def grid_decode(out: np.ndarray, strides: list[int], input_hw: tuple[int, int]) -> np.ndarray:
    """``out`` ([batch, sum(cells), 4 + k]) with its first four values of each row made [cx, cy, w, h] in input
    pixels by YOLOX's rule; the other values as they were. The caller checked the rows (:func:`grid_cells`)."""
    grids, steps = [], []
    for (rows, cols), s in zip(grid_cells(strides, input_hw), strides):
        ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        grids.append(np.stack([xs, ys], axis=-1).reshape(-1, 2))
        steps.append(np.full((rows * cols, 1), float(s)))
    grid, step = np.concatenate(grids).astype(np.float64), np.concatenate(steps)
    res = out.astype(np.float64)  # a copy
    res[..., :2] = (res[..., :2] + grid) * step
    res[..., 2:4] = np.exp(np.clip(res[..., 2:4], -60, 60)) * step
    return res


class SsdAnchors(BaseModel):
    """MediaPipe's ``SsdAnchorsCalculatorOptions`` (the fields a BlazeFace or palm-detection graph sets); the input
    size is the model's (``preprocess.size``)."""

    model_config = ConfigDict(extra="forbid")
    num_layers: int = Field(ge=1, description="Feature layers; one stride per layer.")
    strides: list[Annotated[int, Field(ge=1)]] = Field(min_length=1, description="The stride of each layer (consecutive equal strides share "
                               "one grid, their anchors interleaved per cell).")
    min_scale: float = Field(gt=0, description="The anchor scale of the first layer (a fraction of the input).")
    max_scale: float = Field(gt=0, description="The anchor scale of the last layer.")
    anchor_offset_x: float = Field(0.5, description="The anchor centre within its cell, x.")
    anchor_offset_y: float = Field(0.5, description="The anchor centre within its cell, y.")
    aspect_ratios: list[float] = Field([1.0], min_length=1, description="Anchors of each ratio per cell and layer.")
    interpolated_scale_aspect_ratio: float = Field(
        1.0, description="One more anchor per layer at the scale between this layer's and the next's, of this "
        "ratio (0: none).")
    reduce_boxes_in_lowest_layer: bool = Field(
        False, description="The first layer's anchors are the three fixed ones (scale 0.1 ratio 1, ratios 2 and 0.5).")
    fixed_anchor_size: bool = Field(
        False, description="Every anchor is 1x1 (the regression carries the size itself): BlazeFace, palm.")

    @model_validator(mode="after")
    def _one_stride_per_layer(self):
        if len(self.strides) != self.num_layers:
            raise ValueError(f"anchors: num_layers is {self.num_layers} but {len(self.strides)} strides are listed "
                             "(one per layer)")
        return self


def _scale(lo: float, hi: float, i: int, n: int) -> float:
    return (lo + hi) * 0.5 if n == 1 else lo + (hi - lo) * i / (n - 1.0)


def ssd_anchors(opts: SsdAnchors, input_hw: tuple[int, int]) -> np.ndarray:
    """The anchors [n, 4] as (x_center, y_center, w, h), fractions of the input, in the order the model's rows are:
    MediaPipe's ``SsdAnchorsCalculator::GenerateAnchors`` (without feature-map sizes or multiscale generation)."""
    height, width = input_hw
    n, strides, out = len(opts.strides), opts.strides, []
    layer = 0
    while layer < opts.num_layers:
        ratios, scales = [], []
        last = layer
        while last < n and strides[last] == strides[layer]:  # equal strides: one grid, their anchors together
            scale = _scale(opts.min_scale, opts.max_scale, last, n)
            if last == 0 and opts.reduce_boxes_in_lowest_layer:
                ratios += [1.0, 2.0, 0.5]
                scales += [0.1, scale, scale]
            else:
                ratios += list(opts.aspect_ratios)
                scales += [scale] * len(opts.aspect_ratios)
                if opts.interpolated_scale_aspect_ratio > 0:
                    nxt = 1.0 if last == n - 1 else _scale(opts.min_scale, opts.max_scale, last + 1, n)
                    scales.append(math.sqrt(scale * nxt))
                    ratios.append(opts.interpolated_scale_aspect_ratio)
            last += 1
        sizes = [(s * math.sqrt(r), s / math.sqrt(r)) for s, r in zip(scales, ratios)]  # (w, h)
        rows, cols = math.ceil(height / strides[layer]), math.ceil(width / strides[layer])
        for y in range(rows):
            for x in range(cols):
                cx, cy = (x + opts.anchor_offset_x) / cols, (y + opts.anchor_offset_y) / rows
                out.extend((cx, cy, 1.0, 1.0) if opts.fixed_anchor_size else (cx, cy, w, h) for w, h in sizes)
        layer = last
    return np.asarray(out, dtype=np.float64).reshape(-1, 4)


def anchor_decode(raw: np.ndarray, anchors: np.ndarray, scale: tuple[float, float, float, float],
                  order: Literal["yxhw", "xywh"] = "yxhw", exponential: bool = False,
                  keypoints: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One image's regression ``raw`` [n, 4 + 2·keypoints] against ``anchors`` (:func:`ssd_anchors`) as (boxes
    [n, 4] x1, y1, x2, y2 and keypoints [n, keypoints, 2] x, y), fractions of the input: MediaPipe's
    ``TensorsToDetectionsCalculator::DecodeBoxes`` with ``x_scale, y_scale, w_scale, h_scale`` = ``scale``, the box
    written ``order`` (MediaPipe's YXHW default, or XYWH) and ``exponential`` (apply_exponential_on_box_size)."""
    raw = raw.astype(np.float64)
    xs, ys, ws, hs = scale
    ax, ay, aw, ah = anchors.T
    if order == "yxhw":
        cy, cx, h, w = raw[:, 0], raw[:, 1], raw[:, 2], raw[:, 3]
    else:
        cx, cy, w, h = raw[:, 0], raw[:, 1], raw[:, 2], raw[:, 3]
    cx, cy = cx / xs * aw + ax, cy / ys * ah + ay
    if exponential:
        w, h = np.exp(np.clip(w / ws, -60, 60)) * aw, np.exp(np.clip(h / hs, -60, 60)) * ah
    else:
        w, h = w / ws * aw, h / hs * ah
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    kp = raw[:, 4:4 + 2 * keypoints].reshape(len(raw), keypoints, 2)
    if order == "yxhw":
        kp = kp[:, :, ::-1]  # (y, x) as written: to (x, y)
    kx = kp[:, :, 0] / xs * aw[:, None] + ax[:, None]
    ky = kp[:, :, 1] / ys * ah[:, None] + ay[:, None]
    return boxes, np.stack([kx, ky], axis=-1)
