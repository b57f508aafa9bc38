"""Adoption folds a BatchNormalization that reads a convolution's output alone into that convolution (Paddle2ONNX
keeps them apart: PaddleOCR's orientation classifier has 35 such pairs, which static INT8 quantized before the
per-channel scaling; ``compress.stages.export.onnx_normalize.fold_batch_norms``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from compress.stages.export.onnx_normalize import fold_batch_norms  # noqa: E402


def _bn(rng, prefix: str, channels: int, spread: float) -> list:
    """A BatchNormalization's four constants, its scales spread over ``spread`` orders of magnitude (as a trained
    network's are)."""
    return [numpy_helper.from_array(a.astype(np.float32), f"{prefix}_{k}") for k, a in (
        ("scale", 10.0 ** rng.uniform(-spread, spread, channels)), ("bias", rng.standard_normal(channels)),
        ("mean", rng.standard_normal(channels)), ("var", rng.uniform(0.1, 3.0, channels)))]


def paddle_like(shared_output: bool = False, spread: float = 2.0):
    """Conv (no bias) -> BN -> Relu -> ConvTranspose -> Add (its bias, [1, C, 1, 1]) -> BN, as Paddle2ONNX writes a
    stem and PP-OCRv4's DB head;
    ``shared_output``: the first convolution's output is also a graph output (not foldable); ``spread``: of the first
    BatchNormalization's scales, in orders of magnitude."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((8, 4, 2, 2)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal((1, 4, 1, 1)).astype(np.float32), "b2"),
             *_bn(rng, "bn1", 8, spread), *_bn(rng, "bn2", 4, spread / 2)]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "bn1_scale", "bn1_bias", "bn1_mean", "bn1_var"], ["n1"],
                              name="bn1", epsilon=1e-5),
             helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
             helper.make_node("ConvTranspose", ["r1", "w2"], ["t2"], name="up", strides=[2, 2]),
             helper.make_node("Add", ["t2", "b2"], ["c2"], name="up_bias"),  # Paddle2ONNX's ConvTranspose bias
             helper.make_node("BatchNormalization", ["c2", "bn2_scale", "bn2_bias", "bn2_mean", "bn2_var"], ["y"],
                              name="bn2", epsilon=1e-3)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 32, 32])]
    if shared_output:
        outputs.append(helper.make_tensor_value_info("c1", TensorProto.FLOAT, [1, 8, 16, 16]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


def _run(model, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["y"], {"x": x})[0]


def test_batch_norms_and_bias_adds_after_convolutions_are_folded_and_the_outputs_match():
    model = onnx.shape_inference.infer_shapes(paddle_like())  # as adoption leaves a Paddle2ONNX graph
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    want = _run(model, x)
    folded, record = fold_batch_norms(model)
    assert record == {"batch_norms_folded": 2, "bias_adds_folded": 1}
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu", "ConvTranspose"]
    assert {t.name for t in folded.graph.initializer} == {"w1", "w2", "b2", "w1_folded_bias"}
    onnx.checker.check_model(folded)
    onnx.shape_inference.infer_shapes(folded, strict_mode=True)  # no inferred shape left that contradicts the fold
    np.testing.assert_allclose(_run(folded, x), want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_a_convolution_whose_output_is_read_elsewhere_keeps_its_batch_norm():
    model = paddle_like(shared_output=True)
    folded, record = fold_batch_norms(model)
    assert record == {"batch_norms_folded": 1, "bias_adds_folded": 1}  # the ConvTranspose's only
    assert [n.name for n in folded.graph.node if n.op_type == "BatchNormalization"] == ["bn1"]


def test_a_graph_without_such_a_pair_is_left_as_it_came():
    model = paddle_like()
    folded, _ = fold_batch_norms(model)
    again, record = fold_batch_norms(folded)
    assert record is None and again is folded


def test_adoption_folds_them_and_static_int8_quantizes_no_batch_norm(tmp_path: Path):
    """The adopted artifact holds no BatchNormalization (before: 2, each read after its convolution's INT8 output)."""
    from compress.artifact import load_artifact
    from compress.stages.export import export
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    onnx.save(paddle_like(spread=0.0), str(tmp_path / "m.onnx"))  # outputs near 1: adoption's atol
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((24, 3, 16, 16)).astype(np.float32))
    fp32 = export(tmp_path / "m.onnx", tmp_path / "fp32")
    assert fp32.manifest.steps[0].config["normalized"]["batch_norms_folded"] == 2
    int8 = quantize(load_artifact(tmp_path / "fp32"), tmp_path / "int8",
                    QuantizeConfig.from_flat(calibration=str(tmp_path / "cal.npz")))
    ops = [n.op_type for n in onnx.load(str(int8.model_path)).graph.node]
    assert "BatchNormalization" not in ops and "QuantizeLinear" in ops
