"""The model formats, one entry each: the files a model of that format is, the runtime that runs it, the module that
exports it, the module that reads its graph for an estimate, the quantize backend that takes it and where it runs.

Like :data:`compress.runtimes.base.RUNTIMES`, the table holds import strings only: reading it imports no backend, so
this module is a leaf. ``export`` dispatches on it, the roofline estimate picks a graph reader by a model file's
suffix from it, ``validate`` reads which formats get a cached FP32 baseline and which run on a remote device, a
runtime is chosen for an artifact by its format's entry, model files made elsewhere are recognised by its suffixes,
and ``export --format`` offers its exportable names. Adding a format is one entry here and its modules:
:class:`compress.artifact.Format` (what a manifest is validated against) and ``ExportFormat`` (export's settings) are
made from this table.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: where a format's models run: this machine's CPU, a device over SSH (the remote runner), a phone's app, an
#: NVIDIA GPU, Apple's systems only
PLACES = ("host", "remote", "phone", "gpu", "apple")


@dataclass(frozen=True)
class FormatSpec:
    """One model format: its files, runtime, exporter, graph reader, quantizer and where it runs."""

    label: str  #: how messages name it ("OpenVINO IR")
    runtime: str  #: the runtime that runs it where a profile names none: a key of ``RUNTIMES``
    #: the model files an artifact of this format holds, the exporter's own first (empty: a Hugging Face checkpoint)
    model_files: tuple[str, ...] = ()
    companions: tuple[str, ...] = ()  #: suffixes of files beside the model file (an IR's weights, ``.bin``)
    exporter: str | None = None  #: ``"module:fn"``, ``fn(source, out, config, *, force)``; None: not an export target
    graph_reader: str | None = None  #: ``"module:fn"``, ``fn(path, batch, sequence) -> GraphCost``; None: not estimated
    #: ``"module:fn"``, the quantize backend that takes its FP32 artifacts; None: INT8 is made at export (ExecuTorch's
    #: PT2E, Core ML's INT8 weights) or not at all
    quantizer: str | None = None
    adopt: bool = False  #: a model file of this format made elsewhere is adopted by ``export FILE`` as it is
    via_onnx: bool = False  #: exported through ONNX: the export step's opset and graph optimisation apply
    baseline: bool = False  #: validate times an artifact against the teacher's FP32 export in this format (cached)
    runs_on: tuple[str, ...] = ("host",)  #: where it runs, from :data:`PLACES`
    built_for: str | None = None  #: what a model file runs on only, where it is built for one device
    #: ``"module:fn"``, the exporter of a causal language model (a generation) with its KV cache, same
    #: signature as ``exporter``; None: this format takes no generator
    generator_exporter: str | None = None
    #: ``"module:fn"``, the weight-only INT4/INT8 quantizer of a generator's artifacts in this format; None: none
    generator_quantizer: str | None = None

    def exporter_for(self, kind: str) -> str | None:
        """The exporter of a model of ``kind`` (:func:`compress.tasks.kind_of`): a generation's own
        (``generator_exporter``, with its KV cache), else the format's ``exporter`` (a stream's too)."""
        return self.generator_exporter if kind == "generation" else self.exporter

    def quantizer_for(self, kind: str) -> str | None:
        """The quantizer of an artifact of ``kind``: a generation's weight-only one (``generator_quantizer``), else the
        format's ``quantizer``."""
        return self.generator_quantizer if kind == "generation" else self.quantizer

    @property
    def suffix(self) -> str | None:
        """The suffix of the exporter's model file (``.onnx``), by which a bare file's format is known."""
        return Path(self.model_files[0]).suffix if self.model_files else None


#: format name (a :class:`compress.artifact.Format` value) -> its entry; ``export --format`` lists the exportable ones
#: in this order
FORMATS: dict[str, FormatSpec] = {
    "pytorch": FormatSpec("PyTorch", "torch", model_files=()),
    "onnx": FormatSpec(
        "ONNX", "onnxruntime", model_files=("model.onnx",), exporter="compress.stages.export.onnx:export_onnx",
        graph_reader="compress.estimates.onnx_graph:onnx_cost",
        quantizer="compress.stages.quantize.onnxruntime:quantize_onnxruntime",
        adopt=True, via_onnx=True, baseline=True, runs_on=("host", "remote"),
        generator_exporter="compress.stages.export.lm.onnx:export_genai",
        generator_quantizer="compress.stages.quantize.lm.onnx:quantize_lm_onnx",
    ),
    "openvino": FormatSpec(
        "OpenVINO IR", "openvino", model_files=("model.xml",), companions=(".bin",),
        exporter="compress.stages.export.onnx:export_onnx", graph_reader="compress.estimates.openvino_ir:openvino_cost",
        quantizer="compress.stages.quantize.openvino:quantize_openvino",
        adopt=True, via_onnx=True, baseline=True, runs_on=("host", "remote"),
        generator_exporter="compress.stages.export.lm.openvino:export_openvino_lm",
        generator_quantizer="compress.stages.quantize.lm.openvino:quantize_lm_openvino",
    ),
    "tensorrt": FormatSpec(
        "TensorRT", "tensorrt", model_files=("model.plan", "model.pt2"),
        exporter="compress.stages.export.tensorrt:export_tensorrt", via_onnx=True, runs_on=("gpu",),
        built_for="the GPU model and TensorRT version it was built with",
    ),
    "executorch": FormatSpec(
        "ExecuTorch", "executorch", model_files=("model.pte",),
        exporter="compress.stages.export.executorch:export_executorch",
        graph_reader="compress.estimates.executorch_graph:executorch_cost", baseline=True, runs_on=("host", "phone"),
        generator_exporter="compress.stages.export.lm.executorch:export_executorch_lm",
        generator_quantizer="compress.stages.quantize.lm.executorch:quantize_lm_executorch",
    ),
    "litert": FormatSpec(
        "LiteRT", "litert", model_files=("model.tflite",), exporter="compress.stages.export.litert:export_litert",
        graph_reader="compress.estimates.tflite_graph:tflite_cost",
        quantizer="compress.stages.quantize.litert:quantize_litert", adopt=True, runs_on=("host", "phone"),
    ),
    "coreml": FormatSpec(
        "Core ML", "coreml", model_files=("model.mlpackage",), exporter="compress.stages.export.coreml:export_coreml",
        graph_reader="compress.estimates.coreml_graph:coreml_cost", baseline=True, runs_on=("phone", "apple"),
    ),
    # llama.cpp's file: causal LMs only (its exporter refuses others); converted by llama.cpp's own
    # convert_hf_to_gguf.py, quantized by its quantizer (Q4_0, Q4_K_M, Q8_0), run by llama-cpp-python
    "gguf": FormatSpec(
        "GGUF (llama.cpp)", "llamacpp", model_files=("model.gguf",),
        exporter="compress.stages.export.lm.gguf:export_gguf",
        adopt=True, generator_exporter="compress.stages.export.lm.gguf:export_gguf",
        generator_quantizer="compress.stages.quantize.lm.gguf:quantize_gguf",
    ),
}


def import_string(ref: str) -> Any:
    """The object a table's ``"module:name"`` names (the module imported now)."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def export_formats() -> list[str]:
    """The formats ``export --format`` makes, in the table's order."""
    return [name for name, spec in FORMATS.items() if spec.exporter]


def remote_runtime(fmt: str) -> str | None:
    """The runtime the remote runner runs ``fmt`` artifacts with on a device over SSH; None where it cannot."""
    spec = FORMATS.get(str(fmt))
    return spec.runtime if spec and "remote" in spec.runs_on else None


def file_format(path: Path | str, *, adopted: bool = False) -> str | None:
    """The format of a bare model file by its suffix (among the formats export adopts, with ``adopted``); None when
    no format's model file has that suffix."""
    suffix = Path(path).suffix.lower()
    for name, spec in FORMATS.items():
        if spec.suffix == suffix and (spec.adopt or not adopted):
            return name
    return None
