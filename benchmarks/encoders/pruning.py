"""Pruning benchmark: heads/FFN pruning at two levels plus vocabulary pruning, recovered by distillation.

For each source model (the SST-2 teacher, and a distilled student when ``--student`` is given) and each
level ``heads:ffn`` of ``--levels``, ``edgecompress prune`` removes that fraction of the attention heads
(globally, by Taylor importance) and of every layer's FFN neurons, prunes the vocabulary to the tokens of
SST-2 train, and recovers with ``--recover-steps`` of distillation from the unpruned source. The same
pruning without recovery is evaluated too (PyTorch FP32, dev), to show what recovery buys.

Every model (sources included) is exported to ONNX and quantized to INT8 (dynamic) with the same code
path, then reported: parameters, sizes, SST-2 dev accuracy of the INT8 model and its retention vs the
PyTorch FP32 teacher, and p50 latency at batch 1 x 64 tokens (ONNX Runtime INT8; all models and the
PyTorch FP32 teacher timed in alternating rounds in one process), with size ratio and p50 speed-up vs the
PyTorch FP32 teacher.

    python benchmarks/encoders/pruning.py --data ../shared/data/sst2 [--student DIR] [--levels 0.3:0.3,0.5:0.5]
        [--recover-steps 1000] [--seeds 42,0,1]

Smoke test (minutes; numbers meaningless):

    python benchmarks/encoders/pruning.py --recover-steps 5 --levels 0.3:0.3 --train-rows 256 --dev-rows 64 \\
        --samples 32 --min-runs 20 --min-duration 1 --work /tmp/pruning-smoke --out /tmp/pruning-smoke.json
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness

from benchmarks.harness.data import accuracy, subset_tsv
from benchmarks.harness.results import write_results
from benchmarks.harness.teachers import DEFAULT_DATA, DEFAULT_OUT, ensure_teacher
from benchmarks.harness.timing import median


def log(msg: str) -> None:
    print(f"[pruning] {msg}", file=sys.stderr, flush=True)


def progress_printer(name: str):
    last = {"t": 0.0}

    def show(d):
        now = time.perf_counter()
        if d.get("phase") == "train" and (now - last["t"] > 30 or d["step"] == d["total"]):
            last["t"] = now
            log(f"{name}: recovery step {d['step']}/{d['total']} loss {d['loss']:.4f}")
        elif d.get("phase") == "teacher" and d["done"] == d["total"]:
            log(f"{name}: teacher outputs cached for {d['total']} rows")
    return show


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SST-2 directory (train/dev.tsv)")
    ap.add_argument("--teacher", type=Path, default=DEFAULT_OUT, help="fine-tuned teacher (built if missing)")
    ap.add_argument("--student", type=Path, help="a distilled student (pytorch artifact) to prune as well")
    ap.add_argument("--levels", default="0.3:0.3,0.5:0.5", help="comma-separated heads:ffn pruning ratios")
    ap.add_argument("--recover-steps", type=int, default=1000)
    ap.add_argument("--recover-lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--samples", type=int, default=256, help="rows for the importance scores")
    ap.add_argument("--train-rows", type=int, help="subsample SST-2 train for recovery (default: all)")
    ap.add_argument("--dev-rows", type=int, help="evaluate on the first N dev rows (default: all)")
    ap.add_argument("--no-vocab", action="store_true", help="skip vocabulary pruning")
    ap.add_argument("--seeds", default="42", help="comma-separated seeds of pruning's sampling and recovery; with "
                    "several, every pruned model is built once per seed and the table gives mean (min-max)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-runs", type=int, default=300)
    ap.add_argument("--min-duration", type=float, default=10.0)
    ap.add_argument("--work", type=Path, default=HERE / ".cache" / "pruning")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "pruning.json")
    ap.add_argument("--rebuild", action="store_true", help="rebuild cached artifacts")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from compress.artifact import is_artifact, load_artifact
    from compress.data.tables import load_dataset
    from compress.host.measure import measure_interleaved
    from compress.runtimes.base import RuntimeSettings, load_runtime
    from compress.runtimes.torch_backend import TorchBackend
    from compress.stages.distill.student import count_parameters
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.prune import prune
    from compress.stages.prune.config import PruneConfig
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.teachers.load import load_teacher

    t_all = time.perf_counter()
    teacher_dir = args.teacher if args.teacher != DEFAULT_OUT else ensure_teacher(args.data)
    train_full, dev_path = args.data / "train.tsv", args.data / "dev.tsv"
    train = train_full
    if args.train_rows:
        train = subset_tsv(train_full, args.work / f"train-{args.train_rows}.tsv", args.train_rows)
    if args.dev_rows:
        dev_path = subset_tsv(dev_path, args.work / f"dev-{args.dev_rows}.tsv", args.dev_rows)
    teacher = load_teacher(teacher_dir)
    label2id = {n: i for i, n in enumerate(teacher.info.labels)}
    dev = load_dataset(dev_path, label2id=label2id)
    test = load_dataset(args.data / "test.tsv", label2id=label2id) if (args.data / "test.tsv").is_file() else None
    levels = [tuple(float(x) for x in lv.split(":")) for lv in args.levels.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    sources = {"teacher": teacher_dir}
    if args.student:
        sources["student"] = args.student

    models: dict[str, Path] = {}
    results: dict[str, dict] = {}
    for src_name, src in sources.items():
        models[src_name] = src
        results[src_name] = {"source": str(src), "parameters": count_parameters(load_teacher(src).model)}
        for (heads, ffn), seed in itertools.product(levels, seeds):
            name = f"{src_name}-h{heads:g}-f{ffn:g}" + (f"-s{seed}" if len(seeds) > 1 else "")
            vocab = None if args.no_vocab else str(train_full)
            base = {"heads": heads, "ffn": ffn, "vocab_corpus": vocab, "samples": args.samples, "seed": seed}
            norec = args.work / f"{name}-norecovery"
            if args.rebuild or not is_artifact(norec):
                log(f"{name}: pruning without recovery")
                prune(src, norec, PruneConfig.from_flat(**base), train=train, force=True)
            out = args.work / name
            if args.rebuild or not is_artifact(out):
                log(f"{name}: pruning + {args.recover_steps} recovery steps")
                cfg = PruneConfig.from_flat(**base, recover_steps=args.recover_steps, recover_lr=args.recover_lr,
                                  recover_batch_size=args.batch_size,
                                  teacher_cache=str(args.work / "teacher-cache" / src_name))
                prune(src, out, cfg, train=train, eval_data=dev_path, force=True, progress=progress_printer(name))
            m = load_artifact(out).manifest.steps[-1].metrics
            nb = TorchBackend.from_teacher(load_teacher(norec), RuntimeSettings(threads=args.threads))
            results[name] = {
                "source": src_name, "heads_ratio": heads, "ffn_ratio": ffn, "seed": seed,
                "parameters": m["parameters_after"], "parameters_before": m["parameters_before"],
                "architecture": m["architecture"],
                "vocab": {k: m["vocab"][k] for k in ("before", "after")} | {"eval_coverage": m["vocab"].get("eval_coverage")}
                if "vocab" in m else None,
                "dev_accuracy_pytorch_no_recovery": accuracy(nb, dev),
                "dev_accuracy_pytorch_recovered": m["recovery"].get("eval_metric"),
                "recovery": {k: m["recovery"].get(k) for k in ("steps", "train_seconds", "teacher_cache_seconds",
                                                               "transfer_rows")},
                "prune_seconds": load_artifact(out).manifest.steps[-1].seconds,
            }
            nb.close()
            models[name] = out
            after = results[name]["dev_accuracy_pytorch_recovered"]
            log(f"{name}: {m['parameters_after'] / 1e6:.2f}M parameters, dev (PyTorch) "
                f"{results[name]['dev_accuracy_pytorch_no_recovery']:.4f} before recovery, "
                f"{'—' if after is None else format(after, '.4f')} after")

    # ONNX FP32 -> INT8 for every model, the same code path for all
    arts: dict[str, Path] = {}
    for name, src in models.items():
        fp32, int8 = args.work / "onnx" / f"{name}-fp32", args.work / "onnx" / f"{name}-int8"
        if args.rebuild or not is_artifact(fp32):
            export(src, fp32, ExportConfig(sample_data=str(dev_path), parity_samples=32), force=True)
        if args.rebuild or not is_artifact(int8):
            quantize(fp32, int8, QuantizeConfig.from_flat(sample_data=str(dev_path)), force=True)
        arts[name] = int8
        results[name]["onnx_fp32_size_mb"] = load_artifact(fp32).size_bytes() / 2**20
        results[name]["int8_size_mb"] = load_artifact(int8).size_bytes() / 2**20
        results[name]["pytorch_size_mb"] = sum(f.stat().st_size for f in Path(src).glob("*.safetensors")) / 2**20

    settings = RuntimeSettings(threads=args.threads)
    backends = {"teacher pytorch-fp32": TorchBackend.from_teacher(teacher, settings)}
    for name, path in arts.items():
        backends[f"{name} int8"] = load_runtime(load_artifact(path), "onnxruntime", settings)
    acc, acc_test = {}, {}
    for n, b in backends.items():
        acc[n] = accuracy(b, dev)
        acc_test[n] = accuracy(b, test) if test is not None else None
        log(f"{n}: dev {acc[n]:.4f}" + (f", test {acc_test[n]:.4f}" if test is not None else ""))
    text = " ".join(dev.texts[:20])
    fixed = {n: b.encode([text], pad_to=64) for n, b in backends.items()}  # each model with its own tokenizer
    log("timing batch 1 x 64 (all models interleaved) ...")
    stats = measure_interleaved({n: (lambda b=b, x=fixed[n]: b.run(x)) for n, b in backends.items()}, batch_size=1,
                                warmup=20, min_runs=args.min_runs, min_duration_s=args.min_duration)
    for b in backends.values():
        b.close()
    ref = stats["teacher pytorch-fp32"]
    teacher_mb = sum(f.stat().st_size for f in teacher_dir.glob("*.safetensors")) / 2**20
    baseline = {"dev_accuracy": acc["teacher pytorch-fp32"], "test_accuracy": acc_test["teacher pytorch-fp32"],
                "size_mb": teacher_mb, "p50_ms": ref.p50,
                "p95_ms": ref.p95, "n": ref.n, "cv": ref.cv}
    for name in models:
        s = stats[f"{name} int8"]
        results[name]["int8"] = {
            "dev_accuracy": acc[f"{name} int8"],
            "dev_retention_vs_teacher": acc[f"{name} int8"] / baseline["dev_accuracy"],
            "test_accuracy": acc_test[f"{name} int8"],
            "test_retention_vs_teacher": (acc_test[f"{name} int8"] / baseline["test_accuracy"]
                                          if test is not None else None),
            "p50_ms": s.p50, "p95_ms": s.p95, "n": s.n, "cv": s.cv,
            "p50_speedup_vs_teacher_pytorch_fp32": ref.p50 / s.p50,
            "size_ratio_vs_teacher_pytorch_fp32": teacher_mb / results[name]["int8_size_mb"],
        }

    payload = {
        "benchmark": "pruning",
        "data": str(args.data),
        "dev_rows": len(dev),
        "train": str(train),
        "levels": args.levels,
        "recover_steps": args.recover_steps,
        "seeds": seeds,
        "samples": args.samples,
        "vocab_corpus": None if args.no_vocab else str(train_full),
        "threads": args.threads,
        "teacher_pytorch_fp32": baseline,
        "results": results,
        "over_seeds": over_seeds(results),
        "seconds": round(time.perf_counter() - t_all, 1),
    }
    write_results(args.out, payload)
    print(table(baseline, results))
    if len(seeds) > 1:
        print(seed_table(baseline, payload["over_seeds"]))
    log(f"wrote {args.out}")


def table(baseline: dict, results: dict[str, dict]) -> str:
    lines = [
        ("| model | params | vocab | dev acc (PyTorch) no recovery / recovered | dev acc INT8 | retention | "
        "INT8 MB | size ratio | p50 ms | speed-up |"),
        "|---" * 10 + "|",
        (f"| teacher PyTorch FP32 | | | | {baseline['dev_accuracy']:.4f} | 1.000 | {baseline['size_mb']:.1f} | 1.0x | "
        f"{baseline['p50_ms']:.2f} | 1.00x |"),
    ]
    for name, r in results.items():
        i = r["int8"]
        no_rec = r.get("dev_accuracy_pytorch_no_recovery")
        rec = r.get("dev_accuracy_pytorch_recovered")
        accs = f"{no_rec:.4f} / {rec:.4f}" if no_rec is not None and rec is not None else "—"
        vocab = f"{r['vocab']['after']:,}" if r.get("vocab") else "—"
        lines.append(
            f"| {name} | {r['parameters'] / 1e6:.1f}M | {vocab} | {accs} | {i['dev_accuracy']:.4f} | "
            f"{i['dev_retention_vs_teacher']:.3f} | {r['int8_size_mb']:.1f} | "
            f"{i['size_ratio_vs_teacher_pytorch_fp32']:.1f}x | {i['p50_ms']:.2f} | "
            f"{i['p50_speedup_vs_teacher_pytorch_fp32']:.2f}x |"
        )
    return "\n".join(lines)


def over_seeds(results: dict[str, dict]) -> dict[str, dict]:
    """Pruned models grouped by source and level over their seeds: mean, min and max of the INT8 accuracies and
    retentions, the median p50 and speed-up, and the sizes (which depend on the seed only through the heads kept)."""
    groups: dict[str, list[dict]] = {}
    for r in results.values():
        if "seed" in r:
            groups.setdefault(f"{r['source']}-h{r['heads_ratio']:g}-f{r['ffn_ratio']:g}", []).append(r)
    out = {}
    for name, rs in groups.items():
        g = {"seeds": [r["seed"] for r in rs], "parameters": [r["parameters"] for r in rs],
             "heads_per_layer": [r["architecture"]["heads_per_layer"] for r in rs]}
        for key in ("dev_accuracy", "test_accuracy", "dev_retention_vs_teacher", "test_retention_vs_teacher"):
            vals = [r["int8"][key] for r in rs if r["int8"].get(key) is not None]
            if vals:
                g[key] = {"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals)}
        for key in ("dev_accuracy_pytorch_no_recovery", "dev_accuracy_pytorch_recovered"):
            vals = [r[key] for r in rs if r.get(key) is not None]
            if vals:
                g[key] = {"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals)}
        g["int8_size_mb"] = median(r["int8_size_mb"] for r in rs)
        g["size_ratio_vs_teacher_pytorch_fp32"] = median(
            r["int8"]["size_ratio_vs_teacher_pytorch_fp32"] for r in rs)
        g["p50_ms"] = median(r["int8"]["p50_ms"] for r in rs)
        g["p50_speedup_vs_teacher_pytorch_fp32"] = median(
            r["int8"]["p50_speedup_vs_teacher_pytorch_fp32"] for r in rs)
        out[name] = g
    return out


def seed_table(baseline: dict, groups: dict[str, dict]) -> str:
    def spread(g, key):
        v = g.get(key)
        return "—" if v is None else f"{v['mean']:.4f} ({v['min']:.4f}–{v['max']:.4f})"

    lines = ["| model | seeds | params | dev INT8 mean (min–max) | test INT8 mean (min–max) | dev / test retention | "
             "INT8 MB | smaller | p50 ms | faster |", "|---" * 10 + "|"]
    for name, g in groups.items():
        ret = f"{g['dev_retention_vs_teacher']['mean']:.3f} / " + (
            f"{g['test_retention_vs_teacher']['mean']:.3f}" if "test_retention_vs_teacher" in g else "—")
        lines.append(
            f"| {name} | {len(g['seeds'])} | {median(g['parameters']) / 1e6:.1f}M | "
            f"{spread(g, 'dev_accuracy')} | {spread(g, 'test_accuracy')} | {ret} | {g['int8_size_mb']:.1f} | "
            f"{g['size_ratio_vs_teacher_pytorch_fp32']:.1f}x | {g['p50_ms']:.2f} | "
            f"{g['p50_speedup_vs_teacher_pytorch_fp32']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
