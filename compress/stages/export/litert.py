"""``export --format litert``: a PyTorch teacher or student to a LiteRT flatbuffer (``model.tflite``) through
litert-torch, Google's PyTorch-to-LiteRT converter, checked in LiteRT's interpreter against PyTorch FP32.

litert-torch is not an extra: 0.10 pins xdsl 0.28 (through litert-converter 0.5), which needs typing-extensions < 4.13,
which pydantic >= 2.12 and executorch's cattrs refuse. Where it is installed (an environment of its own), this converts;
elsewhere the refusal names the conflict and the way round: convert there, then adopt the ``.tflite`` here
(``edgecompress export model.tflite``), which needs only LiteRT's interpreter.
"""

from __future__ import annotations

import logging
from pathlib import Path

from compress.artifact import Artifact, Format, Precision, TensorSpec, is_artifact, library_versions, load_artifact
from compress.errors import ConfigError, ParityError
from compress.stages.export.config import EXPORT_LITERT, ExportConfig

log = logging.getLogger("compress.stages.export")

MODEL_FILE = "model.tflite"
#: tokens a converted text model takes (litert-torch 0.10 cannot convert BERT's dynamic sequence length): the runtime
#: pads shorter inputs with masked positions and truncates longer ones
SEQUENCE = 128
CONFLICT = ("litert-torch 0.10 cannot be installed beside edgecompress's other packages (it pins xdsl 0.28, which "
            "needs typing-extensions < 4.13; pydantic >= 2.12 and executorch need newer)")


def export_litert(source: Path | str, out: Path | str, config: ExportConfig, *, force: bool = False) -> Artifact:
    """Convert ``source`` (a teacher checkpoint or a pytorch artifact) to a LiteRT artifact at ``out`` (FP32)."""
    import importlib.util

    if importlib.util.find_spec("litert_torch") is None:
        raise ConfigError(f"export --format litert needs litert-torch: {CONFLICT}",
                          hint="convert in an environment of its own (pip install litert-torch; litert_torch.convert"
                          "(model, example).export('model.tflite')), then adopt it: edgecompress export model.tflite")
    if config.precision is not None:
        raise ConfigError("--precision applies to TensorRT and ExecuTorch; a LiteRT export is FP32",
                          hint="quantize with ai-edge-quantizer where litert-torch runs, then adopt the .tflite")
    import litert_torch

    from compress.runtimes.base import load_runtime
    from compress.runtimes.torch_backend import TorchBackend
    from compress.stages.common import measure_parity
    from compress.data.inputs import sample_inputs
    from compress.stages.export.executorch import example_rows, traced_module
    from compress.teachers.load import load_teacher

    output = EXPORT_LITERT.output(out, config, force=force)
    source = Path(source)
    if is_artifact(source):
        EXPORT_LITERT.check(load_artifact(source))
    teacher = load_teacher(source, config.task, allow_pickle=config.allow_pickle,
                           trust_remote_code=config.trust_remote_code)
    _, example, dynamic = example_rows(teacher)
    if dynamic is not None:  # text: one fixed length, the tail masked
        import torch

        example = tuple(torch.nn.functional.pad(x, (0, SEQUENCE - x.shape[1])) for x in example)
    with output.writing() as o:
        try:
            converted = litert_torch.convert(traced_module(teacher), example)
        except Exception as e:  # noqa: BLE001 - the converter raises many types; its first line names the operator
            raise ConfigError(f"litert-torch cannot convert {type(teacher.model).__name__} "
                              f"({' '.join(str(e).split())[:200]})", hint="export to ONNX or ExecuTorch instead") from e
        converted.export(str(o.dir / MODEL_FILE))
        teacher.save_inputs(o.dir)
        manifest = teacher.manifest()
        manifest.source, prior = teacher.lineage()
        manifest.format, manifest.precision, manifest.model_file = Format.litert, Precision.fp32, MODEL_FILE
        manifest.inputs = [TensorSpec(name=t.name, dtype=t.dtype, shape=list(x.shape))
                           for t, x in zip(manifest.inputs, example)]
        manifest.outputs = [TensorSpec(name=t.name, dtype=t.dtype, shape=[1, *t.shape[1:]])
                            for t in manifest.outputs[:1]]
        if dynamic is not None:
            manifest.max_length = SEQUENCE
        manifest.files = {}
        manifest.versions = library_versions("litert_torch")
        step = o.describe(manifest, input_digest=teacher.sha256, lineage=prior)
        samples = sample_inputs(config.sample_data, config.parity_samples, manifest.preprocess)
        parity = measure_parity(TorchBackend.from_teacher(teacher), load_runtime(o.draft()), samples,
                                manifest.labels is not None)
        step.metrics["parity"] = {**parity.as_dict(), "atol": config.atol, "reference": "PyTorch FP32"}
        if not parity.max_abs_diff <= config.atol:
            raise ParityError(f"the LiteRT model differs from PyTorch FP32 by {parity.max_abs_diff:.3g} (allowed "
                              f"{config.atol:g}) on {parity.n} samples", max_abs_diff=parity.max_abs_diff,
                              atol=config.atol, hint="raise --atol if the difference is acceptable; no artifact "
                              "was written")
    log.info("wrote %s (LiteRT FP32, parity max |diff| %.2e)", output.path, parity.max_abs_diff)
    return output.artifact
