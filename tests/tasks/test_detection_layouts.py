"""Detector layouts declared as data (postprocess.layout): YOLOX's grid offsets and MediaPipe's SSD anchors, each
decoded as a direct implementation of its authors' rule would, adopted -> INT8 -> validated through the CLI, and the
layouts' bad declarations refused in one line. The tiny detectors have random weights (test material; no BlazeFace
file is available offline); the YOLOX-Nano of ../shared/models is benchmarks/vision/yolox_nano.py's."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_storage import one_line, run_cli

from compress.tasks.box_layouts import SsdAnchors, ssd_anchors
from compress.tasks.detection import DetectionPostprocess, decode
from tests.builders.shared import SHARED, needs_shared
from tests.tasks.test_detection import _images, _own_boxes

LABELS = ["circle", "square"]
#: YOLOX's letterbox and feed: BGR, raw 0-255, the image at the top-left corner
YOLOX_PRE = ("{size: [32, 32], resize: letterbox, letterbox_align: top-left, channels: BGR, rescale: 1, "
             "mean: [0, 0, 0], std: [1, 1, 1]}")
YOLOX_POST = "{layout: yolox, strides: [8, 16, 32], scores_are_probabilities: true, iou_threshold: 0.45}"
#: BlazeFace's anchors (MediaPipe's face_detection_short_range graph) on a 32x32 input: 4x4x2 + 2x2x6 = 56
SSD_ANCHORS = {"num_layers": 4, "strides": [8, 16, 16, 16], "min_scale": 0.1484375, "max_scale": 0.75,
               "fixed_anchor_size": True}


class TinyYolox(torch.nn.Module):
    """32x32 input -> YOLOX's head over strides 8, 16, 32 (4x4 + 2x2 + 1x1 cells): [batch, 21, 5 + 2] raw
    [tx, ty, tw, th] with obj and cls through a sigmoid, as Megvii's export writes them."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, 2, 1),
                                        torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, 2, 1), torch.nn.ReLU())
        self.heads = torch.nn.ModuleList(torch.nn.Conv2d(8, 7, 1) for _ in range(3))

    def forward(self, images):
        f = self.stem(images / 255.0)
        rows = []
        for i, head in enumerate(self.heads):
            rows.append(head(torch.nn.functional.avg_pool2d(f, 2 ** i) if i else f).flatten(2).transpose(1, 2))
        p = torch.cat(rows, 1)
        return torch.cat([p[..., :2], p[..., 2:4] * 0.3, torch.sigmoid(p[..., 4:] * 12.0)], -1)


class TinySsd(torch.nn.Module):
    """32x32 input -> BlazeFace's layout on 56 anchors: ``regressors`` [batch, 56, 4 + 2·2] (x, y, w, h and two
    keypoints, in input pixels relative to the anchor) and ``classificators`` [batch, 56, 2] (a logit per class)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, 2, 1),
                                        torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, 2, 1), torch.nn.ReLU())
        self.fine, self.coarse = torch.nn.Conv2d(8, 2 * 10, 1), torch.nn.Conv2d(8, 6 * 10, 1)

    def forward(self, image):
        f = self.stem(image)
        a = self.fine(f).permute(0, 2, 3, 1).unflatten(-1, (2, 10)).flatten(1, 3)  # 4x4 cells x 2 anchors
        b = self.coarse(torch.nn.functional.avg_pool2d(f, 2)).permute(0, 2, 3, 1).unflatten(-1, (6, 10)).flatten(1, 3)
        p = torch.cat([a, b], 1)
        box = torch.cat([p[..., :2] * 4.0, 8.0 + 4.0 * torch.sigmoid(p[..., 2:4]), p[..., 4:8] * 4.0], -1)
        return box, p[..., 8:] * 4.0


def _export(module, d: Path, name: str, outputs: list[str], yaml: str, input_name: str, static: bool = False) -> Path:
    torch.manual_seed(0)
    f = d / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.rand(2, 3, 32, 32) * 255,), str(f), opset_version=13, dynamo=False,
                          input_names=[input_name], output_names=outputs,
                          dynamic_axes=None if static else {input_name: {0: "b"}, **{o: {0: "b"} for o in outputs}})
    f.with_suffix(".yaml").write_text(f"task: object-detection\nlabels: {json.dumps(LABELS)}\n{yaml}", encoding="utf-8")
    return f


def _yolox(d: Path, post: str = YOLOX_POST, static: bool = False) -> Path:
    torch.manual_seed(0)
    return _export(TinyYolox(), d, "yolox", ["output"], f"preprocess: {YOLOX_PRE}\npostprocess: {post}\n", "images",
                   static)


# -- the rules, written out as their authors' code does it, one box at a time -----------------------------------

def _yolox_reference(rows: np.ndarray, strides, size: int):
    """YOLOX's demo_postprocess + the score obj * cls, per row in plain Python: [(x1, y1, x2, y2, score, class)]."""
    out, r = [], 0
    for s in strides:
        n = size // s
        for gy in range(n):
            for gx in range(n):
                tx, ty, tw, th, obj, *cls = rows[r].tolist()
                r += 1
                x, y = (tx + gx) * s, (ty + gy) * s
                w, h = math.exp(tw) * s, math.exp(th) * s
                k = int(np.argmax(cls))
                out.append((x - w / 2, y - h / 2, x + w / 2, y + h / 2, obj * cls[k], k))
    return out


def _mediapipe_reference(raw: np.ndarray, logits: np.ndarray, anchors: list, scale: float):
    """MediaPipe's DecodeBoxes (XYWH) + the best class's sigmoid score, per anchor:
    [(x1, y1, x2, y2, score, [(kx, ky)...], class)]."""
    out = []
    for (ax, ay, aw, ah), row, logit in zip(anchors, raw.tolist(), logits.tolist()):
        cx, cy = row[0] / scale * aw + ax, row[1] / scale * ah + ay
        w, h = row[2] / scale * aw, row[3] / scale * ah
        kps = [(row[4 + 2 * k] / scale * aw + ax, row[5 + 2 * k] / scale * ah + ay) for k in range(2)]
        k = int(np.argmax(logit))
        out.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, 1 / (1 + math.exp(-logit[k])), kps, k))
    return out


def _mediapipe_anchors(strides, min_scale, max_scale, size):
    """SsdAnchorsCalculator for fixed-size anchors, one aspect ratio 1.0 and the interpolated one (two anchors per
    layer), equal strides merged: the cell centres only, as BlazeFace's graph configures it."""
    out, i = [], 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        n = math.ceil(size / strides[i])
        for y in range(n):
            for x in range(n):
                out += [((x + 0.5) / n, (y + 0.5) / n, 1.0, 1.0)] * (2 * (j - i))
        i = j
    return out


def test_yolox_layout_decodes_as_yolox_does(tmp_path):
    import onnxruntime as ort

    from compress.teachers.model_files import inspect_model_file

    info = inspect_model_file(_yolox(tmp_path))
    assert info.postprocess.layout == "yolox" and info.preprocess.channels == "BGR"
    x = np.random.default_rng(0).uniform(0, 255, (2, 3, 32, 32)).astype(np.float32)
    out = ort.InferenceSession(str(info.path)).run(None, {"images": x})[0]
    assert out.shape == (2, 21, 7)
    post = DetectionPostprocess(layout="yolox", strides=[8, 16, 32], scores_are_probabilities=True, nms=False,
                                iou_threshold=0.99, max_detections=1000)
    for rows, (boxes, scores, classes) in zip(out, decode(post, out, 2, (32, 32))):
        ref = sorted(_yolox_reference(rows, [8, 16, 32], 32), key=lambda r: -r[4])
        assert len(boxes) >= 15  # few overlap enough at IoU 0.99 to go
        for b, s, c in zip(boxes, scores, classes):
            match = next(r for r in ref if abs(r[4] - s) < 1e-9)
            assert np.allclose(b, match[:4], atol=1e-4) and c == match[5]
    # a graph of symbolic shapes is checked on its first output: strides that do not give its rows are refused
    from compress.errors import ConfigError

    with pytest.raises(ConfigError, match=r"strides \[8, 16\] on the 32x32 input give 20 cells .* has 21 rows"):
        decode(post.model_copy(update={"strides": [8, 16]}), out, 2, (32, 32))


def test_ssd_anchors_and_decoding_follow_mediapipe(tmp_path):
    import onnxruntime as ort

    blaze = ssd_anchors(SsdAnchors(**SSD_ANCHORS), (128, 128))
    assert len(blaze) == 896 and blaze[:2, :2].tolist() == [[1 / 32, 1 / 32]] * 2  # BlazeFace's 16x16x2 + 8x8x6
    palm = SsdAnchors(num_layers=5, strides=[8, 16, 32, 32, 32], min_scale=0.1171875, max_scale=0.75,
                      fixed_anchor_size=True)
    assert len(ssd_anchors(palm, (256, 256))) == 2944  # the palm detector's
    sized = ssd_anchors(SsdAnchors(num_layers=2, strides=[16, 32], min_scale=0.2, max_scale=0.9,
                                   aspect_ratios=[1.0, 2.0]), (64, 64))  # scales and ratios kept
    assert len(sized) == 4 * 4 * 3 + 2 * 2 * 3
    w, h = sized[1, 2], sized[1, 3]  # ratio 2 at scale 0.2
    assert w == pytest.approx(0.2 * math.sqrt(2)) and h == pytest.approx(0.2 / math.sqrt(2))
    assert sized[2, 2] == pytest.approx(math.sqrt(0.2 * 0.9))  # the interpolated anchor

    torch.manual_seed(0)
    f = _export(TinySsd(), tmp_path, "blaze", ["regressors", "classificators"], "", "image")
    x = np.random.default_rng(1).uniform(0, 1, (2, 3, 32, 32)).astype(np.float32)
    raw, logits = ort.InferenceSession(str(f)).run(None, {"image": x})
    anchors = _mediapipe_anchors([8, 16, 16, 16], 0.1484375, 0.75, 32)
    assert np.allclose(ssd_anchors(SsdAnchors(**SSD_ANCHORS), (32, 32)), anchors)
    post = DetectionPostprocess(layout="ssd", anchors=SSD_ANCHORS, box_scale=(32, 32, 32, 32), box_order="xywh",
                                keypoints=2, scores_output="classificators", iou_threshold=0.99, max_detections=1000)
    got = decode(post, raw, 2, (32, 32), scores=logits, keypoints=True)
    for i, (boxes, scores, classes, points) in enumerate(got):
        ref = _mediapipe_reference(raw[i], logits[i], anchors, 32.0)
        assert len(boxes) >= 20 and points.shape == (len(boxes), 2, 2) and set(classes.tolist()) == {0, 1}
        for b, s, p, c in zip(boxes, scores, points, classes):
            match = next(r for r in ref if abs(r[4] - s) < 1e-9)
            assert np.allclose(b / 32, match[:4], atol=1e-6) and np.allclose(p / 32, match[5], atol=1e-6)
            assert c == match[6]
    # keypoints map back to the image as the boxes do (here through YOLOX's top-left letterbox of a 64x40 image)
    from compress.artifact import ImagePreprocess
    from compress.tasks.detection import keypoints_to_image, to_image

    pre = ImagePreprocess(size=[32, 32], resize="letterbox", letterbox_align="top-left")
    pts = got[0][3][:3].reshape(-1, 2).clip(0, [32, 20])
    assert np.allclose(keypoints_to_image(pts, (64, 40), pre), to_image(np.tile(pts, 2), (64, 40), pre)[:, :2])
    assert keypoints_to_image(np.array([[32.0, 20.0]]), (64, 40), pre).tolist() == [[64, 40]]
    # the same rows with the scores after the box and keypoints in one output (a model exported so, or the two
    # outputs joined by join_scores for a metric that reads one array): the same detections
    from compress.tasks.detection import join_scores

    joined = join_scores(post, {"regressors": raw, "classificators": logits}, "regressors")
    post1 = post.model_copy(update={"scores_output": None})
    for again in (decode(post1, joined, 2, (32, 32), keypoints=True), decode(post, joined, 2, (32, 32), keypoints=True)):
        assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[3], b[3]) for a, b in zip(got, again))


def test_a_yolox_layout_goes_adopt_int8_validate_through_the_cli(tmp_path, fast_host, capsys):
    from compress.artifact import load_artifact

    images = _images(tmp_path)
    assert run_cli(capsys, "export", _yolox(tmp_path), "--out", tmp_path / "fp32")[0] == 0
    doc = _own_boxes(load_artifact(tmp_path / "fp32"), images)  # the FP32 file's confident boxes as labels
    assert len(doc["annotations"]) >= 12
    coco = tmp_path / "boxes.json"
    coco.write_text(json.dumps(doc))
    assert run_cli(capsys, "quantize", tmp_path / "fp32", "--calibration", coco, "--out", tmp_path / "int8")[0] == 0
    code, _ = run_cli(capsys, "validate", tmp_path / "int8", "--data", coco, "--profile", fast_host, "--no-cold-start",
                      "--report-dir", tmp_path / "rep")
    assert code in (0, 1, 4)  # judged (a budget of the host profile may fail or go unverified: not this test's)
    met = json.loads((tmp_path / "rep" / "report.json").read_text())["metrics"]
    assert met["metric_name"] == "mAP@[.5:.95]" and met["teacher_metric"] > 0.95  # its own boxes
    assert 0.8 < met["metric"] <= 1.0 and 0.8 < met["agreement"] <= 1.0  # INT8 of 21 boxes per image


class JoinedSsd(TinySsd):
    """TinySsd with the scores after the box and keypoints in one output: [batch, 56, 8 + 2]."""

    def forward(self, image):
        return torch.cat(super().forward(image), -1)


@pytest.mark.parametrize("scores", ["in the rows", "a second output"])
def test_an_ssd_layout_validates_with_its_scores_in_the_rows_or_apart(tmp_path, fast_host, scores):
    from compress.stages.export import export
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    images = _images(tmp_path)
    post = {"layout": "ssd", "anchors": SSD_ANCHORS, "box_scale": [32, 32, 32, 32], "box_order": "xywh",
            "keypoints": 2}
    torch.manual_seed(0)
    pre = "preprocess: {size: [32, 32], resize: letterbox}\n"
    if scores == "in the rows":
        f = _export(JoinedSsd(), tmp_path, "ssd", ["detections"], pre + f"postprocess: {json.dumps(post)}\n", "image")
    else:  # BlazeFace's form: the runtime joins the scores output to the boxes for the metric
        post["scores_output"] = "classificators"
        f = _export(TinySsd(), tmp_path, "ssd", ["regressors", "classificators"],
                    pre + f"postprocess: {json.dumps(post)}\n", "image")
    fp32 = export(f, tmp_path / "fp32")
    doc = _own_boxes(fp32, images)
    assert len(doc["annotations"]) >= 12
    (tmp_path / "boxes.json").write_text(json.dumps(doc))
    met = validate(fp32, ValidateConfig.from_flat(data=str(tmp_path / "boxes.json"), cold_start=False,
                                                  profile=fast_host)).metrics
    assert met["metric"] == met["teacher_metric"] == 1.0 and met["agreement"] == 1.0  # its own boxes, mapped back


def test_bad_layouts_are_refused_in_one_line(tmp_path, capsys):
    def refused(d: Path, post: str, module=None, outputs=("output",)) -> str:
        d.mkdir()
        yaml = f"preprocess: {YOLOX_PRE}\npostprocess: {post}\n"
        f = _yolox(d, post, True) if module is None else _export(module, d, "m", list(outputs), yaml, "images", True)
        code, err = run_cli(capsys, "export", f, "--out", d / "o")
        assert code == 2 and not (d / "o").exists()
        return one_line(err)

    line = refused(tmp_path / "a", "{layout: yolox, strides: [8, 16], scores_are_probabilities: true}")
    assert "strides [8, 16] on the 32x32 input give 20 cells (4x4 + 2x2), but the output" in line and "21 rows" in line
    assert "needs postprocess.strides" in refused(tmp_path / "b", "{layout: yolox}")
    assert "unknown detection layout 'yolo-x'" in refused(tmp_path / "c", "{layout: yolo-x, strides: [8, 16, 32]}")
    ssd = "{layout: ssd, box_scale: [32, 32, 32, 32], keypoints: 2, scores_output: classificators, anchors: %s}"
    few = json.dumps({**SSD_ANCHORS, "num_layers": 3, "strides": [8, 16, 16]})
    line = refused(tmp_path / "d", ssd % few, TinySsd(), ("regressors", "classificators"))
    assert "the anchors declared give 48 anchors on the 32x32 input, but the boxes output" in line and "56 rows" in line
    line = refused(tmp_path / "e", "{layout: ssd, keypoints: 2}", TinySsd(), ("regressors", "classificators"))
    assert "layout ssd needs postprocess.anchors and postprocess.box_scale" in line
    line = refused(tmp_path / "f", ssd % json.dumps(SSD_ANCHORS).replace("16, 16]", "16, 16, 16]"), TinySsd(),
                    ("regressors", "classificators"))
    assert "num_layers is 4 but 5 strides are listed" in line


YOLOX_NANO = SHARED / "models" / "yolox-nano"


@needs_shared(YOLOX_NANO / "yolox_nano.onnx", YOLOX_NANO / "dog.jpg")
def test_yolox_nano_declared_in_model_yaml_finds_yoloxs_own_detections_on_dog_jpg(tmp_path):
    """Megvii's YOLOX-Nano, adopted as a user would (BGR, raw 0-255, top-left letterbox, layout yolox), gives the
    detections YOLOX's README shows for its demo image: dog 0.83, car 0.81, bicycle 0.81."""
    import shutil

    from PIL import Image

    from compress.runtimes.base import load_runtime
    from compress.stages.export import export
    from compress.tasks.detection import to_image

    shutil.copy2(YOLOX_NANO / "yolox_nano.onnx", tmp_path / "yolox_nano.onnx")
    labels = [f"class{i}" for i in range(80)]  # COCO's 80 in order: 1 bicycle, 2 car, 16 dog
    (tmp_path / "yolox_nano.yaml").write_text(
        f"task: object-detection\nlabels: {json.dumps(labels)}\npreprocess: {{size: [416, 416], resize: letterbox, "
        "letterbox_align: top-left, channels: BGR, rescale: 1, mean: [0, 0, 0], std: [1, 1, 1]}\n"
        "postprocess: {layout: yolox, strides: [8, 16, 32], scores_are_probabilities: true, iou_threshold: 0.45}\n")
    art = export(tmp_path / "yolox_nano.onnx", tmp_path / "fp32")
    m, dog = art.manifest, YOLOX_NANO / "dog.jpg"
    backend = load_runtime(art)
    out = backend.run(backend.encode([dog]))
    backend.close()
    [(boxes, scores, classes)] = decode(m.postprocess, out, 80, (416, 416))
    found = {int(c): round(float(s), 2) for s, c in zip(scores, classes) if s >= 0.5}
    assert found == {16: 0.83, 2: 0.81, 1: 0.81}
    w, h = Image.open(dog).size
    box = to_image(boxes[classes == 16][:1], (w, h), m.preprocess)[0]
    assert 100 < box[0] < 160 and 480 < box[3] <= h  # the dog, bottom left, in the photo's pixels
