"""The run around the training loop: run directory and resume checks, fingerprints, the teacher's targets."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import ConfigError, DataError
from compress.stages import teacher_cache as tcache
from compress.stages.common import layer_list
from compress.stages.distill.config import (
    CONFIG_VERSION,
    RUN_CONFIG,
    DistillConfig,
    Metric,
    MixedPrecision,
)
from compress.stages.distill.losses import join_augment, neighbour_augment
from compress.stages.distill.student import build_student, evenly_spaced, load_student
from compress.stages.training import Interrupted, LoopSettings
from compress.stages.transfer import (
    IGNORE_INDEX,
    OutputPlan,
    TransferSet,
    ValueTap,
    encode_texts,
    encode_words,
    length_grouped_order,
    model_outputs,
)
from compress.tasks import TASKS

# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def loop_settings(config: DistillConfig) -> LoopSettings:
    """What the one training loop reads of distill's settings, for the students it trains on a run directory
    (a causal LM's, a span head's: :func:`compress.stages.training.run_loop`)."""
    tc, ev = config.training, config.evaluation
    return LoopSettings(epochs=tc.epochs, max_steps=tc.max_steps, batch_size=tc.batch_size,
                        weight_decay=tc.weight_decay, warmup_ratio=tc.warmup_ratio, eval_every=ev.every,
                        save_every=ev.save_every, patience=ev.patience, seed=config.seed)


def _diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every setting that differs, a section's by their dotted paths (``training.lr``)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict) and a != b:
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def _fingerprint(texts: list[str], labels: list[int] | None) -> str:
    h = hashlib.sha256()
    for t in texts:  # (a sentence split into words: its words joined by a unit separator)
        h.update((t if isinstance(t, str) else "\x1f".join(t)).encode("utf-8") + b"\0")
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
    own_tokenizer = None
    if config.student.checkpoint:
        student, student_desc, own_tokenizer = load_student(config.student.checkpoint, teacher, config)
    else:
        if not (config.student.layers or config.student.keep_layers or config.student.config):
            raise ConfigError("no student given", hint="pass --layers N, --keep-layers I,J,..., --student-config FILE "
                              "or --student DIR")
        student, student_desc = build_student(teacher.model, config)
    if student_desc.get("init") != "checkpoint" and config.student.config is None:
        mapping = student_desc["kept_teacher_layers"]
    else:
        mapping = evenly_spaced(teacher.model.config.num_hidden_layers, student.config.num_hidden_layers)
    return student, student_desc, mapping, own_tokenizer


def _word_sets(teacher, train_ds, eval_ds, max_length: int):
    """A token classifier's transfer and eval rows: sentences split into words, a tag on each word's first
    sub-token (-100 elsewhere, and on every token of an unlabelled sentence)."""
    pad_id = teacher.tokenizer.pad_token_id if teacher.tokenizer.pad_token_id is not None else 0
    enc, labels, word_ids = encode_words(teacher.tokenizer, train_ds.texts, train_ds.labels, max_length)
    data = TransferSet(enc, labels, pad_id, word_ids)
    eval_set = None
    if eval_ds is not None:
        e_enc, e_labels, e_ids = encode_words(teacher.tokenizer, eval_ds.texts, eval_ds.labels, max_length)
        eval_set = TransferSet(e_enc, e_labels, pad_id, e_ids)
    return data, eval_set, [" ".join(t) for t in train_ds.texts], train_ds.labels


def _transfer_sets(teacher, train_ds, eval_ds, config: DistillConfig, max_length: int, classification: bool):
    """Tokenised transfer rows (augmented copies unlabelled), eval rows, and the transfer texts/labels."""
    if TASKS[teacher.task].labels == "per-word":
        return _word_sets(teacher, train_ds, eval_ds, max_length)
    texts = list(train_ds.texts)
    labels = list(train_ds.labels) if train_ds.labels is not None else [IGNORE_INDEX] * len(texts)
    if not classification:
        labels = [IGNORE_INDEX] * len(texts)
    if config.augmentation.copies:
        emb = teacher.model.get_input_embeddings().weight.detach().float().numpy()
        extra = neighbour_augment(train_ds.texts, teacher.tokenizer, emb, config.augmentation.copies,
                                  config.augmentation.prob, config.seed)
        texts += extra
        labels += [IGNORE_INDEX] * len(extra)
    if config.augmentation.join:
        joined, joined_labels = join_augment(list(train_ds.texts), labels[: len(train_ds)], config.augmentation.join,
                                             config.seed)
        texts += joined
        labels += joined_labels
    pad_id = teacher.tokenizer.pad_token_id if teacher.tokenizer.pad_token_id is not None else 0
    data = TransferSet(encode_texts(teacher.tokenizer, texts, max_length), labels, pad_id)
    eval_set = None
    if eval_ds is not None:
        eval_set = TransferSet(encode_texts(teacher.tokenizer, eval_ds.texts, max_length),
                                list(eval_ds.labels) if eval_ds.labels is not None else [IGNORE_INDEX] * len(eval_ds),
                                pad_id)
    return data, eval_set, texts, labels


def _student_sets(tokenizer, texts: list[str], labels: list[int], eval_set, eval_ds, max_length: int):
    """The transfer and eval rows tokenised by the student's own tokenizer (same rows, same order)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sdata = TransferSet(encode_texts(tokenizer, texts, max_length), labels, pad_id)
    s_eval = None if eval_set is None else TransferSet(encode_texts(tokenizer, eval_ds.texts, max_length),
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


def _rows_drawn(data: TransferSet, config: DistillConfig, n_proc: int, total_steps: int) -> np.ndarray | None:
    """The transfer rows the first ``total_steps`` optimizer steps draw (None: all of them).

    Fewer draws than one epoch take a prefix of the first epoch's order (the same order training uses),
    so a short ``--max-steps`` run labels only those rows with the teacher.
    """
    draws = total_steps * config.training.grad_accum * config.training.batch_size * n_proc
    if draws >= len(data):
        return None
    order = length_grouped_order(data.lengths, config.training.batch_size * n_proc, config.seed)
    return np.array(order[:draws], dtype=np.int64)


def _ensure_cache(cache_dir: Path, teacher, data: TransferSet, plan: OutputPlan, cache_intermediate: bool, accelerator,
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
        tap = ValueTap(layer_list(teacher.model)[1][-1]) if t_plan.value_relation else None
        device = accelerator.device
        teacher.model.to(device)

        def forward(idx: list[int]) -> dict[str, Any]:
            return model_outputs(teacher.model, {k: v.to(device) for k, v in data.collate(idx).items()}, t_plan, tap)

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
