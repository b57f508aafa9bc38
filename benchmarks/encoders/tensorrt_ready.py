"""TensorRT paths measured where TensorRT and a GPU are absent: what can be checked on the CPU, on real data.

For the SST-2 teacher this runs the two GPU routes up to the point where a GPU is needed, and scores what
they produce on SST-2 dev (872 sentences) on this machine:

* ``export --format tensorrt --dry-run`` (fp16: the plain FP32 ONNX TensorRT builds with ``--fp16``) and
  ``--precision int8 --calibration train`` (explicit QDQ following TensorRT's rules, checked by
  ``check_tensorrt_qdq``): build time, size, the ``trtexec`` command, and dev accuracy / agreement with
  the PyTorch teacher when the ONNX runs in ONNX Runtime on the CPU. ONNX Runtime computes the same
  INT8 QDQ arithmetic TensorRT fuses into INT8 kernels (same scales); TensorRT additionally runs the
  float layers in FP16, which this does not show.
* ``--via torch-tensorrt`` up to the compile: the model captured with ``torch.export`` over the
  profile's min..max shapes, saved and reloaded, run on every dev sentence against the transformers
  model (the program Torch-TensorRT would compile).

No latency is reported: CPU timings of GPU artifacts say nothing about the GPU.

    python benchmarks/encoders/tensorrt_ready.py --data ../shared/data/sst2 [--profile nvidia-t4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness

from benchmarks.harness.data import subset_tsv
from benchmarks.harness.results import write_results
from benchmarks.harness.teachers import DEFAULT_DATA, DEFAULT_OUT, ensure_teacher


def _predict_all(backend, ds, batch: int = 32):
    import numpy as np

    return np.concatenate([backend.predict(backend.encode(t, p)) for t, p, _ in ds.batches(batch)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SST-2 directory (train.tsv, dev.tsv)")
    ap.add_argument("--teacher", type=Path, default=DEFAULT_OUT, help="fine-tuned teacher (built if absent)")
    ap.add_argument("--profile", default="nvidia-t4", help="GPU profile whose shapes the builds use")
    ap.add_argument("--calibration-rows", type=int, default=256)
    ap.add_argument("--work", type=Path, default=HERE / ".cache" / "tensorrt")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "tensorrt_ready.json")
    args = ap.parse_args()

    import numpy as np
    import torch

    from compress import export, load_artifact
    from compress.data.tables import load_dataset
    from compress.runtimes.ort_backend import OrtBackend
    from compress.runtimes.torch_backend import TorchBackend
    from compress.runtimes.torch_tensorrt_program import ProgramRunner
    from compress.stages.export.config import ExportConfig
    from compress.stages.export.tensorrt import check_tensorrt_qdq
    from compress.stages.export.tensorrt_shapes import parity_batches, resolve_shapes
    from compress.stages.export.torch_tensorrt import PROGRAM, capture
    from compress.teachers.load import load_teacher

    teacher_dir = ensure_teacher(args.data, args.teacher)
    dev = load_dataset(args.data / "dev.tsv")
    labels = np.asarray(dev.labels)
    calib = subset_tsv(args.data / "train.tsv", args.work / f"calib-{args.calibration_rows}.tsv", args.calibration_rows)
    dev_sample = subset_tsv(args.data / "dev.tsv", args.work / "dev-64.tsv", 64)  # the export's own agreement check
    teacher = load_teacher(teacher_dir)
    torch_rt = TorchBackend.from_teacher(teacher)
    t0 = time.perf_counter()
    ref = _predict_all(torch_rt, dev)
    rows = [{"config": "PyTorch FP32 teacher (CPU)", "dev_accuracy": float((ref.argmax(1) == labels).mean()),
             "agreement": 1.0, "seconds_dev": round(time.perf_counter() - t0, 1)}]

    import onnx

    for name, cfg in (
        ("TensorRT-ready ONNX, fp16 build (FP32 graph)", ExportConfig.from_flat(format="tensorrt", dry_run=True, profile=args.profile)),
        (f"TensorRT-ready INT8 QDQ ({args.calibration_rows} calibration rows)",
         ExportConfig.from_flat(format="tensorrt", dry_run=True, profile=args.profile, precision="int8",
                      calibration=str(calib), calibration_samples=args.calibration_rows,
                      sample_data=str(dev_sample), parity_samples=64)),
    ):
        out = args.work / ("fp16" if "fp16" in name else "int8")
        t0 = time.perf_counter()
        art = export(teacher_dir, out, cfg, force=True)
        build = time.perf_counter() - t0
        art = load_artifact(out)
        model = onnx.load(str(art.model_path))
        qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
        rt = OrtBackend(art)
        got = _predict_all(rt, dev)
        rt.close()
        rows.append({
            "config": name, "build_seconds": round(build, 1), "size_mb": round(art.size_bytes() / 1e6, 1),
            "dev_accuracy": float((got.argmax(1) == labels).mean()),
            "agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
            "max_abs_diff_vs_pytorch": float(np.abs(got - ref).max()),
            "qdq_nodes": qdq, "qdq_rule_violations": len(check_tensorrt_qdq(model)) if qdq else None,
            "export_check": art.manifest.steps[-1].metrics.get("parity"),
            "calibration": art.manifest.steps[-1].metrics.get("calibration"),
            "trtexec": art.manifest.target["trtexec"], "shapes": art.manifest.target["shapes"],
        })
        print(json.dumps(rows[-1], indent=1), flush=True)

    shapes = resolve_shapes(ExportConfig.from_flat(format="tensorrt", profile=args.profile), teacher.info.max_length)
    t0 = time.perf_counter()
    program, _, dims = capture(teacher.model, teacher.input_names, shapes)
    cap = time.perf_counter() - t0
    path = args.work / PROGRAM
    torch.export.save(program, str(path))
    rec = {k: {n: list(v) for n in teacher.input_names} for k, v in shapes.items()}
    runner = ProgramRunner(path, "cpu", rec)
    refs, gots = [], []
    for batch in parity_batches(torch_rt, dev.texts, shapes):
        refs.append(torch_rt.predict(batch))
        gots.append(runner.run(batch))
    r, g = np.concatenate(refs), np.concatenate(gots)
    rows.append({
        "config": "torch.export program for Torch-TensorRT (before compile)", "capture_seconds": round(cap, 1),
        "size_mb": round(path.stat().st_size / 1e6, 1), "dev_accuracy": float((g.argmax(1) == labels).mean()),
        "agreement": float((g.argmax(1) == r.argmax(1)).mean()), "max_abs_diff_vs_pytorch": float(np.abs(g - r).max()),
        "dynamic_axes": {k: {str(a): str(d) for a, d in v.items()} for k, v in (dims or {}).items()},
    })
    print(json.dumps(rows[-1], indent=1), flush=True)
    result = {"benchmark": "tensorrt_ready", "profile": args.profile, "teacher": str(teacher_dir),
              "dev_rows": len(dev.texts), "rows": rows,
              "note": "CPU-only machine: no engine was built or timed; accuracy of the ONNX/program in ONNX Runtime "
                      "or PyTorch on the CPU."}
    write_results(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
