"""Foundation benchmark: SST-2 teacher → PyTorch FP32 vs our ONNX FP32 vs our INT8 vs Optimum's ORTQuantizer INT8.

One run, side by side, on SST-2 dev: accuracy, agreement with the PyTorch teacher, size, latency
p50/p95 at batch 1 x 64 tokens and at the real (unpadded) lengths, cold start and peak RSS of a fresh
process. Latency of all configurations is measured in alternating rounds in one process (same
threads), so the ratios between them are fair on a noisy machine.

    python benchmarks/encoders/foundation.py --data ../shared/data/sst2 [--threads 2] [--out benchmarks/results/foundation.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness

import numpy as np

from benchmarks.harness.results import write_results
from benchmarks.harness.teachers import DEFAULT_DATA, ensure_teacher


def log(msg: str) -> None:
    print(f"[foundation] {msg}", file=sys.stderr, flush=True)


def build_artifacts(teacher_dir: Path, work: Path, data: Path, rebuild: bool) -> dict[str, Path]:
    from compress.artifact import is_artifact
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    dev = str(data / "dev.tsv")
    train = str(data / "train.tsv")
    out = {
        "onnx-fp32": work / "onnx-fp32",
        "onnx-fp32-unfused": work / "onnx-fp32-unfused",
        "int8-dynamic": work / "int8-dynamic",
        "int8-dynamic-reduce-range": work / "int8-dynamic-reduce-range",
        "int8-static-qdq": work / "int8-static-qdq",
    }
    if rebuild or not is_artifact(out["onnx-fp32"]):
        export(teacher_dir, out["onnx-fp32"], ExportConfig(sample_data=dev, parity_samples=64), force=True)
    if rebuild or not is_artifact(out["onnx-fp32-unfused"]):
        export(teacher_dir, out["onnx-fp32-unfused"],
               ExportConfig(sample_data=dev, parity_samples=64, optimize="none"), force=True)
    if rebuild or not is_artifact(out["int8-dynamic"]):
        quantize(out["onnx-fp32"], out["int8-dynamic"], QuantizeConfig.from_flat(sample_data=dev), force=True)
    if rebuild or not is_artifact(out["int8-dynamic-reduce-range"]):
        quantize(out["onnx-fp32"], out["int8-dynamic-reduce-range"],
                 QuantizeConfig.from_flat(sample_data=dev, reduce_range=True), force=True)
    if rebuild or not is_artifact(out["int8-static-qdq"]):
        quantize(out["onnx-fp32"], out["int8-static-qdq"],
                 QuantizeConfig.from_flat(mode="static", calibration=train, calibration_samples=256, sample_data=dev),
                 force=True)
    return out


def build_optimum(teacher_dir: Path, work: Path, rebuild: bool) -> Path:
    """Optimum's own pipeline: its plain ONNX export + ORTQuantizer with AutoQuantizationConfig.avx2 (dynamic)."""
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    plain = work / "optimum-onnx"
    quant = work / "optimum-int8-avx2"
    if rebuild or not (quant / "model_quantized.onnx").is_file():
        shutil.rmtree(plain, ignore_errors=True)
        shutil.rmtree(quant, ignore_errors=True)
        main_export(str(teacher_dir), output=str(plain), task="text-classification", do_validation=False)
        quantizer = ORTQuantizer.from_pretrained(str(plain), file_name="model.onnx")
        qconfig = AutoQuantizationConfig.avx2(is_static=False, per_channel=False)
        quantizer.quantize(save_dir=str(quant), quantization_config=qconfig)
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config.json"):
            if (plain / f).is_file() and not (quant / f).exists():
                shutil.copy2(plain / f, quant / f)
    return quant / "model_quantized.onnx"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SST-2 directory (train.tsv, dev.tsv)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-runs", type=int, default=300, help="timed runs per configuration (batch 1 x 64)")
    ap.add_argument("--min-duration", type=float, default=10.0, help="seconds of timed work per configuration")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "foundation.json")
    ap.add_argument("--work", type=Path, default=HERE / ".cache" / "foundation")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached artifacts")
    args = ap.parse_args()

    import torch

    from compress.artifact import load_artifact
    from compress.data.tables import load_dataset
    from compress.host.measure import measure_interleaved, probe_cold_start
    from compress.runtimes.base import RuntimeSettings, load_runtime
    from compress.runtimes.ort_backend import OrtBackend
    from compress.runtimes.torch_backend import TorchBackend
    from compress.teachers.load import load_teacher

    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    teacher_dir = ensure_teacher(args.data)
    log(f"teacher {teacher_dir}")
    args.work.mkdir(parents=True, exist_ok=True)
    arts = build_artifacts(teacher_dir, args.work, args.data, args.rebuild)
    optimum_model = build_optimum(teacher_dir, args.work, args.rebuild)

    teacher = load_teacher(teacher_dir)
    dev = load_dataset(args.data / "dev.tsv", label2id={n: i for i, n in enumerate(teacher.info.labels)})
    labels = np.asarray(dev.labels)
    settings = RuntimeSettings(threads=args.threads)

    backends = {"pytorch-fp32": TorchBackend.from_teacher(teacher, settings)}
    for name, path in arts.items():
        backends[name] = load_runtime(load_artifact(path), "onnxruntime", settings)
    # Optimum's INT8: same adapter, its own file (the artifact wrapper only points at the model file)
    opt_art = load_artifact(arts["onnx-fp32"])
    opt_art.manifest = opt_art.manifest.with_model_file(os.path.relpath(optimum_model, opt_art.path))
    backends["optimum-int8-avx2"] = OrtBackend(opt_art, settings)

    encoder = backends["pytorch-fp32"].encoder
    results: dict[str, dict] = {}
    preds = {}
    for name, b in backends.items():
        t0 = time.perf_counter()
        logits = np.concatenate([b.predict(encoder.encode(t, p)) for t, p, _ in dev.batches(32)])
        preds[name] = logits.argmax(-1)
        results[name] = {"accuracy": float((preds[name] == labels).mean()), "eval_s": round(time.perf_counter() - t0, 2)}
        log(f"{name}: accuracy {results[name]['accuracy']:.4f}")
    for name in backends:
        results[name]["agreement"] = float((preds[name] == preds["pytorch-fp32"]).mean())
        results[name]["retention"] = results[name]["accuracy"] / results["pytorch-fp32"]["accuracy"]

    sizes = {"pytorch-fp32": sum(p.stat().st_size for p in teacher_dir.glob("*.safetensors"))}
    for name, path in arts.items():
        sizes[name] = load_artifact(path).size_bytes()
    sizes["optimum-int8-avx2"] = optimum_model.stat().st_size
    for name in backends:
        results[name]["size_mb"] = sizes[name] / 2**20

    # latency at batch 1 x 64 tokens (padded), all configurations interleaved
    fixed = encoder.encode([" ".join(dev.texts[:20])], pad_to=64)
    log("timing batch 1 x 64 ...")
    stats = measure_interleaved(
        {n: (lambda b=b: b.run(fixed)) for n, b in backends.items()},
        batch_size=1, warmup=20, min_runs=args.min_runs, min_duration_s=args.min_duration,
    )
    for n, s in stats.items():
        results[n]["latency_b1x64_ms"] = {"p50": s.p50, "p95": s.p95, "p99": s.p99, "n": s.n, "cv": s.cv}

    # latency at the real (unpadded) lengths: each dev sentence alone, in order, every configuration
    singles = [encoder.encode([t]) for t in dev.texts]
    lengths = [int(x["input_ids"].shape[1]) for x in singles]
    log(f"timing real lengths (dev: median {int(np.median(lengths))} tokens, max {max(lengths)}) ...")
    cursors = {n: 0 for n in backends}

    def real_runner(name, b):
        def run():
            i = cursors[name] % len(singles)
            cursors[name] += 1
            return b.run(singles[i])
        return run

    stats = measure_interleaved(
        {n: real_runner(n, b) for n, b in backends.items()},
        batch_size=1, warmup=10, min_runs=len(singles), min_duration_s=args.min_duration,
    )
    for n, s in stats.items():
        results[n]["latency_real_ms"] = {"p50": s.p50, "p95": s.p95, "p99": s.p99, "n": s.n, "cv": s.cv}
    for b in backends.values():
        b.close()

    # cold start and peak RSS of a fresh process (median of 3)
    probe_targets = {"pytorch-fp32": (teacher_dir, "torch"), **{n: (p, "onnxruntime") for n, p in arts.items()}}
    for name, (path, runtime) in probe_targets.items():
        runs = [probe_cold_start(path, runtime, args.threads, None, 1, 64) for _ in range(3)]
        runs.sort(key=lambda r: r["process_wall_ms"])
        mid = runs[1]
        results[name]["cold_start_ms"] = mid["process_wall_ms"]
        results[name]["peak_rss_mb"] = mid["peak_rss_mb"]
        log(f"{name}: cold start {mid['process_wall_ms']:.0f} ms, peak RSS {mid['peak_rss_mb']:.0f} MB")

    from compress.reports.doctor import environment_report

    env = environment_report()
    payload = {
        "benchmark": "foundation",
        "data": str(args.data),
        "dev_samples": len(dev),
        "threads": args.threads,
        "host": {"cpu": env["cpu"], "features": env["cpu_features"], "int8_dot_product": env["int8_dot_product"],
                 "python": platform.python_version()},
        "versions": {r["package"]: r["version"] for r in env["backends"] if r["version"]},
        "percentiles": "nearest rank",
        "quantize_config": load_artifact(arts["int8-dynamic"]).manifest.steps[-1].config,
        "results": results,
        "seconds": round(time.perf_counter() - t_all, 1),
    }
    write_results(args.out, payload)
    print(table(results))
    log(f"wrote {args.out}")


def table(results: dict[str, dict]) -> str:
    head = ("| config | dev acc | retention | agreement | size MB | p50 1x64 | p95 1x64 | p50 real | p95 real "
            "| cold start ms | peak RSS MB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for n, r in results.items():
        a, b = r["latency_b1x64_ms"], r["latency_real_ms"]
        lines.append(
            f"| {n} | {r['accuracy']:.4f} | {r['retention']:.4f} | {r['agreement']:.4f} | {r['size_mb']:.1f} | "
            f"{a['p50']:.2f} | {a['p95']:.2f} | {b['p50']:.2f} | {b['p95']:.2f} | "
            + (f"{r['cold_start_ms']:.0f} | {r['peak_rss_mb']:.0f} |" if "cold_start_ms" in r else "— | — |")
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
