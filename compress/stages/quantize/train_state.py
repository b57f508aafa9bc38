"""The state an interrupted fake-quantized training run (:mod:`.qad`, :mod:`.lm_qat`) resumes from: one file in the
run's work directory, written beside itself then renamed (never half-written), keyed by the run's settings and model
(another run's state is not resumed), holding the student's weights, the best weights so far, the optimiser, the
learning-rate schedule and the run's progress (``state``, JSON)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("compress.stages.quantize")


class Resumable:
    """What a training run mixes in to be saved and resumed. The run sets ``work`` (its directory), ``key`` (a digest
    of what it trains and how), ``state`` (its progress: ``step`` first), ``student`` (``.model`` trained),
    ``best_weights``, ``opt`` and ``sched``; :meth:`extra_state` and :meth:`restore_extra` carry what else a run
    needs (QAD's observed activation ranges)."""

    STATE: str = "state.pt"  #: the file's name in ``work``
    LABEL: str = "training"  #: the run's name in the log
    work: Path
    key: str
    state: dict[str, Any]
    best_weights: dict[str, Any] | None
    student: Any
    opt: Any
    sched: Any
    config: Any

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
