"""Object detection declared in an adopted file's model.yaml: the layouts, numpy NMS, letterbox, COCO / CSV boxes and
COCO mAP. The tiny detector has random weights (test material); its labels are its own FP32 confident boxes, so the
teacher scores mAP 1 and the INT8 artifact's figures are its distance from it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.artifact import ImagePreprocess
from compress.errors import DataError
from compress.tasks.detection import DetectionPostprocess

LABELS = ["circle", "square"]
FAST_HOST: str = ""


@pytest.fixture(autouse=True)
def _fast_host(fast_host):
    global FAST_HOST
    FAST_HOST = fast_host


class Grid(torch.nn.Module):
    """32x32 input -> an 8x8 grid of boxes [cx, cy, w, h] in input pixels + 2 class scores: [batch, 64, 6]."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(8, 6, 3, 2, 1))
        ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
        self.register_buffer("grid", torch.stack([xs, ys], -1).reshape(1, 64, 2))

    def forward(self, pixel_values):
        p = self.body(pixel_values).flatten(2).transpose(1, 2)  # [b, 64, 6]
        centre = (self.grid + torch.sigmoid(p[..., :2])) * 4.0
        size = 4.0 + 12.0 * torch.sigmoid(p[..., 2:4])
        return torch.cat([centre, size, p[..., 4:] * 3.0], -1)


def _images(d: Path, n: int = 12) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        w, h = (48, 32) if i % 2 else (40, 40)  # letterboxed both ways
        img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        img[h // 4:h // 2, w // 4:w // 2] = 250
        out.append(d / f"im{i}.png")
        Image.fromarray(img).save(out[-1])
    return out


def _detector(d: Path, post: str = "{boxes: cxcywh}", labels=LABELS, static: bool = False) -> Path:
    torch.manual_seed(0)
    f = d / "det.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Grid().eval(), (torch.randn(2, 3, 32, 32),), str(f), opset_version=13, dynamo=False,
                          input_names=["pixel_values"], output_names=["preds"],
                          dynamic_axes=None if static else {"pixel_values": {0: "batch"}, "preds": {0: "batch"}})
    f.with_suffix(".yaml").write_text(
        f"task: object-detection\nlabels: {json.dumps(labels)}\npostprocess: {post}\n"
        "preprocess: {size: [32, 32], resize: letterbox}\n", encoding="utf-8")
    return f


def _own_boxes(art, images: list[Path], cut: float = 0.5) -> dict:
    """COCO JSON of the artifact's own confident boxes (in each image's pixels)."""
    from PIL import Image

    from compress.runtimes.base import load_runtime
    from compress.tasks.detection import decode, to_image

    m = art.manifest
    backend = load_runtime(art)
    out = backend.predict(backend.encode(images))  # what validate reads (an ssd scores output joined)
    backend.close()
    doc = {"images": [], "annotations": [], "categories": [{"id": i + 7, "name": n} for i, n in enumerate(LABELS)]}
    for i, (p, (b, s, c)) in enumerate(zip(images, decode(m.postprocess, out, 2, (32, 32)))):
        w, h = Image.open(p).size
        doc["images"].append({"id": i, "file_name": p.name, "width": w, "height": h})
        for box, cls in zip(to_image(b[s >= cut], (w, h), m.preprocess), c[s >= cut]):
            if box[2] - box[0] > 1 and box[3] - box[1] > 1:
                doc["annotations"].append({"id": len(doc["annotations"]), "image_id": i, "category_id": int(cls) + 7,
                                           "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]),
                                                    float(box[3] - box[1])]})
    return doc


def _validate(art, data: Path):
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    return validate(art, ValidateConfig.from_flat(data=str(data), cold_start=False, profile=FAST_HOST))


def test_a_detector_goes_adopt_int8_validate_with_coco_map(tmp_path):
    from compress.stages.export import export
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    images = _images(tmp_path)
    fp32 = export(_detector(tmp_path), tmp_path / "fp32")
    assert str(fp32.manifest.task) == "object-detection" and fp32.manifest.preprocess.resize == "letterbox"
    doc = _own_boxes(fp32, images)
    assert len(doc["annotations"]) >= 12
    coco = tmp_path / "boxes.json"
    coco.write_text(json.dumps(doc))
    met = _validate(fp32, coco).metrics
    assert met["metric_name"] == "mAP@[.5:.95]" and met["metric"] > 0.95 and met["map50"] > 0.95
    assert met["teacher_metric"] == met["metric"] and met["agreement"] > 0.95
    # the same boxes as a per-box CSV
    csv = tmp_path / "boxes.csv"
    rows = ["image,x1,y1,x2,y2,label"] + [f"{images[0].name},,,,,"]
    for a in doc["annotations"]:
        x, y, w, h = a["bbox"]
        rows.append(f"{doc['images'][a['image_id']]['file_name']},{x},{y},{x + w},{y + h},{LABELS[a['category_id'] - 7]}")
    csv.write_text("\n".join(rows) + "\n")
    assert _validate(fp32, csv).metrics["metric"] == pytest.approx(met["metric"])
    q = quantize(fp32, tmp_path / "int8", QuantizeConfig.from_flat(calibration=str(coco)))
    met8 = _validate(q, coco).metrics
    assert 0.2 < met8["metric"] <= 1.0 and 0.0 < met8["agreement"] <= 1.0 and met8["teacher_metric"] > 0.95
    assert met8["retention"] == pytest.approx(met8["metric"] / met8["teacher_metric"])
    # accuracy-aware: layers go back to float, in the per-layer table's order, until the mAP holds
    aware = quantize(fp32, tmp_path / "aware", QuantizeConfig.from_flat(calibration=str(coco), data=str(coco), max_drop=0.02))
    search = aware.manifest.steps[-1].metrics["accuracy_aware"]
    assert search["metric"] == "mAP@[.5:.95]" and search["baseline"] > 0.95
    assert search["budget_met"] and search["final"]["metric_of_written_model"] >= search["baseline"] - 0.02


def test_nms_keeps_the_best_box_of_each_overlapping_group_per_class():
    from compress.tasks.detection import nms

    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    classes = np.array([0, 0, 0, 1])
    assert nms(boxes, scores, classes, 0.5).tolist() == [0, 2, 3]  # box 1 overlaps 0; box 3 is another class
    assert nms(boxes, scores, np.zeros(4, int), 0.5).tolist() == [0, 2]
    left_of_origin = np.array([[-100, -100, -2, -2], [-100, -100, -2, -2]], dtype=float)  # classes 0 and 1: both stay
    assert nms(left_of_origin, np.array([0.9, 0.8]), np.array([0, 1]), 0.5).tolist() == [0, 1]


@pytest.mark.parametrize("layout", ["yolov8", "yolov8-transposed", "yolov5", "nms"])
def test_each_output_layout_decodes_to_the_same_detection(layout):
    from compress.tasks.detection import decode

    logit = 4.0  # sigmoid 0.982
    box = [16.0, 12.0, 8.0, 6.0]  # cx, cy, w, h
    if layout == "nms":
        post = DetectionPostprocess(boxes="xyxy", nms=True)
        out = np.array([[[12, 9, 20, 15, 0.9, 1], [0, 0, 0, 0, 0, 0]]], dtype=np.float32)
    else:
        post = DetectionPostprocess(boxes="cxcywh")
        head = [logit] if layout == "yolov5" else []
        out = np.array([[box + head + [-logit, logit], box + head + [-logit, 3.0]]], dtype=np.float32)
        if layout == "yolov8-transposed":
            out = out.transpose(0, 2, 1)
    [(boxes, scores, classes)] = decode(post, out, 2, (32, 32))
    assert boxes.tolist() == [[12, 9, 20, 15]] and classes.tolist() == [1] and scores[0] > 0.85  # overlap: one kept
    norm = DetectionPostprocess(boxes="cxcywh", normalized=True, scores_are_probabilities=True)
    [(b, s, _)] = decode(norm, np.array([[[0.5, 0.5, 0.25, 0.5, 0.1, 0.8]]], dtype=np.float32), 2, (32, 64))
    assert b.tolist() == [[24, 8, 40, 24]] and s.tolist() == pytest.approx([0.8])


def test_letterboxed_boxes_map_back_to_the_image():
    from compress.device.feeds import ImageFeeds
    from compress.tasks.detection import to_image

    pre = ImagePreprocess(size=[32, 32], resize="letterbox")
    x = ImageFeeds.from_spec(pre.model_dump()).pixels(np.zeros((20, 40, 3), np.uint8))
    assert x.shape == (32, 32, 3) and x[0, 0, 0] == pytest.approx(114 / 255) and x[16, 16, 0] == 0  # bands, image
    # a 40x20 image fills 32x16 at top 8: the input box [0, 8, 32, 24] is the whole image
    assert to_image(np.array([[0.0, 8, 32, 24], [8, 12, 16, 16]]), (40, 20), pre).tolist() == [[0, 0, 40, 20],
                                                                                                [10, 5, 20, 10]]
    exact = ImagePreprocess(size=[32, 32])
    assert to_image(np.array([[0.0, 0, 16, 16]]), (64, 32), exact).tolist() == [[0, 0, 32, 16]]
    # YOLOX's letterbox: the image at the top-left corner, the grey margin below it
    corner = ImagePreprocess(size=[32, 32], resize="letterbox", letterbox_align="top-left")
    x = ImageFeeds.from_spec(corner.model_dump()).pixels(np.zeros((20, 40, 3), np.uint8))
    assert x[0, 0, 0] == 0 and x[15, 31, 0] == 0 and x[16, 0, 0] == pytest.approx(114 / 255)
    assert to_image(np.array([[0.0, 0, 32, 16]]), (40, 20), corner).tolist() == [[0, 0, 40, 20]]


def test_box_data_errors_are_one_line_naming_the_annotation(tmp_path):
    from compress.data.images import load_image_dataset

    images = _images(tmp_path, 2)
    ids = {"circle": 0, "square": 1}

    def coco(ann, cats=None):
        p = tmp_path / "b.json"
        p.write_text(json.dumps({"images": [{"id": 1, "file_name": images[0].name}], "annotations": [ann],
                                 "categories": cats or [{"id": 1, "name": "circle"}]}))
        return p

    with pytest.raises(DataError, match=r"annotations\[0\]: box \[30, 5, 50, 10\] lies outside the 40x40 image"):
        load_image_dataset(coco({"image_id": 1, "bbox": [30, 5, 20, 5], "category_id": 1}), label2id=ids)
    with pytest.raises(DataError, match="class 'dog' is not among the model's labels"):
        load_image_dataset(coco({"image_id": 1, "bbox": [1, 1, 5, 5], "category_id": 1},
                                [{"id": 1, "name": "dog"}]), label2id=ids)
    with pytest.raises(DataError, match="has no area"):
        load_image_dataset(coco({"image_id": 1, "bbox": [1, 1, 0, 5], "category_id": 1}), label2id=ids)
    with pytest.raises(DataError, match="image_id 9 is not an image"):
        load_image_dataset(coco({"image_id": 9, "bbox": [1, 1, 5, 5], "category_id": 1}), label2id=ids)
    csv = tmp_path / "b.csv"
    csv.write_text(f"image,x1,y1,x2,y2,label\n{images[1].name},1,1,60,5,circle\n")
    with pytest.raises(DataError, match=r"row 1: box \[1, 1, 60, 5\] lies outside the 48x32 image"):
        load_image_dataset(csv, label2id=ids)
    ds = load_image_dataset(coco({"image_id": 1, "bbox": [1, 2, 3, 4], "category_id": 1}), label2id=None)
    assert ds.labels[0]["boxes"].tolist() == [[1, 2, 4, 6]] and ds.labels[0]["size"] == (40, 40)  # images only


def test_cli_refuses_bad_detection_input_in_one_line(tmp_path, capsys):
    from compress.cli import main

    def one_line(*args):
        with pytest.raises(SystemExit) as e:
            main(["-q", *map(str, args)])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error:"), err
        return err[0]

    # three labels, but the output holds 4 + 2 values per box: refused at adoption where the graph's shapes say so,
    # else when the first output is read
    bad = tmp_path / "bad"
    bad.mkdir()
    line = one_line("export", _detector(bad, labels=LABELS + ["triangle"], static=True), "--out", bad / "fp32")
    assert "does not fit object detection with 3 labels" in line and not (bad / "fp32").exists()
    images = _images(bad, 2)
    (bad / "b.csv").write_text(f"image,x1,y1,x2,y2,label\n{images[0].name},3,3,9,9,triangle\n")
    line = one_line("validate", _detector(bad, labels=LABELS + ["triangle"]), "--data", bad / "b.csv")
    assert "output [1, 64, 6] does not fit object detection with 3 labels" in line
    no_layout = tmp_path / "nolayout"
    no_layout.mkdir()
    assert "postprocess.boxes" in one_line("export", _detector(no_layout, post="{}"), "--out", no_layout / "o")
    # boxes outside the image, and class labels for a detector
    good = tmp_path / "good"
    good.mkdir()
    f = _detector(good)
    images = _images(good, 2)
    (good / "b.csv").write_text(f"image,x1,y1,x2,y2,label\n{images[0].name},30,30,45,39,square\n")
    assert "lies outside the 40x40 image" in one_line("validate", f, "--data", good / "b.csv")
    (good / "c.csv").write_text(f"image,label\n{images[0].name},square\n")
    assert "object detection needs boxes per image" in one_line("validate", f, "--data", good / "c.csv")
