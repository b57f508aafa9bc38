"""Tiny causal language models for fast tests: a Hugging Face ``LlamaForCausalLM`` (or Qwen2) folder with random
weights, grouped-query attention and tied embeddings, saved with a real tokenizer.

The tokenizer is stories260K's (a 512-token sentencepiece vocabulary with byte fallback, as ``tokenizer.json``), kept
in ``tests/assets/stories260K`` (MIT, from llama2.c), so the tiny model's vocabulary is 512 and a fresh clone needs
nothing beside it. Random weights are test material: they say nothing of any real model's quality. Text is real: the
TinyStories sample in ``../shared/data`` (:data:`TINYSTORIES`; tests that read it, or the real stories260K of
:data:`STORIES`, skip without ``../shared``: ``tests/builders/shared.py``), or :data:`STORY` where a test needs only
a few sentences.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.builders.shared import SHARED

#: stories260K's small files in the repository: its tokenizer (the tiny models' tokenizer) and its config.json
STORIES_ASSETS = Path(__file__).resolve().parents[1] / "assets" / "stories260K"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
#: the same tokenizer as a sentencepiece model (llama.cpp's converters for Gemma and Phi read ``tokenizer.model``)
SENTENCEPIECE = STORIES_ASSETS / "tok512.model"
#: the real stories260K, weights and all, as a Hugging Face folder (``../shared``: mark its tests ``needs_shared``)
STORIES = SHARED / "models" / "stories260K" / "hf"
#: the first 500 stories of TinyStories' validation split, stories260K's own domain (``../shared`` too)
TINYSTORIES = SHARED / "data" / "tinystories" / "valid-first500.txt"

#: a few sentences of the kind stories260K was trained on (written for these tests)
STORY = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
         "One day, she saw a big red ball under a tree. She ran to the ball and picked it up. "
         "Her mom smiled and said, \"Let us play together.\" They played until the sun went down. ")


#: ``arch`` -> (config class, model class) in transformers
ARCHS = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
         "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"), "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
         "phi3": ("Phi3Config", "Phi3ForCausalLM"), "gpt2": ("GPT2Config", "GPT2LMHeadModel")}
#: what makes each family's tiny body that family's shape (beyond the common dimensions): Qwen3's head_dim apart from
#: hidden / heads (and its q/k norms, built in); Gemma 3's head_dim and query scale, its sliding-window layers (five in
#: six: give ``layers=6`` for a global one too) with their two RoPE bases (a window shorter than the parity prompt, so
#: that it matters); Phi-4-mini's partial rotary embedding (RoPE on 3/4 of each head)
FAMILY = {
    "qwen3": {"head_dim": 32},
    "gemma3": {"head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": 8, "rope_local_base_freq": 10000.0,
               "rope_theta": 1000000.0},
    "phi3": {"partial_rotary_factor": 0.75, "original_max_position_embeddings": 256, "pad_token_id": 0},
}


def tiny_causal_lm(out: Path, *, arch: str = "llama", layers: int = 2, hidden: int = 64, heads: int = 4,
                   kv_heads: int = 2, intermediate: int = 128, context: int = 256, seed: int = 0,
                   tied: bool = True, sentencepiece: bool = False) -> Path:
    """Write a random ``…ForCausalLM`` checkpoint (``arch``: a key of :data:`ARCHS`) with stories260K's tokenizer to
    ``out`` and return ``out``. Deterministic for a ``seed``. ``sentencepiece``: also its ``tokenizer.model``."""
    import torch
    import transformers

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(vocab_size=512, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=context,
                  tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, rms_norm_eps=1e-5)
    if arch not in ARCHS:
        raise ValueError(f"tiny_causal_lm: arch {arch!r} is one of {', '.join(ARCHS)}")
    config_cls, cls = (getattr(transformers, n) for n in ARCHS[arch])
    if arch == "gpt2":  # GPT-2 names its dimensions its own way; no GQA, learned positions, LayerNorm
        config = config_cls(vocab_size=512, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=context,
                            n_ctx=context, n_inner=intermediate, tie_word_embeddings=tied, bos_token_id=1,
                            eos_token_id=2)
    else:
        config = config_cls(**common, **FAMILY.get(arch, {}))
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():  # larger-than-init weights so that logits are not flat (a flat model agrees with anything)
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.08)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copy(STORIES_ASSETS / name, out / name)
    if sentencepiece:
        shutil.copy(SENTENCEPIECE, out / "tokenizer.model")
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}) + "\n")
    return out


def genai_builder_missing() -> str | None:
    """Why ONNX Runtime GenAI's builder (the ONNX route of a causal LM) cannot run here, or None when it can: it
    imports transformers' classes, and an environment where it does not import skips that route's tests."""
    try:
        import compress  # noqa: F401 - the torchvision shim before transformers
        from compress.stages.export.lm.onnx import _attention

        with _attention(True):
            return None
    except Exception as e:  # noqa: BLE001 - any import failure means the same: no builder here
        return f"onnxruntime-genai's builder does not import here ({type(e).__name__}: {e})"


def needs_genai_builder():
    """A skip marker for a test (or, as ``pytestmark``, a module) that exports through the GenAI builder."""
    import pytest

    reason = genai_builder_missing()
    return pytest.mark.skipif(reason is not None, reason=reason or "")
