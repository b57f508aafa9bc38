"""The artifact: a directory with model file(s), tokenizer files and a schema-versioned ``manifest.json``.

Every stage reads an artifact and writes a *new* one. Outputs are staged in a temporary sibling
directory and renamed into place only when complete (:func:`compress.storage.staged_dir`), so an interrupted run
never leaves a half-written directory that looks valid.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import platform
import shutil
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from compress import __version__
from compress.artifact_entries import (
    Entry,
    Role,
    TensorSpec,
    check_roles,
    inside_artifact,
    one_graph_entries,
)
from compress.device.facts import sha256_file
from compress.errors import ArtifactError, IntegrityError
from compress.formats import FORMATS
from compress.tasks import Task, postprocess_for, postprocess_models, repeated_class_name

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
#: 2: the model's graphs listed by role (``entries``); a schema-1 manifest's one ``model_file`` reads as the entry ``model``
SCHEMA_VERSION = 2


#: a model's format: one member per entry of :data:`compress.formats.FORMATS` (its files, runtime, exporter and
#: where it runs are there), so a new format is one entry in that table
Format = StrEnum("Format", {name: name for name in FORMATS})


class Precision(StrEnum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"
    int8 = "int8"
    int4 = "int4"


class TextPreprocess(BaseModel):
    """How raw text becomes the model's inputs: the ``text`` kind of input description.

    Every runtime adapter, the remote runner's controller and the serverless handler build feeds from this
    (``compress.device.feeds.make_feeds``); an image preprocessor is a second kind beside it."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["text"] = "text"
    tokenizer_file: str = Field("tokenizer.json", description="The `tokenizers` file, relative to the artifact.")
    pad_id: int | None = Field(None, description="Padding token id; None: the pad token tokenizer_config.json names.")
    words: bool = Field(False, description="Token classification: the model reads texts split into words (a string "
                        "is split at white space) and is judged by a label per word, its scores read at the word's "
                        "first sub-token (compress.device.shipped.first_subtokens).")

    @field_validator("tokenizer_file")
    @classmethod
    def _tokenizer_inside(cls, v: str) -> str:
        return inside_artifact(v)


def _distinct(names: list[str] | None) -> list[str] | None:
    why = repeated_class_name(names)
    if why:
        raise ValueError(why)
    return names


#: class names by id, each once: the ``labels`` of a manifest and of a model.yaml
ClassNames = Annotated[list[str] | None, AfterValidator(_distinct)]


class ImagePreprocess(BaseModel):
    """How an image becomes the model's input tensor: the ``image`` kind of input description, applied alike by
    every runtime, the remote runner and the serverless handler (``compress.device.feeds.ImageFeeds``: numpy + Pillow)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["image"] = "image"
    input_name: str = Field("pixel_values", description="The graph input the pixels feed.")
    resize: Literal["exact", "shortest_edge", "letterbox"] = Field(
        "exact", description="exact: to size [height, width]; shortest_edge: the shorter side to size[0], aspect kept; "
        "letterbox: into size [height, width] with the aspect kept, placed by letterbox_align, the margins filled with "
        "pad_value.")
    pad_value: int = Field(114, ge=0, le=255, description="letterbox: the 0-255 value of the margins (YOLO's grey).")
    letterbox_align: Literal["center", "top-left"] = Field(
        "center", description="letterbox: where the resized image sits, centred (ultralytics) or at the top-left "
        "corner with the margins right and below (YOLOX).")
    size: list[int] = Field(description="[height, width] (exact) or [shortest edge] (shortest_edge).")
    crop: list[int] | None = Field(None, description="Centre crop [height, width] after the resize.")
    crop_offset: Literal["floor", "round"] = Field(
        "floor", description="Where an odd margin goes: floor (Hugging Face image processors) or round (torchvision, timm).")
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"] = "bilinear"
    rescale: float = Field(1 / 255, description="Factor applied to the 0-255 pixel values before normalising.")
    mean: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0])
    channels: Literal["RGB", "BGR", "L"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"

    @model_validator(mode="after")
    def _consistent(self) -> ImagePreprocess:
        want = 1 if self.resize == "shortest_edge" else 2
        if len(self.size) != want or min(self.size) < 1:
            raise ValueError(f"size must be {want} positive number(s) for resize={self.resize}")
        if self.crop is not None and (len(self.crop) != 2 or min(self.crop) < 1):
            raise ValueError("crop must be [height, width]")
        if self.resize == "shortest_edge" and self.crop is None:
            raise ValueError("a shortest-edge resize without a crop gives images of mixed sizes; add crop: [height, "
                             "width] or use resize: exact")
        n = 1 if self.channels == "L" else 3
        if len(self.mean) != n or len(self.std) != n or min(self.std) <= 0:
            raise ValueError(f"mean and std need {n} value(s) for {self.channels} images, std > 0")
        return self


class ArrayPreprocess(BaseModel):
    """Inputs fed as arrays, one per graph input: the ``arrays`` kind of input description (an adopted model file
    whose inputs are neither text nor an image: sensor windows, audio features, several tensors).

    ``shapes`` is each input's per-sample shape (the first, batch axis left out) with the symbolic dimensions the
    graph leaves open resolved from ``model.yaml``'s ``dims`` (None where nothing fixes them: data must say);
    ``dtypes`` is what each input is fed as. ``compress.device.feeds.ArrayFeeds`` stacks samples into batches."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["arrays"] = "arrays"
    shapes: dict[str, list[int | None]] = Field(description="Per-sample shape of each input (batch axis left out).")
    dtypes: dict[str, str] = Field(description="numpy dtype each input is fed as.")

    @model_validator(mode="after")
    def _consistent(self) -> ArrayPreprocess:
        if not self.shapes or set(self.shapes) != set(self.dtypes):
            raise ValueError("shapes and dtypes must name the same, non-empty set of inputs")
        return self


class StreamSpec(BaseModel):
    """A streaming model (``model.yaml``'s ``stream``): every call takes the next chunk of a sequence plus the state the
    previous call returned (Silero VAD: 512 new samples with the previous 64 before them, ``stateN`` fed back as
    ``state``, ``sr`` always 16000). Validate, calibration, parity, the remote runner and the serverless handler run
    each sequence (a ``.wav`` file, an ``.npz``) call by call in order, the state carried; it resets per sequence."""

    model_config = ConfigDict(extra="forbid")
    input: str = Field(description="The graph input the chunks feed.")
    chunk: int = Field(ge=1, description="New values per call, along the input's last axis (audio samples).")
    context: int = Field(0, ge=0, description="Values of the previous call's input kept before the new ones (zeros "
                         "before the first call): the input's last axis takes context + chunk.")
    state: dict[str, str] = Field(
        default_factory=dict, description="Which output feeds which input on the next call: {stateN: state}. Empty: "
        "read from the graph's names (stateN -> state, present.N.key -> past_key_values.N.key, x_out -> x_in).")
    constants: dict[str, float | int | list] = Field(
        default_factory=dict, description="Inputs fed the same value on every call: {sr: 16000} (the graph's dtype).")
    sample_rate: int | None = Field(None, ge=1, description="Audio: the sample rate a .wav must have (Hz).")

    @property
    def window(self) -> int:
        """What the input's last axis takes per call: context + chunk."""
        return self.context + self.chunk


def _postprocess_tag(v: Any) -> str | None:
    return type(v).__name__ if isinstance(v, BaseModel) else None


#: What a model's outputs mean: one model per task, each in its task's module (``TASKS[task].postprocess``: a
#: classifier's class axis, a feature extractor's pooling, a detector's box layout, ...). The discriminator is the
#: manifest's ``task``, read by a callable: the block carries no tag of its own, so the manifest JSON keeps the field
#: names it always had and a task is never written twice (where the two could disagree). :func:`task_postprocess`
#: (the field's before-validator) makes a flat mapping the task's model; the callable then tags it by its class.
Postprocess = Annotated[
    Union[tuple(Annotated[m, Tag(m.__name__)] for m in postprocess_models())],  # built from the table
    Discriminator(_postprocess_tag),
]


def task_postprocess(task: Task | str | None, v: Any, named: str | None = None) -> Any:
    """A postprocess block (a mapping, a model, None) as ``task``'s model, for a validator: a field of another task is
    refused in one line naming the task. ``v`` is left as it is where ``task`` is None (it did not validate: its own
    error is reported)."""
    if task is None:
        return v
    try:
        return postprocess_for(task, v, named=named)
    except ValueError as e:
        if isinstance(e, ValidationError):
            raise
        raise PydanticCustomError("postprocess_task", str(e)) from None


class SourceInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="Path of the teacher checkpoint this lineage started from.")
    sha256: str = Field(description="Content hash of the teacher directory (see digest_dir).")
    architecture: str | None = Field(None, description="transformers architecture class name.")
    model_type: str | None = Field(None, description="transformers config.model_type.")
    origin: dict[str, Any] | None = Field(
        None, description="The model file the checkpoint was made from: a GGUF dequantized by transformers' GGUF "
                          "loader (its path, sha256, llama.cpp file type and tensor types).")


class StepRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: str = Field(description="Stage name: export, quantize, ...")
    config: dict[str, Any] = Field(default_factory=dict, description="The stage's resolved configuration.")
    config_version: int = Field(1, description="Version of the stage's config schema.")
    versions: dict[str, str | None] = Field(default_factory=dict, description="Backend versions used.")
    input_digest: str | None = Field(None, description="Content hash of the input artifact/model.")
    output_digest: str | None = Field(None, description="Content hash of the files this step wrote.")
    seconds: float = Field(0.0, description="Wall time of the step.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Checks measured by the step.")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: int = Field(SCHEMA_VERSION, description="Version of this manifest schema.")
    task: Task
    format: Format
    precision: Precision
    labels: ClassNames = Field(None, description="Class names by id (classification only).")
    entries: list[Entry] = Field(
        min_length=1, description="The model's graphs or program methods by role (one of ROLE_SETS, in its order): "
        "model; encoder, decoder; prefill, decode. The first is the main entry, whose file, inputs and outputs "
        "single-graph code reads as model_file, inputs and outputs.")
    preprocess: TextPreprocess | ImagePreprocess | ArrayPreprocess = Field(
        default_factory=TextPreprocess, discriminator="kind",
        description="How inputs are made from raw data (text: tokenizer, padding); the inputs list names what the "
        "graph takes. Manifests written before this field read as the text default.",
    )
    postprocess: Postprocess = Field(
        None, validate_default=True, description="What the outputs mean: the task's postprocess model (its fields "
        "only). Manifests written before, with one flat block of every task's fields, read as the task's.")
    max_length: int = Field(512, description="Longest sequence the tokenizer produces (truncation).")
    stream: StreamSpec | None = Field(
        None, description="A streaming model's calls (chunk, context, state fed back, constant inputs); None: one "
        "forward pass per sample. Manifests written before this field read as None.")
    source: SourceInfo
    steps: list[StepRecord] = Field(default_factory=list, description="Lineage, oldest first.")
    target: dict[str, Any] = Field(
        default_factory=dict,
        description="Facts a device-bound model needs at load time (TensorRT: tensorrt_version, "
        "compute_capability, gpu_name, profile shapes); empty for portable formats.",
    )
    files: dict[str, str] = Field(default_factory=dict, description="sha256 of every file but the manifest.")
    versions: dict[str, str | None] = Field(default_factory=dict, description="Tool/library versions.")
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))

    def collapsed(self) -> str | None:
        """Why the quantize step that made this model found it no longer computing what its input computes, in one
        phrase, else None: its parity check (``parity_vs_input``) or a generator's continuations
        (``generation_vs_input``) fell below the floors, or its static INT8 fall-back held on no candidate. quantize
        writes such a model only without ``--strict``; ``validate`` fails it (``no_collapse``) unless an accuracy
        budget measured on data holds, and ``package`` refuses it unless told ``--allow-collapsed``."""
        step = next((s for s in reversed(self.steps) if s.stage == "quantize"), None)
        if step is None:
            return None
        for key in ("parity_vs_input", "generation_vs_input"):
            found = (step.metrics.get(key) or {}).get("collapsed")
            if found:
                return "; ".join(found["below"]) if isinstance(found, dict) else str(found)
        fallback = step.metrics.get("fallback")
        if isinstance(fallback, dict) and fallback.get("needed") and fallback.get("held") is False:
            return "its INT8 check on held-out rows fails on every candidate its fall-back tried"
        return None

    @field_validator("postprocess", mode="before")
    @classmethod
    def _task_postprocess(cls, v: Any, info: ValidationInfo) -> Any:
        return task_postprocess(info.data.get("task"), v)

    @model_validator(mode="before")
    @classmethod
    def _one_graph(cls, data: Any) -> Any:
        return one_graph_entries(data)

    @field_validator("entries")
    @classmethod
    def _roles(cls, v: list[Entry]) -> list[Entry]:
        return check_roles(v)

    # -- the main entry, what single-graph code reads ---------------------------------------------------------------
    @property
    def main(self) -> Entry:
        """The main entry (the first): the one graph of a one-graph model, the encoder, the prefill."""
        return self.entries[0]

    def entry(self, role: Role | str) -> Entry:
        """The entry of ``role``; a role the artifact lacks is refused in one line naming those it has."""
        found = next((e for e in self.entries if e.role == role), None)
        if found is None:
            raise ArtifactError(f"the model has no entry {role} (its entries: {', '.join(self.roles)})")
        return found

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(str(e.role) for e in self.entries)

    @property
    def model_file(self) -> str:
        """The main entry's file."""
        return self.main.file

    @model_file.setter
    def model_file(self, value: str) -> None:
        self._one().file = inside_artifact(value)

    @property
    def inputs(self) -> list[TensorSpec]:
        """The main entry's inputs."""
        return self.main.inputs

    @inputs.setter
    def inputs(self, value: list[TensorSpec]) -> None:
        self._one().inputs = list(value)

    @property
    def outputs(self) -> list[TensorSpec]:
        """The main entry's outputs."""
        return self.main.outputs

    @outputs.setter
    def outputs(self, value: list[TensorSpec]) -> None:
        self._one().outputs = list(value)

    def with_model_file(self, name: str) -> Manifest:
        """A copy of this one-graph manifest whose graph is the file ``name`` (a candidate beside the model)."""
        copy = self.model_copy(deep=True)
        copy.model_file = name
        return copy

    def _one(self) -> Entry:
        """The one entry a single-graph change (model_file, inputs, outputs set) applies to."""
        if len(self.entries) > 1:
            raise ArtifactError(f"model_file, inputs and outputs name one graph; this model has the entries "
                                f"{', '.join(self.roles)}: change an entry")
        return self.entries[0]

    @field_validator("files")
    @classmethod
    def _files_inside(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            inside_artifact(name)
        return v


def _files(root: Path, exclude: tuple[str, ...] = ()) -> list[Path]:
    return sorted(
        p for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).as_posix() not in exclude
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def hash_files(root: Path, exclude: tuple[str, ...] = (MANIFEST,)) -> dict[str, str]:
    """sha256 of every (non-hidden) file under ``root``, keyed by posix relative path."""
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in _files(root, exclude)}


def digest_of(hashes: dict[str, str]) -> str:
    h = hashlib.sha256()
    for rel, digest in sorted(hashes.items()):
        h.update(f"{rel}\0{digest}\n".encode())
    return h.hexdigest()


def reference_teacher(manifest) -> tuple[str, str]:
    """``(path, sha256)`` of the teacher an artifact is judged against: the fine-tuned teacher when its lineage starts
    with a fine-tune (its source is then the pretrained base), else its source."""
    first = manifest.steps[0] if manifest.steps else None
    tuned = (first.metrics or {}).get("teacher") if first is not None and first.stage == "finetune" else None
    if tuned and tuned.get("path"):
        return tuned["path"], tuned.get("sha256") or ""
    return manifest.source.path, manifest.source.sha256


def digest_dir(root: Path, exclude: tuple[str, ...] = (MANIFEST,)) -> str:
    """Content hash of a directory: independent of location and mtimes."""
    return digest_of(hash_files(Path(root), exclude))


def library_versions(*modules: str) -> dict[str, str | None]:
    from compress._optional import version_of

    base = ("torch", "transformers", "optimum", "onnx", "onnxruntime", "tokenizers", "numpy")
    out: dict[str, str | None] = {"edgecompress": __version__, "python": platform.python_version()}
    for m in (*base, *modules):
        out[m] = version_of(m)
    return out


class Artifact:
    """A loaded artifact directory (verified against its manifest unless asked not to)."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = Path(path)
        self.manifest = manifest

    @property
    def model_path(self) -> Path:
        """The main entry's file."""
        return self.path / self.manifest.model_file

    def entry_path(self, role: Role | str) -> Path:
        """The file of the entry ``role``."""
        return self.path / self.manifest.entry(role).file

    @property
    def format(self) -> Format:
        return self.manifest.format

    @property
    def precision(self) -> Precision:
        return self.manifest.precision

    @property
    def task(self) -> Task:
        return self.manifest.task

    @property
    def digest(self) -> str:
        return digest_of(self.manifest.files)

    def size_bytes(self, model_only: bool = True) -> int:
        """Bytes on disk: the model file(s) (weights included), or every file when ``model_only`` is False."""
        names = self.model_files() if model_only else list(self.manifest.files)
        return sum((self.path / n).stat().st_size for n in names)

    def model_files(self) -> list[str]:
        """Every entry's model file and its weight side files (external data, .bin of an IR)."""
        mains = list(dict.fromkeys(e.file for e in self.manifest.entries))
        stems = tuple(Path(f).stem for f in mains)
        return [
            n for n in self.manifest.files
            if any(n == f or n.startswith(f + "/") for f in mains) or (Path(n).stem.startswith(stems) and Path(n).suffix in
                                                 {".data", ".bin", ".onnx_data", ".weights", ".safetensors"})
        ]

    def verify(self) -> None:
        root = self.path.resolve()
        for n in [*(e.file for e in self.manifest.entries), *self.manifest.files]:
            if not (self.path / n).resolve().is_relative_to(root):
                raise IntegrityError(
                    f"{self.path}: {n} listed in the manifest resolves outside the artifact (a link?)",
                    hint="an artifact holds its own files; re-create it",
                )
        missing = [n for n in self.manifest.files if not (self.path / n).is_file()]
        if missing:
            raise IntegrityError(
                f"{self.path}: file {missing[0]} listed in the manifest is missing",
                hint="the artifact is incomplete; re-create it",
            )
        for rel, expected in self.manifest.files.items():
            got = sha256_file(self.path / rel)
            if got != expected:
                raise IntegrityError(
                    f"{self.path / rel}: sha256 mismatch (manifest {expected[:12]}…, file {got[:12]}…)",
                    hint="the file was modified or corrupted after it was written; re-create the artifact",
                )

    def __repr__(self) -> str:
        m = self.manifest
        return f"Artifact({str(self.path)!r}, {m.format}/{m.precision}, task={m.task})"


def is_artifact(path: Path | str) -> bool:
    return (Path(path) / MANIFEST).is_file()


def load_artifact(path: Path | str, verify: bool = True) -> Artifact:
    """Load an artifact directory; with ``verify`` every file's sha256 is checked against the manifest."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: no such artifact directory", hint="check the path")
    mf = path / MANIFEST
    if not mf.is_file():
        if path.is_file() and path.suffix.lower() in (".onnx", ".xml", ".pt2"):  # a model file made elsewhere
            raise ArtifactError(f"{path}: a model file, not an edgecompress artifact yet",
                                hint=f"adopt it first: `edgecompress export {path} --out DIR` (see docs/guides/model-files.md)")
        raise ArtifactError(
            f"{path}: not an edgecompress artifact (no {MANIFEST})",
            hint="create one with `edgecompress export TEACHER_DIR --out DIR`",
        )
    try:
        data = json.loads(mf.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{mf}: unreadable manifest ({e})", hint="re-create the artifact") from e
    if isinstance(data, dict) and data.get("schema_version", SCHEMA_VERSION) > SCHEMA_VERSION:
        raise ArtifactError(
            f"{mf}: manifest schema {data.get('schema_version')} is newer than this edgecompress supports "
            f"({SCHEMA_VERSION})",
            hint="upgrade edgecompress",
        )
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = " -> ".join(str(x) for x in first["loc"])
        raise ArtifactError(f"{mf}: invalid manifest: {loc}: {first['msg']}", hint="re-create the artifact") from e
    art = Artifact(path, manifest)
    if verify:
        art.verify()
    return art


def write_manifest(directory: Path, manifest: Manifest) -> Manifest:
    """Hash every file in ``directory`` into the manifest and write ``manifest.json``; return it."""
    manifest.files = hash_files(directory)
    (directory / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return manifest


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy the tokenizer/preprocessor files of an artifact or checkpoint directory."""
    names = [
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
        "merges.txt", "sentencepiece.bpe.model", "spiece.model", "added_tokens.json", "config.json",
    ]
    copied = []
    for n in names:
        if (src / n).is_file():
            shutil.copy2(src / n, dst / n)
            copied.append(n)
    return copied


def child_manifest(parent: Manifest, **changes: Any) -> Manifest:
    """A manifest for a new artifact derived from ``parent`` (steps copied, files reset)."""
    data = parent.model_dump()
    data.update(changes)
    data["files"] = {}
    data["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    return Manifest.model_validate(data)
