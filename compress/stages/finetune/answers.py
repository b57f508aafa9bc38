"""``finetune --task question-answering``: a pretrained text encoder (all-MiniLM-L6-v2) gets a span head (transformers'
``...ForQuestionAnswering``: a start and an end logit per token) and learns to find each question's answer in its
context, from SQuAD-format JSON (:mod:`compress.data.squad`).

Training rows are Hugging Face ``run_qa``'s: each question with its context cut into overlapping windows of
``--max-length`` tokens (:func:`compress.data.tokenization.qa_windows`, the stride of the task's postprocess), the
labels the tokens holding the answer's first and last characters, or the first token ([CLS]) in a window that does
not hold the whole answer. The eval metric is SQuAD's F1 (:func:`compress.tasks.qa.qa_metrics`) of the best span
over each question's windows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import ConfigError
from compress.stages.finetune.common import FinetuneResult, data_record, write_checkpoint
from compress.stages.finetune.config import FinetuneConfig

__all__ = ["QAWindowSet", "finetune_answers", "squad_f1", "training_rows"]


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


def finetune_answers(base: Path, train, output, config: FinetuneConfig, *, build, eval_data, retain_data, run: Path,
                     resume: bool, force: bool, progress) -> FinetuneResult:
    """Fine-tune ``base`` with a span head on SQuAD-format ``train``; ``build(base, config)`` gives ``(model,
    trainable parameters, frozen modules)`` (the mode: full, frozen layers, LoRA), the head new and seeded."""
    from compress.data.squad import load_squad
    from compress.stages.finetune.loop import TrainLoop
    from compress.tasks import Task
    from compress.tasks.qa import QAPostprocess
    from compress.teachers.lm_config import refuse_causal_lm
    from compress.teachers.load import load_teacher

    if retain_data is not None:
        raise ConfigError("--retain-data is not measured for question-answering",
                          hint="leave --retain-data out (it compares sentence embeddings of text-classification bases)")
    if config.labels:
        raise ConfigError("--labels names classes, and a question-answering head has none (it points at spans)",
                          hint="leave --labels out")
    train_ds = load_squad(train)
    eval_ds = load_squad(eval_data) if eval_data is not None else None
    base_teacher = load_teacher(base, allow_pickle=config.allow_pickle)
    refuse_causal_lm(base_teacher, "finetune", "a checkpoint to train on labelled data")
    tokenizer = base_teacher.tokenizer
    post = QAPostprocess(window=config.max_length)
    train_set = training_rows(tokenizer, train_ds, config.max_length, post.stride)
    evaluate = (lambda model: squad_f1(model, tokenizer, eval_ds, config.max_length, post)["metric"]) \
        if eval_ds is not None else None
    model, trainable, frozen = build(base, config)
    loop = TrainLoop(model, trainable, train_set, config, run, progress, lr=config.peak_lr(),
                     loss=lambda m, batch: m(**batch).loss, evaluate=evaluate, metric_name="f1",
                     frozen_modules=frozen)
    loop.start(resume, force)
    loop.train()
    final = loop.finish()
    if not loop.is_main:
        return FinetuneResult(*loop.follow(output))
    metrics = {**loop.record(), "mode": str(config.mode), "frozen_layers": config.freeze, "base": str(base),
               "train_rows": len(train_ds), "train_windows": len(train_set),
               "eval_rows": len(eval_ds) if eval_ds else 0, "data": data_record(train, eval_data)}
    if eval_ds is not None:
        final.eval()
        scores = squad_f1(final, tokenizer, eval_ds, config.max_length, post)
        metrics["eval_squad"] = {"f1": scores["metric"], "exact_match": scores["exact_match"],
                                 "questions": scores["questions"]}
    artifact = write_checkpoint(output, final, tokenizer, base_teacher, Task.question_answering, metrics)
    loop.written()
    return FinetuneResult(artifact, metrics)
