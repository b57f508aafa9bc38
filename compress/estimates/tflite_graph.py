"""Graph cost of a LiteRT flatbuffer (``.tflite``), read with LiteRT's interpreter without allocating or running it
(nothing is run, so it works for a phone that is not this machine; and before allocation no delegate has replaced
the file's operators).

Shapes in a ``.tflite`` are static: a converted text model takes one fixed number of tokens (128, the runtime pads
shorter inputs) and one row per call. So the cost is the file's own shape, whatever sequence length is asked (the
file runs its fixed length), and a batch of B rows is B calls, each reading the weights again.

Weights are the constant tensors (neither an operator's output nor a model input), at the bytes they occupy: FP32,
FP16 or INT8 (an INT4 weight is reported by the interpreter as INT8, one byte). A DEQUANTIZE of a constant (FP16
weights, weight-only INT8) is that weight expanded once, free per call; the operator that uses it computes in floating
point. An operator whose input or filter is INT8 (a full-integer model, or the dynamic-range FULLY_CONNECTED and
convolutions whose INT8 filters XNNPACK's and TFLite's hybrid kernels multiply with the input quantized per call)
counts INT8 operations instead of FLOPs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.errors import ArtifactError, MissingBackendError
from compress.estimates.cost import GraphCost, NodeCost, times_rows

log = logging.getLogger("compress.estimates.roofline")

#: metadata only: no arithmetic, no bytes, no operator run
_FREE = frozenset({"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "SHAPE", "RANK"})
#: data movement: no arithmetic, the bytes in and out
_MOVES = frozenset({"TRANSPOSE", "CONCATENATION", "PAD", "PADV2", "MIRROR_PAD", "SLICE", "STRIDED_SLICE", "SPLIT",
                    "SPLIT_V", "TILE", "PACK", "UNPACK", "BROADCAST_TO", "CAST", "SPACE_TO_DEPTH", "DEPTH_TO_SPACE",
                    "REVERSE_V2", "FILL", "ZEROS_LIKE", "ONE_HOT", "SELECT", "SELECT_V2"})
#: gathers -> the position of the table they read rows from
_GATHERS = {"EMBEDDING_LOOKUP": 1, "GATHER": 0, "GATHER_ND": 0}
#: 5 operations per input element (as the ONNX reader counts Softmax, LayerNormalization and ReduceMean)
_NORMS = frozenset({"SOFTMAX", "LOG_SOFTMAX", "L2_NORMALIZATION", "LOCAL_RESPONSE_NORMALIZATION", "MEAN", "SUM",
                    "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD", "AVERAGE_POOL_2D", "MAX_POOL_2D", "L2_POOL_2D"})
#: 8 operations per output element
_TRANSCENDENTAL = frozenset({"TANH", "LOGISTIC", "GELU", "EXP", "LOG", "SQRT", "RSQRT", "POW", "HARD_SWISH", "ELU",
                             "SIN", "COS"})
#: multiply-accumulate operators -> positions of (activation, filter)
_CONTRACTIONS = {"FULLY_CONNECTED": (0, 1), "BATCH_MATMUL": (0, 1), "CONV_2D": (0, 1), "DEPTHWISE_CONV_2D": (0, 1),
                 "CONV_3D": (0, 1), "TRANSPOSE_CONV": (2, 1)}
#: operators whose body is another subgraph (not costed)
_CALLS = frozenset({"WHILE", "IF", "CALL_ONCE", "STABLEHLO_COMPOSITE"})


@dataclass
class _Tensors:
    """The interpreter's tensor details, which of them are constants, and the weights already counted."""

    details: dict[int, dict[str, Any]]
    constants: set[int]
    alias: dict[int, int] = field(default_factory=dict)  # a DEQUANTIZE's output -> the constant weight it expands
    counted: set[int] = field(default_factory=set)

    def shape(self, i: int) -> tuple[int, ...]:
        d = self.details.get(i)
        return tuple(int(x) for x in d["shape"]) if d is not None else ()

    def numel(self, i: int) -> int:
        return math.prod(self.shape(i)) if i in self.details else 0

    def itemsize(self, i: int) -> int:
        import numpy as np

        try:
            return np.dtype(self.details[i]["dtype"]).itemsize
        except (KeyError, TypeError):
            return 1

    def nbytes(self, i: int) -> float:
        return float(self.numel(i) * self.itemsize(i))

    def integer8(self, i: int) -> bool:
        import numpy as np

        d = self.details.get(i)
        return d is not None and np.dtype(d["dtype"]) in (np.int8, np.uint8)


def tflite_cost(path: Path, batch: int, seq: int) -> GraphCost:
    """Per-operator costs of the LiteRT file at ``path`` for ``batch`` rows. ``seq`` is not used: the file runs its
    own fixed length (a text model's 128 tokens, its shorter inputs padded), and the cost reports that length. The
    file takes its own batch (one row) per call: a larger batch is that many calls, the weights read each time."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise MissingBackendError("estimating a LiteRT model needs ai-edge-litert",
                                  hint="pip install 'edgecompress[litert]'") from None
    try:
        interpreter = Interpreter(model_path=str(path))  # never allocated: no delegate has replaced the operators
    except ValueError as e:
        raise ArtifactError(f"{path}: LiteRT cannot read it ({' '.join(str(e).split())[:200]})") from e
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # the only listing of operators ai-edge-litert 2.x offers
    inputs = interpreter.get_input_details()
    produced = {int(i) for op in ops for i in op["outputs"]}
    g = _Tensors(details, set(details) - produced - {d["index"] for d in inputs})
    nodes: list[NodeCost] = []
    unknown: list[str] = []
    for op in ops:
        kind, ins = op["op_name"], [int(i) for i in op["inputs"]]
        outs = [int(i) for i in op["outputs"] if i >= 0]
        name = details[outs[0]]["name"] if outs and outs[0] in details else f"{kind}:{op['index']}"
        if kind == "DEQUANTIZE" and ins and ins[0] in g.constants:  # FP16 / INT8 weights, expanded once
            g.alias[outs[0]] = ins[0]
            nodes.append(NodeCost(name, kind, dispatch=False))
            continue
        if kind in _CALLS or any(-1 in details[o].get("shape_signature", ()) for o in outs if o in details):
            unknown.append(f"{kind}:{name}")  # a subgraph's body, or a dynamic shape held at its placeholder
        nodes.append(_cost(kind, name, ins, outs, g))
    if unknown:
        log.info("%d operator(s) of %s costed at their stored shapes or not at all: %s", len(unknown), path,
                 ", ".join(unknown[:5]))
    rows = max(1, int(inputs[0]["shape"][0])) if inputs and len(inputs[0]["shape"]) else 1
    calls = math.ceil(batch / rows)
    return GraphCost(str(path), batch, _sequence(inputs, seq), [times_rows(n, calls) for n in nodes], unknown)


def _sequence(inputs: list[dict[str, Any]], seq: int) -> int:
    """The file's token count where its inputs are token ids (integer ``[rows, tokens]``), else ``seq`` as asked."""
    import numpy as np

    shapes = [tuple(d["shape"]) for d in inputs if np.issubdtype(d["dtype"], np.integer)]
    if shapes and len(shapes) == len(inputs) and all(len(s) == 2 for s in shapes):
        return int(shapes[0][1])
    return seq


def _cost(kind: str, name: str, ins: list[int], outs: list[int], g: _Tensors) -> NodeCost:
    """One operator: its arithmetic, and its bytes (each weight on its first use, activations in and out)."""
    if kind in _FREE:
        return NodeCost(name, kind, dispatch=False)
    out = outs[0] if outs else -1
    weight = act_in = 0.0
    for pos, i in enumerate(ins):
        source = g.alias.get(i, i)
        if i < 0 or source not in g.details:
            continue
        if source not in g.constants:
            act_in += g.nbytes(i)
        elif _GATHERS.get(kind) == pos:  # an embedding reads the rows it gathers, not its table (at most all of it)
            weight += min(g.numel(out) * g.itemsize(source), g.nbytes(source))
        elif source not in g.counted:
            g.counted.add(source)
            weight += g.nbytes(source)
    flops, int8 = _arithmetic(kind, ins, out, g)
    return NodeCost(name, kind, flops=flops, int8_ops=int8, bytes=weight + act_in + sum(g.nbytes(o) for o in outs),
                    weight_bytes=weight)


def _arithmetic(kind: str, ins: list[int], out: int, g: _Tensors) -> tuple[float, float]:
    """(FLOPs, INT8 operations) of one operator: 2 per multiply-accumulate, 5 per element for a normalisation or
    reduction, 8 for a transcendental function, 1 for other elementwise arithmetic, none for data movement."""
    n_out = g.numel(out)
    if kind in _CONTRACTIONS:
        x, w = (ins[p] if p < len(ins) else -1 for p in _CONTRACTIONS[kind])
        macs = _macs(kind, x, g.shape(w), out, g)
        if g.integer8(x) or g.integer8(w):  # INT8 kernels: a float input is quantized per call, a float result
            return float((0 if g.integer8(x) else g.numel(x)) + (0 if g.integer8(out) else n_out)), 2.0 * macs
        bias = kind == "FULLY_CONNECTED" and len(ins) > 2 and ins[2] >= 0  # as the ONNX reader's MatMul + Add
        return 2.0 * macs + (n_out if bias else 0), 0.0
    if kind in _MOVES or kind in _GATHERS:
        return 0.0, 0.0
    count = (5.0 * g.numel(ins[0]) if kind in _NORMS and ins else 8.0 * n_out if kind in _TRANSCENDENTAL
             else float(n_out))
    integer = bool(ins) and g.integer8(ins[0]) and g.integer8(out)  # a full-integer model's elementwise arithmetic
    return (0.0, count) if integer else (count, 0.0)


def _macs(kind: str, x: int, w: tuple[int, ...], out: int, g: _Tensors) -> float:
    """Multiply-accumulates of a contraction, from its filter's layout (LiteRT's: OHWI, depthwise 1HWC)."""
    n_out = g.numel(out)
    if kind == "FULLY_CONNECTED":  # filter [N, K]
        return float(n_out * w[-1]) if w else 0.0
    if kind == "BATCH_MATMUL":  # x [..., M, K] (or [..., K, M] adjoint): its dimension that is not the output's M
        a, o = g.shape(x), g.shape(out)
        if len(a) < 2 or len(o) < 2:
            return 0.0
        return float(n_out * (a[-1] if a[-2] == o[-2] else a[-2]))
    if kind == "CONV_2D":  # [O, kh, kw, I / groups]
        return float(n_out * math.prod(w[1:])) if w else 0.0
    if kind == "DEPTHWISE_CONV_2D":  # [1, kh, kw, C * multiplier]: one input channel per output
        return float(n_out * w[1] * w[2]) if len(w) == 4 else 0.0
    if kind == "CONV_3D":  # [kd, kh, kw, I, O]
        return float(n_out * math.prod(w[:4])) if len(w) == 5 else 0.0
    return float(g.numel(x) * math.prod(w[:3])) if len(w) == 4 else 0.0  # TRANSPOSE_CONV: each input to O·kh·kw
