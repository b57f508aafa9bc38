"""Plain text for causal language models: documents, prompts, and token windows for perplexity.

* :func:`read_texts`: a ``.txt`` file is one document; a ``.jsonl`` file holds one per line (its ``"text"`` field,
  or the line itself when it is a JSON string).
* :func:`read_prompts`: a ``.txt`` file holds one prompt per non-empty line; a ``.jsonl`` file one per line
  (``"prompt"``, else ``"text"``, else a JSON string).
* :func:`read_training_texts`: what a causal LM fine-tunes on: a ``.txt`` file or ``{"text": ...}`` lines are documents
  (continuation: every token is trained), ``{"prompt": ..., "response": ...}`` lines instruction rows
  (:class:`PromptResponse`: only the response's tokens are trained).
* :func:`token_windows`: the texts tokenized once and cut into non-overlapping windows as llama.cpp's
  ``llama-perplexity`` does (each window's first token set to BOS where the tokenizer has one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compress.data.utf8 import read_utf8
from compress.errors import ConfigError, DataError

__all__ = ["PromptResponse", "encode", "read_prompts", "read_texts", "read_training_texts", "token_windows"]

#: the suffixes read_texts and read_prompts take
SUFFIXES = (".txt", ".raw", ".jsonl")  #: .raw: plain text as WikiText ships it (wiki.test.raw)


def _lines(path: Path) -> list[tuple[int, Any]]:
    """Each non-empty line of a JSONL file, parsed, with its line number."""
    out = []
    for n, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not JSON ({e.msg})", hint="one JSON object or string per line") from None
    return out


#: the fields of a labelled row (a classifier's data): a causal LM takes none
LABEL_FIELDS = ("label", "labels", "tags", "target")


def _field(path: Path, n: int, row: Any, keys: tuple[str, ...]) -> str:
    if isinstance(row, str):
        return row
    if isinstance(row, dict):
        labelled = [k for k in LABEL_FIELDS if k in row]
        if labelled:
            raise DataError(f"{path}:{n}: a {labelled[0]!r} field: a causal LM takes plain text, not labelled data",
                            hint="give documents as {\"text\": ...} (or prompts as {\"prompt\": ...}) without labels")
        for k in keys:
            if isinstance(row.get(k), str):
                return row[k]
    raise DataError(f"{path}:{n}: no {' or '.join(repr(k) for k in keys)} string",
                    hint=f"each line a JSON string or an object with a {keys[0]!r} field")


def _checked(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        raise DataError(f"{p}: a directory, not a text file", hint="give one .txt or .jsonl file inside it")
    if not p.is_file():
        raise DataError(f"{p}: no such file", hint="give a .txt or .jsonl text file")
    if p.suffix.lower() not in SUFFIXES:
        raise DataError(f"{p}: text data is .txt or .jsonl, not {p.suffix or 'a file without a suffix'} (a causal LM "
                        f"is judged on plain text, not labelled rows)",
                        hint="a .txt file (one document, or one prompt per line) or .jsonl ({\"text\": ...} per line)")
    return p


def read_texts(path: str | Path) -> list[str]:
    """The documents of ``path``: a ``.txt`` file is one; a ``.jsonl`` file one per line (``"text"``)."""
    p = _checked(path)
    if p.suffix.lower() in (".txt", ".raw"):
        texts = [read_utf8(p)]
    else:
        texts = [_field(p, n, row, ("text",)) for n, row in _lines(p)]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise DataError(f"{p}: no text", hint="give a file with text in it")
    return texts


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of ``path``: a ``.txt`` file's non-empty lines; a ``.jsonl`` file's ``"prompt"`` (or ``"text"``)
    per line."""
    p = _checked(path)
    if p.suffix.lower() in (".txt", ".raw"):
        prompts = [line.strip() for line in read_utf8(p).splitlines()]
    else:
        prompts = [_field(p, n, row, ("prompt", "text")) for n, row in _lines(p)]
    prompts = [t for t in prompts if t.strip()]
    if not prompts:
        raise DataError(f"{p}: no prompts", hint="one prompt per non-empty line")
    return prompts


@dataclass(frozen=True)
class PromptResponse:
    """An instruction row: the model reads ``prompt`` and is trained to answer ``response``."""

    prompt: str
    response: str


def read_training_texts(path: str | Path, *, prompt_field: str = "prompt",
                        response_field: str = "response") -> list[str] | list[PromptResponse]:
    """What a causal LM fine-tunes on: documents (a ``.txt`` file is one; ``.jsonl`` lines with a ``"text"`` field or
    JSON strings), or instruction rows when the lines carry ``prompt_field`` (each must then carry ``response_field``
    too, both strings: the data says which part is the answer). An Alpaca row's ``input`` (the context an
    ``instruction`` works on) is part of its prompt: joined after the instruction by a blank line, as Alpaca's own
    template does, when the prompt field is ``instruction``."""
    p = _checked(path)
    rows = _lines(p) if p.suffix.lower() == ".jsonl" else []
    if not any(isinstance(row, dict) and prompt_field in row for _, row in rows):
        _refuse_unnamed_instructions(p, rows, prompt_field)
        return read_texts(p)
    out = []
    for n, row in rows:
        if not isinstance(row, dict) or prompt_field not in row:
            raise DataError(f"{p}:{n}: no {prompt_field!r} field, and other lines are instruction rows",
                            hint=f"give every line a {prompt_field!r} and a {response_field!r}, or documents only "
                            "({\"text\": ...} per line)")
        if response_field not in row:
            fields = ", ".join(repr(k) for k in row)
            raise DataError(f"{p}:{n}: no {response_field!r} field (the line has {fields}): an instruction row needs "
                            "the response the model is trained to give",
                            hint="name the response's field with --response-field, or give documents as "
                            "{\"text\": ...} (every token trained)")
        prompt, response = _field(p, n, row, (prompt_field,)), _field(p, n, row, (response_field,))
        extra = row.get("input") if prompt_field == "instruction" else None
        if isinstance(extra, str) and extra.strip():
            prompt = f"{prompt}\n\n{extra}"
        if response.strip():
            out.append(PromptResponse(prompt, response))
    if not out:
        raise DataError(f"{p}: every {response_field!r} is empty", hint="give responses to train on")
    return out


#: the fields instruction data in the common shapes (Alpaca's instruction/input/output, question/answer, ...) names
#: its prompt and its response with, most specific first
PROMPT_FIELDS = ("instruction", "prompt", "question", "query")
RESPONSE_FIELDS = ("output", "response", "answer", "completion")


def _refuse_unnamed_instructions(p: Path, rows: list[tuple[int, Any]], prompt_field: str) -> None:
    """Rows without a ``"text"`` that carry a prompt and a response under other names (Alpaca's shape) are instruction
    data whose fields were not named: one line that names the options, not "no 'text' string"."""
    for n, row in rows:
        if not isinstance(row, dict) or isinstance(row.get("text"), str):
            continue
        prompt = next((k for k in PROMPT_FIELDS if isinstance(row.get(k), str)), None)
        response = next((k for k in RESPONSE_FIELDS if isinstance(row.get(k), str)), None)
        if prompt is None or response is None:
            return
        raise DataError(f"{p}:{n}: instruction rows ({', '.join(repr(k) for k in row)}) whose prompt field is not "
                        f"{prompt_field!r}", hint=f"pass --prompt-field {prompt} --response-field {response}")


def encode(tokenizer, text: str) -> list[int]:
    """``text``'s token ids, with the special tokens the tokenizer adds (BOS): a transformers tokenizer or a
    ``tokenizers.Tokenizer``."""
    if hasattr(tokenizer, "get_vocab_size"):  # tokenizers.Tokenizer: its post-processor adds BOS where configured
        return list(tokenizer.encode(text).ids)
    return list(tokenizer(text, verbose=False)["input_ids"])


def _bos_of(tokenizer) -> int | None:
    bos = getattr(tokenizer, "bos_token_id", None)
    return int(bos) if bos is not None else None


def token_windows(tokenizer, texts: list[str], window: int, *, max_windows: int | None = None,
                  bos_token_id: int | None | str = "tokenizer", context: int | None = None) -> np.ndarray:
    """``texts`` as token windows [N, window] int64 (llama-perplexity's cut): the documents joined by a blank line
    and tokenized once, cut into non-overlapping windows of ``window`` tokens (a tail shorter than a window is
    dropped), the first token of each set to BOS (``bos_token_id``; by default the tokenizer's, where it has one).
    At most ``max_windows`` windows. ``context``: the model's max_position_embeddings (a longer window is refused).
    """
    if window < 4:
        raise ConfigError(f"a perplexity window of {window} tokens is too short", hint="give --window 4 or more "
                          "(llama.cpp's default is 512; 256 for small models)")
    if context is not None and window > context:
        raise ConfigError(f"a window of {window} tokens is longer than the model's context "
                          f"(max_position_embeddings {context})", hint=f"give --window {context} or less")
    bos = _bos_of(tokenizer) if bos_token_id == "tokenizer" else bos_token_id
    ids = encode(tokenizer, "\n\n".join(t.strip("\n") for t in texts))
    n = len(ids) // window
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ConfigError(f"text shorter than one window of {window} tokens: give more text or a smaller --window",
                          hint=f"the text has {len(ids)} tokens")
    out = np.asarray(ids[: n * window], dtype=np.int64).reshape(n, window)
    if bos is not None:
        out[:, 0] = bos
    return out
