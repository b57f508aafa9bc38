"""The one training loop: every verb that trains (finetune, distill, QAD and LM QAT) gives it a loss and a score.

:class:`TrainLoop` steps AdamW (warm-up then decay: :func:`adamw`) over the batches it is given, evaluates every
``every`` steps and at the last, keeps the best weights (higher is better, or the verb's own ``better``), stops early
after ``patience`` evaluations without improvement, checkpoints every ``save_every`` steps, and on Ctrl-C/SIGTERM saves
and raises :class:`Interrupted` (exit code 130; the same command resumes). Under ``accelerate launch`` each process
takes its share of the batch, gradients are averaged, every process evaluates (so all stop together) and the main one
writes. Distillation is the fine-tune's loop with another loss (TRL's ``GKDTrainer(SFTTrainer)``).

Where a run keeps its checkpoints is the verb's ``store`` (an object with ``save(loop)``, ``save_best(loop)`` and
``interrupted(loop)``): :class:`RunFiles` here (``run_config.json``, ``checkpoint.pt``, ``best.pt``, for finetune and
the distillation of a causal LM or a span head), Accelerate's state directory for distill's other students
(:mod:`compress.stages.distill.training`), one keyed file for QAD (:mod:`compress.stages.quantize.train_state`).
:func:`run_loop` builds the loop on a run directory.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from compress.errors import ConfigError, EdgeCompressError
from compress.progress import Progress

log = logging.getLogger(__name__)


class Interrupted(EdgeCompressError):
    """Training stopped by Ctrl-C/SIGTERM after saving a resumable checkpoint."""

    exit_code = 130


def default_run_dir(out: Path | str) -> Path:
    """Where a run keeps its checkpoints unless told: beside the output, ``OUT.run``."""
    out = Path(out)
    return out.with_name(out.name + ".run")


def refuse_unfinished(run: Path, resume: bool, force: bool) -> None:
    """Refuse to start afresh over an interrupted run in ``run`` unless ``--force`` (or ``--resume`` continues it);
    callers with slow work before the loop starts ask this first."""
    if not resume and not force and (run / "checkpoint.pt").is_file():
        raise ConfigError(f"{run} holds an unfinished run", hint="add --resume to continue it, or --force")


@dataclass(frozen=True)
class Cadence:
    """How long a run trains and when it looks: ``total`` optimizer steps, an evaluation every ``every`` steps (and
    at the last), a checkpoint every ``save_every`` steps (and at the last, at an early stop and on Ctrl-C), an early
    stop after ``patience`` evaluations without improvement (None or 0: never)."""

    total: int
    every: int
    save_every: int
    patience: int | None = None


@dataclass(frozen=True)
class LoopSettings:
    """What :func:`run_loop` reads of a verb's settings (finetune's, or distill's for the students it trains on a run
    directory): the length of the run, the optimiser's, and when it evaluates and saves."""

    epochs: float
    max_steps: int | None
    batch_size: int
    weight_decay: float
    warmup_ratio: float
    eval_every: int | None
    save_every: int | None
    patience: int | None
    seed: int

    def cadence(self, rows: int) -> Cadence:
        per_epoch = max(1, -(-rows // self.batch_size))
        total = self.max_steps or max(1, int(round(self.epochs * per_epoch)))
        every = self.eval_every or max(1, total // 10)
        return Cadence(total, every, self.save_every or every, self.patience)


def adamw(params, lr: float, *, weight_decay: float, total: int, warmup: int, schedule: str = "linear"):
    """AdamW over ``params`` (parameters, or groups) and its learning-rate schedule: ``warmup`` steps of linear
    warm-up, then ``schedule`` (transformers' ``linear``, ``cosine``, ``constant_with_warmup``) to ``total``."""
    import torch
    from transformers import get_scheduler

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return opt, get_scheduler(schedule, opt, num_warmup_steps=warmup, num_training_steps=total)


class TrainLoop:
    """One training run's steps, evaluations, best weights and checkpoints (see the module doc).

    ``model``: what ``loss(model, batch)`` is given (the DDP wrapper under several processes); ``module``: the model
    whose trainable parameters and buffers a checkpoint keeps (``model`` by default). ``batches()``: an iterator of
    the batches left, from the resumed step on. ``loss`` returns a tensor, or ``(tensor, {name: float})`` whose parts
    the progress events and the history carry. ``evaluate()``: the held-out score (a float, or a dict a ``better``
    compares), None without eval data; ``better(score, best)``: whether it beats the best so far (by default higher,
    or lower when ``higher_is_better`` is False). ``train_mode``: the model trains in train mode (its
    ``frozen_modules`` kept in eval mode), and is evaluated in eval mode; False leaves its mode alone (a
    fake-quantized model trains in eval mode). ``seed``: the torch seed the run takes at ``seed + step`` when it
    starts (or resumes) training; None leaves the generator as it is (Accelerate's checkpoint restores it).
    ``clip``: the gradient norm clipped to (None: no clipping). ``on_step(step)`` runs after every optimizer step.
    ``event(step, loss, parts, evaluated)`` gives a step's progress event (None: no report); ``entry(step, score,
    loss, parts)`` a history entry. ``eval_on_stop``: Ctrl-C evaluates before it saves."""

    def __init__(self, model, trainable, cadence: Cadence, *, loss: Callable[[Any, Any], Any],
                 batches: Callable[[], Iterator[Any]], store, optimizer=None, scheduler=None, module=None,
                 evaluate: Callable[[], Any] | None = None, better: Callable[[Any, Any], bool] | None = None,
                 higher_is_better: bool = True, metric_name: str | None = None, progress: Progress | None = None,
                 accelerator=None, clip: float | None = 1.0, frozen_modules: list[Any] = (), train_mode: bool = True,
                 seed: int | None = None, on_step: Callable[[int], None] | None = None,
                 event: Callable[..., dict] | None = None, entry: Callable[..., dict] | None = None,
                 eval_on_stop: bool = False, state: dict[str, Any] | None = None, clock: str = "train_seconds",
                 lr: float | None = None) -> None:
        self.model, self.module = model, module if module is not None else model
        self.trainable, self.cadence, self.total = list(trainable), cadence, cadence.total
        self.loss, self.batches, self.store = loss, batches, store
        self.opt, self.sched = optimizer, scheduler
        self.evaluate_fn, self.metric_name, self.higher_is_better = evaluate, metric_name, higher_is_better
        self.better = better or self._higher_or_lower
        self.progress, self.accelerator, self.clip = progress, accelerator, clip
        self.frozen_modules, self.train_mode, self.seed = list(frozen_modules), train_mode, seed
        self.on_step, self.eval_on_stop, self.clock, self.lr = on_step, eval_on_stop, clock, lr
        self.event = event or self._event
        self.entry = entry or (lambda step, value, loss, parts: {"step": step, "metric": value})
        self.is_main = accelerator.is_main_process if accelerator is not None else True
        self.processes = accelerator.num_processes if accelerator is not None else 1
        self.device = accelerator.device if accelerator is not None else None
        self.state: dict[str, Any] = state if state is not None else {
            "step": 0, "best": None, "best_step": None, "bad_evals": 0, "history": [], clock: 0.0, "stopped": None}

    # --- the steps ---------------------------------------------------------------------------------------------
    def train(self) -> None:
        """The steps left (all, or those after a resumed state) to ``total`` or an early stop; Ctrl-C/SIGTERM saves
        the run and raises :class:`Interrupted` at the end of the step it arrived in."""
        import torch

        from compress.interrupt import StopFlag

        state = self.state
        if self.seed is not None:
            torch.manual_seed(self.seed + state["step"])
        self._train_mode()
        with StopFlag() as flag:
            if state["step"] >= self.total or state.get("stopped"):
                return
            t0 = None  # the step's start: its first accumulated batch
            for batch in self.batches():
                t0 = t0 or time.perf_counter()
                loss, parts, synced = self._pass(batch)
                if not synced:
                    continue
                state["step"] += 1
                state[self.clock] += time.perf_counter() - t0
                t0 = None
                if self._after_step(float(loss.detach()), parts, flag):
                    break

    def _pass(self, batch):
        """One forward and backward pass; an optimizer step when the gradients are complete (accumulated)."""
        import torch

        acc = self.accelerator
        accumulating = acc is not None and acc.gradient_accumulation_steps > 1
        with acc.accumulate(self.model) if accumulating else nullcontext():
            out = self.loss(self.model, batch)
            loss, parts = out if isinstance(out, tuple) else (out, {})
            acc.backward(loss) if acc is not None else loss.backward()
            synced = acc.sync_gradients if accumulating else True
            if synced and self.clip is not None:
                if acc is not None:
                    acc.clip_grad_norm_(self.trainable, self.clip)
                else:
                    torch.nn.utils.clip_grad_norm_(self.trainable, self.clip)
            self.opt.step()
            if synced:
                self.sched.step()
                if self.on_step is not None:
                    with torch.no_grad():
                        self.on_step(self.state["step"] + 1)
            self.opt.zero_grad(set_to_none=True)
        return loss, parts, synced

    def _after_step(self, loss: float, parts: dict[str, float], flag) -> bool:
        """Evaluate, report and checkpoint the step just taken; True when training ends here."""
        state, cadence = self.state, self.cadence
        step = state["step"]
        # Ctrl-C is looked for once a step: before the evaluation when it evaluates the step, else after the report
        stopping = self._stop_requested(flag) if self.eval_on_stop else None
        evaluated = None
        if self.evaluate_fn is not None and (step % cadence.every == 0 or step == self.total or stopping):
            evaluated = self._evaluate(step, loss, parts)
        if self.progress and self.is_main and (event := self.event(step, loss, parts, evaluated)) is not None:
            self.progress(event)
        if stopping is None:
            stopping = self._stop_requested(flag)
        if step % cadence.save_every == 0 or step >= self.total or state.get("stopped") or stopping:
            self.store.save(self)
        if stopping:
            raise self.store.interrupted(self)
        return step >= self.total or bool(state.get("stopped"))

    def _stop_requested(self, flag) -> bool:
        """Ctrl-C on any process stops them all at the same step."""
        if self.processes == 1:
            return flag.requested
        import torch

        t = torch.tensor([1.0 if flag.requested else 0.0], device=self.device)
        return bool(self.accelerator.reduce(t, reduction="sum").item() > 0)

    # --- evaluation and the best weights -------------------------------------------------------------------------
    def _higher_or_lower(self, value, best) -> bool:
        return best is None or (value > best if self.higher_is_better else value < best)

    def _evaluate(self, step: int, loss: float, parts: dict[str, float]):
        if self.train_mode:
            self.base_model().eval()
        value = self.evaluate_fn()
        self._train_mode()
        state = self.state
        state["history"].append(self.entry(step, value, loss, parts))
        if self.better(value, state["best"]):
            state["best"], state["best_step"] = value, step
            if "bad_evals" in state:
                state["bad_evals"] = 0
            self.store.save_best(self)
        elif "bad_evals" in state:
            state["bad_evals"] += 1
            if self.cadence.patience and state["bad_evals"] >= self.cadence.patience:
                state["stopped"] = f"early stop at step {step}: no improvement in {self.cadence.patience} evaluations"
        return value

    def _event(self, step: int, loss: float, parts: dict[str, float], evaluated) -> dict[str, Any]:
        return {"phase": "train", "step": step, "total": self.total, "loss": loss, "eval": evaluated,
                "best": self.state["best"], "metric": self.metric_name}

    def _train_mode(self) -> None:
        if not self.train_mode:
            return
        self.model.train()
        for module in self.frozen_modules:
            module.eval()

    def base_model(self):
        """The model evaluated: a LoRA-wrapped model's base (its adapters active)."""
        return self.module.get_base_model() if hasattr(self.module, "get_base_model") else self.module

    def trainable_state(self) -> dict:
        """What training changes (what a checkpoint and the best weights keep), on the CPU: the trained parameters and
        every buffer (a CNN's BatchNorm statistics move with its weights; the best weights without them are not the
        model that scored best)."""
        state = {n: p.detach().cpu().clone() for n, p in self.module.named_parameters() if p.requires_grad}
        state.update({f"buffer:{n}": b.detach().cpu().clone() for n, b in self.module.named_buffers()})
        return state

    def load_trainable(self, state: dict) -> None:
        import torch

        with torch.no_grad():
            for n, p in self.module.named_parameters():
                if p.requires_grad:
                    p.copy_(state[n].to(p.device))
            for n, b in self.module.named_buffers():
                if f"buffer:{n}" in state:
                    b.copy_(state[f"buffer:{n}"].to(b.device))

    # --- several processes ---------------------------------------------------------------------------------------
    def share(self, idx: list[int]) -> list[int]:
        """This process's rows of a batch (every process gets at least one: DDP waits for all of them)."""
        if self.processes == 1:
            return idx
        rank = self.accelerator.process_index
        idx = list(idx)
        while len(idx) < self.processes:
            idx = idx + idx
        return idx[rank::self.processes]

    def follow(self, output):
        """On a process other than the main one: wait until the main one has written the artifact, then read it
        (``(artifact, its metrics)``)."""
        from compress.artifact import load_artifact

        self.accelerator.wait_for_everyone()
        art = load_artifact(output.path, verify=False)
        return art, art.manifest.steps[-1].metrics

    def written(self) -> None:
        """On the main process, once the artifact is written: the others may read it."""
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    # --- a run directory ---------------------------------------------------------------------------------------
    def start(self, resume: bool, force: bool) -> None:
        """A fresh run directory, or the interrupted run's checkpoint on ``resume`` (:class:`RunFiles`)."""
        self.store.start(self, resume, force)

    def finish(self):
        """The best weights (the last without eval data), LoRA merged: a plain model on the CPU, in eval mode."""
        self.accelerator.wait_for_everyone()
        self.store.load_best(self)
        model = self.module.merge_and_unload() if hasattr(self.module, "merge_and_unload") else self.module
        return model.cpu().eval()

    def record(self) -> dict[str, Any]:
        """The run as the step's metrics record it."""
        import resource

        s = self.state
        params = sum(p.numel() for p in self.module.parameters())
        trained = sum(p.numel() for p in self.trainable)
        return {"steps": s["step"], "total_steps": self.total, "train_seconds": round(s[self.clock], 1),
                "steps_per_second": round(s["step"] / max(s[self.clock], 1e-9), 2), "lr": self.lr,
                "parameters": params, "trainable_parameters": trained, "trainable_share": trained / params,
                "device": str(self.device), "processes": self.processes,
                "metric": self.metric_name if self.evaluate_fn else None, "higher_is_better": self.higher_is_better,
                "eval_metric": s["best"], "history": s["history"], "stopped": s["stopped"] or "completed",
                "chosen": f"best (step {s['best_step']})" if s["best_step"] else "last",
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


class RunFiles:
    """A run directory: ``run_config.json`` (the settings a resumed run must share), ``checkpoint.pt`` (the trained
    weights and buffers, the optimiser, the schedule and the loop's state, written beside itself then renamed) and
    ``best.pt`` (the best evaluated weights)."""

    def __init__(self, run: Path, run_config: dict[str, Any]) -> None:
        self.run, self.run_config = run, run_config

    def start(self, loop: TrainLoop, resume: bool, force: bool) -> None:
        import torch

        ckpt = self.run / "checkpoint.pt"
        if resume:
            if not ckpt.is_file():
                raise ConfigError(f"--resume: no run to resume in {self.run}", hint="start without --resume")
            old = json.loads((self.run / "run_config.json").read_text())
            if old != self.run_config:
                changed = sorted(k for k in set(old) | set(self.run_config) if old.get(k) != self.run_config.get(k))
                raise ConfigError(f"--resume: the settings differ from the saved run's ({', '.join(changed)})",
                                  hint="resume with the same options, or start again with --force")
            saved = torch.load(ckpt, map_location="cpu", weights_only=True)
            loop.load_trainable(saved["model"])
            loop.opt.load_state_dict(saved["optimizer"])
            loop.sched.load_state_dict(saved["scheduler"])
            loop.state = json.loads(saved["state"])
            log.info("resuming at step %d of %d", loop.state["step"], loop.total)
            return
        refuse_unfinished(self.run, resume, force)
        loop.accelerator.wait_for_everyone()  # every process has looked before the main one clears it
        if loop.is_main:
            shutil.rmtree(self.run, ignore_errors=True)
            self.run.mkdir(parents=True)
            (self.run / "run_config.json").write_text(json.dumps(self.run_config, indent=1))
        loop.accelerator.wait_for_everyone()

    def save(self, loop: TrainLoop) -> None:
        import torch

        if not loop.is_main:
            return
        tmp = self.run / "checkpoint.pt.tmp"
        torch.save({"model": loop.trainable_state(), "optimizer": loop.opt.state_dict(),
                    "scheduler": loop.sched.state_dict(), "state": json.dumps(loop.state)}, tmp)
        tmp.replace(self.run / "checkpoint.pt")

    def save_best(self, loop: TrainLoop) -> None:
        import torch

        if loop.is_main:
            torch.save(loop.trainable_state(), self.run / "best.pt")

    def load_best(self, loop: TrainLoop) -> None:
        import torch

        best = self.run / "best.pt"
        if best.is_file():
            loop.load_trainable(torch.load(best, map_location="cpu", weights_only=True))

    def interrupted(self, loop: TrainLoop) -> Interrupted:
        return Interrupted(f"interrupted at step {loop.state['step']}/{loop.total}; the run is saved in {self.run}",
                           hint="rerun the same command with --resume to continue")


def run_loop(model, trainable, data, settings: LoopSettings, run: Path, progress: Progress | None, *, lr: float,
             loss: Callable[[Any, dict], Any], evaluate: Callable[[Any], float] | None, metric_name: str,
             run_config: dict[str, Any], frozen_modules: list[Any] = (), higher_is_better: bool = True) -> TrainLoop:
    """The loop on the run directory ``run`` (:class:`RunFiles`), on a CUDA GPU when there is one, else the CPU, and
    under ``accelerate launch`` on several processes: length-grouped batches of ``data`` (``collate``, ``lengths``,
    one shuffle per epoch, a step's batch found from the step alone), AdamW with linear warm-up and decay, gradients
    clipped at 1. ``evaluate(model)`` scores the model (its LoRA base), in eval mode. Call ``start(resume, force)``,
    ``train()``, then ``finish()``."""
    from compress.stages.common import make_accelerator
    from compress.stages.transfer import length_grouped_order

    accelerator = make_accelerator("no")
    model.to(accelerator.device)
    ddp = accelerator.prepare(model) if accelerator.num_processes > 1 else model
    cadence = settings.cadence(len(data))
    per_epoch = max(1, -(-len(data) // settings.batch_size))
    trainable = list(trainable)
    opt, sched = adamw(trainable, lr, weight_decay=settings.weight_decay, total=cadence.total,
                       warmup=int(settings.warmup_ratio * cadence.total))

    def batches() -> Iterator[dict]:
        bs, device = settings.batch_size, accelerator.device
        while True:
            epoch, in_epoch = divmod(loop.state["step"], per_epoch)
            order = length_grouped_order(data.lengths, bs, settings.seed + epoch)
            idx = loop.share(order[in_epoch * bs:(in_epoch + 1) * bs])
            yield {k: v.to(device) for k, v in data.collate(idx).items() if k != "index"}

    loop = TrainLoop(ddp, trainable, cadence, loss=loss, batches=batches, store=RunFiles(run, run_config),
                     optimizer=opt, scheduler=sched, module=model,
                     evaluate=(lambda: float(evaluate(loop.base_model()))) if evaluate else None,
                     higher_is_better=higher_is_better, metric_name=metric_name, progress=progress,
                     accelerator=accelerator, frozen_modules=frozen_modules, seed=settings.seed, lr=lr)
    return loop


def settings_record(settings: LoopSettings) -> dict[str, Any]:
    """The loop's settings as a run directory's ``run_config.json`` keeps them."""
    return asdict(settings)
