"""Graph cost of an ONNX model: shape inference on the bound graph, then our own rules for the fused contrib ops
(Attention, QAttention, SkipLayerNormalization, MatMulInteger, MatMulNBits, ...) that ONNX leaves unknown."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from compress.errors import MissingBackendError
from compress.estimates.cost import (
    _BROADCAST,
    _FREE,
    _INT8_MATMUL,
    _MATMUL,
    _NORMS,
    _SAME_SHAPE,
    _TRANSCENDENTAL,
    GraphCost,
    NodeCost,
    _bind_dim,
    _broadcast,
    _numel,
)

log = logging.getLogger("compress.estimates.roofline")

# -- ONNX -------------------------------------------------------------------------------------------


def onnx_cost(path: Path, batch: int, seq: int) -> GraphCost:
    try:
        import onnx
        from onnx import helper, numpy_helper, shape_inference
    except ImportError:  # pragma: no cover - onnx is a core dependency
        raise MissingBackendError("estimating an ONNX model needs the onnx package", hint="pip install onnx") from None

    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    init_names = {i.name for i in g.initializer}
    for inp in g.input:
        if inp.name in init_names or not inp.type.HasField("tensor_type"):
            continue
        for pos, dim in enumerate(inp.type.tensor_type.shape.dim):
            if not dim.HasField("dim_value"):
                dim.dim_value = _bind_dim(dim.dim_param, pos, batch, seq)
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - our own rules take over
        log.debug("onnx shape inference failed (%s); using our own rules only", exc)
        inferred = model

    shapes: dict[str, tuple[int, ...] | None] = {}
    dtypes: dict[str, int] = {}

    def record(vi) -> None:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            return
        dtypes[vi.name] = tt.elem_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = tuple(d.dim_value for d in tt.shape.dim)

    for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        record(vi)
    consts: dict[str, Any] = {}
    for init in g.initializer:
        shapes[init.name] = tuple(init.dims)
        dtypes[init.name] = init.data_type
        if init.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and _numel(tuple(init.dims)) <= 64:
            try:
                consts[init.name] = numpy_helper.to_array(init)
            except Exception:  # noqa: BLE001 - external data not loaded
                pass

    def itemsize(name: str) -> int:
        t = dtypes.get(name)
        if not t:
            return 4
        try:
            return helper.tensor_dtype_to_np_dtype(t).itemsize
        except Exception:  # noqa: BLE001 - e.g. int4: half a byte, round up
            return 1

    def nbytes(name: str) -> float:
        return _numel(shapes.get(name)) * itemsize(name)

    weight_alias: dict[str, str] = {}  # output of a weight DequantizeLinear -> the INT8 initializer
    counted: set[str] = set()
    nodes: list[NodeCost] = []
    unknown: list[str] = []

    for node in g.node:
        op = node.op_type
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ins = [x for x in node.input]
        outs = [x for x in node.output if x]
        if op == "Constant":
            value = attrs.get("value")
            if value is not None:
                shapes[outs[0]] = tuple(value.dims)
                dtypes[outs[0]] = value.data_type
                if value.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and _numel(tuple(value.dims)) <= 64:
                    consts[outs[0]] = numpy_helper.to_array(value)
            nodes.append(NodeCost(node.name, op, dispatch=False))
            continue
        if op == "DequantizeLinear" and ins and ins[0] in init_names:
            weight_alias[outs[0]] = ins[0]  # folded into the consuming (INT8) kernel
            shapes[outs[0]] = shapes.get(ins[0])
            dtypes[outs[0]] = onnx.TensorProto.FLOAT
            nodes.append(NodeCost(node.name, op, dispatch=False))
            continue
        in_shapes = [shapes.get(x) if x else None for x in ins]
        value = _eval_small(op, attrs, ins, in_shapes, consts)
        if value is not None and outs:
            consts[outs[0]] = value
            shapes[outs[0]] = tuple(value.shape)
            dtypes.setdefault(outs[0], onnx.TensorProto.INT64 if value.dtype.kind in "iu" else
                              onnx.TensorProto.BOOL if value.dtype.kind == "b" else onnx.TensorProto.FLOAT)
        if any(o not in shapes for o in outs):
            _onnx_rule(op, node, attrs, ins, in_shapes, outs, shapes, dtypes, consts)
        if any(o not in shapes for o in outs[:1]):
            unknown.append(f"{op}:{node.name}")
            nodes.append(NodeCost(node.name, op, dispatch=op not in _FREE))
            continue
        if op in _FREE:
            nodes.append(NodeCost(node.name, op, dispatch=False))
            continue

        # bytes: weights once, activations in and out
        weight = act_in = 0.0
        for i, x in enumerate(ins):
            if not x:
                continue
            src = weight_alias.get(x, x)
            if src in init_names:
                if op == "Gather" and i == 0:
                    weight += nbytes(outs[0]) * itemsize(src) / max(1, itemsize(outs[0]))  # rows gathered
                    continue
                if src not in counted:
                    counted.add(src)
                    weight += nbytes(src)
            else:
                act_in += nbytes(x)
        act_out = sum(nbytes(o) for o in outs)
        flops, int8 = _onnx_flops(op, node, attrs, ins, in_shapes, outs, shapes, weight_alias, dtypes, itemsize)
        nodes.append(NodeCost(node.name, op, flops=flops, int8_ops=int8, bytes=weight + act_in + act_out,
                              weight_bytes=weight))
    if unknown:
        log.info("%d node(s) without static shapes were counted as free: %s", len(unknown), ", ".join(unknown[:5]))
    return GraphCost(str(path), batch, seq, nodes, unknown)


def _onnx_flops(op, node, attrs, ins, in_shapes, outs, shapes, weight_alias, dtypes, itemsize) -> tuple[float, float]:
    out0 = shapes.get(outs[0])
    n_out = _numel(out0)
    if op in _MATMUL or op == "QLinearMatMul":
        a = in_shapes[0]
        k = a[-1] if a else 0
        macs = n_out * k
        int8 = op in _INT8_MATMUL or _is_int8_weight(ins, weight_alias, dtypes)
        return (0.0, 2.0 * macs) if int8 else (2.0 * macs, 0.0)
    if op in ("Gemm", "QGemm"):
        a = in_shapes[0]
        k = (a[0] if attrs.get("transA") else a[-1]) if a else 0
        int8 = op == "QGemm" or _is_int8_weight(ins, weight_alias, dtypes)
        macs = n_out * k
        return (n_out, 2.0 * macs) if int8 else (2.0 * macs + n_out, 0.0)
    if op == "MatMulNBits":
        k = int(attrs.get("K", in_shapes[0][-1] if in_shapes[0] else 0))
        macs = n_out * k
        # accuracy_level 4: INT8 compute on the quantized activations; otherwise weights dequantize to float
        return (0.0, 2.0 * macs) if int(attrs.get("accuracy_level", 0)) == 4 else (2.0 * macs, 0.0)
    if op in ("Attention", "QAttention"):
        x, w = in_shapes[0], in_shapes[1]
        if not x or not w:
            return 0.0, 0.0
        b, s, h = (x + (1, 1, 1))[:3] if len(x) == 3 else (1, x[0], x[-1])
        qkv = w[-1]
        sizes = attrs.get("qkv_hidden_sizes")
        hidden_v = int(sizes[2]) if sizes else qkv // 3
        hidden_qk = int(sizes[0]) if sizes else qkv // 3
        heads = int(attrs.get("num_heads", 1))
        proj = 2.0 * b * s * h * qkv
        core = 2.0 * b * s * s * hidden_qk + 2.0 * b * s * s * hidden_v + 5.0 * b * heads * s * s
        bias = b * s * qkv
        if op == "QAttention":
            return core + bias + b * s * qkv, proj  # dequantize the INT32 projection
        return core + bias + proj, 0.0
    if op == "MultiHeadAttention":
        q = in_shapes[0]
        if not q or len(q) != 3:
            return 0.0, 0.0
        b, s, h = q
        heads = int(attrs.get("num_heads", 1))
        k = in_shapes[1] if len(in_shapes) > 1 and in_shapes[1] else q
        sk = k[1] if len(k) == 3 else s
        return 4.0 * b * s * sk * h + 5.0 * b * heads * s * sk, 0.0
    if op == "Conv":
        w = in_shapes[1]
        if not w:
            return 0.0, 0.0
        per_out = math.prod(w[1:])  # Cin/group x kernel
        if _is_int8_weight(ins, weight_alias, dtypes):  # QDQ: runtimes fuse it into an INT8 convolution
            return float(n_out), 2.0 * n_out * per_out
        return 2.0 * n_out * per_out, 0.0
    if op in ("ConvInteger", "QLinearConv"):
        w = in_shapes[3] if op == "QLinearConv" else in_shapes[1]
        return 0.0, 2.0 * n_out * (math.prod(w[1:]) if w else 0)
    if op in _NORMS:
        base = _numel(in_shapes[0]) if in_shapes and in_shapes[0] else n_out
        return 5.0 * base, 0.0
    if op in _TRANSCENDENTAL:
        return 8.0 * n_out, 0.0
    if op in ("Gather", "GatherElements", "GatherND", "Transpose", "Concat", "Slice", "Split", "Expand", "Tile",
              "Pad", "Cast", "ScatterND", "Scatter", "ScatterElements"):
        return 0.0, 0.0
    return float(n_out), 0.0


_SMALL = 4096  # largest tensor (elements) the shape-value evaluator keeps


def _eval_small(op, attrs, ins, in_shapes, consts):
    """Value of a small integer tensor computed from shapes and constants (position ids, reshape targets)."""
    import numpy as np

    if op == "Shape":
        s = in_shapes[0] if in_shapes else None
        if s is None:
            return None
        start, end = attrs.get("start", 0), attrs.get("end")
        return np.array(s[start:end], dtype=np.int64)
    if op == "Size":
        return np.array(_numel(in_shapes[0]), dtype=np.int64) if in_shapes and in_shapes[0] is not None else None
    if op == "ConstantOfShape":
        if not ins or ins[0] not in consts:
            return None
        shape = [int(v) for v in consts[ins[0]].reshape(-1)]
        if _numel(tuple(shape)) > _SMALL:
            return None
        fill = attrs.get("value")
        from onnx import numpy_helper

        val = numpy_helper.to_array(fill).reshape(-1)[0] if fill is not None else np.float32(0)
        return np.full(shape, val)
    present = [x for x in ins if x]
    if not present or any(x not in consts for x in present):
        return None
    v = [consts.get(x) if x else None for x in ins]
    try:
        if op == "Gather":
            out = np.take(v[0], v[1].astype(np.int64), axis=int(attrs.get("axis", 0)))
        elif op == "Unsqueeze":
            axes = attrs.get("axes") or [int(a) for a in v[1].reshape(-1)]
            out = v[0]
            for a in sorted(a % (out.ndim + len(axes)) for a in axes):
                out = np.expand_dims(out, a)
        elif op == "Squeeze":
            axes = attrs.get("axes") or ([int(a) for a in v[1].reshape(-1)] if len(v) > 1 and v[1] is not None else None)
            out = np.squeeze(v[0], axis=tuple(axes) if axes else None)
        elif op == "Concat":
            out = np.concatenate([x for x in v if x is not None], axis=int(attrs.get("axis", 0)))
        elif op == "Slice":
            data, starts, ends = v[0], v[1].reshape(-1), v[2].reshape(-1)
            axes = v[3].reshape(-1) if len(v) > 3 and v[3] is not None else range(len(starts))
            steps = v[4].reshape(-1) if len(v) > 4 and v[4] is not None else [1] * len(starts)
            idx = [slice(None)] * data.ndim
            for st, en, ax, sp in zip(starts, ends, axes, steps):
                idx[int(ax)] = slice(int(st), int(en), int(sp))
            out = data[tuple(idx)]
        elif op in ("Cast", "Identity"):
            out = v[0]
        elif op in ("Add", "Sub", "Mul", "Div", "Equal", "Less", "Greater", "Max", "Min", "Mod"):
            fn = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.floor_divide, "Equal": np.equal,
                  "Less": np.less, "Greater": np.greater, "Max": np.maximum, "Min": np.minimum, "Mod": np.mod}[op]
            out = fn(v[0], v[1])
        elif op == "Where":
            out = np.where(v[0], v[1], v[2])
        elif op == "Neg":
            out = -v[0]
        elif op == "Range":
            out = np.arange(v[0].item(), v[1].item(), v[2].item())
        elif op == "Expand":
            out = v[0] * np.ones([int(d) for d in v[1].reshape(-1)], dtype=v[0].dtype)
        elif op == "Reshape":
            out = v[0].reshape([int(d) if int(d) != 0 else v[0].shape[i] for i, d in enumerate(v[1].reshape(-1))])
        else:
            return None
    except Exception:  # noqa: BLE001 - leave it to the shape rules
        return None
    out = np.asarray(out)
    return out if out.size <= _SMALL else None


def _is_int8_weight(ins, weight_alias, dtypes) -> bool:
    """A float MatMul fed by a dequantized INT8 weight (QDQ): runtimes fuse it into an INT8 kernel."""
    for x in ins[:2]:
        src = weight_alias.get(x)
        if src is not None and dtypes.get(src) in (2, 3):  # UINT8, INT8
            return True
    return False


def _onnx_rule(op, node, attrs, ins, in_shapes, outs, shapes, dtypes, consts) -> None:
    """Fill in output shapes (and element types) ONNX's inference left unknown."""
    s0 = in_shapes[0] if in_shapes else None
    t0 = dtypes.get(ins[0], 1) if ins else 1

    def put(i: int, shape, dtype: int | None = None) -> None:
        if i < len(outs) and shape is not None:
            shapes[outs[i]] = tuple(int(d) for d in shape)
            dtypes.setdefault(outs[i], dtype if dtype is not None else t0)

    if op in _SAME_SHAPE and s0 is not None:
        out_t = {"Cast": attrs.get("to"), "DequantizeLinear": 1, "QuantizeLinear": dtypes.get(ins[2], 2) if len(ins) > 2
                 else 2, "DynamicQuantizeLinear": 2}.get(op, t0)
        put(0, s0, out_t)
        if op == "DynamicQuantizeLinear":
            put(1, (), 1)
            put(2, (), 2)
        if op in ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization") and len(outs) > 3:
            put(3, s0)
        return
    if op in _BROADCAST:
        known = [s for s in in_shapes if s is not None]
        if len(known) == len([x for x in ins if x]):
            out = _broadcast(*known)
            put(0, out, 9 if op in ("Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or") else
                (dtypes.get(ins[1], t0) if op == "Where" else t0))
        return
    if op in _MATMUL or op == "QLinearMatMul":
        a, b = (in_shapes[0], in_shapes[3]) if op == "QLinearMatMul" else (in_shapes[0], in_shapes[1])
        if a is None or b is None:
            return
        a2 = a if len(a) > 1 else (1, *a)
        b2 = b if len(b) > 1 else (*b, 1)
        batch = _broadcast(a2[:-2], b2[:-2]) if (len(a2) > 2 or len(b2) > 2) else ()
        out = (*(batch or ()), a2[-2], b2[-1])
        if len(a) == 1:
            out = out[:-2] + out[-1:]
        if len(b) == 1:
            out = out[:-1]
        put(0, out, {"MatMulInteger": 6, "QLinearMatMul": dtypes.get(ins[7], 2) if len(ins) > 7 else 2}.get(op, 1))
        return
    if op in ("Gemm", "QGemm"):
        a, b = in_shapes[0], in_shapes[1] if op == "Gemm" else in_shapes[3]
        if a and b:
            m = a[1] if attrs.get("transA") else a[0]
            n = b[0] if attrs.get("transB") else b[1]
            put(0, (m, n), 1)
        return
    if op == "MatMulNBits" and s0 is not None:
        put(0, (*s0[:-1], int(attrs["N"])), t0)
        return
    if op in ("Attention", "QAttention") and s0 is not None and in_shapes[1] is not None:
        sizes = attrs.get("qkv_hidden_sizes")
        hv = int(sizes[2]) if sizes else in_shapes[1][-1] // 3
        put(0, (*s0[:-1], hv), 1)
        return
    if op == "MultiHeadAttention" and s0 is not None:
        v = in_shapes[2] if len(in_shapes) > 2 and in_shapes[2] is not None else s0
        put(0, (*s0[:-1], v[-1] if len(v) == 3 else s0[-1]), t0)
        return
    if op == "EmbedLayerNormalization":
        ids, word = in_shapes[0], in_shapes[2] if len(in_shapes) > 2 else None
        if ids and word:
            put(0, (*ids, word[-1]), dtypes.get(ins[2], 1))
            put(1, (ids[0],), 6)
        return
    if op == "Gather" and s0 is not None and in_shapes[1] is not None:
        axis = int(attrs.get("axis", 0)) % max(1, len(s0))
        put(0, (*s0[:axis], *in_shapes[1], *s0[axis + 1:]), t0)
        return
    if op == "Transpose" and s0 is not None:
        perm = attrs.get("perm") or list(reversed(range(len(s0))))
        put(0, tuple(s0[p] for p in perm))
        return
    if op == "Reshape" and s0 is not None and len(ins) > 1 and ins[1] in consts:
        target = [int(v) for v in consts[ins[1]].reshape(-1)]
        target = [s0[i] if v == 0 and not attrs.get("allowzero") else v for i, v in enumerate(target)]
        if target.count(-1) == 1:
            known = math.prod(v for v in target if v != -1)
            target[target.index(-1)] = _numel(s0) // max(1, known)
        put(0, target)
        return
    if op in ("Unsqueeze", "Squeeze") and s0 is not None:
        axes = attrs.get("axes")
        if axes is None and len(ins) > 1 and ins[1] in consts:
            axes = [int(v) for v in consts[ins[1]].reshape(-1)]
        if op == "Squeeze":
            if axes is None:
                put(0, tuple(d for d in s0 if d != 1))
            else:
                ax = {a % len(s0) for a in axes}
                put(0, tuple(d for i, d in enumerate(s0) if i not in ax))
        elif axes is not None:
            rank = len(s0) + len(axes)
            ax = {a % rank for a in axes}
            it = iter(s0)
            put(0, tuple(1 if i in ax else next(it) for i in range(rank)))
        return
    if op.startswith("Reduce") and s0 is not None:
        axes = attrs.get("axes")
        if axes is None and len(ins) > 1 and ins[1] in consts:
            axes = [int(v) for v in consts[ins[1]].reshape(-1)]
        axes = {a % len(s0) for a in (axes if axes is not None else range(len(s0)))}
        keep = attrs.get("keepdims", 1)
        put(0, tuple((1 if i in axes else d) for i, d in enumerate(s0) if keep or i not in axes))
        return
    if op == "Slice" and s0 is not None and all(x in consts for x in ins[1:3]):
        starts, ends = consts[ins[1]].reshape(-1), consts[ins[2]].reshape(-1)
        axes = consts[ins[3]].reshape(-1) if len(ins) > 3 and ins[3] in consts else range(len(starts))
        steps = consts[ins[4]].reshape(-1) if len(ins) > 4 and ins[4] in consts else [1] * len(starts)
        out = list(s0)
        for st, en, ax, sp in zip(starts, ends, axes, steps):
            ax = int(ax) % len(s0)
            out[ax] = len(range(*slice(int(st), int(en), int(sp)).indices(s0[ax])))
        put(0, out)
        return
    if op == "Expand" and s0 is not None and len(ins) > 1 and ins[1] in consts:
        put(0, _broadcast(s0, tuple(int(d) for d in consts[ins[1]].reshape(-1))))
        return
    if op == "ConstantOfShape" and ins and ins[0] in consts:
        put(0, tuple(int(d) for d in consts[ins[0]].reshape(-1)), 1)
        return
    if op == "Concat":
        if all(s is not None for s in in_shapes):
            axis = int(attrs.get("axis", 0)) % len(in_shapes[0])
            out = list(in_shapes[0])
            out[axis] = sum(s[axis] for s in in_shapes)
            put(0, out)
        return
