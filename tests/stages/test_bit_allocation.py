"""The INT4 default's measurement (compress/stages/quantize/lm/bit_allocation.py): each candidate's error recognises
a source's grid, llama.cpp's Q4_K_M byte rule, and the allocation within a budget."""

from __future__ import annotations

import numpy as np
import pytest

from compress.stages.quantize.lm import bit_allocation as ba

CANDS = {c.name: c for c in ba.ONNX_CANDIDATES}


def _grid(k: int, n: int, *, bits: int, symmetric: bool, seed: int = 0) -> np.ndarray:
    """[K, N] weights already on a llama.cpp-like grid along K in blocks of 32: Q5_0's (symmetric 5-bit, a scale
    per block) or Q4_1's (4-bit, a scale and a float minimum per block)."""
    rng = np.random.default_rng(seed)
    blocks = k // 32
    scale = rng.uniform(0.002, 0.02, (blocks, 1, n)).astype(np.float32)
    if symmetric:
        q = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), (blocks, 32, n))
        q[:, 0, :] = -(2 ** (bits - 1))  # each block reaches its extreme, as a real block's absmax does
        w = q * scale
    else:
        q = rng.integers(0, 2 ** bits, (blocks, 32, n))
        q[:, 0, :], q[:, 1, :] = 0, 2 ** bits - 1
        w = q * scale + rng.uniform(-0.1, 0.0, (blocks, 1, n)).astype(np.float32)
    return np.float16(w).astype(np.float32).reshape(k, n)


@pytest.mark.parametrize(("source", "best"), [("q5_0", "int8"), ("q4_1", "int4-hqq")])
def test_the_errors_recognise_a_source_grid(source, best):
    """8 bits hold a Q5_0 grid exactly (its 5-bit codes times 8); HQQ's float zero points land on Q4_1's; symmetric
    4-bit round to nearest holds neither. This is why one fixed recipe fits one source and not another."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    w = _grid(128, 64, bits=5 if source == "q5_0" else 4, symmetric=source == "q5_0")
    errors = {name: ba.relative_error(w, ba.dequantized(w, c, 32)) for name, c in CANDS.items()}
    assert errors[best] < 1e-5 < errors["int4-rtn"]
    assert min(errors, key=errors.get) == best


def test_importance_weighs_the_channels_the_inputs_drive():
    w = np.random.default_rng(0).normal(0, 0.05, (64, 32)).astype(np.float32)
    approx = w.copy()
    approx[3] += 0.05  # an error on input channel 3 only
    quiet, loud = np.ones(64), np.ones(64)
    loud[3] = 100.0
    assert ba.relative_error(w, approx, loud) > 10 * ba.relative_error(w, approx, quiet)


def test_q4_k_m_bytes_follow_llama_cpp_s_rule():
    """Q4_K where a row fits 256-blocks, Q6_K on attn_v / ffn_down in use_more_bits layers, Q5_0 / Q8_0 where a row
    does not fit (llama.cpp's fall-back)."""
    shapes = {f"/model/layers.{i}/{part}/MatMul": shape for i in range(8)
              for part, shape in (("attn/v_proj", (512, 128)), ("attn/o_proj", (640, 512)),
                                  ("mlp/down_proj", (2048, 640)))}
    got = ba.q4_k_m_bytes(shapes)
    assert got["/model/layers.3/attn/o_proj/MatMul"] == 640 * 512 * 5.5 / 8  # 640 % 256: Q4_K -> Q5_0
    assert got["/model/layers.2/attn/v_proj/MatMul"] == 512 * 128 * 4.5 / 8  # layer 2 of 8: Q4_K
    assert got["/model/layers.3/attn/v_proj/MatMul"] == 512 * 128 * 6.5625 / 8  # (3 - 8 // 8) % 3 == 2: Q6_K
    assert got["/model/layers.0/attn/v_proj/MatMul"] == 512 * 128 * 6.5625 / 8  # the first eighth: Q6_K
    assert got["/model/layers.7/mlp/down_proj/MatMul"] == 2048 * 640 * 6.5625 / 8
    fused = ba.q4_k_m_bytes({"/model/layers.0/attn/qkv_proj/MatMul": (512, 384)}, kv_width=128)
    assert fused["/model/layers.0/attn/qkv_proj/MatMul"] == 512 * (256 * 4.5 + 128 * 6.5625) / 8


def test_candidate_bytes_are_the_blocks_as_written():
    assert ba.candidate_bytes(64, 10, CANDS["int4-rtn"], 32) == 10 * 2 * (16 + 2)
    assert ba.candidate_bytes(64, 10, CANDS["int4-hqq"], 32) == 10 * 2 * (16 + 4)  # the FP16 offset
    assert ba.candidate_bytes(80, 10, CANDS["int8"], 32) == 10 * 3 * (32 + 2)  # the last block padded


def test_allocate_spends_the_budget_where_it_removes_the_most_error_per_byte():
    costs = {n: {"int4-rtn": 100.0, "int4-hqq": 110.0, "int8": 200.0} for n in "abc"}
    errors = {"a": {"int4-rtn": 0.02, "int4-hqq": 0.01, "int8": 1e-5},
              "b": {"int4-rtn": 0.002, "int4-hqq": 0.001, "int8": 1e-5},
              "c": {"int4-rtn": 0.01, "int4-hqq": 1e-6, "int8": 1e-5}}
    assert ba.allocate(errors, costs, 300) == {"a": "int4-rtn", "b": "int4-rtn", "c": "int4-rtn"}
    assert ba.allocate(errors, costs, 330) == {"a": "int4-hqq", "b": "int4-hqq", "c": "int4-hqq"}
    got = ba.allocate(errors, costs, 430)
    assert got["a"] == "int8" and got["c"] == "int4-hqq"  # c's HQQ already holds; a buys the most from 8 bits
    assert sum(costs[n][c] for n, c in got.items()) <= 430
    assert set(ba.allocate(errors, costs, 10_000).values()) <= {"int8", "int4-hqq"}


@pytest.mark.parametrize("name", ["int4-rtn", "int4-hqq"])
def test_codes_two_to_a_byte_decode_to_the_values_the_check_fed(name):
    """The measured mix keeps each 4-bit candidate as codes (a quarter of its FP16 values' bytes); what they decode
    to is bit for bit the dequantized weights the check fed before (FP16-rounded), K not a multiple of the block."""
    import torch

    w = (np.random.default_rng(1).standard_normal((200, 48)) * 0.05).astype(np.float32)
    cand = CANDS[name]
    wt = torch.from_numpy(np.ascontiguousarray(w.T))
    if cand.algorithm == "hqq":
        from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, HQQWeightOnlyQuantizer

        q, scale, zero = HQQWeightOnlyQuantizer(HQQWeightOnlyQuantConfig(block_size=32, bits=4)).quantize_internal(
            wt, bits=4, group_size=32)
        blocks = q.shape[1] // 32
        before = ((q.reshape(-1, blocks, 32).float() - zero.reshape(-1, blocks, 1).half().float())
                  * scale.reshape(-1, blocks, 1).half().float()).reshape(q.shape[0], -1)[:, :200].T.numpy()
    else:
        from compress.stages.quantize.lm.fake_quant import rtn_grid

        before = rtn_grid(wt, 4, 32, True).half().float().T.numpy()
    coded = ba.coded(w, cand, 32)
    out = np.empty_like(w)
    coded.decode(out=out)
    assert np.array_equal(out, before.astype(np.float16).astype(np.float32))
    assert coded.packed.nbytes == 48 * 224 // 2 and coded.nbytes < w.size * 2 // 2
