"""Structured pruning: finding a layer's attention and FFN parts, Taylor importance, and removing heads, FFN
neurons and whole layers."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from compress.errors import ConfigError, DataError
from compress.progress import Progress
from compress.stages.prune.config import _FFN_KEYS
from compress.teachers.load import model_feed

log = logging.getLogger("compress.stages.prune")  # the verb's logger


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

    from compress.stages.common import layer_list

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

    from compress.stages.common import layer_list

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


def class_scores(out, mask):
    """A model's class scores: its logits, or a span head's start and end logits as two rows of scores over the tokens
    (``[2 * batch, tokens]``, start then end of each row, padding at -1e4): a question answerer's "classes" are the
    positions of its context. ``mask``: the batch's attention mask (None for an image model: no padding)."""
    if getattr(out, "start_logits", None) is not None:
        import torch

        s = torch.stack([out.start_logits, out.end_logits], 1).float()
        return s.masked_fill(mask[:, None, :] == 0, -1e4).flatten(0, 1)
    return out.logits.float()


def _pooled(out, mask, pooling: str | None, normalize: bool):
    from compress.stages.transfer import pool_hidden

    return pool_hidden(out.last_hidden_state, mask, pooling or "mean", normalize)


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
    progress: Progress | None = None,
    batches: Callable[[], Any] | None = None,
) -> Importance:
    """Taylor importance of every head and FFN neuron, and the output change of skipping each layer.

    ``labels`` (class ids, -100 or None for unlabelled rows) drive a cross-entropy loss; rows without
    one use the model's own argmax. Feature-extraction models (``classification=False``) use a random
    projection of the pooled embedding per example. ``batches()`` (an image model's ``({pixel_values},
    labels)`` batches; ``texts`` then only counts the rows) replaces tokenizing ``texts``.
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
        for enc, lab in (batches() if batches else _batches(tokenizer, texts, labels, max_length, batch_size)):
            saved.clear()
            out = model(**model_feed(model, enc))
            if classification:
                logits = class_scores(out, enc.get("attention_mask"))
                target = logits.argmax(-1)
                if lab is not None:
                    known = lab >= 0
                    used_labels = used_labels or bool(known.any())
                    target = torch.where(known, lab, target)
                if logits.dim() == 3:  # a label per token: padding left out
                    target = target.masked_fill(enc["attention_mask"] == 0, -100)
                loss = F.cross_entropy(logits.flatten(0, -2), target.flatten(), ignore_index=-100, reduction="sum")
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
            done += next(iter(enc.values())).shape[0]
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
                                        batch_size, parts, progress, batches)
    model.train(was_training)
    if classification:
        loss_name = "cross entropy with labels (model argmax where unlabelled)" if used_labels else \
            "cross entropy with the model's own argmax (pseudo-labels)"
    else:
        loss_name = "random projection of the pooled embedding"
    return Importance(heads, ffn, layers, n, loss_name, metric)


def _layer_skip_scores(model, tokenizer, texts, classification, pooling, normalize, max_length, batch_size, parts,
                       progress, batches=None) -> tuple[np.ndarray, str]:
    """Mean output change on ``texts`` when each layer in turn is replaced by the identity."""
    import torch
    import torch.nn.functional as F

    def outputs() -> list[Any]:
        res = []
        with torch.inference_mode():
            for enc, _ in (batches() if batches else _batches(tokenizer, texts, None, max_length, batch_size)):
                out = model(**model_feed(model, enc))
                res.append(class_scores(out, enc.get("attention_mask")).log_softmax(-1) if classification
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

    from compress.stages.common import layer_list

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


def _check_head_pruning(model) -> None:
    if not callable(getattr(model, "prune_heads", None)):
        import transformers

        raise ConfigError(
            f"--heads needs transformers 4: transformers {transformers.__version__} removed prune_heads and "
            "config.pruned_heads, which a head-pruned checkpoint needs to reload",
            hint="drop --heads (--ffn, --drop-layers and --vocab-corpus work here), or prune in an environment "
            "with transformers<5",
        )
