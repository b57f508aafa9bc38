"""A generator artifact's side of validation, through its runtime backend's ``prefill`` / ``step`` (batch 1): the
context it takes, greedy continuations through its KV cache (its runtime's ``generate``), logits on perplexity
windows. Shared by :mod:`compress.validation.generation` and :mod:`compress.validation.gguf_reference`."""

from __future__ import annotations

import numpy as np

from compress.artifact import Artifact


def context_of(art: Artifact) -> int:
    """The longest sequence the artifact takes: its KV cache's max length, else the manifest's."""
    cache = getattr(art.manifest.postprocess, "cache", None)
    return int(getattr(cache, "max_length", None) or art.manifest.max_length or 2048)



def prompt_feeds(ids: list[int]) -> dict[str, np.ndarray]:
    arr = np.asarray([ids], dtype=np.int64)
    return {"input_ids": arr, "attention_mask": np.ones_like(arr)}


def greedy_artifact(backend, prompt: list[int], new_tokens: int, eos: set[int], context: int) -> list[int]:
    """The artifact's greedy continuation of ``prompt`` through its KV cache (stops at an EOS token or the
    context's end): its runtime's :meth:`~compress.runtimes.base.RuntimeBackend.generate`."""
    return backend.generate(prompt, new_tokens, eos=eos, context=context).tokens


def window_logits(backend, windows: np.ndarray):
    """The artifact's logits on each window (one prefill each, batch 1): an iterator of [1, T, V] float32."""
    for row in windows:
        out, _ = backend.prefill(prompt_feeds(row.tolist()))
        yield np.asarray(out["logits"], dtype=np.float32)
