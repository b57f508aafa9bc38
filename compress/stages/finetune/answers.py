"""``finetune --task question-answering``: a pretrained text encoder (all-MiniLM-L6-v2) gets a span head (transformers'
``...ForQuestionAnswering``: a start and an end logit per token) and learns to find each question's answer in its
context, from SQuAD-format JSON (:mod:`compress.data.squad`).

Training rows are Hugging Face ``run_qa``'s: each question with its context cut into overlapping windows of
``--max-length`` tokens (:func:`compress.data.tokenization.qa_windows`, the stride of the task's postprocess), the
labels the tokens holding the answer's first and last characters, or the first token ([CLS]) in a window that does
not hold the whole answer. The eval metric is SQuAD's F1 (:func:`compress.tasks.qa.qa_metrics`) of the best span
over each question's windows. Both are :mod:`compress.stages.transfer`'s (``training_rows``, ``squad_f1``), which
distill reads too."""

from __future__ import annotations

from pathlib import Path

from compress.errors import ConfigError
from compress.stages.finetune.common import FinetuneResult, data_record, run_record, train_loop, write_checkpoint
from compress.stages.finetune.config import FinetuneConfig

__all__ = ["finetune_answers"]


def finetune_answers(base: Path, train, output, config: FinetuneConfig, *, build, eval_data, retain_data, run: Path,
                     resume: bool, force: bool, progress) -> FinetuneResult:
    """Fine-tune ``base`` with a span head on SQuAD-format ``train``; ``build(base, config)`` gives ``(model,
    trainable parameters, frozen modules)`` (the mode: full, frozen layers, LoRA), the head new and seeded."""
    from compress.data.squad import load_squad
    from compress.stages.transfer import squad_f1, training_rows
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
    loop = train_loop(model, trainable, train_set, config, run, progress, lr=config.peak_lr(),
                     loss=lambda m, batch: m(**batch).loss, evaluate=evaluate, metric_name="f1",
                     frozen_modules=frozen)
    loop.start(resume, force)
    loop.train()
    final = loop.finish()
    if not loop.is_main:
        return FinetuneResult(*loop.follow(output))
    metrics = {**run_record(loop, config), "mode": str(config.mode), "frozen_layers": config.freeze, "base": str(base),
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
