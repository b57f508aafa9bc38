"""LiteRT files made elsewhere: ``tests/assets/tiny_cnn.tflite`` (a random 3-channel 16×16 CNN with 4 classes,
converted by litert-torch 0.10: test material) is adopted as a LiteRT artifact, run by LiteRT's interpreter and
validated; a .tflite is not converted to other formats."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("ai_edge_litert")

from tests.builders.cli import main_error

ASSET = Path(__file__).resolve().parents[1] / "assets" / "tiny_cnn.tflite"
LABELS = ["a", "b", "c", "d"]


@pytest.fixture()
def tflite(tmp_path) -> Path:
    f = tmp_path / "model.tflite"
    shutil.copy2(ASSET, f)
    (tmp_path / "model.yaml").write_text(yaml.safe_dump({
        "task": "image-classification", "labels": LABELS,
        "preprocess": {"size": [16, 16], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    return f


def test_a_tflite_file_is_adopted_and_validated_in_litert(tflite, tmp_path):
    from PIL import Image

    from compress.stages.export import export
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    art = export(tflite, tmp_path / "adopted")
    m = art.manifest
    assert (m.format, m.precision, m.model_file, m.labels) == ("litert", "fp32", "model.tflite", LABELS)
    assert m.inputs[0].shape == [1, 3, 16, 16] and m.steps[-1].metrics["parity"]["max_abs_diff"] == 0.0
    rng = np.random.default_rng(0)
    for c in LABELS:
        (tmp_path / "set" / c).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "set" / c / f"{k}.png")
    profile = tmp_path / "litert-here.yaml"
    profile.write_text(yaml.safe_dump({"name": "litert-here", "extends": "host", "runtime": {"name": "litert"},
                                       "measure": {"warmup": 2, "min_runs": 10, "min_duration_s": 0.05}}))
    report = validate(art, ValidateConfig.from_flat(profile=str(profile), data=str(tmp_path / "set"), cold_start=False))
    assert report.environment["runtime"]["runtime"] == "litert" and report.metrics["eval_samples"] == 8
    assert report.metrics["latency_ms"]["p50"] > 0


def test_the_interpreter_gives_the_files_logits_for_any_batch(tflite, tmp_path):
    from compress.artifact import load_artifact
    from compress.runtimes.base import RuntimeSettings, load_runtime
    from compress.stages.export import export

    rt = load_runtime(load_artifact(export(tflite, tmp_path / "a").path), settings=RuntimeSettings(threads=1))
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    out = rt.predict({rt.input_names[0]: x})
    one = np.concatenate([rt.predict({rt.input_names[0]: x[i:i + 1]}) for i in range(3)])
    assert out.shape == (3, 4) and np.allclose(out, one, atol=1e-5)
    assert rt.describe()["runtime"] == "litert"
    rt.close()


def test_a_tflite_is_not_converted(tflite, tmp_path, capsys):
    line = main_error(capsys, "export", tflite, "--format", "openvino", "--out", tmp_path / "x")
    assert "LiteRT model" in line and "adopted as it is" in line


TEXT_ASSET = ASSET.with_name("tiny_bert_cls.tflite")  # a random tiny BERT classifier converted by litert-torch 0.10
                                                      # (128 tokens; test material), its tokenizer and PyTorch logits


def test_a_text_tflite_is_adopted_with_its_inputs_named_in_model_yaml(tmp_path, capsys):
    import json

    from compress.runtimes.base import load_runtime
    from compress.stages.export import export

    expected = json.loads(TEXT_ASSET.with_name("tiny_bert_cls.expected.json").read_text())
    f = tmp_path / "model.tflite"
    shutil.copy2(TEXT_ASSET, f)
    shutil.copy2(TEXT_ASSET.with_name("tiny_bert_cls.tokenizer.json"), tmp_path / "tokenizer.json")
    desc = {"task": "text-classification", "labels": expected["labels"], "preprocess": {"kind": "text"},
            "max_length": 128}
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(desc))
    line = main_error(capsys, "export", f, "--out", tmp_path / "no")  # the converter's names: args_0, ...
    assert "serving_default_args_0" in line and "inputs:" in line and not (tmp_path / "no").exists()
    # named in the file's order (the converted module's: input_ids, token_type_ids, attention_mask); the order
    # a tokenizer returns them in (attention_mask second) gives other logits
    desc["inputs"] = {n: {"shape": [128], "dtype": "int32"} for n in expected["inputs"]}
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(desc, sort_keys=False))
    art = export(f, tmp_path / "adopted")
    assert [t.name for t in art.manifest.inputs] == expected["inputs"]
    rt = load_runtime(art)
    try:  # the tokenizer's tensors reach the right positions: PyTorch's logits
        np.testing.assert_allclose(rt.predict_text(expected["texts"]), expected["logits"], atol=2e-6)
    finally:
        rt.close()


def test_a_tflite_is_quantized_to_int8_by_ai_edge_quantizer(tflite, tmp_path, capsys):
    pytest.importorskip("ai_edge_quantizer")
    from PIL import Image

    from compress.stages.export import export
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    art = export(tflite, tmp_path / "adopted")
    images = tmp_path / "cal" / "any"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype("uint8")).save(images / f"{i}.png")
    for name, cfg in {"dynamic_wi8_afp32": QuantizeConfig(), "weight_only_wi8_afp32": QuantizeConfig.from_flat(weights_only=True),
                      "static_wi8_ai8": QuantizeConfig.from_flat(mode="static", calibration=str(tmp_path / "cal"))}.items():
        q = quantize(art, tmp_path / name, cfg)
        step = q.manifest.steps[-1]
        assert (q.manifest.format, q.manifest.precision) == ("litert", "int8") and step.config["recipe"] == name
        parity = step.metrics["parity_vs_input"]  # static INT8's inputs and outputs are INT8: fed and read through
        assert parity["n"] > 0 and parity["cosine_mean"] > 0.95, (name, parity)  # the file's scales
    assert step.config["calibration"]["samples"] == 6
    assert "needs calibration data" in main_error(capsys, "quantize", art.path, "--mode", "static", "--out",
                                                  tmp_path / "a")
    assert "INT8" in main_error(capsys, "quantize", art.path, "--precision", "int4", "--out", tmp_path / "b")
