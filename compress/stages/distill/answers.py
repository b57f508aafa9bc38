"""Distilling a question-answering teacher (``...ForQuestionAnswering``) into a smaller student on SQuAD-format data.

The transfer rows are the training questions' windows (:func:`compress.stages.transfer.training_rows`, the
teacher's postprocess stride); the teacher's start and end logits on every window are computed once. The loss is the
soft-target KL at temperature T (scaled by T²) between the student's and the teacher's distributions over the window's
tokens, for the start and for the end, plus cross entropy on the gold answer's positions (``--hard-weight``), as
DistilBERT's SQuAD distillation does. The student is built as for any text teacher (``--layers``, ``--keep-layers``,
``--student-config``, a checkpoint sharing the tokenizer); the loop is the fine-tune's
(:class:`compress.stages.training.TrainLoop`: evaluation every ``--eval-every`` steps on SQuAD F1, the best
weights kept, checkpoints, ``--resume``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import ConfigError
from compress.stages.distill.config import DistillConfig, DistillResult

__all__ = ["distill_answers"]


def _refuse(config: DistillConfig) -> None:
    loss, aug = config.loss, config.augmentation
    if aug.copies or aug.join:
        raise ConfigError("--augment and --augment-join make new sentences, and a question's answer is a span of its "
                          "context", hint="drop them")
    if loss.hidden_weight or loss.attention_weight or loss.value_relation_weight:
        raise ConfigError("question-answering distillation matches the start and end logits (soft targets and "
                          "gold spans) only", hint="leave --hidden-weight, --attention-weight and "
                          "--value-relation-weight at 0")


def _teacher_logits(model, windows, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's start and end logits on every window (``[windows, tokens]``, padding included)."""
    import torch

    from compress.teachers.load import model_feed

    starts, ends = [], []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(windows.example), batch_size):
            feed = {k: torch.from_numpy(v[i:i + batch_size]) for k, v in windows.arrays.items()}
            out = model(**model_feed(model, feed))
            starts.append(out.start_logits.float().numpy())
            ends.append(out.end_logits.float().numpy())
    return np.concatenate(starts), np.concatenate(ends)


def _loss(config: DistillConfig):
    """The batch loss: KL to the teacher's tempered start and end distributions (× T²) and cross entropy on the gold
    positions, weighted."""
    import torch.nn.functional as F

    from compress.teachers.load import model_feed

    t, soft_w, hard_w = config.loss.temperature, config.loss.soft_weight, config.loss.hard_weight

    def loss(model, batch: dict[str, Any]):
        t_start, t_end = batch.pop("teacher_start"), batch.pop("teacher_end")
        positions = batch.pop("start_positions"), batch.pop("end_positions")
        out = model(**model_feed(model, batch))
        pad = batch["attention_mask"] == 0
        total = 0.0
        for s, r, gold in ((out.start_logits, t_start, positions[0]), (out.end_logits, t_end, positions[1])):
            s, r = s.masked_fill(pad, -1e4), r.masked_fill(pad, -1e4)
            if soft_w:
                kl = F.kl_div(F.log_softmax(s / t, -1), F.log_softmax(r / t, -1), log_target=True,
                              reduction="batchmean")
                total = total + soft_w * kl * t * t / 2
            if hard_w:
                total = total + hard_w * F.cross_entropy(s, gold) / 2
        return total

    return loss


def distill_answers(teacher, train, output, config: DistillConfig, *, eval_data, run: Path, resume: bool, force: bool,
                    progress, choose_student, write) -> DistillResult:
    """Distil a question-answering ``teacher`` into the student ``choose_student(teacher, config)`` gives (``(model,
    description, layer mapping, own tokenizer)``) on SQuAD-format ``train``; ``write(model, teacher, output,
    metrics)`` writes the student's artifact."""
    from compress.data.squad import load_squad
    from compress.stages.distill.run import loop_settings
    from compress.stages.training import run_loop, settings_record
    from compress.stages.transfer import squad_f1, training_rows

    _refuse(config)
    post = teacher.info.postprocess
    window = min(config.max_length or post.window, teacher.info.max_length)
    train_ds = load_squad(train)
    if config.max_train_rows:
        train_ds = train_ds.sample(config.max_train_rows, seed=config.seed)
    eval_ds = load_squad(eval_data) if eval_data is not None else None
    if eval_ds is not None and config.evaluation.samples:
        eval_ds = eval_ds.sample(config.evaluation.samples, seed=config.seed)
    student, desc, _, own_tokenizer = choose_student(teacher, config)
    if own_tokenizer is not None:
        raise ConfigError("the student has its own tokenizer: a question-answering student must read the windows "
                          "as the teacher does (its logits are per token)", hint="pick a student that shares the "
                          "teacher's tokenizer")
    rows = training_rows(teacher.tokenizer, train_ds, window, post.stride)
    t_start, t_end = _teacher_logits(teacher.model, rows.windows)
    rows.extra = {"teacher_start": t_start, "teacher_end": t_end}
    tc, settings = config.training, loop_settings(config)
    evaluate = (lambda m: squad_f1(m, teacher.tokenizer, eval_ds, window, post)["metric"]) if eval_ds else None
    loop = run_loop(student, [p for p in student.parameters() if p.requires_grad], rows, settings, run, progress,
                    lr=tc.lr, loss=_loss(config), evaluate=evaluate, metric_name="f1",
                    run_config={**settings_record(settings), "lr": tc.lr, "max_length": window})
    loop.start(resume, force)
    loop.train()
    final = loop.finish()
    if not loop.is_main:
        art, metrics = loop.follow(output)
        return DistillResult(art, metrics)
    from compress.stages.distill.student import count_parameters

    metrics: dict[str, Any] = {**loop.record(), "teacher_parameters": count_parameters(teacher.model),
                               "student_parameters": count_parameters(final), "student": desc,
                               "transfer_rows": len(train_ds), "transfer_windows": len(rows),
                               "data": {"train": str(Path(train).resolve()),
                                        "eval": str(Path(eval_data).resolve()) if eval_data else None}}
    if eval_ds is not None:
        own = squad_f1(final, teacher.tokenizer, eval_ds, window, post)
        ref = squad_f1(teacher.model, teacher.tokenizer, eval_ds, window, post)
        metrics.update(eval_rows=len(eval_ds), eval_metric=own["metric"], eval_exact_match=own["exact_match"],
                       teacher_eval_metric=ref["metric"],
                       retention=own["metric"] / ref["metric"] if ref["metric"] else None)
    art = write(final, teacher, output, metrics)
    loop.written()
    return DistillResult(art, metrics)
