"""Named entry points: an artifact of two graphs (an encoder, and a decoder with a KV cache that reads the encoder's
output every step) runs through validate's greedy loop (:func:`compress.validation.decoding.greedy_artifact`, the
runtime's ``generate``) with no code of its own: the encoder called once, the decoder once per token, through
``RuntimeBackend.call``. And the manifest: a schema-1 manifest's one ``model_file`` reads as the entry ``model``."""

from __future__ import annotations

import importlib.util
import json
import re

import numpy as np
import pytest

from compress.artifact import ArrayPreprocess, Format, Manifest, Precision, SourceInfo, load_artifact, write_manifest
from compress.artifact_entries import Entry, TensorSpec
from compress.errors import ArtifactError, ConfigError
from compress.tasks import Task

VOCAB, WIDTH = 16, 8


def _toy():
    """A tiny encoder (embedding, linear, tanh: ``encoder_hidden_states`` [1, S, D]) and a decoder that appends its
    tokens' embeddings to a one-layer KV cache (``past_key_values.0.key`` in, ``present.0.key`` out), reads the causal
    mean of the cache and attends to the encoder's states: ``logits`` [1, T, V] for each new token."""
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.proj = nn.Embedding(VOCAB, WIDTH), nn.Linear(WIDTH, WIDTH)

        def forward(self, input_ids, attention_mask):
            return torch.tanh(self.proj(self.emb(input_ids))) * attention_mask.unsqueeze(-1).to(torch.float32)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.query, self.out = nn.Embedding(VOCAB, WIDTH), nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, VOCAB)

        def forward(self, input_ids, attention_mask, encoder_hidden_states, past):
            tok = self.emb(input_ids)
            present = torch.cat([past, tok], dim=1)
            total = attention_mask.shape[1]
            positions = torch.arange(1, total + 1, dtype=torch.float32)[total - input_ids.shape[1]:]
            causal = torch.cumsum(present, dim=1)[:, total - input_ids.shape[1]:] / positions[None, :, None]
            weights = torch.softmax(self.query(tok) @ encoder_hidden_states.transpose(1, 2), dim=-1)
            return self.out(tok + causal + weights @ encoder_hidden_states), present

    return Encoder().eval(), Decoder().eval()


def _reference(encoder, decoder, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy tokens in PyTorch, no cache: the decoder run on the whole sequence from an empty past each token."""
    import torch

    ids = torch.tensor([prompt])
    with torch.no_grad():
        enc = encoder(ids, torch.ones_like(ids))
        seq = list(prompt)
        for _ in range(new_tokens):
            x = torch.tensor([seq])
            logits, _ = decoder(x, torch.ones_like(x), enc, torch.zeros(1, 0, WIDTH))
            seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt):]


def _tensors(*specs):
    return [TensorSpec(name=n, dtype=t, shape=s) for n, t, s in specs]


IDS = ("input_ids", "int64", ["batch", "sequence"])
MASK = ("attention_mask", "int64", ["batch", "total_sequence"])
ENC = ("encoder_hidden_states", "float32", ["batch", "encoded", WIDTH])


def _manifest(fmt: Format, suffix: str, path) -> Manifest:
    return Manifest(
        task=Task.generic, format=fmt, precision=Precision.fp32,
        entries=[
            Entry(role="encoder", file=f"encoder.{suffix}", inputs=_tensors(IDS, MASK), outputs=_tensors(ENC)),
            Entry(role="decoder", file=f"decoder.{suffix}",
                  inputs=_tensors(IDS, MASK, ENC, ("past_key_values.0.key", "float32", ["batch", "past", WIDTH])),
                  outputs=_tensors(("logits", "float32", ["batch", "sequence", VOCAB]),
                                   ("present.0.key", "float32", ["batch", "total", WIDTH]))),
        ],
        preprocess=ArrayPreprocess(shapes={"input_ids": [None], "attention_mask": [None]},
                                   dtypes={"input_ids": "int64", "attention_mask": "int64"}),
        source=SourceInfo(path=str(path), sha256="0" * 64),
    )


@pytest.fixture(scope="module")
def two_graphs(tmp_path_factory):
    """The toy exported to ONNX as two graphs in one artifact folder, its manifest naming them encoder and decoder."""
    import torch

    encoder, decoder = _toy()
    d = tmp_path_factory.mktemp("two-graphs")
    ids, mask = torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.int64)
    enc = encoder(ids, mask)
    torch.onnx.export(encoder, (ids, mask), str(d / "encoder.onnx"), input_names=["input_ids", "attention_mask"],
                      output_names=["encoder_hidden_states"], opset_version=17, dynamo=False,
                      dynamic_axes={"input_ids": {1: "sequence"}, "attention_mask": {1: "sequence"},
                                    "encoder_hidden_states": {1: "sequence"}})
    torch.onnx.export(decoder, (ids, torch.ones(1, 5, dtype=torch.int64), enc, torch.zeros(1, 2, WIDTH)),
                      str(d / "decoder.onnx"), opset_version=17, dynamo=False,
                      input_names=["input_ids", "attention_mask", "encoder_hidden_states", "past_key_values.0.key"],
                      output_names=["logits", "present.0.key"],
                      dynamic_axes={"input_ids": {1: "sequence"}, "attention_mask": {1: "total"},
                                    "encoder_hidden_states": {1: "encoded"}, "past_key_values.0.key": {1: "past"},
                                    "logits": {1: "sequence"}, "present.0.key": {1: "total"}})
    write_manifest(d, _manifest(Format.onnx, "onnx", d))
    return load_artifact(d), encoder, decoder


@pytest.fixture(scope="module")
def two_irs(two_graphs, tmp_path_factory):
    """The same two graphs as OpenVINO IRs."""
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed here")
    import openvino as ov

    art, *_ = two_graphs
    d = tmp_path_factory.mktemp("two-irs")
    for role in ("encoder", "decoder"):
        ov.save_model(ov.convert_model(str(art.entry_path(role))), str(d / f"{role}.xml"), compress_to_fp16=False)
    write_manifest(d, _manifest(Format.openvino, "xml", d))
    return load_artifact(d)


def _spied(backend) -> list[str]:
    """Record the entry of every ``call`` the backend makes (the loop calls no other way in)."""
    seen: list[str] = []
    call = backend.call

    def spy(entry, feeds, outputs=None):
        seen.append(str(entry))
        return call(entry, feeds, outputs)

    backend.call = spy
    return seen


def test_the_manifest_names_two_entries_and_writes_schema_2(two_graphs):
    art, *_ = two_graphs
    data = json.loads((art.path / "manifest.json").read_text())
    assert data["schema_version"] == 2 and "model_file" not in data
    assert [(e["role"], e["file"]) for e in data["entries"]] == [("encoder", "encoder.onnx"), ("decoder", "decoder.onnx")]
    assert art.manifest.model_file == "encoder.onnx"  # the main entry, what one-graph code reads
    assert sorted(art.model_files()) == ["decoder.onnx", "encoder.onnx"]


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_the_two_graph_toy_runs_through_validates_greedy_loop(runtime, two_graphs, request):
    from compress.runtimes.base import load_runtime
    from compress.validation.decoding import greedy_artifact

    art, encoder, decoder = two_graphs
    if runtime == "openvino":
        art = request.getfixturevalue("two_irs")
    prompt, new_tokens = [1, 5, 9, 2], 6
    backend = load_runtime(art, runtime)
    try:
        assert backend.stateful and backend.step_entries == ("decoder", "decoder")
        seen = _spied(backend)
        tokens = greedy_artifact(backend, prompt, new_tokens, eos=set(), context=64)
    finally:
        backend.close()
    assert tokens == _reference(encoder, decoder, prompt, new_tokens)
    assert seen == ["encoder"] + ["decoder"] * new_tokens  # the encoder once, the decoder once per token


def test_an_entry_the_artifact_lacks_is_refused_in_one_line(two_graphs):
    from compress.runtimes.base import load_runtime

    art, *_ = two_graphs
    backend = load_runtime(art, "onnxruntime")
    try:
        with pytest.raises(ArtifactError, match="no entry prefill .*encoder, decoder"):
            backend.call("prefill", {})
        out = backend.call("encoder", {"input_ids": np.array([[1, 2]]), "attention_mask": np.ones((1, 2), np.int64)})
        assert list(out) == ["encoder_hidden_states"] and out["encoder_hidden_states"].shape == (1, 2, WIDTH)
    finally:
        backend.close()


def test_a_schema_1_manifest_reads_as_the_entry_model(onnx_artifact):
    old = onnx_artifact.manifest.model_dump(mode="json")
    one = old.pop("entries")[0]
    old.update(schema_version=1, model_file=one["file"], inputs=one["inputs"], outputs=one["outputs"])
    m = Manifest.model_validate(old)
    assert m.roles == ("model",) and m.model_file == one["file"] and m.entries[0].inputs == m.inputs
    assert m.model_dump(mode="json")["entries"] == [one]
    # a one-graph change (a child's model_file) changes the one entry; on two entries it is refused
    assert Manifest.model_validate({**m.model_dump(), "model_file": "other.onnx"}).model_file == "other.onnx"
    two = _manifest(Format.onnx, "onnx", "x")
    with pytest.raises(ValueError, match="name one graph"):
        Manifest.model_validate({**two.model_dump(), "model_file": "other.onnx"})
    with pytest.raises(ArtifactError, match="name one graph"):
        two.model_file = "other.onnx"


def test_roles_come_in_the_sets_an_artifact_takes():
    m = _manifest(Format.onnx, "onnx", "x").model_dump()
    with pytest.raises(ValueError, match="one of: model; encoder \\+ decoder; prefill \\+ decode"):
        Manifest.model_validate({**m, "entries": m["entries"][::-1]})
    with pytest.raises(ValueError, match="roles encoder$|roles encoder;"):
        Manifest.model_validate({**m, "entries": m["entries"][:1]})


def test_a_declared_state_names_an_output_and_an_input_of_the_entry():
    from compress.runtimes.base import entry_state

    e = _manifest(Format.onnx, "onnx", "x").entries[1]
    assert entry_state(e).pairs[0].input == "past_key_values.0.key"  # read from the names
    declared = entry_state(e.model_copy(update={"state": {"present.0.key": "past_key_values.0.key"}}))
    assert declared == entry_state(e)
    with pytest.raises(ConfigError, match="is not an output -> input"):
        entry_state(e.model_copy(update={"state": {"logits": "nowhere"}}))


def test_inspect_lists_each_entry_and_its_tensors(two_graphs):
    from rich.console import Console

    from compress.reports.render import render_manifest

    art, *_ = two_graphs
    console = Console(record=True, width=200)
    render_manifest(art, console)
    text = console.export_text()
    assert "encoder: encoder.onnx, decoder: decoder.onnx" in text
    assert re.search(r"decoder input\W+past_key_values\.0\.key", text) and re.search(r"encoder output\W+encoder_hidden", text)
