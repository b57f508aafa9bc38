"""What the text and the image fine-tunes share: the result, the training loop on the run directory, what the lineage
records (the run, the written teacher, the data read), the labels of the training data, and LoRA adapters wrapped
with a one-line error."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.artifact import Artifact
from compress.errors import ConfigError, DataError
from compress.stages.finetune.config import FinetuneConfig, Mode


@dataclass
class FinetuneResult:
    """What ``finetune`` returns: the written artifact and the metrics its lineage records."""

    artifact: Artifact
    metrics: dict[str, Any]


def train_loop(model, trainable, data, config: FinetuneConfig, run: Path, progress, **kwargs):
    """The training loop (:func:`compress.stages.training.run_loop`) on ``run`` with ``config``'s settings, which a
    resumed run must share."""
    from compress.stages.training import LoopSettings, run_loop

    t, e = config.training, config.evaluation
    settings = LoopSettings(epochs=t.epochs, max_steps=t.max_steps, batch_size=t.batch_size, weight_decay=t.weight_decay,
                            warmup_ratio=t.warmup_ratio, eval_every=e.every, save_every=e.save_every,
                            patience=e.patience, seed=config.seed)
    return run_loop(model, trainable, data, settings, run, progress, run_config=config.model_dump(mode="json"),
                    **kwargs)


def run_record(loop, config: FinetuneConfig) -> dict[str, Any]:
    """The loop's record, and LoRA's settings when adapters trained."""
    out = loop.record()
    if config.mode is Mode.lora:
        out["lora"] = {"rank": config.lora.rank, "alpha": config.lora.alpha or 2 * config.lora.rank,
                       "targets": config.lora.targets or "all-linear"}
    return out


def teacher_record(output, staged: Path) -> dict[str, str]:
    """Where the fine-tuned teacher will be and its content hash (what load_teacher computes, the manifest excluded):
    every artifact made from it is judged against it (``compress.validation.local.reference_teacher``)."""
    from compress.artifact import digest_dir

    return {"path": str(Path(output.path).resolve()), "sha256": digest_dir(staged)}


def write_checkpoint(output, model, tokenizer, base_teacher, task, metrics: dict[str, Any], *,
                     travel: tuple[str, ...] = ()) -> Artifact:
    """Save a fine-tuned Hugging Face ``model`` and its ``tokenizer`` as the artifact ``output`` stages: a plain
    checkpoint every later step reads as a teacher of ``task``, its lineage the base's, ``metrics`` in its step.
    ``travel``: files of the base copied beside them where saving wrote none (a causal LM's sentencepiece model,
    its generation defaults)."""
    import shutil

    from compress.teachers.load import load_teacher

    with output.writing() as o:
        model.save_pretrained(str(o.dir), safe_serialization=True)
        tokenizer.save_pretrained(str(o.dir))
        for name in travel:
            if (base_teacher.path / name).is_file() and not (o.dir / name).exists():
                shutil.copy(base_teacher.path / name, o.dir / name)
        metrics["teacher"] = teacher_record(output, o.dir)
        manifest = load_teacher(o.dir, task).manifest()
        manifest.source, prior = base_teacher.lineage()
        o.describe(manifest, input_digest=base_teacher.sha256, lineage=prior, metrics=metrics)
    return output.artifact


def data_record(train, eval_data) -> dict[str, str | None]:
    """The data a fine-tune read, as the lineage records it (a recipe rebuilt from the artifact reads it again)."""
    return {"train": str(Path(train).resolve()), "eval": str(Path(eval_data).resolve()) if eval_data else None}


def label_names(train: Path, words: bool) -> list[str]:
    """The data's labels: tags of a word file (O first, then by type, B- before I-), or a table's label column (names
    sorted, or integer ids 0..k-1)."""
    if words:
        from compress.data.words import read_tags

        found = {t for sent in read_tags(train) for t in sent}
        return sorted(found, key=lambda t: (t != "O", t[2:], t[:2]))
    from compress.data.readers import open_table
    from compress.data.tables import LABEL_COLUMNS

    columns, rows = open_table(train, None, str(train))
    col = next((c for c in LABEL_COLUMNS if c in columns), None)
    if col is None:
        raise DataError(f"{train}: no label column (columns: {', '.join(columns)})",
                        hint=f"name it one of {', '.join(LABEL_COLUMNS)}, or pass labelled data")
    values = sorted({str(r[col]).strip() for _, _, r in rows([col]) if str(r.get(col) or "").strip()})
    if values and all(v.isdigit() for v in values):
        return [str(i) for i in range(max(int(v) for v in values) + 1)]
    return values


def check_labels(names: list[str], words: bool, train) -> None:
    """A classifier's labels: at least two, and for words an entity tag scheme (``O``, ``B-PER``, ...)."""
    if len(names) < 2:
        raise DataError(f"{train}: one label ({', '.join(names) or 'none'}): a classifier needs at least two",
                        hint="train on data with two or more labels")
    if words:
        from compress.tasks.entities import check_scheme

        check_scheme(names)


def lora_targets(config: FinetuneConfig, default: str | list[str] | None) -> str | list[str] | None:
    """The modules LoRA wraps, as peft takes them: ``--lora-targets`` (``all-linear`` as peft's keyword), else
    ``default`` (None: peft's own choice for the model type)."""
    targets = config.lora.targets
    if not targets:
        return default
    return "all-linear" if targets == ["all-linear"] else targets


def wrap_lora(model, config: FinetuneConfig, lora):
    """``model`` with peft's adapters as ``lora`` says; what peft cannot wrap is a one-line error."""
    import torch
    from peft import get_peft_model

    from compress.errors import first_line

    head = set(getattr(lora, "modules_to_save", None) or [])
    linear = sorted(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                    and n.rsplit(".", 1)[-1] not in head and n not in head)
    if not config.lora.targets and not linear:
        raise ConfigError(f"--lora-rank {config.lora.rank}: {type(model).__name__} has no linear layer besides its "
                          "head (its layers are convolutions): LoRA would adapt nothing",
                          hint="leave --lora-rank out (every weight trains), or --freeze N to train the last blocks")
    try:
        return get_peft_model(model, lora)
    except (ValueError, TypeError) as e:
        what = ", ".join(config.lora.targets or ["all-linear"])
        names = sorted({n.rsplit(".", 1)[-1] for n in linear})
        raise ConfigError(f"--lora-targets {what}: peft cannot wrap them ({first_line(e, 160)})",
                          hint="name linear layers of this model with --lora-targets (it has: "
                          f"{', '.join(names[:6]) or 'none'})") from None
