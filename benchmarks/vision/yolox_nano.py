"""YOLOX-Nano (Megvii's COCO weights, ``../shared/models/yolox-nano/yolox_nano.onnx``) adopted with its raw grid
layout declared in a model.yaml (``postprocess.layout: yolox``), quantized to INT8 by ``edgecompress quantize`` and
validated by COCO mAP against the FP32 file's own boxes (issue 54, item 2).

1. **Decoding check**: ``dog.jpg`` (YOLOX's demo image) through the adopted file's preprocess (BGR, raw 0-255,
   letterboxed at the top-left, margins 114) and the yolox layout: its detections scoring >= 0.3, to set beside the
   README's (dog 0.83, car 0.81, bicycle 0.81).
2. **Data**, all real photographs: ``dog.jpg`` and the colour photos scikit-image and scikit-learn ship
   (``real_cnns.photos``: astronaut, coffee, chelsea, rocket, the stereo motorcycle pair, the two sklearn photos, ...)
   as they are, plus ``--views`` random views of each (crops of 40-100% of the shorter side, flipped half the time;
   ``real_cnns.views``); calibration on ``--calibration-views`` other views of each, drawn separately (the same
   photos, other crops). Labels: the FP32 file's boxes scoring >= 0.5 (its own agreement threshold), as COCO JSON in
   each image's pixels, so the FP32 file scores mAP 1.0 by construction and an INT8 artifact's mAP is its agreement
   with the FP32 boxes.
3. ``edgecompress export yolox_nano.onnx`` (adopt) -> ``quantize --mode static`` by each route of :data:`ROUTES` (the
   default mean-minmax ranges, each other ``--calibration-method``, the stem's and head's convolutions kept float
   by ``--exclude-nodes``, and the accuracy-aware search ``--max-drop 0.05 --data calibration.json``, which picks the
   float convolutions itself judging only the calibration views; when it misses, its best candidate is judged);
   ``--mode dynamic`` is tried and recorded as refused -> ``validate --data boxes.json --profile host`` (p50 at
   batch 1 on this machine's cores, the FP32 file timed in alternating rounds with it: medians side by side; cold
   start off).
4. **Ablation** (:func:`ablation`): which convolutions kept float bring the mAP back, through ONNX Runtime's
   quantize_static directly (the same ranges for every set), judged on the calibration views and on the eval images.

The work dir is kept: a rerun reuses the data, the artifacts and each report that has the FP32 timing (``--fresh``
starts over; about 15 minutes from nothing on 2 shared cores, plus about 30 for the accuracy-aware search).

Results: ``benchmarks/results/yolox_nano.json``.

    python benchmarks/vision/yolox_nano.py [--work DIR] [--fresh] [--views 4] [--calibration-views 3] [--routes a,b]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness
from benchmarks.harness.results import cached_step, write_results

FOLDER = HERE.parents[1] / "shared" / "models" / "yolox-nano"
MODEL, DOG = FOLDER / "yolox_nano.onnx", FOLDER / "dog.jpg"
COCO = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
        "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
        "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis",
        "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
        "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
        "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
        "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
        "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
        "hair drier", "toothbrush"]
#: the model.yaml written beside the file: what /work/shared/models/README.md says of its input and output
DESCRIPTION = {
    "task": "object-detection",
    "labels": COCO,
    "preprocess": {"size": [416, 416], "resize": "letterbox", "letterbox_align": "top-left", "pad_value": 114,
                   "channels": "BGR", "rescale": 1, "mean": [0, 0, 0], "std": [1, 1, 1]},
    "postprocess": {"layout": "yolox", "strides": [8, 16, 32], "scores_are_probabilities": True,
                    "iou_threshold": 0.45},
}


def _cli(*args, check: bool = True) -> int:
    cmd = ["edgecompress", *map(str, args)]
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=check).returncode


def _detect(model: Path, paths: list[Path]) -> list[tuple]:
    """The adopted file's detections per image (boxes in each image's pixels, scores, classes), by the library."""
    import onnxruntime as ort
    from PIL import Image

    from compress.device.feeds import ImageFeeds
    from compress.tasks.detection import decode, to_image
    from compress.teachers.model_files import inspect_model_file

    info = inspect_model_file(model)
    feeds = ImageFeeds.from_spec({**info.preprocess.model_dump(), "input_name": "images"})
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    out = []
    for p in paths:
        [(b, s, c)] = decode(info.postprocess, sess.run(None, feeds.encode([p]))[0], len(COCO), (416, 416))
        out.append((to_image(b, Image.open(p).size, info.preprocess), s, c))
    return out


def _boxes_json(paths: list[Path], out: Path) -> dict[str, int]:
    """``out``: COCO JSON of ``paths`` labelled with the FP32 file's boxes scoring >= 0.5 (in each image's pixels);
    returns the boxes per class."""
    from PIL import Image

    doc = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(COCO)]}
    per_class: dict[str, int] = {}
    for i, (p, (boxes, scores, classes)) in enumerate(zip(paths, _detect(out.parents[1] / "src" / MODEL.name, paths))):
        w, h = Image.open(p).size
        doc["images"].append({"id": i, "file_name": p.name, "width": w, "height": h})
        for b, c in zip(boxes[scores >= 0.5], classes[scores >= 0.5]):
            if b[2] - b[0] > 1 and b[3] - b[1] > 1:
                doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": i, "category_id": int(c) + 1,
                                           "bbox": [round(float(v), 2) for v in (b[0], b[1], b[2] - b[0],
                                                                                 b[3] - b[1])]})
                per_class[COCO[c]] = per_class.get(COCO[c], 0) + 1
    out.write_text(json.dumps(doc))
    return dict(sorted(per_class.items(), key=lambda kv: -kv[1]))


def write_data(work: Path, n_views: int, n_cal: int) -> tuple[Path, Path, dict]:
    """``images/`` (the photos and their views) with ``boxes.json``, and ``calibration/`` (other views) with
    ``calibration.json``, both labelled with the FP32 file's boxes >= 0.5 (calibration reads only the images; the
    accuracy-aware search judges on them, never on the eval images)."""
    from PIL import Image

    from benchmarks.harness.cnns import photos, views

    rng = np.random.default_rng(0)
    for d in ("images", "calibration"):
        (work / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(DOG, work / "images" / "dog.jpg")
    dog = np.asarray(Image.open(DOG).convert("RGB"))
    evals, cals = [work / "images" / "dog.jpg"], []
    for name, img in {"dog": dog, **photos()}.items():
        if name != "dog":
            Image.fromarray(img).save(work / "images" / f"{name}.png")
            evals.append(work / "images" / f"{name}.png")
        for i, v in enumerate(views(img, rng, n_views)):
            evals.append(work / "images" / f"{name}-{i}.png")
            Image.fromarray(np.ascontiguousarray(v)).save(evals[-1])
        for i, v in enumerate(views(img, rng, n_cal)):
            cals.append(work / "calibration" / f"{name}-{i}.png")
            Image.fromarray(np.ascontiguousarray(v)).save(cals[-1])
    per_class = _boxes_json(evals, work / "images" / "boxes.json")
    cal_classes = _boxes_json(cals, work / "calibration" / "calibration.json")
    stats = {"eval_images": len(evals), "calibration_images": len(cals), "fp32_boxes": sum(per_class.values()),
             "fp32_boxes_per_class": per_class, "calibration_fp32_boxes": sum(cal_classes.values())}
    return work / "images" / "boxes.json", work / "calibration" / "calibration.json", stats


def dog_check(model: Path) -> list[dict]:
    [(boxes, scores, classes)] = _detect(model, [DOG])
    return [{"class": COCO[c], "score": round(float(s), 3), "box": [round(float(v), 1) for v in b]}
            for b, s, c in zip(boxes, scores, classes) if s >= 0.3]


#: the INT8 routes compared: ``edgecompress quantize fp32 --mode static --calibration CALIBRATION ARGS``; FIRST:n and
#: LAST:n name the graph's first and last n convolutions (YOLOX-Nano's stem and dark2; its head is the last 36: per
#: level a 1x1 stem, two depthwise-separable cls and reg convs each, and the cls/reg/obj predictions)
ROUTES = {
    # the default: mean-minmax ranges (per-batch extremes averaged) on 3/4 of the calibration views, checked on the
    # other 1/4 and falling back to float by itself where the check fails (compress.stages.quantize.fallback)
    "int8-static-default": [],
    "int8-static-minmax": ["--calibration-method", "minmax"],
    "int8-static-percentile": ["--calibration-method", "percentile"],
    "int8-static-entropy": ["--calibration-method", "entropy"],
    # the remedy the per-layer analysis points to (below): the stem's and the head's convolutions kept float
    # (first:12,last:36: quantize's own positional names for the first 12 and the last 36 quantizable layers; here
    # the same 48 convolutions as FIRST:12,LAST:36 of the ablation)
    "int8-stem-head-float": ["--exclude-nodes", "first:12,last:36"],
    # the automatic route: accuracy-aware, mAP against the FP32 boxes on the calibration views (CALIBRATION: their
    # boxes JSON, never the eval images) may drop at most 0.05; the search picks the convolutions kept float
    "int8-accuracy-aware": ["--max-drop", "0.05", "--data", "CALIBRATION"],
}


def _convs(model: Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(model), load_external_data=False).graph.node if n.op_type == "Conv"]


def _nodes(spec: str, convs: list[str]) -> str:
    """``FIRST:n,LAST:m`` as node names."""
    out = []
    for part in spec.split(","):
        where, n = part.split(":")
        out += convs[:int(n)] if where == "FIRST" else convs[-int(n):]
    return ",".join(out)


def ablation(work: Path) -> list[dict]:
    """Which convolutions kept float bring INT8 back: ONNX Runtime's quantize_static (QDQ, per-channel, the
    mean-minmax ranges of the calibration views, computed once) directly, each set of float convolutions judged by
    mAP against the FP32 boxes on the calibration views (TUNING, where a choice would be made) and on the eval
    images."""
    import onnxruntime as ort
    import onnxruntime.quantization as ortq
    from PIL import Image

    from compress.device.feeds import ImageFeeds
    from compress.tasks.detection import _coco_map, decode, to_image
    from compress.teachers.model_files import inspect_model_file

    info = inspect_model_file(work / "src" / MODEL.name)
    feeds = ImageFeeds.from_spec({**info.preprocess.model_dump(), "input_name": "images"})

    def load(doc_path: Path):
        doc = json.loads(doc_path.read_text())
        paths = [doc_path.parent / im["file_name"] for im in doc["images"]]
        truth: list[tuple[list, list]] = [([], []) for _ in paths]
        for a in doc["annotations"]:
            x, y, w, h = a["bbox"]
            truth[a["image_id"]][0].append([x, y, x + w, y + h])
            truth[a["image_id"]][1].append(a["category_id"] - 1)
        return (np.concatenate([feeds.encode([p])["images"] for p in paths]),
                [(np.asarray(b, dtype=np.float64).reshape(-1, 4), np.asarray(c, dtype=np.int64)) for b, c in truth],
                [Image.open(p).size for p in paths])

    tune, evals = load(work / "calibration" / "calibration.json"), load(work / "images" / "boxes.json")

    def judge(model: Path, data) -> float:
        x, truth, sizes = data
        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        out = np.concatenate([sess.run(None, {"images": x[i:i + 1]})[0] for i in range(len(x))])
        dets = [(to_image(b, size, info.preprocess), s, c)
                for (b, s, c), size in zip(decode(info.postprocess, out, len(COCO), (416, 416)), sizes)]
        return round(_coco_map(truth, sizes, dets, len(COCO))[0], 4)

    class Reader(ortq.CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self):
            self.i += 1
            return {"images": tune[0][self.i - 1:self.i]} if self.i <= len(tune[0]) else None

    convs = _convs(work / "fp32" / "model.onnx")
    preds = onnx_preds(work / "fp32" / "model.onnx")
    variants = {"none": "", "first 2 (the stem)": "FIRST:2", "first 6": "FIRST:6", "first 12": "FIRST:12",
                "the 9 prediction convs": "PREDS", "first 12 + the 9 prediction convs": "FIRST:12,PREDS",
                "first 2 + head (last 36)": "FIRST:2,LAST:36", "first 6 + head (last 36)": "FIRST:6,LAST:36",
                "first 12 + head (last 36)": "FIRST:12,LAST:36"}
    rows, scratch = [], work / "ablation"
    scratch.mkdir(exist_ok=True)
    for name, spec in variants.items():
        parts = [p for p in spec.split(",") if p and p != "PREDS"]
        nodes = (_nodes(",".join(parts), convs).split(",") if parts else []) + (preds if "PREDS" in spec else [])
        dst = scratch / "variant.onnx"
        ortq.quantize_static(str(work / "fp32" / "model.onnx"), str(dst), Reader(), quant_format=ortq.QuantFormat.QDQ,
                             op_types_to_quantize=["Conv"], per_channel=True, reduce_range=False,
                             activation_type=ortq.QuantType.QUInt8, weight_type=ortq.QuantType.QInt8,
                             nodes_to_exclude=nodes, calibrate_method=ortq.CalibrationMethod.MinMax,
                             extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                            "CalibMovingAverage": True},
                             calibration_cache_path=str(scratch / "ranges.json"))
        row = {"float_convs": name, "count": len(nodes), "tuning_map": judge(dst, tune), "eval_map": judge(dst, evals)}
        print(row, flush=True)
        rows.append(row)
    return rows


def onnx_preds(model: Path) -> list[str]:
    """The head's 9 prediction convolutions (weights named head.cls_preds / reg_preds / obj_preds)."""
    import onnx

    return [n.name for n in onnx.load(str(model), load_external_data=False).graph.node
            if n.op_type == "Conv" and n.input[1].startswith("head.") and "_preds." in n.input[1]]


def _row(work: Path, name: str, data: Path, profile: str) -> dict:
    """validate ``name`` on ``data`` (kept when a report with the FP32 file's timing is there): the figures."""
    report = work / f"{name}.report"
    done = report / "report.json"
    if not (done.is_file() and json.loads(done.read_text())["metrics"].get("baseline_latency_ms")):
        shutil.rmtree(report, ignore_errors=True)  # one without the FP32 file's timing: measured again
        _cli("validate", work / name, "--data", data, "--profile", profile, "--no-cold-start", "--report-dir", report,
             check=False)  # the host profile's budgets are not what is judged here
    m = json.loads(done.read_text())["metrics"]
    step = json.loads((work / name / "manifest.json").read_text())["steps"][-1]
    aware = (step.get("metrics") or {}).get("accuracy_aware") or {}
    row = {"map_vs_fp32_boxes": m.get("metric"), "map50_vs_fp32_boxes": m.get("map50"),
           "fp32_map": m.get("teacher_metric"), "boxes_per_image": m.get("boxes_per_image"),
           "output_cosine": m.get("output_cosine"), "size_bytes": sum(
               f.stat().st_size for f in (work / name).iterdir() if f.suffix in (".onnx", ".data")),
           "quantize_seconds": step.get("seconds") if step.get("stage") == "quantize" else None,
           "p50_ms": m.get("latency_ms", {}).get("p50"),
           "fp32_p50_ms": (m.get("baseline_latency_ms") or {}).get("p50"), "speedup": m.get("speedup"),
           "speed_vs_input": (step.get("metrics") or {}).get("speed_vs_input"),  # quantize's own timing (issue 77)
           "worst_layers": [(r["node"], r["snr_db"], r.get("own_snr_db"))
                            for r in (m.get("layer_errors") or {}).get("layers", [])[:5]]}
    if fb := (step.get("metrics") or {}).get("fallback"):
        row["fallback"] = {"held_out": fb["held_out"], "needed": fb["needed"], "held": fb.get("held"),
                           "seconds": fb["seconds"], "float_layer_count": len(fb.get("float_nodes") or []),
                           "float_weight_share": fb.get("float_weight_share"),
                           "held_out_before": {k: fb["before"].get(k) for k in ("cosine_mean", "score_cosine",
                                                                                "box_iou")},
                           "held_out_after": {k: (fb.get("after") or fb["before"]).get(k)
                                              for k in ("cosine_mean", "score_cosine", "box_iou")}}
    if aware:
        row["float_layers"] = aware.get("excluded") or aware.get("final", {}).get("excluded")
        row["float_layer_count"] = len(row["float_layers"] or [])
        if scales := (step.get("metrics") or {}).get("weight_scales"):  # not in a missed search's best candidate
            row["weight_scales"] = {k: scales.get(k) for k in ("per_channel_metric", "per_tensor_metric",
                                                               "chosen_metric", "groups", "per_tensor_groups")}
        row["accuracy_aware"] = {**{k: aware.get(k) for k in ("metric", "baseline", "budget_met", "strategy",
                                                              "eval_samples", "seconds") if k in aware},
                                 "tuning_map": (aware.get("final") or {}).get("metric"),
                                 "written_tuning_map": (aware.get("final") or {}).get("metric_of_written_model"),
                                 "fp32_weight_fraction": (aware.get("final") or {}).get("fp32_weight_fraction"),
                                 "candidates": len(aware.get("candidates") or [])}
    print(name, row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/yolox_nano"), help="kept: a rerun reuses what is there")
    ap.add_argument("--fresh", action="store_true", help="delete --work first")
    ap.add_argument("--views", type=int, default=4, help="random views of each photo judged beside it")
    ap.add_argument("--calibration-views", type=int, default=3, help="other views of each photo (calibration)")
    ap.add_argument("--routes", default=",".join(ROUTES), help="which INT8 routes (ROUTES) to build and judge")
    ap.add_argument("--profile", default="host")
    ap.add_argument("--results", type=Path, default=HERE / "results" / "yolox_nano.json",
                    help="the results file (its routes not run this time are kept)")
    ap.add_argument("--no-ablation", dest="ablation", action="store_false",
                    help="skip the float-convolutions table (the last results' table is kept)")
    args = ap.parse_args()
    work = args.work
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    (work / "src").mkdir(parents=True, exist_ok=True)
    if not (work / "src" / MODEL.name).is_file():
        shutil.copy2(MODEL, work / "src" / MODEL.name)  # a copy: the teacher is read with the model.yaml beside it
    (work / "src" / "yolox_nano.yaml").write_text(yaml.safe_dump(DESCRIPTION, sort_keys=False, width=120))
    dog = dog_check(work / "src" / MODEL.name)
    print("dog.jpg:", dog, flush=True)
    if not (work / "data.json").is_file():
        data, cal, stats = write_data(work, args.views, args.calibration_views)
        (work / "data.json").write_text(json.dumps(stats))
    data, cal = work / "images" / "boxes.json", work / "calibration" / "calibration.json"
    stats = json.loads((work / "data.json").read_text())
    print(stats, flush=True)
    cached_step("fp32", work / "fp32", lambda: _cli("export", work / "src" / MODEL.name, "--out", work / "fp32"))
    rows = {"fp32": _row(work, "fp32", data, args.profile)}
    convs = _convs(work / "fp32" / "model.onnx")
    for name in args.routes.split(","):
        extra = [_nodes(a, convs) if a.startswith(("FIRST:", "LAST:")) else cal if a == "CALIBRATION" else a
                 for a in ROUTES[name]]
        missed = work / f"{name}.best-candidate"  # an accuracy-aware search that missed its budget (exit 1) writes it
        if not (missed / "manifest.json").is_file():
            cached_step(name, work / name, lambda extra=extra, name=name: _cli(
                "quantize", work / "fp32", "--mode", "static", "--calibration", cal, *extra, "--out", work / name,
                check=False))
        if (work / name / "manifest.json").is_file():
            rows[name] = _row(work, name, data, args.profile)
        elif (missed / "manifest.json").is_file():  # judged all the same: what the search could reach
            rows[name] = {"budget_met_on_calibration_views": False, "judged": missed.name,
                          "message": json.loads((missed / "accuracy_report.json").read_text())["message"],
                          **_row(work, missed.name, data, args.profile)}
        else:
            sys.exit(f"quantize failed for route {name}")
    code = _cli("quantize", work / "fp32", "--mode", "dynamic", "--out", work / "int8-dynamic", check=False)
    dynamic = "refused: dynamic INT8 does not quantize convolutions well (edgecompress's own refusal, exit %d)" % code
    if code == 0:
        rows["int8-dynamic"] = _row(work, "int8-dynamic", data, args.profile)
        dynamic = "built"
    previous = args.results  # --no-ablation keeps the table measured before, if any
    abl = ablation(work) if args.ablation else (
        json.loads(previous.read_text()).get("float_convs_ablation") if previous.is_file() else None)
    if previous.is_file():  # the routes not run this time keep their last figures
        rows = {**json.loads(previous.read_text()).get("results", {}), **rows}
    out = {"model": "YOLOX-Nano (Megvii's COCO weights), yolox_nano.onnx, opset 11", "model_yaml": DESCRIPTION,
           "dog_jpg_fp32_detections": dog, "data": stats, "labels": "the FP32 file's boxes scoring >= 0.5",
           "dynamic_int8": dynamic, "results": rows, "float_convs_ablation": abl}
    write_results(args.results, out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
