"""MediaPipe's selfie segmenter (``../shared/models/selfie-segmentation``, a LiteRT file whose weights are FP16 behind
DEQUANTIZE ops) adopted and quantized to LiteRT INT8 by ai-edge-quantizer, dynamic and static (issue 53).

Data: random views (crops of 40-100% of the shorter side, flipped half the time; ``real_cnns.views``) of the photos
scikit-image, scikit-learn and matplotlib ship, resized to 256 x 256 RGB in [0, 1] as the model takes them. Three hold
a person (the segmenter's domain): scikit-image's astronaut and cameraman, matplotlib's Grace Hopper.

Split (static INT8): one fold per person photo. Judged on 24 views of that photo; calibrated on 3 views of every photo
without a person and 9 views of each of the two other person photos: no calibration view comes from the judged photo,
and the rule that keeps sensitive operators float (``stages/quantize/litert_sensitivity.py``) sees only the
calibration rows. Labels: the FP32 file's own masks (probability >= 0.5), so IoU is that of the INT8 masks against
the FP32 masks over every pixel of the fold's views; the FP32 file's IoU is 1.0 by construction. Dynamic INT8 takes no
data: one artifact, judged on each fold.

Each goes ``export selfie_segmentation.tflite`` (adopt, with ``selfie_segmentation.yaml`` beside it:
``task: probability-map``) -> ``quantize`` (``--mode dynamic``; ``--mode static --calibration``, the defaults; and ``--activation-bits 16``,
ai-edge-quantizer's w8a16, for comparison).
Latency: median ms of one view in LiteRT's interpreter (XNNPACK, 1 thread), FP32, dynamic and static timed in the same
process, interleaved in rounds, on this shared machine: compare within one run only. ``--ablation`` adds the ablation
of each choice ``stages/quantize/litert.py`` makes over ai-edge-quantizer's own recipes (views of the astronaut and
the cameraman, calibrated on other views of every photo: the earlier split). Results:
``benchmarks/results/selfie_litert.json``.

    python benchmarks/vision/selfie_litert.py [--work DIR] [--ablation]
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
from benchmarks.harness.results import write_results
from benchmarks.harness.timing import median, side_by_side, time_calls

MODEL = HERE.parents[1] / "shared" / "models" / "selfie-segmentation" / "selfie_segmentation.tflite"
SIZE = 256


def _arrays(images: list[np.ndarray]) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(v)).resize((SIZE, SIZE), Image.BILINEAR),
                                dtype=np.float32) / 255.0 for v in images])


PEOPLE = ("astronaut", "camera")  # the ablation's photos with a person (the earlier split)
FOLDS = ("astronaut", "camera", "grace_hopper")  # every photo here that holds a person: one fold each


def _photos() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The photos with a person (``FOLDS``) and the others."""
    from matplotlib import cbook
    from PIL import Image

    from benchmarks.harness.cnns import photos

    other = photos()
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = np.asarray(Image.open(f).convert("RGB"))
    people = {"astronaut": other.pop("astronaut"), "camera": other.pop("camera"), "grace_hopper": hopper}
    return people, other


def write_folds(work: Path, person_views: int, calibration_views: int) -> dict[str, dict[str, Path]]:
    """Per person photo P: ``judge_P.npz`` (``input_1``, ``labels``: the FP32 file's masks) and ``calibration_P.npz``
    (views of the other photos only)."""
    from benchmarks.harness.cnns import views

    rng = np.random.default_rng(0)
    people, other = _photos()
    judged = {k: views(v, rng, person_views) for k, v in people.items()}
    extra = {k: views(v, rng, 3 * calibration_views) for k, v in people.items()}
    background = [x for v in other.values() for x in views(v, rng, calibration_views)]
    out = {}
    for k in FOLDS:
        x = _arrays(judged[k])
        out[k] = {"judge": work / f"judge_{k}.npz", "calibration": work / f"calibration_{k}.npz"}
        np.savez(out[k]["judge"], input_1=x, labels=_masks(x))
        np.savez(out[k]["calibration"], input_1=_arrays(background + [v for p in FOLDS if p != k for v in extra[p]]))
    return out


def _masks(x: np.ndarray) -> np.ndarray:
    """The FP32 file's 0/1 masks (probability >= 0.5) of ``x``."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(MODEL))
    it.allocate_tensors()
    masks = []
    for row in x:
        it.set_tensor(it.get_input_details()[0]["index"], row[None])
        it.invoke()
        masks.append(it.get_tensor(it.get_output_details()[0]["index"])[0, :, :, 0] >= 0.5)
    return np.stack(masks).astype(np.int64)


def write_data(work: Path, person_views: int, all_views: int, calibration_views: int) -> dict[str, Path]:
    """``people.npz``: views of the photos with a person; ``all.npz``: views of every photo (``input_1``; ``labels``:
    the FP32 file's masks); ``calibration.npz``: other views of every photo."""
    from benchmarks.harness.cnns import photos, views

    rng = np.random.default_rng(0)
    people, every, cal = [], [], []
    for name, img in photos().items():
        every += views(img, rng, all_views)
        cal += views(img, rng, calibration_views)
        if name in PEOPLE:
            people += views(img, rng, person_views)
    out = {"people": work / "people.npz", "all": work / "all.npz", "calibration": work / "calibration.npz"}
    for key, images in (("people", people), ("all", every)):
        x = _arrays(images)
        np.savez(out[key], input_1=x, labels=_masks(x))
    np.savez(out["calibration"], input_1=_arrays(cal))
    return out


def _iou(model: bytes, data: Path) -> float:
    """IoU of ``model``'s masks against the labels of ``data`` (every pixel of every view together)."""
    from ai_edge_litert.interpreter import Interpreter

    d = np.load(data)
    it = Interpreter(model_content=model, num_threads=1)
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    masks = []
    for row in d["input_1"]:
        v = row[None]
        if i["dtype"] != np.float32:  # a full-integer model's INT8 input
            scale, zero = i["quantization"]
            info = np.iinfo(i["dtype"])
            v = np.clip(np.round(v / scale + zero), info.min, info.max).astype(i["dtype"])
        it.set_tensor(i["index"], v)
        it.invoke()
        r = it.get_tensor(o["index"])
        if o["dtype"] != np.float32:
            scale, zero = o["quantization"]
            r = (r.astype(np.float32) - zero) * scale
        masks.append(r[0, :, :, 0] >= 0.5)
    a, b = np.stack(masks), d["labels"].astype(bool)
    return round(float((a & b).sum() / (a | b).sum()), 4)


def _p50(model: bytes, data: Path, runs: int = 60) -> float:
    """p50 ms of one view in LiteRT's interpreter (XNNPACK where it takes the ops), 1 thread, on this shared
    machine: only comparable within one run."""

    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model, num_threads=1)
    it.allocate_tensors()
    i = it.get_input_details()[0]
    it.set_tensor(i["index"], np.zeros(i["shape"], i["dtype"]))
    return round(median(time_calls(it.invoke, repeats=runs - 10, warmup=10)) * 1e3, 2)


def ablation(data: dict[str, Path]) -> list[dict]:
    """ai-edge-quantizer's recipes as they are, then with each of edgecompress's choices added in turn."""
    import re

    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer, recipe

    from compress.stages.quantize.litert import activation_ranges
    from compress.stages.quantize.litert_graph import output_activations, prepare

    ops = qtyping.TFLOperationName
    cal = {"serving_default": [{"input_1": r[None]} for r in np.load(data["calibration"])["input_1"]]}
    unfused, fused = prepare(MODEL, fuse_activations=False).model, prepare(MODEL).model

    def dynamic(model: bytes, depthwise_weight_only: bool) -> bytes:
        qt = quantizer.Quantizer(bytearray(model))
        qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        if depthwise_weight_only:
            qt.add_weight_only_config(regex=".*", operation_name=ops.DEPTHWISE_CONV_2D, num_bits=8)
        return bytes(qt.quantize().quantized_model)

    def static(model: bytes, output_float: bool, ranges: str, bits16: tuple[str, ...] = (), base=None) -> bytes:
        qt = quantizer.Quantizer(bytearray(model))
        qt.load_quantization_recipe((base or recipe.static_wi8_ai8)())
        for scope in output_activations(model) if output_float else []:
            qt.update_quantization_recipe(regex=f"^{re.escape(scope)}$", operation_name=ops.ALL_SUPPORTED,
                                          algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
        for op in bits16:  # these operators' activations on 16 bits, the rest on 8
            qt.add_static_config(regex=".*", operation_name=getattr(ops, op), activation_num_bits=16, weight_num_bits=8)
        q = qt.calibrate(cal) if ranges == "ai-edge-quantizer's moving average" else \
            activation_ranges(qt, model, cal, ranges)
        return bytes(qt.quantize(q).quantized_model)

    variants = [
        ("dynamic: dynamic_wi8_afp32 as it is", lambda: dynamic(unfused, False)),
        ("dynamic: + depthwise convolutions weight-only", lambda: dynamic(unfused, True)),
        ("dynamic: + RELU fused (edgecompress's --mode dynamic)", lambda: dynamic(fused, True)),
        ("static: static_wi8_ai8 as it is", lambda: static(unfused, False, "ai-edge-quantizer's moving average")),
        ("static: + output sigmoid float", lambda: static(unfused, True, "ai-edge-quantizer's moving average")),
        ("static: + RELU fused", lambda: static(fused, True, "ai-edge-quantizer's moving average")),
        ("static: + mean-minmax ranges (edgecompress's --mode static)", lambda: static(fused, True, "mean-minmax")),
        ("static: + minmax ranges instead", lambda: static(fused, True, "minmax")),
        # issue 53: what closes the distance to 0.97, per operator type, then everywhere (AI Hub's w8a16)
        ("static: + depthwise convolutions' activations 16-bit", lambda: static(fused, True, "mean-minmax",
                                                                            ("DEPTHWISE_CONV_2D",))),
        ("static: + convolutions' activations 16-bit", lambda: static(fused, True, "mean-minmax", ("CONV_2D",))),
        ("static: + additions' activations 16-bit", lambda: static(fused, True, "mean-minmax", ("ADD",))),
        ("static: every activation 16-bit (static_wi8_ai16, w8a16)", lambda: static(
            fused, True, "mean-minmax", base=recipe.static_wi8_ai16)),
    ]
    rows = []
    for name, make in variants:
        model = make()
        row = {"variant": name, "size_bytes": len(model), "iou_people": _iou(model, data["people"]),
               "iou_all": _iou(model, data["all"]), "p50_ms": _p50(model, data["people"])}
        print(row, flush=True)
        rows.append(row)
    return rows


def _cli(*args, check: bool = True) -> None:
    cmd = ["edgecompress", *map(str, args)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=check)


def _latencies(models: dict[str, bytes], data: Path, rounds: int = 10, per_round: int = 30) -> dict[str, float]:
    """Median ms of one view per model, 1 thread, the models timed in turn in each of ``rounds`` rounds (the machine's
    load falls on all alike)."""

    from ai_edge_litert.interpreter import Interpreter

    row = np.load(data)["input_1"][:1]
    its = {}
    for name, model in models.items():
        it = Interpreter(model_content=model, num_threads=1)
        it.allocate_tensors()
        i = it.get_input_details()[0]
        v = row
        if i["dtype"] != np.float32:
            scale, zero = i["quantization"]
            v = np.clip(np.round(v / scale + zero), -128, 127).astype(i["dtype"])
        it.set_tensor(i["index"], v)
        for _ in range(5):
            it.invoke()
        its[name] = it
    got = side_by_side({n: (lambda it=it: time_calls(it.invoke, repeats=per_round, warmup=0)) for n, it in its.items()},
                       rounds, warmup=0, flip=False)
    return {n: round(median(t for r in runs for t in r) * 1e3, 2) for n, runs in got.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/selfie_litert"))
    ap.add_argument("--person-views", type=int, default=24, help="views of each person photo (judged in its fold)")
    ap.add_argument("--calibration-views", type=int, default=3,
                    help="views of each photo without a person per calibration set (3x this of each other person photo)")
    ap.add_argument("--ablation", action="store_true", help="also rerun the ablation (the earlier split)")
    args = ap.parse_args()
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    (work / "src").mkdir(parents=True)
    shutil.copy2(MODEL, work / "src" / MODEL.name)
    (work / "src" / MODEL.with_suffix(".yaml").name).write_text(yaml.safe_dump(
        {"task": "probability-map", "postprocess": {"scores_are_probabilities": True, "threshold": 0.5}}))
    folds = write_folds(work, args.person_views, args.calibration_views)
    _cli("export", work / "src" / MODEL.name, "--out", work / "fp32")
    _cli("quantize", work / "fp32", "--out", work / "int8-dynamic")
    models = {"fp32": (work / "fp32" / "model.tflite").read_bytes(),
              "int8-dynamic": (work / "int8-dynamic" / "model.tflite").read_bytes()}
    rows = {}
    for k, paths in folds.items():
        out = work / f"int8-static-{k}"
        _cli("quantize", work / "fp32", "--mode", "static", "--calibration", paths["calibration"], "--out", out)
        _cli("quantize", work / "fp32", "--mode", "static", "--activation-bits", "16", "--calibration",
             paths["calibration"], "--out", work / f"w8a16-{k}")
        models[f"int8-static-{k}"] = (out / "model.tflite").read_bytes()
        w8a16 = (work / f"w8a16-{k}" / "model.tflite").read_bytes()
        if k == FOLDS[0]:
            models[f"w8a16-{k}"] = w8a16
        step = json.loads((out / "manifest.json").read_text())["steps"][-1]
        rows[k] = {"judged_views": int(len(np.load(paths["judge"])["labels"])),
                   "calibration_views": int(len(np.load(paths["calibration"])["input_1"])),
                   "iou_int8_dynamic": _iou(models["int8-dynamic"], paths["judge"]),
                   "iou_int8_static": _iou(models[f"int8-static-{k}"], paths["judge"]),
                   "iou_w8a16": _iou(w8a16, paths["judge"]),
                   "static_size_bytes": len(models[f"int8-static-{k}"]), "w8a16_size_bytes": len(w8a16),
                   "static_float_ops": step["config"].get("float_ops_chosen")}
        print(k, rows[k], flush=True)
    latency = _latencies(models, folds[FOLDS[0]]["judge"])
    sizes = {n: len(m) for n, m in models.items()}
    out = {"model": "MediaPipe selfie_segmentation.tflite (FP16 weights behind DEQUANTIZE)",
           "input_bytes": MODEL.stat().st_size,
           "split": "one fold per person photo: judged on its views, calibrated on views of every other photo",
           "folds": rows,
           "iou_min_over_folds": {"int8-dynamic": min(r["iou_int8_dynamic"] for r in rows.values()),
                                  "int8-static": min(r["iou_int8_static"] for r in rows.values()),
                                  "w8a16": min(r["iou_w8a16"] for r in rows.values())},
           "size_bytes": sizes, "size_ratio_vs_input": {n: round(MODEL.stat().st_size / v, 3) for n, v in sizes.items()},
           "latency_ms_median": latency}
    previous = HERE / "results" / "selfie_litert.json"
    if args.ablation:
        cal = work / "ablation"
        cal.mkdir()
        out["ablation"] = ablation(write_data(cal, 24, 4, 3))
    elif previous.exists() and "ablation" in json.loads(previous.read_text()):
        out["ablation"] = json.loads(previous.read_text())["ablation"]  # kept from its own run (--ablation)
    write_results(previous, out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
