"""Graph cost of a Core ML package (an ML program, ``.mlpackage``), read from its specification with coremltools (no
Core ML runtime needed, so it works where Core ML does not run).

Every operation of the program's main function declares its output type. A dimension the program leaves open is the
sequence length: an exported package takes one row per call (a fixed batch of 1), so the sequence is the only free
axis. Weights are the program's constants (FP16) and its ``constexpr_*`` dequantizations (INT8 weights, read as one
byte each and expanded to FP16 as they are used: the arithmetic stays in floating point).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from compress.errors import MissingBackendError
from compress.estimates.cost import GraphCost, NodeCost, times_rows

# MIL data types (coremltools' MIL.proto DataType): bytes per element
_ITEMSIZE = {1: 1, 10: 2, 11: 4, 12: 8, 13: 2, 21: 1, 22: 2, 23: 4, 24: 8, 31: 1, 32: 2, 33: 4, 34: 8}
_FREE = frozenset({"const", "reshape", "expand_dims", "squeeze", "shape", "identity", "cast", "slice_by_index",
                   "slice_by_size", "gather_along_axis", "concat", "split", "transpose", "tile", "pad",
                   "band_part", "fill_like", "range_1d", "fill"})
_NORMS = frozenset({"softmax", "layer_norm", "batch_norm", "instance_norm", "l2_norm", "reduce_mean", "reduce_sum",
                    "reduce_max", "reduce_min", "reduce_l2_norm", "local_response_norm"})
_TRANSCENDENTAL = frozenset({"gelu", "tanh", "sigmoid", "exp", "erf", "silu", "softplus", "log", "sqrt", "rsqrt",
                             "pow", "inverse", "sigmoid_hard", "elu", "softsign", "scaled_tanh"})
_DEQUANTIZE = frozenset({"constexpr_affine_dequantize", "constexpr_blockwise_shift_scale", "constexpr_lut_to_dense",
                         "constexpr_sparse_to_dense", "constexpr_cast"})


def coreml_cost(path: Path, batch: int, seq: int) -> GraphCost:
    """Per-operation costs of the package at ``path`` for one call of ``batch`` rows of ``seq`` tokens (the batch
    runs row by row: a package takes one row per call)."""
    try:
        import coremltools as ct
    except ImportError:
        raise MissingBackendError("estimating a Core ML package needs coremltools",
                                  hint="pip install 'edgecompress[coreml]'") from None
    spec = ct.utils.load_spec(str(path))
    function = spec.mlProgram.functions["main"]
    ops = function.block_specializations[function.opset].operations
    shapes: dict[str, tuple[int, ...]] = {}
    sizes: dict[str, int] = {}  # bytes per element
    weights: dict[str, float] = {}  # constant name -> bytes it occupies (INT8 weights: one byte per element)
    values: dict[str, Any] = {}  # small integer and boolean tensors known before running: shapes, axes, flags
    for i in function.inputs:
        shapes[i.name] = _dims(i.type.tensorType.dimensions, seq)
        sizes[i.name] = _ITEMSIZE.get(i.type.tensorType.dataType, 4)
    nodes = []
    for op in ops:
        args = {k: [a.name for a in v.arguments if a.name] for k, v in op.inputs.items()}
        for k, v in op.inputs.items():  # arguments given in place (not as a named constant)
            for a in v.arguments:
                if not a.name and a.HasField("value"):
                    args.setdefault(k, []).append(_value_name(a.value, values, shapes))
        out = op.outputs[0].name if op.outputs else ""
        for o in op.outputs:
            sizes[o.name] = _ITEMSIZE.get(o.type.tensorType.dataType, 4)
        if op.type == "const":
            val = op.attributes["val"]
            shapes[out] = _dims(op.outputs[0].type.tensorType.dimensions, seq)
            if val.HasField("immediateValue"):
                values[out] = _immediate(val.immediateValue.tensor, shapes[out])
            weights[out] = math.prod(shapes[out]) * sizes[out]
            nodes.append(NodeCost(out, op.type, dispatch=False))
            continue
        value = _evaluate(op.type, args, values, shapes)
        if value is not None:
            values[out] = value
        declared = op.outputs[0].type.tensorType.dimensions if op.outputs else []
        shapes[out] = (tuple(int(d.constant.size) for d in declared)
                       if all(d.HasField("constant") for d in declared)
                       else _infer_shape(op.type, args, values, shapes) or _dims(declared, seq))
        for o in op.outputs[1:]:
            shapes[o.name] = _dims(o.type.tensorType.dimensions, seq)
        if op.type in _DEQUANTIZE:  # INT8 (or palettised) weights, expanded as used
            weights[out] = math.prod(shapes[out]) * (1 if op.type != "constexpr_cast" else 2)
            nodes.append(NodeCost(out, op.type, dispatch=False))
            continue
        nodes.append(_cost(op.type, out, args, shapes, sizes, weights, values))
    return GraphCost(str(path), batch, seq, [times_rows(n, batch) for n in nodes])


def _dims(dimensions, seq: int) -> tuple[int, ...]:
    """Declared dimensions, an open one taken as the sequence length (what is left when nothing else tells)."""
    return tuple(int(d.constant.size) if d.HasField("constant") else seq for d in dimensions)


def _immediate(tensor, shape: tuple[int, ...]):
    """A small constant's value (integers and booleans: the shape arithmetic), else None."""
    import numpy as np

    for field in ("ints", "longInts", "bools"):
        if tensor.HasField(field):
            data = list(getattr(tensor, field).values)
            return np.asarray(data).reshape(shape) if math.prod(shape) == len(data) else np.asarray(data)
    return None


def _value_name(value, values: dict, shapes: dict) -> str:
    """Register an argument given in place under a name of its own."""
    name = f"<value {len(values)}>"
    if value.HasField("immediateValue"):
        dims = tuple(int(d.constant.size) for d in value.type.tensorType.dimensions)
        values[name] = _immediate(value.immediateValue.tensor, dims)
        shapes[name] = dims
    return name


def _first(args: dict[str, list[str]], key: str) -> str:
    return (args.get(key) or [""])[0]


def _evaluate(op: str, args: dict[str, list[str]], values: dict, shapes: dict):
    """The value of a shape computation (``shape`` of a tensor, then gathers, slices, concatenations, casts and
    integer arithmetic on it), so a reshape's target shape is known; None for anything else."""
    import numpy as np

    x = values.get(_first(args, "x"))
    if op == "shape" and _first(args, "x") in shapes:
        return np.asarray(shapes[_first(args, "x")])
    if op == "cast" and x is not None:
        return x
    if op == "gather" and x is not None and _first(args, "indices") in values:
        return np.take(x, values[_first(args, "indices")], axis=int(values.get(_first(args, "axis"), 0)))
    if op == "concat" and all(n in values for n in args.get("values", [])) and args.get("values"):
        return np.concatenate([np.atleast_1d(values[n]) for n in args["values"]])
    if op in ("squeeze", "expand_dims", "reshape") and x is not None and x.size <= 8:
        return x.reshape(-1) if op == "expand_dims" else x.reshape(()) if x.size == 1 else x
    if op == "slice_by_index" and x is not None and _first(args, "begin") in values and _first(args, "end") in values:
        begin, end = values[_first(args, "begin")], values[_first(args, "end")]
        if x.ndim == 1:
            return x[int(begin[0]):int(end[0])] if not values.get(_first(args, "end_mask"), [False])[0] else x[
                int(begin[0]):]
    y = values.get(_first(args, "y"))
    if x is not None and y is not None:
        ops = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "floor_div": np.floor_divide,
               "real_div": np.divide}
        if op in ops:
            return ops[op](x, y)
    return None


def _infer_shape(op: str, args: dict[str, list[str]], values: dict, shapes: dict) -> tuple[int, ...] | None:
    """An output's shape where the program leaves a dimension open, from its inputs' shapes (None: not known)."""
    x = shapes.get(_first(args, "x"))
    if op == "reshape" and x is not None and _first(args, "shape") in values:
        target = [int(d) for d in values[_first(args, "shape")].reshape(-1)]
        if target.count(-1) == 1:
            known = math.prod(d for d in target if d != -1)
            target[target.index(-1)] = math.prod(x) // max(1, known)
        return tuple(target)
    if op == "transpose" and x is not None and _first(args, "perm") in values:
        return tuple(x[int(i)] for i in values[_first(args, "perm")])
    if op == "matmul" and x is not None and _first(args, "y") in shapes:
        y = shapes[_first(args, "y")]
        m = x[-1] if values.get(_first(args, "transpose_x")) is not None and bool(
            values[_first(args, "transpose_x")]) else x[-2]
        n = y[-2] if values.get(_first(args, "transpose_y")) is not None and bool(
            values[_first(args, "transpose_y")]) else y[-1]
        lead = x[:-2] if len(x) >= len(y) else y[:-2]
        return (*lead, m, n)
    if op == "linear" and x is not None and _first(args, "weight") in shapes:
        return (*x[:-1], shapes[_first(args, "weight")][0])
    if op == "gather" and _first(args, "indices") in shapes and x is not None:
        axis = int(values.get(_first(args, "axis"), 0))
        return (*x[:axis], *shapes[_first(args, "indices")], *x[axis + 1:])
    if op in ("add", "sub", "mul", "real_div", "maximum", "minimum", "pow", "select") and x is not None:
        y = shapes.get(_first(args, "y"), ())
        rank = max(len(x), len(y))
        xs, ys = (1,) * (rank - len(x)) + x, (1,) * (rank - len(y)) + y
        return tuple(max(a, b) for a, b in zip(xs, ys))
    if x is not None and op in _NORMS | _TRANSCENDENTAL | {"cast", "relu", "clip", "mul", "add"}:
        return x
    return None


def _cost(op: str, out: str, args: dict[str, list[str]], shapes, sizes, weights, values) -> NodeCost:
    n_out = math.prod(shapes.get(out, ()))
    weight = act_in = 0.0
    for key, names in args.items():
        for name in names:
            if name in weights:
                # an embedding reads the rows it gathers, not its table
                weight += (n_out * 2) if op == "gather" and key == "x" else weights[name]
            elif name in shapes:
                act_in += math.prod(shapes[name]) * sizes.get(name, 4)
    act_out = n_out * sizes.get(out, 4)
    if op in _FREE:
        return NodeCost(out, op, bytes=act_in + act_out if op in ("transpose", "concat", "tile", "pad") else 0.0,
                        dispatch=op not in ("const", "reshape", "expand_dims", "squeeze", "shape", "identity"))
    flops = float(n_out)
    if op == "linear":
        w = shapes.get(args.get("weight", [""])[0], ())
        flops = 2.0 * n_out * (w[-1] if w else 0) + n_out
    elif op == "matmul":
        x = shapes.get(args.get("x", [""])[0], ())
        transpose_x = bool(values.get(_first(args, "transpose_x"), False))
        k = (x[-2] if transpose_x else x[-1]) if x else 0
        flops = 2.0 * n_out * k
    elif op in ("conv", "conv_transpose"):
        w = shapes.get(args.get("weight", [""])[0], ())
        flops = 2.0 * n_out * math.prod(w[1:]) if w else 0.0
    elif op in _NORMS:
        flops = 5.0 * n_out
    elif op in _TRANSCENDENTAL:
        flops = 8.0 * n_out
    elif op in ("gather", "gather_nd"):
        flops = 0.0
    return NodeCost(out, op, flops=flops, bytes=weight + act_in + act_out, weight_bytes=weight)

