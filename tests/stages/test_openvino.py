"""OpenVINO: export to IR, the runtime adapter, validate on OpenVINO artifacts, and NNCF quantization
(INT8 post-training, INT8/INT4 weight compression, accuracy control) on the tiny BERT classifier.

Profiles are small YAML files extending intel-cpu-openvino with a few timed runs; HOME points at a
temporary directory so the FP32 baseline cache never touches the real one.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import SENTENCES, write_tsv

from compress._optional import is_available
from compress.artifact import Format, Precision, load_artifact
from compress.errors import ConfigError

pytestmark = [
    pytest.mark.skipif(not (is_available("openvino") and is_available("nncf")),
                       reason="openvino and nncf are not installed (pip install 'edgecompress[openvino]')"),
    pytest.mark.slow,
]

FAST_MEASURE = {"warmup": 1, "min_runs": 5, "min_duration_s": 0.02, "max_runs": 50, "eval_batch_size": 8}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("openvino")


@pytest.fixture(scope="module")
def data_tsv(work) -> Path:
    return write_tsv(work / "data", SENTENCES * 3)


@pytest.fixture(scope="module")
def ptq_artifact(ov_artifact, data_tsv, work):
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    return quantize(ov_artifact, work / "bert-ov-int8",
                    QuantizeConfig.from_flat(calibration=str(data_tsv), calibration_samples=36))


def op_types(art) -> collections.Counter:
    import openvino as ov

    return collections.Counter(op.get_type_name() for op in ov.Core().read_model(str(art.model_path)).get_ops())


def bin_size(art) -> int:
    return (art.path / "model.bin").stat().st_size


def predicts(art, texts) -> np.ndarray:
    from compress.runtimes.base import load_runtime

    backend = load_runtime(art)
    out = backend.predict_text(texts)
    backend.close()
    assert out.shape == (len(texts), 2) and np.isfinite(out).all()
    return out


def run_cli(capsys, *args: str) -> tuple[int, str]:
    """Run the console entry point in-process; -> (exit code, stderr)."""
    from compress.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["-q", *map(str, args)])
    return e.value.code, capsys.readouterr().err


# --- export and the runtime adapter --------------------------------------------------------------------


def test_export_openvino_records_parity(ov_artifact):
    m = ov_artifact.manifest
    assert (m.format, m.precision, m.model_file) == (Format.openvino, Precision.fp32, "model.xml")
    assert (ov_artifact.path / "model.bin").is_file() and (ov_artifact.path / "tokenizer.json").is_file()
    parity = m.steps[-1].metrics["parity"]
    assert parity["reference"] == "PyTorch FP32" and parity["max_abs_diff"] <= 1e-4
    assert m.steps[-1].versions["openvino"]


def test_adapter_predicts_like_onnx_runtime_fp32(ov_artifact, onnx_artifact, sample_texts):
    from compress.runtimes.openvino_backend import OpenVINOBackend
    from compress.runtimes.ort_backend import OrtBackend

    ov_backend, ort_backend = OpenVINOBackend(ov_artifact), OrtBackend(onnx_artifact)
    batch = ort_backend.encode(sample_texts)
    got, want = ov_backend.predict(batch), ort_backend.predict(batch)
    assert np.abs(got - want).max() <= 1e-4
    assert ov_backend.describe()["device"] == "CPU"
    assert ov_backend.describe()["properties"]["PERFORMANCE_HINT"] == "LATENCY"


# --- validate ------------------------------------------------------------------------------------------


def test_validate_openvino_artifact_against_openvino_fp32_baseline(ptq_artifact, bert_classifier, data_tsv, work,
                                                                   home):
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    profile = work / "tiny-intel-cpu.yaml"
    profile.write_text(yaml.safe_dump({
        "name": "tiny-intel-cpu", "extends": "intel-cpu-openvino", "description": "few runs",
        "measure": FAST_MEASURE,
    }), encoding="utf-8")
    report = validate(ptq_artifact, ValidateConfig.from_flat(profile=str(profile), data=str(data_tsv),
                                                   teacher=str(bert_classifier), cold_start=False))
    m = report.metrics
    assert m["metric_name"] == "accuracy" and 0 <= m["metric"] <= 1 and "retention" in m and "agreement" in m
    assert m["speedup"] > 0 and m["baseline_latency_ms"]["n"] >= FAST_MEASURE["min_runs"]
    assert report.environment["runtime"]["runtime"] == "openvino"
    assert report.environment["runtime"]["device"] == "CPU"
    baselines = list((home / ".cache" / "edgecompress" / "baselines").iterdir())
    assert [load_artifact(b).format for b in baselines] == [Format.openvino]  # FP32 baseline in the same format


@pytest.mark.parametrize(("profile", "device"), [("intel-igpu-openvino", "GPU"), ("intel-npu-openvino", "NPU")])
def test_validate_on_an_absent_device_exits_2_naming_it(profile, device, ov_artifact, tmp_path, home, capsys):
    from compress.runtimes.openvino_backend import available_devices

    present = available_devices()
    if device in {d.split(".")[0] for d in present}:
        pytest.skip(f"this machine has an OpenVINO {device} device")
    rep = tmp_path / "rep"
    code, err = run_cli(capsys, "validate", ov_artifact.path, "--profile", profile, "--no-cold-start",
                        "--no-baseline", "--report-dir", rep)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert f"OpenVINO device {device} is not present" in lines[0]
    assert f"available: {', '.join(present)}" in lines[0]
    assert not rep.exists()


# --- NNCF quantization ---------------------------------------------------------------------------------


def test_int8_post_training_quantization(ptq_artifact, ov_artifact, sample_texts):
    assert (ptq_artifact.format, ptq_artifact.precision) == (Format.openvino, Precision.int8)
    assert op_types(ptq_artifact)["FakeQuantize"] > 0 and op_types(ov_artifact)["FakeQuantize"] == 0
    step = ptq_artifact.manifest.steps[-1]
    assert step.stage == "quantize" and step.config["nncf_function"] == "nncf.quantize"
    assert step.config["nncf_arguments"]["model_type"] == "transformer"
    assert step.versions["nncf"] and step.versions["openvino"]
    assert [s.stage for s in ptq_artifact.manifest.steps] == ["export", "quantize"]
    parity = step.metrics["parity_vs_input"]
    assert parity["argmax_agreement"] >= 0.9 and parity["cosine_min"] > 0.9
    assert step.metrics["size_bytes_after"] < step.metrics["size_bytes_before"]
    assert step.metrics["compression"] > 1
    assert step.metrics["graph"]["fake_quantize_nodes"] == op_types(ptq_artifact)["FakeQuantize"]
    agree = (predicts(ptq_artifact, sample_texts).argmax(-1) == predicts(ov_artifact, sample_texts).argmax(-1))
    assert agree.mean() >= 0.9
    table = step.metrics["layer_errors"]  # the per-layer table, as for ONNX Runtime artifacts
    assert table["count"] == step.metrics["graph"]["quantized_operations"] and table["samples"] >= 2
    snrs = [r["snr_db"] for r in table["layers"]]
    assert snrs == sorted(snrs) and 5 < snrs[0] < 200 and all(0.9 < r["cosine"] <= 1 for r in table["layers"])
    assert len(table["hurts_most"]) == 5 and table["hurts_most"][0]["own_snr_db"] < 200
    assert "OpenVINO" in table["definition"]


def test_the_layer_table_reads_the_quantized_model_it_describes(ptq_artifact, ov_artifact, sample_texts):
    """The table runs the quantized model with its FakeQuantize operations written out as float operations (so that
    intermediate results can be read); written out, the model still gives the quantized model's own outputs."""
    import openvino as ov

    from compress.host.cpu import has_vnni, is_x86

    if is_x86() and not has_vnni():
        pytest.skip("x86 without VNNI: OpenVINO's INT8 kernels there move this tiny model's output further from the "
                    "quantized arithmetic than quantization moved it from FP32 (docs/guides/model-files.md)")

    from compress.data.tokenization import encoder_for
    from compress.stages.quantize.ov_layer_errors import _decompose_fake_quantize

    core = ov.Core()
    feed = encoder_for(ov_artifact).encode(sample_texts[:4])
    model = core.read_model(str(ptq_artifact.model_path))
    plain = core.compile_model(model.clone(), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    _decompose_fake_quantize(model)
    assert not any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
    written_out = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    names = {n for p in plain.inputs for n in p.get_names()}
    a = plain.create_infer_request().infer({k: v for k, v in feed.items() if k in names})[plain.output(0)]
    b = written_out.create_infer_request().infer({k: v for k, v in feed.items() if k in names})[written_out.output(0)]
    fp32 = predicts(ov_artifact, sample_texts[:4])
    # the integer kernels round differently from float arithmetic, but by far less than quantization moved the output
    assert np.linalg.norm(a - b) < 0.5 * np.linalg.norm(a - fp32), (a, b, fp32)


@pytest.mark.parametrize(("options", "kind"), [({"weights_only": True}, "int8"), ({"precision": "int4"}, "int4")])
def test_weight_compression_shrinks_and_runs(options, kind, ov_artifact, work, sample_texts):
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    art = quantize(ov_artifact, work / f"bert-ov-w-{kind}", QuantizeConfig.from_flat(**options))
    assert art.precision == Precision(kind)
    assert bin_size(art) < bin_size(ov_artifact)
    assert op_types(art)["FakeQuantize"] == 0  # weights only: activations stay float
    step = art.manifest.steps[-1]
    assert step.config["nncf_function"] == "nncf.compress_weights"
    graph = step.metrics["graph"]
    assert graph["integer_weights"][kind]["tensors"] > 0
    if kind == "int4":
        assert step.config["nncf_arguments"]["mode"] == "int4_sym"
        assert step.config["nncf_arguments"]["ratio"] == 1.0
        # hidden size 32: block size 128 does not divide it; NNCF falls back to a smaller group size
        assert set(graph["int4_group_sizes"]) <= {"32", "64"}
        assert "classifier.weight" in graph["int8_weights"]  # the last layer and embeddings stay INT8
        assert any("word_embeddings" in n for n in graph["int8_weights"])
    assert step.metrics["layer_errors"]["count"] >= 12  # every compressed MatMul is in the table
    predicts(art, sample_texts)


def test_accuracy_control_records_baseline_and_final_metric(ov_artifact, data_tsv, work):
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    art = quantize(ov_artifact, work / "bert-ov-ac",
                   QuantizeConfig.from_flat(max_drop=0.5, data=str(data_tsv), eval_samples=12))
    assert art.precision == Precision.int8 and op_types(art)["FakeQuantize"] > 0
    step = art.manifest.steps[-1]
    assert step.config["nncf_function"] == "nncf.quantize_with_accuracy_control"
    assert step.config["nncf_arguments"]["drop_type"] == "absolute"
    assert "eval texts" in step.config["calibration_source"]  # no --calibration: calibrated on the eval texts
    acc = step.metrics["accuracy_control"]
    assert acc["metric_name"] == "accuracy" and acc["eval_samples"] == 12
    assert 0 <= acc["baseline_metric"] <= 1 and 0 <= acc["final_metric"] <= 1
    assert acc["budget_met"] and acc["baseline_metric"] - acc["final_metric"] <= 0.5
    assert isinstance(acc["reverted_to_float"], list)
    assert acc["quantized_operations_final"] == acc["quantized_operations_full_int8"] - len(acc["reverted_to_float"])


def test_accuracy_budget_missed_writes_best_candidate_and_fails(ov_artifact, data_tsv, tmp_path, monkeypatch):
    """When the final model misses the budget, the error names the best reachable value and the best model
    is still written beside the output as a complete, verified artifact."""
    from compress import errors
    from compress.errors import EdgeCompressError
    from compress.stages.quantize import openvino as qov
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    real = qov._Evaluator.evaluate
    calls = []

    def first_is_perfect(self, model):  # the FP32 baseline scores 1.0, every quantized model 0.5
        value = real(self, model)
        calls.append(value)
        return 1.0 if len(calls) == 1 else 0.5

    monkeypatch.setattr(qov._Evaluator, "evaluate", first_is_perfect)
    out = tmp_path / "ac"
    with pytest.raises(EdgeCompressError) as e:
        quantize(ov_artifact, out, QuantizeConfig.from_flat(min_retention=0.99, data=str(data_tsv), eval_samples=12))
    msg = str(e.value)
    assert "retention >= 0.99" in msg and "FP32 accuracy 1.000000" in msg and "best reachable 0.500000" in msg
    best = tmp_path / "ac.best-candidate"
    assert str(best) in msg and not out.exists()
    if hasattr(errors, "AccuracyBudgetError"):  # the shared error of accuracy-aware quantization (exit code 1)
        assert isinstance(e.value, errors.AccuracyBudgetError) and e.value.exit_code == 1
        assert (e.value.baseline, e.value.best, e.value.best_candidate) == (1.0, 0.5, str(best))
    assert json.loads((best / "accuracy_report.json").read_text())["status"].startswith("failed")
    art = load_artifact(best)  # verifies every file's sha256
    acc = art.manifest.steps[-1].metrics["accuracy_control"]
    assert acc["budget_met"] is False and acc["final_metric"] == 0.5
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging leftovers


# --- bad input -----------------------------------------------------------------------------------------


def test_quantizing_an_int8_openvino_artifact_exits_2(ptq_artifact, tmp_path, capsys):
    code, err = run_cli(capsys, "quantize", ptq_artifact.path, "--weights-only", "--out", tmp_path / "again")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "is already openvino int8" in lines[0], err
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize(("options", "words"), [
    ({}, ("--calibration", "--weights-only")),  # INT8 PTQ needs data; never a silent switch to weight-only
    ({"precision": "int4", "max_drop": 0.01, "data": "x.tsv"}, ("int8",)),
    ({"weights_only": True, "max_drop": 0.01, "data": "x.tsv"}, ("--weights-only",)),
    ({"weights_only": True, "calibration_method": "entropy"}, ("--calibration-method entropy", "ONNX")),
    ({"calibration": "x.tsv", "max_drop": 0.01, "data": "x.tsv", "rank_by": "leave-one-out"},
     ("--rank-by leave-one-out", "ONNX")),
])
def test_options_nncf_cannot_honour_are_refused_before_any_work(options, words, ov_artifact, tmp_path):
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    with pytest.raises(ConfigError) as e:
        quantize(ov_artifact, tmp_path / "out", QuantizeConfig.from_flat(**options))
    for w in words:
        assert w in str(e.value), str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_manifest_is_json_with_resolved_config(ptq_artifact):
    data = json.loads((ptq_artifact.path / "manifest.json").read_text())
    cfg = data["steps"][-1]["config"]
    assert cfg["backend"] == "nncf" and cfg["precision"] == "int8" and cfg["calibration"]["samples"] == 36
    assert "mode" not in cfg and "method" not in cfg["calibration"]  # ONNX Runtime settings are not recorded as used


def test_nncf_progress_bars_stay_off_standard_output(ov_artifact, data_tsv, tmp_path, capfd):
    """NNCF draws rich progress bars on stdout ("Statistics collection", ...): they show only at INFO (-v), so a
    quiet run, or a search's log of many candidates, holds edgecompress's own lines alone."""
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    quantize(ov_artifact, tmp_path / "int8", QuantizeConfig.from_flat(calibration=str(data_tsv), calibration_samples=12))
    out, err = capfd.readouterr()
    assert "Statistics collection" not in out + err
