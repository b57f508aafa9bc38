"""GPU check: the SST-2 teacher validated with the torch runtime on a CUDA GPU (FP32, FP16, BF16, torch.compile)
at batch 1 x 64 and 32 x 64, and a 3-layer student distilled on the GPU, against the CPU figures.

Run on a machine with a CUDA GPU (the nvidia-h100 profile is the parent of every run's profile):

    python benchmarks/devices/gpu.py --teacher benchmarks/.cache/sst2-minilm-l6-teacher --data ../shared/data/sst2

``--teacher`` may hold FP16 weights (a teacher carried at half size): they are upcast to FP32 first, so the
reference is the FP32 teacher. Accuracy and agreement are against that FP32 teacher run on the CPU (validate's
own reference). Distillation uses the settings of ``benchmarks/encoders/distillation.py``'s L3-distilled row (3 layers,
1 epoch, batch 32, eval every 300 steps), whose CPU figures (2 threads) are the comparison. Phases run in order
of importance until ``--budget-s`` is spent; the JSON is rewritten after each one.

``--smoke`` runs the same code on the CPU with tiny limits (checks the script, measures nothing).
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

# batch-1 runs carry the accuracy check; batch-32 runs time only
VARIANTS = [  # (name, options)
    ("fp32", {"dtype": "fp32"}),
    ("fp16", {"dtype": "fp16"}),
    ("bf16", {"dtype": "bf16"}),
    ("fp16+compile", {"dtype": "fp16", "compile": True}),
    ("fp32+compile", {"dtype": "fp32", "compile": True}),
]
CPU_DISTILL = HERE / "results" / "distillation.json"  # the CPU run this one is compared with


def profile_yaml(work: Path, name: str, options: dict, batch: int, provider: str, smoke: bool) -> Path:
    import yaml

    measure = {"batch_size": batch, "warmup": 50, "min_runs": 200, "min_duration_s": 3.0}
    if smoke:
        measure = {"batch_size": batch, "warmup": 2, "min_runs": 5, "min_duration_s": 0.1}
    doc = {"name": f"h100-torch-{name.replace('+', '-')}-b{batch}", "extends": "nvidia-h100",
           "runtime": {"name": "torch", "provider": provider, "options": options, "threads": min(24, os.cpu_count() or 1)},
           "measure": measure}
    path = work / "profiles" / f"{doc['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def validate_variant(teacher: Path, dev: Path, work: Path, name: str, options: dict, batch: int, args) -> dict:
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    provider = "cpu" if args.smoke else "cuda"
    prof = profile_yaml(work, name, options, batch, provider, args.smoke)
    with_data = batch == 1
    t0 = time.perf_counter()
    report = validate(teacher, ValidateConfig.from_flat(
        profile=str(prof), data=str(dev) if with_data else None, limit=args.limit, baseline=False,
        cold_start=with_data and name == "fp16" or (args.smoke and name == "fp32"), estimate="never"))
    m = report.metrics
    row = {"variant": name, "batch": batch, "verdict": report.verdict, "wall_s": round(time.perf_counter() - t0, 1),
           "latency_ms": {k: m["latency_ms"][k] for k in ("n", "p50", "p95", "p99", "cv")},
           "throughput": m.get("throughput"), "runtime": report.environment["runtime"],
           "failed_budgets": [b.name for b in report.budgets if b.passed is False]}
    for key in ("metric_name", "metric", "teacher_metric", "retention", "agreement", "output_cosine", "cold_start_ms",
                "peak_rss_mb"):
        if key in m:
            row[key] = m[key]
    if not args.smoke:
        import torch

        row["gpu_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        torch.cuda.reset_peak_memory_stats()
    return row


def distill_run(teacher: Path, data: Path, work: Path, precision: str, args) -> dict:
    from compress.stages.distill import distill
    from compress.stages.distill.config import DistillConfig

    out = work / f"student-L3-{precision}"
    cfg = DistillConfig.from_flat(layers=3, epochs=1.0, eval_every=300, mixed_precision=precision,
                        max_steps=20 if args.smoke else None)
    train = data / "train.tsv"
    if args.smoke:
        from benchmarks.harness.data import subset_tsv

        train = subset_tsv(train, work / "train-small.tsv", 640)
    t0 = time.perf_counter()
    r = distill(teacher, train, out, cfg, eval_data=data / "dev.tsv", force=True,
                teacher_cache=work / "teacher-cache")
    m = r.metrics
    row = {k: m.get(k) for k in ("steps", "train_seconds", "teacher_cache_seconds", "eval_metric",
                                 "teacher_eval_metric", "retention", "chosen", "mixed_precision")}
    row["history"] = [(h["step"], round(h["metric"], 4)) for h in m.get("history", [])]
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    row["steps_per_s"] = round(m["steps"] / m["train_seconds"], 2) if m.get("train_seconds") else None
    if not args.smoke:
        import torch

        row["gpu_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        torch.cuda.reset_peak_memory_stats()
    return row


def cpu_reference() -> dict | None:
    """The CPU run of the same distillation (benchmarks/encoders/distillation.py, 2 threads): steps/s and dev accuracy."""
    if not CPU_DISTILL.is_file():
        return None
    d = json.loads(CPU_DISTILL.read_text())
    r = d["results"].get("L3-distilled")
    if not r:
        return None
    return {"host": d["host"]["cpu"], "threads": d["threads"], "steps": r["steps"], "train_seconds": r["train_seconds"],
            "steps_per_s": round(r["steps"] / r["train_seconds"], 2), "dev_accuracy": r["fp32"]["dev_accuracy"],
            "teacher_cache_seconds": r["teacher_cache_seconds"], "chosen": r["chosen"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", type=Path, default=HERE / ".cache" / "sst2-minilm-l6-teacher")
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "sst2")
    ap.add_argument("--work", type=Path, default=HERE / ".cache" / "gpu")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gpu.json")
    ap.add_argument("--budget-s", type=float, default=600.0, help="start no phase after this many seconds")
    ap.add_argument("--limit", type=int, default=None, help="dev rows for the accuracy check (default: all)")
    ap.add_argument("--phases", default="validate,distill,distill-fp32,compile",
                    help="comma-separated, in this order of importance")
    ap.add_argument("--smoke", action="store_true", help="on the CPU with tiny limits: checks the script only")
    args = ap.parse_args()
    t_all = time.perf_counter()
    import compress  # noqa: F401  (before torchvision-touching imports)
    from benchmarks.harness.results import Phases, cuda_machine
    from benchmarks.harness.teachers import fp32_teacher

    if args.smoke:
        global VARIANTS
        VARIANTS = [v for v in VARIANTS if v[0] in ("fp32", "bf16", "fp32+compile")]
        args.limit = args.limit or 32
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    teacher = fp32_teacher(args.teacher, work / "teacher-fp32")
    result = {"benchmark": "gpu", "machine": cuda_machine(), "teacher": str(args.teacher), "data": str(args.data),
              "validate": [], "distill": {}, "cpu_distill": cpu_reference(), "errors": []}

    run = Phases(result, args.out, args.budget_s, "gpu", t0=t_all)

    phases = args.phases.split(",")
    dev = args.data / "dev.tsv"

    def run_variants(names):
        for name, options in VARIANTS:
            if name not in names:
                continue
            for batch in (1, 32):
                row = run.run(f"validate {name} b{batch}",
                           lambda name=name, options=options, batch=batch: validate_variant(
                               teacher, dev, work, name, options, batch, args))
                if row:
                    result["validate"].append(row)

    plain = [n for n, o in VARIANTS if not o.get("compile")]
    if "validate" in phases:
        run_variants(plain)
    if "distill" in phases:
        auto = "no" if args.smoke else "bf16"
        result["distill"][auto] = run.run(f"distill L3 ({auto})", lambda: distill_run(teacher, args.data, work, auto, args))
    if "distill-fp32" in phases and not args.smoke:
        result["distill"]["no"] = run.run("distill L3 (fp32)", lambda: distill_run(teacher, args.data, work, "no", args))
    if "compile" in phases:
        run_variants([n for n, o in VARIANTS if o.get("compile")])
    run.done()


if __name__ == "__main__":
    main()
