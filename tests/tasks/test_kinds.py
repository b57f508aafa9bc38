"""A task's kind (compress.tasks.kind_of) and a source's (compress.teachers.kinds.source_kind): the one answer to "is
this a generator?" (or a stream), for a task, a manifest, an artifact, a teacher, a checkpoint folder, an artifact's
folder and a .gguf file; and the format table's doors by kind (FormatSpec.exporter_for, quantizer_for)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from compress.formats import FORMATS
from compress.tasks import KINDS, TASKS, Task, kind_of, task_for
from compress.teachers.kinds import source_kind


def test_every_task_has_a_kind_and_text_generation_is_the_generation():
    assert {info.kind for info in TASKS.values()} <= set(KINDS)
    assert [t for t, info in TASKS.items() if info.kind == "generation"] == [Task.text_generation]
    assert task_for("text", kind="generation") is Task.text_generation
    assert task_for("image", kind="generation") is Task.generic  # no task generates from images (yet)
    assert task_for("text") is Task.text_classification  # the forward lookup is as it was


@pytest.mark.parametrize(("what", "kind"), [
    (Task.text_generation, "generation"), ("text-generation", "generation"), (Task.text_classification, "forward"),
    ("no-such-task", "forward"), (None, "forward"),
    ({"task": "text-generation"}, "generation"),  # a manifest.json read as it is
    ({"task": "multi-label-classification", "stream": {"chunk": 512}}, "stream"),
    ({"task": "image-classification"}, "forward"), ({}, "forward"),
])
def test_kind_of_a_task_or_a_raw_manifest(what, kind):
    assert kind_of(what) == kind


def test_kind_of_a_manifest_an_artifact_and_a_teacher():
    streaming = SimpleNamespace(task=Task.multi_label_classification, stream=SimpleNamespace(chunk=512))
    assert kind_of(streaming) == "stream"
    assert kind_of(SimpleNamespace(manifest=streaming)) == "stream"  # an artifact: its manifest's
    lm = SimpleNamespace(task=Task.text_generation, stream=None)
    assert kind_of(lm) == kind_of(SimpleNamespace(manifest=lm)) == "generation"
    # a generator whose manifest had a stream is still a generation (validate measured it as one first)
    assert kind_of(SimpleNamespace(task=Task.text_generation, stream=streaming.stream)) == "generation"
    # a teacher: its task (its manifest is a method that writes one)
    teacher = SimpleNamespace(task=Task.text_generation, manifest=lambda: None)
    assert kind_of(teacher) == "generation"
    assert kind_of(SimpleNamespace(task=Task.regression, manifest=lambda: None)) == "forward"
    assert kind_of(SimpleNamespace(path="x")) == "forward"  # names no task


def _folder(root, name, **files):
    d = root / name
    d.mkdir()
    for fname, body in files.items():
        (d / fname.replace("_", ".")).write_text(body if isinstance(body, str) else json.dumps(body))
    return d


def test_source_kind_of_checkpoints_artifacts_and_gguf_files(tmp_path):
    llama = _folder(tmp_path, "llama", config_json={"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    gpt2 = _folder(tmp_path, "gpt2", config_json={"architectures": ["GPT2LMHeadModel"]})
    bert = _folder(tmp_path, "bert", config_json={"architectures": ["BertForSequenceClassification"]})
    assert (source_kind(llama), source_kind(str(gpt2)), source_kind(bert)) == ("generation", "generation", "forward")
    # an artifact's folder: its manifest says, whatever config.json beside it says
    lm_art = _folder(tmp_path, "lm-art", manifest_json={"task": "text-generation"},
                     config_json={"architectures": ["BertModel"]})
    vad = _folder(tmp_path, "vad", manifest_json={"task": "multi-label-classification", "stream": {"chunk": 512}})
    onnx = _folder(tmp_path, "onnx", manifest_json={"task": "text-classification"},
                   config_json={"architectures": ["LlamaForCausalLM"]})
    assert (source_kind(lm_art), source_kind(vad), source_kind(onnx)) == ("generation", "stream", "forward")
    # a .gguf: llama.cpp's files are causal LMs (read by its suffix; the header is read where it is used)
    (tmp_path / "tiny.gguf").write_bytes(b"GGUF")
    assert source_kind(tmp_path / "tiny.gguf") == source_kind(tmp_path / "NOT-YET.GGUF") == "generation"
    # a folder named like one is read as a folder
    assert source_kind(_folder(tmp_path, "dir.gguf", config_json={"architectures": ["BertModel"]})) == "forward"
    # what cannot be read is one forward pass: the loader names what is wrong with it
    assert source_kind(_folder(tmp_path, "broken", config_json="{not json")) == "forward"
    assert source_kind(_folder(tmp_path, "list", manifest_json=[1, 2])) == "forward"
    assert source_kind(tmp_path / "missing") == source_kind(tmp_path / "model.onnx") == "forward"
    # something already loaded: kind_of's answer
    assert source_kind(SimpleNamespace(task=Task.text_generation, stream=None)) == "generation"


def test_formats_pick_exporter_and_quantizer_by_kind():
    onnx = FORMATS["onnx"]
    assert onnx.exporter_for("generation") == onnx.generator_exporter != onnx.exporter
    assert onnx.exporter_for("forward") == onnx.exporter_for("stream") == onnx.exporter
    assert onnx.quantizer_for("generation") == onnx.generator_quantizer
    assert onnx.quantizer_for("stream") == onnx.quantizer
    assert FORMATS["tensorrt"].exporter_for("generation") is None  # takes no generator
