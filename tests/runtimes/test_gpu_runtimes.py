"""GPU runtimes and profiles, checked where there is no GPU: facts, engine compatibility, provider
options, and one-line refusals when CUDA / TensorRT / a GPU provider is absent.

On a machine with CUDA the "absent" tests skip (they describe this CPU-only CI); the GPU paths
themselves are exercised on a GPU machine (see docs/reference/profiles.md, GPU profiles).
"""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from compress.artifact import Format, Manifest, Precision, load_artifact, write_manifest
from compress.cli import main
from compress.errors import ConfigError, MissingBackendError
from compress.profiles.load import check_profile_file, load_profile
from compress.runtimes.base import RUNTIMES, RuntimeSettings, runtime_class
from compress.runtimes.ort_backend import OrtBackend, provider_list, provider_name, provider_options
from compress.runtimes.tensorrt_backend import TensorRTBackend, engine_compatibility

GPU_PROFILES = {  # name -> (compute capability, runtime)
    "nvidia-t4": ("7.5", "tensorrt"),
    "nvidia-l4": ("8.9", "tensorrt"),
    "nvidia-a10g": ("8.6", "onnxruntime"),
    "nvidia-h100": ("9.0", "onnxruntime"),
    "jetson-orin-nano-gpu": ("8.7", "tensorrt"),
    "jetson-agx-orin": ("8.7", "tensorrt"),
}


def _cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


HAS_TRT = importlib.util.find_spec("tensorrt") is not None
no_cuda = pytest.mark.skipif(_cuda(), reason="this machine has CUDA: the no-GPU refusals do not apply")
no_trt = pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")


# -- profiles --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(GPU_PROFILES))
def test_gpu_profiles_load_with_gpu_facts(name):
    cap, runtime = GPU_PROFILES[name]
    p = load_profile(name)
    gpu = p.hardware.gpu
    assert gpu is not None and gpu.compute_capability == cap and gpu.capability == tuple(map(int, cap.split(".")))
    assert gpu.memory_mb >= 4096 and gpu.tensor_cores
    assert gpu.peak_int8_tops >= gpu.peak_fp16_tflops > 0 and gpu.memory_bandwidth_gbs > 0
    assert p.runtime.name == runtime
    if runtime == "onnxruntime":
        assert p.runtime.provider == "CUDAExecutionProvider" and p.runtime.options["allow_cpu_fallback"] is False
    else:
        assert p.runtime.provider.startswith("cuda")
    lat = p.budgets.latency_ms
    assert lat.p50 < lat.p95 < lat.p99 <= 15  # batch 1 x 64: a MiniLM on a GPU is a few ms at most
    assert p.measure.batch_size == 1 and p.measure.sequence_length == 64
    assert 45 <= p.budgets.max_model_size_mb  # an FP16 MiniLM-L6 (~45 MB) fits
    assert check_profile_file(p.source.startswith("builtin:") and _builtin_path(name)).name == name


def _builtin_path(name):
    from pathlib import Path

    return Path(__file__).resolve().parents[2] / "profiles" / f"{name}.yaml"


def test_jetson_orin_nano_gpu_extends_the_cpu_profile():
    cpu, gpu = load_profile("jetson-orin-nano"), load_profile("jetson-orin-nano-gpu")
    assert cpu.hardware.gpu is None and cpu.runtime.name == "onnxruntime"
    assert gpu.hardware.arch == cpu.hardware.arch and gpu.hardware.cores == cpu.hardware.cores
    assert gpu.hardware.identify == cpu.hardware.identify


def test_gpu_facts_forbid_unknown_keys(tmp_path):
    from compress.errors import ProfileError

    f = tmp_path / "bad.yaml"
    f.write_text("name: bad\nextends: nvidia-l4\nhardware:\n  gpu:\n    name: x\n    compute_capability: '8.9'\n"
                 "    memory_mb: 1\n    tflops: 3\n")
    with pytest.raises(ProfileError, match="tflops"):
        check_profile_file(f)


def test_tensorrt_is_registered():
    assert RUNTIMES["tensorrt"].endswith("TensorRTBackend")
    assert runtime_class("tensorrt") is TensorRTBackend and TensorRTBackend.formats == {Format.tensorrt}


# -- engine compatibility ----------------------------------------------------------------------------

TARGET = {"tensorrt_version": "10.3.0", "compute_capability": "8.6", "gpu_name": "NVIDIA A10G"}


@pytest.mark.parametrize("version, cap", [("10.3.0", (8, 6)), ("10.3.0.26", "8.6"), ("10.3.0.post1", [8, 6])])
def test_engine_compatibility_accepts_the_same_version_and_capability(version, cap):
    assert engine_compatibility(TARGET, version, cap) is None


@pytest.mark.parametrize("version, cap, gpu, expected", [
    ("10.4.0", (8, 6), None, "TensorRT 10.4.0 / 8.6"),
    ("10.3.0", (9, 0), "NVIDIA H100", "TensorRT 10.3.0 / 9.0 (NVIDIA H100)"),
    ("8.6.1", (7, 5), None, "TensorRT 8.6.1 / 7.5"),
    (None, None, None, "TensorRT not installed / no CUDA GPU"),
])
def test_engine_compatibility_refuses_each_mismatch(version, cap, gpu, expected):
    msg = engine_compatibility(TARGET, version, cap, gpu)
    assert msg and "\n" not in msg
    assert msg.startswith("engine built with TensorRT 10.3.0 for compute capability 8.6 (NVIDIA A10G)")
    assert f"this machine has {expected}" in msg
    assert "edgecompress export" in msg and "--format tensorrt" in msg


def test_engine_compatibility_refuses_a_target_without_facts():
    msg = engine_compatibility({"tensorrt_ready": True}, "10.3.0", (8, 6))
    assert "does not record tensorrt_version and compute_capability" in msg


# -- adapters without CUDA / TensorRT --------------------------------------------------------------

@no_cuda
@pytest.mark.parametrize("provider", ["cuda", "cuda:1"])
def test_torch_cuda_refused_in_one_line(provider):
    from compress.runtimes.torch_backend import TorchBackend

    with pytest.raises(ConfigError) as exc:
        TorchBackend.check_settings(RuntimeSettings(provider=provider))
    msg = str(exc.value)
    assert "\n" not in msg and "sees no CUDA GPU" in msg and "torch" in msg


def test_torch_dtype_options():
    from compress.runtimes.torch_backend import TorchBackend, torch_device, torch_dtype_name

    with pytest.raises(ConfigError, match="dtype=fp16 needs a CUDA device"):
        TorchBackend.check_settings(RuntimeSettings(options={"dtype": "fp16"}))
    TorchBackend.check_settings(RuntimeSettings(options={"dtype": "bf16"}))  # bf16 runs on CPU
    with pytest.raises(ConfigError, match="not one of fp32, fp16, bf16"):
        torch_dtype_name({"dtype": "int8"})
    assert torch_dtype_name({"dtype": "half"}) == "fp16" and torch_dtype_name({}) == "fp32"
    assert torch_device(None) == "cpu" and torch_device("cuda") == "cuda:0" and torch_device("CUDA:2") == "cuda:2"
    with pytest.raises(ConfigError, match="cannot run on provider"):
        torch_device("gpu")


def test_torch_bf16_on_cpu_runs_without_touching_the_callers_model(bert_classifier):
    import torch

    from compress.runtimes.torch_backend import TorchBackend
    from compress.teachers.load import load_teacher

    teacher = load_teacher(bert_classifier)
    b = TorchBackend.from_teacher(teacher, RuntimeSettings(options={"dtype": "bf16"}))
    out = b.predict_text(["a fine film", "a dull film"])
    assert out.shape[0] == 2 and out.dtype.name == "float32"
    assert next(teacher.model.parameters()).dtype is torch.float32  # the shared teacher stays FP32
    assert b.describe()["dtype"] == "bf16" and b.describe()["device"] == "cpu"
    b.synchronize()  # a no-op on CPU


@no_trt
def test_tensorrt_missing_is_one_line_naming_the_extra():
    with pytest.raises(MissingBackendError) as exc:
        TensorRTBackend.check_settings(RuntimeSettings(provider="cuda:0"))
    assert "pip install 'edgecompress[tensorrt]'" in str(exc.value) and "\n" not in str(exc.value)


def test_ort_provider_aliases_and_options():
    assert provider_name(None) == "CPUExecutionProvider" and provider_name("cuda") == "CUDAExecutionProvider"
    assert provider_name("TensorRT") == "TensorrtExecutionProvider"
    assert provider_name("CUDAExecutionProvider") == "CUDAExecutionProvider"
    opts = {"provider_options": {"trt_fp16_enable": True, "trt_engine_cache_enable": False, "device_id": 0,
                                 "trt_engine_cache_path": "/tmp/c"}}
    assert provider_options(opts) == {"trt_fp16_enable": "True", "trt_engine_cache_enable": "False",
                                      "device_id": "0", "trt_engine_cache_path": "/tmp/c"}
    assert provider_options({}) == {}
    with pytest.raises(ConfigError, match="must be a mapping"):
        provider_options({"provider_options": ["device_id=0"]})
    with pytest.raises(ConfigError, match="must be a string, number or boolean"):
        provider_options({"provider_options": {"device_id": None}})
    trt = provider_list("TensorrtExecutionProvider", opts)
    assert [p for p, _ in trt] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    assert trt[0][1]["trt_fp16_enable"] == "True"
    fallback = provider_list("CUDAExecutionProvider", {"allow_cpu_fallback": True})
    assert [p for p, _ in fallback] == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def _ort_has(provider: str) -> bool:
    import onnxruntime as ort

    return provider in ort.get_available_providers()


@pytest.mark.parametrize("provider", ["CUDAExecutionProvider", "TensorrtExecutionProvider"])
def test_ort_gpu_provider_absent_is_refused_unless_fallback_allowed(provider, onnx_artifact):
    if _ort_has(provider):
        pytest.skip(f"{provider} is available here")
    with pytest.raises(ConfigError) as exc:
        OrtBackend.check_settings(RuntimeSettings(provider=provider))
    msg = str(exc.value)
    assert "\n" not in msg and f"{provider} is not available here" in msg and "edgecompress[gpu]" in msg
    # opt-in fallback: the session runs on the CPU and says so
    b = OrtBackend(onnx_artifact, RuntimeSettings(provider=provider, options={"allow_cpu_fallback": True}))
    assert b.describe()["providers"] == ["CPUExecutionProvider"]
    assert b.predict_text(["a fine film"]).shape[0] == 1
    b.synchronize()


# -- validate with a GPU profile on a machine without one ------------------------------------------

@pytest.fixture
def _validate(capsys):
    """Run ``edgecompress -q validate ARGS`` through the console entry point; (exit code, stderr)."""

    def run(*args):
        with pytest.raises(SystemExit) as exc:
            main(["-q", "validate", *map(str, args)])
        return exc.value.code, capsys.readouterr().err

    return run


def _one_line_error(result) -> str:
    code, err = result
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


@no_cuda
@pytest.mark.parametrize("profile", ["nvidia-a10g", "nvidia-h100"])
def test_validate_onnx_on_an_ort_cuda_profile_stops_before_data(profile, onnx_artifact, tmp_path, _validate):
    if _ort_has("CUDAExecutionProvider"):
        pytest.skip("onnxruntime-gpu is installed")
    line = _one_line_error(_validate(onnx_artifact.path, "-p", profile, "-d", tmp_path / "never-read.tsv"))
    assert "CUDAExecutionProvider is not available here" in line


@pytest.mark.parametrize("profile", ["nvidia-t4", "nvidia-l4"])
def test_validate_onnx_on_a_tensorrt_profile_is_refused(profile, onnx_artifact, tmp_path, _validate):
    line = _one_line_error(_validate(onnx_artifact.path, "-p", profile, "-d", tmp_path / "never-read.tsv"))
    assert f"profile {profile} runs tensorrt, which cannot run onnx artifacts" in line


@pytest.fixture(scope="module")
def engine_stub(onnx_artifact, tmp_path_factory):
    """A tensorrt artifact: the ONNX artifact's tokenizer and manifest, format tensorrt, a dummy model.plan."""
    d = tmp_path_factory.mktemp("engine") / "bert-trt"
    shutil.copytree(onnx_artifact.path, d)
    for f in d.glob("*.onnx*"):
        f.unlink()
    (d / "model.plan").write_bytes(b"not a real engine")
    data = onnx_artifact.manifest.model_dump()
    data.update(format="tensorrt", precision="fp16", model_file="model.plan",
                target={**TARGET, "precision": "fp16"})
    write_manifest(d, Manifest.model_validate(data))
    art = load_artifact(d)
    assert art.format is Format.tensorrt and art.manifest.precision is Precision.fp16
    return art


@no_trt
@pytest.mark.parametrize("profile", ["nvidia-t4", "nvidia-l4", "jetson-agx-orin"])
def test_validate_engine_without_tensorrt_is_one_line(profile, engine_stub, tmp_path, _validate):
    line = _one_line_error(_validate(engine_stub.path, "-p", profile, "-d", tmp_path / "never-read.tsv"))
    assert "tensorrt is not installed" in line and "pip install 'edgecompress[tensorrt]'" in line


def test_validate_engine_on_a_cpu_profile_is_refused(engine_stub, tmp_path, _validate):
    line = _one_line_error(_validate(engine_stub.path, "-p", "cpu-x86-avx2", "-d", tmp_path / "x.tsv"))
    assert "cannot run tensorrt artifacts" in line


# -- on a CUDA machine: the torch runtime, validate and distill for real -----------------------------
# (skipped in CI, which has no GPU; run on a lent GPU, see docs/reference/profiles.md "Measured on a GPU")

needs_cuda = pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("dtype, compile_, atol", [("fp32", False, 1e-4), ("fp16", False, 2e-2),
                                                   ("bf16", False, 6e-2), ("fp32", True, 1e-3)])
def test_torch_cuda_matches_the_cpu_fp32_teacher(bert_classifier, dtype, compile_, atol):
    import numpy as np
    import torch

    from compress.runtimes.torch_backend import TorchBackend
    from compress.teachers.load import load_teacher

    teacher = load_teacher(bert_classifier)
    texts = ["a fine film", "a dull film with a long and tiresome second half", "fine"]
    cpu = TorchBackend.from_teacher(teacher).predict_text(texts)
    gpu = TorchBackend.from_teacher(teacher, RuntimeSettings(provider="cuda", options={"dtype": dtype,
                                                                                     "compile": compile_}))
    out = gpu.predict_text(texts)
    gpu.synchronize()
    assert out.dtype == np.float32 and out.shape == cpu.shape
    np.testing.assert_allclose(out, cpu, atol=atol, rtol=0)
    d = gpu.describe()
    assert d["device"] == "cuda:0" and d["dtype"] == dtype and d["gpu"] == torch.cuda.get_device_name(0)
    p = next(teacher.model.parameters())  # the caller's teacher stays on the CPU in FP32
    assert p.device.type == "cpu" and p.dtype is torch.float32


@needs_cuda
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_validate_a_teacher_on_a_torch_cuda_profile(bert_classifier, tmp_path, dtype):
    from conftest import write_tsv

    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    profile = tmp_path / "h100-torch.yaml"
    profile.write_text(
        "name: h100-torch\nextends: nvidia-h100\n"
        f"runtime: {{name: torch, provider: cuda, options: {{dtype: {dtype}}}}}\n"
        "measure: {warmup: 5, min_runs: 20, min_duration_s: 0.2}\n"
        "budgets: {min_accuracy_retention: 0.5, min_agreement: 0.5}\n")
    report = validate(bert_classifier, ValidateConfig.from_flat(profile=str(profile), data=str(write_tsv(tmp_path)),
                                                      cold_start=False))
    m = report.metrics
    assert report.environment["runtime"]["device"] == "cuda:0" and report.environment["runtime"]["dtype"] == dtype
    assert report.environment["measured_on"] == "local" and m["latency_ms"]["n"] >= 20
    assert m["agreement"] >= 0.9, m  # against the FP32 teacher on the CPU
    assert not any("UNVERIFIED" in w or "estimate" in w for w in report.warnings), report.warnings


@needs_cuda
@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_distill_runs_on_the_gpu(bert_classifier, tmp_path, precision):
    import torch
    from conftest import write_tsv

    from compress.artifact import load_artifact
    from compress.stages.distill import distill
    from compress.stages.distill.config import DistillConfig
    from compress.teachers.load import load_teacher

    data = write_tsv(tmp_path / "data")
    r = distill(bert_classifier, data, tmp_path / "student", DistillConfig.from_flat(layers=1, max_steps=6,
                mixed_precision=precision), eval_data=data)
    m = r.metrics
    assert m["steps"] == 6 and m["mixed_precision"] == precision
    art = load_artifact(tmp_path / "student")
    student = load_teacher(art.path)
    assert next(student.model.parameters()).device.type == "cpu"  # a plain checkpoint, loadable anywhere
    assert torch.cuda.max_memory_allocated() > 0
