"""``model.yaml``: what a model made elsewhere cannot say about itself (task, labels, preprocess, dims, declared
inputs, a stream), read beside an adopted file (:mod:`compress.teachers.model_files`: ONNX, OpenVINO IR, LiteRT) or a
program (:mod:`compress.teachers.program_files`: ``.pt2``, TorchScript), and resolved against the graph's tensors into
the manifest's input description, task, labels and stream, each checked before anything runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from compress.artifact import (
    ArrayPreprocess,
    ClassNames,
    ImagePreprocess,
    Postprocess,
    StreamSpec,
    TextPreprocess,
    task_postprocess,
)
from compress.artifact_entries import TensorSpec, state_input_of
from compress.data.utf8 import read_utf8
from compress.errors import ConfigError, ModelLoadError, first_line
from compress.tasks import TASKS, Task, load, postprocess_for, task_for

__all__ = ["TOKENIZER_OUTPUTS", "DeclaredInput", "ModelDescription", "check_declared", "check_stream",
           "describe_inputs", "description_file", "named_inputs", "read_description", "stream_fed"]


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


def description_file(path: Path) -> Path:
    return path.with_suffix(".yaml")


def read_yaml_mapping(yaml_file: Path, keys: str) -> dict[str, Any]:
    """A ``model.yaml``'s mapping (empty for an empty file); a file that is no YAML mapping is a one-line
    :class:`ConfigError` (``keys``: the keys the hint names)."""
    import yaml

    try:
        meta = yaml.safe_load(read_utf8(yaml_file)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{yaml_file}: unreadable YAML ({first_line(e)})", hint="fix the file") from e
    if not isinstance(meta, dict):
        raise ConfigError(f"{yaml_file}: expected a mapping", hint=f"{keys} as keys")
    return meta


def read_description(path: Path) -> ModelDescription:
    """The ``model.yaml`` beside ``path`` (an empty description when there is none)."""
    yaml_file = description_file(path)
    if not yaml_file.is_file():
        return ModelDescription()
    meta = read_yaml_mapping(yaml_file, "task, labels, preprocess, dims")
    try:
        return ModelDescription.model_validate(meta)
    except ValidationError as e:
        err = e.errors()[0]
        where = " -> ".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"{yaml_file}: unknown key {where!r}",
                              hint=f"known keys: {', '.join(ModelDescription.model_fields)}") from e
        raise ConfigError(f"{yaml_file}: {where}: {err['msg']}", hint="see docs/guides/model-files.md") from e


#: what a tokenizer feeds a text model (compress.device.feeds.TextFeeds)
TOKENIZER_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")


def named_inputs(path: Path, desc: ModelDescription, inputs: list[TensorSpec]) -> list[TensorSpec]:
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


def check_declared(path: Path, desc: ModelDescription, inputs: list[TensorSpec]) -> list[TensorSpec]:
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
                          hint="see docs/guides/model-files.md") from e
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
