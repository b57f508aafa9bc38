"""Kinds as a table (issue 78): every verb reads a ``{kind: handler}`` table through compress.tasks.by_kind, so a kind
of model it does not take is refused in one line naming the kind, never sent down the forward pass's path.

A fourth, dummy kind is registered (in KIND_INFO and KINDS, as a new kind would be) and given to the generic and the
text-classification tasks; each verb's library entry point is then handed such a model and must refuse it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from compress import tasks
from compress.errors import ConfigError
from compress.tasks import KIND_INFO, TASKS, KindInfo, Task, by_kind, is_generator, kind_of

DUMMY = "dummy"


@pytest.fixture
def dummy_kind(monkeypatch):
    """A fourth kind, registered as a new kind would be, that the generic and text-classification tasks now are."""
    monkeypatch.setitem(KIND_INFO, DUMMY, KindInfo())
    monkeypatch.setattr(tasks, "KINDS", (*tasks.KINDS, DUMMY))
    for t in (Task.generic, Task.text_classification):
        monkeypatch.setitem(TASKS, t, dataclasses.replace(TASKS[t], kind=DUMMY))
    assert kind_of(Task.generic) == kind_of({"task": "text-classification"}) == DUMMY


@pytest.fixture(scope="module")
def generic_artifact(tmp_path_factory):
    """A one-node ONNX artifact on disk (task generic), its manifest written."""
    import onnx
    from onnx import TensorProto, helper

    from compress.artifact import (
        ArrayPreprocess,
        Format,
        Manifest,
        Precision,
        SourceInfo,
        load_artifact,
        write_manifest,
    )
    from compress.artifact_entries import TensorSpec

    d = tmp_path_factory.mktemp("kinds") / "identity"
    d.mkdir()
    f = TensorProto.FLOAT
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", f, ["batch", 4])],
                              [helper.make_tensor_value_info("y", f, ["batch", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), d / "model.onnx")
    write_manifest(d, Manifest(
        task=Task.generic, format=Format.onnx, precision=Precision.fp32, model_file="model.onnx",
        inputs=[TensorSpec(name="x", dtype="float32", shape=["batch", 4])],
        outputs=[TensorSpec(name="y", dtype="float32", shape=["batch", 4])],
        preprocess=ArrayPreprocess(shapes={"x": [4]}, dtypes={"x": "float32"}),
        source=SourceInfo(path=str(d), sha256="0" * 64)))
    return load_artifact(d)


def _refused(call) -> str:
    with pytest.raises(ConfigError) as e:
        call()
    message = str(e.value)
    assert DUMMY in message and "\n" not in message, message
    return message


def test_by_kind_refuses_a_kind_the_table_lacks_naming_it():
    table = {"forward": 1, "generation": 2}
    assert by_kind(table, Task.text_generation, "prune") == 2
    assert by_kind(table, Task.text_classification, "prune") == 1
    assert by_kind(table, "x", "prune", kind="generation") == 2
    message = _refused(lambda: by_kind(table, None, "prune", kind=DUMMY))
    assert message.startswith("prune does not take a dummy model (it takes forward, generation)")
    assert is_generator(Task.text_generation) and not is_generator(Task.regression)
    assert tasks.KINDS == tuple(KIND_INFO)


def test_is_generator_refuses_an_unregistered_kind(monkeypatch):
    monkeypatch.setitem(TASKS, Task.generic, dataclasses.replace(TASKS[Task.generic], kind=DUMMY))
    _refused(lambda: is_generator(Task.generic))


def test_artifact_verbs_refuse_a_kind_they_do_not_take(dummy_kind, generic_artifact, tmp_path):
    from compress.packaging.bundle import package
    from compress.packaging.config import PackageConfig
    from compress.recipes.steps import run_quantize
    from compress.recipes.verbs import StepContext
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    art = generic_artifact
    assert "quantize does not take a dummy model" in _refused(lambda: quantize(art, tmp_path / "q"))
    assert "validate does not take" in _refused(lambda: validate(art, ValidateConfig(profile="cpu-x86-avx2")))
    assert "package does not take" in _refused(
        lambda: package(art, tmp_path / "b.zip", PackageConfig(profile="aws-lambda-arm64")))
    assert "export does not take" in _refused(
        lambda: export(art.path, tmp_path / "e", ExportConfig(format="openvino")))
    ctx = StepContext(run=tmp_path, work=tmp_path, teacher=str(art.path), data={}, force=False, say=lambda e: None)
    assert "quantize does not take" in _refused(
        lambda: run_quantize(str(art.path), QuantizeConfig(), tmp_path / "rq", ctx))
    assert not (tmp_path / "q").exists() and not (tmp_path / "b.zip").exists() and not (tmp_path / "e").exists()


def test_search_refuses_a_kind_it_does_not_take(dummy_kind, generic_artifact, tmp_path):
    pytest.importorskip("optuna")
    from compress.search.config import SearchConfig
    from compress.search.run import run_search

    config = SearchConfig(teacher=str(generic_artifact.path), profile="cpu-x86-avx2", train="t.tsv", eval="e.tsv")
    assert "search does not take" in _refused(lambda: run_search(config, tmp_path / "s"))


def test_probe_first_inference_table_refuses(dummy_kind, generic_artifact):
    from compress.validation.probe import _FIRST

    assert set(_FIRST) == {"forward", "generation", "stream"}
    _refused(lambda: by_kind(_FIRST, generic_artifact, "the cold-start probe"))


@pytest.mark.slow
def test_checkpoint_verbs_refuse_a_kind_they_do_not_take(dummy_kind, bert_classifier, tmp_path):
    """A text classifier's checkpoint, its task now of the dummy kind: the teacher loader, export, distill, prune and
    finetune refuse it in one line before any work."""
    from compress.stages.distill import distill
    from compress.stages.export import export
    from compress.stages.finetune import finetune
    from compress.stages.finetune.config import FinetuneConfig
    from compress.stages.prune import prune
    from compress.stages.prune.config import PruneConfig
    from compress.teachers.load import inspect_checkpoint, load_teacher

    train = Path(tmp_path / "train.tsv")
    train.write_text("label\ttext\n0\ta b c\n1\td e f\n", encoding="utf-8")
    assert "loading a checkpoint does not take" in _refused(lambda: inspect_checkpoint(bert_classifier))
    _refused(lambda: load_teacher(bert_classifier))
    _refused(lambda: export(bert_classifier, tmp_path / "e"))
    _refused(lambda: distill(bert_classifier, train, tmp_path / "d"))
    _refused(lambda: prune(bert_classifier, tmp_path / "p", PruneConfig(heads=0.5)))
    assert "finetune does not take" in _refused(
        lambda: finetune(bert_classifier, train, tmp_path / "f", FinetuneConfig(task="text-classification")))
    assert not any((tmp_path / n).exists() for n in ("e", "d", "p", "f"))
