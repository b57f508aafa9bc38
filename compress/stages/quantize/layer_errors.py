"""Where quantization changed a model: the SNR and cosine of each quantized layer's output against the FP32 model's
same tensor, on a few calibration samples, worst first (the table NNCF and Google's ai-edge-quantizer show).

A quantized layer is a node of the quantized ONNX graph whose weight arrives through a ``DequantizeLinear`` of a
constant (QDQ: Conv, MatMul, Gemm, ...) or an integer operator (MatMulInteger, ConvInteger, QLinear*, MatMulNBits,
...). Its output tensor is found in the FP32 graph by name (ONNX Runtime's quantizers keep names; a ReLU folded into
its convolution hands the convolution the ReLU's output name, compared with the FP32 ReLU's output), following
integer outputs through the Cast/Mul that rescale them. Both graphs run in ONNX Runtime with graph optimisations
off, so every tensor exists as written; the figure is the error *accumulated* up to that layer's output, as those
tools report it.

Each row also carries the layer's **own SNR**: the error it adds itself, as its output's noise-to-signal ratio less
the worst of its activation inputs' (read in the quantized graph *before* their Q -> DQ, so the rounding of an input
counts against the layer that reads it: all of it goes away when that layer stays float). ``hurts_most`` lists the lowest; the accuracy-aware search keeps layers
in float in that order (:mod:`compress.stages.quantize.ort_accuracy`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compress.native_stderr import ort_log_severity
from compress.tasks.outputs import SNR_CAP_DB, row_cosines, snr_db

__all__ = ["INTEGER_OPS", "artifact_layer_errors", "layer_errors"]

#: operators that compute in integers (their float result appears after a Cast/Mul, or directly for MatMulNBits)
INTEGER_OPS = frozenset({"MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul", "MatMulNBits",
                         "DynamicQuantizeMatMul", "QAttention", "QGemm", "GatherBlockQuantized"})
_INDEXED = frozenset({"Gather", "GatherBlockQuantized", "GatherElements"})
#: which inputs of an operator carry float activations (others: the first only)
_DATA_INPUTS = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3)}
_RESCALE = frozenset({"Cast", "Mul", "Add", "DequantizeLinear"})
DEFINITION = ("SNR (dB) and mean cosine of each quantized layer's output against the FP32 model's same tensor: the "
              "error accumulated up to that layer; own SNR: that of the error the layer adds itself (its output's "
              "noise-to-signal ratio less its inputs')")


@dataclass
class _QLayer:
    """A quantized layer: its node, its float output's name (as in the FP32 graph), the quantized graph's tensor of
    the value that flows on, and the float tensors behind its activation inputs (same names in both graphs)."""

    node: Any
    name: str
    seen: str
    inputs: list[tuple[str, str]]


def _activation_inputs(node, producer, constants) -> list[tuple[str, str]]:
    """(float tensor before quantization, tensor after it) of each non-constant input of ``node``: through a Q -> DQ
    pair the Q's input and the DQ's output, through a DynamicQuantizeLinear its input twice; the first is what the
    layer would read were it left in float. Names as in the FP32 graph."""
    found = []
    if node.op_type in _INDEXED:
        return found  # the table is the weight; the other input holds indices
    data = _DATA_INPUTS.get(node.op_type, (0,))
    for k, i in enumerate(node.input):
        if not i or i in constants or k not in data:  # (masks, shapes and indices are not float activations)
            continue
        p = producer.get(i)
        if p is not None and p.op_type == "DequantizeLinear":
            if p.input[0] in constants:
                continue  # a weight
            q = producer.get(p.input[0])
            found.append((q.input[0], i) if q is not None and q.op_type == "QuantizeLinear" else (i, i))
        elif p is not None and p.op_type == "DynamicQuantizeLinear":
            if i == p.output[0]:
                found.append((p.input[0], p.input[0]))
        elif p is None or p.op_type != "QuantizeLinear":  # (an integer tensor of a QOperator format: not read)
            found.append((i, i))
    return found


def _quantized_nodes(model) -> list[_QLayer]:
    """Every quantized layer of a quantized ONNX graph, in graph order; ``name`` and ``seen`` differ where the output
    is quantized again (the dequantized value flows on)."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    found = []
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
            continue
        weight_dq = any((p := producer.get(i)) is not None and p.op_type == "DequantizeLinear"
                        and p.input[0] in constants for i in node.input)
        if not (weight_dq or node.op_type in INTEGER_OPS) or not node.output:
            continue
        name = node.output[0]
        for _ in range(4):  # an integer result reaches float through Cast -> Mul (scale) -> Add (bias)
            nxt = consumers.get(name, [])
            if node.op_type not in INTEGER_OPS or node.op_type == "MatMulNBits" or len(nxt) != 1 \
                    or nxt[0].op_type not in _RESCALE \
                    or (nxt[0].op_type == "Add" and not any(i in constants for i in nxt[0].input)):
                break  # (an Add of two activations is a residual, not the bias)
            name = nxt[0].output[0]
        seen = name  # what flows on: through the Q -> DQ pair after it (which also applies a folded ReLU's clamp)
        nxt = consumers.get(name, [])
        if len(nxt) == 1 and nxt[0].op_type == "QuantizeLinear":
            dq = consumers.get(nxt[0].output[0], [])
            if len(dq) == 1 and dq[0].op_type == "DequantizeLinear":
                seen = dq[0].output[0]
        found.append(_QLayer(node, name, seen, _activation_inputs(node, producer, constants)))
    return found


def _with_outputs(model, names: list[str]) -> bytes:
    from onnx import TensorProto, helper

    have = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in have)
    return model.SerializeToString()


def _session(model_bytes: bytes, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every tensor exists as written
    opts.log_severity_level = ort_log_severity()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


_FLOAT_OP = {"MatMulInteger": "MatMul", "DynamicQuantizeMatMul": "MatMul", "MatMulNBits": "MatMul",
             "QLinearMatMul": "MatMul", "ConvInteger": "Conv", "QLinearConv": "Conv", "QGemm": "Gemm",
             "GatherBlockQuantized": "Gather", "QAttention": "Attention"}


def _fp32_node(fp32_producer: dict[str, Any], lay: _QLayer) -> str:
    """The FP32 node an integer operator replaced (the name ``--exclude-nodes`` takes): walking back from its float
    output through the bias Add / rescale the quantizer folded in, to the node of the operator it stands for."""
    want = _FLOAT_OP.get(lay.node.op_type, lay.node.op_type)
    p = fp32_producer.get(lay.name)
    for _ in range(4):
        if p is None or p.op_type == want:
            break
        p = next((fp32_producer[i] for i in p.input if i in fp32_producer), None)
    return p.name if p is not None and p.op_type == want else fp32_producer[lay.name].name or lay.name


class _Errors:
    """Sums of squares and per-row cosines of quantized-graph tensors against the FP32 graph's same tensors."""

    def __init__(self) -> None:
        self.signal: dict[str, float] = {}
        self.noise: dict[str, float] = {}
        self.cosines: dict[str, list[float]] = {}

    def add(self, key: str, ref: np.ndarray, cand: np.ndarray) -> None:
        r = np.asarray(ref, dtype=np.float64).reshape(len(ref) if np.ndim(ref) else 1, -1)
        c = np.asarray(cand, dtype=np.float64).reshape(r.shape)
        self.signal[key] = self.signal.get(key, 0.0) + float((r ** 2).sum())
        self.noise[key] = self.noise.get(key, 0.0) + float(((c - r) ** 2).sum())
        self.cosines.setdefault(key, []).extend(row_cosines(c, r))

    def snr(self, key: str) -> float:
        return snr_db(self.signal[key], self.noise[key])

    def nsr(self, key: str) -> float:
        """Noise-to-signal power ratio."""
        return self.noise[key] / max(self.signal[key], 1e-300)

    def cosine(self, key: str) -> float:
        return float(np.mean(self.cosines[key]))


def _db(nsr: float) -> float:
    return SNR_CAP_DB if nsr <= 0 else float(min(SNR_CAP_DB, -10 * np.log10(nsr)))


def table_rows(rows: list[dict[str, Any]], samples: int, top: int | None = 20) -> dict[str, Any]:
    """The table as reports carry it: the ``top`` rows by accumulated SNR (worst first), and the layers that add
    the most error themselves (``hurts_most``: lowest own SNR first)."""
    worst = sorted(rows, key=lambda r: (r["snr_db"], r["cosine"]))
    lost = sorted(rows, key=lambda r: r["own_snr_db"])
    return {"samples": samples, "count": len(rows), "definition": DEFINITION,
            "layers": worst[:top] if top else worst,
            "hurts_most": [{"node": r["node"], "op_type": r["op_type"], "own_snr_db": r["own_snr_db"]}
                           for r in lost[:5]]}


def layer_errors(fp32_path: Path | str, quant_path: Path | str, feeds: list[dict[str, np.ndarray]], *,
                 threads: int | None = None, top: int | None = 20) -> dict[str, Any] | None:
    """The per-layer error table of ``quant_path`` against ``fp32_path`` on ``feeds`` (one batch each); None when
    the graphs share no quantized layer's tensor (nothing to compare) or are too large to copy in memory. ``node``
    is the FP32 graph's node name (what ``--exclude-nodes`` takes); ``top=None`` keeps every row."""
    import onnx

    fp32 = onnx.load(str(fp32_path))
    quant = onnx.load(str(quant_path))
    if fp32.ByteSize() > 1_800_000_000 or quant.ByteSize() > 1_800_000_000:
        return None
    fp32_producer = {o: n for n in fp32.graph.node for o in n.output}
    fp32_tensors = set(fp32_producer) | {i.name for i in fp32.graph.input}
    fp32_nodes = {n.name for n in fp32.graph.node}
    quant_tensors = {o for n in quant.graph.node for o in n.output} | {i.name for i in quant.graph.input}
    layers = [lay for lay in _quantized_nodes(quant) if lay.name in fp32_producer]
    if not layers or not feeds:
        return None
    quant_producer = {o: n for n in quant.graph.node for o in n.output}

    def read(x: str, after: str) -> str:
        """An input before its quantization, unless the quantizer folded an activation into its producer (the float
        tensor then lacks the clamp the FP32 one has): after it."""
        qp, fp = quant_producer.get(x), fp32_producer.get(x)
        return x if qp is None or fp is None or qp.op_type == fp.op_type else after

    for lay in layers:
        lay.inputs = [(x, read(x, after)) for x, after in lay.inputs
                      if x in fp32_tensors and x in quant_tensors and after in quant_tensors]
    graph_inputs = {i.name for i in fp32.graph.input}
    ref_names = list(dict.fromkeys([lay.name for lay in layers]
                                   + [x for lay in layers for x, _ in lay.inputs if x not in graph_inputs]))
    q_names = list(dict.fromkeys([lay.seen for lay in layers]
                                 + [r for lay in layers for _, r in lay.inputs if r not in graph_inputs]))
    ref_sess = _session(_with_outputs(fp32, ref_names), threads)
    q_sess = _session(_with_outputs(quant, q_names), threads)
    inputs = {i.name for i in ref_sess.get_inputs()}
    errors = _Errors()
    for feed in feeds:
        feed = {k: v for k, v in feed.items() if k in inputs}
        ref = {**feed, **dict(zip(ref_names, ref_sess.run(ref_names, feed), strict=True))}
        got = {**feed, **dict(zip(q_names, q_sess.run(q_names, feed), strict=True))}
        done: set[str] = set()
        for lay in layers:
            for key, r, c in [(lay.name, ref[lay.name], got[lay.seen]),
                              *((f"in:{x}", ref[x], got[r]) for x, r in lay.inputs)]:
                if key not in done:
                    done.add(key)
                    errors.add(key, r, c)
    rows = []
    for lay in layers:
        nsr_in = max((errors.nsr(f"in:{x}") for x, _ in lay.inputs), default=0.0)
        node = lay.node.name if lay.node.name in fp32_nodes else _fp32_node(fp32_producer, lay)
        rows.append({"node": node, "op_type": lay.node.op_type, "tensor": lay.name,
                     "snr_db": round(errors.snr(lay.name), 2), "cosine": round(errors.cosine(lay.name), 6),
                     "own_snr_db": round(_db(errors.nsr(lay.name) - nsr_in), 2)})
    return table_rows(rows, len(feeds), top)


def artifact_layer_errors(art, quant_path: Path | str, items: list[Any], n: int = 8,
                          top: int | None = 20) -> dict[str, Any] | None:
    """The table of a quantized ONNX model written from ``art`` (its FP32 input), on up to ``n`` of ``items`` (raw
    inputs: texts, images, array samples), one at a time through the artifact's own feeds."""
    from compress.data.tokenization import encoder_for

    encoder = encoder_for(art)
    return layer_errors(art.model_path, quant_path, [encoder.encode([item]) for item in items[:n]], top=top)
