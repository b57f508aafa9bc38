"""Image benchmark: three digits teachers through prune / distil → ONNX → INT8 (ONNX Runtime and OpenVINO), every
artifact against its FP32 PyTorch teacher, measured side by side in one run.

Inputs (both scripts are in benchmarks/):

    python benchmarks/vision/digits.py             # the fixed 1,437 / 360 split of scikit-learn's digits
    python benchmarks/vision/image_teachers.py     # cnn (MobileNetV2), vit (6-layer ViT), program (a .pt2 nn.Module)
    python benchmarks/vision/images.py [--cnn-channels 0.5] [--vit-layers 3]

Pipelines, all through edgecompress's library API (what the CLI calls):

* every teacher: export → ONNX FP32 → INT8 static QDQ (ONNX Runtime, per-channel, 300 calibration images from the
  train split) and → OpenVINO IR → INT8 (NNCF);
* cnn: prune ``--channels`` (Torch-Pruning) with recovery by distillation on the train split → the same;
* vit: distil into ``--vit-layers`` of the teacher's layers on the train split → the same;
* program: distil into a user's own smaller checkpoint (a 20k-parameter Hugging Face ResNet, random init, reading the
  images as the program does) → the same.

Measured on the 360 test images: accuracy, retention (vs the FP32 PyTorch teacher of the same family), model size,
and latency at batch 1 (p50/p95 in ms, 2 threads), all artifacts and the PyTorch teachers timed in alternating
rounds in one process (``compress.host.measure.measure_interleaved``), so machine drift hits all alike. Artifacts are
cached under ``--work``; delete it to rebuild. Results: ``benchmarks/results/images.json``.
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


def build(args) -> dict[str, dict[str, Path]]:
    """Every artifact of the benchmark: {family: {name: path}}."""
    from compress.stages.distill import distill
    from compress.stages.distill.config import DistillConfig
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.prune import prune
    from compress.stages.prune.config import PruneConfig
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    train = args.digits / "train"
    w = args.work
    q8 = QuantizeConfig.from_flat(calibration=str(train), calibration_samples=300)
    out: dict[str, dict[str, Path]] = {}

    def int8_family(src: Path, prefix: str, family: dict[str, Path]) -> None:
        onnx = cached_step(f"{prefix} ONNX", w / f"{prefix}-onnx", lambda: export(src, w / f"{prefix}-onnx", force=True))
        family[f"{prefix} ONNX FP32"] = onnx
        family[f"{prefix} ONNX INT8"] = cached_step(f"{prefix} INT8", w / f"{prefix}-int8",
                                             lambda: quantize(onnx, w / f"{prefix}-int8", q8, force=True))
        ov = cached_step(f"{prefix} OpenVINO", w / f"{prefix}-ov",
                   lambda: export(onnx, w / f"{prefix}-ov", ExportConfig(format="openvino"), force=True))
        family[f"{prefix} OpenVINO INT8"] = cached_step(f"{prefix} OpenVINO INT8", w / f"{prefix}-ov-int8",
                                                 lambda: quantize(ov, w / f"{prefix}-ov-int8", q8, force=True))

    for kind in ("cnn", "vit", "program"):
        teacher = args.teachers / kind
        fam = out.setdefault(kind, {"teacher PyTorch FP32": teacher})
        int8_family(teacher, kind, fam)
    pruned = cached_step("cnn pruned", w / "cnn-pruned", lambda: prune(
        args.teachers / "cnn", w / "cnn-pruned",
        PruneConfig.from_flat(channels=args.cnn_channels, recover_steps=args.recover_steps, recover_lr=args.recover_lr,
                    recover_batch_size=64, seed=0),
        train=train, force=True))
    int8_family(pruned, "cnn-pruned", out["cnn"])
    student = cached_step("vit distilled", w / "vit-distilled", lambda: distill(
        args.teachers / "vit", train, w / "vit-distilled",
        DistillConfig.from_flat(layers=args.vit_layers, epochs=args.vit_epochs, batch_size=64, lr=1e-3, eval_every=10_000,
                      seed=0), force=True))
    int8_family(student, "vit-distilled", out["vit"])
    # the program: a user's own smaller checkpoint (a 20k-parameter Hugging Face ResNet, random init) distilled from it
    init = w / "program-student-init"
    if not (init / "config.json").is_file():
        import torch
        import transformers

        torch.manual_seed(0)
        ids = {i: str(i) for i in range(10)}
        transformers.ResNetForImageClassification(transformers.ResNetConfig(
            num_channels=1, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic",
            downsample_in_first_stage=False, num_labels=10, id2label=ids, label2id={v: k for k, v in ids.items()},
        )).save_pretrained(init)
        transformers.ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(init)  # unused: reads as the teacher
    small = cached_step("program distilled", w / "program-distilled", lambda: distill(
        args.teachers / "program", train, w / "program-distilled",
        DistillConfig.from_flat(student=str(init), epochs=args.program_epochs, batch_size=64, lr=3e-3, eval_every=10_000,
                      seed=0), force=True))
    int8_family(small, "program-distilled", out["program"])
    return out


def measure(families: dict[str, dict[str, Path]], test: Path, threads: int, seconds: float) -> dict:
    from compress.artifact import is_artifact, load_artifact
    from compress.data.inputs import load_inputs
    from compress.host.measure import measure_interleaved
    from compress.runtimes.base import RuntimeSettings, load_runtime
    from compress.runtimes.torch_backend import TorchBackend
    from compress.teachers.load import load_teacher

    settings = RuntimeSettings(threads=threads)
    rows, runs = {}, {}
    backends = []
    for family, arts in families.items():
        teacher = load_teacher(arts["teacher PyTorch FP32"])
        ds = load_inputs(test, teacher.info.preprocess, label2id={n: i for i, n in enumerate(teacher.info.labels)},
                         require_labels=True)
        labels = np.asarray(ds.labels)
        for name, path in arts.items():
            backend = (TorchBackend.from_teacher(teacher, settings) if not is_artifact(path)
                       else load_runtime(load_artifact(path), settings=settings))
            backends.append(backend)
            logits = np.concatenate([backend.predict(backend.encode(b)) for b, _, _ in ds.batches(64)])
            pred = logits.argmax(-1)
            key = f"{family}: {name}"
            size = (sum((path / w).stat().st_size for w in teacher.info.weights) if not is_artifact(path)
                    else load_artifact(path).size_bytes())
            rows[key] = {"family": family, "artifact": name, "path": str(path), "accuracy": float((pred == labels).mean()),
                         "size_bytes": int(size), "predictions": pred}
            one = backend.encode(ds.inputs[:1])
            runs[key] = (lambda b=backend, x=one: b.run(x))
        teacher_key = f"{family}: teacher PyTorch FP32"
        for row in rows.values():
            if row["family"] == family:
                t = rows[teacher_key]
                row["retention"] = row["accuracy"] / t["accuracy"]
                row["agreement"] = float((row["predictions"] == t["predictions"]).mean())
                row["smaller"] = t["size_bytes"] / row["size_bytes"]
    print(f"timing {len(runs)} models in alternating rounds ({threads} threads, batch 1) ...", flush=True)
    stats = measure_interleaved(runs, batch_size=1, min_runs=300, min_duration_s=seconds, warmup=20, rounds=20)
    for key, row in rows.items():
        row.pop("predictions")
        row["p50_ms"], row["p95_ms"] = stats[key].p50, stats[key].p95
        t = rows[f"{row['family']}: teacher PyTorch FP32"]
    for key, row in rows.items():
        t = stats[f"{row['family']}: teacher PyTorch FP32"]
        row["faster"] = t.p50 / stats[key].p50
    for b in backends:
        b.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--digits", type=Path, default=ROOT / ".cache" / "digits")
    ap.add_argument("--teachers", type=Path, default=ROOT / ".cache" / "images")
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "images-work")
    ap.add_argument("--cnn-channels", type=float, default=0.5)
    ap.add_argument("--recover-steps", type=int, default=900)
    ap.add_argument("--recover-lr", type=float, default=1e-3)
    ap.add_argument("--vit-layers", type=int, default=3)
    ap.add_argument("--vit-epochs", type=float, default=25)
    ap.add_argument("--program-epochs", type=float, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5.0, help="least timed seconds per model")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "images.json")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    families = build(args)
    built = time.perf_counter() - t0
    rows = measure(families, args.digits / "test", args.threads, args.seconds)
    print("\n| model | test accuracy | retention | agreement | size KB | smaller | p50 ms | p95 ms | faster |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key, r in rows.items():
        print(f"| {key} | {r['accuracy']:.4f} | {r['retention']:.3f} | {r['agreement']:.3f} | "
              f"{r['size_bytes'] / 1024:.0f} | {r['smaller']:.1f}x | {r['p50_ms']:.3f} | {r['p95_ms']:.3f} | "
              f"{r['faster']:.1f}x |")
    from benchmarks.harness.results import write_results

    write_results(args.out, {"build_seconds": round(built, 1), "settings": {k: str(v) for k, v in vars(args).items()},
                             "rows": rows}, argv=[__file__, *(argv or [])])
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
