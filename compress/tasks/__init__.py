"""What edgecompress knows of each task, in one table: :data:`TASKS`, one :class:`TaskInfo` per :class:`Task`.

A task's entry says what kind of model does it (one forward pass, a generation: :data:`Kind`), what its labels are,
where its class scores lie, the Hugging Face head it maps to, its metric (an import string ``"module:fn"``, with
which direction is better), how agreement with the teacher is judged and how a model file's ``postprocess`` block
is checked against its outputs and labels. Every layer asks the table (``TASKS[t].classifies``, ``TASKS[t].head``,
:func:`kind_of`, ...) rather than naming tasks; the metrics live in the task modules
beside it (:mod:`compress.tasks.classification`, :mod:`compress.tasks.detection`, ...). Adding a task is one module
plus one entry here.

A leaf: this package imports only the standard library, numpy, pydantic (each task's postprocess model) and
:mod:`compress.errors` (:mod:`compress.artifact` imports :class:`Task` from it).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import numpy as np

from compress.errors import ConfigError

__all__ = ["KINDS", "KIND_INFO", "TASKS", "CollectedMetric", "Kind", "KindInfo", "StreamingMetric", "Task", "TaskInfo",
           "by_kind", "is_generator", "kind_of", "load", "postprocess_for", "postprocess_models", "repeated_class_name",
           "task_for"]


class Task(StrEnum):
    text_classification = "text-classification"
    feature_extraction = "feature-extraction"
    image_classification = "image-classification"
    #: a label per word (named entities): token-level class scores read at each word's first sub-token
    token_classification = "token-classification"
    #: numbers out (sensor readings, scores): judged by MAE, RMSE and R² against target values
    regression = "regression"
    #: any number of classes per sample: scores per class, each one in when its probability passes a threshold
    multi_label_classification = "multi-label-classification"
    #: a class per pixel: class scores on the class axis (``postprocess.class_axis``), judged by mean IoU
    semantic_segmentation = "semantic-segmentation"
    #: one probability per pixel (text or defect maps): binarised at a threshold, judged by IoU
    probability_map = "probability-map"
    #: a character sequence per sample (OCR lines, keyword spotting): CTC scores decoded greedily over an alphabet
    ctc_recognition = "ctc-recognition"
    #: boxes, scores and classes from a declared output layout (``postprocess.boxes``), judged by COCO mAP
    object_detection = "object-detection"
    #: an answer span per question in its context (extractive QA, SQuAD): start and end logits per token over the
    #: context's windows, judged by SQuAD's exact match and F1
    question_answering = "question-answering"
    #: a causal language model with a KV cache: next-token logits judged by perplexity on text windows (llama.cpp's
    #: llama-perplexity), KL and top-1 agreement against the teacher
    text_generation = "text-generation"
    #: a model whose task edgecompress does not know (an adopted file): judged by its outputs' fidelity to the FP32
    #: model (cosine, SNR) and by a user's --metric
    generic = "generic"


#: what a task's labels are: a class id per sample, a tag per word, values per sample (targets, 0/1 flags, label
#: maps, texts), boxes per image, answer spans in a context per question, or none (judged against the teacher only)
Labels = Literal["per-sample", "per-word", "values", "boxes", "spans", "none"]

#: what one use of a model is, the words :mod:`compress.host.measure` times by: one forward pass per batch, a
#: generation (a prompt's prefill, then one step per new token through a KV cache), or a stream (chunks of a sequence,
#: call by call, the state fed back: a manifest's ``stream``)
Kind = Literal["forward", "generation", "stream"]


@dataclass(frozen=True)
class KindInfo:
    """What every verb may ask of a kind of model without a table of its own (a verb that does something different
    for each kind keeps a ``{kind: handler}`` table, read through :func:`by_kind`)."""

    #: a generator: a prompt's prefill, then one token per step through a KV cache; judged on text, never on labels
    generates: bool = False


#: every kind of model edgecompress knows, and what it knows of it
KIND_INFO: dict[Kind, KindInfo] = {"forward": KindInfo(), "generation": KindInfo(generates=True), "stream": KindInfo()}
KINDS: tuple[Kind, ...] = tuple(KIND_INFO)


def load(spec: str) -> Callable[..., Any]:
    """The function an import string ``"module:fn"`` names."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class TaskInfo:
    """One task: what validate, the stages and the teachers read of it.

    ``metric`` is ``"module:fn"``, called ``fn(first, cand, ref, labels)`` where ``first`` is what ``metric_takes``
    names of the manifest (``"labels"``, ``"postprocess"``, ``"manifest"``; None: nothing, the call is
    ``fn(cand, ref, labels)``). A classifying task whose manifest names no classes is judged by ``unlabelled`` (same
    form) instead. ``check`` (``"module:fn"``, called ``fn(postprocess, output_shape, labels, preprocess)``)
    refuses a model file's ``postprocess`` block that does not fit its outputs and labels."""

    labels: Labels
    #: the metric's import string and what of the manifest it takes first
    metric: str
    metric_takes: Literal["labels", "postprocess", "manifest"] | None = None
    #: False where lower is better (an error such as MAE): retention is then the teacher's over the artifact's
    higher_is_better: bool = True
    #: the metric of a classifying task whose manifest names no classes
    unlabelled: str | None = None
    #: the axis of the primary output holding class scores, when it is not the last axis of a [batch, classes] output
    class_axis: int | None = None
    #: how agreement with the teacher is judged: the same top class over the class axis, the same nearest
    #: neighbours (embeddings), or by the task's own metric against the teacher's outputs
    agreement: Literal["top-class", "neighbours", "metric"] = "top-class"
    #: the transformers ``AutoModelFor...`` class a checkpoint of the task loads with (None: none edgecompress loads)
    head: str | None = None
    #: a model file of this task must name its classes (``labels:`` in its model.yaml)
    needs_class_names: bool = False
    #: the check of a model file's postprocess block, ``"module:fn"``
    check: str | None = None
    #: what the task's Hugging Face checkpoints read: texts, images, or either/neither (None)
    inputs: Literal["text", "image"] | None = None
    #: the data's labels are target numbers (a regression's), read as floats rather than class names or ids
    targets: bool = False
    #: the pydantic model of the task's ``postprocess`` block (a manifest's, a model.yaml's), ``"module:Class"``
    postprocess: str = "compress.tasks.classification:ClassPostprocess"
    #: the metric's streaming form, ``"module:Class"`` (a :class:`StreamingMetric` built with what ``metric_takes``
    #: names, or with nothing), whose state does not grow with the batches; None: the batches are collected and the
    #: array form runs once at the end (:class:`CollectedMetric`)
    streaming: str | None = None
    #: the streaming form of ``unlabelled`` (built with the manifest)
    unlabelled_streaming: str | None = None
    #: the task's own figures of agreement with the teacher from outputs alone, no labels (``"module:fn"``, called
    #: ``fn(m, cand, ref) -> {name: value}``): what quantize's held-out check judges beside the output cosine
    #: (:mod:`compress.stages.quantize.fallback`); None: the output cosine (and top-1 agreement) alone
    output_agreement: str | None = None
    #: what kind of model does the task: a generation (a causal LM's) or one forward pass per batch (a model of such a
    #: task whose manifest has a ``stream`` is a stream: :func:`kind_of`)
    kind: Kind = "forward"

    @property
    def classifies(self) -> bool:
        """The labels are one class id per sample (accuracy, macro-F1 and top-1 agreement judge it)."""
        return self.labels == "per-sample"

    @property
    def direction(self) -> str:
        return "higher" if self.higher_is_better else "lower"

    def metric_fn(self, m) -> Callable[[Any, np.ndarray, np.ndarray | None, Any], dict[str, Any]]:
        """The metric for the manifest ``m`` as ``f(m, cand, ref, labels)``: the task's own, or ``unlabelled`` where
        a classifying task's manifest names no classes."""
        spec, first = self.metric, self.metric_takes
        if self.unlabelled is not None and m.labels is None:
            spec, first = self.unlabelled, "manifest"
        fn = load(spec)

        def call(m, cand, ref, labels):
            return fn(*_head(first, m), cand, ref, labels)

        return call

    def stream(self, m) -> StreamingMetric:
        """The metric in its streaming form, for outputs that arrive batch by batch: the task's own accumulating form
        (``streaming``, or ``unlabelled_streaming`` where :meth:`metric_fn` picks ``unlabelled``), else the array
        form on the batches collected."""
        form, first = self.streaming, self.metric_takes
        if self.unlabelled is not None and m.labels is None:
            form, first = self.unlabelled_streaming, "manifest"
        if form is None:
            return CollectedMetric(self.metric_fn(m), m)
        return load(form)(*_head(first, m))


def _head(first: str | None, m) -> list[Any]:
    """What a metric takes of the manifest ``m`` before the outputs (``TaskInfo.metric_takes``)."""
    return [] if first is None else [m if first == "manifest" else getattr(m, first)]


class StreamingMetric:
    """A task's metric fed batch by batch: :meth:`update` with each batch's outputs (and the teacher's, and the
    labels), :meth:`result` at the end, equal to the array form on the batches joined (the array form is one
    update). Per-word and box labels are lists (one entry per sample), the rest arrays.

    The base of every streaming form: a task's own (``TaskInfo.streaming``) keeps sums and counts whose size does not
    grow with the number of batches, so memory is bounded by a batch; :class:`CollectedMetric` is the fallback for a
    metric that needs every row at once. Labels and teacher outputs come with every batch or with none."""

    has_labels = has_ref = False
    batches = 0

    def update(self, outputs: np.ndarray, labels=None, ref: np.ndarray | None = None) -> None:
        """Add one batch: the artifact's ``outputs``, their ``labels`` (None: none) and the teacher's ``ref``."""
        raise NotImplementedError

    def result(self) -> dict[str, Any]:
        """The metric over every batch given."""
        raise NotImplementedError

    def see(self, labels, ref) -> None:
        """Note one batch's labels and teacher outputs as given or not; ValueError where a stream mixes both."""
        has = (labels is not None, ref is not None)
        if self.batches and has != (self.has_labels, self.has_ref):
            raise ValueError("a streaming metric's labels and teacher outputs come with every batch or with none")
        self.has_labels, self.has_ref = has
        self.batches += 1


class CollectedMetric(StreamingMetric):
    """The streaming form of a metric that needs every row at once (COCO mAP over all images, nearest neighbours
    across rows, a metric a task module gives no streaming form): the batches are kept and the array form runs once,
    in :meth:`result`. Memory grows with the rows."""

    def __init__(self, fn: Callable[..., dict[str, Any]], m) -> None:
        self._fn, self._m = fn, m
        self._cand: list[np.ndarray] = []
        self._ref: list[np.ndarray] = []
        self._labels: list[Any] = []
        self._no_ref = self._no_labels = False

    def update(self, outputs: np.ndarray, labels=None, ref: np.ndarray | None = None) -> None:
        """Add one batch: the artifact's ``outputs``, their ``labels`` (None: none) and the teacher's ``ref``."""
        self._cand.append(np.asarray(outputs))
        self._no_ref |= ref is None
        if ref is not None:
            self._ref.append(np.asarray(ref))
        self._no_labels |= labels is None
        if labels is not None:
            self._labels.extend(list(labels))

    def result(self) -> dict[str, Any]:
        """The metric over every batch given."""
        cand = np.concatenate(self._cand) if self._cand else np.zeros((0,))
        ref = None if self._no_ref or not self._ref else np.concatenate(self._ref)
        labels = None if self._no_labels else self._labels
        if labels is not None and labels and not isinstance(labels[0], (dict, list, str)):
            labels = np.asarray(labels)
        return self._fn(self._m, cand, ref, labels)


def repeated_class_name(labels: list[str] | None) -> str | None:
    """Why ``labels`` (class names by id) cannot name classes, or None: a name given twice (``[cat, cat, bird]``)
    makes name -> id ambiguous, so one of the two ids would never be scored. Every place a label list enters (a
    model.yaml, a manifest, a checkpoint's id2label, a program's yaml) asks this."""
    seen: dict[str, int] = {}
    for i, name in enumerate(labels or []):
        if name in seen:
            return f"class name {name!r} is given twice (ids {seen[name]} and {i}): give each class its own name"
        seen[name] = i
    return None


def task_for(inputs: str | None, *, numbers: bool = False, kind: Kind = "forward") -> Task:
    """The task of a model that reads ``inputs`` (``"text"``, ``"image"``) and gives one class per sample, or numbers
    (``numbers``: a regressor, whatever it reads), or of a model of another ``kind`` that reads them (``"generation"``
    and ``"text"``: text-generation); ``generic`` where no task fits."""
    for t, info in TASKS.items():
        if kind != "forward":
            if info.kind == kind and info.inputs == inputs:
                return t
        elif info.targets if numbers else info.classifies and info.inputs is not None and info.inputs == inputs:
            return t
    return Task.generic


def kind_of(what: Any) -> Kind:
    """What kind of model ``what`` is: a task (a :class:`Task` or its name), a manifest (its ``task`` and ``stream``:
    a manifest's, a raw ``manifest.json`` mapping's), an artifact (its ``manifest``) or a teacher (its ``task``).

    The task's :attr:`TaskInfo.kind`, except that a forward model whose manifest has a ``stream`` is a stream;
    ``"forward"`` for what names no task edgecompress knows. A verb reads it through :func:`by_kind` (its table of
    handlers) or :func:`is_generator` ("is this a generator?"); a source on disk (a checkpoint folder, a ``.gguf``) is probed by
    :func:`compress.teachers.kinds.source_kind`, which asks this of a manifest."""
    if isinstance(what, dict):
        task, stream = what.get("task"), what.get("stream")
    elif isinstance(what, str):
        task, stream = what, None
    else:
        m = getattr(what, "manifest", None)  # an artifact's; a teacher's is a method that writes one
        m = what if m is None or callable(m) else m
        task, stream = getattr(m, "task", None), getattr(m, "stream", None)
    try:
        kind = TASKS[Task(task)].kind
    except ValueError:  # no task, or one edgecompress does not know
        kind = "forward"
    return "stream" if kind == "forward" and stream is not None else kind


def is_generator(what: Any) -> bool:
    """Whether ``what`` (anything :func:`kind_of` reads) is a generator: its kind's :attr:`KindInfo.generates`. A kind
    not in :data:`KIND_INFO` is refused in one line naming it."""
    return by_kind(KIND_INFO, what, "edgecompress").generates


def by_kind(table: Mapping[str, Any], what: Any, verb: str, *, hint: str | None = None, kind: str | None = None) -> Any:
    """``table``'s entry (a verb's ``{kind: handler}``) for the kind of ``what`` (:func:`kind_of`; ``kind``, where it is
    known already: a source on disk's, :func:`compress.teachers.kinds.source_kind`); a kind the verb does not take is
    refused in one line naming it, never sent down another kind's path."""
    kind = kind or kind_of(what)
    if kind not in table:
        raise ConfigError(f"{verb} does not take a {kind} model (it takes {', '.join(table)})",
                          hint=hint or "give it a model of a kind it takes")
    return table[kind]


def postprocess_models() -> list[type]:
    """The postprocess models of every task, each once, in :data:`TASKS`' order: what ``Postprocess`` (in
    :mod:`compress.artifact`) is the union of."""
    return list(dict.fromkeys(load(info.postprocess) for info in TASKS.values()))


def postprocess_for(task: Task | str, block: Any = None, *, named: str | None = None):
    """``block`` as ``task``'s postprocess model: a mapping (a manifest's, a model.yaml's), another task's model, or
    None (the defaults). A key only another task reads is dropped where it holds that task's default (a manifest
    written when postprocess was one flat block of every task's fields) and refused otherwise, in one line naming the
    task (``named``, if given, names it in the message instead)."""
    model = load(TASKS[task].postprocess)
    if block is None or isinstance(block, model):
        return model() if block is None else block
    if not isinstance(block, dict):  # another task's model: what it sets
        block = block.model_dump(exclude_defaults=True) if hasattr(block, "model_dump") else block
    if isinstance(block, dict):
        owners = {k: f for m in postprocess_models() for k, f in m.model_fields.items()}
        block = dict(block)
        for key in [k for k in block if k not in model.model_fields and k in owners]:
            if block[key] != owners[key].get_default(call_default_factory=True):
                raise ValueError(f"{key} does not apply to task {named or task} (its postprocess takes "
                                 f"{', '.join(model.model_fields) or 'nothing'})")
            del block[key]
    return model.model_validate(block)


_CLASSIFY = "compress.tasks.classification:classification_metrics"
_EMBED = "compress.tasks.embeddings:embedding_metrics"
_CLASSIFY_STREAM = "compress.tasks.classification:ClassificationStream"
_THRESHOLD = "compress.tasks.values:ThresholdPostprocess"

#: every task edgecompress knows, and what it knows of it
TASKS: dict[Task, TaskInfo] = {
    Task.text_classification: TaskInfo(
        labels="per-sample", metric=_CLASSIFY, metric_takes="manifest", unlabelled=_EMBED, streaming=_CLASSIFY_STREAM,
        head="AutoModelForSequenceClassification", needs_class_names=True, inputs="text"),
    Task.feature_extraction: TaskInfo(labels="none", metric=_EMBED, metric_takes="manifest", agreement="neighbours",
                                      head="AutoModel", postprocess="compress.tasks.embeddings:EmbeddingPostprocess"),
    Task.image_classification: TaskInfo(
        labels="per-sample", metric=_CLASSIFY, metric_takes="manifest", unlabelled=_EMBED, streaming=_CLASSIFY_STREAM,
        head="AutoModelForImageClassification", needs_class_names=True, inputs="image"),
    Task.token_classification: TaskInfo(
        labels="per-word", metric="compress.tasks.entities:entity_metrics", metric_takes="labels", class_axis=-1,
        streaming="compress.tasks.entities:EntityStream",
        agreement="metric", head="AutoModelForTokenClassification", inputs="text"),
    Task.regression: TaskInfo(labels="values", metric="compress.tasks.values:regression_metrics",
                              streaming="compress.tasks.values:RegressionStream",
                              higher_is_better=False, agreement="metric", head="AutoModelForSequenceClassification",
                              targets=True),
    Task.multi_label_classification: TaskInfo(
        labels="values", metric="compress.tasks.values:multilabel_metrics", metric_takes="postprocess",
        streaming="compress.tasks.values:MultiLabelStream",
        agreement="metric", postprocess=_THRESHOLD),
    Task.semantic_segmentation: TaskInfo(
        labels="values", metric="compress.tasks.maps:segmentation_metrics", metric_takes="postprocess",
        streaming="compress.tasks.maps:SegmentationStream",
        class_axis=1, agreement="metric"),
    Task.probability_map: TaskInfo(labels="values", metric="compress.tasks.maps:probability_map_metrics",
                                   streaming="compress.tasks.maps:ProbabilityMapStream",
                                   metric_takes="postprocess", agreement="metric", postprocess=_THRESHOLD,
                                   output_agreement="compress.tasks.maps:mask_agreement"),
    Task.ctc_recognition: TaskInfo(labels="values", metric="compress.tasks.sequences:ctc_metrics",
                                   streaming="compress.tasks.sequences:CTCStream",
                                   metric_takes="postprocess", agreement="metric",
                                   check="compress.tasks.sequences:check_postprocess",
                                   postprocess="compress.tasks.sequences:CTCPostprocess"),
    Task.object_detection: TaskInfo(labels="boxes", metric="compress.tasks.detection:detection_metrics",
                                    metric_takes="manifest", agreement="metric", needs_class_names=True,
                                    check="compress.tasks.detection:check_postprocess",
                                    output_agreement="compress.tasks.detection:score_agreement",
                                    postprocess="compress.tasks.detection:DetectionPostprocess"),
    Task.question_answering: TaskInfo(labels="spans", metric="compress.tasks.qa:qa_metrics", agreement="metric",
                                      head="AutoModelForQuestionAnswering", inputs="text",
                                      postprocess="compress.tasks.qa:QAPostprocess"),
    Task.text_generation: TaskInfo(labels="none", kind="generation",
                                   metric="compress.tasks.generation:generation_metrics", metric_takes="postprocess", higher_is_better=False, agreement="metric",
                                   head="AutoModelForCausalLM", inputs="text",
                                   postprocess="compress.tasks.generation:GenerationPostprocess",
                                   streaming="compress.tasks.generation:GenerationStream"),
    Task.generic: TaskInfo(labels="per-sample", metric=_CLASSIFY, metric_takes="manifest",
                           unlabelled="compress.tasks.classification:output_cosine_metrics",
                           streaming=_CLASSIFY_STREAM,
                           unlabelled_streaming="compress.tasks.classification:OutputCosineStream"),
}
