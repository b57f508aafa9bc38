"""How wrong is the generator estimate? Bandwidth-bound decode estimate vs measured decode tokens/s on this host.

    python benchmarks/generators/generation_estimate.py [--threads 2] [--prompt 128] [--new 64] [--repeats 3] [--no-onnx] \
        [--out benchmarks/results/generation_estimate.json]

1. This host's bandwidth: a numpy copy of a 1 GiB float32 array into another, the median of ``--copies`` copies,
   counting bytes read plus bytes written (2 GiB per copy), as STREAM's Copy does. numpy copies on one thread.
2. A SmolLM2-135M-shaped Llama with random weights (test material, says nothing of quality): hidden 576, 30 layers,
   9 heads, 3 KV heads, intermediate 1536, vocabulary 512 (stories260K's size, so the embedding is small and the
   layers dominate as in the real model), tied embeddings; ~106.5 M parameters, 426 MB FP32.
3. Measured: a prompt of ``--prompt`` tokens, then ``--new`` greedy tokens with the KV cache, ``--repeats`` times,
   in PyTorch FP32 (``torch.set_num_threads(--threads)``) and, unless ``--no-onnx``, in ONNX Runtime (the ONNX
   Runtime GenAI builder's FP32 export, as ``edgecompress export --format onnx`` makes it; ``--threads`` intra-op
   threads). Decode tokens/s = new tokens / the decode steps' time; the JSON has every run; the figure is the
   fastest run's (the machine is shared: contention only adds time), the median, and the fastest single decode
   step (each step is timed: on a loaded machine the quietest step is closest to the uncontended speed).
4. Estimated: :func:`compress.estimates.generation.estimate_generation` on this host's peaks (``host_peaks`` with
   the measured bandwidth) at the middle of the generation (context = prompt + new / 2).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.harness.results import write_results
from benchmarks.harness.timing import median

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import compress  # noqa: F401 - the torchvision shim before transformers

SHAPE = dict(vocab_size=512, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
             num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=1,
             eos_token_id=2, rms_norm_eps=1e-5)


def copy_bandwidth(gib: float = 1.0, copies: int = 5) -> dict:
    """GB/s of numpy copies of a ``gib`` GiB array (read + write bytes), every copy's figure and the median."""
    src = np.ones(int(gib * (1 << 30)) // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in
    runs = []
    for _ in range(copies):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        runs.append(2 * src.nbytes / (time.perf_counter() - t0) / 1e9)
    return {"median_gbs": round(median(runs), 2), "runs_gbs": [round(r, 2) for r in runs],
            "bytes_per_copy": 2 * src.nbytes, "counted": "read + write (STREAM Copy)", "threads": 1}


def make_model(out: Path) -> Path:
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE)).eval()
    model.save_pretrained(out)
    import shutil

    from tests.builders.lm import STORIES, TOKENIZER_FILES  # stories260K's tokenizer (vocabulary 512)
    for name in TOKENIZER_FILES:
        shutil.copy(STORIES / name, out / name)
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}) + "\n")
    return out


def time_torch(folder: Path, prompt: list[int], new: int, repeats: int, threads: int) -> list[dict]:
    from benchmarks.harness.lm import TorchDirect

    return timed_runs(TorchDirect(folder, threads), prompt, new, repeats)


def timed_runs(anchor, prompt: list[int], new: int, repeats: int) -> list[dict]:
    """``repeats`` greedy generations of ``new`` tokens after the prompt's (a first run warms up), through the runtime
    contract's ``generate``: TTFT (the prefill and its pick), decode rate and the fastest and median step."""
    runs = []
    for _ in range(repeats + 1):
        got = anchor.generate(prompt, new + 1, timed=True)
        steps = got.seconds[1:]
        runs.append({"ttft_ms": got.seconds[0] * 1e3, "decode_tokens_per_s": new / sum(steps),
                     "step_ms_min": min(steps) * 1e3, "step_ms_median": median(steps) * 1e3})
    return runs[1:]


def time_matvecs(folder: Path, threads: int, repeats: int = 5) -> dict:
    """The decode's matrix-vector products alone (every 2-D weight times a vector, torch.mv, ``threads`` threads): what
    the kernels reach on this host's memory without attention, caches of the framework or Python between ops."""
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(threads)
    weights = [w.contiguous() for f in sorted(folder.glob("*.safetensors")) for w in load_file(str(f)).values()
               if w.ndim == 2]
    xs = {w.shape[1]: torch.ones(w.shape[1]) for w in weights}
    best = float("inf")
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        for w in weights:
            torch.mv(w, xs[w.shape[1]])
        best = min(best, time.perf_counter() - t0)
    nbytes = sum(w.numel() * w.element_size() for w in weights)
    return {"ms_per_token_best": round(best * 1e3, 3), "tokens_per_s_best": round(1 / best, 2),
            "gbs": round(nbytes / best / 1e9, 2), "weight_bytes": nbytes}


def time_ort(onnx_dir: Path, prompt: list[int], new: int, repeats: int, threads: int) -> list[dict]:
    import onnxruntime as ort

    from benchmarks.harness.lm import OrtDirect

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    return timed_runs(OrtDirect(sess), prompt, new, repeats)


def time_int4(onnx_dir: Path, out: Path, peaks, prompt: list[int], args) -> dict:
    """The FP32 ONNX model's MatMuls to weight-only INT4 (MatMulNBits), then its estimate and decode timing."""
    import shutil

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from compress.estimates.generation import estimate_generation

    q = MatMulNBitsQuantizer(onnx.load(str(onnx_dir / "model.onnx")), block_size=32, is_symmetric=True,
                             accuracy_level=4)
    q.process()
    out.mkdir()
    shutil.copy(onnx_dir / "genai_config.json", out / "genai_config.json")
    q.model.save_model_to_file(str(out / "model.onnx"), use_external_data_format=True)
    est = estimate_generation(out / "model.onnx", peaks=peaks, prompt_tokens=args.prompt, new_tokens=args.new)
    return {"quantizer": "MatMulNBits, 4 bits, blocks of 32, symmetric, accuracy_level 4", "estimate": est.as_dict(),
            **summary(time_ort(out, prompt, args.new, args.repeats, args.threads), est)}


def summary(runs: list[dict], est) -> dict:
    best = max(r["decode_tokens_per_s"] for r in runs)
    med = median(r["decode_tokens_per_s"] for r in runs)
    ttft = min(r["ttft_ms"] for r in runs)
    fastest = 1000.0 / min(r["step_ms_min"] for r in runs)  # contention only adds time: the quietest step
    return {"decode_tokens_per_s_fastest_step": round(fastest, 2),
            "estimate_over_measured_fastest_step": round(est.decode_tokens_per_s / fastest, 3),"runs": [{k: round(v, 3) for k, v in r.items()} for r in runs],
            "decode_tokens_per_s_best": round(best, 2), "decode_tokens_per_s_median": round(med, 2),
            "ttft_ms_best": round(ttft, 2),
            "estimate_over_measured_decode_best": round(est.decode_tokens_per_s / best, 3),
            "estimate_over_measured_decode_median": round(est.decode_tokens_per_s / med, 3),
            "estimate_over_measured_ttft_best": round(est.time_to_first_token_ms / ttft, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--copies", type=int, default=5)
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch (and the matvecs)")
    ap.add_argument("--int4", action="store_true",
                    help="also the ONNX model with weight-only INT4 MatMulNBits (blocks of 32, symmetric, "
                    "accuracy_level 4), timed right after the FP32 one")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "generation_estimate.json")
    args = ap.parse_args(argv)

    from compress.estimates.generation import estimate_generation, model_facts
    from compress.estimates.roofline import host_peaks

    bw = copy_bandwidth(copies=args.copies)
    print(f"bandwidth: {bw['median_gbs']} GB/s (median of {bw['runs_gbs']})", flush=True)
    peaks = host_peaks(bandwidth_gbs=bw["median_gbs"])
    result: dict = {"host": {"cpu": platform.processor() or platform.machine(), "peaks": peaks.__dict__,
                             "bandwidth": bw, "load_average": os.getloadavg()},
                    "model": {"shape": SHAPE, "weights": "random (test material)"},
                    "prompt_tokens": args.prompt, "new_tokens": args.new, "threads": args.threads}
    prompt = [1] + [int(x) for x in np.random.default_rng(0).integers(3, 512, args.prompt - 1)]
    with tempfile.TemporaryDirectory(prefix="gen-estimate.") as tmp:
        folder = make_model(Path(tmp) / "hf")
        est = estimate_generation(folder, peaks=peaks, prompt_tokens=args.prompt, new_tokens=args.new)
        facts = model_facts(folder)
        result["model"].update(parameters=facts.parameters, weight_bytes=facts.weight_bytes)
        result["estimate_torch"] = est.as_dict()
        print(f"estimate (safetensors): {est.decode_tokens_per_s:.1f} tok/s decode, TTFT "
              f"{est.time_to_first_token_ms:.1f} ms ({est.weight_mb:.1f} MB weights)", flush=True)
        if not args.no_torch:
            result["matvecs_torch"] = time_matvecs(folder, args.threads)
            print("matvecs alone:", json.dumps(result["matvecs_torch"]), flush=True)
            result["pytorch_fp32"] = summary(time_torch(folder, prompt, args.new, args.repeats, args.threads), est)
            print("pytorch:", json.dumps({k: v for k, v in result["pytorch_fp32"].items() if k != "runs"}),
                  flush=True)
        if not args.no_onnx:
            from compress.stages.export.lm.onnx import build_genai

            onnx_dir = Path(tmp) / "onnx"
            onnx_dir.mkdir()
            (Path(tmp) / "cache").mkdir()
            result["onnx_build"] = build_genai(folder, onnx_dir, Path(tmp) / "cache")
            est_onnx = estimate_generation(onnx_dir / "model.onnx", peaks=peaks, prompt_tokens=args.prompt,
                                           new_tokens=args.new)
            result["estimate_onnx"] = est_onnx.as_dict()
            import onnxruntime

            result["onnxruntime_fp32"] = {"version": onnxruntime.__version__, **summary(
                time_ort(onnx_dir, prompt, args.new, args.repeats, args.threads), est_onnx)}
            print("onnxruntime:", json.dumps({k: v for k, v in result["onnxruntime_fp32"].items() if k != "runs"}),
                  flush=True)
            if args.int4:
                result["onnxruntime_int4"] = time_int4(onnx_dir, Path(tmp) / "int4", peaks, prompt, args)
                print("onnxruntime int4:", json.dumps({k: v for k, v in result["onnxruntime_int4"].items()
                                                       if k not in ("runs", "estimate")}), flush=True)
    result["load_average_after"] = os.getloadavg()
    write_results(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
