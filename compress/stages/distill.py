"""Knowledge distillation: train a smaller student from a fine-tuned teacher's outputs.

The student is built from the teacher (a subset of its layers, or a narrower config initialised from its
weights) or given as a checkpoint that shares the teacher's tokenizer. Losses, each with a weight:
soft-target KL at temperature T (scaled by T^2), hard-label cross entropy, hidden-state MSE on mapped
layers (with learned projections when widths differ), attention-distribution KL on mapped layers, and
MiniLM's value-relation KL on the last layer. Teacher outputs are computed once over the transfer set
and cached on disk in the run directory, so epochs after the first do not run the teacher.

Training runs on Hugging Face Accelerate (CPU, one GPU, or ``accelerate launch`` over several
processes), checkpoints into a run directory that ``resume=True`` continues, and writes the final
student artifact only at the end (staged directory + rename).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from compress.artifact import (
    Artifact,
    StepRecord,
    Task,
    check_output,
    digest_dir,
    library_versions,
    load_artifact,
    staged_dir,
    write_manifest,
)
from compress.errors import ConfigError, DataError, EdgeCompressError, StageError
from compress.interrupt import StopFlag as _StopFlag
from compress.stages import teacher_cache as tcache

log = logging.getLogger(__name__)

CONFIG_VERSION = 1
RUN_STATE = "trainer_state.json"
RUN_CONFIG = "run_config.json"
_IGNORE = -100
# sentence-transformers files that carry a feature-extraction model's pooling; copied to the student.
_ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
_ST_DIRS = ("1_Pooling", "2_Normalize")


class MixedPrecision(StrEnum):
    auto = "auto"
    no = "no"
    fp16 = "fp16"
    bf16 = "bf16"


class Metric(StrEnum):
    auto = "auto"
    accuracy = "accuracy"
    agreement = "agreement"
    cosine = "cosine"


class Schedule(StrEnum):
    linear = "linear"
    cosine = "cosine"
    constant = "constant_with_warmup"


class DistillConfig(BaseModel):
    """Settings of ``edgecompress distill``. Defaults were chosen by measurement on SST-2 (see README)."""

    model_config = ConfigDict(extra="forbid")

    # --- student -------------------------------------------------------------------------------------
    layers: int | None = Field(
        None, ge=1,
        description="Student depth: keep this many evenly spaced teacher layers (always the last one), "
        "copying their weights and the embeddings.",
    )
    keep_layers: list[int] | None = Field(None, description="Explicit teacher layer indices to keep (0-based).")
    student_config: dict[str, Any] | None = Field(
        None,
        description="transformers config overrides for the student (e.g. hidden_size, intermediate_size, "
        "num_attention_heads, num_hidden_layers); weights are initialised from the teacher's (evenly "
        "spaced layers, leading slices of narrower matrices).",
    )
    student: str | None = Field(None, description="An existing student checkpoint that shares the teacher's tokenizer.")
    # --- losses --------------------------------------------------------------------------------------
    temperature: float = Field(2.0, gt=0, description="Softmax temperature of the soft targets (loss scaled by T^2).")
    soft_weight: float = Field(
        0.7, ge=0,
        description="Weight of the soft-target loss (KL to the teacher's tempered distribution; MSE to the "
        "teacher's sentence embedding for feature-extraction teachers).",
    )
    hard_weight: float = Field(0.3, ge=0, description="Weight of cross entropy on the labels (labelled rows only).")
    hidden_weight: float = Field(0.0, ge=0, description="Weight of hidden-state MSE on mapped layers.")
    attention_weight: float = Field(0.0, ge=0, description="Weight of attention-distribution KL on mapped layers.")
    value_relation_weight: float = Field(
        0.0, ge=0, description="Weight of MiniLM value-relation KL on the last layer."
    )
    # --- data ----------------------------------------------------------------------------------------
    max_length: int | None = Field(
        128, ge=8, description="Truncate transfer texts to this many tokens (None: the teacher's maximum)."
    )
    text_column: str | None = Field(None, description="Text column of the data files (auto-detected).")
    label_column: str | None = Field(None, description="Label column of the data files (auto-detected).")
    augment: int = Field(
        0, ge=0,
        description="Extra copies of every transfer sentence with words replaced by their nearest "
        "neighbours in the teacher's embedding space (unlabelled; the teacher supplies their targets).",
    )
    augment_prob: float = Field(0.3, gt=0, le=1, description="Probability of replacing each word in a copy.")
    eval_samples: int | None = Field(None, ge=1, description="Use at most this many eval rows.")
    max_train_rows: int | None = Field(
        None, ge=1,
        description="Use at most this many training rows: a random subset fixed by --seed, in file order, "
        "taken before augmentation (None: all rows).",
    )
    metric: Metric = Field(
        Metric.auto,
        description="Early-stopping metric: accuracy (needs labels), agreement with the teacher's argmax, "
        "or cosine to the teacher's embedding; auto picks accuracy when the eval data has labels.",
    )
    # --- training ------------------------------------------------------------------------------------
    epochs: float = Field(3.0, gt=0, description="Passes over the transfer set (fractions allowed).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(32, ge=1, description="Rows per batch per process.")
    grad_accum: int = Field(1, ge=1, description="Gradient-accumulation steps per optimizer step.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not on biases and LayerNorm).")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Fraction of steps spent warming up linearly.")
    schedule: Schedule = Field(Schedule.linear, description="Learning-rate decay after warm-up.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    eval_every: int = Field(500, ge=1, description="Evaluate (and checkpoint) every N optimizer steps.")
    patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without improvement (None: never stop early)."
    )
    save_every: int | None = Field(None, ge=1, description="Checkpoint every N steps (default: eval_every).")
    mixed_precision: MixedPrecision = Field(
        MixedPrecision.auto, description="auto: bf16 on GPUs that support it, else fp16 on GPUs, none on CPU."
    )
    seed: int = Field(42, description="Seed for initialisation, data order, augmentation and dropout.")
    cache_limit_gb: float = Field(
        8.0, gt=0,
        description="Largest teacher-output cache on disk; intermediate targets beyond it are recomputed "
        "by the teacher every step instead.",
    )
    allow_pickle: bool = Field(False, description="Allow pickled (.bin) teacher/student weights.")
    trust_remote_code: bool = Field(False, description="Allow checkpoints with custom code (auto_map).")

    def training_fields(self) -> dict[str, Any]:
        """The settings a resumed run must share with the interrupted one."""
        skip = {"eval_every", "save_every", "patience", "cache_limit_gb", "allow_pickle", "trust_remote_code"}
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in skip}


@dataclass
class DistillResult:
    artifact: Artifact
    metrics: dict[str, Any]


class Interrupted(EdgeCompressError):
    """Training stopped by Ctrl-C/SIGTERM after saving a resumable checkpoint."""

    exit_code = 130


# ---------------------------------------------------------------------------------------------
# Student construction
# ---------------------------------------------------------------------------------------------


def layer_list(model) -> tuple[str, Any]:
    """The ``nn.ModuleList`` of transformer blocks (found by structure, not by module names)."""
    from torch import nn

    n = model.config.num_hidden_layers
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if not found:
        raise ConfigError(
            f"cannot find the {n} transformer layers of {type(model).__name__}",
            hint="pass an existing student checkpoint with --student instead",
        )
    return max(found, key=lambda item: sum(p.numel() for p in item[1].parameters()))


def evenly_spaced(n_teacher: int, n_student: int) -> list[int]:
    """``n_student`` teacher layers spread evenly, always ending with the last (6 -> 3: 1, 3, 5)."""
    return [round((i + 1) * n_teacher / n_student) - 1 for i in range(n_student)]


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_keep(keep: list[int], n_teacher: int) -> list[int]:
    bad = [i for i in keep if not 0 <= i < n_teacher]
    if bad:
        raise ConfigError(
            f"--keep-layers {','.join(map(str, keep))}: {bad[0]} is out of range; the teacher has "
            f"{n_teacher} layers (0..{n_teacher - 1})",
            hint=f"pick indices between 0 and {n_teacher - 1}",
        )
    if len(set(keep)) != len(keep):
        raise ConfigError(f"--keep-layers {','.join(map(str, keep))}: repeated layer", hint="list each layer once")
    return sorted(keep)


def build_student(teacher_model, config: DistillConfig) -> tuple[Any, dict[str, Any]]:
    """A student initialised from ``teacher_model`` per ``config``; returns (model, description)."""
    import torch

    n_teacher = teacher_model.config.num_hidden_layers
    if config.layers is not None and config.keep_layers is not None:
        raise ConfigError("--layers and --keep-layers both given", hint="use one of them")
    cfg = copy.deepcopy(teacher_model.config)
    overrides = dict(config.student_config or {})
    for key in overrides:
        if not hasattr(cfg, key):
            raise ConfigError(
                f"student config: {type(cfg).__name__} has no setting {key!r}",
                hint="use transformers config names such as hidden_size, intermediate_size, num_hidden_layers",
            )
    n_student = overrides.get("num_hidden_layers", n_teacher)
    keep: list[int]
    if config.keep_layers is not None:
        keep = _check_keep(list(config.keep_layers), n_teacher)
        n_student = len(keep)
    elif config.layers is not None:
        if config.layers > n_teacher:
            raise ConfigError(
                f"--layers {config.layers}: the student would be deeper than the teacher ({n_teacher} layers)",
                hint=f"pick at most {n_teacher} layers",
            )
        n_student = config.layers
        keep = evenly_spaced(n_teacher, n_student)
    else:
        keep = evenly_spaced(n_teacher, n_student) if n_student <= n_teacher else list(range(n_student))
    overrides["num_hidden_layers"] = n_student
    for key, value in overrides.items():
        setattr(cfg, key, value)
    if getattr(cfg, "hidden_size", 1) % max(getattr(cfg, "num_attention_heads", 1), 1):
        raise ConfigError(
            f"student hidden_size {cfg.hidden_size} is not divisible by num_attention_heads {cfg.num_attention_heads}",
            hint="choose a head count that divides the hidden size",
        )
    torch.manual_seed(config.seed)
    student = type(teacher_model)(cfg)
    prefix, _ = layer_list(student)
    t_sd = teacher_model.state_dict()
    copied = sliced = fresh = 0
    new_sd = {}
    for name, param in student.state_dict().items():
        src = name
        if name.startswith(prefix + "."):
            idx, _, rest = name[len(prefix) + 1 :].partition(".")
            j = int(idx)
            src = f"{prefix}.{keep[j]}.{rest}" if j < len(keep) else name
        t = t_sd.get(src)
        if t is None or t.dim() != param.dim() or any(a < b for a, b in zip(t.shape, param.shape, strict=True)):
            new_sd[name] = param
            fresh += 1
        elif tuple(t.shape) == tuple(param.shape):
            new_sd[name] = t.clone()
            copied += 1
        else:  # narrower student: the leading slice of every dimension (consistent across tensors)
            new_sd[name] = t[tuple(slice(0, s) for s in param.shape)].clone()
            sliced += 1
    student.load_state_dict(new_sd)
    t_params, s_params = count_parameters(teacher_model), count_parameters(student)
    if s_params > t_params:
        raise ConfigError(
            f"the student ({s_params:,} parameters) is larger than the teacher ({t_params:,})",
            hint="distillation makes models smaller: use fewer layers or a narrower student config",
        )
    desc = {
        "init": "teacher layers" if not config.student_config else "teacher config overrides",
        "kept_teacher_layers": keep[:n_student],
        "config_overrides": config.student_config or {},
        "tensors_copied": copied,
        "tensors_sliced": sliced,
        "tensors_fresh": fresh,
    }
    return student, desc


def load_student(path: str, teacher, config: DistillConfig) -> tuple[Any, dict[str, Any], Any]:
    """An existing student checkpoint, its description, and its own tokenizer (None: it shares the teacher's).

    A student with another tokenizer (e.g. a vocabulary-pruned one) is distilled on output-level losses
    only: each model reads the text through its own tokenizer, and the teacher's logits (or pooled
    embedding) for a row are the target for the student's on the same row. Refused when labels differ.
    """
    from compress.models import load_teacher

    st = load_teacher(path, teacher.task, allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code)
    t_vocab, s_vocab = teacher.tokenizer.get_vocab(), st.tokenizer.get_vocab()
    probe = ["Distillation feeds both models the same token ids.", "naïve café-goers don't re-tweet 123 URLs!"]
    own_tokenizer = None
    if t_vocab != s_vocab or teacher.tokenizer(probe)["input_ids"] != st.tokenizer(probe)["input_ids"]:
        own_tokenizer = st.tokenizer
        if config.hidden_weight or config.attention_weight or config.value_relation_weight:
            raise ConfigError(
                f"teacher and student tokenizers differ (vocabularies of {len(t_vocab):,} and {len(s_vocab):,} "
                "tokens, or different normalisation): intermediate-layer losses compare token positions, which "
                "then do not correspond",
                hint="distil on the outputs only (--hidden-weight 0 --attention-weight 0 --value-relation-weight 0),"
                " or pick a student that shares the teacher's tokenizer",
            )
    if teacher.task is Task.text_classification and st.info.labels != teacher.info.labels:
        raise ConfigError(
            f"student labels {st.info.labels} differ from the teacher's {teacher.info.labels}",
            hint="use a student with the same id2label, or build one from the teacher with --layers",
        )
    t_params, s_params = count_parameters(teacher.model), count_parameters(st.model)
    if s_params > t_params:
        raise ConfigError(
            f"the student ({s_params:,} parameters) is larger than the teacher ({t_params:,})",
            hint="pick a smaller student",
        )
    desc = {"init": "checkpoint", "student_path": str(Path(path).resolve()),
            "own_tokenizer": own_tokenizer is not None}
    if own_tokenizer is not None:
        desc["student_vocab_size"] = len(s_vocab)
    return st.model, desc, own_tokenizer


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


def _encode(tokenizer, texts: list[str], max_length: int) -> dict[str, list[list[int]]]:
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    return {k: v for k, v in enc.items() if k in ("input_ids", "token_type_ids")}


class _TransferSet:
    """Tokenised rows (ids kept as lists) and their labels (-100 when unlabelled)."""

    def __init__(self, enc: dict[str, list[list[int]]], labels: list[int], pad_id: int) -> None:
        self.enc = enc
        self.labels = labels
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

    @property
    def needs_hidden_states(self) -> bool:
        return self.hidden or not self.classification

    @property
    def intermediate(self) -> bool:
        return self.hidden or self.attention or self.value_relation


def _pool(last_hidden, mask, pooling: str | None, normalize: bool):
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
    from compress.models import model_feed

    out = model(**model_feed(model, batch), output_hidden_states=plan.needs_hidden_states, output_attentions=plan.attention)
    for wanted, got in (("hidden states", plan.needs_hidden_states and out.hidden_states is None),
                        ("attentions", plan.attention and out.attentions is None)):
        if got:
            import transformers

            raise StageError(
                f"{type(model).__name__} returned no {wanted} under transformers {transformers.__version__} "
                "(a student built from teacher layers loses transformers 5's output capture)",
                hint="distil with logits only (the default losses), or use transformers<5 for intermediate-layer "
                "losses and feature-extraction teachers",
            )
    res: dict[str, Any] = {}
    if plan.classification:
        res["soft"] = out.logits
    else:
        res["soft"] = _pool(out.hidden_states[-1], batch["attention_mask"], plan.pooling, plan.normalize)
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
    if plan.classification:
        if config.soft_weight:
            temp = config.temperature
            parts["soft"] = F.kl_div(
                F.log_softmax(s["soft"].float() / temp, -1), F.softmax(t["soft"].float() / temp, -1),
                reduction="batchmean",
            ) * temp * temp
        labels = batch["labels"]
        if config.hard_weight and bool((labels != _IGNORE).any()):
            parts["hard"] = F.cross_entropy(s["soft"].float(), labels, ignore_index=_IGNORE)
    elif config.soft_weight:
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
    weights = {"soft": config.soft_weight, "hard": config.hard_weight, "hidden": config.hidden_weight,
               "attention": config.attention_weight, "value_relation": config.value_relation_weight}
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
    width = result[0][1].shape[1]
    out = np.zeros((len(data), width), np.float32)
    for idx, soft in result:
        out[idx] = soft
    return out


def score(pred: np.ndarray, teacher_pred: np.ndarray, labels: np.ndarray | None, metric: Metric) -> float:
    if metric is Metric.accuracy:
        return float((pred.argmax(-1) == labels).mean())
    if metric is Metric.agreement:
        return float((pred.argmax(-1) == teacher_pred.argmax(-1)).mean())
    a = pred / np.clip(np.linalg.norm(pred, axis=-1, keepdims=True), 1e-12, None)
    b = teacher_pred / np.clip(np.linalg.norm(teacher_pred, axis=-1, keepdims=True), 1e-12, None)
    return float((a * b).sum(-1).mean())


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def default_run_dir(out: Path | str) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".run")


def _diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _fingerprint(texts: list[str], labels: list[int] | None) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    h.update(json.dumps(labels).encode())
    return h.hexdigest()


def _mixed_precision(choice: MixedPrecision) -> str:
    import torch

    if choice is not MixedPrecision.auto:
        if choice is not MixedPrecision.no and not torch.cuda.is_available():
            raise ConfigError(f"--mixed-precision {choice}: needs a CUDA GPU", hint="use --mixed-precision no on CPU")
        return choice.value
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _resolve_metric(metric: Metric, classification: bool, eval_ds, eval_data) -> Metric:
    """The early-stopping metric: ``auto`` resolved, and refused when the data or task cannot give it."""
    if metric is Metric.auto:
        metric = (Metric.accuracy if eval_ds is not None and eval_ds.labels is not None else Metric.agreement) \
            if classification else Metric.cosine
    if metric is Metric.accuracy and (eval_ds is None or eval_ds.labels is None or not classification):
        raise DataError(
            f"--metric accuracy needs labelled eval data, but {eval_data or 'no --eval data'} has no labels"
            if eval_ds is not None or eval_data is None else "--metric accuracy needs labels",
            hint="pass labelled --eval data, or use --metric agreement (agreement with the teacher)",
        )
    if metric in (Metric.accuracy, Metric.agreement) and not classification:
        raise ConfigError(f"--metric {metric}: the teacher is a feature-extraction model", hint="use --metric cosine")
    if metric is Metric.cosine and classification:
        raise ConfigError("--metric cosine is for feature-extraction teachers", hint="use accuracy or agreement")
    return metric


def _choose_student(teacher, config: DistillConfig) -> tuple[Any, dict[str, Any], list[int], Any]:
    """The student (built, or loaded), its description, the teacher layer each student layer maps to, and the
    student's own tokenizer (None: the teacher's)."""
    if config.student and (config.layers or config.keep_layers or config.student_config):
        raise ConfigError("--student and --layers/--keep-layers/--student-config both given", hint="use one way")
    own_tokenizer = None
    if config.student:
        student, student_desc, own_tokenizer = load_student(config.student, teacher, config)
    else:
        if not (config.layers or config.keep_layers or config.student_config):
            raise ConfigError("no student given", hint="pass --layers N, --keep-layers I,J,..., --student-config FILE "
                              "or --student DIR")
        student, student_desc = build_student(teacher.model, config)
    if student_desc.get("init") != "checkpoint" and config.student_config is None:
        mapping = student_desc["kept_teacher_layers"]
    else:
        mapping = evenly_spaced(teacher.model.config.num_hidden_layers, student.config.num_hidden_layers)
    return student, student_desc, mapping, own_tokenizer


def _transfer_sets(teacher, train_ds, eval_ds, config: DistillConfig, max_length: int, classification: bool):
    """Tokenised transfer rows (augmented copies unlabelled), eval rows, and the transfer texts/labels."""
    texts = list(train_ds.texts)
    labels = list(train_ds.labels) if train_ds.labels is not None else [_IGNORE] * len(texts)
    if not classification:
        labels = [_IGNORE] * len(texts)
    if config.augment:
        emb = teacher.model.get_input_embeddings().weight.detach().float().numpy()
        extra = neighbour_augment(train_ds.texts, teacher.tokenizer, emb, config.augment, config.augment_prob, config.seed)
        texts += extra
        labels += [_IGNORE] * len(extra)
    pad_id = teacher.tokenizer.pad_token_id if teacher.tokenizer.pad_token_id is not None else 0
    data = _TransferSet(_encode(teacher.tokenizer, texts, max_length), labels, pad_id)
    eval_set = None
    if eval_ds is not None:
        eval_set = _TransferSet(_encode(teacher.tokenizer, eval_ds.texts, max_length),
                                list(eval_ds.labels) if eval_ds.labels is not None else [_IGNORE] * len(eval_ds),
                                pad_id)
    return data, eval_set, texts, labels


def _student_sets(tokenizer, texts: list[str], labels: list[int], eval_set, eval_ds, max_length: int):
    """The transfer and eval rows tokenised by the student's own tokenizer (same rows, same order)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sdata = _TransferSet(_encode(tokenizer, texts, max_length), labels, pad_id)
    s_eval = None if eval_set is None else _TransferSet(_encode(tokenizer, eval_ds.texts, max_length),
                                                         eval_set.labels, pad_id)
    return sdata, s_eval


def _open_run(run: Path, run_config: dict[str, Any], accelerator, *, resume: bool, force: bool) -> None:
    """Check a run directory to resume (same settings and data), or start it afresh."""
    if resume:
        if not (run / RUN_CONFIG).is_file():
            raise ConfigError(f"--resume: no run to resume in {run}", hint="start without --resume")
        old = json.loads((run / RUN_CONFIG).read_text())
        diffs = _diff(old.get("config", {}), run_config["config"])
        for key, what in (("teacher", "teacher checkpoint"), ("train", "training data"), ("eval", "eval data")):
            if old.get(key) != run_config[key]:
                diffs.append(f"{what} changed")
        if diffs:
            raise ConfigError(
                f"--resume: the interrupted run in {run} used different settings ({'; '.join(diffs)})",
                hint="resume with the original settings, or start over with --force",
            )
    else:
        if run.exists() and (run / RUN_CONFIG).exists() and not force:
            raise ConfigError(
                f"{run} holds an earlier run (interrupted?)",
                hint="continue it with --resume, or pass --force to start over",
            )
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(run, ignore_errors=True)
            run.mkdir(parents=True)
            (run / RUN_CONFIG).write_text(json.dumps(run_config, indent=2) + "\n")
        accelerator.wait_for_everyone()


def _rows_drawn(data: _TransferSet, config: DistillConfig, n_proc: int, total_steps: int) -> np.ndarray | None:
    """The transfer rows the first ``total_steps`` optimizer steps draw (None: all of them).

    Fewer draws than one epoch take a prefix of the first epoch's order (the same order training uses),
    so a short ``--max-steps`` run labels only those rows with the teacher.
    """
    draws = total_steps * config.grad_accum * config.batch_size * n_proc
    if draws >= len(data):
        return None
    order = length_grouped_order(data.lengths, config.batch_size * n_proc, config.seed)
    return np.array(order[:draws], dtype=np.int64)


def _ensure_cache(cache_dir: Path, teacher, data: _TransferSet, plan: _Plan, cache_intermediate: bool, accelerator,
                  max_length: int, batch_size: int, progress, transfer_fingerprint: str, rows: np.ndarray | None,
                  stop: Callable[[], bool]) -> int:
    """Label the transfer ``rows`` (None: all) the teacher-output cache lacks; returns how many it labelled.

    Raises :class:`Interrupted` when ``stop()`` turned true first (the labelled rows are kept for --resume).
    """
    import torch

    cache_key = {
        "teacher": teacher.sha256, "transfer": transfer_fingerprint, "max_length": max_length,
        "mapping": plan.mapping if cache_intermediate and plan.intermediate else None,
        "targets": [k for k, on in (("hidden", plan.hidden), ("attention", plan.attention),
                                    ("value_relation", plan.value_relation)) if on and cache_intermediate],
        "pooling": [plan.pooling, plan.normalize], "config_version": CONFIG_VERSION,
    }
    tcache.check_directory(cache_dir)
    # every process checks before the main one writes: a late process would otherwise see the freshly
    # built cache before its key.json and refuse it
    accelerator.wait_for_everyone()
    labelled, total, complete = 0, len(data) if rows is None else len(rows), True
    if accelerator.is_main_process:
        t_plan = copy.copy(plan)
        if not cache_intermediate:
            t_plan.hidden = t_plan.attention = t_plan.value_relation = False
        tap = _ValueTap(layer_list(teacher.model)[1][-1]) if t_plan.value_relation else None
        device = accelerator.device
        teacher.model.to(device)

        def forward(idx: list[int]) -> dict[str, Any]:
            return _model_outputs(teacher.model, {k: v.to(device) for k, v in data.collate(idx).items()}, t_plan, tap)

        t_cfg = teacher.model.config
        width = t_cfg.num_labels if plan.classification else t_cfg.hidden_size
        try:
            labelled, total, complete = tcache.fill(cache_dir, cache_key, data, plan, cache_intermediate, t_cfg, width,
                                                    rows, forward, batch_size, progress, stop)
        finally:
            if tap:
                tap.remove()
    accelerator.wait_for_everyone()
    if accelerator.num_processes > 1:  # only the main process labels: every process learns whether it finished
        complete = bool(accelerator.reduce(torch.tensor([0.0 if complete else 1.0], device=accelerator.device),
                                           reduction="sum").item() == 0)
    if not complete:
        raise Interrupted(f"interrupted while computing the teacher's outputs; the rows done so far are kept in "
                          f"{cache_dir}", hint="run the same command with --resume to continue")
    return labelled


def distill(
    teacher_dir: Path | str,
    train: Path | str,
    out: Path | str,
    config: DistillConfig | None = None,
    *,
    eval_data: Path | str | None = None,
    run_dir: Path | str | None = None,
    teacher_cache: Path | str | None = None,
    resume: bool = False,
    force: bool = False,
    keep_run: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[Any, int, int], None] | None = None,
) -> DistillResult:
    """Distil the teacher at ``teacher_dir`` into a smaller student written as an artifact at ``out``.

    ``on_step(student, step, total_steps)`` runs after every optimizer step (under ``torch.no_grad``),
    e.g. to keep pruning masks applied (``compress.stages.prune.Sparsifier``).

    ``teacher_cache`` is a directory for the teacher's outputs that outlives the run: later runs with the
    same teacher, transfer data and targets reuse it (default: inside the run directory).
    ``progress`` receives dicts: ``{"phase": "teacher", "done", "total"}`` while caching teacher outputs,
    ``{"phase": "train", "step", "total", "loss", "eval", ...}`` during training.
    """
    from compress._optional import require

    require("torch", "distillation")
    require("accelerate", "distillation")
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    from compress.data import load_dataset
    from compress.models import load_teacher

    config = config or DistillConfig()
    out = Path(out)
    check_output(out, force)
    run = Path(run_dir) if run_dir else default_run_dir(out)
    t0 = time.perf_counter()

    def say(key: str, label: str) -> None:  # a stretch of work without a count (once, not per process)
        if progress and os.environ.get("RANK", "0") == "0":
            progress({"phase": key, "label": label})

    say("load", f"loading the teacher {teacher_dir}")
    teacher = load_teacher(teacher_dir, allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code)
    classification = teacher.task is Task.text_classification
    label2id = {name: i for i, name in enumerate(teacher.info.labels)} if teacher.info.labels else None
    max_length = min(config.max_length or teacher.info.max_length, teacher.info.max_length)
    train_ds = load_dataset(train, text_column=config.text_column, label_column=config.label_column,
                            label2id=label2id, num_labels=len(label2id) if label2id else None)
    if not classification:
        train_ds.labels = None
    if config.max_train_rows:
        train_ds = train_ds.sample(config.max_train_rows, seed=config.seed)
    eval_ds = None
    if eval_data is not None:
        eval_ds = load_dataset(eval_data, text_column=config.text_column, label_column=config.label_column,
                               label2id=label2id, num_labels=len(label2id) if label2id else None)
        if config.eval_samples:
            eval_ds = eval_ds.sample(config.eval_samples, seed=config.seed)
    metric = _resolve_metric(config.metric, classification, eval_ds, eval_data)
    if config.hard_weight and classification and train_ds.labels is None:
        log.warning("%s has no labels: training on the teacher's soft targets only", train)

    say("student", "building the student")
    student, student_desc, mapping, own_tokenizer = _choose_student(teacher, config)
    t_heads = teacher.model.config.num_attention_heads
    plan = _Plan(
        classification=classification, pooling=teacher.info.postprocess.pooling,
        normalize=teacher.info.postprocess.normalize, mapping=mapping,
        hidden=config.hidden_weight > 0, attention=config.attention_weight > 0,
        value_relation=config.value_relation_weight > 0, relation_heads=t_heads,
    )
    if plan.value_relation and student.config.hidden_size % t_heads:
        raise ConfigError(
            f"value relation splits values into {t_heads} relation heads; student hidden size "
            f"{student.config.hidden_size} is not divisible by it", hint="set --value-relation-weight 0",
        )
    if plan.attention:
        for m in (student, teacher.model):
            m.config._attn_implementation = "eager"  # attention probabilities are not returned by SDPA
            m.set_attn_implementation("eager") if hasattr(m, "set_attn_implementation") else None

    say("tokenise", f"tokenising {len(train_ds):,} training rows" + (f" and {config.augment} augmented copies of each"
                                                                     if config.augment else ""))
    data, eval_set, texts, labels = _transfer_sets(teacher, train_ds, eval_ds, config, max_length, classification)
    # the student reads the same rows through its own tokenizer when it has one (a vocabulary-pruned student);
    # teacher targets are per row, so only row indices join the two
    sdata, s_eval_set = data, eval_set
    if own_tokenizer is not None:
        sdata, s_eval_set = _student_sets(own_tokenizer, texts, labels, eval_set, eval_ds, max_length)

    # --- run directory: fresh, or resumed with identical settings --------------------------------
    run_config = {
        "config": config.training_fields(),
        "teacher": teacher.sha256,
        "train": _fingerprint(train_ds.texts, train_ds.labels),
        "eval": _fingerprint(eval_ds.texts, eval_ds.labels) if eval_ds is not None else None,
        "config_version": CONFIG_VERSION,
    }
    kwargs = DistributedDataParallelKwargs(find_unused_parameters=True)
    accelerator = Accelerator(
        mixed_precision=_mixed_precision(config.mixed_precision), gradient_accumulation_steps=config.grad_accum,
        kwargs_handlers=[kwargs],
    )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and accelerator.num_processes == 1:
        raise ConfigError(
            f"launched as {os.environ['WORLD_SIZE']} processes but Accelerate runs each alone (no GPU for --multi_gpu)",
            hint="on CPUs launch with ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ...",
        )
    main = accelerator.is_main_process
    ckpt = run / "checkpoint"
    _open_run(run, run_config, accelerator, resume=resume, force=force)

    set_seed(config.seed)
    device = accelerator.device

    # --- teacher targets, computed once ----------------------------------------------------------
    t_cfg = teacher.model.config
    est = tcache.estimate_bytes(data, plan, t_cfg)
    cache_intermediate = sum(est.values()) <= config.cache_limit_gb * 1e9
    if not cache_intermediate:
        log.warning("intermediate teacher targets need %.1f GB (> --cache-limit-gb %.1f): the teacher runs every "
                    "step for them", sum(est.values()) / 1e9, config.cache_limit_gb)
    n_proc = accelerator.num_processes
    batches_per_epoch = math.ceil(len(data) / (config.batch_size * n_proc))
    steps_per_epoch = max(1, batches_per_epoch // config.grad_accum)
    total_steps = config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))
    rows = _rows_drawn(sdata, config, n_proc, total_steps)
    t_cache = time.perf_counter()
    needs_teacher = config.soft_weight > 0 or plan.intermediate
    cache_dir = Path(teacher_cache) if teacher_cache else run / "teacher-cache"
    teacher_rows = 0
    if needs_teacher:
        with _StopFlag() as flag:
            teacher_rows = _ensure_cache(cache_dir, teacher, data, plan, cache_intermediate, accelerator, max_length,
                                         max(64, config.batch_size * 2), progress, _fingerprint(texts, labels), rows,
                                         lambda: flag.requested)
    cache = tcache.TeacherCache(cache_dir) if needs_teacher else None
    cache_seconds = time.perf_counter() - t_cache
    teacher.model.to(device)
    if eval_set is not None:
        say("teacher-eval", f"scoring the teacher on {len(eval_set):,} eval rows")
    teacher_eval = _predict(teacher.model, eval_set, plan, device, 64) if eval_set is not None else None
    eval_labels = np.array(eval_ds.labels) if eval_ds is not None and eval_ds.labels is not None else None
    teacher_score = score(teacher_eval, teacher_eval, eval_labels, metric) if teacher_eval is not None else None
    if cache_intermediate or not plan.intermediate:
        teacher.model.to("cpu")

    # --- model, optimiser, schedule ----------------------------------------------------------------
    say("prepare", "resuming from the checkpoint" if resume else "preparing training")
    projections = None
    if plan.hidden and student.config.hidden_size != t_cfg.hidden_size:
        projections = torch.nn.ModuleList(
            torch.nn.Linear(student.config.hidden_size, t_cfg.hidden_size) for _ in plan.mapping
        )
    module = _trainable(student, projections)
    module.train()
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    groups = [
        {"params": [p for n, p in module.named_parameters() if not any(k in n for k in no_decay)],
         "weight_decay": config.weight_decay},
        {"params": [p for n, p in module.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    from transformers import get_scheduler

    scheduler = get_scheduler(config.schedule.value, optimizer, num_warmup_steps=int(config.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    module, optimizer = accelerator.prepare(module, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    tap_s = _ValueTap(layer_list(student)[1][-1]) if plan.value_relation else None
    tap_t = _ValueTap(layer_list(teacher.model)[1][-1]) if plan.value_relation and not cache_intermediate else None

    state: dict[str, Any] = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best": None, "best_step": None,
                             "bad_evals": 0, "history": [], "train_seconds": 0.0, "stopped": None}
    if resume and (ckpt / RUN_STATE).is_file():
        accelerator.load_state(str(ckpt))
        state = json.loads((ckpt / RUN_STATE).read_text())
        log.info("resumed %s at step %d/%d", run, state["step"], total_steps)

    def unwrap_student():
        return accelerator.unwrap_model(module).student

    def save_checkpoint() -> None:
        accelerator.wait_for_everyone()
        tmp = run / "checkpoint.partial"
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if main:
            (tmp / RUN_STATE).write_text(json.dumps(state, indent=2) + "\n")
            old = run / "checkpoint.old"
            shutil.rmtree(old, ignore_errors=True)
            if ckpt.exists():
                os.replace(ckpt, old)
            os.replace(tmp, ckpt)
            shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    def evaluate() -> float | None:
        if eval_set is None:
            return None
        pred = _predict(unwrap_student(), s_eval_set, plan, device, 64)
        return score(pred, teacher_eval, eval_labels, metric)

    def save_best() -> None:
        if main:
            best = run / "best"
            tmp = run / "best.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            unwrap_student().save_pretrained(str(tmp), safe_serialization=True)
            shutil.rmtree(best, ignore_errors=True)
            os.replace(tmp, best)
        accelerator.wait_for_everyone()

    save_every = config.save_every or config.eval_every
    last_loss: dict[str, float] = {}
    train_start = time.perf_counter() - state["train_seconds"]

    def stop_requested(flag: _StopFlag) -> bool:
        if n_proc == 1:
            return flag.requested
        t = torch.tensor([1.0 if flag.requested else 0.0], device=device)
        return bool(accelerator.reduce(t, reduction="sum").item() > 0)

    with _StopFlag() as flag:
        try:
            while state["step"] < total_steps and state["stopped"] is None:
                epoch = state["epoch"]
                order = length_grouped_order(sdata.lengths, config.batch_size * n_proc, config.seed + epoch)
                # Own generator: creating a DataLoader iterator draws a base seed from the global torch RNG
                # otherwise, and a resumed run creates one more iterator (skip_first_batches) than an
                # uninterrupted one, which would shift every later dropout mask.
                loader = torch.utils.data.DataLoader(order, batch_size=config.batch_size, collate_fn=sdata.collate,
                                                     generator=torch.Generator().manual_seed(config.seed + epoch))
                loader = accelerator.prepare_data_loader(loader, device_placement=True)
                skip = state["batch_in_epoch"]
                it = accelerator.skip_first_batches(loader, skip) if skip else loader
                batch_no = skip
                for batch in it:
                    with accelerator.accumulate(module):
                        s_out = _model_outputs(module, batch, plan, tap_s)
                        if cache is None:
                            t_out = {}
                        elif cache_intermediate or not plan.intermediate:
                            t_out = cache.targets(batch, data, plan, t_cfg, device)
                        else:
                            with torch.inference_mode():
                                online = _model_outputs(teacher.model, batch, plan, tap_t)
                            t_out = cache.targets(batch, data, plan, t_cfg, device)
                            if plan.hidden:
                                t_out["hidden"] = [online["hidden"][t + 1].clone() for t in plan.mapping]
                            if plan.attention:
                                t_out["attn"] = [online["attn"][t].clone() for t in plan.mapping]
                            if plan.value_relation:
                                t_out["vr"] = online["vr"].clone()
                        proj = accelerator.unwrap_model(module).proj
                        loss, parts = distill_loss(s_out, t_out, batch, plan, config, proj)
                        accelerator.backward(loss)
                        if accelerator.sync_gradients:
                            accelerator.clip_grad_norm_(module.parameters(), config.max_grad_norm)
                        optimizer.step()
                        if accelerator.sync_gradients:
                            scheduler.step()
                            if on_step is not None:
                                with torch.no_grad():
                                    on_step(unwrap_student(), state["step"] + 1, total_steps)
                        optimizer.zero_grad()
                    batch_no += 1
                    last_loss = {"loss": float(loss.detach()), **parts}
                    if not accelerator.sync_gradients:
                        continue
                    state["step"] += 1
                    state["batch_in_epoch"] = batch_no
                    state["train_seconds"] = time.perf_counter() - train_start
                    step = state["step"]
                    evaluated = None
                    if eval_set is not None and (step % config.eval_every == 0 or step == total_steps):
                        evaluated = evaluate()
                        improved = state["best"] is None or evaluated > state["best"]
                        state["history"].append({"step": step, "metric": evaluated, **last_loss})
                        if improved:
                            state["best"], state["best_step"], state["bad_evals"] = evaluated, step, 0
                            save_best()
                        else:
                            state["bad_evals"] += 1
                            if config.patience and state["bad_evals"] >= config.patience:
                                state["stopped"] = f"early stop at step {step}: no improvement in {config.patience} evaluations"
                    if progress and main:
                        progress({"phase": "train", "step": step, "total": total_steps, "epoch": epoch,
                                  "lr": scheduler.get_last_lr()[0], "eval": evaluated, "best": state["best"],
                                  "metric": metric.value, **last_loss})
                    if step % save_every == 0 or state["stopped"] or step >= total_steps:
                        save_checkpoint()
                    if stop_requested(flag):
                        save_checkpoint()
                        raise Interrupted(
                            f"interrupted at step {step}/{total_steps}; the run is saved in {run}",
                            hint="run the same command with --resume to continue",
                        )
                    if step >= total_steps or state["stopped"]:
                        break
                else:
                    state["epoch"] += 1
                    state["batch_in_epoch"] = 0
                    continue
                if state["step"] >= total_steps or state["stopped"]:
                    break
        finally:
            for tap in (tap_s, tap_t):
                if tap:
                    tap.remove()

    # --- the student artifact ----------------------------------------------------------------------
    accelerator.wait_for_everyone()
    final = unwrap_student()
    chosen = "last"
    if eval_set is not None and state["best_step"] is not None and state["best_step"] != state["step"]:
        from safetensors.torch import load_file

        final.load_state_dict(load_file(str(run / "best" / "model.safetensors")), strict=False)
        chosen = f"best (step {state['best_step']})"
    # the last step is always evaluated, so the chosen weights' score is the best one recorded
    final_score = state["best"] if eval_set is not None else None
    art = None
    metrics: dict[str, Any] = {}
    if main:
        final = final.to("cpu").float()
        metrics = {
            "teacher_parameters": count_parameters(teacher.model),
            "student_parameters": count_parameters(final),
            "steps": state["step"],
            "total_steps": total_steps,
            "epochs": round(state["step"] / steps_per_epoch, 3),
            "transfer_rows": len(data),
            "augmented_rows": len(data) - len(train_ds),
            "processes": n_proc,
            "mixed_precision": accelerator.mixed_precision,
            "teacher_cache_seconds": round(cache_seconds, 1),
            "teacher_labelled_rows": teacher_rows,
            "train_seconds": round(state["train_seconds"], 1),
            "stopped": state["stopped"] or "completed",
            "chosen": chosen,
            "metric": metric.value,
            "history": state["history"],
            "student": student_desc,
            "layer_mapping": plan.mapping,
            "cached_intermediate_targets": bool(cache_intermediate and plan.intermediate),
        }
        if final_score is not None:
            metrics.update({"eval_rows": len(eval_set), "eval_metric": final_score, "teacher_eval_metric": teacher_score,
                            "retention": final_score / teacher_score if teacher_score else None})
        say("write", f"writing the student to {out}")
        art = _write_student(final, teacher, out, config, metrics, force, time.perf_counter() - t0,
                             tokenizer=own_tokenizer)
        if not keep_run:
            shutil.rmtree(run, ignore_errors=True)
    accelerator.wait_for_everyone()
    if art is None:
        art = load_artifact(out, verify=False)
        metrics = art.manifest.steps[-1].metrics
    return DistillResult(art, metrics)


def _trainable(student, projections):
    """Student + hidden-state projections as one module (one DDP wrapper, one optimizer, one checkpoint)."""
    from torch import nn

    from compress.models import model_feed

    class Trainable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.student = student
            self.proj = projections

        def forward(self, **inputs):
            return self.student(**model_feed(self.student, inputs))

    return Trainable()


def _write_student(model, teacher, out: Path, config: DistillConfig, metrics: dict[str, Any], force: bool,
                   seconds: float, tokenizer=None) -> Artifact:
    from compress.models import load_teacher

    with staged_dir(out, force) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        (tokenizer or teacher.tokenizer).save_pretrained(str(tmp))
        for name in _ST_FILES:
            if (teacher.path / name).is_file():
                shutil.copy2(teacher.path / name, tmp / name)
        for name in _ST_DIRS:
            if (teacher.path / name).is_dir():
                shutil.copytree(teacher.path / name, tmp / name)
        size = sum(f.stat().st_size for f in tmp.glob("*.safetensors"))
        metrics["size_bytes"] = size
        metrics["teacher_size_bytes"] = sum(teacher.path.joinpath(w).stat().st_size for w in teacher.info.weights)
        student = load_teacher(tmp, teacher.task)
        manifest = student.manifest()
        manifest.source = teacher.source()
        manifest.versions = library_versions("accelerate")
        manifest.steps = [StepRecord(
            stage="distill",
            config=config.model_dump(mode="json"),
            config_version=CONFIG_VERSION,
            versions={k: manifest.versions.get(k) for k in ("torch", "transformers", "accelerate")},
            input_digest=teacher.sha256,
            output_digest=digest_dir(tmp),
            seconds=round(seconds, 3),
            metrics=metrics,
        )]
        write_manifest(tmp, manifest)
    art = load_artifact(out)
    log.info("wrote %s (%s parameters, %.1f MB)", out, f"{metrics['student_parameters']:,}", metrics["size_bytes"] / 1e6)
    return art
