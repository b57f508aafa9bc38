"""Real small LMs' configs, at test size: the values in each model's published ``config.json`` that decide how a route
builds it (RoPE base and scaling, head size, the query/KV head ratio, tied embeddings, the norm's epsilon, sliding
windows, the context) kept as they are, only the depth, width and vocabulary cut so that a random body of it exports in
seconds. A default hid a broken route once (transformers 5 moved ``rope_theta`` into ``rope_parameters`` and ONNX
Runtime GenAI's builder then built RoPE base 10,000 for SmolLM2's 100,000), so these bodies carry the real values and
:func:`real_config_lm` writes the config as the running transformers major saves it (``rope_parameters`` under 5,
``rope_theta`` under 4).

An intermediate size equal to the vocabulary (512) is avoided: ONNX Runtime GenAI 0.12's builder then builds a
graph 5 logits away from PyTorch (seen on Llama bodies of any head count), a shape no real model has.

Random weights are test material: they say nothing of the real models' quality. The tokenizer is the tiny models'
(:func:`tests.builders.lm.tiny_causal_lm`: a 512-token vocabulary), so ``vocab_size`` is 512 and the special
token ids are its BOS/EOS.
"""

from __future__ import annotations

from pathlib import Path

#: family -> (arch key of tests.builders.lm.ARCHS, the published values kept, test-size dimensions)
REAL = {
    # HuggingFaceTB/SmolLM2-135M(-Instruct): Llama, 9 query / 3 KV heads of 64, RoPE base 100,000, tied
    "smollm2-135m": ("llama", {"rope_theta": 100000.0, "head_dim": 64, "max_position_embeddings": 8192,
                               "rms_norm_eps": 1e-5, "tie_word_embeddings": True},
                     {"heads": 3, "kv_heads": 1, "hidden": 192, "intermediate": 768}),
    # Qwen/Qwen3-0.6B: 16 query / 8 KV heads of 128 (apart from hidden / heads), q/k norms, base 1,000,000, tied
    "qwen3-0.6b": ("qwen3", {"rope_theta": 1000000.0, "head_dim": 128, "max_position_embeddings": 40960,
                             "rms_norm_eps": 1e-6, "tie_word_embeddings": True},
                   {"heads": 2, "kv_heads": 1, "hidden": 128, "intermediate": 384}),
    # meta-llama/Llama-3.2-1B: 32 query / 8 KV heads of 64, base 500,000 with llama3 frequency scaling (factor 32
    # over the original 8,192 positions), tied
    "llama-3.2-1b": ("llama", {"rope_theta": 500000.0, "head_dim": 64, "max_position_embeddings": 131072,
                               "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
                               "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
                     {"heads": 4, "kv_heads": 1, "hidden": 128, "intermediate": 768}),
    # google/gemma-3-270m: 4 query / 1 KV head of 256, global layers base 1,000,000, sliding-window (512) layers base
    # 10,000, five local to one global, query scale 256, tied
    "gemma-3-270m": ("gemma3", {"rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "head_dim": 256,
                                "query_pre_attn_scalar": 256, "sliding_window": 512, "max_position_embeddings": 32768,
                                "rms_norm_eps": 1e-6, "tie_word_embeddings": True},
                     {"heads": 4, "kv_heads": 1, "hidden": 128, "intermediate": 256, "layers": 6}),
}

#: a family whose layers come in kinds -> one layer of each kind, named in ``layer_types``: the shortest body that
#: still has both RoPE bases and both attentions, for a route that reads the kinds from the config (ExecuTorch's
#: static cache does; its lowering costs ~15 s a layer of this body on a loaded 2-core machine). ONNX Runtime GenAI's
#: builder and llama.cpp place Gemma 3's windows by its five-to-one pattern, not by the config: they take the six
EACH_KIND = {"gemma-3-270m": ["sliding_attention", "full_attention"]}


def real_config_lm(out: Path, family: str, *, layers: int = 1, seed: int = 0, each_kind: bool = False) -> Path:
    """Write a random checkpoint of ``family`` (a key of :data:`REAL`) at test size to ``out``: its published RoPE,
    head, norm and context values, saved by the running transformers; the tiny models' tokenizer. ``each_kind``: a
    family of :data:`EACH_KIND` gets one layer of each kind instead of its published pattern. Returns ``out``."""
    import torch
    import transformers

    from tests.builders.lm import ARCHS, tiny_causal_lm

    arch, kept, dims = REAL[family]
    layers = dims.get("layers", layers)
    if each_kind and family in EACH_KIND:
        kept, layers = {**kept, "layer_types": EACH_KIND[family]}, len(EACH_KIND[family])
    tiny_causal_lm(out, arch=arch, layers=1, hidden=32, heads=2, kv_heads=1, intermediate=32,  # its tokenizer files
                   sentencepiece=arch == "gemma3")  # (llama.cpp's Gemma converter reads tokenizer.model)
    config_cls, cls = (getattr(transformers, n) for n in ARCHS[arch])
    config = config_cls(vocab_size=512, hidden_size=dims["hidden"], intermediate_size=dims["intermediate"],
                        num_hidden_layers=layers, num_attention_heads=dims["heads"],
                        num_key_value_heads=dims["kv_heads"], bos_token_id=1, eos_token_id=2, **kept)
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():  # weights large enough that logits are not flat (a flat model agrees with anything)
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.08)
    model.save_pretrained(out)
    return Path(out)
