"""Settings of ``export`` (every backend: ONNX, OpenVINO, TensorRT, Torch-TensorRT): the config leaf that the
export verb and its backends import, never the other way round."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from compress.artifact import Format, Precision, Task
from compress.stages.spec import StageSpec, pairs

CONFIG_VERSION = 1
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

    mean_minmax = "mean-minmax"
    minmax = "minmax"
    histogram = "histogram"


class ExportFormat(StrEnum):
    onnx = "onnx"
    openvino = "openvino"
    tensorrt = "tensorrt"
    executorch = "executorch"
    litert = "litert"
    coreml = "coreml"


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


class ExportConfig(BaseModel):
    """Settings of ``edgecompress export``."""

    model_config = ConfigDict(extra="forbid")

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
    # --format tensorrt (compress.stages.export.tensorrt)
    precision: TrtPrecision | None = Field(
        None, description="TensorRT: fp16 (FP32 ONNX built with the FP16 flag; the default) or int8 (explicit "
        "QDQ quantization following TensorRT's rules, calibrated on --calibration). ExecuTorch: int8 (PT2E with "
        "the XNNPACK quantizer before lowering); default FP32. Core ML: int8 (INT8 weights, FP16 arithmetic); default "
        "FP16.",
    )
    int8_mode: Int8Mode | None = Field(
        None, description="ExecuTorch int8: static activations calibrated on --calibration (the default for "
        "images) or dynamic (scales at run time, no calibration; the default for text).",
    )
    calibration_method: RangeEstimator | None = Field(
        None, description="ExecuTorch static int8: the activation range estimator: mean-minmax (each calibration "
        "row's extremes, averaged; the default), minmax (the whole set's extremes) or histogram (XNNPACKQuantizer's "
        "own: the range of least L2 error). The logits keep the whole set's extremes in every case.",
    )
    embedding_precision: EmbeddingTables | None = Field(
        None, description="ExecuTorch int8: embedding tables in int8 (one scale per row, read by ExecuTorch's "
        "quantized kernels, which the app must link; the default) or fp32 (for a runner built without them).",
    )
    calibration: str | None = Field(None, description="TensorRT and ExecuTorch int8: data file whose inputs "
                                    "calibrate activations.")
    calibration_samples: int = Field(128, ge=1, description="TensorRT and ExecuTorch int8: number of calibration "
                                     "inputs.")
    dry_run: bool = Field(
        False, description="TensorRT: write the TensorRT-ready ONNX artifact and print the trtexec command "
        "instead of building an engine (needs no TensorRT).",
    )
    profile: str | None = Field(
        None, description="TensorRT: device profile (name or file) whose measure batch/sequence set the "
        "optimisation profile shapes.",
    )
    min_shape: str | None = Field(None, pattern=r"^\d+[xX]\d+$", description="TensorRT: smallest BATCHxSEQUENCE (default 1x1).")
    opt_shape: str | None = Field(None, pattern=r"^\d+[xX]\d+$", description="TensorRT: BATCHxSEQUENCE tuned for (default: the profile's).")
    max_shape: str | None = Field(
        None, pattern=r"^\d+[xX]\d+$",
        description="TensorRT: largest BATCHxSEQUENCE (default max(4 x batch, 32) x max_length).",
    )
    shape: str | None = Field(
        None, pattern=r"^\d+[xX]\d+$", description="TensorRT: one static BATCHxSEQUENCE (fixes the ONNX axes).",
    )
    timing_cache: str | None = Field(
        None, description="TensorRT: timing cache file to reuse and update (default: timing.cache in the output).",
    )
    via: TrtVia = Field(
        TrtVia.onnx, description="TensorRT: build from ONNX (default), or compile the PyTorch model with "
        "Torch-TensorRT (fp16 only; needs torch-tensorrt matching torch, and a GPU).",
    )
