"""Recovery after pruning: a short distillation from the unpruned model (``compress.stages.distill``), for the text
encoders' path and the causal LMs' (:mod:`compress.stages.prune.lm.prune`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.stages.common import save_checkpoint
from compress.stages.prune.config import PruneConfig
from compress.stages.prune.sparsity import Sparsifier


def recover(model, tokenizer, teacher, source: Path, train, eval_data, config: PruneConfig,
             sparsifier: Sparsifier | None, scratch: Path, progress) -> tuple[Any, dict[str, Any]]:
    """Short distillation from the unpruned model; returns the recovered model and the distill metrics."""
    from compress.stages.distill import distill
    from compress.stages.distill.config import DistillConfig

    student_dir = scratch / "pruned"
    save_checkpoint(model, tokenizer, teacher, student_dir)
    dcfg = DistillConfig.from_flat(
        student=str(student_dir), max_steps=config.recovery.steps, lr=config.recovery.lr,
        batch_size=config.recovery.batch_size, max_length=config.max_length,
        # averaging: 8 snapshots over the second half (each also scored on the eval data)
        eval_every=max(config.recovery.steps // 16, 1) if config.recovery.average else config.recovery.steps,
        augment=config.recovery.augment, augment_join=config.recovery.augment_join,
        average=config.recovery.average, average_start=0.5,
        seed=config.seed, text_column=config.text_column, label_column=config.label_column,
        allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code,
    )
    kwargs: dict[str, Any] = {"on_step": sparsifier} if sparsifier is not None else {}
    if config.recovery.teacher_cache:
        kwargs["teacher_cache"] = config.recovery.teacher_cache
    result = distill(config.recovery.teacher or source, train, scratch / "recovered", dcfg, eval_data=eval_data,
                     run_dir=scratch / "run", force=True, progress=progress, **kwargs)
    recovered = type(model).from_pretrained(str(result.artifact.path), local_files_only=True, use_safetensors=True)
    recovered.eval()
    m = result.metrics
    keys = ("steps", "train_seconds", "teacher_cache_seconds", "transfer_rows", "eval_rows", "metric", "eval_metric",
            "teacher_eval_metric", "retention", "stopped", "chosen",
            "window", "transfer_windows", "eval_windows", "before", "after")  # the last: a causal LM's
    rec = {k: m[k] for k in keys if k in m}
    rec["teacher"] = str(Path(config.recovery.teacher or source).resolve())
    rec["loss"] = {"soft_weight": dcfg.loss.soft_weight, "hard_weight": dcfg.loss.hard_weight,
                   "temperature": dcfg.loss.temperature}
    if m.get("history"):
        rec["last_loss"] = {k: v for k, v in m["history"][-1].items() if k not in ("step", "metric")}
    return recovered, rec
