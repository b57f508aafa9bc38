"""Real small LMs' configs through every export route, under whichever transformers major runs the tests (CI runs this
module under 4 and 5): SmolLM2-135M (RoPE base 100,000), Qwen3-0.6B (1,000,000, head_dim apart from hidden / heads),
Llama-3.2-1B (500,000 with llama3 frequency scaling) and Gemma 3 270M (two RoPE bases, sliding windows) as random
bodies with their published values (tests/builders/lm_families.py). What is checked is agreement with PyTorch and
how a config either major wrote is read, not any real model's quality. Then the RoPE forms of the two majors, read
by one normalisation (compress.teachers.lm_config), and a checkpoint transformers 5 wrote, read by the running one.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import compress  # noqa: F401 - the torchvision shim before transformers
from compress.stages.export import export
from compress.stages.export.config import ExportConfig
from compress.tasks.generation import portable_tokenizer_config
from compress.teachers.lm_config import legacy_rope, portable_config, rope_of
from tests.builders.lm import genai_builder_missing, tiny_causal_lm
from tests.builders.lm_families import REAL, real_config_lm

pytestmark = pytest.mark.slow


def _route_missing(route: str) -> str | None:
    import importlib.util

    if route == "onnx":
        return genai_builder_missing()
    if route == "openvino":
        return None if importlib.util.find_spec("openvino") else "openvino is not installed"
    if route == "executorch":
        return None if importlib.util.find_spec("executorch") else "executorch is not installed (its CI job has it)"
    from compress.stages.export.lm.gguf import ENV, llama_cpp_tree

    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed"
    return None if llama_cpp_tree() else f"no llama.cpp source tree for the converter ({ENV})"


@pytest.mark.parametrize("route", ["onnx", "openvino", "gguf", "executorch"])
@pytest.mark.parametrize("family", list(REAL))
def test_a_real_config_exports_in_step_with_pytorch(tmp_path, family, route):
    why = _route_missing(route)
    if why:
        pytest.skip(why)
    if route == "gguf" and family == "qwen3-0.6b":
        pytest.skip("llama.cpp's converter knows Qwen's BPE tokenizer by its hash; the test tokenizer is not Qwen's")
    # ExecuTorch reads Gemma 3's layer kinds from the config and lowers each layer for seconds: one layer of each
    # (measured on a shared 2-core machine: 114 -> 46 s of CPU, 174 -> 85 s of wall time). The other routes keep
    # the six: ONNX Runtime GenAI's builder and llama.cpp need its five-to-one pattern, and OpenVINO would save 2 s
    ckpt = real_config_lm(tmp_path / "ckpt", family, each_kind=route == "executorch")
    art = export(ckpt, tmp_path / route, ExportConfig(format=route))
    check = art.manifest.steps[-1].metrics["generation_parity"]
    assert check["same_tokens"], check
    assert check["prefill_max_abs_diff"] <= check.get("atol", 1e-3), check
    cache = art.manifest.postprocess.cache
    assert cache.head_size == REAL[family][1]["head_dim"]


def test_the_builder_would_have_built_base_10000_without_the_normalisation(tmp_path):
    """The failure this guards: SmolLM2's base 100,000 read as the builder's default 10,000 (prefill logits 5.7 apart
    on the real model). The builder's record names the base it was given."""
    if genai_builder_missing():
        pytest.skip(genai_builder_missing())
    ckpt = real_config_lm(tmp_path / "ckpt", "smollm2-135m")
    art = export(ckpt, tmp_path / "onnx", ExportConfig(format="onnx"))
    built = art.manifest.steps[-1].config["builder"]
    assert built["rope"]["rope_theta"] == 100000.0


# -- the two majors' RoPE forms --------------------------------------------------------------------------------------

V4_LLAMA3 = {"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                      "high_freq_factor": 4.0,
                                                      "original_max_position_embeddings": 8192}}
V5_LLAMA3 = {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
V4_GEMMA3 = {"rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "rope_scaling": None}
V5_GEMMA3 = {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                 "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}


@pytest.mark.parametrize(("v4", "v5"), [({"rope_theta": 100000.0}, {"rope_parameters": {"rope_type": "default",
                                                                                         "rope_theta": 100000.0}}),
                                        (V4_LLAMA3, V5_LLAMA3), (V4_GEMMA3, V5_GEMMA3)])
def test_either_majors_rope_reads_the_same(v4, v5):
    assert rope_of(v4) == rope_of(v5)
    assert legacy_rope(v5) == {"rope_scaling": None, **v4}
    both = portable_config(v5)
    assert both["rope_parameters"] == v5["rope_parameters"] and legacy_rope(both) == legacy_rope(v5)


def test_a_config_without_a_rope_base_keeps_the_models_default():
    assert legacy_rope({"model_type": "gpt2"}) == {} and portable_config({"n_layer": 2}) == {"n_layer": 2}


def test_a_tokenizer_config_transformers_5_wrote_reads_in_4():
    v5 = {"tokenizer_class": "TokenizersBackend", "extra_special_tokens": ["<|im_start|>", "<|im_end|>"],
          "bos_token": "<s>"}
    both = portable_tokenizer_config(v5)
    assert both["tokenizer_class"] == "PreTrainedTokenizerFast" and "extra_special_tokens" not in both
    assert both["additional_special_tokens"] == ["<|im_start|>", "<|im_end|>"] and both["bos_token"] == "<s>"


def test_a_checkpoint_transformers_5_wrote_is_read_with_its_rope_base(tmp_path):
    """A config with ``rope_parameters`` only and a ``TokenizersBackend`` tokenizer (transformers 5's files): the
    teacher loader reads RoPE base 100,000 and the tokenizer under either major (transformers 4 read base 10,000 and
    refused the tokenizer class)."""
    from compress.teachers.load import load_teacher

    ckpt = tiny_causal_lm(tmp_path / "ckpt", layers=1)
    cfg = json.loads((ckpt / "config.json").read_text())
    for key in ("rope_theta", "rope_scaling"):
        cfg.pop(key, None)
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 100000.0}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    tok = json.loads((ckpt / "tokenizer_config.json").read_text())
    (ckpt / "tokenizer_config.json").write_text(json.dumps(tok | {"tokenizer_class": "TokenizersBackend",
                                                                  "extra_special_tokens": []}))
    teacher = load_teacher(ckpt, "text-generation")
    inv_freq = teacher.model.model.rotary_emb.inv_freq
    head = teacher.model.config.hidden_size // teacher.model.config.num_attention_heads
    assert float(inv_freq[1]) == pytest.approx(100000.0 ** (-2 / head), rel=1e-5)
    assert teacher.tokenizer("Once upon a time")["input_ids"][0] == 1  # BOS, from its own tokenizer.json
