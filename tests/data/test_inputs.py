"""One input seam: the manifest describes how inputs are made, and every consumer builds feeds from that."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from compress.artifact import MANIFEST, Manifest, load_artifact
from compress.data.tokenization import encoder_for
from compress.device import feeds as device
from compress.errors import ArtifactError

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["a gripping, beautifully acted film.", "dull.", "the plot is thin " * 40]
PAIRS = ["is it good?", "is it bad?", "what?"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_new_artifacts_describe_their_text_inputs(onnx_artifact, int8_artifact):
    for art in (onnx_artifact, int8_artifact):
        raw = json.loads((art.path / MANIFEST).read_text())
        assert raw["preprocess"] == {"kind": "text", "tokenizer_file": "tokenizer.json", "pad_id": None, "words": False}
        assert [t["name"] for t in raw["entries"][0]["inputs"]] == encoder_for(art).input_names  # the model's entry


def test_a_manifest_written_before_the_description_reads_as_text_and_feeds_the_same(onnx_artifact, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(onnx_artifact.path, old)
    raw = json.loads((old / MANIFEST).read_text())
    del raw["preprocess"]
    (old / MANIFEST).write_text(json.dumps(raw))
    art = load_artifact(old)  # the manifest is not among the hashed files: it still verifies
    assert art.manifest.preprocess.kind == "text"
    for pad_to in (None, 16):
        assert same(encoder_for(art).encode(TEXTS, PAIRS, pad_to), encoder_for(onnx_artifact).encode(TEXTS, PAIRS, pad_to))


def test_the_bundle_handler_and_the_runtimes_build_identical_feeds(onnx_artifact, tmp_path):
    """What package writes for the handler (tokenizer inside model/, pad id resolved) feeds like the runtimes."""
    from compress.packaging.contents import _preprocess

    bundle = tmp_path / "bundle"
    (bundle / "model").mkdir(parents=True)
    shutil.copyfile(onnx_artifact.path / "tokenizer.json", bundle / "model" / "tokenizer.json")  # no tokenizer_config
    spec = _preprocess(onnx_artifact)
    assert spec["tokenizer_file"] == "model/tokenizer.json" and isinstance(spec["pad_id"], int)
    names = [t.name for t in onnx_artifact.manifest.inputs]
    on_device = device.make_feeds(bundle, json.loads(json.dumps(spec)), names, onnx_artifact.manifest.max_length)
    here = encoder_for(onnx_artifact)
    for pairs in (None, PAIRS):
        feeds, mask = on_device.encode_with_mask(TEXTS, pairs)
        assert same(feeds, here.encode(TEXTS, pairs))
        assert np.array_equal(mask, here.arrays(TEXTS, pairs)["attention_mask"])
        assert feeds[names[0]].shape[1] <= onnx_artifact.manifest.max_length


def test_feeds_hold_only_what_the_graph_takes(onnx_artifact, tmp_path):
    art = load_artifact(onnx_artifact.path)
    art.manifest.inputs = [t for t in art.manifest.inputs if t.name != "token_type_ids"]
    assert "token_type_ids" not in encoder_for(art).encode(TEXTS)


def test_only_the_device_code_spells_the_tokenizer_tensors():
    """Runtime adapters, the remote runner, the bundle handler and the host seam build feeds through
    compress/device/shipped.py; none of them spells out the tokenizer's tensor names."""
    consumers = [*sorted((ROOT / "runtimes").glob("*.py")), ROOT / "compress" / "device" / "bundle_template" / "handler.py",
                 ROOT / "compress" / "device" / "remote_runner.py", ROOT / "compress" / "data" / "tokenization.py"]
    spelled = [f"{p.relative_to(ROOT)}: {name}" for p in consumers for name in ("input_ids", "token_type_ids")
               if name in p.read_text(encoding="utf-8")]
    assert spelled == []


def test_an_unknown_input_kind_is_refused_in_the_manifest_and_on_the_device(onnx_artifact):
    raw = json.loads((onnx_artifact.path / MANIFEST).read_text())
    raw["preprocess"]["kind"] = "audio"
    with pytest.raises(ValueError, match="preprocess"):
        Manifest.model_validate(raw)
    with pytest.raises(ValueError, match="unknown input kind 'audio' \\(known: text, image, arrays\\)"):
        device.make_feeds(onnx_artifact.path, {"kind": "audio"}, ["input_ids"], 8)


def test_a_tokenizer_path_leaving_the_artifact_is_refused(onnx_artifact):
    raw = json.loads((onnx_artifact.path / MANIFEST).read_text())
    raw["preprocess"]["tokenizer_file"] = "../elsewhere/tokenizer.json"
    with pytest.raises(ValueError, match="inside"):
        Manifest.model_validate(raw)


def test_a_missing_tokenizer_is_an_artifact_error(onnx_artifact, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(onnx_artifact.path, bare)
    raw = json.loads((bare / MANIFEST).read_text())
    raw["preprocess"]["tokenizer_file"] = "tok/missing.json"
    (bare / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match="no tok/missing.json"):
        encoder_for(load_artifact(bare))
