"""Per-channel or per-tensor weight scales, chosen per layer group by measured accuracy (static INT8 of image models).

Per-channel scales are the safe default for convolutions: a depthwise convolution's channels differ in range by
orders of magnitude, and one scale for all of them is a known accuracy collapse. Per-tensor scales are what some
accelerators require and can be the better choice for a layer whose channels agree. Accuracy-aware quantization
of an image model (``--max-drop`` / ``--min-retention`` with ``--data``) therefore quantizes the model both ways
once (the same calibration ranges), measures both, starts from the better, and flips one layer group at a time to
the other granularity, keeping a flip only when the eval metric improves. The hybrid is assembled from the two
QDQ models: a layer's weight (and bias) quantization is self-contained in the initializers feeding its
``DequantizeLinear`` nodes, so a layer's scales are taken from one model or the other; activations are identical.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("compress.stages.quantize")  # the verb's logger

WEIGHT_OPS = ("Conv", "MatMul", "Gemm")


def _units(model) -> dict[str, list[str]]:
    """Layer groups of the quantized weight layers (transformer or CNN block from the node name, else the node)."""
    from compress.stages.quantize.accuracy import group_of

    units: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type in WEIGHT_OPS and node.name:
            group = group_of(node.name, node.op_type)
            units.setdefault(group if group.startswith("block") else node.name, []).append(node.name)
    return units


def swap_scales(base, other, nodes: set[str]):
    """``base`` (a QDQ model) with the weight and bias quantization of ``nodes`` taken from ``other`` (the same
    graph quantized with the other granularity). Returns a new model; both inputs are left as they are."""
    import copy

    out = copy.deepcopy(base)
    other_inits = {i.name: i for i in other.graph.initializer}
    other_dq = {n.output[0]: n for n in other.graph.node if n.op_type == "DequantizeLinear"}
    producers = {o: n for n in out.graph.node for o in n.output}
    inits = {i.name: i for i in out.graph.initializer}
    for node in out.graph.node:
        if node.name not in nodes:
            continue
        for name in node.input[1:]:
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or name not in other_dq:
                continue
            theirs = other_dq[name]
            for mine_in, their_in in zip(dq.input, theirs.input, strict=False):
                if mine_in in inits and their_in in other_inits:
                    inits[mine_in].CopyFrom(other_inits[their_in])
                    inits[mine_in].name = mine_in
            del dq.attribute[:]
            dq.attribute.extend(copy.deepcopy(list(theirs.attribute)))
    return out


def choose_granularity(per_channel: Path, per_tensor: Path, measure, *, progress=None) -> tuple[set[str], dict[str, Any]]:
    """The nodes to give per-tensor scales: greedy over layer groups from the better of the two uniform models.
    ``measure(model_proto) -> metric`` scores a candidate on the eval rows."""
    import onnx

    pc, pt = onnx.load(str(per_channel)), onnx.load(str(per_tensor))
    units = _units(pc)
    m_pc, m_pt = measure(pc), measure(pt)
    per_tensor_nodes: set[str] = set() if m_pc >= m_pt else {n for names in units.values() for n in names}
    best = max(m_pc, m_pt)
    trials = []
    for unit, names in units.items():
        flipped = per_tensor_nodes ^ set(names)
        metric = measure(swap_scales(pc, pt, flipped))
        kept = metric > best + 1e-9
        trials.append({"group": unit, "to": "per-tensor" if set(names) <= flipped else "per-channel",
                       "metric": round(metric, 6), "kept": kept})
        if kept:
            per_tensor_nodes, best = flipped, metric
        if progress:
            progress(len(trials), len(units))
    record = {"per_channel_metric": round(m_pc, 6), "per_tensor_metric": round(m_pt, 6), "chosen_metric": round(best, 6),
              "groups": len(units), "per_tensor_groups": sorted(u for u, names in units.items()
                                                                if set(names) <= per_tensor_nodes),
              "trials": trials}
    log.info("weight scales: per-channel %.4f, per-tensor %.4f; chosen mix %.4f with %d of %d groups per-tensor",
             m_pc, m_pt, best, len(record["per_tensor_groups"]), len(units))
    return per_tensor_nodes, record
