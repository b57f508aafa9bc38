"""INT4 embedding tables read with standard operators (compress.stages.quantize.int4_gather): the same values as
ONNX Runtime's GatherBlockQuantized, for any indices, and only where the rewrite is exact."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from compress.stages.quantize.int4_gather import unpack_int4_gathers  # noqa: E402


def block_model(rows: int, width: int, block: int, *, zero_points: bool = False, index_rank: int = 2, seed: int = 0):
    """A graph of one GatherBlockQuantized over a random symmetric INT4 table (values -8..7, one scale per block)."""
    rng = np.random.default_rng(seed)
    values = rng.integers(-8, 8, size=(rows, width))
    blocks = -(-width // block)
    table = helper.make_tensor("table", TensorProto.INT4, [rows, width], values.flatten().tolist())
    scales = numpy_helper.from_array(rng.uniform(0.01, 0.2, (rows, blocks)).astype(np.float32), "scales")
    inputs, inits = ["table", "ids", "scales"], [table, scales]
    if zero_points:
        inits.append(helper.make_tensor("zp", TensorProto.INT4, [rows, blocks], [1] * (rows * blocks)))
        inputs.append("zp")
    ids_shape = ["b", "s"][:index_rank]
    node = helper.make_node("GatherBlockQuantized", inputs, ["y"], name="/emb/Gather_Q4", domain="com.microsoft",
                            block_size=block, gather_axis=0, quantize_axis=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ids_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ids_shape + [width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model


def run(model, ids):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"ids": ids})[0]


@pytest.mark.parametrize("shape", [(1, 64), (3, 7), (5,)])
def test_unpacked_rows_equal_gather_block_quantized(shape):
    """Bit-identical to ONNX Runtime's kernel for a batch of one, a batch of several (repeated ids) and 1-D ids; the
    rewritten graph is standard ONNX and keeps the table's size (two weights per byte)."""
    model = block_model(50, 64, 16, index_rank=len(shape))
    ids = np.random.default_rng(1).integers(0, 50, size=shape).astype(np.int64)
    expected = run(model, ids)
    assert unpack_int4_gathers(model) == ["/emb/Gather_Q4"]
    onnx.checker.check_model(model, full_check=True)
    got = run(model, ids)
    assert got.shape == shape + (64,) and np.array_equal(got, expected)
    assert {n.domain for n in model.graph.node} == {""}
    assert all(o.domain != "com.microsoft" for o in model.opset_import)
    tables = {t.name: t for t in model.graph.initializer}
    assert "table" not in tables
    packed = next(t for t in tables.values() if t.data_type == TensorProto.UINT8 and len(t.dims) == 2)
    assert list(packed.dims) == [50, 32]
    gather = next(n for n in model.graph.node if n.name == "/emb/Gather_Q4")
    assert gather.op_type == "Gather" and gather.input[0] == packed.name


@pytest.mark.parametrize("case", ["zero points", "partial last block"])
def test_blocks_it_cannot_reproduce_exactly_are_left_to_onnx_runtime(case):
    model = block_model(20, 40 if case == "partial last block" else 32, 16, zero_points=case == "zero points")
    before = model.SerializeToString()
    assert unpack_int4_gathers(model) == []
    assert model.SerializeToString() == before
