"""Structured pruning of a causal LM (Llama, Qwen2, Qwen3: the same decoder layout): scores on text windows, plans
that respect grouped-query attention, and the smaller model rebuilt from its config.

Layout (the families share it): ``model.layers.N.self_attn.{q,k,v,o}_proj`` (Qwen2: q/k/v with biases; Qwen3: q/k
RMSNorms over one head's width, shared by the heads) and ``model.layers.N.mlp.{gate,up,down}_proj``. Query head ``h``
reads key/value group ``h // G`` (``G`` = num_attention_heads / num_key_value_heads).

* **Scores** (:func:`lm_importance`): the next-token cross entropy of the windows themselves (their own text is the
  label). A head's Taylor importance is ``|sum context * d loss / d context|`` over its slice of the attention output
  projection's input, per window (Michel et al. 2019, as for encoders); an FFN neuron's is the same product on the
  input of ``down_proj`` (``act(gate) * up``); a layer's is the KL divergence of the next-token distribution when the
  layer is left out, per token (:func:`compress.stages.distill.lm.score_layers`, which distill's
  ``--layer-choice scored`` reads too).
* **Heads** (:func:`plan_lm_heads`): the config holds one head count for every layer, so every layer loses the same
  number of query heads, each layer its least important. Either query heads evenly from every key/value group (the KV
  cache keeps its size) or whole groups, their key/value heads with them (the KV cache shrinks); a ratio that would
  split a group unevenly is refused.
* **The model** (:func:`rebuild`): the kept rows and columns of the state dict loaded into a model built from the
  updated config (num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim, intermediate_size,
  layer_types), so the result is the checkpoint transformers itself would build from that config.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from compress.errors import ConfigError, DataError
from compress.progress import Progress
from compress.stages.prune.config import HeadUnit
from compress.stages.prune.structured import Importance

log = logging.getLogger("compress.stages.prune")  # the verb's logger

#: config.model_type of the families whose decoder layout this module knows (SmolLM and TinyLlama are ``llama``)
FAMILIES = ("llama", "qwen2", "qwen3")
_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Shape:
    """A decoder's dimensions as pruning sees them."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int

    @property
    def group(self) -> int:
        """Query heads per key/value group."""
        return self.heads // self.kv_heads


def lm_shape(model) -> Shape:
    """The dimensions of a supported causal LM; one-line refusal of other families and of unexpected tensors."""
    cfg = model.config
    family = getattr(cfg, "model_type", None)
    if family not in FAMILIES:
        raise ConfigError(f"prune takes causal LMs of the Llama, Qwen2 and Qwen3 families (SmolLM, TinyLlama: "
                          f"llama), not {family or type(model).__name__}",
                          hint="export and quantize this model as it is, or distil it into a Llama-family student")
    heads, kv = int(cfg.num_attention_heads), int(cfg.num_key_value_heads or cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    shape = Shape(int(cfg.num_hidden_layers), heads, kv, head_dim, int(cfg.intermediate_size))
    for i, layer in enumerate(decoder_layers(model)):
        a, m = layer.self_attn, layer.mlp
        want = {"q_proj": heads * head_dim, "k_proj": kv * head_dim, "v_proj": kv * head_dim,
                "gate_proj": shape.ffn, "up_proj": shape.ffn}
        got = {n: getattr(getattr(a if n in _ATTN else m, n, None), "out_features", None) for n in want}
        got_in = {"o_proj": getattr(getattr(a, "o_proj", None), "in_features", None),
                  "down_proj": getattr(getattr(m, "down_proj", None), "in_features", None)}
        if got != want or got_in != {"o_proj": heads * head_dim, "down_proj": shape.ffn}:
            raise ConfigError(f"layer {i} of {type(model).__name__}: its projections are not the {family} layout the "
                              f"config describes ({heads} heads, {kv} key/value heads of {head_dim}, FFN "
                              f"{shape.ffn})", hint="prune a checkpoint as transformers writes it")
    return shape


def decoder_layers(model):
    """The ``nn.ModuleList`` of decoder layers (``model.model.layers``)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ConfigError(f"{type(model).__name__} has no model.layers", hint="prune a …ForCausalLM checkpoint")
    return layers


# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------


def _batches(windows: np.ndarray, batch_size: int) -> Iterator[Any]:
    import torch

    for i in range(0, len(windows), batch_size):
        ids = torch.from_numpy(np.ascontiguousarray(windows[i:i + batch_size]))
        yield ids


def _forward(model, ids):
    import torch

    return model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits


def lm_importance(model, windows: np.ndarray, *, batch_size: int = 8, progress: Progress | None = None) -> Importance:
    """Taylor importance of every query head and FFN neuron, and each layer's skip KL, on token ``windows`` [N, T]."""
    import torch
    import torch.nn.functional as F

    if len(windows) == 0:
        raise DataError("no text windows to compute importance scores on", hint="give more text or a smaller "
                        "--max-length")
    shape = lm_shape(model)
    layers = decoder_layers(model)
    was_training = model.training
    model.eval()
    heads = [np.zeros(shape.heads) for _ in layers]
    ffn = [np.zeros(shape.ffn) for _ in layers]
    saved: dict[tuple[str, int], Any] = {}

    def keep(kind: str, i: int):
        def hook(module, args):
            saved[(kind, i)] = args[0]
        return hook

    # the activations carry gradients whatever the parameters' requires_grad (a caller may have frozen them)
    handles = [model.get_input_embeddings().register_forward_hook(lambda m, a, out: out.detach().requires_grad_())]
    for i, layer in enumerate(layers):
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(keep("head", i)))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(keep("ffn", i)))
    done, total = 0, len(windows)
    try:
        for ids in _batches(windows, batch_size):
            saved.clear()
            with torch.enable_grad():  # also when called under no_grad
                logits = _forward(model, ids)
                loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="sum")
                keys = list(saved)
                grads = torch.autograd.grad(loss, [saved[k] for k in keys])
            with torch.no_grad():
                for (kind, i), g in zip(keys, grads, strict=True):
                    prod = (saved[(kind, i)] * g).float()
                    b, t, _ = prod.shape
                    if kind == "head":
                        heads[i] += prod.view(b, t, shape.heads, shape.head_dim).sum((1, 3)).abs().sum(0).numpy()
                    else:
                        ffn[i] += prod.sum(1).abs().sum(0).numpy()
            done += len(ids)
            if progress:
                progress({"phase": "importance", "done": done, "total": total})
    finally:
        for h in handles:
            h.remove()
        saved.clear()
    n = len(windows)
    from compress.stages.distill.lm import score_layers  # Minitron's depth score, as distill chooses layers

    scores = np.asarray(score_layers(model, windows, batch_size=batch_size))
    model.train(was_training)
    return Importance([h / n for h in heads], [f / n for f in ffn], scores, n,
                      "next-token cross entropy of the text windows", "KL(full || layer skipped) per token")


# ---------------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------------


def _ratios(shape: Shape, unit: HeadUnit) -> list[float]:
    """The --heads ratios a unit can take on this shape."""
    if unit is HeadUnit.query:
        return [k / shape.group for k in range(1, shape.group)]
    return [k / shape.kv_heads for k in range(1, shape.kv_heads)]


def head_unit_for(shape: Shape, ratio: float, unit: HeadUnit | None = None) -> tuple[HeadUnit, int]:
    """The unit a ``--heads ratio`` request prunes in and how many query heads leave each layer; ConfigError when
    it would split a key/value group unevenly (or empty one layer)."""
    n = round(ratio * shape.heads)
    fits = {HeadUnit.query: n % shape.kv_heads == 0 and 0 < n // shape.kv_heads < shape.group,
            HeadUnit.group: n % shape.group == 0 and 0 < n // shape.group < shape.kv_heads}
    order = [unit] if unit is not None else [HeadUnit.query, HeadUnit.group]
    for u in order:
        if fits[u]:
            return u, n
    options = []
    for u in order:
        rs = _ratios(shape, u)
        if rs:
            options.append(f"--head-unit {u}: --heads {' | '.join(f'{r:.3g}' for r in rs)}")
    raise ConfigError(
        f"--heads {ratio:g} removes {n} of the {shape.heads} query heads in every layer, which would prune heads across "
        f"a key/value group ({shape.kv_heads} groups of {shape.group} query heads"
        f"{', pruned ' + str(unit) + '-wise' if unit else ''})",
        hint="; ".join(options) if options else "this attention has one key/value group of one head: leave --heads "
        "out and use --drop-layers",
    )


def plan_lm_heads(importance: Importance, shape: Shape, ratio: float,
                  unit: HeadUnit | None = None) -> tuple[HeadUnit, list[list[int]]]:
    """The query heads each layer keeps (original indices, ascending: still grouped by key/value group)."""
    unit, n = head_unit_for(shape, ratio, unit)
    keep: list[list[int]] = []
    for scores in importance.heads:
        per_group = scores.reshape(shape.kv_heads, shape.group)
        if unit is HeadUnit.query:
            r = n // shape.kv_heads
            kept = [g * shape.group + int(j) for g in range(shape.kv_heads)
                    for j in np.sort(np.argsort(-per_group[g], kind="stable")[:shape.group - r])]
        else:
            groups = np.sort(np.argsort(-per_group.sum(1), kind="stable")[:shape.kv_heads - n // shape.group])
            kept = [int(g) * shape.group + j for g in groups for j in range(shape.group)]
        keep.append(sorted(kept))
    return unit, keep


def plan_ffn(importance: Importance, width: int, ratio: float) -> list[list[int]]:
    """The FFN neurons each layer keeps (its most important, the same number everywhere)."""
    k = max(1, width - round(ratio * width))
    return [sorted(int(i) for i in np.argsort(-s, kind="stable")[:k]) for s in importance.ffn]


def plan_layers(importance: Importance, n_layers: int, drop: int) -> list[int]:
    """The layers kept when the ``drop`` whose skipping changed the next-token distribution least go."""
    if drop >= n_layers:
        raise ConfigError(f"--drop-layers {drop}: the model has {n_layers} layers and at least one must stay",
                          hint=f"drop at most {n_layers - 1} layers")
    dropped = set(int(i) for i in np.argsort(importance.layers, kind="stable")[:drop])
    return [i for i in range(n_layers) if i not in dropped]


# ---------------------------------------------------------------------------------------------
# The smaller model
# ---------------------------------------------------------------------------------------------


@dataclass
class LMPlan:
    """What a pruned decoder keeps: layer indices, and per kept layer its query heads and FFN neurons (None: all)."""

    layers: list[int]
    heads: list[list[int]] | None = None
    ffn: list[list[int]] | None = None


def rebuild(model, plan: LMPlan):
    """A new model of ``model``'s class built from the pruned config, holding the kept rows and columns."""
    import torch

    shape = lm_shape(model)
    cfg = copy.deepcopy(model.config)
    d, g = shape.head_dim, shape.group
    kept_heads = plan.heads[0] if plan.heads else list(range(shape.heads))
    kv = sorted({h // g for h in kept_heads})
    cfg.num_hidden_layers = len(plan.layers)
    cfg.num_attention_heads = len(kept_heads)
    cfg.num_key_value_heads = len(kv)
    cfg.head_dim = d  # hidden_size / heads no longer gives it
    cfg.intermediate_size = len(plan.ffn[0]) if plan.ffn else shape.ffn
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = [cfg.layer_types[i] for i in plan.layers]
    if getattr(cfg, "max_window_layers", None) is not None:  # Qwen2/3: the first N layers without a sliding window
        cfg.max_window_layers = sum(1 for i in plan.layers if i < cfg.max_window_layers)

    def rows(idx: list[int], width: int) -> torch.Tensor:
        return torch.as_tensor([i * width + j for i in idx for j in range(width)], dtype=torch.long)

    old = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    prefix = "model.layers."
    for key, t in old.items():
        if not key.startswith(prefix):
            new[key] = t
            continue
        index, _, rest = key[len(prefix):].partition(".")
        if int(index) not in plan.layers:
            continue
        pos = plan.layers.index(int(index))
        heads = plan.heads[pos] if plan.heads else list(range(shape.heads))
        groups = sorted({h // g for h in heads})
        neurons = plan.ffn[pos] if plan.ffn else None
        if rest.startswith("self_attn.q_proj."):
            t = t.index_select(0, rows(heads, d))
        elif rest.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
            t = t.index_select(0, rows(groups, d))
        elif rest == "self_attn.o_proj.weight":
            t = t.index_select(1, rows(heads, d))
        elif neurons is not None and rest.startswith(("mlp.gate_proj.", "mlp.up_proj.")):
            t = t.index_select(0, torch.as_tensor(neurons, dtype=torch.long))
        elif neurons is not None and rest == "mlp.down_proj.weight":
            t = t.index_select(1, torch.as_tensor(neurons, dtype=torch.long))
        new[f"{prefix}{pos}.{rest}"] = t
    smaller = type(model)(cfg).to(next(model.parameters()).dtype)
    missing, unexpected = smaller.load_state_dict(new, strict=False)
    tied = {"lm_head.weight"} if getattr(cfg, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ConfigError(f"the pruned {cfg.model_type} model does not take the kept weights (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})", hint="report this checkpoint")
    smaller.tie_weights()
    smaller.generation_config = copy.deepcopy(model.generation_config)
    return smaller.eval()
