"""ONNX Runtime's generator loops (issue 68): ONNX Runtime GenAI's ``og.Generator`` where the artifact carries
genai_config.json, else edgecompress's prefill/step loop with the cache IO-bound. Both make the tokens (and step
logits) of the plain run_steps loop; a tiny random Llama exported by the builder is the material."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from compress._optional import is_available
from compress.runtimes.base import RuntimeBackend, RuntimeSettings, load_runtime
from tests.builders.lm import needs_genai_builder, tiny_causal_lm

pytestmark = [needs_genai_builder()]
needs_og = pytest.mark.skipif(not is_available("onnxruntime_genai"), reason="onnxruntime-genai is not installed")
PROMPT = [1, 403, 407, 261, 378, 432, 383, 286, 301, 290]


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    root = tmp_path_factory.mktemp("ortgen")
    return export(tiny_causal_lm(root / "ckpt"), root / "fp32", ExportConfig(format="onnx"))


def _plain(art, **kw):
    """The plain run_steps loop (numpy feeds, the cache copied each step): the reference."""
    backend = load_runtime(art, "onnxruntime", RuntimeSettings(threads=1, options={"genai_loop": False}))
    return RuntimeBackend.generate(backend, PROMPT, 12, **kw)


@needs_og
@pytest.mark.parametrize("genai_loop", [True, False], ids=["og-generator", "io-binding"])
def test_both_loops_make_the_run_steps_loops_tokens_and_logits(fp32, genai_loop):
    ref = _plain(fp32, logits=True)
    backend = load_runtime(fp32, "onnxruntime", RuntimeSettings(threads=1, options={"genai_loop": genai_loop}))
    assert backend.generation_loop.startswith("ONNX Runtime GenAI" if genai_loop else "edgecompress run_steps with "
                                              "ONNX Runtime IO binding")
    assert backend.copies_cache is False  # og's cache, or GroupQueryAttention writing into one shared buffer
    got = backend.generate(PROMPT, 12, logits=True)
    assert got.tokens == ref.tokens and len(got.step_logits) == len(ref.step_logits) == 12
    np.testing.assert_allclose(got.prompt_logits, ref.prompt_logits, atol=1e-4)
    for a, b in zip(got.step_logits, ref.step_logits, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    stop = ref.tokens[4]
    assert backend.generate(PROMPT, 12, eos={stop}).tokens == ref.tokens[:ref.tokens.index(stop) + 1]
    assert backend.generate(PROMPT, 12, context=len(PROMPT) + 3).tokens == ref.tokens[:3]
    # prefill/step (the perplexity windows, parity) still hand numpy state back
    out, state = backend.prefill({"input_ids": np.asarray([PROMPT]), "attention_mask": np.ones((1, len(PROMPT)), int)})
    assert isinstance(state["past_key_values.0.key"], np.ndarray) and out["logits"].shape[1] == len(PROMPT)


@needs_og
def test_a_timed_generation_in_the_og_generator_fills_seconds_and_the_runtimes_share(fp32):
    backend = load_runtime(fp32, "onnxruntime", RuntimeSettings(threads=1))
    made = backend.generate(PROMPT, 9, timed=True)
    assert made.tokens == _plain(fp32).tokens[:9] and made.prompt_logits is None
    assert len(made.seconds) == len(made.native_seconds) == 9
    assert all(0 < n <= s for s, n in zip(made.seconds, made.native_seconds, strict=True))
    assert backend.describe()["genai"]


@needs_og
def test_the_og_generator_goes_on_past_the_models_own_end_token_when_the_caller_does_not_stop_there(fp32, tmp_path):
    from compress.artifact import load_artifact

    ref = _plain(fp32, logits=True)
    copy = tmp_path / "eos"
    shutil.copytree(fp32.path, copy)
    config = json.loads((copy / "genai_config.json").read_text())
    config["model"]["eos_token_id"] = [ref.tokens[2], 5]  # og would stop there by itself
    (copy / "genai_config.json").write_text(json.dumps(config))
    backend = load_runtime(load_artifact(copy, verify=False), "onnxruntime", RuntimeSettings(threads=1))
    got = backend.generate(PROMPT, 12, logits=True)
    assert got.tokens == ref.tokens
    for a, b in zip(got.step_logits, ref.step_logits, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_without_onnxruntime_genai_the_io_bound_loop_is_timed(fp32, monkeypatch):
    import compress._optional as optional

    real = optional.is_available
    monkeypatch.setattr(optional, "is_available", lambda name: name != "onnxruntime_genai" and real(name))
    backend = load_runtime(fp32, "onnxruntime", RuntimeSettings(threads=1))
    assert backend.generation_loop.startswith("edgecompress run_steps with ONNX Runtime IO binding")
    made = backend.generate(PROMPT, 6, timed=True)
    assert made.tokens == _plain(fp32).tokens[:6] and len(made.seconds) == 6
    assert all(0 < n <= s for s, n in zip(made.seconds, made.native_seconds, strict=True))


def test_the_genai_session_takes_the_adapters_threads_and_session_config():
    import onnxruntime as ort

    from compress.device.shipped import ort_session_options
    from compress.runtimes.ort_backend import genai_overlay

    opts = ort_session_options(ort, 2, "extended", {"session.intra_op.allow_spinning": "0"})
    got = genai_overlay(opts, ["session.intra_op.allow_spinning"], "model.onnx")["model"]["decoder"]
    assert got["filename"] == "model.onnx"
    session = got["session_options"]
    assert (session["intra_op_num_threads"], session["inter_op_num_threads"]) == (2, 1)
    assert session["graph_optimization_level"] == "ORT_ENABLE_EXTENDED"
    assert session["session.intra_op.allow_spinning"] == "0" and session["session.force_spinning_stop"] == "1"


def test_an_artifact_without_genai_config_runs_the_io_bound_loop_without_a_shared_buffer(fp32, tmp_path):
    from compress.artifact import load_artifact

    copy = tmp_path / "bare"
    shutil.copytree(fp32.path, copy)
    (copy / "genai_config.json").unlink()
    backend = load_runtime(load_artifact(copy, verify=False), "onnxruntime", RuntimeSettings(threads=1))
    assert backend.generation_loop.startswith("edgecompress run_steps with ONNX Runtime IO binding")
    assert "sharing" not in backend.generation_loop and backend.copies_cache  # the attention concatenates
    ref = _plain(fp32, logits=True)
    got = backend.generate(PROMPT, 12, logits=True)
    assert got.tokens == ref.tokens
    for a, b in zip(got.step_logits, ref.step_logits, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
