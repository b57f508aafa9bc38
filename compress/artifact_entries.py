"""The manifest's entry points by role (manifest schema 2): what graphs or program methods an artifact has, the
tensors each takes and returns, and the state each feeds back.

An artifact has one of :data:`ROLE_SETS`: one ``model``, an ``encoder`` + ``decoder``, or a ``prefill`` + ``decode``;
the first entry is the main one, which one-graph code reads as the manifest's ``model_file``, ``inputs`` and
``outputs`` (:class:`compress.artifact.Manifest`). A schema-1 manifest's one graph reads as the entry ``model``
(:func:`one_graph_entries`). A runtime runs an entry by its role (``RuntimeBackend.call``).
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["ONE_GRAPH_KEYS", "ROLE_SETS", "STATE_RENAMES", "Entry", "Role", "TensorSpec", "check_roles",
           "inside_artifact", "one_graph_entries", "state_input_of"]


def inside_artifact(name: str) -> str:
    """A manifest path must name a file inside the artifact: relative, no `..`, no drive or root."""
    p = PurePosixPath(name.replace("\\", "/"))
    if not p.parts or p.is_absolute() or ".." in p.parts or ":" in p.parts[0]:
        raise ValueError(f"{name!r} is not a path inside the artifact (absolute, empty or with ..)")
    return name


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Tensor name in the model graph.")
    dtype: str = Field(description="Element type, numpy spelling (int64, float32, ...).")
    shape: list[int | str] = Field(description="Dimensions; strings name dynamic axes.")


#: how an output that carries state is named beside the input it feeds back into: a transformers KV cache's
#: ``present.N.key`` -> ``past_key_values.N.key``; Silero VAD's ``stateN`` -> ``state``; ``..._out`` -> ``..._in``
STATE_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^present(\W.*)$", r"past_key_values\1"),
    (r"^present_(.*)$", r"past_\1"),
    (r"^(.*)N$", r"\1"),
    (r"^(.*)_out$", r"\1_in"),
    (r"^(.*)_out$", r"\1"),
)


def state_input_of(output: str, inputs) -> str | None:
    """The input (among ``inputs``' names) that the output named ``output`` feeds back into by its name
    (:data:`STATE_RENAMES`), else None."""
    for pattern, repl in STATE_RENAMES:
        if re.match(pattern, output) and (name := re.sub(pattern, repl, output)) in inputs:
            return name
    return None


class Role(StrEnum):
    """What an entry point of an artifact is for. An artifact has one of :data:`ROLE_SETS`: ``model`` (one graph:
    every forward pass, a stream, a generator whose one graph takes the prompt and each next token), ``encoder`` +
    ``decoder`` (the encoder called once on the input, the decoder once per step, reading the encoder's outputs; a
    speech recogniser, a translation model), or ``prefill`` + ``decode`` (the prompt through one graph, each next token
    through another)."""

    model = "model"
    encoder = "encoder"
    decoder = "decoder"
    prefill = "prefill"
    decode = "decode"


#: the sets of roles an artifact's entries take, each in the order its entries are listed (the first is the main one)
ROLE_SETS: tuple[tuple[Role, ...], ...] = ((Role.model,), (Role.encoder, Role.decoder), (Role.prefill, Role.decode))


class Entry(BaseModel):
    """One entry point of an artifact: a graph (its own file) or a method of a program file (ExecuTorch's ``.pte`` with
    ``encoder`` and ``text_decoder`` methods), with the tensors it takes and returns and the state it feeds back."""

    model_config = ConfigDict(extra="forbid")
    role: Role = Field(description="What the entry is for: model; encoder, decoder; prefill, decode.")
    file: str = Field(description="The model file, relative to the artifact directory (entries may share one).")
    method: str | None = Field(None, description="The program method the entry runs, where one file holds several "
                               "(an ExecuTorch program's encoder, text_decoder); None: the file's one graph.")
    inputs: list[TensorSpec] = Field(default_factory=list)
    outputs: list[TensorSpec] = Field(default_factory=list)
    state: dict[str, str] = Field(
        default_factory=dict, description="Which output feeds which input on the entry's next call: {present.0.key: "
        "past_key_values.0.key}. Empty: read from the tensors' names (present.N.key -> past_key_values.N.key, "
        "stateN -> state, x_out -> x_in).")

    @field_validator("file")
    @classmethod
    def _file_inside(cls, v: str) -> str:
        return inside_artifact(v)


#: a schema-1 manifest's keys for its one graph, which read as the entry ``model`` (and which single-graph code, and a
#: child manifest's changes, still give: :func:`one_graph_entries`)
ONE_GRAPH_KEYS = {"model_file": "file", "inputs": "inputs", "outputs": "outputs"}


def _role_of(entry: Any) -> Any:
    return entry.role if isinstance(entry, Entry) else entry.get("role") if isinstance(entry, dict) else entry


def one_graph_entries(data: Any) -> Any:
    """A manifest's raw data with a schema-1 manifest's ``model_file``, ``inputs`` and ``outputs`` as the entry
    ``model``; given beside ``entries`` (a child manifest's changes), they change the one entry there is."""
    if not isinstance(data, dict) or not ONE_GRAPH_KEYS.keys() & data.keys():
        return data
    data = dict(data)
    given = {field: data.pop(key) for key, field in ONE_GRAPH_KEYS.items() if key in data}
    entries = list(data.get("entries") or [])
    if not entries:
        data["entries"] = [{"role": Role.model, "inputs": [], "outputs": [], **given}]
        return data
    if len(entries) > 1:
        raise ValueError(f"model_file, inputs and outputs name one graph; this manifest has {len(entries)} entries "
                         f"({', '.join(str(_role_of(e)) for e in entries)}): change an entry")
    one = entries[0]
    data["entries"] = [one.model_copy(update=given) if isinstance(one, Entry) else {**one, **given}]
    return data


def check_roles(entries: list[Entry]) -> list[Entry]:
    """``entries`` as they are when their roles are one of :data:`ROLE_SETS` in its order, else a ValueError."""
    roles = tuple(e.role for e in entries)
    if roles not in ROLE_SETS:
        raise ValueError(f"entries take the roles {', '.join(roles)}; an artifact has one of: "
                         + "; ".join(" + ".join(s) for s in ROLE_SETS) + " (in that order)")
    return entries
