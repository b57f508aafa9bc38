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

from compress.artifact import Artifact, Format, Precision
from compress.errors import ConfigError
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
    # --precision is refused by ExportConfig (a LiteRT export is FP32)
    import litert_torch

    from compress.stages.export.executorch import (
        check_parity,
        describe_program,
        example_rows,
        load_pytorch_source,
        traced_module,
    )

    output = EXPORT_LITERT.output(out, config, force=force)
    teacher = load_pytorch_source(source, config, EXPORT_LITERT)
    _, example, dynamic = example_rows(teacher)
    if dynamic is not None:  # text: one fixed length, the tail masked
        import torch

        example = tuple(torch.nn.functional.pad(x, (0, SEQUENCE - x.shape[1])) for x in example)
    with output.writing() as o:
        try:
            converted = litert_torch.convert(traced_module(teacher), example)
        except Exception as e:
            raise ConfigError(f"litert-torch cannot convert {type(teacher.model).__name__} "
                              f"({' '.join(str(e).split())[:200]})", hint="export to ONNX or ExecuTorch instead") from e
        converted.export(str(o.dir / MODEL_FILE))
        manifest, step = describe_program(
            o, teacher, fmt=Format.litert, precision=Precision.fp32, model_file=MODEL_FILE,
            input_shapes=[list(x.shape) for x in example], library="litert_torch",
            max_length=SEQUENCE if dynamic is not None else None)
        parity = check_parity(o, teacher, manifest, step, config, "LiteRT model", strict=True)
    log.info("wrote %s (LiteRT FP32, parity max |diff| %.2e)", output.path, parity.max_abs_diff)
    return output.artifact
