"""Extractive question answering (``question-answering``): the best answer span over a context's windows, judged by
exact match and F1 as SQuAD v1.1's official evaluation script defines them.

A question and its context are tokenised into overlapping windows (the question first, the context cut with a
stride: :func:`compress.data.tokenization.qa_windows`); the model gives start and end logits per token of each
window. :func:`best_spans` picks each question's answer as Hugging Face's ``run_qa`` post-processing does: the
``n_best`` highest start and end logits of every window, pairs with ``end >= start``, both inside the context, at
most ``max_answer_length`` tokens, the highest ``start + end`` over all windows. An answer row is
``[[start_char, end_char], [start_logit, end_logit]]``: the span's characters in its context and its two logits (the
rows validate compares with the teacher's for the output's fidelity).

The metric is SQuAD v1.1's ``evaluate-v1.1.py``: answers normalised (lower case, punctuation and the articles
a/an/the removed, white space collapsed), exact match and token F1 against each gold answer, the best over a
question's gold answers, averaged over questions. It is written out here (:func:`normalize_answer`,
:func:`exact_match`, :func:`token_f1`) because the maintained implementation, ``evaluate``'s ``squad`` metric, is
a script fetched from the Hugging Face Hub at load time (edgecompress runs offline); the functions follow the
official script line for line. Figures are fractions (0-1), not the script's percentages. Agreement is the same F1
with the teacher's answers as the reference.
"""

from __future__ import annotations

import collections
import re
import string
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MIN_WINDOW", "Answers", "QAPostprocess", "answer_texts", "best_spans", "exact_match", "normalize_answer", "qa_metrics",
           "token_f1"]


#: the fewest tokens a window holds: the question, some context and the special tokens
MIN_WINDOW = 16


class QAPostprocess(BaseModel):
    """The ``postprocess`` block of ``question-answering``: how a long context is windowed and an answer chosen."""

    model_config = ConfigDict(extra="forbid")
    window: int = Field(384, ge=MIN_WINDOW, description="Tokens per window (question, context and special tokens), capped "
                        "by the model's max length.")
    stride: int = Field(128, ge=0, description="Context tokens two consecutive windows share.")
    max_answer_length: int = Field(30, ge=1, description="Longest answer, in tokens.")
    n_best: int = Field(20, ge=1, description="Start and end candidates per window (run_qa's n_best_size).")


@dataclass(frozen=True)
class Answers:
    """One question's context and its gold answers (texts; empty: none given, the question is judged against the
    teacher only)."""

    context: str
    answers: tuple[str, ...] = field(default_factory=tuple)


# -- SQuAD v1.1's official evaluation (evaluate-v1.1.py) ----------------------------------------------------------

def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (the official script's function)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def token_f1(prediction: str, ground_truth: str) -> float:
    """F1 over the normalised answers' tokens (the official script's ``f1_score``)."""
    pred, truth = normalize_answer(prediction).split(), normalize_answer(ground_truth).split()
    common = collections.Counter(pred) & collections.Counter(truth)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(truth)
    return (2 * precision * recall) / (precision + recall)


def exact_match(prediction: str, ground_truth: str) -> float:
    """1.0 when the normalised answers are equal (the official script's ``exact_match_score``)."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def _best_over(fn, prediction: str, truths: tuple[str, ...] | list[str]) -> float:
    """The official script's ``metric_max_over_ground_truths``."""
    return max(fn(prediction, t) for t in truths)


# -- the best span over windows -------------------------------------------------------------------------------------

def best_spans(start: np.ndarray, end: np.ndarray, offsets: np.ndarray, example: np.ndarray, n_examples: int,
               post: QAPostprocess | None = None) -> np.ndarray:
    """Each question's best answer over its windows: ``[n_examples, 2, 2]`` rows of ``[[start_char, end_char],
    [start_logit, end_logit]]`` (``[[0, 0], [nan, nan]]`` where no window holds a valid span).

    ``start``/``end``: ``[windows, tokens]`` logits; ``offsets``: ``[windows, tokens, 2]`` character offsets of each
    token in its context, -1 for a token outside it (the question, special tokens, padding); ``example``: the
    question each window belongs to."""
    post = post or QAPostprocess()
    out = np.zeros((n_examples, 2, 2), dtype=np.float32)
    out[:, 1] = np.nan
    best = np.full(n_examples, -np.inf)
    k = post.n_best
    for w in range(len(example)):
        inside = offsets[w, :, 0] >= 0
        if not inside.any():
            continue
        s_log, e_log = np.where(inside, start[w], -np.inf), np.where(inside, end[w], -np.inf)
        s_top = np.argsort(s_log)[::-1][:k]
        e_top = np.argsort(e_log)[::-1][:k]
        s_top, e_top = s_top[inside[s_top]], e_top[inside[e_top]]
        if not len(s_top) or not len(e_top):
            continue
        score = s_log[s_top][:, None] + e_log[e_top][None, :]
        length = e_top[None, :] - s_top[:, None]
        score = np.where((length >= 0) & (length < post.max_answer_length), score, -np.inf)
        i, j = np.unravel_index(int(np.argmax(score)), score.shape)
        x = int(example[w])
        if np.isfinite(score[i, j]) and score[i, j] > best[x]:
            best[x] = score[i, j]
            s, e = s_top[i], e_top[j]
            out[x] = [[offsets[w, s, 0], offsets[w, e, 1]], [start[w, s], end[w, e]]]
    return out


def answer_texts(rows: np.ndarray, labels: list[Answers]) -> list[str]:
    """The answers ``rows`` (:func:`best_spans`) pick in their contexts."""
    return [a.context[int(r[0, 0]):int(r[0, 1])] for r, a in zip(rows, labels, strict=True)]


def _scores(preds: list[str], truths: list[tuple[str, ...]]) -> tuple[float, float]:
    """(exact match, F1) averaged over the questions that have gold answers."""
    pairs = [(p, t) for p, t in zip(preds, truths, strict=True) if t]
    if not pairs:
        return float("nan"), float("nan")
    em = sum(_best_over(exact_match, p, t) for p, t in pairs) / len(pairs)
    f1 = sum(_best_over(token_f1, p, t) for p, t in pairs) / len(pairs)
    return em, f1


def qa_metrics(cand: np.ndarray, ref: np.ndarray | None, labels: list[Answers] | None) -> dict[str, Any]:
    """F1 and exact match of ``cand``'s answers (:func:`best_spans` rows) against the gold answers, the teacher's,
    and agreement: F1 (and exact match) of the artifact's answers against the teacher's."""
    if labels is None:
        raise ValueError("question answering needs each question's context (labels of Answers)")
    labels = list(labels)
    pred = answer_texts(cand, labels)
    gold = [tuple(a.answers) for a in labels]
    metrics: dict[str, Any] = {"metric_name": "f1", "metric_definition": "SQuAD v1.1 token F1 (normalised answers), "
                               "best over each question's gold answers, as a fraction"}
    if any(gold):
        em, f1 = _scores(pred, gold)
        metrics.update(metric=f1, exact_match=em, questions=sum(1 for g in gold if g))
    if ref is not None:
        teacher = answer_texts(ref, labels)
        if any(gold):
            t_em, t_f1 = _scores(teacher, gold)
            metrics.update(teacher_metric=t_f1, teacher_exact_match=t_em)
        a_em, a_f1 = _scores(pred, [(t,) for t in teacher])
        metrics.update(agreement=a_f1, agreement_exact_match=a_em,
                       agreement_definition="SQuAD F1 of the artifact's answers against the teacher's")
    return metrics
