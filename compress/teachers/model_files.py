"""Model files made elsewhere: an ONNX graph exported by PyTorch, tf2onnx, paddle2onnx or a vendor's zoo (or an
OpenVINO IR, ``model.xml`` + ``model.bin``, or a LiteRT ``.tflite`` flatbuffer) becomes a teacher, run in its own
runtime (ONNX Runtime, OpenVINO, LiteRT) as the reference for retention, agreement and fidelity.

The graph says what it takes (input names, dtypes, shapes with symbolic dimensions); ``model.yaml`` beside the file
(``model.onnx`` → ``model.yaml``, the schema the ``.pt2`` path reads,
:class:`compress.teachers.model_description.ModelDescription`) says what it cannot::

    task: image-classification            # default: generic (judged by output fidelity), or *-classification
    labels: [cat, dog]                    # class names by id
    preprocess: {size: [224, 224], mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}   # image
    # preprocess: {kind: text}            # a tokenizer.json beside the file
    # (no preprocess: every input is fed as an array; data is an .npz with one array per input)
    dims: {height: 224, width: 224}       # values for symbolic dimensions other than the batch

:func:`inspect_model_file` checks the file before anything runs it: readable protobuf, external-data files present
and long enough, ``onnx.checker``, shape inference, operator domains ONNX Runtime implements (a custom domain is
refused by name), inputs that are not initializers. Opsets below :data:`MIN_OPSET` are upgraded when the file is
adopted (``compress.stages.export.adopt``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.artifact import (
    ArrayPreprocess,
    Artifact,
    Format,
    ImagePreprocess,
    Manifest,
    Postprocess,
    Precision,
    SourceInfo,
    StreamSpec,
    TextPreprocess,
    digest_of,
    library_versions,
)
from compress.artifact_entries import TensorSpec
from compress.device.facts import sha256_file
from compress.errors import ModelLoadError, first_line
from compress.formats import file_format
from compress.tasks import Task, postprocess_for
from compress.tasks.classification import ClassPostprocess
from compress.teachers.checkpoints import InfoTeacher
from compress.teachers.model_description import (
    ModelDescription,
    check_declared,
    check_stream,
    describe_inputs,
    description_file,
    named_inputs,
    read_description,
    stream_fed,
)

__all__ = ["MIN_OPSET", "DescribedModel", "FileTeacher", "ModelFileInfo",
           "graph_specs", "inspect_model_file",
           "is_model_file", "load_model_file"]

#: per-channel QuantizeLinear/DequantizeLinear (their ``axis``) arrived in opset 13: older graphs are upgraded
MIN_OPSET = 13
#: operator domains ONNX Runtime implements (com.microsoft: its own fused and contrib operators)
KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training")


def is_model_file(path: Path | str) -> bool:
    """Is ``path`` a model file edgecompress adopts (an ONNX graph, an OpenVINO IR .xml, a LiteRT .tflite: the formats
    whose :data:`compress.formats.FORMATS` entry says ``adopt``)?"""
    p = Path(path)
    return p.is_file() and file_format(p, adopted=True) is not None


@dataclass
class ModelFileInfo:
    """What a model file is, read and checked before it runs."""

    path: Path
    format: Format
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    task: Task
    labels: list[str] | None
    preprocess: TextPreprocess | ImagePreprocess | ArrayPreprocess
    description: ModelDescription
    external: list[str] = field(default_factory=list)  # external-data files, relative to the model's folder
    postprocess: Postprocess = field(default_factory=ClassPostprocess)
    max_length: int = 0
    kind: str = "file"  # "file" (ONNX, IR: run in its runtime) or "program" (a torch.export program: run in PyTorch)
    precision: Precision = Precision.fp32  # a .tflite may come quantized
    weights: list[str] = field(default_factory=list)  # a program's file, as the exporters read it
    stream: StreamSpec | None = None  # a streaming model's calls (model.yaml's stream, its state pairs resolved)

    @property
    def architecture(self) -> str:
        return self.description.architecture or self.path.stem

    @property
    def model_type(self) -> None:
        return None


def _load_graph(path: Path):
    """The graph without its external data, with the files that data lives in checked."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as e:
        raise ModelLoadError(f"{path}: not a readable ONNX file, truncated or damaged ({first_line(e)})",
                             hint="export or download the file again") from None
    if not model.graph.node:
        raise ModelLoadError(f"{path}: the ONNX graph has no nodes (truncated or not an ONNX model)",
                             hint="export or download the file again")
    external: dict[str, int] = {}
    for init in model.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in init.external_data}
        rel = info.get("location", "")
        end = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or 0)
        external[rel] = max(external.get(rel, 0), end)
    root = path.parent.resolve()
    for rel, end in external.items():
        f = (path.parent / rel).resolve()
        if not f.is_relative_to(root):
            raise ModelLoadError(f"{path}: external data {rel!r} lies outside the model's folder",
                                 hint="keep the external-data file beside the .onnx file")
        if not f.is_file():
            raise ModelLoadError(f"{path}: its weights live in {rel}, which is missing",
                                 hint=f"copy {rel} beside {path.name} (the file the exporter wrote with it)")
        if f.stat().st_size < end:
            raise ModelLoadError(f"{path}: external data {rel} is {f.stat().st_size} bytes, shorter than the "
                                 f"{end} the graph reads (truncated)", hint=f"copy {rel} again")
    return model, sorted(external)


def _check(path: Path, model) -> int:
    """onnx.checker, operator domains, shape inference; the default-domain opset."""
    import onnx

    domains = {o.domain: o.version for o in model.opset_import}
    used = {n.domain for n in model.graph.node} | set(domains)
    custom = sorted(d for d in used if d not in KNOWN_DOMAINS)
    if custom:
        ops = sorted({n.op_type for n in model.graph.node if n.domain == custom[0]})
        raise ModelLoadError(f"{path}: custom operator domain {custom[0]!r} ({', '.join(ops[:5]) or 'declared'}): "
                             "ONNX Runtime has no kernels for it", hint="export without custom operators, or replace "
                             "them with standard ONNX ones")
    try:
        onnx.checker.check_model(str(path))
    except Exception as e:  # noqa: BLE001 - the checker raises ValidationError and a few others
        raise ModelLoadError(f"{path}: fails the ONNX checker ({first_line(e)})",
                             hint="re-export the model; onnx.checker.check_model(path) shows the same") from None
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode="com.microsoft" not in domains)
    except Exception as e:  # noqa: BLE001 - InferenceError and friends
        raise ModelLoadError(f"{path}: fails ONNX shape inference ({first_line(e)})",
                             hint="re-export the model; onnx.shape_inference.infer_shapes shows the same") from None
    return int(domains.get("", domains.get("ai.onnx", 0)))


def _spec(v) -> TensorSpec:
    import onnx

    t = v.type.tensor_type
    dims: list[int | str] = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?")
                             for d in t.shape.dim]
    return TensorSpec(name=v.name, dtype=onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, shape=dims)


def graph_specs(path: Path, model) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """An ONNX graph's inputs (initializers left out) and outputs, as the manifest describes tensors."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [_spec(v) for v in model.graph.input if v.name not in initializers]  # old exporters list weights too
    outputs = [_spec(v) for v in model.graph.output]
    for v in [*model.graph.input, *model.graph.output]:
        if not v.type.HasField("tensor_type"):
            raise ModelLoadError(f"{path}: {v.name} is not a tensor (sequence or map)",
                                 hint="edgecompress runs graphs whose inputs and outputs are tensors")
    return inputs, outputs


def _read_ir(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """An OpenVINO IR's inputs and outputs (its weights, ``.bin`` beside the ``.xml``, checked first). A dynamic
    dimension is named ``batch`` on the first axis and ``dim<i>`` elsewhere (IR dimensions carry no names)."""
    import openvino as ov

    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise ModelLoadError(f"{path}: its weights live in {weights.name}, which is missing",
                             hint=f"copy {weights.name} beside {path.name} (openvino.save_model writes both)")
    from compress.native_stderr import captured_stderr

    try:
        with captured_stderr():  # the TensorFlow frontend's absl lines, tried on a file the IR reader refused
            model = ov.Core().read_model(str(path))
    except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError and friends for a bad or truncated IR
        raise ModelLoadError(f"{path}: not a readable OpenVINO IR, truncated or with operators this OpenVINO lacks "
                             f"({first_line(e)})", hint="convert the model again with this OpenVINO version") from None

    def spec(port) -> TensorSpec:
        ps = port.get_partial_shape()
        if ps.rank.is_dynamic:
            raise ModelLoadError(f"{path}: {port.get_any_name()} has a dynamic rank",
                                 hint="reshape the model to a fixed rank before saving it")
        dims: list[int | str] = [d.get_length() if d.is_static else ("batch" if i == 0 else f"dim{i}")
                                 for i, d in enumerate(ps)]
        return TensorSpec(name=port.get_any_name(), dtype=port.get_element_type().to_dtype().name, shape=dims)

    return [spec(i) for i in model.inputs], [spec(o) for o in model.outputs]


def _read_tflite(path: Path) -> tuple[list[TensorSpec], list[TensorSpec], Precision]:
    """A LiteRT model's inputs and outputs (a dynamic dimension, -1 in its shape signature, is ``batch`` on the
    first axis and ``dim<i>`` elsewhere) and its precision: INT8 when its weights are 8-bit integers."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(path))
    except Exception as e:  # noqa: BLE001 - a bad flatbuffer or an operator this LiteRT lacks
        raise ModelLoadError(f"{path}: not a readable LiteRT model ({first_line(e)})",
                             hint="convert the model again (litert-torch, or the TensorFlow Lite converter)") from None

    def spec(d) -> TensorSpec:
        sig = d.get("shape_signature", d["shape"])
        dims: list[int | str] = [int(n) if n >= 0 else ("batch" if i == 0 else f"dim{i}") for i, n in enumerate(sig)]
        return TensorSpec(name=d["name"], dtype=d["dtype"].__name__, shape=dims)

    int8 = any(t["dtype"].__name__ == "int8" and len(t["shape"]) >= 2 for t in interpreter.get_tensor_details())
    return ([spec(d) for d in interpreter.get_input_details()], [spec(d) for d in interpreter.get_output_details()],
            Precision.int8 if int8 else Precision.fp32)


def inspect_model_file(path: Path | str) -> ModelFileInfo:
    """Read and check a model file and its ``model.yaml`` (see the module doc); nothing runs yet."""
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"{p}: no such file", hint="pass the .onnx file (or an OpenVINO .xml with its .bin, or a "
                             ".tflite)")
    from compress._optional import require

    precision = Precision.fp32
    if p.suffix.lower() == ".xml":
        require("openvino", "reading an OpenVINO IR")
        (inputs, outputs), external, opset, fmt = _read_ir(p), [p.with_suffix(".bin").name], 0, Format.openvino
    elif p.suffix.lower() == ".tflite":
        require("ai_edge_litert", "reading a LiteRT (.tflite) model")
        (inputs, outputs, precision), external, opset, fmt = _read_tflite(p), [], 0, Format.litert
    else:
        require("onnx", "reading an ONNX file")
        model, external = _load_graph(p)
        opset = _check(p, model)
        (inputs, outputs), fmt = graph_specs(p, model), Format.onnx
    desc = read_description(p)
    if desc.inputs:  # a LiteRT file's converter names are renamed; a graph that records its own is checked
        inputs = named_inputs(p, desc, inputs) if fmt is Format.litert else check_declared(p, desc, inputs)
    stream = check_stream(p, desc.stream, inputs, outputs) if desc.stream is not None else None
    task, labels, preprocess, max_length = describe_inputs(p, desc, stream_fed(stream, inputs), outputs)
    return ModelFileInfo(path=p, format=fmt, opset=opset, inputs=inputs, outputs=outputs, task=task,
                         labels=labels, preprocess=preprocess, description=desc, external=external,
                         postprocess=postprocess_for(task, desc.postprocess), max_length=max_length,
                         precision=precision, stream=stream)


def _digest(info: ModelFileInfo) -> str:
    """The teacher's identity: the model file, its external data, its model.yaml and tokenizer."""
    names = [info.path.name, *info.external]
    if description_file(info.path).is_file():
        names.append(description_file(info.path).name)
    if isinstance(info.preprocess, TextPreprocess):
        names.append(info.preprocess.tokenizer_file)
    return digest_of({n: sha256_file(info.path.parent / n) for n in names})


@dataclass
class DescribedModel(InfoTeacher):
    """What every teacher read from a file and its ``model.yaml`` shares (:class:`FileTeacher`, and
    :class:`compress.teachers.program_files.ProgramTeacher`): the face of :class:`compress.teachers.load.Teacher`."""

    info: ModelFileInfo
    sha256: str

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.info.inputs]

    @property
    def primary_output(self) -> str:
        return self.info.outputs[0].name

    def source(self) -> SourceInfo:
        return SourceInfo(path=str(self.path.resolve()), sha256=self.sha256, architecture=self.info.architecture)

    def manifest(self) -> Manifest:
        """The file described as an FP32 artifact rooted at its folder (its own format): the root of every lineage."""
        files = {n: sha256_file(self.path.parent / n) for n in [self.path.name, *self.info.external]}
        return Manifest(
            task=self.task, format=self.info.format, precision=self.info.precision, labels=self.info.labels,
            model_file=self.path.name, inputs=list(self.info.inputs), outputs=list(self.info.outputs),
            preprocess=self.info.preprocess, postprocess=self.info.postprocess, max_length=self.info.max_length,
            stream=self.info.stream, source=self.source(), files=files, versions=library_versions(),
        )

    def as_artifact(self) -> Artifact:
        return Artifact(self.path.parent, self.manifest())


@dataclass
class FileTeacher(DescribedModel):
    """An adopted model file as the FP32 reference: it runs in its own runtime (ONNX Runtime, OpenVINO), not PyTorch."""

    tokenizer: Any = None

    def encoder(self):
        from compress.data.tokenization import encoder_for

        return encoder_for(self.as_artifact())


def load_model_file(path: Path | str) -> FileTeacher:
    """An adopted model file, checked (see :func:`inspect_model_file`)."""
    info = inspect_model_file(path)
    return FileTeacher(info=info, sha256=_digest(info))
