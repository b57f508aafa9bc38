"""Device profiles: what a target device is, how to measure on it, and the budgets an artifact must meet.

A profile is YAML data validated by :class:`DeviceProfile`. Built-in profiles ship as package data
(``profiles/*.yaml`` in the repository, installed as ``compress.builtin_profiles``); users may pass
any file path, or ``host`` for a profile detected from the machine running the command.

A file may name a parent in ``extends:`` (a built-in name, ``host``, or a path relative to the file);
parents are resolved recursively and deep-merged (mappings merge key by key, the child wins; lists
and scalars are replaced). ``name`` is never inherited. Files whose name starts with ``_`` are
abstract parents: they may be extended but are not profiles themselves.

Every problem raises :class:`~compress.errors.ProfileError` with a one-line message naming the file
and field path, e.g. ``my.yaml: budgets -> latency_ms -> p95: Input should be greater than 0``.
"""

from __future__ import annotations

import copy
import difflib
import logging
import math
import os
import platform
import re
import types
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from compress.errors import ProfileError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

log = logging.getLogger(__name__)

__all__ = [
    "Arch",
    "HardwareFacts",
    "GpuFacts",
    "RuntimeConfig",
    "MeasureConfig",
    "LatencyBudget",
    "Budgets",
    "MemoryTier",
    "ServerlessLimits",
    "DeviceProfile",
    "RUNTIME_NAMES",
    "builtin_profile_names",
    "load_profile",
    "detect_host",
    "check_profile_file",
    "list_profiles",
    "closest_builtin",
    "DeviceMatch",
    "match_device",
    "machine_model",
    "host_arch",
    "derive_peaks",
    "flops_per_cycle",
]

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"  # "_" only inside, as in x86_64 (a leading "_" marks abstract parents)
RUNTIME_NAMES: tuple[str, ...] = ("onnxruntime", "openvino", "tensorrt", "torch")
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
        None, gt=0, description="Sustained memory bandwidth, GB/s (roofline estimates)."
    )
    clock_ghz: float | None = Field(
        None, gt=0,
        description="Sustained core clock in GHz (the peaks' derivation; scales per-operator overheads in estimates).",
    )
    gpu: GpuFacts | None = Field(
        None,
        description="The NVIDIA GPU the runtime uses (GPU profiles only); the other hardware facts then describe the host CPU.",
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
    min_speedup: float | None = Field(
        1.0, gt=0,
        description="Minimum teacher FP32 p50 / artifact p50 on the same runtime (a number > 0; 1.0 = no slower).",
    )
    max_cold_start_ms: float | None = Field(
        None, gt=0,
        description="Maximum cold start in ms: process launch to first result (imports, session, first inference).",
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
    serverless: ServerlessLimits | None = Field(
        None, description="Serverless platform limits and function configuration (serverless profiles only)."
    )
    source: str | None = Field(
        None, description="Where the profile was loaded from: 'builtin:NAME', a file path, or 'detected'."
    )

    @model_validator(mode="after")
    def _threads_vs_cores(self) -> DeviceProfile:
        if self.runtime.threads is not None and self.runtime.threads > self.hardware.cores:
            log.warning(
                "profile %s: runtime.threads=%d exceeds hardware.cores=%d; oversubscribed threads usually slow inference down",
                self.name, self.runtime.threads, self.hardware.cores,
            )
        return self


# --------------------------------------------------------------------------------------------------
# Built-ins
# --------------------------------------------------------------------------------------------------


def _builtin_dir() -> Traversable:
    """The folder of built-in YAML files: package data when installed, ``profiles/`` in a source tree."""
    try:
        return resources.files("compress.builtin_profiles")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "profiles"


def _builtin_files(include_abstract: bool = False) -> dict[str, Traversable]:
    out: dict[str, Traversable] = {}
    for entry in _builtin_dir().iterdir():
        if not entry.name.endswith(_SUFFIXES) or entry.name.startswith("."):
            continue
        stem = entry.name.rsplit(".", 1)[0]
        if stem.startswith("_") and not include_abstract:
            continue
        out[stem] = entry
    return out


def builtin_profile_names() -> list[str]:
    """Names of the built-in profiles, sorted (abstract ``_`` parents excluded)."""
    return sorted(_builtin_files())


def _suggest(name: str, choices: list[str]) -> str | None:
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return match[0] if match else None


def _unknown_name_hint(name: str) -> str:
    known = [*builtin_profile_names(), HOST]
    close = _suggest(name, known)
    if close:
        return f"did you mean {close}? ({_LIST_HINT})"
    return f"known profiles: {', '.join(known)} ({_LIST_HINT}), or pass a path to a .yaml file"


# --------------------------------------------------------------------------------------------------
# YAML reading and extends resolution
# --------------------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                continue  # let the base class report unhashable keys
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"duplicate key {key!r} (first at line {seen[key].start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


@dataclass(frozen=True)
class _Source:
    """One layer of a profile: a file, a built-in, or the detected host."""

    label: str  # how messages name it
    key: str  # identity for cycle detection
    kind: str  # "file" | "builtin" | "host"
    location: Any = None  # Path or Traversable for files and built-ins
    source: str = ""  # what DeviceProfile.source says when this is the top layer


def _looks_like_path(value: str) -> bool:
    return (
        value.lower().endswith(_SUFFIXES)
        or "/" in value
        or os.sep in value
        or (os.altsep is not None and os.altsep in value)
        or value.startswith((".", "~"))
    )


def _file_source(path: Path) -> _Source:
    path = Path(path).expanduser()
    try:
        key = str(path.resolve())
    except OSError:
        key = str(path.absolute())
    return _Source(label=str(path), key=key, kind="file", location=path, source=str(path))


def _builtin_source(name: str) -> _Source:
    files = _builtin_files(include_abstract=True)
    entry = files[name]
    return _Source(
        label=f"{entry.name} (built-in)", key=f"builtin:{name}", kind="builtin", location=entry,
        source=f"builtin:{name}",
    )


_HOST_SOURCE = _Source(label="host (detected)", key=HOST, kind="host", source="detected")


def _parent_source(ref: Any, child: _Source) -> _Source:
    """The layer an ``extends:`` value names, relative to the file that names it."""
    if not isinstance(ref, str) or not ref.strip():
        raise ProfileError(
            f"{child.label}: extends: expected a profile name or a path to a .yaml file, got {ref!r}",
            hint=f"use a built-in name ({', '.join(builtin_profile_names())}), 'host', or a relative path",
        )
    ref = ref.strip()
    if _looks_like_path(ref):
        if child.kind == "builtin":
            entry = _builtin_dir().joinpath(ref)
            return _Source(label=f"{ref} (built-in)", key=f"builtin-file:{ref}", kind="builtin", location=entry,
                           source=f"builtin:{ref}")
        target = Path(ref).expanduser()
        if not target.is_absolute() and child.kind == "file":
            target = Path(child.location).parent / target
        return _file_source(target)
    if ref == HOST:
        return _HOST_SOURCE
    if ref in _builtin_files(include_abstract=True):
        return _builtin_source(ref)
    raise ProfileError(f"{child.label}: extends: unknown profile {ref!r}", hint=_unknown_name_hint(ref))


def _read_text(src: _Source, referrer: _Source | None) -> str:
    where = f"{referrer.label}: extends: " if referrer else ""
    shown = src.label
    try:
        return src.location.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = "check the path (relative paths in extends: are relative to the extending file)"
        stem = Path(str(src.location)).stem
        if stem in builtin_profile_names():
            hint = f"to use the built-in profile, pass its name: {stem}"
        elif referrer is None:
            hint = f"check the path, or pass a built-in profile name ({_LIST_HINT})"
        raise ProfileError(f"{where}profile file '{shown}' not found", hint=hint) from None
    except IsADirectoryError:
        raise ProfileError(f"{where}profile path '{shown}' is a directory", hint="pass a .yaml file") from None
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{where}{shown}: not UTF-8 text ({exc.reason})", hint="save the profile as UTF-8 YAML") from None
    except OSError as exc:
        raise ProfileError(f"{where}cannot read profile file '{shown}': {exc.strerror or exc}",
                           hint="check the file's permissions") from None


def _parse_yaml(text: str, label: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        hint = (
            "remove or rename one of the two entries" if problem.startswith("duplicate key") else
            "check indentation (spaces, not tabs), a ':' after each key, and quotes around values containing ': ' or '#'"
        )
        raise ProfileError(f"{label}: invalid YAML{at}: {problem}", hint=hint) from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"{label}: invalid YAML: {exc}", hint="check the file is YAML") from None
    if data is None:
        raise ProfileError(f"{label}: the file is empty",
                           hint="a profile needs at least name and hardware (see `edgecompress profiles show cpu-x86-avx2`)")
    if not isinstance(data, dict):
        raise ProfileError(
            f"{label}: expected a mapping at the top level, got a {_yaml_type(data)}",
            hint="write keys like name:, hardware:, runtime:, measure:, budgets: (see `edgecompress profiles show cpu-x86-avx2`)",
        )
    return data


def _yaml_type(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), type(value).__name__)


def _layer_data(src: _Source, referrer: _Source | None) -> dict[str, Any]:
    if src.kind == "host":
        return _host_data()
    return _parse_yaml(_read_text(src, referrer), src.label)


Origins = dict[tuple[str, ...], str]


def _origins(data: dict[str, Any], label: str, prefix: tuple[str, ...] = ()) -> Origins:
    out: Origins = {}
    for key, value in data.items():
        path = (*prefix, str(key))
        out[path] = label
        if isinstance(value, dict):
            out.update(_origins(value, label, path))
    return out


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_origins(parent: Origins, child_data: dict[str, Any], label: str, prefix: tuple[str, ...] = ()) -> Origins:
    out = dict(parent)
    for key, value in child_data.items():
        path = (*prefix, str(key))
        if not isinstance(value, dict):  # a scalar/list replaces whatever the parent had below this key
            for stale in [p for p in out if p[: len(path)] == path and len(p) > len(path)]:
                del out[stale]
        out[path] = label
        if isinstance(value, dict):
            out = _merge_origins(out, value, label, path)
    return out


def _resolve(src: _Source, chain: tuple[_Source, ...] = (), referrer: _Source | None = None) -> tuple[dict[str, Any], Origins]:
    """The layer's data merged over all its parents, and which layer each key path came from."""
    if any(s.key == src.key for s in chain):
        start = next(i for i, s in enumerate(chain) if s.key == src.key)
        cycle = " -> ".join(s.label for s in (*chain[start:], src))
        raise ProfileError(f"extends cycle: {cycle}", hint="remove one of the extends: entries in the cycle")
    if len(chain) >= _MAX_EXTENDS_DEPTH:
        raise ProfileError(f"{src.label}: extends chain deeper than {_MAX_EXTENDS_DEPTH} profiles",
                           hint="flatten the chain of extends: entries")
    data = _layer_data(src, referrer)
    ref = data.pop("extends", None)
    if ref is None:
        return data, _origins(data, src.label)
    parent = _parent_source(ref, src)
    pdata, porigins = _resolve(parent, (*chain, src), src)
    pdata.pop("name", None)  # a name belongs to one profile; never inherit it
    porigins.pop(("name",), None)
    return _deep_merge(pdata, data), _merge_origins(porigins, data, src.label)


# --------------------------------------------------------------------------------------------------
# Validation errors -> one line
# --------------------------------------------------------------------------------------------------


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        for arg in get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return None


def _model_at(path: tuple[str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = DeviceProfile
    for part in path:
        if model is None or part not in model.model_fields:
            return None
        model = _submodel(model.model_fields[part].annotation)
    return model


def _clean_loc(loc: tuple[Any, ...]) -> tuple[list[str], tuple[str, ...]]:
    """Displayed parts (``simd[1]``) and the string field path (for model lookups)."""
    shown: list[str] = []
    fields: list[str] = []
    for part in loc:
        if isinstance(part, int):
            if shown:
                shown[-1] = f"{shown[-1]}[{part}]"
            else:
                shown.append(f"[{part}]")
            continue
        part = str(part)
        if "[" in part or "(" in part:  # pydantic's internal union/validator tags
            continue
        shown.append(part)
        fields.append(part)
    return shown, tuple(fields)


def _origin_of(fields: tuple[str, ...], origins: Origins, default: str) -> str:
    for n in range(len(fields), 0, -1):
        if fields[:n] in origins:
            return origins[fields[:n]]
    return default


def _hint_for(err: dict[str, Any], fields: tuple[str, ...]) -> str:
    example = "see `edgecompress profiles show cpu-x86-avx2` for a complete profile"
    if err["type"] == "extra_forbidden" and fields:
        parent = _model_at(fields[:-1])
        if parent is not None:
            valid = list(parent.model_fields)
            if parent is DeviceProfile:
                valid = [k for k in valid if k != "source"]
            where = " -> ".join(fields[:-1]) or "the top level"
            close = _suggest(fields[-1], valid)
            lead = f"did you mean {close}? " if close else ""
            return f"{lead}valid keys at {where}: {', '.join(valid)}"
    if fields:
        parent = _model_at(fields[:-1])
        if parent is not None and fields[-1] in parent.model_fields:
            desc = parent.model_fields[fields[-1]].description
            if desc:
                verb = "add" if err["type"] == "missing" else "expected"
                return f"{verb} {fields[-1]}: {desc}"
    return example


def _validation_error(exc: ValidationError, origins: Origins, top: str) -> ProfileError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    shown, fields = _clean_loc(tuple(first["loc"]))
    msg = first["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if first["type"] == "extra_forbidden" and fields:
        msg = "unknown key"
    where = top if first["type"] == "missing" and len(fields) <= 1 else _origin_of(fields, origins, top)
    path = " -> ".join(shown)
    text = f"{where}: {path}: {msg}" if path else f"{where}: {msg}"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more)"
    return ProfileError(text, hint=_hint_for(first, fields))


def _build(src: _Source) -> DeviceProfile:
    data, origins = _resolve(src)
    data["source"] = src.source
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, origins, src.label) from None


# --------------------------------------------------------------------------------------------------
# Host detection
# --------------------------------------------------------------------------------------------------


def _read_cpuinfo() -> dict[str, str]:
    """First value of each key in /proc/cpuinfo ({} where there is none, e.g. macOS/Windows)."""
    try:
        text = _CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info.setdefault(key.strip().lower(), value.strip())
    return info


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _host_cores() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota: float | None = None
    try:  # cgroup v2
        q, period = (_CGROUP / "cpu.max").read_text().split()[:2]
        if q != "max":
            quota = int(q) / int(period)
    except (OSError, ValueError):
        q1, p1 = _read_int(_CGROUP / "cpu" / "cpu.cfs_quota_us"), _read_int(_CGROUP / "cpu" / "cpu.cfs_period_us")
        if q1 and p1 and q1 > 0:
            quota = q1 / p1
    if quota:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _host_memory_mb() -> int:
    import psutil

    total = psutil.virtual_memory().total
    for limit_file in (_CGROUP / "memory.max", _CGROUP / "memory" / "memory.limit_in_bytes"):
        limit = _read_int(limit_file)
        if limit and 0 < limit < total:
            total = limit
    return max(1, total // (1 << 20))


def _host_simd(arch: str, info: dict[str, str]) -> list[str]:
    if arch == Arch.x86_64:
        raw = info.get("flags", "").split()
        if not raw:
            log.warning("could not read CPU flags (no /proc/cpuinfo); host profile lists no SIMD extensions")
        present = set(raw)
        return [f for f in _X86_KEEP if f in present] + sorted(f for f in present if f.startswith("amx"))
    raw = info.get("features", "").split()
    present = {_SIMD_ALIASES.get(f, f) for f in raw}
    if not raw:
        present = {"neon"}  # AArch64 mandates Advanced SIMD
        if platform.system() == "Darwin":
            present.add("dotprod")  # every Apple silicon core (M1 = ARMv8.5-A) has it
    return [f for f in _ARM_KEEP if f in present]


def _host_cpu_model(info: dict[str, str]) -> str | None:
    for key in ("model name", "hardware", "cpu model"):
        if info.get(key):
            return info[key]
    try:
        model = _DEVICE_TREE_MODEL.read_text(errors="replace").strip("\x00\n ")
        if model:
            return model
    except OSError:
        pass
    return platform.processor() or None


def closest_builtin(arch: Arch | str, simd: list[str]) -> str:
    """The built-in profile whose budgets suit a machine with this arch and these SIMD flags."""
    if Arch(arch) is Arch.arm64:
        return "cpu-arm64-neon"
    if any("vnni" in f for f in simd):
        return "cpu-x86-avx512-vnni"
    if "avx2" not in simd:
        log.warning("this x86-64 CPU has no AVX2; judging it with cpu-x86-avx2 budgets, which it may not meet")
    return "cpu-x86-avx2"


def _host_data() -> dict[str, Any]:
    machine = platform.machine()
    arch = _ARCH_ALIASES.get(machine.lower())
    if arch is None:
        raise ProfileError(
            f"cannot describe this machine as a device profile: unsupported architecture {machine!r}",
            hint=f"profiles support x86_64 and arm64; pass a built-in profile name or a profile file ({_LIST_HINT})",
        )
    info = _read_cpuinfo()
    cores = _host_cores()
    simd = _host_simd(arch, info)
    cpu_model = _host_cpu_model(info)
    clock = _host_clock_ghz(info)
    fp32, int8 = derive_peaks(arch, simd, cores, clock, info)
    return {
        "name": HOST,
        "extends": HOST_BUDGETS,  # relative budgets only: they hold on this machine loaded or idle
        "description": f"This machine ({cpu_model or arch}, {cores} cores); relative budgets (speedup over the "
                       f"FP32 baseline timed alongside, retention, agreement, size, memory), no absolute latency.",
        "hardware": {
            "arch": arch,
            "cores": cores,
            "simd": simd,
            "vnni": any("vnni" in f for f in simd),
            "memory_mb": _host_memory_mb(),
            "cpu_model": cpu_model,
            "clock_ghz": clock,
            "peak_gflops_fp32": fp32,
            "peak_gops_int8": int8,
            "identify": None,  # the host is always itself
        },
        "runtime": {"name": "onnxruntime", "threads": cores},
    }


# --------------------------------------------------------------------------------------------------
# Peaks of this machine (roofline estimates) and "is this machine that device?"
# --------------------------------------------------------------------------------------------------

_DMI_PRODUCT = Path("/sys/class/dmi/id/product_name")
_CPUFREQ_MAX = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
# /proc/cpuinfo "CPU part" of Arm Ltd cores (implementer 0x41) -> core name, FP32 FLOP/cycle/core
# (128-bit FMA pipes x 4 lanes x 2; Cortex-A72 has two 64-bit-wide FMA paths: 8, per vfpbench).
_ARM_PARTS: dict[str, tuple[str, int]] = {
    "0xd03": ("Cortex-A53", 8), "0xd05": ("Cortex-A55", 8), "0xd08": ("Cortex-A72", 8),
    "0xd0b": ("Cortex-A76", 16), "0xd0c": ("Neoverse-N1", 16), "0xd40": ("Neoverse-V1", 32),
    "0xd41": ("Cortex-A78", 16), "0xd42": ("Cortex-A78AE", 16), "0xd44": ("Cortex-X1", 32),
    "0xd49": ("Neoverse-N2", 16), "0xd4f": ("Neoverse-V2", 32),
}


def _host_clock_ghz(info: dict[str, str]) -> float | None:
    """Core clock: the kernel's max cpufreq, else /proc/cpuinfo 'cpu MHz' (constant on most VMs)."""
    khz = _read_int(_CPUFREQ_MAX)
    if khz:
        return round(khz / 1e6, 3)
    try:
        mhz = float(info.get("cpu mhz", ""))
    except ValueError:
        return None
    return round(mhz / 1e3, 3) if mhz > 0 else None


def flops_per_cycle(arch: Arch | str, simd: list[str], info: dict[str, str] | None = None) -> tuple[int, int]:
    """FP32 FLOP/cycle/core and the INT8 op multiple over FP32, from the ISA (and vendor/family where known).

    x86: vector width × 2 (FMA) × 2 FMA pipes — AVX2+FMA 32; AVX-512 64 (Intel Xeon Gold/Platinum and
    AMD Zen 5 have two 512-bit FMA pipes), except AMD Zen 4 (family 25) and Intel client cores, whose
    AVX-512 runs at 32 (Zen 4 double-pumps 256-bit pipes). INT8: VNNI (vpdpbusd) does 4× the FP32
    rate, AVX2's vpmaddubsw path about 2×. Arm: 8 (Cortex-A72/A53), 16 (two 128-bit pipes: A76, A78,
    N1), 32 (four: Neoverse V1/V2); INT8 dot product (sdot/udot) 4×, plain NEON (smlal) 2×.
    Peaks are what the hardware can issue, not what a runtime reaches: estimates multiply them by an
    efficiency calibrated on a machine we measure (see :mod:`compress.estimate`).
    """
    info = info or {}
    if Arch(_ARCH_ALIASES.get(str(arch).lower(), arch)) is Arch.arm64:
        part = info.get("cpu part", "").lower()
        flops = _ARM_PARTS.get(part, ("", 16))[1]
        return flops, (4 if "dotprod" in simd else 2)
    vendor = info.get("vendor_id", "")
    family = info.get("cpu family", "")
    if "avx512f" in simd:
        zen4 = vendor == "AuthenticAMD" and family == "25"
        client = "core(tm)" in info.get("model name", "").lower()
        flops = 32 if (zen4 or client) else 64
    elif "avx2" in simd and "fma" in simd:
        flops = 32
    elif "avx" in simd:
        flops = 16
    else:
        flops = 8
    vnni = any("vnni" in f for f in simd)
    return flops, (4 if vnni else 2 if "avx2" in simd else 1)


def derive_peaks(arch: Arch | str, simd: list[str], cores: int, clock_ghz: float | None,
                 info: dict[str, str] | None = None) -> tuple[float | None, float | None]:
    """(peak GFLOP/s FP32, peak GOP/s INT8) = cores × GHz × FLOP/cycle; (None, None) without a clock."""
    if not clock_ghz:
        return None, None
    per_cycle, int8_multiple = flops_per_cycle(arch, simd, info)
    fp32 = round(cores * clock_ghz * per_cycle, 1)
    return fp32, round(fp32 * int8_multiple, 1)


def _serverless_platform() -> str | None:
    """The serverless platform this process runs in, from the variables the platform sets."""
    if os.environ.get("AWS_LAMBDA_FUNCTION_NAME") or os.environ.get("AWS_EXECUTION_ENV", "").startswith("AWS_Lambda"):
        return "AWS Lambda"
    if os.environ.get("K_SERVICE") and os.environ.get("K_REVISION"):
        return "Google Cloud Run"
    return None


def _read_text_quiet(path: Path) -> str | None:
    try:
        text = path.read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None
    return text or None


def machine_model() -> str:
    """This machine's model string, which ``hardware.identify`` regexes are matched against.

    The non-empty parts of, joined with '; ': the serverless platform (``AWS Lambda`` when
    AWS_LAMBDA_FUNCTION_NAME is set, ``Google Cloud Run`` with K_SERVICE and K_REVISION), the board
    (``/proc/device-tree/model``, e.g. ``Raspberry Pi 5 Model B Rev 1.0``), the DMI product name
    (e.g. ``NUC12WSHi5``, ``c7g.large``), and the CPU (``model name`` from /proc/cpuinfo, or the Arm
    core name from its ``CPU part``, e.g. ``Neoverse-V1``).
    """
    info = _read_cpuinfo()
    parts = [
        _serverless_platform(),
        _read_text_quiet(_DEVICE_TREE_MODEL),
        _read_text_quiet(_DMI_PRODUCT),
        info.get("model name") or info.get("cpu model") or info.get("hardware"),
    ]
    part = info.get("cpu part", "").lower()
    if info.get("cpu implementer", "").lower() == "0x41" and part in _ARM_PARTS:
        parts.append(_ARM_PARTS[part][0])
    out: list[str] = []
    for p in parts:
        if p and p not in out:
            out.append(p)
    return "; ".join(out) or platform.processor() or platform.machine()


def host_arch() -> Arch | None:
    """This machine's architecture, or None when profiles cannot describe it."""
    arch = _ARCH_ALIASES.get(platform.machine().lower())
    return Arch(arch) if arch else None


@dataclass(frozen=True)
class DeviceMatch:
    """Whether the machine running the command is the profiled device (so its timings are the device's).

    ``how``: ``host`` (the detected host profile), ``class`` (a profile for a class of CPUs, no
    ``identify``, same arch: measured on this machine's CPU), ``identified`` (``identify`` matched),
    ``arch-mismatch`` or ``not-identified`` (this machine is not the device: estimate instead).
    """

    is_device: bool
    how: str
    reason: str
    host_arch: str | None
    host_model: str

    def as_dict(self) -> dict[str, Any]:
        return {"is_device": self.is_device, "how": self.how, "reason": self.reason,
                "host_arch": self.host_arch, "host_model": self.host_model}


def match_device(profile: DeviceProfile, *, model: str | None = None) -> DeviceMatch:
    """Is this machine ``profile``'s device? The arch must match, then ``identify`` (if any) must match."""
    arch = host_arch()
    shown = model if model is not None else machine_model()
    arch_s = arch.value if arch else platform.machine()
    if profile.source == "detected":
        return DeviceMatch(True, "host", "the host profile describes this machine", arch_s, shown)
    want = profile.hardware.arch
    if arch is not want:
        return DeviceMatch(False, "arch-mismatch",
                           f"this machine is {arch_s}, profile {profile.name} is {want.value}", arch_s, shown)
    pattern = profile.hardware.identify
    if pattern is None:
        return DeviceMatch(True, "class",
                           f"{profile.name} describes a class of {want.value} CPUs: measured on this machine's CPU "
                           f"({shown})", arch_s, shown)
    if re.search(pattern, shown, flags=re.IGNORECASE):
        return DeviceMatch(True, "identified", f"this machine ({shown}) matches {profile.name}'s identify "
                           f"/{pattern}/", arch_s, shown)
    return DeviceMatch(False, "not-identified", f"this machine ({shown}) does not match {profile.name}'s identify "
                       f"/{pattern}/", arch_s, shown)


# --------------------------------------------------------------------------------------------------
# Public loading API
# --------------------------------------------------------------------------------------------------


def detect_host() -> DeviceProfile:
    """The ``host`` profile: this machine's facts, with relative budgets (``profiles/_host.yaml``) that hold
    whatever the load: speedup over the FP32 baseline, retention, agreement, size, peak memory."""
    profile = _build(_HOST_SOURCE)
    log.debug("detected host: %s", profile.hardware.model_dump())
    return profile


def check_profile_file(path: str | Path) -> DeviceProfile:
    """Load and validate a profile file (``extends:`` resolved); raises ProfileError when invalid."""
    return _build(_file_source(Path(path)))


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """A built-in profile by name, ``host`` (detected), or a profile from a .yaml/.yml file."""
    if isinstance(name_or_path, Path):
        return check_profile_file(name_or_path)
    value = str(name_or_path).strip()
    if not value:
        raise ProfileError("empty profile name", hint=_unknown_name_hint(""))
    if _looks_like_path(value):
        return check_profile_file(Path(value))
    if value == HOST:
        return detect_host()
    if value in _builtin_files():
        return _build(_builtin_source(value))
    if value.startswith("_") and value in _builtin_files(include_abstract=True):
        raise ProfileError(f"{value!r} is an abstract parent, not a profile",
                           hint=f"use it in extends:, or pick a profile ({_LIST_HINT})")
    raise ProfileError(f"unknown profile {value!r}", hint=_unknown_name_hint(value))


def list_profiles(include_host: bool = True) -> list[DeviceProfile]:
    """Every built-in profile, resolved, then ``host`` (skipped with a warning if it cannot be detected)."""
    out = [load_profile(name) for name in builtin_profile_names()]
    if include_host:
        try:
            out.append(detect_host())
        except ProfileError as exc:
            log.warning("host profile unavailable: %s", exc)
    return out
