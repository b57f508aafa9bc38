"""``export``: a teacher checkpoint (or a distilled/pruned student) to ONNX, OpenVINO IR or TensorRT.

The family in the shape NNCF gives its backends: the verb here dispatches on ``config.format`` to one module per
backend, ONNX and OpenVINO IR (through ONNX) in :mod:`.onnx`, TensorRT in :mod:`.tensorrt` (shapes in
:mod:`.tensorrt_shapes`) and :mod:`.torch_tensorrt` for ``--via torch-tensorrt``. The settings and each backend's
declaration (what it accepts and produces) live in the leaf :mod:`.config` and are re-exported here.
"""

from __future__ import annotations

from pathlib import Path

from compress.artifact import Artifact
from compress.stages.export.config import ExportConfig, ExportFormat


def export(
    source: Path | str,
    out: Path | str,
    config: ExportConfig | None = None,
    *,
    force: bool = False,
) -> Artifact:
    """Export ``source`` to a new artifact at ``out`` in ``config.format``.

    ``source`` is a teacher checkpoint (or a pytorch artifact), or a model file made elsewhere (``model.onnx``,
    adopted by :mod:`.adopt`); for ``--format openvino`` it may also be
    an FP32 ONNX artifact, for ``--format tensorrt`` an unfused or QDQ ONNX artifact. The result must match
    its reference within ``config.atol`` on the parity samples, else nothing is written.
    """
    config = config or ExportConfig()
    from compress.teachers.model_files import is_model_file

    if is_model_file(source):  # a model file made elsewhere: adopt it (then convert it like any ONNX artifact)
        from compress.stages.export.adopt import adopt, adopt_then

        if Path(source).suffix.lower() == ".tflite":  # a LiteRT model stays one
            if config.format is not ExportFormat.onnx:
                from compress.errors import ConfigError

                raise ConfigError(f"{source} is a LiteRT model: it is adopted as it is",
                                  hint="leave --format out (a .tflite is not converted to another format)")
            return adopt(source, out, config, force=force)
        if config.format is ExportFormat.onnx or Path(source).suffix.lower() == ".xml":  # an IR stays an IR
            if Path(source).suffix.lower() == ".xml" and config.format is ExportFormat.tensorrt:
                from compress.errors import ConfigError

                raise ConfigError(f"{source} is an OpenVINO IR: TensorRT builds from ONNX",
                                  hint="adopt the model's ONNX file instead")
            return adopt(source, out, config, force=force)
        if config.format is ExportFormat.tensorrt:
            from compress.stages.export.tensorrt import export_tensorrt as then
        else:
            from compress.stages.export.onnx import export_onnx as then
        return adopt_then(source, out, config, force=force, export_artifact=then)
    if config.format is ExportFormat.tensorrt:
        from compress.stages.export.tensorrt import export_tensorrt

        return export_tensorrt(source, out, config, force=force)
    if config.format is ExportFormat.executorch:
        from compress.stages.export.executorch import export_executorch

        return export_executorch(source, out, config, force=force)
    if config.format is ExportFormat.coreml:
        from compress.stages.export.coreml import export_coreml

        return export_coreml(source, out, config, force=force)
    if config.format is ExportFormat.litert:
        from compress.stages.export.litert import export_litert

        return export_litert(source, out, config, force=force)
    from compress.stages.export.onnx import export_onnx

    return export_onnx(source, out, config, force=force)
