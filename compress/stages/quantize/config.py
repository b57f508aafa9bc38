"""Settings of ``quantize`` (every backend: ONNX Runtime INT8/INT4, OpenVINO/NNCF): the config leaf that the
quantize verb and its backends import, never the other way round."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from compress.artifact import Format, Precision
from compress.settings import Section, Settings
from compress.stages.spec import StageSpec, pairs
from compress.tasks import is_generator

CONFIG_VERSION = 2  # 2: options nested in sections (calibration, int8, int4, qad, accuracy, speed, target)
_QUANTIZE_HINT = "run `edgecompress export --format onnx|openvino` first"
_QUANTIZED_HINT = "quantize the FP32 artifact it came from instead (see `edgecompress inspect`)"
#: ONNX Runtime INT8 (dynamic/static, QDQ or QOperator) and INT4 weight-only, ONNX in and out.
QUANTIZE_ONNX = StageSpec(
    "quantize", "quantize", accepts=pairs(Format.onnx, Precision.fp32),
    produces=pairs(Format.onnx, Precision.int8, Precision.int4), versions=("onnxruntime", "onnx"),
    hint=_QUANTIZE_HINT, precision_hint=_QUANTIZED_HINT, config_version=CONFIG_VERSION,
)
#: NNCF post-training INT8 and INT4 weight compression, OpenVINO IR in and out.
QUANTIZE_OPENVINO = StageSpec(
    "quantize", "quantize", accepts=pairs(Format.openvino, Precision.fp32),
    produces=pairs(Format.openvino, Precision.int8, Precision.int4), versions=("nncf", "openvino"),
    hint=_QUANTIZE_HINT, precision_hint=_QUANTIZED_HINT, config_version=CONFIG_VERSION,
)
#: ai-edge-quantizer INT8 (dynamic-range, weight-only or static), LiteRT in and out.
QUANTIZE_LITERT = StageSpec(
    "quantize", "quantize", accepts=pairs(Format.litert, Precision.fp32), produces=pairs(Format.litert, Precision.int8),
    versions=("ai_edge_quantizer", "ai_edge_litert"), hint=_QUANTIZE_HINT, precision_hint=_QUANTIZED_HINT,
    config_version=CONFIG_VERSION,
)
QUANTIZE_SPECS = (QUANTIZE_ONNX, QUANTIZE_OPENVINO, QUANTIZE_LITERT)
#: the quantize backends of models that are not causal LMs, by artifact format: the module that declares the settings
#: the backend reads (``_APPLIES``, flat keys; a causal LM's quantizer module declares its own, see :func:`backends`)
#: and how a message names its artifacts
_BACKENDS = {"onnx": ("compress.stages.quantize.graph", "ONNX"),
             "openvino": ("compress.stages.quantize.openvino", "OpenVINO"),
             "litert": ("compress.stages.quantize.litert", "LiteRT")}
#: the target device's description a --profile sets: context every backend is given, not an option a user gives
PROFILE_KEYS = frozenset({"target_vnni", "target_x86", "target_runtime", "target_provider"})


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
    """Activation range estimators: ``minmax`` (the whole set's extremes), ``mean-minmax`` (each batch's extremes,
    averaged: ONNX Runtime's moving-average MinMax; the default for image models), ``entropy``, ``percentile``."""

    minmax = "minmax"
    mean_minmax = "mean-minmax"
    entropy = "entropy"
    percentile = "percentile"


class WeightType(StrEnum):
    int8 = "int8"
    uint8 = "uint8"


class Calibration(Section):
    """The data that calibrates activation ranges: ONNX Runtime static INT8, OpenVINO INT8 (unless weights only),
    LiteRT static INT8."""

    data: str | None = Field(
        None, description="Data for static calibration: a text file (text column used) or, for image models, "
        "images (class folders, a path table or an .npz; labels are not read).")
    samples: int = Field(128, ge=1, description="Number of calibration texts or images.")
    method: CalibrationMethod = Field(
        CalibrationMethod.minmax, description="Activation range estimator (static mode): minmax, mean-minmax (per-batch "
        "extremes averaged; the default for image models), entropy or percentile.")
    percentile: float = Field(99.999, gt=90, lt=100, description="Percentile for --calibration-method percentile.")


class Int8(Section):
    """INT8 weights: their scales, integer type and range; OpenVINO's and LiteRT's weights-only INT8."""

    per_channel: bool = Field(True, description="One scale per output channel of each weight.")
    weight_type: WeightType = Field(WeightType.int8, description="Weight integer type (s8, or u8 for U8U8).")
    reduce_range: bool | None = Field(
        None,
        description="7-bit weights, which cannot saturate ONNX Runtime's u8s8 GEMM kernels on x86 without VNNI (static "
        "INT8 keeps 8 bits where no kernel can saturate: s8 in depthwise convolutions, u8 in convolutions whose output "
        "goes on without an activation). Default: decided by the target, never by the host that quantizes: off where a "
        "--profile's CPU sums u8 x s8 products exactly (x86 with VNNI, or not x86); on for x86 without VNNI and when "
        "no --profile names the target.",
    )
    weights_only: bool = Field(
        False, description="OpenVINO INT8: compress weights only (nncf.compress_weights) instead of full PTQ. "
        "LiteRT: INT8 weights, float activations (ai-edge-quantizer's weight_only_wi8_afp32)."
    )
    activation_bits: Literal[8, 16] = Field(
        8, description="LiteRT static INT8: bits of the activations; 16 is ai-edge-quantizer's static_wi8_ai16 (INT8 "
        "weights, 16-bit activations: closer to FP32, for NPUs that run w8a16; XNNPACK on CPUs has no 16-bit kernels "
        "and runs it many times slower).")


class Int4(Section):
    """INT4 weight-only blocks (and INT4 embedding tables)."""

    block_size: int = Field(
        128, description="INT4: weights per quantization block along the input dimension (32, 64 or 128)."
    )
    symmetric: bool = Field(True, description="INT4: symmetric blocks (zero point 0) instead of asymmetric.")
    algorithm: Literal["auto", "rtn", "hqq", "gptq", "awq", "scale_estimation", "k_quant"] = Field(
        "rtn", description="Generators (causal LMs), INT4/INT8 weight-only: how the blocks are chosen. auto (the "
        "INT4 default for ONNX Runtime and OpenVINO: each weight matrix's bits and algorithm chosen by measuring the "
        "model, in a file no larger than llama.cpp's Q4_K_M where 4 and 8 bits can hold the model there), rtn "
        "(round to nearest), hqq, gptq (calibrated on text windows), awq, scale_estimation, k_quant; each backend "
        "takes its subset (ONNX Runtime: auto, rtn, hqq, gptq, k_quant) and refuses the others in one line.")
    embeddings_bits: Literal[4, 8, 32] = Field(
        8, description="Generators: bits of the token embedding table (Gather); 32 keeps it in float.")
    lm_head_bits: Literal[4, 8] = Field(8, description="Generators: bits of the LM head (the last MatMul).")

    @field_validator("block_size")
    @classmethod
    def _block_size(cls, v: int) -> int:
        if v not in (16, 32, 64, 128, 256):
            raise ValueError("must be one of 32, 64, 128 (16 and 256 also accepted)")
        return v


class Gguf(Section):
    """GGUF (llama.cpp) generators: the block type llama.cpp's quantizer writes."""

    type: Literal["q4_0", "q4_k_m", "q4_k_s", "q5_k_m", "q6_k", "q8_0"] | None = Field(
        None, description="GGUF artifacts: llama.cpp's quantization type (q4_0, q4_k_m, q4_k_s, q5_k_m, q6_k, q8_0); "
        "default q4_k_m for --precision int4, q8_0 for int8. The precision must match (q5/q6/q8: int8).")
    imatrix: str | None = Field(
        None, description="GGUF artifacts: an importance matrix made by llama.cpp's llama-imatrix (imatrix.gguf, or "
        "the legacy .dat) for llama.cpp's quantizer; without it, --calibration text is run through llama-imatrix "
        "(found in $EDGECOMPRESS_LLAMA_CPP/build/bin or on PATH) to make one.")


class Qad(Section):
    """Quantization-aware distillation before INT8 (ONNX Runtime), and quantization-aware INT4 of a causal LM (its
    ONNX artifact: :mod:`compress.stages.quantize.lm.qat`)."""

    steps: int = Field(
        0, ge=0, description="INT8 (ONNX Runtime), and INT4 of a causal LM's ONNX artifact: first train the PyTorch "
        "model the artifact was exported from for this many steps, fake-quantized as ONNX Runtime will quantize it, to "
        "match its FP32 self (quantization-aware distillation), then quantize the trained weights; 0: post-training "
        "only.")
    data: str | None = Field(
        None, description="QAD: training inputs (a data file like --calibration; labels used when present). "
        "Default: the calibration data.")
    source: str | None = Field(
        None, description="QAD: the checkpoint, .pt2 program or student the artifact was exported from, when its "
        "lineage's source is not it (checked by content).")
    lr: float | None = Field(
        None, gt=0, description="QAD: peak learning rate (AdamW, warm-up then cosine decay); default 1e-5 for "
        "images and arrays, 2e-5 for text; a causal LM's INT4: 3e-4 (weights), 3e-3 (LoRA adapters).")
    batch_size: int = Field(16, ge=1, description="QAD: inputs per training step (a causal LM: text windows).")
    lora_rank: int | None = Field(
        None, ge=1, description="Quantization-aware INT4 of a causal LM: train LoRA adapters of this rank on every "
        "linear layer (under the fake quantizer; merged before export) instead of the weights.")


class Accuracy(Section):
    """Accuracy-aware quantization: the budget, the labelled eval data that measures it, how layers go back to
    float."""

    max_drop: float | None = Field(
        None, ge=0, lt=1,
        description="Accuracy-aware: largest allowed absolute drop of the eval metric versus the input model; "
        "the most sensitive layers stay in higher precision until it holds.",
    )
    min_retention: float | None = Field(
        None, gt=0, le=1,
        description="Accuracy-aware, relative form (from a profile's min_accuracy_retention): metric / input metric.",
    )
    data: str | None = Field(None, description="Labelled eval data for accuracy-aware quantization (a generator: "
                             "plain text, cut into windows of the model's perplexity window).")
    max_perplexity_increase: float | None = Field(
        None, gt=0, description="Generators, accuracy-aware: largest allowed perplexity increase over the input "
        "(0.02 = +2%) on --data text (without it: 16 windows of text the FP32 model samples itself); the MatMuls whose "
        "INT4 errs most (the per-layer KL table) go back to 8 bits until it holds.")
    metric: str | None = Field(
        None, description="Accuracy-aware: your metric, module:function(outputs, labels) -> number (higher is better), "
        "instead of the task's; it runs that code (compress.validation.user_metric).")
    samples: int = Field(300, ge=10, description="Eval rows used by accuracy-aware quantization.")
    max_fp32_fraction: float = Field(
        0.5, ge=0, le=1,
        description="Accuracy-aware: largest share of the quantizable weights that may stay in float; a budget "
        "that needs more counts as unreachable (the best candidate is written beside the output). Also the cap of "
        "the default static INT8's fall-back to float where its held-out check fails.",
    )
    rank_by: Literal["layer-errors", "leave-one-out"] | None = Field(
        None,
        description="Accuracy-aware (ONNX Runtime): the order in which layers are kept in float. layer-errors (the "
        "default): by the "
        "error each layer adds itself in the per-layer table of the all-quantized model (one pass over a few "
        "calibration samples); leave-one-out: by the eval metric of one candidate per layer (or block) kept in "
        "float alone (slower, measures the metric itself).",
    )


class Speed(Section):
    """Speed-aware INT8: layer groups timed quantized and in float on the target's runtime."""

    aware: bool = Field(
        False, description="INT8: time each layer group quantized and in float, side by side on the target's runtime "
        "and threads (a --profile's, else the runtime's default), and return the groups INT8 makes slower to float.")
    threads: int | None = Field(None, gt=0, description="Speed-aware: intra-op threads (set from a profile).")
    seconds: float = Field(1.0, gt=0, description="Speed-aware: least timed seconds per candidate.")
    refuse_slower: bool | None = Field(
        None, description="INT8: refuse a model slower than its input (timed side by side where the target can be "
        "timed here), nothing written; default: what --strict says. A recipe leaves it off (its validate's "
        "min_speedup judges speed against noise) unless it sets it.")


class Target(Section):
    """The device the artifact is for (set from a device profile; unset: this host)."""

    vnni: bool | None = Field(None, description="Target CPU has VNNI (set from a profile); None = this host.")
    x86: bool | None = Field(None, description="Target CPU is x86 (set from a profile); None = this host.")
    runtime: str | None = Field(
        None, description="Runtime that will run the artifact (from a profile); INT4 MatMulNBits needs onnxruntime."
    )
    provider: str | None = Field(
        None, description="ONNX Runtime execution provider of the target (from a profile)."
    )


class QuantizeConfig(Settings):
    """Settings of ``edgecompress quantize``."""

    MOVED: ClassVar[dict[str, str]] = {
        "calibration": "calibration.data", "calibration_samples": "calibration.samples",
        "calibration_method": "calibration.method", "percentile": "calibration.percentile",
        "per_channel": "int8.per_channel", "weight_type": "int8.weight_type", "reduce_range": "int8.reduce_range",
        "weights_only": "int8.weights_only", "activation_bits": "int8.activation_bits",
        "block_size": "int4.block_size", "symmetric": "int4.symmetric",
        "int4_algorithm": "int4.algorithm", "gguf_type": "gguf.type", "imatrix": "gguf.imatrix", "embeddings_bits": "int4.embeddings_bits", "lm_head_bits": "int4.lm_head_bits",
        "qat_steps": "qad.steps", "qat_data": "qad.data", "qat_source": "qad.source", "qat_lr": "qad.lr",
        "qat_batch_size": "qad.batch_size", "qat_lora_rank": "qad.lora_rank",
        "max_drop": "accuracy.max_drop", "min_retention": "accuracy.min_retention", "data": "accuracy.data",
        "metric": "accuracy.metric", "eval_samples": "accuracy.samples",
        "max_fp32_fraction": "accuracy.max_fp32_fraction", "rank_by": "accuracy.rank_by",
        "max_perplexity_increase": "accuracy.max_perplexity_increase",
        "speed_aware": "speed.aware", "speed_threads": "speed.threads", "speed_seconds": "speed.seconds",
        "refuse_slower": "speed.refuse_slower",
        "target_vnni": "target.vnni", "target_x86": "target.x86", "target_runtime": "target.runtime",
        "target_provider": "target.provider",
    }

    precision: QuantPrecision = Field(QuantPrecision.int8, description="Target precision.")
    mode: QuantMode = Field(
        QuantMode.dynamic,
        description="dynamic: no data needed, activations quantized at run time (best on CPUs); "
        "static: activations calibrated on --calibration data, QDQ format (what TensorRT and NPUs need).",
    )
    op_types: list[str] | None = Field(
        None,
        description="Operator types to quantize. Default: ONNX Runtime's set for dynamic (MatMul, "
        "Attention, Gather embeddings, ...); MatMul and Attention only for static (quantizing "
        "Add/Softmax/LayerNorm inputs costs accuracy in transformers).",
    )
    exclude_nodes: list[str] = Field(default_factory=list, description="Node names kept in float.")
    parity_samples: int = Field(32, ge=1, description="Inputs used to measure agreement with the input model.")
    sample_data: str | None = Field(
        None, description="Data file for the parity inputs (default: the calibration data in static mode, else "
        "built-in texts or noise images).")
    strict: bool = Field(
        False, description="Fail (exit code 1, nothing written) instead of warning when the parity check with the "
        "input model collapses (mean output cosine < 0.95 or argmax agreement < 0.5), or when INT8 runs slower "
        "than its input (speed.refuse_slower); recipes set it (for collapses).")
    embedding_precision: EmbeddingPrecision = Field(
        EmbeddingPrecision.int8,
        description="INT4 and dynamic INT8: precision of the embedding table (Gather); int4 (--block-size values "
        "along the hidden dimension, two per byte; only the gathered rows are unpacked) runs in onnxruntime.",
    )
    calibration: Calibration = Field(default_factory=Calibration, description="The calibration data.")
    int8: Int8 = Field(default_factory=Int8, description="INT8 weights.")
    int4: Int4 = Field(default_factory=Int4, description="INT4 weight-only blocks.")
    gguf: Gguf = Field(default_factory=Gguf, description="GGUF (llama.cpp) quantization types.")
    qad: Qad = Field(default_factory=Qad, description="Quantization-aware distillation.")
    accuracy: Accuracy = Field(default_factory=Accuracy, description="Accuracy-aware quantization.")
    speed: Speed = Field(default_factory=Speed, description="Speed-aware INT8.")
    target: Target = Field(default_factory=Target, description="The target device (from a profile).")

    def given_keys(self) -> set[str]:
        """The flat keys (CLI flag names) of the options set explicitly: what the stages' "would be ignored" checks
        compare with."""
        return {self.flat_key(path) for path in self.given()}

    @property
    def accuracy_aware(self) -> bool:
        return self.accuracy.max_drop is not None or self.accuracy.min_retention is not None

    def user_metric(self):
        """``metric`` imported (None when unset): :func:`compress.validation.user_metric.load_metric`."""
        if not self.accuracy.metric:
            return None
        from compress.validation.user_metric import load_metric

        return load_metric(self.accuracy.metric)

    @classmethod
    def profile_settings(cls, profile, settings: dict | None = None) -> dict:
        """What a device profile implies, nested as the settings nest it: its CPU (VNNI, x86) for the INT8 defaults,
        its runtime and provider for the INT4 checks, its threads for speed-aware INT8, and, with eval data and no
        ``max_drop`` in ``settings`` (flat keys or nested), its min_accuracy_retention budget as the accuracy-aware
        target. ``profile``: a name, a file or a loaded profile."""
        from compress.host.cpu import has_vnni
        from compress.profiles.load import load_profile
        from compress.profiles.schema import DeviceProfile

        prof = profile if isinstance(profile, DeviceProfile) else load_profile(str(profile))
        given = cls.nest({k: v for k, v in (settings or {}).items() if v is not None})
        accuracy, speed = given.get("accuracy") or {}, given.get("speed") or {}
        target = {"vnni": prof.hardware.vnni or has_vnni(prof.hardware.simd),
                  "x86": str(prof.hardware.arch) == "x86_64", "runtime": prof.runtime.name,
                  "provider": prof.runtime.provider}
        out: dict = {"target": {k: v for k, v in target.items() if v is not None}}
        if speed.get("aware") and prof.runtime.threads:
            out["speed"] = {"threads": prof.runtime.threads}
        if accuracy.get("data") and accuracy.get("max_drop") is None and \
                prof.budgets.min_accuracy_retention is not None:
            out["accuracy"] = {"min_retention": min(prof.budgets.min_accuracy_retention, 1.0)}
        return out

    @classmethod
    def for_profile(cls, profile, **settings) -> QuantizeConfig:
        """Settings for a device profile (see :meth:`profile_settings`); ``settings`` (flat keys or nested) given
        here win."""
        given = cls.nest({k: v for k, v in settings.items() if v is not None})
        merged = cls.profile_settings(profile, given)
        for key, value in given.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        return cls.model_validate(merged)

    def weight_range(self) -> WeightRange:
        """The INT8 weights' type and range, decided by the target device, never by the host that quantizes (one
        artifact whichever machine builds it). ONNX Runtime's x86 U8S8 kernels without VNNI (AVX2: VPMADDUBSW) add
        two u8 x s8 products into a saturating int16; 7-bit weights cannot saturate it. So s8 weights at full range
        only where the target sums them exactly (a --profile's x86 CPU with VNNI, or a CPU that is not x86), 7-bit
        where it may not, or where no target is named. U8U8 (``weight_type`` uint8) cannot saturate either, but ran
        slower than FP32 (measured on the ImageNet MobileNetV2: ``benchmarks/vision/weight_range.py``, docs/guides/quantize.md).
        Options given win. With 7-bit weights, static INT8 keeps 8 bits in the layers whose kernels cannot saturate
        (:attr:`~compress.stages.quantize.ort_quantizer.OnnxQuantizer.eight_bit_layers`)."""
        exact = self.target.vnni is True or self.target.x86 is False
        named = self.target.vnni is not None or self.target.x86 is not None
        if self.int8.reduce_range is not None:
            why = "reduce_range given"
            reduce_range = self.int8.reduce_range
        elif self.int8.weight_type is WeightType.uint8:
            why, reduce_range = "uint8 weights given: ONNX Runtime's U8U8 kernels cannot saturate", False
        else:
            target = ("a --profile's x86 CPU with VNNI" if self.target.vnni else "a --profile's CPU that is not x86") \
                if exact else "a --profile's x86 CPU without VNNI" if named else "no --profile names the target"
            why = f"{target}: " + ("u8 x s8 products are summed exactly" if exact else
                                   "ONNX Runtime's u8 x s8 kernels without VNNI (AVX2) can saturate full-range weights")
            reduce_range = not exact
        return WeightRange(self.int8.weight_type, reduce_range, why)

    def resolved_reduce_range(self) -> bool:
        return self.weight_range().reduce_range


@dataclass(frozen=True)
class WeightRange:
    """The INT8 weights as :meth:`QuantizeConfig.weight_range` decided them, and why (the manifest's
    ``weight_range``)."""

    weight_type: WeightType
    reduce_range: bool
    why: str

    def record(self) -> dict:
        return {"weight_type": str(self.weight_type), "bits": 7 if self.reduce_range else 8,
                "reduce_range": self.reduce_range, "decided_by": self.why}


def backends() -> dict[str, tuple[str, str]]:
    """Every quantize backend: its name (an artifact format; ``FORMAT-causal-lm`` for a causal LM's weight-only
    quantizer, the format's ``generator_quantizer``) -> (the module declaring ``_APPLIES``, how messages name it)."""
    from compress.formats import FORMATS

    out = dict(_BACKENDS)
    for name, fmt in FORMATS.items():
        if ref := fmt.quantizer_for("generation"):
            out[f"{name}-causal-lm"] = (ref.partition(":")[0], f"{fmt.label} causal-LM")
    return out


def backend_of(fmt: str, task: str) -> str:
    """The backend (a key of :func:`backends`) that quantizes an artifact of format ``fmt`` and task ``task``."""
    return f"{fmt}-causal-lm" if is_generator(task) else fmt


def applies(backend: str) -> frozenset[str]:
    """The settings (flat keys) ``backend`` reads, as its module declares them (``_APPLIES``)."""
    import importlib

    return frozenset(importlib.import_module(backends()[backend][0])._APPLIES)


def refuse_ignored(config: QuantizeConfig, backend: str) -> None:
    """The one check every backend's request passes first: an option given explicitly (a flag, a recipe key, a
    Python field) that ``backend`` does not read is refused in one line, naming the backends that do read it, instead
    of being ignored. The profile's target description (:data:`PROFILE_KEYS`) is context, never refused here."""
    from compress.errors import ConfigError

    ignored = sorted(config.given_keys() - applies(backend) - PROFILE_KEYS)
    if not ignored:
        return
    every = backends()
    label = every[backend][1]
    elsewhere = [every[b][1] for b in every if b != backend and ignored[0] in applies(b)]
    article = "an" if label[0] in "AEIOU" else "a"
    where = f" (it applies to {', '.join(elsewhere)} artifacts)" if elsewhere else ""
    own = _COUNTERPARTS.get(ignored[0])
    if own is not None and own[0] in applies(backend):  # the same choice under this artifact's own flag
        hint = f"this artifact's flag for it is {own[1]}"
    else:
        hint = "drop it" + (f", or quantize the model's {elsewhere[0]} export" if elsewhere else "")
    raise ConfigError(f"{', '.join(_shown(config, k) for k in ignored)} would be ignored on {article} {label} "
                      f"artifact{where}", hint=hint)


#: an option of one kind of artifact -> (the key another kind reads for the same choice, how its flag is given): a
#: refusal names the flag that does apply (a generator's embedding table: --embeddings-bits, not --embedding-precision)
_COUNTERPARTS = {"embedding_precision": ("embeddings_bits", "--embeddings-bits 8|4|32")}


def _shown(config: QuantizeConfig, key: str) -> str:
    """How a refusal names a given option: its flag, with its value unless that is a switch (``--rank-by
    leave-one-out``, ``--qat-lr 0.0001``, ``--weights-only``)."""
    from compress.settings import flag

    value = config
    for part in config.MOVED.get(key, key).split("."):
        value = getattr(value, part)
    if isinstance(value, bool) or value is None:
        return flag(key)
    return f"{flag(key)} {','.join(map(str, value)) if isinstance(value, list) else value}"
