"""Plain text for causal LMs: documents and prompts from .txt/.jsonl, and llama-perplexity's window cut."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compress.data.text import read_prompts, read_texts, token_windows
from compress.errors import ConfigError, DataError


class Chars:
    """A tokenizer stand-in: BOS 1 then one id per character (ord), as a transformers tokenizer is called."""

    bos_token_id = 1

    def __call__(self, text, **_):
        return {"input_ids": [1] + [ord(c) for c in text]}


def test_windows_are_cut_from_one_tokenization_and_start_with_bos():
    w = token_windows(Chars(), ["abcdefghij"], 4)
    assert w.dtype == np.int64 and w.shape == (2, 4)
    assert w.tolist() == [[1, 97, 98, 99], [1, 101, 102, 103]]  # 'd' (100) is overwritten by BOS; 'hij' dropped
    two = token_windows(Chars(), ["ab", "cd"], 4)  # documents joined by a blank line, tokenized once
    assert two.tolist() == [[1, 97, 98, 10]]
    assert token_windows(Chars(), ["x" * 40], 4, max_windows=3).shape == (3, 4)
    assert token_windows(Chars(), ["abcdefgh"], 4, bos_token_id=None).tolist() == [[1, 97, 98, 99],
                                                                                   [100, 101, 102, 103]]


def test_windows_refuse_short_text_and_long_windows_in_one_line():
    with pytest.raises(ConfigError, match="text shorter than one window of 16 tokens: give more text or a smaller "
                                          "--window"):
        token_windows(Chars(), ["abc"], 16)
    with pytest.raises(ConfigError, match="longer than the model's context"):
        token_windows(Chars(), ["x" * 100], 64, context=32)


def test_read_texts_and_prompts(tmp_path):
    (tmp_path / "a.txt").write_text("Once upon a time.\n\nThe end.\n")
    assert read_texts(tmp_path / "a.txt") == ["Once upon a time.\n\nThe end.\n"]
    assert read_prompts(tmp_path / "a.txt") == ["Once upon a time.", "The end."]
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps("two") + "\n"
                                      + json.dumps({"prompt": "three", "text": "x"}) + "\n")
    assert read_texts(tmp_path / "b.jsonl") == ["one", "two", "x"]
    assert read_prompts(tmp_path / "b.jsonl") == ["one", "two", "three"]
    (tmp_path / "c.jsonl").write_text('{"title": "x"}\n')
    with pytest.raises(DataError, match=r"c.jsonl:1: no 'text' string"):
        read_texts(tmp_path / "c.jsonl")
    (tmp_path / "l.jsonl").write_text(json.dumps({"text": "good film", "label": 1}) + "\n")
    with pytest.raises(DataError, match=r"l.jsonl:1: a 'label' field: a causal LM takes plain text, not labelled"):
        read_texts(tmp_path / "l.jsonl")
    (tmp_path / "d.csv").write_text("text\nhello\n")
    with pytest.raises(DataError, match="text data is .txt or .jsonl"):
        read_texts(tmp_path / "d.csv")
    (tmp_path / "e.txt").write_text("\n\n")
    with pytest.raises(DataError, match="no text"):
        read_texts(tmp_path / "e.txt")


def test_wikitext_s_raw_files_are_plain_text_and_a_directory_is_named_as_one(tmp_path):
    """``validate --data wiki.test.raw`` (WikiText's own file, as the README's users have it) reads as one
    document; a directory given as the text is said to be one, not "no such file"."""
    raw = tmp_path / "wiki.test.raw"
    raw.write_text(" = Title = \n\n Some text .\n", encoding="utf-8")
    assert read_texts(raw) == [raw.read_text(encoding="utf-8")]
    assert read_prompts(raw) == ["= Title =", "Some text ."]
    with pytest.raises(DataError, match="a directory, not a text file"):
        read_texts(tmp_path)
