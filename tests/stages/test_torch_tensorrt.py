"""``export --format tensorrt --via torch-tensorrt``.

What runs on the CPU is tested for real: capturing the model with ``torch.export`` over the min..max
shapes, saving and reloading the program, running it with numpy inputs at many shapes (agreeing with the
transformers model), the shape-range error, and every refusal. Torch-TensorRT's compile itself needs an
NVIDIA GPU, so one test injects a fake ``torch_tensorrt`` whose compile returns the program unchanged: it
checks the calls *we* make (input specs, FP16 autocast, timing cache) and the artifact we write, not
Torch-TensorRT.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
import types

import numpy as np
import pytest

from compress.errors import ArtifactError, ConfigError, MissingBackendError
from compress.runtimes.torch_tensorrt_program import ProgramRunner
from compress.stages.export import export
from compress.stages.export.config import ExportConfig
from compress.stages.export.tensorrt_shapes import resolve_shapes
from compress.stages.export.torch_tensorrt import PROGRAM, capture, check_request, export_torch_tensorrt

pytestmark = pytest.mark.slow


def _teacher(path):
    from compress.teachers.load import load_teacher

    return load_teacher(path)


def _saved(teacher, shapes, path):
    import torch

    program, examples, dims = capture(teacher.model, teacher.input_names, shapes)
    torch.export.save(program, str(path))
    rec = {k: {n: list(v) for n in teacher.input_names} for k, v in shapes.items()}
    return ProgramRunner(path, "cpu", rec), dims


def _reference(teacher, batch):
    import torch

    with torch.inference_mode():
        out = teacher.model(**{k: torch.from_numpy(v) for k, v in batch.items()})
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).numpy()


@pytest.mark.parametrize("fixture", ["bert_classifier", "distilbert_classifier", "bert_encoder"])
def test_captured_program_matches_the_model_at_every_shape_in_range(fixture, request, tmp_path, sample_texts):
    teacher = _teacher(request.getfixturevalue(fixture))
    shapes = {"min": (1, 1), "opt": (1, 16), "max": (8, 64)}
    runner, dims = _saved(teacher, shapes, tmp_path / PROGRAM)
    assert set(dims) == set(teacher.input_names)  # one shared batch/sequence Dim per input
    enc = teacher.encoder()
    for n, pad in ((1, None), (3, None), (8, 64), (2, 1)):
        batch = enc.encode(sample_texts[:n], pad_to=None if pad == 1 else pad)
        if pad == 1:  # the smallest shape: one token
            batch = {k: v[:, :1] for k, v in batch.items()}
        np.testing.assert_allclose(runner.run(batch), _reference(teacher, batch), atol=1e-5)
    with pytest.raises(ConfigError, match=r"outside the program's shape range \(min \[1, 1\], max \[8, 64\]\)"):
        runner.run(enc.encode(sample_texts[:9]))


def test_static_shape_captures_without_dims(bert_classifier, tmp_path, sample_texts):
    teacher = _teacher(bert_classifier)
    shapes = resolve_shapes(ExportConfig.from_flat(format="tensorrt", shape="4x32"), 128)
    runner, dims = _saved(teacher, shapes, tmp_path / PROGRAM)
    assert dims is None
    batch = teacher.encoder().encode(sample_texts[:4], pad_to=32)
    np.testing.assert_allclose(runner.run(batch), _reference(teacher, batch), atol=1e-5)
    with pytest.raises(ConfigError, match="outside"):
        runner.run({k: v[:, :16] for k, v in batch.items()})


def test_requests_this_path_does_not_serve_are_refused():
    with pytest.raises(ConfigError, match="--dry-run writes TensorRT-ready ONNX"):
        check_request(ExportConfig.from_flat(format="tensorrt", via="torch-tensorrt", dry_run=True))
    with pytest.raises(ConfigError, match="--via onnx --precision int8"):
        check_request(ExportConfig.from_flat(format="tensorrt", via="torch-tensorrt", precision="int8"))
    with pytest.raises(ConfigError, match="ModelOpt"):
        check_request(ExportConfig.from_flat(format="tensorrt", via="torch-tensorrt", calibration="x.tsv"))


def test_missing_torch_tensorrt_names_the_matching_release(bert_classifier, tmp_path):
    if importlib.util.find_spec("torch_tensorrt") is not None:
        pytest.skip("torch_tensorrt is installed")
    import torch

    with pytest.raises(MissingBackendError) as e:
        export(bert_classifier, tmp_path / "x", ExportConfig.from_flat(format="tensorrt", via="torch-tensorrt"))
    want = torch.__version__.split("+")[0]
    assert f'pip install "torch-tensorrt=={want}"' in e.value.hint and "--via onnx" in e.value.hint
    assert not (tmp_path / "x").exists()


def test_no_gpu_is_one_line(monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    import compress._optional as opt

    monkeypatch.setattr(opt, "is_available", lambda m: True)
    with pytest.raises(ConfigError, match="--via torch-tensorrt needs CUDA device cuda:0.*sees no CUDA GPU"):
        check_request(ExportConfig.from_flat(format="tensorrt", via="torch-tensorrt"))


def test_onnx_source_is_refused(onnx_artifact, tmp_path, monkeypatch):
    import compress.stages.export.torch_tensorrt as ttrt

    monkeypatch.setattr(ttrt, "check_request", lambda config, device: None)
    with pytest.raises(ArtifactError, match="torch-tensorrt takes pytorch fp32"):
        export(onnx_artifact.path, tmp_path / "x", ExportConfig.from_flat(format="tensorrt", via="torch-tensorrt"))
    assert not (tmp_path / "x").exists()


def test_cli_missing_torch_tensorrt_is_one_line_exit_2(bert_classifier, tmp_path):
    if importlib.util.find_spec("torch_tensorrt") is not None:
        pytest.skip("torch_tensorrt is installed")
    out = tmp_path / "x"
    proc = subprocess.run(
        [sys.executable, "-m", "compress", "export", str(bert_classifier), "--format", "tensorrt",
         "--via", "torch-tensorrt", "--out", str(out)], capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: torch_tensorrt is not installed (needed for --via torch-tensorrt); install it with: "
                           'pip install "torch-tensorrt==')
    assert not out.exists()


# --- test double: checks OUR calls into Torch-TensorRT, not Torch-TensorRT --------------------------------


def _fake_modules(calls: list):
    import torch

    ttrt = types.ModuleType("torch_tensorrt")
    ttrt.__spec__ = importlib.machinery.ModuleSpec("torch_tensorrt", None)
    ttrt.__version__ = "2.99.0-fake"

    class Input:
        def __init__(self, min_shape, opt_shape, max_shape, dtype, name):
            self.shapes, self.dtype, self.name = (min_shape, opt_shape, max_shape), dtype, name

    class Compiled:  # what a compile that converted nothing would give: the program itself
        def __init__(self, program):
            self.program = program

    def compile(program, *, kwarg_inputs, arg_inputs, device, timing_cache_path, min_block_size,
                enable_autocast=False, autocast_low_precision_type=None):
        calls.append(("compile", {n: (i.shapes, i.dtype) for n, i in kwarg_inputs.items()}, enable_autocast,
                      autocast_low_precision_type, min_block_size))
        with open(timing_cache_path, "wb") as f:
            f.write(b"timing-cache")
        return Compiled(program)

    def save(module, path, *, output_format, kwarg_inputs, retrace):
        calls.append(("save", output_format, sorted(kwarg_inputs), retrace))
        torch.export.save(module.program, path)

    ttrt.Input, ttrt.save = Input, save
    ttrt.dynamo = types.SimpleNamespace(compile=compile)
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = "10.99.0-fake"
    return ttrt, trt


def test_fake_torch_tensorrt_build_records_our_calls(bert_classifier, tmp_path, monkeypatch, sample_texts):
    import torch

    import compress.stages.export.torch_tensorrt as mod

    calls: list = []
    ttrt, trt = _fake_modules(calls)
    monkeypatch.setitem(sys.modules, "torch_tensorrt", ttrt)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(mod, "_check_device", lambda device: None)  # no GPU here: compile on the CPU
    cfg = ExportConfig.from_flat(format="tensorrt", via="torch-tensorrt", opt_shape="4x32", max_shape="8x64")
    art = export_torch_tensorrt(bert_classifier, tmp_path / "prog", cfg, device="cpu")

    (compile_call,) = [c for c in calls if c[0] == "compile"]
    specs = compile_call[1]
    assert set(specs) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(s == (((1, 1), (4, 32), (8, 64)), torch.int64) for s in specs.values())
    assert compile_call[2:4] == (True, torch.float16)  # FP16 by autocast on Torch-TensorRT 2.10+
    assert ("save", "exported_program", ["attention_mask", "input_ids", "token_type_ids"], False) in calls

    assert art.format == "tensorrt" and art.precision == "fp16" and art.manifest.model_file == PROGRAM
    assert (art.path / "timing.cache").read_bytes() == b"timing-cache" and (art.path / "tokenizer.json").is_file()
    t = art.manifest.target
    assert t["builder"] == "torch-tensorrt" and t["tensorrt_version"] == "10.99.0-fake"
    assert t["torch_tensorrt_version"] == "2.99.0-fake" and t["shapes"]["max"]["input_ids"] == [8, 64]
    parity = art.manifest.steps[-1].metrics["parity"]
    assert parity["argmax_agreement"] == 1.0 and parity["max_abs_diff"] < 1e-5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind

    # the written program runs at a shape it was not captured at, and reproduces the teacher
    teacher = _teacher(bert_classifier)
    runner = ProgramRunner(art.model_path, "cpu", t["shapes"])
    batch = teacher.encoder().encode(sample_texts[:7])
    np.testing.assert_allclose(runner.run(batch), _reference(teacher, batch), atol=1e-5)

    with pytest.raises(Exception, match="already exists"):
        export_torch_tensorrt(bert_classifier, tmp_path / "prog", cfg, device="cpu")


def test_fake_build_static_shape_encoder(bert_encoder, tmp_path, monkeypatch):
    """A static --shape on a sentence-transformers encoder: parity in full batches of 4, on pooled embeddings."""
    import compress.stages.export.torch_tensorrt as mod

    calls: list = []
    ttrt, trt = _fake_modules(calls)
    monkeypatch.setitem(sys.modules, "torch_tensorrt", ttrt)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(mod, "_check_device", lambda device: None)
    art = export_torch_tensorrt(bert_encoder, tmp_path / "enc", ExportConfig.from_flat(
        format="tensorrt", via="torch-tensorrt", shape="4x32", parity_samples=10), device="cpu")
    assert art.manifest.target["static"] is True and art.manifest.inputs[0].shape == [4, 32]
    parity = art.manifest.steps[-1].metrics["parity"]
    assert parity["n"] == 16 and parity.get("argmax_agreement") is None and parity["cosine_min"] > 0.9999
    assert art.manifest.postprocess.pooling == "mean"
