"""The generators' anchor: llama.cpp itself, driven token by token, none of edgecompress's code in the loop."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


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
