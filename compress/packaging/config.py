"""Settings, constants and report models of ``package``: the leaf its parts import."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from compress.artifact import Format, Precision
from compress.profiles.budgets import BudgetResult
from compress.stages.spec import StageSpec, pairs

#: A serverless bundle: the handler runs ONNX Runtime (no torch), so it takes ONNX artifacts of any precision.
PACKAGE = StageSpec(
    "package", "packaging (the serverless handler runs ONNX Runtime)",
    accepts=pairs(Format.onnx, Precision.fp32, Precision.int8, Precision.int4), produces={}, versions=(),
    hint="package an ONNX artifact (`edgecompress export TEACHER --out DIR`, then quantize it)",
)
REPORT_SCHEMA_VERSION = 1
MB = 1024 * 1024
#: every package a bundle may depend on directly (what --pin accepts); which ones a bundle needs is by input kind
DIRECT_DEPENDENCIES = ("onnxruntime", "tokenizers", "numpy", "pillow")
#: the handler's direct dependencies by the artifact's input kind (tokenizers reads text, Pillow decodes images)
KIND_DEPENDENCIES = {"text": ("onnxruntime", "tokenizers", "numpy"), "image": ("onnxruntime", "pillow", "numpy"),
                     "arrays": ("onnxruntime", "numpy")}
#: import names of the distributions above, where they differ
IMPORT_NAMES = {"pillow": "PIL"}
TOP_CONTRIBUTORS = 10
COLD_START_TIMEOUT_S = 600
MODEL_DIR = "model"
BUNDLE_INFO = "edgecompress-bundle.json"
# A zip entry's timestamp: fixed, so the same inputs give the same bytes (SOURCE_DATE_EPOCH wins).
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_FIRST_TEXT = "the bundle starts cold and answers its first request."


def dependencies_for(preprocess) -> tuple[str, ...]:
    """The handler's direct dependencies for an artifact whose inputs ``preprocess`` describes."""
    from compress.data.inputs import preprocess_kind

    return KIND_DEPENDENCIES[preprocess_kind(preprocess)]


def first_request(preprocess) -> dict:
    """The event the cold-start runs send: one text, one PNG image (base64) at the model's input size, or one sample
    of arrays (JSON lists) at the input shapes."""
    from compress.data.inputs import preprocess_kind

    if preprocess_kind(preprocess) == "text":
        return {"text": _FIRST_TEXT}
    if preprocess_kind(preprocess) == "arrays":
        from compress.data.arrays import synthetic_arrays

        return {"inputs": {k: v.tolist() for k, v in synthetic_arrays(preprocess, 1)[0].items()}}
    import base64
    import io

    from PIL import Image

    from compress.data.inputs import synthetic_images

    arr = synthetic_images(preprocess, 1)[0]
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(buf, format="PNG")
    return {"image": base64.b64encode(buf.getvalue()).decode("ascii")}
def first_stream_request(m) -> dict | None:
    """The event the cold-start runs send a streaming model (the manifest ``m`` has a ``stream``): one sequence of four
    chunks of seeded noise, run call by call with the state carried; None for any other model."""
    if m.stream is None:
        return None
    from compress.data.streams import seeded_sequence

    return {"sequence": seeded_sequence(m.stream.chunk, 4).values.tolist()}


_FORBIDDEN_IMPORTS = ("torch", "transformers", "optimum", "compress")
_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class PackageConfig(BaseModel):
    """Settings of ``edgecompress package``."""

    model_config = ConfigDict(extra="forbid")

    profile: str = Field(
        description="Serverless device profile (built-in name such as aws-lambda-arm64, or a YAML path); "
                    "it must have a serverless: section."
    )
    memory_mb: int | None = Field(
        None, gt=0,
        description="Function memory in MB to measure under (default: the profile's serverless.memory_mb); "
                    "sets the vCPUs through the profile's memory_to_vcpu mapping.",
    )
    download: bool = Field(
        True,
        description="Resolve and bundle the target's dependency wheels with pip download; off: model and "
                    "handler only, dependency sizes not measured.",
    )
    cold_start: bool = Field(True, description="Measure cold start and peak memory in fresh processes.")
    cold_start_runs: int = Field(3, ge=1, le=25, description="Fresh processes to time; the median is judged.")
    pins: dict[str, str] = Field(
        default_factory=dict,
        description="Exact versions to pin instead of the installed ones, e.g. {onnxruntime: 1.20.1}.",
    )
    max_batch_size: int = Field(32, gt=0, description="Texts per model run inside the handler.")
    max_new_tokens: int | None = Field(
        None, gt=0,
        description="Generators (text-generation): the most new tokens one request may ask for (default: 256, or "
                    "less where the model's context is shorter).",
    )
    pip_timeout_s: float = Field(900, gt=0, description="Give up on one pip download after this many seconds.")
    allow_collapsed: bool = Field(
        False, description="Package a model that quantize's own check found collapsed against its input (refused "
        "otherwise: prove it first with validate --data).")

    @field_validator("pins")
    @classmethod
    def _known_pins(cls, value: dict[str, str]) -> dict[str, str]:
        out = {}
        for name, version in value.items():
            key = _canonical(name)
            if key not in DIRECT_DEPENDENCIES:
                raise ValueError(f"cannot pin {name!r}: the bundle's direct dependencies are "
                                 f"{', '.join(DIRECT_DEPENDENCIES)}")
            if not re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version.strip()):
                raise ValueError(f"{name}: {version!r} is not an exact version (e.g. 1.20.1)")
            out[key] = version.strip()
        return out


class Contributor(BaseModel):
    """One thing that takes space in the bundle: a dependency distribution or a file of our own."""

    name: str = Field(description="Distribution name, or the bundle file's path.")
    kind: str = Field(description="'dependency', 'model', 'tokenizer' or 'handler'.")
    version: str | None = None
    unzipped_bytes: int
    zipped_bytes: int = Field(description="Compressed size of its entries inside the zip.")
    files: int
    top_level: list[str] = Field(default_factory=list, description="Top-level folders/files it puts in the bundle.")
    imported: bool | None = Field(
        None, description="Whether the handler's cold-start run imported it (None: not measured / not a package)."
    )
    wheel: str | None = None


class PackageReport(BaseModel):
    schema_version: int = REPORT_SCHEMA_VERSION
    verdict: str = Field(description="pass, fail (a budget failed), or unverified (none failed, some not measured).")
    budgets: list[BudgetResult]
    bundle: dict[str, Any]
    contributors: list[Contributor]
    dependencies: dict[str, Any]
    function: dict[str, Any]
    cold_start: dict[str, Any] | None
    artifact: dict[str, Any]
    profile: dict[str, Any]
    environment: dict[str, Any]
    notes: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def top_contributors(self, n: int = TOP_CONTRIBUTORS) -> list[Contributor]:
        return sorted(self.contributors, key=lambda c: -c.unzipped_bytes)[:n]
