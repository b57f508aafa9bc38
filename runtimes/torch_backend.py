"""PyTorch eager runtime: runs a teacher checkpoint or a pytorch-format artifact on the CPU."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from compress.artifact import Format
from compress.runtimes.base import RuntimeBackend, RuntimeSettings


class TorchBackend(RuntimeBackend):
    name: ClassVar[str] = "torch"
    module: ClassVar[str] = "torch"
    formats: ClassVar[frozenset[Format]] = frozenset({Format.pytorch})

    teacher: Any = None

    @classmethod
    def from_teacher(cls, teacher: Any, settings: RuntimeSettings | None = None) -> TorchBackend:
        """Wrap an already loaded :class:`compress.models.Teacher` (no second load)."""
        self = cls.__new__(cls)
        self.teacher = teacher
        RuntimeBackend.__init__(self, teacher.as_artifact(), settings)
        return self

    def _load(self) -> None:
        import torch

        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        if self.teacher is None:
            from compress.models import load_teacher

            self.teacher = load_teacher(
                self.artifact.path,
                self.artifact.task,
                allow_pickle=bool(self.settings.options.get("allow_pickle")),
                trust_remote_code=bool(self.settings.options.get("trust_remote_code")),
            )
        self.model = self.teacher.model

    def _make_encoder(self):
        return self.teacher.encoder()

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
        tensor = out.logits if hasattr(out, "logits") else out.last_hidden_state
        return tensor.float().numpy()

    @classmethod
    def version(cls) -> str | None:
        from compress._optional import version_of

        return version_of("torch")

    def describe(self) -> dict[str, Any]:
        import torch

        d = super().describe()
        d.update(threads=torch.get_num_threads(), device="cpu")
        return d
