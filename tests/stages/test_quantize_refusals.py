"""quantize refuses what cannot be what the user meant: unknown operator types, options for another format,
node names that are not in the graph, and a run that would quantize nothing (an FP32 model labelled int8)."""

from __future__ import annotations

import pytest
from test_storage import one_line, run_cli

from compress.errors import ConfigError
from compress.stages.quantize import quantize
from compress.stages.quantize.config import QuantizeConfig


@pytest.mark.parametrize("args, words", [
    (("--op-types", "Matmul"), ("Matmul", "did you mean MatMul", "known:")),
    (("--op-types", "Conv"), ("nothing was quantized", "MatMul", "no artifact was written")),
    (("--weights-only",), ("--weights-only", "OpenVINO", "ONNX artifact")),
    (("--exclude-nodes", "/bert/encoder/layer.0/attention/self/query/MatMuul"), ("names no node", "query/MatMul")),
    (("--block-size", "32"), ("--block-size", "dynamic INT8", "--precision int4")),
    (("--calibration-method", "entropy"), ("--calibration-method", "dynamic INT8", "--mode static")),
    (("--precision", "int4", "--per-tensor"), ("--per-channel", "INT4", "--precision int8")),
    (("--mode", "static", "--embedding-precision", "fp32"), ("--embedding-precision", "static INT8")),
])
def test_cli_refuses_with_one_line_and_exit_2(onnx_artifact, tmp_path, capsys, args, words):
    out = tmp_path / "q"
    code, err = run_cli(capsys, "quantize", onnx_artifact.path, "--out", out, *args)
    line = one_line(err)
    assert code == 2, err
    for w in words:
        assert w in line, line
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


def test_excluding_every_quantizable_node_is_refused(onnx_artifact, tmp_path):
    from compress.stages.quantize.ort_quantizer import OnnxQuantizer

    names = [lay.name for lay in OnnxQuantizer(onnx_artifact, QuantizeConfig.from_flat(op_types=["MatMul"])).layers()]
    with pytest.raises(ConfigError, match="--exclude-nodes covers every quantizable node"):
        quantize(onnx_artifact, tmp_path / "q", QuantizeConfig.from_flat(op_types=["MatMul"], exclude_nodes=names))
    assert not (tmp_path / "q").exists()


def test_first_and_last_n_layers_kept_float_by_position(onnx_artifact, tmp_path):
    """``--exclude-nodes first:N,last:M``: the graph's first N and last M quantizable layers, in graph order (a stem
    and a head), recorded by name; a name given as well is kept once."""
    from compress.stages.quantize.ort_quantizer import OnnxQuantizer

    names = [lay.name for lay in OnnxQuantizer(onnx_artifact, QuantizeConfig.from_flat(op_types=["MatMul"])).layers()]
    art = quantize(onnx_artifact, tmp_path / "q", QuantizeConfig.from_flat(
        op_types=["MatMul"], exclude_nodes=["first:2", names[1], "LAST:1"]))
    step = art.manifest.steps[-1]
    assert step.config["exclude_nodes"] == [names[0], names[1], names[-1]]
    kept = {k["node"] for k in step.metrics["nodes"]["kept_float"]}
    assert {names[0], names[1]} <= kept and names[2] not in kept  # (the last, a rewritten Gemm, reported as the Gemm)
    with pytest.raises(ConfigError, match="names no node.*first:N"):
        quantize(onnx_artifact, tmp_path / "r", QuantizeConfig.from_flat(exclude_nodes=["first:x"]))


def test_known_op_types_still_quantize(onnx_artifact, tmp_path):
    art = quantize(onnx_artifact, tmp_path / "q", QuantizeConfig.from_flat(op_types=["MatMul"]))
    assert art.manifest.steps[-1].metrics["nodes"]["quantized_count"] > 0


def test_third_party_warnings_only_with_verbose(onnx_artifact, tmp_path):
    """ONNX Runtime's "Please consider to run pre-processing" (root logger) is not the user's concern; -v shows it."""
    import os
    import subprocess
    import sys

    from conftest import write_tsv

    data = write_tsv(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("EDGECOMPRESS_DEBUG", None)

    def run(*flags, out):
        return subprocess.run([sys.executable, "-m", "compress", *flags, "quantize", str(onnx_artifact.path),
                               "--mode", "static", "--calibration", str(data), "--calibration-samples", "8",
                               "--out", str(tmp_path / out)], capture_output=True, text=True, env=env, timeout=600)

    quiet, loud = run(out="a"), run("-v", out="b")
    assert quiet.returncode == 0 and loud.returncode == 0, (quiet.stderr, loud.stderr)
    assert "pre-processing" not in quiet.stderr, quiet.stderr
    assert "pre-processing" in loud.stderr, loud.stderr


# --- profile -> settings, in the library -----------------------------------------------------------------


def test_quantize_config_for_profile():
    """What a profile implies is the library's to derive (the CLI only calls it)."""
    from compress.profiles.load import load_profile

    avx2 = QuantizeConfig.for_profile("cpu-x86-avx2")
    assert (avx2.target.x86, avx2.target.vnni, avx2.target.runtime) == (True, False, "onnxruntime")
    assert avx2.resolved_reduce_range() is True  # x86 without VNNI: 7-bit weights
    vnni = QuantizeConfig.for_profile(load_profile("cpu-x86-avx512-vnni"))
    assert vnni.target.vnni is True and vnni.resolved_reduce_range() is False
    arm = QuantizeConfig.for_profile("cpu-arm64-neon", reduce_range=True)  # given settings win
    assert arm.target.x86 is False and arm.int8.reduce_range is True
    retention = load_profile("cpu-x86-avx2").budgets.min_accuracy_retention
    if retention is not None:
        assert QuantizeConfig.for_profile("cpu-x86-avx2", data="dev.tsv").accuracy.min_retention == min(retention, 1.0)
        assert QuantizeConfig.for_profile("cpu-x86-avx2", data="dev.tsv", max_drop=0.01).accuracy.min_retention is None
    assert QuantizeConfig.for_profile("cpu-x86-avx2").accuracy.min_retention is None  # no data: no accuracy target


def test_python_api_refuses_what_would_be_ignored(onnx_artifact, tmp_path):
    """The same refusal from Python: an explicitly set INT4-only field on an INT8 run."""
    with pytest.raises(ConfigError, match="--symmetric .*do\\(es\\) not apply to dynamic INT8"):
        quantize(onnx_artifact, tmp_path / "q", QuantizeConfig.from_flat(symmetric=False))
    # defaults are not "given": the plain call still works
    assert quantize(onnx_artifact, tmp_path / "ok", QuantizeConfig()).precision == "int8"


def test_int4_with_calibration_points_to_static_int8(unused_tmp=None):
    from compress.stages.quantize.graph import _check_applicable

    with pytest.raises(ConfigError, match="--precision int8 --mode static"):
        _check_applicable(QuantizeConfig.from_flat(precision="int4", calibration="x.tsv"))
