"""Distillation benchmark: 3- and 2-layer students of the SST-2 teacher, distilled vs trained on labels alone.

For each depth the same student (evenly spaced teacher layers, copied weights) is trained twice on
SST-2 train with identical settings: once with the distillation defaults (soft targets + labels), once on
the labels alone (cross entropy, no teacher). Each is then exported to ONNX FP32 and quantized to INT8,
and reported: dev and test accuracy (ONNX Runtime), retention vs the teacher, parameters, size, p50
latency at batch 1 x 64 tokens (all models timed in alternating rounds in one process) and wall time.

``--ablation`` instead compares loss settings on a training subset (chooses the defaults).

    python benchmarks/encoders/distillation.py --data ../shared/data/sst2 [--epochs 1] [--depths 3,2] [--augment 1]
    python benchmarks/encoders/distillation.py --data ../shared/data/sst2 --ablation [--rows 16000]

The checkpoint with the best dev accuracy is kept (dev is used for model selection for every run alike),
so test accuracy is the untouched figure.
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

from benchmarks.harness.data import accuracy, subset_tsv
from benchmarks.harness.results import write_results
from benchmarks.harness.teachers import DEFAULT_DATA, ensure_teacher

ABLATIONS = {
    "soft0.7+hard0.3 T2": {},
    "labels only": {"soft_weight": 0.0, "hard_weight": 1.0},
    "+hidden MSE 1.0": {"hidden_weight": 1.0},
    "+attention KL 1.0 + value relation 1.0": {"attention_weight": 1.0, "value_relation_weight": 1.0},
    "soft0.7+hard0.3 T4": {"temperature": 4.0},
}


def log(msg: str) -> None:
    print(f"[distillation] {msg}", file=sys.stderr, flush=True)


def progress_printer(name: str):
    last = {"t": 0.0}

    def show(d):
        now = time.perf_counter()
        if d.get("phase") == "train" and (now - last["t"] > 30 or d.get("eval") is not None or d["step"] == d["total"]):
            last["t"] = now
            ev = f" eval {d['eval']:.4f}" if d.get("eval") is not None else ""
            log(f"{name}: step {d['step']}/{d['total']} loss {d['loss']:.4f}{ev}")
    return show


def run_distill(name, teacher_dir, train, dev, out, overrides, epochs, rebuild, eval_every, teacher_cache=None):
    from compress.artifact import is_artifact, load_artifact
    from compress.stages.distill import distill
    from compress.stages.distill.config import DistillConfig

    if is_artifact(out) and not rebuild:
        art = load_artifact(out)
        return art, art.manifest.steps[-1].metrics
    cfg = DistillConfig.from_flat(epochs=epochs, eval_every=eval_every, **overrides)
    log(f"{name}: distilling ({json.dumps(overrides)})")
    r = distill(teacher_dir, train, out, cfg, eval_data=dev, force=True, teacher_cache=teacher_cache,
                progress=progress_printer(name))
    return r.artifact, r.metrics


def ablation(args, teacher_dir: Path) -> None:
    work = args.work / "ablation"
    train = subset_tsv(args.data / "train.tsv", work / f"train-{args.rows}.tsv", args.rows)
    results = {}
    chosen = args.only.split(";") if args.only else list(ABLATIONS)
    for name, overrides in ((n, ABLATIONS[n]) for n in chosen):
        slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
        t0 = time.perf_counter()
        _, m = run_distill(name, teacher_dir, train, args.data / "dev.tsv", work / slug,
                           {"layers": 3, **overrides}, args.epochs, args.rebuild, args.eval_every)
        results[name] = {k: m.get(k) for k in ("eval_metric", "teacher_eval_metric", "retention", "train_seconds",
                                               "teacher_cache_seconds", "steps", "chosen")}
        results[name]["history"] = [(h["step"], round(h["metric"], 4)) for h in m.get("history", [])]
        results[name]["wall_s"] = round(time.perf_counter() - t0, 1)
        log(f"{name}: dev {m.get('eval_metric'):.4f} (best of evals)")
    payload = {"benchmark": "distillation-ablation", "train_rows": args.rows, "epochs": args.epochs,
               "student": "3 teacher layers (1,3,5)", "results": results}
    out = args.out.with_name("distillation_ablation.json")
    write_results(out, payload)
    for name, r in results.items():
        print(f"| {name} | {r['eval_metric']:.4f} | {r['retention']:.4f} | {r['train_seconds']:.0f} |")
    log(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SST-2 directory (train/dev/test.tsv)")
    ap.add_argument("--depths", default="3,2", help="student depths (teacher layers kept)")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--augment", type=int, default=0,
                    help="also distil with this many embedding-neighbour copies of every sentence")
    ap.add_argument("--augment-depths", default="3", help="depths that get the --augment variant")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-runs", type=int, default=300)
    ap.add_argument("--min-duration", type=float, default=10.0)
    ap.add_argument("--ablation", action="store_true", help="compare loss settings on a subset instead")
    ap.add_argument("--only", help="ablation: ';'-separated subset of the settings to run")
    ap.add_argument("--rows", type=int, default=16000, help="ablation: training rows")
    ap.add_argument("--work", type=Path, default=HERE / ".cache" / "distillation")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "distillation.json")
    ap.add_argument("--rebuild", action="store_true")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    teacher_dir = ensure_teacher(args.data)
    if args.ablation:
        ablation(args, teacher_dir)
        return

    from compress.artifact import is_artifact, load_artifact
    from compress.data.tables import load_dataset
    from compress.host.measure import measure_interleaved
    from compress.runtimes.base import RuntimeSettings, load_runtime
    from compress.stages.distill.student import count_parameters
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.teachers.load import load_teacher

    dev_path, test_path = args.data / "dev.tsv", args.data / "test.tsv"
    teacher = load_teacher(teacher_dir)
    label2id = {n: i for i, n in enumerate(teacher.info.labels)}
    sets = {"dev": load_dataset(dev_path, label2id=label2id), "test": load_dataset(test_path, label2id=label2id)}
    results: dict[str, dict] = {}
    models: dict[str, Path] = {}  # name -> pytorch checkpoint dir
    models["teacher"] = teacher_dir
    results["teacher"] = {"parameters": count_parameters(teacher.model), "train_seconds": None}
    aug_depths = [int(d) for d in args.augment_depths.split(",")] if args.augment else []
    for depth in [int(d) for d in args.depths.split(",")]:
        variants = [("distilled", {}), ("labels-only", {"soft_weight": 0.0, "hard_weight": 1.0})]
        if depth in aug_depths:
            variants.append((f"distilled-augment{args.augment}", {"augment": args.augment}))
        for kind, overrides in variants:
            name = f"L{depth}-{kind}"
            art, m = run_distill(name, teacher_dir, args.data / "train.tsv", dev_path, args.work / name,
                                 {"layers": depth, **overrides}, args.epochs, args.rebuild, args.eval_every,
                                 teacher_cache=args.work / "teacher-cache")
            models[name] = art.path
            results[name] = {"parameters": m["student_parameters"], "train_seconds": m["train_seconds"],
                             "teacher_cache_seconds": m["teacher_cache_seconds"], "steps": m["steps"],
                             "chosen": m["chosen"], "kept_layers": m["layer_mapping"],
                             "dev_history": [(h["step"], round(h["metric"], 4)) for h in m["history"]]}

    # export + INT8 for every model (the teacher's from the same code path)
    arts: dict[str, Path] = {}
    for name, src in models.items():
        fp32, int8 = args.work / "onnx" / f"{name}-fp32", args.work / "onnx" / f"{name}-int8"
        if args.rebuild or not is_artifact(fp32):
            export(src, fp32, ExportConfig(sample_data=str(dev_path), parity_samples=64), force=True)
        if args.rebuild or not is_artifact(int8):
            quantize(fp32, int8, QuantizeConfig.from_flat(sample_data=str(dev_path)), force=True)
        arts[f"{name} fp32"], arts[f"{name} int8"] = fp32, int8

    settings = RuntimeSettings(threads=args.threads)
    backends = {n: load_runtime(load_artifact(p), "onnxruntime", settings) for n, p in arts.items()}
    encoder = backends["teacher fp32"].encoder
    acc: dict[str, dict[str, float]] = {}
    for n, b in backends.items():
        acc[n] = {split: accuracy(b, ds) for split, ds in sets.items()}
        log(f"{n}: dev {acc[n]['dev']:.4f} test {acc[n]['test']:.4f}")
    fixed = encoder.encode([" ".join(sets["dev"].texts[:20])], pad_to=64)
    log("timing batch 1 x 64 (all models interleaved) ...")
    stats = measure_interleaved({n: (lambda b=b: b.run(fixed)) for n, b in backends.items()}, batch_size=1,
                                warmup=20, min_runs=args.min_runs, min_duration_s=args.min_duration)
    for b in backends.values():
        b.close()
    for name, model_dir in models.items():
        r = results[name]
        r["pytorch_size_mb"] = sum(f.stat().st_size for f in Path(model_dir).glob("*.safetensors")) / 2**20
        for prec in ("fp32", "int8"):
            key = f"{name} {prec}"
            s = stats[key]
            r[prec] = {
                "dev_accuracy": acc[key]["dev"], "test_accuracy": acc[key]["test"],
                "dev_retention": acc[key]["dev"] / acc["teacher fp32"]["dev"],
                "test_retention": acc[key]["test"] / acc["teacher fp32"]["test"],
                "size_mb": load_artifact(arts[key]).size_bytes() / 2**20,
                "p50_ms": s.p50, "p95_ms": s.p95, "n": s.n, "cv": s.cv,
                "p50_speedup_vs_teacher_fp32": stats["teacher fp32"].p50 / s.p50,
            }

    payload = {
        "benchmark": "distillation",
        "data": str(args.data),
        "epochs": args.epochs,
        "threads": args.threads,
        "selection": f"best dev accuracy among evaluations every {args.eval_every} steps (all runs alike)",
        "results": results,
        "seconds": round(time.perf_counter() - t_all, 1),
    }
    write_results(args.out, payload)
    print(table(results))
    log(f"wrote {args.out}")


def table(results: dict[str, dict]) -> str:
    head = ("| model | params | dev acc (FP32) | test acc (FP32) | dev retention | test acc (INT8) | "
            "size FP32 / INT8 MB | p50 FP32 / INT8 ms | train s |")
    lines = [head, "|---" * 9 + "|"]
    for name, r in results.items():
        f, i = r["fp32"], r["int8"]
        lines.append(
            f"| {name} | {r['parameters'] / 1e6:.1f}M | {f['dev_accuracy']:.4f} | {f['test_accuracy']:.4f} | "
            f"{f['dev_retention']:.4f} | {i['test_accuracy']:.4f} | {f['size_mb']:.1f} / {i['size_mb']:.1f} | "
            f"{f['p50_ms']:.2f} / {i['p50_ms']:.2f} | {r['train_seconds'] or '—'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
