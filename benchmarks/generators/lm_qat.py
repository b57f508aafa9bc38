"""Quantization-aware INT4 against post-training INT4 on stories260K (the ONNX Runtime route): how much of the
perplexity round-to-nearest INT4 loses does QAT win back?

The TinyStories sample is split by its lines: the first 80% (lines 1-3488, about 400 stories) is the QAT transfer
text (``--qat-data``), the rest (lines 3489-4360) the evaluation text, never trained on. Each artifact (FP32, INT4
RTN as ``quantize --precision int4`` makes it, and INT4 after ``--qat-steps``, each variant below) is scored by the
same stream as docs/guides/lm.md's tables over the evaluation windows of 256 tokens (llama-perplexity's rule: the
second half of each window scored), KL and top-1 agreement against the FP32 graph. Writes
benchmarks/results/lm_qat.json.

    OMP_NUM_THREADS=1 python benchmarks/generators/lm_qat.py --work /tmp/lm-qat
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import compress  # noqa: F401 - first: the torchvision shim before transformers

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # benchmarks.harness
from benchmarks.harness.results import write_results

SHARED = ROOT.parent / "shared"
SPLIT = 3488  #: lines of the sample trained on; the rest is evaluated
VARIANTS = {  # name -> quantize's QAT settings (flat keys)
    "QAT INT4, all weights": dict(qat_steps=400, qat_batch_size=4),
    "QAT INT4, LoRA rank 8": dict(qat_steps=400, qat_batch_size=4, qat_lora_rank=8, qat_lr=1e-3),
    "QAT INT4, LoRA rank 8, lr 3e-3": dict(qat_steps=400, qat_batch_size=4, qat_lora_rank=8, qat_lr=3e-3),
    "QAT INT4, LoRA rank 8, lr 1e-2": dict(qat_steps=400, qat_batch_size=4, qat_lora_rank=8, qat_lr=1e-2),
}


def main() -> None:
    import onnx

    from compress.artifact import load_artifact
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.stages.quantize.lm import onnx as lm
    from compress.stages.quantize.lm.common import text_windows

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(SHARED / "models" / "stories260K" / "hf"))
    ap.add_argument("--text", default=str(SHARED / "data" / "tinystories" / "valid-first500.txt"))
    ap.add_argument("--work", default="/tmp/lm-qat")
    ap.add_argument("--only", help="run only the variants whose name contains this")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lines = Path(args.text).read_text(encoding="utf-8").splitlines(keepends=True)
    (work / "train.txt").write_text("".join(lines[:SPLIT]), encoding="utf-8")
    (work / "eval.txt").write_text("".join(lines[SPLIT:]), encoding="utf-8")
    fp32_dir = work / "fp32"
    art = load_artifact(fp32_dir) if fp32_dir.exists() else export(args.model, fp32_dir, ExportConfig(format="onnx"))
    windows = text_windows(art, str(work / "eval.txt"), 256, 100_000)
    state = lm._state_for(art)
    base, ref = lm.window_scores(onnx.load(str(art.path / "model.onnx")), windows, state)
    rows = [{"name": "FP32 (GenAI builder)", "perplexity": base["perplexity"]}]
    runs = {"INT4 RTN (post-training, quantize's default)": {}}
    runs.update({k: v for k, v in VARIANTS.items() if not args.only or args.only in k})
    for name, settings in runs.items():
        out = work / re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        t0, made = time.perf_counter(), not out.exists()
        q = load_artifact(out) if not made else quantize(
            art, out, QuantizeConfig.from_flat(precision="int4", **settings,
                                               **({"qat_data": str(work / "train.txt")} if settings else {})))
        seconds = time.perf_counter() - t0
        s, _ = lm.window_scores(onnx.load(str(q.path / "model.onnx")), windows, state, ref)
        qat = q.manifest.steps[-1].metrics.get("qat")
        rows.append({"name": name, "perplexity": s["perplexity"], "kl_mean": s["kl_mean"],
                     "top1_agreement": s["top1_agreement"], "seconds": round(seconds, 1) if made else None, "settings": settings,
                     **({"qat": {k: qat[k] for k in ("train_windows", "held_out_windows", "best_step", "before",
                                                     "best", "teacher_perplexity", "train_seconds", "trained")}}
                        if qat else {})})
        print(json.dumps(rows[-1]), flush=True)
    ptq = next(r for r in rows if r["name"].startswith("INT4 RTN"))["perplexity"]
    for r in rows[1:]:
        r["vs_fp32"] = r["perplexity"] / base["perplexity"] - 1
        r["recovered"] = (ptq - r["perplexity"]) / (ptq - base["perplexity"])  # of what post-training INT4 loses
    result = {"model": args.model, "text": args.text, "train_lines": f"1-{SPLIT}",
              "eval_lines": f"{SPLIT + 1}-{len(lines)}", "eval_windows": len(windows), "window": 256,
              "scored_tokens": base["tokens"] if "tokens" in base else None, "rows": rows}
    dest = ROOT / "benchmarks" / "results" / "lm_qat.json"
    write_results(dest, result)
    for r in rows:
        print(f"{r['name']:45s} ppl {r['perplexity']:.4f} {r.get('vs_fp32', 0):+.2%} "
              f"recovered {r.get('recovered', float('nan')):.0%}")


if __name__ == "__main__":
    main()
