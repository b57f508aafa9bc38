"""MediaPipe's selfie segmenter (``../shared/models/selfie-segmentation``, a LiteRT file whose weights are FP16 behind
DEQUANTIZE ops) adopted and quantized to LiteRT INT8 by ai-edge-quantizer, dynamic and static (issue 53).

Data: random views (crops of 40-100% of the shorter side, flipped half the time; ``real_cnns.views``) of the photos
scikit-image and scikit-learn ship (``real_cnns.photos``), resized to 256 x 256 RGB in [0, 1] as the model takes them.
Judged on 24 views each of the two photos that hold a person (the astronaut, the cameraman: the segmenter's
domain), and, as a second figure, on 4 views of every photo (where most hold no person, the FP32 masks are the
model's guesses on what it was not made for, often near 0.5). Calibrated on 3 other views of every photo (drawn
separately: other crops, the same photos). Labels: the FP32 file's own masks (probability >= 0.5), so IoU is that
of the INT8 masks against the FP32 masks over every pixel of the set; the FP32 file's IoU is 1.0 by construction.

Each goes ``export selfie_segmentation.tflite`` (adopt, with ``selfie_segmentation.yaml`` beside it:
``task: probability-map``) -> ``quantize`` (``--mode dynamic``; ``--mode static --calibration``) -> ``validate
--data`` on a profile that runs LiteRT (latency: p50 at batch 1 on this machine, shared, so noisy). Then an ablation
of each choice ``stages/quantize/litert.py`` makes over ai-edge-quantizer's own recipes, the same files and data
through ai-edge-quantizer and LiteRT's interpreter directly. Results: ``benchmarks/results/selfie_litert.json``.

    python benchmarks/selfie_litert.py [--work DIR]
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import host_and_versions

MODEL = HERE.parents[1] / "shared" / "models" / "selfie-segmentation" / "selfie_segmentation.tflite"
SIZE = 256


def _arrays(images: list[np.ndarray]) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(v)).resize((SIZE, SIZE), Image.BILINEAR),
                                dtype=np.float32) / 255.0 for v in images])


PEOPLE = ("astronaut", "camera")  # the photos that hold a person: the segmenter's domain


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
    from real_cnns import photos, views

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
    import time

    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model, num_threads=1)
    it.allocate_tensors()
    i = it.get_input_details()[0]
    it.set_tensor(i["index"], np.zeros(i["shape"], i["dtype"]))
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        it.invoke()
        times.append(time.perf_counter() - t)
    return round(float(np.median(times[10:])) * 1e3, 2)


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/selfie_litert"))
    ap.add_argument("--person-views", type=int, default=24, help="views of each photo with a person (judged)")
    ap.add_argument("--all-views", type=int, default=4, help="views of every photo (judged, a second figure)")
    ap.add_argument("--calibration-views", type=int, default=3, help="other views of every photo (calibration)")
    ap.add_argument("--ablation-only", action="store_true",
                    help="rerun the ablation on the data in --work; the CLI rows are kept from the results file")
    args = ap.parse_args()
    work = args.work
    if args.ablation_only:
        out = json.loads((HERE / "results" / "selfie_litert.json").read_text())
        out.update(ablation=ablation({k: work / f"{k}.npz" for k in ("people", "all", "calibration")}), **host_and_versions())
        (HERE / "results" / "selfie_litert.json").write_text(json.dumps(out, indent=2) + "\n")
        return
    shutil.rmtree(work, ignore_errors=True)
    (work / "src").mkdir(parents=True)
    shutil.copy2(MODEL, work / "src" / MODEL.name)
    (work / "src" / MODEL.with_suffix(".yaml").name).write_text(yaml.safe_dump(
        {"task": "probability-map", "postprocess": {"scores_are_probabilities": True, "threshold": 0.5}}))
    data = write_data(work, args.person_views, args.all_views, args.calibration_views)
    profile = work / "litert-host.yaml"
    profile.write_text(yaml.safe_dump({"name": "litert-host", "extends": "host", "runtime": {"name": "litert"}}))
    _cli("export", work / "src" / MODEL.name, "--out", work / "fp32")
    _cli("quantize", work / "fp32", "--out", work / "int8-dynamic")
    _cli("quantize", work / "fp32", "--mode", "static", "--calibration", data["calibration"], "--out",
         work / "int8-static")
    rows = {}
    for name in ("fp32", "int8-dynamic", "int8-static"):
        step = json.loads((work / name / "manifest.json").read_text())["steps"][-1]
        row = rows[name] = {"size_bytes": (work / name / "model.tflite").stat().st_size}
        if name != "fp32":
            row.update({"size_ratio_vs_input": round(MODEL.stat().st_size / row["size_bytes"], 3),
                        "integer_weights": step["metrics"]["integer_weights"],
                        "fp16_weights_dequantized": step["config"]["fp16_weights_dequantized"]})
        for key in ("people", "all"):
            report_dir = work / f"{name}.{key}.report"
            _cli("validate", work / name, "--data", data[key], "--profile", profile, "--no-cold-start",
                 "--no-baseline", "--report-dir", report_dir, check=False)  # budgets are not what is judged here
            m = json.loads((report_dir / "report.json").read_text())["metrics"]
            row[f"iou_vs_fp32_masks_{key}"] = m.get("metric")
            row[f"p50_ms_{key}"] = m.get("latency_ms", {}).get("p50")
        print(name, row, flush=True)
    out = {"model": "MediaPipe selfie_segmentation.tflite (FP16 weights behind DEQUANTIZE)",
           "input_bytes": MODEL.stat().st_size,
           "people_views": int(len(np.load(data["people"])["labels"])),
           "all_views": int(len(np.load(data["all"])["labels"])),
           "calibration_views": int(len(np.load(data["calibration"])["input_1"])), "results": rows,
           "ablation": ablation(data), **host_and_versions()}
    (HERE / "results" / "selfie_litert.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
