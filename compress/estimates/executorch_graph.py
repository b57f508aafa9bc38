"""Graph cost of an ExecuTorch program (``.pte``), read from the file with ExecuTorch's own serializer (nothing is
run, so it works for a phone that is not this machine).

A program is a chain of instructions: calls into delegates (XNNPACK subgraphs, where the arithmetic is) and kernel
calls the runtime runs itself (portable operators: what the partitioner left out, such as a ViT's layer norms).
Each XNNPACK subgraph is a flatbuffer (``backends/xnnpack/serialization/schema.fbs``) whose nodes name their
operation, tensors, dimensions and data types: a fully connected layer reads its filter's ``[N, K]``, a convolution
its kernel and groups. A quantized filter (``qcint8``, ``qcint4``) means INT8 arithmetic, whether its input is
quantized statically (``qint8``) or per call (``qdint8``: XNNPACK's dynamic quantization).

Shapes: a program takes one row per call (a fixed batch of 1), so a batch of B is B calls. A text program's
sequence axis is dynamic and stored at its upper bound (the export's ``max_length``): every activation dimension
equal to that bound is taken as the sequence and set to the length asked for. (A model whose hidden size equals
the bound would have that dimension rescaled too: an estimate, as the rest.)
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from compress.errors import ArtifactError, MissingBackendError
from compress.estimates.cost import GraphCost, NodeCost, times_rows

_XNN_ITEMSIZE = {"xnn_datatype_fp32": 4, "xnn_datatype_fp16": 2, "xnn_datatype_bf16": 2, "xnn_datatype_qint8": 1,
                 "xnn_datatype_quint8": 1, "xnn_datatype_qcint8": 1, "xnn_datatype_qdint8": 1,
                 "xnn_datatype_qpint8": 1, "xnn_datatype_qint32": 4, "xnn_datatype_qcint32": 4,
                 "xnn_datatype_int32": 4, "xnn_datatype_qcint4": 0.5, "xnn_datatype_qbint4": 0.5}
_QUANTIZED = frozenset({"xnn_datatype_qint8", "xnn_datatype_quint8", "xnn_datatype_qcint8", "xnn_datatype_qdint8",
                        "xnn_datatype_qpint8", "xnn_datatype_qcint4", "xnn_datatype_qbint4"})
#: ExecuTorch ScalarType -> bytes per element (exir/scalar_type.py)
_SCALAR_ITEMSIZE = {0: 1, 1: 1, 2: 2, 3: 4, 4: 8, 5: 2, 6: 4, 7: 8, 11: 1, 12: 1, 13: 1, 14: 4, 15: 2}
_XNN_FREE = frozenset({"XNNStaticReshape"})  # a view: no arithmetic, no operator run
_XNN_MOVES = frozenset({"XNNStaticTranspose", "XNNStaticSlice", "XNNCopy", "XNNStaticConstantPad", "XNNConcatenate2",
                        "XNNConcatenate3", "XNNConcatenate4", "XNNConcatenate5"})
_XNN_NORMS = frozenset({"XNNSoftmax", "XNNGlobalAvgPooling2d", "XNNAvgPooling2d", "XNNMaxPooling2d",
                        "XNNArgMaxPooling2d"})
_XNN_TRANSCENDENTAL = frozenset({"XNNSigmoid", "XNNGelu", "XNNTanh", "XNNExp", "XNNLog", "XNNSin", "XNNCos",
                                 "XNNSquareRoot", "XNNReciprocalSquareRoot", "XNNHardswish", "XNNELU"})
_KERNEL_NORMS = frozenset({"native_layer_norm", "layer_norm", "_softmax", "softmax", "_log_softmax",
                           "native_batch_norm", "_native_batch_norm_legit_no_training", "native_group_norm",
                           "mean", "sum", "amax", "amin", "var", "any", "all", "cumsum"})
_KERNEL_TRANSCENDENTAL = frozenset({"gelu", "tanh", "sigmoid", "exp", "erf", "log", "sqrt", "rsqrt", "pow", "silu",
                                    "hardswish", "reciprocal"})
#: views and metadata: no arithmetic (a copy an op's name ends in "_copy" for still moves its bytes)
_KERNEL_FREE = frozenset({"et_view", "sym_size", "alias", "view", "_reshape_alias", "arange", "scalar_tensor", "full",
                          "zeros", "ones", "sym_numel", "sym_storage_offset", "sym_stride"})
_KERNEL_GATHERS = frozenset({"embedding", "index", "gather", "index_select", "embedding_byte", "embedding_4bit"})


def executorch_cost(path: Path, batch: int, seq: int) -> GraphCost:
    """Per-operator costs of the program at ``path`` for one call of ``batch`` rows of ``seq`` tokens (rows run one
    call each: a program takes one row per call)."""
    try:
        from executorch.exir._serialize._program import deserialize_pte_binary
    except ImportError:
        raise MissingBackendError("estimating an ExecuTorch program needs executorch",
                                  hint="pip install 'edgecompress[executorch]'") from None
    try:
        program = deserialize_pte_binary(Path(path).read_bytes()).program
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file: the serializer raises many types
        raise ArtifactError(f"{path}: not an ExecuTorch program ({str(e).splitlines()[0] if str(e) else e})",
                            hint="export it again with edgecompress export --format executorch") from None
    plan = program.execution_plan[0]
    bound = _sequence_bound(plan)
    graphs = _xnnpack_graphs(program, plan)
    nodes: list[NodeCost] = []
    for step, ins in enumerate(plan.chains[0].instructions):
        call = ins.instr_args
        if hasattr(call, "delegate_index"):
            graph = graphs.get(call.delegate_index)
            if graph is not None:
                nodes += _delegate_nodes(graph, f"delegate{call.delegate_index}", bound, seq)
        elif hasattr(call, "op_index"):
            op = plan.operators[call.op_index].name
            nodes.append(_kernel_node(f"{step}:{op}", op, [plan.values[a].val for a in call.args], bound, seq))
    return GraphCost(str(path), batch, seq, [times_rows(n, batch) for n in nodes])


def _sequence_bound(plan) -> int | None:
    """The upper bound a text program's dynamic sequence axis is stored at (None: every shape is static)."""
    for i in plan.inputs:
        t = plan.values[i].val
        if getattr(t, "shape_dynamism", 0) and len(getattr(t, "sizes", [])) >= 2:
            return int(t.sizes[1])
    return None


def _xnnpack_graphs(program, plan) -> dict[int, dict[str, Any]]:
    """Each XNNPACK delegate's graph as JSON (flatc, shipped with executorch, reads the flatbuffer with its schema)."""
    import executorch.backends.xnnpack.serialization as serialization
    from executorch.exir._serialize._flatbuffer import _get_flatc_path

    schema = Path(list(serialization.__path__)[0]) / "schema.fbs"
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for i, d in enumerate(plan.delegates):
            if "xnnpack" not in d.id.lower():
                continue
            payload = bytes(program.backend_delegate_data[d.processed.index].data)
            files[i] = Path(tmp) / f"d{i}.bin"
            files[i].write_bytes(_flatbuffer(payload))
        if not files:
            return {}
        subprocess.run([_get_flatc_path(), "--json", "--strict-json", "--defaults-json", "--raw-binary", "-o", tmp,
                        str(schema), "--", *map(str, files.values())], check=True, capture_output=True)
        return {i: json.loads(f.with_suffix(".json").read_text(encoding="utf-8")) for i, f in files.items()}


def _flatbuffer(payload: bytes) -> bytes:
    """The XNNPACK graph inside a delegate's payload: after its header ("XH00": offset and size at bytes 10 and 14),
    or the whole payload where there is no header."""
    if payload[4:8] != b"XH00":
        return payload
    offset, size = (int.from_bytes(payload[i:i + 4], "little") for i in (10, 14))
    return payload[offset:offset + size]


def _delegate_nodes(graph: dict[str, Any], name: str, bound: int | None, seq: int) -> list[NodeCost]:
    tensors: dict[int, tuple[tuple[int, ...], str, bool]] = {}  # id -> (dims, datatype, constant)
    for v in graph.get("xvalues", []):
        u = v["xvalue_union"]
        t = u.get("tensor_value", u)
        constant = int(t.get("constant_buffer_idx", 0)) > 0
        dims = tuple(int(d) for d in t.get("dims") or [])
        if bound and not constant:
            dims = tuple(seq if d == bound else d for d in dims)
        tensors[int(t.get("id_out", 0))] = (dims, t.get("datatype", "xnn_datatype_fp32"), constant)
    return [_xnn_node(f"{name}/{k}", n["xnode_union_type"], n["xnode_union"], tensors)
            for k, n in enumerate(graph.get("xnodes", []))]


def _xnn_node(name: str, op: str, node: dict[str, Any], tensors) -> NodeCost:
    ins = [tensors[int(node[k])] for k in ("input_id", "input1_id", "input2_id", "input3_id", "input4_id",
                                           "input5_id", "filter_id", "bias_id")
           if k in node and int(node[k]) in tensors and not (k == "bias_id" and int(node[k]) == 0xFFFFFFFF)]
    out_id = node.get("output_id", node.get("output_value_id"))
    out_dims, out_type, _ = tensors.get(int(out_id), ((), "xnn_datatype_fp32", False)) if out_id is not None \
        else ((), "xnn_datatype_fp32", False)
    n_out = math.prod(out_dims) if out_dims else 0
    weight = sum(math.prod(d) * _XNN_ITEMSIZE.get(t, 4) for d, t, c in ins if c)
    moved = sum(math.prod(d) * _XNN_ITEMSIZE.get(t, 4) for d, t, c in ins if not c) \
        + n_out * _XNN_ITEMSIZE.get(out_type, 4)
    if op in _XNN_FREE:
        return NodeCost(name, op, dispatch=False)
    if op in _XNN_MOVES:
        return NodeCost(name, op, bytes=moved)
    ops, integer = float(n_out), False
    if op == "XNNFullyConnected" and "filter_id" in node:
        f_dims, f_type, _ = tensors[int(node["filter_id"])]
        k = f_dims[-1] if f_dims else 0
        ops, integer = 2.0 * n_out * k, f_type in _QUANTIZED
    elif op in ("XNNConv2d", "XNNDepthwiseConv2d", "XNNConvTranspose2d"):
        f_type = tensors[int(node["filter_id"])][1] if "filter_id" in node else ""
        group_in = 1 if op == "XNNDepthwiseConv2d" else int(node.get("group_input_channels", 1))
        ops = 2.0 * n_out * int(node.get("kernel_height", 1)) * int(node.get("kernel_width", 1)) * group_in
        integer = f_type in _QUANTIZED
    elif op == "XNNBatchMatrixMultiply" and ins:
        first, _, _ = ins[0]
        ops, integer = 2.0 * n_out * (first[-1] if first else 0), ins[0][1] in _QUANTIZED
    elif op == "XNNScaledDotProductAttention" and ins:
        q = ins[0][0]
        ops = 4.0 * n_out * (q[-2] if len(q) >= 2 else 0)
    elif op in _XNN_NORMS:
        ops = 5.0 * max(n_out, *(math.prod(d) for d, _, c in ins if not c), 0) if ins else 5.0 * n_out
    elif op in _XNN_TRANSCENDENTAL:
        ops = 8.0 * n_out
    if integer:
        return NodeCost(name, op, int8_ops=ops, bytes=weight + moved, weight_bytes=weight)
    return NodeCost(name, op, flops=ops, bytes=weight + moved, weight_bytes=weight)


def _kernel_node(name: str, op: str, args: list[Any], bound: int | None, seq: int) -> NodeCost:
    """A portable kernel the runtime runs itself, at the cost of its kind over its largest activation (an out-variant
    kernel's output is its last tensor argument; a reduction's input is larger than its output)."""
    acts, weight = [], 0.0  # (elements, bytes) of each activation argument; bytes of the constant ones
    table_itemsize = None  # a gather's table (its first argument): bytes per element; an INT8 table's rows are bytes
    for a in args:
        dims = getattr(a, "sizes", None)
        if dims is None:
            continue
        constant = getattr(a, "allocation_info", None) is None and getattr(a, "data_buffer_idx", 0) > 0
        dims = [int(d) for d in dims] if constant or not bound else [seq if d == bound else int(d) for d in dims]
        n = math.prod(dims) if dims else 1
        if constant:
            weight += n * _SCALAR_ITEMSIZE.get(int(a.scalar_type), 4)
            if table_itemsize is None:
                table_itemsize = _SCALAR_ITEMSIZE.get(int(a.scalar_type), 4)
        else:
            acts.append((n, n * _SCALAR_ITEMSIZE.get(int(a.scalar_type), 4)))
    short = op.split("::")[-1]
    if short in _KERNEL_FREE:
        return NodeCost(name, op, dispatch=short not in ("et_view", "sym_size"))
    moved = float(sum(b for _, b in acts))
    if short in _KERNEL_GATHERS and acts:  # reads the rows it gathers (its output's elements), not its table
        weight = float(acts[-1][0] * (table_itemsize or 4))
        return NodeCost(name, op, bytes=weight + moved, weight_bytes=weight)
    n = max((e for e, _ in acts), default=0)
    per = 5.0 if short in _KERNEL_NORMS else 8.0 if short in _KERNEL_TRANSCENDENTAL else 0.0 if short.endswith(
        "_copy") else 1.0
    return NodeCost(name, op, flops=per * n, bytes=weight + moved, weight_bytes=weight)
