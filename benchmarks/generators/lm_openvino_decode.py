"""Issue 68: OpenVINO generator decode beside llama.cpp on the same real model, side by side.

Each OpenVINO artifact (a stateful IR from ``export --format openvino``, optionally ``quantize --precision int4``)
runs through edgecompress's OpenVINO backend (prefill, then one step per token, all positions' logits as the runtime
contract returns them); llama.cpp runs through llama-cpp-python's ``Llama`` directly on a GGUF (eval of tokens, the
last position's logits: its default, no edgecompress code in the loop). Each route lives in a process of its own
(loaded once and warmed up there; one runtime's worker threads cannot slow another's), and the parent times them in
alternating rounds, one route at a time: a prompt of ``--prompt`` tokens (the artifact tokenizer's ids of ``--text``,
else deterministic ids from the vocabulary) and ``--new-tokens`` greedy tokens. Figures: median TTFT
(the prompt's one call) and decode tokens/s, each route's ratio to llama.cpp, and for each OpenVINO artifact the
attention path the CPU plugin compiled (``attention_path``: fused SDPA with the KV cache, or decomposed) and its
KV_CACHE_PRECISION. ``NAME=DIR@OPT=VALUE`` passes an OpenVINO property (e.g. ``@KV_CACHE_PRECISION=f32``);
``NAME=genai:DIR`` runs OpenVINO GenAI's ``LLMPipeline`` instead (``openvino-genai`` and ``openvino-tokenizers``
installed; DIR holds the IR as ``openvino_model.xml``/``.bin`` with config.json and generation_config.json). On a
shared machine the medians carry its load (llama.cpp's spinning threads suffer most when cores are oversubscribed);
the best round of each route is reported beside them.

    python benchmarks/generators/lm_openvino_decode.py --gguf /tmp/smol-q40/model.gguf \\
        ov-int4=/tmp/smol-ov-int4 ov-fp32=/tmp/smol-ov [--threads 2 --rounds 7 --out results.json]

Writes ``--out`` (default benchmarks/results/lm_openvino_decode.json). Issue 68's runs (SmolLM2-135M, a 128-token
TinyStories prompt, 128 greedy tokens) are ``results/lm_openvino_decode_{1thread,2threads}.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness
import compress  # noqa: F401 - first: the torchvision shim before transformers
from benchmarks.harness.lm import LlamaCppDirect, StepsLoop
from benchmarks.harness.results import write_results
from benchmarks.harness.timing import side_by_side, spread

RESULTS = Path(__file__).resolve().parents[1] / "results"


class GenAI:
    """OpenVINO GenAI's ``LLMPipeline`` on a folder with ``openvino_model.xml`` (our IR under GenAI's name; token ids
    in, so no tokenizer IR is needed): its own C++ loop, greedy, ``min_new_tokens`` so that it never stops early.
    Timings are its perf metrics (TTFT, and decode tokens/s from the mean time per output token)."""

    def __init__(self, path: Path, threads: int, new_tokens: int) -> None:
        import openvino_genai

        self.pipe = openvino_genai.LLMPipeline(str(path), "CPU", INFERENCE_NUM_THREADS=threads,
                                               PERFORMANCE_HINT="LATENCY", INFERENCE_PRECISION_HINT="f32")
        self.config = openvino_genai.GenerationConfig()
        self.config.max_new_tokens = self.config.min_new_tokens = new_tokens
        self.config.do_sample = False

    def generate(self, prompt: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
        import numpy as np
        import openvino as ov

        out = self.pipe.generate(ov.Tensor(np.asarray([prompt], dtype=np.int64)), self.config)
        pm = out.perf_metrics
        return pm.get_ttft().mean / 1000, 1000 / pm.get_tpot().mean, list(out.tokens[0])

    def close(self) -> None:
        self.pipe = None


def openvino(spec: str, threads: int):
    """``DIR[@KEY=VALUE...]`` -> the OpenVINO backend on that artifact with those properties."""
    from compress.artifact import load_artifact
    from compress.runtimes.base import RuntimeSettings, load_runtime

    path, *props = spec.split("@")
    options = dict(p.split("=", 1) for p in props)
    return load_runtime(load_artifact(path), "openvino", RuntimeSettings(threads=threads, options=options))


def generate(backend, prompt: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
    """One greedy generation through the runtime contract's ``generate(timed=True)``: (prefill seconds, tokens/s of
    the ``new_tokens - 1`` decode steps, the tokens)."""
    made = backend.generate(prompt, new_tokens, timed=True)
    return made.seconds[0], (new_tokens - 1) / sum(made.seconds[1:]), list(made.tokens)


def prompt_ids(spec: str, text: str | None, length: int) -> list[int]:
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(spec.split("@")[0]) / "tokenizer.json"))
    if text:
        ids = tok.encode(Path(text).read_text(encoding="utf-8")).ids
        if len(ids) >= length:
            return ids[:length]
    rng = np.random.default_rng(0)
    return [int(t) for t in rng.integers(100, tok.get_vocab_size() - 100, length)]


def serve(name: str, spec: str, threads: int, prompt: list[int], new_tokens: int, conn) -> None:
    """A route's process: load it, report what it compiled and its greedy tokens (the warm-up), then one timed
    generation per message until ``None``."""
    if name == "llama.cpp":
        backend, info = LlamaCppDirect(Path(spec), threads), {"gguf": spec}
    elif spec.startswith("genai:"):
        backend, info = GenAI(Path(spec[6:]), threads, new_tokens), {"genai": spec[6:]}
    else:
        from compress.runtimes.openvino_backend import attention_path

        adapter = openvino(spec, threads)
        info = {"artifact": spec, "properties": adapter.properties, **attention_path(adapter.compiled)}
        backend = StepsLoop(adapter)  # edgecompress's prefill/step loop, not OpenVINO's own
    run = backend.generate if isinstance(backend, GenAI) else lambda p, n: generate(backend, p, n)
    conn.send((info, run(prompt, new_tokens)[2]))
    while conn.recv() is not None:
        conn.send(run(prompt, new_tokens)[:2])
    backend.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("routes", nargs="+", help="NAME=DIR[@KEY=VALUE...]: an OpenVINO artifact")
    ap.add_argument("--gguf", type=Path, help="the llama.cpp GGUF of the same model (the anchor)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--text", help="a text file whose first --prompt tokens are the prompt")
    ap.add_argument("--out", type=Path, default=RESULTS / "lm_openvino_decode.json")
    args = ap.parse_args()
    import multiprocessing as mp

    specs = dict(r.split("=", 1) for r in args.routes)
    prompt = prompt_ids(next(iter(specs.values())), args.text, args.prompt)
    if args.gguf:
        specs = {"llama.cpp": str(args.gguf), **specs}
    ctx = mp.get_context("spawn")
    conns, procs, info, tokens = {}, [], {}, {}
    for name, spec in specs.items():  # one at a time: loading is not what is timed, but it is CPU work
        conns[name], child = ctx.Pipe()
        procs.append(ctx.Process(target=serve, args=(name, spec, args.threads, prompt, args.new_tokens, child)))
        procs[-1].start()
        info[name], tokens[name] = conns[name].recv()
        print(name, json.dumps(info[name]), flush=True)
    def timed(conn):
        def run():
            conn.send(True)
            return conn.recv()
        return run

    def heard(i, values):
        print(f"round {i + 1}/{args.rounds}", {n: round(v[-1][1], 1) for n, v in values.items()}, flush=True)

    # the routes alternately within each round (the order flipped every round), one running at a time
    samples = side_by_side({name: timed(conn) for name, conn in conns.items()}, args.rounds, warmup=0,
                           on_round=heard)
    for conn in conns.values():
        conn.send(None)
    for p in procs:
        p.join()
    rows = {}
    for name, s in samples.items():
        ttft, decode = spread(x[0] for x in s), spread(x[1] for x in s)
        rows[name] = {**info[name], "ttft_ms": 1000 * ttft.median, "decode_tok_s": decode.median,
                      "decode_tok_s_best": decode.max, "ttft_ms_best": 1000 * ttft.min,
                      "decode_tok_s_spread": decode.as_dict(2), "decode_tok_s_rounds": [round(x[1], 1) for x in s]}
    anchor = rows.get("llama.cpp")
    for name, r in rows.items():
        if anchor:
            r["decode_vs_llama_cpp"] = r["decode_tok_s"] / anchor["decode_tok_s"]
            r["decode_best_vs_llama_cpp_best"] = r["decode_tok_s_best"] / anchor["decode_tok_s_best"]
            agree = sum(a == b for a, b in zip(tokens[name], tokens["llama.cpp"]))
            r["greedy_tokens_equal_to_llama_cpp"] = agree
        print(f"{name:>16}: decode {r['decode_tok_s']:6.1f} tok/s (best {r['decode_tok_s_best']:6.1f})  TTFT "
              f"{r['ttft_ms']:6.1f} ms (best {r['ttft_ms_best']:6.1f})" + (
                  f"  {r['decode_vs_llama_cpp']:.2f}x llama.cpp (best/best {r['decode_best_vs_llama_cpp_best']:.2f}x)"
                  if anchor else ""), flush=True)
    write_results(args.out, {"threads": args.threads, "prompt_tokens": len(prompt), "new_tokens": args.new_tokens,
                             "rounds": args.rounds, "routes": rows})


if __name__ == "__main__":
    main()
