#!/usr/bin/env python
"""Phones, measured here (issue 40): each model as ONNX INT8 (ONNX Runtime) and as an ExecuTorch INT8 program
(XNNPACK), side by side on this machine: accuracy retention against the PyTorch FP32 model, size, p50 at batch 1
(both runtimes timed in alternating rounds on the same input, 2 threads), and cold start (a fresh process: import,
load, first inference).

Models: the SST-2 MiniLM-L6 teacher (``benchmarks/encoders/teacher.py``) and its 3-layer student (the ``student`` step of
``benchmarks/recipes/sst2.yaml``), judged on the SST-2 dev split (872 sentences); the digits MobileNetV2 and ViT of
``benchmarks/vision/image_teachers.py`` (``--only vit`` trains the ViT), judged on the 360 test digits. INT8: ONNX Runtime's dynamic INT8 for text and
static QDQ (calibrated on the training digits) for the CNN, as ``quantize`` chooses; ExecuTorch's PT2E INT8,
dynamic activations for text and static, calibrated on the same digits, for the CNN.

    python benchmarks/devices/mobile.py                      # results/mobile.json and the table

LiteRT (``.tflite`` INT8, dynamic-range: INT8 weights) joins each model's rows when ``benchmarks/devices/litert_convert.py`` has
made it in litert-torch's own environment (litert-torch cannot install beside this project's pins; docs/guides/phones.md):
the file is adopted as a model made elsewhere (a text model's ``model.yaml`` names its inputs, which the converter
calls ``args_0``, ...) and run by LiteRT's interpreter. A text ``.tflite`` takes 128 tokens (litert-torch cannot
convert a dynamic length): its runtime pads the 64-token timing input to 128.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness
from benchmarks.harness.teachers import DEFAULT_DATA, device_panel
from benchmarks.harness.timing import spread


def log(msg: str) -> None:
    print(f"[mobile] {msg}", file=sys.stderr, flush=True)


def build(name: str, m: dict, work: Path) -> dict[str, Path]:
    """The ONNX INT8 and ExecuTorch INT8 artifacts of one model (built once, kept in ``work``)."""
    from compress.artifact import is_artifact
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    d = work / name.split(" (")[0].replace(" ", "-").lower()
    calib = str(HERE / ".cache" / "digits" / "train") if m["kind"] == "image" else None
    sample = str(DEFAULT_DATA / "dev.tsv") if m["kind"] == "text" else None
    arts = {"onnx-fp32": d / "onnx-fp32", "onnx-int8": d / "onnx-int8", "pte-int8": d / "pte-int8"}
    plans = {
        "onnx-fp32": lambda o: export(m["source"], o, ExportConfig(sample_data=sample), force=True),
        "onnx-int8": lambda o: quantize(arts["onnx-fp32"], o, QuantizeConfig.from_flat(
            **({"calibration": calib} if calib else {"sample_data": sample})), force=True),
        "pte-int8": lambda o: export(m["source"], o, ExportConfig.from_flat(format="executorch", precision="int8",
                                                                 calibration=calib, sample_data=sample), force=True),
    }
    tflite = d / "tflite-int8" / "model.tflite"  # made by benchmarks/devices/litert_convert.py in litert-torch's environment
    if tflite.is_file():
        arts["tflite-int8"] = d / "tflite-int8-adopted"
        plans["tflite-int8"] = lambda o: export(tflite, o, force=True)
    for key, make in plans.items():
        if not is_artifact(arts[key]):
            log(f"{name}: building {key}")
            make(arts[key])
    return {k: arts[k] for k in ("onnx-int8", "pte-int8", "tflite-int8") if k in arts}


def evaluate(backend, m: dict) -> tuple[np.ndarray, np.ndarray]:
    """Predicted classes on the eval set."""
    from compress.data.images import load_image_dataset
    from compress.data.tables import load_dataset

    if m["kind"] == "text":
        ds = load_dataset(DEFAULT_DATA / "dev.tsv", label2id={"negative": 0, "positive": 1}, num_labels=2)
    else:
        ds = load_image_dataset(HERE / ".cache" / "digits" / "test")
    preds = np.concatenate([backend.predict_text(list(ds.inputs[i:i + 64])).argmax(-1)
                            for i in range(0, len(ds), 64)])
    return preds, np.asarray(ds.labels)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=HERE / ".cache" / "mobile")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "mobile.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-duration", type=float, default=5.0, help="seconds of timed calls per runtime")
    ap.add_argument("--only", action="append", help="measure this model only (repeatable); the JSON keeps the others' "
                    "rows from an earlier run")
    args = ap.parse_args()
    import compress  # noqa: F401 - before torchvision-using imports
    from benchmarks.harness.results import write_results
    from compress.artifact import load_artifact
    from compress.data.inputs import latency_inputs
    from compress.device.shipped import time_interleaved
    from compress.host.measure import probe_cold_start
    from compress.runtimes.base import RuntimeSettings, load_runtime
    from compress.runtimes.torch_backend import TorchBackend
    from compress.teachers.load import load_teacher

    chosen = device_panel(args.only)
    rows = [r for r in json.loads(args.out.read_text())["rows"] if r["model"] not in chosen] \
        if args.only and args.out.is_file() else []
    for name, m in chosen.items():
        arts = build(name, m, args.work)
        teacher = load_teacher(m["source"])
        ref_pred, labels = evaluate(TorchBackend.from_teacher(teacher, RuntimeSettings(threads=args.threads)), m)
        ref_acc = float((ref_pred == labels).mean())
        backends = {k: load_runtime(load_artifact(p), settings=RuntimeSettings(threads=args.threads))
                    for k, p in arts.items()}
        items = latency_inputs(None, 1, 64, backends["onnx-int8"].artifact.manifest.preprocess)
        feeds = {k: (b.encode(items, None, 64) if m["kind"] == "text" else b.encoder.encode(items))
                 for k, b in backends.items()}
        log(f"{name}: timing {', '.join(backends)} in alternating rounds")
        samples = time_interleaved({k: (lambda b=b, f=feeds[k]: b.run(f)) for k, b in backends.items()},
                                   min_duration_s=args.min_duration)
        for key, b in backends.items():
            pred, _ = evaluate(b, m)
            acc = float((pred == labels).mean())
            art = b.artifact
            cold = probe_cold_start(art.path, b.name, args.threads, None, 1, 64)
            rows.append({"model": name, "artifact": key, "runtime": f"{b.name} {b.version()}",
                         "accuracy": acc, "teacher_accuracy": ref_acc, "retention": acc / ref_acc,
                         "agreement": float((pred == ref_pred).mean()), "size_mb": round(art.size_bytes() / 1e6, 2),
                         "p50_ms": round(spread(samples[key]).median * 1e3, 3),
                         "p95_ms": round(spread(samples[key]).p95 * 1e3, 3),
                         "timed_calls": len(samples[key]), "cold_start_ms": cold.get("cold_start_ms"),
                         "process_wall_ms": cold.get("process_wall_ms"), "peak_rss_mb": cold.get("peak_rss_mb"),
                         "cold_start": cold, "delegated": (art.manifest.steps[-1].metrics.get("delegated")
                                                           if key.startswith("pte") else None)})
            log(f"{name} {key}: acc {acc:.4f} (retention {acc / ref_acc:.4f}), p50 {rows[-1]['p50_ms']} ms, "
                f"{rows[-1]['size_mb']} MB, cold {rows[-1]['cold_start_ms']} ms")
            b.close()
        write_results(args.out, {"threads": args.threads, "rows": rows})
    print("| model | artifact | accuracy (retention) | size MB | p50 ms, batch 1 | cold start ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['artifact']} | {r['accuracy']:.4f} ({r['retention']:.3f}) | {r['size_mb']} | "
              f"{r['p50_ms']} | {r['cold_start_ms']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
