"""Quantization benchmark (issue 5): INT8/INT4 on ONNX Runtime and OpenVINO, ours vs NNCF's own, side by side.

SST-2 teacher, SST-2 dev: size, accuracy, retention, agreement, p50/p95 at batch 1 x 64 tokens for
  ONNX FP32 / ONNX INT8 (dynamic) / ONNX INT4 (MatMulNBits) / ONNX accuracy-aware INT8,
  OpenVINO FP32 / OpenVINO INT8 (our NNCF PTQ) / OpenVINO INT4 weights / OpenVINO accuracy-aware,
  NNCF defaults (plain nncf.quantize, no model type) and NNCF quantize_with_accuracy_control
  applied directly to the same IR.
All latencies are measured in alternating rounds in one process with the same thread count.
Then our p50 for the OpenVINO FP32 and INT8 IRs against OpenVINO's own `benchmark_app`
(sync API, one stream, same threads, same shape) on the same files.

    python benchmarks/encoders/quantization.py --data ../shared/data/sst2 [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness

import numpy as np

from benchmarks.harness.results import write_results
from benchmarks.harness.teachers import DEFAULT_DATA, ensure_teacher
from benchmarks.harness.timing import median


def log(msg: str) -> None:
    print(f"[quantization] {msg}", file=sys.stderr, flush=True)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t0, 1)


def build(teacher_dir: Path, data: Path, work: Path, rebuild: bool, eval_samples: int) -> tuple[dict, dict]:
    from compress.artifact import is_artifact
    from compress.errors import EdgeCompressError
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    dev, train = str(data / "dev.tsv"), str(data / "train.tsv")
    plans = {
        "onnx-fp32": lambda o: export(teacher_dir, o, ExportConfig(optimize="none", sample_data=dev), force=True),
        "onnx-int8": lambda o: quantize(work / "onnx-fp32", o, QuantizeConfig.from_flat(sample_data=dev), force=True),
        "onnx-int4": lambda o: quantize(work / "onnx-fp32", o, QuantizeConfig.from_flat(precision="int4", sample_data=dev),
                                        force=True),
        "onnx-int8-acc-aware": lambda o: quantize(
            work / "onnx-fp32", o, QuantizeConfig.from_flat(max_drop=0.005, data=dev, eval_samples=eval_samples,
                                                  sample_data=dev), force=True),
        "ov-fp32": lambda o: export(teacher_dir, o, ExportConfig(format="openvino", sample_data=dev), force=True),
        "ov-int8-nncf": lambda o: quantize(work / "ov-fp32", o, QuantizeConfig.from_flat(
            calibration=train, calibration_samples=300, sample_data=dev), force=True),
        "ov-int4-weights": lambda o: quantize(work / "ov-fp32", o, QuantizeConfig.from_flat(precision="int4", sample_data=dev),
                                              force=True),
        "ov-int8-acc-aware": lambda o: quantize(work / "ov-fp32", o, QuantizeConfig.from_flat(
            calibration=train, calibration_samples=300, max_drop=0.005, data=dev, eval_samples=eval_samples,
            sample_data=dev), force=True),
    }
    seconds, failures = {}, {}
    for name, make in plans.items():
        out = work / name
        if is_artifact(out) and not rebuild:
            continue
        log(f"building {name}")
        try:
            _, seconds[name] = timed(lambda make=make, out=out: make(out))
        except EdgeCompressError as e:
            failures[name] = str(e)
            log(f"{name} failed: {e}")
    return seconds, failures


def nncf_direct(work: Path, data: Path, teacher_labels: list[str], eval_samples: int) -> dict:
    """NNCF applied directly to our FP32 IR: its defaults, and quantize_with_accuracy_control."""
    import nncf
    import openvino as ov

    from compress.artifact import load_artifact
    from compress.data.tables import load_dataset
    from compress.runtimes.base import load_runtime

    fp32 = load_artifact(work / "ov-fp32")
    enc = load_runtime(fp32).encoder
    calib_texts = load_dataset(data / "train.tsv", limit=300).texts
    calib = [enc.encode([t]) for t in calib_texts]
    label2id = {n: i for i, n in enumerate(teacher_labels)}
    dev = load_dataset(data / "dev.tsv", label2id=label2id).sample(eval_samples, seed=0)
    dev_inputs = [(enc.encode([t]), y) for t, y in zip(dev.texts, dev.labels)]
    core = ov.Core()
    out = {}

    def save(model, name: str, secs: float) -> Path:
        d = work / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        ov.save_model(model, str(d / "model.xml"), compress_to_fp16=False)
        out[name] = {"path": str(d / "model.xml"), "seconds": secs}
        return d

    if not (work / "nncf-default" / "model.xml").is_file():
        model = core.read_model(str(fp32.model_path))
        q, secs = timed(lambda: nncf.quantize(model, nncf.Dataset(calib), subset_size=300))
        save(q, "nncf-default", secs)
    else:
        out["nncf-default"] = {"path": str(work / "nncf-default" / "model.xml")}

    def validation_fn(compiled, items):
        hits = [int(np.argmax(compiled(x)[0][0]) == y) for x, y in items]
        return float(np.mean(hits))

    if not (work / "nncf-accuracy-control" / "model.xml").is_file():
        model = core.read_model(str(fp32.model_path))
        q, secs = timed(lambda: nncf.quantize_with_accuracy_control(
            model, nncf.Dataset(calib), nncf.Dataset(dev_inputs), validation_fn, max_drop=0.005,
            subset_size=300, model_type=nncf.ModelType.TRANSFORMER))
        save(q, "nncf-accuracy-control", secs)
    else:
        out["nncf-accuracy-control"] = {"path": str(work / "nncf-accuracy-control" / "model.xml")}
    return out


def benchmark_app(xml: Path, threads: int, seconds: int, names: list[str], inputs_dir: Path | None,
                  static: bool) -> dict:
    """OpenVINO's benchmark_app, sync API, one stream, ``threads`` threads, batch 1 x 64.

    ``static``: ``-shape`` (the model is reshaped to a static [1,64] before compiling) instead of
    ``-data_shape`` (the dynamic model, as edgecompress runs it). ``inputs_dir``: our real token ids
    (.npy) instead of benchmark_app's random fill.
    """
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    shape = ",".join(f"{n}[1,64]" for n in names)
    cmd = [exe, "-m", str(xml), "-d", "CPU", "-api", "sync", "-nstreams", "1", "-nthreads", str(threads),
           "-hint", "none", "-shape" if static else "-data_shape", shape, "-t", str(seconds), "-infer_precision", "f32"]
    if inputs_dir is not None:
        cmd += ["-i", ",".join(f"{n}:{inputs_dir / (n + '.npy')}" for n in names)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 10 + 120)
    text = proc.stdout + proc.stderr
    got: dict = {}
    for key in ("Median", "Average", "Min", "Max"):
        m = re.search(rf"{key}:\s+([\d.]+)\s*ms", text)
        if m:
            got[key.lower()] = float(m.group(1))
    m = re.search(r"Count:\s+(\d+)", text)
    if m:
        got["count"] = int(m.group(1))
    got["command"] = " ".join(cmd)
    if proc.returncode != 0 or "median" not in got:
        got["error"] = text[-2000:]
    return got


def ours_fresh(art_dir: Path, threads: int, seconds: int, inputs_dir: Path) -> dict:
    """Our adapter's p50 in a fresh process (one compiled model, like benchmark_app); saves its inputs."""
    proc = subprocess.run([sys.executable, __file__, "--ours", str(art_dir), str(threads), str(seconds),
                           str(inputs_dir)], capture_output=True, text=True, timeout=seconds * 10 + 120)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ours_main(art_dir: str, threads: str, seconds: str, inputs_dir: str) -> None:
    from compress.artifact import load_artifact
    from compress.host.measure import measure_interleaved
    from compress.runtimes.base import RuntimeSettings, load_runtime

    b = load_runtime(load_artifact(art_dir), settings=RuntimeSettings(threads=int(threads)))
    x = b.encode(["the quick brown fox jumps over the lazy dog " * 10], pad_to=64)
    Path(inputs_dir).mkdir(parents=True, exist_ok=True)
    for k, v in x.items():
        np.save(Path(inputs_dir) / f"{k}.npy", v)
    s = measure_interleaved({"o": lambda: b.run(x)}, batch_size=1, warmup=50, min_runs=300,
                            min_duration_s=float(seconds))["o"]
    print(json.dumps({"p50": s.p50, "mean": s.mean, "n": s.n, "cv": s.cv}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-runs", type=int, default=200)
    ap.add_argument("--min-duration", type=float, default=8.0)
    ap.add_argument("--eval-samples", type=int, default=300, help="dev rows used by accuracy-aware tuning")
    ap.add_argument("--bench-seconds", type=int, default=15, help="benchmark_app duration per model")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "quantization.json")
    ap.add_argument("--work", type=Path, default=HERE / ".cache" / "quantization")
    ap.add_argument("--rebuild", action="store_true")
    args = ap.parse_args()

    import torch

    from compress.artifact import load_artifact
    from compress.data.tables import load_dataset
    from compress.host.measure import measure_interleaved
    from compress.runtimes.base import RuntimeSettings, load_runtime
    from compress.runtimes.openvino_backend import OpenVINOBackend
    from compress.runtimes.torch_backend import TorchBackend
    from compress.teachers.load import load_teacher

    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    teacher_dir = ensure_teacher(args.data)
    args.work.mkdir(parents=True, exist_ok=True)
    build_seconds, failures = build(teacher_dir, args.data, args.work, args.rebuild, args.eval_samples)
    teacher = load_teacher(teacher_dir)
    direct = nncf_direct(args.work, args.data, teacher.info.labels, args.eval_samples)

    settings = RuntimeSettings(threads=args.threads)
    backends = {}
    for name in ("onnx-fp32", "onnx-int8", "onnx-int4", "onnx-int8-acc-aware",
                 "ov-fp32", "ov-int8-nncf", "ov-int4-weights", "ov-int8-acc-aware"):
        path = args.work / name
        if (path / "manifest.json").is_file():
            backends[name] = load_runtime(load_artifact(path), settings=settings)
    base_ov = load_artifact(args.work / "ov-fp32")
    for name, info in direct.items():  # NNCF's own IRs: same adapter, pointed at their file
        art = load_artifact(args.work / "ov-fp32")
        art.manifest = art.manifest.with_model_file(os.path.relpath(info["path"], art.path))
        backends[name] = OpenVINOBackend(art, RuntimeSettings(threads=args.threads))

    dev = load_dataset(args.data / "dev.tsv", label2id={n: i for i, n in enumerate(teacher.info.labels)})
    labels = np.asarray(dev.labels)
    ref = TorchBackend.from_teacher(teacher, settings)
    teacher_pred = np.concatenate([ref.predict(ref.encode(t)).argmax(-1) for t, _, _ in dev.batches(32)])
    teacher_acc = float((teacher_pred == labels).mean())
    results = {}
    for name, b in backends.items():
        pred = np.concatenate([b.predict(b.encode(t)).argmax(-1) for t, _, _ in dev.batches(32)])
        acc = float((pred == labels).mean())
        if name in direct:
            size = sum(p.stat().st_size for p in Path(direct[name]["path"]).parent.glob("model.*"))
        else:
            size = b.artifact.size_bytes()
        step = b.artifact.manifest.steps[-1] if name not in direct else None
        results[name] = {
            "accuracy": acc, "retention": acc / teacher_acc, "agreement": float((pred == teacher_pred).mean()),
            "size_mb": size / 2**20, "build_s": build_seconds.get(name, direct.get(name, {}).get("seconds")),
            "kept_fp32": _kept_fp32(step) if step else None,
        }
        log(f"{name}: accuracy {acc:.4f} size {size / 2**20:.1f} MB")

    fixed = {n: b.encode([" ".join(dev.texts[:20])], pad_to=64) for n, b in backends.items()}
    stats = measure_interleaved({n: (lambda b=b, x=fixed[n]: b.run(x)) for n, b in backends.items()},
                                batch_size=1, warmup=20, min_runs=args.min_runs, min_duration_s=args.min_duration)
    for n, s in stats.items():
        results[n]["latency_ms"] = {"p50": s.p50, "p95": s.p95, "n": s.n, "cv": s.cv,
                                    "p50_ci95": list(s.ci95["p50"])}

    for b in backends.values():
        b.close()

    # ours vs benchmark_app on the same IR files: fresh processes, alternating, 3 rounds each,
    # same inputs (ours saved as .npy), dynamic model as we run it; plus benchmark_app's static reshape
    bench = {}
    names = [t.name for t in base_ov.manifest.inputs]
    inputs_dir = args.work / "bench-inputs"
    for name in ("ov-fp32", "ov-int8-nncf"):
        if name not in backends:
            continue
        art_dir = args.work / name
        rounds = []
        for _ in range(3):
            ours = ours_fresh(art_dir, args.threads, args.bench_seconds, inputs_dir)
            app = benchmark_app(art_dir / "model.xml", args.threads, args.bench_seconds, names, inputs_dir, False)
            rounds.append({"ours_p50_ms": ours.get("p50"), "app_median_ms": app.get("median"), "ours": ours,
                           "benchmark_app": app})
        static = benchmark_app(art_dir / "model.xml", args.threads, args.bench_seconds, names, inputs_dir, True)
        ours_med = median(r["ours_p50_ms"] for r in rounds if r["ours_p50_ms"])
        app_med = median(r["app_median_ms"] for r in rounds if r["app_median_ms"])
        bench[name] = {"rounds": rounds, "ours_p50_ms_median": ours_med, "app_median_ms_median": app_med,
                       "ratio_ours_over_app": ours_med / app_med, "app_static_shape_median_ms": static.get("median"),
                       "app_static_command": static.get("command")}
        log(f"{name}: ours p50 {ours_med:.2f} ms vs benchmark_app {app_med:.2f} ms (dynamic), "
            f"{static.get('median')} ms (static -shape)")
    payload = {
        "benchmark": "quantization", "data": str(args.data), "threads": args.threads,
        "teacher_accuracy": teacher_acc, "results": results, "failures": failures,
        "benchmark_app": bench, "seconds": round(time.perf_counter() - t_all, 1),
    }
    write_results(args.out, payload)
    print(table(results, teacher_acc))
    for n, r in bench.items():
        print(f"{n}: ours p50 {r['ours_p50_ms_median']:.2f} ms vs benchmark_app median {r['app_median_ms_median']:.2f} ms "
              f"(ratio {r['ratio_ours_over_app']:.2f}; dynamic model, same inputs, median of 3 alternating fresh "
              f"processes); benchmark_app with a static -shape reshape: {r['app_static_shape_median_ms']} ms")
    log(f"wrote {args.out}")


def _kept_fp32(step) -> list[str] | None:
    """Layers an accuracy-aware step left in float (ONNX: our search; OpenVINO: NNCF's reversion)."""
    if "accuracy_aware" in step.metrics:
        return step.metrics["accuracy_aware"].get("excluded")
    if "accuracy_control" in step.metrics:
        return step.metrics["accuracy_control"].get("reverted_to_float")
    return None


def table(results: dict, teacher_acc: float) -> str:
    lines = [f"teacher (PyTorch FP32) dev accuracy {teacher_acc:.4f}",
             "| config | dev acc | retention | agreement | size MB | p50 ms | p95 ms | build s |",
             "|---|---|---|---|---|---|---|---|"]
    for n, r in results.items():
        lat = r.get("latency_ms", {})
        lines.append(f"| {n} | {r['accuracy']:.4f} | {r['retention']:.4f} | {r['agreement']:.4f} | "
                     f"{r['size_mb']:.1f} | {lat.get('p50', float('nan')):.2f} | {lat.get('p95', float('nan')):.2f} | "
                     f"{r['build_s'] if r['build_s'] is not None else '—'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--ours":
        _ours_main(*sys.argv[2:])
    else:
        main()
