"""Settings of ``export`` (every backend: ONNX, OpenVINO, TensorRT, Torch-TensorRT): the config leaf that the
export verb and its backends import, never the other way round."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from compress.artifact import Task

CONFIG_VERSION = 1


class ExportFormat(StrEnum):
    onnx = "onnx"
    openvino = "openvino"
    tensorrt = "tensorrt"


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
    # --format tensorrt (compress.stages.tensorrt)
    precision: TrtPrecision | None = Field(
        None, description="TensorRT: fp16 (FP32 ONNX built with the FP16 flag; the default) or int8 (explicit "
        "QDQ quantization following TensorRT's rules, calibrated on --calibration).",
    )
    calibration: str | None = Field(None, description="TensorRT int8: data file whose texts calibrate activations.")
    calibration_samples: int = Field(128, ge=1, description="TensorRT int8: number of calibration texts.")
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
