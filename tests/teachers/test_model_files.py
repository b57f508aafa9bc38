"""Bring your own model file: an ONNX graph exported outside edgecompress is adopted, quantized and validated, with
per-output fidelity and the per-layer error table; bad files and data are one-line errors that write nothing.

The models are tiny and random, built here with plain ``torch.onnx.export`` at opset 12 (as many zoos ship them) or
with ``onnx.helper``: test material, not claims about real models (benchmarks/vision/adopted.py has those)."""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.builders.cli import assert_one_line_error, in_process
from tests.builders.model_files import TwoInputs, torch_onnx_export
from tests.builders.profiles import host_profile

pytestmark = pytest.mark.slow

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory) -> Path:
    """two.onnx (opset 12, symbolic batch and time), two.yaml fixing time, and two.npz with 48 samples and labels."""
    d = tmp_path_factory.mktemp("byom")
    torch.manual_seed(0)
    torch_onnx_export(TwoInputs(), (torch.randn(2, 6, 40), torch.randn(2, 24)), d / "two.onnx", ["window", "feats"],
            {"window": {0: "batch", 2: "time"}, "feats": {0: "batch"}, "scores": {0: "batch"}})
    (d / "two.yaml").write_text("dims: {time: 40}\n", encoding="utf-8")
    rng = np.random.default_rng(0)
    np.savez(d / "two.npz", window=rng.standard_normal((48, 6, 40)).astype(np.float32),
             feats=rng.standard_normal((48, 24)).astype(np.float32), labels=rng.integers(0, 4, 48))
    return d


@pytest.fixture(scope="module")
def quick_host(tmp_path_factory) -> str:
    return host_profile(tmp_path_factory.mktemp("quick-host"))


@pytest.fixture(scope="module")
def quick_host_openvino(tmp_path_factory) -> str:
    return host_profile(tmp_path_factory.mktemp("quick-host"), runtime="openvino")


def test_an_opset_12_two_input_file_is_adopted_quantized_and_validated(two_inputs, tmp_path, quick_host):
    from compress.artifact import load_artifact
    from compress.stages.export import export
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    art = export(two_inputs / "two.onnx", tmp_path / "fp32")
    m = art.manifest
    assert (m.task, m.format, m.precision) == ("generic", "onnx", "fp32")
    assert [t.name for t in m.inputs] == ["window", "feats"] and m.inputs[0].shape == ["batch", 6, "time"]
    assert m.preprocess.kind == "arrays" and m.preprocess.shapes == {"window": [6, 40], "feats": [24]}
    step = m.steps[0]
    assert (step.config["source_opset"], step.config["opset"]) == (12, 13)  # upgraded for per-channel Q/DQ
    assert onnx.load(str(art.model_path)).opset_import[0].version == 13
    assert step.metrics["parity"]["max_abs_diff"] <= 1e-4
    assert m.source.path == str((two_inputs / "two.onnx").resolve())

    q = quantize(art, tmp_path / "int8", QuantizeConfig.from_flat(calibration=str(two_inputs / "two.npz")))
    assert q.manifest.precision == "int8"
    table = q.manifest.steps[-1].metrics["layer_errors"]
    assert {r["node"] for r in table["layers"]} == {"/conv/Conv", "/dense/Gemm"}  # the head (N 4) stays float
    snrs = [r["snr_db"] for r in table["layers"]]
    assert snrs == sorted(snrs)  # worst first

    report = validate(load_artifact(tmp_path / "int8"), ValidateConfig.from_flat(profile=quick_host, data=str(two_inputs / "two.npz"),
                                                                       cold_start=False))
    met = report.metrics
    assert met["metric_name"] == "output_cosine" and met["eval_samples"] == 48
    fid = met["output_fidelity"]["scores"]
    assert 0.98 < fid["cosine"] < 1.0 and 10 < fid["snr_db"] < 200 and fid["max_abs_error"] > 0
    assert fid["top1_agreement"] == met["agreement"]
    assert met["layer_errors"] == table
    assert report.teacher["path"] == str((two_inputs / "two.onnx").resolve())
    assert met["input_shape"] == {"batch_size": 1, "inputs": {"window": "6x40", "feats": "24"}}


def test_output_budgets_judge_fidelity(two_inputs, tmp_path):
    """min_output_cosine and min_output_snr_db fail an artifact whose outputs moved, pass one that did not."""
    from compress.profiles.budgets import judge
    from compress.profiles.schema import Budgets

    budgets = Budgets(min_output_cosine=0.999, min_output_snr_db=30, min_accuracy_retention=None, min_agreement=None,
                      min_speedup=None)
    ok = {r.name: r.passed for r in judge(budgets, {"output_cosine": 0.9995, "output_snr_db": 35.0})}
    bad = {r.name: r.passed for r in judge(budgets, {"output_cosine": 0.98, "output_snr_db": 12.0})}
    assert ok == {"min_output_cosine": True, "min_output_snr_db": True}
    assert bad == {"min_output_cosine": False, "min_output_snr_db": False}


def test_output_fidelity_figures():
    from compress.tasks.outputs import output_fidelity

    ref = np.array([[1.0, 0.0], [0.0, 2.0]])
    same = output_fidelity(ref.copy(), ref, axis=-1)
    assert same["cosine"] == 1.0 and same["snr_db"] == 200.0 and same["top1_agreement"] == 1.0
    noisy = output_fidelity(ref + 0.1, ref, axis=-1)
    assert noisy["snr_db"] == pytest.approx(10 * np.log10(5.0 / 0.04))  # signal 1+4, noise 4 x 0.01
    assert noisy["max_abs_error"] == pytest.approx(0.1)
    flipped = output_fidelity(ref[:, ::-1].copy(), ref, axis=-1)
    assert flipped["top1_agreement"] == 0.0 and flipped["cosine"] == pytest.approx(0.0)


def test_a_text_encoder_file_with_its_tokenizer_is_a_classifier(onnx_artifact, tmp_path, make_tsv, quick_host):
    """A text model's ONNX file with tokenizer.json beside it and model.yaml naming its labels: accuracy and
    agreement against the file itself, run in ONNX Runtime."""
    from compress.stages.export import export
    from compress.teachers.load import load_teacher
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    d = tmp_path / "zoo"
    d.mkdir()
    shutil.copy(onnx_artifact.model_path, d / "classifier.onnx")
    shutil.copy(onnx_artifact.path / "tokenizer.json", d / "tokenizer.json")
    (d / "classifier.yaml").write_text("labels: [negative, positive]\npreprocess: {kind: text}\nmax_length: 64\n",
                                      encoding="utf-8")
    teacher = load_teacher(d / "classifier.onnx")
    assert teacher.task == "text-classification" and teacher.as_artifact().format == "onnx"
    art = export(d / "classifier.onnx", tmp_path / "adopted")
    assert (art.path / "tokenizer.json").is_file() and art.manifest.max_length == 64
    report = validate(art, ValidateConfig.from_flat(profile=quick_host, data=str(make_tsv(tmp_path)), cold_start=False))
    assert report.metrics["metric_name"] == "accuracy"
    assert report.metrics["agreement"] == 1.0 and report.metrics["retention"] == 1.0


def test_a_file_fixed_to_batch_one_runs_larger_batches(tmp_path, quick_host):
    from compress.artifact import load_artifact
    from compress.stages.export import export
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    torch_onnx_export(model, (torch.randn(1, 16),), tmp_path / "fixed.onnx", ["x"], {}, opset=13)
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).standard_normal((20, 16)).astype(np.float32))
    art = export(tmp_path / "fixed.onnx", tmp_path / "a")
    assert art.manifest.inputs[0].shape == [1, 16]
    report = validate(load_artifact(tmp_path / "a"), ValidateConfig.from_flat(profile=quick_host, data=str(tmp_path / "x.npz"), cold_start=False))
    assert report.metrics["eval_samples"] == 20 and report.metrics["output_cosine"] == pytest.approx(1.0)


# -- bad input: one line, exit 2, nothing written --------------------------------------------------------------------

def _tiny_graph(path: Path, *, domain: str = "", op: str = "Relu", opset: int = 17, broken: bool = False) -> Path:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    node = helper.make_node(op, ["x" if not broken else "nowhere"], ["y"], domain=domain)
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=imports)
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def _external(tmp_path: Path) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4), dtype=np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data",
              size_threshold=0)
    return tmp_path / "ext.onnx"


@pytest.mark.parametrize("case", ["checker", "truncated", "external", "domain", "yaml"])
def test_bad_model_files_are_one_line_errors(capfd, case, tmp_path):
    if case == "checker":
        f, words = _tiny_graph(tmp_path / "m.onnx", broken=True), ("fails the ONNX checker",)
    elif case == "truncated":
        good = _external(tmp_path)
        onnx.save(onnx.load(str(good)), str(tmp_path / "whole.onnx"))
        data = (tmp_path / "whole.onnx").read_bytes()
        f = tmp_path / "m.onnx"
        f.write_bytes(data[: len(data) // 2])
        words = ("m.onnx",)
    elif case == "external":
        f = _external(tmp_path)
        (tmp_path / "ext.onnx.data").unlink()
        words = ("ext.onnx.data", "missing")
    elif case == "domain":
        f, words = _tiny_graph(tmp_path / "m.onnx", domain="com.acme", op="FastGelu"), ("com.acme", "FastGelu")
    else:
        f = _tiny_graph(tmp_path / "m.onnx")
        (tmp_path / "m.yaml").write_text("labels: [a, b, c, d]\nlables: [typo]\n", encoding="utf-8")
        words = ("m.yaml", "unknown key", "lables")
    proc = in_process(capfd, "export", f, "--out", tmp_path / "out")
    assert_one_line_error(proc, *words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["missing", "shape", "dtype"])
def test_bad_npz_data_is_a_one_line_error(capfd, case, two_inputs, tmp_path):
    from compress.stages.export import export

    art = export(two_inputs / "two.onnx", tmp_path / "fp32")
    rng = np.random.default_rng(0)
    arrays = {"window": rng.standard_normal((8, 6, 40)).astype(np.float32),
              "feats": rng.standard_normal((8, 24)).astype(np.float32)}
    if case == "missing":
        arrays.pop("feats")
        words = ("no array for input 'feats'",)
    elif case == "shape":
        arrays["window"] = arrays["window"][:, :, :30]
        words = ("'window'", "[8, 6, 30]", "[samples, 6, 40]")
    else:
        arrays["feats"] = arrays["feats"].astype(np.complex64)
        words = ("'feats'", "complex64", "float32")
    np.savez(tmp_path / "bad.npz", **arrays)
    proc = in_process(capfd, "quantize", art.path, "--out", tmp_path / "q", "--calibration", tmp_path / "bad.npz")
    assert_one_line_error(proc, *words)
    assert not (tmp_path / "q").exists()


def test_an_adopted_file_validates_directly_and_reports_fidelity_in_markdown(capfd, two_inputs, tmp_path, quick_host):
    """`validate model.onnx`: the file is its own artifact and its own teacher (fidelity exactly 1)."""
    proc = in_process(capfd, "validate", two_inputs / "two.onnx", "--data", two_inputs / "two.npz", "--no-cold-start",
                      "--report-dir", tmp_path / "r", "--profile", quick_host)
    assert proc.returncode in (0, 1), proc.stderr  # speed against itself is a coin toss; accuracy is not
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["metrics"]["output_fidelity"]["scores"]["snr_db"] == 200.0
    assert "## Outputs against the teacher" in (tmp_path / "r" / "report.md").read_text()


# -- a user's metric ---------------------------------------------------------------------------------------------------

METRICS_MODULE = '''
import numpy as np

def mean_top_score(outputs, labels):
    return float(outputs.max(-1).mean() + 100)

def says_hello(outputs, labels):
    return "hello"

def top1(outputs, labels):
    return float((outputs.argmax(-1) == labels).mean())
'''


def test_a_user_metric_replaces_the_task_metric(two_inputs, tmp_path, monkeypatch, quick_host):
    from compress.stages.export import export
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    (tmp_path / "my_metrics.py").write_text(METRICS_MODULE, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    art = export(two_inputs / "two.onnx", tmp_path / "fp32")
    report = validate(art, ValidateConfig.from_flat(profile=quick_host, data=str(two_inputs / "two.npz"), cold_start=False, baseline=False,
                                          metric="my_metrics:mean_top_score"))
    met = report.metrics
    assert met["metric_name"] == "my_metrics:mean_top_score" and met["metric"] > 100
    assert met["teacher_metric"] == pytest.approx(met["metric"]) and met["retention"] == pytest.approx(1.0)
    assert met["task_metric"]["name"] == "output_cosine"


@pytest.mark.parametrize("spec, words", [("no_such_module_here:f", ("cannot import no_such_module_here",)),
                                         ("my_metrics:says_hello", ("returned str", "not a number")),
                                         ("my_metrics:absent", ("has no function absent",))])
def test_a_user_metric_that_fails_is_a_one_line_error(capfd, spec, words, two_inputs, tmp_path, monkeypatch):
    (tmp_path / "my_metrics.py").write_text(METRICS_MODULE, encoding="utf-8")
    monkeypatch.delitem(sys.modules, "my_metrics", raising=False)  # this folder's module, as a fresh process imports
    proc = in_process(capfd, "validate", two_inputs / "two.onnx", "--data", two_inputs / "two.npz", "--no-cold-start",
                      "--metric", spec, "--report-dir", tmp_path / "r", cwd=tmp_path)
    assert_one_line_error(proc, *words)
    assert not (tmp_path / "r").exists()


# -- serverless: the handler takes JSON arrays ---------------------------------------------------------------------------

def test_an_adopted_array_model_packages_and_its_handler_takes_json_arrays(two_inputs, tmp_path):
    import zipfile

    from compress.packaging.bundle import package
    from compress.packaging.config import PackageConfig
    from compress.runtimes.base import load_runtime
    from compress.stages.export import export
    from tests.builders.bundles import run_handler, write_profile

    art = export(two_inputs / "two.onnx", tmp_path / "fp32")
    report = package(art, tmp_path / "b.zip", PackageConfig(profile=str(write_profile(tmp_path)), download=False,
                                                            cold_start_runs=1))
    assert report.cold_start["first_request"]["inputs"].keys() == {"window", "feats"}
    with zipfile.ZipFile(tmp_path / "b.zip") as zf:
        zf.extractall(tmp_path / "x")
        assert "requirements.txt" in zf.namelist()
        assert "tokenizers" not in zf.read("requirements.txt").decode() and "pillow" not in zf.read("requirements.txt").decode()
    with np.load(two_inputs / "two.npz") as f:
        samples = [{"window": f["window"][i].tolist(), "feats": f["feats"][i].tolist()} for i in range(3)]
    got = run_handler(tmp_path / "x", """
        import json, handler
        samples = json.loads(%r)
        out = handler.handler({"samples": samples}, None)
        bad = handler.handler({"body": json.dumps({"samples": [{"window": [[0.0]]}]})}, None)
        print(json.dumps({"out": out, "bad": bad}))
    """ % json.dumps(samples))
    ref = load_runtime(art).predict(art_feeds := load_runtime(art).encode(samples))
    assert got["out"]["shape"] == [3, 4]
    np.testing.assert_allclose(np.asarray(got["out"]["outputs"]), ref, atol=1e-5)
    assert got["bad"]["statusCode"] == 400 and "[6, 40] per sample" in json.loads(got["bad"]["body"])["error"]
    assert art_feeds["window"].shape == (3, 6, 40)


# -- recipes -----------------------------------------------------------------------------------------------------------

def _recipe_dir(two_inputs: Path, d: Path) -> Path:
    import yaml

    from tests.builders.profiles import GENEROUS_BUDGETS

    for name in ("two.onnx", "two.yaml", "two.npz"):
        shutil.copy(two_inputs / name, d / name)
    (d / "quick.yaml").write_text(yaml.safe_dump({
        "name": "quick", "extends": "host", "measure": {"warmup": 2, "min_runs": 20, "min_duration_s": 0.2},
        "budgets": {**GENEROUS_BUDGETS, "min_speedup": None, "min_output_cosine": 0.9}}), encoding="utf-8")
    return d


def test_a_recipe_takes_a_model_file_as_its_teacher(two_inputs, tmp_path, home):
    import yaml

    from compress.recipes.execute import run_recipe

    d = _recipe_dir(two_inputs, tmp_path)
    (d / "recipe.yaml").write_text(yaml.safe_dump({
        "name": "byom", "teacher": "two.onnx", "data": {"train": "two.npz", "eval": "two.npz"},
        "steps": {"fp32": {"export": {}}, "int8": {"from": "fp32", "quantize": {}}},
        "validate": {"profiles": ["quick.yaml"], "artifacts": ["int8"]}}), encoding="utf-8")
    result = run_recipe(d / "recipe.yaml", d / "run")
    assert result.verdict == "pass", result.index["jobs"]
    report = json.loads(next((d / "run").rglob("report.json")).read_text())
    assert report["metrics"]["output_fidelity"]["scores"]["cosine"] > 0.9
    assert {b["name"] for b in report["budgets"]} >= {"min_output_cosine"}


def test_a_recipe_refuses_to_distill_a_model_file(two_inputs, tmp_path):
    import yaml

    from compress.errors import ConfigError
    from compress.recipes.execute import plan_recipe

    d = _recipe_dir(two_inputs, tmp_path)
    (d / "recipe.yaml").write_text(yaml.safe_dump({
        "name": "byom", "teacher": "two.onnx", "data": {"train": "two.npz", "eval": "two.npz"},
        "steps": {"small": {"distill": {"student": {"layers": 1}}}}}), encoding="utf-8")
    with pytest.raises(ConfigError, match="steps.small: distill needs a trainable teacher"):
        plan_recipe(d / "recipe.yaml")


def test_a_model_file_exports_to_openvino_and_quantizes_with_nncf(two_inputs, tmp_path, quick_host_openvino):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    ov = export(two_inputs / "two.onnx", tmp_path / "ov", ExportConfig(format="openvino"))
    assert ov.manifest.format == "openvino" and [s.stage for s in ov.manifest.steps] == ["export", "export"]
    assert ov.manifest.source.path == str((two_inputs / "two.onnx").resolve())
    assert not list(tmp_path.glob(".ov.*"))  # the scratch adoption is gone
    q = quantize(ov, tmp_path / "ov-int8", QuantizeConfig.from_flat(calibration=str(two_inputs / "two.npz")))
    report = validate(q, ValidateConfig.from_flat(profile=quick_host_openvino, data=str(two_inputs / "two.npz"), cold_start=False))
    assert report.metrics["output_fidelity"]["scores"]["cosine"] > 0.95
    assert report.metrics["speedup"] > 0  # against the file converted to OpenVINO FP32 (the baselines cache)


@pytest.mark.parametrize("fixed_batch", [False, True])
def test_every_output_of_a_multi_output_file_is_compared(tmp_path, fixed_batch, quick_host):
    """A detector-style file with two outputs (scores and boxes): the report compares each against the file's own."""
    from compress.stages.export import export
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    class TwoHeads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU())
            self.scores = torch.nn.Conv2d(32, 5, 1)
            self.boxes = torch.nn.Conv2d(32, 4, 1)

        def forward(self, x):
            h = self.body(x)
            return self.scores(h), self.boxes(h)

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(TwoHeads().eval(), (torch.randn(1, 3, 16, 16),), str(tmp_path / "det.onnx"), opset_version=13,
                          dynamo=False, input_names=["image"], output_names=["scores", "boxes"],
                          dynamic_axes={} if fixed_batch else {"image": {0: "b"}, "scores": {0: "b"}, "boxes": {0: "b"}})
    (tmp_path / "det.yaml").write_text("postprocess: {class_axis: 1}\n", encoding="utf-8")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", image=rng.standard_normal((24, 3, 16, 16)).astype(np.float32))
    art = export(tmp_path / "det.onnx", tmp_path / "fp32")
    q = quantize(art, tmp_path / "int8", QuantizeConfig.from_flat(calibration=str(tmp_path / "d.npz")))
    report = validate(q, ValidateConfig.from_flat(profile=quick_host, data=str(tmp_path / "d.npz"), cold_start=False, baseline=False))
    fid = report.metrics["output_fidelity"]
    assert set(fid) == {"scores", "boxes"}  # a graph fixed to batch 1 is run one sample at a time, every output too
    assert q.manifest.inputs[0].shape[0] == (1 if fixed_batch else "b")
    assert "top1_agreement" in fid["scores"] and "top1_agreement" not in fid["boxes"]  # the class axis is scores'
    assert all(0.9 < f["cosine"] < 1.0 for f in fid.values())



# -- OpenVINO IR files -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_ir(two_inputs, tmp_path_factory):
    """The two-input model as an OpenVINO IR (openvino.save_model), its dynamic time axis fixed by model.yaml."""
    ov = pytest.importorskip("openvino")
    d = tmp_path_factory.mktemp("ir")
    ov.save_model(ov.convert_model(str(two_inputs / "two.onnx")), str(d / "two.xml"), compress_to_fp16=False)
    (d / "two.yaml").write_text("dims: {dim2: 40}\n", encoding="utf-8")
    return d


def test_an_openvino_ir_is_adopted_as_an_openvino_artifact(two_ir, two_inputs, tmp_path, quick_host_openvino):
    from compress.stages.export import export
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    art = export(two_ir / "two.xml", tmp_path / "ov")
    m = art.manifest
    assert (m.format, m.precision, m.model_file) == ("openvino", "fp32", "model.xml")
    assert (art.path / "model.bin").is_file() and m.inputs[0].shape == ["batch", 6, "dim2"]
    assert m.steps[0].metrics["parity"]["max_abs_diff"] == 0.0
    q = quantize(art, tmp_path / "ov-int8", QuantizeConfig.from_flat(calibration=str(two_inputs / "two.npz")))
    report = validate(q, ValidateConfig.from_flat(profile=quick_host_openvino, data=str(two_inputs / "two.npz"), cold_start=False))
    assert report.metrics["output_fidelity"]["scores"]["cosine"] > 0.95 and report.metrics["speedup"] > 0
    assert report.teacher["path"] == str((two_ir / "two.xml").resolve())


@pytest.mark.parametrize("case", ["no-bin", "truncated"])
def test_a_broken_openvino_ir_is_a_one_line_error(capfd, case, two_ir, tmp_path):
    shutil.copy(two_ir / "two.xml", tmp_path / "m.xml")
    if case == "no-bin":
        words = ("m.bin", "missing")
    else:
        shutil.copy(two_ir / "two.bin", tmp_path / "m.bin")
        text = (tmp_path / "m.xml").read_text()
        (tmp_path / "m.xml").write_text(text[: len(text) // 2])
        words = ("not a readable OpenVINO IR",)
    proc = in_process(capfd, "export", tmp_path / "m.xml", "--out", tmp_path / "out")
    assert_one_line_error(proc, *words)
    assert not (tmp_path / "out").exists()


# -- search --------------------------------------------------------------------------------------------------------------

def test_search_takes_a_model_file_over_precision_runtime_and_threads(two_inputs, tmp_path, home, monkeypatch):
    pytest.importorskip("optuna")
    import yaml

    from compress.search.config import SearchConfig
    from compress.search.directory import Search
    from compress.search.run import run_search

    d = _recipe_dir(two_inputs, tmp_path)
    (d / "my_metrics.py").write_text(METRICS_MODULE, encoding="utf-8")
    monkeypatch.chdir(d)
    cfg = SearchConfig.from_flat(teacher=str(d / "two.onnx"), profile=str(d / "quick.yaml"), train=str(d / "two.npz"),
                                 eval=str(d / "two.npz"), holdout=str(d / "two.npz"), time_budget_s=600, trials=2, promote=1,
                                 space={"runtime": ["onnxruntime"], "threads": [0, 1]}, metric="my_metrics:mean_top_score")
    s = Search(cfg, tmp_path / "unused")
    assert s.space.shape.kind == "file" and s.space["quant"] == ["int8-static"]  # an array model: static INT8 only
    result = run_search(cfg, tmp_path / "search", html=False)
    summary = result.summary
    assert result.exit_code == 0, summary.get("diagnosis")
    steps = yaml.safe_load(Path(summary["chosen"]["recipe"]).read_text())["steps"]
    assert set(steps) == {"onnx", "model"} and steps["model"]["quantize"] == {"mode": "static"}
    assert "teacher (FP32 file in onnxruntime)" in summary["side_by_side"]
    held_out = json.loads(Path(summary["chosen"]["holdout"]["report"]).read_text())
    assert held_out["metrics"]["metric_name"] == "my_metrics:mean_top_score"  # candidates are judged by it too


def test_a_user_metric_drives_accuracy_aware_quantization(two_inputs, tmp_path, monkeypatch):
    from compress.errors import ConfigError
    from compress.stages.export import export
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    (tmp_path / "my_metrics.py").write_text(METRICS_MODULE, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    art = export(two_inputs / "two.onnx", tmp_path / "fp32")
    npz = str(two_inputs / "two.npz")
    q = quantize(art, tmp_path / "int8", QuantizeConfig.from_flat(calibration=npz, data=npz, max_drop=0.5,
                                                         metric="my_metrics:top1"))
    aa = q.manifest.steps[-1].metrics["accuracy_aware"]
    assert aa["metric"] == "my_metrics:top1" and 0 <= aa["baseline"] <= 1, aa
    with pytest.raises(ConfigError, match="--metric applies to accuracy-aware"):
        quantize(art, tmp_path / "x", QuantizeConfig.from_flat(calibration=npz, metric="my_metrics:top1"))


# -- torch.export programs that are not image classifiers ----------------------------------------------------------------

def test_a_two_input_program_is_a_teacher_exported_quantized_and_validated(two_inputs, tmp_path, quick_host):
    """A .pt2 with a model.yaml that describes no image: the program is the FP32 reference, run in PyTorch."""
    pytest.importorskip("onnxscript")
    from compress.stages.export import export
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.teachers.load import load_teacher
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    torch.manual_seed(0)
    model = TwoInputs().eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, (torch.randn(2, 6, 40), torch.randn(2, 24)),
                                  dynamic_shapes=({0: batch}, {0: batch}))
    torch.export.save(program, str(tmp_path / "sensor.pt2"))
    (tmp_path / "sensor.yaml").write_text("architecture: sensor fusion\n", encoding="utf-8")
    teacher = load_teacher(tmp_path / "sensor.pt2")
    assert teacher.info.kind == "program" and teacher.task == "generic"
    assert [t.name for t in teacher.info.inputs] == ["window", "feats"]
    art = export(tmp_path / "sensor.pt2", tmp_path / "onnx")
    assert art.manifest.preprocess.kind == "arrays" and art.manifest.steps[0].metrics["parity"]["max_abs_diff"] < 1e-4
    q = quantize(art, tmp_path / "int8", QuantizeConfig.from_flat(calibration=str(two_inputs / "two.npz")))
    report = validate(q, ValidateConfig.from_flat(profile=quick_host, data=str(two_inputs / "two.npz"), cold_start=False))
    assert report.teacher["path"] == str((tmp_path / "sensor.pt2").resolve())
    assert 0.95 < next(iter(report.metrics["output_fidelity"].values()))["cosine"] < 1.0
    assert report.metrics["speedup"] > 0  # against the program exported to ONNX FP32 (the baselines cache)


def test_a_two_input_torchscript_archive_is_a_teacher_once_its_inputs_are_declared(two_inputs, tmp_path, quick_host):
    """TorchScript records no input signature: model.yaml declares it; loading runs code, so it is opted in."""
    from compress.errors import ConfigError, ModelLoadError
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.teachers.load import load_teacher
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(TwoInputs().eval()), str(tmp_path / "sensor.pt"))
    yaml_file = tmp_path / "sensor.yaml"
    yaml_file.write_text("inputs: {window: {shape: [6, 40]}, feats: {shape: [24]}}\n", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="TorchScript archive: loading it runs code"):
        load_teacher(tmp_path / "sensor.pt")
    teacher = load_teacher(tmp_path / "sensor.pt", allow_pickle=True)
    assert teacher.info.kind == "module" and teacher.task == "generic"
    assert [t.name for t in teacher.info.inputs] == ["window", "feats"] and teacher.info.outputs[0].shape[1:] == [4]
    art = export(tmp_path / "sensor.pt", tmp_path / "onnx", ExportConfig(allow_pickle=True))
    assert art.manifest.preprocess.shapes == {"window": [6, 40], "feats": [24]}
    assert art.manifest.steps[0].metrics["parity"]["max_abs_diff"] < 1e-4
    q = quantize(art, tmp_path / "int8", QuantizeConfig.from_flat(calibration=str(two_inputs / "two.npz")))
    report = validate(q, ValidateConfig.from_flat(profile=quick_host, data=str(two_inputs / "two.npz"), cold_start=False, allow_pickle=True))
    assert 0.95 < next(iter(report.metrics["output_fidelity"].values()))["cosine"] <= 1.0
    yaml_file.write_text("inputs: {window: {shape: [6, 40]}, feats: {shape: [25]}}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="does not run on the declared inputs"):
        load_teacher(tmp_path / "sensor.pt", allow_pickle=True)


def test_quantizing_a_model_file_says_to_adopt_it_first(capfd, two_inputs, tmp_path):
    """The issue's first experience: `quantize model.onnx` named no way forward."""
    proc = in_process(capfd, "quantize", two_inputs / "two.onnx", "--out", tmp_path / "q", "--calibration",
                      two_inputs / "two.npz")
    assert_one_line_error(proc, "a model file, not an edgecompress artifact yet", "edgecompress export")
    assert not (tmp_path / "q").exists()


def test_inspect_shows_a_model_file_as_export_would_adopt_it(capfd, two_inputs):
    proc = in_process(capfd, "inspect", two_inputs / "two.onnx", "--json")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["task"] == "generic" and manifest["preprocess"]["shapes"] == {"window": [6, 40], "feats": [24]}
