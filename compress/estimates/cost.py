"""Graph cost (step 1 of a roofline estimate, see :mod:`compress.estimates.roofline`): what every operator of a model costs at
one input shape, and the operator tables and shape helpers the ONNX and OpenVINO readers share."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class NodeCost:
    """What one operator costs at the bound input shape."""

    name: str
    op_type: str
    flops: float = 0.0  # floating-point operations (FP32/FP16 arithmetic)
    int8_ops: float = 0.0  # integer multiply-add operations (2 per MAC), INT8 kernels
    bytes: float = 0.0  # weights (first read only) + activations in + out
    weight_bytes: float = 0.0
    dispatch: bool = True  # False for shape-only ops a runtime folds away (no per-operator cost)


@dataclass
class GraphCost:
    """Per-node costs of one model at one input shape."""

    source: str
    batch_size: int
    sequence_length: int
    nodes: list[NodeCost]
    unknown: list[str] = field(default_factory=list)  # "op_type:name" of nodes whose shapes stayed unknown

    @property
    def flops(self) -> float:
        return sum(n.flops for n in self.nodes)

    @property
    def int8_ops(self) -> float:
        return sum(n.int8_ops for n in self.nodes)

    @property
    def bytes(self) -> float:
        return sum(n.bytes for n in self.nodes)

    @property
    def weight_bytes(self) -> float:
        return sum(n.weight_bytes for n in self.nodes)

    @property
    def dispatched(self) -> int:
        return sum(1 for n in self.nodes if n.dispatch)


# Ops that only move metadata (or are folded by every runtime): no FLOPs, no bytes, no dispatch.
_FREE = frozenset({
    "Shape", "Size", "Constant", "ConstantOfShape", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten",
    "Dropout", "Range",
    # OpenVINO
    "Parameter", "Result", "ShapeOf", "Convert_weights",
})
_NORMS = frozenset({
    "Softmax", "LogSoftmax", "LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization", "ReduceMean", "ReduceSum", "ReduceMax",
    "GroupNormalization", "BatchNormalization", "InstanceNormalization", "RMSNormalization", "MVN", "NormalizeL2",
})
_TRANSCENDENTAL = frozenset({
    "Erf", "Tanh", "Sigmoid", "Exp", "Log", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Swish", "HardSwish",
    "Softplus", "Mish", "Pow", "Sqrt", "Reciprocal",
})
_INT8_MATMUL = frozenset({
    "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul", "QGemm", "QLinearConv",
    "ConvInteger",
})
_MATMUL = frozenset({"MatMul", "FusedMatMul"}) | {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
_SAME_SHAPE = frozenset({
    "Relu", "LeakyRelu", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Erf", "Tanh", "Sigmoid", "Sqrt", "Exp", "Log",
    "Neg", "Abs", "Reciprocal", "Softmax", "LogSoftmax", "LayerNormalization", "SkipLayerNormalization",
    "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "Identity", "Dropout", "Cast", "Not",
    "DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear", "Clip", "Floor", "Ceil", "Round", "Sign",
    "BiasAdd", "BiasSplitGelu", "Swish", "HardSwish", "Softplus", "IsNaN", "CastLike",
})
_BROADCAST = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Where", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And",
    "Or", "Xor", "Max", "Min", "Mod", "Sum", "Mean", "PRelu",
})


def _numel(shape: tuple[int, ...] | None) -> int:
    return math.prod(shape) if shape is not None else 0


def _broadcast(*shapes: tuple[int, ...]) -> tuple[int, ...] | None:
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dims = {s[i - rank + len(s)] for s in shapes if i - rank + len(s) >= 0}
        dims.discard(1)
        if len(dims) > 1:
            return None
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def _bind_dim(name: str, position: int, batch: int, seq: int) -> int:
    low = name.lower()
    if "batch" in low or low in ("n", "b"):
        return batch
    if any(k in low for k in ("seq", "length", "token", "len")) or low in ("s", "t", "l"):
        return seq
    return batch if position == 0 else seq


def times_rows(n: NodeCost, batch: int) -> NodeCost:
    """One row's cost run ``batch`` times, for a model that takes one row per call (Core ML packages, ExecuTorch
    programs, LiteRT files): the arithmetic and traffic scale, the weights occupy the same bytes."""
    if batch == 1:
        return n
    return NodeCost(n.name, n.op_type, flops=n.flops * batch, int8_ops=n.int8_ops * batch, bytes=n.bytes * batch,
                    weight_bytes=n.weight_bytes, dispatch=n.dispatch)
