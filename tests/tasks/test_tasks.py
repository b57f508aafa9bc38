"""The task table (compress.tasks.TASKS): a task added in a fixture (a module and an entry) is judged by validate's
metric dispatch, its direction read from the table, with no other edit; every task's streaming metric (update per
batch, result at the end) equals its array form."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from compress.artifact import ImagePreprocess
from compress.tasks import TASKS, Task, TaskInfo, postprocess_for
from compress.tasks.detection import DetectionPostprocess
from compress.tasks.sequences import CTCPostprocess
from compress.tasks.values import ThresholdPostprocess
from compress.validation.metrics import prediction_metrics

KEYPOINTS = '''
import numpy as np


def keypoint_metrics(cand, ref, labels):
    """Mean distance of the predicted points to the labelled ones: lower is better."""
    out = {"metric_name": "mean_point_error"}
    if labels is not None:
        out["metric"] = float(np.abs(cand - np.asarray(labels)).mean())
    if ref is not None and labels is not None:
        out["teacher_metric"] = float(np.abs(ref - np.asarray(labels)).mean())
    return out
'''


@pytest.fixture
def keypoints(tmp_path, monkeypatch):
    """A task edgecompress does not ship: one module on the path and one entry in the table."""
    (tmp_path / "keypoint_task.py").write_text(KEYPOINTS, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(TASKS, "keypoints", TaskInfo(labels="values", metric="keypoint_task:keypoint_metrics",
                                                     higher_is_better=False, agreement="metric"))
    return "keypoints"


def _manifest(task, labels=None, post=None, preprocess=None):
    return SimpleNamespace(task=task, labels=labels, outputs=[], postprocess=post or postprocess_for(task),
                           preprocess=preprocess)


def test_a_task_added_in_a_fixture_is_dispatched_with_its_direction(keypoints):
    rng = np.random.default_rng(0)
    truth = rng.standard_normal((12, 4))
    cand, ref = truth + 0.2, truth + 0.1
    met = prediction_metrics(_manifest(keypoints), cand, ref, list(truth))
    assert met["metric_name"] == "mean_point_error"
    assert met["metric"] == pytest.approx(0.2) and met["teacher_metric"] == pytest.approx(0.1)
    assert met["lower_is_better"] is True  # from the table: the module's metric does not say
    assert TASKS[keypoints].direction == "lower" and "output_fidelity" in met


def test_the_table_answers_what_the_ladders_asked():
    assert set(TASKS) == set(Task)
    assert {t for t, i in TASKS.items() if i.classifies} == {
        Task.text_classification, Task.image_classification, Task.generic}
    assert [t for t, i in TASKS.items() if not i.higher_is_better] == [Task.regression, Task.text_generation]
    assert TASKS[Task.token_classification].head == "AutoModelForTokenClassification"
    assert TASKS[Task.semantic_segmentation].class_axis == 1
    for info in TASKS.values():  # every import string names a function
        from compress.tasks import load

        for spec in (info.metric, info.unlabelled, info.check):
            assert spec is None or callable(load(spec))


def _cases():
    """Per task: (manifest, outputs, teacher outputs, labels) of 12 samples."""
    rng = np.random.default_rng(1)
    n = 12
    scores = rng.standard_normal((n, 3))
    yield "classification", _manifest(Task.text_classification, ["a", "b", "c"]), scores, \
        scores + 0.3 * rng.standard_normal((n, 3)), rng.integers(0, 3, n)
    emb = rng.standard_normal((n, 8))
    yield "embeddings", _manifest(Task.feature_extraction), emb + 0.1 * rng.standard_normal((n, 8)), emb, None
    yield "generic", _manifest(Task.generic), scores + 0.1, scores, None
    words = rng.standard_normal((n, 5, 3))
    yield "entities", _manifest(Task.token_classification, ["O", "B-X", "I-X"]), words, \
        words + 0.5 * rng.standard_normal(words.shape), [list(rng.integers(0, 3, 5)) for _ in range(n)]
    target = rng.standard_normal((n, 2))
    yield "regression", _manifest(Task.regression), target + 0.1, target + 0.05, target
    yield "multi-label", _manifest(Task.multi_label_classification, post=ThresholdPostprocess(threshold=0.5)), scores, \
        scores + 0.2, (scores > 0).astype(np.int64)
    maps = rng.standard_normal((n, 3, 4, 4))
    yield "segmentation", _manifest(Task.semantic_segmentation, ["a", "b", "c"]), maps, maps + 0.3, \
        maps.argmax(1)
    prob = rng.standard_normal((n, 1, 4, 4))
    yield "probability map", _manifest(Task.probability_map, post=ThresholdPostprocess(threshold=0.5)), prob, prob + 0.2, \
        (prob[:, 0] > 0).astype(np.int64)
    steps = rng.standard_normal((n, 6, 4)) * 4
    post = CTCPostprocess(alphabet="abc")
    from compress.tasks.sequences import ctc_decode

    yield "ctc", _manifest(Task.ctc_recognition, post=post), steps, steps + 0.5, ctc_decode(steps + 0.3, post)
    boxes = np.zeros((n, 4, 6), dtype=np.float32)  # [batch, boxes, x1 y1 x2 y2 score class] after NMS
    truth = []
    for i in range(n):
        x, y = rng.uniform(0, 20, 2)
        boxes[i, 0] = [x, y, x + 10, y + 10, 0.9, i % 2]
        truth.append({"boxes": np.array([[x, y, x + 10 + (i % 3), y + 10]]), "classes": np.array([i % 2]),
                      "size": (32, 32)})
    det = _manifest(Task.object_detection, ["a", "b"], DetectionPostprocess(boxes="xyxy", nms=True),
                    ImagePreprocess(size=[32, 32]))
    yield "detection", det, boxes, boxes, truth


@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: c[0])
@pytest.mark.parametrize("batch", [1, 5])
def test_a_streaming_metric_equals_its_array_form(case, batch):
    _, m, cand, ref, labels = case
    info = TASKS[m.task]
    whole = info.metric_fn(m)(m, cand, ref, labels)
    stream = info.stream(m)
    for i in range(0, len(cand), batch):
        stream.update(cand[i:i + batch], None if labels is None else labels[i:i + batch], ref[i:i + batch])
    streamed = stream.result()
    assert streamed.keys() == whole.keys()
    for k, v in whole.items():
        if isinstance(v, float):
            assert math.isclose(streamed[k], v, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(v) and math.isnan(streamed[k])), k
        else:
            assert streamed[k] == v, k


def test_a_teacher_scoring_zero_leaves_retention_unmeasured_and_says_why():
    """Both --data and --teacher given, the teacher's accuracy 0: retention is undefined, and the budget's note says
    that, not "needs --data, --teacher" (issue 53)."""
    from compress.profiles.budgets import judge
    from compress.profiles.schema import Budgets

    ref = np.tile([[5.0, 0.0]], (8, 1))  # the teacher always says class 0
    cand = ref + 0.1
    met = prediction_metrics(_manifest(Task.text_classification, labels=["a", "b"]), cand, ref, np.ones(8, int))
    assert met["teacher_metric"] == 0 and "retention" not in met
    [b] = [r for r in judge(Budgets(min_accuracy_retention=0.99), met) if r.name == "min_accuracy_retention"]
    assert b.status == "unverified" and "the teacher scores 0" in b.note and "--data" not in b.note
