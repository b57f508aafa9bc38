"""The ExecuTorch route for causal LMs: export to a ``.pte`` lowered to XNNPACK with the KV cache in the program's
mutable buffers (transformers' static-cache wrapper, ExecuTorch's custom SDPA), INT4/INT8 through torchao (8da4w /
8da8w) re-lowered from the teacher, the runtime's prefill/step and validate. A tiny random-weight Llama from
tests/builders is test material: it checks plumbing and agreement with PyTorch, not any real model's quality.

Each lowering takes seconds (tens on a loaded 2-core machine), so the module exports one 1-layer model once and
quantizes it once."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("executorch", reason="ExecuTorch is not installed (pip install executorch torchao)")
pytest.importorskip("torchao", reason="torchao is not installed (pip install torchao)")

from compress.errors import ConfigError, OutputExistsError
from tests.builders.lm import STORY, tiny_causal_lm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A tiny 1-layer Llama (head size 16, GQA 4/2, tied embeddings, a pad token), its FP32 program and its INT4
    program."""
    import json

    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    root = tmp_path_factory.mktemp("lm-et")
    ckpt = tiny_causal_lm(root / "ckpt", layers=1)
    # a pad token as real configs name one (SmolLM2's pad_token_id is its EOS, 2): the embedding then has a padding_idx,
    # which once left torchao's 8-bit table out of ExecuTorch's quant fusion ("Missing out variants")
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(config | {"pad_token_id": 2}))
    fp32 = export(ckpt, root / "fp32", ExportConfig(format="executorch"))
    int4 = quantize(fp32.path, root / "int4", QuantizeConfig.from_flat(precision="int4"))
    text = root / "story.txt"
    text.write_text("\n\n".join([STORY] * 4), encoding="utf-8")
    return {"root": root, "ckpt": ckpt, "fp32": fp32, "int4": int4, "text": text}


def test_export_writes_a_program_with_its_cache_checked_against_pytorch(lm):
    m = lm["fp32"].manifest
    assert (str(m.task), str(m.format), str(m.precision)) == ("text-generation", "executorch", "fp32")
    assert {"model.pte", "tokenizer.json", "generation_config.json", "config.json"} <= set(m.files)
    cache = m.postprocess.cache
    assert (cache.layers, cache.kv_heads, cache.head_size, cache.dtype) == (1, 2, 16, "float32")
    assert (cache.layout, cache.max_length) == ("stateful", 256)  # the tiny model's context
    assert cache.prefill == cache.decode == ["input_ids", "cache_position"]
    assert [t.name for t in m.inputs] == ["input_ids", "cache_position"] and m.outputs[0].shape == [1, "sequence", 512]
    step = m.steps[-1]
    check = step.metrics["generation_parity"]
    assert check["same_tokens"] and check["decode_steps"] == 8
    assert check["prefill_max_abs_diff"] <= 1e-4 and check["decode_max_abs_diff"] <= 1e-4
    low = step.config["lowering"]
    assert low["delegate_calls"] >= 1 and low["quantized_weights"] == {}
    assert {"key_cache_0", "value_cache_0"} <= set(low["mutable_buffers"])  # the KV cache lives in the program
    assert "custom_sdpa" in low["attention"]


def test_the_backend_decodes_through_the_cache_as_one_long_prefill_does(lm):
    from compress.runtimes.base import load_runtime

    backend = load_runtime(lm["fp32"], "executorch")
    assert backend.stateful
    ids = np.asarray([[1, 403, 407, 261, 378, 432, 383, 286]], dtype=np.int64)
    whole, _ = backend.prefill({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    out, state = backend.prefill({"input_ids": ids[:, :5], "attention_mask": np.ones((1, 5), np.int64)})
    for t in range(5, 8):
        if t == 6:  # another generation uses the program's cache in between: the state still gives the right logits
            backend.prefill({"input_ids": ids[:, 3:], "attention_mask": np.ones((1, 5), np.int64)})
        out, state = backend.step({"input_ids": ids[:, t:t + 1], "attention_mask": np.ones((1, t + 1), np.int64)},
                                  state)
        np.testing.assert_allclose(out["logits"][0, -1], whole["logits"][0, t], atol=1e-4)
    assert len(state) == 8
    with pytest.raises(ConfigError, match="exceed the ExecuTorch program's KV cache of 256"):
        backend.prefill({"input_ids": np.ones((1, 300), np.int64)})
    backend.close()


def test_int4_is_8da4w_in_groups_of_32_smaller_and_still_generates(lm):
    q, fp32 = lm["int4"], lm["fp32"]
    assert (str(q.manifest.precision), q.manifest.postprocess.cache.layout) == ("int4", "stateful")
    step = q.manifest.steps[-1]
    tao = step.config["torchao"]
    assert (tao["scheme"], tao["group_size"], tao["lm_head_bits"], tao["embeddings_bits"]) == ("8da4w", 32, 8, 8)
    # read from the lowered graph's weights: the 7 linear layers of the one decoder layer at int4 in groups of 32,
    # the (untied) LM head and the embedding table at int8 per row
    assert step.metrics["weights"] == {"int4 group 32": 7, "int8 per channel": 2}
    m = step.metrics
    assert m["size_bytes_after"] < 0.45 * m["size_bytes_before"]
    assert (q.path / "model.pte").stat().st_size == m["size_bytes_after"] < (fp32.path / "model.pte").stat().st_size
    g = m["generation_vs_input"]
    assert g["collapsed"] is None and g["prompt_top1_agreement"] > 0.5
    assert q.manifest.steps[0].metrics["generation_parity"]["same_tokens"]  # the FP32 export's step travels


def test_validate_runs_the_decode_loop_on_the_int4_program(lm):
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    profile = lm["root"] / "et.yaml"
    profile.write_text(yaml.safe_dump({
        "name": "et-test", "description": "test profile", "hardware": {"arch": "x86_64", "cores": 2, "simd": [],
                                                                      "memory_mb": 4096},
        "runtime": {"name": "executorch", "threads": 1},
        "measure": {"warmup": 1, "min_runs": 1, "min_duration_s": 0.0, "max_runs": 10000},
        "budgets": {"min_speedup": None, "min_decode_tokens_per_s": 1.0}}), encoding="utf-8")
    r = validate(lm["int4"].path, ValidateConfig.from_flat(
        profile=str(profile), data=str(lm["text"]), teacher=str(lm["ckpt"]), prompt_tokens=16, new_tokens=8,
        window=32, baseline=False, cold_start=False))
    gen = r.metrics["generation"]
    assert r.environment["runtime"]["runtime"] == "executorch"
    assert gen["decode_tokens_per_s"] > 1 and gen["prefill_tokens_per_s"] > 0
    assert gen["window"] == 32 and gen["windows"] >= 3 and gen["perplexity"] > 1 and gen["top1_agreement"] > 0.5
    with pytest.raises(ConfigError, match="longer than the model's context"):
        validate(lm["int4"].path, ValidateConfig.from_flat(profile=str(profile), data=str(lm["text"]), window=512,
                                                            baseline=False, cold_start=False))


def test_refusals_are_one_line_and_write_nothing(lm, tmp_path):
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    fp32 = lm["fp32"].path
    with pytest.raises(ConfigError, match="round to nearest"):
        quantize(fp32, tmp_path / "a", QuantizeConfig.from_flat(precision="int4", int4_algorithm="hqq"))
    with pytest.raises(ConfigError, match="symmetric"):
        quantize(fp32, tmp_path / "b", QuantizeConfig.from_flat(precision="int4", symmetric=False))
    with pytest.raises(ConfigError, match="would be ignored"):
        quantize(fp32, tmp_path / "c", QuantizeConfig.from_flat(precision="int4", calibration="x.txt"))
    with pytest.raises(ConfigError, match="already int4"):
        quantize(lm["int4"].path, tmp_path / "d", QuantizeConfig.from_flat(precision="int4"))
    with pytest.raises(ConfigError, match="exported FP32"):
        export(lm["ckpt"], tmp_path / "e", ExportConfig(format="executorch", precision="int8"))
    (tmp_path / "f").mkdir()
    with pytest.raises(OutputExistsError):
        quantize(fp32, tmp_path / "f", QuantizeConfig.from_flat(precision="int4"))
    assert not any((tmp_path / n).exists() for n in "abcde")


def test_quantize_refuses_a_program_whose_teacher_changed(lm, tmp_path):
    import shutil

    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    moved = tmp_path / "fp32"
    shutil.copytree(lm["fp32"].path, moved)
    manifest = moved / "manifest.json"
    manifest.write_text(manifest.read_text().replace(str(lm["ckpt"].resolve()), str(tmp_path / "gone")))
    with pytest.raises(ConfigError, match="is not on this machine"):
        quantize(moved, tmp_path / "q", QuantizeConfig.from_flat(precision="int4"))
    assert not (tmp_path / "q").exists()


def test_int4_takes_8_bits_where_a_layer_input_is_not_a_multiple_of_the_group(tmp_path):
    """stories260K's FFN reads 172 features: torchao's INT4 groups of 32 cannot tile it (an AssertionError before).
    Those layers take 8 bits per channel, named in the record; the rest stay INT4."""
    import torch

    from compress.stages.export.lm.executorch import load_lm, torchao_quantize

    ckpt = tiny_causal_lm(tmp_path / "ckpt", layers=1, intermediate=40)
    model = load_lm(ckpt)
    record = torchao_quantize(model, 4, 32, 8, 8)
    assert record["at_8_bits_indivisible"] == ["model.layers.0.mlp.down_proj"]
    with torch.no_grad():
        out = model(torch.tensor([[1, 5, 9, 30]])).logits
    assert torch.isfinite(out).all()
