"""The fine-tuning loop, for any base: AdamW with linear warm-up and decay, evaluation every ``eval_every`` steps with
the best weights kept and ``patience`` for early stopping, checkpoints in the run directory (Ctrl-C saves one; a
resumed run continues from it), on a CUDA GPU when there is one, else the CPU, and under ``accelerate launch`` on
several processes: each takes its share of every batch, gradients are averaged (DDP), every process evaluates (so
all stop together) and the main one writes.

What differs between a text and an image base comes in as three functions: the batch's loss, the eval metric, and
the data's ``collate``/``lengths`` (length-grouped batches for text; every image is one length).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compress.errors import ConfigError
from compress.progress import Progress
from compress.stages.finetune.config import FinetuneConfig, Mode

log = logging.getLogger("compress.stages.finetune")


def refuse_unfinished(run: Path, resume: bool, force: bool) -> None:
    """Refuse to start afresh over an interrupted run in ``run`` unless ``--force`` (or ``--resume`` continues it);
    callers with slow work before the loop starts ask this first."""
    if not resume and not force and (run / "checkpoint.pt").is_file():
        raise ConfigError(f"{run} holds an unfinished run", hint="add --resume to continue it, or --force")


class TrainLoop:
    """Optimiser, schedule, data order and evaluation; the run directory holds the checkpoint a resumed run reads.

    ``loss(model, batch)``: the batch's training loss; ``evaluate(model)``: the eval metric, or None without eval
    data; higher is better unless ``higher_is_better`` is False (an error such as a regressor's MAE: the best
    checkpoint is then the lowest); ``frozen_modules`` stay in eval mode while the rest trains (BatchNorm statistics and
    dropout of frozen layers as pretrained)."""

    def __init__(self, model, trainable, data, config: FinetuneConfig, run: Path, progress: Progress | None, *,
                 lr: float, loss: Callable[[Any, dict], Any], evaluate: Callable[[Any], float] | None,
                 metric_name: str, frozen_modules: list[Any] = (), higher_is_better: bool = True) -> None:
        self.model, self.trainable, self.data, self.config = model, trainable, data, config
        self.run, self.progress, self.lr, self.loss, self.evaluate_fn = run, progress, lr, loss, evaluate
        self.metric_name, self.frozen_modules = metric_name, list(frozen_modules)
        self.higher_is_better = higher_is_better
        from compress.stages.common import make_accelerator

        self.accelerator = make_accelerator("no")
        self.is_main, self.processes = self.accelerator.is_main_process, self.accelerator.num_processes
        self.device = self.accelerator.device
        self.model.to(self.device)
        self.ddp = self.accelerator.prepare(self.model) if self.processes > 1 else self.model
        per_epoch = max(1, -(-len(data) // config.training.batch_size))
        self.total = config.training.max_steps or max(1, int(round(config.training.epochs * per_epoch)))
        self.per_epoch = per_epoch
        self.eval_every = config.evaluation.every or max(1, self.total // 10)
        self.state: dict[str, Any] = {"step": 0, "best": None, "best_step": None, "bad_evals": 0, "history": [],
                                      "train_seconds": 0.0, "stopped": None}

    def start(self, resume: bool, force: bool) -> None:
        import torch
        from transformers import get_linear_schedule_with_warmup

        self.opt = torch.optim.AdamW(self.trainable, lr=self.lr, weight_decay=self.config.training.weight_decay)
        self.sched = get_linear_schedule_with_warmup(self.opt, int(self.config.training.warmup_ratio * self.total),
                                                     self.total)
        ckpt, run_config = self.run / "checkpoint.pt", self.config.model_dump(mode="json")
        if resume:
            if not ckpt.is_file():
                raise ConfigError(f"--resume: no run to resume in {self.run}", hint="start without --resume")
            old = json.loads((self.run / "run_config.json").read_text())
            if old != run_config:
                changed = sorted(k for k in set(old) | set(run_config) if old.get(k) != run_config.get(k))
                raise ConfigError(f"--resume: the settings differ from the saved run's ({', '.join(changed)})",
                                  hint="resume with the same options, or start again with --force")
            saved = torch.load(ckpt, map_location="cpu", weights_only=True)
            self._load_trainable(saved["model"])
            self.opt.load_state_dict(saved["optimizer"])
            self.sched.load_state_dict(saved["scheduler"])
            self.state = json.loads(saved["state"])
            log.info("resuming at step %d of %d", self.state["step"], self.total)
            return
        refuse_unfinished(self.run, resume, force)
        self.accelerator.wait_for_everyone()  # every process has looked before the main one clears it
        if self.is_main:
            shutil.rmtree(self.run, ignore_errors=True)
            self.run.mkdir(parents=True)
            (self.run / "run_config.json").write_text(json.dumps(run_config, indent=1))
        self.accelerator.wait_for_everyone()

    def _trainable_state(self) -> dict:
        """What training changes (what a checkpoint and the best weights keep), on the CPU: the trained parameters and
        every buffer (a CNN's BatchNorm statistics move with its weights; the best weights without them are not the
        model that scored best)."""
        state = {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        state.update({f"buffer:{n}": b.detach().cpu().clone() for n, b in self.model.named_buffers()})
        return state

    def _load_trainable(self, state: dict) -> None:
        import torch

        with torch.no_grad():
            for n, p in self.model.named_parameters():
                if p.requires_grad:
                    p.copy_(state[n].to(p.device))
            for n, b in self.model.named_buffers():
                if f"buffer:{n}" in state:
                    b.copy_(state[f"buffer:{n}"].to(b.device))

    def _train_mode(self) -> None:
        self.ddp.train()
        for module in self.frozen_modules:
            module.eval()

    def _order(self, epoch: int) -> list[int]:
        from compress.stages.training import length_grouped_order

        return length_grouped_order(self.data.lengths, self.config.training.batch_size, self.config.seed + epoch)

    def train(self) -> None:
        import torch

        from compress.interrupt import StopFlag
        from compress.stages.distill.config import Interrupted

        state, bs = self.state, self.config.training.batch_size
        torch.manual_seed(self.config.seed + state["step"])
        self._train_mode()
        with StopFlag() as flag:
            while state["step"] < self.total and not state["stopped"]:
                epoch, in_epoch = divmod(state["step"], self.per_epoch)
                idx = self._share(self._order(epoch)[in_epoch * bs:(in_epoch + 1) * bs])
                t0 = time.perf_counter()
                batch = {k: v.to(self.device) for k, v in self.data.collate(idx).items() if k != "index"}
                loss = self.loss(self.ddp, batch)
                self.accelerator.backward(loss)
                torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
                self.opt.step()
                self.sched.step()
                self.opt.zero_grad(set_to_none=True)
                state["step"] += 1
                state["train_seconds"] += time.perf_counter() - t0
                step = state["step"]
                evaluated = self._evaluate() if self.evaluate_fn and (step % self.eval_every == 0
                                                                       or step == self.total) else None
                if self.progress and self.is_main:
                    self.progress({"phase": "train", "step": step, "total": self.total, "loss": float(loss.detach()),
                                   "eval": evaluated, "best": state["best"], "metric": self.metric_name})
                save_every = self.config.evaluation.save_every or self.eval_every
                if step % save_every == 0 or step == self.total or flag.requested or state["stopped"]:
                    self._save()
                if flag.requested:
                    raise Interrupted(f"interrupted at step {step}/{self.total}; the run is saved in {self.run}",
                                      hint="rerun the same command with --resume to continue")

    def _share(self, idx: list[int]) -> list[int]:
        """This process's rows of a batch (every process gets at least one: DDP waits for all of them)."""
        if self.processes == 1:
            return idx
        rank = self.accelerator.process_index
        idx = list(idx)
        while len(idx) < self.processes:
            idx = idx + idx
        return idx[rank::self.processes]

    def _evaluate(self) -> float:
        import torch

        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        model.eval()
        value = float(self.evaluate_fn(model))
        self._train_mode()
        state = self.state
        state["history"].append({"step": state["step"], "metric": value})
        if state["best"] is None or (value > state["best"] if self.higher_is_better else value < state["best"]):
            state["best"], state["best_step"], state["bad_evals"] = value, state["step"], 0
            if self.is_main:
                torch.save(self._trainable_state(), self.run / "best.pt")
        else:
            state["bad_evals"] += 1
            if self.config.evaluation.patience and state["bad_evals"] >= self.config.evaluation.patience:
                state["stopped"] = (f"early stop at step {state['step']}: no improvement in "
                                    f"{self.config.evaluation.patience} evaluations")
        return value

    def _save(self) -> None:
        import torch

        if not self.is_main:
            return
        tmp = self.run / "checkpoint.pt.tmp"
        torch.save({"model": self._trainable_state(), "optimizer": self.opt.state_dict(),
                    "scheduler": self.sched.state_dict(), "state": json.dumps(self.state)}, tmp)
        tmp.replace(self.run / "checkpoint.pt")

    def finish(self):
        """The best weights (the last without eval data), LoRA merged: a plain model on the CPU, in eval mode."""
        import torch

        self.accelerator.wait_for_everyone()
        best = self.run / "best.pt"
        if best.is_file():
            self._load_trainable(torch.load(best, map_location="cpu", weights_only=True))
        model = self.model.merge_and_unload() if hasattr(self.model, "merge_and_unload") else self.model
        return model.cpu().eval()

    def follow(self, output):
        """On a process other than the main one: wait until the main one has written the artifact, then read it
        (``(artifact, its finetune metrics)``)."""
        from compress.artifact import load_artifact

        self.accelerator.wait_for_everyone()
        art = load_artifact(output.path, verify=False)
        return art, art.manifest.steps[-1].metrics

    def written(self) -> None:
        """On the main process, once the artifact is written: the others may read it."""
        self.accelerator.wait_for_everyone()

    def record(self) -> dict[str, Any]:
        import resource

        s = self.state
        params = sum(p.numel() for p in self.model.parameters())
        trained = sum(p.numel() for p in self.trainable)
        out = {"steps": s["step"], "total_steps": self.total, "train_seconds": round(s["train_seconds"], 1),
               "steps_per_second": round(s["step"] / max(s["train_seconds"], 1e-9), 2), "lr": self.lr,
               "parameters": params, "trainable_parameters": trained, "trainable_share": trained / params,
               "device": str(self.device), "processes": self.processes, "metric": self.metric_name if self.evaluate_fn else None,
               "higher_is_better": self.higher_is_better,
               "eval_metric": s["best"], "history": s["history"], "stopped": s["stopped"] or "completed",
               "chosen": f"best (step {s['best_step']})" if s["best_step"] else "last",
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        if self.config.mode is Mode.lora:
            out["lora"] = {"rank": self.config.lora.rank, "alpha": self.config.lora.alpha or 2 * self.config.lora.rank,
                           "targets": self.config.lora.targets or "all-linear"}
        return out
