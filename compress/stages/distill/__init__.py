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

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from compress.artifact import (
    Artifact,
    Task,
    check_output,
    is_artifact,
    library_versions,
    load_artifact,
    staged_dir,
    write_manifest,
)
from compress.errors import ConfigError
from compress.interrupt import StopFlag as _StopFlag
from compress.stages import teacher_cache as tcache
from compress.stages.common import save_checkpoint
from compress.stages.distill.config import (
    AVERAGE_FILE,
    CONFIG_VERSION,
    DISTILL,
    DistillConfig,
    DistillResult,
    Interrupted,
    RUN_STATE,
)
from compress.stages.distill.student import count_parameters, layer_list
from compress.stages.distill.losses import (
    _Plan,
    _ValueTap,
    _model_outputs,
    _predict,
    distill_loss,
    length_grouped_order,
    score,
)
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
    default_run_dir,
)

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

    from compress.data.tables import load_dataset
    from compress.teachers.load import load_teacher

    config = config or DistillConfig()
    out = Path(out)
    check_output(out, force)
    run = Path(run_dir) if run_dir else default_run_dir(out)
    t0 = time.perf_counter()

    def say(key: str, label: str) -> None:  # a stretch of work without a count (once, not per process)
        if progress and os.environ.get("RANK", "0") == "0":
            progress({"phase": key, "label": label})

    say("load", f"loading the teacher {teacher_dir}")
    if is_artifact(teacher_dir):
        DISTILL.check(load_artifact(teacher_dir))
    teacher = load_teacher(teacher_dir, allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code)
    if teacher.task is Task.image_classification:  # logits on shifted images (compress.stages.distill.images)
        from compress.stages.distill.images import distill_images

        return distill_images(teacher, train, out, config, eval_data=eval_data, run_dir=run, resume=resume,
                              force=force, progress=progress)
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
    if not classification and config.soft_weight and student.config.hidden_size != teacher.model.config.hidden_size:
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

    copies = " and ".join(f"{k} {what}" for k, what in ((config.augment, "augmented"), (config.augment_join, "joined"))
                          if k)
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
    averaged = None
    if config.average:  # stochastic weight averaging: the running mean of the snapshots, kept beside the checkpoint
        from torch.optim.swa_utils import AveragedModel

        averaged = AveragedModel(student)
    if resume and (ckpt / RUN_STATE).is_file():
        accelerator.load_state(str(ckpt))
        state = json.loads((ckpt / RUN_STATE).read_text())
        if averaged is not None and state.get("averaged"):
            from safetensors.torch import load_file

            averaged.module.load_state_dict(load_file(str(ckpt / AVERAGE_FILE)))
            averaged.n_averaged.fill_(state["averaged"])
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
            if averaged is not None and state.get("averaged"):
                from safetensors.torch import save_file

                save_file({k: v.detach().contiguous() for k, v in averaged.module.state_dict().items()},
                          str(tmp / AVERAGE_FILE))
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
                    snapshot = step % config.eval_every == 0 or step == total_steps
                    if averaged is not None and snapshot and step > config.average_start * total_steps:
                        averaged.update_parameters(unwrap_student())
                        state["averaged"] = state.get("averaged", 0) + 1
                        state.setdefault("average_from", step)
                    if eval_set is not None and snapshot:
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
    # the last step is always evaluated, so the chosen weights' score is the best one recorded
    final_score = state["best"] if eval_set is not None else None
    if averaged is not None and state.get("averaged"):
        final.load_state_dict(averaged.module.state_dict())
        chosen = f"average of {state['averaged']} snapshots (steps {state['average_from']}-{state['step']})"
        if eval_set is not None:
            final_score = evaluate()
            state["history"].append({"step": "average", "metric": final_score})
    elif eval_set is not None and state["best_step"] is not None and state["best_step"] != state["step"]:
        from safetensors.torch import load_file

        final.load_state_dict(load_file(str(run / "best" / "model.safetensors")), strict=False)
        chosen = f"best (step {state['best_step']})"
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
            "augmented_rows": len(train_ds) * config.augment,
            "joined_rows": len(data) - len(train_ds) * (1 + config.augment),
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
            "data": {"train": str(Path(train).resolve()), "eval": str(Path(eval_data).resolve()) if eval_data else None},
        }
        if final_score is not None:
            metrics.update({"eval_rows": len(eval_set), "eval_metric": final_score, "teacher_eval_metric": teacher_score,
                            "retention": final_score / teacher_score if teacher_score else None})
        say("write", f"writing the student to {out}")
        art = _write_student(final, teacher, out, config, metrics, force, t0,
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

    from compress.teachers.load import model_feed

    class Trainable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.student = student
            self.proj = projections

        def forward(self, **inputs):
            return self.student(**model_feed(self.student, inputs))

    return Trainable()


def _write_student(model, teacher, out: Path, config: DistillConfig, metrics: dict[str, Any], force: bool,
                   t0: float, tokenizer=None) -> Artifact:
    from compress.teachers.load import load_teacher

    with staged_dir(out, force) as tmp:
        save_checkpoint(model, tokenizer or teacher.tokenizer, teacher, tmp)
        size = sum(f.stat().st_size for f in tmp.glob("*.safetensors"))
        metrics["size_bytes"] = size
        metrics["teacher_size_bytes"] = sum(teacher.path.joinpath(w).stat().st_size for w in teacher.info.weights)
        student = load_teacher(tmp, teacher.task)
        manifest = student.manifest()
        manifest.source = teacher.source()
        manifest.versions = library_versions("accelerate")
        DISTILL.seal(DISTILL.record(manifest, config, input_digest=teacher.sha256, metrics=metrics), tmp, t0)
        write_manifest(tmp, manifest)
    art = load_artifact(out)
    log.info("wrote %s (%s parameters, %.1f MB)", out, f"{metrics['student_parameters']:,}", metrics["size_bytes"] / 1e6)
    return art
