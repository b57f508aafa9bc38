"""A causal language model teacher (task text-generation): a Hugging Face ``…ForCausalLM`` folder, FP32 PyTorch.

:class:`CausalLM` wraps the loaded model and its tokenizer for what validate and the quantizers ask of a teacher:
next-token logits over perplexity windows, batch by batch (:meth:`CausalLM.logits`; the whole text's logits are never
held at once), greedy continuations through the model's KV cache (:meth:`CausalLM.greedy`), and the manifest's
``postprocess`` (:meth:`CausalLM.postprocess`: BOS/EOS, the perplexity window, the KV cache's dimensions).

Checks with one-line errors (:func:`check_special_tokens`, :func:`check_window`): the config's BOS/EOS ids must be
tokens of the tokenizer's vocabulary (a tokenizer from another model would tokenize silently into nonsense), and a
window may not be longer than ``max_position_embeddings``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import ConfigError, ModelLoadError
from compress.tasks.generation import GenerationPostprocess, KVCache

__all__ = ["GENERATION_FILES", "CausalLM", "cache_of", "check_special_tokens", "check_window", "generation_ids",
           "is_causal_lm", "postprocess_of"]

#: the files of a causal LM folder that travel into every artifact made from it (those present): its tokenizer and
#: its generation defaults (BOS/EOS, which the runtimes and validate read)
GENERATION_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json")


def is_causal_lm(config: dict[str, Any]) -> bool:
    """A checkpoint config whose architecture is a ``…ForCausalLM``."""
    return any(str(a).endswith("ForCausalLM") for a in config.get("architectures") or [])


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    return config.get("text_config") or config


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


class CausalLM:
    """A loaded causal LM teacher: the torch model (eval, FP32), its tokenizer and its config (a dict)."""

    def __init__(self, model: Any, tokenizer: Any, path: Path, config: dict[str, Any], teacher: Any = None) -> None:
        self.model, self.tokenizer, self.path, self.config, self.teacher = model, tokenizer, Path(path), config, teacher

    @classmethod
    def load(cls, path: Path | str, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> CausalLM:
        """Load the ``…ForCausalLM`` folder at ``path`` (one-line errors: not a causal LM, a foreign tokenizer)."""
        from compress.tasks import Task
        from compress.teachers.load import load_teacher

        teacher = load_teacher(path, Task.text_generation, allow_pickle=allow_pickle,
                               trust_remote_code=trust_remote_code)
        return cls.from_teacher(teacher)

    @classmethod
    def from_teacher(cls, teacher: Any) -> CausalLM:
        """Wrap a :class:`~compress.teachers.load.Teacher` of task text-generation."""
        return cls(teacher.model, teacher.tokenizer, teacher.path, teacher.info.config, teacher)

    # -- what it is -----------------------------------------------------------------------------------------------

    @property
    def context(self) -> int:
        """The longest sequence the model takes (max_position_embeddings)."""
        return self.cache().max_length

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    def cache(self, *, layout: str = "past_key_values", dtype: str = "float32") -> KVCache:
        """The KV cache's dimensions (layers, KV heads, head size from head_dim, context)."""
        return cache_of(self.config, layout=layout, dtype=dtype)

    def postprocess(self, *, window: int = 256) -> GenerationPostprocess:
        """The manifest's postprocess block for an artifact of this model."""
        return postprocess_of(self.path, self.config, window=window)

    def encode(self, text: str) -> list[int]:
        """``text``'s token ids as the model reads them (BOS first where the tokenizer adds it)."""
        return list(self.tokenizer(text, verbose=False)["input_ids"])

    # -- running it -----------------------------------------------------------------------------------------------

    def logits(self, windows: np.ndarray, *, batch_size: int = 8) -> Iterator[np.ndarray]:
        """Next-token logits of ``windows`` (token ids [N, T], each window from its own start, no cache), float32
        [b, T, V] per batch of at most ``batch_size`` windows."""
        import torch

        windows = np.asarray(windows, dtype=np.int64)
        if windows.ndim != 2:
            raise ValueError(f"windows are token ids [N, T], got shape {list(windows.shape)}")
        check_window(windows.shape[1], self.context)
        with torch.inference_mode():
            for i in range(0, len(windows), batch_size):
                ids = torch.from_numpy(windows[i:i + batch_size])
                out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
                yield out.logits.float().numpy()

    def greedy(self, prompt_ids: list[int], new_tokens: int, eos: int | list[int] | None = None) -> list[int]:
        """The ``new_tokens`` tokens greedy decoding adds to ``prompt_ids`` (one prefill, then one step per token
        through the KV cache); it stops after an ``eos`` token (that token included, as ``generate`` does)."""
        import torch

        if not prompt_ids:
            raise ValueError("greedy: the prompt has no tokens")
        stop = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
        if len(prompt_ids) + new_tokens > self.context:
            check_window(len(prompt_ids) + new_tokens, self.context)
        out: list[int] = []
        with torch.inference_mode():
            ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
            mask = torch.ones_like(ids)
            past = None
            for _ in range(new_tokens):
                res = self.model(input_ids=ids, attention_mask=mask, past_key_values=past, use_cache=True)
                past = res.past_key_values
                nxt = int(res.logits[0, -1].argmax())
                out.append(nxt)
                if nxt in stop:
                    break
                ids = torch.tensor([[nxt]], dtype=torch.long)
                mask = torch.cat([mask, torch.ones((1, 1), dtype=mask.dtype)], dim=1)
        return out
