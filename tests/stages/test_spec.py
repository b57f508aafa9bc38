"""Stages declare what they accept and produce; one checker refuses the rest; one method writes step records."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from compress.artifact import Format, Precision, StepRecord, child_manifest
from compress.errors import ArtifactError
from compress.packaging.config import PACKAGE
from compress.stages.distill.config import DISTILL
from compress.stages.export.config import EXPORT_ONNX, EXPORT_OPENVINO, EXPORT_TENSORRT, EXPORT_TORCH_TENSORRT
from compress.stages.prune.config import PRUNE
from compress.stages.quantize.config import QUANTIZE_ONNX, QUANTIZE_OPENVINO, QUANTIZE_SPECS, QuantizeConfig
from compress.stages.spec import spec_for
from compress.tasks import Task

ROOT = Path(__file__).resolve().parents[2]
ALL = [EXPORT_ONNX, EXPORT_OPENVINO, EXPORT_TENSORRT, EXPORT_TORCH_TENSORRT, QUANTIZE_ONNX, QUANTIZE_OPENVINO, PRUNE,
       DISTILL, PACKAGE]


class _Art:
    """Just what the checker reads of an artifact."""

    def __init__(self, fmt, precision, task=Task.text_classification, path="m"):
        self.format, self.precision, self.task, self.path = fmt, precision, task, Path(path)


def test_no_stage_builds_its_step_record_by_hand():
    """Only the spec (and the manifest schema) construct StepRecord: every stage goes through StageSpec.record."""
    offenders = []
    for f in sorted((ROOT / "compress").rglob("*.py")) + sorted((ROOT / "runtimes").rglob("*.py")):
        if f.name in ("artifact.py", "spec.py"):
            continue
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "StepRecord":
                offenders.append(f"{f.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


@pytest.mark.parametrize("spec", ALL, ids=lambda s: f"{s.stage}:{s.verb}")
def test_every_spec_is_complete(spec):
    assert spec.accepts and spec.hint
    assert all(isinstance(f, Format) and all(isinstance(p, Precision) for p in ps) for f, ps in spec.accepts.items())
    if spec is not PACKAGE:  # a bundle is not an artifact
        assert spec.produces and spec.versions


def test_quantize_takes_fp32_onnx_and_openvino_and_names_both_when_refusing():
    assert spec_for(QUANTIZE_SPECS, _Art(Format.onnx, Precision.fp32)) is QUANTIZE_ONNX
    assert spec_for(QUANTIZE_SPECS, _Art(Format.openvino, Precision.fp32)) is QUANTIZE_OPENVINO
    with pytest.raises(ArtifactError, match=r"is a pytorch artifact; quantize takes onnx fp32, openvino fp32") as e:
        spec_for(QUANTIZE_SPECS, _Art(Format.pytorch, Precision.fp32))
    assert "export --format onnx|openvino" in e.value.hint
    with pytest.raises(ArtifactError, match=r"is already onnx int8; quantize takes") as e:
        spec_for(QUANTIZE_SPECS, _Art(Format.onnx, Precision.int8))
    assert "FP32 artifact it came from" in e.value.hint  # the precision's own next step


def test_the_checker_refuses_a_task_the_stage_does_not_declare():
    from dataclasses import replace

    only_cls = replace(PRUNE, tasks=frozenset({Task.text_classification}))
    only_cls.check(_Art(Format.pytorch, Precision.fp32))
    with pytest.raises(ArtifactError, match="is a feature-extraction model; pruning takes text-classification"):
        only_cls.check(_Art(Format.pytorch, Precision.fp32, Task.feature_extraction))


@pytest.mark.parametrize("spec, art", [
    (PRUNE, _Art(Format.onnx, Precision.fp32)),
    (DISTILL, _Art(Format.openvino, Precision.int8)),
    (EXPORT_TORCH_TENSORRT, _Art(Format.onnx, Precision.fp32)),
    (EXPORT_TENSORRT, _Art(Format.onnx, Precision.int4)),
    (PACKAGE, _Art(Format.openvino, Precision.fp32)),
])
def test_refusals_name_the_input_what_the_stage_takes_and_the_next_step(spec, art):
    with pytest.raises(ArtifactError) as e:
        spec.check(art)
    msg = str(e.value)
    assert str(art.format) in msg and spec.verb in msg and spec.describe_accepts() in msg
    assert e.value.hint
    assert e.value.exit_code == 2


def test_record_derives_the_step_from_the_manifest_and_appends_it_to_the_lineage(int8_artifact):
    parent = int8_artifact.manifest
    child = child_manifest(parent, precision=Precision.int4)
    child.versions = {"onnxruntime": "9.9", "onnx": "1.0", "torch": "unrelated"}
    step = QUANTIZE_ONNX.record(child, QuantizeConfig.from_flat(precision="int4"), input_digest="abc", lineage=parent.steps,
                                extra_config={"reduce_range": False})
    assert child.steps == [*parent.steps, step]
    assert step.stage == "quantize" and step.input_digest == "abc"
    assert step.versions == {"onnxruntime": "9.9", "onnx": "1.0"}  # only what the spec names
    assert step.config["precision"] == "int4" and step.config["reduce_range"] is False
    assert step.config_version == QUANTIZE_ONNX.config_version


def test_record_refuses_an_output_the_stage_did_not_declare(onnx_artifact):
    child = child_manifest(onnx_artifact.manifest, format=Format.pytorch)
    with pytest.raises(AssertionError, match="quantize declared onnx"):
        QUANTIZE_ONNX.record(child, QuantizeConfig(), input_digest=None)


def test_seal_stamps_time_and_the_digest_of_the_written_files(tmp_path):
    import time

    from compress.artifact import digest_dir

    (tmp_path / "model.onnx").write_bytes(b"x")
    step = QUANTIZE_ONNX.seal(StepRecord(stage="quantize"), tmp_path, time.perf_counter() - 1.5)
    assert step.seconds >= 1.5
    assert step.output_digest == digest_dir(tmp_path)


def test_written_artifacts_carry_the_spec_records(onnx_artifact, int8_artifact):
    export_step, quantize_step = int8_artifact.manifest.steps
    assert export_step == onnx_artifact.manifest.steps[0]
    assert quantize_step.input_digest == onnx_artifact.digest
    assert set(quantize_step.versions) == set(QUANTIZE_ONNX.versions)
    assert quantize_step.output_digest == int8_artifact.digest


def test_a_family_refuses_a_task_with_the_member_that_takes_the_format():
    from dataclasses import replace

    family = (QUANTIZE_ONNX, replace(QUANTIZE_OPENVINO, tasks=frozenset({Task.text_classification})))
    with pytest.raises(ArtifactError, match="is a feature-extraction model; quantize takes text-classification"):
        spec_for(family, _Art(Format.openvino, Precision.fp32, Task.feature_extraction))
