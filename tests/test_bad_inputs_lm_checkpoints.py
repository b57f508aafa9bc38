"""Spoiled causal-LM checkpoints (from issue 69): one check of a checkpoint (:func:`compress.teachers.checkpoints.
check_checkpoint`) before transformers, ONNX Runtime GenAI's builder or ONNX Runtime read it. A causal LM without its
tokenizer files, with a tokenizer larger than its ``vocab_size``, a truncated ``model.safetensors``, an unknown
``model_type`` or only pickled weights is one ``error:`` line, exit 2, nothing written, at export (the GenAI door) and
through :func:`~compress.teachers.load.load_teacher` (validate, finetune, distill, prune, quantize's LM paths); a context
shorter than export's parity prompt cuts the prompt instead of failing in ONNX Runtime.

The checkpoints are tiny random Llamas (:func:`tests.builders.lm.tiny_causal_lm`) with stories260K's real
512-token tokenizer, each spoiled the way a user's copy would be."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from compress.errors import ModelLoadError
from tests.builders.cli import assert_one_line_error, in_process
from tests.builders.lm import STORY, needs_genai_builder, tiny_causal_lm

pytestmark = pytest.mark.slow

SMALL = dict(layers=1, hidden=32, heads=2, kv_heads=1, intermediate=64)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tiny_causal_lm(tmp_path_factory.mktemp("ckpt69") / "base", **SMALL)


def _copy(base: Path, tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(base, tmp_path / name))


def _no_tokenizer(d: Path) -> None:
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        os.remove(d / f)


def _truncated(d: Path) -> None:
    p = d / "model.safetensors"
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 2])


def _unknown_type(d: Path) -> None:
    c = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(c | {"model_type": "no_such_family"}))


def _pickled(d: Path) -> None:
    import torch
    from safetensors.torch import load_file

    state = load_file(str(d / "model.safetensors"))
    os.remove(d / "model.safetensors")
    torch.save(state, d / "pytorch_model.bin")


def _small_vocab(d: Path) -> None:
    """The 512-token tokenizer kept beside a model of 256 tokens (its embedding cut to 256 rows)."""
    from safetensors.torch import load_file, save_file

    state = {k: (v[:256].contiguous() if v.shape[0] == 512 else v) for k, v in load_file(str(d / "model.safetensors")).items()}
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    c = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(c | {"vocab_size": 256}))


CASES = {
    "no-tokenizer": (_no_tokenizer, ("no tokenizer files", "save_pretrained")),
    "truncated": (_truncated, ("model.safetensors", "truncated", "re-download")),
    "unknown-model-type": (_unknown_type, ("no_such_family", "model_type")),
    "pickle-only": (_pickled, ("pytorch_model.bin", "--allow-pickle")),
    "tokenizer-past-vocab": (_small_vocab, ("vocab_size is 256", "ids up to 511", "tokenizer")),
}


@pytest.mark.parametrize("case", CASES)
def test_export_of_a_spoiled_causal_lm_is_one_line_before_any_loader(capfd, base, tmp_path, case):
    spoil, words = CASES[case]
    d = _copy(base, tmp_path, case)
    spoil(d)
    proc = in_process(capfd, "export", d, "--out", tmp_path / "out")
    assert_one_line_error(proc, *words)
    assert "onnxruntime" not in proc.stderr  # nothing native ran
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", CASES)
def test_load_teacher_refuses_the_same_checkpoints_in_one_line(base, tmp_path, case):
    """validate, finetune, distill, prune and quantize load a causal LM through load_teacher: the same check."""
    from compress.teachers.load import load_teacher

    spoil, words = CASES[case]
    d = _copy(base, tmp_path, case)
    spoil(d)
    with pytest.raises(ModelLoadError) as e:
        load_teacher(d)
    for w in words:
        assert w in e.value.message + "; " + (e.value.hint or ""), (w, e.value.message, e.value.hint)


def test_distill_from_a_teacher_whose_tokenizer_is_past_its_vocabulary_is_one_line(capfd, base, tmp_path):
    d = _copy(base, tmp_path, "teacher")
    _small_vocab(d)
    (tmp_path / "train.txt").write_text(STORY * 10, encoding="utf-8")
    proc = in_process(capfd, "distill", "-t", d, "--train", tmp_path / "train.txt", "-o", tmp_path / "student",
                      "--layers", "1", "--max-steps", "1", "--max-length", "16")
    assert_one_line_error(proc, "vocab_size is 256", "tokenizer")
    assert not (tmp_path / "student").exists()


@needs_genai_builder()
@pytest.mark.parametrize("sample", [False, True])
def test_a_context_shorter_than_the_parity_prompt_cuts_the_prompt(capfd, tmp_path, sample):
    d = tiny_causal_lm(tmp_path / "ctx16", **SMALL, context=16)
    args = []
    if sample:
        (tmp_path / "s.txt").write_text(STORY, encoding="utf-8")  # ~80 tokens: five times the context
        args = ["--sample-data", tmp_path / "s.txt"]
    proc = in_process(capfd, "export", d, "--out", tmp_path / "out", *args)
    assert proc.returncode == 0, proc.stderr
    assert "onnxruntime" not in proc.stderr
    from compress.artifact import load_artifact

    parity = load_artifact(tmp_path / "out").manifest.steps[-1].metrics["generation_parity"]
    assert parity["prefill_tokens"] + parity["decode_steps"] <= 16 and parity["same_tokens"], parity


@needs_genai_builder()
@pytest.mark.parametrize("how", [(), ("--precision", "int4", "--int4-algorithm", "gptq", "--calibration", "TEXT")])
def test_quantize_of_a_short_context_model_cuts_its_calibration_windows_and_prompts(capfd, tmp_path, how):
    """GPTQ's calibration windows and the collapse check's prompts (with their continuations) fit the context."""
    d = tiny_causal_lm(tmp_path / "ctx16", **SMALL, context=16)
    assert in_process(capfd, "export", d, "--out", tmp_path / "fp32").returncode == 0
    (tmp_path / "t.txt").write_text(STORY * 3, encoding="utf-8")
    args = [str(tmp_path / "t.txt") if a == "TEXT" else a for a in how]
    proc = in_process(capfd, "quantize", tmp_path / "fp32", "--out", tmp_path / "q", *args)
    assert proc.returncode == 0, proc.stderr
    assert "cos_cache" not in proc.stderr and "onnxruntime" not in proc.stderr
    assert (tmp_path / "q" / "manifest.json").is_file()


def test_a_context_too_short_for_any_parity_prompt_is_one_line(capfd, tmp_path):
    d = tiny_causal_lm(tmp_path / "ctx8", **SMALL, context=8)
    proc = in_process(capfd, "export", d, "--out", tmp_path / "out")
    assert_one_line_error(proc, "context of 8 tokens", "max_position_embeddings")
    assert not (tmp_path / "out").exists()


def test_prune_of_a_short_context_model_cuts_its_windows_or_names_max_length(capfd, tmp_path):
    """prune's text windows (--max-length, 128 by default) are cut to a 16-token context when left at the default;
    one given longer than the context is one line naming --max-length (not a --window prune does not have)."""
    d = tiny_causal_lm(tmp_path / "ctx16", **SMALL, context=16)
    (tmp_path / "t.txt").write_text(STORY * 3, encoding="utf-8")
    proc = in_process(capfd, "prune", d, "--ffn", "0.5", "--data", tmp_path / "t.txt", "-o", tmp_path / "p")
    assert proc.returncode == 0, proc.stderr
    proc = in_process(capfd, "prune", d, "--ffn", "0.5", "--data", tmp_path / "t.txt", "-o", tmp_path / "q",
                      "--max-length", "64")
    assert_one_line_error(proc, "--max-length 64", "context", "--max-length 16 or less")
    assert not (tmp_path / "q").exists()


def test_an_encoder_whose_wordpiece_vocabulary_is_past_its_vocab_size_is_one_line(bert_classifier, tmp_path):
    """Not only a causal LM's: a BERT whose vocab.txt has more tokens than its embedding has rows."""
    from compress.teachers.checkpoints import check_checkpoint

    d = Path(shutil.copytree(bert_classifier, tmp_path / "bert"))
    rows = (d / "vocab.txt").read_text(encoding="utf-8").count("\n")
    c = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(c | {"vocab_size": rows // 2}))
    with pytest.raises(ModelLoadError, match=f"vocab_size is {rows // 2}"):
        check_checkpoint(d)
    check_checkpoint(bert_classifier)  # the fixture itself fits
