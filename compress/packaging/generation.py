"""``package`` for a generator (task text-generation): the bundle's generating handler and its limits.

The handler (``compress/device/bundle_template/generation.py``, written into the bundle as the profile's handler
module) decodes greedily through the KV cache with plain ONNX Runtime: the ONNX artifact's graph (ONNX Runtime GenAI's
builder format) takes the cache as ``past_key_values.N.key/value`` inputs and returns ``present.N.key/value``, so the
handler feeds them back itself, with ``position_ids`` from ``edgecompress_device.decoder_feeds`` (the one home of that
rule, shared with edgecompress's ONNX Runtime backend). Why not onnxruntime-genai in the bundle (measured for
manylinux aarch64, CPython 3.12): it requires onnxruntime too, so its closure (onnxruntime, onnxruntime-genai 0.18.0,
numpy: 147.4 MB unzipped) is not smaller than the handler's (onnxruntime, tokenizers, numpy and what tokenizers pulls
in: 142.6 MB); and GenAI's own tokenizer (0.12.2, installed here) encodes stories260K's prompts otherwise than the model's
``tokenizer.json`` (no BOS, the first word in other pieces), so a GenAI bundle would carry ``tokenizers`` as well for
the teacher's tokens: 36 MB more for the same greedy tokens.

The limits go into ``model_config.json``'s ``generation`` block: the context (the KV cache's maximum length), the
most new tokens one request may ask for (``--max-new-tokens``; default 256 or less, as the context allows), the
default when a request gives none, and the end-of-sequence ids from the manifest's postprocess (BOS is the
tokenizer's own: ``tokenizer.json``'s post-processor adds it, as the teacher's tokenizer does).

OpenVINO (stateful IR) and GGUF (llama.cpp) generators are refused in one line naming the ONNX route: the bundle's
handler runs ONNX Runtime.
"""

from __future__ import annotations

from typing import Any

from compress.artifact import Artifact, Format
from compress.errors import ArtifactError, ConfigError

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "DEFAULT_NEW_TOKENS", "FIRST_PROMPT", "TEMPLATE", "check_generator", "describe",
           "first_generation", "generation_block", "refuse_new_tokens"]

#: the most new tokens a request may ask for when --max-new-tokens is not given (capped by the context)
DEFAULT_MAX_NEW_TOKENS = 256
#: the new tokens of a request that gives no max_new_tokens (and of the cold-start run's request)
DEFAULT_NEW_TOKENS = 32
#: the cold-start run's prompt
FIRST_PROMPT = "Once upon a time, there was a little girl who"
#: the bundle's handler module source for a generator (compress/device/bundle_template/)
TEMPLATE = "generation.py"


def refuse_new_tokens(art: Artifact, max_new_tokens: int | None) -> None:
    """Refuse ``max_new_tokens`` for an artifact that does not generate (one line, the legal next step)."""
    if max_new_tokens is not None:
        raise ConfigError(f"--max-new-tokens is for text-generation artifacts; {art.path} is a "
                          f"{art.manifest.task} model", hint="drop --max-new-tokens")


def check_generator(art: Artifact, max_new_tokens: int | None) -> None:
    """Refuse what the generating handler cannot run (one line, the legal next step): a generator of another format
    than ONNX, an ONNX graph without the past_key_values cache, ``max_new_tokens`` beyond the context."""
    m = art.manifest
    if m.format != Format.onnx:
        raise ArtifactError(
            f"{art.path} is a generator in {m.format} format; package bundles a generator's ONNX Runtime artifact "
            "(the handler decodes with onnxruntime)",
            hint="export the causal LM with `edgecompress export CAUSAL_LM_DIR --format onnx` (then quantize it) "
                 "and package that",
        )
    cache = m.postprocess.cache
    names = {t.name for t in m.inputs}
    if cache is None or cache.layout != "past_key_values" or "past_key_values.0.key" not in names:
        raise ArtifactError(f"{art.path}: the graph takes no past_key_values KV cache; the handler decodes through it",
                            hint="re-export the causal LM with `edgecompress export CAUSAL_LM_DIR --format onnx`")
    context = _context(art)
    if max_new_tokens is not None and not 1 <= max_new_tokens < context:
        raise ConfigError(f"--max-new-tokens {max_new_tokens} does not fit the model's context of {context} tokens "
                          "(a prompt takes one at least)", hint=f"give --max-new-tokens from 1 to {context - 1}")


def _context(art: Artifact) -> int:
    cache = art.manifest.postprocess.cache
    return int(getattr(cache, "max_length", None) or art.manifest.max_length)


def generation_block(art: Artifact, max_new_tokens: int | None) -> dict[str, Any]:
    """``model_config.json``'s ``generation`` block: context, new-token cap and default, BOS/EOS ids."""
    post = art.manifest.postprocess
    context = _context(art)
    cap = max_new_tokens or min(DEFAULT_MAX_NEW_TOKENS, context - 1)
    return {
        "context": context, "max_new_tokens": cap, "default_new_tokens": min(DEFAULT_NEW_TOKENS, cap),
        "bos_token_id": post.bos_token_id, "eos_token_ids": post.eos_ids(), "decoding": "greedy",
        "cache": post.cache.model_dump(mode="json"),
    }


def first_generation(block: dict[str, Any]) -> dict[str, Any]:
    """The cold-start run's request: the built-in prompt and the default new tokens."""
    return {"prompt": FIRST_PROMPT, "max_new_tokens": block["default_new_tokens"]}


def describe(block: dict[str, Any]) -> str:
    """The report's note on what the handler does."""
    return (f"the handler generates greedily through the KV cache with onnxruntime: up to {block['max_new_tokens']} "
            f"new tokens a request (default {block['default_new_tokens']}), prompt and new tokens within the context "
            f"of {block['context']}; the cold start's first request generates {block['default_new_tokens']}")
