"""A causal LM's ONNX graph around its weight-only ``MatMulNBits`` (ONNX Runtime GenAI's builder graph), rewritten
where ONNX Runtime's quantizer leaves it short of a device artifact: the tied embedding untied for its own bits
(:func:`untie_embeddings`) or read from the 8-bit LM head's own table (:func:`shared_int8_gather`: written once), an
embedding table in int8 rows (:func:`int8_gather`), HQQ's float zero points folded out of the nodes onto the fast
kernel (:func:`fold_zero_points`), scales in FP16 (:func:`half_scales`). :mod:`.onnx` calls them; each one
changes a ``ModelProto`` in place and says what it did.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compress.errors import StageError

__all__ = ["embedding_gather", "fold_zero_points", "half_rope_tables", "half_scales", "int8_gather", "lm_head", "shared_int8_gather",
           "untie_embeddings"]


def _producers(graph) -> dict[str, Any]:
    return {o: n for n in graph.node for o in n.output}


def _splice(graph, node, before=(), after=(), *, replace: bool = False) -> None:
    """Put ``before`` and ``after`` around ``node`` in the graph's (topological) order; ``replace``: ``node`` goes."""
    at = list(graph.node).index(node)
    for i, n in enumerate(after):
        graph.node.insert(at + 1 + i, n)
    for i, n in enumerate(before):
        graph.node.insert(at + i, n)
    if replace:
        graph.node.remove(node)


def untie_embeddings(model) -> str | None:
    """Give the embedding Gather its own table where it reads a transposed initializer (the builder's tied
    embeddings read the LM head's [H, V] weight through a Transpose): the [V, H] table becomes an initializer and the
    Transpose goes. Returns the Gather's name (None when there is no tied embedding)."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    made = _producers(graph)
    for node in graph.node:
        if node.op_type != "Gather" or node.input[0] in inits:
            continue
        tr = made.get(node.input[0])
        if tr is None or tr.op_type != "Transpose" or tr.input[0] not in inits:
            continue
        table = numpy_helper.to_array(inits[tr.input[0]]).T.copy()
        name = "model.embed_tokens.weight"
        graph.initializer.append(numpy_helper.from_array(table, name))
        node.input[0] = name
        if not any(tr.output[0] in n.input for n in graph.node if n is not node):
            graph.node.remove(tr)
        return node.name
    return None


def embedding_gather(model) -> str | None:
    """The token embedding Gather (its table a constant [V, H], indexed by ``input_ids``)."""
    inits = {t.name for t in model.graph.initializer}
    return next((n.name for n in model.graph.node if n.op_type == "Gather" and n.input[0] in inits
                 and n.input[1] == "input_ids"), None)


def lm_head(model) -> str:
    """The MatMul that makes the logits (the graph output ``logits``, else the last MatMul with a constant weight)."""
    inits = {t.name for t in model.graph.initializer}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    if not matmuls:
        raise StageError("no MatMul with a constant weight in the graph: nothing to quantize")
    return next((n.name for n in matmuls if "logits" in n.output), matmuls[-1].name)


def int8_gather(model, node_name: str, block: int) -> None:
    """Replace the float table of the Gather ``node_name`` with int8 rows in blocks of ``block`` (one float scale per
    block, symmetric) read by standard operators: Gather rows and scales, Cast, Mul, Reshape."""
    from onnx import helper, numpy_helper

    graph = model.graph
    node = next(n for n in graph.node if n.name == node_name)
    init = next(t for t in graph.initializer if t.name == node.input[0])
    table = numpy_helper.to_array(init).astype(np.float32)
    vocab, width = table.shape
    if width % block:
        block = width
    blocks = table.reshape(vocab, width // block, block)
    scale = np.abs(blocks).max(axis=2, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(blocks / scale), -127, 127).astype(np.int8).reshape(vocab, width)
    base = node.input[0]
    graph.initializer.remove(init)
    graph.initializer.extend([numpy_helper.from_array(q, f"{base}_int8"),
                              numpy_helper.from_array(scale.astype(np.float32), f"{base}_scale"),
                              numpy_helper.from_array(np.array([0, 0, width // block, block], np.int64), f"{base}_4d"),
                              numpy_helper.from_array(np.array([0, 0, width], np.int64), f"{base}_3d")])
    p, ids, out = f"{node_name}_int8", node.input[1], node.output[0]
    new = [helper.make_node("Gather", [f"{base}_int8", ids], [f"{p}/rows"], name=f"{p}/rows"),
           helper.make_node("Cast", [f"{p}/rows"], [f"{p}/rows_f"], name=f"{p}/cast", to=1),
           helper.make_node("Reshape", [f"{p}/rows_f", f"{base}_4d"], [f"{p}/blocks"], name=f"{p}/blocks"),
           helper.make_node("Gather", [f"{base}_scale", ids], [f"{p}/scales"], name=f"{p}/scales"),
           helper.make_node("Mul", [f"{p}/blocks", f"{p}/scales"], [f"{p}/scaled"], name=f"{p}/mul"),
           helper.make_node("Reshape", [f"{p}/scaled", f"{base}_3d"], [out], name=f"{p}/out")]
    _splice(graph, node, before=new, replace=True)


def shared_int8_gather(model, node_name: str, head_name: str) -> bool:
    """Make the embedding Gather ``node_name`` read its rows from the 8-bit LM head ``head_name`` (a symmetric
    ``MatMulNBits`` whose weight is [V, blocks, block] uint8, zero point 128, one float scale per block: the same
    table, written once) through standard operators: Gather rows and scales, Cast, Sub, Mul, Reshape. The Gather's own
    table is removed. Returns False (nothing changed) where the head is not such a node."""
    from onnx import helper, numpy_helper

    graph = model.graph
    nodes = {n.name: n for n in graph.node}
    node, head = nodes.get(node_name), nodes.get(f"{head_name}_Q8") or nodes.get(head_name)
    if node is None or head is None or head.op_type != "MatMulNBits" or len(head.input) > 3 and head.input[3]:
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in head.attribute}
    inits = {t.name: t for t in graph.initializer}
    table, weight = inits.get(node.input[0]), inits.get(head.input[1])
    if attrs.get("bits") != 8 or table is None or weight is None or list(weight.dims)[0] != table.dims[0]:
        return False
    vocab, width = table.dims
    blocks, block = list(weight.dims)[1:]
    if blocks * block != width:  # the head's last block padded (a width the block does not divide): rows differ
        return False
    base, ids, out, p = head.input[1], node.input[1], node.output[0], f"{node_name}_shared"
    graph.initializer.remove(table)
    graph.initializer.extend([numpy_helper.from_array(np.array([vocab, blocks, 1], np.int64), f"{p}/scale_shape"),
                              numpy_helper.from_array(np.array(128.0, np.float32), f"{p}/zero"),
                              numpy_helper.from_array(np.array([0, 0, width], np.int64), f"{p}/3d")])
    new = [helper.make_node("Gather", [base, ids], [f"{p}/rows"], name=f"{p}/rows"),
           helper.make_node("Cast", [f"{p}/rows"], [f"{p}/rows_f"], name=f"{p}/cast", to=1),
           helper.make_node("Sub", [f"{p}/rows_f", f"{p}/zero"], [f"{p}/centred"], name=f"{p}/sub"),
           helper.make_node("Reshape", [head.input[2], f"{p}/scale_shape"], [f"{p}/scale_table"],
                            name=f"{p}/scale_table"),
           helper.make_node("Gather", [f"{p}/scale_table", ids], [f"{p}/scales"], name=f"{p}/scales"),
           helper.make_node("Mul", [f"{p}/centred", f"{p}/scales"], [f"{p}/scaled"], name=f"{p}/mul"),
           helper.make_node("Reshape", [f"{p}/scaled", f"{p}/3d"], [out], name=f"{p}/out")]
    _splice(graph, node, before=new, replace=True)
    return True


def fold_zero_points(model, *, offsets_fp16: bool = True) -> int:
    """Move the float zero points HQQ writes out of every ``MatMulNBits`` that has them: ONNX Runtime runs a
    MatMulNBits with float zero points on a slow path (20-50x slower decode here than with integer ones), so the node
    keeps its 4-bit weights and scales with the default zero point (8) and the difference is added beside it.

    ``w = (q - z)·s = (q - 8)·s + (8 - z)·s``, so ``y = x·W = MatMulNBits(x) + Σ_b (Σ_{k in block b} x_k)·c[b, n]``
    with ``c = (8 - z)·s``: each block's input sum (Reshape, ReduceSum) times a [blocks, N] matrix, as exact as the
    float zero point (one value per block: 1 bit a weight in FP32, half in FP16 where ``offsets_fp16``). A node whose
    input width the block does not divide is left as it is. Returns the number of nodes folded."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    folded = 0
    sums: dict[tuple[str, int], str] = {}  # (input, block) -> its block sums: gate and up read the same input
    for node in [n for n in graph.node if n.op_type == "MatMulNBits"]:
        zp = inits.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        if zp is None or zp.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16) or len(node.input) > 4:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        k, n, bits, block = attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]
        if k % block:
            continue
        blocks = k // block
        scale = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32).reshape(n, blocks)
        zero = numpy_helper.to_array(zp).astype(np.float32).reshape(n, blocks)
        offset = ((2 ** (bits - 1) - zero) * scale).T.copy()  # [blocks, N]
        p = f"{node.name}/zero_fold"
        graph.initializer.append(numpy_helper.from_array(offset.astype(np.float16 if offsets_fp16 else np.float32),
                                                         f"{p}/offsets"))
        del node.input[3:]
        graph.initializer.remove(zp)
        src, dst = node.input[0], node.output[0]
        node.output[0] = f"{p}/main"
        weights = f"{p}/offsets"
        new = []
        if (src, block) not in sums:
            sums[src, block] = f"{p}/x_sums"
            graph.initializer.extend([
                numpy_helper.from_array(np.array([0, 0, blocks, block], np.int64), f"{p}/blocks_shape"),
                numpy_helper.from_array(np.array([-1], np.int64), f"{p}/last_axis")])
            new += [helper.make_node("Reshape", [src, f"{p}/blocks_shape"], [f"{p}/x_blocks"], name=f"{p}/x_blocks"),
                    helper.make_node("ReduceSum", [f"{p}/x_blocks", f"{p}/last_axis"], [f"{p}/x_sums"],
                                     name=f"{p}/x_sums", keepdims=0)]
        if offsets_fp16:
            new.append(helper.make_node("Cast", [weights], [f"{p}/offsets_f"], name=f"{p}/offsets_f",
                                        to=TensorProto.FLOAT))
            weights = f"{p}/offsets_f"
        new += [helper.make_node("MatMul", [sums[src, block], weights], [f"{p}/correction"], name=f"{p}/correction"),
                helper.make_node("Add", [f"{p}/main", f"{p}/correction"], [dst], name=f"{p}/add")]
        _splice(graph, node, after=new)
        folded += 1
    return folded


def half_scales(model, keep: tuple[str, ...] = (), *, only: tuple[str, ...] | None = None,
                compute: str = "float16") -> int:
    """Store the scales (and float zero points) of every ``MatMulNBits`` but those in ``keep`` (of those in ``only``
    where given) in FP16, as llama.cpp's blocks do. ``compute`` "float16": the node runs in FP16 between two Casts
    (its input to FP16, its output back), so the graph's other nodes stay FP32; "float32": the node keeps FP32
    compute and reads its scales through a Cast of the FP16 initializer (ONNX Runtime folds it when the session
    loads: the file holds FP16, memory FP32). A block of 32 4-bit weights then costs 5 bits a weight, not 6 with FP32
    scale and zero point (HQQ's zero points are floats). Returns the number of nodes changed."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    changed = 0
    for node in [n for n in graph.node if n.op_type == "MatMulNBits" and n.name not in keep
                 and (only is None or n.name in only)]:
        floats = [inits[node.input[i]] for i in (2, 3)  # scales, zero points (HQQ's float; RTN's packed uint8 stay)
                  if len(node.input) > i and node.input[i] in inits and inits[node.input[i]].data_type == TensorProto.FLOAT]
        if compute == "float32":  # FP16 in the file, read through a Cast by every reader (a shared embedding too)
            for t in floats:
                _fp16_with_cast(graph, t)
            changed += bool(floats)
            continue
        for t in floats:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
        src, dst = node.input[0], node.output[0]
        node.input[0], node.output[0] = f"{node.name}/input_fp16", f"{node.name}/output_fp16"
        _splice(graph, node,
                before=[helper.make_node("Cast", [src], [node.input[0]], name=f"{node.name}/to_fp16",
                                         to=TensorProto.FLOAT16)],
                after=[helper.make_node("Cast", [node.output[0]], [dst], name=f"{node.name}/to_fp32",
                                        to=TensorProto.FLOAT)])
        changed += 1
    return changed


def half_rope_tables(model) -> int:
    """Store the builder's RoPE tables (``cos_cache*`` / ``sin_cache*`` FP32 initializers) in FP16, read through a
    Cast back to FP32 (ONNX Runtime folds it when the session loads: the file holds FP16, the kernels FP32; the
    angles' cosines and sines move by < 5e-4, under what 4-bit weights move). Returns the tables' count."""
    from onnx import TensorProto

    tables = [t for t in model.graph.initializer
              if t.name.startswith(("cos_cache", "sin_cache")) and t.data_type == TensorProto.FLOAT]
    for t in tables:
        _fp16_with_cast(model.graph, t)
    return len(tables)


def _fp16_with_cast(graph, init) -> None:
    """Store the FP32 initializer ``init`` in FP16 (as ``NAME_fp16``) and make ``NAME`` a Cast of it back to FP32 at
    the graph's top: its readers are unchanged, the file holds FP16, and ONNX Runtime folds the Cast when the session
    loads (the kernels read FP32)."""
    from onnx import TensorProto, helper, numpy_helper

    name = init.name
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), f"{name}_fp16"))
    graph.node.insert(0, helper.make_node("Cast", [f"{name}_fp16"], [name], name=f"{name}/to_fp32",
                                          to=TensorProto.FLOAT))
