"""Pruning: make a fine-tuned encoder physically smaller (fewer heads, neurons, layers, tokens), then recover.

What this stage removes, and how it chooses:

* **Attention heads** (``heads``: a fraction of all heads), ranked globally by Taylor importance
  (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"): the expected absolute gradient
  of the loss with respect to a mask on each head's output, per example, normalised per layer. The
  mask is not an argument of the model: a hook on the attention output projection multiplies its
  input (the concatenated heads) and reads ``sum(context * d loss / d context)`` per head, which is
  exactly the head-mask gradient and works on every BERT-family architecture (also where
  ``head_mask`` is gone or forces the slow attention path). Heads are removed with transformers'
  own ``prune_heads`` (it records ``pruned_heads`` in config.json, so ``from_pretrained`` reloads the
  smaller tensors); every layer keeps at least one head.
* **FFN neurons** (``ffn``: a fraction per layer): importance ``|sum activation * gradient|`` per
  neuron and example on the input of the FFN output projection. Every layer keeps the same number
  of neurons (its top-k), so ``intermediate_size`` stays one number and the config reloads.
* **Layers** (``drop_layers``: a count): the layers whose removal changes the model's outputs least
  on the sample (KL to the full model's class distribution; 1 - cosine of the pooled embedding for
  feature-extraction models), measured by skipping each layer in turn.
* **Vocabulary** (``vocab_corpus``): the tokens the corpus tokenises to, plus every special and
  added token, plus (by default) the single-character alphabet so that text outside the corpus
  still splits into characters instead of ``[UNK]``. The fast tokenizer (WordPiece, BPE with its
  merges, or Unigram) and the embedding matrix are rebuilt with the same ids, and the stage
  *proves* on every corpus text that old tokenizer → old ids → old embedding rows equals new
  tokenizer → new ids → new rows (and that the model's outputs are unchanged); if not, nothing is
  written.
* **Sparsity** (``sparsity``: a global magnitude ratio over the encoder's Linear weights, or
  ``"2:4"``: two of every four consecutive input weights zero). Honest about what it buys: ONNX
  Runtime and OpenVINO CPU kernels run dense GEMMs, so zeros give no speed-up there, and
  safetensors/ONNX store them densely; what shrinks is the *compressed* (zip/gzip download) size,
  which the manifest reports before and after.

Loss for the importance scores: cross entropy with the data's labels when it has them, else with the
model's own argmax (pseudo-labels; a KL to the model's own predictions has zero gradient at the
unpruned point). Feature-extraction models: a random projection of the pooled embedding per example,
whose expected absolute gradient is proportional to how far the embedding moves.

Recovery (``recover_steps``): a short distillation from the unpruned model (``compress.stages.distill``)
before vocabulary pruning (distillation feeds teacher and student the same token ids; vocabulary
pruning is exact on the corpus, so it needs none). Sparsity masks stay applied during recovery and
unstructured sparsity follows a cubic schedule (Zhu & Gupta 2017) over the recovery steps.

Budgets (``profile``): the profile's ``max_model_size_mb`` and/or latency budget (a roofline estimate,
:mod:`compress.estimate`) are checked on candidates exported to ONNX (and quantized to INT8 unless
``budget_precision`` is fp32), raising the pruning ratios in steps of 0.1 until they hold; when even
the maximum cannot meet them the stage refuses with the best value it reached.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from compress.artifact import (
    Artifact,
    Format,
    StepRecord,
    Task,
    check_output,
    digest_dir,
    is_artifact,
    library_versions,
    load_artifact,
    staged_dir,
    write_manifest,
)
from compress.errors import ArtifactError, ConfigError, DataError, StageError
from compress.models import model_feed

log = logging.getLogger(__name__)

CONFIG_VERSION = 1
SEMI_STRUCTURED = "2:4"
#: What the runtimes this project targets do with zeros in dense weight tensors.
SPARSITY_NOTE = (
    "ONNX Runtime and OpenVINO CPU kernels run dense matrix multiplies: unstructured and 2:4 sparsity give "
    "no speed-up there, and safetensors/ONNX store the zeros densely, so files keep their size; the zeros "
    "make the weights compress (zip/gzip download size). 2:4 is accelerated only by sparse tensor cores "
    "(NVIDIA Ampere and later) in a TensorRT engine built with sparsity enabled, which edgecompress's "
    "TensorRT export does not enable."
)
_RUNTIME_SPARSITY = {
    "onnxruntime": "ONNX Runtime runs dense kernels: no speed-up from sparsity",
    "openvino": "OpenVINO CPU runs dense kernels: no speed-up from sparsity",
    "torch": "PyTorch eager runs dense kernels: no speed-up from sparsity",
    "tensorrt": "TensorRT can use 2:4 sparse tensor cores only in engines built with sparsity enabled "
                "(not done by edgecompress): no speed-up as exported",
}
_PLACEHOLDER = re.compile(r"\[unused\d+\]|<unused\d+>")
_FFN_KEYS = ("intermediate_size", "hidden_dim", "ffn_dim", "d_ff", "dim_feedforward")
_ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
_ST_DIRS = ("1_Pooling", "2_Normalize")
_TOKEN_ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id", "unk_token_id",
                  "mask_token_id")


class BudgetPrecision(StrEnum):
    fp32 = "fp32"
    int8 = "int8"


class PruneConfig(BaseModel):
    """Settings of ``edgecompress prune``."""

    model_config = ConfigDict(extra="forbid")

    # --- what to remove ------------------------------------------------------------------------------
    heads: float = Field(
        0.0, ge=0, lt=1,
        description="Fraction of all attention heads to remove, least important first (Taylor importance, "
        "normalised per layer); every layer keeps at least one head.",
    )
    ffn: float = Field(
        0.0, ge=0, lt=1,
        description="Fraction of the FFN intermediate neurons to remove, the same number in every layer "
        "(each layer keeps its most important ones).",
    )
    drop_layers: int = Field(
        0, ge=0, description="Remove this many whole layers: those whose removal changes the outputs least."
    )
    vocab_corpus: str | None = Field(
        None,
        description="Data file whose texts define the vocabulary to keep (with special tokens and the "
        "single-character alphabet); tokenizer and embedding matrix are rebuilt and proven identical on it.",
    )
    vocab_keep_alphabet: bool = Field(
        True,
        description="Also keep single-character tokens (WordPiece: and their ## forms), so words outside the "
        "corpus still split into characters instead of becoming [UNK].",
    )
    vocab_floor: int = Field(
        0, ge=0,
        description="Also keep the N lowest-id ordinary tokens ([unusedK] placeholders skipped): WordPiece and BPE "
        "vocabularies list frequent tokens first, so text outside the corpus tokenises as before more often, "
        "at N more embedding rows.",
    )
    sparsity: float | str | None = Field(
        None,
        description="Zero this fraction of the encoder's Linear weights by global magnitude (e.g. 0.5), or "
        "'2:4' (two of every four consecutive input weights). Makes the weights compress, not run faster "
        "on CPU runtimes (see the manifest note).",
    )
    # --- importance ----------------------------------------------------------------------------------
    samples: int = Field(256, ge=1, description="Rows of the data sample the importance scores are computed on.")
    importance_data: str | None = Field(
        None,
        description="Data file for the importance scores (default: the --train data, else the vocabulary "
        "corpus, else the built-in sample sentences).",
    )
    max_length: int = Field(128, ge=8, description="Truncate texts to this many tokens (scores and recovery).")
    text_column: str | None = Field(None, description="Text column of the data files (auto-detected).")
    label_column: str | None = Field(None, description="Label column of the data files (auto-detected).")
    # --- recovery ------------------------------------------------------------------------------------
    recover_steps: int = Field(
        0, ge=0, description="Distil from the unpruned model for this many optimizer steps after pruning (needs train data)."
    )
    recover_lr: float = Field(1e-4, gt=0, description="Peak learning rate of the recovery distillation.")
    recover_after_vocab: bool = Field(
        True,
        description="With --vocab-corpus and --recover-steps: prune the vocabulary first and recover with the "
        "pruned tokenizer, so the model learns how text outside the corpus now splits (on by default); off: "
        "recover with the original tokenizer, then prune the vocabulary (exact on the corpus only).",
    )
    recover_batch_size: int = Field(32, ge=1, description="Batch size of the recovery distillation.")
    teacher: str | None = Field(
        None, description="Teacher for recovery (default: the unpruned input model); must share its tokenizer."
    )
    teacher_cache: str | None = Field(
        None,
        description="Directory for the recovery teacher's outputs, reused by later runs with the same teacher and "
        "transfer data (e.g. several pruning levels of one model).",
    )
    # --- budget --------------------------------------------------------------------------------------
    profile: str | None = Field(
        None,
        description="Device profile (name or file): raise the head/FFN ratios in steps of 0.1 until its "
        "max_model_size_mb and latency budgets hold for the exported model.",
    )
    budget_precision: BudgetPrecision = Field(
        BudgetPrecision.int8,
        description="Precision the deployed model will have: budget candidates are exported to ONNX and, for "
        "int8, dynamically quantized before their size and latency are measured.",
    )
    max_ratio: float = Field(
        0.9, gt=0, lt=1, description="Largest head/FFN pruning ratio the budget search may reach."
    )
    seed: int = Field(42, description="Seed for the data sample, random projections and recovery.")
    allow_pickle: bool = Field(False, description="Allow pickled (.bin) weights.")
    trust_remote_code: bool = Field(False, description="Allow checkpoints with custom code (auto_map).")

    @field_validator("sparsity", mode="before")
    @classmethod
    def _sparsity(cls, v: Any) -> Any:
        if v is None or v == SEMI_STRUCTURED:
            return v
        try:
            value = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{v!r} is neither a ratio in [0, 1) nor '2:4'") from None
        if not 0 <= value < 1 or isinstance(v, bool):
            raise ValueError(f"{v!r} is outside [0, 1): give the fraction of weights to zero, e.g. 0.5, or '2:4'")
        return value or None

    @property
    def structural(self) -> bool:
        return bool(self.heads or self.ffn or self.drop_layers or self.profile)


# ---------------------------------------------------------------------------------------------
# Finding the parts of a layer (by structure, not by module names)
# ---------------------------------------------------------------------------------------------


@dataclass
class LayerParts:
    """One transformer block's attention module, its output projection and its two FFN Linears."""

    index: int
    layer: Any
    attention: Any
    out_proj: Any
    ffn_up: Any
    ffn_up_name: str
    ffn_down: Any
    ffn_down_name: str
    heads: int
    head_dim: int


def ffn_key(config) -> str:
    """The config attribute that holds the FFN width (intermediate_size for BERT, hidden_dim for DistilBERT)."""
    values = config.to_dict()
    for key in _FFN_KEYS:
        if isinstance(values.get(key), int):
            return key
    raise ConfigError(
        f"{type(config).__name__} has no FFN width setting ({', '.join(_FFN_KEYS)})",
        hint="FFN pruning supports BERT-family encoders (BERT, DistilBERT, RoBERTa, MiniLM, ELECTRA)",
    )


def original_heads(config, layer: int) -> list[int]:
    """Original indices of the heads layer ``layer`` still has, in their order in the weights."""
    gone = {int(h) for h in (getattr(config, "pruned_heads", None) or {}).get(layer, [])}
    return [h for h in range(config.num_attention_heads) if h not in gone]


def layer_parts(model) -> list[LayerParts]:
    """Attention and FFN parts of every layer; ConfigError naming what is missing for other architectures."""
    from torch import nn

    from compress.stages.distill import layer_list

    cfg = model.config
    _, layers = layer_list(model)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    width = getattr(cfg, ffn_key(cfg))
    arch = type(model).__name__
    parts = []
    for i, layer in enumerate(layers):
        attn = next((m for _, m in layer.named_modules() if callable(getattr(m, "prune_heads", None))), None)
        if attn is None:  # transformers 5 dropped prune_heads: the block is the layer's `attention`
            attn = getattr(layer, "attention", None)
        if attn is None:
            raise ConfigError(f"cannot find the attention block (with prune_heads) in layer {i} of {arch}",
                              hint="head pruning supports BERT-family encoders (BERT, DistilBERT, RoBERTa, MiniLM)")
        attn_linears = [m for m in attn.modules() if isinstance(m, nn.Linear)]
        heads = len(original_heads(cfg, i))
        out_proj = attn_linears[-1] if attn_linears else None
        if out_proj is None or out_proj.in_features != heads * head_dim:
            raise ConfigError(
                f"layer {i} of {arch}: the attention output projection does not take {heads} heads x {head_dim}",
                hint="this architecture is not supported by structured pruning",
            )
        inside = {id(m) for m in attn.modules()}
        ffn = [(n, m) for n, m in layer.named_modules() if isinstance(m, nn.Linear) and id(m) not in inside]
        if len(ffn) != 2 or ffn[0][1].out_features != width or ffn[1][1].in_features != width:
            raise ConfigError(
                f"layer {i} of {arch}: expected two FFN Linear layers around width {width}, found "
                f"{[(n, m.in_features, m.out_features) for n, m in ffn]}",
                hint="this architecture is not supported by FFN pruning",
            )
        parts.append(LayerParts(i, layer, attn, out_proj, ffn[0][1], ffn[0][0], ffn[1][1], ffn[1][0], heads, head_dim))
    return parts


def _set_module(root, dotted: str, new) -> None:
    parent_name, _, attr = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def encoder_linears(model) -> list[tuple[str, Any]]:
    """(name, Linear) of every Linear inside the transformer layers: what sparsity applies to."""
    from torch import nn

    from compress.stages.distill import layer_list

    prefix, layers = layer_list(model)
    return [(f"{prefix}.{n}", m) for n, m in layers.named_modules() if isinstance(m, nn.Linear)]


# ---------------------------------------------------------------------------------------------
# Importance
# ---------------------------------------------------------------------------------------------


@dataclass
class Importance:
    """Importance scores on a data sample; lists are per current layer, entries per current head/neuron."""

    heads: list[np.ndarray]
    ffn: list[np.ndarray]
    layers: np.ndarray  # output change when the layer is skipped (higher: more important)
    samples: int
    loss: str
    layer_metric: str

    def select_layers(self, keep: list[int]) -> Importance:
        return Importance([self.heads[i] for i in keep], [self.ffn[i] for i in keep], self.layers[keep],
                          self.samples, self.loss, self.layer_metric)

    def summary(self) -> dict[str, Any]:
        def r(x: np.ndarray) -> list[float]:
            return [float(f"{v:.4g}") for v in x]

        return {
            "samples": self.samples,
            "loss": self.loss,
            "heads": [r(h) for h in self.heads],
            "layers": r(self.layers),
            "layer_metric": self.layer_metric,
            "ffn": [{"min": float(f"{h.min():.4g}"), "median": float(f"{np.median(h):.4g}"),
                     "max": float(f"{h.max():.4g}")} for h in self.ffn],
        }


def length_order(texts: list[str]) -> list[int]:
    """The order :func:`_batches` runs texts in (shortest first: little padding)."""
    return sorted(range(len(texts)), key=lambda i: len(texts[i]))


def _batches(tokenizer, texts: list[str], labels: list[int] | None, max_length: int, batch_size: int):
    import torch

    order = length_order(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                        return_tensors="pt")
        lab = torch.tensor([labels[i] for i in idx]) if labels is not None else None
        yield enc, lab


def _pooled(out, mask, pooling: str | None, normalize: bool):
    from compress.stages.distill import _pool

    return _pool(out.last_hidden_state, mask, pooling or "mean", normalize)


def importance_scores(
    model,
    tokenizer,
    texts: list[str],
    labels: list[int] | None = None,
    *,
    classification: bool = True,
    pooling: str | None = None,
    normalize: bool = False,
    max_length: int = 128,
    batch_size: int = 16,
    seed: int = 0,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> Importance:
    """Taylor importance of every head and FFN neuron, and the output change of skipping each layer.

    ``labels`` (class ids, -100 or None for unlabelled rows) drive a cross-entropy loss; rows without
    one use the model's own argmax. Feature-extraction models (``classification=False``) use a random
    projection of the pooled embedding per example.
    """
    import torch
    import torch.nn.functional as F

    if not texts:
        raise DataError("no texts to compute importance scores on", hint="pass a data file with at least one row")
    parts = layer_parts(model)
    was_training = model.training
    model.eval()
    heads = [np.zeros(p.heads) for p in parts]
    ffn = [np.zeros(p.ffn_up.out_features) for p in parts]
    saved: dict[tuple[str, int], Any] = {}

    def keep(kind: str, i: int):
        def hook(module, args):
            x = args[0]
            saved[(kind, i)] = x
        return hook

    handles = []
    for p in parts:
        handles.append(p.out_proj.register_forward_pre_hook(keep("head", p.index)))
        handles.append(p.ffn_down.register_forward_pre_hook(keep("ffn", p.index)))
    gen = torch.Generator().manual_seed(seed)
    done = 0
    used_labels = False
    try:
        for enc, lab in _batches(tokenizer, texts, labels, max_length, batch_size):
            saved.clear()
            out = model(**model_feed(model, enc))
            if classification:
                logits = out.logits.float()
                target = logits.argmax(-1)
                if lab is not None:
                    known = lab >= 0
                    used_labels = used_labels or bool(known.any())
                    target = torch.where(known, lab, target)
                loss = F.cross_entropy(logits, target, reduction="sum")
            else:
                emb = _pooled(out, enc["attention_mask"], pooling, normalize).float()
                r = torch.randn(emb.shape, generator=gen)
                loss = (emb * r).sum()
            keys = list(saved)
            grads = torch.autograd.grad(loss, [saved[k] for k in keys])
            with torch.no_grad():
                for (kind, i), g in zip(keys, grads, strict=True):
                    x = saved[(kind, i)]
                    prod = (x * g).float()
                    if kind == "head":
                        b, t, _ = prod.shape
                        per = prod.view(b, t, parts[i].heads, parts[i].head_dim).sum((1, 3))
                        heads[i] += per.abs().sum(0).numpy()
                    else:
                        ffn[i] += prod.sum(1).abs().sum(0).numpy()
            done += enc["input_ids"].shape[0]
            if progress:
                progress({"phase": "importance", "done": done, "total": len(texts) * 2})
    finally:
        for h in handles:
            h.remove()
        saved.clear()
    n = len(texts)
    heads = [h / n for h in heads]
    ffn = [f / n for f in ffn]
    layers, metric = _layer_skip_scores(model, tokenizer, texts, classification, pooling, normalize, max_length,
                                        batch_size, parts, progress)
    model.train(was_training)
    if classification:
        loss_name = "cross entropy with labels (model argmax where unlabelled)" if used_labels else \
            "cross entropy with the model's own argmax (pseudo-labels)"
    else:
        loss_name = "random projection of the pooled embedding"
    return Importance(heads, ffn, layers, n, loss_name, metric)


def _layer_skip_scores(model, tokenizer, texts, classification, pooling, normalize, max_length, batch_size, parts,
                       progress) -> tuple[np.ndarray, str]:
    """Mean output change on ``texts`` when each layer in turn is replaced by the identity."""
    import torch
    import torch.nn.functional as F

    def outputs() -> list[Any]:
        res = []
        with torch.inference_mode():
            for enc, _ in _batches(tokenizer, texts, None, max_length, batch_size):
                out = model(**model_feed(model, enc))
                res.append(out.logits.float().log_softmax(-1) if classification
                           else _pooled(out, enc["attention_mask"], pooling, normalize).float())
        return res

    def skip(module, args, kwargs, output):
        hidden = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
        if isinstance(output, tuple):
            return (hidden, *output[1:])
        return hidden

    full = outputs()
    scores = np.zeros(len(parts))
    for p in parts:
        handle = p.layer.register_forward_hook(skip, with_kwargs=True)
        try:
            skipped = outputs()
        finally:
            handle.remove()
        total = 0.0
        for a, b in zip(full, skipped, strict=True):
            if classification:
                total += float(F.kl_div(b, a, log_target=True, reduction="sum"))
            else:
                total += float((1 - F.cosine_similarity(a, b, dim=-1)).sum())
        scores[p.index] = total / len(texts)
        if progress:
            progress({"phase": "importance", "done": len(texts) * (1 + (p.index + 1) / len(parts)),
                      "total": len(texts) * 2})
    metric = "KL(full || layer skipped) of the class distribution" if classification else \
        "1 - cosine(full, layer skipped) of the pooled embedding"
    return scores, metric


# ---------------------------------------------------------------------------------------------
# Structural pruning
# ---------------------------------------------------------------------------------------------


def drop_layers(model, importance: Importance, n: int) -> dict[str, Any]:
    """Remove the ``n`` layers whose skipping changed the outputs least; returns what was removed."""
    from torch import nn

    from compress.stages.distill import layer_list

    prefix, layers = layer_list(model)
    total = len(layers)
    if n >= total:
        raise ConfigError(f"--drop-layers {n}: the model has {total} layers and at least one must stay",
                          hint=f"drop at most {total - 1} layers")
    order = np.argsort(importance.layers, kind="stable")
    dropped = sorted(int(i) for i in order[:n])
    keep = [i for i in range(total) if i not in dropped]
    _set_module(model, prefix, nn.ModuleList([layers[i] for i in keep]))
    cfg = model.config
    pruned = {int(k): v for k, v in (getattr(cfg, "pruned_heads", None) or {}).items()}
    if pruned:  # transformers 5 configs have no pruned_heads (and no head pruning)
        cfg.pruned_heads = {new: list(pruned[old]) for new, old in enumerate(keep) if pruned.get(old)}
    cfg.num_hidden_layers = len(keep)
    for new, old in enumerate(keep):
        for m in layers[old].modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = new
    return {"before": total, "after": len(keep), "dropped": dropped, "kept": keep}


def _plan_heads(importance: Importance, ratio: float) -> tuple[dict[int, list[int]], list[str]]:
    """Which current head indices to remove per layer: global ranking of per-layer-normalised scores."""
    counts = [len(h) for h in importance.heads]
    total, n_layers = sum(counts), len(counts)
    n_remove = round(ratio * total)
    max_remove = total - n_layers
    if n_remove > max_remove:
        raise ConfigError(
            f"--heads {ratio:g} removes {n_remove} of {total} heads, which would empty a layer (each of the "
            f"{n_layers} layers keeps at least one head: at most {max_remove} heads, --heads "
            f"{math.floor(max_remove / total * 100) / 100:g})",
            hint="lower --heads, or remove whole layers with --drop-layers N",
        )
    ranked = []
    for layer, h in enumerate(importance.heads):
        norm = float(np.linalg.norm(h)) or 1.0
        ranked += [(float(s) / norm, layer, i) for i, s in enumerate(h)]
    ranked.sort()
    remaining = counts[:]
    plan: dict[int, list[int]] = {}
    notes: list[str] = []
    removed = 0
    for _, layer, i in ranked:
        if removed == n_remove:
            break
        if remaining[layer] == 1:
            note = (f"layer {layer}: the ranking would remove all its heads; its most important head was kept "
                    "(use --drop-layers to remove whole layers)")
            if note not in notes:
                notes.append(note)
            continue
        plan.setdefault(layer, []).append(i)
        remaining[layer] -= 1
        removed += 1
    return plan, notes


def prune_heads_and_ffn(model, importance: Importance, *, heads: float = 0.0, ffn: float = 0.0) -> dict[str, Any]:
    """Remove the least important heads (fraction ``heads`` of all) and FFN neurons (fraction ``ffn`` per layer).

    ``importance`` must describe the model's current layers. Returns a record of what was removed.
    """
    import torch
    from torch import nn

    for name, value in (("--heads", heads), ("--ffn", ffn)):
        if not 0 <= value < 1:
            raise ConfigError(f"{name} {value:g} is outside [0, 1)", hint="give the fraction to remove, e.g. 0.4")
    parts = layer_parts(model)
    if len(importance.heads) != len(parts):
        raise ConfigError("importance scores describe another number of layers", hint="recompute the scores")
    cfg = model.config
    record: dict[str, Any] = {}
    if heads:
        _check_head_pruning(model)
        plan, notes = _plan_heads(importance, heads)
        to_prune = {layer: [original_heads(cfg, layer)[i] for i in idx] for layer, idx in plan.items()}
        before = [p.heads for p in parts]
        model.prune_heads(to_prune)
        after = [len(original_heads(cfg, i)) for i in range(len(parts))]
        record["heads"] = {
            "before": sum(before), "after": sum(after), "per_layer_before": before, "per_layer_after": after,
            "removed": {str(k): sorted(v) for k, v in sorted(to_prune.items())}, "notes": notes,
            "uniform": len(set(after)) == 1,
        }
    if ffn:
        key = ffn_key(cfg)
        width = getattr(cfg, key)
        k = max(1, width - round(ffn * width))
        kept_scores = []
        with torch.no_grad():
            for p in parts:
                scores = importance.ffn[p.index]
                keep = np.sort(np.argsort(-scores, kind="stable")[:k])
                kept_scores.append(float(scores[keep].min()))
                idx = torch.as_tensor(keep, dtype=torch.long)
                up, down = p.ffn_up, p.ffn_down
                new_up = nn.Linear(up.in_features, k, bias=up.bias is not None, dtype=up.weight.dtype)
                new_up.weight.copy_(up.weight[idx])
                if up.bias is not None:
                    new_up.bias.copy_(up.bias[idx])
                new_down = nn.Linear(k, down.out_features, bias=down.bias is not None, dtype=down.weight.dtype)
                new_down.weight.copy_(down.weight[:, idx])
                if down.bias is not None:
                    new_down.bias.copy_(down.bias)
                _set_module(p.layer, p.ffn_up_name, new_up)
                _set_module(p.layer, p.ffn_down_name, new_down)
        setattr(cfg, key, k)
        record["ffn"] = {"config_key": key, "before": width, "after": k, "removed_per_layer": width - k,
                         "lowest_kept_score": [float(f"{s:.4g}") for s in kept_scores]}
    return record


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

    def record(self) -> dict[str, Any]:
        return {"before": self.old_size, "after": len(self.keep), "removed": self.old_size - len(self.keep),
                "kept_from_corpus": self.from_corpus, "kept_special": self.special,
                "kept_alphabet": self.alphabet, "kept_floor": self.floor, "corpus_texts": self.corpus_texts,
                "corpus_tokens": self.corpus_tokens}


def _backend_json(tokenizer) -> dict[str, Any]:
    return json.loads(tokenizer.backend_tokenizer.to_str())


def plan_vocabulary(tokenizer, texts: list[str], *, keep_alphabet: bool = True, floor: int = 0, model_config=None,
                    source: str | None = None) -> VocabPlan:
    """Token ids to keep: those ``texts`` tokenise to, special/added tokens, ids the model config names,
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
        special_ids |= {v for k in _TOKEN_ID_KEYS if isinstance(v := getattr(model_config, k, None), int)
                        and 0 <= v < old_size}
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
    if out is not None:
        with torch.no_grad():
            out.weight = nn.Parameter(out.weight[idx].clone())
            if getattr(out, "bias", None) is not None:
                out.bias = nn.Parameter(out.bias[idx].clone())
            out.out_features = len(keep)
    cfg.vocab_size = len(keep)
    for key in _TOKEN_ID_KEYS:
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value in old2new:
            setattr(cfg, key, old2new[value])
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


# ---------------------------------------------------------------------------------------------
# Sparsity
# ---------------------------------------------------------------------------------------------


def _gzip_size(tensors: list[Any]) -> int:
    comp = zlib.compressobj(6)
    size = 0
    for t in tensors:
        size += len(comp.compress(t.detach().cpu().numpy().tobytes()))
    return size + len(comp.flush())


def _semi_structured_mask(w):
    out_f, in_f = w.shape
    groups = w.abs().reshape(out_f, in_f // 4, 4)
    top = groups.topk(2, dim=-1).indices
    import torch

    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, top, True)
    return mask.reshape(out_f, in_f)


class Sparsifier:
    """Masks on the encoder's Linear weights: global magnitude (with a cubic schedule) or 2:4.

    Call :meth:`apply` once for one-shot sparsity; pass the instance as ``distill(on_step=...)`` to keep
    the masks (and, for a ratio, the schedule) applied after every optimizer step of a recovery.
    """

    def __init__(self, sparsity: float | str, total_steps: int = 0) -> None:
        self.sparsity = sparsity
        self.total_steps = total_steps
        self.masks: dict[str, Any] = {}
        self.skipped: list[str] = []

    @property
    def semi_structured(self) -> bool:
        return self.sparsity == SEMI_STRUCTURED

    def target_at(self, step: int) -> float:
        """Cubic schedule s_t = s_f (1 - (1 - t/T)^3) (Zhu & Gupta 2017); s_f from the start without steps."""
        s_f = float(self.sparsity)
        if not self.total_steps:
            return s_f
        t = min(max(step, 0), self.total_steps) / self.total_steps
        return s_f * (1 - (1 - t) ** 3)

    def apply(self, model, step: int | None = None) -> None:
        """Compute (or refresh) the masks for ``step`` (final target when None) and zero the weights."""
        import torch

        linears = encoder_linears(model)
        with torch.no_grad():
            if self.semi_structured:
                if not self.masks:
                    for name, m in linears:
                        if m.in_features % 4:
                            self.skipped.append(name)
                            continue
                        self.masks[name] = _semi_structured_mask(m.weight)
            else:
                for name, m in linears:  # weights pruned earlier stay pruned
                    if name in self.masks:
                        m.weight.mul_(self.masks[name])
                target = self.target_at(self.total_steps if step is None else step)
                flat = torch.cat([m.weight.detach().abs().flatten() for _, m in linears])
                k = round(target * flat.numel())
                if k <= 0:
                    self.masks = {name: torch.ones_like(m.weight, dtype=torch.bool) for name, m in linears}
                else:
                    threshold = flat.kthvalue(k).values
                    self.masks = {name: m.weight.abs() > threshold for name, m in linears}
            for name, m in linears:
                if name in self.masks:
                    m.weight.mul_(self.masks[name])

    def __call__(self, model, step: int, total_steps: int) -> None:
        """Recovery hook: after optimizer step ``step`` of ``total_steps``."""
        self.total_steps = total_steps
        if self.semi_structured:
            import torch

            with torch.no_grad():
                for name, m in encoder_linears(model):
                    if name in self.masks:
                        m.weight.mul_(self.masks[name])
        else:
            self.apply(model, step)


def sparsity_report(model, sparsity: float | str) -> dict[str, Any]:
    """Measured sparsity of the encoder's Linear weights (and the 2:4 check) of ``model``."""
    linears = encoder_linears(model)
    weights = sum(m.weight.numel() for _, m in linears)
    zeros = sum(int((m.weight == 0).sum()) for _, m in linears)
    total = sum(p.numel() for p in model.parameters())
    rec: dict[str, Any] = {
        "mode": "2:4" if sparsity == SEMI_STRUCTURED else "unstructured",
        "target": sparsity,
        "achieved": zeros / max(weights, 1),
        "zeros": zeros,
        "weights": weights,
        "of_all_parameters": zeros / max(total, 1),
    }
    if sparsity == SEMI_STRUCTURED:
        ok = all(int((m.weight.reshape(m.out_features, -1, 4) != 0).sum(-1).max()) <= 2
                 for _, m in linears if m.in_features % 4 == 0)
        rec["pattern_2_4_holds"] = ok
    return rec


def apply_sparsity(model, sparsity: float | str) -> dict[str, Any]:
    """One-shot sparsity (global magnitude ratio, or '2:4') on the encoder's Linear weights, in place.

    Returns the measured sparsity and the compressed (gzip) size of those weights before and after.
    """
    if sparsity != SEMI_STRUCTURED and not 0 <= float(sparsity) < 1:
        raise ConfigError(f"--sparsity {sparsity} is outside [0, 1)", hint="give a fraction such as 0.5, or 2:4")
    linears = encoder_linears(model)
    before = _gzip_size([m.weight for _, m in linears])
    sp = Sparsifier(sparsity)
    sp.apply(model)
    rec = sparsity_report(model, sparsity)
    rec["skipped"] = sp.skipped
    rec["gzip_bytes_before"] = before
    rec["gzip_bytes_after"] = _gzip_size([m.weight for _, m in linears])
    rec["dense_bytes"] = sum(m.weight.numel() * m.weight.element_size() for _, m in linears)
    return rec


# ---------------------------------------------------------------------------------------------
# Budget search
# ---------------------------------------------------------------------------------------------


@dataclass
class _Search:
    profile: Any
    size_mb: float | None
    latency_ms: float | None
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def meets(self, c: dict[str, Any]) -> bool:
        return (self.size_mb is None or c["size_mb"] <= self.size_mb) and \
            (self.latency_ms is None or c["latency_ms"] <= self.latency_ms)


def _measure_candidate(model, tokenizer, teacher, importance: Importance, drop: int, heads: float, ffn: float,
                       vocab: VocabPlan | None, config: PruneConfig, search: _Search, scratch: Path) -> dict[str, Any]:
    """Prune a copy of ``model`` at these ratios, export it (and quantize), measure size and estimated latency."""
    from compress.estimate import estimate
    from compress.stages.export import ExportConfig, export
    from compress.stages.quantize import QuantizeConfig, quantize
    from compress.budgets import MB

    cand = copy.deepcopy(model)
    imp = importance
    if drop:
        kept = drop_layers(cand, imp, drop)["kept"]
        imp = imp.select_layers(kept)
    prune_heads_and_ffn(cand, imp, heads=heads, ffn=ffn)
    tok = prune_vocabulary(cand, tokenizer, vocab) if vocab else tokenizer
    tag = f"h{heads:.2f}-f{ffn:.2f}"
    ckpt = scratch / f"{tag}-pt"
    _save_checkpoint(cand, tok, teacher, ckpt)
    art = export(ckpt, scratch / f"{tag}-onnx", ExportConfig(parity_samples=2), force=True)
    if config.budget_precision is BudgetPrecision.int8:
        art = quantize(art, scratch / f"{tag}-int8", QuantizeConfig(parity_samples=2), force=True)
    res = {"heads": round(heads, 4), "ffn": round(ffn, 4), "size_mb": round(art.size_bytes() / MB, 3)}
    if search.latency_ms is not None:
        res["latency_ms"] = round(estimate(art, search.profile).latency_ms, 3)
    search.candidates.append(res)
    log.info("budget candidate heads %.2f ffn %.2f: %.2f MB%s", heads, ffn, res["size_mb"],
             f", ~{res['latency_ms']:.2f} ms" if "latency_ms" in res else "")
    return res


def _search_budget(model, tokenizer, teacher, importance: Importance, vocab: VocabPlan | None,
                   config: PruneConfig, progress) -> tuple[float, float, dict[str, Any]]:
    """Smallest step on the ratio ladder whose exported candidate meets the profile's budgets."""
    from compress.estimate import profile_peaks
    from compress.profiles import load_profile

    prof = load_profile(config.profile)
    b = prof.budgets
    lat_given = [v for v in (b.latency_ms.p50, b.latency_ms.p95, b.latency_ms.p99) if v is not None]
    search = _Search(prof, b.max_model_size_mb, min(lat_given) if lat_given else None)
    if search.size_mb is None and search.latency_ms is None:
        raise ConfigError(f"profile {prof.name} sets neither budgets.max_model_size_mb nor a latency budget",
                          hint="pick a profile with a size or latency budget, or give --heads/--ffn ratios")
    unchecked = None
    if search.latency_ms is not None:
        try:
            profile_peaks(prof)
        except ConfigError as e:
            if search.size_mb is None:
                raise  # names the missing hardware facts
            unchecked = f"latency budget {search.latency_ms:g} ms not used: {e.message}"
            log.warning("%s", unchecked)
            search.latency_ms = None
    dims = [d for d in ("heads", "ffn") if getattr(config, d)] or ["heads", "ffn"]
    n_layers = len(importance.heads) - config.drop_layers
    heads_kept = sorted((len(h) for h in importance.heads), reverse=True)
    total_heads = sum(heads_kept[:n_layers]) if config.drop_layers else sum(heads_kept)
    max_heads = min(config.max_ratio, math.floor((total_heads - n_layers) / total_heads * 100) / 100)
    caps = {"heads": max_heads, "ffn": config.max_ratio}
    start = {"heads": config.heads, "ffn": config.ffn}
    ladder: list[tuple[float, float]] = []
    for k in range(11):
        lv = {d: (min(max(start[d], 0.1 * k), caps[d]) if d in dims else start[d]) for d in ("heads", "ffn")}
        step = (round(lv["heads"], 4), round(lv["ffn"], 4))
        if not ladder or step != ladder[-1]:
            ladder.append(step)
    with tempfile.TemporaryDirectory(prefix="edgecompress-prune-budget-") as tmp:
        scratch = Path(tmp)

        def run(i: int) -> dict[str, Any]:
            if progress:
                progress({"phase": "budget", "heads": ladder[i][0], "ffn": ladder[i][1]})
            return _measure_candidate(model, tokenizer, teacher, importance, config.drop_layers, *ladder[i], vocab,
                                      config, search, scratch)

        first = run(0)
        if search.meets(first):
            chosen = 0
        else:
            last = run(len(ladder) - 1) if len(ladder) > 1 else first
            if not search.meets(last):
                parts = []
                if search.size_mb is not None:
                    parts.append(f"size {last['size_mb']:.2f} MB (budget {search.size_mb:g} MB)")
                if search.latency_ms is not None:
                    parts.append(f"estimated latency {last['latency_ms']:.2f} ms (budget {search.latency_ms:g} ms)")
                raise ConfigError(
                    f"profile {prof.name}: the budget cannot be met even at the most pruning allowed (heads "
                    f"{ladder[-1][0]:g}, ffn {ladder[-1][1]:g}{', drop-layers ' + str(config.drop_layers) if config.drop_layers else ''}"
                    f", {config.budget_precision}): best reachable {' and '.join(parts)}",
                    hint="also drop layers (--drop-layers), prune the vocabulary (--vocab-corpus), distil a smaller "
                    "student first, or pick a larger device",
                )
            lo, hi = 0, len(ladder) - 1  # lo fails, hi meets
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if search.meets(run(mid)):
                    hi = mid
                else:
                    lo = mid
            chosen = hi
    heads, ffn = ladder[chosen]
    record = {
        "profile": prof.name, "precision": str(config.budget_precision),
        "budgets": {"max_model_size_mb": search.size_mb, "latency_ms": search.latency_ms},
        "searched": dims, "candidates": search.candidates, "chosen": {"heads": heads, "ffn": ffn},
        "latency": "roofline estimate (compress.estimate), not a measurement" if search.latency_ms else unchecked,
    }
    return heads, ffn, record


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def _save_checkpoint(model, tokenizer, teacher, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))
    for name in _ST_FILES:
        if (teacher.path / name).is_file():
            shutil.copy2(teacher.path / name, directory / name)
    for name in _ST_DIRS:
        if (teacher.path / name).is_dir() and not (directory / name).exists():
            shutil.copytree(teacher.path / name, directory / name)


def _load_input(source: Path, config: PruneConfig):
    from compress.models import load_teacher

    parent = None
    if is_artifact(source):
        parent = load_artifact(source)
        if parent.format is not Format.pytorch:
            raise ArtifactError(
                f"{source} is a {parent.format} artifact; pruning changes PyTorch models",
                hint="prune the teacher checkpoint or a PyTorch artifact (e.g. a distilled student), then export it",
            )
    teacher = load_teacher(source, parent.task if parent else None, allow_pickle=config.allow_pickle,
                           trust_remote_code=config.trust_remote_code)
    return parent, teacher


def _texts(path: str | Path | None, config: PruneConfig, label2id, n: int | None = None):
    from compress.data import load_dataset

    ds = load_dataset(path, text_column=config.text_column, label_column=config.label_column, label2id=label2id,
                      num_labels=len(label2id) if label2id else None)
    if n is not None:
        ds = ds.sample(n, seed=config.seed)
    return ds


def _outputs(model, tokenizer, texts: list[str], max_length: int, classification: bool, pooling, normalize):
    import torch

    res = []
    with torch.inference_mode():
        for enc, _ in _batches(tokenizer, texts, None, max_length, 32):
            out = model(**model_feed(model, enc))
            res.append(out.logits.float() if classification
                       else _pooled(out, enc["attention_mask"], pooling, normalize).float())
    return torch.cat(res) if res else None


def _recover(model, tokenizer, teacher, source: Path, train, eval_data, config: PruneConfig,
             sparsifier: Sparsifier | None, scratch: Path, progress) -> tuple[Any, dict[str, Any]]:
    """Short distillation from the unpruned model; returns the recovered model and the distill metrics."""
    from compress.stages.distill import DistillConfig, distill

    student_dir = scratch / "pruned"
    _save_checkpoint(model, tokenizer, teacher, student_dir)
    dcfg = DistillConfig(
        student=str(student_dir), max_steps=config.recover_steps, lr=config.recover_lr,
        batch_size=config.recover_batch_size, max_length=config.max_length, eval_every=config.recover_steps,
        seed=config.seed, text_column=config.text_column, label_column=config.label_column,
        allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code,
    )
    kwargs: dict[str, Any] = {"on_step": sparsifier} if sparsifier is not None else {}
    if config.teacher_cache:
        kwargs["teacher_cache"] = config.teacher_cache
    result = distill(config.teacher or source, train, scratch / "recovered", dcfg, eval_data=eval_data,
                     run_dir=scratch / "run", force=True, progress=progress, **kwargs)
    recovered = type(model).from_pretrained(str(result.artifact.path), local_files_only=True, use_safetensors=True)
    recovered.eval()
    m = result.metrics
    keys = ("steps", "train_seconds", "teacher_cache_seconds", "transfer_rows", "eval_rows", "metric", "eval_metric",
            "teacher_eval_metric", "retention", "stopped")
    rec = {k: m[k] for k in keys if k in m}
    rec["teacher"] = str(Path(config.teacher or source).resolve())
    rec["loss"] = {"soft_weight": dcfg.soft_weight, "hard_weight": dcfg.hard_weight, "temperature": dcfg.temperature}
    if m.get("history"):
        rec["last_loss"] = {k: v for k, v in m["history"][-1].items() if k not in ("step", "metric")}
    return recovered, rec


def _prune_vocab_and_prove(model, tokenizer, vocab_plan, proof_texts: list[str], progress) -> tuple[Any, dict]:
    """Prune the vocabulary in place; the new tokenizer and the record with its proof on the corpus (every
    corpus text gives the same embeddings through the new tokenizer as through the old)."""
    old_emb = model.get_input_embeddings().weight.detach().clone()
    new_tokenizer = prune_vocabulary(model, tokenizer, vocab_plan)
    if progress:
        progress({"phase": "vocab-proof", "label": f"proving the vocabulary on {len(proof_texts):,} texts"})
    vrec = vocab_plan.record()
    vrec["proof"] = prove_vocabulary(tokenizer, old_emb, new_tokenizer, model.get_input_embeddings().weight.detach(),
                                     proof_texts)
    return new_tokenizer, vrec


def prune(
    source: Path | str,
    out: Path | str,
    config: PruneConfig | None = None,
    *,
    train: Path | str | None = None,
    eval_data: Path | str | None = None,
    force: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> Artifact:
    """Prune the PyTorch model at ``source`` (checkpoint or pytorch artifact) into a new artifact at ``out``.

    Order: importance scores → (budget search) → layers → heads/FFN → sparsity → recovery (``train``)
    → vocabulary → write, reload and prove. ``progress`` receives dicts with a ``phase`` of
    ``importance``, ``budget``, ``teacher``/``train`` (recovery, from distill) or ``write``.
    """
    from compress.stages.distill import count_parameters

    config = config or PruneConfig()
    out = check_output(out, force)
    source = Path(source)
    t0 = time.perf_counter()
    if config.recover_steps and train is None:
        raise ConfigError(f"--recover-steps {config.recover_steps} needs --train data", hint="pass --train DATA")
    if not (config.structural or config.vocab_corpus or config.sparsity is not None):
        raise ConfigError("nothing to prune", hint="give --heads, --ffn, --drop-layers, --vocab-corpus, --sparsity "
                          "or --profile")
    if train is not None and not config.recover_steps:
        log.warning("--train is used for importance scores only (no --recover-steps)")
    if progress:
        progress({"phase": "load", "label": f"loading {source}"})
    parent, teacher = _load_input(source, config)
    if out.resolve() == teacher.path.resolve():
        raise ConfigError("--out is the source directory", hint="choose a new directory for the artifact")
    classification = teacher.task is Task.text_classification
    label2id = {name: i for i, name in enumerate(teacher.info.labels)} if teacher.info.labels else None
    pooling, normalize = teacher.info.postprocess.pooling, teacher.info.postprocess.normalize
    model = copy.deepcopy(teacher.model)
    tokenizer = teacher.tokenizer
    params_before = count_parameters(model)
    size_before = sum((teacher.path / w).stat().st_size for w in teacher.info.weights)
    metrics: dict[str, Any] = {"parameters_before": params_before, "size_bytes_before": size_before}

    _check_request(model, config)

    # --- vocabulary plan (first: its corpus errors are cheap to find) -----------------------------
    vocab_plan = None
    corpus_ds = None
    if config.vocab_corpus:
        if progress:
            progress({"phase": "vocab-plan", "label": f"planning the vocabulary on {config.vocab_corpus}"})
        corpus_ds = _texts(config.vocab_corpus, config, label2id)
        vocab_plan = plan_vocabulary(tokenizer, corpus_ds.texts, keep_alphabet=config.vocab_keep_alphabet,
                                     floor=config.vocab_floor, model_config=model.config, source=config.vocab_corpus)

    # --- importance ---------------------------------------------------------------------------------
    importance = None
    if config.structural:
        data_path = config.importance_data or train or config.vocab_corpus
        if data_path is None:
            from compress.data import sample_data_path

            data_path = sample_data_path()
            log.warning("no data given: importance scores use the built-in sample sentences (pass --train or --data)")
        ds = _texts(data_path, config, label2id if classification else None, config.samples)
        labels = list(ds.labels) if classification and ds.labels is not None else None
        importance = importance_scores(
            model, tokenizer, ds.texts, labels, classification=classification, pooling=pooling, normalize=normalize,
            max_length=config.max_length, seed=config.seed, progress=progress,
        )
        imp_rec = importance.summary()
        imp_rec["data"] = str(data_path)
        metrics["importance"] = imp_rec

    # --- budget -------------------------------------------------------------------------------------
    heads, ffn = config.heads, config.ffn
    if config.profile:
        heads, ffn, metrics["budget"] = _search_budget(model, tokenizer, teacher, importance, vocab_plan, config,
                                                       progress)

    # --- structure ----------------------------------------------------------------------------------
    if progress and (config.drop_layers or heads or ffn):
        progress({"phase": "structure", "label": "removing layers, heads and neurons"})
    if config.drop_layers:
        metrics["layers"] = drop_layers(model, importance, config.drop_layers)
        importance = importance.select_layers(metrics["layers"]["kept"])
    if heads or ffn:
        metrics.update(prune_heads_and_ffn(model, importance, heads=heads, ffn=ffn))
    metrics["parameters_structural"] = count_parameters(model)

    # --- sparsity and recovery ----------------------------------------------------------------------
    sparsifier = None
    if config.sparsity is not None:
        if config.recover_steps:
            sparsifier = Sparsifier(config.sparsity, config.recover_steps)
            linears = encoder_linears(model)
            gz_before = _gzip_size([m.weight for _, m in linears])
            if sparsifier.semi_structured:
                sparsifier.apply(model)  # fixed 2:4 masks from the pruned weights, kept during recovery
        else:
            metrics["sparsity"] = apply_sparsity(model, config.sparsity)
    out.parent.mkdir(parents=True, exist_ok=True)
    proof_texts = corpus_ds.texts if corpus_ds is not None else []
    vocab_first = vocab_plan is not None and bool(config.recover_steps) and config.recover_after_vocab
    new_tokenizer, vrec = tokenizer, None
    if vocab_first:  # prune the vocabulary now (proven exact on the corpus), so recovery learns the new splits
        new_tokenizer, vrec = _prune_vocab_and_prove(model, tokenizer, vocab_plan, proof_texts, progress)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", suffix=".scratch", dir=out.parent) as tmp:
        scratch = Path(tmp)
        if config.recover_steps:
            model, metrics["recovery"] = _recover(model, new_tokenizer, teacher, source, train, eval_data, config,
                                                  sparsifier, scratch, progress)
            metrics["recovery"]["tokenizer"] = "pruned vocabulary" if vocab_first else "original"
            if sparsifier is not None:
                sparsifier.total_steps = config.recover_steps
                if not sparsifier.semi_structured:
                    sparsifier.apply(model)  # the final target (no-op when the schedule reached it)
                else:
                    sparsifier(model, config.recover_steps, config.recover_steps)
                rec = sparsity_report(model, config.sparsity)
                linears = encoder_linears(model)
                rec.update({"skipped": sparsifier.skipped, "gzip_bytes_before": gz_before,
                            "gzip_bytes_after": _gzip_size([m.weight for _, m in linears]),
                            "dense_bytes": sum(m.weight.numel() * m.weight.element_size() for _, m in linears),
                            "schedule": "fixed 2:4 masks during recovery" if sparsifier.semi_structured
                            else f"cubic over {config.recover_steps} recovery steps"})
                metrics["sparsity"] = rec
        if "sparsity" in metrics:
            sp = metrics["sparsity"]
            runtime = None
            if config.profile:
                from compress.profiles import load_profile

                runtime = str(load_profile(config.profile).runtime.name)
            sp["note"] = SPARSITY_NOTE
            sp["runtime"] = runtime
            sp["runtime_note"] = _RUNTIME_SPARSITY.get(runtime or "", None) if runtime else None
            sp["speedup"] = False

        # --- vocabulary, write, reload, prove ---------------------------------------------------------
        if progress:
            progress({"phase": "write", "label": f"writing {out} and checking it against the pruned model"})
        probe = proof_texts[:64] or _texts(config.importance_data or train or _default_data(), config, label2id,
                                           64).texts
        if vocab_plan is not None and not vocab_first:
            # outputs of the unpruned vocabulary: the written model must give the same on corpus texts
            before_out = _outputs(model, tokenizer, probe, config.max_length, classification, pooling, normalize)
            new_tokenizer, vrec = _prune_vocab_and_prove(model, tokenizer, vocab_plan, proof_texts, progress)
        else:
            before_out = _outputs(model, new_tokenizer, probe, config.max_length, classification, pooling, normalize)
        with staged_dir(out, force) as stage:
            _save_checkpoint(model, new_tokenizer, teacher, stage)
            from compress.models import load_teacher

            written = load_teacher(stage, teacher.task)
            after_out = _outputs(written.model, written.tokenizer, probe, config.max_length, classification, pooling,
                                 normalize)
            diff = float((before_out - after_out).abs().max()) if before_out is not None else 0.0
            metrics["reload_check"] = {"texts": len(probe), "max_abs_diff": diff}
            if not diff <= 1e-4:
                raise StageError(
                    f"the written model's outputs differ from the pruned model's by {diff:.3g} after reloading",
                    hint="nothing was written; report this architecture",
                )
            if vocab_plan is not None:
                vrec["proof"]["output_max_abs_diff"] = diff
                vrec["recovered_after_pruning"] = vocab_first
                vrec["corpus"] = config.vocab_corpus
                if eval_data is not None:
                    ev = _texts(eval_data, config, label2id)
                    vrec["eval_coverage"] = vocabulary_coverage(tokenizer, written.tokenizer, vocab_plan.keep,
                                                                ev.texts)
                metrics["vocab"] = vrec
            if eval_data is not None and classification:
                from compress.stages.prune_eval import written_eval

                if progress:
                    progress({"phase": "written-eval", "label": "scoring the written model on the eval data"})
                root = parent.manifest.source.path if parent is not None and parent.manifest.source else None
                ev = written_eval(written, teacher, _texts(eval_data, config, label2id), config.max_length, root)
                if ev is not None:
                    metrics["eval"] = ev
            metrics["parameters_after"] = count_parameters(written.model)
            metrics["parameter_ratio"] = metrics["parameters_after"] / params_before
            metrics["size_bytes_after"] = sum(f.stat().st_size for f in stage.glob("*.safetensors"))
            if "sparsity" in metrics:
                metrics["sparsity"]["model_file_gzip_bytes"] = _file_gzip_size(stage / "model.safetensors")
            cfg = written.model.config
            metrics["architecture"] = {
                "layers": cfg.num_hidden_layers, "heads_per_layer": [len(original_heads(cfg, i))
                                                                     for i in range(cfg.num_hidden_layers)],
                "ffn": getattr(cfg, ffn_key(cfg)), "vocab_size": cfg.vocab_size,
            }
            manifest = written.manifest()
            if parent is not None:
                manifest.source = parent.manifest.source
                prior = list(parent.manifest.steps)
            else:
                manifest.source = teacher.source()
                prior = []
            manifest.versions = library_versions("accelerate") if config.recover_steps else library_versions()
            manifest.steps = [*prior, StepRecord(
                stage="prune",
                config=config.model_dump(mode="json"),
                config_version=CONFIG_VERSION,
                versions={k: manifest.versions.get(k) for k in ("torch", "transformers", "tokenizers", "accelerate")
                          if k in manifest.versions},
                input_digest=parent.digest if parent is not None else teacher.sha256,
                output_digest=digest_dir(stage),
                seconds=round(time.perf_counter() - t0, 3),
                metrics=_jsonable(metrics),
            )]
            write_manifest(stage, manifest)
            if progress:
                progress({"phase": "write", "path": str(out)})
    art = load_artifact(out)
    log.info("wrote %s (%s -> %s parameters)", out, f"{params_before:,}", f"{metrics['parameters_after']:,}")
    return art


def _check_head_pruning(model) -> None:
    if not callable(getattr(model, "prune_heads", None)):
        import transformers

        raise ConfigError(
            f"--heads needs transformers 4: transformers {transformers.__version__} removed prune_heads and "
            "config.pruned_heads, which a head-pruned checkpoint needs to reload",
            hint="drop --heads (--ffn, --drop-layers and --vocab-corpus work here), or prune in an environment "
            "with transformers<5",
        )


def _check_request(model, config: PruneConfig) -> None:
    """Refuse impossible layer/head requests before any scoring work (the checks the pruners repeat)."""
    cfg = model.config
    n = cfg.num_hidden_layers
    if config.drop_layers >= n:
        raise ConfigError(f"--drop-layers {config.drop_layers}: the model has {n} layers and at least one must stay",
                          hint=f"drop at most {n - 1} layers")
    if config.heads:
        _check_head_pruning(model)
        counts = sorted((len(original_heads(cfg, i)) for i in range(n)), reverse=True)
        # the most heads that can be left after dropping layers is when the widest layers stay
        kept = counts[: n - config.drop_layers] if config.drop_layers else counts
        total, layers = sum(kept), len(kept)
        if round(config.heads * total) > total - layers:
            _plan_heads(Importance([np.ones(c) for c in kept], [], np.zeros(layers), 0, "", ""), config.heads)


def _default_data() -> Path:
    from compress.data import sample_data_path

    return sample_data_path()


def _file_gzip_size(path: Path) -> int:
    comp = zlib.compressobj(6)
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            size += len(comp.compress(block))
    return size + len(comp.flush())


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
