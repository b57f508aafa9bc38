"""A real generator's decode speed and time to first token by loop (issue 68): ONNX Runtime GenAI's own generator
(``og.Generator``, what :class:`~compress.runtimes.ort_backend.OrtBackend` times where the artifact carries
genai_config.json), edgecompress's prefill/step loop with numpy feeds (the cache copied in and out every step: the
route validate timed before), the same loop with IO binding (the cache in ONNX Runtime's memory, one shared buffer),
and llama.cpp's context driven directly (``llama_cpp.Llama.eval`` per token, last logits only) on a Q4_0 GGUF of the
same model.

Each (route, round) runs in a fresh process (runtimes' thread pools do not meet); rounds alternate the order of the
routes; each process loads, makes one untimed generation, then ``--repeats`` timed ones (a ``--prompt``-token prompt
of WikiText, then ``--new`` greedy tokens, no stop token). Figures per route: the median over rounds of each process's
median TTFT (the prompt's prefill and the first pick) and decode tokens/s (new tokens after the first / their
seconds), and their ratios to llama.cpp's. Writes ``--out`` (JSON).

    python benchmarks/generators/lm_generation_loops.py --onnx /tmp/smol-int4 --onnx /tmp/smol-onnx --gguf /tmp/smol-q40/model.gguf
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # benchmarks.harness
from benchmarks.harness.lm import LlamaCppDirect
from benchmarks.harness.results import write_results
from benchmarks.harness.timing import median, paired_ratios, side_by_side, spread

ROUTES = ("og", "steps", "bound")  #: the ONNX routes; "llamacpp" is the GGUF's
#: the ONNX routes' runtime options (og-spin: og with worker threads left spinning between tokens)
OPTIONS = {"og": {}, "og-spin": {"session_config": {"session.force_spinning_stop": "0"}},
           "steps": {"genai_loop": False}, "bound": {"genai_loop": False}}
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2" / "wiki.test.raw"


def prompt_ids(tokenizer_dir: Path, length: int) -> list[int]:
    from tokenizers import Tokenizer

    text = WIKITEXT.read_text()[:20000] if WIKITEXT.exists() else "The quick brown fox jumps over the lazy dog. " * 200
    return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).encode(text).ids[:length]


def generator(route: str, path: str, prompt: list[int], new: int, threads: int):
    """A function that makes one generation by ``route`` and returns each token's seconds (the first: TTFT)."""
    if route == "llamacpp":
        anchor = LlamaCppDirect(Path(path), threads, n_ctx=len(prompt) + new + 8)

        def generate() -> list[float]:
            return list(anchor.generate(prompt, new, timed=True).seconds)
    else:
        import compress  # noqa: F401 - first: the torchvision shim before transformers
        from compress.artifact import load_artifact
        from compress.runtimes.base import RuntimeBackend, RuntimeSettings, load_runtime

        backend = load_runtime(load_artifact(path), settings=RuntimeSettings(threads=threads, options=OPTIONS[route]))
        loop = RuntimeBackend.generate if route == "steps" else type(backend).generate

        def generate() -> list[float]:
            return list(loop(backend, prompt, new, timed=True).seconds)
    return generate


def figures(seconds: list[float]) -> tuple[float, float]:
    """(TTFT ms, decode tokens/s) of one generation's per-token seconds."""
    return seconds[0] * 1000, (len(seconds) - 1) / sum(seconds[1:])


def one_route(route: str, path: str, prompt: list[int], new: int, threads: int, repeats: int) -> dict:
    """Run in the child process: the route's timed generations, {"ttft_ms": [...], "decode_tok_s": [...]}."""
    generate = generator(route, path, prompt, new, threads)
    generate()
    runs = [figures(generate()) for _ in range(repeats)]
    return {"ttft_ms": [r[0] for r in runs], "decode_tok_s": [r[1] for r in runs]}


def paired(jobs: list[tuple[str, str]], prompt: list[int], args) -> dict:
    """Every route loaded in this one process, one generation of each per round (the order flipping each round), so
    each round's routes meet the same machine load: per round, each route's decode rate and TTFT as ratios to
    llama.cpp's in that round; the medians over rounds (and of the raw figures)."""
    gens = {f"{r} {p}": generator(r, p, prompt, args.new, args.threads) for r, p in jobs}
    rows = {k: [figures(s) for s in seconds] for k, seconds in side_by_side(gens, args.paired, warmup=1).items()}
    ref = next((k for k in gens if k.startswith("llamacpp")), None)
    out = {}
    for key, vals in rows.items():
        ttft, decode = spread(v[0] for v in vals), spread(v[1] for v in vals)
        row = {"ttft_ms": round(ttft.median, 1), "decode_tok_s": round(decode.median, 1),
               "best_decode_tok_s": round(decode.max, 1), "best_ttft_ms": round(ttft.min, 1),
               "decode_tok_s_spread": decode.as_dict(1)}
        if ref:
            row["decode_vs_llamacpp"] = round(median(paired_ratios([v[1] for v in vals], [v[1] for v in rows[ref]])), 3)
            row["ttft_vs_llamacpp"] = round(median(paired_ratios([v[0] for v in vals], [v[0] for v in rows[ref]])), 3)
        out[key] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", action="append", default=[], help="an ONNX generator artifact (repeatable)")
    ap.add_argument("--gguf", help="llama.cpp's GGUF of the same model")
    ap.add_argument("--routes", default=",".join(ROUTES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lm_generation_loops.json"))
    ap.add_argument("--paired", type=int, default=0, help="ROUNDS in one process, every route loaded (ratios per "
                    "round); 0: a process per route and round")
    ap.add_argument("--child", nargs=2, metavar=("ROUTE", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    prompt = prompt_ids(Path(args.onnx[0]) if args.onnx else Path(args.gguf).parent, args.prompt)
    if args.child:
        print(json.dumps(one_route(*args.child, prompt, args.new, args.threads, args.repeats)))
        return
    jobs = [(r, p) for p in args.onnx for r in args.routes.split(",")]
    if args.gguf:
        jobs.append(("llamacpp", args.gguf))
    if args.paired:
        load = os.getloadavg()[0]
        table = paired(jobs, prompt, args)
        result = {"prompt_tokens": len(prompt), "new_tokens": args.new, "threads": args.threads,
                  "paired_rounds": args.paired, "load_average": [round(load, 2), round(os.getloadavg()[0], 2)],
                  "routes": table}
        write_results(Path(args.out), result)
        for k, v in table.items():
            print(k, v)
        return
    samples: dict[str, dict[str, list[float]]] = {f"{r} {p}": {"ttft_ms": [], "decode_tok_s": []} for r, p in jobs}
    load = []  # the machine's 1-minute load average at each round's start (a shared machine's noise, said)
    for rnd in range(args.rounds):
        load.append(round(os.getloadavg()[0], 2))
        for route, path in (jobs if rnd % 2 == 0 else list(reversed(jobs))):
            cmd = [sys.executable, __file__, "--child", route, path, *sum(
                ([f"--{k}", str(getattr(args, k))] for k in ("prompt", "new", "threads", "repeats")), []),
                *(["--onnx", args.onnx[0]] if args.onnx else ["--gguf", args.gguf])]
            got = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            key = f"{route} {path}"
            samples[key]["ttft_ms"].append(median(got["ttft_ms"]))
            samples[key]["decode_tok_s"].append(median(got["decode_tok_s"]))
            print(f"round {rnd} {key}: ttft {samples[key]['ttft_ms'][-1]:.1f} ms, "
                  f"decode {samples[key]['decode_tok_s'][-1]:.1f} tok/s", flush=True)
    table = {k: {"ttft_ms": round(median(v["ttft_ms"]), 1),
                 "decode_tok_s": round(median(v["decode_tok_s"]), 1), "rounds": v} for k, v in samples.items()}
    ref = table.get(f"llamacpp {args.gguf}") if args.gguf else None
    if ref:
        for row in table.values():
            row["decode_vs_llamacpp"] = round(row["decode_tok_s"] / ref["decode_tok_s"], 3)
            row["ttft_vs_llamacpp"] = round(row["ttft_ms"] / ref["ttft_ms"], 3)
    result = {"prompt_tokens": len(prompt), "new_tokens": args.new, "threads": args.threads, "rounds": args.rounds,
              "repeats": args.repeats, "load_average": load, "routes": table}
    write_results(Path(args.out), result)
    for k, v in table.items():
        print(f"{k}: ttft {v['ttft_ms']} ms, decode {v['decode_tok_s']} tok/s "
              f"(x{v.get('decode_vs_llamacpp', '-')} decode, x{v.get('ttft_vs_llamacpp', '-')} ttft vs llama.cpp)")


if __name__ == "__main__":
    main()
