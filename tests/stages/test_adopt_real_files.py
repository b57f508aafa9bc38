"""Model files as other tools write them: weights stored as ``Constant`` nodes (Paddle2ONNX, some TensorFlow
converters) are normalised at adoption and quantize like their initializer twin; a bare model file is validated with
its cold start measured; an adopted ``.tflite`` has a phone profile; an adopted file asked for another format is
refused in one line.

The models are tiny and random (``tests/builders/model_files.py``'s two-input Conv1d + Linear model, the LiteRT
asset): test material, not claims about real models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.builders.cli import assert_one_line_error, in_process, main_error
from tests.builders.model_files import TwoInputs, torch_onnx_export
from tests.builders.profiles import host_profile

pytestmark = pytest.mark.slow

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")


def initializers_as_constants(model):
    """``model`` re-saved the way Paddle2ONNX writes it: every initializer a ``Constant`` node at the graph's top."""
    from onnx import helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    consts = [helper.make_node("Constant", [], [t.name], name=f"const_{t.name}", value=t) for t in g.initializer]
    nodes = consts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    names = {t.name for t in model.graph.initializer}
    kept = [v for v in g.input if v.name not in names]  # an initializer listed as an input (old exporters) too
    del g.input[:]
    g.input.extend(kept)
    onnx.checker.check_model(out)
    return out


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> Path:
    """two.onnx (opset 12, as torch.onnx writes it) and const.onnx (its weights as Constant nodes), each with the
    model.yaml fixing the time axis, and two.npz with 48 samples and labels."""
    d = tmp_path_factory.mktemp("twins")
    torch.manual_seed(0)
    torch_onnx_export(TwoInputs(), (torch.randn(2, 6, 40), torch.randn(2, 24)), d / "two.onnx", ["window", "feats"],
                      {"window": {0: "batch", 2: "time"}, "feats": {0: "batch"}, "scores": {0: "batch"}})
    model = onnx.load(str(d / "two.onnx"))
    onnx.save(initializers_as_constants(model), str(d / "const.onnx"))
    for name in ("two", "const"):
        (d / f"{name}.yaml").write_text("dims: {time: 40}\n", encoding="utf-8")
    rng = np.random.default_rng(0)
    np.savez(d / "two.npz", window=rng.standard_normal((48, 6, 40)).astype(np.float32),
             feats=rng.standard_normal((48, 24)).astype(np.float32), labels=rng.integers(0, 4, 48))
    return d


def test_constant_node_weights_are_normalised_and_quantize_like_their_initializer_twin(twins, tmp_path):
    from compress.artifact import load_artifact
    from compress.stages.export import export
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    n_weights = len(onnx.load(str(twins / "two.onnx")).graph.initializer)
    quick = host_profile(tmp_path)  # the figures compared, not the timings
    calib = QuantizeConfig.from_flat(calibration=str(twins / "two.npz"), mode="static")
    runs = {}
    for name in ("two", "const"):
        art = export(twins / f"{name}.onnx", tmp_path / f"{name}-fp32")
        q = quantize(art, tmp_path / f"{name}-int8", calib)
        report = validate(load_artifact(q.path), ValidateConfig.from_flat(data=str(twins / "two.npz"),
                                                                          cold_start=False, profile=quick))
        runs[name] = (art, q, report)
    art, q, report = runs["const"]
    graph = onnx.load(str(art.model_path)).graph
    assert not [n for n in graph.node if n.op_type == "Constant"]  # every weight is an initializer now
    assert len(graph.value_info) > 0  # shapes inferred
    moved = art.manifest.steps[0].config["normalized"]
    assert moved["constants_to_initializers"] == moved["float_weights"] == n_weights
    assert moved["shapes_inferred"] is True
    assert "normalized" not in runs["two"][0].manifest.steps[0].config  # an exporter's graph is left as it came
    assert art.manifest.steps[0].metrics["parity"]["max_abs_diff"] <= 1e-4

    twin_art, twin_q, twin_report = runs["two"]
    layers = {r["node"] for r in q.manifest.steps[-1].metrics["layer_errors"]["layers"]}
    assert layers == {r["node"] for r in twin_q.manifest.steps[-1].metrics["layer_errors"]["layers"]}
    assert layers == {"/conv/Conv", "/dense/Gemm"}

    def qdq(a):
        return sum(n.op_type == "DequantizeLinear" for n in onnx.load(str(a.model_path)).graph.node)

    assert qdq(q) == qdq(twin_q) > 0
    assert q.size_bytes() == pytest.approx(twin_q.size_bytes(), rel=0.05)
    assert q.size_bytes() < art.size_bytes()  # INT8 weights, not FP32 labelled INT8 (the head stays float)
    met, twin_met = report.metrics, twin_report.metrics
    assert met["agreement"] == pytest.approx(twin_met["agreement"], abs=0.05)
    fid, twin_fid = met["output_fidelity"]["scores"], twin_met["output_fidelity"]["scores"]
    assert fid["cosine"] == pytest.approx(twin_fid["cosine"], abs=2e-3) and fid["cosine"] > 0.98


# -- a bare model file validated as it is: its cold start in a fresh process -----------------------------------------

LITE_ASSET = Path(__file__).resolve().parents[1] / "assets" / "tiny_cnn.tflite"
LITE_YAML = ("task: image-classification\nlabels: [a, b, c, d]\n"
             "preprocess: {size: [16, 16], mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}\n")


@pytest.fixture()
def tflite(tmp_path) -> Path:
    """tests/assets/tiny_cnn.tflite (made by litert-torch) with the model.yaml naming its classes and image size."""
    pytest.importorskip("ai_edge_litert")
    d = tmp_path / "lite"
    d.mkdir()
    shutil.copy2(LITE_ASSET, d / "model.tflite")
    (d / "model.yaml").write_text(LITE_YAML, encoding="utf-8")
    return d / "model.tflite"


@pytest.mark.parametrize("kind", ["onnx", "tflite"])
def test_a_bare_model_file_validates_with_its_cold_start_measured(capfd, kind, twins, request, tmp_path):
    """`validate model.onnx --data eval.npz` (and a .tflite) with the default cold-start probe: the fresh process loads
    the file itself in its own runtime (it used to take the file's folder for a PyTorch checkpoint: exit 2)."""
    args = [twins / "two.onnx", "--data", twins / "two.npz"] if kind == "onnx" else [request.getfixturevalue("tflite")]
    quick = host_profile(tmp_path, runtime=None if kind == "onnx" else "litert")  # the probe, not the timings
    proc = in_process(capfd, "validate", *args, "--report-dir", tmp_path / "r", "--profile", quick)
    assert proc.returncode in (0, 1, 4), proc.stderr  # speed against itself is a coin toss; the probe is not
    assert "probe failed" not in proc.stderr
    metrics = json.loads((tmp_path / "r" / "report.json").read_text())["metrics"]
    cold = metrics["cold_start"]
    assert cold["runtime"] == ("onnxruntime" if kind == "onnx" else "litert") and not cold["torch_imported"]
    assert metrics["cold_start_ms"] > 0 and metrics["peak_rss_mb"] > 0 and cold["session_create_ms"] > 0


def test_the_cold_start_runs_the_batch_validate_timed(capfd, twins, tmp_path):
    """A graph whose time axis is open (no dims in model.yaml: the data fixes it) is probed with the data's batch,
    not seeded inputs the open axis refuses."""
    d = tmp_path / "open"
    d.mkdir()
    shutil.copy2(twins / "two.onnx", d / "two.onnx")  # no two.yaml: the time axis stays open
    proc = in_process(capfd, "validate", d / "two.onnx", "--data", twins / "two.npz", "--report-dir", tmp_path / "r",
                      "--profile", host_profile(tmp_path))  # the probe, not the timings
    assert proc.returncode in (0, 1, 4), proc.stderr
    assert json.loads((tmp_path / "r" / "report.json").read_text())["metrics"]["cold_start_ms"] > 0


def test_a_file_with_an_open_axis_converted_to_openvino_validates_against_its_converted_baseline(capfd, twins,
                                                                                                 tmp_path):
    """validate of the OpenVINO IR of such a file times it beside the file converted the same way (its FP32
    baseline), checked on the inputs the artifact's own conversion was (its recorded --sample-data): it was refused,
    "input ... has a dimension the graph leaves open ... and no data was given", with --data given."""
    pytest.importorskip("openvino")
    d = tmp_path / "open"
    d.mkdir()
    shutil.copy2(twins / "two.onnx", d / "two.onnx")  # no two.yaml: the time axis stays open
    proc = in_process(capfd, "export", d / "two.onnx", "--format", "openvino", "--sample-data", twins / "two.npz",
                      "--out", tmp_path / "ov")
    assert proc.returncode == 0, proc.stderr
    proc = in_process(capfd, "validate", tmp_path / "ov", "--data", twins / "two.npz", "--no-cold-start",
                      "--report-dir", tmp_path / "r", "--profile", host_profile(tmp_path, runtime="openvino"))
    assert proc.returncode in (0, 1, 4), proc.stderr
    metrics = json.loads((tmp_path / "r" / "report.json").read_text())["metrics"]
    assert metrics["speedup"] is not None and metrics["baseline_latency_ms"]["p50"] > 0


# -- an adopted .tflite on a phone --------------------------------------------------------------------------------------

def test_an_adopted_tflite_has_a_phone_profile_and_pixel_8_names_it(capfd, tflite, tmp_path):
    """pixel-8 runs ExecuTorch, which cannot load a .tflite: the refusal names pixel-8-litert, the same phone running
    LiteRT, and that profile validates the file (latency estimated from the phone's peaks, exit 4 off the phone)."""
    from compress.profiles.load import load_profile

    phone, lite = load_profile("pixel-8"), load_profile("pixel-8-litert")
    assert lite.runtime.name == "litert" and lite.runtime.threads == phone.runtime.threads
    assert (lite.hardware, lite.budgets, lite.measure) == (phone.hardware, phone.budgets, phone.measure)

    assert in_process(capfd, "export", tflite, "--out", tmp_path / "a").returncode == 0
    proc = in_process(capfd, "validate", tmp_path / "a", "--profile", "pixel-8", "--no-cold-start",
                      "--report-dir", tmp_path / "r8")
    assert_one_line_error(proc, "profile pixel-8 runs executorch", "--profile pixel-8-litert")
    assert not (tmp_path / "r8").exists()
    proc = in_process(capfd, "validate", tmp_path / "a", "--profile", "pixel-8-litert", "--no-cold-start",
                      "--report-dir", tmp_path / "r")
    assert proc.returncode == 4, proc.stderr  # the latency is the phone's roofline estimate: UNVERIFIED here
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["profile"]["name"] == "pixel-8-litert" and report["environment"]["runtime"]["runtime"] == "litert"
    assert report["metrics"]["latency_ms"]["estimated"] is True


@pytest.mark.parametrize("fmt", ["onnx", "openvino", "tensorrt", "executorch", "coreml"])
def test_a_profile_that_cannot_run_a_format_names_one_that_can(fmt):
    """The refusal names built-in profiles whose runtime runs the format, the same device's first."""
    from compress.errors import ConfigError
    from compress.formats import FORMATS
    from compress.profiles.load import load_profile
    from compress.runtimes.host import profiles_running, runtime_for

    others = profiles_running(fmt)
    assert others, f"no built-in profile runs {fmt}"
    for name in others:
        assert runtime_for(load_profile(name), fmt).runtime.name == FORMATS[fmt].runtime
    wrong = load_profile(next(n for n in ("pixel-8-litert", "cpu-x86-avx2") if n not in others))
    named = profiles_running(fmt, like=wrong) or others[:1]  # pixel-8-litert asked for a .pte: pixel-8
    with pytest.raises(ConfigError) as e:
        runtime_for(wrong, fmt)
    assert all(f"{n}" in str(e.value) for n in named) and "\n" not in str(e.value)


# -- an adopted file asked for another format ------------------------------------------------------------------------

def _routes() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(every pair of an adoptable file's format and an export format that has no route: refused, the real routes:
    the file's own format, and ONNX to the formats made through ONNX), read from compress.formats.FORMATS."""
    from compress.formats import FORMATS, export_formats

    refused, routes = [], []
    for src, spec in FORMATS.items():
        if not spec.adopt:
            continue
        for fmt in export_formats():
            if fmt == "onnx" and src != "onnx":
                continue  # --format's default: not asked, the file is adopted as it is
            # a .gguf given a format with a generator route is exported from the checkpoint it dequantizes to
            real = fmt == src or (src == "onnx" and FORMATS[fmt].via_onnx) or (
                src == "gguf" and bool(FORMATS[fmt].generator_exporter))
            (routes if real else refused).append((src, fmt))
    return refused, routes


@pytest.mark.parametrize(("src", "fmt"), _routes()[0])
def test_an_adopted_file_asked_for_a_format_it_has_no_route_to_is_refused_in_one_line(src, fmt, tmp_path, capsys,
                                                                                     monkeypatch):
    """`export model.xml --format executorch` and every other such pair: one line naming the user's file and what to
    do (no staging path, no exporter's inner words), exit 2, nothing written."""
    from compress.formats import FORMATS

    monkeypatch.chdir(tmp_path)
    name = f"model{FORMATS[src].suffix}"
    Path(name).write_bytes(b"")  # refused before it is read
    line = main_error(capsys, "export", name, "--format", fmt, "--out", "o")
    assert line.startswith(f"error: {name}: ") and "leave --format out" in line
    assert ".adopt" not in line and "ONNX export" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_the_real_routes_write_the_format_asked_for(twins, tmp_path):
    """Where a route exists (ONNX to OpenVINO IR) the artifact is that format, never the file's own."""
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    assert ("onnx", "openvino") in _routes()[1] and ("openvino", "executorch") in _routes()[0]
    pytest.importorskip("openvino")
    art = export(twins / "two.onnx", tmp_path / "ov", ExportConfig(format="openvino"))
    assert art.format == "openvino" and art.model_path.name == "model.xml"


def test_an_error_after_adoption_names_the_users_file_not_the_scratch_copy(twins, tmp_path):
    """The conversion after adoption runs on a scratch copy; its errors name the file the user gave."""
    from compress.errors import ConfigError
    from compress.stages.export.adopt import adopt_then
    from compress.stages.export.config import ExportConfig

    def failing_exporter(path, out, config, *, force):
        raise ConfigError(f"{path / 'model.onnx'} has no route here", hint=f"convert {path} yourself")

    with pytest.raises(ConfigError) as e:
        adopt_then(twins / "two.onnx", tmp_path / "o", ExportConfig(format="openvino"), force=False,
                   export_artifact=failing_exporter)
    said = str(e.value)
    assert said == f"{twins / 'two.onnx'} has no route here; convert {twins / 'two.onnx'} yourself"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the scratch copy is gone, nothing written
