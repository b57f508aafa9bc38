"""What the verbs that train read and score (distill, prune's recovery, finetune): tokenised rows and their padded
batches (a question's context windows among them), the outputs a forward pass extracts, predictions on a row set and
the early-stopping score (SQuAD F1 for spans); for images, the preprocessed transfer set and the random shift that
augments a batch. The loop that trains on them is :mod:`compress.stages.training`."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from compress.errors import ConfigError, StageError

IGNORE_INDEX = -100  # a label the losses skip: an unlabelled row, every sub-token of a word but its first

# ---------------------------------------------------------------------------------------------
# Rows: tokenisation, batches
# ---------------------------------------------------------------------------------------------


def encode_texts(tokenizer, texts: list[str], max_length: int,
                 pairs: list[str] | None = None) -> dict[str, list[list[int]]]:
    """Texts (and their second texts, for pairs) tokenised without padding: ``input_ids`` (and ``token_type_ids``)."""
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False)
    return {k: v for k, v in enc.items() if k in ("input_ids", "token_type_ids")}


def encode_words(tokenizer, sentences: list[list[str]], tags: list[list[int]] | None, max_length: int):
    """Sentences split into words, tokenised: ``(enc, token labels, word ids)``. A word's tag sits on its first
    sub-token, -100 on the others, on special tokens and on every token of an unlabelled sentence; word ids are -1
    on special tokens."""
    enc = tokenizer(sentences, is_split_into_words=True, truncation=True, max_length=max_length, padding=False)
    labels, word_ids = [], []
    for i in range(len(sentences)):
        ids = [-1 if w is None else w for w in enc.word_ids(i)]
        first = [w >= 0 and (j == 0 or ids[j - 1] != w) for j, w in enumerate(ids)]
        labels.append([tags[i][w] if tags is not None and f else IGNORE_INDEX for w, f in zip(ids, first, strict=True)])
        word_ids.append(ids)
    return {k: v for k, v in enc.items() if k in ("input_ids", "token_type_ids")}, labels, word_ids


class TransferSet:
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
            batch["labels"] = torch.tensor([self.labels[i] + [IGNORE_INDEX] * (width - len(self.labels[i])) for i in idx],
                                           dtype=torch.long)
        else:
            batch["labels"] = torch.tensor([self.labels[i] for i in idx], dtype=torch.long)
        batch["index"] = torch.tensor(idx, dtype=torch.long)
        return batch


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


class QAWindowSet:
    """Training windows (:class:`compress.data.tokenization.QAWindows`) with their answer positions, as the training
    loop reads rows: ``len``, ``lengths`` (tokens per window) and ``collate`` (a batch trimmed to its longest)."""

    def __init__(self, windows, starts: np.ndarray, ends: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> None:
        self.windows, self.starts, self.ends = windows, starts, ends
        self.extra = dict(extra or {})  # more per-token arrays a batch carries (a teacher's logits to distil)
        self.lengths = windows.arrays["attention_mask"].sum(1).astype(np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def collate(self, idx: list[int]) -> dict[str, Any]:
        import torch

        width = int(self.lengths[idx].max())
        batch = {k: torch.from_numpy(v[idx, :width]) for k, v in self.windows.arrays.items()}
        batch["start_positions"] = torch.from_numpy(self.starts[idx])
        batch["end_positions"] = torch.from_numpy(self.ends[idx])
        batch.update({k: torch.from_numpy(v[idx, :width]) for k, v in self.extra.items()})
        batch["index"] = torch.tensor(idx, dtype=torch.long)
        return batch


def training_rows(tokenizer, ds, max_length: int, stride: int) -> QAWindowSet:
    """``ds``'s questions as training windows labelled with their first gold answer's token positions."""
    from compress.data.tokenization import qa_windows

    windows = qa_windows(tokenizer.backend_tokenizer, ds.questions, ds.contexts, max_length=max_length,
                         stride=stride, pad_id=tokenizer.pad_token_id or 0)
    first = [s[0] for s in ds.starts]  # the first gold answer, as run_qa trains
    ends = [s + len(a.answers[0]) for s, a in zip(first, ds.labels, strict=True)]
    return QAWindowSet(windows, *windows.positions(first, ends))


def squad_f1(model, tokenizer, ds, max_length: int, post, batch_size: int = 32) -> dict[str, Any]:
    """SQuAD F1 and exact match of a PyTorch ``...ForQuestionAnswering`` on ``ds``: the best span over each
    question's windows (:func:`compress.tasks.qa.best_spans`)."""
    import torch

    from compress.data.tokenization import qa_windows
    from compress.tasks.qa import best_spans, qa_metrics
    from compress.teachers.load import model_feed

    windows = qa_windows(tokenizer.backend_tokenizer, ds.questions, ds.contexts, max_length=max_length,
                         stride=post.stride, pad_id=tokenizer.pad_token_id or 0)
    device = next(model.parameters()).device
    starts, ends = [], []
    with torch.inference_mode():
        for i in range(0, len(windows.example), batch_size):
            mask = windows.arrays["attention_mask"][i:i + batch_size]
            width = int(mask.sum(1).max())
            out = model(**model_feed(model, {k: torch.from_numpy(v[i:i + batch_size, :width]).to(device)
                                             for k, v in windows.arrays.items()}))
            pad = ((0, 0), (0, windows.offsets.shape[1] - width))
            starts.append(np.pad(out.start_logits.float().cpu().numpy(), pad, constant_values=-1e4))
            ends.append(np.pad(out.end_logits.float().cpu().numpy(), pad, constant_values=-1e4))
    rows = best_spans(np.concatenate(starts), np.concatenate(ends), windows.offsets, windows.example, len(ds), post)
    return qa_metrics(rows, None, ds.labels)


# ---------------------------------------------------------------------------------------------
# A forward pass: what it extracts
# ---------------------------------------------------------------------------------------------


@dataclass
class OutputPlan:
    """Which outputs a forward pass extracts (the targets the losses need), and where the teacher's layers map to the
    student's."""

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
    """One embedding per row: the first token's (``cls``) or the mean over the unmasked tokens, optionally unit-norm."""
    import torch

    if pooling == "cls":
        emb = last_hidden[:, 0]
    else:
        m = mask.unsqueeze(-1).to(last_hidden.dtype)
        emb = (last_hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb


class ValueTap:
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


def model_outputs(model, batch, plan: OutputPlan, tap: ValueTap | None) -> dict[str, Any]:
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
# Evaluation
# ---------------------------------------------------------------------------------------------


def predict_rows(model, data: TransferSet, plan: OutputPlan, device, batch_size: int) -> np.ndarray:
    """``model``'s soft outputs on every row, in the rows' order (batches sorted by length; the model's train/eval mode
    kept): logits or pooled embeddings ``[rows, width]``, or for tags each word's scores ``[rows, words, tags]``."""
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
            soft = model_outputs(model, batch, eplan, None)["soft"].float().cpu().numpy()
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


def score(pred: np.ndarray, teacher_pred: np.ndarray, labels, metric: str, tags: list[str] | None = None) -> float:
    """The early-stopping metric: accuracy (for a token classifier: entity F1 against the labels), agreement with
    the teacher (entity F1 against the teacher's entities), or cosine to the teacher's embeddings. ``metric``:
    ``"accuracy"``, ``"agreement"`` or ``"cosine"`` (distill's ``Metric``)."""
    if tags is not None:
        from compress.tasks.entities import entity_metrics

        if metric == "accuracy":
            return entity_metrics(tags, pred, None, labels)["metric"]
        return entity_metrics(tags, pred, teacher_pred, None)["agreement"]
    if metric == "accuracy":
        return float((pred.argmax(-1) == labels).mean())
    if metric == "agreement":
        return float((pred.argmax(-1) == teacher_pred.argmax(-1)).mean())
    a = pred / np.clip(np.linalg.norm(pred, axis=-1, keepdims=True), 1e-12, None)
    b = teacher_pred / np.clip(np.linalg.norm(teacher_pred, axis=-1, keepdims=True), 1e-12, None)
    return float((a * b).sum(-1).mean())


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def shift_images(x, rng: np.random.Generator, fraction: float):
    """The batch moved by one random (dy, dx) per image, zeros filling in (NCHW)."""
    import torch

    if fraction <= 0:
        return x
    h, w = x.shape[-2:]
    my, mx = max(1, int(h * fraction)), max(1, int(w * fraction))
    out = torch.zeros_like(x)
    for i in range(x.shape[0]):
        dy, dx = int(rng.integers(-my, my + 1)), int(rng.integers(-mx, mx + 1))
        ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
        xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        out[i, :, yd, xd] = x[i, :, ys, xs]
    return out


def encode_all(encoder, items: list[Any], batch_size: int = 256):
    """Every image preprocessed once (float32 tensor, the model's layout): the transfer set fits in memory."""
    import torch

    name = encoder.input_names[0]
    return torch.cat([torch.from_numpy(encoder.encode(items[i:i + batch_size])[name])
                      for i in range(0, len(items), batch_size)])
