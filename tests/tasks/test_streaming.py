"""The tasks' accumulating streaming metrics (``TaskInfo.streaming``): equal to the array form at any batch size,
on the edge cases of their sums (a class never seen, targets far from zero), and with a state that does not grow with
the number of batches."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from compress.tasks import TASKS, CollectedMetric, StreamingMetric, Task


def _post(**kw):
    base = {"threshold": None, "scores_are_probabilities": False, "class_axis": None, "alphabet": None, "blank": 0}
    return SimpleNamespace(**{**base, **kw})


def _manifest(task, labels=None, post=None):
    return SimpleNamespace(task=task, labels=labels, outputs=[], postprocess=post or _post(), preprocess=None)


def _cases(n: int = 12, seed: int = 1):
    """Per accumulating task: (name, manifest, outputs, teacher outputs, labels) of ``n`` samples."""
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((n, 8))
    names = list("abcdefgh")
    yield "classification", _manifest(Task.image_classification, names), scores, \
        scores + 0.5 * rng.standard_normal((n, 8)), rng.integers(0, 8, n)
    yield "generic", _manifest(Task.generic), scores + 0.1 * rng.standard_normal((n, 8)), scores, None
    words = rng.standard_normal((n, 6, 5))
    words[::3, 4:] = np.nan  # shorter sentences: NaN beyond their words
    gold = [list(rng.integers(0, 5, 4 if i % 3 == 0 else 6)) for i in range(n)]
    yield "entities", _manifest(Task.token_classification, ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]), words, \
        words + 0.7 * rng.standard_normal(words.shape), gold
    target = 1e4 + rng.standard_normal((n, 3))  # far from zero: the variance's stable form matters
    yield "regression", _manifest(Task.regression), target + 0.1 * rng.standard_normal((n, 3)), \
        target + 0.05 * rng.standard_normal((n, 3)), target
    flags = (scores > 0).astype(np.int64)
    flags[:, 7] = 0  # a class never labelled
    yield "multi-label", _manifest(Task.multi_label_classification, post=_post(threshold=0.6)), scores, \
        scores + 0.3, flags
    maps = rng.standard_normal((n, 4, 5, 5))
    maps[:, 3] -= 10  # a class never predicted
    yield "segmentation", _manifest(Task.semantic_segmentation, list("abcd")), maps, \
        maps + 0.4 * rng.standard_normal(maps.shape), maps[:, :3].argmax(1)
    prob = rng.standard_normal((n, 1, 5, 5))
    yield "probability map", _manifest(Task.probability_map, post=_post(threshold=0.5)), prob, \
        prob + 0.3 * rng.standard_normal(prob.shape), (prob[:, 0] > 0.2).astype(np.int64)
    from compress.tasks.sequences import ctc_decode

    steps = rng.standard_normal((n, 7, 4)) * 4
    post = _post(alphabet="abc")
    yield "ctc", _manifest(Task.ctc_recognition, post=post), steps, steps + 0.8 * rng.standard_normal(steps.shape), \
        ctc_decode(steps + 0.5 * rng.standard_normal(steps.shape), post)


def _feed(stream: StreamingMetric, cand, ref, labels, batch: int, batches: int | None = None) -> StreamingMetric:
    starts = range(0, len(cand), batch)
    for k in range(batches or len(starts)):
        i = starts[k % len(starts)]
        stream.update(cand[i:i + batch], None if labels is None else labels[i:i + batch],
                      None if ref is None else ref[i:i + batch])
    return stream


def _same(streamed: dict, whole: dict) -> None:
    assert streamed.keys() == whole.keys()
    for k, v in whole.items():
        if isinstance(v, float) and not math.isnan(v):
            assert math.isclose(streamed[k], v, rel_tol=1e-9, abs_tol=1e-12), (k, streamed[k], v)
        elif isinstance(v, float):
            assert math.isnan(streamed[k]), k
        else:
            assert streamed[k] == v, k


CASES = list(_cases())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
@pytest.mark.parametrize("batch", [1, 2, 5, 12])
@pytest.mark.parametrize("given", ["labels and teacher", "labels only", "teacher only"])
def test_an_accumulating_stream_equals_the_array_form(case, batch, given):
    _, m, cand, ref, labels = case
    if given == "labels only" or (given == "teacher only" and labels is None):
        ref = None if labels is not None else ref
    if given == "teacher only":
        if TASKS[m.task].classifies and m.labels:
            pytest.skip("a classifier's array form needs labels (its top-5 indexes them)")
        labels = None
    info = TASKS[m.task]
    stream = info.stream(m)
    assert not isinstance(stream, CollectedMetric)
    whole = info.metric_fn(m)(m, cand, ref, labels)
    _same(_feed(stream, cand, ref, labels, batch).result(), whole)


def _state(obj, depth: int = 0) -> int:
    """How many values a streaming metric holds: array elements and container entries, through its parts."""
    total = 0
    for v in vars(obj).values():
        if isinstance(v, np.ndarray):
            total += v.size
        elif isinstance(v, (list, tuple, set, dict)):
            total += len(v) + sum(x.size for x in (v.values() if isinstance(v, dict) else v)
                                  if isinstance(x, np.ndarray))
        elif depth < 3 and hasattr(v, "__dict__") and not isinstance(v, (SimpleNamespace, type)):
            total += _state(v, depth + 1)
    return total


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_an_accumulating_streams_state_does_not_grow_with_the_batches(case):
    _, m, cand, ref, labels = case
    one = _feed(TASKS[m.task].stream(m), cand, ref, labels, 2, batches=1)
    fifty = _feed(TASKS[m.task].stream(m), cand, ref, labels, 2, batches=50)
    assert fifty.batches == 50
    assert _state(one) == _state(fifty)


def test_the_collected_form_is_kept_where_a_metric_needs_every_row():
    emb = _manifest(Task.feature_extraction)
    assert isinstance(TASKS[Task.feature_extraction].stream(emb), CollectedMetric)  # neighbours across rows
    assert isinstance(TASKS[Task.text_classification].stream(_manifest(Task.text_classification)), CollectedMetric)
    assert TASKS[Task.object_detection].streaming is None  # COCO mAP over all images


def test_a_stream_refuses_labels_in_some_batches_only():
    _, m, cand, ref, labels = CASES[0]
    stream = TASKS[m.task].stream(m)
    stream.update(cand[:2], labels[:2], ref[:2])
    with pytest.raises(ValueError, match="every batch or with none"):
        stream.update(cand[2:4], None, ref[2:4])
