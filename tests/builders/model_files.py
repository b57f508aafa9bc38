"""A two-input sensor-style model and the TorchScript ONNX export tests use to make model files "made elsewhere"."""

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
