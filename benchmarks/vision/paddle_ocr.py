"""PaddleOCR's text-orientation classifier and PP-OCRv4 text detector (Paddle2ONNX files, as RapidOCR ships them),
adopted with a ``model.yaml`` and quantized by the default ``edgecompress quantize`` (static INT8), judged on real
views no calibration view came from (issue 69).

**The files** are fetched the way a user gets them: ``pip download --no-deps rapidocr_onnxruntime==1.4.4`` (or
``--wheel PATH`` to that wheel), and read from its ``rapidocr_onnxruntime/models/``:
``ch_ppocr_mobile_v2.0_cls_infer.onnx`` (0 vs 180 degrees, input 3 x 48 x 192, softmax out) and
``ch_PP-OCRv4_det_infer.onnx`` (DB detector, a sigmoid probability map out), with the wheel's ``config.yaml`` (the
detector's mean/std 0.5 and its DB threshold 0.3; the classifier's shape and labels). They stay in ``--work``,
outside the repository.

**Data**, all real: scikit-image's and scikit-learn's photos (``real_cnns.photos``), among them ``page`` (a scanned
book page) and ``text`` (a photo of handwritten formulas).

* Classifier: the 7 text lines the FP32 detector finds on ``page`` (DB: the map at 0.3, connected components, each
  box grown by area x 1.6 / perimeter as RapidOCR's unclip does). Each line gives ``--line-views`` views: a random
  span of 15-100% of its width at a random offset, its box grown by 0-4 pixels of margin, resized to height 48
  keeping the aspect (at most 192 wide, right-padded with 0 after normalising: PaddleOCR's ``resize_norm_img``), each
  upright (label ``0``) and rotated 180 degrees before resizing (label ``180``). **Split by line**: lines 0, 2, 4, 6
  (top to bottom: the title, body lines 2 and 4, the code line) calibrate; lines 1, 3, 5 are judged. (``text``'s
  handwritten formulas, slanted, leave the FP32 classifier near chance on 0/180 labels: not used.)
* Detector: ``--det-views`` views of each photo (a random crop of 40-100% of the shorter side, resized to
  ``--side`` x ``--side``, normalised by the wheel's mean/std). **Split by photo**: ``page`` and every other photo (in
  name order) are judged, ``text`` and the others calibrate.

**The route**: ``edgecompress export FILE`` (adopt) -> ``edgecompress quantize FP32 --calibration cal.npz`` (the
default: static INT8, its own held-out check and fall-back) -> ``edgecompress validate INT8 --data eval.npz
--profile host`` (the classifier's accuracy on the 0/180 labels against the FP32 file's: retention and agreement;
the detector's map: output cosine to FP32 and the IoU of its mask at 0.3; p50 at batch 1 of the INT8 artifact and
the FP32 file timed side by side in alternating rounds, one process). Results: ``benchmarks/results/paddle_ocr.json``.

Each is quantized twice: the default with no target named (7-bit weights, :data:`ROUTES`), and with ``--profile
cpu-x86-avx512-vnni`` (full-range weights: the kind of CPU this benchmark ran on). The pooled figures of the detector
(:func:`pooled`) are computed here from both files' maps, beside validate's per-view ones.

``--per-conv VIEWS`` writes only the detector's table of each convolution quantized alone (:func:`per_conv`) to
``benchmarks/results/paddle_ocr_per_conv.json``.

    python benchmarks/vision/paddle_ocr.py [--wheel rapidocr_onnxruntime-1.4.4-py3-none-any.whl] [--work /tmp/paddle_ocr]
    python benchmarks/vision/paddle_ocr.py --per-conv 8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness
from benchmarks.harness.results import write_results

WHEEL = "rapidocr_onnxruntime==1.4.4"
CLS, DET = "ch_ppocr_mobile_v2.0_cls_infer.onnx", "ch_PP-OCRv4_det_infer.onnx"
#: the photo whose text lines the classifier is judged on: a real scanned book page (``text``'s handwritten formulas,
#: slanted, leave the FP32 classifier at chance on their 0/180 labels: no upright line to judge)
LINE_SOURCE = "page"
#: photos of text: ``page`` judged, ``text`` calibrates the detector
TEXT_PHOTOS = ("page", "text")


def fetch(work: Path, wheel: Path | None) -> tuple[Path, dict]:
    """The two model files and config.yaml out of RapidOCR's wheel (downloaded by pip unless ``wheel``)."""
    dst = work / "models"
    if wheel is None:
        (work / "wheel").mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", str(work / "wheel")],
                       check=True)
        wheel = next((work / "wheel").glob("rapidocr_onnxruntime-*.whl"))
    dst.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for name in (f"models/{CLS}", f"models/{DET}", "config.yaml"):
            target = dst / Path(name).name
            if not target.is_file():
                target.write_bytes(z.read(f"rapidocr_onnxruntime/{name}"))
    return dst, yaml.safe_load((dst / "config.yaml").read_text(encoding="utf-8"))


def _rgb(img: np.ndarray) -> np.ndarray:
    return np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]


def det_input(img: np.ndarray, cfg: dict, shape: tuple[int, int]) -> np.ndarray:
    """An HxWx3 uint8 image as the detector's 3 x H x W input at ``shape`` (the wheel's mean/std)."""
    from skimage.transform import resize

    x = resize(_rgb(img), shape, order=1, preserve_range=True, anti_aliasing=True).astype(np.float32) / 255.0
    x = (x - np.float32(cfg["mean"])) / np.float32(cfg["std"])
    return x.transpose(2, 0, 1).astype(np.float32)


def text_lines(det_file: Path, cfg: dict, img: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The FP32 detector's text boxes (y0, x0, y1, x1 in ``img``'s pixels), top to bottom: RapidOCR's resize (the
    shorter side to ``limit_side_len``, sides multiples of 32), the map at ``thresh``, connected components, each box
    grown by area x ``unclip_ratio`` / perimeter."""
    import onnxruntime as ort
    from skimage.measure import label, regionprops

    h, w = img.shape[:2]
    s = max(1.0, cfg["limit_side_len"] / min(h, w))
    shape = tuple(max(32, int(round(v * s / 32)) * 32) for v in (h, w))
    sess = ort.InferenceSession(str(det_file), providers=["CPUExecutionProvider"])
    prob = sess.run(None, {"x": det_input(img, cfg, shape)[None]})[0][0, 0]
    sy, sx = shape[0] / h, shape[1] / w
    boxes = []
    for r in regionprops(label(prob > cfg["thresh"])):
        if r.area < 50:
            continue
        y0, x0, y1, x1 = r.bbox
        d = r.area * cfg["unclip_ratio"] / (2 * ((y1 - y0) + (x1 - x0)))
        boxes.append((max(0, int((y0 - d) / sy)), max(0, int((x0 - d) / sx)),
                      min(h, int(np.ceil((y1 + d) / sy))), min(w, int(np.ceil((x1 + d) / sx)))))
    return sorted(boxes)


def cls_input(crop: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """PaddleOCR's ``resize_norm_img``: height 48 keeping the aspect (at most 192 wide), (x/255 - 0.5)/0.5, right-padded
    with 0 to 192."""
    from skimage.transform import resize

    c, h, w = shape
    width = min(w, int(np.ceil(h * crop.shape[1] / crop.shape[0])))
    x = resize(_rgb(crop), (h, width), order=1, preserve_range=True, anti_aliasing=True).astype(np.float32)
    out = np.zeros(shape, np.float32)
    out[:, :, :width] = ((x / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    return out


def line_views(img: np.ndarray, box, rng: np.random.Generator, n: int, shape) -> list[tuple[np.ndarray, int]]:
    """``n`` views of one line (see the module docstring), each upright (label 0) and rotated 180 degrees (label 1),
    the crop rotated before it is resized and padded."""
    y0, x0, y1, x1 = box
    out = []
    for _ in range(n):
        span = max(8, int((x1 - x0) * rng.uniform(0.15, 1.0)))
        a = x0 + int(rng.integers(0, x1 - x0 - span + 1))
        m = int(rng.integers(0, 5))
        crop = img[max(0, y0 - m):min(img.shape[0], y1 + m), max(0, a - m):min(img.shape[1], a + span + m)]
        out += [(cls_input(crop, shape), 0), (cls_input(crop[::-1, ::-1], shape), 1)]
    return out


def cls_data(work: Path, det_file: Path, cfg: dict, n: int, seed: int) -> tuple[Path, Path, dict]:
    """The classifier's calibration and eval ``.npz`` (``x``, ``labels``): see the module docstring."""
    import skimage.data as sd

    rng = np.random.default_rng(seed)
    shape = tuple(cfg["Cls"]["cls_image_shape"])
    sets: dict[str, list] = {"cal": [], "eval": []}
    grey = getattr(sd, LINE_SOURCE)()
    lines = text_lines(det_file, cfg["Det"], grey)
    for i, box in enumerate(lines):
        sets["eval" if i % 2 else "cal"] += line_views(grey, box, rng, n, shape)
    files = []
    for name, rows in sets.items():
        order = rng.permutation(len(rows))
        f = work / f"cls-{name}.npz"
        np.savez(f, x=np.stack([rows[i][0] for i in order]), labels=np.array([rows[i][1] for i in order]))
        files.append(f)
    return files[0], files[1], {"lines": [list(b) for b in lines], "calibration_lines": list(range(0, len(lines), 2)),
                                "eval_lines": list(range(1, len(lines), 2)), "calibration_views": len(sets["cal"]), "eval_views": len(sets["eval"])}


def det_data(work: Path, cfg: dict, n: int, side: int, seed: int) -> tuple[Path, Path, dict]:
    """The detector's calibration and eval ``.npz`` (``x``): see the module docstring."""
    from benchmarks.harness.cnns import photos, views

    rng = np.random.default_rng(seed)
    shots = photos()
    names = sorted(shots)
    others = [p for p in names if p not in TEXT_PHOTOS]
    judged = ["page", *others[::2]]
    sets: dict[str, list] = {"cal": [], "eval": []}
    for name in names:
        for v in views(shots[name], rng, n):
            sets["eval" if name in judged else "cal"].append(det_input(v, cfg, (side, side)))
    files = []
    for name, rows in sets.items():
        f = work / f"det-{name}.npz"
        np.savez(f, x=np.stack([rows[i] for i in rng.permutation(len(rows))]))
        files.append(f)
    return files[0], files[1], {"judged_photos": judged, "calibration_photos": [p for p in names if p not in judged],
                                "calibration_views": len(sets["cal"]), "eval_views": len(sets["eval"])}


def _cli(*args, check: bool = True) -> int:
    cmd = [sys.executable, "-m", "compress", *map(str, args)]
    print("$ edgecompress", " ".join(map(str, args)), flush=True)
    return subprocess.run(cmd, check=check).returncode


def adopt(work: Path, src: Path, name: str, description: dict, sample: Path) -> Path:
    """The file with its model.yaml beside it, adopted by ``edgecompress export`` (``sample``: arrays that fix the
    spatial dimensions the graph leaves open)."""
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, d / "model.onnx")
    (d / "model.yaml").write_text(yaml.safe_dump(description, sort_keys=False), encoding="utf-8")
    _cli("export", d / "model.onnx", "--out", work / f"{name}-fp32", "--sample-data", sample, "--force")
    return work / f"{name}-fp32"


def pooled(fp32: Path, int8: Path, data: Path, threshold: float) -> dict:
    """The detector's maps on every eval view, both files: the cosine of all of them together (a view without text
    has a map near 0 everywhere, whose own cosine is noise), per view on the text photo, and the mask IoU at the
    threshold over all pixels."""
    import onnxruntime as ort

    with np.load(data) as f:
        x = f["x"]
    maps = []
    for model in (fp32, int8):
        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        maps.append(np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))]).astype(np.float64))
    ref, got = maps
    a, b = got >= threshold, ref >= threshold
    return {"map_cosine_all_views": float((ref * got).sum() / np.sqrt((ref * ref).sum() * (got * got).sum())),
            "mask_iou_all_views": float((a & b).sum() / max(1, (a | b).sum())), "views": len(x)}


def judge(work: Path, name: str, fp32: Path, cal: Path, data: Path, route: str, args: list[str]) -> dict:
    """``quantize`` (the default, plus ``args``) and ``validate``: the figures."""
    out, report = work / f"{name}-{route}", work / f"{name}-{route}.report"
    shutil.rmtree(report, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    rc = _cli("quantize", fp32, "--calibration", cal, "--out", out, *args, check=False)
    if not (out / "manifest.json").is_file():
        return {"route": route, "quantize_args": args, "quantize_exit": rc, "written": False}
    _cli("validate", out, "--data", data, "--profile", "host", "--no-cold-start", "--report-dir", report,
         check=False)  # the host profile's budgets are not what is judged here
    m = json.loads((report / "report.json").read_text())["metrics"]
    step = json.loads((out / "manifest.json").read_text())["steps"][-1]
    sm = step.get("metrics") or {}
    fid = next(iter(m["output_fidelity"].values()))
    fb = sm.get("fallback") or {}
    return {"route": route, "quantize_args": args, "quantize_exit": rc, "written": True,
            "metric_name": m.get("metric_name"), "metric": m.get("metric"), "teacher_metric": m.get("teacher_metric"),
            "retention": m.get("retention"), "agreement": m.get("agreement"),
            "output_cosine_mean_per_view": fid["cosine"], "output_cosine_min": fid["cosine_min"], "snr_db": fid["snr_db"],
            "p50_ms": m["latency_ms"]["p50"], "fp32_p50_ms": (m.get("baseline_latency_ms") or {}).get("p50"),
            "speedup": m.get("speedup"), "eval_samples": m.get("eval_samples"),
            "size_bytes_fp32": sm.get("size_bytes_before"), "size_bytes_int8": sm.get("size_bytes_after"),
            "collapsed": (sm.get("parity_vs_input") or {}).get("collapsed"), "weight_range": sm.get("weight_range"),
            "speed_vs_input": sm.get("speed_vs_input"),  # quantize's own side-by-side timing (issue 77)
            "fallback": {k: fb.get(k) for k in ("held_out", "needed", "held", "before", "after", "float_weight_share",
                                                "seconds") if k in fb},
            "float_layers": len(fb.get("float_nodes") or []),
            "worst_layers": [(r["node"], r["snr_db"], r.get("own_snr_db"))
                             for r in (m.get("layer_errors") or {}).get("layers", [])[:5]]}


def per_conv(fp32: Path, cal: Path, data: Path, views: int) -> list[dict]:
    """Each convolution of the adopted detector quantized alone (ONNX Runtime's quantize_static: QDQ, per-channel
    symmetric 8-bit weights, u8 activations by moving-average min-max, every other layer float), and the cosine of its
    maps to FP32's on the first ``views`` eval views together: which layers INT8 costs most."""
    import onnx
    import onnxruntime as ort
    from onnxruntime import quantization as ortq

    with np.load(cal) as f:
        rows = f["x"]
    with np.load(data) as f:
        x = f["x"][:views]

    def maps(model: Path) -> np.ndarray:
        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        return np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))]).astype(np.float64)

    class Reader(ortq.CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter({"x": rows[i:i + 1]} for i in range(len(rows)))

        def get_next(self):
            return next(self.rows, None)

    ref = maps(fp32)
    graph = onnx.load(str(fp32)).graph
    weights = {t.name: list(t.dims) for t in graph.initializer}
    out = []
    for node in (n for n in graph.node if n.op_type == "Conv"):
        dst = fp32.parent.parent / "per-conv.onnx"
        ortq.quantize_static(str(fp32), str(dst), Reader(), quant_format=ortq.QuantFormat.QDQ, per_channel=True,
                             op_types_to_quantize=["Conv"], nodes_to_quantize=[node.name],
                             extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                            "CalibMovingAverage": True})
        got = maps(dst)
        out.append({"conv": node.name, "weight_shape": weights.get(node.input[1]),
                    "map_cosine": float((ref * got).sum() / np.sqrt((ref * ref).sum() * (got * got).sum()))})
        print(json.dumps(out[-1]), flush=True)
    return out


#: the routes judged: the default with no target named (7-bit weights), and with this host's kind of CPU named
ROUTES = {"int8": [], "int8-vnni": ["--profile", "cpu-x86-avx512-vnni"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", type=Path, help="RapidOCR's wheel, already downloaded (else: pip download)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/paddle_ocr"))
    ap.add_argument("--line-views", type=int, default=40, help="views of each text line (each also rotated 180)")
    ap.add_argument("--det-views", type=int, default=3, help="views of each photo for the detector")
    ap.add_argument("--side", type=int, default=640, help="the detector's input side (a multiple of 32)")
    ap.add_argument("--models", default="cls,det")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-conv", type=int, default=0, metavar="VIEWS",
                    help="only the detector's table of each convolution quantized alone, judged on VIEWS eval views "
                         "(to benchmarks/results/paddle_ocr_per_conv.json)")
    ap.add_argument("--results", type=Path, default=HERE / "results" / "paddle_ocr.json")
    args = ap.parse_args(argv)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    models, cfg = fetch(work, args.wheel)
    from compress.host.cpu import has_vnni

    out: dict = {"host_vnni": has_vnni(), "cores": os.cpu_count(),
                 "files": f"pip download --no-deps {WHEEL}: rapidocr_onnxruntime/models", "models": {}}
    if args.per_conv:
        cal, data, split = det_data(work, cfg["Det"], args.det_views, args.side, args.seed)
        fp32 = adopt(work, models / DET, "det", {
            "task": "probability-map", "postprocess": {"scores_are_probabilities": True, "threshold": 0.3}}, cal)
        table = per_conv(fp32 / "model.onnx", cal, data, args.per_conv)
        write_results(HERE / "results" / "paddle_ocr_per_conv.json",
                      {"views": args.per_conv, "split": split, "convs": table})
        return 0
    if "cls" in args.models:
        cal, data, split = cls_data(work, models / DET, cfg, args.line_views, args.seed)
        fp32 = adopt(work, models / CLS, "cls", {"task": "image-classification",
                                                 "labels": [str(v) for v in cfg["Cls"]["label_list"]],
                                                 "architecture": "ch_ppocr_mobile_v2.0_cls"}, cal)
        out["models"]["cls"] = {"split": split, "routes": [judge(work, "cls", fp32, cal, data, r, a)
                                                           for r, a in ROUTES.items()]}
        print(json.dumps(out["models"]["cls"]), flush=True)
    if "det" in args.models:
        cal, data, split = det_data(work, cfg["Det"], args.det_views, args.side, args.seed)
        fp32 = adopt(work, models / DET, "det", {
            "task": "probability-map", "architecture": "ch_PP-OCRv4_det",
            "postprocess": {"scores_are_probabilities": True, "threshold": cfg["Det"]["thresh"]}}, cal)
        routes = []
        for r, a in ROUTES.items():
            routes.append(judge(work, "det", fp32, cal, data, r, a))
            if routes[-1]["written"]:
                routes[-1].update(pooled(fp32 / "model.onnx", work / f"det-{r}" / "model.onnx", data,
                                         cfg["Det"]["thresh"]))
            print(json.dumps(routes[-1]), flush=True)
        out["models"]["det"] = {"split": split, "side": args.side, "routes": routes}
    write_results(args.results, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
