"""Roofline estimates (compress.estimates): graph costs of ONNX, OpenVINO IR and LiteRT files, the estimate and the
cold-start estimate, ``python -m compress.estimates.roofline``.

Graph costs are checked on hand-built ONNX graphs whose FLOPs and bytes can be counted by hand, and on LiteRT files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from compress.errors import ConfigError
from compress.estimates.roofline import (
    Efficiency,
    Peaks,
    estimate,
    estimate_cold_start,
    graph_cost,
    profile_peaks,
    roofline,
)
from compress.estimates.roofline import (
    main as estimate_main,
)
from compress.profiles.load import load_profile

IDEAL = Efficiency(compute_fp32=1.0, compute_int8=1.0, memory=1.0, overhead_us=0.0)


def _save(tmp_path: Path, nodes, inputs, outputs, inits, name="m.onnx", opset=17, ms=False) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("com.microsoft", 1)] if ms else [])
    model = helper.make_model(graph, opset_imports=opsets)
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


@pytest.fixture
def matmul_model(tmp_path) -> Path:
    """x[batch, seq, 16] @ W[16, 32] + b[32] -> Relu: dynamic batch and sequence."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((16, 32), np.float32), "W")
    b = numpy_helper.from_array(np.zeros(32, np.float32), "b")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch_size", "sequence_length", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "b"], ["hb"], name="add"),
        helper.make_node("Relu", ["hb"], ["y"], name="relu"),
    ]
    return _save(tmp_path, nodes, [x], [y], [w, b])


def _node(cost, name):
    return next(n for n in cost.nodes if n.name == name)


def test_matmul_flops_and_bytes_at_the_bound_shape(matmul_model):
    cost = graph_cost(matmul_model, 2, 8)
    mm = _node(cost, "mm")
    m, k, n = 2 * 8, 16, 32
    assert mm.flops == 2 * m * n * k and mm.int8_ops == 0
    assert mm.weight_bytes == k * n * 4  # the weight, read once
    assert mm.bytes == k * n * 4 + m * k * 4 + m * n * 4  # weight + activation in + out
    add = _node(cost, "add")
    assert add.weight_bytes == 32 * 4 and add.flops == m * n
    assert cost.unknown == []


def test_estimate_scales_with_sequence_length_and_peaks(matmul_model):
    compute_bound = Peaks(fp32_gflops=1.0, int8_gops=None, bandwidth_gbs=1e6)
    short = roofline(graph_cost(matmul_model, 1, 16), compute_bound, IDEAL)
    long = roofline(graph_cost(matmul_model, 1, 64), compute_bound, IDEAL)
    assert long.latency_ms == pytest.approx(4 * short.latency_ms, rel=1e-6)  # linear in tokens here
    faster = roofline(graph_cost(matmul_model, 1, 64), Peaks(2.0, None, 1e6), IDEAL)
    assert faster.latency_ms == pytest.approx(long.latency_ms / 2, rel=1e-6)
    assert long.bound == "compute"
    memory_bound = roofline(graph_cost(matmul_model, 1, 64), Peaks(1e6, None, 1.0), IDEAL)
    assert memory_bound.bound == "memory"
    assert memory_bound.latency_ms == pytest.approx(graph_cost(matmul_model, 1, 64).bytes / 1e9 * 1e3, rel=1e-6)
    # efficiency and per-operator overhead (scaled by reference clock / device clock)
    half = Efficiency(compute_fp32=0.5, compute_int8=0.5, memory=0.5, overhead_us=10.0, reference_clock_ghz=2.0)
    e = roofline(graph_cost(matmul_model, 1, 64), Peaks(1.0, None, 1e6, clock_ghz=1.0), half)
    assert e.overhead_ms == pytest.approx(3 * 10e-3 * 2.0)
    assert e.latency_ms == pytest.approx(2 * long.latency_ms + e.overhead_ms, rel=1e-6)


def test_int8_matmul_uses_the_int8_peak(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((16, 32), np.int8), "Wq")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 16])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, None)
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dq"),
        helper.make_node("MatMulInteger", ["xq", "Wq"], ["y"], name="mmi"),
    ]
    cost = graph_cost(_save(tmp_path, nodes, [x], [y], [w]), 1, 10)
    mmi = _node(cost, "mmi")
    assert mmi.int8_ops == 2 * 10 * 16 * 32 and mmi.flops == 0
    assert mmi.weight_bytes == 16 * 32  # one byte per INT8 weight
    fast_int8 = roofline(cost, Peaks(1.0, 4.0, 1e6), IDEAL)
    no_int8_peak = roofline(cost, Peaks(1.0, None, 1e6), IDEAL)  # falls back to the FP32 peak
    assert _only(no_int8_peak) > _only(fast_int8)


def _only(est):
    return est.by_op["MatMulInteger"]


def test_contrib_attention_and_the_ops_after_it_get_shapes(tmp_path):
    """ONNX's shape inference knows no com.microsoft ops; our rules fill them in and carry on downstream."""
    from onnx import TensorProto, helper, numpy_helper

    h, heads = 32, 4
    inits = [
        numpy_helper.from_array(np.ones((h, 3 * h), np.float32), "Wqkv"),
        numpy_helper.from_array(np.zeros(3 * h, np.float32), "bqkv"),
        numpy_helper.from_array(np.ones((h, 8), np.float32), "Wout"),
        numpy_helper.from_array(np.array([0, -1], np.int64), "flat"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch_size", "sequence_length", h])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Attention", ["x", "Wqkv", "bqkv"], ["a"], name="att", domain="com.microsoft", num_heads=heads),
        helper.make_node("SkipLayerNormalization", ["a", "x", "bqkv", "bqkv"], ["n"], name="sln",
                         domain="com.microsoft"),
        helper.make_node("MatMul", ["n", "Wout"], ["o"], name="out"),
        helper.make_node("Shape", ["o"], ["s"], name="shape"),
        helper.make_node("Reshape", ["o", "flat"], ["y"], name="reshape"),
    ]
    b, s = 2, 12
    cost = graph_cost(_save(tmp_path, nodes, [x], [y], inits, ms=True), b, s)
    assert cost.unknown == []
    att = _node(cost, "att")
    assert att.flops >= 2 * b * s * h * 3 * h + 4 * b * s * s * h  # QKV projection + QK^T + PV
    assert _node(cost, "out").flops == 2 * b * s * h * 8
    assert _node(cost, "sln").flops == 5 * b * s * h


def test_dynamic_shape_arithmetic_is_propagated(tmp_path):
    """Shape -> Gather -> Unsqueeze -> Slice of a constant table (position ids), as exporters write it."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.arange(512, dtype=np.int64).reshape(1, 512), "positions"),
        numpy_helper.from_array(np.array(1, np.int64), "one"),
        numpy_helper.from_array(np.array([0], np.int64), "zero1"),
        numpy_helper.from_array(np.array([0], np.int64), "axes0"),
        numpy_helper.from_array(np.array([1], np.int64), "axes1"),
        numpy_helper.from_array(np.ones((512, 8), np.float32), "table"),
    ]
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Shape", ["input_ids"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["seq"], axis=0),
        helper.make_node("Unsqueeze", ["seq", "axes0"], ["seq1"]),
        helper.make_node("Slice", ["positions", "zero1", "seq1", "axes1"], ["pos"]),
        helper.make_node("Gather", ["table", "pos"], ["y"], name="emb"),
    ]
    cost = graph_cost(_save(tmp_path, nodes, [ids], [y], inits), 1, 24)
    assert cost.unknown == []
    emb = _node(cost, "emb")
    assert emb.weight_bytes == 24 * 8 * 4  # only the gathered rows of the table are read


def test_tiny_artifacts(onnx_artifact, int8_artifact):
    fp32 = graph_cost(onnx_artifact, 1, 64)
    int8 = graph_cost(int8_artifact, 1, 64)
    assert fp32.unknown == [] and int8.unknown == []
    assert fp32.flops > 0 and fp32.int8_ops == 0
    assert int8.int8_ops > 0.5 * fp32.flops  # the matmuls moved to INT8
    assert int8.weight_bytes < fp32.weight_bytes
    est = estimate(int8_artifact, "raspberry-pi-5")
    assert est.latency_ms > 0 and est.profile == "raspberry-pi-5" and est.sequence_length == 64
    slower = estimate(int8_artifact, "raspberry-pi-4")  # a third of the peaks, less bandwidth
    assert slower.latency_ms > est.latency_ms


def test_openvino_ir_is_read(onnx_artifact, tmp_path):
    ov = pytest.importorskip("openvino")
    xml = tmp_path / "model.xml"
    ov.save_model(ov.convert_model(str(onnx_artifact.model_path)), str(xml))
    onnx_cost = graph_cost(onnx_artifact, 1, 32)
    ir = graph_cost(xml, 1, 32)
    assert ir.unknown == []
    assert ir.flops == pytest.approx(onnx_cost.flops, rel=0.3)


def test_profile_without_peaks_cannot_be_estimated():
    with pytest.raises(ConfigError, match="cpu-x86-avx2 has no hardware.peak_gflops_fp32"):
        profile_peaks(load_profile("cpu-x86-avx2"))


def test_cold_start_estimate():
    host = {"process_wall_ms": 500.0, "first_inference_ms": 100.0}
    assert estimate_cold_start(host, 3.0, 1.5, 40.0) == pytest.approx(400 * 2 + 40)
    assert estimate_cold_start(host, None, 1.5, 40.0) == pytest.approx(440)


def test_python_m_compress_estimate(int8_artifact, capsys):
    assert estimate_main([str(int8_artifact.path), "--profile", "raspberry-pi-5"]) == 0
    out = capsys.readouterr().out
    assert "(estimated)" in out and "raspberry-pi-5" in out
    assert estimate_main([str(int8_artifact.path), "-p", "jetson-orin-nano", "--sequence-length", "32", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sequence_length"] == 32 and data["latency_ms"] > 0 and data["profile"] == "jetson-orin-nano"
    assert estimate_main([str(int8_artifact.path), "-p", "cpu-x86-avx2"]) == 2  # no peaks: one-line error


ASSETS = Path(__file__).resolve().parents[1] / "assets"


def _by_op(cost, op: str) -> list:
    return [n for n in cost.nodes if n.op_type == op]


def test_a_tflite_text_model_costs_its_own_fixed_shape():
    """The tiny BERT of tests/assets (hidden 32, 2 layers, 2 heads, FFN 64, vocabulary 500, 2 labels), converted for
    128 tokens: whatever length is asked, the file runs 128."""
    pytest.importorskip("ai_edge_litert")
    from compress.estimates.tflite_graph import tflite_cost

    cost = tflite_cost(ASSETS / "tiny_bert_cls.tflite", 1, 16)
    assert cost.sequence_length == 128 and cost.unknown == [] and cost.int8_ops == 0
    assert cost.flops == tflite_cost(ASSETS / "tiny_bert_cls.tflite", 1, 128).flops
    s, h, ffn, layers, heads = 128, 32, 64, 2, 2
    fc = _by_op(cost, "FULLY_CONNECTED")  # per layer Q, K, V, output, FFN up and down; the pooler; the classifier
    assert len(fc) == 6 * layers + 2
    assert sum(n.flops for n in fc) == layers * 2 * s * (4 * h * h + 2 * h * ffn) + 2 * h * h + 2 * h * 2
    assert sum(n.weight_bytes for n in fc) == 4 * (layers * (4 * h * h + 2 * h * ffn) + h * h + h * 2)
    bmm = _by_op(cost, "BATCH_MATMUL")  # Q·Kᵀ and P·V, each head
    assert sum(n.flops for n in bmm) == layers * 2 * (2 * heads * s * s * (h // heads))
    words, types = _by_op(cost, "EMBEDDING_LOOKUP")  # the rows gathered, not the table; at most the table
    assert (words.weight_bytes, types.weight_bytes) == (s * h * 4, 2 * h * 4) and words.flops == 0
    softmax = _by_op(cost, "SOFTMAX")
    assert sum(n.flops for n in softmax) == layers * 5 * heads * s * s
    assert sum(n.flops for n in _by_op(cost, "GELU")) == layers * 8 * s * ffn
    assert all(not n.dispatch and n.bytes == 0 for n in _by_op(cost, "RESHAPE"))


def test_a_tflite_cnn_costs_follow_its_shapes_and_the_batch_is_calls():
    """tiny_cnn.tflite: 3×16×16 -> conv 3×3 to 8 channels (batch norm folded) -> mean -> linear 8 -> 4."""
    pytest.importorskip("ai_edge_litert")
    from compress.estimates.tflite_graph import tflite_cost

    one = tflite_cost(ASSETS / "tiny_cnn.tflite", 1, 64)
    (conv,), (mean,), (fc,) = (_by_op(one, op) for op in ("CONV_2D", "MEAN", "FULLY_CONNECTED"))
    assert conv.flops == 2 * (16 * 16 * 8) * (3 * 3 * 3) and conv.weight_bytes == (8 * 27 + 8) * 4
    assert conv.bytes == conv.weight_bytes + 16 * 16 * 3 * 4 + 16 * 16 * 8 * 4
    assert mean.flops == 5 * 8 * 16 * 16
    assert fc.flops == 2 * 8 * 4 + 4 and fc.weight_bytes == (4 * 8 + 4) * 4  # the fused bias: one add per output
    three = tflite_cost(ASSETS / "tiny_cnn.tflite", 3, 64)  # one row per call: three calls, the weights read each
    assert three.batch_size == 3 and three.flops == 3 * one.flops and three.bytes == pytest.approx(3 * one.bytes)
    assert three.weight_bytes == one.weight_bytes and three.dispatched == one.dispatched == 5


@pytest.fixture(scope="module")
def quantized_cnns(tmp_path_factory) -> dict[str, Path]:
    """tiny_cnn.tflite through ai-edge-quantizer: dynamic-range INT8, weight-only INT8 and full-integer INT8."""
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("ai_edge_quantizer")
    from ai_edge_quantizer import quantizer, recipe

    root, rng = tmp_path_factory.mktemp("tflite-int8"), np.random.default_rng(0)
    calibration = {"serving_default": [{"args_0": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
                                       for _ in range(4)]}
    out = {}
    for name in ("dynamic_wi8_afp32", "weight_only_wi8_afp32", "static_wi8_ai8"):
        qt = quantizer.Quantizer(str(ASSETS / "tiny_cnn.tflite"))
        qt.load_quantization_recipe(getattr(recipe, name)())
        result = qt.quantize(qt.calibrate(calibration) if name.startswith("static") else None,
                             enable_progress_bar=False, enable_progress_report=False)
        result.export_model(str(root / f"{name}.tflite"), overwrite=True)
        out[name] = root / f"{name}.tflite"
    return out


def test_int8_tflite_files_count_int8_operations(quantized_cnns):
    from compress.estimates.tflite_graph import tflite_cost

    fp32 = tflite_cost(ASSETS / "tiny_cnn.tflite", 1, 64)
    conv_macs, int8_weights = 16 * 16 * 8 * 27, 8 * 27 + 4 * 8  # conv and linear filters, a byte each
    dynamic = tflite_cost(quantized_cnns["dynamic_wi8_afp32"], 1, 64)  # INT8 filters, float activations
    (conv,) = _by_op(dynamic, "CONV_2D")
    assert conv.int8_ops == 2 * conv_macs and conv.flops == 16 * 16 * 3 + 16 * 16 * 8  # quantize in, dequantize out
    assert conv.weight_bytes == 8 * 27 + 8 * 4 and _by_op(dynamic, "MEAN")[0].flops == 5 * 8 * 16 * 16
    assert dynamic.weight_bytes == fp32.weight_bytes - 3 * int8_weights
    static = tflite_cost(quantized_cnns["static_wi8_ai8"], 1, 64)  # full integer: no float arithmetic left
    assert static.flops == 0 and static.int8_ops == 2 * conv_macs + 5 * 8 * 16 * 16 + 2 * 8 * 4
    assert static.bytes < dynamic.bytes < fp32.bytes  # INT8 activations
    weight_only = tflite_cost(quantized_cnns["weight_only_wi8_afp32"], 1, 64)  # expanded to float, float arithmetic
    assert weight_only.flops == fp32.flops and weight_only.int8_ops == 0
    assert weight_only.weight_bytes == dynamic.weight_bytes and weight_only.dispatched == fp32.dispatched
    assert all(not n.dispatch and n.bytes == 0 for n in _by_op(weight_only, "DEQUANTIZE"))


def test_a_tflite_without_ai_edge_litert_is_a_one_line_error(monkeypatch):
    from compress.errors import MissingBackendError
    from compress.estimates.tflite_graph import tflite_cost

    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(MissingBackendError) as e:
        tflite_cost(ASSETS / "tiny_cnn.tflite", 1, 64)
    assert "\n" not in str(e.value) and "pip install 'edgecompress[litert]'" in str(e.value)
