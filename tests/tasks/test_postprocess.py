"""Each task's postprocess model, and ``Postprocess`` as their union discriminated by the manifest's task."""

from __future__ import annotations

import json
import typing

import pytest

from compress.artifact import Manifest, Postprocess, load_artifact
from compress.errors import ArtifactError, ConfigError
from compress.tasks import TASKS, Task, load, postprocess_for
from compress.tasks.classification import ClassPostprocess
from compress.tasks.detection import DetectionPostprocess
from compress.tasks.embeddings import EmbeddingPostprocess, pooling_of
from compress.tasks.generation import GenerationPostprocess, KVCache
from compress.tasks.qa import QAPostprocess
from compress.tasks.sequences import CTCPostprocess
from compress.tasks.values import ThresholdPostprocess
from compress.teachers.model_description import read_description

#: the block every manifest held before postprocess was per task: every task's fields, at their defaults
FLAT = {"pooling": None, "normalize": False, "class_axis": None, "threshold": None, "scores_are_probabilities": False,
        "alphabet": None, "blank": 0, "boxes": None, "normalized": False, "nms": False, "iou_threshold": 0.5,
        "score_threshold": 0.001, "max_detections": 100}

#: a postprocess of each task, set away from its defaults
SET = {
    Task.text_classification: ClassPostprocess(class_axis=-1),
    Task.feature_extraction: EmbeddingPostprocess(pooling="mean", normalize=True),
    Task.image_classification: ClassPostprocess(),
    Task.token_classification: ClassPostprocess(class_axis=2),
    Task.regression: ClassPostprocess(),
    Task.multi_label_classification: ThresholdPostprocess(threshold=0.3, scores_are_probabilities=True),
    Task.semantic_segmentation: ClassPostprocess(class_axis=3),
    Task.probability_map: ThresholdPostprocess(threshold=0.4, class_axis=1),
    Task.ctc_recognition: CTCPostprocess(alphabet="0123456789", blank=10),
    Task.object_detection: DetectionPostprocess(boxes="cxcywh", normalized=True, nms=True, iou_threshold=0.6,
                                                score_threshold=0.25, max_detections=10, threshold=0.4),
    Task.question_answering: QAPostprocess(window=256, stride=64, max_answer_length=20, n_best=10),
    Task.text_generation: GenerationPostprocess(window=128, bos_token_id=1, eos_token_id=[2, 7], cache=KVCache(
        layers=2, kv_heads=2, head_size=8, max_length=256, layout="stateful")),
    Task.generic: ClassPostprocess(class_axis=1),
}


def _manifest(task: Task, postprocess) -> dict:
    data = {"schema_version": 1, "task": task.value, "format": "onnx", "precision": "fp32", "model_file": "model.onnx",
            "source": {"path": "teacher", "sha256": "0" * 64}}
    if postprocess is not None:
        data["postprocess"] = postprocess
    return data


def _write(tmp_path, data: dict):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "manifest.json").write_text(json.dumps(data), encoding="utf-8")
    return tmp_path


def test_every_task_has_a_postprocess_model_in_the_union():
    members = {typing.get_args(a)[0] for a in typing.get_args(typing.get_args(Postprocess)[0])}
    assert {load(info.postprocess) for info in TASKS.values()} == members
    assert set(SET) == set(Task)


@pytest.mark.parametrize("task", list(Task))
def test_each_task_model_round_trips(task):
    post = SET[task]
    assert isinstance(post, load(TASKS[task].postprocess))
    m = Manifest.model_validate(_manifest(task, post))
    assert m.postprocess == post
    again = Manifest.model_validate(json.loads(m.model_dump_json()))
    assert type(again.postprocess) is type(post) and again.postprocess == post
    assert set(json.loads(m.model_dump_json())["postprocess"]) == set(type(post).model_fields)


@pytest.mark.parametrize("task", list(Task))
def test_an_old_flat_manifest_loads_as_the_task_model(tmp_path, task):
    flat = dict(FLAT)
    if task is Task.feature_extraction:
        flat.update(pooling="mean", normalize=True)
    if task is Task.object_detection:
        flat.update(boxes="xyxy", nms=True)
    art = load_artifact(_write(tmp_path / "flat", _manifest(task, flat)), verify=False)
    assert type(art.manifest.postprocess) is load(TASKS[task].postprocess)
    if task is Task.feature_extraction:
        assert pooling_of(art.manifest.postprocess) == ("mean", True)
    if task is Task.object_detection:
        assert (art.manifest.postprocess.boxes, art.manifest.postprocess.nms) == ("xyxy", True)
    # before postprocess was written at all: the task's defaults
    art = load_artifact(_write(tmp_path / "none", _manifest(task, None)), verify=False)
    assert art.manifest.postprocess == postprocess_for(task)


@pytest.mark.parametrize(("task", "block", "key"), [
    (Task.feature_extraction, {"pooling": "mean", "class_axis": 1}, "class_axis"),
    (Task.text_classification, {"pooling": "mean"}, "pooling"),
    (Task.object_detection, {"boxes": "xyxy", "alphabet": "abc"}, "alphabet"),
    (Task.ctc_recognition, {"alphabet": "abc", "threshold": 0.3}, "threshold"),
])
def test_a_field_of_another_task_is_refused_naming_the_task(tmp_path, task, block, key):
    with pytest.raises(ArtifactError) as e:
        load_artifact(_write(tmp_path, _manifest(task, block)), verify=False)
    msg = str(e.value)
    assert "\n" not in msg and f"{key} does not apply to task {task.value}" in msg and "postprocess" in msg


def test_a_model_yaml_postprocess_is_the_task_model(tmp_path):
    f = tmp_path / "model.onnx"
    f.with_suffix(".yaml").write_text("task: feature-extraction\npostprocess: {pooling: mean, normalize: true}\n",
                                      encoding="utf-8")
    assert read_description(f).postprocess == EmbeddingPostprocess(pooling="mean", normalize=True)
    f.with_suffix(".yaml").write_text("postprocess: {class_axis: 1}\n", encoding="utf-8")  # no task: generic's
    assert read_description(f).postprocess == ClassPostprocess(class_axis=1)
    f.with_suffix(".yaml").write_text("task: object-detection\nlabels: [a]\npostprocess: {boxes: xyxy, pooling: mean}\n",
                                      encoding="utf-8")
    with pytest.raises(ConfigError, match="pooling does not apply to task object-detection"):
        read_description(f)
    f.with_suffix(".yaml").write_text("postprocess: {pooling: mean}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"pooling does not apply to task generic \(no task: given\)"):
        read_description(f)


def test_another_task_model_is_converted_where_it_sets_nothing_else():
    assert postprocess_for(Task.feature_extraction, ClassPostprocess()) == EmbeddingPostprocess()
    with pytest.raises(ValueError, match="class_axis does not apply to task feature-extraction"):
        postprocess_for(Task.feature_extraction, ClassPostprocess(class_axis=1))
    assert pooling_of(ClassPostprocess()) == (None, False)
