"""Static INT8 of a graph whose ``If`` subgraph reads a ``Relu`` output from the outer scope (as Silero VAD's LSTM
reads its encoder's last ReLU): that ReLU stays float, because ONNX Runtime's QDQ fold would hand the subgraph the
unclamped tensor. Tiny graph built with onnx.helper (test material)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper


def _graph():
    """y = If(flag, then: relu_out * 2, else: relu_out) + 0 where relu_out = Relu(MatMul(x, w)); z = Relu(x)."""
    f = TensorProto.FLOAT
    then = helper.make_graph([helper.make_node("Mul", ["relu_out", "two"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", f, None)])
    other = helper.make_graph([helper.make_node("Identity", ["relu_out"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", f, None)])
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
             helper.make_node("Relu", ["mm"], ["relu_out"], name="read_relu"),
             helper.make_node("Relu", ["x"], ["z"], name="plain_relu"),
             helper.make_node("If", ["flag"], ["y"], name="branch", then_branch=then, else_branch=other)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f, [1, 4]),
                                           helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", f, None), helper.make_tensor_value_info("z", f, [1, 4])],
                              initializer=[w, two])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_relu_a_subgraph_reads_stays_float():
    from compress.stages.quantize.subgraphs import outer_scope_reads, subgraph_read_activations

    model = _graph()
    assert outer_scope_reads(model) == {"relu_out", "two"}
    assert subgraph_read_activations(model, ("MatMul", "Relu")) == ["read_relu"]
    assert subgraph_read_activations(model, ("MatMul",)) == []  # ReLUs not quantized: nothing is folded
