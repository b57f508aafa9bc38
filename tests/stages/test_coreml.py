"""``export --format coreml``: tiny random text and image classifiers (test material) become Core ML packages (FP16, or
INT8 weights) whose interface is read back and checked; off Apple's systems validate estimates their latency from the
package's own graph and leaves what it cannot run UNVERIFIED; bad requests are one-line errors."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("coremltools")

from compress.stages.export import export
from compress.stages.export.config import ExportConfig
from tests.builders.cli import main_error
from tests.conftest import write_tsv

pytestmark = pytest.mark.slow

OFF_APPLE = pytest.mark.skipif(sys.platform == "darwin", reason="describes a machine where Core ML cannot run")


@pytest.fixture(scope="module")
def packages(bert_classifier, tmp_path_factory):
    """The tiny text classifier as an FP16 package and with INT8 weights (each conversion takes seconds)."""
    root = tmp_path_factory.mktemp("coreml")
    return {"fp16": export(bert_classifier, root / "c16", ExportConfig(format="coreml")),
            "int8": export(bert_classifier, root / "c8", ExportConfig(format="coreml", precision="int8"))}


def test_a_text_classifier_becomes_a_package_with_the_teachers_inputs(packages):
    from compress.estimates.coreml_graph import coreml_cost

    art = packages["fp16"]
    m = art.manifest
    assert (m.format, m.precision, m.model_file) == ("coreml", "fp16", "model.mlpackage")
    package = m.steps[-1].metrics["package"]
    assert sorted(i["name"] for i in package["inputs"]) == sorted(t.name for t in m.inputs)
    assert all(i["dtype"] == "int32" and i["range"][1][0] == 2 for i in package["inputs"])  # the sequence is free
    assert package["outputs"] == ["logits"] and art.size_bytes() > 0
    assert any(f.startswith("model.mlpackage/") and f.endswith("weight.bin") for f in m.files)
    # the graph reader binds the open sequence: a linear layer's cost grows with it
    short, long = (coreml_cost(art.model_path, 1, s) for s in (8, 16))
    assert short.flops > 0 and long.flops == pytest.approx(2 * short.flops, rel=0.15)


def test_int8_stores_int8_weights(packages):
    from compress.estimates.coreml_graph import coreml_cost

    fp16, int8 = packages["fp16"], packages["int8"]
    assert int8.manifest.precision == "int8"
    assert int8.manifest.steps[-1].metrics["quantization"]["weights"] == "int8"
    # coremltools leaves tensors under 2048 elements in FP16 (Apple's default): here the embedding tables are the
    # ones large enough, and they shrink to a byte per weight
    assert int8.size_bytes() < 0.9 * fp16.size_bytes()
    a, b = coreml_cost(fp16.model_path, 1, 16), coreml_cost(int8.model_path, 1, 16)
    assert b.flops == pytest.approx(a.flops)  # FP16 arithmetic either way


@OFF_APPLE
def test_validate_on_an_iphone_estimates_latency_and_leaves_accuracy_unverified(packages, bert_classifier, tmp_path):
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    art = packages["int8"]
    m = art.manifest.steps[-1].metrics
    assert m["parity"]["measured"] is False and "macOS" in m["parity"]["why"]
    report = validate(art, ValidateConfig.from_flat(profile="iphone-15", data=str(write_tsv(tmp_path)),
                                          teacher=str(bert_classifier), cold_start=False, baseline=False))
    status = {b.name: (b.status, b.note) for b in report.budgets}
    assert report.verdict == "unverified" and report.metrics["not_run"].startswith("coreml does not run")
    assert status["max_model_size_mb"][0] == "pass"
    assert status["latency_p50_ms"][0] == "unverified" and report.metrics["latency_ms"]["estimated"] is True
    assert status["min_accuracy_retention"] == ("unverified", f"not measured: {report.metrics['not_run']}")
    assert "retention" not in report.metrics


@OFF_APPLE
def test_refusals_are_one_line(packages, bert_classifier, tmp_path, capsys):
    import yaml

    from compress.runtimes.base import RuntimeSettings, load_runtime

    line = main_error(capsys, "export", bert_classifier, "--format", "coreml", "--precision", "int8", "--calibration",
                      write_tsv(tmp_path), "--out", tmp_path / "a")
    assert "--calibration does not apply to Core ML" in line and not (tmp_path / "a").exists()
    assert "--int8-mode" in main_error(capsys, "export", bert_classifier, "--format", "coreml", "--int8-mode",
                                       "static", "--out", tmp_path / "b")
    art = packages["fp16"]
    with pytest.raises(Exception, match="Core ML runs only on macOS and iOS"):
        load_runtime(art, "coreml", RuntimeSettings())
    here = tmp_path / "here.yaml"  # this machine named as the device: nothing can be estimated instead
    here.write_text(yaml.safe_dump({"name": "mac-here", "extends": "host", "runtime": {"name": "coreml"}}))
    assert "coreml does not run on this machine" in main_error(capsys, "validate", art.path, "--profile", here,
                                                                "--no-cold-start")


def test_an_image_classifier_becomes_a_package(tmp_path):
    from tests.builders.images import write_hf_image_teachers

    teachers = write_hf_image_teachers(tmp_path / "t")
    art = export(teachers["cnn"], tmp_path / "c", ExportConfig(format="coreml", precision="int8"))
    package = art.manifest.steps[-1].metrics["package"]
    assert package["inputs"][0]["dtype"].startswith("float") and package["inputs"][0]["range"] is None
    assert package["inputs"][0]["shape"] == art.manifest.inputs[0].shape
