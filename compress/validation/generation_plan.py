"""What ``validate`` of a text generator will run, bounded and said before it starts.

A generator's quality costs one forward pass per perplexity window on two models (the artifact and the PyTorch
teacher) and one decode step per new token per prompt on both; on a 135M-parameter model on two busy cores a step is
up to a second, so an unbounded text file would run for hours without a word. The defaults are therefore bounded:

- windows: at most :data:`MAX_WINDOWS` of the text's windows, prompts (``--prompts``, else each document's or
  paragraph's first sentence): at most :data:`MAX_PROMPTS`, unless ``--limit`` says how many (it bounds both);
- the window: ``--window``, else the artifact's (256) cut to the model's context, so that a model with a short context
  (128 positions) validates by default; a ``--window`` longer than the context stays a one-line error;
- new tokens: ``--new-tokens`` capped so that a prompt and its continuation fit the context (half of it at most), the
  same cap for the timed generation and the greedy continuations (a prompt of one token plus 128 new ones does not fit
  a context of 128: the "window of 129 tokens" error this cap removes).

:meth:`GenerationPlan.line` says all of it in one line at the start (the CLI prints it; the library logs it).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compress.artifact import Artifact
from compress.errors import ConfigError
from compress.progress import Progress, note, start_phase

log = logging.getLogger(__name__)

MAX_WINDOWS = 16  #: perplexity windows when --limit does not say how many (llama-perplexity's runs use 16-40)
MAX_PROMPTS = 8  #: prompts continued when --limit does not say how many
#: text to time on when no --data is given (a prompt only needs real tokens, not these words)
_FILLER = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
           "One day, she saw a big red ball under a tree. She ran to the ball and picked it up. ")


@dataclass
class GenerationPlan:
    """The inputs of a generator's validation, bounded: the tokenizer, the text, its windows, the prompts, the new
    tokens per prompt (capped to the context), the timed prompt, and the notes on what was capped."""

    tokenizer: Any
    context: int
    texts: list[str] | None = None
    windows: np.ndarray | None = None  #: [N, window] token ids, N bounded
    window: int | None = None
    windows_in_text: int = 0  #: how many windows the whole text holds
    prompts: list[str] = field(default_factory=list)
    prompts_given: int = 0  #: how many prompts the prompts file (or the text's first sentences) holds
    new_tokens: int = 128
    speed_prompt: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def line(self, rounds: int) -> str:
        """The bounds in one line: ``perplexity on 16 windows of 256 tokens (of 312 in the text; --limit for more);
        8 prompts x 128 new tokens; timing: a 128-token prompt + 128 new tokens, at least 5 rounds``."""
        parts = []
        if self.windows is not None:
            n = len(self.windows)
            more = (f" (of {self.windows_in_text} in the text; --limit for more)" if self.windows_in_text > n else "")
            parts.append(f"perplexity on {n} window{'s' * (n != 1)} of {self.window} tokens{more}")
        if self.prompts:
            n = len(self.prompts)
            more = f" (of {self.prompts_given}; --limit for more)" if self.prompts_given > n else ""
            parts.append(f"{n} prompt{'s' * (n != 1)}{more} x {self.new_tokens} new tokens")
        parts.append(f"timing: a {len(self.speed_prompt)}-token prompt + {self.new_tokens} new tokens, at least "
                     f"{rounds} rounds")
        return "; ".join(parts)


def tokenizer_of(art: Artifact):
    """The artifact's own tokenizer (its files travel with every generator artifact)."""
    from compress._optional import require

    require("transformers", "tokenizing text for a generator")
    from transformers import AutoTokenizer  # compress is imported: its torchvision shim is in place

    try:
        return AutoTokenizer.from_pretrained(str(art.path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{art.path}: no tokenizer beside the model ({e})",
                          hint="re-export the causal LM: its tokenizer files travel into the artifact") from None


def first_sentences(texts: list[str], limit: int) -> list[str]:
    """A prompt per document (or per paragraph of a long one): its first sentence, at most ``limit``."""
    out: list[str] = []
    for text in texts:
        for para in re.split(r"\n\s*\n", text):
            para = " ".join(para.split())
            if not para:
                continue
            m = re.match(r"(.+?[.!?])(\s|$)", para)
            out.append(m.group(1) if m else para[:200])
            if len(out) >= limit:
                return out
    return out


def encode(tok, text: str) -> list[int]:
    from compress.data.text import encode as encode_text

    return encode_text(tok, text)


def fit_new_tokens(new_tokens: int, context: int) -> tuple[int, str | None]:
    """``new_tokens`` capped at half the context when it leaves no room for a prompt; with the note saying so."""
    if new_tokens < context:
        return new_tokens, None
    capped = context // 2
    return capped, f"--new-tokens {new_tokens} capped at {capped}: the model's context is {context} tokens"


def speed_prompt(tok, texts: list[str] | None, prompt_tokens: int, new_tokens: int, context: int,
                 bos: int | None) -> tuple[list[int], int, list[str]]:
    """The prompt to time (``prompt_tokens`` real tokens from the data, else a built-in story) and the new tokens,
    both capped so that they fit ``context``; with the notes of what was capped."""
    new_tokens, said = fit_new_tokens(new_tokens, context)
    notes = [said] if said else []
    if prompt_tokens + new_tokens > context:
        capped = context - new_tokens
        notes.append(f"--prompt-tokens {prompt_tokens} capped at {capped}: with {new_tokens} new tokens the model's "
                     f"context of {context} tokens is full")
        prompt_tokens = capped
    ids: list[int] = []
    source = " ".join(texts) if texts else ""
    if source:
        ids = encode(tok, source[: prompt_tokens * 16])
    while len(ids) < prompt_tokens:
        ids += encode(tok, _FILLER)
    ids = ids[:prompt_tokens]
    if bos is not None and ids and ids[0] != bos:
        ids[0] = bos
    return ids, new_tokens, notes


def plan_generation(art: Artifact, config, context: int, progress: Progress | None = None) -> GenerationPlan:
    """Read and tokenize ``config.data``, cut its windows and pick the prompts within the bounds (module doc); the
    bounds line goes to ``progress`` as a note and to the log."""
    from compress.data.text import read_prompts, read_texts, token_windows

    post, opts, limit = art.manifest.postprocess, config.generation, config.limit
    plan = GenerationPlan(tokenizer=tokenizer_of(art), context=context)
    bos = getattr(post, "bos_token_id", None)
    if config.data:
        start_phase(progress, "reading and tokenizing the text")
        plan.texts = read_texts(config.data)
        # a given --window is checked against the context (one-line error); the default is cut to fit it
        plan.window = opts.window or min(post.window, context)
        every = token_windows(plan.tokenizer, plan.texts, plan.window, context=context,
                              bos_token_id="tokenizer" if bos is None else bos)
        plan.windows_in_text = len(every)
        plan.windows = every[: limit or MAX_WINDOWS]
    given = read_prompts(opts.prompts) if opts.prompts else first_sentences(plan.texts, 10**6) if plan.texts else []
    plan.prompts, plan.prompts_given = given[: limit or MAX_PROMPTS], len(given)
    plan.speed_prompt, plan.new_tokens, plan.notes = speed_prompt(plan.tokenizer, plan.texts, opts.prompt_tokens,
                                                                  opts.new_tokens, context, bos)
    return plan


def announce(plan: GenerationPlan, rounds: int, progress: Progress | None) -> None:
    """Say the plan's bounds: a note for the CLI (printed at once, in a terminal and in a CI log) and the log."""
    line = plan.line(rounds)
    log.info("validating a generator: %s", line)
    note(progress, line, phase="bounds")


__all__ = ["MAX_PROMPTS", "MAX_WINDOWS", "GenerationPlan", "announce", "encode", "first_sentences", "fit_new_tokens",
           "plan_generation", "speed_prompt", "tokenizer_of"]
