"""``edgecompress finetune``: a pretrained base (a Hugging Face text encoder such as all-MiniLM-L6-v2) gets a new head
for the task and the labels in the data and trains: the whole model, the first N layers frozen, or low-rank adapters
(peft LoRA) merged into the weights before the checkpoint is written, so every later step sees a plain checkpoint.

The written artifact is the teacher the rest of the chain starts from; its lineage starts at the base (``source``
names it and its digest). Training: AdamW, linear warm-up and decay, evaluation every ``eval_every`` steps with the
best weights kept and ``patience`` for early stopping, length-grouped batches, checkpoints in the run directory (Ctrl-C
saves one; ``resume=True`` continues), on a CUDA GPU when there is one, else the CPU.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compress.artifact import Artifact, Task
from compress.errors import ConfigError, DataError
from compress.progress import Progress
from compress.stages.finetune.config import FINETUNE, FinetuneConfig, Mode

log = logging.getLogger("compress.stages.finetune")

__all__ = ["FinetuneResult", "finetune"]


@dataclass
class FinetuneResult:
    artifact: Artifact
    metrics: dict[str, Any]


def finetune(base: Path | str, train: Path | str, out: Path | str, config: FinetuneConfig | None = None, *,
             eval_data: Path | str | None = None, retain_data: Path | str | None = None,
             run_dir: Path | str | None = None, resume: bool = False, force: bool = False,
             progress: Progress | None = None) -> FinetuneResult:
    """Fine-tune ``base`` on ``train`` for ``config.task`` and write the merged checkpoint to ``out``.

    ``retain_data``: texts of the base's own domain; how much of the base's embedding behaviour the fine-tune kept
    on them is measured (:func:`forgetting`) and recorded."""
    from compress.stages.distill.run import default_run_dir
    from compress.teachers.load import load_teacher

    config = config or FinetuneConfig()
    output = FINETUNE.output(out, config, force=force)
    base = Path(base)
    _check_base(base)
    words = config.task is Task.token_classification
    names = config.labels or _label_names(Path(train), words)
    _check_labels(names, words, train)
    base_teacher = load_teacher(base, allow_pickle=config.allow_pickle)  # the lineage's source; one-line load errors
    train_set, eval_set, eval_labels = _data(base_teacher.tokenizer, names, train, eval_data, config, words)
    retain = _retain_texts(retain_data) if retain_data else None  # read now: a bad file fails before training
    model, trainable, frozen = _model(base, names, config, words)
    run = Path(run_dir) if run_dir else default_run_dir(output.path)
    loop = _Loop(model, trainable, train_set, eval_set, eval_labels, names if words else None, config, run, progress)
    loop.start(resume, force)
    loop.train()
    final = loop.finish()  # best weights, LoRA merged: a plain transformers model
    metrics = {**loop.record(), "mode": str(config.mode), "frozen_layers": frozen, "labels": names,
               "base": str(base), "train_rows": len(train_set), "eval_rows": len(eval_set) if eval_set else 0}
    if retain is not None:
        metrics["forgetting"] = forgetting(base_teacher.model.base_model, final.base_model, base_teacher.tokenizer,
                                           retain, config.max_length)
        metrics["forgetting"]["data"] = str(retain_data)
    with output.writing() as o:
        final.save_pretrained(str(o.dir), safe_serialization=True)
        base_teacher.tokenizer.save_pretrained(str(o.dir))
        written = load_teacher(o.dir, config.task)
        manifest = written.manifest()
        manifest.source = base_teacher.source()
        o.describe(manifest, input_digest=base_teacher.sha256, metrics=metrics)
    shutil.rmtree(run, ignore_errors=True)
    log.info("wrote %s (%s of %s parameters trained)", output.path, f"{metrics['trainable_parameters']:,}",
             f"{metrics['parameters']:,}")
    return FinetuneResult(output.artifact, metrics)


# --- inputs --------------------------------------------------------------------------------------------------------

def _check_base(base: Path) -> None:
    if not (base / "config.json").is_file():
        raise ConfigError(f"{base}: not a Hugging Face checkpoint directory (no config.json)",
                          hint="pass the pretrained base's directory (config.json, weights, tokenizer)")
    if not any(base.glob("*.safetensors")) and not any(base.glob("pytorch_model*.bin")):
        raise ConfigError(f"{base}: the base has no weights (no model.safetensors)",
                          hint="a base is a pretrained checkpoint: download or save its weights beside config.json")


def _label_names(train: Path, words: bool) -> list[str]:
    """The data's labels: tags of a word file (O first, then by type, B- before I-), or a table's label column (names
    sorted, or integer ids 0..k-1)."""
    if words:
        from compress.data.words import read_tags

        found = {t for sent in read_tags(train) for t in sent}
        return sorted(found, key=lambda t: (t != "O", t[2:], t[:2]))
    from compress.data.readers import _open_table
    from compress.data.tables import LABEL_COLUMNS

    columns, rows = _open_table(train, None, str(train))
    col = next((c for c in LABEL_COLUMNS if c in columns), None)
    if col is None:
        raise DataError(f"{train}: no label column (columns: {', '.join(columns)})",
                        hint=f"name it one of {', '.join(LABEL_COLUMNS)}, or pass labelled data")
    values = sorted({str(r[col]).strip() for _, _, r in rows([col]) if str(r.get(col) or "").strip()})
    if values and all(v.isdigit() for v in values):
        return [str(i) for i in range(max(int(v) for v in values) + 1)]
    return values


def _check_labels(names: list[str], words: bool, train) -> None:
    if len(names) < 2:
        raise DataError(f"{train}: one label ({', '.join(names) or 'none'}): a classifier needs at least two",
                        hint="train on data with two or more labels")
    if words:
        from compress.validation.entities import check_scheme

        check_scheme(names)


def _data(tokenizer, names, train, eval_data, config: FinetuneConfig, words: bool):
    """Tokenised training rows, eval rows and the eval labels (ids, or each sentence's tag ids)."""
    from compress.data.tables import load_dataset
    from compress.data.words import load_word_dataset
    from compress.stages.distill.losses import _TransferSet, _encode, _encode_words

    label2id = {n: i for i, n in enumerate(names)}

    def read(path):
        if words:
            return load_word_dataset(path, label2id=label2id, require_labels=True)
        return load_dataset(path, label2id=label2id, num_labels=len(names), require_labels=True)

    def rows(ds):
        pad = tokenizer.pad_token_id or 0
        if words:
            enc, labels, word_ids = _encode_words(tokenizer, ds.texts, ds.labels, config.max_length)
            return _TransferSet(enc, labels, pad, word_ids)
        return _TransferSet(_encode(tokenizer, ds.texts, config.max_length, ds.pairs), list(ds.labels), pad)

    train_set = rows(read(train))
    if eval_data is None:
        return train_set, None, None
    ev = read(eval_data)
    return train_set, rows(ev), (ev.labels if words else np.asarray(ev.labels))


def _model(base: Path, names: list[str], config: FinetuneConfig, words: bool):
    """The base with a new head (seeded), adapted: ``(model to train, its trainable parameters, frozen layers)``."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    torch.manual_seed(config.seed)
    cls = AutoModelForTokenClassification if words else AutoModelForSequenceClassification
    model = cls.from_pretrained(str(base), num_labels=len(names), id2label=dict(enumerate(names)),
                                label2id={n: i for i, n in enumerate(names)}, use_safetensors=not config.allow_pickle
                                or None)
    frozen = 0
    if config.mode is Mode.frozen:
        from compress.stages.distill.student import layer_list

        _, layers = layer_list(model)
        if config.freeze > len(layers):
            raise ConfigError(f"--freeze {config.freeze}: the base has {len(layers)} layers",
                              hint=f"freeze at most {len(layers)}")
        embeddings = getattr(model.base_model, "embeddings", None)
        for module in [*(m for m in [embeddings] if m is not None), *layers[:config.freeze]]:
            module.requires_grad_(False)
        frozen = config.freeze
    elif config.mode is Mode.lora:
        model = _lora(model, config, words)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return model, trainable, frozen


def _lora(model, config: FinetuneConfig, words: bool):
    from compress._optional import require

    require("peft", "--lora-rank (LoRA adapters)")
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(task_type=TaskType.TOKEN_CLS if words else TaskType.SEQ_CLS, r=config.lora_rank,
                      lora_alpha=config.lora_alpha or 2 * config.lora_rank, lora_dropout=config.lora_dropout,
                      target_modules=config.lora_targets or "all-linear")
    try:
        return get_peft_model(model, lora)
    except (ValueError, TypeError) as e:
        what = ", ".join(config.lora_targets or ["all-linear"])
        raise ConfigError(f"--lora-targets {what}: peft cannot wrap them ({str(e).splitlines()[0][:160]})",
                          hint="name linear layers of the encoder, e.g. --lora-targets query,value") from None


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

    from compress.stages.distill.losses import pool_hidden
    from compress.validation.metrics import neighbour_agreement, row_cosines

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


# --- the loop ------------------------------------------------------------------------------------------------------

class _Loop:
    """Optimiser, schedule, data order and evaluation; the run directory holds the checkpoint a resumed run reads."""

    def __init__(self, model, trainable, data, eval_set, eval_labels, tags, config: FinetuneConfig, run: Path,
                 progress: Progress | None) -> None:
        import torch

        self.model, self.trainable, self.data, self.eval_set = model, trainable, data, eval_set
        self.eval_labels, self.tags, self.config, self.run, self.progress = eval_labels, tags, config, run, progress
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        per_epoch = max(1, -(-len(data) // config.batch_size))
        self.total = config.max_steps or max(1, int(round(config.epochs * per_epoch)))
        self.per_epoch = per_epoch
        self.eval_every = config.eval_every or max(1, self.total // 10)
        self.state: dict[str, Any] = {"step": 0, "best": None, "best_step": None, "bad_evals": 0, "history": [],
                                      "train_seconds": 0.0, "stopped": None}

    def start(self, resume: bool, force: bool) -> None:
        import torch
        from transformers import get_linear_schedule_with_warmup

        self.opt = torch.optim.AdamW(self.trainable, lr=self.config.peak_lr, weight_decay=self.config.weight_decay)
        self.sched = get_linear_schedule_with_warmup(self.opt, int(self.config.warmup_ratio * self.total), self.total)
        ckpt, run_config = self.run / "checkpoint.pt", self.config.model_dump(mode="json")
        if resume:
            if not ckpt.is_file():
                raise ConfigError(f"--resume: no run to resume in {self.run}", hint="start without --resume")
            old = json.loads((self.run / "run_config.json").read_text())
            if old != run_config:
                changed = sorted(k for k in set(old) | set(run_config) if old.get(k) != run_config.get(k))
                raise ConfigError(f"--resume: the settings differ from the saved run's ({', '.join(changed)})",
                                  hint="resume with the same options, or start again with --force")
            saved = torch.load(ckpt, map_location=self.device, weights_only=True)
            self._load_trainable(saved["model"])
            self.opt.load_state_dict(saved["optimizer"])
            self.sched.load_state_dict(saved["scheduler"])
            self.state = json.loads(saved["state"])
            log.info("resuming at step %d of %d", self.state["step"], self.total)
            return
        if self.run.exists() and (self.run / "checkpoint.pt").is_file() and not force:
            raise ConfigError(f"{self.run} holds an unfinished run", hint="add --resume to continue it, or --force")
        shutil.rmtree(self.run, ignore_errors=True)
        self.run.mkdir(parents=True)
        (self.run / "run_config.json").write_text(json.dumps(run_config, indent=1))

    def _trainable_state(self) -> dict:
        """The trained parameters (what a checkpoint and the best weights keep), on the CPU."""
        return {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def _load_trainable(self, state: dict) -> None:
        import torch

        with torch.no_grad():
            for n, p in self.model.named_parameters():
                if p.requires_grad:
                    p.copy_(state[n].to(p.device))

    def _order(self, epoch: int) -> list[int]:
        from compress.stages.distill.losses import length_grouped_order

        return length_grouped_order(self.data.lengths, self.config.batch_size, self.config.seed + epoch)

    def train(self) -> None:
        import torch

        from compress.interrupt import StopFlag
        from compress.stages.distill.config import Interrupted

        state, bs = self.state, self.config.batch_size
        torch.manual_seed(self.config.seed + state["step"])
        self.model.train()
        with StopFlag() as flag:
            while state["step"] < self.total and not state["stopped"]:
                epoch, in_epoch = divmod(state["step"], self.per_epoch)
                idx = self._order(epoch)[in_epoch * bs:(in_epoch + 1) * bs]
                t0 = time.perf_counter()
                batch = {k: v.to(self.device) for k, v in self.data.collate(idx).items() if k != "index"}
                loss = self.model(**batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
                self.opt.step()
                self.sched.step()
                self.opt.zero_grad(set_to_none=True)
                state["step"] += 1
                state["train_seconds"] += time.perf_counter() - t0
                step = state["step"]
                evaluated = self._evaluate() if self.eval_set and (step % self.eval_every == 0 or step == self.total) \
                    else None
                if self.progress:
                    self.progress({"phase": "train", "step": step, "total": self.total, "loss": float(loss.detach()),
                                   "eval": evaluated, "best": state["best"], "metric": self.metric_name})
                save_every = self.config.save_every or self.eval_every
                if step % save_every == 0 or step == self.total or flag.requested or state["stopped"]:
                    self._save()
                if flag.requested:
                    raise Interrupted(f"interrupted at step {step}/{self.total}; the run is saved in {self.run}",
                                      hint="rerun the same command with --resume to continue")

    @property
    def metric_name(self) -> str:
        return "entity_f1" if self.tags else "accuracy"

    def _evaluate(self) -> float:
        from compress.stages.distill.config import Metric
        from compress.stages.distill.losses import _Plan, _predict, score

        plan = _Plan(classification=True, pooling=None, normalize=False, mapping=[], hidden=False, attention=False,
                     value_relation=False, relation_heads=0, tags=self.tags)
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        value = score(_predict(model, self.eval_set, plan, self.device, 64), None, self.eval_labels, Metric.accuracy,
                      self.tags)
        state = self.state
        state["history"].append({"step": state["step"], "metric": value})
        if state["best"] is None or value > state["best"]:
            state["best"], state["best_step"], state["bad_evals"] = value, state["step"], 0
            import torch

            torch.save(self._trainable_state(), self.run / "best.pt")
        else:
            state["bad_evals"] += 1
            if self.config.patience and state["bad_evals"] >= self.config.patience:
                state["stopped"] = f"early stop at step {state['step']}: no improvement in {self.config.patience} " \
                                   "evaluations"
        return value

    def _save(self) -> None:
        import torch

        tmp = self.run / "checkpoint.pt.tmp"
        torch.save({"model": self._trainable_state(), "optimizer": self.opt.state_dict(),
                    "scheduler": self.sched.state_dict(), "state": json.dumps(self.state)}, tmp)
        tmp.replace(self.run / "checkpoint.pt")

    def finish(self):
        """The best weights (the last without eval data), LoRA merged: a plain transformers model on the CPU."""
        import torch

        best = self.run / "best.pt"
        if best.is_file():
            self._load_trainable(torch.load(best, map_location=self.device, weights_only=True))
        model = self.model.merge_and_unload() if hasattr(self.model, "merge_and_unload") else self.model
        return model.cpu().eval()

    def record(self) -> dict[str, Any]:
        import resource

        s = self.state
        params = sum(p.numel() for p in self.model.parameters())
        trained = sum(p.numel() for p in self.trainable)
        out = {"steps": s["step"], "total_steps": self.total, "train_seconds": round(s["train_seconds"], 1),
               "steps_per_second": round(s["step"] / max(s["train_seconds"], 1e-9), 2), "lr": self.config.peak_lr,
               "parameters": params, "trainable_parameters": trained, "trainable_share": trained / params,
               "device": str(self.device), "metric": self.metric_name if self.eval_set else None,
               "eval_metric": s["best"], "history": s["history"], "stopped": s["stopped"] or "completed",
               "chosen": f"best (step {s['best_step']})" if s["best_step"] else "last",
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        if self.config.mode is Mode.lora:
            out["lora"] = {"rank": self.config.lora_rank, "alpha": self.config.lora_alpha or 2 * self.config.lora_rank,
                           "targets": self.config.lora_targets or "all-linear"}
        return out
