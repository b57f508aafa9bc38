"""Task ``text-generation``: a causal language model with a KV cache, judged on next-token prediction.

The metric follows llama.cpp's ``llama-perplexity``: the text is tokenized once and cut into non-overlapping windows
of ``window`` tokens (:func:`compress.data.text.token_windows`; each window's first token is BOS where the tokenizer
has one); only the second half of a window is scored, so every scored token has at least ``window // 2`` tokens of
context: the logits at positions ``window//2 .. window-2`` predict the tokens at ``window//2 + 1 .. window-1``.
Perplexity is ``exp`` of the mean negative log-likelihood over the scored tokens. Against the teacher: the mean
KL(teacher || artifact) of the next-token distributions (``llama-perplexity --kl-divergence``) and the share of
scored positions whose most likely next token is the teacher's (top-1 agreement), over the same positions.

Generations are judged by :func:`continuation_agreement` (greedy tokens equal to the teacher's before the first
divergence) and :func:`collapse` (a one-line reason when they degenerate: one token, a repetition loop, or a KL far
off). The generator stages' judgements live here too: an export's greedy run against PyTorch's
(:func:`compare_generation`, :func:`require_generation_parity`), a quantized generator's continuations against its
input's (:func:`judge_continuations`, :func:`require_no_collapse`); and the one list of files that travel with a
causal LM (:data:`GENERATION_FILES`, :data:`LM_TRAVEL`).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from compress.errors import ModelLoadError, ParityError, StageError
from compress.tasks import StreamingMetric

__all__ = ["DECODE_STEPS", "GENAI_CONFIG", "GENERATION_FILES", "KL_COLLAPSE", "LM_TRAVEL", "Generated", "GenerationPostprocess",
           "GenerationStream", "KVCache", "collapse", "compare_generation", "continuation_agreement", "copy_travel",
           "generation_metrics", "generator_atol", "judge_continuations", "make_tokenizer_portable", "needs_tokenizer_module",
           "portable_tokenizer_config", "require_generation_parity", "require_no_collapse", "scored_positions",
           "sentencepiece_style", "TOKENIZER_MODULE"]

#: a mean KL (nats) above which a quantized generator's next-token distributions are called collapsed
KL_COLLAPSE = 2.0


class KVCache(BaseModel):
    """The KV cache of a generator artifact: its dimensions and where it lives."""

    model_config = ConfigDict(extra="forbid")
    layers: int = Field(..., ge=1, description="Decoder layers (one key and one value tensor each).")
    kv_heads: int = Field(..., ge=1, description="Key/value heads (grouped-query attention: fewer than the query "
                          "heads).")
    head_size: int = Field(..., ge=1, description="The size of one head (config head_dim, else hidden / heads).")
    dtype: str = Field("float32", description="The cache tensors' element type.")
    max_length: int = Field(..., ge=1, description="The longest sequence the cache holds (the model's context).")
    layout: Literal["past_key_values", "stateful", "runtime"] = Field(
        "past_key_values", description="past_key_values: ONNX inputs past_key_values.{i}.key/value and outputs "
        "present.{i}.key/value; stateful: the model keeps it inside (OpenVINO); runtime: the runtime keeps it "
        "(llama.cpp).")
    prefill: list[str] = Field(default_factory=lambda: ["input_ids", "attention_mask"],
                               description="The prefill entry point's input names.")
    decode: list[str] = Field(default_factory=lambda: ["input_ids", "attention_mask"],
                              description="The decode step's input names.")

    def bytes_per_token(self) -> int:
        """Bytes the cache grows by per token (keys and values of every layer)."""
        return 2 * self.layers * self.kv_heads * self.head_size * np.dtype(self.dtype).itemsize


class GenerationPostprocess(BaseModel):
    """The ``postprocess`` block of ``text-generation``: the perplexity window, BOS/EOS and the KV cache."""

    model_config = ConfigDict(extra="forbid")
    window: int = Field(256, ge=4, description="The perplexity window in tokens (llama-perplexity's -c): the second "
                        "half of each window is scored.")
    bos_token_id: int | None = Field(None, description="The token each window starts with (None: no BOS).")
    eos_token_id: int | list[int] | None = Field(None, description="The token(s) that end a generation.")
    cache: KVCache | None = Field(None, description="The KV cache (None: not recorded).")

    def eos_ids(self) -> list[int]:
        """The end-of-sequence ids as a list (empty: none)."""
        e = self.eos_token_id
        return [] if e is None else [e] if isinstance(e, int) else list(e)


def scored_positions(length: int) -> slice:
    """The logit positions of a window of ``length`` tokens that are scored (each predicts the next token)."""
    return slice(length // 2, length - 1)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    """Log-softmax over the last axis in float32 (a real vocabulary is 150k wide: float64 would double the memory)."""
    x = np.asarray(x, dtype=np.float32)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True, dtype=np.float64)).astype(np.float32)


class GenerationStream(StreamingMetric):
    """Perplexity (and KL, top-1 agreement against the teacher) window batch by window batch; sums and counts only.

    ``update(outputs=logits [B, T, V], labels=token ids [B, T], ref=teacher logits [B, T, V] or None)``: each row is
    one window as the model saw it (``labels`` are its input ids: the targets are the ids shifted by one). Windows are
    scored one at a time (float32 log-probabilities, float64 sums): memory is a few copies of one window's scored
    logits whatever the batch."""

    def __init__(self, postprocess: GenerationPostprocess | None = None) -> None:
        self.post = postprocess
        self.nll = self.teacher_nll = self.kl = 0.0
        self.tokens = self.positions = self.agree = 0

    def update(self, outputs: np.ndarray, labels=None, ref: np.ndarray | None = None) -> None:
        self.see(labels, ref)
        logits = np.asarray(outputs)
        if logits.ndim == 2:
            logits = logits[None]
        if logits.ndim != 3:
            raise ValueError(f"text-generation outputs are logits [batch, tokens, vocabulary], got shape "
                             f"{list(np.shape(outputs))}")
        ids = None
        if labels is not None:
            ids = np.asarray(labels, dtype=np.int64).reshape(logits.shape[0], -1)
            if ids.shape[1] != logits.shape[1]:
                raise ValueError(f"{ids.shape[1]} token ids for {logits.shape[1]} logit positions per window")
        if ref is not None:
            ref = np.asarray(ref)
            ref = ref[None] if ref.ndim == 2 else ref
            if ref.shape != logits.shape:
                raise ValueError(f"teacher logits {list(ref.shape)} and the artifact's {list(logits.shape)} differ")
        sl = scored_positions(logits.shape[1])
        for row in range(logits.shape[0]):
            self._window(logits[row, sl], None if ids is None else ids[row, sl.start + 1: sl.stop + 1],
                         None if ref is None else ref[row, sl])

    def _window(self, logits: np.ndarray, targets: np.ndarray | None, ref: np.ndarray | None) -> None:
        cand = _log_softmax(logits)
        if targets is not None:
            self.nll -= float(np.take_along_axis(cand, targets[:, None], axis=-1).sum(dtype=np.float64))
            self.tokens += targets.size
        if ref is not None:
            teacher = _log_softmax(ref)
            self.kl += float((np.exp(teacher) * (teacher - cand)).sum(dtype=np.float64))
            self.agree += int((teacher.argmax(-1) == cand.argmax(-1)).sum())
            self.positions += cand.shape[0]
            if targets is not None:
                self.teacher_nll -= float(np.take_along_axis(teacher, targets[:, None], axis=-1).sum(dtype=np.float64))

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.tokens:
            nll = self.nll / self.tokens
            out.update(perplexity=math.exp(nll), nll=nll, tokens=self.tokens)
        if self.positions:
            if self.tokens:
                t = math.exp(self.teacher_nll / self.tokens)
                out.update(teacher_perplexity=t, perplexity_increase=out["perplexity"] / t - 1.0)
            out.update(kl_mean=self.kl / self.positions, top1_agreement=self.agree / self.positions)
        return out


def generation_metrics(postprocess: GenerationPostprocess | None, cand: np.ndarray, ref: np.ndarray | None,
                       labels) -> dict[str, Any]:
    """:class:`GenerationStream` on one batch: logits ``cand`` [N, T, V], teacher logits ``ref``, token ids
    ``labels`` [N, T]."""
    stream = GenerationStream(postprocess)
    stream.update(cand, labels, ref)
    return stream.result()


def continuation_agreement(cand: list[list[int]], ref: list[list[int]]) -> float:
    """The share of the teacher's generated tokens that the artifact generated alike before its first divergence
    (per prompt), over all the teacher's generated tokens; 1.0 when the teacher generated nothing."""
    if len(cand) != len(ref):
        raise ValueError(f"{len(cand)} continuations for {len(ref)} teacher continuations")
    total = sum(len(r) for r in ref)
    same = 0
    for c, r in zip(cand, ref, strict=True):
        for a, b in zip(c, r):
            if a != b:
                break
            same += 1
    return same / total if total else 1.0


def _loop(tokens: list[int], max_n: int = 8) -> int | None:
    """The n (<= ``max_n``) of an n-gram that, repeated, makes up the last half of ``tokens``; None if none."""
    half = tokens[len(tokens) - len(tokens) // 2:]
    if len(half) < 4:
        return None
    for n in range(1, max_n + 1):
        if len(half) >= 2 * n and all(half[i] == half[i - n] for i in range(n, len(half))):
            return n
    return None


def collapse(tokens: list[list[int]], *, kl_mean: float | None = None) -> str | None:
    """A one-line reason when generations have collapsed, else None: every continuation is one token repeated, the
    last half of every continuation is one short n-gram (n <= 8) repeated, or the mean KL to the teacher is above
    :data:`KL_COLLAPSE` nats."""
    if kl_mean is not None and math.isfinite(kl_mean) and kl_mean > KL_COLLAPSE:
        return f"next-token KL to the teacher is {kl_mean:.2f} nats (> {KL_COLLAPSE}): the distributions collapsed"
    if kl_mean is not None and not math.isfinite(kl_mean):
        return "next-token KL to the teacher is not finite: the logits collapsed (NaN or infinite)"
    seqs = [list(t) for t in tokens if len(t) >= 8]
    if not seqs:
        return None
    if all(len(set(s)) == 1 for s in seqs):
        return f"every continuation is one token repeated (token {seqs[0][0]})"
    loops = [_loop(s) for s in seqs]
    if all(n is not None for n in loops):
        return (f"every continuation ends in a repetition loop (a {max(loops)}-token or shorter sequence repeated "
                f"over its last half)")
    return None


# -- the files that travel with a causal LM -----------------------------------------------------------------------

#: the files that travel with a causal LM beside its model file, copied from its source where there: the tokenizer's,
#: the generation defaults, the chat template and ONNX Runtime GenAI's config (every route's one list)
GENAI_CONFIG = "genai_config.json"  #: ONNX Runtime GenAI's description of a generator, beside the builder's graph
#: ONNX Runtime Extensions' override of tokenizer_config.json (ORT GenAI's tokenizer merges it over that file):
#: the tokenizer class it must read where transformers' own class is a generic one (:func:`make_tokenizer_portable`)
TOKENIZER_MODULE = "tokenizer_module.json"
GENERATION_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json",
                    GENAI_CONFIG, TOKENIZER_MODULE)
#: ... and the checkpoint's ``config.json``: what a generator artifact carries, except the GenAI builder's ONNX (whose
#: dimensions its genai_config.json states) and a fine-tuned checkpoint (which writes its own)
LM_TRAVEL = (*GENERATION_FILES, "config.json")


def artifact_vocab(folder: Path | str) -> int | None:
    """The number of token rows of the generator in ``folder`` (its logits' width), from the files it carries:
    genai_config.json's ``model.vocab_size``, else config.json's ``vocab_size``; None when neither says."""
    for name, keys in ((GENAI_CONFIG, ("model", "vocab_size")), ("config.json", ("vocab_size",)),
                       ("config.json", ("text_config", "vocab_size"))):
        try:
            value: Any = json.loads((Path(folder) / name).read_text(encoding="utf-8"))
            for key in keys:
                value = value[key]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(value, int):
            return value
    return None


def copy_travel(source: Path, out: Path, names: tuple[str, ...] = LM_TRAVEL) -> None:
    """Copy the travel files ``names`` that ``source`` holds (and ``out`` does not yet) from the folder ``source`` into
    the folder ``out``, then make ``out``'s tokenizer files readable by every reader (:func:`make_tokenizer_portable`)."""
    for name in names:
        if (Path(source) / name).is_file() and not (Path(out) / name).exists():
            shutil.copy2(Path(source) / name, Path(out) / name)
    make_tokenizer_portable(Path(out))


#: tokenizer classes transformers 5 writes that transformers 4 and ONNX Runtime GenAI's tokenizer do not know, and
#: the class both read the same tokenizer.json with (transformers 5 still reads it too, to the same token ids)
_PORTABLE_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def portable_tokenizer_config(config: dict[str, Any]) -> dict[str, Any]:
    """``tokenizer_config.json`` as both transformers majors read it: a class only transformers 5 knows becomes the one
    both read (``TokenizersBackend`` -> ``PreTrainedTokenizerFast``, the same tokenizer.json), and 5's list of
    ``extra_special_tokens`` (4 reads a dict there) moves to ``additional_special_tokens``."""
    out = dict(config)
    cls = out.get("tokenizer_class")
    if cls in _PORTABLE_CLASSES:
        out["tokenizer_class"] = _PORTABLE_CLASSES[cls]
    extra = out.get("extra_special_tokens")
    if isinstance(extra, list):
        del out["extra_special_tokens"]
        if extra:
            out["additional_special_tokens"] = list(dict.fromkeys([*(out.get("additional_special_tokens") or []),
                                                                    *extra]))
    return out


def sentencepiece_style(tokenizer: dict[str, Any]) -> bool:
    """Whether a ``tokenizer.json`` (as a dict) is a sentencepiece BPE written out for the tokenizers library (Llama
    2's, Mistral's, stories260K's): spaces become ``▁`` (a Metaspace pre-tokenizer or a normalizer's Replace) and
    unknown bytes fall back to byte tokens, where a GPT-2 style byte-level BPE maps every byte to a printable one."""
    import json

    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE":
        return False
    parts = json.dumps([tokenizer.get(k) for k in ("normalizer", "pre_tokenizer", "decoder")], ensure_ascii=False)
    return bool(model.get("byte_fallback")) or "Metaspace" in parts or "\u2581" in parts


def make_tokenizer_portable(folder: Path) -> list[str]:
    """Make the tokenizer files in ``folder`` read the same in transformers 4 and 5 and in ONNX Runtime GenAI's
    tokenizer (ONNX Runtime Extensions, which knows a tokenizer's algorithm by its class): ``tokenizer_config.json``
    by :func:`portable_tokenizer_config`; and where its class is the generic ``PreTrainedTokenizerFast`` over a
    sentencepiece-style tokenizer.json (:func:`sentencepiece_style`), which ORT GenAI would split as GPT-2 bytes,
    ``tokenizer_module.json`` naming ``LlamaTokenizer`` for ORT GenAI alone (transformers 5 reads that class with
    rules of its own: other ids for a leading space). Returns the files written."""
    import json

    cfg_path, written = folder / "tokenizer_config.json", []
    if not cfg_path.is_file():
        return written
    raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg = portable_tokenizer_config(raw)
    if cfg != raw:
        cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(cfg_path.name)
    if needs_tokenizer_module(folder, cfg):
        (folder / TOKENIZER_MODULE).write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}, indent=2) + "\n",
                                               encoding="utf-8")
        written.append(TOKENIZER_MODULE)
    return written


def needs_tokenizer_module(folder: Path, config: dict[str, Any]) -> bool:
    """Whether the tokenizer in ``folder`` (its ``tokenizer_config.json`` as ``config``) lacks the
    ``tokenizer_module.json`` ONNX Runtime GenAI needs: a generic class over a sentencepiece-style tokenizer.json."""
    import json

    tok = folder / "tokenizer.json"
    return (config.get("tokenizer_class") == "PreTrainedTokenizerFast" and tok.is_file()
            and not (folder / TOKENIZER_MODULE).exists()
            and sentencepiece_style(json.loads(tok.read_text(encoding="utf-8"))))


# -- a greedy run, and the generator stages' judgements on it -----------------------------------------------------

DECODE_STEPS = 8  #: greedy decode steps an exported generator is checked on against PyTorch
#: the prefill logits' tolerance unless --atol is given: a deep generator's logits (30 layers, a vocabulary-wide head)
#: differ from PyTorch's by more than a classifier's in FP32 alone (fused attention and normalisation kernels)
GENERATOR_ATOL = 1e-3
#: ... or this share of the largest reference logit where that is more: Gemma 3 bodies (head 64 or 256, its scaled
#: embeddings and four norms a layer) differ from PyTorch by 4e-4 of it in the builder's graph, one layer or six
GENERATOR_REL = 1e-3


class Generated(NamedTuple):
    """A greedy run of a prompt through a KV cache (a runtime's ``generate``, PyTorch's ``greedy_decode``): the
    prompt's logits [S, V], the tokens made, and each made token's step logits [V] (the logits once it was fed back;
    empty unless asked for).

    Timed (``generate(..., timed=True)``): ``seconds`` has one entry per token made, the first the time to first token
    (the prompt's prefill and its pick), each next one the loop's time for one more token (its step, the pick, the
    next feeds); ``native_seconds`` the part of each spent inside the runtime's own calls, so that ``seconds -
    native_seconds`` is the host's overhead (Python, copies). Both empty when not timed. A prompt_logits of None: the
    runtime's loop does not return the prompt's logits (a timed run in ONNX Runtime GenAI's generator)."""

    prompt_logits: np.ndarray | None
    tokens: list[int]
    step_logits: list[np.ndarray]
    seconds: tuple[float, ...] = ()
    native_seconds: tuple[float, ...] = ()


def compare_generation(ref: Generated, cand: Generated) -> dict[str, Any]:
    """Prefill and decode agreement of two greedy runs with step logits (PyTorch's and an artifact's)."""
    (p0, t0, l0), (p1, t1, l1) = ref[:3], cand[:3]
    same = next((i for i, (a, b) in enumerate(zip(t0, t1, strict=True)) if a != b), len(t0))
    # decode logits are comparable while the two fed the same tokens (up to and including the first divergence)
    decode = max((float(np.abs(a - b).max()) for a, b in zip(l0[:same + 1], l1[:same + 1], strict=False)), default=0.0)
    return {"prefill_tokens": int(p0.shape[0]), "prefill_max_abs_diff": float(np.abs(p0 - p1).max()),
            "reference_max_abs_logit": float(np.abs(p0).max()),
            "decode_steps": len(t0), "decode_max_abs_diff": decode, "same_tokens": t0 == t1,
            "tokens_equal_before_divergence": same, "reference_tokens": t0, "tokens": t1}


def generator_atol(config, check: dict[str, Any] | None = None) -> float:
    """The prefill tolerance of a generator's parity check: ``--atol`` when given, else :data:`GENERATOR_ATOL`, or
    :data:`GENERATOR_REL` of the reference's largest |logit| (``check``, :func:`compare_generation`'s) where that is
    more (the CLI passes its default as given: values are compared)."""
    default = type(config).model_fields["atol"].default
    if config.atol != default:
        return config.atol
    return max(GENERATOR_ATOL, GENERATOR_REL * float((check or {}).get("reference_max_abs_logit", 0.0)))


def require_generation_parity(check: dict[str, Any], atol: float, what: str) -> None:
    """``check`` (:func:`compare_generation`'s) within ``atol`` with the same greedy tokens, else the one
    :class:`ParityError` every generator exporter raises (``what``: "the ONNX graph", ...; nothing is written)."""
    if not np.isfinite(check["reference_max_abs_logit"]):  # no tolerance helps: the checkpoint itself is broken
        raise ModelLoadError(
            "the checkpoint's weights hold NaN or Inf: PyTorch's own FP32 logits of it are not finite, so no export "
            "can match them", hint="re-save or re-download the checkpoint (check the training run that wrote it); no "
            "artifact was written")
    if not (check["prefill_max_abs_diff"] <= atol and check["same_tokens"]):
        raise ParityError(
            f"{what} differs from PyTorch: prefill logits by {check['prefill_max_abs_diff']:.3g} (allowed "
            f"{atol:g}), greedy tokens {'equal' if check['same_tokens'] else 'differ'} over "
            f"{DECODE_STEPS} steps", max_abs_diff=check["prefill_max_abs_diff"], atol=atol,
            hint="raise --atol, or report it with --debug; no artifact was written")


def _kl(ref: np.ndarray, cand: np.ndarray) -> float:
    def log_softmax(x):
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    lp, lq = log_softmax(ref.astype(np.float64)), log_softmax(cand.astype(np.float64))
    return float((np.exp(lp) * (lp - lq)).sum(axis=-1).mean())


def judge_continuations(ref: list[Generated], cand: list[Generated]) -> dict[str, Any]:
    """A quantized generator's greedy runs ``cand`` against its input's ``ref`` (the same prompts): agreement before
    the first divergence, the prompts' top-1 agreement and KL, and :func:`collapse`'s reason (None when sane)."""
    ref_tokens, tokens = [r.tokens for r in ref], [c.tokens for c in cand]
    pairs = list(zip([r.prompt_logits for r in ref], [c.prompt_logits for c in cand], strict=True))
    top1 = np.concatenate([a.argmax(-1) == b.argmax(-1) for a, b in pairs])
    kl = float(np.mean([_kl(a, b) for a, b in pairs]))
    return {"prompts": len(ref), "continuation_agreement": float(continuation_agreement(tokens, ref_tokens)),
            "prompt_top1_agreement": float(top1.mean()), "prompt_kl_mean": kl,
            "collapsed": collapse(tokens, kl_mean=kl)}


def require_no_collapse(check: dict[str, Any], what: str, *, strict: bool, hint: str,
                        log: logging.Logger) -> None:
    """A collapse (``check["collapsed"]``, :func:`judge_continuations`'s) fails ``--strict`` (a
    :class:`StageError` naming ``what``, "the int4 generator", with ``hint``; nothing is written), else is warned
    about and recorded."""
    if check["collapsed"]:
        if strict:
            raise StageError(f"{what} collapsed: {check['collapsed']}", hint=hint)
        log.warning("%s collapsed: %s", what, check["collapsed"])
