"""What recovering after vocabulary pruning buys, over a few seeds (issue: prune reported an accuracy its
artifact did not have).

The SST-2 MiniLM-L6 teacher is pruned with ``--heads H --ffn F --vocab-corpus CORPUS --recover-steps N
--train train.tsv`` twice per seed: the default order (vocabulary pruned first, recovery distils through the pruned tokenizer)
and ``--recover-before-vocab`` (recovery with the original tokenizer, vocabulary pruned afterwards, exact on
the corpus only). Every written model is scored as written (PyTorch FP32, its own tokenizer) on SST-2 dev
and test, against the teacher on the same rows.

When the recovery data is inside the vocabulary corpus (``CORPUS`` = train.tsv, the recipe in docs/guides/prune.md) the two
orders give bit-identical models: vocabulary pruning is exact on the corpus, so recovery sees the same
inputs either way. They differ when the corpus is smaller than the recovery data (``--corpus-rows N``: a
random N-row subset of train.tsv): recovery then meets text outside the corpus, split the new way.

    python benchmarks/encoders/vocab_recovery.py --data ../shared/data/sst2 [--seeds 0,1,2] [--recover-steps 300]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness

from benchmarks.harness.results import write_results
from benchmarks.harness.teachers import DEFAULT_DATA, DEFAULT_OUT, ensure_teacher


def log(msg: str) -> None:
    print(f"[vocab-recovery] {msg}", file=sys.stderr, flush=True)


def read(path: Path) -> tuple[list[str], list[int]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


def accuracy(path: Path, texts: list[str], labels: list[int]) -> float:
    import torch

    from compress.teachers.load import load_teacher, model_feed

    t = load_teacher(path)
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(texts), 64):
            enc = t.tokenizer(texts[i:i + 64], padding=True, truncation=True, max_length=128, return_tensors="pt")
            pred = t.model(**model_feed(t.model, dict(enc))).logits.argmax(-1).tolist()
            correct += sum(int(p == y) for p, y in zip(pred, labels[i:i + 64]))
    return correct / len(texts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--teacher", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--heads", type=float, default=0.3)
    ap.add_argument("--ffn", type=float, default=0.3)
    ap.add_argument("--recover-steps", type=int, default=300)
    ap.add_argument("--corpus-rows", type=int, default=0, help="vocabulary corpus: N random train rows (0: all)")
    ap.add_argument("--work", type=Path, default=HERE / ".cache" / "vocab-recovery")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "vocab_recovery.json")
    args = ap.parse_args()

    from compress import PruneConfig, prune

    teacher = ensure_teacher(args.data, args.teacher)
    dev, test = read(args.data / "dev.tsv"), read(args.data / "test.tsv")
    base = {"dev": accuracy(teacher, *dev), "test": accuracy(teacher, *test)}
    log(f"teacher dev {base['dev']:.4f} test {base['test']:.4f}")
    corpus = args.data / "train.tsv"
    if args.corpus_rows:
        from benchmarks.harness.data import subset_tsv

        args.work.mkdir(parents=True, exist_ok=True)
        corpus = subset_tsv(corpus, args.work / f"corpus-{args.corpus_rows}.tsv", args.corpus_rows, seed=0)
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for after in (True, False):
            name = f"seed{seed}-{'vocab-then-recover' if after else 'recover-then-vocab'}"
            out = args.work / name
            t0 = time.perf_counter()
            if not (out / "manifest.json").is_file():
                cfg = PruneConfig.from_flat(heads=args.heads, ffn=args.ffn, vocab_corpus=str(corpus),
                                  recover_steps=args.recover_steps, recover_after_vocab=after, seed=seed,
                                  teacher_cache=str(args.work / f"teacher-cache-seed{seed}"))
                prune(teacher, out, cfg, train=args.data / "train.tsv", eval_data=args.data / "dev.tsv", force=True)
            acc = {"dev": accuracy(out, *dev), "test": accuracy(out, *test)}
            run = {"seed": seed, "order": "vocab-then-recover" if after else "recover-then-vocab",
                   "dev": acc["dev"], "test": acc["test"],
                   "retention_dev": acc["dev"] / base["dev"], "retention_test": acc["test"] / base["test"],
                   "seconds": round(time.perf_counter() - t0, 1)}
            runs.append(run)
            log(json.dumps(run))
    summary = {}
    for order in ("vocab-then-recover", "recover-then-vocab"):
        rs = [r for r in runs if r["order"] == order]
        summary[order] = {k: {"mean": statistics.mean(r[k] for r in rs), "min": min(r[k] for r in rs),
                              "max": max(r[k] for r in rs)} for k in ("dev", "test", "retention_dev", "retention_test")}
    result = {"what": __doc__.strip().splitlines()[0], "teacher": base, "heads": args.heads, "ffn": args.ffn,
              "vocab_corpus": str(corpus), "corpus_rows": args.corpus_rows or "all",
              "recover_steps": args.recover_steps, "runs": runs, "summary": summary}
    write_results(args.out, result)
    log(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
