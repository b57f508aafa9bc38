"""Normalise an adopted ONNX graph to what PyTorch's exporter writes: weights as initializers, shapes inferred.

Paddle2ONNX (PaddleOCR's models), several TensorFlow converters and older exporters store every weight as a
``Constant`` node. ONNX Runtime runs such a graph, but its quantizer, the per-layer error table and the graph
estimates look for weights among the graph's initializers, so a static INT8 of it quantizes nothing. When a
``Constant`` holds a float weight matrix or kernel (rank 2 or more, which PyTorch's exporter never writes as one),
adoption lifts every tensor constant with ONNX IR's own pass (``onnx_ir.passes.common.LiftConstantsToInitializersPass``:
the ONNX project's IR, which torch.onnx builds its graphs with; ``onnx-ir`` is already a dependency) and infers the
shapes with ``onnx.shape_inference`` (partial where an operator's inference fails; recorded as not done where it
cannot run, as past the protobuf limit). Any other graph is left exactly as it came.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

#: lift every tensor-valued Constant, a one-element bias included (ORT quantizes a bias only as an initializer)
_SIZE_LIMIT = 1
TOOL = "onnx_ir LiftConstantsToInitializersPass + onnx.shape_inference"


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
