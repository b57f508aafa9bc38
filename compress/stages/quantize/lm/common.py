"""What every causal-LM quantizer shares, neutral of any format (each format's module imports this, never another
format's): the generators' INT4 defaults, the calibration and evaluation windows cut from text, and the collapse
check every quantized generator gets (greedy continuations through its runtime against its input's; the judgement is
:func:`compress.tasks.generation.judge_continuations`'s)."""

from __future__ import annotations

from typing import Any

import numpy as np

from compress.artifact import Artifact
from compress.errors import ConfigError
from compress.stages.quantize.config import QuantizeConfig

GENERATOR_BLOCK = 32  #: the generators' default block size (llama.cpp's Q4_0 groups); images keep 128
#: the generators' default INT4 algorithm: "auto", each weight matrix's bits and algorithm chosen by measuring the
#: model (:mod:`.bit_allocation`); a route without it (ExecuTorch, GGUF: their own recipes) reads its own default.
#: One algorithm for every matrix was a fit to the model it was chosen on (HQQ: SmolLM2's Q4_1 grid; Gemma 3 +22%)
GENERATOR_ALGORITHM = "auto"
#: the prompts a quantized generator's continuations are checked on (:func:`collapse_check`), and GPTQ's calibration
#: without --calibration
PROMPTS = ("Once upon a time, there was a little girl named Lily.", "The sun was shining and the birds",
           "Tom had a big red ball. He", "One day, a cat and a dog")


def resolve_int4(config: QuantizeConfig, bits: int, *, rtn: bool = False, default: str = GENERATOR_ALGORITHM
                 ) -> QuantizeConfig:
    """``config`` with the block size and algorithm a generator's weight-only quantization uses written in (what the
    step records): those given, else blocks of :data:`GENERATOR_BLOCK` and ``default`` (:data:`GENERATOR_ALGORITHM`)
    for INT4, round to nearest for INT8 (and where ``rtn``: weights trained for its grid)."""
    given = config.given_keys()
    block = config.int4.block_size if "block_size" in given else GENERATOR_BLOCK
    algorithm = (config.int4.algorithm if "int4_algorithm" in given or rtn
                 else default if bits == 4 else "rtn")
    return config.model_copy(update={"int4": config.int4.model_copy(update={"block_size": block,
                                                                            "algorithm": algorithm})})


def calibration_windows(art: Artifact, config: QuantizeConfig, window: int = 128) -> list[list[int]]:
    """Token windows for GPTQ: ``--calibration`` text cut into windows of ``window`` tokens (at most
    ``--calibration-samples``), else the built-in prompts; windows and prompts no longer than the model's context."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(art.path / "tokenizer.json"))
    cache = art.manifest.postprocess.cache if art.manifest.postprocess is not None else None
    context = cache.max_length if cache is not None else window
    window = min(window, context)
    if config.calibration.data:
        from compress.data.text import read_texts

        ids = [i for t in read_texts(config.calibration.data) for i in tok.encode(t).ids]
        wins = [ids[i:i + window] for i in range(0, len(ids) - window + 1, window)][:config.calibration.samples]
        if wins:
            return wins
    return [tok.encode(p).ids[:context] for p in PROMPTS]


def text_windows(art: Artifact, path: str, window: int, limit: int | None, flag: str) -> np.ndarray:
    """Up to ``limit`` windows [N, window] of the text file ``path`` (:func:`compress.data.text.token_windows`:
    llama-perplexity's cut, each window's first token BOS where the model has one). ``window`` is the artifact's, not
    an option quantize has: a text shorter than one window is refused naming ``flag``, the option that gave it."""
    from tokenizers import Tokenizer

    from compress.data.text import read_texts, token_windows

    post = art.manifest.postprocess
    try:
        return token_windows(Tokenizer.from_file(str(art.path / "tokenizer.json")), read_texts(path), window,
                             max_windows=limit, bos_token_id=post.bos_token_id,
                             context=post.cache.max_length if post.cache else None)
    except ConfigError as e:
        if "shorter than one window" not in e.message:
            raise
        raise ConfigError(f"{path}: text shorter than one window of {window} tokens (the artifact's perplexity "
                          f"window)", hint=f"give {flag} a longer text ({e.hint})") from None


def collapse_check(reference: Artifact, candidate: Artifact, *, new_tokens: int = 32,
                   runtime: str = "onnxruntime") -> dict[str, Any]:
    """Greedy continuations of :data:`PROMPTS` through both artifacts (``runtime``'s ``generate``, batch 1; every
    generator quantizer checks its output with it: ONNX Runtime, OpenVINO, llama.cpp, ExecuTorch), judged by
    :func:`compress.tasks.generation.judge_continuations`: agreement before the first divergence, the prompts' top-1
    agreement and KL, and :func:`compress.tasks.generation.collapse`'s reason (None when the continuations look
    sane). Prompts and continuations are cut to fit the model's context together."""
    from tokenizers import Tokenizer

    from compress.runtimes.base import load_runtime
    from compress.tasks.generation import judge_continuations

    tok = Tokenizer.from_file(str(candidate.path / "tokenizer.json"))
    bos = reference.manifest.postprocess.bos_token_id
    cache = reference.manifest.postprocess.cache
    if cache is not None:  # prompt and continuation within the model's context (a short one halves them)
        new_tokens = min(new_tokens, cache.max_length // 2)
    prompts = [(([bos] if bos is not None else []) + tok.encode(p).ids)[:None if cache is None else
                                                                      cache.max_length - new_tokens] for p in PROMPTS]
    runs = []
    for art in (reference, candidate):
        backend = load_runtime(art, runtime)
        try:
            runs.append([backend.generate(p, new_tokens) for p in prompts])
        finally:
            backend.close()
    ref, cand = runs
    judged = judge_continuations(ref, cand)
    return {"prompts": judged.pop("prompts"), "new_tokens": new_tokens, **judged,
            "continuations": [tok.decode(c.tokens) for c in cand[:2]],
            "reference_continuations": [tok.decode(r.tokens) for r in ref[:2]]}
