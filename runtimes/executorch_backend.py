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

from typing import Any, ClassVar

import numpy as np

from compress.artifact import Format
from compress.device.shipped import decoder_tokens
from compress.errors import ConfigError
from compress.runtimes.base import RuntimeBackend
from compress.tasks import kind_of


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

        self._generator = kind_of(self.artifact) == "generation"
        if self._generator:  # ExecuTorch's LLM kernels (llama::custom_sdpa), which a generator's program calls
            import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        if self.settings.threads:
            portable_lib._unsafe_reset_threadpool(int(self.settings.threads))
        self.settings.threads = int(portable_lib._threadpool_get_thread_count())
        self.program = Runtime.get().load_program(str(self.artifact.model_path))
        self.method = self.program.load_method("forward")
        self._torch = torch
        self._names = [t.name for t in self.artifact.manifest.inputs]
        self._dtypes = {t.name: np.int64 if t.dtype.startswith("int") else np.float32
                        for t in self.artifact.manifest.inputs}
        if self._generator:
            cache = self.artifact.manifest.postprocess.cache
            self.max_length = int(cache.max_length)
            self.chunk = int(self.method.metadata.input_tensor_meta(0).sizes()[1])  # the planned tokens per call
            self._held: list[int] = []  # the tokens the program's cache holds now

    @property
    def fixed_batch(self) -> int | None:
        return 1  # one row per call (a program is traced with one)

    def _feed(self, inputs: dict[str, np.ndarray]) -> list[Any]:
        return [self._torch.from_numpy(np.ascontiguousarray(inputs[n], dtype=self._dtypes[n])) for n in self._names]

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if self._generator:  # the logits [1, S, V] of one prompt
            return self.prefill(inputs)[0]["logits"]
        rows = len(next(iter(inputs.values())))
        if rows == 1:
            return self.method.execute(self._feed(inputs))[0].numpy().astype(np.float32, copy=True)
        return np.concatenate([self.run({k: v[i:i + 1] for k, v in inputs.items()}) for i in range(rows)])

    def run_outputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {self.artifact.manifest.outputs[0].name: self.run(inputs)}

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


def _tokens(feeds: dict[str, np.ndarray]) -> list[int]:
    ids = np.asarray(decoder_tokens(feeds))
    if ids.ndim != 2 or ids.shape[0] != 1:
        raise ConfigError(f"an ExecuTorch generator runs one sequence at a time (batch 1); got token ids of shape "
                          f"{ids.shape}")
    return [int(t) for t in ids[0]]
