"""Distillation's training loop on Accelerate: optimiser and schedule, resumable checkpoints in the run directory,
evaluation with the best weights kept, weight averaging, and a stop at a step boundary on Ctrl-C/SIGTERM.

:func:`compress.stages.distill.distill` prepares the student, the data and the teacher's targets, runs a
:class:`Trainer` and writes the weights it chooses (:meth:`Trainer.final_weights`) as the student artifact.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compress.interrupt import StopFlag
from compress.progress import Progress
from compress.stages.distill.config import AVERAGE_FILE, RUN_STATE, DistillConfig, Interrupted
from compress.stages.distill.losses import distill_loss
from compress.stages.distill.student import layer_list
from compress.stages.training import OutputPlan, ValueTap, length_grouped_order, model_outputs, predict_rows, score

log = logging.getLogger("compress.stages.distill")  # the verb's logger


class Trainer:
    """One distillation run's training state and the phases that move it: prepare (or resume), train, choose.

    ``state`` is what the run directory's checkpoint keeps (step, epoch, best score, history, ...), so a resumed
    run continues where the interrupted one stopped, with the same data order and dropout masks.
    """

    def __init__(self, *, accelerator, run: Path, config: DistillConfig, plan: OutputPlan, teacher, student, data, sdata,
                 eval_set, s_eval_set, teacher_eval, eval_labels, metric, cache, cache_intermediate: bool,
                 total_steps: int, progress: Progress | None,
                 on_step: Callable[[Any, int, int], None] | None) -> None:
        self.accelerator, self.run, self.config, self.plan = accelerator, run, config, plan
        self.teacher, self.student, self.data, self.sdata = teacher, student, data, sdata
        self.eval_set, self.s_eval_set, self.teacher_eval, self.eval_labels = eval_set, s_eval_set, teacher_eval, eval_labels
        self.metric, self.cache, self.cache_intermediate = metric, cache, cache_intermediate
        self.total_steps, self.progress, self.on_step = total_steps, progress, on_step
        self.main = accelerator.is_main_process
        self.ckpt = run / "checkpoint"
        self.device = accelerator.device
        self.n_proc = accelerator.num_processes
        self.t_cfg = teacher.model.config
        self.state: dict[str, Any] = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best": None, "best_step": None,
                                      "bad_evals": 0, "history": [], "train_seconds": 0.0, "stopped": None}
        self.averaged = None
        self.last_loss: dict[str, float] = {}

    # --- model, optimiser, schedule --------------------------------------------------------------------
    def prepare(self, resume: bool) -> None:
        """The trainable module (student + projections), AdamW and the schedule; the checkpoint's state on resume."""
        import torch
        from transformers import get_scheduler

        config, plan, student, accelerator = self.config, self.plan, self.student, self.accelerator
        projections = None
        if plan.hidden and student.config.hidden_size != self.t_cfg.hidden_size:
            projections = torch.nn.ModuleList(
                torch.nn.Linear(student.config.hidden_size, self.t_cfg.hidden_size) for _ in plan.mapping
            )
        module = _trainable(student, projections)
        module.train()
        no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
        groups = [
            {"params": [p for n, p in module.named_parameters() if not any(k in n for k in no_decay)],
             "weight_decay": config.training.weight_decay},
            {"params": [p for n, p in module.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=config.training.lr)
        self.scheduler = get_scheduler(config.training.schedule.value, optimizer,
                                       num_warmup_steps=int(config.training.warmup_ratio * self.total_steps),
                                       num_training_steps=self.total_steps)
        self.module, self.optimizer = accelerator.prepare(module, optimizer)
        accelerator.register_for_checkpointing(self.scheduler)
        self.tap_s = ValueTap(layer_list(student)[1][-1]) if plan.value_relation else None
        self.tap_t = (ValueTap(layer_list(self.teacher.model)[1][-1])
                      if plan.value_relation and not self.cache_intermediate else None)
        # stochastic weight averaging: the running mean of the snapshots, kept beside the checkpoint
        if config.training.average:
            from torch.optim.swa_utils import AveragedModel

            self.averaged = AveragedModel(student)
        if resume and (self.ckpt / RUN_STATE).is_file():
            accelerator.load_state(str(self.ckpt))
            self.state = json.loads((self.ckpt / RUN_STATE).read_text())
            if self.averaged is not None and self.state.get("averaged"):
                from safetensors.torch import load_file

                self.averaged.module.load_state_dict(load_file(str(self.ckpt / AVERAGE_FILE)))
                self.averaged.n_averaged.fill_(self.state["averaged"])
            log.info("resumed %s at step %d/%d", self.run, self.state["step"], self.total_steps)

    def unwrap_student(self):
        return self.accelerator.unwrap_model(self.module).student

    def save_checkpoint(self) -> None:
        accelerator, run, state = self.accelerator, self.run, self.state
        accelerator.wait_for_everyone()
        tmp = run / "checkpoint.partial"
        if self.main:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if self.main:
            if self.averaged is not None and state.get("averaged"):
                from safetensors.torch import save_file

                save_file({k: v.detach().contiguous() for k, v in self.averaged.module.state_dict().items()},
                          str(tmp / AVERAGE_FILE))
            (tmp / RUN_STATE).write_text(json.dumps(state, indent=2) + "\n")
            old = run / "checkpoint.old"
            shutil.rmtree(old, ignore_errors=True)
            if self.ckpt.exists():
                os.replace(self.ckpt, old)
            os.replace(tmp, self.ckpt)
            shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    def evaluate(self) -> float | None:
        if self.eval_set is None:
            return None
        pred = predict_rows(self.unwrap_student(), self.s_eval_set, self.plan, self.device, 64)
        return score(pred, self.teacher_eval, self.eval_labels, self.metric, self.plan.tags)

    def save_best(self) -> None:
        if self.main:
            best = self.run / "best"
            tmp = self.run / "best.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            self.unwrap_student().save_pretrained(str(tmp), safe_serialization=True)
            shutil.rmtree(best, ignore_errors=True)
            os.replace(tmp, best)
        self.accelerator.wait_for_everyone()

    def stop_requested(self, flag: StopFlag) -> bool:
        if self.n_proc == 1:
            return flag.requested
        import torch

        t = torch.tensor([1.0 if flag.requested else 0.0], device=self.device)
        return bool(self.accelerator.reduce(t, reduction="sum").item() > 0)

    # --- the loop ----------------------------------------------------------------------------------------
    def train(self) -> None:
        """Train to ``total_steps`` (or an early stop); on Ctrl-C/SIGTERM checkpoint and raise :class:`Interrupted`."""
        import torch

        config, accelerator, state = self.config, self.accelerator, self.state
        train_start = time.perf_counter() - state["train_seconds"]
        with StopFlag() as flag:
            try:
                while state["step"] < self.total_steps and state["stopped"] is None:
                    epoch = state["epoch"]
                    order = length_grouped_order(self.sdata.lengths, config.training.batch_size * self.n_proc,
                                                 config.seed + epoch)
                    # Own generator: creating a DataLoader iterator draws a base seed from the global torch RNG
                    # otherwise, and a resumed run creates one more iterator (skip_first_batches) than an
                    # uninterrupted one, which would shift every later dropout mask.
                    loader = torch.utils.data.DataLoader(order, batch_size=config.training.batch_size,
                                                         collate_fn=self.sdata.collate,
                                                         generator=torch.Generator().manual_seed(config.seed + epoch))
                    loader = accelerator.prepare_data_loader(loader, device_placement=True)
                    skip = state["batch_in_epoch"]
                    it = accelerator.skip_first_batches(loader, skip) if skip else loader
                    batch_no = skip
                    for batch in it:
                        self._batch(batch)
                        batch_no += 1
                        if not accelerator.sync_gradients:
                            continue
                        if self._after_step(epoch, batch_no, train_start, flag):
                            break
                    else:
                        state["epoch"] += 1
                        state["batch_in_epoch"] = 0
                        continue
                    if state["step"] >= self.total_steps or state["stopped"]:
                        break
            finally:
                for tap in (self.tap_s, self.tap_t):
                    if tap:
                        tap.remove()

    def _teacher_outputs(self, batch) -> dict[str, Any]:
        import torch

        plan = self.plan
        if self.cache is None:
            return {}
        if self.cache_intermediate or not plan.intermediate:
            return self.cache.targets(batch, self.data, plan, self.t_cfg, self.device)
        with torch.inference_mode():
            online = model_outputs(self.teacher.model, batch, plan, self.tap_t)
        t_out = self.cache.targets(batch, self.data, plan, self.t_cfg, self.device)
        if plan.hidden:
            t_out["hidden"] = [online["hidden"][t + 1].clone() for t in plan.mapping]
        if plan.attention:
            t_out["attn"] = [online["attn"][t].clone() for t in plan.mapping]
        if plan.value_relation:
            t_out["vr"] = online["vr"].clone()
        return t_out

    def _batch(self, batch) -> None:
        """One forward/backward pass (an optimizer step when the gradients are accumulated)."""
        import torch

        accelerator, module = self.accelerator, self.module
        with accelerator.accumulate(module):
            s_out = model_outputs(module, batch, self.plan, self.tap_s)
            t_out = self._teacher_outputs(batch)
            proj = accelerator.unwrap_model(module).proj
            loss, parts = distill_loss(s_out, t_out, batch, self.plan, self.config, proj)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(module.parameters(), self.config.training.max_grad_norm)
            self.optimizer.step()
            if accelerator.sync_gradients:
                self.scheduler.step()
                if self.on_step is not None:
                    with torch.no_grad():
                        self.on_step(self.unwrap_student(), self.state["step"] + 1, self.total_steps)
            self.optimizer.zero_grad()
        self.last_loss = {"loss": float(loss.detach()), **parts}

    def _after_step(self, epoch: int, batch_no: int, train_start: float, flag: StopFlag) -> bool:
        """Count the step; snapshot, evaluate, report, checkpoint; True when training ends here."""
        config, state, total_steps = self.config, self.state, self.total_steps
        state["step"] += 1
        state["batch_in_epoch"] = batch_no
        state["train_seconds"] = time.perf_counter() - train_start
        step = state["step"]
        evaluated = None
        snapshot = step % config.evaluation.every == 0 or step == total_steps
        if self.averaged is not None and snapshot and step > config.training.average_start * total_steps:
            self.averaged.update_parameters(self.unwrap_student())
            state["averaged"] = state.get("averaged", 0) + 1
            state.setdefault("average_from", step)
        if self.eval_set is not None and snapshot:
            evaluated = self.evaluate()
            improved = state["best"] is None or evaluated > state["best"]
            state["history"].append({"step": step, "metric": evaluated, **self.last_loss})
            if improved:
                state["best"], state["best_step"], state["bad_evals"] = evaluated, step, 0
                self.save_best()
            else:
                state["bad_evals"] += 1
                if config.evaluation.patience and state["bad_evals"] >= config.evaluation.patience:
                    state["stopped"] = (f"early stop at step {step}: no improvement in {config.evaluation.patience} "
                                        "evaluations")
        if self.progress and self.main:
            self.progress({"phase": "train", "step": step, "total": total_steps, "epoch": epoch,
                           "lr": self.scheduler.get_last_lr()[0], "eval": evaluated, "best": state["best"],
                           "metric": self.metric.value, **self.last_loss})
        save_every = config.evaluation.save_every or config.evaluation.every
        if step % save_every == 0 or state["stopped"] or step >= total_steps:
            self.save_checkpoint()
        if self.stop_requested(flag):
            self.save_checkpoint()
            raise Interrupted(
                f"interrupted at step {step}/{total_steps}; the run is saved in {self.run}",
                hint="run the same command with --resume to continue",
            )
        return step >= total_steps or bool(state["stopped"])

    # --- the weights to keep -----------------------------------------------------------------------------
    def final_weights(self) -> tuple[Any, str, float | None]:
        """The student with the weights to write (the average, the best evaluated, or the last), how they were
        chosen, and their score."""
        state = self.state
        self.accelerator.wait_for_everyone()
        final = self.unwrap_student()
        chosen = "last"
        # the last step is always evaluated, so the chosen weights' score is the best one recorded
        final_score = state["best"] if self.eval_set is not None else None
        if self.averaged is not None and state.get("averaged"):
            final.load_state_dict(self.averaged.module.state_dict())
            chosen = f"average of {state['averaged']} snapshots (steps {state['average_from']}-{state['step']})"
            if self.eval_set is not None:
                final_score = self.evaluate()
                state["history"].append({"step": "average", "metric": final_score})
        elif self.eval_set is not None and state["best_step"] is not None and state["best_step"] != state["step"]:
            from safetensors.torch import load_file

            final.load_state_dict(load_file(str(self.run / "best" / "model.safetensors")), strict=False)
            chosen = f"best (step {state['best_step']})"
        # every process has its weights before the main one writes the student and removes the run directory
        self.accelerator.wait_for_everyone()
        return final, chosen, final_score


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
