"""INT8 of real CNNs, side by side in one run against their FP32 teachers in each runtime (issue 34's table).

Inputs (``python benchmarks/vision/real_cnns.py`` writes them; ``benchmarks/vision/image_teachers.py`` the digits CNN):

* the real ImageNet MobileNetV2 (torchvision's IMAGENET1K_V1 weights) and EfficientNet-Lite0 (Google's TF Lite
  ImageNet weights), ``torch.export`` programs, judged on views of the photos scikit-image and scikit-learn ship,
  labelled with each FP32 teacher's own confident top-1 (so retention = accuracy / 1.0, and agreement with the
  teacher is the same figure), calibrated on other views of the same photos;
* optionally ``--digits-cnn DIR --digits DIR``: the digits MobileNetV2 of ``benchmarks/vision/images.py`` and its
  channel-pruned copy (``--digits-pruned DIR``), on the 360 digits test images, calibrated on the train split.

Per model, every artifact is built through edgecompress's library API (what the CLI calls) and cached under
``--work``:

* ``ONNX INT8 previous default``: the static INT8 this project shipped before issue 34 (``--op-types
  Conv,MatMul,Gemm --calibration-method minmax``: ReLU6 left float between a dequantize and the next quantize);
* ``ONNX INT8 default``: ``quantize --calibration`` with today's defaults (Clip/Relu quantized so ONNX Runtime fuses
  QLinearConv, mean-minmax ranges, float logits);
* ``ONNX INT8 speed-aware``: the default plus ``--speed-aware`` (each layer group timed INT8 vs float side by side,
  the slower ones returned to float);
* ``ONNX INT8 QAD``: ``quantize --qat-steps N`` (quantization-aware distillation of the PyTorch model on the
  calibration views, fake-quantized at ONNX Runtime's placement, then the default INT8 of the trained weights);
* ``OpenVINO INT8``: ``export --format openvino`` then ``quantize`` (NNCF).

Measured: accuracy on the eval set, retention and agreement vs the FP32 PyTorch teacher, size, latency at batch 1
(p50/p95, ``--threads`` threads), all models of a family timed in alternating rounds in one process
(``compress.host.measure.measure_interleaved``), and each artifact's speed ratio to the FP32 model **of its own runtime**
(ONNX FP32 for ONNX Runtime rows, OpenVINO FP32 for OpenVINO rows). Results: ``benchmarks/results/cnn_int8.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness

from benchmarks.harness.results import cached_step


def build_family(name: str, teacher: Path, calibration: Path, work: Path, variants: set[str], *,
                 calibration_samples: int, threads: int, qat_steps: int = 100) -> dict[str, Path]:
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    w = work / name
    cal = dict(calibration=str(calibration), calibration_samples=calibration_samples)
    arts: dict[str, Path] = {"teacher PyTorch FP32": teacher}
    onnx = cached_step(f"{name} ONNX", w / "onnx", lambda: export(teacher, w / "onnx", force=True))
    arts["ONNX FP32"] = onnx
    if "previous" in variants:
        arts["ONNX INT8 previous default"] = cached_step(f"{name} INT8 previous default", w / "int8-previous", lambda: quantize(
            onnx, w / "int8-previous", QuantizeConfig.from_flat(**cal, op_types=["Conv", "MatMul", "Gemm"],
                                                      calibration_method="minmax"), force=True))
    arts["ONNX INT8 default"] = cached_step(f"{name} INT8 default", w / "int8", lambda: quantize(
        onnx, w / "int8", QuantizeConfig.from_flat(**cal), force=True))
    if "speed" in variants:
        arts["ONNX INT8 speed-aware"] = cached_step(f"{name} INT8 speed-aware", w / "int8-speed", lambda: quantize(
            onnx, w / "int8-speed", QuantizeConfig.from_flat(**cal, speed_aware=True, speed_threads=threads), force=True))
    if "qad" in variants:  # quantization-aware distillation of the exported PyTorch model, then the default INT8
        arts["ONNX INT8 QAD"] = cached_step(f"{name} INT8 QAD", w / "int8-qad", lambda: quantize(
            onnx, w / "int8-qad", QuantizeConfig.from_flat(**cal, qat_steps=qat_steps, qat_source=str(teacher)), force=True))
    if "openvino" in variants:
        ov = cached_step(f"{name} OpenVINO", w / "ov", lambda: export(onnx, w / "ov", ExportConfig(format="openvino"),
                                                                force=True))
        arts["OpenVINO FP32"] = ov
        arts["OpenVINO INT8"] = cached_step(f"{name} OpenVINO INT8", w / "ov-int8", lambda: quantize(
            ov, w / "ov-int8", QuantizeConfig.from_flat(**cal), force=True))
    return arts


def measure_family(name: str, arts: dict[str, Path], eval_data: Path, threads: int, seconds: float) -> dict:
    from compress.artifact import is_artifact, load_artifact
    from compress.data.inputs import load_inputs
    from compress.host.measure import measure_interleaved
    from compress.runtimes.base import RuntimeSettings, load_runtime
    from compress.runtimes.torch_backend import TorchBackend
    from compress.teachers.load import load_teacher

    settings = RuntimeSettings(threads=threads)
    teacher = load_teacher(arts["teacher PyTorch FP32"])
    ds = load_inputs(eval_data, teacher.info.preprocess, label2id={n: i for i, n in enumerate(teacher.info.labels)},
                     require_labels=True)
    labels = np.asarray(ds.labels)
    rows, runs, backends = {}, {}, []
    for label, path in arts.items():
        backend = (TorchBackend.from_teacher(teacher, settings) if not is_artifact(path)
                   else load_runtime(load_artifact(path), settings=settings))
        backends.append(backend)
        logits = np.concatenate([backend.predict(backend.encode(b)) for b, _, _ in ds.batches(32)])
        size = (sum((path / f).stat().st_size for f in teacher.info.weights) if not is_artifact(path)
                else load_artifact(path).size_bytes())
        rows[label] = {"model": name, "artifact": label, "path": str(path), "accuracy": float((logits.argmax(-1) == labels).mean()),
                       "size_bytes": int(size), "logits": logits}
        one = backend.encode(ds.inputs[:1])
        runs[label] = (lambda b=backend, x=one: b.run(x))
    t = rows["teacher PyTorch FP32"]
    for row in rows.values():
        row["retention"] = row["accuracy"] / t["accuracy"]
        row["agreement"] = float((row["logits"].argmax(-1) == t["logits"].argmax(-1)).mean())
        num = (row["logits"] * t["logits"]).sum(-1)
        den = np.linalg.norm(row["logits"], axis=-1) * np.linalg.norm(t["logits"], axis=-1)
        row["logit_cosine_mean"] = float((num / np.clip(den, 1e-12, None)).mean())
    print(f"{name}: timing {len(runs)} models in alternating rounds ({threads} threads, batch 1) ...", flush=True)
    stats = measure_interleaved(runs, batch_size=1, min_runs=200, min_duration_s=seconds, warmup=20, rounds=20)
    for label, row in rows.items():
        row.pop("logits")
        row["p50_ms"], row["p95_ms"] = stats[label].p50, stats[label].p95
        ref = "OpenVINO FP32" if label.startswith("OpenVINO") else "ONNX FP32" if label.startswith("ONNX") else label
        row["speed_vs_fp32_same_runtime"] = stats[ref].p50 / stats[label].p50
        row["speed_vs_pytorch"] = stats["teacher PyTorch FP32"].p50 / stats[label].p50
        row["samples"] = len(ds.labels)
    for b in backends:
        b.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", type=Path, default=ROOT / ".cache" / "real-cnns", help="what real_cnns.py wrote")
    ap.add_argument("--models", default="mobilenet_v2,efficientnet_lite0")
    ap.add_argument("--digits-cnn", type=Path, help="the digits MobileNetV2 teacher (benchmarks/vision/image_teachers.py)")
    ap.add_argument("--digits-pruned", type=Path, help="its channel-pruned copy (a pytorch artifact)")
    ap.add_argument("--digits", type=Path, default=ROOT / ".cache" / "digits")
    ap.add_argument("--variants", default="previous,default,speed,qad,openvino")
    ap.add_argument("--calibration-samples", type=int, default=300)
    ap.add_argument("--qat-steps", type=int, default=100, help="steps of the qad variant (quantize --qat-steps)")
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "cnn-int8-work")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=4.0, help="least timed seconds per model")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "cnn_int8.json")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    variants = set(args.variants.split(","))
    families = []
    for model in [m for m in args.models.split(",") if m]:
        photos = args.real / "photos"
        families.append((model, args.real / model, photos / "calibration.csv", photos / f"{model}.csv"))
    if args.digits_cnn:
        families.append(("digits cnn", args.digits_cnn, args.digits / "train", args.digits / "test"))
    if args.digits_pruned:
        families.append(("digits cnn pruned", args.digits_pruned, args.digits / "train", args.digits / "test"))
    rows: dict[str, dict] = {}
    t0 = time.perf_counter()
    for name, teacher, calibration, eval_data in families:
        arts = build_family(name.replace(" ", "-"), teacher, calibration, args.work, variants,
                            calibration_samples=args.calibration_samples, threads=args.threads,
                            qat_steps=args.qat_steps)
        for label, row in measure_family(name, arts, eval_data, args.threads, args.seconds).items():
            rows[f"{name}: {label}"] = row
    print("\n| model | artifact | accuracy | retention | agreement | size MB | p50 ms | p95 ms | vs FP32 (same runtime) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows.values():
        print(f"| {r['model']} | {r['artifact']} | {r['accuracy']:.3f} | {r['retention']:.3f} | {r['agreement']:.3f} | "
              f"{r['size_bytes'] / 1e6:.2f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
              f"{r['speed_vs_fp32_same_runtime']:.2f}x |")
    from benchmarks.harness.results import write_results

    write_results(args.out, {
        "seconds": round(time.perf_counter() - t0, 1), "settings": {k: str(v) for k, v in vars(args).items()},
        "labels": "eval views are labelled with each FP32 teacher's own confident top-1 (not ground truth)",
        "rows": rows}, argv=[__file__, *(argv if argv is not None else sys.argv[1:])])
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
