"""Helpers the benchmark scripts share: data subsets, accuracy through a runtime adapter, host facts, phases that
save their figures as they go."""

from __future__ import annotations

import csv
import json
import platform
import random
import sys
import time
import traceback
from pathlib import Path

import numpy as np


def subset_tsv(src: Path, dst: Path, rows: int, seed: int = 0) -> Path:
    """A deterministic random sample of ``rows`` rows of a QUOTE_NONE TSV (kept once written)."""
    if dst.is_file():
        return dst
    with open(src, encoding="utf-8", newline="") as f:
        header, *body = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    body = random.Random(seed).sample(body, min(rows, len(body)))
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        w.writerow(header)
        w.writerows(body)
    return dst


def accuracy(backend, ds) -> float:
    """Accuracy of a runtime adapter on a labelled TextDataset, encoded with the adapter's own tokenizer."""
    logits = np.concatenate([backend.predict(backend.encode(t, p)) for t, p, _ in ds.batches(32)])
    return float((logits.argmax(-1) == np.asarray(ds.labels)).mean())


def host_and_versions() -> dict:
    """``host`` (CPU model, Python) and ``versions`` (installed backends) entries for a results JSON."""
    from compress.reports.doctor import environment_report

    env = environment_report()
    return {
        "host": {"cpu": env["cpu"], "python": platform.python_version()},
        "versions": {r["package"]: r["version"] for r in env["backends"] if r["version"]},
    }


def cached_step(label: str, out: Path, make) -> Path:
    """``make()`` builds the artifact at ``out`` unless one is there (its manifest): a benchmark's build is resumable."""
    if (out / "manifest.json").is_file():
        print(f"cached: {label} ({out})", flush=True)
        return out
    t0 = time.perf_counter()
    make()
    print(f"built: {label} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


class Phases:
    """A benchmark's phases on a machine lent for minutes: the result file is written after every phase, a phase
    that fails costs only its own figures (its traceback printed, its error in ``result["errors"]``), and none starts
    after ``budget_s`` seconds."""

    def __init__(self, result: dict, out: Path, budget_s: float, tag: str, t0: float | None = None):
        self.result, self.out, self.budget_s, self.tag = result, out, budget_s, tag
        self.t0 = time.perf_counter() if t0 is None else t0  # the budget counts from t0 (perf_counter)
        result.setdefault("errors", [])

    def log(self, msg: str) -> None:
        print(f"[{self.tag}] {msg}", file=sys.stderr, flush=True)

    def save(self) -> None:
        self.result["seconds"] = round(time.perf_counter() - self.t0, 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.result, indent=2, default=str) + "\n")

    def run(self, label: str, fn):
        """``fn()``'s value, or None where it failed or the budget was spent."""
        if time.perf_counter() - self.t0 > self.budget_s:
            self.log(f"skipped {label}: over --budget-s")
            self.result["errors"].append(f"{label}: skipped (time budget)")
            return None
        self.log(f"{label} ...")
        try:
            value = fn()
            self.log(f"{label}: {json.dumps(value, default=str)[:400]}")
            return value
        except Exception as exc:  # noqa: BLE001 - one phase failing must not lose the others' figures
            traceback.print_exc()
            self.result["errors"].append(f"{label}: {type(exc).__name__}: {exc}"[:2000])
            return None
        finally:
            self.save()

    def done(self) -> None:
        self.save()
        self.log(f"wrote {self.out} in {self.result['seconds']} s; errors: {self.result['errors'] or 'none'}")


def text_window_options(ap) -> None:
    """The scored-text options of the LM quality benchmarks (WikiText-2's first CHARS characters, in windows)."""
    ap.add_argument("--text", required=True, help="WikiText-2 test (wiki.test.raw)")
    ap.add_argument("--chars", type=int, default=120_000, help="the text's first CHARS characters")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--windows", type=int, default=16)


def text_windows(art, args) -> np.ndarray:
    """The windows those options name, cut by the artifact's tokenizer (llama-perplexity's rule)."""
    import tempfile

    from compress.stages.quantize.lm.common import text_windows as cut

    text = Path(tempfile.mkdtemp()) / "scored.txt"
    text.write_text(Path(args.text).read_text(encoding="utf-8")[:args.chars], encoding="utf-8")
    return cut(art, str(text), args.window, args.windows, "--text")


def scored(logits, windows: np.ndarray, ref: list | None = None) -> dict:
    """Perplexity of ``logits`` (one [1, T, V] per window) and, with ``ref`` (the reference's), KL and top-1."""
    from compress.tasks.generation import GenerationStream

    stream = GenerationStream()
    for k, (w, cand) in enumerate(zip(windows, logits, strict=True)):
        stream.update(cand, w[None], None if ref is None else ref[k])
    return stream.result()


# --- generators: llama.cpp itself as the anchor, and a greedy loop over prefill / step -------------------------------
class LlamaCppDirect:
    """llama.cpp itself: llama-cpp-python's Llama evaluating tokens, only the last position's logits (its default),
    none of edgecompress's code in the loop: the anchor the LM benchmarks compare every route with."""

    loop = "llama.cpp (llama-cpp-python Llama.eval per token; this script's loop)"

    def __init__(self, path: Path, threads: int) -> None:
        import llama_cpp

        self.lib = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                                   verbose=False)

    def _last(self):
        ptr = self.lib.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),))[None, None].copy()

    def prefill(self, feeds):
        self.llm.reset()
        self.llm.eval([int(t) for t in feeds["input_ids"][0]])
        return {"logits": self._last()}, None

    def step(self, feeds, state):
        self.llm.eval([int(feeds["input_ids"][0, -1])])
        return {"logits": self._last()}, None

    def close(self) -> None:
        self.llm.close()


def greedy_steps(backend, prompt: list[int], steps: int) -> tuple[float, float, list[int]]:
    """One greedy generation through ``backend``'s ``prefill`` / ``step`` (an anchor's, or a runtime adapter's):
    (prefill seconds up to the first token, seconds of the ``steps`` decode steps after it, every token made)."""
    ids = np.asarray([prompt], dtype=np.int64)
    t0 = time.perf_counter()
    out, state = backend.prefill({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    tokens, total = [int(out["logits"][0, -1].argmax())], len(prompt)
    ttft = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        total += 1
        out, state = backend.step({"input_ids": np.asarray([[tokens[-1]]], dtype=np.int64),
                                   "attention_mask": np.ones((1, total), dtype=np.int64)}, state)
        tokens.append(int(out["logits"][0, -1].argmax()))
    return ttft, time.perf_counter() - t0, tokens
