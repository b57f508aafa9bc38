"""A ``.pt2`` program brought as a file: quantization-aware distillation trains the very program its export read (the
digest the export recorded and the one QAD checks are one function's, :func:`compress.teachers.load.source_digest`,
for every kind of PyTorch source).

The models and inputs are test material (random weights, noise images and arrays)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("PIL")

pytestmark = pytest.mark.slow


def _arrays_program(root: Path) -> Path:
    """A small MLP saved as a ``torch.export`` program whose ``model.yaml`` says it takes arrays (input ``x``)."""
    import torch

    torch.manual_seed(0)
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))

        def forward(self, x):
            return self.net(x)

    net = Net().eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(net, (torch.randn(2, 16),), dynamic_shapes=({0: batch},))
    root.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(root / "mlp.pt2"))
    (root / "mlp.yaml").write_text("architecture: mlp\n")
    return root / "mlp.pt2"


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    from tests.builders.images import _depthwise_relu6_program

    root = tmp_path_factory.mktemp("programs")
    rng = np.random.default_rng(0)
    np.savez(root / "images.npz", images=rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8))
    np.savez(root / "x.npz", x=rng.normal(size=(24, 16)).astype(np.float32))
    return {"image": _depthwise_relu6_program(root / "cnn") / "model.pt2", "arrays": _arrays_program(root / "mlp"),
            "images": root / "images.npz", "x": root / "x.npz"}


@pytest.mark.parametrize("kind,data,named", [("image", "images", False), ("arrays", "x", True)])
def test_qad_trains_the_program_file_the_artifact_was_exported_from(sources, tmp_path, kind, data, named):
    from compress.stages.export import export
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.teachers.load import source_digest

    program = sources[kind]
    fp32 = export(program, tmp_path / "fp32")
    assert fp32.manifest.steps[-1].input_digest == source_digest(program)  # one digest, recorded and checked
    given = str(program) if named else None  # named with --qat-source, or found from the lineage
    cfg = QuantizeConfig.from_flat(mode="static", calibration=str(sources[data]), qat_steps=2, qat_source=given)
    art = quantize(fp32.path, tmp_path / "q", cfg)
    qad = art.manifest.steps[-1].metrics["qad"]
    assert qad["source"] == str(program) and len(qad["history"]) >= 1 and art.manifest.precision == "int8"


def test_another_program_is_still_refused(sources, tmp_path):
    from compress.errors import ConfigError
    from compress.stages.export import export
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    fp32 = export(sources["arrays"], tmp_path / "fp32")
    other = sources["image"]
    cfg = QuantizeConfig.from_flat(mode="static", calibration=str(sources["x"]), qat_steps=2, qat_source=str(other))
    with pytest.raises(ConfigError, match="is not the model"):
        quantize(fp32.path, tmp_path / "q", cfg)
    assert not (tmp_path / "q").exists()


def _digits_program(root: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A small CNN trained for a few seconds on scikit-learn's 8×8 grey digits (its 1,797 real scans), saved as a
    ``torch.export`` program (batch dynamic) with its ``model.yaml``; the training and held-out digits as uint8."""
    import torch
    import yaml
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * 255 / 16).astype(np.uint8)  # [N, 8, 8], 0..16 read as grey levels
    labels = digits.target.astype(np.int64)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU6(),
                              torch.nn.Conv2d(16, 32, 3, padding=1, stride=2), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10))
    x = torch.from_numpy((images[:1200, None].astype(np.float32) / 255 - 0.5) / 0.5)
    y = torch.from_numpy(labels[:1200])
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        idx = torch.randint(0, len(x), (64,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
    net.eval()
    program = torch.export.export(net, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
    root.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(root / "model.pt2"))
    (root / "model.yaml").write_text(yaml.safe_dump({
        "task": "image-classification", "labels": [str(i) for i in range(10)],
        "preprocess": {"size": [8, 8], "channels": "L", "mean": [0.5], "std": [0.5]}}))
    np.savez(root / "train.npz", images=images[:1200, :, :, None], labels=labels[:1200])
    return root / "model.pt2", {"images": images[1200:], "labels": labels[1200:]}


def test_a_program_gets_an_executorch_int8_program_that_keeps_its_accuracy(tmp_path):
    """A ``.pt2`` program (one grey channel: the input whose row-major strides torch.export could read as
    channels-last) to a static INT8 ExecuTorch program, calibrated on the training digits, judged on the 597 held-out
    ones against the program itself in FP32 (measured: 0.930 FP32, 0.926 INT8, 0.990 agreement)."""
    pytest.importorskip("executorch")
    pytest.importorskip("sklearn")
    import torch

    from compress.runtimes.base import load_runtime
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    program, test = _digits_program(tmp_path / "digits")
    art = export(program, tmp_path / "pte8", ExportConfig.from_flat(
        format="executorch", precision="int8", calibration=str(tmp_path / "digits" / "train.npz")))
    step = art.manifest.steps[-1]
    assert art.manifest.precision == "int8" and step.metrics["quantization"]["activations"] == "static"
    # the default tried both estimators (mean-minmax alone keeps 0.978 of this net's accuracy, 0.955 agreement)
    assert set(step.metrics["quantization"]["range_choice"]["sqnr_db"]) == {"mean-minmax", "histogram"}
    assert step.metrics["delegated"]["delegate_calls"] >= 1  # XNNPACK runs it
    x = ((test["images"][:, None].astype(np.float32) / 255 - 0.5) / 0.5)
    with torch.no_grad():
        fp32 = torch.export.load(str(program)).module()(torch.from_numpy(x)).numpy().argmax(1)
    runtime = load_runtime(art)
    try:
        int8 = runtime.predict({art.manifest.inputs[0].name: x}).argmax(1)
    finally:
        runtime.close()
    acc_fp32, acc_int8 = float((fp32 == test["labels"]).mean()), float((int8 == test["labels"]).mean())
    assert acc_fp32 > 0.85, acc_fp32  # a real classifier, or retention means nothing
    assert acc_int8 / acc_fp32 >= 0.99 and float((int8 == fp32).mean()) >= 0.97, (acc_fp32, acc_int8)
    assert art.model_path.stat().st_size < 0.6 * program.stat().st_size
