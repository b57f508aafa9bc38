"""A causal language model teacher (task text-generation): a Hugging Face ``…ForCausalLM`` folder, FP32 PyTorch.

:class:`CausalLM` wraps the loaded model and its tokenizer for what validate and the quantizers ask of a teacher:
next-token logits over perplexity windows, batch by batch (:meth:`CausalLM.logits`; the whole text's logits are never
held at once), greedy continuations through the model's KV cache (:meth:`CausalLM.greedy`), and the manifest's
``postprocess`` (:meth:`CausalLM.postprocess`: BOS/EOS, the perplexity window, the KV cache's dimensions).

Checks with one-line errors (in :mod:`compress.teachers.lm_config`, which load.py reads too): the config's BOS/EOS
ids must be special tokens of the tokenizer (a tokenizer from another model would feed it nonsense without a word),
and a window may not be longer than ``max_position_embeddings``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from compress.tasks.generation import Generated, GenerationPostprocess, KVCache
from compress.teachers.lm_config import (
    cache_of,
    check_window,
    postprocess_of,
)

__all__ = ["CausalLM", "greedy_decode"]


def greedy_decode(model, prompt_ids: list[int], new_tokens: int, *, eos: set[int] | frozenset[int] = frozenset(),
                  logits: bool = False) -> Generated:
    """PyTorch's greedy loop (transformers' own KV cache, batch 1): the prompt in one call, then one call a token, each
    the arg-max of the last logits; it stops after ``new_tokens`` tokens or an ``eos`` token (kept). ``logits``: also
    each made token's step logits (every token is then fed back, the last one too). The runtimes' loop is
    :meth:`compress.runtimes.base.RuntimeBackend.generate`; this is the one that needs no runtime."""
    import torch

    with torch.inference_mode():
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
        mask = torch.ones_like(ids)
        res = model(input_ids=ids, attention_mask=mask, use_cache=True)
        made = Generated(res.logits[0].float().numpy(), [], [])
        for _ in range(new_tokens):
            nxt = int(res.logits[0, -1].argmax())
            made.tokens.append(nxt)
            last = nxt in eos or len(made.tokens) == new_tokens
            if last and not logits:
                break
            mask = torch.cat([mask, torch.ones((1, 1), dtype=mask.dtype)], dim=1)
            res = model(input_ids=torch.tensor([[nxt]], dtype=torch.long), attention_mask=mask,
                        past_key_values=res.past_key_values, use_cache=True)
            if logits:
                made.step_logits.append(res.logits[0, -1].float().numpy())
            if last:
                break
    return made


#: the most bytes of logits :meth:`CausalLM.logits` yields in one batch by default
BATCH_BYTES = 256 * 2**20


class CausalLM:
    """A loaded causal LM teacher: the torch model (eval, FP32), its tokenizer and its config (a dict)."""

    def __init__(self, model: Any, tokenizer: Any, path: Path, config: dict[str, Any], teacher: Any = None) -> None:
        self.model, self.tokenizer, self.path, self.config, self.teacher = model, tokenizer, Path(path), config, teacher

    @classmethod
    def load(cls, path: Path | str, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> CausalLM:
        """Load the ``…ForCausalLM`` folder at ``path`` (one-line errors: not a causal LM, a foreign tokenizer)."""
        from compress.tasks import task_for
        from compress.teachers.load import load_teacher

        teacher = load_teacher(path, task_for("text", kind="generation"), allow_pickle=allow_pickle,
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

    def logits(self, windows: np.ndarray, *, batch_size: int | None = None) -> Iterator[np.ndarray]:
        """Next-token logits of ``windows`` (token ids [N, T], each window from its own start, no cache), float32
        [b, T, V] per batch of at most ``batch_size`` windows (default: up to 8, as many as keep a batch's logits
        within :data:`BATCH_BYTES`)."""
        import torch

        windows = np.asarray(windows, dtype=np.int64)
        if windows.ndim != 2:
            raise ValueError(f"windows are token ids [N, T], got shape {list(windows.shape)}")
        check_window(windows.shape[1], self.context)
        if batch_size is None:
            batch_size = max(1, min(8, BATCH_BYTES // (4 * windows.shape[1] * self.vocab_size)))
        for i in range(0, len(windows), batch_size):
            # inference mode per batch, not around the yield: a generator suspended inside it leaves it on for its
            # caller (and, two interleaved, for the whole process: a later training step then fails)
            with torch.inference_mode():
                ids = torch.from_numpy(windows[i:i + batch_size])
                out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
                batch = out.logits.float().numpy()
            yield batch

    def greedy(self, prompt_ids: list[int], new_tokens: int, eos: int | list[int] | None = None) -> list[int]:
        """The ``new_tokens`` tokens greedy decoding adds to ``prompt_ids`` (one prefill, then one step per token
        through the KV cache); it stops after an ``eos`` token (that token included, as ``generate`` does)."""
        if not prompt_ids:
            raise ValueError("greedy: the prompt has no tokens")
        stop = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
        if len(prompt_ids) + new_tokens > self.context:
            check_window(len(prompt_ids) + new_tokens, self.context)
        return greedy_decode(self.model, prompt_ids, new_tokens, eos=stop).tokens
