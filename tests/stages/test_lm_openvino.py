"""The OpenVINO route for causal LMs: export to a stateful IR (convert_model + make_stateful: the KV cache in the
InferRequest's variables), weight-only INT4/INT8 through nncf.compress_weights. Tiny random-weight Llamas/Qwen2s from
tests/builders are test material: they check plumbing and agreement with PyTorch, not any real model's quality."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytest.importorskip("torch")

import compress  # noqa: F401 - the torchvision shim before transformers
from compress.errors import ConfigError, OutputExistsError, StageError
from tests.builders.lm import tiny_causal_lm

pytestmark = pytest.mark.slow


def attention_of(art) -> dict:
    """:func:`~compress.runtimes.openvino_backend.attention_path` of the artifact compiled by the backend."""
    from compress.runtimes.base import load_runtime
    from compress.runtimes.openvino_backend import attention_path

    backend = load_runtime(art, "openvino")
    try:
        return attention_path(backend.compiled)
    finally:
        backend.close()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny Llama and its FP32 stateful OpenVINO artifact (through the export verb's generator dispatch)."""
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    root = tmp_path_factory.mktemp("ovlm")
    ckpt = tiny_causal_lm(root / "ckpt")
    return ckpt, export(ckpt, root / "fp32", ExportConfig(format="openvino"))


def test_export_writes_a_stateful_ir_checked_against_pytorch(exported):
    import openvino as ov

    ckpt, art = exported
    m = art.manifest
    assert (str(m.task), str(m.format), str(m.precision)) == ("text-generation", "openvino", "fp32")
    assert {"openvino_model.xml", "openvino_model.bin", "generation_config.json", "tokenizer.json",
            "openvino_tokenizer.xml", "openvino_detokenizer.xml"} <= set(m.files)  # what OpenVINO GenAI opens
    cache = m.postprocess.cache
    assert (cache.layers, cache.kv_heads, cache.head_size, cache.layout) == (2, 2, 16, "stateful")
    assert (m.postprocess.bos_token_id, m.postprocess.eos_token_id) == (1, 2)
    assert [t.name for t in m.inputs] == ["input_ids", "attention_mask", "position_ids", "beam_idx"]
    assert [t.name for t in m.outputs] == ["logits"]
    model = ov.Core().read_model(str(art.model_path))
    assert len(model.get_sinks()) == 4  # one Assign (a cache variable) per layer's key and value
    # each variable is read through Gather(beam_idx): the CPU plugin's stateful SDPA fusion needs that pattern
    reads = [op for op in model.get_ops() if op.get_type_name() == "ReadValue"]
    users = [u.get_node() for op in reads for u in op.output(0).get_target_inputs()]
    assert len(users) == 4 and all(u.get_type_name() == "Gather" for u in users)
    assert all(u.input_value(1).get_node().get_friendly_name() == "beam_idx" for u in users)
    check = m.steps[-1].metrics["generation_parity"]
    assert check["same_tokens"] and check["decode_steps"] == 8
    assert check["prefill_max_abs_diff"] <= 1e-4 and check["decode_max_abs_diff"] <= 1e-3


def test_prefill_then_steps_equal_one_long_prefill_and_prefill_resets_the_cache(exported):
    from compress.runtimes.base import load_runtime

    _, art = exported
    backend = load_runtime(art, "openvino")
    assert backend.stateful
    ids = np.asarray([[1, 403, 407, 261, 378, 432, 383, 286]], dtype=np.int64)
    whole, _ = backend.prefill({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    whole = whole["logits"].copy()
    assert whole.shape == (1, 8, 512)
    for _ in range(2):  # the second time proves prefill starts from an empty cache again
        out, state = backend.prefill({"input_ids": ids[:, :5], "attention_mask": np.ones((1, 5), np.int64)})
        np.testing.assert_allclose(out["logits"][0], whole[0, :5], atol=1e-4)
        for t in range(5, 8):
            out, state = backend.step({"input_ids": ids[:, t:t + 1],
                                       "attention_mask": np.ones((1, t + 1), np.int64)}, state)
            np.testing.assert_allclose(out["logits"][0, -1], whole[0, t], atol=1e-4)


def test_the_cpu_plugin_fuses_the_cache_into_the_attention(exported):
    """The compiled IR runs the CPU plugin's ScaledDotProductAttentionWithKVCache (one per layer: it reads and writes
    the cache variables itself) rather than MatMul + Softmax with a Concat per step; an FP32 artifact's cache is f32."""
    from compress.runtimes.base import load_runtime

    _, art = exported
    backend = load_runtime(art, "openvino")
    try:
        d = backend.describe()
    finally:
        backend.close()
    assert d["attention"] == {"attention": "sdpa_kv_cache", "sdpa_nodes": 2, "sdpa_with_kv_cache": 2,
                              "softmax_nodes": 0, "kv_cache_precision": "f32"}
    assert d["properties"]["KV_CACHE_PRECISION"] == "f32"


def test_an_export_that_misses_atol_writes_nothing(exported, tmp_path):
    from compress.errors import ParityError
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    ckpt, _ = exported
    with pytest.raises(ParityError, match="OpenVINO IR differs from PyTorch"):
        export(ckpt, tmp_path / "strict", ExportConfig(format="openvino", atol=1e-12))
    assert not (tmp_path / "strict").exists()


def test_a_qwen2_with_head_size_8_exports_too(tmp_path):
    from compress.stages.export.lm.openvino import export_openvino_lm

    ckpt = tiny_causal_lm(tmp_path / "ckpt", arch="qwen2", layers=1, heads=8, kv_heads=4, tied=False)
    art = export_openvino_lm(ckpt, tmp_path / "fp32")
    assert art.manifest.postprocess.cache.head_size == 8
    assert art.manifest.steps[-1].metrics["generation_parity"]["same_tokens"]
    assert attention_of(art)["attention"] == "sdpa_kv_cache"


@pytest.mark.parametrize("precision", ["int4", "int8"])
def test_quantize_is_weight_only_with_head_and_embeddings_at_8_bits(exported, tmp_path, precision):
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    _, art = exported
    hqq = {"int4_algorithm": "hqq"} if precision == "int4" else {}  # one algorithm for every MatMul (not the default)
    q = quantize(art.path, tmp_path / precision, QuantizeConfig.from_flat(precision=precision, **hqq))
    assert str(q.manifest.precision) == precision and str(q.manifest.task) == "text-generation"
    assert q.manifest.postprocess.cache.layout == "stateful"
    m = q.manifest.steps[-1].metrics
    w = m["weights"]
    assert (w["lm_head"], w["embeddings"]) == ("u8", "u8")  # NNCF's backup mode INT8_ASYM, read back from the IR
    assert w["matmul_and_gather_weights"].get("u4" if precision == "int4" else "u8", 0) >= 14
    assert "f32" not in w["matmul_and_gather_weights"]
    assert m["size_bytes_after"] < 0.6 * m["size_bytes_before"]
    nncf = q.manifest.steps[-1].config["nncf"]
    assert nncf["mode"] == ("int4_asym" if precision == "int4" else "int8_asym")
    # HQQ: NNCF's asymmetric groups with HQQ's values, a float (FP16) zero point per group
    assert precision == "int8" or (nncf["algorithm"], nncf["hqq_groups"], nncf["zero_points"]) == ("hqq", 14, "float16")
    assert q.manifest.steps[-1].config["int4"]["algorithm"] == ("hqq" if precision == "int4" else "rtn")
    assert precision == "int8" or (nncf["group_size"], nncf["backup_mode"]) == (32, "int8_asym")
    # the NNCF-compressed IR keeps the fused attention; its cache takes the plugin's default (u8 on x86)
    path = attention_of(q)
    assert path["attention"] == "sdpa_kv_cache" and path["sdpa_with_kv_cache"] == 2
    g = m["generation_vs_input"]
    assert g["collapsed"] is None and g["prompt_top1_agreement"] > (0.9 if precision == "int8" else 0.5)
    assert {"tokenizer.json", "generation_config.json"} <= set(q.manifest.files)


def test_data_aware_awq_and_all_layers_at_4_bits(exported, tmp_path):
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from tests.builders.lm import STORY

    _, art = exported
    text = tmp_path / "calib.txt"
    text.write_text(STORY * 20)
    q = quantize(art.path, tmp_path / "awq", QuantizeConfig.from_flat(
        precision="int4", int4_algorithm="awq", calibration=str(text), embeddings_bits=4, lm_head_bits=4))
    nncf = q.manifest.steps[-1].config["nncf"]
    assert nncf["awq"] and nncf["scale_estimation"] and nncf["all_layers"] and nncf["calibration_windows"] >= 2
    w = q.manifest.steps[-1].metrics["weights"]
    assert (w["lm_head"], w["embeddings"]) == ("i4", "i4")


def test_gptq_runs_on_the_stateful_ir(exported, tmp_path):
    """NNCF's GPTQ cuts stateless subgraphs out of the IR: the cache variables need an initial value (export gives
    them zeros with no positions)."""
    import openvino as ov

    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from tests.builders.lm import STORY

    _, art = exported
    model = ov.Core().read_model(str(art.model_path))
    assert all(op.get_input_size() == 1 for op in model.get_ops() if op.get_type_name() == "ReadValue")
    text = tmp_path / "calib.txt"
    text.write_text(STORY * 20)
    q = quantize(art.path, tmp_path / "gptq", QuantizeConfig.from_flat(
        precision="int4", int4_algorithm="gptq", calibration=str(text), calibration_samples=4))
    assert q.manifest.steps[-1].config["nncf"]["gptq"]
    assert q.manifest.steps[-1].metrics["weights"]["matmul_and_gather_weights"]["i4"] == 14


def test_refusals_are_one_line(exported, tmp_path):
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    _, art = exported
    with pytest.raises(ConfigError, match="k_quant is ONNX Runtime"):
        quantize(art.path, tmp_path / "a", QuantizeConfig.from_flat(precision="int4", int4_algorithm="k_quant"))
    with pytest.raises(ConfigError, match="data-aware algorithms only"):
        quantize(art.path, tmp_path / "b", QuantizeConfig.from_flat(precision="int4", calibration="x.txt"))
    with pytest.raises(ConfigError, match="both at 8"):
        quantize(art.path, tmp_path / "c", QuantizeConfig.from_flat(precision="int4", embeddings_bits=32))
    with pytest.raises(ConfigError, match="would be ignored"):
        quantize(art.path, tmp_path / "e", QuantizeConfig.from_flat(precision="int8", mode="static"))
    (tmp_path / "d").mkdir()
    with pytest.raises(OutputExistsError):
        quantize(art.path, tmp_path / "d", QuantizeConfig.from_flat(precision="int4"))
    assert not any((tmp_path / n).exists() for n in "abce")


def test_a_collapse_fails_with_strict_and_writes_nothing(exported, tmp_path, monkeypatch):
    import compress.tasks.generation as generation
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    _, art = exported
    monkeypatch.setattr(generation, "collapse", lambda tokens, kl_mean=None: "all one token")
    with pytest.raises(StageError, match="collapsed: all one token"):
        quantize(art.path, tmp_path / "s", QuantizeConfig.from_flat(precision="int4", strict=True))
    assert not (tmp_path / "s").exists()


def test_cli_export_and_quantize(tmp_path, capsys):
    from click.testing import CliRunner

    from compress.cli import cli as app

    ckpt = tiny_causal_lm(tmp_path / "ckpt", layers=1)
    runner = CliRunner()
    r = runner.invoke(app, ["export", str(ckpt), "--format", "openvino", "--out", str(tmp_path / "fp32")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["quantize", str(tmp_path / "fp32"), "--precision", "int4", "--out", str(tmp_path / "q")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "q" / "openvino_model.xml").is_file()
    r = runner.invoke(app, ["inspect", str(tmp_path / "q")])  # how an app runs it, said where the user looks
    assert r.exit_code == 0 and "runs in openvino_genai.LLMPipeline(DIR, 'CPU')" in " ".join(r.output.split()), r.output
    from compress.cli import main

    with pytest.raises(SystemExit) as e:  # the console entry point: a one-line error, exit 2
        main(["quantize", str(tmp_path / "fp32"), "--precision", "int4", "--int4-algorithm", "k_quant",
              "--out", str(tmp_path / "k")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and "k_quant" in err and not (tmp_path / "k").exists()
