"""The ONNX Runtime route's INT4/INT8 quality on stories260K: perplexity, KL and top-1 agreement with FP32 over the
TinyStories sample in windows of 256 (llama-perplexity's rule: the second half of each window scored). Exports the
checkpoint (ONNX Runtime GenAI's builder), quantizes it each way through ``weight_only`` (at quantize's
MatMulNBits accuracy level), scores each candidate
against the FP32 graph's log-probabilities. Writes benchmarks/results/lm_onnx_quality.json.

    python benchmarks/generators/lm_onnx_quality.py --work /tmp/lm-onnx
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import compress  # noqa: F401 - first: the torchvision shim before transformers

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # benchmarks.harness
from benchmarks.harness.results import write_results

SHARED = ROOT.parent / "shared"
VARIANTS = {  # name -> weight_only's arguments
    "INT8 weight-only, blocks of 32": dict(bits=8, block=32),
    "INT4 RTN, blocks of 32": dict(bits=4, block=32),
    "INT4 RTN, blocks of 128": dict(bits=4, block=128),
    "INT4 HQQ, blocks of 32": dict(bits=4, block=32, algorithm="hqq"),
    "INT4 GPTQ, blocks of 32": dict(bits=4, block=32, algorithm="gptq"),
    "INT4 k_quant": dict(bits=4, block=32, algorithm="k_quant"),
    "INT4 RTN, head and embeddings at 4 bits too": dict(bits=4, block=32, lm_head_bits=4, embeddings_bits=4),
}


def main() -> None:
    import onnx

    from compress.artifact import load_artifact
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.quantize.lm import onnx as lm
    from compress.stages.quantize.lm.common import text_windows

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(SHARED / "models" / "stories260K" / "hf"))
    ap.add_argument("--text", default=str(SHARED / "data" / "tinystories" / "valid-first500.txt"))
    ap.add_argument("--work", default="/tmp/lm-onnx")
    ap.add_argument("--window", type=int, default=256)
    args = ap.parse_args()
    fp32_dir = Path(args.work) / "fp32"
    art = load_artifact(fp32_dir) if fp32_dir.exists() else export(args.model, fp32_dir, ExportConfig(format="onnx"))
    windows = text_windows(art, args.text, args.window, 100_000)
    state = lm._state_for(art)
    fp32 = onnx.load(str(art.path / "model.onnx"))
    base, ref = lm.window_scores(fp32, windows, state)
    weights = lambda m: sum(t.ByteSize() for t in m.graph.initializer)  # noqa: E731
    rows = [{"name": "FP32 (GenAI builder)", "perplexity": base["perplexity"], "weight_bytes": weights(fp32)}]
    for name, kw in VARIANTS.items():
        t0 = time.perf_counter()
        reader = None
        if kw.get("algorithm") == "gptq":
            reader = lm._Windows([list(w[:128]) for w in windows[:16]], state, {t.name for t in art.manifest.inputs})
        model, _ = lm.weight_only(copy.deepcopy(fp32), reader=reader, accuracy_level=lm.ACCURACY_LEVEL, **kw)
        s, _ = lm.window_scores(model, windows, state, ref)
        rows.append({"name": name, "perplexity": s["perplexity"], "increase": s["perplexity"] / base["perplexity"] - 1,
                     "kl_mean": s["kl_mean"], "top1_agreement": s["top1_agreement"], "weight_bytes": weights(model),
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(rows[-1], flush=True)
    write_results("lm_onnx_quality", {"model": args.model, "text": args.text, "window": args.window,
                                      "windows": len(windows), "scored_tokens": base["tokens"], "rows": rows})


if __name__ == "__main__":
    main()
