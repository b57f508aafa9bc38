"""Tokenisation with the `tokenizers` library alone (no transformers, no torch).

Runtime adapters and deployable bundles use this, so an ONNX artifact runs with onnxruntime + tokenizers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from compress.errors import ArtifactError


class TextEncoder:
    """Encode text (or text pairs) into the named int64 input tensors of a model."""

    def __init__(self, tokenizer, input_names: Sequence[str], max_length: int = 512, pad_id: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.input_names = list(input_names)
        self.max_length = max_length
        self.pad_id = 0 if pad_id is None else pad_id

    @classmethod
    def from_dir(cls, directory: Path | str, input_names: Sequence[str], max_length: int = 512) -> TextEncoder:
        """Load ``tokenizer.json`` (+ ``tokenizer_config.json`` for the pad token) from a directory."""
        from tokenizers import Tokenizer

        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise ArtifactError(
                f"{directory}: no tokenizer.json", hint="re-create the artifact from a checkpoint with a fast tokenizer"
            )
        tokenizer = Tokenizer.from_file(str(path))
        cfg = {}
        if (directory / "tokenizer_config.json").is_file():
            cfg = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
        pad = cfg.get("pad_token")
        if isinstance(pad, dict):
            pad = pad.get("content")
        pad_id = tokenizer.token_to_id(pad) if pad else None
        return cls(tokenizer, input_names, max_length, pad_id)

    def encode(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        pad_to: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Tokenise a batch. ``pad_to`` pads (and truncates) to a fixed length; otherwise to the longest."""
        limit = min(pad_to, self.max_length) if pad_to else self.max_length
        self.tokenizer.enable_truncation(max_length=limit)
        if pad_to:
            self.tokenizer.enable_padding(pad_id=self.pad_id, length=limit)
        else:
            self.tokenizer.enable_padding(pad_id=self.pad_id)
        batch = list(zip(texts, pairs, strict=True)) if pairs is not None else list(texts)
        enc = self.tokenizer.encode_batch(batch)
        arrays = {
            "input_ids": np.asarray([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.asarray([e.type_ids for e in enc], dtype=np.int64),
        }
        return {name: arrays[name] for name in self.input_names if name in arrays}


from compress.device import pool  # noqa: E402,F401 - one pooling for host, remote device and bundle
