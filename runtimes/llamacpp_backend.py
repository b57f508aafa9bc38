"""llama.cpp through llama-cpp-python: runs a GGUF artifact (task text-generation) on this machine's CPU.

llama.cpp keeps the KV cache inside its context (the manifest's ``KVCache`` layout ``runtime``), so the state that
:meth:`prefill` and :meth:`step` hand back is opaque: the tokens the context holds. ``prefill`` clears the context and
evaluates the prompt; ``step`` evaluates one token after them. When another prefill used the context in between (two
generations interleaved), ``step`` evaluates the state's tokens again first, so a caller that passes back what it got
always gets the right logits (at the cost of that re-evaluation).

Logits of every prompt position are kept (``logits_all``: the perplexity windows score them), so the context holds
``n_ctx x vocabulary`` floats beside the cache. Batch 1 only. Settings: ``threads`` (llama.cpp's ``n_threads`` and
``n_threads_batch``), options ``n_ctx`` (default: the model's context, at most 2048), ``n_batch`` (512),
``flash_attn`` (False).

:meth:`~LlamaCppBackend.close` frees the model at once (callers close in a ``finally``, so an interrupt frees it
too); a backend still open when the interpreter exits is closed by an ``atexit`` hook, before the interpreter tears
its modules down. Left to ``Llama.__del__``, the model was freed during that teardown or wherever the collector ran,
and a SIGTERM arriving then printed a traceback from ``Llama.__del__`` ("Exception ignored in ...") instead of the
CLI's one line.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import weakref
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from compress.artifact import Format
from compress.device.shipped import decoder_tokens
from compress.errors import ConfigError
from compress.runtimes.base import RuntimeBackend

log = logging.getLogger(__name__)

DEFAULT_CTX = 2048  #: the context when neither the options nor a smaller model context say otherwise
_OPEN: weakref.WeakSet[LlamaCppBackend] = weakref.WeakSet()  #: backends whose model is loaded and not closed


@atexit.register
def _close_open() -> None:
    """At the interpreter's exit, before its modules are torn down: free the models still open (see the module doc)."""
    for backend in list(_OPEN):
        with contextlib.suppress(Exception):
            backend.close()


class LlamaCppState:
    """The opaque state of a llama.cpp generation: the tokens its context holds (the KV cache is the context's)."""

    __slots__ = ("tokens",)

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.tokens)


class LlamaCppBackend(RuntimeBackend):
    name: ClassVar[str] = "llamacpp"
    module: ClassVar[str] = "llama_cpp"
    formats: ClassVar[frozenset[Format]] = frozenset({Format.gguf})
    generation_loop: ClassVar[str] = "llama.cpp context (llama-cpp-python eval per token, the KV cache in the context)"
    copies_cache: ClassVar[bool] = False

    def _load(self) -> None:
        from llama_cpp import Llama

        art, opts = self.artifact, self.settings.options
        cache = getattr(art.manifest.postprocess, "cache", None)
        model_ctx = getattr(cache, "max_length", None) or art.manifest.max_length or DEFAULT_CTX
        self.n_ctx = int(opts.get("n_ctx") or min(int(model_ctx), DEFAULT_CTX))
        threads = self.settings.threads
        path = art.path / art.manifest.model_file
        try:
            self.llm = Llama(model_path=str(path), n_ctx=self.n_ctx, n_batch=int(opts.get("n_batch", 512)),
                             n_threads=threads, n_threads_batch=threads, logits_all=True,
                             flash_attn=bool(opts.get("flash_attn", False)), verbose=log.isEnabledFor(logging.DEBUG))
        except ValueError:  # llama-cpp-python's "Failed to load model from file" (the why: llama.cpp's log)
            from compress.errors import ModelLoadError

            arch = getattr(art.manifest.source, "architecture", None)
            raise ModelLoadError(
                f"{path}: llama.cpp (llama-cpp-python {self.version()}) cannot load this GGUF"
                f"{f' (architecture {arch})' if arch else ''}",
                hint="a newer llama-cpp-python may know the architecture; see llama.cpp's log with --debug") from None
        _OPEN.add(self)
        self.vocab = self.llm.n_vocab()

    def _make_encoder(self):
        """The teacher's tokenizer when it travelled with the file; None for a bare adopted GGUF (token ids in)."""
        from compress.errors import ArtifactError

        try:
            return super()._make_encoder()
        except ArtifactError:
            return None

    @classmethod
    def version(cls) -> str | None:
        from compress._optional import version_of

        return version_of("llama_cpp")

    # -- the stateful step ---------------------------------------------------------------------------------------
    @property
    def stateful(self) -> bool:
        return True

    def _eval(self, tokens: list[int], start: int) -> np.ndarray:
        """Evaluate ``tokens`` after the context's first ``start`` tokens: their logits [len, V] float32."""
        if start + len(tokens) > self.n_ctx:
            raise ConfigError(f"{start + len(tokens)} tokens exceed the llama.cpp context of {self.n_ctx}",
                              hint="give a larger runtime option n_ctx, or fewer tokens")
        self.llm.n_tokens = start
        self.native(self.llm.eval, tokens)
        return np.array(self.llm.scores[start:start + len(tokens)], dtype=np.float32)

    def call(self, entry: str, feeds: dict[str, np.ndarray],
             outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One evaluation in the context (the GGUF's one entry, ``model``): the step's tokens [1, S]
        (``decoder_tokens``) after the positions the attention mask counts before them (none without a mask):
        ``logits`` [1, S, V], the KV cache kept in the context."""
        if str(self.entry(entry).role) != self.main:
            raise ConfigError(f"llama.cpp runs a GGUF's one model, not the entry {entry}")
        tokens = _tokens(feeds)
        mask = feeds.get("attention_mask")
        start = 0 if mask is None else int(np.asarray(mask).shape[1]) - len(tokens)
        return {"logits": self._eval(tokens, start)[None]}

    def prefill(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], LlamaCppState]:
        tokens = _tokens(feeds)
        logits = self._eval(tokens, 0)
        return {"logits": logits[None]}, LlamaCppState(tokens)

    def step(self, feeds: dict[str, np.ndarray], state: Any) -> tuple[dict[str, np.ndarray], LlamaCppState]:
        if not isinstance(state, LlamaCppState):
            raise ConfigError("llama.cpp's step takes the state its prefill or step returned")
        tokens = _tokens(feeds)
        held = self.llm.n_tokens
        if held != len(state.tokens) or list(self.llm.eval_tokens) != state.tokens:
            self._eval(state.tokens, 0)  # the context moved on (another prefill): evaluate this generation again
        logits = self._eval(tokens, len(state.tokens))
        return {"logits": logits[None]}, LlamaCppState(state.tokens + tokens)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"n_ctx": self.n_ctx}

    def close(self) -> None:
        """Free the model and its context now (again: nothing to do); ``Llama.__del__`` then has nothing left."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
            self.llm = None
        _OPEN.discard(self)


def _tokens(feeds: dict[str, np.ndarray]) -> list[int]:
    ids = np.asarray(decoder_tokens(feeds))
    if ids.ndim != 2 or ids.shape[0] != 1:
        raise ConfigError(f"llama.cpp runs one sequence at a time (batch 1); got token ids of shape {ids.shape}")
    return [int(t) for t in ids[0]]
