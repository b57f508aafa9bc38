"""``export --format tensorrt``: TensorRT-ready ONNX (dry run), TensorRT's QDQ rules, clear errors.

TensorRT is not installed here (and needs an NVIDIA GPU); the real engine build is covered only by a test
that injects a fake ``tensorrt`` module and checks the calls *we* make (profile shapes, builder flags,
timing cache): it tests our use of the API, not TensorRT.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from compress.cli import cli
from compress.errors import ArtifactError
from compress.stages.export import export
from compress.stages.export.config import ExportConfig
from compress.stages.export.tensorrt import check_tensorrt_qdq
from compress.stages.export.tensorrt_shapes import parse_shape, resolve_shapes


@pytest.fixture(scope="module")
def fp32_plain(bert_classifier, tmp_path_factory):
    """The tiny BERT classifier as unfused FP32 ONNX (--optimize none)."""
    return export(bert_classifier, tmp_path_factory.mktemp("trt") / "fp32", ExportConfig(optimize="none"))


@pytest.fixture(scope="module")
def calib(tmp_path_factory, make_tsv):
    return make_tsv(tmp_path_factory.mktemp("calib"))


@pytest.fixture(scope="module")
def int8_dry(fp32_plain, calib, tmp_path_factory):
    cfg = ExportConfig.from_flat(format="tensorrt", precision="int8", dry_run=True, calibration=str(calib))
    return export(fp32_plain.path, tmp_path_factory.mktemp("trt") / "int8", cfg)


def _logits(art, texts):
    from compress.runtimes.ort_backend import OrtBackend

    rt = OrtBackend(art)
    out = rt.predict(rt.encode(texts))
    rt.close()
    return out


def test_dry_run_fp16_from_teacher(bert_classifier, fp32_plain, tmp_path, sample_texts):
    art = export(bert_classifier, tmp_path / "fp16", ExportConfig.from_flat(format="tensorrt", dry_run=True))
    assert art.format == "onnx" and art.precision == "fp32"
    assert {"model.onnx", "manifest.json", "tokenizer.json"} <= {p.name for p in art.path.iterdir()}
    assert not (art.path / "model.plan").exists()
    t = art.manifest.target
    assert t["tensorrt_ready"] is True and t["engine"] is None and t["precision"] == "fp16"
    assert t["shapes"]["min"]["input_ids"] == [1, 1]
    assert t["shapes"]["opt"]["input_ids"] == [1, 64]  # MeasureConfig defaults
    assert t["shapes"]["max"]["attention_mask"] == [32, art.manifest.max_length]
    assert "--fp16" in t["trtexec"] and "--int8" not in t["trtexec"]
    import onnx

    model = onnx.load(str(art.model_path))
    assert not [n for n in model.graph.node if n.domain == "com.microsoft"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch kept
    np.testing.assert_allclose(_logits(art, sample_texts), _logits(fp32_plain, sample_texts), atol=1e-4)


def test_dry_run_int8_follows_tensorrt_rules(int8_dry, fp32_plain, sample_texts):
    import onnx
    from onnx import TensorProto, numpy_helper

    art = int8_dry
    assert art.format == "onnx" and art.precision == "int8"
    model = onnx.load(str(art.model_path))
    assert check_tensorrt_qdq(model) == []
    inits = {t.name: t for t in model.graph.initializer}
    consts = {n.output[0]: next(a.t for a in n.attribute if a.name == "value")
              for n in model.graph.node if n.op_type == "Constant"}

    def tensor(name):
        return inits.get(name) or consts.get(name)

    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    weights = 0
    for n in qdq:  # every zero point int8 and 0
        zp = tensor(n.input[2])
        assert zp.data_type == TensorProto.INT8 and not numpy_helper.to_array(zp).any()
        scale = numpy_helper.to_array(tensor(n.input[1]))
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:  # weight [K, N]: per-channel on axis 1
            w = inits[n.input[0]]
            axis = next(a.i for a in n.attribute if a.name == "axis")
            assert w.data_type == TensorProto.INT8 and axis == 1 and scale.shape == (w.dims[1],)
            weights += 1
        else:
            assert scale.size == 1  # activations per tensor
    assert weights == 12  # 2 layers x (Q, K, V, O, FFN in, FFN out)
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    producers = {o: n for n in model.graph.node for o in n.output}
    assert all(producers[i].op_type == "DequantizeLinear" for m in matmuls for i in m.input)
    ref, got = _logits(fp32_plain, sample_texts), _logits(art, sample_texts)
    assert (ref.argmax(-1) == got.argmax(-1)).mean() >= 0.9
    assert art.manifest.steps[-1].metrics["qdq_rules"] == "ok"


def test_checker_flags_asymmetric_uint8_static_quantization(fp32_plain, calib, tmp_path):
    import onnx

    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    art = quantize(fp32_plain, tmp_path / "static", QuantizeConfig.from_flat(mode="static", calibration=str(calib)))
    bad = check_tensorrt_qdq(onnx.load(str(art.model_path)))
    assert any("uint8" in b for b in bad), bad[:5]
    # and export refuses it as a TensorRT source, naming the way out
    with pytest.raises(ArtifactError, match="not TensorRT's explicit quantization"):
        export(art.path, tmp_path / "x", ExportConfig.from_flat(format="tensorrt", precision="int8", dry_run=True))
    assert not (tmp_path / "x").exists()


def test_int8_qdq_artifact_that_follows_the_rules_is_accepted(int8_dry, tmp_path):
    art = export(int8_dry.path, tmp_path / "again", ExportConfig.from_flat(format="tensorrt", precision="int8", dry_run=True))
    assert art.precision == "int8" and check_tensorrt_qdq(__import__("onnx").load(str(art.model_path))) == []


def test_fused_o2_input_refused(bert_classifier, tmp_path):
    fused = export(bert_classifier, tmp_path / "o2", ExportConfig(optimize="O2", parity_samples=2))
    with pytest.raises(ArtifactError, match="--optimize none") as e:
        export(fused.path, tmp_path / "x", ExportConfig.from_flat(format="tensorrt", dry_run=True))
    assert "com.microsoft" not in str(e.value) or "fused" in str(e.value)
    assert not (tmp_path / "x").exists()


def test_cli_dry_run_prints_trtexec_command(fp32_plain, calib, tmp_path):
    out = tmp_path / "cli-int8"
    result = CliRunner().invoke(cli, [
        "-q", "export", str(fp32_plain.path), "--format", "tensorrt", "--precision", "int8",
        "--calibration", str(calib), "--dry-run", "--profile", "raspberry-pi-5", "--out", str(out),
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if x.startswith("trtexec "))
    args = shlex.split(line)
    from compress.profiles.load import load_profile

    m = load_profile("raspberry-pi-5").measure
    b, s = m.batch_size, m.sequence_length
    names = "input_ids,attention_mask,token_type_ids".split(",")
    assert f"--onnx={out}/model.onnx" in args and f"--saveEngine={out}/model.plan" in args
    assert "--minShapes=" + ",".join(f"{n}:1x1" for n in names) in args
    assert "--optShapes=" + ",".join(f"{n}:{b}x{s}" for n in names) in args
    assert "--maxShapes=" + ",".join(f"{n}:{max(4 * b, 32)}x128" for n in names) in args
    assert "--int8" in args and any(a.startswith("--timingCacheFile=") for a in args)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"]["trtexec"] == line


def test_shapes_from_options_and_static_shape():
    cfg = ExportConfig.from_flat(format="tensorrt", opt_shape="8x32", max_shape="16x64")
    assert resolve_shapes(cfg, 128) == {"min": (1, 1), "opt": (8, 32), "max": (16, 64)}
    assert resolve_shapes(ExportConfig.from_flat(format="tensorrt", shape="4x16"), 128) == {k: (4, 16) for k in ("min", "opt", "max")}
    with pytest.raises(Exception, match="min <= opt <= max"):
        resolve_shapes(ExportConfig.from_flat(format="tensorrt", opt_shape="64x32"), 128)
    assert parse_shape("2X8") == (2, 8)


def test_real_build_without_tensorrt_is_one_line_and_writes_nothing(bert_classifier, tmp_path):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed")
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # no trtexec on PATH
    out = tmp_path / "engine"
    proc = subprocess.run(
        [sys.executable, "-m", "compress", "export", str(bert_classifier), "--format", "tensorrt", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == ["error: tensorrt is not installed (needed for building TensorRT engines); "
                     "install it with: pip install 'edgecompress[tensorrt]'"], proc.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


# --- test double: checks OUR calls into TensorRT's Python API, not TensorRT ------------------------------


class _Recorder:
    def __init__(self):
        self.calls: list[tuple] = []


def _fake_tensorrt(rec: _Recorder) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = "10.99.0-fake"

    class Logger:
        WARNING = "WARNING"

        def __init__(self, level):
            rec.calls.append(("Logger", level))

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            rec.calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

    class Cache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return b"timing-cache"

    class Config:
        def add_optimization_profile(self, profile):
            rec.calls.append(("add_optimization_profile",))

        def set_flag(self, flag):
            rec.calls.append(("set_flag", flag))

        def create_timing_cache(self, data):
            rec.calls.append(("create_timing_cache", bytes(data)))
            return Cache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            rec.calls.append(("set_timing_cache",))

        def get_timing_cache(self):
            return Cache(b"")

    class Builder:
        def __init__(self, logger):
            rec.calls.append(("Builder",))

        def create_network(self, flags):
            rec.calls.append(("create_network", flags))
            return "network"

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            rec.calls.append(("build_serialized_network", network))
            return b"PLAN"

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            rec.calls.append(("parse_from_file", Path(path).name))
            return True

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace()  # TensorRT 10: explicit batch is the default
    return trt


def test_int8_without_calibration_refused(fp32_plain, tmp_path):
    with pytest.raises(Exception, match="--calibration"):
        export(fp32_plain.path, tmp_path / "x", ExportConfig.from_flat(format="tensorrt", precision="int8", dry_run=True))
    assert not (tmp_path / "x").exists()


def test_fake_tensorrt_build_records_our_calls(int8_dry, fp32_plain, tmp_path, monkeypatch):
    """Tests our calls (profile shapes, flags, timing cache, manifest), not TensorRT itself."""
    rec = _Recorder()
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(rec))
    cfg = ExportConfig.from_flat(format="tensorrt", precision="int8", opt_shape="4x32", max_shape="8x128")
    art = export(int8_dry.path, tmp_path / "engine", cfg)
    assert art.format == "tensorrt" and art.precision == "int8" and art.manifest.model_file == "model.plan"
    assert (art.path / "model.plan").read_bytes() == b"PLAN"
    assert (art.path / "timing.cache").read_bytes() == b"timing-cache"
    assert ("parse_from_file", "model.onnx") in rec.calls and ("create_network", 0) in rec.calls
    shapes = [c for c in rec.calls if c[0] == "set_shape"]
    assert {c[1] for c in shapes} == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(c[2:] == ((1, 1), (4, 32), (8, 128)) for c in shapes)
    assert ("set_flag", "INT8") in rec.calls and ("add_optimization_profile",) in rec.calls
    assert ("create_timing_cache", b"") in rec.calls
    t = art.manifest.target
    assert t["tensorrt_version"] == "10.99.0-fake" and t["precision"] == "int8" and "compute_capability" in t
    assert t["shapes"]["opt"]["input_ids"] == [4, 32] and "gpu_name" in t
    engine_parity = art.manifest.steps[-1].metrics["engine_parity"]
    if not torch_cuda():  # the engine cannot run here: said, not hidden
        assert engine_parity["checked"] is False and "no CUDA GPU" in engine_parity["reason"]

    rec.calls.clear()  # fp16 from the FP32 artifact, reusing the timing cache
    cache = tmp_path / "shared.cache"
    shutil.copyfile(art.path / "timing.cache", cache)
    art16 = export(fp32_plain.path, tmp_path / "engine16", ExportConfig.from_flat(format="tensorrt", timing_cache=str(cache)))
    assert art16.precision == "fp16" and ("set_flag", "FP16") in rec.calls and ("set_flag", "INT8") not in rec.calls
    assert ("create_timing_cache", b"timing-cache") in rec.calls


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class _EngineStandIn:
    """Stands in for TensorRTBackend on a machine without a GPU: runs ``onnx_art`` in onnxruntime, optionally
    with flipped logits (an engine that disagrees). It checks how the export uses the engine, not TensorRT."""

    onnx_art = None
    flip = False
    shapes_seen: list = []

    def __init__(self, art, settings):
        from compress.runtimes.ort_backend import OrtBackend

        self.rt = OrtBackend(type(self).onnx_art)

    @classmethod
    def check_artifact(cls, art, settings):
        assert art.manifest.model_file == "model.plan" and settings.provider == "cuda:0"

    def predict(self, batch):
        type(self).shapes_seen.append(batch["input_ids"].shape)
        out = self.rt.predict(batch)
        return -out if type(self).flip else out

    def close(self):
        self.rt.close()


@pytest.mark.parametrize("flip", [False, True])
def test_built_engine_is_checked_against_fp32(fp32_plain, tmp_path, monkeypatch, flip):
    import compress.runtimes.tensorrt_backend as tb

    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(_Recorder()))
    stand_in = type("EngineStandIn", (_EngineStandIn,), {"onnx_art": fp32_plain, "flip": flip, "shapes_seen": []})
    monkeypatch.setattr(tb, "TensorRTBackend", stand_in)
    cfg = ExportConfig.from_flat(format="tensorrt", max_shape="4x64")
    out = tmp_path / "engine"
    if flip:
        with pytest.raises(Exception, match="engine agrees with the FP32 ONNX model on 0% of samples"):
            export(fp32_plain.path, out, cfg)
        assert not out.exists() and not list(tmp_path.iterdir())
        return
    art = export(fp32_plain.path, out, cfg)
    p = art.manifest.steps[-1].metrics["engine_parity"]
    assert p["checked"] is True and p["argmax_agreement"] == 1.0 and p["n"] == 16
    assert p["reference"] == "ONNX FP32 in ONNX Runtime"
    assert all(b <= 4 and s <= 64 for b, s in stand_in.shapes_seen)  # every batch inside the profile
