"""Training for the benchmark scripts that build their own test material (teachers, detectors, small CNNs): the
library's one loop, :class:`compress.stages.training.TrainLoop`, with nothing kept on disk (a benchmark's model is
saved by the script once trained) and a log line every so many steps."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

#: steps for a run that ends when its batches do (a time budget, say)
UNTIL_BATCHES_END = sys.maxsize


class KeepNothing:
    """A :class:`~compress.stages.training.TrainLoop` store that writes no checkpoint and no best weights: the loop
    ends on the weights of its last step, and Ctrl-C stops it as any script stops."""

    def save(self, loop) -> None:
        pass

    def save_best(self, loop) -> None:
        pass

    def interrupted(self, loop) -> KeyboardInterrupt:
        return KeyboardInterrupt(f"interrupted at step {loop.state['step']}")


class SetByBatches:
    """The learning-rate schedule of a run whose ``batches`` set the rate themselves (from the time spent, say)."""

    def step(self) -> None:
        pass


def train_steps(model, loss: Callable[[Any, Any], Any], batches: Callable[[], Iterator[Any]], *, optimizer,
                steps: int = UNTIL_BATCHES_END, scheduler=None, clip: float | None = None,
                evaluate: Callable[[], float] | None = None, every: int | None = None, smoothing: float = 1.0,
                log_every: int = 100, what: str = "train", log: Callable[[str], None] | None = None,
                trainable=None) -> dict[str, Any]:
    """Train ``model`` in train mode through :class:`~compress.stages.training.TrainLoop` for ``steps`` optimizer
    steps, or until ``batches()`` runs out; leave it in eval mode on its last weights.

    ``loss(model, batch)`` returns the loss tensor; ``scheduler`` steps after every optimizer step (None: the rate the
    optimizer, or the batches, set); ``clip``: the gradient norm clipped to (None: none). ``evaluate()`` scores the
    model (in eval mode) every ``every`` steps and at the last. The loss a log line and the record carry is smoothed,
    ``avg = (1 - smoothing) * avg + smoothing * loss`` (1: the last step's). Returns ``steps``, ``seconds`` (the wall
    time: batches and evaluations too), ``loss`` (the smoothed loss at the end) and ``evaluations`` (``[step, score]``
    pairs)."""
    from compress.stages.training import Cadence, TrainLoop

    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    trainable = [p for p in model.parameters() if p.requires_grad] if trainable is None else list(trainable)
    t0 = time.perf_counter()
    smoothed: dict[str, float] = {}

    def event(step: int, value: float, parts, evaluated) -> dict | None:
        avg = smoothed.get("loss")
        smoothed["loss"] = value if avg is None else (1 - smoothing) * avg + smoothing * value
        if step % log_every and step != steps and evaluated is None:
            return None
        lr = optimizer.param_groups[0]["lr"]
        of = "" if steps == UNTIL_BATCHES_END else f"/{steps}"
        scored = "" if evaluated is None else f" eval {evaluated:.4f}"
        say(f"{what}: step {step}{of} loss {smoothed['loss']:.4f} lr {lr:.2e}{scored} "
            f"({time.perf_counter() - t0:.0f} s)")
        return None

    every = every or steps
    loop = TrainLoop(model, trainable, Cadence(steps, every, UNTIL_BATCHES_END), loss=loss, batches=batches,
                     store=KeepNothing(), optimizer=optimizer, scheduler=scheduler or SetByBatches(), clip=clip,
                     evaluate=evaluate, progress=lambda _event: None, event=event,
                     entry=lambda step, value, loss, parts: [step, value])
    loop.train()
    model.eval()
    return {"steps": loop.state["step"], "seconds": time.perf_counter() - t0, "loss": smoothed.get("loss"),
            "evaluations": loop.state["history"]}
