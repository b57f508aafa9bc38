"""CTC recognition (OCR lines, keyword spotting): greedy decoding over a declared alphabet, character error rate.

The output holds class scores per time step, ``[batch, time, classes]`` (a time-major graph's output is transposed
in the graph first: samples are batched on the first axis everywhere); class ``postprocess.blank`` (default 0) is the blank and the others stand for the
characters of ``postprocess.alphabet`` in order, so the output has ``len(alphabet) + 1`` classes. Greedy decoding takes
each step's top class, merges repeats and drops blanks.

The character error rate is the Levenshtein distance of every decoded string to its label, summed, over the labels'
characters (rapidfuzz's Levenshtein, the engine of jiwer's CER). The metric is the character accuracy, 1 - CER
(floored at 0), so retention reads as everywhere else; exact-match accuracy is beside it, and agreement is the share
of samples whose decoded string is the teacher's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from compress.errors import ConfigError, DataError
from compress.tasks import StreamingMetric

__all__ = ["CTCPostprocess", "CTCStream", "check_alphabet", "check_postprocess", "ctc_decode", "ctc_metrics"]


class CTCPostprocess(BaseModel):
    """The ``postprocess`` block of ``ctc-recognition``: what the classes stand for."""

    model_config = ConfigDict(extra="forbid")
    alphabet: str | None = Field(
        None, description="The characters the non-blank classes stand for, in class order (the output has "
        "len(alphabet) + 1 classes).")
    blank: int = Field(0, ge=0, description="The class id of the blank.")


def check_alphabet(postprocess, classes: int | None, where: str) -> None:
    """Refuse a missing alphabet, or one that does not match the output's class count."""
    if not postprocess.alphabet:
        raise ConfigError(f"{where}: CTC recognition needs the alphabet the classes stand for",
                          hint="postprocess: {alphabet: \"0123456789\"} (blank: class 0 unless blank: says)")
    if classes is not None and classes != len(postprocess.alphabet) + 1:
        raise ConfigError(f"{where}: the alphabet has {len(postprocess.alphabet)} characters, so the output should "
                          f"have {len(postprocess.alphabet) + 1} classes (with the blank), but it has {classes}",
                          hint="list one character per non-blank class, in class order")
    if not 0 <= postprocess.blank < len(postprocess.alphabet) + 1:
        raise ConfigError(f"{where}: blank class {postprocess.blank} is not one of the output's classes",
                          hint="blank: the class id of the CTC blank (usually 0)")


def check_postprocess(postprocess, shape, labels: list[str] | None, preprocess, where: str) -> None:
    """A model file's alphabet against its output's class count (the last axis of ``shape``, where known)."""
    width = shape[-1] if shape else None
    check_alphabet(postprocess, width if isinstance(width, int) else None, where)


def ctc_decode(scores: np.ndarray, postprocess) -> list[str]:
    """Greedy CTC decoding of every sample: top class per step, repeats merged, blanks dropped."""
    top = scores.argmax(-1)
    blank, alphabet = postprocess.blank, postprocess.alphabet
    out = []
    for row in top:
        keep = np.r_[True, row[1:] != row[:-1]] & (row != blank)
        out.append("".join(alphabet[c if c < blank else c - 1] for c in row[keep]))
    return out


def _cer(pred: list[str], gold: list[str]) -> float:
    return _distance(pred, gold) / max(sum(len(g) for g in gold), 1)


def ctc_metrics(postprocess, cand: np.ndarray, ref: np.ndarray | None, labels) -> dict[str, Any]:
    """Character accuracy (1 - CER, the metric), CER and exact-match accuracy against the label strings; the
    teacher's; agreement (the share of samples decoded exactly as the teacher's)."""
    check_alphabet(postprocess, cand.shape[-1], "the model")
    pred = ctc_decode(cand, postprocess)
    metrics: dict[str, Any] = {"metric_name": "char_accuracy"}
    if labels is not None:
        gold = [str(g) for g in labels]
        if len(gold) != len(pred):
            raise DataError(f"{len(gold)} label strings for {len(pred)} samples", hint="one string per sample")
        extra = sorted(set("".join(gold)) - set(postprocess.alphabet))
        if extra:
            raise DataError(f"the labels hold characters outside the model's alphabet ({''.join(extra[:10])!r})",
                            hint="label with the alphabet's characters only")
        cer = _cer(pred, gold)
        metrics.update(metric=max(0.0, 1.0 - cer), cer=cer,
                       exact_match=float(np.mean([p == g for p, g in zip(pred, gold, strict=True)])))
    if ref is not None:
        teacher = ctc_decode(ref, postprocess)
        if labels is not None:
            tcer = _cer(teacher, gold)
            metrics.update(teacher_metric=max(0.0, 1.0 - tcer), teacher_cer=tcer,
                           teacher_exact_match=float(np.mean([t == g for t, g in zip(teacher, gold, strict=True)])))
        metrics["agreement"] = float(np.mean([p == t for p, t in zip(pred, teacher, strict=True)]))
        metrics["agreement_definition"] = "share of samples decoded to exactly the teacher's string"
    return metrics


def _distance(pred: list[str], gold: list[str]) -> int:
    """The summed Levenshtein distance of each decoded string to its label (the numerator of :func:`_cer`)."""
    from compress._optional import require

    require("rapidfuzz", "character error rate (CTC recognition)")
    from rapidfuzz.distance import Levenshtein

    return sum(Levenshtein.distance(p, g) for p, g in zip(pred, gold, strict=True))


class CTCStream(StreamingMetric):
    """:func:`ctc_metrics` batch by batch: summed edit distances and label lengths (the CER's numerator and
    denominator), exact matches and agreements of the artifact and the teacher; a few integers whatever the number
    of batches."""

    def __init__(self, postprocess) -> None:
        self.post = postprocess
        self.rows = self.chars = self.dist = self.exact = 0
        self.teacher_dist = self.teacher_exact = self.agree = 0

    def update(self, outputs: np.ndarray, labels=None, ref: np.ndarray | None = None) -> None:
        self.see(labels, ref)
        check_alphabet(self.post, outputs.shape[-1], "the model")
        pred = ctc_decode(outputs, self.post)
        self.rows += len(pred)
        if labels is not None:
            gold = [str(g) for g in labels]
            if len(gold) != len(pred):
                raise DataError(f"{len(gold)} label strings for {len(pred)} samples", hint="one string per sample")
            extra = sorted(set("".join(gold)) - set(self.post.alphabet))
            if extra:
                raise DataError(f"the labels hold characters outside the model's alphabet ({''.join(extra[:10])!r})",
                                hint="label with the alphabet's characters only")
            self.chars += sum(len(g) for g in gold)
            self.dist += _distance(pred, gold)
            self.exact += sum(p == g for p, g in zip(pred, gold, strict=True))
        if ref is not None:
            teacher = ctc_decode(ref, self.post)
            if labels is not None:
                self.teacher_dist += _distance(teacher, gold)
                self.teacher_exact += sum(t == g for t, g in zip(teacher, gold, strict=True))
            self.agree += sum(p == t for p, t in zip(pred, teacher, strict=True))

    def result(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {"metric_name": "char_accuracy"}
        n, chars = self.rows, max(self.chars, 1)
        if self.has_labels:
            cer = self.dist / chars
            metrics.update(metric=max(0.0, 1.0 - cer), cer=cer, exact_match=self.exact / n)
        if self.has_ref:
            if self.has_labels:
                tcer = self.teacher_dist / chars
                metrics.update(teacher_metric=max(0.0, 1.0 - tcer), teacher_cer=tcer,
                               teacher_exact_match=self.teacher_exact / n)
            metrics["agreement"] = self.agree / n
            metrics["agreement_definition"] = "share of samples decoded to exactly the teacher's string"
        return metrics
