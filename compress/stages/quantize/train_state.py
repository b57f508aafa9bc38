"""A fake-quantized training run (:mod:`.qad`, :mod:`.lm.qat`) on the one training loop
(:class:`compress.stages.training.TrainLoop`: AdamW, a linear warm-up over the first tenth of the steps then cosine
decay, the held-out score every few steps, the best weights kept, Ctrl-C saves and stops) and the state an
interrupted run resumes from: one file in the run's work directory, written beside itself then renamed (never
half-written), keyed by the run's settings and model (another run's state is not resumed), holding the student's
weights, the best weights so far, the optimiser, the learning-rate schedule and the run's progress (``state``, JSON).

A run gives the loop its loss and its score: it has ``work`` (its directory), ``key`` (a digest of what it trains and
how), ``student`` (``.model`` trained), ``params`` and ``lr`` (what trains, at which peak), ``config`` (``.qad``:
the steps), ``say`` (progress), ``STATE``/``LABEL``/``WHAT`` (its file, its name in the log and where an interrupt
stops it), and the methods ``begin()`` (the score before training, into ``state``), ``loss_at(step)``, ``score()``
and ``better(score, best)``; ``extra_state()`` and ``restore_extra(saved)``, where it has them, carry what else it needs
(QAD's observed activation ranges). :func:`train_run` leaves ``state`` and ``best_weights`` on it.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from compress.stages.training import Cadence, Interrupted, TrainLoop

log = logging.getLogger("compress.stages.quantize")


class StateFile:
    """Where a fake-quantized run keeps its state (the loop's ``store``); the best weights are kept in memory and in
    the file."""

    def __init__(self, run) -> None:
        self.run = run
        self.best: dict[str, Any] | None = None

    def save(self, loop: TrainLoop) -> None:
        import torch

        run = self.run
        run.work.mkdir(parents=True, exist_ok=True)
        tmp = run.work / (run.STATE + ".tmp")
        torch.save({"key": run.key, "state": json.dumps(loop.state), "model": run.student.model.state_dict(),
                    "best_model": self.best, "opt": loop.opt.state_dict(), "sched": loop.sched.state_dict(),
                    **(run.extra_state() if hasattr(run, "extra_state") else {})}, tmp)
        tmp.replace(run.work / run.STATE)

    def save_best(self, loop: TrainLoop) -> None:
        """A copy of the student's weights now (the best so far, kept while training moves on)."""
        self.best = {k: v.detach().clone() for k, v in self.run.student.model.state_dict().items()}

    def interrupted(self, loop: TrainLoop) -> Interrupted:
        return Interrupted(f"{self.run.WHAT} stopped at step {loop.state['step']} of {loop.total}",
                           hint="run the same command again to resume")

    def resume(self, loop: TrainLoop) -> bool:
        """Restore the saved state if it is this run's; False (starting over) when there is none or another run's."""
        import torch

        run = self.run
        file = run.work / run.STATE
        if not file.is_file():
            return False
        saved = torch.load(file, map_location="cpu", weights_only=True)
        if saved.get("key") != run.key:
            log.warning("%s holds another %s run's state (other settings or model): starting over", run.work,
                        run.LABEL)
            return False
        run.student.model.load_state_dict(saved["model"])
        self.best = saved["best_model"]
        loop.opt.load_state_dict(saved["opt"])
        loop.sched.load_state_dict(saved["sched"])
        loop.state = json.loads(saved["state"])
        if hasattr(run, "restore_extra"):
            run.restore_extra(saved)
        log.info("%s: resuming at step %d of %d from %s", run.LABEL, loop.state["step"], loop.total, run.work)
        return True


def train_run(run) -> None:
    """Train ``run`` for ``config.qad.steps`` steps (those left after a resumed state): the held-out score every
    ``min(50, steps / 5)`` steps, at the end and on Ctrl-C, which saves the state and stops with :class:`Interrupted`
    (the same command resumes)."""
    import torch

    steps = run.config.qad.steps
    every = max(1, min(50, steps // 5))
    warm = max(1, steps // 10)
    opt = torch.optim.AdamW(run.params, lr=run.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    store = StateFile(run)

    def batches():
        while True:
            yield loop.state["step"]

    def event(step: int, loss: float, parts, evaluated) -> dict[str, Any]:
        if evaluated is None:
            return {"phase": "qad", "step": step, "total": steps, "loss": loss}
        log.info("%s step %d/%d: loss %.4f, held-out %s (best at step %d)", run.LABEL, step, steps, loss, evaluated,
                 loop.state["best_step"])
        return {"phase": "qad", "step": step, "total": steps, "loss": loss, **evaluated}

    loop = TrainLoop(run.student.model, run.params, Cadence(steps, every, every),
                     loss=lambda model, step: run.loss_at(step), batches=batches, store=store, optimizer=opt,
                     scheduler=sched, evaluate=run.score, better=run.better, progress=run.say, clip=None,
                     train_mode=False, event=event, eval_on_stop=True, clock="seconds",
                     entry=lambda step, score, loss, parts: {"step": step, "loss": round(loss, 6), **score},
                     state={"step": 0, "best": None, "best_step": 0, "history": [], "seconds": 0.0})
    run.state = loop.state
    if store.resume(loop):
        run.state = loop.state
    else:
        run.begin()
    run.best_weights = store.best
    run.say({"phase": "qad", "total": steps})
    try:
        loop.train()
    finally:
        run.best_weights = store.best
