"""Normalise an adopted ONNX graph to what PyTorch's exporter writes: weights as initializers, shapes inferred.

Paddle2ONNX (PaddleOCR's models), several TensorFlow converters and older exporters store every weight as a
``Constant`` node. ONNX Runtime runs such a graph, but its quantizer, the per-layer error table and the graph
estimates look for weights among the graph's initializers, so a static INT8 of it quantizes nothing. When a
``Constant`` holds a float weight matrix or kernel (rank 2 or more, which PyTorch's exporter never writes as one),
adoption lifts every tensor constant with ONNX IR's own pass (``onnx_ir.passes.common.LiftConstantsToInitializersPass``:
the ONNX project's IR, which torch.onnx builds its graphs with; ``onnx-ir`` is already a dependency) and infers the
shapes with ``onnx.shape_inference`` (partial where an operator's inference fails; recorded as not done where it
cannot run, as past the protobuf limit).

A ``BatchNormalization`` that reads a convolution's output alone (Paddle2ONNX and TensorFlow converters keep them
apart; PyTorch's exporter folds them in eval mode) is folded into that convolution's weights and bias
(:func:`fold_batch_norms`): exact in float, and without it static INT8 quantizes the convolution's output *before*
the per-channel scaling, one activation scale over channels the normalisation then stretches by up to orders of
magnitude, and ONNX Runtime cannot fuse the convolution with what follows (PaddleOCR's orientation classifier: 35
such pairs; its default INT8 ran at 0.42x the FP32 file's speed, ``benchmarks/vision/paddle_ocr.py``). Any other graph is
left exactly as it came.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

#: lift every tensor-valued Constant, a one-element bias included (ORT quantizes a bias only as an initializer)
_SIZE_LIMIT = 1
TOOL = "onnx_ir LiftConstantsToInitializersPass + onnx.shape_inference"
#: the convolutions a BatchNormalization is folded into
_FOLDABLE = ("Conv", "ConvTranspose")


def _constants(graph) -> list:
    """The tensor-valued ``Constant`` nodes of ``graph`` and of its subgraphs (If/Loop bodies)."""
    from onnx import AttributeProto

    found = []
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and [a.name for a in node.attribute] == ["value"]:
            found.append(node)
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                found += _constants(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for g in attr.graphs:
                    found += _constants(g)
    return found


def lift_constants(model) -> tuple[Any, dict[str, Any] | None]:
    """``model`` (an ``onnx.ModelProto``) with its tensor ``Constant`` nodes as initializers and its shapes inferred,
    and the record of what moved (None, and the model untouched, when no Constant holds a float weight matrix
    or kernel)."""
    import numpy as np
    import onnx_ir as ir
    from onnx import numpy_helper, shape_inference
    from onnx_ir.passes.common import LiftConstantsToInitializersPass

    found = _constants(model.graph)
    arrays = [numpy_helper.to_array(n.attribute[0].t) for n in found]
    floats = [a for a in arrays if np.issubdtype(a.dtype, np.floating) and a.ndim >= 1]
    if not any(a.ndim >= 2 for a in floats):  # no weight matrix or kernel among them: an exporter's small constants
        return model, None
    ir_model = ir.serde.deserialize_model(model)
    LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=_SIZE_LIMIT)(ir_model)
    out = ir.serde.serialize_model(ir_model)
    try:  # partial where an operator's inference fails; a graph past the protobuf limit keeps its shapes as they were
        out, inferred = shape_inference.infer_shapes(out, strict_mode=False, data_prop=True), True
    except Exception as e:  # noqa: BLE001 - onnx raises several types (protobuf size, inference errors)
        log.warning("shape inference failed (%s); the graph keeps the shapes it had", e)
        inferred = False
    left = len(_constants(out.graph))
    record = {"constants_to_initializers": len(found) - left, "float_weights": len(floats),
              "float_weight_elements": int(sum(a.size for a in floats)), "shapes_inferred": bool(inferred), "tool": TOOL}
    if left:  # a graph output, or an empty tensor (Resize's unused roi), stays a Constant node
        record["constants_kept"] = left
    log.info("normalised the graph: %d Constant nodes (%d float weights) moved to initializers%s",
             record["constants_to_initializers"], len(floats), ", shapes inferred" if inferred else "")
    return out, record


def _keep(field, dropped: set[str]) -> None:
    """Remove from a graph's repeated ``field`` (initializers, value infos, inputs) the entries named in ``dropped``."""
    kept = [v for v in field if v.name not in dropped]
    del field[:]
    field.extend(kept)


def _channel_bias(add, producer, consumers, inits, outputs):
    """The convolution whose output ``add`` adds a constant per-channel bias to (``[1, C, 1, 1]`` or ``[C, 1, 1]``,
    as Paddle2ONNX writes a ConvTranspose's bias), and that bias's name; None when it is no such Add."""
    from onnx import numpy_helper

    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.input) != 2:
        return None
    for x, b in (add.input, add.input[::-1]):
        conv = producer.get(x)
        if conv is None or conv.op_type not in _FOLDABLE or b not in inits or consumers.get(x, 0) != 1 or x in outputs:
            continue
        if conv.input[1] not in inits or consumers.get(conv.input[1], 0) != 1 or consumers.get(b, 0) != 1:
            continue
        w, shape = inits[conv.input[1]], list(inits[b].dims)
        group = next((a.i for a in conv.attribute if a.name == "group"), 1)
        out = w.dims[0] if conv.op_type == "Conv" else w.dims[1] * group
        per_channel = [out] + [1] * (len(w.dims) - 2)  # [C, 1, 1], or with the batch axis [1, C, 1, 1]
        if shape in (per_channel, [1, *per_channel]) and len(conv.input) < 3:
            return conv, numpy_helper.to_array(inits[b]).reshape(-1)
    return None


def _fold_bias_adds(g, inits) -> int:
    """Each Add of a constant per-channel bias to a convolution's output (:func:`_channel_bias`) into the
    convolution's bias input; how many."""
    from collections import Counter

    from onnx import numpy_helper

    producer = {o: n for n in g.node for o in n.output}
    consumers = Counter(i for n in g.node for i in n.input)
    outputs = {o.name for o in g.output}
    folded = []
    for add in list(g.node):
        found = _channel_bias(add, producer, consumers, inits, outputs)
        if found is None:
            continue
        conv, bias = found
        name = next(i for i in add.input if i in inits)
        inits[name].CopyFrom(numpy_helper.from_array(bias, name))
        conv.input.append(name)
        conv.output[0] = add.output[0]
        folded.append(add)
    for add in folded:
        g.node.remove(add)
    reshaped = {i for add in folded for i in add.input if i in inits}  # now 1-D: their inferred [1, C, 1, 1] goes
    for infos in (g.value_info, g.input):
        _keep(infos, reshaped)
    return len(folded)


def _foldable(node, producer, consumers, inits, outputs) -> bool:
    """Is ``node`` a BatchNormalization (inference form) that reads a convolution's output alone, every weight a
    constant?"""
    if node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return False
    if any(a.name == "training_mode" and a.i for a in node.attribute) or not all(i in inits for i in node.input[1:5]):
        return False
    conv = producer.get(node.input[0])
    if conv is None or conv.op_type not in _FOLDABLE or conv.domain not in ("", "ai.onnx"):
        return False
    if consumers.get(node.input[0], 0) != 1 or node.input[0] in outputs or conv.input[1] not in inits:
        return False
    group = next((a.i for a in conv.attribute if a.name == "group"), 1)
    return (len(conv.input) < 3 or conv.input[2] in inits) and (conv.op_type == "Conv" or group == 1)


def fold_batch_norms(model) -> tuple[Any, dict[str, Any] | None]:
    """``model`` (an ``onnx.ModelProto``, weights as initializers) with each BatchNormalization that reads a
    convolution's output alone folded into that convolution (see the module docstring), a per-channel bias added
    after the convolution (Paddle2ONNX's ConvTranspose) first folded into its bias, and the record (None, the model
    untouched, when there is nothing to fold). A weight shared by two convolutions, or read by anything else, is
    left."""
    from collections import Counter

    import numpy as np
    from onnx import numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    biases = _fold_bias_adds(g, inits)
    producer = {o: n for n in g.node for o in n.output}
    consumers = Counter(i for n in g.node for i in n.input)
    outputs = {o.name for o in g.output}
    folds = [n for n in g.node if _foldable(n, producer, consumers, inits, outputs)]
    folds = [n for n in folds if all(consumers[i] == 1 for i in producer[n.input[0]].input[1:3])]
    if not folds:
        return model, ({"bias_adds_folded": biases} if biases else None)
    dead = set()
    for bn in folds:
        conv = producer[bn.input[0]]
        scale, bias, mean, var = (numpy_helper.to_array(inits[i]).astype(np.float64) for i in bn.input[1:5])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        factor = scale / np.sqrt(var + eps)
        w = numpy_helper.to_array(inits[conv.input[1]])
        axis = 1 if conv.op_type == "ConvTranspose" else 0  # ConvTranspose: [C_in, C_out, kh, kw]
        shape = [1] * w.ndim
        shape[axis] = -1
        new_w = (w.astype(np.float64) * factor.reshape(shape)).astype(w.dtype)
        b = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if len(conv.input) > 2 else 0.0
        new_b = ((b - mean) * factor + bias).astype(w.dtype)
        inits[conv.input[1]].CopyFrom(numpy_helper.from_array(new_w, conv.input[1]))
        bias_name = conv.input[2] if len(conv.input) > 2 else f"{conv.input[1]}_folded_bias"
        if len(conv.input) > 2:
            inits[bias_name].CopyFrom(numpy_helper.from_array(new_b, bias_name))
        else:
            g.initializer.append(numpy_helper.from_array(new_b, bias_name))
            conv.input.append(bias_name)
        dead.add(conv.output[0])
        conv.output[0] = bn.output[0]
        dead.update(i for i in bn.input[1:5] if consumers[i] == 1)
    for bn in folds:
        g.node.remove(bn)
    _keep(g.initializer, dead)
    _keep(g.value_info, dead)
    log.info("normalised the graph: %d BatchNormalization nodes (and %d bias Adds) folded into the convolutions they "
             "read", len(folds), biases)
    return model, {"batch_norms_folded": len(folds), **({"bias_adds_folded": biases} if biases else {})}
