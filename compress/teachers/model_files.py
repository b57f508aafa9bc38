"""Model files made elsewhere: an ONNX graph exported by PyTorch, tf2onnx, paddle2onnx or a vendor's zoo (or an
OpenVINO IR, ``model.xml`` + ``model.bin``, or a LiteRT ``.tflite`` flatbuffer) becomes a teacher, run in its own
runtime (ONNX Runtime, OpenVINO, LiteRT) as the reference for retention, agreement and fidelity.

The graph says what it takes (input names, dtypes, shapes with symbolic dimensions); ``model.yaml`` beside the file
(``model.onnx`` → ``model.yaml``, the schema the ``.pt2`` path reads, :class:`ModelDescription`) says what it cannot::

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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from compress.artifact import (
    ArrayPreprocess,
    Artifact,
    ClassNames,
    Format,
    ImagePreprocess,
    Manifest,
    Postprocess,
    Precision,
    SourceInfo,
    StreamSpec,
    TensorSpec,
    TextPreprocess,
    digest_of,
    library_versions,
    state_input_of,
    task_postprocess,
)
from compress.device.facts import sha256_file
from compress.errors import ConfigError, ModelLoadError, first_line
from compress.formats import file_format
from compress.tasks import TASKS, Task, load, postprocess_for, task_for
from compress.tasks.classification import ClassPostprocess
from compress.teachers.checkpoints import InfoTeacher

__all__ = ["MIN_OPSET", "DescribedModel", "FileTeacher", "ModelDescription", "ModelFileInfo",
           "graph_specs", "inspect_model_file",
           "is_model_file", "load_model_file"]

#: per-channel QuantizeLinear/DequantizeLinear (their ``axis``) arrived in opset 13: older graphs are upgraded
MIN_OPSET = 13
#: operator domains ONNX Runtime implements (com.microsoft: its own fused and contrib operators)
KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training")


class DeclaredInput(BaseModel):
    """One input of a TorchScript archive, declared in ``model.yaml``."""

    model_config = ConfigDict(extra="forbid")
    shape: list[int] = Field(description="Per-sample shape: the batch axis left out.")
    dtype: str = Field("float32", description="numpy dtype: float32, int64, ...")


class ModelDescription(BaseModel):
    """``model.yaml``: what a model file's graph cannot say about itself."""

    model_config = ConfigDict(extra="forbid")
    task: Task | None = Field(None, description="Default: *-classification when labels are given, else generic.")
    labels: ClassNames = Field(None, description="Class names by id (classifiers).")
    preprocess: dict[str, Any] | None = Field(
        None, description="kind: image (size, mean, std, ... as ImagePreprocess), kind: text (tokenizer.json beside "
        "the file) or none: every input is an array.")
    postprocess: Postprocess | None = Field(
        None, description="What the outputs mean, the task's fields only (pooling: mean for token states of a sentence "
        "encoder; boxes for a detector; ...).")
    max_length: int | None = Field(None, ge=1, description="Longest token sequence (text).")
    architecture: str | None = Field(None, description="A name for the model in reports (default: the file name).")
    dims: dict[str, int] = Field(default_factory=dict, description="Values for symbolic dimensions (not the batch).")
    inputs: dict[str, DeclaredInput] | None = Field(
        None, description="A TorchScript archive's inputs, which it does not record: name -> shape (batch axis left "
        "out) and dtype, in forward's order. Graphs and programs carry their own; a LiteRT file's are renamed by "
        "position (a converter calls them args_0, args_1, ...: a text model needs the tokenizer's names).")
    stream: StreamSpec | None = Field(
        None, description="A streaming model: the input its chunks feed, chunk and context sizes, which outputs feed "
        "which inputs on the next call ({stateN: state}), constant inputs ({sr: 16000}) and an audio sample rate.")

    @field_validator("postprocess", mode="before")
    @classmethod
    def _task_postprocess(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None or "task" not in info.data:
            return v
        task = info.data["task"]  # none given: a classifier or generic, whose postprocess is the same (class_axis)
        return task_postprocess(task or task_for(None), v, named=None if task else "generic (no task: given)")


def is_model_file(path: Path | str) -> bool:
    """Is ``path`` a model file edgecompress adopts (an ONNX graph, an OpenVINO IR .xml, a LiteRT .tflite: the formats
    whose :data:`compress.formats.FORMATS` entry says ``adopt``)?"""
    p = Path(path)
    return p.is_file() and file_format(p, adopted=True) is not None


def description_file(path: Path) -> Path:
    return path.with_suffix(".yaml")


def read_description(path: Path) -> ModelDescription:
    """The ``model.yaml`` beside ``path`` (an empty description when there is none)."""
    yaml_file = description_file(path)
    if not yaml_file.is_file():
        return ModelDescription()
    import yaml

    try:
        meta = yaml.safe_load(yaml_file.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{yaml_file}: unreadable YAML ({first_line(e)})", hint="fix the file") from e
    if not isinstance(meta, dict):
        raise ConfigError(f"{yaml_file}: expected a mapping", hint="task, labels, preprocess, dims as keys")
    try:
        return ModelDescription.model_validate(meta)
    except ValidationError as e:
        err = e.errors()[0]
        where = " -> ".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"{yaml_file}: unknown key {where!r}",
                              hint=f"known keys: {', '.join(ModelDescription.model_fields)}") from e
        raise ConfigError(f"{yaml_file}: {where}: {err['msg']}", hint="see docs/model-files.md") from e


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


#: what a tokenizer feeds a text model (compress.device.shipped.TextFeeds)
TOKENIZER_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _named_inputs(path: Path, desc: ModelDescription, inputs: list[TensorSpec]) -> list[TensorSpec]:
    """A converted LiteRT model's inputs (``serving_default_args_0``, ``..._args_1``, ...: the converter's names)
    under the names ``model.yaml`` declares, in the file's order: what a tokenizer's outputs are fed by (the runtime
    feeds them by position)."""
    declared = list(desc.inputs.items())
    yaml_file = description_file(path)
    if len(declared) != len(inputs):
        raise ConfigError(f"{yaml_file}: inputs names {len(declared)} input(s); {path.name} takes {len(inputs)}",
                          hint="declare every input of the file, in its order")
    named = []
    for (name, d), t in zip(declared, inputs):
        if [n for n in t.shape[1:]] != list(d.shape):
            raise ConfigError(f"{yaml_file}: input {name} is declared {list(d.shape)} but {t.name} is "
                              f"{t.shape[1:]} (batch axis left out)", hint="declare the shapes the file has")
        named.append(TensorSpec(name=name, dtype=t.dtype, shape=t.shape))
    return named


def _check_declared(path: Path, desc: ModelDescription, inputs: list[TensorSpec]) -> list[TensorSpec]:
    """``inputs:`` beside a file that records its own (ONNX, IR): it must say what the graph says (the same names,
    per-sample shapes that agree wherever the graph fixes a dimension), else one line; it was silently ignored."""
    yaml_file = description_file(path)
    graph = {t.name: t for t in inputs}
    if set(desc.inputs) != set(graph):
        raise ConfigError(f"{yaml_file}: inputs declares {', '.join(desc.inputs)}; {path.name} takes "
                          f"{', '.join(graph)}", hint=f"declare the graph's own inputs (edgecompress inspect "
                          f"{path.name} shows them), or leave inputs: out: {path.suffix} files record them")
    for name, d in desc.inputs.items():
        takes = graph[name].shape[1:]
        if len(takes) != len(d.shape) or any(isinstance(g, int) and g > 0 and g != n for g, n in zip(takes, d.shape)):
            raise ConfigError(f"{yaml_file}: input {name} is declared {list(d.shape)} but {path.name} takes "
                              f"{takes} (batch axis left out)", hint="declare the shapes the file has, or leave "
                              "inputs: out")
    return inputs


def _check_image_input(yaml_file: Path, pre: ImagePreprocess, t: TensorSpec) -> None:
    """The tensor ``pre`` makes of an image ([batch, C, H, W] or [batch, H, W, C]) fits the graph's input ``t``: its
    rank, and every dimension the graph fixes; else one line here, not the runtime's INVALID_ARGUMENT at the first
    run."""
    hw = pre.crop or pre.size
    made = [1 if pre.channels == "L" else 3, *hw] if pre.layout == "NCHW" else [*hw, 1 if pre.channels == "L" else 3]
    takes = list(t.shape[1:])
    fixed = [isinstance(g, int) and g > 0 for g in takes]
    if len(takes) != len(made) or any(f and g != m for f, g, m in zip(fixed, takes, made)):
        shown = ["?" if not f else g for f, g in zip(fixed, takes)]
        raise ConfigError(f"{yaml_file}: preprocess makes {pre.layout} {pre.channels} images of {made} (batch axis "
                          f"left out); input {t.name} takes {shown}",
                          hint="set size/crop, layout and channels to the graph's input, or drop preprocess to feed "
                          "it as arrays (.npz data)")


def _preprocess(path: Path, desc: ModelDescription, inputs: list[TensorSpec]):
    spec = dict(desc.preprocess or {})
    kind = spec.pop("kind", "image" if "size" in spec else "text" if spec.get("tokenizer_file") else None)
    yaml_file = description_file(path)
    try:
        if kind == "image":
            if len(inputs) != 1:
                raise ConfigError(f"{yaml_file}: image preprocessing feeds one input; the graph takes {len(inputs)}",
                                  hint="drop preprocess to feed every input as an array (.npz data)")
            if spec.setdefault("input_name", inputs[0].name) != inputs[0].name:
                raise ConfigError(f"{yaml_file}: preprocess input_name {spec['input_name']!r} is not the graph's input "
                                  f"({inputs[0].name})", hint=f"drop input_name, or set it to {inputs[0].name}")
            pre = ImagePreprocess.model_validate({"kind": "image", **spec})
            _check_image_input(yaml_file, pre, inputs[0])
            return pre
        if kind == "text":
            pre = TextPreprocess.model_validate({"kind": "text", **spec})
            if not (path.parent / pre.tokenizer_file).is_file():
                raise ConfigError(f"{yaml_file}: text preprocessing needs {pre.tokenizer_file} beside {path.name}",
                                  hint="save the tokenizer there (tokenizer.save_pretrained(DIR))")
            unfed = [t.name for t in inputs if t.name not in TOKENIZER_OUTPUTS]
            if unfed:  # a converter's names (LiteRT: serving_default_args_0, ...): nothing says which tensor is which
                raise ConfigError(f"{yaml_file}: input {unfed[0]} of {path.name} is not a tokenizer output "
                                  f"({', '.join(TOKENIZER_OUTPUTS)})", hint="name the file's inputs in model.yaml, in "
                                  "its order: inputs: {input_ids: {shape: [128], dtype: int32}, ...}")
            return pre
        if kind not in (None, "arrays"):
            raise ConfigError(f"{yaml_file}: preprocess kind {kind!r} is unknown", hint="kind: image, text or arrays")
    except ValidationError as e:
        err = e.errors()[0]
        where = " -> ".join(str(x) for x in err["loc"]) or "preprocess"
        raise ConfigError(f"{yaml_file}: preprocess -> {where}: {err['msg']}",
                          hint="see docs/model-files.md") from e
    if spec:
        raise ConfigError(f"{yaml_file}: preprocess -> {sorted(spec)[0]} applies to image or text inputs",
                          hint="arrays need no preprocess; set kind: image or kind: text")
    shapes: dict[str, list[int | None]] = {}
    for t in inputs:
        if not t.shape:
            raise ModelLoadError(f"{path}: input {t.name} is a scalar; edgecompress batches inputs on a first axis",
                                 hint="export the model with a batch dimension")
        rest = t.shape[1:]
        shapes[t.name] = [d if isinstance(d, int) and d > 0 else desc.dims.get(str(d)) for d in rest]
    unknown = sorted(set(desc.dims) - {str(d) for t in inputs for d in t.shape[1:]})
    if unknown:
        symbolic = sorted({d for t in inputs for d in t.shape[1:] if isinstance(d, str)})
        raise ConfigError(f"{yaml_file}: dims names {unknown[0]!r}, which no input has",
                          hint=f"the symbolic dimensions: {', '.join(symbolic) or '(none)'}")
    return ArrayPreprocess(shapes=shapes, dtypes={t.name: t.dtype for t in inputs})


def _task(desc: ModelDescription, preprocess) -> Task:
    if desc.task is not None:
        return desc.task
    return task_for(preprocess.kind if desc.labels else None)  # classes named: a classifier of its inputs


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
        inputs = _named_inputs(p, desc, inputs) if fmt is Format.litert else _check_declared(p, desc, inputs)
    stream = check_stream(p, desc.stream, inputs, outputs) if desc.stream is not None else None
    task, labels, preprocess, max_length = describe_inputs(p, desc, stream_fed(stream, inputs), outputs)
    return ModelFileInfo(path=p, format=fmt, opset=opset, inputs=inputs, outputs=outputs, task=task,
                         labels=labels, preprocess=preprocess, description=desc, external=external,
                         postprocess=postprocess_for(task, desc.postprocess), max_length=max_length,
                         precision=precision, stream=stream)


def check_stream(path: Path, stream: StreamSpec, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> StreamSpec:
    """``model.yaml``'s ``stream`` against the graph, before anything runs: the chunked input, every state pair (an
    output fed back into an input; read from the names, ``stateN -> state``, when none is declared), every constant,
    and a fixed last axis that takes ``context + chunk``; the spec with its state pairs resolved."""
    yaml_file = description_file(path)
    ins, outs = {t.name: t for t in inputs}, {t.name: t for t in outputs}
    if stream.input not in ins:
        raise ConfigError(f"{yaml_file}: stream input {stream.input!r} is not an input of {path.name}",
                          hint=f"its inputs: {', '.join(ins)}")
    state = dict(stream.state)
    if not state:  # read from the names: stateN -> state, present.N.key -> past_key_values.N.key, x_out -> x_in
        state = {t.name: name for t in outputs if (name := state_input_of(t.name, ins)) is not None}
    if not state:
        raise ConfigError(f"{yaml_file}: stream names no state and none of {path.name}'s outputs is named as a state "
                          "fed back (stateN -> state)", hint="name it: stream: {state: {OUTPUT: INPUT}}")
    for out, inp in state.items():
        if out not in outs:
            raise ConfigError(f"{yaml_file}: stream state output {out!r} is not an output of {path.name}",
                              hint=f"its outputs: {', '.join(outs)}")
        if inp not in ins:
            raise ConfigError(f"{yaml_file}: state output {out!r} has no matching input: {inp!r} is not an input of "
                              f"{path.name}", hint=f"feed it into one of its inputs: {', '.join(ins)}")
    for name in stream.constants:
        if name not in ins:
            raise ConfigError(f"{yaml_file}: stream constant {name!r} is not an input of {path.name}",
                              hint=f"its inputs: {', '.join(ins)}")
    fed = {stream.input, *state.values(), *stream.constants}
    unfed = [n for n in ins if n not in fed]
    if unfed:
        raise ConfigError(f"{yaml_file}: input {unfed[0]!r} of {path.name} is neither the stream's input, a state fed "
                          "back nor a constant", hint=f"give it a value: stream: {{constants: {{{unfed[0]}: ...}}}}")
    last = ins[stream.input].shape[-1] if ins[stream.input].shape else None
    if isinstance(last, int) and last > 0 and last != stream.window:
        raise ConfigError(f"{yaml_file}: stream chunk {stream.chunk} + context {stream.context} makes "
                          f"{stream.window} values per call, but input {stream.input!r} of {path.name} takes {last} "
                          "on its last axis", hint=f"set chunk and context so that they add up to {last}")
    return stream.model_copy(update={"state": state})


def stream_fed(stream: StreamSpec | None, inputs: list[TensorSpec]) -> list[TensorSpec]:
    """The inputs data feeds: all of them, or a stream's chunked input alone, its last axis ``context + chunk``
    (state and constants are the stream's own)."""
    if stream is None:
        return inputs
    t = next(t for t in inputs if t.name == stream.input)
    return [TensorSpec(name=t.name, dtype=t.dtype, shape=[*t.shape[:-1], stream.window])]


def describe_inputs(p: Path, desc: ModelDescription, inputs: list[TensorSpec], outputs: list[TensorSpec]):
    """``(task, labels, preprocess, max_length)`` of a model file from its graph's tensors and its description."""
    preprocess = _preprocess(p, desc, inputs)
    task = _task(desc, preprocess)
    labels = desc.labels
    info = TASKS[task]
    if info.needs_class_names and not labels:
        raise ConfigError(f"{description_file(p)}: task {task} needs labels", hint="labels: [class names by id]")
    if info.labels == "per-word" and labels:  # a tagger is judged by entities: its tags must be a scheme
        from compress.tasks.entities import check_scheme

        try:
            check_scheme(labels)
        except ConfigError as e:
            raise ConfigError(f"{description_file(p)}: {e.message}", hint="labels: [O, B-PER, I-PER, ...] (IOB2 "
                              "tags)") from None
    post = postprocess_for(task, desc.postprocess)
    if info.check is not None:  # the postprocess block against the output's shape and the labels, before anything runs
        load(info.check)(post, outputs[0].shape if outputs else [], labels, preprocess, str(description_file(p)))
    if info.labels == "boxes":  # no class axis: boxes, scores and classes
        return task, labels, preprocess, 0
    axis = post.class_axis if getattr(post, "class_axis", None) is not None else \
        info.class_axis if info.class_axis is not None else -1  # where the class scores are
    shape = outputs[0].shape if outputs else []
    width = shape[axis] if shape and -len(shape) <= axis < len(shape) else None
    if labels and isinstance(width, int) and width != len(labels):
        raise ConfigError(f"{description_file(p)}: {len(labels)} labels, but {outputs[0].name} gives "
                          f"{width} class scores", hint="list one name per class, in id order")
    return task, labels, preprocess, desc.max_length or (512 if preprocess.kind == "text" else 0)


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
