"""timm checkpoints (timm's Hugging Face hub format: config.json with architecture and pretrained_cfg, safetensors),
tiny and random, through the whole chain; torchvision imports beside the CPU torch through compress's hook."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.builders.images import MODELS, save_timm

pytestmark = pytest.mark.slow

timm = pytest.importorskip("timm", reason="the timm extra (pip install 'edgecompress[timm]')")
torch = pytest.importorskip("torch")

def images_npz(path, n: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    np.savez(path, images=rng.integers(0, 256, (n, 57, 71, 3), dtype=np.uint8), labels=rng.integers(0, 3, n))
    return path


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_a_timm_checkpoint_loads_and_exports_with_timms_own_preprocessing(arch, tmp_path):
    from compress.stages.export import export
    from compress.teachers.load import load_teacher

    d = save_timm(tmp_path / arch, arch)
    teacher = load_teacher(d)
    _, size = MODELS[arch]
    pp = teacher.info.preprocess
    assert teacher.info.kind == "timm" and teacher.info.labels == ["cat", "dog", "fox"]
    assert (pp.resize, pp.size, pp.crop, pp.crop_offset, pp.interpolation) == (
        "shortest_edge", [int(size / 0.875)], [size, size], "round", json.loads((d / "config.json").read_text())[
            "pretrained_cfg"]["interpolation"])
    art = export(d, tmp_path / "onnx")
    step = art.manifest.steps[0]
    assert step.metrics["parity"]["max_abs_diff"] <= 1e-4
    assert step.metrics["preprocess_agreement"]["max_abs_diff"] <= 1e-3  # ours against timm's own transform
    assert art.manifest.source.architecture == arch


@pytest.mark.parametrize("arch", ["mobilenetv3_small_050", "vit_tiny_patch16_224"])
def test_a_timm_model_goes_the_whole_chain(arch, tmp_path, fast_host):
    from compress.artifact import load_artifact
    from compress.stages.export import export
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    d = save_timm(tmp_path / arch, arch)
    data = images_npz(tmp_path / "images.npz")
    art = export(d, tmp_path / "onnx")
    q = quantize(art, tmp_path / "int8", QuantizeConfig.from_flat(calibration=str(data)))
    report = validate(load_artifact(tmp_path / "int8"), ValidateConfig.from_flat(data=str(data), cold_start=False,
                                                                       baseline=False, profile=fast_host))
    met = report.metrics
    assert q.manifest.precision == "int8" and met["metric_name"] == "accuracy" and met["eval_samples"] == 24
    assert met["teacher_metric"] is not None and "output_fidelity" in met  # against the timm model in PyTorch
    assert report.teacher["path"] == str(d)


def test_channel_pruning_takes_a_timm_model(tmp_path):
    from compress.stages.prune import prune
    from compress.stages.prune.config import PruneConfig

    d = save_timm(tmp_path / "m", "mobilenetv3_small_050")
    out = prune(d, tmp_path / "pruned", PruneConfig.from_flat(channels=0.25))
    assert (out.path / "model.pt2").is_file() and out.manifest.source.architecture == "mobilenetv3_small_050"
