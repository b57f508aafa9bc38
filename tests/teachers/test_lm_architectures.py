"""The causal LM families beyond Llama and Qwen2 through the export routes: Qwen3 (head_dim apart from hidden / heads,
q/k norms), Gemma 3 (scaled embeddings, sliding-window layers with their own RoPE base, head_dim and query scale of its
own), Phi-3/4 (Phi-4-mini's partial rotary embedding), GPT-2 (``GPT2LMHeadModel``, n_layer/n_head/n_embd, learned
positions, no GQA). Each body is a tiny random one of that family's shape (tests/builders/lm.py) with
stories260K's tokenizer: the checks are agreement with PyTorch and the refusals, not any real model's quality.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import compress  # noqa: F401 - the torchvision shim before transformers
from compress.errors import ConfigError
from compress.stages.export import export
from compress.stages.export.config import ExportConfig
from compress.teachers.kinds import source_kind
from compress.teachers.lm_config import cache_of, is_causal_lm
from tests.builders.lm import needs_genai_builder, tiny_causal_lm

pytestmark = pytest.mark.slow

needs_builder = needs_genai_builder()


def _parity(art) -> dict:
    return art.manifest.steps[-1].metrics["generation_parity"]


# gemma3 at 6 layers: Gemma 3's five sliding-window layers (window 8 < the 32-token parity prompt) and a global one
@needs_builder
@pytest.mark.parametrize(("arch", "layers", "head"), [("qwen3", 1, 32), ("gemma3", 6, 32), ("phi3", 1, 16)])
def test_the_families_export_to_onnx_in_step_with_pytorch(tmp_path, arch, layers, head):
    """Under transformers 5 too: Gemma 3's two RoPE bases reach the builder by transformers 4's names
    (compress.teachers.lm_config.legacy_rope), which a config loaded by 5 no longer has."""
    ckpt = tiny_causal_lm(tmp_path / "ckpt", arch=arch, layers=layers)
    art = export(ckpt, tmp_path / "onnx", ExportConfig(format="onnx"))
    check = _parity(art)
    assert check["same_tokens"] and check["prefill_max_abs_diff"] <= 1e-4, check
    cache = art.manifest.postprocess.cache
    assert (cache.layers, cache.kv_heads, cache.head_size) == (layers, 2, head)


def test_phi4_minis_partial_rotary_takes_the_attention_ort_runs():
    """ORT's CPU GroupQueryAttention wants the rotary part's cos/sin caches a multiple of 8 wide: Phi-4-mini's
    (head 128, 3/4 rotary: 48) are; a head of 16 at 3/4 (6) is not and goes the MultiHeadAttention way."""
    from compress.stages.export.lm.onnx import gqa_kernel_takes

    phi4 = {"hidden_size": 3072, "num_attention_heads": 24, "partial_rotary_factor": 0.75}
    assert gqa_kernel_takes(phi4)
    assert not gqa_kernel_takes(phi4 | {"hidden_size": 384})
    assert not gqa_kernel_takes({"hidden_size": 64, "num_attention_heads": 8})  # stories260K's head of 8


@pytest.mark.parametrize("arch", ["gemma3", "gpt2"])
def test_openvino_takes_gemma3s_sliding_window_and_gpt2(tmp_path, arch):
    pytest.importorskip("openvino")
    ckpt = tiny_causal_lm(tmp_path / "ckpt", arch=arch, layers=1)  # gemma3's one layer: a sliding-window one
    art = export(ckpt, tmp_path / "ov", ExportConfig(format="openvino"))
    check = _parity(art)
    assert check["same_tokens"] and check["prefill_max_abs_diff"] <= 1e-4, check
    assert art.manifest.max_length == 256
    from compress.runtimes.base import load_runtime

    backend = load_runtime(art, "openvino")  # the fused SDPA with its KV cache, a sliding window's mask and all
    assert backend.describe()["attention"]["attention"] == "sdpa_kv_cache"
    backend.close()


def test_gpt2_is_a_causal_lm_with_its_own_dimension_names(tmp_path):
    ckpt = tiny_causal_lm(tmp_path / "gpt2", arch="gpt2", layers=1)
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["architectures"] == ["GPT2LMHeadModel"] and is_causal_lm(cfg) and source_kind(ckpt) == "generation"
    cache = cache_of(cfg)
    assert (cache.layers, cache.kv_heads, cache.head_size, cache.max_length) == (1, 4, 16, 256)
    assert not is_causal_lm({"architectures": ["BertForSequenceClassification"]})


@needs_builder
def test_a_family_the_builder_does_not_take_is_a_one_line_refusal(tmp_path, capsys):
    from compress.cli import main

    ckpt = tiny_causal_lm(tmp_path / "gpt2", arch="gpt2", layers=1)
    with pytest.raises(SystemExit) as e:
        main(["export", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "onnx")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err, err
    assert "does not take GPT2LMHeadModel" in err and "--format openvino" in err
    assert not (tmp_path / "onnx").exists()


@needs_builder
def test_a_gemma3_whose_layer_types_the_builder_would_misplace_is_refused(tmp_path):
    ckpt = tiny_causal_lm(tmp_path / "g", arch="gemma3", layers=2)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["layer_types"] = ["sliding_attention", "full_attention"]  # the builder would make both sliding-window layers
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="five sliding-window layers to one global") as e:
        export(ckpt, tmp_path / "onnx", ExportConfig(format="onnx"))
    assert "--format openvino" in e.value.hint and not (tmp_path / "onnx").exists()


def test_an_architecture_llamas_converter_does_not_know_is_a_one_line_refusal(tmp_path):
    """llama.cpp's converter exits at its architecture switch: a refusal naming the routes that convert from PyTorch,
    not a converter failure."""
    from compress.stages.export.lm.gguf import ENV, llama_cpp_tree

    tree = llama_cpp_tree()
    if tree is None:
        pytest.skip(f"no llama.cpp source tree for the converter: set {ENV}")
    ckpt = tiny_causal_lm(tmp_path / "ckpt", layers=1)
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(cfg | {"architectures": ["NotYetKnownForCausalLM"]}))
    with pytest.raises(ConfigError, match="does not take this architecture .*NotYetKnownForCausalLM") as e:
        export(ckpt, tmp_path / "gguf", ExportConfig.from_flat(format="gguf", llama_cpp=str(tree)))
    assert "--format onnx" in e.value.hint and not (tmp_path / "gguf").exists()


def test_gemma3_converts_to_gguf_in_step_with_pytorch(tmp_path):
    """llama.cpp's Gemma 3 (sliding-window layers with their own RoPE base, scaled embeddings) from the converter's
    sentencepiece tokenizer.model."""
    pytest.importorskip("llama_cpp")
    from compress.stages.export.lm.gguf import ENV, llama_cpp_tree

    tree = llama_cpp_tree()
    if tree is None:
        pytest.skip(f"no llama.cpp source tree for the converter ({ENV})")
    ckpt = tiny_causal_lm(tmp_path / "ckpt", arch="gemma3", layers=1, sentencepiece=True)
    art = export(ckpt, tmp_path / "gguf", ExportConfig.from_flat(format="gguf", llama_cpp=str(tree)))
    check = _parity(art)
    assert check["same_tokens"] and check["prefill_max_abs_diff"] <= check["atol"], check


@pytest.mark.parametrize("fmt", ["onnx", "openvino", "gguf"])
def test_a_checkpoints_own_code_does_not_run_unasked(tmp_path, fmt):
    """config.json's auto_map names a module of the checkpoint: every generator route refuses in one line (exit 2)
    before anything imports it (ONNX Runtime GenAI's builder would run it: it trusts remote code by default)."""
    from tests.builders.cli import assert_one_line_error, edgecompress

    ckpt = tiny_causal_lm(tmp_path / "ckpt", layers=1)
    marker = tmp_path / "it-ran"
    (ckpt / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
                                  "from transformers import LlamaConfig as EvilConfig\n"
                                  "from transformers import LlamaForCausalLM as EvilModel\n")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    proc = edgecompress("export", ckpt, "--format", fmt, "-o", tmp_path / "out")
    assert_one_line_error(proc, "auto_map", "--trust-remote-code")
    assert not marker.exists() and not (tmp_path / "out").exists()
