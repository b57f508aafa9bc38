"""A causal LM's ONNX weights quantized a few matrices at a time, so that the FP32 model is never in memory whole.

:mod:`.onnx` reads the FP32 artifact's graph alone (``onnx.load(..., load_external_data=False)``: each initializer
still names where its bytes lie). ONNX Runtime's ``MatMulNBitsQuantizer`` quantizes a ``ModelProto`` with its
weights loaded, and a loaded ``ModelProto`` (protobuf's upb arena) gives no memory back until it goes as a whole: the
FP32 weights, then their quantized forms, stayed resident together (Qwen3-0.6B: 4.2 GB at the peak for 2.4 GB of
weights). Here each batch of MatMuls (about :data:`BATCH_BYTES` of FP32 weights) is copied into a small model of
its own, its weights read from the data file, quantized there by ONNX Runtime's quantizer (the same nodes, the same
bytes), and its new nodes and initializers copied back over the originals; the small model then goes, its arena
with it. Algorithms that read the whole model at once (GPTQ runs it on calibration data; k-quant) get the whole
model loaded first (:func:`load_tensors`), as before.
"""

from __future__ import annotations

from pathlib import Path

#: FP32 weight bytes quantized per small model (a bigger batch saves nothing: the quantizer works node by node)
BATCH_BYTES = 256 * 2**20

#: the configs whose quantizer reads one node at a time (ONNX Runtime's default round to nearest, HQQ)
_PER_NODE = ("DefaultWeightOnlyQuantConfig", "HQQWeightOnlyQuantConfig")

__all__ = ["BATCH_BYTES", "load_tensors", "quantize_nodes"]


def load_tensors(model, base_dir: Path | None, skip: set[str] = frozenset()) -> None:
    """Read the bytes of ``model``'s external initializers (all but ``skip``) from their files under ``base_dir`` into
    the model, as ``onnx.load`` would have."""
    from onnx import TensorProto
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    for t in model.graph.initializer:
        if not uses_external_data(t) or t.name in skip:
            continue
        if base_dir is None:
            raise ValueError(f"{t.name}'s bytes are in an external file, and no folder was given to read them from")
        load_external_data_for_tensor(t, str(base_dir))
        t.data_location = TensorProto.DEFAULT
        del t.external_data[:]


def _batches(model, names: list[str]) -> list[list[str]]:
    """``names`` (MatMuls, in graph order) cut into runs of about :data:`BATCH_BYTES` of FP32 weights."""
    import math

    sizes = {t.name: 4 * math.prod(t.dims) for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    out: list[list[str]] = [[]]
    held = 0
    for name in names:
        if out[-1] and held >= BATCH_BYTES:
            out.append([])
            held = 0
        out[-1].append(name)
        held += sizes.get(nodes[name].input[1], 0)
    return [b for b in out if b]


def _quantize_batch(model, names: list[str], base_dir: Path | None, **quantizer) -> None:
    """The MatMuls ``names`` of ``model`` quantized in a small model of their own (see the module's docstring); their
    weights leave ``model`` where no other node reads them."""
    from onnx import helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    graph = model.graph
    nodes = [n for n in graph.node if n.name in set(names)]
    weights = {n.input[1] for n in nodes}
    small = helper.make_model(helper.make_graph([], "batch", [], []), opset_imports=list(model.opset_import),
                              ir_version=model.ir_version)
    small.graph.node.extend(nodes)  # copies
    small.graph.initializer.extend(t for t in graph.initializer if t.name in weights)
    load_tensors(small, base_dir)
    q = MatMulNBitsQuantizer(small, nodes_to_exclude=[], op_types_to_quantize=("MatMul",), **quantizer)
    q.process()
    made = q.model.model
    by_output = {n.output[0]: n for n in made.graph.node}
    for node in nodes:
        node.CopyFrom(by_output[node.output[0]])  # in place: the graph's order holds
    read = {i for n in graph.node for i in n.input}
    for i in reversed([i for i, t in enumerate(graph.initializer) if t.name in weights and t.name not in read]):
        del graph.initializer[i]
    have = {t.name for t in graph.initializer}
    graph.initializer.extend(t for t in made.graph.initializer if t.name not in have)
    domains = {o.domain for o in model.opset_import}
    model.opset_import.extend(o for o in made.opset_import if o.domain not in domains)


def quantize_nodes(model, names: list[str], cfg, *, bits: int, block: int, symmetric: bool,
                   accuracy_level: int | None, base_dir: Path | None = None):
    """``model`` with the MatMuls ``names`` (and no other) quantized by ``cfg`` (an algorithm config, or None for
    ONNX Runtime's round to nearest at ``bits``); weights not yet read are read from ``base_dir``, a batch at a
    time where the algorithm goes node by node."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if not names:
        return model
    quantizer = {"bits": bits, "block_size": block, "is_symmetric": symmetric, "accuracy_level": accuracy_level,
                 "algo_config": cfg}
    if cfg is None or type(cfg).__name__ in _PER_NODE:
        wanted = set(names)
        for batch in _batches(model, [n.name for n in model.graph.node if n.name in wanted]):
            _quantize_batch(model, batch, base_dir, **quantizer)
        return model
    load_tensors(model, base_dir)  # GPTQ runs the model; k-quant reads it whole
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    q = MatMulNBitsQuantizer(model, nodes_to_exclude=[n for n in matmuls if n not in set(names)],
                             op_types_to_quantize=("MatMul",), **quantizer)
    q.process()
    return q.model.model
