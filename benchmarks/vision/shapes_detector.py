"""A synthetic-shapes object detector for benchmarks/vision/tasks.py: SYNTHETIC test material, not a claim about real images.

Images of three sizes (128x96, 96x128, 112x112: letterboxed both ways into the 96x96 input) with a noisy colour
gradient and 1-3 non-overlapping circles, squares and triangles (14-37 px, random colours, drawn with Pillow); the
labels are COCO JSON. The detector is anchor-free and tiny: four stride-2 conv blocks, a 1x1 head predicting one box
per 16-pixel cell, decoded in the graph to input pixels as ``[batch, 36, 4 + 1 + 3]`` (cx, cy, w, h, objectness,
class scores: YOLOv5's layout, no NMS in the graph); trained with objectness BCE, class cross-entropy and an L1 box
loss on the cell holding each box's centre, horizontal flips.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

SHAPES = ["circle", "square", "triangle"]
DET_INPUT = 96  # letterboxed square input
DET_STRIDE = 16


def shapes_image(rng, w: int, h: int, n: int):
    """An RGB image (noisy gradient background) with ``n`` shapes; [(x1, y1, x2, y2, class)] in its pixels."""
    from PIL import Image, ImageDraw

    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(40, 200, 3)
    slope = rng.uniform(-0.6, 0.6, (2, 3))
    arr = base + xx[..., None] * slope[0] + yy[..., None] * slope[1] + rng.normal(0, 12, (h, w, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    boxes = []
    for _ in range(50):
        if len(boxes) == n:
            break
        s = int(rng.integers(14, 38))
        x, y = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
        if any(x < b[2] + 2 and b[0] < x + s + 2 and y < b[3] + 2 and b[1] < y + s + 2 for b in boxes):
            continue  # no overlaps: every object stays visible
        k = int(rng.integers(0, 3))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if k == 0:
            draw.ellipse([x, y, x + s - 1, y + s - 1], fill=colour)
        elif k == 1:
            draw.rectangle([x, y, x + s - 1, y + s - 1], fill=colour)
        else:
            draw.polygon([(x + s / 2, y), (x + s - 1, y + s - 1), (x, y + s - 1)], fill=colour)
        boxes.append((x, y, x + s, y + s, k))
    return img, boxes


def shapes_set(directory: Path, n: int, seed: int) -> Path:
    """``n`` images of mixed sizes (letterboxed both ways) and their COCO JSON; returns the JSON's path."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    doc = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": s} for i, s in enumerate(SHAPES)]}
    for i in range(n):
        w, h = [(128, 96), (96, 128), (112, 112)][i % 3]
        img, boxes = shapes_image(rng, w, h, int(rng.integers(1, 4)))
        name = f"{i:05d}.png"
        img.save(directory / name)
        doc["images"].append({"id": i, "file_name": name, "width": w, "height": h})
        for x1, y1, x2, y2, k in boxes:
            doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": i, "category_id": k + 1,
                                       "bbox": [x1, y1, x2 - x1, y2 - y1]})
    path = directory / "boxes.json"
    path.write_text(json.dumps(doc))
    return path


def _tiny_detector():
    import torch

    class Grid(torch.nn.Module):
        """An anchor-free grid detector: a box per 16-pixel cell, decoded in the graph to input pixels:
        [batch, cells, 4 + 1 + classes] (cx, cy, w, h, objectness logit, class logits): YOLOv5's layout."""

        def __init__(self):
            super().__init__()

            def block(i, o):
                return torch.nn.Sequential(torch.nn.Conv2d(i, o, 3, 2, 1), torch.nn.BatchNorm2d(o), torch.nn.ReLU(),
                                           torch.nn.Conv2d(o, o, 3, 1, 1), torch.nn.BatchNorm2d(o), torch.nn.ReLU())

            self.body = torch.nn.Sequential(block(3, 16), block(16, 32), block(32, 48), block(48, 64))
            self.head = torch.nn.Conv2d(64, 5 + len(SHAPES), 1)
            g = DET_INPUT // DET_STRIDE
            ys, xs = torch.meshgrid(torch.arange(g, dtype=torch.float32), torch.arange(g, dtype=torch.float32),
                                    indexing="ij")
            self.register_buffer("grid", torch.stack([xs, ys], -1).reshape(1, g * g, 2))

        def raw(self, x):
            return self.head(self.body(x)).flatten(2).transpose(1, 2)  # [b, cells, 5 + C]

        def forward(self, pixel_values):
            p = self.raw(pixel_values)
            centre = (self.grid + torch.sigmoid(p[..., :2])) * DET_STRIDE
            size = torch.sigmoid(p[..., 2:4]) * (DET_INPUT / 2)
            return torch.cat([centre, size, p[..., 4:]], -1)

    return Grid()


def _targets(feeds_boxes, g: int):
    """Per image: objectness [g*g], class [g*g], box targets [g*g, 4] (cx, cy, w, h input px) for the cell holding
    each box's centre."""
    n = len(feeds_boxes)
    obj = np.zeros((n, g * g), np.float32)
    cls = np.zeros((n, g * g), np.int64)
    box = np.zeros((n, g * g, 4), np.float32)
    for i, boxes in enumerate(feeds_boxes):
        for x1, y1, x2, y2, k in boxes:
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            c = min(int(cy // DET_STRIDE), g - 1) * g + min(int(cx // DET_STRIDE), g - 1)
            obj[i, c], cls[i, c], box[i, c] = 1, k, (cx, cy, x2 - x1, y2 - y1)
    return obj, cls, box


def train_detector(train_json: Path, seconds: float, seed: int = 0, log=print):
    """Train the grid detector on the letterboxed training images for about ``seconds`` (one thread): the model
    and the steps it took."""
    import torch

    from benchmarks.harness.training import train_steps
    from compress.artifact import ImagePreprocess
    from compress.device.feeds import ImageFeeds, letterbox_geometry

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    doc = json.loads(train_json.read_text())
    pre = ImagePreprocess(size=[DET_INPUT, DET_INPUT], resize="letterbox")
    feeds = ImageFeeds.from_spec(pre.model_dump())
    xs, all_boxes = [], []
    by_image = {im["id"]: [] for im in doc["images"]}
    for a in doc["annotations"]:
        by_image[a["image_id"]].append(a)
    for im in doc["images"]:
        xs.append(feeds.pixels(train_json.parent / im["file_name"]).transpose(2, 0, 1))
        nw, nh, left, top = letterbox_geometry(im["width"], im["height"], DET_INPUT, DET_INPUT)
        sx, sy = nw / im["width"], nh / im["height"]
        all_boxes.append([(a["bbox"][0] * sx + left, a["bbox"][1] * sy + top, (a["bbox"][0] + a["bbox"][2]) * sx + left,
                           (a["bbox"][1] + a["bbox"][3]) * sy + top, a["category_id"] - 1) for a in by_image[im["id"]]])
    x = torch.from_numpy(np.stack(xs))
    g = DET_INPUT // DET_STRIDE
    obj, cls, box = (torch.from_numpy(a) for a in _targets(all_boxes, g))
    model = _tiny_detector()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    bs = 32
    rng = np.random.default_rng(seed)

    def batches():
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            idx = torch.from_numpy(rng.integers(0, len(x), bs))
            xb = x[idx]
            if rng.random() < 0.5:  # horizontal flip: boxes mirror
                xb = xb.flip(-1)
                bx = box[idx].clone()
                bx[..., 0] = DET_INPUT - bx[..., 0]
                flip_cells = torch.arange(g * g).reshape(g, g).flip(-1).reshape(-1)
                yield xb, obj[idx][:, flip_cells], cls[idx][:, flip_cells], bx[:, flip_cells]
            else:
                yield xb, obj[idx], cls[idx], box[idx]

    def loss_of(model, batch):
        xb, ob, cb, bx = batch
        out = model(xb)
        pos = ob > 0
        loss = bce(out[..., 4], ob)
        if pos.any():
            loss = loss + torch.nn.functional.cross_entropy(out[..., 5:][pos], cb[pos]) \
                + 4 * torch.nn.functional.l1_loss(out[..., :4][pos] / DET_INPUT, bx[pos] / DET_INPUT)
        return loss

    run = train_steps(model, loss_of, batches, optimizer=opt, log_every=200, what="detector", log=log)
    return model, run["steps"]


def export_detector(model, path: Path) -> Path:
    """``model.onnx`` (dynamic batch) and the ``model.yaml`` that declares its layout."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, DET_INPUT, DET_INPUT),), str(path), opset_version=17,
                          dynamo=False, input_names=["pixel_values"], output_names=["preds"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "preds": {0: "batch"}})
    path.with_suffix(".yaml").write_text(
        "task: object-detection\n"
        f"labels: {json.dumps(SHAPES)}\n"
        f"preprocess: {{size: [{DET_INPUT}, {DET_INPUT}], resize: letterbox}}\n"
        "postprocess: {boxes: cxcywh, iou_threshold: 0.5}\n"
        "architecture: synthetic-shapes-grid-detector\n", encoding="utf-8")
    return path
