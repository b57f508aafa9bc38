"""Settings of ``export`` (every backend: ONNX, OpenVINO, TensorRT, Torch-TensorRT): the config leaf that the
export verb and its backends import, never the other way round."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import Field, model_validator

from compress.artifact import Format, Precision
from compress.formats import export_formats
from compress.settings import Section, Settings, flag, refuse
from compress.stages.spec import StageSpec, pairs
from compress.tasks import Task

CONFIG_VERSION = 2  # 2: options nested in sections (calibration, executorch, tensorrt)
_FROM_CHECKPOINT = "export starts from a teacher checkpoint or a pytorch artifact (a distilled or pruned student)"
_VERSIONS = ("optimum", "onnx", "onnxruntime", "openvino", "torch", "transformers")
#: PyTorch -> ONNX (torch.onnx.export, its dynamo exporter, or Optimum), FP32, parity-checked.
EXPORT_ONNX = StageSpec(
    "export", "ONNX export", accepts=pairs(Format.pytorch, Precision.fp32), produces=pairs(Format.onnx, Precision.fp32),
    versions=_VERSIONS, hint=_FROM_CHECKPOINT, config_version=CONFIG_VERSION,
)
#: PyTorch (through ONNX) or an FP32 ONNX artifact -> OpenVINO IR, FP32.
EXPORT_OPENVINO = StageSpec(
    "export", "OpenVINO export",
    accepts=pairs(Format.pytorch, Precision.fp32) | pairs(Format.onnx, Precision.fp32),
    produces=pairs(Format.openvino, Precision.fp32), versions=_VERSIONS,
    hint="export starts from a teacher checkpoint, a pytorch artifact or (for --format openvino) an FP32 ONNX artifact",
    precision_hint="export the FP32 artifact, then quantize the OpenVINO artifact (NNCF)", config_version=CONFIG_VERSION,
)
#: PyTorch or ONNX (FP32, or INT8 in TensorRT's explicit QDQ form) -> a TensorRT-ready ONNX, or an engine
#: where TensorRT and a GPU are present.
EXPORT_TENSORRT = StageSpec(
    "export", "TensorRT export",
    accepts=pairs(Format.pytorch, Precision.fp32) | pairs(Format.onnx, Precision.fp32, Precision.int8),
    produces=pairs(Format.onnx, Precision.fp32, Precision.int8)
    | pairs(Format.tensorrt, Precision.fp32, Precision.fp16, Precision.int8),
    versions=("onnx", "onnxruntime", "optimum", "torch"),
    hint="pass the teacher checkpoint or an FP32 ONNX artifact",
    precision_hint="pass the FP32 ONNX artifact or the teacher checkpoint", config_version=CONFIG_VERSION,
)
#: PyTorch -> a Torch-TensorRT compiled program (FP16), on the GPU it was built for.
EXPORT_TORCH_TENSORRT = StageSpec(
    "export", "--via torch-tensorrt", accepts=pairs(Format.pytorch, Precision.fp32),
    produces=pairs(Format.tensorrt, Precision.fp16), versions=("torch", "torch_tensorrt", "tensorrt"),
    hint="pass the teacher checkpoint or a pytorch artifact, or use --via onnx", config_version=CONFIG_VERSION,
)


#: PyTorch -> an ExecuTorch program (.pte) lowered to XNNPACK; INT8 through PT2E (compress.stages.export.executorch)
EXPORT_EXECUTORCH = StageSpec(
    "export", "ExecuTorch export", accepts=pairs(Format.pytorch, Precision.fp32),
    produces=pairs(Format.executorch, Precision.fp32, Precision.int8), versions=("torch", "executorch", "torchao"),
    hint="ExecuTorch starts from the PyTorch model: pass the teacher checkpoint or a pytorch artifact",
    precision_hint="pass the FP32 PyTorch model; --precision int8 quantizes it (PT2E) before lowering",
    config_version=CONFIG_VERSION,
)


#: PyTorch -> a Core ML package (.mlpackage), FP16 or INT8 weights (compress.stages.export.coreml)
EXPORT_COREML = StageSpec(
    "export", "Core ML export", accepts=pairs(Format.pytorch, Precision.fp32),
    produces=pairs(Format.coreml, Precision.fp16, Precision.int8), versions=("torch", "coremltools"),
    hint="Core ML starts from the PyTorch model: pass the teacher checkpoint or a pytorch artifact",
    precision_hint="pass the FP32 PyTorch model; --precision int8 stores INT8 weights",
    config_version=CONFIG_VERSION,
)


#: PyTorch -> a LiteRT flatbuffer (.tflite) through litert-torch (compress.stages.export.litert), FP32
EXPORT_LITERT = StageSpec(
    "export", "LiteRT export", accepts=pairs(Format.pytorch, Precision.fp32), produces=pairs(Format.litert, Precision.fp32),
    versions=("torch", "litert_torch", "ai_edge_litert"),
    hint="LiteRT starts from the PyTorch model: pass the teacher checkpoint or a pytorch artifact",
    config_version=CONFIG_VERSION,
)
#: a LiteRT (.tflite) file made elsewhere, adopted as it is (FP32 or already INT8): compress.stages.export.adopt
ADOPT_LITERT = StageSpec(
    "export", "LiteRT adoption", accepts=pairs(Format.litert, Precision.fp32, Precision.int8),
    produces=pairs(Format.litert, Precision.fp32, Precision.int8), versions=("ai_edge_litert",),
    hint="a .tflite file is adopted as it is", config_version=CONFIG_VERSION,
)


class EmbeddingTables(StrEnum):
    """How an ExecuTorch INT8 program stores its embedding tables."""

    int8 = "int8"
    fp32 = "fp32"


class RangeEstimator(StrEnum):
    """How ExecuTorch's static INT8 sets each activation's range from the calibration rows."""

    auto = "auto"
    mean_minmax = "mean-minmax"
    minmax = "minmax"
    histogram = "histogram"


#: the formats export makes: those of :data:`compress.formats.FORMATS` with an exporter
ExportFormat = StrEnum("ExportFormat", {name: name for name in export_formats()})


class Int8Mode(StrEnum):
    static = "static"
    dynamic = "dynamic"


class TrtPrecision(StrEnum):
    fp16 = "fp16"
    int8 = "int8"


class TrtVia(StrEnum):
    onnx = "onnx"
    torch_tensorrt = "torch-tensorrt"


class Exporter(StrEnum):
    torch = "torch"
    dynamo = "dynamo"
    optimum = "optimum"


class GraphOptimization(StrEnum):
    none = "none"
    O1 = "O1"
    O2 = "O2"


class Calibration(Section):
    """The inputs that calibrate INT8 activations (TensorRT int8, ExecuTorch static int8)."""

    data: str | None = Field(None, description="Data file whose inputs calibrate activations.")
    samples: int = Field(128, ge=1, description="Number of calibration inputs.")


class ExecuTorch(Section):
    """ExecuTorch INT8 (``--format executorch --precision int8``): PT2E with the XNNPACK quantizer."""

    int8_mode: Int8Mode | None = Field(
        None, description="Static activations calibrated on --calibration (the default for "
        "images) or dynamic (scales at run time, no calibration; the default for text).",
    )
    calibration_method: RangeEstimator | None = Field(
        None, description="The activation range estimator: auto (the default: mean-minmax and "
        "histogram both calibrated, the one whose INT8 outputs on the calibration rows are closer to FP32 kept), "
        "mean-minmax (each calibration row's extremes, averaged), minmax (the whole set's extremes) or histogram "
        "(XNNPACKQuantizer's own: the range of least L2 error). The logits keep the whole set's extremes in every "
        "case.",
    )
    embedding_precision: EmbeddingTables | None = Field(
        None, description="Embedding tables in int8 (one scale per row, read by ExecuTorch's "
        "quantized kernels, which the app must link; the default) or fp32 (for a runner built without them).",
    )


class TensorRT(Section):
    """TensorRT (``--format tensorrt``): the engine's build, its optimisation profile shapes, the builder."""

    dry_run: bool = Field(
        False, description="Write the TensorRT-ready ONNX artifact and print the trtexec command "
        "instead of building an engine (needs no TensorRT).",
    )
    profile: str | None = Field(
        None, description="Device profile (name or file) whose measure batch/sequence set the "
        "optimisation profile shapes.",
    )
    min_shape: str | None = Field(None, pattern=r"^\d+[xX]\d+$", description="Smallest BATCHxSEQUENCE (default 1x1).")
    opt_shape: str | None = Field(None, pattern=r"^\d+[xX]\d+$", description="BATCHxSEQUENCE tuned for (default: the profile's).")
    max_shape: str | None = Field(
        None, pattern=r"^\d+[xX]\d+$",
        description="Largest BATCHxSEQUENCE (default max(4 x batch, 32) x max_length).",
    )
    shape: str | None = Field(
        None, pattern=r"^\d+[xX]\d+$", description="One static BATCHxSEQUENCE (fixes the ONNX axes).",
    )
    timing_cache: str | None = Field(
        None, description="Timing cache file to reuse and update (default: timing.cache in the output).",
    )
    via: TrtVia = Field(
        TrtVia.onnx, description="Build from ONNX (default), or compile the PyTorch model with "
        "Torch-TensorRT (fp16 only; needs torch-tensorrt matching torch, and a GPU).",
    )


class Generator(Section):
    """Causal LMs (text generators): what their exporters read beside the shared options."""

    max_context: int | None = Field(
        None, ge=16, description="Causal LMs to ONNX: the longest sequence (prompt and generated tokens) the artifact "
        "is made for; its RoPE tables are cut to it (quantize stores them in FP16), and it is recorded as its context "
        "(genai_config.json, the manifest; validate refuses a longer window). Default: 4,096, or the model's own "
        "context where that is shorter.")
    llama_cpp: str | None = Field(
        None, description="GGUF: the llama.cpp source tree whose convert_hf_to_gguf.py converts a causal LM (a "
        "llama.cpp checkout or an extracted llama-cpp-python sdist's vendor/llama.cpp); default: "
        "$EDGECOMPRESS_LLAMA_CPP.")


#: the formats ``precision`` and ``calibration`` apply to
_PRECISION_FORMATS = (ExportFormat.tensorrt, ExportFormat.executorch, ExportFormat.coreml)


class ExportConfig(Settings):
    """Settings of ``edgecompress export``."""

    MOVED: ClassVar[dict[str, str]] = {
        "calibration": "calibration.data", "calibration_samples": "calibration.samples",
        "int8_mode": "executorch.int8_mode", "calibration_method": "executorch.calibration_method",
        "embedding_precision": "executorch.embedding_precision",
        "dry_run": "tensorrt.dry_run", "profile": "tensorrt.profile", "min_shape": "tensorrt.min_shape",
        "opt_shape": "tensorrt.opt_shape", "max_shape": "tensorrt.max_shape", "shape": "tensorrt.shape",
        "timing_cache": "tensorrt.timing_cache", "via": "tensorrt.via",
        "llama_cpp": "generator.llama_cpp", "max_context": "generator.max_context",
    }

    format: ExportFormat = Field(ExportFormat.onnx, description="Target format.")
    task: Task | None = Field(None, description="Task; inferred from the checkpoint's architecture when omitted.")
    opset: int = Field(
        18, ge=14, le=23,
        description="ONNX opset. 18 is Optimum's recommended minimum for transformers and runs in "
        "ONNX Runtime, OpenVINO and TensorRT 10.",
    )
    optimize: GraphOptimization = Field(
        GraphOptimization.none,
        description="ONNX Runtime transformer graph pre-optimisation (Optimum levels). none (default) keeps "
        "plain ONNX, which every later step accepts (INT4, static QDQ, TensorRT, OpenVINO) and which ONNX "
        "Runtime fuses at session creation anyway; O1 basic, O2 adds attention/LayerNorm/GELU fusions "
        "(exact math, onnxruntime-only ops; INT8 of a fused graph uses QAttention, slower than "
        "MatMulInteger on VNNI CPUs, and INT4 cannot quantize it).",
    )
    exporter: Exporter = Field(
        Exporter.torch,
        description="ONNX exporter: torch (PyTorch's torch.onnx.export, TorchScript-based; transformers 4 and "
        "5; nodes named by module), dynamo (torch.export based, needs onnxscript; generated node names) or "
        "optimum (Optimum's exporter; needs the optimum extra and transformers < 4.58).",
    )
    atol: float = Field(
        1e-4, gt=0,
        description="Largest absolute difference allowed between PyTorch and ONNX outputs (logits or "
        "pooled embeddings) on the parity samples; beyond it the export fails.",
    )
    parity_samples: int = Field(8, ge=1, le=512, description="Number of texts in the parity check.")
    sample_data: str | None = Field(None, description="Data file whose first texts are the parity samples.")
    allow_pickle: bool = Field(False, description="Allow loading pickled (.bin) weights.")
    trust_remote_code: bool = Field(False, description="Allow a checkpoint's own Python code to run.")
    precision: TrtPrecision | None = Field(
        None, description="TensorRT: fp16 (FP32 ONNX built with the FP16 flag; the default) or int8 (explicit "
        "QDQ quantization following TensorRT's rules, calibrated on --calibration). ExecuTorch: int8 (PT2E with "
        "the XNNPACK quantizer before lowering); default FP32. Core ML: int8 (INT8 weights, FP16 arithmetic); default "
        "FP16.",
    )
    calibration: Calibration = Field(default_factory=Calibration,
                                     description="TensorRT and ExecuTorch int8: the calibration inputs.")
    executorch: ExecuTorch = Field(default_factory=ExecuTorch, description="ExecuTorch int8.")
    tensorrt: TensorRT = Field(default_factory=TensorRT, description="TensorRT's build.")
    generator: Generator = Field(default_factory=Generator, description="Causal LMs: context and llama.cpp's tree.")


    @model_validator(mode="after")
    def _applies(self) -> ExportConfig:
        """Options set for a format or a precision they do not apply to are refused (one line each, alike from the
        CLI, a recipe and the Python API), rather than ignored. An option at its default is not "set": a step's
        recorded settings (every option dumped) read back as they were."""
        fmt, used = self.format, _changed(self)
        for path in ("executorch.calibration_method", "executorch.embedding_precision", "executorch.int8_mode"):
            if path in used and fmt is not ExportFormat.executorch:
                if fmt is ExportFormat.coreml and path == "executorch.int8_mode":
                    continue  # Core ML's own message, below
                raise self._refuse(path, "applies to --format executorch (quantize has its own for ONNX Runtime); "
                                   "add --format executorch --precision int8, or drop it")
        for path in used:
            if path.startswith("tensorrt.") and fmt is not ExportFormat.tensorrt:
                raise self._refuse(path, "applies to --format tensorrt only; add --format tensorrt or drop it")
            gguf_fp16 = path == "precision" and fmt == "gguf"  # GGUF: --precision fp16 writes an F16 file
            if (path == "precision" or path.startswith("calibration.")) and fmt not in _PRECISION_FORMATS \
                    and not gguf_fp16:
                raise self._refuse(path, f"applies to --format tensorrt, executorch or coreml; {fmt} exports are "
                                   "FP32 (quantize one with `edgecompress quantize`), or drop it")
        if fmt is ExportFormat.coreml:
            wrong = [p for p in ("executorch.int8_mode", "calibration.data", "calibration.samples") if p in used]
            if wrong:
                raise self._refuse(wrong[0], "does not apply to Core ML: its INT8 is weights only (FP16 "
                                   "arithmetic), which needs no calibration; drop it: --precision int8 alone stores "
                                   "INT8 weights")
        if fmt is ExportFormat.executorch and self.precision is TrtPrecision.fp16:
            raise refuse("--precision fp16 is not made for ExecuTorch here; use int8, or leave it out (FP32)")
        for path in ("executorch.int8_mode", "executorch.calibration_method", "executorch.embedding_precision"):
            if path in used and self.precision is not TrtPrecision.int8:
                raise self._refuse(path, "applies to --precision int8; add --precision int8 or drop it")
        return self

    @classmethod
    def _refuse(cls, path: str, text: str):
        """A refusal naming the option by its CLI flag first, and by its place in a recipe where that differs:
        ``--dry-run applies to ...; ... (in a recipe: tensorrt.dry_run)``."""
        key = cls.flat_key(path)
        return refuse(f"{flag(key)} {text}" + ("" if path == key else f" (in a recipe: {path})"))


def _changed(settings: Settings) -> list[str]:
    """The dotted paths of the options whose value is not their default."""
    out = []
    for name, info in type(settings).model_fields.items():
        value = getattr(settings, name)
        if isinstance(value, Section):
            out += [f"{name}.{n}" for n, sub in type(value).model_fields.items()
                    if getattr(value, n) != sub.get_default(call_default_factory=True)]
        elif value != info.get_default(call_default_factory=True):
            out.append(name)
    return out
