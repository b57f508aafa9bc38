"""The per-layer error table (:mod:`compress.stages.quantize.layer_errors`) of an OpenVINO INT8/INT4 model written by
NNCF, against the FP32 IR it was quantized from.

A quantized layer is a compute operation (Convolution, MatMul, ...) fed by a FakeQuantize (activations) or by a
dequantized integer constant (compressed weights); NNCF keeps the FP32 model's friendly names, so the same
operation is found in the FP32 IR by name. Both models get every such output (and each layer's activation inputs:
the float tensor behind each FakeQuantize, so an input's rounding counts against the layer that reads it) as extra
results and run on the CPU
plugin in f32 inference precision, the quantized one with its FakeQuantize operations written out as the float
operations of their definition (the CPU plugin's integer fusions give wrong values once intermediate results are
outputs; the written-out model reproduces the quantized model's own outputs). Rows and ``hurts_most`` are those of the ONNX table: accumulated SNR and cosine
of the layer's output, and the layer's own SNR (the error it adds itself).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compress.stages.quantize.layer_errors import DEFINITION, _db, _Errors, table_rows
from compress.stages.quantize.nncf import _QUANTIZABLE, _int_constant_behind

__all__ = ["openvino_layer_errors"]


def _layers(quant, fp32_ops: dict[str, Any]) -> list[tuple[str, str, list[tuple[str, int]]]]:
    """(name, op type, [(producer name, output index) of the float tensor behind each activation input]) of every
    quantized layer: behind a FakeQuantize, its input (what the layer would read were it left in float)."""
    found = []
    for op in quant.get_ordered_ops():
        name = op.get_friendly_name()
        if op.get_type_name() not in _QUANTIZABLE or name not in fp32_ops:
            continue
        inputs, quantized = [], False
        for i in range(op.get_input_size()):
            src = op.input_value(i)
            node = src.get_node()
            if _int_constant_behind(node) is not None:
                quantized = True  # a compressed weight
                continue
            if node.get_type_name() == "FakeQuantize":
                quantized = True
                src = node.input_value(0)
            producer = fp32_ops.get(src.get_node().get_friendly_name())
            if producer is None or producer.get_type_name() == "Constant" \
                    or src.get_index() >= producer.get_output_size():
                continue  # a weight (quantized by its own FakeQuantize, or float) or a tensor FP32 lacks
            inputs.append((src.get_node().get_friendly_name(), src.get_index()))
        if quantized:
            found.append((name, op.get_type_name(), inputs))
    return found


def _decompose_fake_quantize(model) -> None:
    """Replace every FakeQuantize of ``model`` by the float operations of its definition (clamp to the input range,
    round to ``levels`` steps half to even, map to the output range): the same values, but the CPU plugin no longer
    fuses them into integer kernels, which it does wrongly once intermediate results are added as outputs."""
    import openvino.opset13 as ops

    for op in model.get_ops():
        if op.get_type_name() != "FakeQuantize":
            continue
        x, in_low, in_high, out_low, out_high = (op.input_value(i) for i in range(5))
        steps = np.float32(op.get_attributes()["levels"] - 1)
        clamped = ops.minimum(ops.maximum(x, in_low), in_high)
        q = ops.round(ops.multiply(ops.divide(ops.subtract(clamped, in_low), ops.subtract(in_high, in_low)), steps),
                      "half_to_even")
        y = ops.add(ops.multiply(ops.divide(q, steps), ops.subtract(out_high, out_low)), out_low)
        op.output(0).replace(y.output(0))
    model.validate_nodes_and_infer_types()


def _run(model, ports: list, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """The values of ``ports`` (outputs of ``model``'s operations) on each feed, in f32 on the CPU plugin."""
    import openvino as ov

    keys = [(p.get_node().get_friendly_name(), p.get_index()) for p in ports]
    unique = list(dict.fromkeys(keys))
    by_key = dict(zip(keys, ports, strict=True))
    added = model.add_outputs([by_key[k] for k in unique])
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    names = {name for p in compiled.inputs for name in p.get_names()}
    port = {k: compiled.output(a.get_any_name()) for k, a in zip(unique, added, strict=True)}
    request = compiled.create_infer_request()
    out = []
    for feed in feeds:
        res = request.infer({k: v for k, v in feed.items() if k in names})
        values = {k: np.asarray(res[port[k]]) for k in unique}
        out.append([values[k] for k in keys])
    return out


def openvino_layer_errors(fp32_xml, quant_model, feeds: list[dict[str, np.ndarray]],
                          top: int | None = 20) -> dict[str, Any] | None:
    """The table of the NNCF-quantized ``quant_model`` (an ov.Model; a copy is changed) against the FP32 IR at
    ``fp32_xml`` on ``feeds`` (one batch each); None when no quantized layer is found in both."""
    import openvino as ov

    core = ov.Core()
    fp32 = core.read_model(str(fp32_xml))
    quant = quant_model.clone()
    fp32_ops = {op.get_friendly_name(): op for op in fp32.get_ops()}
    layers = _layers(quant, fp32_ops)
    if not layers or not feeds:
        return None
    _decompose_fake_quantize(quant)
    quant_ops = {op.get_friendly_name(): op for op in quant.get_ops()}

    def ports(ops: dict[str, Any]) -> list:
        return [ops[name].output(0) for name, _, _ in layers] + [ops[p].output(i) for _, _, ins in layers
                                                                 for p, i in ins]

    ref_ports, q_ports = ports(fp32_ops), ports(quant_ops)
    refs, gots = _run(fp32, ref_ports, feeds), _run(quant, q_ports, feeds)
    errors = _Errors()
    for ref, got in zip(refs, gots, strict=True):
        k = len(layers)
        for j, (name, _, ins) in enumerate(layers):
            errors.add(name, ref[j], got[j])
            for m in range(len(ins)):
                errors.add(f"in:{name}:{m}", ref[k], got[k])
                k += 1
    rows = []
    for name, op_type, ins in layers:
        nsr_in = max((errors.nsr(f"in:{name}:{m}") for m in range(len(ins))), default=0.0)
        rows.append({"node": name, "op_type": op_type, "tensor": name, "snr_db": round(errors.snr(name), 2),
                     "cosine": round(errors.cosine(name), 6), "own_snr_db": round(_db(errors.nsr(name) - nsr_in), 2)})
    table = table_rows(rows, len(feeds), top)
    table["definition"] = DEFINITION + " (OpenVINO CPU, f32 inference precision)"
    return table
