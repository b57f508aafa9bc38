"""Decode speed of the ONNX Runtime route's weight-only artifacts by MatMulNBits accuracy level: a Llama with
SmolLM2-135M's body (30 layers, 576 wide, GQA 9/3, random weights, 512-token vocabulary: speed does not depend on the
weights' values), FP32 (ONNX Runtime GenAI's builder) against INT4 and INT8 (blocks of 32) at accuracy level 0 (float
compute) and 4 (int8 activations), 2 threads, a 128-token prompt then 32 greedy tokens through the KV cache, in
alternating rounds (the median of 3). Writes benchmarks/results/lm_onnx_decode.json.

    python benchmarks/generators/lm_onnx_decode.py --work /tmp/lm-onnx-decode
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import compress  # noqa: F401 - first: the torchvision shim before transformers

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # tests.builders, benchmarks.harness
from benchmarks.harness.lm import OrtDirect
from benchmarks.harness.results import write_results
from benchmarks.harness.timing import median, side_by_side


def decode_rate(anchor: OrtDirect, new_tokens: int = 32, prompt: int = 128) -> float:
    """Tokens per second of ``new_tokens`` greedy steps after a ``prompt``-token prefill (the prefill not counted)."""
    got = anchor.generate([(i % 500) + 3 for i in range(prompt)], new_tokens + 1, timed=True)
    return new_tokens / sum(got.seconds[1:])


def main() -> None:
    import copy

    import onnx
    import onnxruntime as ort

    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.quantize.lm.onnx import weight_only
    from tests.builders.lm import tiny_causal_lm

    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/lm-onnx-decode")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    work = Path(args.work)
    ckpt = work / "ckpt"
    if not (ckpt / "config.json").exists():
        tiny_causal_lm(ckpt, layers=30, hidden=576, heads=9, kv_heads=3, intermediate=1536, context=2048)
    fp32_dir = work / "fp32"
    if not fp32_dir.exists():
        export(ckpt, fp32_dir, ExportConfig(format="onnx"))
    fp32 = onnx.load(str(fp32_dir / "model.onnx"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
    sessions = {"FP32": OrtDirect(ort.InferenceSession(str(fp32_dir / "model.onnx"), opts,
                                                     providers=["CPUExecutionProvider"]))}
    for bits in (4, 8):
        for level in (0, 4):
            model, _ = weight_only(copy.deepcopy(fp32), bits=bits, block=32, accuracy_level=level)
            sessions[f"INT{bits} accuracy level {level}"] = OrtDirect(ort.InferenceSession(
                model.SerializeToString(), opts, providers=["CPUExecutionProvider"]))
    rates = side_by_side({k: (lambda s=s: decode_rate(s)) for k, s in sessions.items()}, 3, warmup=0)
    rows = [{"name": k, "decode_tokens_per_s": median(v), "rounds": v} for k, v in rates.items()]
    for r in rows:
        print(f"{r['name']:28s} {r['decode_tokens_per_s']:.1f} tokens/s", flush=True)
    write_results("lm_onnx_decode", {"model": "SmolLM2-135M body, random weights, vocabulary 512",
                                     "threads": args.threads, "prompt_tokens": 128, "new_tokens": 32, "rows": rows})


if __name__ == "__main__":
    main()
