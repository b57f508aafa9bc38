"""A ``.gguf`` as a teacher: ``export model.gguf --format onnx|openvino|gguf`` exports the checkpoint transformers' GGUF
loader dequantizes it to (compress.teachers.gguf_checkpoint), made once per file in edgecompress's cache, the lineage
naming the file, its digest and its llama.cpp type; without ``--format`` the file is adopted as it is. The GGUF is
made by the repo's own route (llama.cpp's converter, then its quantizer for Q8_0) from a tiny random Llama of
tests/builders: test material for the plumbing, not a real model's quality.

Needs llama-cpp-python and gguf (the llamacpp extra) and a llama.cpp source tree for the converter
(EDGECOMPRESS_LLAMA_CPP); skipped without them."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("torch")
pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'edgecompress[llamacpp]')")
pytest.importorskip("gguf", reason="the gguf package is not installed (pip install 'edgecompress[llamacpp]')")

from compress.stages.export.lm.gguf import ENV, llama_cpp_tree
from tests.builders.cli import edgecompress
from tests.builders.lm import needs_genai_builder, tiny_causal_lm


@pytest.fixture(scope="module")
def files(tmp_path_factory, home):
    """A tiny Llama's GGUF in FP32 and in Q8_0, each alone in a folder (as a user is handed one)."""
    if llama_cpp_tree() is None:
        pytest.skip(f"no llama.cpp source tree for the converter: set {ENV}")
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    root = tmp_path_factory.mktemp("gguf-teacher")
    ckpt = tiny_causal_lm(root / "ckpt")
    fp32 = export(ckpt, root / "fp32", ExportConfig(format="gguf"))
    q8 = quantize(fp32.path, root / "q8", QuantizeConfig.from_flat(precision="int8", gguf_type="q8_0"))
    (root / "handed").mkdir()
    return {"root": root, "ckpt": ckpt, "f32": shutil.copy2(fp32.path / "model.gguf", root / "handed" / "tiny.gguf"),
            "q8": shutil.copy2(q8.path / "model.gguf", root / "handed" / "tiny-q8_0.gguf")}


@needs_genai_builder()
def test_a_gguf_given_a_format_exports_its_dequantized_checkpoint(files, tmp_path):
    from compress.device.facts import sha256_file
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    art = export(files["q8"], tmp_path / "onnx", ExportConfig(format="onnx"))
    m = art.manifest
    assert (str(m.format), str(m.precision), str(m.task)) == ("onnx", "fp32", "text-generation")
    check = m.steps[-1].metrics["generation_parity"]
    assert check["same_tokens"] and check["prefill_max_abs_diff"] <= check["atol"]
    origin = m.source.origin
    assert origin["path"] == str(files["q8"].resolve()) and origin["sha256"] == sha256_file(files["q8"])
    assert origin["file_type_name"] == "MOSTLY_Q8_0" and origin["tensor_types"]["Q8_0"] > 0
    from pathlib import Path

    ckpt = Path(m.source.path)  # the dequantized checkpoint, in the cache: validate's teacher
    assert ckpt.parent.name == "gguf-checkpoints" and (ckpt / "gguf_origin.json").is_file()


def test_the_dequantized_checkpoint_is_made_once_and_reads_under_either_major(files):
    from compress.teachers.gguf_checkpoint import gguf_checkpoint
    from compress.teachers.lm_config import gguf_origin

    first = gguf_checkpoint(files["f32"])
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    again = gguf_checkpoint(files["f32"])
    assert again == first and (again / "model.safetensors").stat().st_mtime_ns == stamp  # from the cache
    assert gguf_origin(first)["file_type_name"] == "ALL_F32"
    config = json.loads((first / "config.json").read_text())
    assert "quantization_config" not in config  # plain FP32 weights: save_pretrained refused the loaded model
    import transformers

    assert config["rope_theta"] == 10000.0  # transformers 4's key, beside 5's form where 5 wrote it
    assert transformers.__version__.startswith("4.") or config["rope_parameters"]["rope_theta"] == 10000.0
    tok = json.loads((first / "tokenizer_config.json").read_text())
    assert tok.get("tokenizer_class") != "TokenizersBackend"  # a class transformers 4 does not know
    assert not isinstance(tok.get("extra_special_tokens"), list)
    assert not list(first.parent.glob(".*.partial"))
    spm = first / "tokenizer.model"  # transformers 4 copies the .gguf itself there: it does not travel
    assert not spm.is_file() or spm.read_bytes()[:4] != b"GGUF"


def test_an_f32_ggufs_checkpoint_has_the_weights_it_was_made_from(files):
    """transformers' GGUF loader undoes llama.cpp's converter (its Q/K row permutation included): the dequantized
    FP32 checkpoint's logits are the original checkpoint's."""
    import torch
    from transformers import AutoModelForCausalLM

    from compress.teachers.gguf_checkpoint import gguf_checkpoint

    ids = torch.tensor([[1, 45, 300, 12, 7, 99]])
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(str(files["ckpt"]), dtype=torch.float32)(ids).logits
        b = AutoModelForCausalLM.from_pretrained(str(gguf_checkpoint(files["f32"])), dtype=torch.float32)(ids).logits
    assert float((a - b).abs().max()) < 1e-4


def test_the_cli_adopts_a_gguf_without_a_format_and_exports_it_with_one(files, tmp_path):
    r = edgecompress("export", str(files["f32"]), "-o", str(tmp_path / "adopted"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "adopted" / "manifest.json").read_text())["format"] == "gguf"
    pytest.importorskip("openvino")
    r = edgecompress("export", str(files["f32"]), "--format", "openvino", "-o", str(tmp_path / "ov"))
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "ov" / "manifest.json").read_text())
    assert m["format"] == "openvino" and m["source"]["origin"]["file_type_name"] == "ALL_F32"


@needs_genai_builder()
def test_validate_says_it_compares_with_the_dequantized_checkpoint_and_makes_it_again(files, tmp_path):
    """The report names the reference; with the cached checkpoint gone, validate makes it again from the recorded
    file (the same sha256) rather than going without a teacher."""
    from pathlib import Path

    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate
    from tests.builders.lm import STORY

    art = export(files["f32"], tmp_path / "onnx", ExportConfig(format="onnx"))
    text = tmp_path / "story.txt"
    text.write_text("\n\n".join([STORY] * 4), encoding="utf-8")
    cfg = ValidateConfig.from_flat(profile="host", data=str(text), prompt_tokens=16, new_tokens=4, window=32, limit=2,
                                   cold_start=False)
    first = validate(art.path, cfg).metrics["generation"]["reference"]
    assert "tiny.gguf (ALL_F32) as transformers' GGUF loader dequantizes it" in first
    ckpt = Path(art.manifest.source.path)
    shutil.rmtree(ckpt)
    again = validate(art.path, cfg)
    assert (ckpt / "gguf_origin.json").is_file() and again.metrics["generation"]["reference"] == first
    assert not any("no teacher" in w for w in again.warnings)
