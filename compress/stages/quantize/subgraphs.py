"""Graphs with control flow (``If``, ``Loop``, ``Scan``): the activations a subgraph reads from the outer scope.

ONNX Runtime's static QDQ quantizer folds a ``Relu`` (or ``Clip``) into the ``QuantizeLinear`` after the operator
before it: the activation node goes, the operator before it writes the activation's output name unclamped, and the
main graph's readers are moved to the ``DequantizeLinear``. A subgraph that reads that name from the outer scope is
not moved: it reads the unclamped tensor. Silero VAD's LSTM runs inside an ``If`` on the sample rate and reads its
encoder's last ``Relu`` output that way; with the fold it takes negative values the ReLU removed, and the INT8 model
agrees with FP32's speech decisions on 25% of the calls (min-max ranges); with that ``Relu`` kept float, on 98%
(``benchmarks/streams/silero_vad.py``). Such activations stay float: :func:`subgraph_read_activations`.
"""

from __future__ import annotations

__all__ = ["outer_scope_reads", "subgraph_read_activations"]

#: activations ONNX Runtime's QDQ quantizer folds into the QuantizeLinear before them
FOLDED = ("Relu", "Clip")


def outer_scope_reads(model) -> set[str]:
    """The names any subgraph of ``model`` (at any depth) reads without defining them: outer-scope values."""
    found: set[str] = set()

    def walk(graph, outer: bool) -> None:
        defined = {o for n in graph.node for o in n.output} | {i.name for i in graph.input} | \
            {i.name for i in graph.initializer}
        for node in graph.node:
            if outer:
                found.update(i for i in node.input if i and i not in defined)
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    walk(sub, True)

    walk(model.graph, False)
    return found


def subgraph_read_activations(model, op_types) -> list[str]:
    """The main graph's ``Relu``/``Clip`` nodes among ``op_types`` whose output a subgraph reads from the outer scope
    (see the module doc): they stay float."""
    folded = [t for t in FOLDED if t in op_types]
    if not folded:
        return []
    reads = outer_scope_reads(model)
    return [n.name for n in model.graph.node if n.op_type in folded and any(o in reads for o in n.output)]
