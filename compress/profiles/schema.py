"""The device-profile schema (pydantic) and the constants it and its readers share."""

from __future__ import annotations

import logging
import re
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

log = logging.getLogger("compress.profiles.load")  # one logger for everything about profiles



NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"  # "_" only inside, as in x86_64 (a leading "_" marks abstract parents)
RUNTIME_NAMES: tuple[str, ...] = ("onnxruntime", "openvino", "tensorrt", "torch", "executorch", "litert", "coreml",
                                  "llamacpp")
HOST = "host"
HOST_BUDGETS = "_host"  # profiles/_host.yaml: what `host` judges (absolute latency belongs to named devices)
_SUFFIXES = (".yaml", ".yml")
_MAX_EXTENDS_DEPTH = 32
_LIST_HINT = "see `edgecompress profiles list`"

# Spellings accepted for hardware.arch, and what platform.machine() returns.
_ARCH_ALIASES = {
    "x86_64": "x86_64", "amd64": "x86_64", "x64": "x86_64", "x86-64": "x86_64",
    "arm64": "arm64", "aarch64": "arm64", "armv8": "arm64", "armv8-a": "arm64",
}
# Linux /proc/cpuinfo spellings on Arm -> the names profiles use.
_SIMD_ALIASES = {"asimd": "neon", "asimddp": "dotprod", "asimdhp": "fp16"}
# SIMD flags host detection keeps (in this order): the ones inference runtimes dispatch on.
_X86_KEEP = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "avx_vnni",
)
_ARM_KEEP = ("neon", "dotprod", "fp16", "i8mm", "bf16", "sve", "sve2")
_ARM_ONLY = frozenset(_ARM_KEEP) | frozenset(_SIMD_ALIASES)
_X86_PREFIXES = ("sse", "avx", "amx", "fma", "f16c")

_CPUINFO = Path("/proc/cpuinfo")
_DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
_CGROUP = Path("/sys/fs/cgroup")


# --------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------


class Arch(StrEnum):
    """Instruction-set architecture of the device's CPU."""

    x86_64 = "x86_64"
    arm64 = "arm64"


def _is_x86_flag(flag: str) -> bool:
    return flag.startswith(_X86_PREFIXES)


class GpuFacts(BaseModel):
    """Facts about an NVIDIA GPU the profile's runtime uses (CUDA / TensorRT); the CPU facts then describe the host."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="GPU model name as the driver reports it, e.g. 'NVIDIA L4', 'Tesla T4'.")
    compute_capability: str = Field(
        pattern=r"^[0-9]+\.[0-9]+$",
        description="CUDA compute capability 'major.minor', e.g. '7.5' (Turing), '8.6'/'8.7' (Ampere), "
        "'8.9' (Ada), '9.0' (Hopper). A TensorRT engine runs only on the capability it was built for.",
    )
    memory_mb: int = Field(gt=0, description="GPU memory in MB (shared with the CPU on Jetson modules).")
    peak_fp16_tflops: float | None = Field(
        None, gt=0, description="Peak dense FP16 tensor-core throughput, TFLOP/s (vendor datasheet, no sparsity)."
    )
    peak_int8_tops: float | None = Field(
        None, gt=0, description="Peak dense INT8 tensor-core throughput, TOP/s (vendor datasheet, no sparsity)."
    )
    memory_bandwidth_gbs: float | None = Field(None, gt=0, description="GPU memory bandwidth, GB/s (datasheet).")
    tensor_cores: bool = Field(True, description="The GPU has tensor cores (FP16/INT8 matrix units).")

    @property
    def capability(self) -> tuple[int, int]:
        """``compute_capability`` as a (major, minor) tuple."""
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)


class HardwareFacts(BaseModel):
    """Facts about the device: what the runtime can use and what the budgets assume."""

    model_config = ConfigDict(extra="forbid")

    arch: Arch = Field(description="CPU architecture: x86_64 or arm64 (aliases amd64, aarch64 accepted).")
    cores: int = Field(gt=0, description="CPU cores available to the model (an integer > 0).")
    simd: list[str] = Field(
        default_factory=list,
        description=(
            "SIMD extensions, Linux /proc/cpuinfo spelling, e.g. [avx2, fma], [avx512f, avx512_vnni], "
            "[neon, dotprod] (asimd/asimddp are accepted for neon/dotprod)."
        ),
    )
    vnni: bool = Field(
        False,
        description="INT8 dot-product instructions (VNNI) present; defaults to true when a simd flag contains 'vnni'.",
    )
    memory_mb: int = Field(gt=0, description="Memory available to the process, in MB (an integer > 0).")
    cpu_model: str | None = Field(None, description="CPU model name, informational (e.g. 'AMD EPYC 7B13').")
    peak_gflops_fp32: float | None = Field(
        None, gt=0, description="Peak FP32 compute of the cores the model uses, GFLOP/s (roofline estimates)."
    )
    peak_gops_int8: float | None = Field(
        None, gt=0, description="Peak INT8 compute, GOP/s (roofline estimates of INT8 artifacts)."
    )
    memory_bandwidth_gbs: float | None = Field(
        None, gt=0, description="Sustained memory bandwidth, GB/s (roofline estimates; a generator's decode bound)."
    )
    memory_bandwidth_peak_gbs: float | None = Field(
        None, gt=0,
        description="Theoretical DRAM bandwidth, GB/s, from the vendor's spec sheet (transfer rate x bus width), "
        "informational: estimates use the sustained memory_bandwidth_gbs.",
    )
    bandwidth_source: str | None = Field(
        None, description="Where the bandwidth figures come from (spec sheet, a measured copy, an assumption).",
    )
    clock_ghz: float | None = Field(
        None, gt=0,
        description="Sustained core clock in GHz (the peaks' derivation; scales per-operator overheads in estimates).",
    )
    gpu: GpuFacts | None = Field(
        None,
        description="The NVIDIA GPU the runtime uses (GPU profiles only); the other hardware facts then describe the host CPU.",
    )
    emulated: bool = Field(
        False,
        description="The device is an emulator (e.g. qemu-system-aarch64 without KVM): its accuracy and outputs are "
        "the real instruction set's, its timings are the emulator's, so every latency, speedup and cold-start "
        "budget is UNVERIFIED however it measures.",
    )
    identify: str | None = Field(
        None,
        description=(
            "Regex (Python re.search, case-insensitive) matched against this machine's model string "
            "(serverless platform, /proc/device-tree/model, DMI product name, CPU model name) to tell whether "
            "the command runs on this device; null: a class of CPUs that any machine of the same arch measures."
        ),
    )

    @field_validator("identify")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("empty regex; use null for a class of CPUs")
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @field_validator("arch", mode="before")
    @classmethod
    def _arch_alias(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _ARCH_ALIASES.get(value.strip().lower(), value)
        return value

    @field_validator("simd", mode="before")
    @classmethod
    def _normalise_simd(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        out: list[Any] = []
        for flag in value:
            if isinstance(flag, str):
                flag = flag.strip().lower()
                flag = _SIMD_ALIASES.get(flag, flag)
                if not flag:
                    raise ValueError("empty SIMD flag")
            if flag not in out:
                out.append(flag)
        return out

    @model_validator(mode="before")
    @classmethod
    def _derive_vnni(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("vnni") is None and isinstance(data.get("simd"), list):
            data = {**data, "vnni": any(isinstance(f, str) and "vnni" in f.lower() for f in data["simd"])}
        return data

    @model_validator(mode="after")
    def _flags_match_arch(self) -> HardwareFacts:
        if self.arch is Arch.arm64:
            wrong = [f for f in self.simd if _is_x86_flag(f)]
        else:
            wrong = [f for f in self.simd if f in _ARM_ONLY]
        if wrong:
            raise ValueError(f"simd flag(s) {', '.join(wrong)} do not exist on arch {self.arch.value}")
        return self


class RuntimeConfig(BaseModel):
    """Which inference runtime runs the artifact on the device, and how."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        "onnxruntime", description=f"Inference runtime, one of: {', '.join(RUNTIME_NAMES)}."
    )
    provider: str | None = Field(
        None,
        description="ONNX Runtime execution provider (e.g. CPUExecutionProvider, CUDAExecutionProvider), "
        "OpenVINO device (e.g. CPU), or torch/TensorRT device (cpu, cuda, cuda:N).",
    )
    threads: int | None = Field(
        None, gt=0, description="Intra-op threads (an integer > 0); null uses one per core of the profiled device (hardware.cores)."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Runtime-specific options, passed through to the runtime."
    )

    @field_validator("name")
    @classmethod
    def _known_runtime(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in RUNTIME_NAMES:
            raise ValueError(f"unknown runtime {value!r}; valid runtimes: {', '.join(RUNTIME_NAMES)}")
        return value


class SpeedupBaseline(StrEnum):
    """What ``min_speedup`` divides the artifact's p50 into."""

    runtime = "runtime"  # the teacher's FP32 export on the artifact's runtime, with the same settings
    pytorch = "pytorch"  # the teacher checkpoint in PyTorch FP32, one thread per core: what the artifact replaces


class MeasureConfig(BaseModel):
    """How latency and accuracy are measured on the device."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(1, gt=0, description="Batch size for latency runs (an integer > 0).")
    sequence_length: int = Field(64, gt=0, description="Tokens per sample for latency runs (an integer > 0).")
    warmup: int = Field(10, ge=0, description="Untimed runs before timing starts (an integer >= 0).")
    min_runs: int = Field(100, gt=0, description="Timed runs at least (an integer > 0).")
    min_duration_s: float = Field(5.0, ge=0, description="Keep timing at least this many seconds (>= 0).")
    max_runs: int = Field(10000, gt=0, description="Timed runs at most (an integer >= min_runs).")
    eval_batch_size: int = Field(32, gt=0, description="Batch size for accuracy evaluation (an integer > 0).")
    speedup_baseline: SpeedupBaseline = Field(
        SpeedupBaseline.runtime,
        description="The FP32 teacher that speedup is measured against, timed in alternating rounds with the "
                    "artifact: runtime (its ONNX/OpenVINO export on the artifact's runtime and threads) or pytorch "
                    "(the checkpoint in PyTorch, one thread per core of the device: what the artifact replaces; "
                    "measured on this machine only, neither estimated nor sent to a remote device).",
    )

    @model_validator(mode="after")
    def _runs_ordered(self) -> MeasureConfig:
        if self.max_runs < self.min_runs:
            raise ValueError(f"max_runs ({self.max_runs}) must be >= min_runs ({self.min_runs})")
        return self


class LatencyBudget(BaseModel):
    """Latency percentiles the artifact must stay under, in milliseconds per batch."""

    model_config = ConfigDict(extra="forbid")

    p50: float | None = Field(None, gt=0, description="Median latency budget in ms (a number > 0, or null).")
    p95: float | None = Field(None, gt=0, description="95th-percentile latency budget in ms (a number > 0, or null).")
    p99: float | None = Field(None, gt=0, description="99th-percentile latency budget in ms (a number > 0, or null).")

    @model_validator(mode="after")
    def _percentiles_ordered(self) -> LatencyBudget:
        given = [(k, v) for k, v in (("p50", self.p50), ("p95", self.p95), ("p99", self.p99)) if v is not None]
        for (lo_name, lo), (hi_name, hi) in zip(given, given[1:]):
            if lo > hi:
                raise ValueError(f"{lo_name} ({lo:g} ms) must be <= {hi_name} ({hi:g} ms)")
        return self


class Budgets(BaseModel):
    """Pass/fail limits for an artifact on the device; null means not checked."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: LatencyBudget = Field(
        default_factory=LatencyBudget, description="Latency percentile budgets in ms (p50, p95, p99)."
    )
    min_throughput: float | None = Field(
        None, gt=0, description="Minimum throughput in samples/s at the measure batch size (a number > 0)."
    )
    max_model_size_mb: float | None = Field(
        None, gt=0, description="Maximum size of the model file(s) in MB (a number > 0)."
    )
    max_peak_memory_mb: float | None = Field(
        None, gt=0,
        description="Maximum peak resident memory in MB (MiB) of a fresh process that loads the model and runs one inference (a number > 0).",
    )
    min_accuracy_retention: float | None = Field(
        0.99, gt=0, le=1.5,
        description="Minimum artifact accuracy / teacher accuracy (a number in (0, 1.5], e.g. 0.99).",
    )
    min_agreement: float | None = Field(
        0.97, ge=0, le=1,
        description="Minimum share of samples where artifact and teacher predict the same label (0..1).",
    )
    min_output_cosine: float | None = Field(
        None, ge=-1, le=1,
        description="Minimum mean cosine between the artifact's and the teacher's primary output per eval sample "
                    "(-1..1; any task, and the accuracy measure of a generic model).",
    )
    max_mae_increase: float | None = Field(
        None, ge=0, description="Regression: largest relative increase of the mean absolute error over the "
                                "teacher's (0.02 = 2% more error).",
    )
    min_output_snr_db: float | None = Field(
        None, description="Minimum signal-to-noise ratio in dB of the artifact's primary output against the "
                          "teacher's (any task).",
    )
    min_speedup: float | None = Field(
        1.0, gt=0,
        description="Minimum teacher FP32 p50 / artifact p50, the teacher on the same runtime or in PyTorch "
                    "(measure.speedup_baseline; a number > 0; 1.0 = no slower).",
    )
    max_cold_start_ms: float | None = Field(
        None, gt=0,
        description="Maximum cold start in ms: process launch to first result (imports, session, first inference).",
    )
    min_decode_tokens_per_s: float | None = Field(
        None, gt=0, description="Text generators: minimum decode speed in tokens/s (batch 1; 1000 / the p50 of a "
                                "generated token's step, timed over validate's --new-tokens).",
    )
    max_time_to_first_token_ms: float | None = Field(
        None, gt=0, description="Text generators: maximum time to first token in ms (p50 of the prefill of "
                                "validate's --prompt-tokens prompt, batch 1).",
    )
    max_perplexity_increase: float | None = Field(
        None, ge=0, description="Text generators: largest relative perplexity increase over the teacher's on "
                                "validate's --data text (0.05 = 5% higher; llama-perplexity's windows).",
    )
    min_top1_agreement: float | None = Field(
        None, ge=0, le=1, description="Text generators: minimum share of scored positions whose most likely next "
                                      "token is the teacher's (0..1).",
    )
    max_kl: float | None = Field(
        None, ge=0, description="Text generators: largest mean KL(teacher || artifact) of the next-token "
                                "distributions over validate's --data windows, in nats.",
    )
    max_package_zipped_mb: float | None = Field(
        None, gt=0, description="Serverless: maximum zipped size of the deployable bundle in MB (MiB)."
    )
    max_package_unzipped_mb: float | None = Field(
        None, gt=0, description="Serverless: maximum unzipped size of the bundle with its dependencies in MB (MiB)."
    )


class MemoryTier(BaseModel):
    """One row of a serverless platform's memory → vCPU mapping."""

    model_config = ConfigDict(extra="forbid")

    memory_mb: int = Field(gt=0, description="Configured function memory in MB (an integer > 0).")
    vcpus: float = Field(gt=0, description="vCPUs the platform gives a function with this much memory.")


class ServerlessLimits(BaseModel):
    """A serverless platform's deployment limits and the function configuration to measure."""

    model_config = ConfigDict(extra="forbid")

    platform: str = Field(description="Platform name, e.g. aws-lambda, gcp-cloud-run.")
    python_version: str = Field("3.12", description="Python of the function runtime, e.g. 3.12.")
    pip_platforms: list[str] = Field(
        default_factory=list,
        description="pip --platform tags for the target's wheels, e.g. [manylinux2014_aarch64, manylinux_2_28_aarch64].",
    )
    max_zipped_mb: float | None = Field(None, gt=0, description="Direct-upload zip limit in MB (MiB).")
    max_unzipped_mb: float | None = Field(None, gt=0, description="Unzipped size limit incl. layers/deps in MB (MiB).")
    memory_mb: int = Field(gt=0, description="Function memory to measure cold start under, MB.")
    min_memory_mb: int | None = Field(None, gt=0, description="Smallest memory the platform allows a function, MB.")
    max_memory_mb: int | None = Field(None, gt=0, description="Largest memory the platform allows a function, MB.")
    memory_to_vcpu: list[MemoryTier] = Field(
        default_factory=list, description="Memory → vCPU mapping of the platform, ascending by memory."
    )
    handler: str = Field("handler.handler", description="Entry point written into the bundle (module.function).")

    def vcpus_for(self, memory_mb: int) -> float | None:
        """vCPUs the platform allots at ``memory_mb`` (the tier at or below it); None without a mapping."""
        tiers = sorted(self.memory_to_vcpu, key=lambda t: t.memory_mb)
        chosen = None
        for t in tiers:
            if t.memory_mb <= memory_mb:
                chosen = t
        return (chosen or (tiers[0] if tiers else None)).vcpus if tiers else None


class DeviceProfile(BaseModel):
    """A target device: hardware facts, runtime, measurement settings and budgets."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=NAME_PATTERN,
        description="Profile name: lowercase letters, digits, hyphens and underscores, starting with a letter or digit (e.g. raspberry-pi-5, aws-lambda-x86_64).",
    )
    description: str = Field("", description="One line describing the device.")
    extends: str | None = Field(
        None,
        description="Parent profile: a built-in name, 'host', or a path relative to this file (resolved away on load).",
    )
    hardware: HardwareFacts = Field(description="Facts about the device's CPU and memory.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="The inference runtime and its settings.")
    measure: MeasureConfig = Field(default_factory=MeasureConfig, description="How to measure latency and accuracy.")
    budgets: Budgets = Field(default_factory=Budgets, description="Pass/fail limits for an artifact.")
    generator_budgets: Budgets | None = Field(
        None, description="A text generator's (task text-generation) budgets in place of those of budgets: with the "
                          "same names: only the keys written here replace them (null clears one), so a profile "
                          "calibrated for a small classifier judges a generator by limits of its own class. A "
                          "budget a profile writes under budgets: holds for generators too over its parents' "
                          "generator_budgets (not over its own).")
    serverless: ServerlessLimits | None = Field(
        None, description="Serverless platform limits and function configuration (serverless profiles only)."
    )
    source: str | None = Field(
        None, description="Where the profile was loaded from: 'builtin:NAME', a file path, or 'detected'."
    )

    def generator_limits(self) -> Budgets:
        """The budgets a text generator is judged by: ``budgets`` with what ``generator_budgets`` writes in their
        place (its keys given, nested ``latency_ms`` included)."""
        if self.generator_budgets is None:
            return self.budgets
        given = self.generator_budgets.model_fields_set
        return self.budgets.model_copy(update={k: getattr(self.generator_budgets, k) for k in given})

    @model_validator(mode="after")
    def _threads_vs_cores(self) -> DeviceProfile:
        if self.runtime.threads is not None and self.runtime.threads > self.hardware.cores:
            log.warning(
                "profile %s: runtime.threads=%d exceeds hardware.cores=%d; oversubscribed threads usually slow inference down",
                self.name, self.runtime.threads, self.hardware.cores,
            )
        return self
