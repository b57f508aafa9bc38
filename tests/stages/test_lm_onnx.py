"""The ONNX Runtime route for causal LMs: export through ONNX Runtime GenAI's builder (KV cache as past_key_values),
weight-only INT4/INT8 through MatMulNBits. Tiny random-weight Llamas from tests/builders are test material: they
check plumbing and agreement with PyTorch, not any real model's quality."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from compress.errors import ConfigError, OutputExistsError, StageError
from tests.builders.lm import needs_genai_builder, tiny_causal_lm

pytestmark = [needs_genai_builder(), pytest.mark.slow]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny Llama (head size 16: GroupQueryAttention) and its FP32 ONNX artifact."""
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    root = tmp_path_factory.mktemp("lm")
    ckpt = tiny_causal_lm(root / "ckpt")
    return ckpt, export(ckpt, root / "fp32", ExportConfig(format="onnx"))


def test_export_writes_the_builder_graph_with_its_cache_checked_against_pytorch(exported):
    ckpt, art = exported
    m = art.manifest
    assert (str(m.task), str(m.format), str(m.precision)) == ("text-generation", "onnx", "fp32")
    assert {"model.onnx", "model.onnx.data", "genai_config.json", "generation_config.json", "tokenizer.json"} <= set(m.files)
    cache = m.postprocess.cache
    assert (cache.layers, cache.kv_heads, cache.head_size, cache.layout) == (2, 2, 16, "past_key_values")
    names = [t.name for t in m.inputs]
    assert names[:2] == ["input_ids", "attention_mask"] and "past_key_values.1.value" in names
    assert [t.name for t in m.outputs][0] == "logits" and "present.0.key" in [t.name for t in m.outputs]
    check = m.steps[-1].metrics["generation_parity"]
    assert check["same_tokens"] and check["decode_steps"] == 8
    assert check["prefill_max_abs_diff"] <= 1e-4 and check["decode_max_abs_diff"] <= 1e-3
    assert json.loads((art.path / "genai_config.json").read_text())["model"]["decoder"]["inputs"]["past_key_names"] \
        == "past_key_values.%d.key"


def test_the_ort_backend_decodes_through_the_cache_as_one_long_prefill_does(exported):
    from compress.runtimes.base import load_runtime

    _, art = exported
    backend = load_runtime(art, "onnxruntime")
    ids = np.asarray([[1, 403, 407, 261, 378, 432, 383, 286]], dtype=np.int64)
    whole, _ = backend.prefill({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    out, state = backend.prefill({"input_ids": ids[:, :5], "attention_mask": np.ones((1, 5), np.int64)})
    for t in range(5, 8):
        out, state = backend.step({"input_ids": ids[:, t:t + 1], "attention_mask": np.ones((1, t + 1), np.int64)}, state)
        np.testing.assert_allclose(out["logits"][0, -1], whole["logits"][0, t], atol=1e-4)
    assert state["past_key_values.0.key"].shape == (1, 2, 8, 16)


def test_a_head_size_ort_gqa_cannot_take_exports_with_multihead_attention(tmp_path):
    """... and the export says its phases, the builder's decoder layers counted (issue 76: minutes at 1.7B with no
    count before; the builder's own lines are dropped)."""
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    heard: list[dict] = []
    ckpt = tiny_causal_lm(tmp_path / "ckpt", layers=3, heads=8, kv_heads=4)  # head size 8, as stories260K's
    art = export(ckpt, tmp_path / "fp32", ExportConfig(format="onnx"), progress=heard.append)
    phases = list(dict.fromkeys(d["phase"] for d in heard))
    assert phases == ["the builder loads the checkpoint", "the builder makes the decoder layers",
                      "the builder saves the graph and its weights", "cutting the RoPE tables to 256 positions",
                      "checking the graph against PyTorch (a prompt and 8 decode steps)"], phases
    layers = [d for d in heard if d["phase"] == "the builder makes the decoder layers"]
    assert layers[0]["total"] == 3 and [d["done"] for d in layers[1:]] == [1, 2, 3]
    assert "MultiHeadAttention" in art.manifest.steps[-1].config["builder"]["attention"]
    assert "position_ids" in [t.name for t in art.manifest.inputs]
    assert art.manifest.steps[-1].metrics["generation_parity"]["same_tokens"]


@pytest.mark.parametrize("precision", ["int4", "int8"])
def test_quantize_is_weight_only_with_head_and_embeddings_at_8_bits(exported, tmp_path, precision):
    import onnx

    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    _, art = exported
    uniform = {"int4_algorithm": "hqq"} if precision == "int4" else {}  # one algorithm for every MatMul
    q = quantize(art.path, tmp_path / precision, QuantizeConfig.from_flat(precision=precision, **uniform))
    assert str(q.manifest.precision) == precision and str(q.manifest.task) == "text-generation"
    m = q.manifest.steps[-1].metrics
    bits = 4 if precision == "int4" else 8
    assert set(m["weights"]["bits"].values()) == {bits} and m["weights"]["lm_head"]["bits"] == 8
    # the tied table is written once: the embedding reads the 8-bit head's rows (and scales)
    assert m["weights"]["embeddings"] == {"node": m["weights"]["embeddings"]["node"], "bits": 8, "untied": True,
                                          "shared_with_lm_head": True}
    assert m["size_bytes_after"] < m["size_bytes_before"]
    graph = onnx.load(str(q.path / "model.onnx"), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    assert "MatMul" not in ops or all(n.input[1] not in {i.name for i in graph.initializer}
                                      for n in graph.node if n.op_type == "MatMul")
    assert ops.count("MatMulNBits") == 2 * 5 + 1  # per layer: the fused qkv, o, gate, up, down; and the head
    g = m["generation_vs_input"]
    assert g["collapsed"] is None and g["prompt_top1_agreement"] > (0.9 if bits == 8 else 0.5)
    assert "genai_config.json" in q.manifest.files


def test_hqq_int4_is_folded_into_the_fast_kernel_with_fp16_scales(exported, tmp_path):
    """HQQ INT4 (blocks of 32, the generators' block, not the image default of 128): no MatMulNBits keeps HQQ's
    float zero points (ONNX Runtime's slow path), every scale is FP16 (the head's read through a Cast, its compute
    FP32), and the tied embedding has no table of its own."""
    import onnx
    from onnx import TensorProto

    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    _, art = exported
    q = quantize(art.path, tmp_path / "int4", QuantizeConfig.from_flat(precision="int4", int4_algorithm="hqq"))
    step = q.manifest.steps[-1]
    assert (step.config["int4"]["algorithm"], step.config["int4"]["block_size"]) == ("hqq", 32)
    weights = step.config["weights"]
    assert weights["scales"] == "float16" and weights["zero_points_folded"] == 2 * 5
    model = onnx.load(str(q.path / "model.onnx"))
    inits = {t.name: t for t in model.graph.initializer}
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert all(len(n.input) < 4 or not n.input[3] or inits[n.input[3]].data_type == TensorProto.UINT8 for n in nbits)
    body = [n for n in nbits if "lm_head" not in n.name]
    assert {inits[n.input[2]].data_type for n in body} == {TensorProto.FLOAT16}
    head = next(n for n in nbits if "lm_head" in n.name)
    cast = next(n for n in model.graph.node if n.output[0] == head.input[2])  # FP16 in the file, FP32 compute
    assert cast.op_type == "Cast" and inits[cast.input[0]].data_type == TensorProto.FLOAT16
    assert "model.embed_tokens.weight" not in inits and "model.embed_tokens.weight_int8" not in inits


def test_the_default_int4_decides_each_matmul_by_measurement_and_records_why(exported, tmp_path):
    """quantize's generator INT4 default (``auto``): each body MatMul's candidate (4-bit RTN, 4-bit HQQ or 8 bits)
    chosen by the measured plan, written as the plan says (each MatMulNBits' bits), the budget search and each
    matrix's errors in the step, the RoPE tables in FP16, the artifact runs and its own check holds."""
    import onnx
    from onnx import TensorProto, helper

    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    _, art = exported
    events = []
    q = quantize(art.path, tmp_path / "int4", QuantizeConfig.from_flat(precision="int4"), progress=events.append)
    step = q.manifest.steps[-1]
    assert step.config["int4"]["algorithm"] == "auto"
    mix = step.metrics["int4_mix"]
    assert sum(mix["counts"].values()) == len(mix["matrices"]) == 2 * 5  # qkv, o, gate, up, down in 2 layers
    assert mix["tried"] and mix["tried"][0]["budget_bytes"] == mix["q4_k_m_bytes"]  # it starts at Q4_K_M's bytes
    assert mix["held"] == mix["tried"][-1]["held"] or any(t["held"] for t in mix["tried"])
    for row in mix["matrices"].values():
        assert set(row["output_error"]) == {"int4-rtn", "int4-hqq", "int8"}
        assert row["output_error"]["int8"] < min(row["output_error"]["int4-rtn"], row["output_error"]["int4-hqq"])
    graph = onnx.load(str(q.path / "model.onnx"), load_external_data=False).graph
    bits = {n.name.rsplit("_Q", 1)[0]: helper.get_attribute_value(next(a for a in n.attribute if a.name == "bits"))
            for n in graph.node if n.op_type == "MatMulNBits"}
    for name, row in mix["matrices"].items():
        assert bits[name] == (8 if row["chose"] == "int8" else 4)
    assert step.metrics["weights"]["bits"] == {n: bits[n] for n in mix["matrices"]}
    rope = [t for t in graph.initializer if t.name.startswith(("cos_cache", "sin_cache"))]
    assert rope and all(t.data_type == TensorProto.FLOAT16 for t in rope)
    assert any(e.get("phase", "").startswith("INT4 mix") and e.get("done") == 10 for e in events)
    assert any("on the built-in text" in e.get("note", "") for e in events)
    assert step.metrics["generation_vs_input"]["collapsed"] is None
    from click.testing import CliRunner

    from compress.cli import cli

    shown = " ".join(CliRunner().invoke(cli, ["inspect", str(q.path)], catch_exceptions=False).output.split())
    assert "what takes the bytes" in shown and "RoPE tables" in shown and "dense (MatMul/Gemm)" in shown


def test_max_context_cuts_the_rope_tables_and_the_recorded_context(exported, tmp_path):
    """``export --max-context``: the RoPE tables hold that many positions, genai_config.json and the manifest say
    so, the graph still matches PyTorch (the parity check), and a perplexity window longer than it is refused."""
    import onnx

    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.quantize.lm.common import text_windows

    ckpt, full = exported
    art = export(ckpt, tmp_path / "fp32", ExportConfig.from_flat(format="onnx", max_context=64))
    graph = onnx.load(str(art.path / "model.onnx"), load_external_data=False).graph
    rope = [t for t in graph.initializer if t.name.startswith(("cos_cache", "sin_cache"))]
    assert rope and {t.dims[0] for t in rope} == {64}
    assert json.loads((art.path / "genai_config.json").read_text())["model"]["context_length"] == 64
    assert art.manifest.postprocess.cache.max_length == 64 and art.manifest.postprocess.window <= 64
    assert art.manifest.steps[-1].config["builder"]["context"]["model_context"] == \
        full.manifest.steps[-1].config["builder"]["context"]["model_context"]
    assert art.manifest.steps[-1].metrics["generation_parity"]["same_tokens"]
    # the data file written again a tensor at a time: every other weight as the full export has it, byte for byte
    from onnx import numpy_helper

    cut, whole = (onnx.load(str(a.path / "model.onnx")).graph.initializer for a in (art, full))
    whole = {t.name: numpy_helper.to_array(t) for t in whole}
    for t in cut:
        a = numpy_helper.to_array(t)
        assert np.array_equal(a, whole[t.name][:64] if t.name.startswith(("cos_cache", "sin_cache")) else whole[t.name])
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat. " * 200)
    with pytest.raises(ConfigError, match="longer than the model's context"):
        text_windows(art, str(text), 128, 2, "--data")


def test_max_context_is_refused_where_nothing_reads_it(exported, tmp_path):
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    ckpt, _ = exported
    with pytest.raises(ConfigError, match="--max-context applies to --format onnx"):
        export(ckpt, tmp_path / "ov", ExportConfig.from_flat(format="openvino", max_context=64))
    assert not (tmp_path / "ov").exists()


def _one_matmul(k: int = 64, n: int = 48, seed: int = 0):
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).normal(0, 0.1, (k, n)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "one",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, n])],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), w


def _run(model, x):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_folding_hqqs_zero_points_out_keeps_the_same_product():
    """(q - z)·s = (q - 8)·s + (8 - z)·s: the node with the default zero point plus each block's input sum times the
    offsets gives HQQ's own product (its float zero points, ONNX Runtime's slow path), in FP32 and with FP16 scales."""
    import copy

    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer

    from compress.stages.quantize.lm.matmul_nbits_graph import fold_zero_points, half_scales

    model, w = _one_matmul()
    q = MatMulNBitsQuantizer(model, block_size=32, algo_config=HQQWeightOnlyQuantConfig(block_size=32))
    q.process()
    hqq = q.model.model
    x = np.random.default_rng(1).normal(0, 1, (1, 3, 64)).astype(np.float32)
    ref = _run(hqq, x)
    folded = copy.deepcopy(hqq)
    assert fold_zero_points(folded, offsets_fp16=False) == 1
    assert len(next(n for n in folded.graph.node if n.op_type == "MatMulNBits").input) == 3  # no zero points left
    np.testing.assert_allclose(_run(folded, x), ref, rtol=1e-4, atol=1e-4)
    half = copy.deepcopy(hqq)
    assert fold_zero_points(half) == 1 and half_scales(half) == 1
    np.testing.assert_allclose(_run(half, x), ref, rtol=2e-2, atol=2e-2)
    assert np.abs(ref - x @ w).max() < 0.2  # and it is a 4-bit product of the weights


def test_untie_gives_the_embedding_its_own_table(exported):
    import onnx
    from onnx import numpy_helper

    from compress.stages.quantize.lm.matmul_nbits_graph import embedding_gather, lm_head, untie_embeddings

    _, art = exported
    model = onnx.load(str(art.path / "model.onnx"))
    assert embedding_gather(model) is None  # tied: the Gather reads the transposed head weight
    name = untie_embeddings(model)
    assert name == embedding_gather(model)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    head = next(n for n in model.graph.node if n.name == lm_head(model))
    np.testing.assert_array_equal(inits["model.embed_tokens.weight"], inits[head.input[1]].T)


def test_refusals_are_one_line(exported, tmp_path):
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    _, art = exported
    with pytest.raises(ConfigError, match="awq and scale_estimation are OpenVINO"):
        quantize(art.path, tmp_path / "a", QuantizeConfig.from_flat(precision="int4", int4_algorithm="awq"))
    with pytest.raises(ConfigError, match="calibrates GPTQ only"):
        quantize(art.path, tmp_path / "b", QuantizeConfig.from_flat(precision="int4", calibration="x.txt"))
    with pytest.raises(ConfigError, match="would be ignored"):
        quantize(art.path, tmp_path / "c", QuantizeConfig.from_flat(precision="int8", mode="static"))
    with pytest.raises(ConfigError, match="it would be ignored"):
        quantize(art.path, tmp_path / "e", QuantizeConfig.from_flat(precision="int4", data="story.txt"))
    for algorithm in ({}, {"int4_algorithm": "hqq"}):  # asymmetric by construction, or chosen per matrix
        with pytest.raises(ConfigError, match="--symmetric does not apply"):
            quantize(art.path, tmp_path / "f", QuantizeConfig.from_flat(precision="int4", symmetric=True, **algorithm))
    (tmp_path / "d").mkdir()
    with pytest.raises(OutputExistsError):
        quantize(art.path, tmp_path / "d", QuantizeConfig.from_flat(precision="int4"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "f").exists()


def test_a_collapse_fails_with_strict_and_writes_nothing(exported, tmp_path, monkeypatch):
    import compress.tasks.generation as generation
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    _, art = exported
    monkeypatch.setattr(generation, "collapse", lambda tokens, kl_mean=None: "all one token")
    with pytest.raises(StageError, match="collapsed: all one token"):
        quantize(art.path, tmp_path / "s", QuantizeConfig.from_flat(precision="int4", strict=True))
    assert not (tmp_path / "s").exists()
    q = quantize(art.path, tmp_path / "w", QuantizeConfig.from_flat(precision="int4"))  # without --strict: recorded
    assert q.manifest.steps[-1].metrics["generation_vs_input"]["collapsed"] == "all one token"


def test_a_model_that_moved_without_collapsing_is_a_warning_naming_the_fix(exported, tmp_path, monkeypatch, caplog):
    """quantize's own check saw continuations agree for 29% and a prompt KL of 0.10 (Gemma 3's HQQ INT4 before the
    per-model default): not a collapse, but not silence either: a warning line naming what to try, in the step too."""
    import compress.stages.quantize.lm.onnx as lm
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    _, art = exported
    real = lm.collapse_check
    monkeypatch.setattr(lm, "collapse_check", lambda ref, cand: real(ref, cand) | {
        "continuation_agreement": 0.29, "prompt_kl_mean": 0.10, "collapsed": None})
    with caplog.at_level("WARNING"):
        q = quantize(art.path, tmp_path / "w", QuantizeConfig.from_flat(precision="int4", int4_algorithm="hqq"))
    said = q.manifest.steps[-1].metrics["warning"]
    assert "agree with the input's for 29%" in said and "prompt KL 0.100" in said
    assert "--max-perplexity-increase" in said and "--precision int8" in said
    assert said in caplog.text
    monkeypatch.setattr(lm, "collapse_check", real)
    q = quantize(art.path, tmp_path / "quiet", QuantizeConfig.from_flat(precision="int8"))
    assert "warning" not in q.manifest.steps[-1].metrics


def test_accuracy_aware_int4_searches_the_measured_mix_and_holds_the_budget(exported, tmp_path):
    """``--max-perplexity-increase`` with ``--data``: the default's measurement, its budget judged by perplexity on
    the text (from Q4_K_M's bytes up), the choice written and measured again, a counted progress phase."""
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from tests.builders.lm import STORY

    _, art = exported
    text = tmp_path / "story.txt"
    text.write_text(STORY * 12)
    events = []
    q = quantize(art.path, tmp_path / "aa", QuantizeConfig.from_flat(
        precision="int4", max_perplexity_increase=0.01, data=str(text)), progress=events.append)
    rec = q.manifest.steps[-1].metrics["accuracy_aware"]
    assert len(rec["matrices"]) == 10  # every body MatMul measured
    assert rec["held"] and rec["written"][-1]["increase"] <= 0.01  # the written model's own figure
    assert rec["tried"][0]["budget_bytes"] == rec["q4_k_m_bytes"] and rec["windows"] >= 1
    assert all(t["held"] == (t["increase"] <= 0.01) for t in rec["tried"])
    bits = q.manifest.steps[-1].metrics["weights"]["bits"]
    assert {n for n, b in bits.items() if b == 8} == set(rec["at_8_bits"])
    checks = [e for e in events if e.get("phase") == "accuracy-aware INT4: checks" and "done" in e]
    assert checks and checks[-1]["done"] <= checks[-1]["total"]  # a fraction and an ETA to show
    assert any("accuracy-aware INT4: written" in e.get("note", "") for e in events)


def test_accuracy_aware_int4_without_text_judges_on_text_the_model_samples_itself(exported, tmp_path):
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.stages.quantize.lm.onnx import SELF_WRITTEN_WINDOWS, self_written_windows

    _, art = exported
    post = art.manifest.postprocess
    a = self_written_windows(art, 3, 24, seed=0)
    assert a.shape == (3, 24) and (a[:, 0] == post.bos_token_id).all()
    assert (a == self_written_windows(art, 3, 24, seed=0)).all()  # seeded: the same text every run
    assert (a != self_written_windows(art, 3, 24, seed=1)).any() and len(set(a[:, 1:].ravel())) > 5  # sampled
    q = quantize(art.path, tmp_path / "aa", QuantizeConfig.from_flat(precision="int4", max_perplexity_increase=0.05))
    rec = q.manifest.steps[-1].metrics["accuracy_aware"]
    assert rec["text"].startswith("self-written") and rec["windows"] == SELF_WRITTEN_WINDOWS
    assert rec["held"] and rec["written"][-1]["increase"] <= 0.05


def test_the_cli_refuses_in_one_line_and_an_int4_generator_is_not_quantized_again(exported, tmp_path, capsys):
    from compress.cli import main

    _, art = exported

    def run(*args) -> tuple[int, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main(["quantize", *map(str, args)])
        out, err = capsys.readouterr()
        return e.value.code, " ".join((out + err).split())  # the console wraps long lines

    code, text = run(art.path, "--precision", "int4", "--int4-algorithm", "awq", "-o", tmp_path / "a")
    assert code == 2 and "awq and scale_estimation are OpenVINO" in text and "Traceback" not in text
    code, text = run(art.path, "--precision", "int4", "-o", tmp_path / "q")
    assert code in (0, None), text
    assert "int4 weight-only" in text and "greedy continuations equal" in text
    code, text = run(tmp_path / "q", "--precision", "int4", "-o", tmp_path / "qq")
    assert code == 2 and "already onnx int4" in text


def test_quantizing_a_batch_at_a_time_from_the_data_file_writes_what_the_whole_model_did(exported, monkeypatch):
    """weight_only reads the FP32 graph alone and its weights a batch of MatMuls at a time from the data file
    (onnx_weights): the nodes and bytes are those the loaded model gives in one batch a group."""
    import copy

    import onnx
    from onnx import numpy_helper

    from compress.stages.quantize.lm import onnx_weights
    from compress.stages.quantize.lm.onnx import weight_only

    _, art = exported
    src = art.path / art.manifest.model_file
    onnx.save(onnx.load(str(src)), str(src.parent / "ext.onnx"), save_as_external_data=True,
              location="ext.onnx.data", size_threshold=0)
    whole = onnx.load(str(src))
    mix = {n.name: ("int4-hqq" if i % 2 else "int4-rtn") for i, n in enumerate(whole.graph.node)
           if n.op_type == "MatMul" and "layers" in n.name}
    kw = {"bits": 4, "block": 32, "fp16_scales": True, "accuracy_level": 4, "mix": mix}
    old = onnx_weights._batches
    cuts = []
    monkeypatch.setattr(onnx_weights, "_batches", lambda m, names: cuts.extend(old(m, names)) or old(m, names))
    monkeypatch.setattr(onnx_weights, "BATCH_BYTES", 2**40)  # the loaded model: one small model per group
    a, made_a = weight_only(copy.deepcopy(whole), **kw)
    assert len(cuts) == 3  # the head, the RTN and the HQQ matrices
    cuts.clear()
    monkeypatch.setattr(onnx_weights, "BATCH_BYTES", 1)  # from the data file: one per MatMul
    graph_only = onnx.load(str(src.parent / "ext.onnx"), load_external_data=False)
    b, made_b = weight_only(graph_only, source_dir=src.parent, **kw)
    assert made_a == made_b and {len(c) for c in cuts} == {1} and len(cuts) == len(mix) + 1
    assert [(n.op_type, list(n.input), list(n.output)) for n in a.graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in b.graph.node]
    arrays = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    assert {t.name for t in b.graph.initializer} == set(arrays)
    for t in b.graph.initializer:
        assert np.array_equal(numpy_helper.to_array(t), arrays[t.name]), t.name
