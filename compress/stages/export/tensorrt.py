"""``export --format tensorrt``: TensorRT-ready ONNX (dry run) and serialized TensorRT engines.

The ONNX TensorRT is given is plain ONNX (no ONNX Runtime fused ``com.microsoft`` operators) with dynamic
batch/sequence axes, handled by one optimisation profile (min/opt/max shape per input), or static axes
when one shape is given. ``--precision fp16`` keeps the FP32 ONNX (TensorRT builds FP16 with its flag);
``--precision int8`` adds QDQ nodes following TensorRT's explicit-quantization rules, so no TensorRT
calibrator is needed:

* symmetric INT8 activations and weights (int8 zero point 0, no reduce_range),
* per-channel weight scales on the output-channel axis (MatMul weight ``[K, N]``: axis 1), per-tensor
  activation scales,
* QDQ on the inputs of every MatMul.

:func:`check_tensorrt_qdq` checks those rules on a graph; a generated model that breaks one is refused.

``--via torch-tensorrt`` compiles the PyTorch model with Torch-TensorRT instead
(:mod:`compress.stages.export.torch_tensorrt`).

``--dry-run`` writes that ONNX as an ONNX artifact (it runs in onnxruntime) whose manifest ``target``
records ``tensorrt_ready``, the shapes and the exact ``trtexec`` command. Without ``--dry-run`` the engine
is built with TensorRT's Python API (or ``trtexec`` when only that is installed) into ``model.plan``; the
manifest ``target`` then records the TensorRT version, GPU and compute capability it is bound to.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from compress.artifact import (
    Artifact,
    Format,
    Precision,
    child_manifest,
    copy_tokenizer_files,
    is_artifact,
    library_versions,
    load_artifact,
)
from compress.data.inputs import sample_texts
from compress.errors import ArtifactError, ConfigError, StageError
from compress.stages.common import measure_parity
from compress.stages.export.config import (
    EXPORT_TENSORRT,
    ExportConfig,
    ExportFormat,
    GraphOptimization,
    TrtPrecision,
    TrtVia,
)
from compress.stages.export.tensorrt_shapes import (
    INT8_MIN_AGREEMENT,
    PLAN,
    TIMING_CACHE,
    Shape,
    compare_in_range,
    require_agreement,
    resolve_shapes,
)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------

def _fmt(s: Shape) -> str:
    return f"{s[0]}x{s[1]}"


def trtexec_command(onnx_file: Path, plan: Path, input_names: list[str], shapes: dict[str, Shape],
                    precision: TrtPrecision, timing_cache: Path) -> list[str]:
    """The ``trtexec`` command that builds the engine (what the dry run prints and the trtexec path runs)."""

    def spec(s: Shape) -> str:
        return ",".join(f"{n}:{_fmt(s)}" for n in input_names)

    cmd = ["trtexec", f"--onnx={onnx_file}", f"--saveEngine={plan}"]
    if shapes["min"] != shapes["max"]:  # a static model takes its shapes from the graph
        cmd += [f"--minShapes={spec(shapes['min'])}", f"--optShapes={spec(shapes['opt'])}",
                f"--maxShapes={spec(shapes['max'])}"]
    # explicit quantization: --int8 only enables the INT8 kernels the QDQ nodes ask for; --fp16 lets the
    # layers left in float (LayerNorm, Softmax, GELU) run in FP16 too
    cmd += ["--fp16"] if precision is TrtPrecision.fp16 else ["--int8", "--fp16"]
    cmd += [f"--timingCacheFile={timing_cache}"]
    return cmd


# ---------------------------------------------------------------------------------------------
# TensorRT explicit-quantization rules
# ---------------------------------------------------------------------------------------------


def _output_channel_axis(consumer, input_index: int, rank: int) -> int | None:
    """The output-channel axis of a weight feeding ``consumer`` at ``input_index`` (None: no rule)."""
    if consumer.op_type == "MatMul" and input_index == 1:
        return rank - 1
    if consumer.op_type == "Gemm" and input_index == 1:
        trans_b = next((a.i for a in consumer.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if consumer.op_type in ("Conv", "ConvTranspose") and input_index == 1:
        return 0 if consumer.op_type == "Conv" else 1
    return None


def check_tensorrt_qdq(model) -> list[str]:
    """Violations of TensorRT's explicit-quantization rules in an ONNX model (empty: TensorRT-ready).

    Every QuantizeLinear/DequantizeLinear has an int8 zero point equal to 0; weights (constant inputs of a
    DequantizeLinear) are int8 with 1-D per-channel scales on the output-channel axis of the consuming
    MatMul/Gemm/Conv; activations have per-tensor (scalar) scales; every MatMul reads its inputs from
    DequantizeLinear; and no ONNX Runtime contrib (com.microsoft) operator is present.
    """
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}

    def const(name: str):
        if name in inits:
            return numpy_helper.to_array(inits[name]), inits[name].data_type
        if name in consts:
            t = next(a.t for a in consts[name].attribute if a.name == "value")
            return numpy_helper.to_array(t), t.data_type
        return None, None

    consumers: dict[str, list[tuple[Any, int]]] = {}
    producers = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
        for name in node.output:
            producers[name] = node

    out: list[str] = []
    fused = sorted({n.op_type for n in graph.node if n.domain == "com.microsoft"})
    if fused:
        out.append(f"ONNX Runtime contrib operators TensorRT cannot parse: {', '.join(fused)}")
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        out.append("no QuantizeLinear/DequantizeLinear nodes: not an explicitly quantized (QDQ) model")
    for node in qdq:
        label = f"{node.op_type} {node.name or node.output[0]}"
        if len(node.input) < 3 or not node.input[2]:
            out.append(f"{label}: no zero point (ONNX then means uint8); TensorRT needs an int8 zero point of 0")
        else:
            zp, zp_type = const(node.input[2])
            if zp is None:
                out.append(f"{label}: zero point is not a constant")
            else:
                if zp_type != TensorProto.INT8:
                    out.append(f"{label}: zero point is {TensorProto.DataType.Name(zp_type).lower()}, TensorRT needs int8")
                if zp.size and (zp != 0).any():
                    out.append(f"{label}: zero point is not 0 (asymmetric quantization)")
        scale, _ = const(node.input[1])
        if scale is None:
            out.append(f"{label}: scale is not a constant")
            continue
        weight, w_type = const(node.input[0]) if node.op_type == "DequantizeLinear" else (None, None)
        axis_attr = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if weight is None:  # activation
            if scale.size != 1:
                out.append(f"{label}: activation scale has {scale.size} values; TensorRT needs per-tensor")
            continue
        if w_type != TensorProto.INT8:
            out.append(f"{label}: weight is {TensorProto.DataType.Name(w_type).lower()}, TensorRT needs int8")
        axis = axis_attr % max(weight.ndim, 1)
        for consumer, idx in consumers.get(node.output[0], []):
            want = _output_channel_axis(consumer, idx, weight.ndim)
            if want is None:
                continue
            if scale.ndim != 1 or scale.size != weight.shape[want] or scale.size == 1 and weight.shape[want] != 1:
                out.append(f"{label}: weight of {consumer.op_type} {consumer.name} has scale shape "
                           f"{list(scale.shape)}; needs per-channel [{weight.shape[want]}] on axis {want}")
            elif axis != want:
                out.append(f"{label}: per-channel axis {axis}, the output-channel axis of {consumer.op_type} "
                           f"{consumer.name} is {want}")
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        for name in node.input[:2]:
            src = producers.get(name)
            if src is None or src.op_type != "DequantizeLinear":
                out.append(f"MatMul {node.name}: input {name} is not quantized (no DequantizeLinear before it)")
    return out


def _check_unfused(model, path: Path, source_path: str) -> None:
    fused = sorted({n.op_type for n in model.graph.node if n.domain == "com.microsoft"})
    if fused:
        raise ArtifactError(
            f"{path} holds ONNX Runtime fused operators ({', '.join(fused)}) that TensorRT cannot parse "
            "(exported with --optimize O1/O2)",
            hint=f"re-export unfused with `edgecompress export {source_path} --optimize none --out DIR`, or "
            "pass the teacher checkpoint to --format tensorrt",
        )


CALIBRATION_PERCENTILE = 99.99


def _quantize_int8(src: Artifact, dst: Path, config: ExportConfig) -> dict[str, Any]:
    """Static QDQ INT8 following TensorRT's rules (ONNX Runtime's quantize_static); returns what it did.

    Activation ranges are the 99.99th percentile of the calibration activations, not their min/max: with
    symmetric INT8 a single outlier otherwise stretches the scale for everything (SST-2 MiniLM teacher,
    dev accuracy of the QDQ model in ONNX Runtime: MinMax 0.8544, percentile 99.9 0.8773, 99.99 0.8784,
    FP32 0.8865; see benchmarks/encoders/tensorrt_ready.py).
    """
    from onnxruntime import quantization as ortq

    from compress.runtimes.ort_backend import OrtBackend
    from compress.stages.quantize.calibration import CalibrationReader

    texts = sample_texts(config.calibration.data, config.calibration.samples)
    runtime = OrtBackend(src)
    # the percentile calibrator stacks samples: one length for all
    reader = CalibrationReader(runtime.encoder, texts, set(runtime.input_names), same_length=True)
    runtime.close()
    log.info("TensorRT INT8 QDQ: calibrating on %d texts (padded to %d tokens)", len(texts), reader.length)
    ortq.quantize_static(
        str(src.model_path),
        str(dst),
        reader,
        quant_format=ortq.QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        reduce_range=False,
        activation_type=ortq.QuantType.QInt8,
        weight_type=ortq.QuantType.QInt8,
        calibrate_method=ortq.CalibrationMethod.Percentile,
        extra_options={
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "CalibPercentile": CALIBRATION_PERCENTILE,
            # ORT's default for MatMul is already axis 1 (the N of a [K, N] weight); say so explicitly
            "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
            "QDQKeepRemovableActivations": True,
            "DedicatedQDQPair": False,
            "DefaultTensorType": 1,
        },
    )
    return {"calibration_texts": len(texts), "calibration_length": reader.length,
            "calibration_method": f"percentile {CALIBRATION_PERCENTILE}"}


def _make_static(model_file: Path, shape: Shape) -> None:
    """Fix every graph input's two axes to ``shape`` (one static shape given) and re-infer shapes."""
    import onnx

    model = onnx.load(str(model_file))
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        for d, v in zip(dims, shape):
            d.ClearField("dim_param")
            d.dim_value = v
    del model.graph.value_info[:]
    onnx.save(model, str(model_file))


# ---------------------------------------------------------------------------------------------
# Engine builds (cannot run without TensorRT and a GPU)
# ---------------------------------------------------------------------------------------------


def _gpu_facts() -> dict[str, Any]:
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return {"compute_capability": f"{major}.{minor}", "gpu_name": torch.cuda.get_device_name()}
    except Exception:  # noqa: BLE001 - any torch/CUDA problem: facts unknown
        pass
    return {"compute_capability": None, "gpu_name": None}


def build_engine_python(onnx_file: Path, plan: Path, input_names: list[str], shapes: dict[str, Shape],
                        precision: TrtPrecision, timing_cache: Path) -> str:
    """Build ``plan`` with TensorRT's Python API (Builder -> ONNX parser -> profile -> serialized engine)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)  # gone (default) in TRT 10
    network = builder.create_network(0 if explicit is None else 1 << int(explicit))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise StageError(f"TensorRT's ONNX parser rejected {onnx_file}: {errors}",
                         hint="run `edgecompress export ... --dry-run` and check the model with trtexec --verbose")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name in input_names:
        profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    config.set_flag(trt.BuilderFlag.FP16)
    if precision is TrtPrecision.int8:
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: QDQ scales, no calibrator
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise StageError("TensorRT could not build an engine from the ONNX model",
                         hint="rerun with --debug for TensorRT's log")
    plan.write_bytes(bytes(serialized))
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return trt.__version__


def build_engine_trtexec(cmd: list[str]) -> str | None:
    """Run ``trtexec``; return the TensorRT version it reports."""
    log.info("running %s", shlex.join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["(no output)"]
        raise StageError(f"trtexec failed (exit {proc.returncode}): {tail[0]}", hint=f"run it yourself: {shlex.join(cmd)}")
    m = re.search(r"TensorRT version:\s*([\d.]+)", proc.stdout) or re.search(r"TensorRT v(\d+)", proc.stdout)
    return m.group(1) if m else None


def engine_parity(reference: Any, engine_art: Artifact, texts: list[str], shapes: dict[str, Shape],
                  classification: bool, precision: TrtPrecision, device: str = "cuda:0") -> dict[str, Any]:
    """Run a just-built engine against ``reference`` (the ONNX it was built from, in onnxruntime) on ``texts``.

    Returns the parity record; ``checked: false`` with the reason when the engine cannot be run here (the
    tensorrt runtime runs engines with torch CUDA tensors: a CPU-only torch, or trtexec without TensorRT's
    Python package). Raises StageError when the engine does not agree (:func:`require_agreement`).
    """
    from compress.errors import MissingBackendError
    from compress.runtimes.base import RuntimeSettings
    from compress.runtimes.tensorrt_backend import TensorRTBackend

    settings = RuntimeSettings(provider=device)
    try:
        TensorRTBackend.check_artifact(engine_art, settings)
    except (ConfigError, MissingBackendError) as e:
        log.warning("engine built but not run here: %s", e)
        return {"checked": False, "reason": str(e)}
    engine = TensorRTBackend(engine_art, settings)
    try:
        parity = compare_in_range(reference, engine.predict, texts, shapes, classification)
    finally:
        engine.close()
    if parity is None:
        return {"checked": False, "reason": f"fewer parity texts ({len(texts)}) than the smallest batch {shapes['min'][0]}"}
    fp32 = reference.artifact.precision is Precision.fp32
    require_agreement(parity, f"the {precision} engine", "the FP32 ONNX model" if fp32 else "the INT8 QDQ ONNX model",
                      "use more --calibration data or --precision fp16; no artifact was written")
    label = "ONNX FP32" if fp32 else "the INT8 QDQ ONNX"
    return {"checked": True, **parity.as_dict(), "reference": f"{label} in ONNX Runtime", "device": device}


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def _engine_builder(config: ExportConfig) -> str | None:
    """'python', 'trtexec', or None for a dry run; raises MissingBackendError before any work."""
    from compress._optional import is_available, require

    if config.tensorrt.dry_run:
        return None
    if is_available("tensorrt"):
        return "python"
    if shutil.which("trtexec"):
        return "trtexec"
    require("tensorrt", "building TensorRT engines")
    return "python"


def export_tensorrt(source: Path | str, out: Path | str, config: ExportConfig, *, force: bool = False) -> Artifact:
    """TensorRT-ready ONNX artifact (``config.tensorrt.dry_run``) or TensorRT engine artifact from ``source``.

    ``source``: a teacher checkpoint / pytorch artifact (exported to plain ONNX first), an unfused FP32
    ONNX artifact, or an INT8 QDQ ONNX artifact that already follows TensorRT's rules.
    """
    if config.tensorrt.via is TrtVia.torch_tensorrt:
        from compress.stages.export.torch_tensorrt import export_torch_tensorrt

        return export_torch_tensorrt(source, out, config, force=force)
    import onnx

    from compress._optional import require
    from compress.stages.export.onnx import export_onnx as export

    precision = config.precision or TrtPrecision.fp16
    builder = _engine_builder(config)  # before any work
    output = EXPORT_TENSORRT.output(out, config, force=force)
    out = output.path
    source = Path(source)
    if out.resolve() == source.resolve():
        raise ConfigError("--out is the source directory", hint="choose a new directory for the artifact")
    source_art = load_artifact(source) if is_artifact(source) else None
    if source_art is not None:
        EXPORT_TENSORRT.check(source_art)
        if source_art.format is Format.pytorch:
            source_art = None
    if source_art is not None:
        model = onnx.load(str(source_art.model_path), load_external_data=False)
        _check_unfused(model, source, source_art.manifest.source.path)
        if source_art.precision is Precision.int8:
            bad = check_tensorrt_qdq(model)
            if bad:
                raise ArtifactError(
                    f"{source} is INT8 but not TensorRT's explicit quantization ({len(bad)} violations, first: {bad[0]})",
                    hint="pass its FP32 ONNX artifact (or the teacher) with --precision int8 to quantize it for TensorRT",
                )
            if precision is not TrtPrecision.int8:
                raise ConfigError(f"{source} is INT8 QDQ; --precision {precision} needs an FP32 source",
                                  hint="use --precision int8, or pass the FP32 artifact")
    needs_calibration = precision is TrtPrecision.int8 and (source_art is None or source_art.precision is Precision.fp32)
    if needs_calibration and not config.calibration.data:
        raise ConfigError("--precision int8 needs calibration data for the activation ranges",
                          hint="pass --calibration DATA (a few hundred representative texts)")
    require("onnxruntime", "checking the TensorRT-ready ONNX")
    from compress.runtimes.ort_backend import OrtBackend

    with output.writing() as o, tempfile.TemporaryDirectory(dir=o.dir.parent, prefix=".trt-onnx.") as scratch:
        tmp, scratch = o.dir, Path(scratch)
        if source_art is None:
            fp32_cfg = ExportConfig(
                format=ExportFormat.onnx, task=config.task, opset=config.opset, optimize=GraphOptimization.none,
                atol=config.atol, parity_samples=config.parity_samples, sample_data=config.sample_data,
                allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code,
            )
            fp32 = export(source, scratch / "fp32", fp32_cfg)
        else:
            fp32 = source_art
        manifest = child_manifest(fp32.manifest)
        shapes = resolve_shapes(config, manifest.max_length)
        onnx_dir = tmp if builder is None else scratch / "ready"
        onnx_dir.mkdir(exist_ok=True)
        onnx_file = onnx_dir / "model.onnx"
        metrics: dict[str, Any] = {}
        if needs_calibration:
            metrics["calibration"] = _quantize_int8(fp32, onnx_file, config)
            bad = check_tensorrt_qdq(onnx.load(str(onnx_file)))
            if bad:
                raise StageError(f"the INT8 QDQ model breaks TensorRT's rules ({len(bad)}): {bad[0]}",
                                 hint="report it with --debug; no artifact was written")
            metrics["qdq_rules"] = "ok"
        else:
            shutil.copyfile(fp32.model_path, onnx_file)
        if shapes["min"] == shapes["max"]:
            _make_static(onnx_file, shapes["min"])
        copy_tokenizer_files(fp32.path, onnx_dir)
        input_names = [s.name for s in fp32.manifest.inputs]
        shape_rec = {k: {n: list(v) for n in input_names} for k, v in shapes.items()}
        onnx_precision = Precision.int8 if precision is TrtPrecision.int8 else Precision.fp32
        manifest.format = Format.onnx
        manifest.precision = onnx_precision
        manifest.model_file = "model.onnx"
        if shapes["min"] == shapes["max"]:
            for spec in manifest.inputs:
                spec.shape = list(shapes["min"])
        manifest.versions = library_versions()
        step = o.describe(manifest, input_digest=fp32.digest, lineage=manifest.steps)
        ready = o.draft(onnx_dir)

        # the TensorRT-ready ONNX must still agree with the FP32 model in onnxruntime
        texts = sample_texts(config.sample_data, max(config.parity_samples, 16, shapes["min"][0]))
        static = shapes["min"] == shapes["max"]
        classification = manifest.labels is not None or manifest.task.value == "text-classification"
        parity = measure_parity(
            OrtBackend(fp32), OrtBackend(ready),
            texts[: shapes["min"][0]] if static else texts, classification,
            pad_to=shapes["min"][1] if static else None,
        )
        metrics["parity"] = {**parity.as_dict(), "reference": "ONNX FP32 in ONNX Runtime"}
        if precision is TrtPrecision.int8:
            agree = parity.argmax_agreement
            if agree is not None and agree < INT8_MIN_AGREEMENT:
                raise StageError(f"INT8 QDQ model agrees with FP32 on {agree:.0%} of samples "
                                 f"(needs {INT8_MIN_AGREEMENT:.0%})", hint="use more --calibration data, or --precision fp16")
        elif parity.max_abs_diff > config.atol:
            raise StageError(f"TensorRT-ready ONNX differs from FP32 by {parity.max_abs_diff:.3g}",
                             hint="report it with --debug")

        timing_cache = Path(config.tensorrt.timing_cache) if config.tensorrt.timing_cache else out / TIMING_CACHE
        cmd = trtexec_command(out / "model.onnx", out / PLAN, input_names, shapes, precision, timing_cache)
        target: dict[str, Any] = {"precision": str(precision), "shapes": shape_rec, "static": shapes["min"] == shapes["max"]}
        if builder is None:
            manifest.target = {"tensorrt_ready": True, **target, "engine": None, "trtexec": shlex.join(cmd)}
        else:
            built_cache = tmp / TIMING_CACHE if not config.tensorrt.timing_cache else timing_cache
            plan = tmp / PLAN
            if builder == "python":
                version = build_engine_python(onnx_file, plan, input_names, shapes, precision, built_cache)
            else:
                version = build_engine_trtexec(
                    trtexec_command(onnx_file, plan, input_names, shapes, precision, built_cache))
            copy_tokenizer_files(onnx_dir, tmp)
            manifest.format = Format.tensorrt
            manifest.precision = Precision(str(precision))
            manifest.model_file = PLAN
            manifest.versions = {**manifest.versions, "tensorrt": version}
            step.versions["tensorrt"] = version
            manifest.target = {"tensorrt_version": version, **_gpu_facts(), **target, "builder": builder}
            engine = o.draft()
            # the engine itself against the model it was built from, where it can run (it was built here)
            reference = OrtBackend(fp32)
            try:
                metrics["engine_parity"] = engine_parity(
                    reference, engine, texts, shapes, classification, precision)
            finally:
                reference.close()
        step.metrics.update(metrics)
    log.info("wrote %s (%s)", out, "TensorRT-ready ONNX" if builder is None else "TensorRT engine")
    return output.artifact
