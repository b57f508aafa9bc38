"""What every causal-LM exporter shares, neutral of any format (each format's module imports this, never another
format's): the checkpoint's ``config.json``, the parity prompt, and PyTorch's greedy run the exported model is checked
against (the judgement itself is :func:`compress.tasks.generation.compare_generation`'s)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compress.errors import ConfigError
from compress.tasks.generation import DECODE_STEPS, Generated, compare_generation

#: the parity prompt when no --sample-data is given
PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."


def hf_config(source: Path) -> dict[str, Any]:
    """``config.json`` of a Hugging Face checkpoint folder (a one-line error when there is none)."""
    path = Path(source) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{source}: no config.json (not a Hugging Face checkpoint folder)",
                          hint="pass the folder save_pretrained wrote")
    return json.loads(path.read_text(encoding="utf-8"))


def prompt_ids(source: Path, sample_data: str | None) -> tuple[list[int], str]:
    """The parity prompt's token ids (``--sample-data``'s first text, else :data:`PROMPT`; BOS first where the model
    has one; at most 128, and cut so that the prompt and the :data:`~compress.tasks.generation.DECODE_STEPS` steps
    checked after it fit the model's context) and what it was."""
    from tokenizers import Tokenizer

    from compress.tasks.generation import DECODE_STEPS
    from compress.teachers.lm_config import cache_of

    context = cache_of(hf_config(source)).max_length
    if context < DECODE_STEPS + 2:
        raise ConfigError(f"{source}: a context of {context} tokens (max_position_embeddings) leaves no room for a "
                          f"parity prompt and its {DECODE_STEPS} checked decode steps",
                          hint="export a model with a longer context")

    text = PROMPT
    if sample_data:
        from compress.data.text import read_texts

        texts = read_texts(sample_data)
        text = next((t for t in texts if t.strip()), PROMPT)[:2000]
    tok = Tokenizer.from_file(str(Path(source) / "tokenizer.json"))
    ids = tok.encode(text).ids
    bos = hf_config(source).get("bos_token_id")
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return ids[:min(128, context - DECODE_STEPS)], ("--sample-data's first text" if sample_data else "a built-in sentence")


def greedy_torch(source: Path, prompt: list[int], steps: int) -> Generated:
    """The checkpoint ``source``'s greedy run of ``prompt`` in PyTorch (transformers' own cache), with each step's
    logits: what an exported generator's ``generate(prompt, steps, logits=True)`` is compared with."""
    from compress.teachers.lm import greedy_decode
    from compress.teachers.lm_config import from_pretrained_lm

    return greedy_decode(from_pretrained_lm(source), prompt, steps, logits=True)


def draft_against_torch(draft, runtime: str, source: Path, prompt: list[int]) -> dict[str, Any]:
    """The exported ``draft`` run in ``runtime`` (prefill, then :data:`DECODE_STEPS` greedy steps through its cache)
    beside :func:`greedy_torch` on ``prompt``: :func:`~compress.tasks.generation.compare_generation`'s figures."""
    from compress.host.memory import release_freed
    from compress.runtimes.base import load_runtime

    backend = load_runtime(draft, runtime)
    try:
        cand = backend.generate(prompt, DECODE_STEPS, logits=True)
    finally:
        backend.close()
        del backend
        release_freed()  # the runtime's copy of the weights gone before PyTorch's is loaded
    return compare_generation(greedy_torch(source, prompt, DECODE_STEPS), cand)
