"""``torch.export`` programs that are not image classifiers: a ``.pt2`` file with a ``model.yaml`` beside it whose
preprocessing is not an image's (arrays: several inputs, sensor windows, a regression or a dense output; or text, a
``tokenizer.json`` beside the file) is a teacher like an adopted ONNX file, described by the same
:class:`compress.teachers.model_files.ModelDescription`, but run in PyTorch and exported to ONNX from its own graph.

Loaded without unpickling (:func:`compress.teachers.programs.load_program`); a program exported in training mode is refused.
Image classifiers saved as ``.pt2`` keep their own loader (:mod:`compress.teachers.images`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.artifact import Format, Postprocess, Task, TextPreprocess, digest_of
from compress.device.shipped import sha256_file
from compress.errors import ModelLoadError
from compress.teachers.model_files import DescribedModel

__all__ = ["ProgramTeacher", "is_program_file", "load_program_file"]


def is_program_file(path: Path | str) -> bool:
    """A ``.pt2`` file whose ``model.yaml`` describes no image input (those are image classifiers' programs)."""
    p = Path(path)
    if not (p.is_file() and p.suffix == ".pt2" and p.with_suffix(".yaml").is_file()):
        return False
    import yaml

    try:
        meta = yaml.safe_load(p.with_suffix(".yaml").read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False  # the image loader reads it and says what is wrong
    if not isinstance(meta, dict):
        return False
    pre = meta.get("preprocess") or {}
    image = isinstance(pre, dict) and (pre.get("kind") == "image" or "size" in pre)
    return not image and meta.get("task") != Task.image_classification


@dataclass
class ProgramTeacher(DescribedModel):
    """A program and its description: the face of the other teachers (what export, validate and the PyTorch runtime
    call), run in PyTorch."""

    model: Any = None  # the program's module
    tokenizer: Any = None
    processor: Any = None

    def encoder(self):
        from compress.device.shipped import make_feeds

        return make_feeds(self.path.parent, self.info.preprocess.model_dump(), self.input_names, self.info.max_length)

    def call(self, model: Any, tensors: dict[str, Any]) -> Any:
        out = model(*[tensors[n] for n in self.input_names])
        return out[0] if isinstance(out, tuple | list) else out

    def example_inputs(self) -> dict[str, Any]:
        """Two samples' feeds (batch 2): what the ONNX exporter runs the program on."""
        import torch

        from compress.data.inputs import sample_inputs

        return {k: torch.from_numpy(v) for k, v in self.encoder().encode(sample_inputs(None, 2, self.info.preprocess))
                .items()}

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {**{n: {0: "batch_size"} for n in self.input_names}, self.primary_output: {0: "batch_size"}}

    def save_inputs(self, directory: Path) -> None:
        if isinstance(self.info.preprocess, TextPreprocess):
            from compress.artifact import copy_tokenizer_files

            copy_tokenizer_files(self.path.parent, Path(directory))


def load_program_file(path: Path | str, *, allow_pickle: bool = False) -> ProgramTeacher:
    """A program described by its ``model.yaml`` (see the module doc), loaded and checked."""
    from compress.teachers.model_files import ModelFileInfo, description_file, describe_inputs, read_description
    from compress.teachers.programs import load_program, program_inputs, program_outputs, training_mode_ops

    p = Path(path)
    program = load_program(p, allow_pickle=allow_pickle)
    training = training_mode_ops(program)
    if training:
        raise ModelLoadError(f"{p} was exported in training mode: {training[0]}",
                             hint="call model.eval() before torch.export.export, then save it again")
    inputs = program_inputs(program)
    for t in inputs:  # the program names its dynamic batch by a symbol (s0, s77, ...): call it the batch
        if t.shape and isinstance(t.shape[0], str):
            t.shape[0] = "batch_size"
    outputs = program_outputs(program)
    desc = read_description(p)
    task, labels, preprocess, max_length = describe_inputs(p, desc, inputs, outputs)
    info = ModelFileInfo(path=p, format=Format.pytorch, opset=0, inputs=inputs, outputs=outputs, task=task,
                         labels=labels, preprocess=preprocess, description=desc, max_length=max_length,
                         postprocess=desc.postprocess or Postprocess(), kind="program", weights=[p.name])
    names = [p.name, description_file(p).name]
    if isinstance(preprocess, TextPreprocess):
        names.append(preprocess.tokenizer_file)
    return ProgramTeacher(info=info, sha256=digest_of({n: sha256_file(p.parent / n) for n in names}),
                          model=program.module())
