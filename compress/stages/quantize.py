"""INT8 quantization of ONNX artifacts with ONNX Runtime's own quantization tools.

Dynamic: weights quantized offline, activations at run time (no data needed).
Static: activations calibrated on N samples (MinMax / Entropy / Percentile), QDQ format, per-channel weights.

CPUs without VNNI (AVX2-only x86) compute u8 x s8 products with VPMADDUBSW, whose 16-bit intermediate
can saturate and cost accuracy. There we default to 7-bit weights (``reduce_range``), which cannot
saturate; with VNNI (or Arm dot-product) full-range weights are exact and faster.
"""

from __future__ import annotations

import logging
import time
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from compress.artifact import (
    Artifact,
    Format,
    Precision,
    StepRecord,
    check_output,
    child_manifest,
    copy_tokenizer_files,
    digest_dir,
    library_versions,
    load_artifact,
    staged_dir,
    write_manifest,
)
from compress.errors import ArtifactError, ConfigError, EdgeCompressError, StageError
from compress.stages.common import compare_outputs, sample_texts

log = logging.getLogger(__name__)

CONFIG_VERSION = 1


class QuantPrecision(StrEnum):
    int8 = "int8"
    int4 = "int4"


class EmbeddingPrecision(StrEnum):
    fp32 = "fp32"
    int8 = "int8"
    int4 = "int4"


class QuantMode(StrEnum):
    dynamic = "dynamic"
    static = "static"


class CalibrationMethod(StrEnum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class WeightType(StrEnum):
    int8 = "int8"
    uint8 = "uint8"


class QuantizeConfig(BaseModel):
    """Settings of ``edgecompress quantize``."""

    model_config = ConfigDict(extra="forbid")

    precision: QuantPrecision = Field(QuantPrecision.int8, description="Target precision.")
    mode: QuantMode = Field(
        QuantMode.dynamic,
        description="dynamic: no data needed, activations quantized at run time (best on CPUs); "
        "static: activations calibrated on --calibration data, QDQ format (what TensorRT and NPUs need).",
    )
    calibration: str | None = Field(None, description="Data file for static calibration (text column used).")
    calibration_samples: int = Field(128, ge=1, description="Number of calibration texts.")
    calibration_method: CalibrationMethod = Field(CalibrationMethod.minmax, description="Range estimator.")
    percentile: float = Field(99.999, gt=90, lt=100, description="Percentile for --calibration-method percentile.")
    per_channel: bool = Field(True, description="One scale per output channel of each weight.")
    weight_type: WeightType = Field(WeightType.int8, description="Weight integer type (s8, or u8 for U8U8).")
    reduce_range: bool | None = Field(
        None,
        description="7-bit weights to avoid u8s8 saturation on CPUs without VNNI; default: on when the "
        "target CPU (profile, else this host) is x86 without VNNI.",
    )
    op_types: list[str] | None = Field(
        None,
        description="Operator types to quantize. Default: ONNX Runtime's set for dynamic (MatMul, "
        "Attention, Gather embeddings, ...); MatMul and Attention only for static (quantizing "
        "Add/Softmax/LayerNorm inputs costs accuracy in transformers).",
    )
    exclude_nodes: list[str] = Field(default_factory=list, description="Node names kept in float.")
    target_vnni: bool | None = Field(None, description="Target CPU has VNNI (set from a profile); None = this host.")
    target_x86: bool | None = Field(None, description="Target CPU is x86 (set from a profile); None = this host.")
    parity_samples: int = Field(32, ge=1, description="Texts used to measure agreement with the input model.")
    sample_data: str | None = Field(None, description="Data file for the parity texts (default: built-in texts).")

    # INT4 weight-only
    block_size: int = Field(
        128, description="INT4: weights per quantization block along the input dimension (32, 64 or 128)."
    )
    symmetric: bool = Field(True, description="INT4: symmetric blocks (zero point 0) instead of asymmetric.")
    embedding_precision: EmbeddingPrecision = Field(
        EmbeddingPrecision.int8,
        description="INT4 mode: precision of the embedding table (Gather); int4 where the runtime supports it.",
    )
    # OpenVINO / NNCF
    weights_only: bool = Field(
        False, description="OpenVINO INT8: compress weights only (nncf.compress_weights) instead of full PTQ."
    )
    # accuracy-aware
    max_drop: float | None = Field(
        None, ge=0, lt=1,
        description="Accuracy-aware: largest allowed absolute drop of the eval metric versus the input model; "
        "the most sensitive layers stay in higher precision until it holds.",
    )
    min_retention: float | None = Field(
        None, gt=0, le=1,
        description="Accuracy-aware, relative form (from a profile's min_accuracy_retention): metric / input metric.",
    )
    data: str | None = Field(None, description="Labelled eval data for accuracy-aware quantization.")
    eval_samples: int = Field(300, ge=10, description="Eval rows used by accuracy-aware quantization.")

    @field_validator("block_size")
    @classmethod
    def _block_size(cls, v: int) -> int:
        if v not in (16, 32, 64, 128, 256):
            raise ValueError("must be one of 32, 64, 128 (16 and 256 also accepted)")
        return v

    @property
    def accuracy_aware(self) -> bool:
        return self.max_drop is not None or self.min_retention is not None

    def resolved_reduce_range(self) -> bool:
        from compress.cpu import has_vnni, is_x86

        if self.reduce_range is not None:
            return self.reduce_range
        vnni = has_vnni() if self.target_vnni is None else self.target_vnni
        x86 = is_x86() if self.target_x86 is None else self.target_x86
        return x86 and not vnni and self.weight_type is WeightType.int8


class _CalibrationReader:
    """ONNX Runtime CalibrationDataReader over encoded texts, one unpadded sample at a time."""

    def __init__(self, encoder, texts: list[str], input_names: set[str]) -> None:
        self._items = [
            {k: v for k, v in encoder.encode([t]).items() if k in input_names} for t in texts
        ]
        self._it = iter(self._items)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._items)


def quantize(
    artifact: Artifact | Path | str,
    out: Path | str,
    config: QuantizeConfig | None = None,
    *,
    force: bool = False,
) -> Artifact:
    """Quantize an ONNX artifact to INT8 into a new artifact at ``out``."""
    from compress._optional import require

    config = config or QuantizeConfig()
    out = check_output(out, force)
    art = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
    if config.accuracy_aware and not config.data:
        raise ConfigError("accuracy-aware quantization needs labelled eval data", hint="pass --data EVAL")
    if art.format not in (Format.onnx, Format.openvino):
        raise ArtifactError(
            f"{art.path} is a {art.format} artifact; quantize works on ONNX and OpenVINO artifacts",
            hint="run `edgecompress export --format onnx|openvino` first",
        )
    if art.precision in (Precision.int8, Precision.int4):
        raise ArtifactError(
            f"{art.path} is already {art.precision}",
            hint="quantize the FP32 artifact it came from instead (see `edgecompress inspect`)",
        )
    if Path(out).resolve() == art.path.resolve():
        raise ConfigError("--out is the input artifact", hint="choose a new directory")
    if art.format is Format.openvino:
        from compress.stages.quantize_openvino import quantize_openvino

        return quantize_openvino(art, out, config, force=force)
    if config.mode is QuantMode.static and not config.calibration:
        raise ConfigError("static quantization needs calibration data", hint="pass --calibration DATA")

    require("onnxruntime", "INT8 quantization")
    from onnxruntime import quantization as ortq

    from compress.runtimes.ort_backend import OrtBackend

    reduce_range = config.resolved_reduce_range()
    weight_type = ortq.QuantType.QInt8 if config.weight_type is WeightType.int8 else ortq.QuantType.QUInt8
    resolved = config.model_dump(mode="json") | {"reduce_range": reduce_range}
    t0 = time.perf_counter()
    with staged_dir(out, force) as tmp:
        dst = tmp / "model.onnx"
        try:
            if config.mode is QuantMode.dynamic:
                log.info("dynamic INT8 quantization (reduce_range=%s, per_channel=%s)", reduce_range, config.per_channel)
                ortq.quantize_dynamic(
                    str(art.model_path),
                    str(dst),
                    op_types_to_quantize=config.op_types,
                    per_channel=config.per_channel,
                    reduce_range=reduce_range,
                    weight_type=weight_type,
                    nodes_to_exclude=config.exclude_nodes or None,
                    extra_options={"MatMulConstBOnly": True, "DefaultTensorType": 1},  # 1 = FLOAT: fused ops lack shape inference
                )
            else:
                texts = sample_texts(config.calibration, config.calibration_samples)
                source = OrtBackend(art)
                reader = _CalibrationReader(source.encoder, texts, set(source.input_names))
                source.close()
                method = {
                    CalibrationMethod.minmax: ortq.CalibrationMethod.MinMax,
                    CalibrationMethod.entropy: ortq.CalibrationMethod.Entropy,
                    CalibrationMethod.percentile: ortq.CalibrationMethod.Percentile,
                }[config.calibration_method]
                extra = {
                    "MatMulConstBOnly": True,
                    "WeightSymmetric": True,
                    "ActivationSymmetric": False,
                    "DefaultTensorType": 1,
                }
                if config.calibration_method is CalibrationMethod.percentile:
                    extra["CalibPercentile"] = config.percentile
                log.info("static INT8 QDQ quantization on %d samples (%s)", len(texts), config.calibration_method)
                ortq.quantize_static(
                    str(art.model_path),
                    str(dst),
                    reader,
                    quant_format=ortq.QuantFormat.QDQ,
                    op_types_to_quantize=config.op_types or ["MatMul", "Attention"],
                    per_channel=config.per_channel,
                    reduce_range=reduce_range,
                    activation_type=ortq.QuantType.QUInt8,
                    weight_type=weight_type,
                    nodes_to_exclude=config.exclude_nodes or None,
                    calibrate_method=method,
                    extra_options=extra,
                )
        except EdgeCompressError:  # bad calibration data etc.: already a clear error
            raise
        except Exception as e:  # noqa: BLE001 - ORT raises many types
            raise StageError(
                f"ONNX Runtime quantization failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                hint="rerun with --debug; try --mode dynamic or fewer --op-types",
            ) from e
        copy_tokenizer_files(art.path, tmp)
        for extra_file in ("ort_config.json",):
            if (art.path / extra_file).is_file():
                (tmp / extra_file).write_bytes((art.path / extra_file).read_bytes())

        manifest = child_manifest(art.manifest, precision=Precision.int8, model_file="model.onnx")
        manifest.versions = library_versions()
        step = StepRecord(
            stage="quantize",
            config=resolved,
            config_version=CONFIG_VERSION,
            versions={"onnxruntime": manifest.versions.get("onnxruntime"), "onnx": manifest.versions.get("onnx")},
            input_digest=art.digest,
        )
        manifest.steps.append(step)
        write_manifest(tmp, manifest)

        texts = sample_texts(config.sample_data, config.parity_samples)
        reference = OrtBackend(art)
        candidate = OrtBackend(Artifact(tmp, manifest))
        batch = reference.encode(texts)
        parity = compare_outputs(
            reference.predict(batch), candidate.predict(batch), art.manifest.labels is not None
        )
        reference.close()
        candidate.close()
        before = art.size_bytes()
        after = (tmp / "model.onnx").stat().st_size
        step.metrics = {
            "parity_vs_input": {**parity.as_dict(), "reference": f"{art.format} {art.precision}"},
            "size_bytes_before": before,
            "size_bytes_after": after,
            "compression": round(before / after, 3),
        }
        step.seconds = round(time.perf_counter() - t0, 3)
        step.output_digest = digest_dir(tmp)
        write_manifest(tmp, manifest)
    log.info("wrote %s (%.1f MB -> %.1f MB)", out, before / 1e6, after / 1e6)
    return load_artifact(out)
