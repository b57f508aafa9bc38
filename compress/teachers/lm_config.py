"""What a causal LM checkpoint's files say (task text-generation), read without loading the model: its architecture,
the KV cache's dimensions (head_dim where the config names it), BOS/EOS (generation_config.json, else config.json),
the manifest's postprocess block; and the one-line checks of a tokenizer's special tokens and of a window against the
context. :mod:`compress.teachers.load` and :mod:`compress.teachers.causal_lm` both read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.errors import ConfigError, ModelLoadError
from compress.tasks.generation import GenerationPostprocess, KVCache

__all__ = ["CAUSAL_LM_SUFFIXES", "GENERATION_FILES", "cache_of", "check_special_tokens", "check_window",
           "generation_ids", "head_size", "is_causal_lm", "postprocess_of", "refuse_causal_lm"]

#: the files of a causal LM folder that travel into every artifact made from it (those present): its tokenizer and
#: its generation defaults (BOS/EOS, which the runtimes and validate read)
GENERATION_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json")


#: how transformers names a causal LM's class: ``…ForCausalLM`` (Llama, Qwen, Gemma, Phi, …) or, in its older
#: families, ``…LMHeadModel`` (GPT-2's ``GPT2LMHeadModel``); both load with ``AutoModelForCausalLM``
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
#: config.json keys of the families that name their dimensions their own way (GPT-2: n_layer, n_head, n_embd,
#: n_positions), read as the common names
_ALIASES = {"num_hidden_layers": "n_layer", "num_attention_heads": "n_head", "hidden_size": "n_embd",
            "max_position_embeddings": "n_positions"}


def is_causal_lm(config: dict[str, Any]) -> bool:
    """A checkpoint config whose architecture is a causal LM (a ``…ForCausalLM`` or ``…LMHeadModel``)."""
    archs = config.get("architectures") or []
    return isinstance(archs, list) and any(str(a).endswith(CAUSAL_LM_SUFFIXES) for a in archs)


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    c = config.get("text_config") or config
    return c | {k: c[alias] for k, alias in _ALIASES.items() if k not in c and alias in c}


def head_size(config: dict[str, Any]) -> int:
    """The attention head size: ``head_dim`` where the config names it (stories260K: 8 = 64 / 8), else hidden / heads."""
    c = _text_config(config)
    return int(c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"])


def cache_of(config: dict[str, Any], *, layout: str = "past_key_values", dtype: str = "float32") -> KVCache:
    """The KV cache dimensions of a checkpoint ``config`` (config.json as a dict)."""
    c = _text_config(config)
    try:
        return KVCache(layers=int(c["num_hidden_layers"]),
                       kv_heads=int(c.get("num_key_value_heads") or c["num_attention_heads"]),
                       head_size=head_size(c), dtype=dtype, max_length=int(c.get("max_position_embeddings") or 2048),
                       layout=layout)
    except KeyError as e:
        raise ModelLoadError(f"config.json has no {e.args[0]}: not a decoder edgecompress knows",
                             hint="a Llama-, Qwen2-, Mistral- or Phi-like …ForCausalLM checkpoint") from None


def generation_ids(path: Path | str, config: dict[str, Any]) -> tuple[int | None, int | list[int] | None]:
    """BOS and EOS ids: generation_config.json's, else config.json's."""
    import json

    gen: dict[str, Any] = {}
    p = Path(path) / "generation_config.json"
    if p.is_file():
        try:
            gen = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{p}: not JSON ({e.msg})", hint="fix or remove generation_config.json") from None
    c = _text_config(config)
    bos = gen.get("bos_token_id", c.get("bos_token_id", config.get("bos_token_id")))
    eos = gen.get("eos_token_id", c.get("eos_token_id", config.get("eos_token_id")))
    return bos, eos


def postprocess_of(path: Path | str, config: dict[str, Any], *, window: int = 256) -> GenerationPostprocess:
    """The manifest's postprocess of the causal LM at ``path``: BOS/EOS, the window (at most the context) and the
    KV cache."""
    cache = cache_of(config)
    bos, eos = generation_ids(path, config)
    return GenerationPostprocess(window=min(window, cache.max_length), bos_token_id=bos, eos_token_id=eos, cache=cache)


def _special_ids(tokenizer) -> set[int]:
    """The ids a transformers tokenizer treats as special (its BOS/EOS/PAD/UNK and added special tokens)."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(int(i) for i, t in added.items() if getattr(t, "special", False))
    return ids


def check_special_tokens(path: Path | str, tokenizer, bos: int | None, eos: int | list[int] | None) -> None:
    """Refuse a tokenizer that lacks the model's BOS or EOS token: the id is outside its vocabulary, or is an
    ordinary token of it (the tokenizer belongs to another model and would feed it nonsense)."""
    size = len(tokenizer)
    special = _special_ids(tokenizer)
    for name, ids in (("BOS", [bos]), ("EOS", eos if isinstance(eos, list) else [eos])):
        for i in ids:
            if i is None:
                continue
            if not 0 <= int(i) < size:
                why = f"is not in its tokenizer's vocabulary ({size} tokens)"
            elif special and int(i) not in special:
                why = (f"is {tokenizer.convert_ids_to_tokens(int(i))!r} in its tokenizer, an ordinary token, not a "
                       f"special one")
            else:
                continue
            raise ModelLoadError(f"{path}: the model's {name} token id {i} {why}: the tokenizer is not this model's",
                                 hint="save the model's own tokenizer beside it (tokenizer.save_pretrained)")


def check_window(window: int, context: int) -> None:
    """Refuse a perplexity window longer than the model's context (max_position_embeddings)."""
    if window > context:
        raise ConfigError(f"a window of {window} tokens is longer than the model's context "
                          f"(max_position_embeddings {context})", hint=f"give --window {context} or less")


def refuse_causal_lm(teacher: Any, verb: str, what: str) -> None:
    """Refuse a causal LM teacher (task text-generation) in a verb that takes none: ``what`` says what it takes."""
    if str(getattr(teacher, "task", "")) == "text-generation":
        raise ConfigError(f"{verb} takes {what}; {teacher.path} is a causal language model (text-generation), which "
                          f"takes plain text and no labels",
                          hint="export, quantize and validate it (--data a .txt or .jsonl of documents)")
