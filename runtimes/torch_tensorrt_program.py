"""Running a Torch-TensorRT program (``model.pt2``): the runtime side of ``export --via torch-tensorrt``.

Used by the TensorRT runtime adapter and by the export stage's parity check; it imports no stage.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import ArtifactError, ConfigError, first_line


def install_hint() -> str:
    """The install command for the torch-tensorrt release that matches the installed torch."""
    from compress._optional import version_of

    torch_v = (version_of("torch") or "").split("+")[0]
    pin = f"=={torch_v}" if torch_v else ""
    # torch-tensorrt pins torch exactly: an unpinned install would replace torch by the newest release
    return f'pip install "torch-tensorrt{pin}" (its release must equal your torch\'s, {torch_v or "unknown"})'


def check_in_range(name: str, shape: tuple[int, ...], lo: tuple[int, ...], hi: tuple[int, ...], what: str) -> None:
    """ConfigError (one line) unless ``shape`` lies within ``lo``..``hi`` on every axis."""
    if len(shape) != len(lo) or any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
        raise ConfigError(
            f"input {name} of shape {list(shape)} is outside {what} (min {list(lo)}, max {list(hi)})",
            hint="rebuild with --max-shape covering it, or measure a shape inside that range",
        )


class ProgramRunner:
    """Loads ``model.pt2`` and runs it on ``device`` with numpy inputs, inside the saved shape range."""

    def __init__(self, path: Path, device: str, shapes: dict[str, Any] | None = None) -> None:
        import torch

        try:  # registers the tensorrt::execute_engine op the program calls (absent for plain programs)
            importlib.import_module("torch_tensorrt")
        except ImportError:
            pass
        self.device = torch.device(device)
        try:
            self.module = torch.export.load(str(path)).module()
        except Exception as e:
            first = first_line(e, default="")
            raise ArtifactError(f"cannot load {path}: {type(e).__name__}: {first}",
                                hint="rebuild it with `edgecompress export ... --format tensorrt --via torch-tensorrt`") from e
        self.module.to(self.device)
        self.limits = None
        if shapes and shapes.get("min") and shapes.get("max"):
            first_in = next(iter(shapes["min"]))
            self.limits = (tuple(shapes["min"][first_in]), tuple(shapes["max"][first_in]))

    def check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if self.limits is not None:
            check_in_range(name, shape, *self.limits, "the program's shape range")

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        feed = {}
        for name, value in inputs.items():
            self.check_shape(name, tuple(value.shape))
            feed[name] = torch.from_numpy(np.ascontiguousarray(value)).to(self.device, torch.int64)
        with torch.inference_mode():
            out = self.module(**feed)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.float().cpu().numpy()  # .cpu() waits for the device

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
