"""``torch.export`` programs and TorchScript archives that are not image classifiers: a ``.pt2`` file (or a
TorchScript ``.pt``/``.ts``) with a ``model.yaml`` beside it whose preprocessing is not an image's (arrays: several
inputs, sensor windows, a regression or a dense output; or text, a ``tokenizer.json`` beside the file) is a teacher
like an adopted ONNX file, described by the same :class:`compress.teachers.model_description.ModelDescription`, but run in
PyTorch and exported to ONNX from its own graph.

A program is loaded without unpickling (:func:`compress.teachers.programs.load_program`); a program exported in
training mode is refused. A TorchScript archive runs code from the file, so it needs ``allow_pickle`` like any
pickled checkpoint, and records no input signature: its ``model.yaml`` declares ``inputs`` (per-sample shapes and
dtypes), and its outputs are read from one run on zeros of those shapes. Image classifiers saved as ``.pt2`` or
TorchScript keep their own loader (:mod:`compress.teachers.images`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.artifact import Format, TextPreprocess, digest_of
from compress.device.facts import sha256_file
from compress.errors import ModelLoadError
from compress.tasks import postprocess_for, task_for
from compress.teachers.model_files import DescribedModel

__all__ = ["ProgramTeacher", "is_program_file", "load_program_file", "program_path"]


#: TorchScript archives' usual suffixes (``torch.jit.save``): adopted as programs when their model.yaml declares inputs
TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".torchscript")


def program_path(path: Path | str) -> Path | None:
    """The program or TorchScript archive ``path`` names: the file itself, or a directory's ``model.pt2`` (else its
    ``model.ts`` / ``model.pt``) when the directory is no artifact (an artifact has its manifest). None otherwise."""
    from compress.artifact import MANIFEST
    from compress.teachers.images import MODULE_FILES, PROGRAM_FILE

    p = Path(path)
    if p.is_dir() and not (p / MANIFEST).is_file():
        p = next((p / n for n in (PROGRAM_FILE, *MODULE_FILES) if (p / n).is_file()), p)
    return p if p.is_file() and p.suffix in (".pt2", *TORCHSCRIPT_SUFFIXES) else None


def is_program_file(path: Path | str) -> bool:
    """A ``.pt2`` file (or a directory holding ``model.pt2``) whose ``model.yaml`` describes no image input (those are
    image classifiers' programs), or a TorchScript archive whose ``model.yaml`` declares its ``inputs`` or names a task
    no image classifier has (it is then asked for the ``inputs`` it lacks, not told the task is not an image's)."""
    p = program_path(path)
    if p is None or not p.with_suffix(".yaml").is_file():
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
    image_task = meta.get("task") in (None, task_for("image"), task_for("image", numbers=True))
    if p.suffix != ".pt2" and not meta.get("inputs") and image_task:
        return False  # a checkpoint or an image classifier's TorchScript: the other loaders say what it is
    return not image and meta.get("task") != task_for("image")


@dataclass
class ProgramTeacher(DescribedModel):
    """A program and its description: the face of the other teachers (what export, validate and the PyTorch runtime
    call), run in PyTorch."""

    model: Any = None  # the program's module
    tokenizer: Any = None
    processor: Any = None

    def encoder(self):
        from compress.device.feeds import make_feeds

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
    from compress.teachers.model_description import describe_inputs, description_file, read_description
    from compress.teachers.model_files import ModelFileInfo
    from compress.teachers.programs import load_program, program_inputs, program_outputs, training_mode_ops

    p = program_path(path) or Path(path)
    desc = read_description(p)
    if p.suffix != ".pt2":
        module, inputs, outputs = _torchscript(p, desc, allow_pickle)
        kind = "module"  # exported by PyTorch's TorchScript exporter, as a TorchScript image classifier is
    else:
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
        module, kind = program.module(), "program"
    task, labels, preprocess, max_length = describe_inputs(p, desc, inputs, outputs)
    info = ModelFileInfo(path=p, format=Format.pytorch, opset=0, inputs=inputs, outputs=outputs, task=task,
                         labels=labels, preprocess=preprocess, description=desc, max_length=max_length,
                         postprocess=postprocess_for(task, desc.postprocess), kind=kind, weights=[p.name])
    names = [p.name, description_file(p).name]
    if isinstance(preprocess, TextPreprocess):
        names.append(preprocess.tokenizer_file)
    return ProgramTeacher(info=info, sha256=digest_of({n: sha256_file(p.parent / n) for n in names}), model=module)


def _torchscript(p: Path, desc, allow_pickle: bool):
    """A TorchScript archive loaded (opted in), its declared inputs, and its outputs read from one run on zeros."""
    import numpy as np
    import torch

    from compress.artifact_entries import TensorSpec
    from compress.errors import ConfigError
    from compress.teachers.model_description import description_file

    if not desc.inputs:  # first: --allow-pickle would not help
        raise ConfigError(f"{description_file(p)}: a TorchScript archive records no input signature",
                          hint="declare inputs: {NAME: {shape: [per-sample dims], dtype: float32}}, in forward's order")
    if not allow_pickle:
        raise ModelLoadError(f"{p} is a TorchScript archive: loading it runs code from the file",
                             hint="save the module with torch.export.save as a .pt2 program (loaded without running "
                             "code), or pass --allow-pickle if you trust where it came from")
    try:
        module = torch.jit.load(str(p), map_location="cpu").eval()
    except Exception as e:
        raise ModelLoadError(f"{p}: not a TorchScript archive ({type(e).__name__})",
                             hint="save it with torch.jit.save, or as a .pt2 program with torch.export.save") from e
    inputs = [TensorSpec(name=n, dtype=d.dtype, shape=["batch_size", *d.shape]) for n, d in desc.inputs.items()]
    zeros = [torch.from_numpy(np.zeros([2, *d.shape], dtype=d.dtype)) for d in desc.inputs.values()]
    try:
        with torch.no_grad():
            out = module(*zeros)
    except Exception as e:
        raise ConfigError(f"{description_file(p)}: the module does not run on the declared inputs "
                          f"({type(e).__name__}: {(str(e).strip().splitlines() or [''])[-1][:160]})",
                          hint="declare each input's per-sample shape and dtype, in forward's order") from e
    outs = list(out) if isinstance(out, tuple | list) else [out]
    names = ["output"] if len(outs) == 1 else [f"output{i}" for i in range(len(outs))]
    outputs = [TensorSpec(name=n, dtype=str(t.dtype).replace("torch.", ""), shape=["batch_size", *t.shape[1:]])
               for n, t in zip(names, outs)]
    return module, inputs, outputs
