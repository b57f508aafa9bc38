"""``export --format executorch``: tiny random text and image classifiers (test material) become ExecuTorch programs
lowered to XNNPACK, FP32 within the parity tolerance of PyTorch, INT8 through PT2E (dynamic for text, static and
calibrated for images); they run in ExecuTorch's runtime through validate; bad requests are one-line errors."""

from __future__ import annotations

import pytest

pytest.importorskip("executorch")

from compress.stages.export import export  # noqa: E402
from compress.stages.export.config import ExportConfig  # noqa: E402
from tests.cli.test_cli import assert_one_line_error, edgecompress, main_error  # noqa: E402
from tests.conftest import write_tsv  # noqa: E402


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from tests.test_image_pipeline import write_hf_image_teachers, write_image_set

    root = tmp_path_factory.mktemp("et-images")
    write_image_set(root)
    return {**write_hf_image_teachers(root / "t"), "set": root / "set"}


def test_a_text_classifier_becomes_an_xnnpack_program_that_validate_runs(bert_classifier, tmp_path):
    import yaml

    from compress.validation.local import ValidateConfig, validate

    art = export(bert_classifier, tmp_path / "pte", ExportConfig(format="executorch"))
    m = art.manifest
    assert (m.format, m.precision, m.model_file) == ("executorch", "fp32", "model.pte")
    assert m.inputs[0].shape == [1, "sequence_length"] and (art.path / "model.pte").stat().st_size > 0
    step = m.steps[-1].metrics
    assert step["parity"]["max_abs_diff"] <= 1e-4 and step["delegated"]["delegate_calls"] >= 1
    data = write_tsv(tmp_path)
    profile = tmp_path / "phone-here.yaml"  # this machine, running the phone's runtime, timed briefly
    profile.write_text(yaml.safe_dump({"name": "phone-here", "extends": "host", "runtime": {"name": "executorch"},
                                       "measure": {"warmup": 2, "min_runs": 10, "min_duration_s": 0.05}}))
    report = validate(art, ValidateConfig(profile=str(profile), data=str(data), teacher=str(bert_classifier),
                                          cold_start=False))
    assert report.metrics["agreement"] == 1.0 and report.environment["runtime"]["runtime"] == "executorch"


def test_text_int8_is_dynamic_pt2e_and_agrees_with_the_teacher(bert_classifier, tmp_path):
    art = export(bert_classifier, tmp_path / "pte8", ExportConfig(format="executorch", precision="int8"))
    step = art.manifest.steps[-1].metrics
    assert art.manifest.precision == "int8" and step["quantization"]["activations"] == "dynamic"
    assert step["parity"]["argmax_agreement"] >= 0.75


def test_image_int8_is_static_and_needs_calibration(images, tmp_path):
    art = export(images["vit"], tmp_path / "vit8", ExportConfig(format="executorch", precision="int8",
                                                              calibration=str(images["set"])))
    q = art.manifest.steps[-1].metrics["quantization"]
    assert q["activations"] == "static" and q["calibration_rows"] == 24
    proc = edgecompress("export", images["cnn"], "--format", "executorch", "--precision", "int8", "--out",
                        tmp_path / "no")
    assert_one_line_error(proc, "needs calibration data", "--calibration")
    assert not (tmp_path / "no").exists()


def test_cli_refuses_what_executorch_does_not_take(bert_classifier, tmp_path, capsys):
    assert "fp16" in main_error(capsys, "export", bert_classifier, "--format", "executorch", "--precision", "fp16",
                                "--out", tmp_path / "a")
    assert "--int8-mode applies to --precision int8" in main_error(
        capsys, "export", bert_classifier, "--format", "executorch", "--int8-mode", "static", "--out", tmp_path / "b")
    assert "--int8-mode" in main_error(capsys, "export", bert_classifier, "--int8-mode", "dynamic", "--out",
                                       tmp_path / "c")


def test_a_torch_export_program_is_lowered_as_it_is_and_its_int8_refused(images, tmp_path, capsys):
    from tests.test_image_pipeline import write_program_teacher

    program = write_program_teacher(tmp_path / "prog")
    art = export(program, tmp_path / "pte", ExportConfig(format="executorch"))
    assert art.manifest.steps[-1].metrics["parity"]["max_abs_diff"] <= 1e-4
    line = main_error(capsys, "export", program, "--format", "executorch", "--precision", "int8", "--calibration",
                      images["set"], "--out", tmp_path / "pte8")
    assert "torch.export program is not supported" in line and not (tmp_path / "pte8").exists()
