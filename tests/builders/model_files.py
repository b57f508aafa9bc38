"""A two-input sensor-style model and the TorchScript ONNX export tests use to make model files "made elsewhere", and
the quickly timed host profile they are validated with (:func:`quick_host_profile`)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch


class TwoInputs(torch.nn.Module):
    """A sensor-style model: a window (channels x time) through a Conv1d, and a feature vector through a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(6, 32, 5)
        self.dense = torch.nn.Linear(24, 32)
        self.head = torch.nn.Linear(64, 4)

    def forward(self, window, feats):
        x = torch.relu(self.conv(window)).mean(-1)
        return self.head(torch.cat([x, torch.relu(self.dense(feats))], -1))


def torch_onnx_export(model, args, path: Path, names: list[str], dynamic: dict, opset: int = 12) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model.eval(), args, str(path), opset_version=opset, dynamo=False, input_names=names,
                          output_names=["scores"], dynamic_axes=dynamic)
    return path


def quick_host_profile(directory: Path, runtime: str | None = None) -> str:
    """A profile file in ``directory``: host timed briefly (``QUICK_MEASURE``), for tests that check what validate
    reports, not its timings (host's own 100 runs over at least 5 s, for the artifact and again for its FP32 baseline,
    were most of such a validate's time). ``runtime``: run that one, as host does for a format its default runtime
    cannot run (a file that extends host keeps host's runtime)."""
    import yaml

    from tests.conftest import QUICK_MEASURE

    name = "quick-host" + (f"-{runtime}" if runtime else "")
    profile = {"name": name, "extends": "host", "measure": QUICK_MEASURE}
    if runtime:
        profile["runtime"] = {"name": runtime, "provider": None, "options": {}}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(profile), encoding="utf-8")
    return str(path)
