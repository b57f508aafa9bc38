"""Graph cost of an OpenVINO IR, read with ``openvino`` and reshaped to the static input shape (the IR itself is
what runs: NNCF's FakeQuantize and compressed weights change the cost)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from compress.errors import MissingBackendError
from compress.estimates.cost import GraphCost, NodeCost, _numel

log = logging.getLogger("compress.estimates.roofline")


# -- OpenVINO ---------------------------------------------------------------------------------------

_OV_FREE = frozenset({"Parameter", "Result", "Constant", "ShapeOf", "Reshape", "Squeeze", "Unsqueeze", "Convert"})
_OV_NORMS = frozenset({"MVN", "Softmax", "NormalizeL2", "ReduceMean", "ReduceSum", "ReduceMax", "RMS"})


def openvino_cost(path: Path, batch: int, seq: int) -> GraphCost:
    try:
        import openvino as ov
    except ImportError:
        raise MissingBackendError("estimating an OpenVINO IR needs openvino", hint="pip install openvino") from None

    model = ov.Core().read_model(str(path))
    new_shapes = {}
    for p in model.inputs:
        ps = p.get_partial_shape()
        dims = []
        for pos, d in enumerate(ps):
            dims.append(d.get_length() if d.is_static else (batch if pos == 0 else seq))
        new_shapes[p.any_name] = dims
    model.reshape(new_shapes)

    # A node is "constant-derived" when all its inputs are (weight decompression: Convert, Subtract,
    # Multiply on a u8/i8/u4 Constant); such chains are folded or decompressed inside the consumer.
    const_bytes: dict[str, float] = {}  # node friendly name -> bytes of the originating constant(s)
    const_nodes: set[str] = set()
    int8_nodes: set[str] = set()  # outputs of FakeQuantize with 256 levels (INT8 activations)
    counted: set[str] = set()
    nodes: list[NodeCost] = []
    unknown: list[str] = []

    def out_bytes(node, i=0) -> float:
        ps = node.get_output_partial_shape(i)
        if not ps.is_static:
            return 0.0
        return _numel(tuple(ps.to_shape())) * node.get_output_element_type(i).size

    for node in model.get_ordered_ops():
        op = node.get_type_name()
        name = node.get_friendly_name()
        srcs = [node.input_value(i).get_node() for i in range(node.get_input_size())]
        if op == "Constant":
            const_nodes.add(name)
            const_bytes[name] = out_bytes(node)
            nodes.append(NodeCost(name, op, dispatch=False))
            continue
        if srcs and all(s.get_friendly_name() in const_nodes for s in srcs):
            const_nodes.add(name)  # folded weight subgraph (decompression, transposes)
            const_bytes[name] = sum(const_bytes.get(s.get_friendly_name(), 0.0) for s in srcs)
            nodes.append(NodeCost(name, op, dispatch=False))
            continue
        if any(not node.get_output_partial_shape(i).is_static for i in range(node.get_output_size())):
            unknown.append(f"{op}:{name}")
            nodes.append(NodeCost(name, op, dispatch=False))
            continue
        if op in _OV_FREE:
            nodes.append(NodeCost(name, op, dispatch=False))
            continue
        if op == "FakeQuantize" and int(node.get_attributes().get("levels", 0)) <= 256:
            int8_nodes.add(name)
        weight = act = 0.0
        for i, s in enumerate(srcs):
            sname = s.get_friendly_name()
            if sname in const_nodes:
                if op == "Gather" and i == 0:
                    weight += out_bytes(node)
                elif sname not in counted:
                    counted.add(sname)
                    weight += const_bytes.get(sname, 0.0)
            else:
                ps = node.get_input_partial_shape(i)
                act += _numel(tuple(ps.to_shape())) * node.get_input_element_type(i).size if ps.is_static else 0.0
        outb = sum(out_bytes(node, i) for i in range(node.get_output_size()))
        n_out = _numel(tuple(node.get_output_partial_shape(0).to_shape()))
        flops = int8 = 0.0
        if op == "MatMul":
            a = tuple(node.get_input_partial_shape(0).to_shape())
            k = a[-2] if node.get_attributes().get("transpose_a") else a[-1]
            macs = n_out * k
            if any(s.get_friendly_name() in int8_nodes for s in srcs):
                int8 = 2.0 * macs
            else:
                flops = 2.0 * macs
        elif op in ("ScaledDotProductAttention",):
            q = tuple(node.get_input_partial_shape(0).to_shape())
            k = tuple(node.get_input_partial_shape(1).to_shape())
            flops = 4.0 * _numel(q) * k[-2] + 5.0 * _numel(q[:-1]) * k[-2]
        elif op in ("Convolution", "GroupConvolution"):
            w = tuple(node.get_input_partial_shape(1).to_shape())
            flops = 2.0 * n_out * math.prod(w[1:] if op == "Convolution" else w[2:])
        elif op in _OV_NORMS:
            flops = 5.0 * n_out
        elif op in ("Gelu", "Tanh", "Erf", "Exp", "Sigmoid", "Swish", "HSwish", "Power", "Sqrt"):
            flops = 8.0 * n_out
        elif op in ("Gather", "Transpose", "Concat", "StridedSlice", "Slice", "Split", "VariadicSplit",
                    "Broadcast", "Tile", "Pad"):
            flops = 0.0
        else:
            flops = float(n_out)
        nodes.append(NodeCost(name, op, flops=flops, int8_ops=int8, bytes=weight + act + outb, weight_bytes=weight))
    return GraphCost(str(path), batch, seq, nodes, unknown)
