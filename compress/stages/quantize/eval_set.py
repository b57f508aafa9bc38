"""The eval rows of accuracy-aware quantization and how a candidate's outputs score on them: accuracy (classifiers),
mean cosine to the FP32 outputs (embeddings, dense outputs), or the user's ``--metric``; plus the output error that
breaks ties between candidates (:mod:`compress.stages.quantize.accuracy` searches with them)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compress.artifact import Manifest
from compress.data.tables import TextDataset
from compress.errors import ConfigError

log = logging.getLogger("compress.stages.quantize.accuracy")

__all__ = ["DEFAULT_BATCH", "EvalSet", "evaluate_metric", "load_eval_set", "predict_outputs", "score_outputs"]

DEFAULT_BATCH = 32

@dataclass
class EvalSet:
    """Eval rows (sorted by length), their labels, and - once set - the FP32 reference outputs.

    Encodings are made by the first backend that evaluates the set and reused afterwards: every
    candidate of one search must share the tokenizer (quantization copies it unchanged).
    """

    dataset: TextDataset
    classification: bool
    batch_size: int = DEFAULT_BATCH
    reference: np.ndarray | None = None
    source: str = "<memory>"
    labels_names: list[str] | None = None  #: the model's labels; with ``words``: its entity tags
    words: bool = False  #: token classification: rows are texts split into words, scored by entity F1
    user_metric: Any = None  #: ``--metric`` (compress.validation.user_metric.UserMetric): the metric instead of the task's
    #: a task judged by its own metric (mAP, mIoU, 1 - CER, micro F1): the manifest it is computed for
    task_manifest: Manifest | None = None
    _encoded: list[dict[str, np.ndarray]] | None = field(default=None, repr=False)
    _task_metric_name: str | None = field(default=None, repr=False)

    @property
    def metric_name(self) -> str:
        if self.user_metric is not None:
            return self.user_metric.spec
        if self.words:
            return "entity_f1"
        if self.task_manifest is not None:  # named by the task's metric once it has scored (the reference first)
            return self._task_metric_name or f"{self.task_manifest.task} metric"
        return "accuracy" if self.classification else "cosine_to_fp32"

    @property
    def labels(self) -> Any:
        """Label ids: an array, or per-word lists for token classification."""
        if self.dataset.labels is None:
            return None
        return self.dataset.labels if self.words or self.task_manifest else np.asarray(self.dataset.labels)

    def __len__(self) -> int:
        return len(self.dataset)

    def encoded(self, backend) -> list[dict[str, np.ndarray]]:
        """The encoded batches (made with ``backend.encode`` on first use)."""
        if self._encoded is None:
            if self.words:  # (feeds, word ids) of each batch
                self._encoded = [backend.encoder.encode_words(t) for t, _, _ in self.dataset.batches(self.batch_size)]
            else:
                self._encoded = [backend.encode(t, p) for t, p, _ in self.dataset.batches(self.batch_size)]
        return self._encoded

    def set_reference(self, backend) -> float:
        """Run the reference (FP32) model, keep its outputs, return its metric (1.0 for embeddings)."""
        self.reference = predict_outputs(backend, self)
        return score_outputs(self.reference, self)[0]


def load_eval_set(
    path: str | Path,
    manifest: Manifest,
    n: int,
    *,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH,
    user_metric: Any = None,
) -> EvalSet:
    """Read ``n`` eval rows from ``path`` for the model described by ``manifest``.

    Classifiers need labels (names mapped through ``manifest.labels``, or ids); embedding models only
    need texts. When the file has more than ``n`` rows a deterministic random sample (``seed``) is
    taken from its first ``max(20 n, 5000)`` rows. Rows are sorted by length so batches pad little.
    Raises :class:`~compress.errors.DataError` for a missing/unreadable file or missing labels.
    """
    from compress.data.inputs import load_inputs, preprocess_kind, splits_words
    from compress.tasks import TASKS

    info = TASKS[manifest.task]
    own_metric = info.labels in ("values", "boxes", "spans")  # judged by the task's own metric on labels
    if not info.higher_is_better and user_metric is None:  # MAE: lower is better, which the search is not
        raise ConfigError(f"accuracy-aware quantization of a {manifest.task} model is not built yet",
                          hint="pass --metric module:function (your metric, higher is better), or quantize without "
                               "--max-drop and validate the result")
    task_scored = own_metric and user_metric is None
    classification = manifest.labels is not None and info.labels in ("per-sample", "per-word")
    labels = manifest.labels if classification or info.labels == "boxes" else None
    if info.labels == "spans":  # question answering: SQuAD-format JSON, questions with contexts and answers
        from compress.data.squad import load_squad

        ds = load_squad(path, limit=max(20 * n, 5000)).sample(n, seed=seed)
        return EvalSet(dataset=ds, classification=False, batch_size=batch_size, source=str(path),
                       user_metric=user_metric, task_manifest=manifest if task_scored else None)
    ds = load_inputs(
        path, manifest.preprocess,
        label2id={name: i for i, name in enumerate(labels)} if labels else None,
        num_labels=len(labels) if labels and classification else None,
        require_labels=classification or task_scored,
        limit=max(20 * n, 5000), targets=info.targets,
    )
    ds = ds.sample(n, seed=seed)
    if preprocess_kind(manifest.preprocess) == "text":  # texts sorted by length, so batches pad little
        order = sorted(range(len(ds)), key=lambda i: (len(ds.texts[i]) + len(ds.pairs[i] if ds.pairs else ""), i))
        ds = dataclasses.replace(
            ds,
            texts=[ds.texts[i] for i in order],
            pairs=None if ds.pairs is None else [ds.pairs[i] for i in order],
            labels=None if ds.labels is None else [ds.labels[i] for i in order],
        )
    if len(ds) < n:
        log.warning("%s has only %d rows (asked for %d eval samples); using all of them", path, len(ds), n)
    return EvalSet(dataset=ds, classification=classification, batch_size=batch_size, source=str(path),
                   labels_names=labels, words=splits_words(manifest.preprocess), user_metric=user_metric,
                   task_manifest=manifest if task_scored else None)


def predict_outputs(backend, eval_set: EvalSet) -> np.ndarray:
    """``backend.predict`` over the eval rows (logits, pooled embeddings, each word's scores, or each question's answer
    span), in eval-set order."""
    from compress.device.shipped import concatenate_rows, first_subtokens

    if str(backend.artifact.manifest.task) == "question-answering":  # each question's best span over its windows
        from compress.validation.teacher_outputs import predict_answers

        return concatenate_rows([predict_answers(backend, q, c) for q, c, _ in eval_set.dataset.batches(
            eval_set.batch_size)])
    if eval_set.words:
        return concatenate_rows([first_subtokens(backend.predict(f), w) for f, w in eval_set.encoded(backend)])
    return np.concatenate([backend.predict(b) for b in eval_set.encoded(backend)], axis=0)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine over every value of a row (a vector, or a dense map flattened)."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return (a * b).sum(axis=-1) / np.clip(den, 1e-12, None)


def score_outputs(outputs: np.ndarray, eval_set: EvalSet) -> tuple[float, float]:
    """``(metric, output_error)`` of outputs on the eval set (error 0.0 when no reference is set): the user's metric
    (``--metric``) where one is given, else accuracy (classifiers) or the mean cosine to the FP32 outputs."""
    ref = eval_set.reference
    if eval_set.words and eval_set.user_metric is None:
        from compress.tasks.entities import entity_metrics

        error = 0.0 if ref is None else float(np.nanmean(np.abs(_softmax(outputs) - _softmax(ref))))
        return entity_metrics(eval_set.labels_names, outputs, None, eval_set.labels)["metric"], error
    if eval_set.task_manifest is not None:  # the task's metric on the labels; the output cosine orders the layers
        from compress.tasks import TASKS

        m = eval_set.task_manifest
        error = 0.0 if ref is None else float((1.0 - _cosine_rows(outputs, ref)).mean())
        scored = TASKS[m.task].metric_fn(m)(m, outputs, None, eval_set.labels)
        eval_set._task_metric_name = scored.get("metric_name")
        return float(scored["metric"]), error
    if ref is None and not eval_set.classification and eval_set.user_metric is None:
        raise ValueError("embedding eval sets score against the FP32 outputs: call eval_set.set_reference(fp32) first")
    cos = None if ref is None or eval_set.classification else _cosine_rows(outputs, ref)
    if ref is None:
        error = 0.0
    else:
        error = float(np.abs(_softmax(outputs) - _softmax(ref)).mean()) if cos is None else float((1.0 - cos).mean())
    if eval_set.user_metric is not None:  # the user's metric; the output error still orders the layers
        return eval_set.user_metric(outputs, eval_set.labels), error
    if eval_set.classification:
        from compress.tasks.classification import accuracy

        return accuracy(outputs.argmax(-1), eval_set.labels), error
    return float(cos.mean()), error


def evaluate_metric(backend, eval_set: EvalSet) -> float:
    """The eval metric of a loaded backend: accuracy (classifiers) or mean cosine to FP32 (embeddings)."""
    return score_outputs(predict_outputs(backend, eval_set), eval_set)[0]
