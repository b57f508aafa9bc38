"""Adopt a model file made elsewhere (``export model.onnx``): check it, upgrade an old opset, and write it as an FP32
ONNX artifact whose source is the file itself (an OpenVINO IR, ``model.xml`` + ``.bin``, as an OpenVINO artifact; a
LiteRT ``.tflite``, FP32 or already quantized, as a LiteRT artifact).

The checks are :func:`compress.teachers.model_files.inspect_model_file`'s. A graph below opset 13 is upgraded with onnx's
version converter (per-channel Q/DQ needs 13) and the step records both opsets; weights stored as ``Constant``
nodes become initializers and a BatchNormalization after a convolution is folded into it (:mod:`.onnx_normalize`,
recorded as ``normalized``). The written graph must then match
the file in ONNX Runtime within ``atol`` on the parity samples (the data given, else seeded inputs of the declared
shapes), else nothing is written. OpenVINO IR and TensorRT start from the adopted artifact, as from any FP32 ONNX one.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from compress.artifact import Artifact, Format, TextPreprocess, copy_tokenizer_files
from compress.data.inputs import sample_inputs
from compress.errors import EdgeCompressError, ModelLoadError, ParityError, first_line
from compress.stages.common import measure_parity
from compress.stages.export.config import ADOPT_LITERT, EXPORT_ONNX, EXPORT_OPENVINO, ExportConfig
from compress.stages.export.onnx_normalize import fold_batch_norms, lift_constants
from compress.storage import check_output

log = logging.getLogger(__name__)

#: the ONNX protobuf limit: larger graphs keep their weights in an external-data file
_PROTOBUF_LIMIT = 1_800_000_000


def _upgrade(model, opset: int, target: int, path: Path):
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, target)
    except Exception as e:  # noqa: BLE001 - the converter raises many types for an op it cannot move
        raise ModelLoadError(f"{path}: opset {opset} cannot be upgraded to {target} ({first_line(e)})",
                             hint=f"re-export the model at opset {target} or newer; quantization needs it") from None


def adopt(source: Path | str, out: Path | str, config: ExportConfig | None = None, *, force: bool = False) -> Artifact:
    """Write the model file ``source`` (checked, its opset upgraded where needed) as an FP32 artifact at ``out``: ONNX,
    or OpenVINO for an IR."""
    from compress.runtimes.base import load_runtime
    from compress.storage import tree_bytes
    from compress.teachers.model_files import MIN_OPSET, load_model_file

    config = config or ExportConfig()
    out = check_output(out, force)
    teacher = load_model_file(source)
    info = teacher.info
    need = tree_bytes(info.path) + sum(tree_bytes(info.path.parent / n) for n in info.external)
    ir, lite = info.format is Format.openvino, info.format is Format.litert
    upgraded = not (ir or lite) and info.opset < MIN_OPSET
    spec = EXPORT_OPENVINO if ir else ADOPT_LITERT if lite else EXPORT_ONNX
    output = spec.output(out, config, force=force)
    with output.writing(need_bytes=need) as o:
        tmp = o.dir
        if ir:  # an OpenVINO IR stays one: its two files, renamed together
            shutil.copy2(info.path, tmp / "model.xml")
            shutil.copy2(info.path.with_suffix(".bin"), tmp / "model.bin")
        elif lite:  # a LiteRT flatbuffer stays one
            shutil.copy2(info.path, tmp / "model.tflite")
        else:
            import onnx  # here only: adopting an IR or a .tflite needs no onnx

            model = onnx.load(str(info.path))  # with its external data
            if upgraded:
                log.info("upgrading %s from opset %d to %d", info.path.name, info.opset, MIN_OPSET)
                model = _upgrade(model, info.opset, MIN_OPSET, info.path)
            model, normalized = lift_constants(model)  # weights stored as Constant nodes become initializers
            model, folded = fold_batch_norms(model)  # a BatchNormalization after a convolution, into its weights
            if folded:
                normalized = {**(normalized or {}), **folded}
            large = model.ByteSize() > _PROTOBUF_LIMIT
            onnx.save(model, str(tmp / "model.onnx"), save_as_external_data=large, all_tensors_to_one_file=True,
                      location="model.onnx.data")
        if isinstance(info.preprocess, TextPreprocess):
            copy_tokenizer_files(info.path.parent, tmp)
        manifest = teacher.manifest()
        manifest.model_file = "model.xml" if ir else "model.tflite" if lite else "model.onnx"
        manifest.files = {}
        record = {"adopted": str(info.path.resolve()), "atol": config.atol, "parity_samples": config.parity_samples,
                  "sample_data": config.sample_data}
        if not (ir or lite):
            record |= {"source_opset": info.opset, "opset": MIN_OPSET if upgraded else info.opset}
            if normalized:
                record["normalized"] = normalized
        step = o.describe(manifest, input_digest=teacher.sha256, config=record)
        items = sample_inputs(config.sample_data, config.parity_samples, manifest.preprocess)
        runtime = "openvino" if ir else "litert" if lite else "onnxruntime"
        parity = measure_parity(load_runtime(teacher.as_artifact(), runtime),
                                load_runtime(o.draft(), runtime), items, manifest.labels is not None)
        step.metrics["parity"] = {**parity.as_dict(), "atol": config.atol,
                                  "reference": f"{info.path.name} in {runtime}",
                                  "texts": f"{len(items)} samples" + ("" if config.sample_data else " (seeded)")}
        if not parity.max_abs_diff <= config.atol:
            what = f"the opset-{MIN_OPSET} graph" if upgraded else "the adopted copy"
            raise ParityError(
                f"{what} differs from {info.path.name} by {parity.max_abs_diff:.3g} (allowed {config.atol:g}) on "
                f"{parity.n} samples", max_abs_diff=parity.max_abs_diff, atol=config.atol,
                hint=(f"re-export the model at opset {MIN_OPSET} or newer, or raise --atol" if upgraded else
                      "raise --atol, or report it with --debug") + "; no artifact was written")
    art = output.artifact
    log.info("adopted %s as %s (%s; parity max |diff| %.2e)", info.path, out, "OpenVINO IR" if ir else "LiteRT" if lite else
             f"opset {info.opset} -> {MIN_OPSET}" if upgraded else f"opset {info.opset}", parity.max_abs_diff)
    return art


def adopt_then(source: Path | str, out: Path | str, config: ExportConfig, *, force: bool, export_artifact) -> Artifact:
    """Adopt ``source`` into a scratch artifact, then ``export_artifact(scratch, out, config, force=force)`` it to
    another format (OpenVINO IR, TensorRT) as any FP32 ONNX artifact is."""
    import tempfile

    out = check_output(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".adopt", dir=out.parent))
    try:
        adopted = adopt(source, scratch / "onnx", ExportConfig(atol=config.atol, parity_samples=config.parity_samples,
                                                               sample_data=config.sample_data))
        assert adopted.format is Format.onnx
        return export_artifact(adopted.path, out, config, force=force)
    except EdgeCompressError as e:  # the user never saw the scratch copy: the error names their file
        for staged in (str(scratch / "onnx" / "model.onnx"), str(scratch / "onnx")):
            e.message = e.message.replace(staged, str(source))
            e.hint = e.hint and e.hint.replace(staged, str(source))
        e.args = (e.message, *e.args[1:])
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
