"""The reference of a GGUF adopted from a file made elsewhere (``export model.gguf``): the file itself, run by llama.cpp.

An adopted GGUF has no PyTorch teacher (an architecture transformers cannot read never has one), so, as an adopted
ONNX file is validated against the file in ONNX Runtime, validate compares a GGUF artifact whose recorded source is a
``.gguf`` with that file through llama.cpp: perplexity of both, KL and top-1 agreement of the artifact against it,
greedy continuations. For the adopted artifact itself that agreement is 1 by construction; for one quantized from it,
it is the quantization's cost. ``--teacher CHECKPOINT`` (the Hugging Face folder it came from) compares with PyTorch.

:class:`GgufReference` offers what validate asks of a teacher (:meth:`logits` over perplexity windows,
:meth:`greedy` continuations, ``teacher.sha256``); the file is adopted once into the cache (``baselines/``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np

log = logging.getLogger(__name__)


def reference_sha256(path: Path) -> str:
    """The sha256 a reference is known by: of the file (a ``.gguf``), else of the checkpoint folder."""
    from compress.artifact import digest_dir, sha256_file

    return sha256_file(path) if Path(path).is_file() else digest_dir(path)


class GgufReference:
    """A ``.gguf`` file as validate's reference: llama.cpp runs it (batch 1, the runtime's default threads)."""

    def __init__(self, path: Path, backend, context: int) -> None:
        self.path, self.backend, self.context = Path(path), backend, context
        self.teacher = SimpleNamespace(sha256=reference_sha256(path), path=self.path)

    @classmethod
    def load(cls, path: Path | str) -> GgufReference:
        """Adopt ``path`` into the cache (once per file content) and load it in llama.cpp."""
        from compress import cache as ec_cache
        from compress.artifact import load_artifact
        from compress.runtimes.base import load_runtime
        from compress.stages.export.config import ExportConfig
        from compress.stages.export.lm.gguf import adopt_gguf
        from compress.validation.decoding import context_of

        path = Path(path)
        where = ec_cache.kind_dir("baselines") / f"gguf-{reference_sha256(path)[:20]}"
        art = None
        if (where / "manifest.json").is_file():
            try:
                art = load_artifact(where)
                ec_cache.touch(where)
            except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt
                log.warning("rebuilding damaged reference cache %s", where)
        if art is None:
            art = adopt_gguf(path, where, ExportConfig(), force=True)
            ec_cache.enforce_limit(keep=where)
        return cls(path, load_runtime(art, "llamacpp"), context_of(art))

    def logits(self, windows: np.ndarray) -> Iterator[np.ndarray]:
        """The file's next-token logits of each window (one prefill each): [1, T, V] float32 per window."""
        from compress.validation.decoding import window_logits

        yield from window_logits(self.backend, np.asarray(windows, dtype=np.int64))

    def greedy(self, prompt_ids: list[int], new_tokens: int, eos: int | list[int] | None = None) -> list[int]:
        """The file's greedy continuation of ``prompt_ids`` (stops after an ``eos`` token, included)."""
        from compress.validation.decoding import greedy_artifact

        stop = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
        return greedy_artifact(self.backend, list(prompt_ids), new_tokens, stop, self.context)

    def close(self) -> None:
        self.backend.close()
