"""What distillation gives the one training loop (:class:`compress.stages.training.TrainLoop`) for a text student:
the loss against the teacher's targets, the score on the eval rows, the transfer rows epoch by epoch on Accelerate
(gradient accumulation, each process's share), the checkpoints it resumes from (Accelerate's state directory in the
run directory, :class:`CheckpointDir`) and the weights it writes (the average, the best evaluated or the last).

:func:`compress.stages.distill.distill` prepares the student, the data and the teacher's targets, runs a
:class:`Distillation` and writes the weights it chooses (:meth:`Distillation.final_weights`) as the student artifact.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from compress.progress import Progress
from compress.stages.common import layer_list
from compress.stages.distill.config import AVERAGE_FILE, RUN_STATE, DistillConfig
from compress.stages.distill.losses import distill_loss
from compress.stages.training import Cadence, Interrupted, TrainLoop, adamw
from compress.stages.transfer import OutputPlan, ValueTap, length_grouped_order, model_outputs, predict_rows, score

log = logging.getLogger("compress.stages.distill")  # the verb's logger


class Distillation:
    """One distillation run: the student and its projections, the teacher's targets, the loss and the score it gives
    the one training loop (:class:`compress.stages.training.TrainLoop`), and the weights it chooses.

    The loop's ``state`` is what the run directory's checkpoint keeps (step, epoch, batch in the epoch, best score,
    history, ...), so a resumed run continues where the interrupted one stopped, with the same data order and dropout
    masks (Accelerate's checkpoint holds the random generators).
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
        self.device = accelerator.device
        self.n_proc = accelerator.num_processes
        self.t_cfg = teacher.model.config
        self.averaged = None
        self.loop: TrainLoop | None = None

    @property
    def state(self) -> dict[str, Any]:
        return self.loop.state

    # --- model, optimiser, schedule --------------------------------------------------------------------
    def prepare(self, resume: bool) -> None:
        """The trainable module (student + projections), AdamW and the schedule, the loop; the checkpoint's state on
        resume."""
        import torch

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
        optimizer, scheduler = adamw(groups, config.training.lr, weight_decay=config.training.weight_decay,
                                     total=self.total_steps, schedule=config.training.schedule.value,
                                     warmup=int(config.training.warmup_ratio * self.total_steps))
        self.module, optimizer = accelerator.prepare(module, optimizer)
        accelerator.register_for_checkpointing(scheduler)
        self.tap_s = ValueTap(layer_list(student)[1][-1]) if plan.value_relation else None
        self.tap_t = (ValueTap(layer_list(self.teacher.model)[1][-1])
                      if plan.value_relation and not self.cache_intermediate else None)
        # stochastic weight averaging: the running mean of the snapshots, kept beside the checkpoint
        if config.training.average:
            from torch.optim.swa_utils import AveragedModel

            self.averaged = AveragedModel(student)
        ev = config.evaluation
        self.loop = TrainLoop(
            self.module, list(self.module.parameters()),
            Cadence(self.total_steps, ev.every, ev.save_every or ev.every, ev.patience),
            loss=self._loss, batches=self._batches, store=CheckpointDir(self), optimizer=optimizer,
            scheduler=scheduler, evaluate=self.evaluate if self.eval_set is not None else None,
            metric_name=self.metric.value, progress=self.progress, accelerator=accelerator,
            clip=config.training.max_grad_norm, train_mode=False, on_step=self._after_optimizer_step,
            event=self._event, entry=lambda step, value, loss, parts: {"step": step, "metric": value, "loss": loss,
                                                                       **parts},
            state={"step": 0, "epoch": 0, "batch_in_epoch": 0, "best": None, "best_step": None, "bad_evals": 0,
                   "history": [], "train_seconds": 0.0, "stopped": None})
        if resume:
            self.loop.store.resume(self.loop)

    def unwrap_student(self):
        return self.accelerator.unwrap_model(self.module).student

    def evaluate(self) -> float | None:
        if self.eval_set is None:
            return None
        pred = predict_rows(self.unwrap_student(), self.s_eval_set, self.plan, self.device, 64)
        return score(pred, self.teacher_eval, self.eval_labels, self.metric, self.plan.tags)

    # --- what the loop is given ------------------------------------------------------------------------
    def train(self) -> None:
        """Train to ``total_steps`` (or an early stop); on Ctrl-C/SIGTERM checkpoint and raise :class:`Interrupted`."""
        try:
            self.loop.train()
        finally:
            for tap in (self.tap_s, self.tap_t):
                if tap:
                    tap.remove()

    def _batches(self) -> Iterator[Any]:
        """The transfer rows, epoch after epoch, from the resumed batch on: length-grouped, each process's share."""
        import torch

        config, accelerator = self.config, self.accelerator
        while True:
            state = self.loop.state
            epoch = state["epoch"]
            order = length_grouped_order(self.sdata.lengths, config.training.batch_size * self.n_proc,
                                         config.seed + epoch)
            # Own generator: creating a DataLoader iterator draws a base seed from the global torch RNG otherwise,
            # and a resumed run creates one more iterator (skip_first_batches) than an uninterrupted one, which
            # would shift every later dropout mask.
            loader = torch.utils.data.DataLoader(order, batch_size=config.training.batch_size,
                                                 collate_fn=self.sdata.collate,
                                                 generator=torch.Generator().manual_seed(config.seed + epoch))
            loader = accelerator.prepare_data_loader(loader, device_placement=True)
            skip = state["batch_in_epoch"]
            for batch in accelerator.skip_first_batches(loader, skip) if skip else loader:
                state["batch_in_epoch"] += 1
                yield batch
            state["epoch"] += 1
            state["batch_in_epoch"] = 0

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

    def _loss(self, module, batch):
        """The batch's distillation loss and its parts."""
        s_out = model_outputs(module, batch, self.plan, self.tap_s)
        t_out = self._teacher_outputs(batch)
        proj = self.accelerator.unwrap_model(module).proj
        return distill_loss(s_out, t_out, batch, self.plan, self.config, proj)

    def _after_optimizer_step(self, step: int) -> None:
        """The caller's hook on the student, then a snapshot into the running average at every evaluation step."""
        if self.on_step is not None:
            self.on_step(self.unwrap_student(), step, self.total_steps)
        config, state = self.config, self.loop.state
        snapshot = step % config.evaluation.every == 0 or step == self.total_steps
        if self.averaged is not None and snapshot and step > config.training.average_start * self.total_steps:
            self.averaged.update_parameters(self.unwrap_student())
            state["averaged"] = state.get("averaged", 0) + 1
            state.setdefault("average_from", step)

    def _event(self, step: int, loss: float, parts: dict[str, float], evaluated) -> dict[str, Any]:
        return {"phase": "train", "step": step, "total": self.total_steps, "epoch": self.loop.state["epoch"],
                "lr": self.loop.sched.get_last_lr()[0], "eval": evaluated, "best": self.loop.state["best"],
                "metric": self.metric.value, "loss": loss, **parts}

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


class CheckpointDir:
    """Where a distillation run keeps its checkpoints (the loop's ``store``): ``checkpoint/`` (Accelerate's state,
    the random generators among it, the loop's state as ``trainer_state.json``, the running average), written beside
    itself then swapped in, and ``best/`` (the best evaluated student, ``save_pretrained``)."""

    def __init__(self, distillation: Distillation) -> None:
        self.d = distillation
        self.ckpt = distillation.run / "checkpoint"

    def resume(self, loop: TrainLoop) -> None:
        if not (self.ckpt / RUN_STATE).is_file():
            return
        d = self.d
        d.accelerator.load_state(str(self.ckpt))
        loop.state = json.loads((self.ckpt / RUN_STATE).read_text())
        if d.averaged is not None and loop.state.get("averaged"):
            from safetensors.torch import load_file

            d.averaged.module.load_state_dict(load_file(str(self.ckpt / AVERAGE_FILE)))
            d.averaged.n_averaged.fill_(loop.state["averaged"])
        log.info("resumed %s at step %d/%d", d.run, loop.state["step"], d.total_steps)

    def save(self, loop: TrainLoop) -> None:
        d, accelerator, run, state = self.d, self.d.accelerator, self.d.run, loop.state
        accelerator.wait_for_everyone()
        tmp = run / "checkpoint.partial"
        if d.main:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if d.main:
            if d.averaged is not None and state.get("averaged"):
                from safetensors.torch import save_file

                save_file({k: v.detach().contiguous() for k, v in d.averaged.module.state_dict().items()},
                          str(tmp / AVERAGE_FILE))
            (tmp / RUN_STATE).write_text(json.dumps(state, indent=2) + "\n")
            old = run / "checkpoint.old"
            shutil.rmtree(old, ignore_errors=True)
            if self.ckpt.exists():
                os.replace(self.ckpt, old)
            os.replace(tmp, self.ckpt)
            shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    def save_best(self, loop: TrainLoop) -> None:
        d = self.d
        if d.main:
            best = d.run / "best"
            tmp = d.run / "best.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            d.unwrap_student().save_pretrained(str(tmp), safe_serialization=True)
            shutil.rmtree(best, ignore_errors=True)
            os.replace(tmp, best)
        d.accelerator.wait_for_everyone()

    def interrupted(self, loop: TrainLoop) -> Interrupted:
        return Interrupted(f"interrupted at step {loop.state['step']}/{loop.total}; the run is saved in {self.d.run}",
                           hint="run the same command with --resume to continue")


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
