"""What distillation compares: augmentation of the transfer rows and the losses between the teacher's and the
student's outputs (the rows, the forward pass and evaluation: :mod:`compress.stages.transfer`)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from compress.stages.distill.config import DistillConfig
from compress.stages.transfer import IGNORE_INDEX, OutputPlan

# ---------------------------------------------------------------------------------------------
# Transfer data: augmentation
# ---------------------------------------------------------------------------------------------


def neighbour_augment(
    texts: list[str], tokenizer, embeddings: np.ndarray, copies: int, prob: float, seed: int, k: int = 12
) -> list[str]:
    """``copies`` variants of each text with words swapped for embedding-space neighbours (TinyBERT-style).

    A word is replaceable when it is one whole token of the teacher's vocabulary (after the tokenizer's
    normalisation); candidates are the ``k`` nearest whole-word tokens by cosine of input embeddings.
    """
    if copies <= 0:
        return []
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_tokens)
    norm = tokenizer.backend_tokenizer.normalizer
    normalize = norm.normalize_str if norm is not None else (lambda s: s)
    cand_ids = np.array(
        sorted(i for t, i in vocab.items() if t.isalpha() and t not in special and not t.startswith("##") and len(t) > 1)
    )
    id2tok = {i: t for t, i in vocab.items()}
    unit = embeddings / np.clip(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12, None)
    cand = unit[cand_ids]
    words = sorted({normalize(w) for t in texts for w in t.split()})
    candidates = set(cand_ids.tolist())
    wanted = [w for w in words if vocab.get(w) in candidates]
    neighbours: dict[str, list[str]] = {}
    for start in range(0, len(wanted), 2048):
        chunk = wanted[start : start + 2048]
        sims = unit[[vocab[w] for w in chunk]] @ cand.T
        top = np.argpartition(-sims, k + 1, axis=1)[:, : k + 1]
        for w, row in zip(chunk, top, strict=True):
            neighbours[w] = [id2tok[int(cand_ids[j])] for j in row if id2tok[int(cand_ids[j])] != w][:k]
    rng = random.Random(seed)
    out = []
    for _ in range(copies):
        for t in texts:
            ws = t.split()
            out.append(" ".join(
                rng.choice(neighbours[nw]) if (nw := normalize(w)) in neighbours and rng.random() < prob else w
                for w in ws
            ))
    return out


def join_augment(texts: list[str], labels: list[int], copies: int, seed: int, min_words: int = 3
                 ) -> tuple[list[str], list[int]]:
    """``copies`` sentence-length variants of the rows: each text joined by a comma to a random other text of the same
    label (of at least ``min_words`` words; unlabelled rows, ``labels`` < 0, to any such text). The rows keep their
    label; the teacher supplies the soft targets."""
    if copies <= 0:
        return [], []
    partners: dict[int, list[str]] = {}
    for t, y in zip(texts, labels, strict=True):
        if len(t.split()) >= min_words:
            partners.setdefault(y, []).append(t.strip())
    anyone = [t for ts in partners.values() for t in ts]
    if not anyone:
        return [], []
    rng = random.Random(seed)
    out_t, out_y = [], []
    for _ in range(copies):
        for t, y in zip(texts, labels, strict=True):
            pool = partners.get(y, anyone) if y >= 0 else anyone
            out_t.append(f"{t.strip()} , {rng.choice(pool)}")
            out_y.append(y)
    return out_t, out_y


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


def _kl_rows(p_teacher, log_q_student, row_mask):
    """Mean over valid rows of KL(p || q) along the last axis; rows are the leading dims of row_mask."""
    import torch

    kl = (p_teacher * (torch.log(p_teacher.clamp(min=1e-9)) - log_q_student)).sum(-1)
    return (kl * row_mask).sum() / row_mask.sum().clamp(min=1)


def distill_loss(s: dict[str, Any], t: dict[str, Any], batch, plan: OutputPlan, config: DistillConfig,
                 projections) -> tuple[Any, dict[str, float]]:
    """Weighted sum of the enabled losses; also returns each term's value."""
    import torch
    import torch.nn.functional as F

    parts: dict[str, Any] = {}
    mask = batch["attention_mask"].float()
    if plan.tokens:  # per token: KL over the real tokens, cross-entropy on each word's first sub-token
        temp = config.loss.temperature
        if config.loss.soft_weight:
            kl = F.kl_div(F.log_softmax(s["soft"].float() / temp, -1), F.softmax(t["soft"].float() / temp, -1),
                          reduction="none").sum(-1)
            parts["soft"] = (kl * mask).sum() / mask.sum().clamp(min=1) * temp * temp
        labels = batch["labels"]
        if config.loss.hard_weight and bool((labels != IGNORE_INDEX).any()):
            parts["hard"] = F.cross_entropy(s["soft"].float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    elif plan.classification:
        if config.loss.soft_weight:
            temp = config.loss.temperature
            parts["soft"] = F.kl_div(
                F.log_softmax(s["soft"].float() / temp, -1), F.softmax(t["soft"].float() / temp, -1),
                reduction="batchmean",
            ) * temp * temp
        labels = batch["labels"]
        if config.loss.hard_weight and bool((labels != IGNORE_INDEX).any()):
            parts["hard"] = F.cross_entropy(s["soft"].float(), labels, ignore_index=IGNORE_INDEX)
    elif config.loss.soft_weight:
        parts["soft"] = F.mse_loss(s["soft"].float(), t["soft"].float())
    if plan.hidden:
        terms = []
        for j, th in enumerate(t["hidden"]):
            sh = s["hidden"][j + 1].float()
            if projections is not None:
                sh = projections[j](sh)
            se = ((sh - th.float()) ** 2).mean(-1)
            terms.append((se * mask).sum() / mask.sum())
        parts["hidden"] = torch.stack(terms).mean()
    if plan.attention:
        terms = []
        for j, ta in enumerate(t["attn"]):
            sa = s["attn"][j].float()
            ta = ta.float()
            if sa.shape[1] != ta.shape[1]:  # different head counts: compare head-averaged distributions
                sa, ta = sa.mean(1, keepdim=True), ta.mean(1, keepdim=True)
            row_mask = mask[:, None, :].expand(sa.shape[0], sa.shape[1], sa.shape[2])
            terms.append(_kl_rows(ta, torch.log(sa.clamp(min=1e-9)), row_mask))
        parts["attention"] = torch.stack(terms).mean()
    if plan.value_relation:
        sv, tv = s["vr"], t["vr"].float()
        row_mask = mask[:, None, :].expand(sv.shape[0], sv.shape[1], sv.shape[2])
        parts["value_relation"] = _kl_rows(tv, torch.log(sv.clamp(min=1e-9)), row_mask)
    weights = {"soft": config.loss.soft_weight, "hard": config.loss.hard_weight, "hidden": config.loss.hidden_weight,
               "attention": config.loss.attention_weight, "value_relation": config.loss.value_relation_weight}
    total = sum(weights[k] * v for k, v in parts.items())
    if not parts:
        total = s["soft"].sum() * 0.0
    return total, {k: float(v.detach()) for k, v in parts.items()}


# ---------------------------------------------------------------------------------------------
# Causal LMs: next-token distributions as the teacher's top k plus a tail bucket
# ---------------------------------------------------------------------------------------------


def _log1mexp(x):
    """log(1 - exp(x)) for x <= 0, stable at both ends (Mächler's log1mexp); x -> 0 gives log(1e-12), not -inf."""
    import math

    import torch

    x = x.clamp(max=-1e-12)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x))).clamp(min=-27.6)


def teacher_topk(logits, k: int, temperature: float) -> dict[str, Any]:
    """The teacher's targets at each position of ``logits`` [..., V]: the ``k`` most likely tokens' ids
    (``topk_index``, int32) and log-probabilities at ``temperature`` (``topk_logp``), and the log of the mass
    outside them (``tail_logp``): a distribution over k + 1 outcomes that sums to one."""
    import torch

    logp = torch.log_softmax(logits.float() / temperature, -1)
    vals, idx = logp.topk(min(k, logp.shape[-1]), -1)
    return {"topk_index": idx.to(torch.int32), "topk_logp": vals, "tail_logp": _log1mexp(torch.logsumexp(vals, -1))}


def topk_divergence(student_logits, target: dict[str, Any], mask, temperature: float, reverse: bool = False):
    """The mean over ``mask``ed positions of KL between the teacher's and the student's next-token distributions,
    both coarsened to the teacher's top k tokens plus one tail bucket (the rest of the mass), at ``temperature``
    (scaled by T², as Hinton's soft targets). Forward: KL(teacher || student); ``reverse``: KL(student || teacher).

    Coarsening both sides the same way keeps it a true KL (zero exactly when the coarsened distributions agree,
    never negative), where renormalising the top k alone would ignore the mass the student puts elsewhere."""
    import torch

    s_all = torch.log_softmax(student_logits.float() / temperature, -1)
    s_top = s_all.gather(-1, target["topk_index"].long())
    s = torch.cat([s_top, _log1mexp(torch.logsumexp(s_top, -1)).unsqueeze(-1)], -1)
    t = torch.cat([target["topk_logp"].float(), target["tail_logp"].float().unsqueeze(-1)], -1)
    kl = (s.exp() * (s - t)).sum(-1) if reverse else (t.exp() * (t - s)).sum(-1)
    mask = mask.float()
    return (kl * mask).sum() / mask.sum().clamp(min=1) * temperature * temperature
