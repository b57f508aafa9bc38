"""Vocabulary pruning: keep a corpus's tokens, rebuild the fast tokenizer and the embeddings, prove it exact on the
corpus, and report the coverage elsewhere."""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from compress.errors import ConfigError, DataError, StageError
from compress.stages.prune.config import _PLACEHOLDER, _TOKEN_ID_KEYS

log = logging.getLogger("compress.stages.prune")  # the verb's logger


# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------


@dataclass
class VocabPlan:
    """The old token ids to keep (ascending: new id = position) and why."""

    keep: list[int]
    old_size: int
    from_corpus: int
    special: int
    alphabet: int
    floor: int
    corpus_texts: int
    corpus_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {"before": self.old_size, "after": len(self.keep), "removed": self.old_size - len(self.keep),
                "kept_from_corpus": self.from_corpus, "kept_special": self.special,
                "kept_alphabet": self.alphabet, "kept_floor": self.floor, "corpus_texts": self.corpus_texts,
                "corpus_tokens": self.corpus_tokens}


def _backend_json(tokenizer) -> dict[str, Any]:
    return json.loads(tokenizer.backend_tokenizer.to_str())


def corpus_strings(texts: list[Any]) -> list[str]:
    """Texts to plan and prove a vocabulary on. A sentence split into words (a token classifier's) is joined with
    spaces, and again after a space: a tokenizer that adds a prefix space to pre-split words (BPE) sees the first word
    so; WordPiece splits both alike."""
    out: list[str] = []
    for t in texts:
        if isinstance(t, str):
            out.append(t)
        else:
            joined = " ".join(t)
            out += [joined, " " + joined]
    return out


def plan_vocabulary(tokenizer, texts: list[str], *, keep_alphabet: bool = True, floor: int = 0, model_config=None,
                    source: str | None = None, keep_ids: list[int] = ()) -> VocabPlan:
    """Token ids to keep: those ``texts`` tokenise to, special/added tokens, ids the model config names (and
    ``keep_ids``: a causal LM's generation config's BOS/EOS),
    the single-character alphabet (``keep_alphabet``), the ``floor`` lowest-id ordinary tokens and, for
    BPE, every token a kept token is merged from."""
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise DataError(f"the vocabulary corpus{' ' + str(source) if source else ''} has no text",
                        hint="pass a file with the texts the model will see")
    data = _backend_json(tokenizer)
    mtype = data["model"]["type"]
    if mtype not in ("WordPiece", "BPE", "Unigram"):
        raise ConfigError(f"vocabulary pruning supports WordPiece, BPE and Unigram tokenizers, not {mtype}",
                          hint="leave out --vocab-corpus for this model")
    vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True)
    old_size = max(vocab.values()) + 1
    special_ids = set()
    for tok in tokenizer.all_special_tokens:
        tid = vocab.get(tok)
        if tid is None:
            raise DataError(
                f"special token {tok!r} of the tokenizer is not in its vocabulary",
                hint="fix the checkpoint's tokenizer before pruning its vocabulary",
            )
        special_ids.add(tid)
    special_ids |= {t["id"] for t in data.get("added_tokens", [])}
    if model_config is not None:
        special_ids |= {v for k in _TOKEN_ID_KEYS for v in _ids(getattr(model_config, k, None)) if 0 <= v < old_size}
    special_ids |= {int(v) for v in keep_ids if 0 <= int(v) < old_size}
    if mtype == "WordPiece":
        unk = data["model"].get("unk_token")
        if unk is None or unk not in vocab:
            raise DataError("the WordPiece tokenizer has no [UNK] token in its vocabulary",
                            hint="words outside the corpus need one; fix the tokenizer first")
    corpus: set[int] = set()
    tokens = 0
    for start in range(0, len(texts), 2048):
        for ids in tokenizer(texts[start : start + 2048], add_special_tokens=True)["input_ids"]:
            corpus.update(ids)
            tokens += len(ids)
    alphabet: set[int] = set()
    if keep_alphabet:
        prefix = data["model"].get("continuing_subword_prefix") or ""
        for tok, tid in vocab.items():
            if len(tok) == 1 or (prefix and tok.startswith(prefix) and len(tok) == len(prefix) + 1):
                alphabet.add(tid)
    low: set[int] = set()
    if floor:
        for tok, tid in sorted(vocab.items(), key=lambda kv: kv[1]):
            if len(low) >= floor:
                break
            if tid not in special_ids and not _PLACEHOLDER.fullmatch(tok):
                low.add(tid)
    keep = corpus | special_ids | alphabet | low
    if mtype == "BPE":
        keep |= _bpe_ancestors(data["model"], keep, vocab)
    keep_sorted = sorted(keep)
    return VocabPlan(keep_sorted, old_size, len(corpus - special_ids), len(special_ids),
                     len(alphabet - corpus - special_ids), len(low - corpus - special_ids - alphabet), len(texts), tokens)



def _ids(value: Any) -> list[int]:
    """A config's token id setting as a list (a causal LM's EOS may be several)."""
    return [value] if isinstance(value, int) else [v for v in value if isinstance(v, int)] \
        if isinstance(value, list) else []


def _merge_pair(m) -> tuple[str, str]:
    if isinstance(m, str):
        a, _, b = m.partition(" ")
        return a, b
    return m[0], m[1]


def _bpe_ancestors(model: dict[str, Any], keep: set[int], vocab: dict[str, int]) -> set[int]:
    """Ids of every token a kept token is built from by merges (BPE needs them as intermediate steps)."""
    prefix = model.get("continuing_subword_prefix") or ""
    made: dict[str, list[tuple[str, str]]] = {}
    for m in model.get("merges", []):
        a, b = _merge_pair(m)
        result = a + (b[len(prefix):] if prefix and b.startswith(prefix) else b)
        made.setdefault(result, []).append((a, b))
    id2tok = {i: t for t, i in vocab.items()}
    todo = [id2tok[i] for i in keep if i in id2tok]
    seen = set(todo)
    while todo:
        tok = todo.pop()
        for a, b in made.get(tok, []):
            for part in (a, b):
                if part not in seen and part in vocab:
                    seen.add(part)
                    todo.append(part)
    return {vocab[t] for t in seen}


def _remap_post_processor(node: Any, old2new: dict[int, int]) -> Any:
    """Special-token ids inside a post-processor (Template/Bert/Roberta processing, Sequence of them)."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "ids" and isinstance(v, list) and all(isinstance(x, int) for x in v):
                out[k] = [old2new[x] for x in v]
            elif k in ("sep", "cls") and isinstance(v, list) and len(v) == 2 and isinstance(v[1], int):
                out[k] = [v[0], old2new[v[1]]]
            else:
                out[k] = _remap_post_processor(v, old2new)
        return out
    if isinstance(node, list):
        return [_remap_post_processor(x, old2new) for x in node]
    return node


def rebuild_tokenizer(tokenizer, keep: list[int]):
    """A copy of the fast ``tokenizer`` whose vocabulary is ``keep`` (old ids, ascending), renumbered 0..n-1."""
    from tokenizers import Tokenizer

    old2new = {old: new for new, old in enumerate(keep)}
    data = _backend_json(tokenizer)
    model = data["model"]
    mtype = model["type"]
    if mtype in ("WordPiece", "BPE"):
        model["vocab"] = {t: old2new[i] for t, i in model["vocab"].items() if i in old2new}
        if mtype == "BPE":
            kept = set(model["vocab"])
            merges = []
            prefix = model.get("continuing_subword_prefix") or ""
            for m in model.get("merges", []):
                a, b = _merge_pair(m)
                result = a + (b[len(prefix):] if prefix and b.startswith(prefix) else b)
                if a in kept and b in kept and result in kept:
                    merges.append(m)
            model["merges"] = merges
    else:  # Unigram: a list of [piece, score] indexed by id
        model["vocab"] = [entry for i, entry in enumerate(model["vocab"]) if i in old2new]
        if model.get("unk_id") is not None:
            model["unk_id"] = old2new[model["unk_id"]]
    data["added_tokens"] = [{**t, "id": old2new[t["id"]]} for t in data.get("added_tokens", [])]
    if data.get("post_processor") is not None:
        data["post_processor"] = _remap_post_processor(data["post_processor"], old2new)
    if data.get("padding") and isinstance(data["padding"].get("pad_id"), int):
        data["padding"]["pad_id"] = old2new[data["padding"]["pad_id"]]
    new = copy.deepcopy(tokenizer)
    new._tokenizer = Tokenizer.from_str(json.dumps(data))
    return new


def prune_vocabulary(model, tokenizer, plan: VocabPlan):
    """Keep only ``plan.keep`` rows of the input embeddings (and any output embeddings); return the new tokenizer.

    The model is changed in place: embedding rows selected, ``vocab_size`` and the special-token ids
    of its config renumbered.
    """
    import torch
    from torch import nn

    keep = plan.keep
    old2new = {old: new for new, old in enumerate(keep)}
    idx = torch.as_tensor(keep, dtype=torch.long)
    emb = model.get_input_embeddings()
    if emb.weight.shape[0] < plan.old_size:
        raise ConfigError(f"the embedding matrix has {emb.weight.shape[0]} rows but the tokenizer {plan.old_size} ids",
                          hint="the model and tokenizer do not match")
    cfg = model.config
    pad = getattr(cfg, "pad_token_id", None)
    new_pad = old2new.get(pad) if isinstance(pad, int) else None
    new_emb = nn.Embedding(len(keep), emb.weight.shape[1], padding_idx=new_pad, dtype=emb.weight.dtype)
    with torch.no_grad():
        new_emb.weight.copy_(emb.weight[idx])
    model.set_input_embeddings(new_emb)
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None and getattr(cfg, "tie_word_embeddings", False):  # a causal LM's tied head: the same rows
        out.weight = new_emb.weight
        out.out_features = len(keep)
    elif out is not None:
        with torch.no_grad():
            out.weight = nn.Parameter(out.weight[idx].clone())
            if getattr(out, "bias", None) is not None:
                out.bias = nn.Parameter(out.bias[idx].clone())
            out.out_features = len(keep)
    cfg.vocab_size = len(keep)
    for c in (cfg, getattr(model, "generation_config", None)):  # a causal LM's generation config names BOS/EOS too
        for key in _TOKEN_ID_KEYS if c is not None else ():
            value = getattr(c, key, None)
            if isinstance(value, int) and value in old2new:
                setattr(c, key, old2new[value])
            elif isinstance(value, list):
                setattr(c, key, [old2new[v] for v in value if v in old2new])
    if new_pad is not None:  # e.g. RoBERTa's embeddings compute position ids from their padding_idx
        for m in model.modules():
            if isinstance(getattr(m, "padding_idx", None), int) and not isinstance(m, nn.Embedding):
                m.padding_idx = new_pad
    return rebuild_tokenizer(tokenizer, keep)


def prove_vocabulary(old_tokenizer, old_embeddings, new_tokenizer, new_embeddings, texts: list[str]) -> dict[str, Any]:
    """Check on every text: old ids -> old rows equal new ids -> new rows (and masks/type ids equal).

    Raises StageError naming the first text that differs.
    """
    import torch

    n_tokens = 0
    for start in range(0, len(texts), 512):
        chunk = texts[start : start + 512]
        a = old_tokenizer(chunk, add_special_tokens=True)
        b = new_tokenizer(chunk, add_special_tokens=True)
        for key in a:
            if key == "input_ids":
                continue
            if a[key] != b.get(key):
                bad = next(j for j in range(len(chunk)) if a[key][j] != b.get(key, [None] * len(chunk))[j])
                raise StageError(f"vocabulary pruning changed the {key} of corpus text {chunk[bad]!r}",
                                 hint="report this tokenizer; nothing was written")
        lens_a = [len(x) for x in a["input_ids"]]
        lens_b = [len(x) for x in b["input_ids"]]
        ids_a = torch.as_tensor([i for x in a["input_ids"] for i in x], dtype=torch.long)
        ids_b = torch.as_tensor([i for x in b["input_ids"] for i in x], dtype=torch.long)
        same = lens_a == lens_b and torch.equal(old_embeddings[ids_a], new_embeddings[ids_b])
        if not same:
            for j, (x, y) in enumerate(zip(a["input_ids"], b["input_ids"], strict=True)):
                if len(x) != len(y) or not torch.equal(old_embeddings[x], new_embeddings[y]):
                    raise StageError(
                        f"vocabulary pruning is not exact: corpus text {chunk[j]!r} maps to different embeddings "
                        f"({len(x)} tokens before, {len(y)} after)",
                        hint="nothing was written; report the tokenizer, or run without --vocab-corpus",
                    )
        n_tokens += int(ids_a.numel())
    return {"texts": len(texts), "tokens": n_tokens, "identical": True}


def vocabulary_coverage(old_tokenizer, new_tokenizer, keep: list[int], texts: list[str]) -> dict[str, Any]:
    """How held-out ``texts`` fare: share of their tokens kept, share of texts tokenised exactly as before."""
    kept = set(keep)
    new2old = np.asarray(keep)
    total = kept_tokens = same = 0
    for start in range(0, len(texts), 2048):
        chunk = texts[start : start + 2048]
        a = old_tokenizer(chunk, add_special_tokens=True)["input_ids"]
        b = new_tokenizer(chunk, add_special_tokens=True)["input_ids"]
        for x, y in zip(a, b, strict=True):
            total += len(x)
            kept_tokens += sum(1 for i in x if i in kept)
            same += int(len(x) == len(y) and list(new2old[y]) == x)
    return {"texts": len(texts), "token_coverage": kept_tokens / max(total, 1), "texts_unchanged": same / max(len(texts), 1)}
