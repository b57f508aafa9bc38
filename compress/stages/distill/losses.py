"""What distillation compares: the transfer rows (tokenised, augmented), the teacher's and student's outputs,
the losses, and evaluation."""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from compress.errors import ConfigError, StageError
from compress.stages.distill.config import _IGNORE, DistillConfig, Metric

# ---------------------------------------------------------------------------------------------
# Transfer data: tokenisation, augmentation, teacher targets
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


def length_grouped_order(lengths: np.ndarray, batch_size: int, seed: int, window: int = 50) -> list[int]:
    """A random epoch order whose consecutive ``batch_size`` chunks have similar lengths (less padding).

    Shuffle, sort within windows of ``window`` batches by length, cut into batches, shuffle the batches
    (the ``group_by_length`` idea of transformers' Trainer). Deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(lengths))
    span = batch_size * window
    batches = []
    for start in range(0, len(perm), span):
        chunk = perm[start : start + span]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    # a short last batch stays last: anywhere else it would shift every later batch_size cut off the groups
    short = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    rng.shuffle(batches)
    batches += short
    return np.concatenate(batches).tolist() if batches else []


def _encode(tokenizer, texts: list[str], max_length: int,
            pairs: list[str] | None = None) -> dict[str, list[list[int]]]:
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False)
    return {k: v for k, v in enc.items() if k in ("input_ids", "token_type_ids")}


def _encode_words(tokenizer, sentences: list[list[str]], tags: list[list[int]] | None, max_length: int):
    """Sentences split into words, tokenised: ``(enc, token labels, word ids)``. A word's tag sits on its first
    sub-token, -100 on the others, on special tokens and on every token of an unlabelled sentence; word ids are -1
    on special tokens."""
    enc = tokenizer(sentences, is_split_into_words=True, truncation=True, max_length=max_length, padding=False)
    labels, word_ids = [], []
    for i in range(len(sentences)):
        ids = [-1 if w is None else w for w in enc.word_ids(i)]
        first = [w >= 0 and (j == 0 or ids[j - 1] != w) for j, w in enumerate(ids)]
        labels.append([tags[i][w] if tags is not None and f else _IGNORE for w, f in zip(ids, first, strict=True)])
        word_ids.append(ids)
    return {k: v for k, v in enc.items() if k in ("input_ids", "token_type_ids")}, labels, word_ids


class _TransferSet:
    """Tokenised rows (ids kept as lists) and their labels (-100 when unlabelled): a label per row, or for token
    classification a label per token (``word_ids``: the word each token belongs to, -1 for special tokens)."""

    def __init__(self, enc: dict[str, list[list[int]]], labels: list[Any], pad_id: int,
                 word_ids: list[list[int]] | None = None) -> None:
        self.enc = enc
        self.labels = labels
        self.word_ids = word_ids
        self.pad_id = pad_id
        self.lengths = np.array([len(x) for x in enc["input_ids"]], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])  # token offsets (hidden-state targets)
        self.sq_offsets = np.concatenate([[0], np.cumsum(self.lengths**2)])  # L*L offsets (attention targets)

    def __len__(self) -> int:
        return len(self.labels)

    def collate(self, idx: list[int]) -> dict[str, Any]:
        import torch

        width = int(max(self.lengths[i] for i in idx))
        batch: dict[str, Any] = {}
        for key, rows in self.enc.items():
            pad = self.pad_id if key == "input_ids" else 0
            batch[key] = torch.tensor([rows[i] + [pad] * (width - len(rows[i])) for i in idx], dtype=torch.long)
        batch["attention_mask"] = torch.tensor(
            [[1] * int(self.lengths[i]) + [0] * (width - int(self.lengths[i])) for i in idx], dtype=torch.long
        )
        if self.word_ids is not None:  # a label per token, padded
            batch["labels"] = torch.tensor([self.labels[i] + [_IGNORE] * (width - len(self.labels[i])) for i in idx],
                                           dtype=torch.long)
        else:
            batch["labels"] = torch.tensor([self.labels[i] for i in idx], dtype=torch.long)
        batch["index"] = torch.tensor(idx, dtype=torch.long)
        return batch


@dataclass
class _Plan:
    """Which targets the losses need, and where the teacher's layers map to the student's."""

    classification: bool
    pooling: str | None
    normalize: bool
    mapping: list[int]  # student layer j -> teacher layer mapping[j]
    hidden: bool
    attention: bool
    value_relation: bool
    relation_heads: int
    tags: list[str] | None = None  # token classification: the entity tags (targets and outputs are per token)

    @property
    def tokens(self) -> bool:
        return self.tags is not None

    @property
    def needs_hidden_states(self) -> bool:
        return self.hidden  # a feature-extraction student pools last_hidden_state, which every model returns

    @property
    def intermediate(self) -> bool:
        return self.hidden or self.attention or self.value_relation


def pool_hidden(last_hidden, mask, pooling: str | None, normalize: bool):
    import torch

    if pooling == "cls":
        emb = last_hidden[:, 0]
    else:
        m = mask.unsqueeze(-1).to(last_hidden.dtype)
        emb = (last_hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb


class _ValueTap:
    """Forward hooks that capture the value projection output of one attention block."""

    NAMES = ("value", "v_lin", "v_proj", "v")

    def __init__(self, block) -> None:
        from torch import nn

        found = [m for name, m in block.named_modules() if name.rsplit(".", 1)[-1] in self.NAMES and isinstance(m, nn.Linear)]
        if not found:
            raise ConfigError(
                f"value-relation loss: no value projection found in {type(block).__name__}",
                hint="set --value-relation-weight 0 for this architecture",
            )
        self.value = None
        self.handle = found[0].register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self.value = output

    def remove(self) -> None:
        self.handle.remove()


def _relation(values, mask, heads: int):
    """MiniLM value relation: softmax(V V^T / sqrt(d)) per relation head, padded keys masked."""
    import torch

    b, n, h = values.shape
    v = values.float().view(b, n, heads, h // heads).transpose(1, 2)
    scores = v @ v.transpose(-1, -2) / math.sqrt(h // heads)
    scores = scores.masked_fill(mask[:, None, None, :] == 0, torch.finfo(scores.dtype).min)
    return scores.softmax(-1)


def _model_outputs(model, batch, plan: _Plan, tap: _ValueTap | None) -> dict[str, Any]:
    """Run ``model`` and extract what the losses compare: soft target, hidden states, attentions, relations."""
    from compress.teachers.load import model_feed

    out = model(**model_feed(model, batch), output_hidden_states=plan.needs_hidden_states, output_attentions=plan.attention)
    for wanted, got in (("hidden states", plan.needs_hidden_states and out.hidden_states is None),
                        ("attentions", plan.attention and out.attentions is None)):
        if got:
            import transformers

            raise StageError(
                f"{type(model).__name__} returned no {wanted} under transformers {transformers.__version__} "
                "(a student built from teacher layers loses transformers 5's output capture)",
                hint="distil with the default losses (logits, or pooled embeddings), or use transformers<5 for "
                "intermediate-layer losses",
            )
    res: dict[str, Any] = {}
    if plan.classification:
        res["soft"] = out.logits
    else:
        res["soft"] = pool_hidden(out.last_hidden_state, batch["attention_mask"], plan.pooling, plan.normalize)
    if plan.hidden:
        res["hidden"] = out.hidden_states
    if plan.attention:
        res["attn"] = out.attentions
    if plan.value_relation:
        res["vr"] = _relation(tap.value, batch["attention_mask"], plan.relation_heads)
    return res



# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


def _kl_rows(p_teacher, log_q_student, row_mask):
    """Mean over valid rows of KL(p || q) along the last axis; rows are the leading dims of row_mask."""
    import torch

    kl = (p_teacher * (torch.log(p_teacher.clamp(min=1e-9)) - log_q_student)).sum(-1)
    return (kl * row_mask).sum() / row_mask.sum().clamp(min=1)


def distill_loss(s: dict[str, Any], t: dict[str, Any], batch, plan: _Plan, config: DistillConfig,
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
        if config.loss.hard_weight and bool((labels != _IGNORE).any()):
            parts["hard"] = F.cross_entropy(s["soft"].float().flatten(0, 1), labels.flatten(), ignore_index=_IGNORE)
    elif plan.classification:
        if config.loss.soft_weight:
            temp = config.loss.temperature
            parts["soft"] = F.kl_div(
                F.log_softmax(s["soft"].float() / temp, -1), F.softmax(t["soft"].float() / temp, -1),
                reduction="batchmean",
            ) * temp * temp
        labels = batch["labels"]
        if config.loss.hard_weight and bool((labels != _IGNORE).any()):
            parts["hard"] = F.cross_entropy(s["soft"].float(), labels, ignore_index=_IGNORE)
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
# Evaluation
# ---------------------------------------------------------------------------------------------


def _predict(model, data: _TransferSet, plan: _Plan, device, batch_size: int) -> np.ndarray:
    import torch

    eplan = copy.copy(plan)
    eplan.hidden = eplan.attention = eplan.value_relation = False
    was_training = model.training
    model.eval()
    order = np.argsort(data.lengths, kind="stable")
    result: list[tuple[list[int], np.ndarray]] = []
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            idx = order[start : start + batch_size].tolist()
            batch = {k: v.to(device) for k, v in data.collate(idx).items()}
            soft = _model_outputs(model, batch, eplan, None)["soft"].float().cpu().numpy()
            result.append((idx, soft))
    model.train(was_training)
    if plan.tokens:  # each word's scores at its first sub-token: [rows, words, tags], NaN beyond a row's words
        from compress.device.shipped import first_subtokens

        words = int(max((max(w) for w in data.word_ids if w), default=-1)) + 1
        out = np.full((len(data), words, len(plan.tags)), np.nan, np.float32)
        for idx, soft in result:
            for r, i in enumerate(idx):
                ids = np.asarray(data.word_ids[i])
                row = first_subtokens(soft[r : r + 1, : len(ids)], ids[None])[0]
                out[i, : row.shape[0]] = row
        return out
    width = result[0][1].shape[1]
    out = np.zeros((len(data), width), np.float32)
    for idx, soft in result:
        out[idx] = soft
    return out


def score(pred: np.ndarray, teacher_pred: np.ndarray, labels, metric: Metric, tags: list[str] | None = None) -> float:
    """The early-stopping metric: accuracy (for a token classifier: entity F1 against the labels), agreement with
    the teacher (entity F1 against the teacher's entities), or cosine to the teacher's embeddings."""
    if tags is not None:
        from compress.validation.entities import entity_metrics

        if metric is Metric.accuracy:
            return entity_metrics(tags, pred, None, labels)["metric"]
        return entity_metrics(tags, pred, teacher_pred, None)["agreement"]
    if metric is Metric.accuracy:
        return float((pred.argmax(-1) == labels).mean())
    if metric is Metric.agreement:
        return float((pred.argmax(-1) == teacher_pred.argmax(-1)).mean())
    a = pred / np.clip(np.linalg.norm(pred, axis=-1, keepdims=True), 1e-12, None)
    b = teacher_pred / np.clip(np.linalg.norm(teacher_pred, axis=-1, keepdims=True), 1e-12, None)
    return float((a * b).sum(-1).mean())
