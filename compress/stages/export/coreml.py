"""``export --format coreml``: a PyTorch teacher or student to a Core ML package (``model.mlpackage``, an ML program)
that an iOS or macOS app loads.

The path is coremltools' own: ``torch.export`` of the model (one row per call; the sequence length dynamic up to
``max_length`` for text, a fixed image), ``coremltools.convert`` to an ML program for iOS 17 / macOS 14, computing in
FP16 (Core ML's default, and what the Neural Engine runs). ``--precision int8`` then stores the weights as INT8,
symmetric per output channel (``coremltools.optimize.coreml.linear_quantize_weights``): they are dequantized to FP16
as they are used, so the arithmetic stays FP16 and no calibration data is needed. The inputs and the output carry the
teacher's names.

Core ML runs only on Apple's systems. Elsewhere the written package is checked without running it: coremltools reads
it back, and its inputs (names, element types, shapes, the text's sequence range) and its output must be those the
manifest declares. Parity with PyTorch is measured where Core ML runs (macOS) and recorded as not measured otherwise;
``validate`` then estimates (UNVERIFIED) what it cannot measure.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from compress.artifact import Artifact, Format, Precision
from compress.errors import ConfigError
from compress.progress import hidden_output
from compress.stages.export.config import EXPORT_COREML, ExportConfig

log = logging.getLogger("compress.stages.export")

MODEL_FILE = "model.mlpackage"
#: the oldest systems the package loads on: ML programs with the operators coremltools 8-9 emits for iOS 17
DEPLOYMENT_TARGET = "iOS17"


def coreml_runs_here() -> bool:
    """Core ML's runtime exists on macOS only (coremltools converts anywhere, predicts on macOS)."""
    return sys.platform == "darwin"


def _convert(teacher, int8: bool) -> tuple[Any, dict[str, Any]]:
    """The Core ML model of ``teacher`` (FP16 compute; INT8 weights with ``int8``) and what was done."""
    import time

    import coremltools as ct
    import torch

    from compress.stages.export.executorch import example_rows, short_error, traced_module

    names, example, dynamic = example_rows(teacher)
    t0 = time.perf_counter()
    try:
        program = torch.export.export(traced_module(teacher), example, dynamic_shapes=dynamic)
        program = program.run_decompositions({})
    except Exception as e:
        raise ConfigError(f"torch.export cannot capture {type(teacher.model).__name__} ({short_error(e)})",
                          hint="Core ML conversion needs a model torch.export can trace; export it to ONNX "
                          "instead") from e
    try:
        with hidden_output():
                model = ct.convert(program, convert_to="mlprogram", compute_precision=ct.precision.FLOAT16,
                               minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET))
    except Exception as e:
        raise ConfigError(f"coremltools cannot convert {type(teacher.model).__name__} ({short_error(e)})",
                          hint="the operator named has no Core ML conversion; export to ONNX or ExecuTorch "
                          "instead") from e
    record: dict[str, Any] = {"converter": "coremltools", "compute_precision": "fp16",
                              "minimum_deployment_target": DEPLOYMENT_TARGET, "batch": 1}
    if int8:
        import numpy as np
        from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

        with np.errstate(divide="ignore", invalid="ignore"), hidden_output():  # an all-zero row (a padding embedding) has scale 0:
            model = linear_quantize_weights(model, OptimizationConfig(global_config=OpLinearQuantizerConfig(  # it
                mode="linear_symmetric", granularity="per_channel")))  # dequantizes to zeros whatever it stores
        record["quantization"] = {"scheme": "coremltools linear_quantize_weights, symmetric, per-channel (tensors of "
                                            "2048 elements or more; smaller ones stay FP16)",
                                  "weights": "int8", "activations": "fp16 (weights dequantized as used)"}
    record["convert_seconds"] = round(time.perf_counter() - t0, 1)
    return _renamed(model, names, teacher), record


def _renamed(model, names: list[str], teacher):
    """``model`` with the teacher's input names (torch.export calls them ``xs``, ``xs_1``, ...) and output name."""
    import coremltools as ct

    spec = model.get_spec()
    inputs = [i.name for i in spec.description.input]
    wanted = dict(zip(inputs, names))
    out_name = teacher.manifest().outputs[0].name
    if spec.description.output[0].name != out_name:
        wanted[spec.description.output[0].name] = out_name
    for old, new in wanted.items():
        if old != new:
            ct.utils.rename_feature(spec, old, new)
    return ct.models.MLModel(spec, weights_dir=model.weights_dir, skip_model_load=True)


_ARRAY_TYPES = {65552: "float16", 65568: "float32", 131104: "int32"}  # Core ML's ArrayDataType values


def check_package(path: Path, manifest) -> dict[str, Any]:
    """Read the written package back (no Core ML runtime needed) and check it declares what ``manifest`` does: the
    input names in order, their element types and ranks, fixed dimensions and the sequence range, the output's name.
    Returns the package's interface; raises ConfigError naming the first difference."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    found = []
    for i in spec.description.input:
        arr = i.type.multiArrayType
        ranges = [[r.lowerBound, r.upperBound] for r in arr.shapeRange.sizeRanges]
        found.append({"name": i.name, "dtype": _ARRAY_TYPES.get(arr.dataType, str(arr.dataType)),
                      "shape": list(arr.shape), "range": ranges or None})
    outputs = [o.name for o in spec.description.output]
    declared = {t.name: t for t in manifest.inputs}
    problems = []
    if sorted(f["name"] for f in found) != sorted(declared):  # Core ML feeds by name: the order is free
        problems.append(f"inputs {[f['name'] for f in found]} (the manifest declares {list(declared)})")
    for f in found:
        t = declared.get(f["name"])
        if t is None:
            continue
        if len(f["shape"]) != len(t.shape):
            problems.append(f"input {f['name']} has rank {len(f['shape'])} (declared {len(t.shape)})")
        for axis, (got, want) in enumerate(zip(f["shape"], t.shape)):
            if isinstance(want, int) and f["range"] is None and got != want:
                problems.append(f"input {f['name']} axis {axis} is {got} (declared {want})")
        if (t.dtype.startswith("int") and f["dtype"] != "int32"
                or t.dtype.startswith("float") and not f["dtype"].startswith("float")):
            problems.append(f"input {f['name']} is {f['dtype']} (declared {t.dtype})")
    if outputs[:1] != [manifest.outputs[0].name]:
        problems.append(f"output {outputs[:1]} (declared {manifest.outputs[0].name})")
    if problems:
        raise ConfigError(f"the written Core ML package does not match its manifest: {problems[0]}",
                          hint="report this with the model; nothing was written")
    return {"inputs": found, "outputs": outputs, "specification_version": spec.specificationVersion}


def export_coreml(source: Path | str, out: Path | str, config: ExportConfig, *, force: bool = False) -> Artifact:
    """Export ``source`` (a teacher checkpoint or a pytorch artifact) to a Core ML package at ``out``: FP16, or INT8
    weights with ``config.precision`` int8."""
    from compress._optional import require
    from compress.stages.export.executorch import check_parity, describe_program, load_pytorch_source

    require("coremltools", "Core ML export (pip install 'edgecompress[coreml]')")
    # --int8-mode and --calibration are refused by ExportConfig: Core ML's INT8 is weights only
    int8 = config.precision is not None and config.precision.value == "int8"
    precision = Precision.int8 if int8 else Precision.fp16
    output = EXPORT_COREML.output(out, config, force=force)
    teacher = load_pytorch_source(source, config, EXPORT_COREML)
    with output.writing() as o:
        model, record = _convert(teacher, int8)
        model.save(str(o.dir / MODEL_FILE))
        manifest, step = describe_program(o, teacher, fmt=Format.coreml, precision=precision, model_file=MODEL_FILE,
                                          library="coremltools", metrics=record)
        step.metrics["package"] = package = check_package(o.dir / MODEL_FILE, manifest)
        dtypes = {i["name"]: i["dtype"] for i in package["inputs"]}  # Core ML takes int32 ids, not int64
        manifest.inputs = [t.model_copy(update={"dtype": dtypes[t.name]}) for t in manifest.inputs]
        step.metrics["exported_from"] = str(Path(source).resolve())
        if coreml_runs_here():
            check_parity(o, teacher, manifest, step, config, "Core ML package", strict=False)
        else:
            step.metrics["parity"] = {"measured": False, "reference": "PyTorch FP32",
                                      "why": f"Core ML runs only on macOS and iOS (this is {sys.platform})"}
    log.info("wrote %s (Core ML %s)", output.path, precision)
    return output.artifact
