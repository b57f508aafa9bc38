"""ONNX INT4 weight-only quantization (MatMulNBits) and accuracy-aware mixed precision.

Tiny models only: the conftest BERT (hidden 32, intermediate 64, so ``block_size=32`` divides every K)
exported unfused, and a "sensitive" variant of it with one layer whose quantization is ruinous (a dead
intermediate feature with a huge outgoing weight: invisible in FP32, but it sets the per-channel /
per-block scale of that layer's quantized weights, so the other weights lose their resolution).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import LABELS, SAMPLES_TSV, write_tsv

from compress.artifact import Precision, load_artifact
from compress.errors import AccuracyBudgetError, ConfigError
from compress.stages.export import export
from compress.stages.export.config import ExportConfig
from compress.stages.quantize import quantize
from compress.stages.quantize.config import QuantizeConfig
from tests.builders.cli import assert_one_line_error, in_process

pytestmark = pytest.mark.slow

SENSITIVE_LAYER = "/bert/encoder/layer.1/output/dense/MatMul"


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.endswith((".partial", ".old", ".search")))


def weight_matmuls(model) -> list:
    """MatMul nodes whose B input is a (float) initializer."""
    inits = {t.name for t in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]


def attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def run_all(art, texts):
    from compress.runtimes.ort_backend import OrtBackend

    backend = OrtBackend(art)
    try:
        return backend.predict(backend.encode(texts))
    finally:
        backend.close()


# --- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unfused(bert_classifier, tmp_path_factory):
    """The tiny BERT classifier exported without ONNX Runtime fusions (plain MatMuls)."""
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    return export(bert_classifier, tmp_path_factory.mktemp("int4") / "onnx", ExportConfig(optimize="none"))


@pytest.fixture(scope="module")
def int4_art(unfused, tmp_path_factory):
    return quantize(unfused, tmp_path_factory.mktemp("int4") / "int4", QuantizeConfig.from_flat(precision="int4", block_size=32))


@pytest.fixture(scope="module")
def int8_unfused(unfused, tmp_path_factory):
    return quantize(unfused, tmp_path_factory.mktemp("int4") / "int8", QuantizeConfig())


@pytest.fixture(scope="module")
def sensitive(tmp_path_factory):
    """``(artifact, eval.tsv)``: a tiny classifier with one layer that quantization ruins, and eval rows
    labelled with its own FP32 predictions (FP32 accuracy 1.0), keeping rows with a clear FP32 margin."""
    import torch
    from conftest import _bert_config, _save_model, _save_wordpiece_tokenizer
    from transformers import BertForSequenceClassification, BertTokenizerFast

    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    d = tmp_path_factory.mktemp("sensitive")
    ckpt = d / "ckpt"
    n = _save_wordpiece_tokenizer(ckpt)
    torch.manual_seed(0)
    cfg = _bert_config(n, initializer_range=0.2, num_labels=2, id2label=dict(LABELS),
                       label2id={v: k for k, v in LABELS.items()})
    model = BertForSequenceClassification(cfg).eval()
    texts = [line.partition("\t")[2] for line in SAMPLES_TSV.read_text(encoding="utf-8").splitlines()[1:]]
    with torch.no_grad():
        layer = model.bert.encoder.layer[1]
        layer.intermediate.dense.bias[0] = -30.0  # intermediate feature 0 is never active (GELU(-30) = 0) ...
        layer.output.dense.weight[:, 0] = 50.0  # ... so this weight changes nothing in FP32 but every scale of the layer
        tok = BertTokenizerFast.from_pretrained(str(ckpt))
        logits = model(**tok(texts, padding=True, return_tensors="pt")).logits
        model.classifier.bias[1] -= float((logits[:, 1] - logits[:, 0]).median())  # balanced classes
    _save_model(model, ckpt)
    art = export(ckpt, d / "onnx", ExportConfig(optimize="none", parity_samples=2))
    out = run_all(art, texts)
    margin = np.abs(out[:, 1] - out[:, 0])
    keep = margin > np.quantile(margin, 0.3)
    rows = [(int(p), t) for p, t, k in zip(out.argmax(-1), texts, keep) if k]
    return art, write_tsv(d, rows, "eval.tsv")


# --- INT4 ---------------------------------------------------------------------------------------------


def test_int4_smaller_than_int8_smaller_than_fp32(unfused, int4_art, int8_unfused):
    fp32, int8, int4 = unfused.size_bytes(), int8_unfused.size_bytes(), int4_art.size_bytes()
    # tiny model measured: FP32 ~193 kB, INT8 dynamic ~119 kB, INT4 (+ INT8 embeddings) ~96 kB
    assert int4 < int8 < fp32, (int4, int8, fp32)
    step = int4_art.manifest.steps[-1]
    assert step.metrics["size_bytes_before"] == fp32 and step.metrics["size_bytes_after"] == int4
    assert step.metrics["compression"] == pytest.approx(fp32 / int4, rel=1e-3)
    # the weights that matter: the encoder's MatMul weights go from 4 bytes to ~0.5 byte (+ scales)
    import onnx

    src = onnx.load(str(unfused.model_path))
    inits = {t.name: t for t in src.graph.initializer}
    matmul_fp32 = sum(4 * int(np.prod(inits[n.input[1]].dims)) for n in weight_matmuls(src))
    q = onnx.load(str(int4_art.model_path))
    qinits = {t.name: t for t in q.graph.initializer}
    packed = sum(len(qinits[n.input[1]].raw_data) + 4 * int(np.prod(qinits[n.input[2]].dims))
                 for n in q.graph.node if n.op_type == "MatMulNBits")
    assert packed < matmul_fp32 / 5, (packed, matmul_fp32)
    before, after = step.metrics["initializer_bytes_before"], step.metrics["initializer_bytes_after"]
    assert after.get("float", 0) < before["float"] / 5


def test_int4_graph_has_matmulnbits_with_the_block_size(unfused, int4_art, sample_texts):
    import onnx

    m = int4_art.manifest
    assert (m.precision, m.format) == (Precision.int4, "onnx")
    assert [s.stage for s in m.steps] == ["export", "quantize"]
    model = onnx.load(str(int4_art.model_path))
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == len(weight_matmuls(onnx.load(str(unfused.model_path)))) == 12
    for node in nbits:
        a = attrs(node)
        assert (a["bits"], a["block_size"], a["accuracy_level"]) == (4, 32, 4)
        assert node.domain == "com.microsoft"
    # no encoder MatMul weight left in float; the pooler/classifier Gemms stay float (the INT8 embedding pass
    # of quantize_dynamic rewrites them as <name>_MatMul + Add)
    assert all(n.name.endswith("Gemm_MatMul") for n in weight_matmuls(model)), [n.name for n in weight_matmuls(model)]
    # loads and runs in onnxruntime; agrees with FP32; the manifest says so
    ref, out = run_all(unfused, sample_texts), run_all(int4_art, sample_texts)
    agreement = float((ref.argmax(-1) == out.argmax(-1)).mean())
    step = m.steps[-1]
    parity = step.metrics["parity_vs_input"]
    assert 0.0 <= parity["argmax_agreement"] <= 1.0 and parity["cosine_min"] > 0.9
    assert agreement >= 0.75, agreement
    nodes = step.metrics["nodes"]
    assert len(nodes["quantized"]["MatMul"]) == 12 and nodes["new_op_types"]["MatMulNBits"] == 12
    kept = {k["node"]: k["reason"] for k in nodes["kept_float"]}
    assert "/classifier/Gemm" in kept and "not among the quantized operator types" in kept["/classifier/Gemm"]
    info = step.metrics["int4"]
    assert info["block_size"] == 32 and info["accuracy_level"] == 4 and info["block_padding"] == []
    assert info["embedding_precision"] == "int8"
    assert step.config["precision"] == "int4" and QuantizeConfig.model_validate(step.config)  # replayable


@pytest.mark.parametrize("embedding", ["fp32", "int8", "int4"])
def test_embedding_precision_changes_the_gather(unfused, tmp_path, embedding, int4_art):
    import onnx

    art = int4_art if embedding == "int8" else quantize(
        unfused, tmp_path / "q", QuantizeConfig.from_flat(precision="int4", block_size=32, embedding_precision=embedding))
    model = onnx.load(str(art.model_path))
    inits = {t.name: t for t in model.graph.initializer}
    word = word_gathers(model)
    assert len(word) == 1
    node = word[0]
    table = inits.get(node.input[0])
    if embedding == "fp32":
        assert node.op_type == "Gather" and table.data_type == onnx.TensorProto.FLOAT
        assert "/bert/embeddings/word_embeddings/Gather" in {
            k["node"] for k in art.manifest.steps[-1].metrics["nodes"]["kept_float"]}
    elif embedding == "int8":
        assert node.op_type == "Gather" and table.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
        assert any(n.op_type == "DequantizeLinear" and node.output[0] in n.input for n in model.graph.node)
    else:
        assert_int4_rows(model, node, table, block=32)
        _small_tables_are_int8(model, art.manifest.steps[-1].metrics["int4"]["int8_tables"])
    assert len([n for n in model.graph.node if n.op_type == "MatMulNBits"]) == 12
    run_all(art, ["works exactly as described."])


def word_gathers(model) -> list:
    """The node that reads the word-embedding table (not the nodes of its INT4 unpack, named below it)."""
    prefix = "/bert/embeddings/word_embeddings/Gather"
    return [n for n in model.graph.node if n.name.startswith(prefix) and "/" not in n.name[len(prefix):]
            and n.op_type in ("Gather", "GatherBlockQuantized")]


def assert_int4_rows(model, node, table, block: int) -> None:
    """An INT4 table is read as packed rows (two weights per byte) and unpacked in standard operators: ONNX Runtime's
    GatherBlockQuantized, which costs ~3.7 µs per distinct token on CPU, is gone."""
    import onnx

    assert node.op_type == "Gather" and table.data_type == onnx.TensorProto.UINT8
    hidden = next(t for t in model.graph.initializer if t.name == "bert.embeddings.word_embeddings.weight_scales").dims
    assert table.dims[1] * 2 == hidden[1] * block
    assert not any(n.op_type == "GatherBlockQuantized" for n in model.graph.node)


def _small_tables_are_int8(model, int8_tables):
    """INT4 embeddings: the token-type table (2 rows, under a tenth of the vocabulary's values) is a plain INT8
    Gather, not an INT4 one."""
    import onnx

    assert "/bert/embeddings/token_type_embeddings/Gather" in int8_tables
    inits = {t.name: t for t in model.graph.initializer}
    node = next(n for n in model.graph.node if n.name == "/bert/embeddings/token_type_embeddings/Gather")
    assert node.op_type == "Gather" and inits[node.input[0]].data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    assert "/bert/embeddings/word_embeddings/Gather" not in int8_tables


def test_embedding_int4_is_smallest(unfused, int4_art, tmp_path):
    sizes = {
        e: quantize(unfused, tmp_path / e, QuantizeConfig.from_flat(precision="int4", block_size=32, embedding_precision=e)).size_bytes()
        for e in ("fp32", "int4")
    }
    assert sizes["int4"] < int4_art.size_bytes() < sizes["fp32"], sizes


@pytest.mark.parametrize("embedding", ["fp32", "int4"])
def test_dynamic_int8_with_other_embedding_precision(unfused, int8_unfused, tmp_path, embedding, sample_texts):
    """Dynamic INT8 MatMuls around an FP32 or INT4 table: the table is most of a small
    vocabulary-pruned model, so INT4 embeddings are what fits such a model under a tight size budget."""
    import onnx

    extra = {"block_size": 32} if embedding == "int4" else {}
    art = quantize(unfused, tmp_path / "q", QuantizeConfig.from_flat(embedding_precision=embedding, **extra))
    model = onnx.load(str(art.model_path))
    ops = {n.op_type for n in model.graph.node}
    assert "MatMulInteger" in ops and "MatMulNBits" not in ops
    word = word_gathers(model)
    assert len(word) == 1
    table = {t.name: t for t in model.graph.initializer}[word[0].input[0]]
    info = art.manifest.steps[-1].metrics["embeddings"]
    assert info["precision"] == embedding
    if embedding == "int4":
        assert_int4_rows(model, word[0], table, block=32)
        assert info["block_size"] == 32
        assert art.size_bytes() < int8_unfused.size_bytes()
        _small_tables_are_int8(model, info["int8_tables"])
    else:
        assert word[0].op_type == "Gather" and table.data_type == onnx.TensorProto.FLOAT
        assert art.size_bytes() > int8_unfused.size_bytes()
    out, ref = run_all(art, sample_texts), run_all(unfused, sample_texts)
    assert float((out.argmax(-1) == ref.argmax(-1)).mean()) >= 0.75
    assert int8_unfused.manifest.steps[-1].metrics["embeddings"]["precision"] == "int8"


def test_block_settings_need_int4_somewhere(unfused, tmp_path):
    with pytest.raises(ConfigError, match="--block-size do"):
        quantize(unfused, tmp_path / "q", QuantizeConfig.from_flat(block_size=32))
    with pytest.raises(ConfigError, match="--embedding-precision do"):
        quantize(unfused, tmp_path / "q", QuantizeConfig.from_flat(mode="static", calibration="x.tsv", embedding_precision="int4"))
    assert not (tmp_path / "q").exists()


def test_block_size_not_dividing_k_is_zero_padded(unfused, tmp_path, caplog, sample_texts):
    """K=32 (and 64) with block_size 64 / 128: ONNX Runtime pads K; the layer is still INT4 and runs."""
    import onnx

    with caplog.at_level("WARNING", logger="compress.stages.quantize"):
        art = quantize(unfused, tmp_path / "q64", QuantizeConfig.from_flat(precision="int4", block_size=64))
    assert "zero-pads K" in caplog.text and "still INT4" in caplog.text
    padding = art.manifest.steps[-1].metrics["int4"]["block_padding"]
    assert {p["K"] for p in padding} == {32} and all(p["padded_K"] == 64 and p["padding_bytes"] > 0 for p in padding)
    assert len(padding) == 10  # Q, K, V, attention output, intermediate (K=32) in both layers; output (K=64) divides
    model = onnx.load(str(art.model_path))
    inits = {t.name: t for t in model.graph.initializer}
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 12  # nothing fell back to FP32
    for node in nbits:
        a = attrs(node)
        blob = list(inits[node.input[1]].dims)
        assert blob == [a["N"], 1, 32], (node.name, a, blob)  # one 64-row block (32 bytes) per column, K=32 or 64
    out, ref = run_all(art, sample_texts), run_all(unfused, sample_texts)
    assert float((out.argmax(-1) == ref.argmax(-1)).mean()) >= 0.75


def test_default_export_then_int4_needs_no_re_export(onnx_artifact, tmp_path):
    """The obvious sequence of defaults, `export` then `quantize --precision int4`, must work."""
    assert onnx_artifact.manifest.steps[0].config["optimize"] == "none"
    art = quantize(onnx_artifact, tmp_path / "q", QuantizeConfig.from_flat(precision="int4", block_size=32))
    assert art.precision == "int4" and art.size_bytes() < onnx_artifact.size_bytes()


@pytest.mark.transformers4("transformers 5's attention-mask graph defeats ONNX Runtime's Attention fusion")
def test_int4_refuses_a_fused_o2_graph(bert_classifier, tmp_path):
    fused = export(bert_classifier, tmp_path / "o2", ExportConfig(optimize="O2", parity_samples=2))
    with pytest.raises(ConfigError, match=r"fused ONNX Runtime operators \(2 Attention\).*--optimize none") as e:
        quantize(fused, tmp_path / "q", QuantizeConfig.from_flat(precision="int4", block_size=32))
    assert "INT8 works on this artifact" in str(e.value)
    assert not (tmp_path / "q").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize(("settings", "words"), [
    ({"mode": "static", "calibration": "x.tsv"}, ["--mode static", "onnxruntime", "--precision int8 --mode static"]),
    ({"target_runtime": "openvino"}, ["openvino cannot run", "only onnxruntime can", "--format openvino"]),
    ({"target_runtime": "tensorrt"}, ["tensorrt cannot run", "only onnxruntime can"]),
    ({"op_types": ["Attention"]}, ["cannot be INT4"]),
])
def test_int4_where_the_runtime_cannot_run_it(unfused, tmp_path, settings, words):
    with pytest.raises(ConfigError) as e:
        quantize(unfused, tmp_path / "q", QuantizeConfig.from_flat(precision="int4", **settings))
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert not (tmp_path / "q").exists()


# --- accuracy-aware -----------------------------------------------------------------------------------


def test_eval_helpers(sensitive):
    from compress.runtimes.ort_backend import OrtBackend
    from compress.stages.quantize.eval_set import evaluate_metric, load_eval_set

    art, data = sensitive
    es = load_eval_set(data, art.manifest, 40)
    assert len(es) == 40 and es.classification and es.metric_name == "accuracy"
    assert [len(t) for t in es.dataset.texts] == sorted(len(t) for t in es.dataset.texts)
    backend = OrtBackend(art)
    assert es.set_reference(backend) == 1.0  # labels are the FP32 predictions
    assert evaluate_metric(backend, es) == 1.0
    backend.close()


def test_accuracy_aware_needs_data(unfused, tmp_path):
    with pytest.raises(ConfigError, match="needs labelled eval data.*--data"):
        quantize(unfused, tmp_path / "q", QuantizeConfig.from_flat(max_drop=0.01))
    assert not (tmp_path / "q").exists()


def test_accuracy_aware_with_room_excludes_nothing(sensitive, tmp_path):
    art, data = sensitive
    q = quantize(art, tmp_path / "q", QuantizeConfig.from_flat(precision="int4", block_size=32, max_drop=0.9, data=str(data),
                                                      eval_samples=50))
    aa = q.manifest.steps[-1].metrics["accuracy_aware"]
    assert aa["budget_met"] and aa["excluded"] == [] and aa["kept_fp32"] == []
    assert aa["baseline"] == 1.0 and aa["metric"] == "accuracy" and aa["eval_samples"] == 50
    assert len(aa["candidates"]) == 1 and aa["candidates"][0]["phase"] == "all quantized"
    assert aa["final"]["metric_of_written_model"] == aa["final"]["metric"]
    assert len([n for n in q.manifest.steps[-1].metrics["nodes"]["quantized"]["MatMul"]]) == 12


def test_the_layer_table_orders_the_search(sensitive, tmp_path):
    """By default the per-layer error table orders the float fallbacks: the layer quantization ruins adds the most
    error itself, goes first, and the budget holds with fewer candidates than ranking by leave-one-out."""
    art, data = sensitive
    q = quantize(art, tmp_path / "q", QuantizeConfig.from_flat(max_drop=0.0, data=str(data), eval_samples=200))
    aa = q.manifest.steps[-1].metrics["accuracy_aware"]
    assert aa["strategy"].startswith("per-layer error table")
    assert aa["budget_met"] and [k["node"] for k in aa["kept_fp32"]] == [SENSITIVE_LAYER]
    assert aa["costliest"][0] == next(iter(aa["layer_own_snr_db"])) == SENSITIVE_LAYER
    own = aa["layer_own_snr_db"]
    assert own[SENSITIVE_LAYER] + 10 < min(v for n, v in own.items() if n != SENSITIVE_LAYER)
    assert "own SNR" in aa["kept_fp32"][0]["reason"] and aa["kept_fp32"][0]["own_snr_db"] == own[SENSITIVE_LAYER]
    phases = [c["phase"] for c in aa["candidates"]]  # all quantized, all eligible float, then a bisection
    assert phases[0] == "all quantized" and set(phases[1:]) == {"bisect"} and len(phases) <= 2 + 4, phases
    assert aa["final"]["metric_of_written_model"] == 1.0


def test_accuracy_aware_keeps_the_sensitive_layer_in_fp32(sensitive, tmp_path):
    art, data = sensitive
    out = tmp_path / "q"
    q = quantize(art, out, QuantizeConfig.from_flat(max_drop=0.0, data=str(data), eval_samples=200, rank_by="leave-one-out"))
    step = q.manifest.steps[-1]
    aa = step.metrics["accuracy_aware"]
    full = aa["candidates"][0]
    assert full["phase"] == "all quantized" and full["drop"] > 0, full  # quantizing everything costs accuracy
    assert aa["budget_met"] and SENSITIVE_LAYER in aa["excluded"]
    assert aa["final"]["drop"] <= 0.0 and aa["final"]["metric_of_written_model"] == aa["final"]["metric"] == 1.0
    kept = {k["node"]: k for k in aa["kept_fp32"]}
    assert kept[SENSITIVE_LAYER]["sensitivity"] > 0.05
    assert kept[SENSITIVE_LAYER]["reason"].startswith("kept FP32: costs ")
    assert aa["costliest"][0] == SENSITIVE_LAYER
    assert aa["layer_sensitivity"][SENSITIVE_LAYER]["cost"] > 0.05
    assert len(aa["candidates"]) >= 3 and all("excluded" in c and "metric" in c and "drop" in c for c in aa["candidates"])
    # the written graph really keeps that MatMul in float, and everything else is quantized
    nodes = step.metrics["nodes"]
    reasons = {k["node"]: k["reason"] for k in nodes["kept_float"]}
    assert reasons[SENSITIVE_LAYER].startswith("accuracy-aware")
    assert SENSITIVE_LAYER not in nodes["quantized"]["MatMul"]
    load_artifact(out)  # verifies
    assert leftovers(tmp_path) == [] and not (tmp_path / "q.best-candidate").exists()


@pytest.mark.parametrize("rank_by", [None, "leave-one-out"])
def test_unreachable_budget_writes_the_best_candidate_and_diagnoses(rank_by, sensitive, tmp_path):
    """max_drop 0 needs the sensitive layer in FP32, but it holds more than 3% of the quantizable weights. Ordered by
    the per-layer table (the default), the layers that fit the limit miss the budget, so the search measures them
    by leave-one-out as well before it gives up."""
    art, data = sensitive
    out = tmp_path / "q"
    with pytest.raises(AccuracyBudgetError) as e:
        quantize(art, out, QuantizeConfig.from_flat(max_drop=0.0, max_fp32_fraction=0.03, data=str(data), eval_samples=200,
                                          rank_by=rank_by))
    err = e.value
    msg = str(err)
    assert err.exit_code == 1
    assert "best reachable accuracy" in msg and "retention" in msg and "costliest layers" in msg
    assert err.costliest[0] == SENSITIVE_LAYER and len(err.costliest) == 3
    assert SENSITIVE_LAYER in msg.split("costliest layers:")[1]
    assert err.best < 1.0 and err.allowed_min == 1.0 and err.baseline == 1.0
    assert not out.exists()
    best = tmp_path / "q.best-candidate"
    assert err.best_candidate == str(best) and str(best) in msg
    cand = load_artifact(best)  # complete and verified
    assert cand.precision is Precision.int8
    aa = cand.manifest.steps[-1].metrics["accuracy_aware"]
    assert aa["budget_met"] is False and "does NOT meet the budget" in aa["note"]
    assert aa["final"]["metric"] == pytest.approx(err.best, abs=1e-6)
    report = json.loads((best / "accuracy_report.json").read_text())
    assert report["status"].startswith("failed") and report["costliest"][0] == SENSITIVE_LAYER
    assert ("missed within the float-share limit, then leave-one" in report["strategy"]) == (rank_by is None)
    assert report["candidates"] and report["requested_output"] == str(out)
    run_all(cand, ["not worth the money."])
    assert leftovers(tmp_path) == []


def test_embedding_model_metric_is_cosine_to_fp32(bert_encoder, tmp_path):
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    art = export(bert_encoder, tmp_path / "onnx", ExportConfig(optimize="none", parity_samples=2))
    data = write_tsv(tmp_path, [("", t) for t in [line.partition("\t")[2] for line in
                                                  SAMPLES_TSV.read_text(encoding="utf-8").splitlines()[1:30]]])
    q = quantize(art, tmp_path / "q", QuantizeConfig.from_flat(min_retention=0.5, data=str(data), eval_samples=20))
    aa = q.manifest.steps[-1].metrics["accuracy_aware"]
    assert aa["metric"] == "cosine_to_fp32" and aa["baseline"] == 1.0
    assert aa["budget"]["min_metric"] == 0.5 and aa["budget_met"] and 0.5 < aa["final"]["metric"] <= 1.0 + 1e-9


# --- CLI ----------------------------------------------------------------------------------------------


def test_cli_quantize_int4(unfused, tmp_path, capfd):
    out = tmp_path / "x"
    proc = in_process(capfd, "quantize", unfused.path, "--precision", "int4", "--block-size", "32", "--out", out)
    assert proc.returncode == 0, proc.stderr
    art = load_artifact(out)
    assert art.precision is Precision.int4 and art.manifest.steps[-1].config["int4"]["block_size"] == 32
    assert "int4" in proc.stdout and "smaller" in proc.stdout


def test_cli_max_drop_without_data(unfused, tmp_path, capfd):
    proc = in_process(capfd, "quantize", unfused.path, "--max-drop", "0.01", "--out", tmp_path / "x")
    assert_one_line_error(proc, "--data")
    assert not (tmp_path / "x").exists()


def test_cli_rank_by_without_a_budget(unfused, tmp_path, capsys):
    from compress.cli import main

    with pytest.raises(SystemExit) as e:
        main(["quantize", str(unfused.path), "--rank-by", "leave-one-out", "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--rank-by orders accuracy-aware" in err[0] and "--max-drop" in err[0]
    assert not (tmp_path / "x").exists()


def test_cli_int4_for_a_profile_whose_runtime_cannot_run_it(onnx_artifact, tmp_path, capfd):
    proc = in_process(capfd, "quantize", onnx_artifact.path, "--precision", "int4", "--profile", "intel-cpu-openvino",
                      "--out", tmp_path / "q")
    assert_one_line_error(proc, "onnxruntime")
    assert not (tmp_path / "q").exists()

