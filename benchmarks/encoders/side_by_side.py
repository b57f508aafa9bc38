"""Students against the PyTorch FP32 teacher, side by side: dev and test accuracy and retention, size, and p50 at
batch 1 × 64 tokens with the teacher and every student timed in alternating rounds in one process (the issue's
"≥ 15× smaller and faster at ≥ 99% dev / ≥ 98.5% test retention" is judged on these figures).

    python benchmarks/encoders/side_by_side.py --teacher benchmarks/.cache/sst2-minilm-l6-teacher \\
        NAME=ARTIFACT[@THREADS] [NAME=ARTIFACT ...] [--data ../shared/data/sst2] [--threads 2] [--seconds 10] \\
        [--out results.json]

Retention is student accuracy / teacher accuracy on the same split; sizes are the artifacts' model files against
the teacher's safetensors (MB = 10^6 bytes). ``@THREADS`` runs that student on its own intra-op thread count (the
teacher and the others keep ``--threads``): a deployment choice the search's ``threads`` dimension makes too.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness

from benchmarks.harness.data import accuracy
from benchmarks.harness.results import write_results
from benchmarks.harness.teachers import DEFAULT_DATA


def main(argv: list[str] | None = None) -> dict:
    from compress.artifact import load_artifact
    from compress.data.tables import load_dataset
    from compress.host.measure import measure_interleaved
    from compress.runtimes.base import RuntimeSettings, load_runtime
    from compress.teachers.load import load_source
    from compress.validation.common import latency_texts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True, type=Path)
    ap.add_argument("students", nargs="+", help="NAME=ARTIFACT_DIR[@THREADS]")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="directory with dev.tsv and test.tsv")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0, help="timed work per model (at least 300 runs each)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    teacher = load_source(str(args.teacher))
    specs = {name: (path.rsplit("@", 1) + [args.threads])[:2] for name, path in (s.split("=", 1) for s in args.students)}
    models = {"teacher (PyTorch FP32)": (teacher, "torch", args.threads)}
    models.update({name: (load_artifact(path), None, int(threads)) for name, (path, threads) in specs.items()})
    backends = {name: load_runtime(art, rt, RuntimeSettings(threads=threads)) for name, (art, rt, threads) in models.items()}
    label2id = {n: i for i, n in enumerate(teacher.manifest.labels)}
    splits = {s: load_dataset(args.data / f"{s}.tsv", label2id=label2id) for s in ("dev", "test")}
    acc = {name: {s: accuracy(b, ds) for s, ds in splits.items()} for name, b in backends.items()}

    texts = latency_texts(list(splits["dev"].inputs), 1, 64, None)  # real sentences, as validate times them
    feeds = {name: b.encode(texts, pad_to=64) for name, b in backends.items()}
    stats = measure_interleaved({n: (lambda b=b, x=feeds[n]: b.run(x)) for n, b in backends.items()}, batch_size=1,
                                warmup=30, min_runs=300, min_duration_s=args.seconds, rounds=20)
    t_name = "teacher (PyTorch FP32)"
    t_size = sum(f.stat().st_size for f in Path(args.teacher).glob("*.safetensors"))
    rows = {}
    for name, (art, _, threads) in models.items():
        size = t_size if name == t_name else art.size_bytes()
        rows[name] = {
            "dev_accuracy": round(acc[name]["dev"], 4), "test_accuracy": round(acc[name]["test"], 4),
            "dev_retention": round(acc[name]["dev"] / acc[t_name]["dev"], 4),
            "test_retention": round(acc[name]["test"] / acc[t_name]["test"], 4),
            "size_mb": round(size / 1e6, 2), "smaller": round(t_size / size, 1),
            "p50_ms": round(stats[name].p50, 3), "p95_ms": round(stats[name].p95, 3), "runs": stats[name].n,
            "faster": round(stats[t_name].p50 / stats[name].p50, 1), "threads": threads,
        }
    for b in backends.values():
        b.close()
    print(f"{'':28s} {'dev':>6s} {'test':>6s} {'dev ret':>7s} {'test ret':>8s} {'MB':>6s} {'smaller':>7s} "
          f"{'p50 ms':>7s} {'p95 ms':>7s} {'faster':>6s}")
    for name, r in rows.items():
        print(f"{name:28s} {r['dev_accuracy']:6.4f} {r['test_accuracy']:6.4f} {r['dev_retention']:7.4f} "
              f"{r['test_retention']:8.4f} {r['size_mb']:6.2f} {r['smaller']:6.1f}x {r['p50_ms']:7.3f} "
              f"{r['p95_ms']:7.3f} {r['faster']:5.1f}x")
    result = {"benchmark": "side_by_side", "batch": "1 x 64 tokens", "threads": args.threads, "models": rows,
              "artifacts": {n: p for n, (p, _) in specs.items()}}
    if args.out:
        write_results(args.out, result)
    return result


if __name__ == "__main__":
    main()
