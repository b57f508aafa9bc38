"""Extractive question-answering data in SQuAD's JSON format: ``{"data": [{"title", "paragraphs": [{"context",
"qas": [{"id", "question", "answers": [{"text", "answer_start"}]}]}]}]}`` (SQuAD v1.1, XQuAD, MLQA).

:func:`load_squad` reads it into a :class:`SquadDataset`: one row per question (its text, its context as the second
segment, its gold answers as :class:`compress.tasks.qa.Answers`), with the face every data set has (``inputs``,
``pairs``, ``labels``, ``batches``, ``head``, ``sample``). Every answer must be the span of its context at its
``answer_start``; a question must have an answer (SQuAD 2.0's unanswerable questions are refused); a context must not
be empty: each is a one-line :class:`~compress.errors.DataError` naming the question and the fix.
:func:`squad_rows` gives the same questions as flat rows (``text`` = question and context joined, ``question``,
``context``, ``id``) for the readers of texts only (calibration, parity samples: :mod:`compress.data.readers`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.data import RowSubsets
from compress.data.utf8 import read_utf8
from compress.errors import ConfigError, DataError
from compress.tasks.qa import Answers

__all__ = ["SquadDataset", "is_squad", "read_json", "load_squad", "squad_rows"]

_LAYOUT = ('{"data": [{"title": ..., "paragraphs": [{"context": ..., "qas": [{"id": ..., "question": ..., '
           '"answers": [{"text": ..., "answer_start": N}]}]}]}]}')


@dataclass
class SquadDataset(RowSubsets):
    """Questions, their contexts and gold answers, in file order; ``titles``: each question's article."""

    questions: list[str]
    contexts: list[str]
    labels: list[Answers]
    ids: list[str]
    titles: list[str]
    starts: list[tuple[int, ...]]  # each gold answer's answer_start, as given
    source: str = "<memory>"

    def __len__(self) -> int:
        return len(self.questions)

    @property
    def inputs(self) -> list[str]:
        """The first segments (questions)."""
        return self.questions

    @property
    def texts(self) -> list[str]:
        return self.questions

    @property
    def pairs(self) -> list[str]:
        """The second segments (contexts)."""
        return self.contexts

    def _subset(self, idx: list[int] | range) -> SquadDataset:
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731 - one use per field
        return dataclasses.replace(self, questions=pick(self.questions), contexts=pick(self.contexts),
                                   labels=pick(self.labels), ids=pick(self.ids), titles=pick(self.titles),
                                   starts=pick(self.starts))

    def articles(self, titles: list[str] | set[str]) -> SquadDataset:
        """The questions of the articles named ``titles`` (a split by article)."""
        keep = set(titles)
        return self._subset([i for i, t in enumerate(self.titles) if t in keep])

    def batches(self, size: int) -> Iterator[tuple[list[str], list[str], list[Answers]]]:
        """Consecutive ``(questions, contexts, answers)`` batches of at most ``size`` questions."""
        if size < 1:
            raise ValueError(f"batches: size must be >= 1, got {size}")
        for i in range(0, len(self), size):
            yield self.questions[i:i + size], self.contexts[i:i + size], self.labels[i:i + size]

    def __repr__(self) -> str:
        return f"SquadDataset({self.source!r}, questions={len(self)})"


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: no such file", hint="pass a SQuAD-format .json file")
    try:
        return json.loads(read_utf8(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}, column {e.colno})",
                        hint="fix the JSON; SQuAD's layout is " + _LAYOUT) from None


def is_squad(obj: Any) -> bool:
    """Whether a parsed JSON document has SQuAD's layout (articles with paragraphs)."""
    data = obj.get("data") if isinstance(obj, dict) else None
    return isinstance(data, list) and bool(data) and isinstance(data[0], dict) and "paragraphs" in data[0]


def _where(path: Path, title: str, q: dict[str, Any]) -> str:
    return f"{path}: article {title!r}, question {q.get('id', '?')!r}"


def _answers(path: Path, title: str, q: dict[str, Any], context: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """A question's gold answers, each checked to be its context's span at its ``answer_start``."""
    raw = q.get("answers")
    if q.get("is_impossible"):
        raise DataError(f"{_where(path, title, q)} is marked is_impossible (SQuAD 2.0): question answering here "
                        "always gives an answer span", hint="leave SQuAD 2.0's unanswerable questions out of the data")
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{_where(path, title, q)} has no answer, but the data does not mark it unanswerable",
                        hint='give it "answers": [{"text": ..., "answer_start": N}] (a span of its context)')
    texts, starts = [], []
    for a in raw:
        text, start = (a.get("text"), a.get("answer_start")) if isinstance(a, dict) else (None, None)
        if not isinstance(text, str) or not text or not isinstance(start, int) or isinstance(start, bool):
            raise DataError(f"{_where(path, title, q)}: an answer is not {{\"text\": non-empty string, "
                            f"\"answer_start\": integer}} ({json.dumps(a)[:80]})", hint="fix the answer")
        if context[start:start + len(text)] != text:
            found = context.find(text)
            hint = (f"it occurs at character {found}: set answer_start to {found}" if found >= 0 else
                    "the answer must be copied verbatim from its context")
            raise DataError(f"{_where(path, title, q)}: answer {text[:60]!r} is not the span of its context at "
                            f"answer_start {start} (there: {context[start:start + len(text)][:60]!r})", hint=hint)
        texts.append(text)
        starts.append(start)
    return tuple(texts), tuple(starts)


def _questions(path: Path, doc: Any) -> Iterator[tuple[str, str, str, str, tuple[str, ...], tuple[int, ...]]]:
    """``(title, id, question, context, answers, starts)`` of every question, checked, in file order."""
    if not is_squad(doc):
        raise DataError(f"{path} is not SQuAD-format JSON (no \"data\" list of articles with \"paragraphs\")",
                        hint="question answering reads SQuAD's layout: " + _LAYOUT)
    for n, article in enumerate(doc["data"], 1):
        title = str(article.get("title", f"#{n}")) if isinstance(article, dict) else f"#{n}"
        for p, para in enumerate(article.get("paragraphs") or [] if isinstance(article, dict) else [], 1):
            context = para.get("context") if isinstance(para, dict) else None
            if not isinstance(context, str) or not context.strip():
                raise DataError(f"{path}: article {title!r}, paragraph {p} has an empty context",
                                hint="give every paragraph the text its questions are answered from, or remove it")
            for q in para.get("qas") or []:
                question = q.get("question") if isinstance(q, dict) else None
                if not isinstance(question, str) or not question.strip():
                    raise DataError(f"{path}: article {title!r}, paragraph {p}: a question is empty or missing",
                                    hint='give every item of "qas" a non-empty "question"')
                texts, starts = _answers(path, title, q, context)
                yield title, str(q.get("id", "")), question, context, texts, starts


def load_squad(path: Path | str, *, limit: int | None = None) -> SquadDataset:
    """Read a SQuAD-format JSON file: every question checked (:mod:`compress.data.squad`); ``limit``: the first
    that many questions."""
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}", hint="pass a positive --limit or leave it out")
    path = Path(path)
    if path.is_dir() or path.suffix.lower() != ".json":
        raise DataError(f"{path}: question answering reads a SQuAD-format .json file",
                        hint="pass a .json file laid out as " + _LAYOUT)
    rows = []
    for row in _questions(path, read_json(path)):
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise DataError(f"{path} holds no questions", hint="give the paragraphs questions (\"qas\")")
    titles, ids, questions, contexts, answers, starts = (list(c) for c in zip(*rows, strict=True))
    return SquadDataset(questions=questions, contexts=contexts,
                        labels=[Answers(c, a) for c, a in zip(contexts, answers, strict=True)], ids=ids,
                        titles=titles, starts=starts, source=str(path))


def squad_rows(path: Path, doc: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """A parsed SQuAD document as flat rows for readers of texts only: ``text`` (question and context joined, what a
    calibration or parity sample feeds), ``question``, ``context``, ``id``."""
    columns = ["text", "question", "context", "id"]
    rows = [{"text": f"{q} {c}", "question": q, "context": c, "id": i} for _, i, q, c, _, _ in _questions(path, doc)]
    return columns, rows
