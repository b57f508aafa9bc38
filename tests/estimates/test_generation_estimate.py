"""Estimates of text generators (compress.estimates.generation): what the files say (weight bytes, parameters, KV
cache dims) for safetensors, ONNX (FP32 and MatMulNBits INT4) and GGUF, and the decode/prefill arithmetic.

Models are tiny random Llamas (tests/builders/lm.py): test material, their quality means nothing here.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from compress.errors import ArtifactError, ConfigError
from compress.estimates.generation import (
    UNVERIFIED,
    estimate_generation,
    kv_bytes_per_token,
    model_facts,
)
from compress.estimates.roofline import Efficiency, Peaks
from tests.builders.lm import tiny_causal_lm

IDEAL = Efficiency(compute_fp32=1.0, compute_int8=1.0, memory=1.0, overhead_us=0.0)
HIDDEN, INTER, LAYERS, HEADS, KV, VOCAB = 64, 128, 2, 4, 2, 512
HEAD = HIDDEN // HEADS


def _matmul_params(tied: bool) -> int:
    """Weights of the matrix products of tiny_causal_lm's defaults: q, k, v, o, gate, up, down per layer + LM head."""
    per_layer = HIDDEN * HIDDEN * 2 + HIDDEN * KV * HEAD * 2 + 3 * HIDDEN * INTER
    return LAYERS * per_layer + VOCAB * HIDDEN


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_causal_lm(tmp_path_factory.mktemp("gen") / "tied")


@pytest.fixture(scope="module")
def tiny_untied(tmp_path_factory) -> Path:
    return tiny_causal_lm(tmp_path_factory.mktemp("gen") / "untied", tied=False)


def test_safetensors_facts_count_the_matrix_products_and_the_files(tiny, tiny_untied):
    f = model_facts(tiny)
    assert f.parameters == _matmul_params(tied=True)
    assert f.file_bytes == sum(p.stat().st_size for p in tiny.glob("*.safetensors"))
    assert f.weight_bytes == f.file_bytes and f.gathered_bytes == 0  # tied: the LM head reads the whole table
    assert (f.layers, f.kv_heads, f.head_size, f.heads, f.kv_dtype_bytes) == (LAYERS, KV, HEAD, HEADS, 4)
    u = model_facts(tiny_untied)
    assert u.parameters == _matmul_params(tied=False)  # the untied input table is gathered, not multiplied
    assert u.gathered_bytes == VOCAB * HIDDEN * 4
    assert u.weight_bytes == u.file_bytes - VOCAB * HIDDEN * 4


def test_decode_is_bandwidth_over_weights_plus_kv_cache(tiny):
    f = model_facts(tiny)
    peaks = Peaks(fp32_gflops=1e6, int8_gops=None, bandwidth_gbs=10.0)  # compute effectively free
    est = estimate_generation(tiny, peaks=peaks, prompt_tokens=100, new_tokens=50, efficiency=IDEAL)
    assert est.context == 125  # the middle of the generation
    kv = 2 * LAYERS * KV * HEAD * 4 * 125
    assert kv_bytes_per_token(f, 125) == kv
    assert est.decode_bound == "memory"
    assert est.decode_tokens_per_s == pytest.approx(10e9 / (f.weight_bytes + kv))
    assert est.kv_mb_per_token == pytest.approx(kv / 1e6)
    longer = estimate_generation(tiny, peaks=peaks, prompt_tokens=100, new_tokens=50, context=2000, efficiency=IDEAL)
    assert longer.decode_tokens_per_s < est.decode_tokens_per_s  # a longer context reads more cache per token
    assert est.estimated and est.label == UNVERIFIED and est.as_dict()["label"].startswith("UNVERIFIED")


def test_prefill_is_compute_bound_and_is_the_time_to_first_token(tiny):
    f = model_facts(tiny)
    peaks = Peaks(fp32_gflops=10.0, int8_gops=None, bandwidth_gbs=1e6)  # memory effectively free
    p = 64
    est = estimate_generation(tiny, peaks=peaks, prompt_tokens=p, new_tokens=0, efficiency=IDEAL)
    attention = sum(4 * LAYERS * HEADS * HEAD * i for i in range(p))
    flops = 2 * f.parameters * p + attention
    assert est.time_to_first_token_ms == pytest.approx(flops / 10e9 * 1e3)
    assert est.prefill_tokens_per_s == pytest.approx(p / (flops / 10e9))
    # the same compute peak bounds decode when bandwidth is no limit: 2 FLOPs per weight + attention at the context
    assert est.decode_bound == "compute"
    assert est.decode_ms_per_token == pytest.approx((2 * f.parameters + 4 * LAYERS * HEADS * HEAD * p) / 10e9 * 1e3)


def test_profile_peaks_are_the_sustained_bandwidth(tiny):
    from compress.profiles.load import load_profile

    pi5 = load_profile("raspberry-pi-5")
    est = estimate_generation(tiny, pi5)
    assert est.peaks["bandwidth_gbs"] == pi5.hardware.memory_bandwidth_gbs == 10.0
    assert pi5.hardware.memory_bandwidth_peak_gbs == 17.1 and "LPDDR4X-4267" in pi5.hardware.bandwidth_source
    assert est.profile == "raspberry-pi-5"
    # a phone with 4x the sustained bandwidth decodes the same weights faster (memory bound)
    assert estimate_generation(tiny, "snapdragon-8-gen-3").decode_tokens_per_s > est.decode_tokens_per_s
    bare = pi5.model_copy(update={"hardware": pi5.hardware.model_copy(update={"memory_bandwidth_gbs": None})})
    with pytest.raises(ConfigError, match="memory_bandwidth_gbs"):
        estimate_generation(tiny, bare)
    with pytest.raises(ConfigError, match="prompt_tokens"):
        estimate_generation(tiny, pi5, prompt_tokens=0)


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(ArtifactError, match="no such"):
        model_facts(tmp_path / "nothing")
    (tmp_path / "model.tflite").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="cannot estimate a generator"):
        model_facts(tmp_path / "model.tflite")


def _write_gguf(path: Path, *, untied: bool) -> None:
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(LAYERS)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_embedding_length(HIDDEN)
    w.add_context_length(256)
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32))
    if untied:
        w.add_tensor("output.weight", rng.standard_normal((VOCAB, HIDDEN)).astype(np.float16))
    for i in range(LAYERS):
        w.add_tensor(f"blk.{i}.attn_q.weight", rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float16))
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(HIDDEN, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_facts_read_the_metadata_and_leave_out_a_gathered_table(tmp_path):
    _write_gguf(tmp_path / "tied.gguf", untied=False)
    _write_gguf(tmp_path / "untied.gguf", untied=True)
    t, u = model_facts(tmp_path / "tied.gguf"), model_facts(tmp_path / "untied.gguf")
    assert (t.layers, t.heads, t.kv_heads, t.head_size, t.kv_dtype_bytes) == (LAYERS, HEADS, KV, HEAD, 2)
    assert t.parameters == VOCAB * HIDDEN + LAYERS * HIDDEN * HIDDEN  # tied: token_embd is the LM head
    assert t.weight_bytes == t.file_bytes == (tmp_path / "tied.gguf").stat().st_size
    assert u.parameters == VOCAB * HIDDEN + LAYERS * HIDDEN * HIDDEN  # output replaces token_embd in the products
    assert u.gathered_bytes == VOCAB * HIDDEN * 4
    assert u.weight_bytes == u.file_bytes - VOCAB * HIDDEN * 4


def test_onnx_facts_fp32_and_int4_match_the_checkpoint(tiny, tmp_path):
    """The ONNX Runtime GenAI export of the tiny model: the same parameters as the checkpoint; its INT4
    (MatMulNBits) form counts K x N per product and its bytes shrink, so the INT4 decode estimate is faster."""
    pytest.importorskip("onnxruntime_genai")
    from compress.stages.export.lm.onnx import build_genai

    fp32 = tmp_path / "fp32"
    fp32.mkdir()
    (tmp_path / "cache").mkdir()
    build_genai(tiny, fp32, tmp_path / "cache")
    f = model_facts(fp32 / "model.onnx")
    assert f.parameters == _matmul_params(tied=True)
    assert (f.layers, f.kv_heads, f.head_size, f.heads) == (LAYERS, KV, HEAD, HEADS)
    assert f.file_bytes == sum(p.stat().st_size for p in fp32.iterdir() if p.name.startswith("model.onnx"))

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(onnx.load(str(fp32 / "model.onnx")), block_size=32, is_symmetric=True)
    q.process()
    int4 = tmp_path / "int4"
    int4.mkdir()
    (int4 / "genai_config.json").write_text((fp32 / "genai_config.json").read_text())
    q.model.save_model_to_file(str(int4 / "model.onnx"), use_external_data_format=True)
    g = model_facts(int4 / "model.onnx")
    assert g.parameters == f.parameters
    assert g.weight_bytes < f.weight_bytes / 3
    peaks = Peaks(fp32_gflops=100.0, int8_gops=None, bandwidth_gbs=10.0)
    assert math.isclose(estimate_generation(fp32 / "model.onnx", peaks=peaks).parameters, f.parameters)
    assert (estimate_generation(int4 / "model.onnx", peaks=peaks).decode_tokens_per_s
            > 2 * estimate_generation(fp32 / "model.onnx", peaks=peaks).decode_tokens_per_s)


def test_validate_away_from_the_device_reports_the_estimate_unverified(tiny, tmp_path):
    """validate --estimate always of an ONNX generator: decode tokens/s and TTFT are the estimate's on the profile's
    peaks (this host's timings beside them), their budgets UNVERIFIED with the estimate as the figure."""
    pytest.importorskip("onnxruntime_genai")
    pytest.importorskip("compress.teachers.lm")
    import yaml

    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    art = export(tiny, tmp_path / "fp32", ExportConfig(format="onnx"))
    profile = tmp_path / "board.yaml"
    profile.write_text(yaml.safe_dump({
        "name": "board", "description": "an absent board",
        "hardware": {"arch": "x86_64", "cores": 2, "memory_mb": 4096, "peak_gflops_fp32": 50.0,
                     "memory_bandwidth_gbs": 5.0, "clock_ghz": 2.0},
        "runtime": {"name": "onnxruntime", "provider": "CPUExecutionProvider", "threads": 1},
        "measure": {"warmup": 1, "min_runs": 1, "min_duration_s": 0.0},
        "budgets": {"min_speedup": None, "min_decode_tokens_per_s": 1e9, "max_time_to_first_token_ms": 60000}}))
    cfg = ValidateConfig.from_flat(profile=str(profile), prompt_tokens=16, new_tokens=4, baseline=False,
                                   cold_start=False, estimate="always")
    r = validate(art.path, cfg)
    met = r.metrics
    expected = estimate_generation(art, peaks=Peaks(50.0, None, 5.0, 2.0), prompt_tokens=16, new_tokens=4)
    assert met["estimate"]["label"].startswith("UNVERIFIED")
    assert met["decode_tokens_per_s"] == pytest.approx(expected.decode_tokens_per_s)
    assert met["time_to_first_token_ms"] == pytest.approx(expected.time_to_first_token_ms)
    assert met["decode_tokens_per_s_this_host"] > 0  # the host's timing is kept beside it
    budgets = {b.name: b for b in r.budgets}
    dec, ttft = budgets["min_decode_tokens_per_s"], budgets["max_time_to_first_token_ms"]
    assert dec.status == "unverified" and dec.estimated and dec.measured == met["decode_tokens_per_s"]
    assert "misses the limit" in dec.note and "within the limit" in ttft.note
    assert r.verdict != "pass" and any("ESTIMATED" in w for w in r.warnings)


def test_openvino_ir_facts_match_the_checkpoint(tiny, tmp_path):
    """The stateful IR of the tiny model: the MatMuls' static 2-D weights are the checkpoint's parameters; the tied
    embedding table feeds the LM head, so nothing is subtracted as gathered; the cache dims are the manifest's."""
    pytest.importorskip("openvino")
    from compress.stages.export.lm.openvino import export_openvino_lm

    art = export_openvino_lm(tiny, tmp_path / "ir")
    f = model_facts(art.path)
    assert f.parameters == _matmul_params(tied=True)
    assert f.gathered_bytes == 0 and f.weight_bytes == f.file_bytes
    assert f.file_bytes == sum((art.path / n).stat().st_size for n in ("openvino_model.xml", "openvino_model.bin"))
    assert (f.layers, f.kv_heads, f.head_size) == (LAYERS, KV, HEAD)
    assert any("manifest" in s for s in f.source)


def test_the_command_line_prints_the_estimate_and_refuses_bad_input_in_one_line(tiny, tmp_path, capsys):
    import json

    from compress.estimates.generation import main

    assert main([str(tiny), "--profile", "raspberry-pi-5", "--prompt-tokens", "32", "--new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "raspberry-pi-5" in out and "UNVERIFIED" in out and "tokens/s" in out and "TTFT" in out
    assert main([str(tiny), "-p", "raspberry-pi-5", "--json", "--context", "100"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["context"] == 100 and data["profile"] == "raspberry-pi-5" and data["estimated"] is True
    assert main([str(tmp_path / "missing"), "-p", "raspberry-pi-5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "no such" in err[0]
