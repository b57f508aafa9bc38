"""ExecuTorch adapter: an ExecuTorch program (``model.pte``, XNNPACK-delegated) in ExecuTorch's own runtime, the one a
phone app embeds (here its Python bindings on the host CPU).

Settings: ``threads`` sizes ExecuTorch's thread pool (XNNPACK runs on it); there is no provider and no options.
A program takes one row per call (``export --format executorch`` writes it so); a larger batch runs row by row.

A causal LM's program (task text-generation, :mod:`compress.stages.export.lm.executorch`) keeps its KV cache in its
mutable buffers, inside the loaded method (the manifest's ``KVCache`` layout ``stateful``), and takes
the tokens ``[1, S]`` and ``cache_position [S]``. :meth:`prefill` runs the prompt at positions 0.. (in chunks of at most
the program's planned tokens per call), :meth:`step` one more token after them; the state handed back is opaque: the
tokens the cache holds. When another prefill used the program in between (two generations interleaved), ``step``
runs the state's tokens again first, so a caller that passes back what it got always gets the right logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from compress.artifact import Format
from compress.device.shipped import decoder_tokens
from compress.errors import ConfigError
from compress.runtimes.base import RuntimeBackend
from compress.tasks import is_generator


class ExecuTorchLMState:
    """The opaque state of a generation in an ExecuTorch program: the tokens its KV cache holds."""

    __slots__ = ("tokens",)

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.tokens)


class ExecuTorchBackend(RuntimeBackend):
    name: ClassVar[str] = "executorch"
    module: ClassVar[str] = "executorch"
    formats: ClassVar[frozenset[Format]] = frozenset({Format.executorch})
    generation_loop: ClassVar[str] = "ExecuTorch program (a call per token, the KV cache in the program's buffers)"
    copies_cache: ClassVar[bool] = False

    def _load(self) -> None:
        # ExecuTorch's quantized kernels (an INT8 program's embedding tables, quantized_decomposed::embedding_byte):
        # importing the library registers them with the runtime, as an app links them
        import executorch.kernels.quantized
        import torch

        self._generator = is_generator(self.artifact)
        if self._generator:  # ExecuTorch's LLM kernels (llama::custom_sdpa), which a generator's program calls
            import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        if self.settings.threads:
            portable_lib._unsafe_reset_threadpool(int(self.settings.threads))
        self.settings.threads = int(portable_lib._threadpool_get_thread_count())
        runtime = Runtime.get()
        programs: dict[str, Any] = {}  # entries may be methods of one program file
        #: each entry point's loaded method (the entry's ``method``, else the program's ``forward``), by role
        self.methods: dict[str, Any] = {}
        for entry in self.artifact.manifest.entries:
            if entry.file not in programs:
                programs[entry.file] = runtime.load_program(str(self.artifact.path / entry.file))
            self.methods[str(entry.role)] = programs[entry.file].load_method(entry.method or "forward")
        self.program = programs[self.artifact.manifest.model_file]
        self.method = self.methods[self.main]
        self._torch = torch
        self._dtypes = {t.name: np.int64 if t.dtype.startswith("int") else np.float32
                        for e in self.artifact.manifest.entries for t in e.inputs}
        if self._generator:
            cache = self.artifact.manifest.postprocess.cache
            self.max_length = int(cache.max_length)
            self.chunk = int(self.method.metadata.input_tensor_meta(0).sizes()[1])  # the planned tokens per call
            self._held: list[int] = []  # the tokens the program's cache holds now

    @property
    def fixed_batch(self) -> int | None:
        return 1  # one row per call (a program is traced with one)

    def _feed(self, entry: str, inputs: dict[str, np.ndarray]) -> list[Any]:
        return [self._torch.from_numpy(np.ascontiguousarray(inputs[t.name], dtype=self._dtypes[t.name]))
                for t in self.entry(entry).inputs]

    def call(self, entry: str, feeds: dict[str, np.ndarray],
             outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One execution of the entry ``entry``'s method, row by row (a program takes one row per call): its outputs by
        the entry's names. A generator's program takes the step's tokens [1, S] (``decoder_tokens``) at the positions
        after those the attention mask counts before them (none without a mask): ``logits`` [1, S, V], its KV cache
        kept in the program's buffers."""
        method = self.methods.get(str(entry))
        if method is None:
            self.entry(entry)  # an entry the artifact lacks: refused in one line
            raise ConfigError(f"{self.artifact.path}: the ExecuTorch program is closed")
        if self._generator:
            tokens = _tokens(feeds)
            mask = feeds.get("attention_mask")
            start = 0 if mask is None else int(np.asarray(mask).shape[1]) - len(tokens)
            return {"logits": self._forward(tokens, start)[None]}
        names = [t.name for t in self.entry(entry).outputs]
        rows = len(next(iter(feeds.values())))
        parts = [method.execute(self._feed(entry, {k: v[i:i + 1] for k, v in feeds.items()})) for i in range(rows)]
        out = {names[j] if j < len(names) else f"output_{j}": np.concatenate([p[j].numpy() for p in parts])
               for j in range(len(parts[0]))}
        return out if outputs is None else {n: out[n] for n in outputs if n in out}

    # -- a generator's program: the KV cache lives in its mutable buffers ----------------------------------------
    @property
    def stateful(self) -> bool:
        return bool(getattr(self, "_generator", False)) or super().stateful

    def _forward(self, tokens: list[int], start: int) -> np.ndarray:
        """Run ``tokens`` at positions ``start``.. (in chunks the program takes): their logits [len, V] float32."""
        torch = self._torch
        end = start + len(tokens)
        if end > self.max_length:
            raise ConfigError(f"{end} tokens exceed the ExecuTorch program's KV cache of {self.max_length} positions",
                              hint="give fewer tokens (the cache holds the model's context, at most 2048 positions)")
        out = []
        self._held = self._held[:start]  # past the prefix the cache holds positions no later call reads
        for i in range(0, len(tokens), self.chunk):
            part = tokens[i:i + self.chunk]
            pos = torch.arange(start + i, start + i + len(part), dtype=torch.long)
            logits = self.native(self.method.execute, [torch.tensor([part], dtype=torch.long), pos])[0]
            out.append(logits[0].numpy().astype(np.float32, copy=True))
        self._held += tokens
        return np.concatenate(out) if len(out) > 1 else out[0]

    def prefill(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], Any]:
        if not self._generator:
            return super().prefill(feeds)
        tokens = _tokens(feeds)
        return {"logits": self._forward(tokens, 0)[None]}, ExecuTorchLMState(tokens)

    def step(self, feeds: dict[str, np.ndarray], state: Any) -> tuple[dict[str, np.ndarray], Any]:
        if not self._generator:
            return super().step(feeds, state)
        if not isinstance(state, ExecuTorchLMState):
            raise ConfigError("an ExecuTorch generator's step takes the state its prefill or step returned")
        tokens = _tokens(feeds)
        if self._held != state.tokens:  # another prefill used the cache: run this generation's tokens again
            self._forward(state.tokens, 0)
        return {"logits": self._forward(tokens, len(state.tokens))[None]}, ExecuTorchLMState(state.tokens + tokens)

    @classmethod
    def version(cls) -> str | None:
        from compress._optional import version_of

        return version_of("executorch")

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["backend"] = "xnnpack"
        if getattr(self, "_generator", False):
            d |= {"cache_length": self.max_length, "max_tokens_per_call": self.chunk}
        return d

    def close(self) -> None:
        self.method = None
        self.program = None
        self.methods = {}


def _tokens(feeds: dict[str, np.ndarray]) -> list[int]:
    ids = np.asarray(decoder_tokens(feeds))
    if ids.ndim != 2 or ids.shape[0] != 1:
        raise ConfigError(f"an ExecuTorch generator runs one sequence at a time (batch 1); got token ids of shape "
                          f"{ids.shape}")
    return [int(t) for t in ids[0]]
