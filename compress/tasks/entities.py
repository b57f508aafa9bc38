"""Named-entity recognition (token classification): entity-level F1 by seqeval's definition.

seqeval is the library the field reports with (the conlleval script's definition, in Python): an entity counts when
its type and its span both match, so an F1 over entities, not over tags. Each row's scores are
``[words, labels]`` (:func:`compress.device.shipped.first_subtokens`, NaN beyond the row's words); the predicted tag of
a word is its top label. Agreement with the teacher is the same F1 with the teacher's entities as the reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compress.errors import ConfigError

__all__ = ["check_scheme", "entity_metrics", "tags_of"]

_PREFIXES = ("B", "I", "E", "S", "L", "U")


def check_scheme(labels: list[str] | None) -> None:
    """Refuse labels that are not an entity tag scheme seqeval reads (IOB1/IOB2/IOE/IOBES: ``O`` and ``B-TYPE`` ...)."""
    bad = [t for t in labels or [] if t != "O" and not (len(t) > 2 and t[0] in _PREFIXES and t[1] in "-_")]
    if not labels or bad:
        raise ConfigError(f"the model's labels are not an entity tag scheme ({', '.join(bad[:4]) or 'none'}): "
                          "token classification is judged by entities", hint="label the model with IOB2 tags "
                          "(O, B-PER, I-PER, ...) in config.json id2label")


def _lengths(scores: np.ndarray, gold: list[list[int]] | None) -> list[int]:
    if gold is not None:
        return [len(g) for g in gold]
    return [int(np.isfinite(row).all(-1).sum()) for row in scores]


def tags_of(scores: np.ndarray, labels: list[str], lengths: list[int]) -> list[list[str]]:
    """Each row's predicted tags (``O`` for a word the model did not see: cut off by its maximum length)."""
    out = []
    for row, n in zip(scores, lengths, strict=True):
        row = row[:n]
        seen = np.isfinite(row).all(-1)
        top = np.where(seen, np.nan_to_num(row, nan=-np.inf).argmax(-1), -1)
        out.append([labels[i] if i >= 0 else "O" for i in top] + ["O"] * (n - len(row)))
    return out


def _scores(truth: list[list[str]], pred: list[list[str]]) -> dict[str, Any]:
    from compress._optional import require

    require("seqeval", "entity F1 (token classification)")
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    report = classification_report(truth, pred, output_dict=True, zero_division=0)
    per_type = {k: {"precision": round(float(v["precision"]), 6), "recall": round(float(v["recall"]), 6),
                    "f1": round(float(v["f1-score"]), 6), "support": int(v["support"])}
                for k, v in report.items() if not k.endswith(" avg")}
    return {"f1": float(f1_score(truth, pred, zero_division=0)),
            "precision": float(precision_score(truth, pred, zero_division=0)),
            "recall": float(recall_score(truth, pred, zero_division=0)), "per_type": per_type}


def entity_metrics(labels: list[str], cand: np.ndarray, ref: np.ndarray | None,
                   gold: list[list[int]] | None) -> dict[str, Any]:
    """Entity F1 (micro, seqeval) of ``cand`` against the gold tags, per-type scores, the teacher's F1, and agreement:
    the F1 of the artifact's entities against the teacher's."""
    check_scheme(labels)
    lengths = _lengths(cand, gold)
    pred = tags_of(cand, labels, lengths)
    metrics: dict[str, Any] = {"metric_name": "entity_f1"}
    if gold is not None:
        truth = [[labels[i] for i in row] for row in gold]
        s = _scores(truth, pred)
        metrics.update(metric=s["f1"], entity_precision=s["precision"], entity_recall=s["recall"],
                       per_type=s["per_type"])
        metrics["entities"] = sum(v["support"] for v in s["per_type"].values())
    if ref is not None:
        teacher = tags_of(ref, labels, lengths)
        if gold is not None:
            t = _scores(truth, teacher)
            metrics.update(teacher_metric=t["f1"], teacher_per_type=t["per_type"])
        metrics["agreement"] = _scores(teacher, pred)["f1"]
        metrics["agreement_definition"] = "entity F1 of the artifact's entities against the teacher's (seqeval)"
    return metrics
