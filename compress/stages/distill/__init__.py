"""Knowledge distillation: train a smaller student from a fine-tuned teacher's outputs.

The student is built from the teacher (a subset of its layers, or a narrower config initialised from its
weights) or given as a checkpoint that shares the teacher's tokenizer. Losses, each with a weight:
soft-target KL at temperature T (scaled by T^2), hard-label cross entropy, hidden-state MSE on mapped
layers (with learned projections when widths differ), attention-distribution KL on mapped layers, and
MiniLM's value-relation KL on the last layer. Teacher outputs are computed once over the transfer set
and cached on disk in the run directory, so epochs after the first do not run the teacher.

A causal LM teacher (task text-generation) is distilled on text windows by KL on its top-k next tokens, optionally
on the student's own samples (:mod:`compress.stages.distill.lm`).

Training runs on Hugging Face Accelerate (CPU, one GPU, or ``accelerate launch`` over several
processes), checkpoints into a run directory that ``resume=True`` continues, and writes the final
student artifact only at the end (staged directory + rename).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from compress.artifact import is_artifact, library_versions, load_artifact
from compress.errors import ConfigError
from compress.interrupt import StopFlag as _StopFlag
from compress.progress import Progress
from compress.stages import teacher_cache as tcache
from compress.stages.common import make_accelerator, save_checkpoint
from compress.stages.distill.config import CONFIG_VERSION, DISTILL, DistillConfig, DistillResult
from compress.stages.distill.run import (
    _choose_student,
    _ensure_cache,
    _fingerprint,
    _mixed_precision,
    _open_run,
    _resolve_metric,
    _rows_drawn,
    _student_sets,
    _transfer_sets,
)
from compress.stages.distill.student import check_keep_early, count_parameters
from compress.stages.distill.training import Distillation
from compress.stages.spec import StageOutput
from compress.stages.training import default_run_dir
from compress.stages.transfer import OutputPlan, predict_rows, score
from compress.tasks import TASKS, by_kind, is_generator
from compress.tasks.embeddings import pooling_of

log = logging.getLogger(__name__)


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
    progress: Progress | None = None,
    on_step: Callable[[Any, int, int], None] | None = None,
) -> DistillResult:
    """Distil the teacher at ``teacher_dir`` into a smaller student written as an artifact at ``out``.

    ``on_step(student, step, total_steps)`` runs after every optimizer step (under ``torch.no_grad``),
    e.g. to keep pruning masks applied (``compress.stages.prune.Sparsifier``).

    ``teacher_cache`` is a directory for the teacher's outputs that outlives the run: later runs with the
    same teacher, transfer data and targets reuse it (default: inside the run directory).
    ``progress`` receives dicts: ``{"phase": "teacher", "done", "total"}`` while caching teacher outputs,
    ``{"phase": "train", "step", "total", "loss", "eval", ...}`` during training.

    The run directory (checkpoints, best weights, teacher targets) is what ``resume`` continues; the artifact
    at ``out`` is written only at the end, through :class:`~compress.stages.spec.StageOutput`.
    """
    from compress._optional import require

    config = config or DistillConfig()
    output = DISTILL.output(out, config, force=force)
    out = output.path
    check_keep_early(teacher_dir, config)  # before torch, transformers and the teacher's weights load
    require("torch", "distillation")
    require("accelerate", "distillation")
    from accelerate.utils import set_seed

    from compress.teachers.load import load_teacher

    run = Path(run_dir) if run_dir else default_run_dir(out)

    def say(key: str, label: str) -> None:  # a stretch of work without a count (once, not per process)
        if progress and os.environ.get("RANK", "0") == "0":
            progress({"phase": key, "label": label})

    say("load", f"loading the teacher {teacher_dir}")
    if is_artifact(teacher_dir):
        DISTILL.check(load_artifact(teacher_dir))
    teacher = load_teacher(teacher_dir, allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code)
    delegated = _distill_by_task(teacher, teacher_dir, train, output, config, eval_data=eval_data, run=run,
                                 teacher_cache=teacher_cache, resume=resume, force=force, keep_run=keep_run,
                                 progress=progress, on_step=on_step)
    if delegated is not None:
        return delegated
    task = TASKS[teacher.task]
    tokens = task.labels == "per-word"
    if tokens and (config.augmentation.copies or config.augmentation.join):
        raise ConfigError("--augment and --augment-join make new sentences, and a token classifier's sentences need "
                          "a tag per word", hint="drop them")
    classification = task.labels in ("per-sample", "per-word")
    max_length = min(config.max_length or teacher.info.max_length, teacher.info.max_length)
    train_ds, eval_ds, metric = _read_data(teacher, train, eval_data, config, classification)

    say("student", "building the student")
    student, student_desc, plan, own_tokenizer = _student_and_plan(teacher, config, classification)
    if tokens and own_tokenizer is not None:
        raise ConfigError("the student has its own tokenizer: a token classifier's student must read the words as "
                          "the teacher does", hint="pick a student that shares the teacher's tokenizer")

    aug = config.augmentation
    copies = " and ".join(f"{k} {what}" for k, what in ((aug.copies, "augmented"), (aug.join, "joined")) if k)
    say("tokenise", f"tokenising {len(train_ds):,} training rows" + (f" and {copies} copies of each" if copies else ""))
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
    accelerator = _accelerator(config)
    _open_run(run, run_config, accelerator, resume=resume, force=force)
    set_seed(config.seed)

    # --- teacher targets, computed once ----------------------------------------------------------
    n_proc = accelerator.num_processes
    batches_per_epoch = math.ceil(len(data) / (config.training.batch_size * n_proc))
    steps_per_epoch = max(1, batches_per_epoch // config.training.grad_accum)
    total_steps = config.training.max_steps or max(1, math.ceil(steps_per_epoch * config.training.epochs))
    targets = _teacher_targets(teacher, data, sdata, plan, config, accelerator, run, teacher_cache, total_steps,
                               max_length, texts, labels, progress)
    if eval_set is not None:
        say("teacher-eval", f"scoring the teacher on {len(eval_set):,} eval rows")
    teacher_eval, eval_labels, teacher_score = _score_teacher(teacher, eval_set, eval_ds, plan, metric, tokens,
                                                              accelerator.device)
    if targets["intermediate"] or not plan.intermediate:
        teacher.model.to("cpu")

    # --- training ------------------------------------------------------------------------------------
    say("prepare", "resuming from the checkpoint" if resume else "preparing training")
    trainer = Distillation(accelerator=accelerator, run=run, config=config, plan=plan, teacher=teacher,
                           student=student, data=data, sdata=sdata, eval_set=eval_set, s_eval_set=s_eval_set,
                           teacher_eval=teacher_eval, eval_labels=eval_labels, metric=metric, cache=targets["cache"],
                           cache_intermediate=targets["intermediate"], total_steps=total_steps, progress=progress,
                           on_step=on_step)
    trainer.prepare(resume)
    trainer.train()

    # --- the student artifact ----------------------------------------------------------------------
    sources = {"train": str(Path(train).resolve()), "eval": str(Path(eval_data).resolve()) if eval_data else None}
    return _write_result(trainer, teacher, output, targets, student_desc, own_tokenizer, sources=sources,
                         steps_per_epoch=steps_per_epoch, train_rows=len(train_ds), teacher_score=teacher_score,
                         run=run, keep_run=keep_run, say=say)


def _distill_by_task(teacher, teacher_dir, train, output: StageOutput, config: DistillConfig, *, eval_data, run: Path,
                     teacher_cache, resume: bool, force: bool, keep_run: bool, progress: Progress | None,
                     on_step) -> DistillResult | None:
    """A teacher whose task has a distillation of its own, distilled there: a causal LM (top-k logit KL on text
    windows), question answering (start and end logits over SQuAD windows), an image classifier (logits on shifted
    images); a regressor refused. None for the text classifiers and encoders :func:`distill` trains itself."""
    return by_kind(_KINDS, teacher, "distill")(teacher, teacher_dir, train, output, config, eval_data=eval_data,
                                               run=run, teacher_cache=teacher_cache, resume=resume, force=force,
                                               keep_run=keep_run, progress=progress, on_step=on_step)


def _distill_generator(teacher, teacher_dir, train, output: StageOutput, config: DistillConfig, *, eval_data,
                       run: Path, teacher_cache, resume: bool, force: bool, keep_run: bool, progress: Progress | None,
                       on_step) -> DistillResult:
    """A causal LM: top-k logit distillation on text windows."""
    from compress.stages.distill.lm import distill_causal_lm

    result = distill_causal_lm(teacher, train, output, config, eval_data=eval_data, run=run,
                               teacher_cache=teacher_cache, resume=resume, force=force, progress=progress,
                               choose_student=_choose_student, write=_write_student, on_step=on_step)
    if not keep_run:
        shutil.rmtree(run, ignore_errors=True)
    return result


def _distill_forward(teacher, teacher_dir, train, output: StageOutput, config: DistillConfig, *, eval_data,
                     run: Path, teacher_cache, resume: bool, force: bool, keep_run: bool, progress: Progress | None,
                     on_step) -> DistillResult | None:
    """One forward pass: question answering and image classifiers distilled in their own modules, a regressor
    refused; None for the text classifiers and encoders :func:`distill` trains itself."""
    _refuse_lm_options(config, teacher.task)
    task = TASKS[teacher.task]
    if task.labels == "values":  # its outputs are numbers: no logits to match, no embeddings to pool
        raise ConfigError(f"distill does not take a {teacher.task} teacher yet ({teacher_dir} gives numbers, not "
                          "class scores)", hint="quantize or export the regressor instead; validate scores it by MAE")
    if task.labels == "spans":  # question answering: start and end logits over SQuAD windows
        from compress.stages.distill.answers import distill_answers

        result = distill_answers(teacher, train, output, config, eval_data=eval_data, run=run, resume=resume,
                                 force=force, progress=progress, choose_student=_choose_student,
                                 write=_write_student)
    elif task.inputs == "image":  # logits on shifted images (compress.stages.distill.images)
        from compress.stages.distill.images import distill_images

        return distill_images(teacher, train, output.path, config, eval_data=eval_data, run_dir=run,
                              resume=resume, force=force, progress=progress)
    else:
        return None
    if not keep_run:
        shutil.rmtree(run, ignore_errors=True)
    return result


#: how distill takes a teacher of each kind (:func:`compress.tasks.by_kind`)
_KINDS = {"forward": _distill_forward, "generation": _distill_generator}


def _score_teacher(teacher, eval_set, eval_ds, plan: OutputPlan, metric, tokens: bool, device):
    """The teacher's predictions on the eval rows, the eval labels (a token classifier's: a list of tag ids per
    sentence) and the teacher's metric on them; Nones without eval data (or, for the labels and the metric,
    without labels)."""
    teacher_eval = predict_rows(teacher.model, eval_set, plan, device, 64) if eval_set is not None else None
    eval_labels = None
    if eval_ds is not None and eval_ds.labels is not None:
        eval_labels = eval_ds.labels if tokens else np.array(eval_ds.labels)
    teacher_score = score(teacher_eval, teacher_eval, eval_labels, metric, plan.tags) if teacher_eval is not None \
        else None
    return teacher_eval, eval_labels, teacher_score


def _write_result(trainer: Distillation, teacher, output: StageOutput, targets: dict[str, Any], student_desc,
                  own_tokenizer, *, sources: dict[str, str | None], steps_per_epoch: int, train_rows: int,
                  teacher_score, run: Path, keep_run: bool, say: Callable[[str, str], None]) -> DistillResult:
    """The trained student's chosen weights written as the artifact (by the main process, which then drops the run
    directory unless ``keep_run``); every process returns it with its metrics."""
    final, chosen, final_score = trainer.final_weights()
    accelerator = trainer.accelerator
    art = None
    metrics: dict[str, Any] = {}
    if accelerator.is_main_process:
        final = final.to("cpu").float()
        metrics = _run_metrics(trainer, final, chosen, steps_per_epoch, train_rows, targets, student_desc, sources)
        if final_score is not None:
            metrics.update({"eval_rows": len(trainer.eval_set), "eval_metric": final_score,
                            "teacher_eval_metric": teacher_score,
                            "retention": final_score / teacher_score if teacher_score else None})
        say("write", f"writing the student to {output.path}")
        art = _write_student(final, teacher, output, metrics, tokenizer=own_tokenizer)
        if not keep_run:
            shutil.rmtree(run, ignore_errors=True)
    accelerator.wait_for_everyone()
    if art is None:
        art = load_artifact(output.path, verify=False)
        metrics = art.manifest.steps[-1].metrics
    return DistillResult(art, metrics)


def _refuse_lm_options(config: DistillConfig, task) -> None:
    """Refuse the options only a causal LM's distillation reads."""
    from compress.stages.distill.config import Divergence, LayerChoice

    given = set(config.given())
    for bad, flag in ((config.loss.divergence is not Divergence.forward, "--divergence"),
                      ("loss.top_k" in given, "--top-k"),
                      (config.loss.on_policy > 0, "--on-policy"),
                      (config.loss.on_policy_tokens is not None, "--on-policy-tokens"),
                      (config.augmentation.teacher_samples > 0, "--teacher-samples"),
                      (config.student.layer_choice is not LayerChoice.evenly, "--layer-choice")):
        if bad:
            raise ConfigError(f"{flag} is for causal LM teachers (text-generation); this teacher is {task}",
                              hint=f"drop {flag}")


def _run_metrics(trainer: Distillation, final, chosen: str, steps_per_epoch: int, train_rows: int,
                 targets: dict[str, Any], student_desc: dict[str, Any], data: dict[str, str | None]) -> dict[str, Any]:
    """The step's record of a finished run: sizes, steps, rows, timings, the checkpoint chosen, the student and how
    it was taught (the eval scores are added after them)."""
    state, plan, config, rows = trainer.state, trainer.plan, trainer.config, len(trainer.data)
    return {
        "teacher_parameters": count_parameters(trainer.teacher.model),
        "student_parameters": count_parameters(final),
        "steps": state["step"],
        "total_steps": trainer.total_steps,
        "epochs": round(state["step"] / steps_per_epoch, 3),
        "transfer_rows": rows,
        "augmented_rows": train_rows * config.augmentation.copies,
        "joined_rows": rows - train_rows * (1 + config.augmentation.copies),
        "processes": trainer.n_proc,
        "mixed_precision": trainer.accelerator.mixed_precision,
        "teacher_cache_seconds": round(targets["seconds"], 1),
        "teacher_labelled_rows": targets["rows"],
        "train_seconds": round(state["train_seconds"], 1),
        "stopped": state["stopped"] or "completed",
        "chosen": chosen,
        "metric": trainer.metric.value,
        "history": state["history"],
        "student": student_desc,
        "layer_mapping": plan.mapping,
        "cached_intermediate_targets": bool(targets["intermediate"] and plan.intermediate),
        "data": data,
    }


def _accelerator(config: DistillConfig):
    """Accelerate for this process (one of several under ``accelerate launch``)."""
    return make_accelerator(_mixed_precision(config.training.mixed_precision), config.training.grad_accum)


def _read_data(teacher, train, eval_data, config: DistillConfig, classification: bool):
    """The transfer rows and the eval rows (labelled with the teacher's class ids), and the metric to score with."""
    from compress.data.tables import load_dataset

    label2id = {name: i for i, name in enumerate(teacher.info.labels)} if teacher.info.labels else None
    if TASKS[teacher.task].labels == "per-word":  # sentences split into words, a tag per word
        return _read_words(teacher, train, eval_data, config, label2id)
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
        if config.evaluation.samples:
            eval_ds = eval_ds.sample(config.evaluation.samples, seed=config.seed)
    metric = _resolve_metric(config.evaluation.metric, classification, eval_ds, eval_data)
    if config.loss.hard_weight and classification and train_ds.labels is None:
        log.warning("%s has no labels: training on the teacher's soft targets only", train)
    return train_ds, eval_ds, metric


def _read_words(teacher, train, eval_data, config: DistillConfig, label2id: dict[str, int]):
    """A token classifier's transfer and eval sentences (CoNLL or JSON lines, :mod:`compress.data.words`)."""
    from compress.data.words import load_word_dataset

    train_ds = load_word_dataset(train, label2id=label2id)
    if config.max_train_rows:
        train_ds = train_ds.sample(config.max_train_rows, seed=config.seed)
    eval_ds = None
    if eval_data is not None:
        eval_ds = load_word_dataset(eval_data, label2id=label2id)
        if config.evaluation.samples:
            eval_ds = eval_ds.sample(config.evaluation.samples, seed=config.seed)
    metric = _resolve_metric(config.evaluation.metric, True, eval_ds, eval_data)
    if config.loss.hard_weight and train_ds.labels is None:
        log.warning("%s has no tags: training on the teacher's soft targets only", train)
    return train_ds, eval_ds, metric


def _student_and_plan(teacher, config: DistillConfig, classification: bool):
    """The student (built, or loaded), its description, which losses apply to it (the plan) and its own tokenizer;
    refuse a student the chosen losses cannot compare with the teacher."""
    student, student_desc, mapping, own_tokenizer = _choose_student(teacher, config)
    t_heads = teacher.model.config.num_attention_heads
    pooling, normalize = pooling_of(teacher.info.postprocess)
    plan = OutputPlan(
        classification=classification, pooling=pooling, normalize=normalize, mapping=mapping,
        hidden=config.loss.hidden_weight > 0, attention=config.loss.attention_weight > 0,
        value_relation=config.loss.value_relation_weight > 0, relation_heads=t_heads,
        tags=teacher.info.labels if TASKS[teacher.task].labels == "per-word" else None,
    )
    if not classification and config.loss.soft_weight and student.config.hidden_size != teacher.model.config.hidden_size:
        # a sentence encoder's output is its embedding: a narrower student's cannot be compared with the teacher's,
        # nor stand in for it (an index built on 384-dim vectors does not take 192-dim ones)
        raise ConfigError(
            f"the student's embeddings would have {student.config.hidden_size} dimensions, the teacher's "
            f"{teacher.model.config.hidden_size}: a {teacher.task} teacher is distilled into students of its own "
            "width", hint="keep hidden_size in --student-config (change layers or intermediate_size), or distil a "
            "classifier")
    if plan.value_relation and student.config.hidden_size % t_heads:
        raise ConfigError(
            f"value relation splits values into {t_heads} relation heads; student hidden size "
            f"{student.config.hidden_size} is not divisible by it", hint="set --value-relation-weight 0",
        )
    if plan.attention:
        for m in (student, teacher.model):
            m.config._attn_implementation = "eager"  # attention probabilities are not returned by SDPA
            m.set_attn_implementation("eager") if hasattr(m, "set_attn_implementation") else None
    return student, student_desc, plan, own_tokenizer


def _teacher_targets(teacher, data, sdata, plan: OutputPlan, config: DistillConfig, accelerator, run: Path,
                     teacher_cache, total_steps: int, max_length: int, texts, labels, progress) -> dict[str, Any]:
    """Run the teacher once over the rows training will draw and cache its targets (intermediate ones only within
    ``cache_limit_gb``); leave the teacher on the device. Returns the cache, whether it holds the intermediate
    targets, the rows labelled and the seconds it took."""
    est = tcache.estimate_bytes(data, plan, teacher.model.config)
    cache_intermediate = sum(est.values()) <= config.cache_limit_gb * 1e9
    if not cache_intermediate:
        log.warning("intermediate teacher targets need %.1f GB (> --cache-limit-gb %.1f): the teacher runs every "
                    "step for them", sum(est.values()) / 1e9, config.cache_limit_gb)
    rows = _rows_drawn(sdata, config, accelerator.num_processes, total_steps)
    t_cache = time.perf_counter()
    needs_teacher = config.loss.soft_weight > 0 or plan.intermediate
    cache_dir = Path(teacher_cache) if teacher_cache else run / "teacher-cache"
    teacher_rows = 0
    if needs_teacher:
        with _StopFlag() as flag:
            teacher_rows = _ensure_cache(cache_dir, teacher, data, plan, cache_intermediate, accelerator, max_length,
                                         max(64, config.training.batch_size * 2), progress, _fingerprint(texts, labels),
                                         rows, lambda: flag.requested)
    cache = tcache.TeacherCache(cache_dir) if needs_teacher else None
    seconds = time.perf_counter() - t_cache
    teacher.model.to(accelerator.device)
    return {"cache": cache, "intermediate": cache_intermediate, "rows": teacher_rows, "seconds": seconds}


def _write_student(model, teacher, output: StageOutput, metrics: dict[str, Any], tokenizer=None):
    from compress.teachers.load import load_teacher

    with output.writing() as o:
        save_checkpoint(model, tokenizer or teacher.tokenizer, teacher, o.dir)
        if (teacher.path / "generation_config.json").is_file() and is_generator(teacher):
            shutil.copy2(teacher.path / "generation_config.json", o.dir / "generation_config.json")  # its defaults
        size = sum(f.stat().st_size for f in o.dir.glob("*.safetensors"))
        metrics["size_bytes"] = size
        metrics["teacher_size_bytes"] = sum(teacher.path.joinpath(w).stat().st_size for w in teacher.info.weights)
        student = load_teacher(o.dir, teacher.task)
        manifest = student.manifest()
        manifest.source, prior = teacher.lineage()
        manifest.versions = library_versions("accelerate")
        o.describe(manifest, input_digest=teacher.sha256, lineage=prior, metrics=metrics)
    art = output.artifact
    log.info("wrote %s (%s parameters, %.1f MB)", output.path, f"{metrics['student_parameters']:,}",
             metrics["size_bytes"] / 1e6)
    return art
