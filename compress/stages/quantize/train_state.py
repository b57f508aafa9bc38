"""A fake-quantized training run (:mod:`.qad`, :mod:`.lm_qat`): its loop (AdamW, warm-up then cosine decay, the
held-out score every few steps, the best weights kept, Ctrl-C saves and stops) and the state an interrupted run
resumes from: one file in the run's work directory, written beside itself then renamed (never half-written), keyed by
the run's settings and model (another run's state is not resumed), holding the student's weights, the best weights so
far, the optimiser, the learning-rate schedule and the run's progress (``state``, JSON)."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("compress.stages.quantize")


class Resumable:
    """What a training run mixes in to be trained, saved and resumed. The run sets ``work`` (its directory), ``key``
    (a digest of what it trains and how), ``student`` (``.model`` trained), ``config`` (``.qad``: steps and lr) and
    ``say`` (progress), calls :meth:`start_training`, and gives :meth:`begin` (the score before training),
    :meth:`loss_at` (a step's loss), :meth:`score` and :meth:`better`; :meth:`extra_state` and :meth:`restore_extra`
    carry what else a run needs (QAD's observed activation ranges)."""

    STATE: str = "state.pt"  #: the file's name in ``work``
    LABEL: str = "training"  #: the run's name in the log
    WHAT: str = "training"  #: the run's name where an interrupt stops it
    work: Path
    key: str
    state: dict[str, Any]
    best_weights: dict[str, Any] | None
    student: Any
    opt: Any
    sched: Any
    config: Any
    say: Any

    def start_training(self, params: list, lr: float) -> None:
        """AdamW over ``params``, a linear warm-up over the first tenth of the steps then cosine decay, and a fresh
        state (a resume replaces them)."""
        import torch

        steps = self.config.qad.steps
        warm = max(1, steps // 10)
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
        self.state = {"step": 0, "best": None, "best_step": 0, "history": [], "seconds": 0.0}
        self.best_weights = None

    # what a run gives
    def begin(self) -> None:
        """A run's first start (not a resume): score before training into ``state`` (``best``, ``before``)."""
        raise NotImplementedError

    def loss_at(self, step: int) -> Any:
        """The loss (a tensor) of ``step``'s batch."""
        raise NotImplementedError

    def score(self) -> dict[str, float]:
        raise NotImplementedError

    def better(self, score: dict[str, float], best: dict[str, float] | None) -> bool:
        raise NotImplementedError

    def train(self) -> None:
        """The steps left (all, or those after a resumed state), the held-out score every ``min(50, steps / 5)``
        steps and at the end; Ctrl-C saves the state and stops with :class:`Interrupted` (the same command resumes)."""
        from compress.interrupt import StopFlag
        from compress.stages.training import Interrupted

        steps = self.config.qad.steps
        every = max(1, min(50, steps // 5))
        if not self.resume():
            self.begin()
        self.say({"phase": "qad", "total": steps})
        t0 = time.perf_counter()
        with StopFlag() as stop:
            while self.state["step"] < steps:
                loss = self.loss_at(self.state["step"])
                loss.backward()
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
                self.sched.step()
                self.state["step"] = step = self.state["step"] + 1
                last, stopping = float(loss.detach()), stop.requested
                if step % every == 0 or step == steps or stopping:
                    self._evaluate(step, last, t0)
                    t0 = time.perf_counter()
                else:
                    self.say({"phase": "qad", "step": step, "total": steps, "loss": last})
                if stopping:
                    self.save()
                    raise Interrupted(f"{self.WHAT} stopped at step {step} of {steps}",
                                      hint="run the same command again to resume")

    def _evaluate(self, step: int, loss: float, t0: float) -> None:
        self.state["seconds"] += time.perf_counter() - t0
        score = self.score()
        self.state["history"].append({"step": step, "loss": round(loss, 6), **score})
        if self.better(score, self.state["best"]):
            self.state["best"], self.state["best_step"] = score, step
            self.best_weights = self.weights()
        log.info("%s step %d/%d: loss %.4f, held-out %s (best at step %d)", self.LABEL, step, self.config.qad.steps,
                 loss, score, self.state["best_step"])
        self.say({"phase": "qad", "step": step, "total": self.config.qad.steps, "loss": loss, **score})
        self.save()

    # the state on disk
    def extra_state(self) -> dict[str, Any]:
        """What else the saved state holds (values ``torch.load(weights_only=True)`` reads back)."""
        return {}

    def restore_extra(self, saved: dict[str, Any]) -> None:
        """Take back what :meth:`extra_state` saved."""

    def weights(self) -> dict[str, Any]:
        """A copy of the student's weights now (the best so far, kept while training moves on)."""
        return {k: v.detach().clone() for k, v in self.student.model.state_dict().items()}

    def save(self) -> None:
        import torch

        self.work.mkdir(parents=True, exist_ok=True)
        tmp = self.work / (self.STATE + ".tmp")
        torch.save({"key": self.key, "state": json.dumps(self.state), "model": self.student.model.state_dict(),
                    "best_model": self.best_weights, "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                    **self.extra_state()}, tmp)
        tmp.replace(self.work / self.STATE)

    def resume(self) -> bool:
        """Restore the saved state if it is this run's; False (starting over) when there is none or another run's."""
        import torch

        file = self.work / self.STATE
        if not file.is_file():
            return False
        saved = torch.load(file, map_location="cpu", weights_only=True)
        if saved.get("key") != self.key:
            log.warning("%s holds another %s run's state (other settings or model): starting over", self.work,
                        self.LABEL)
            return False
        self.student.model.load_state_dict(saved["model"])
        self.best_weights = saved["best_model"]
        self.opt.load_state_dict(saved["opt"])
        self.sched.load_state_dict(saved["sched"])
        self.state = json.loads(saved["state"])
        self.restore_extra(saved)
        log.info("%s: resuming at step %d of %d from %s", self.LABEL, self.state["step"], self.config.qad.steps,
                 self.work)
        return True
