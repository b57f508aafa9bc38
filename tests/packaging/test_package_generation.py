"""``edgecompress package`` for a generator (task text-generation): the bundle's handler takes {"prompt", "max_new_tokens"}
and returns the greedy continuation, decoded through the KV cache with onnxruntime alone (no torch, transformers,
onnxruntime-genai or edgecompress in its process); its cold start is the first generation; bad events are one clear
error. A tiny random Llama (head size 8: the builder's MultiHeadAttention form with position_ids, as stories260K's) is
test material: it checks that the bundle decodes the teacher's tokens, not any real model's quality."""

from __future__ import annotations

import json
import zipfile

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from compress.errors import ArtifactError
from compress.packaging.bundle import package
from compress.packaging.config import PackageConfig
from tests.builders.bundles import run_handler, write_profile
from tests.builders.lm import STORY, needs_genai_builder, tiny_causal_lm

pytestmark = needs_genai_builder()

PROMPTS = [STORY[:40], "Her mom smiled and said"]
NEW_TOKENS = 24

#: the handler on the teacher's prompts, then every kind of bad event, in one fresh process
PROBE = """
    import json, sys
    import handler
    prompts, n = json.loads(sys.argv[1]) if len(sys.argv) > 1 else (%r, %d)
    out = [handler.handler({"prompt": p, "max_new_tokens": n}, None) for p in prompts]
    default = handler.handler({"prompt": prompts[0]}, None)
    null = handler.handler({"prompt": prompts[0], "max_new_tokens": None}, None)
    http = handler.handler({"body": json.dumps({"prompt": prompts[0], "max_new_tokens": n})}, None)
    bad_events = [{}, {"prompt": ""}, {"prompt": 7}, {"prompt": "a", "max_new_tokens": 0},
                  {"prompt": "a", "max_new_tokens": handler.MAX_NEW_TOKENS + 1}, {"prompt": "a", "max_new_tokens": "8"},
                  {"prompt": "a b " * handler.CONTEXT}, {"prompt": "a b " * (handler.CONTEXT // 3), "max_new_tokens": 200}]
    errors = []
    for event in bad_events:
        try:
            handler.handler(event, None)
            errors.append(None)
        except ValueError as e:
            errors.append(str(e))
    http_bad = handler.handler({"body": json.dumps({"max_new_tokens": 4})}, None)
    print(json.dumps({"out": out, "default": default, "null": null, "http": http, "errors": errors, "http_bad": http_bad,
                      "limits": [handler.CONTEXT, handler.MAX_NEW_TOKENS, handler.DEFAULT_NEW_TOKENS],
                      "modules": sorted(m for m in ("torch", "transformers", "compress", "optimum", "onnxruntime_genai")
                                        if m in sys.modules)}))
""" % (PROMPTS, NEW_TOKENS)


def _extract(zip_path, where):
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(where)
    return where


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A tiny Llama checkpoint (head size 8) and its FP32 ONNX artifact."""
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    root = tmp_path_factory.mktemp("lm")
    ckpt = tiny_causal_lm(root / "ckpt", layers=2, heads=8, kv_heads=4)
    return ckpt, export(ckpt, root / "fp32", ExportConfig(format="onnx"))


@pytest.fixture(scope="module")
def bundle(lm, tmp_path_factory):
    """The FP32 artifact's --no-download bundle with one cold-start run, extracted, and its handler's answers."""
    d = tmp_path_factory.mktemp("pkg")
    out = d / "lm.zip"
    report = package(lm[1], out, PackageConfig(profile=str(write_profile(d, memory_mb=1024)), download=False,
                                               cold_start_runs=1))
    extracted = _extract(out, d / "x")
    return report, extracted, run_handler(extracted, PROBE)


def _teacher_continuations(ckpt, prompts, new_tokens):
    """The teacher's greedy tokens (through its own KV cache) and their text as transformers' pipeline returns it."""
    from compress.teachers.lm import CausalLM

    teacher = CausalLM.load(ckpt)
    out = []
    for p in prompts:
        ids = teacher.encode(p)
        made = teacher.greedy(ids, new_tokens, eos=teacher.postprocess().eos_ids())
        whole = teacher.tokenizer.decode(ids + made, skip_special_tokens=True)
        out.append((made, whole[len(teacher.tokenizer.decode(ids, skip_special_tokens=True)):], len(ids)))
    return out


def test_the_bundle_generates_the_teachers_greedy_continuation_without_torch(lm, bundle):
    _, _, got = bundle
    assert got["modules"] == [], got["modules"]
    for res, (ids, text, prompt_tokens) in zip(got["out"], _teacher_continuations(lm[0], PROMPTS, NEW_TOKENS),
                                               strict=True):
        assert res["token_ids"] == ids and res["text"] == text
        assert res["prompt_tokens"] == prompt_tokens and res["new_tokens"] == len(ids)
        assert res["finish_reason"] == ("eos" if ids[-1] == 2 else "length")
        assert res["timings"]["prefill_ms"] > 0 and res["timings"]["decode_ms"] > 0
    assert got["http"]["statusCode"] == 200 and json.loads(got["http"]["body"])["text"] == got["out"][0]["text"]
    # no max_new_tokens (or null): the default, 32 (the tiny model's context of 256 allows it)
    assert got["limits"] == [256, 255, 32] and got["default"]["new_tokens"] == 32
    assert got["null"]["token_ids"] == got["default"]["token_ids"]


def test_bad_events_are_one_clear_error_each(bundle):
    _, _, got = bundle
    errors = got["errors"]
    assert None not in errors, errors
    assert "no 'prompt'" in errors[0] and "non-empty string" in errors[1] and "non-empty string" in errors[2]
    for e in errors[3:6]:
        assert "'max_new_tokens' must be a whole number from 1 to 255" in e
    assert "context of 256 tokens" in errors[6] and "shorten the prompt" in errors[6]
    assert "max_new_tokens 200" in errors[7] and "ask for at most" in errors[7]
    assert got["http_bad"]["statusCode"] == 400 and "no 'prompt'" in json.loads(got["http_bad"]["body"])["error"]


def test_the_cold_start_is_the_first_generation(bundle):
    report, extracted, _ = bundle
    c = report.cold_start
    assert c["error"] is None and c["first_request"]["max_new_tokens"] == 32 and c["first_request"]["prompt"]
    assert c["forbidden_imports"] == [] and {"numpy", "onnxruntime", "tokenizers"} <= set(c["imported_top_level"])
    med = c["median"]
    assert med["first_inference_ms"] > 0 and med["total_ms"] >= med["session_ms"] + med["first_inference_ms"]
    assert c["runs"][0]["result_keys"] == ["finish_reason", "new_tokens", "prompt_tokens", "text", "timings",
                                           "token_ids"]
    cfg = json.loads((extracted / "model_config.json").read_text())
    assert cfg["task"] == "text-generation" and cfg["generation"]["eos_token_ids"] == [2]
    assert cfg["generation"]["cache"]["layout"] == "past_key_values"
    assert (extracted / "edgecompress_device.py").is_file() and any("greedily" in n for n in report.notes)
    from compress.packaging.report import package_report_markdown

    assert "first request (a generation of up to 32 new tokens)" in package_report_markdown(report)
    assert report.bundle["model_bytes"] == sum((lm_file.stat().st_size for lm_file in (extracted / "model").iterdir()
                                                if lm_file.name.startswith("model.onnx")))


def test_an_int4_bundle_decodes_as_the_ort_backend_does(lm, tmp_path):
    """The quantized artifact (MatMulNBits) in the bundle: the same greedy tokens as edgecompress's ONNX Runtime
    backend gives it (validate's greedy_artifact)."""
    from compress.runtimes.base import load_runtime
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.teachers.lm import CausalLM
    from compress.validation.decoding import greedy_artifact

    q = quantize(lm[1].path, tmp_path / "int4", QuantizeConfig.from_flat(precision="int4"))
    out = tmp_path / "int4.zip"
    package(q, out, PackageConfig(profile=str(write_profile(tmp_path)), download=False, cold_start=False,
                                  max_new_tokens=16))
    got = run_handler(_extract(out, tmp_path / "x"), """
        import json, handler
        print(json.dumps([handler.handler({"prompt": %r, "max_new_tokens": 16}, None), handler.MAX_NEW_TOKENS]))
    """ % PROMPTS[0])
    ids = CausalLM.load(lm[0]).encode(PROMPTS[0])
    want = greedy_artifact(load_runtime(q, "onnxruntime"), ids, 16, {2}, 256)
    assert got[0]["token_ids"] == want and got[1] == 16


def test_a_group_query_attention_graph_generates_the_teachers_tokens(tmp_path):
    """Head size 16: the builder's GroupQueryAttention form (no position_ids), what real models' head sizes get."""
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    ckpt = tiny_causal_lm(tmp_path / "ckpt", layers=1, seed=5)
    art = export(ckpt, tmp_path / "fp32", ExportConfig(format="onnx"))
    assert "position_ids" not in [t.name for t in art.manifest.inputs]
    package(art, tmp_path / "gqa.zip", PackageConfig(profile=str(write_profile(tmp_path)), download=False,
                                                     cold_start=False))
    got = run_handler(_extract(tmp_path / "gqa.zip", tmp_path / "x"), """
        import json, handler
        print(json.dumps(handler.handler({"prompt": %r, "max_new_tokens": 20}, None)))
    """ % PROMPTS[1])
    (ids, text, _), = _teacher_continuations(ckpt, PROMPTS[1:], 20)
    assert got["token_ids"] == ids and got["text"] == text


def test_a_generator_of_another_runtime_is_refused_naming_the_onnx_route(lm, tmp_path):
    from compress.artifact import Artifact, Format

    art = lm[1]
    ov = Artifact(art.path, art.manifest.model_copy(update={"format": Format.openvino}))
    with pytest.raises(ArtifactError) as e:
        package(ov, tmp_path / "ov.zip", PackageConfig(profile=str(write_profile(tmp_path)), download=False))
    assert "generator in openvino format" in str(e.value) and "--format onnx" in e.value.hint
    assert not (tmp_path / "ov.zip").exists()


def test_cli_max_new_tokens_beyond_the_context_is_one_line(lm, tmp_path, capsys):
    from tests.builders.cli import main_error

    line = main_error(capsys, "package", lm[1].path, "--profile", write_profile(tmp_path), "--out", tmp_path / "b.zip",
                      "--no-download", "--max-new-tokens", "300")
    assert "--max-new-tokens 300" in line and "context of 256" in line
    assert not (tmp_path / "b.zip").exists()


def test_max_new_tokens_is_refused_for_a_model_that_does_not_generate(lm, tmp_path):
    from compress.artifact import Artifact
    from compress.errors import ConfigError
    from compress.tasks import Task

    art = lm[1]
    other = Artifact(art.path, art.manifest.model_copy(update={"task": Task.text_classification}))
    with pytest.raises(ConfigError, match="--max-new-tokens is for text-generation artifacts"):
        package(other, tmp_path / "c.zip", PackageConfig(profile=str(write_profile(tmp_path)), download=False,
                                                         cold_start=False, max_new_tokens=8))
