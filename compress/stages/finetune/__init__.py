"""``edgecompress finetune``: a pretrained base (a Hugging Face text encoder such as all-MiniLM-L6-v2, a Hugging Face
image classifier or backbone, a timm checkpoint) gets a new head for the task and the labels in the data (or, for
regression, the numbers in it: :mod:`compress.stages.finetune.regression`; for question answering, a span head on
SQuAD-format data: :mod:`compress.stages.finetune.answers`; a causal LM keeps its own head and learns the task's
text, LoRA or QLoRA among its modes: :mod:`compress.stages.finetune.lm`) and trains:
the whole model, the first N layers frozen, or low-rank adapters (peft LoRA) merged into the weights before the
checkpoint is written, so every later step sees a plain checkpoint.

The written artifact is the teacher the rest of the chain starts from; its lineage starts at the base (``source``
names it and its digest). The loop (:mod:`compress.stages.training`) is one for every base; this module holds what
text needs (tokenised, length-grouped batches), :mod:`compress.stages.finetune.images` what images need,
:mod:`compress.stages.finetune.common` what both share (the result, the lineage's records, the labels, LoRA).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import ConfigError
from compress.progress import Progress
from compress.stages.finetune.common import (
    FinetuneResult,
    check_labels,
    data_record,
    label_names,
    lora_targets,
    run_record,
    train_loop,
    wrap_lora,
    write_checkpoint,
)
from compress.stages.finetune.config import FINETUNE, IMAGE_TASKS, TEXT_TASKS, FinetuneConfig, Mode
from compress.tasks import KIND_INFO, TASKS, Task, by_kind, is_generator, task_for
from compress.teachers.kinds import source_kind

log = logging.getLogger("compress.stages.finetune")

__all__ = ["FinetuneResult", "finetune"]


def finetune(base: Path | str, train: Path | str, out: Path | str, config: FinetuneConfig | None = None, *,
             eval_data: Path | str | None = None, retain_data: Path | str | None = None,
             run_dir: Path | str | None = None, resume: bool = False, force: bool = False,
             progress: Progress | None = None) -> FinetuneResult:
    """Fine-tune ``base`` on ``train`` for ``config.task`` and write the merged checkpoint to ``out``.

    ``retain_data``: data of the base's own domain (texts, or images); how much of the base's behaviour the
    fine-tune kept on it is measured (:func:`forgetting`, :func:`compress.stages.finetune.images.image_forgetting`)
    and recorded."""
    from compress.stages.training import default_run_dir
    from compress.teachers.images import is_image_source

    config = config or FinetuneConfig()
    output = FINETUNE.output(out, config, force=force)
    base = Path(base)
    images = is_image_source(base)
    if not images or (base / "config.json").is_file():  # programs say what they are when loaded
        _check_base(base)
    generates = KIND_INFO[source_kind(base)].generates  # a causal LM base: its default task is text-generation
    task = config.task or (task_for("text", kind="generation") if generates else task_for("image" if images else "text"))
    takes = IMAGE_TASKS if images else TEXT_TASKS
    if task not in takes:
        raise ConfigError(f"--task {task}: {base} is {'an image' if images else 'a text'} base",
                          hint="leave --task out, or pass " + " or ".join(t.value for t in takes))
    tune = by_kind(_KINDS, task, "finetune")
    if generates and not is_generator(task):  # before its data is read: the data's form follows the task
        raise ConfigError(f"--task {task}: {base} is a causal LM, which fine-tunes with text-generation (plain text, "
                          "or prompt/response rows for instructions)",
                          hint=f"leave --task out; for {task}, fine-tune an encoder base (BERT, MiniLM, RoBERTa, ...)")
    if config.lora.qlora and not is_generator(task):
        raise ConfigError(f"--qlora: QLoRA adapts a causal LM (task text-generation), not a {task} base",
                          hint="train LoRA over the FP32 base: --lora-rank without --qlora")
    config = config.model_copy(update={"task": task})
    run = Path(run_dir) if run_dir else default_run_dir(output.path)
    result = tune(base, train, output, config, images=images, eval_data=eval_data, retain_data=retain_data, run=run,
                  resume=resume, force=force, progress=progress)
    shutil.rmtree(run, ignore_errors=True)
    m = result.metrics
    log.info("wrote %s (%s of %s parameters trained)", output.path, f"{m['trainable_parameters']:,}",
             f"{m['parameters']:,}")
    return result



def _finetune_generator(base: Path, train, output, config: FinetuneConfig, *, images: bool, **kw):
    """A causal LM base (task text-generation): next-token loss on plain text or prompt/response rows."""
    from compress.stages.finetune.lm import finetune_causal_lm

    return finetune_causal_lm(base, train, output, config, **kw)


def _finetune_forward(base: Path, train, output, config: FinetuneConfig, *, images: bool, **kw):
    """One forward pass: question answering (SQuAD windows), an image base, or a text encoder's head."""
    if config.task is Task.question_answering:
        from compress.stages.finetune.answers import finetune_answers

        return finetune_answers(base, train, output, config, build=lambda b, c: _model(b, None, c, False, qa=True),
                                **kw)
    if images:
        from compress.stages.finetune.images import finetune_images

        return finetune_images(base, train, output, config, **kw)
    return _finetune_text(base, train, output, config, **kw)


#: how finetune trains a base for a task of each kind (:func:`compress.tasks.by_kind`)
_KINDS = {"forward": _finetune_forward, "generation": _finetune_generator}

def _finetune_text(base: Path, train, output, config: FinetuneConfig, *, eval_data, retain_data, run: Path,
                   resume: bool, force: bool, progress) -> FinetuneResult:
    from compress.stages.finetune.regression import METRIC, mae_metric, scores, target_record
    from compress.teachers.load import load_teacher

    words, regression = TASKS[config.task].labels == "per-word", TASKS[config.task].targets
    names = None if regression else config.labels or label_names(Path(train), words)
    if not regression:
        check_labels(names, words, train)
    base_teacher = load_teacher(base, allow_pickle=config.allow_pickle)  # the lineage's source; one-line load errors
    from compress.teachers.lm_config import refuse_causal_lm

    refuse_causal_lm(base_teacher, "finetune", "a checkpoint to train on labelled data")
    if regression:
        train_set, eval_set = _regression_data(base_teacher.tokenizer, train, eval_data, config)
        evaluate = mae_metric(eval_set.outputs, eval_set.y) if eval_set else None
    else:
        train_set, eval_set, eval_labels = _data(base_teacher.tokenizer, names, train, eval_data, config, words)
        evaluate = _text_metric(eval_set, eval_labels, names if words else None) if eval_set else None
    retain = _retain_texts(retain_data) if retain_data else None  # read now: a bad file fails before training
    model, trainable, frozen = _model(base, names, config, words, train_set.y.mean(0) if regression else None)
    loop = train_loop(model, trainable, train_set, config, run, progress, lr=config.peak_lr(),
                     loss=lambda m, batch: m(**batch).loss, evaluate=evaluate,
                     metric_name=METRIC if regression else "entity_f1" if words else "accuracy",
                     frozen_modules=frozen, higher_is_better=not regression)
    loop.start(resume, force)
    loop.train()
    final = loop.finish()  # best weights, LoRA merged: a plain transformers model
    if not loop.is_main:
        return FinetuneResult(*loop.follow(output))
    metrics = {**run_record(loop, config), "mode": str(config.mode), "frozen_layers": config.freeze,
               "labels": names, "base": str(base), "train_rows": len(train_set),
               "eval_rows": len(eval_set) if eval_set else 0, "data": data_record(train, eval_data)}
    if regression:
        metrics["targets"] = target_record(train_set.y)
        if eval_set:
            metrics["eval_scores"] = scores(eval_set.outputs(final), eval_set.y)
    if retain is not None:
        metrics["forgetting"] = forgetting(base_teacher.model.base_model, final.base_model, base_teacher.tokenizer,
                                           retain, config.max_length)
        metrics["forgetting"]["data"] = str(retain_data)
    artifact = write_checkpoint(output, final, base_teacher.tokenizer, base_teacher, config.task, metrics)
    loop.written()
    return FinetuneResult(artifact, metrics)


def _text_metric(eval_set, eval_labels, tags):
    """Accuracy (entity F1 for tags) of a text model on the tokenised eval rows."""
    from compress.stages.transfer import OutputPlan, predict_rows, score

    plan = OutputPlan(classification=True, pooling=None, normalize=False, mapping=[], hidden=False, attention=False,
                      value_relation=False, relation_heads=0, tags=tags)

    def evaluate(model) -> float:
        device = next(model.parameters()).device
        return score(predict_rows(model, eval_set, plan, device, 64), None, eval_labels, "accuracy", tags)

    return evaluate


# --- inputs --------------------------------------------------------------------------------------------------------

def _check_base(base: Path) -> None:
    if not (base / "config.json").is_file():
        raise ConfigError(f"{base}: not a Hugging Face checkpoint directory (no config.json)",
                          hint="pass the pretrained base's directory (config.json, weights, tokenizer)")
    if not any(base.glob("*.safetensors")) and not any(base.glob("pytorch_model*.bin")):
        raise ConfigError(f"{base}: the base has no weights (no model.safetensors)",
                          hint="a base is a pretrained checkpoint: download or save its weights beside config.json")


def _data(tokenizer, names, train, eval_data, config: FinetuneConfig, words: bool):
    """Tokenised training rows, eval rows and the eval labels (ids, or each sentence's tag ids)."""
    from compress.data.tables import load_dataset
    from compress.data.words import load_word_dataset
    from compress.stages.transfer import TransferSet, encode_texts, encode_words

    label2id = {n: i for i, n in enumerate(names)}

    def read(path):
        if words:
            return load_word_dataset(path, label2id=label2id, require_labels=True)
        return load_dataset(path, label2id=label2id, num_labels=len(names), require_labels=True)

    def rows(ds):
        pad = tokenizer.pad_token_id or 0
        if words:
            enc, labels, word_ids = encode_words(tokenizer, ds.texts, ds.labels, config.max_length)
            return TransferSet(enc, labels, pad, word_ids)
        return TransferSet(encode_texts(tokenizer, ds.texts, config.max_length, ds.pairs), list(ds.labels), pad)

    train_set = rows(read(train))
    if eval_data is None:
        return train_set, None, None
    ev = read(eval_data)
    return train_set, rows(ev), (ev.labels if words else np.asarray(ev.labels))


def _regression_data(tokenizer, train, eval_data, config: FinetuneConfig):
    """Tokenised training and eval rows with their targets (:class:`compress.stages.finetune.regression.TargetRows`)."""
    from compress.data.tables import load_dataset
    from compress.stages.finetune.regression import TargetRows, check_targets, table_targets
    from compress.stages.transfer import TransferSet, encode_texts

    def rows(path):
        y = table_targets(path)  # first: a cell that is no number fails before any tokenising
        ds = load_dataset(path, texts_only=True)
        enc = encode_texts(tokenizer, ds.texts, config.max_length, ds.pairs)
        return TargetRows(TransferSet(enc, [0] * len(ds.texts), tokenizer.pad_token_id or 0), y)

    train_set = rows(train)
    check_targets(train_set.y, str(train))
    return train_set, rows(eval_data) if eval_data is not None else None


def _model(base: Path, names: list[str] | None, config: FinetuneConfig, words: bool, targets_mean=None, *,
           qa: bool = False):
    """The base with a new head (seeded), adapted: ``(model to train, its trainable parameters, frozen modules)``.
    ``names`` None: a regression head, one output per target, its bias the targets' mean; ``qa``: a span head (a
    start and an end logit per token)."""
    import torch
    from transformers import (
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    torch.manual_seed(config.seed)
    cls = AutoModelForQuestionAnswering if qa else AutoModelForTokenClassification if words else \
        AutoModelForSequenceClassification
    head = {} if qa else dict(num_labels=len(targets_mean), problem_type="regression") if names is None else dict(
        num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    try:
        model = cls.from_pretrained(str(base), **head, ignore_mismatched_sizes=True,
                                    use_safetensors=not config.allow_pickle or None)
    except ValueError as e:  # transformers has no such head for this model type
        if "Unrecognized configuration class" not in str(e):
            raise
        import json

        kind = "question-answering" if qa else "token-classification" if words else "regression" if names is None \
            else "sequence-classification"
        model_type = json.loads((base / "config.json").read_text(encoding="utf-8")).get("model_type")
        raise ConfigError(f"--task {config.task}: {base} ({model_type}) cannot take a {kind} head: transformers "
                          f"has no {cls.__name__[len('AutoModel'):]} for it",
                          hint="pass a base transformers builds that head for (BERT, MiniLM, RoBERTa, DistilBERT, "
                          "...)") from None
    if names is None and not qa:
        from compress.stages.finetune.regression import init_head_bias

        init_head_bias(model, targets_mean)
    frozen: list = []
    if config.freeze == "all":  # a linear probe: the encoder as pretrained, the new head trains
        frozen = [model.base_model]
        model.base_model.requires_grad_(False)
    elif config.mode is Mode.frozen:
        from compress.stages.common import layer_list

        _, layers = layer_list(model)
        if config.freeze > len(layers):
            raise ConfigError(f"--freeze {config.freeze}: the base has {len(layers)} layers",
                              hint=f"freeze at most {len(layers)}, or --freeze all (only the head trains)")
        embeddings = getattr(model.base_model, "embeddings", None)
        frozen = [*(m for m in [embeddings] if m is not None), *layers[:config.freeze]]
        for module in frozen:
            module.requires_grad_(False)
    elif config.mode is Mode.lora:
        model = _lora(model, config, "QUESTION_ANS" if qa else "TOKEN_CLS" if words else "SEQ_CLS")
    trainable = [p for p in model.parameters() if p.requires_grad]
    return model, trainable, frozen


def _lora(model, config: FinetuneConfig, task_type: str):
    from compress._optional import require

    require("peft", "--lora-rank (LoRA adapters)")
    from peft import LoraConfig, TaskType

    return wrap_lora(model, config, LoraConfig(
        task_type=getattr(TaskType, task_type), r=config.lora.rank,
        lora_alpha=config.lora.alpha or 2 * config.lora.rank, lora_dropout=config.lora.dropout,
        target_modules=lora_targets(config, "all-linear")))


# --- forgetting ----------------------------------------------------------------------------------------------------

#: retained texts measured at most (a deterministic sample beyond)
RETAIN_ROWS = 1000


def _retain_texts(path) -> list[str]:
    from compress.data.tables import load_dataset

    ds = load_dataset(path, texts_only=True)
    return ds.sample(RETAIN_ROWS, seed=0).texts if len(ds) > RETAIN_ROWS else ds.texts


def forgetting(base_encoder, tuned_encoder, tokenizer, texts: list[str], max_length: int = 128) -> dict[str, Any]:
    """How much of the base's behaviour the fine-tuned encoder kept on ``texts`` (the base's own domain): the mean
    cosine of each text's mean-pooled embedding to the base's, and nearest-neighbour agreement (the share of texts
    whose nearest other text under the base is still among the 1 / 3 nearest under the fine-tune)."""
    import torch

    from compress.stages.transfer import pool_hidden
    from compress.tasks.embeddings import neighbour_agreement
    from compress.tasks.outputs import row_cosines

    def embed(encoder) -> np.ndarray:
        encoder.eval()
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), 64):
                enc = tokenizer(texts[i:i + 64], truncation=True, max_length=max_length, padding=True,
                                return_tensors="pt")
                feed = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                hidden = encoder(**feed).last_hidden_state
                out.append(pool_hidden(hidden, feed["attention_mask"], "mean", False).float().numpy())
        return np.concatenate(out)

    base, tuned = embed(base_encoder), embed(tuned_encoder)
    return {"retain_rows": len(texts), "embedding_cosine": float(row_cosines(tuned, base).mean()),
            "neighbour_agreement": neighbour_agreement(base, tuned, k=1),
            "neighbour_agreement_top3": neighbour_agreement(base, tuned, k=3)}


