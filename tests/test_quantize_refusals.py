"""quantize refuses what cannot be what the user meant: unknown operator types, options for another format,
node names that are not in the graph, and a run that would quantize nothing (an FP32 model labelled int8)."""

from __future__ import annotations

import pytest

from compress.errors import ConfigError
from compress.stages.quantize import QuantizeConfig, quantize
from test_storage import one_line, run_cli


@pytest.mark.parametrize("args, words", [
    (("--op-types", "Matmul"), ("Matmul", "did you mean MatMul", "known:")),
    (("--op-types", "Conv"), ("nothing was quantized", "MatMul", "no artifact was written")),
    (("--weights-only",), ("--weights-only", "OpenVINO", "ONNX artifact")),
    (("--exclude-nodes", "/bert/encoder/layer.0/attention/self/query/MatMuul"), ("names no node", "query/MatMul")),
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
    from compress.stages.quantize import _OnnxQuantizer

    names = [lay.name for lay in _OnnxQuantizer(onnx_artifact, QuantizeConfig(op_types=["MatMul"])).layers()]
    with pytest.raises(ConfigError, match="--exclude-nodes covers every quantizable node"):
        quantize(onnx_artifact, tmp_path / "q", QuantizeConfig(op_types=["MatMul"], exclude_nodes=names))
    assert not (tmp_path / "q").exists()


def test_known_op_types_still_quantize(onnx_artifact, tmp_path):
    art = quantize(onnx_artifact, tmp_path / "q", QuantizeConfig(op_types=["MatMul"]))
    assert art.manifest.steps[-1].metrics["nodes"]["quantized_count"] > 0
