"""Texts split into words, with a tag per word (named entities): the data of a token-classification model.

Two formats, told apart by the file:

* **CoNLL** (``.conll``, ``.txt``, ``.iob``, ...): one word a line, space- or tab-separated columns whose first is
  the word and whose last is its tag (CoNLL-2003: ``word POS chunk NER``); a blank line between sentences;
  ``-DOCSTART-`` lines are skipped. A file of one column has words and no tags.
* **JSON lines** (``.jsonl``/``.json``): one sentence an object, ``tokens`` (or ``words``) a list of words, and
  ``ner_tags`` (or ``tags``/``labels``) a list of tags, by name or id (the Hugging Face datasets layout).

Tags are mapped to the model's label ids; a tag the model does not know is a one-line error naming it and the line.
The result is a :class:`compress.data.tables.TextDataset` whose texts are lists of words and whose labels are lists of
tag ids, so batching, sampling and the teacher-output cache treat it like any other data set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compress.data.tables import TextDataset
from compress.data.utf8 import utf8_lines
from compress.errors import DataError

__all__ = ["load_word_dataset", "read_tags"]

_TOKENS = ("tokens", "words")
_TAGS = ("ner_tags", "tags", "labels")


def _conll(file: Path) -> tuple[list[list[str]], list[list[str]] | None, list[int]]:
    """Sentences, their tags (None when the file has one column) and each sentence's first line number."""
    sentences: list[list[str]] = []
    tags: list[list[str]] = []
    lines: list[int] = []
    words: list[str] = []
    sent_tags: list[str] = []
    columns = None
    for no, line in enumerate(utf8_lines(file), 1):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if words:
                sentences.append(words)
                tags.append(sent_tags)
                words, sent_tags = [], []
            continue
        if columns is None:
            columns = len(parts)
        elif len(parts) != columns:
            raise DataError(f"{file}:{no}: {len(parts)} columns where the file's first word line has {columns}",
                            hint="CoNLL: one word a line, the same columns on every line (word ... tag)")
        if not words:
            lines.append(no)
        words.append(parts[0])
        sent_tags.append(parts[-1])
    if words:
        sentences.append(words)
        tags.append(sent_tags)
    return sentences, (tags if columns and columns > 1 else None), lines


def _jsonl(file: Path) -> tuple[list[list[str]], list[list[Any]] | None, list[int]]:
    sentences: list[list[str]] = []
    tags: list[list[Any]] = []
    lines: list[int] = []
    for no, line in enumerate(utf8_lines(file), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{file}:{no}: not JSON ({e.msg})", hint="one JSON object a line") from None
        words = next((rec[k] for k in _TOKENS if k in rec), None) if isinstance(rec, dict) else None
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise DataError(f"{file}:{no}: no list of words (a 'tokens' or 'words' field of strings)",
                            hint='one object a line: {"tokens": ["EU", "rejects", ...], "ner_tags": [...]}')
        t = next((rec[k] for k in _TAGS if k in rec), None)
        if t is not None and (not isinstance(t, list) or len(t) != len(words)):
            raise DataError(f"{file}:{no}: {len(words)} words but the tags are not a list of {len(words)}",
                            hint="one tag per word")
        sentences.append(words)
        tags.append(t)
        lines.append(no)
    have = [t is not None for t in tags]
    if any(have) and not all(have):
        no = lines[have.index(False)]
        raise DataError(f"{file}:{no}: a sentence without tags in a file whose other sentences have them",
                        hint="give every sentence its tags, or none")
    return sentences, (tags if any(have) else None), lines


def _tag_ids(tags: list[list[Any]], label2id: dict[str, int], file: Path, lines: list[int]) -> list[list[int]]:
    ids = []
    n = len(label2id)
    for sent, no in zip(tags, lines, strict=True):
        row = []
        for t in sent:
            if isinstance(t, int) and not isinstance(t, bool):
                if not 0 <= t < n:
                    raise DataError(f"{file}:{no}: tag id {t} outside the model's {n} labels",
                                    hint="tag ids index the model's labels (config.json id2label)")
                row.append(t)
            elif str(t) in label2id:
                row.append(label2id[str(t)])
            else:
                known = ", ".join(list(label2id)[:12])
                raise DataError(f"{file}: sentence at line {no}: tag {t!r} is not one of the model's labels ({known})",
                                hint="use the model's tag scheme (config.json id2label), e.g. IOB2 B-PER/I-PER/O")
        ids.append(row)
    return ids


def read_tags(path: Path | str) -> list[list[str]]:
    """Each sentence's tags as written (names, or ids as text), from a CoNLL or JSON lines file: the tag set a new
    head is made for (``edgecompress finetune``)."""
    ds_file = Path(path)
    if not ds_file.is_file():
        raise DataError(f"{ds_file}: no such file", hint="pass a CoNLL file or JSON lines with tokens and ner_tags")
    _, tags, _ = (_jsonl if ds_file.suffix.lower() in (".jsonl", ".json") else _conll)(ds_file)
    if tags is None:
        raise DataError(f"{ds_file}: no tags (a CoNLL file needs a tag column last; JSON lines a ner_tags field)",
                        hint="pass labelled data: word ... tag on each line")
    return [[str(t) for t in sent] for sent in tags]


def load_word_dataset(path: Path | str, *, label2id: dict[str, int] | None = None, require_labels: bool = False,
                      limit: int | None = None, texts_only: bool = False) -> TextDataset:
    """Sentences split into words, and their tags as label ids (``label2id``: the model's), from a CoNLL or JSON lines
    file; ``limit``: the first sentences only."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: no such file", hint="pass a CoNLL file (word ... tag, a blank line between "
                        "sentences) or JSON lines with tokens and ner_tags")
    try:
        sentences, tags, lines = (_jsonl if file.suffix.lower() in (".jsonl", ".json") else _conll)(file)
    except UnicodeDecodeError:
        raise DataError(f"{file}: not UTF-8 text", hint="save the file as UTF-8") from None
    if not sentences:
        raise DataError(f"{file}: no sentences", hint="a CoNLL file has one word a line, a blank line between sentences")
    if limit is not None:
        sentences, lines = sentences[:limit], lines[:limit]
        tags = None if tags is None else tags[:limit]
    if texts_only:
        tags = None
    if require_labels and tags is None:
        raise DataError(f"{file}: no tags (a CoNLL file needs a tag column last; JSON lines a ner_tags field)",
                        hint="pass labelled data: word ... tag on each line")
    labels = None
    if tags is not None and label2id is not None:
        labels = _tag_ids(tags, label2id, file, lines)
    return TextDataset(texts=sentences, labels=labels, source=str(file), text_column="words",
                       label_column=None if labels is None else "tags")
