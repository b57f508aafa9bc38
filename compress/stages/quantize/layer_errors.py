"""Where quantization changed a model: the SNR and cosine of each quantized layer's output against the FP32 model's
same tensor, on a few calibration samples, worst first (the table NNCF and Google's ai-edge-quantizer show).

A quantized layer is a node of the quantized ONNX graph whose weight arrives through a ``DequantizeLinear`` of a
constant (QDQ: Conv, MatMul, Gemm, ...) or an integer operator (MatMulInteger, ConvInteger, QLinear*, MatMulNBits,
...). Its output tensor is found in the FP32 graph by name (ONNX Runtime's quantizers keep names; a ReLU folded into
its convolution hands the convolution the ReLU's output name, compared with the FP32 ReLU's output), following
integer outputs through the Cast/Mul that rescale them. Both graphs run in ONNX Runtime with graph optimisations
off, so every tensor exists as written; the figure is the error *accumulated* up to that layer's output, as those
tools report it: the first layer whose SNR drops sharply is the one that hurts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compress.validation.metrics import row_cosines, snr_db

__all__ = ["INTEGER_OPS", "artifact_layer_errors", "layer_errors"]

#: operators that compute in integers (their float result appears after a Cast/Mul, or directly for MatMulNBits)
INTEGER_OPS = frozenset({"MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul", "MatMulNBits",
                         "DynamicQuantizeMatMul", "QAttention", "QGemm", "GatherBlockQuantized"})
_RESCALE = frozenset({"Cast", "Mul", "Add", "DequantizeLinear"})
DEFINITION = ("SNR (dB) and mean cosine of each quantized layer's output against the FP32 model's same tensor: the "
              "error accumulated up to that layer")


def _quantized_nodes(model) -> list[tuple[Any, str, str]]:
    """(node, its float output's name, the tensor holding the value that flows on) of every quantized layer, in graph
    order; the two names differ where the output is quantized again (the dequantized value flows on)."""
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
                    or nxt[0].op_type not in _RESCALE:
                break
            name = nxt[0].output[0]
        seen = name  # what flows on: through the Q -> DQ pair after it (which also applies a folded ReLU's clamp)
        nxt = consumers.get(name, [])
        if len(nxt) == 1 and nxt[0].op_type == "QuantizeLinear":
            dq = consumers.get(nxt[0].output[0], [])
            if len(dq) == 1 and dq[0].op_type == "DequantizeLinear":
                seen = dq[0].output[0]
        found.append((node, name, seen))
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
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


def layer_errors(fp32_path: Path | str, quant_path: Path | str, feeds: list[dict[str, np.ndarray]], *,
                 threads: int | None = None, top: int = 20) -> dict[str, Any] | None:
    """The per-layer error table of ``quant_path`` against ``fp32_path`` on ``feeds`` (one batch each); None when
    the graphs share no quantized layer's tensor (nothing to compare) or are too large to copy in memory."""
    import onnx

    fp32 = onnx.load(str(fp32_path))
    quant = onnx.load(str(quant_path))
    if fp32.ByteSize() > 1_800_000_000 or quant.ByteSize() > 1_800_000_000:
        return None
    fp32_tensors = {o for n in fp32.graph.node for o in n.output}
    layers = [(node, name, seen) for node, name, seen in _quantized_nodes(quant) if name in fp32_tensors]
    if not layers or not feeds:
        return None
    names = list(dict.fromkeys(name for _, name, _ in layers))
    seen_names = list(dict.fromkeys(seen for _, _, seen in layers))
    ref_sess = _session(_with_outputs(fp32, names), threads)
    q_sess = _session(_with_outputs(quant, seen_names), threads)
    inputs = {i.name for i in ref_sess.get_inputs()}
    signal = dict.fromkeys(names, 0.0)
    noise = dict.fromkeys(names, 0.0)
    cosines: dict[str, list[float]] = {n: [] for n in names}
    for feed in feeds:
        feed = {k: v for k, v in feed.items() if k in inputs}
        done: set[str] = set()
        ref = dict(zip(names, ref_sess.run(names, feed), strict=True))
        got = dict(zip(seen_names, q_sess.run(seen_names, feed), strict=True))
        for _, n, seen in layers:
            if n in done:
                continue
            done.add(n)
            r = np.asarray(ref[n], dtype=np.float64).reshape(len(ref[n]) if np.ndim(ref[n]) else 1, -1)
            c = np.asarray(got[seen], dtype=np.float64).reshape(r.shape)
            signal[n] += float((r ** 2).sum())
            noise[n] += float(((c - r) ** 2).sum())
            cosines[n] += list(row_cosines(c, r))
    rows = [{"node": node.name or name, "op_type": node.op_type, "tensor": name,
             "snr_db": round(snr_db(signal[name], noise[name]), 2), "cosine": round(float(np.mean(cosines[name])), 6)}
            for node, name, _ in layers]
    rows.sort(key=lambda r: (r["snr_db"], r["cosine"]))
    return {"samples": len(feeds), "count": len(rows), "definition": DEFINITION, "layers": rows[:top]}


def artifact_layer_errors(art, quant_path: Path | str, items: list[Any], n: int = 8) -> dict[str, Any] | None:
    """The table of a quantized ONNX model written from ``art`` (its FP32 input), on up to ``n`` of ``items`` (raw
    inputs: texts, images, array samples), one at a time through the artifact's own feeds."""
    from compress.data.tokenization import encoder_for

    encoder = encoder_for(art)
    return layer_errors(art.model_path, quant_path, [encoder.encode([item]) for item in items[:n]])
