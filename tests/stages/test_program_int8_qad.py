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


@pytest.mark.parametrize("kind,data", [("image", "images"), ("arrays", "x")])
def test_qad_trains_the_program_file_the_artifact_was_exported_from(sources, tmp_path, kind, data):
    from compress.stages.export import export
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.teachers.load import source_digest

    program = sources[kind]
    fp32 = export(program, tmp_path / "fp32")
    assert fp32.manifest.steps[-1].input_digest == source_digest(program)  # one digest, recorded and checked
    for given in (None, str(program)):  # found from the lineage, or named with --qat-source
        cfg = QuantizeConfig.from_flat(mode="static", calibration=str(sources[data]), qat_steps=2, qat_source=given)
        art = quantize(fp32.path, tmp_path / f"q{given is not None}", cfg)
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
