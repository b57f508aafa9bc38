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
from compress.tasks import StreamingMetric

__all__ = ["EntityStream", "check_scheme", "entity_metrics", "tags_of"]

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


def _entities(tags: list[str]) -> dict[str, set[tuple[int, int]]]:
    """One sentence's entities by type, as seqeval reads them (``get_entities``: its default, non-strict mode)."""
    from compress._optional import require

    require("seqeval", "entity F1 (token classification)")
    from seqeval.metrics.sequence_labeling import get_entities

    out: dict[str, set[tuple[int, int]]] = {}
    for kind, start, end in get_entities(tags):
        out.setdefault(kind, set()).add((start, end))
    return out


class _EntityCounts:
    """Per entity type: entities in both (true positives), predicted and true, summed sentence by sentence; seqeval's
    scores (micro precision, recall and F1, and per type) from them. One row per type of the tag set."""

    def __init__(self, kinds: list[str]) -> None:
        self.counts: dict[str, np.ndarray] = {k: np.zeros(3, dtype=np.int64) for k in kinds}

    def add(self, truth: list[list[str]], pred: list[list[str]]) -> None:
        for t_row, p_row in zip(truth, pred, strict=True):
            t, p = _entities(t_row), _entities(p_row)
            for kind in set(t) | set(p):
                a, b = t.get(kind, set()), p.get(kind, set())
                self.counts.setdefault(kind, np.zeros(3, dtype=np.int64))
                self.counts[kind] += (len(a & b), len(b), len(a))

    @staticmethod
    def _prf(tp: np.ndarray, pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """seqeval's precision, recall and F1 (``zero_division=0``), element by element."""
        precision = np.where(pred == 0, 0.0, tp / np.where(pred == 0, 1, pred))
        recall = np.where(true == 0, 0.0, tp / np.where(true == 0, 1, true))
        denom = precision + recall
        denom[denom == 0.0] = 1
        return precision, recall, 2 * precision * recall / denom

    def scores(self) -> dict[str, Any]:
        """What :func:`_scores` gives on the sentences added."""
        kinds = sorted(k for k, c in self.counts.items() if c[1] + c[2] > 0)
        c = np.array([self.counts[k] for k in kinds], dtype=np.int64).reshape(-1, 3)
        p, r, f = self._prf(c[:, 0], c[:, 1], c[:, 2])
        per_type = {k: {"precision": round(float(p[i]), 6), "recall": round(float(r[i]), 6),
                        "f1": round(float(f[i]), 6), "support": int(c[i, 2])} for i, k in enumerate(kinds)}
        mp, mr, mf = self._prf(*(np.array([c[:, j].sum()]) for j in range(3)))
        return {"f1": float(mf[0]), "precision": float(mp[0]), "recall": float(mr[0]), "per_type": per_type}


class EntityStream(StreamingMetric):
    """:func:`entity_metrics` batch by batch: each sentence's entities (seqeval's) reduced to TP, predicted and true
    counts per entity type (:class:`_EntityCounts`) for the artifact and the teacher against the gold tags and for the
    artifact against the teacher; one row per type of the tag set, whatever the number of batches."""

    def __init__(self, labels: list[str]) -> None:
        check_scheme(labels)
        self.labels = labels
        kinds = sorted({kind for tag in labels if tag != "O" for kind in _entities([tag])})
        self.own, self.teacher, self.agree = (_EntityCounts(kinds) for _ in range(3))

    def update(self, outputs: np.ndarray, labels=None, ref: np.ndarray | None = None) -> None:
        self.see(labels, ref)
        gold = labels
        lengths = _lengths(outputs, gold)
        pred = tags_of(outputs, self.labels, lengths)
        truth = None if gold is None else [[self.labels[i] for i in row] for row in gold]
        if truth is not None:
            self.own.add(truth, pred)
        if ref is not None:
            teacher = tags_of(ref, self.labels, lengths)
            if truth is not None:
                self.teacher.add(truth, teacher)
            self.agree.add(teacher, pred)

    def result(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {"metric_name": "entity_f1"}
        if self.has_labels:
            s = self.own.scores()
            metrics.update(metric=s["f1"], entity_precision=s["precision"], entity_recall=s["recall"],
                           per_type=s["per_type"])
            metrics["entities"] = sum(v["support"] for v in s["per_type"].values())
        if self.has_ref:
            if self.has_labels:
                t = self.teacher.scores()
                metrics.update(teacher_metric=t["f1"], teacher_per_type=t["per_type"])
            metrics["agreement"] = self.agree.scores()["f1"]
            metrics["agreement_definition"] = "entity F1 of the artifact's entities against the teacher's (seqeval)"
        return metrics
