"""Options that do not apply (from issue 69), refused in one line (exit 2, nothing written), and messages that name the
right fix: a causal LM's export given an encoder exporter's option, ``--exclude-nodes`` resolved by the one resolver
for every backend (``first:N`` / ``last:N``, unknown names refused)."""

from __future__ import annotations

import json

import pytest

from tests.builders.cli import assert_one_line_error, in_process
from tests.builders.lm import genai_builder_missing, tiny_causal_lm

pytestmark = pytest.mark.slow

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_causal_lm(tmp_path_factory.mktemp("lm69") / "ckpt")


def test_a_gguf_s_export_refuses_an_encoder_option_before_the_file_is_read(capfd, tmp_path):
    """``export FILE.gguf --opset 17`` (issue 77): refused before the file is dequantized into the cache (the file here
    is not even a GGUF: nothing reads it)."""
    model = tmp_path / "model.gguf"
    model.write_bytes(b"not read")
    proc = in_process(capfd, "export", model, "--format", "onnx", "--opset", "17", "--out", tmp_path / "o",
                      env={"EDGECOMPRESS_CACHE_DIR": str(tmp_path / "cache")})
    assert_one_line_error(proc, "--opset", "would be ignored", "drop --opset")
    assert not (tmp_path / "o").exists() and not (tmp_path / "cache" / "gguf-checkpoints").exists()


@pytest.mark.parametrize("option", [("--optimize", "O2"), ("--exporter", "dynamo"), ("--opset", "17"),
                                    ("--parity-samples", "2")])
def test_a_causal_lms_export_refuses_an_encoder_exporters_option(capfd, ckpt, tmp_path, option):
    proc = in_process(capfd, "export", ckpt, "--out", tmp_path / "o", *option)
    assert_one_line_error(proc, option[0], "would be ignored", f"drop {option[0]}")
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def lm_onnx(ckpt, tmp_path_factory):
    if genai_builder_missing():
        pytest.skip(genai_builder_missing())
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    return export(ckpt, tmp_path_factory.mktemp("lm69onnx") / "fp32", ExportConfig(format="onnx"))


def test_exclude_nodes_of_a_causal_lm_refuses_a_name_the_graph_lacks(capfd, lm_onnx, tmp_path):
    proc = in_process(capfd, "quantize", lm_onnx.path, "--precision", "int4", "--exclude-nodes", "no_such_matmul",
                      "--out", tmp_path / "q")
    assert_one_line_error(proc, "--exclude-nodes names no node of the graph: no_such_matmul", "first:N")
    assert not (tmp_path / "q").exists()


def test_exclude_nodes_first_and_last_keep_that_many_matmuls_of_a_causal_lm_float(capfd, lm_onnx, tmp_path):
    proc = in_process(capfd, "quantize", lm_onnx.path, "--precision", "int4", "--exclude-nodes", "first:2,last:1",
                      "--out", tmp_path / "q")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    bits = manifest["steps"][-1]["metrics"]["weights"]["bits"]
    kept = [n for n, b in bits.items() if b == 32]
    assert kept == ["/model/layers.0/attn/qkv_proj/MatMul", "/model/layers.0/attn/o_proj/MatMul",
                    "/lm_head/MatMul"], bits  # the first two MatMuls and the last (the LM head)
    assert manifest["steps"][-1]["metrics"]["weights"]["lm_head"]["bits"] == 32
    assert manifest["steps"][-1]["config"]["exclude_nodes"] == kept


@pytest.mark.parametrize("option", [("--top-k", "8"), ("--on-policy-tokens", "8")])
def test_an_encoder_teachers_distill_refuses_a_causal_lms_option(capfd, bert_classifier, tsv_file, tmp_path, option):
    proc = in_process(capfd, "distill", "-t", bert_classifier, "--train", tsv_file, "-o", tmp_path / "s",
                      "--layers", "1", *option)
    assert_one_line_error(proc, f"{option[0]} is for causal LM teachers", f"drop {option[0]}")
    assert not (tmp_path / "s").exists()


def test_on_policy_tokens_without_on_policy_is_refused(capfd, ckpt, tmp_path):
    (tmp_path / "train.txt").write_text("Once upon a time there was a little cat. " * 200, encoding="utf-8")
    proc = in_process(capfd, "distill", "-t", ckpt, "--train", tmp_path / "train.txt", "-o", tmp_path / "s",
                      "--layers", "1", "--max-length", "32", "--on-policy-tokens", "8")
    assert_one_line_error(proc, "--on-policy-tokens 8", "--on-policy is 0", "add --on-policy")
    assert not (tmp_path / "s").exists()


def test_accuracy_aware_int4_on_too_short_data_names_data_not_a_window_option(capfd, lm_onnx, tmp_path):
    """The window is the artifact's perplexity window: quantize has no --window to offer."""
    (tmp_path / "short.txt").write_text("Once upon a time.", encoding="utf-8")
    proc = in_process(capfd, "quantize", lm_onnx.path, "--precision", "int4", "--max-perplexity-increase", "0.05",
                      "--data", tmp_path / "short.txt", "--out", tmp_path / "q")
    line = assert_one_line_error(proc, "shorter than one window", "give --data a longer text")
    assert "--window" not in line
    assert not (tmp_path / "q").exists()


def test_a_checkpoint_with_nan_weights_is_named_so_not_sent_to_raise_atol(capfd, ckpt, tmp_path):
    if genai_builder_missing():
        pytest.skip(genai_builder_missing())
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "nan")
    for f in ckpt.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "generation_config")):
            (tmp_path / "nan" / f.name).write_bytes(f.read_bytes())
    proc = in_process(capfd, "export", tmp_path / "nan", "--out", tmp_path / "o")
    line = assert_one_line_error(proc, "weights hold NaN or Inf", "re-save or re-download")
    assert "--atol" not in line
    assert not (tmp_path / "o").exists()


def test_an_encoder_checkpoint_with_nan_weights_is_named_so(capfd, bert_classifier, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(bert_classifier)
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "nan")
    for f in bert_classifier.iterdir():
        if f.is_file() and not f.name.startswith(("model", "config")):
            (tmp_path / "nan" / f.name).write_bytes(f.read_bytes())
    proc = in_process(capfd, "export", tmp_path / "nan", "--out", tmp_path / "o")
    line = assert_one_line_error(proc, "weights hold NaN or Inf", "re-save or re-download")
    assert "--atol" not in line and "--optimize" not in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("task", ["question-answering", "text-classification"])
def test_finetune_of_a_causal_lm_with_another_task_says_it_fine_tunes_with_text_generation(capfd, ckpt, tmp_path, task):
    (tmp_path / "train.json").write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{
        "context": "The cat sat on the mat.", "qas": [{"id": "1", "question": "Where did the cat sit?",
                                                   "answers": [{"text": "on the mat", "answer_start": 12}]}]}]}]}))
    proc = in_process(capfd, "finetune", ckpt, "--task", task, "--train", tmp_path / "train.json",
                      "-o", tmp_path / "ft", "--max-steps", "2")
    assert_one_line_error(proc, f"--task {task}", "causal LM", "fine-tunes with text-generation", "leave --task out")
    assert not (tmp_path / "ft").exists()


def test_instruction_rows_in_alpacas_shape_are_pointed_at_prompt_field(capfd, ckpt, tmp_path):
    rows = [{"instruction": "Name a colour.", "input": "", "output": "Blue."}] * 40
    (tmp_path / "alpaca.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    proc = in_process(capfd, "finetune", ckpt, "--train", tmp_path / "alpaca.jsonl", "-o", tmp_path / "ft",
                      "--max-steps", "2")
    assert_one_line_error(proc, "instruction rows", "--prompt-field instruction --response-field output")
    assert not (tmp_path / "ft").exists()


def test_validate_refuses_an_existing_report_dir_first_naming_report_dir(capfd, tmp_path):
    """Checked before the artifact is even looked at (here: one that does not exist), naming the option to change."""
    (tmp_path / "r").mkdir()
    proc = in_process(capfd, "validate", tmp_path / "no-artifact", "--profile", "cpu-x86-avx2",
                      "--report-dir", tmp_path / "r")
    line = assert_one_line_error(proc, "already exists", "choose another --report-dir")
    assert "--out" not in line


def test_package_of_a_question_answering_model_is_refused_until_the_handler_serves_spans(capfd, tmp_path):
    import torch
    from conftest import _bert_config, _save_model, _save_wordpiece_tokenizer
    from transformers import BertForQuestionAnswering

    n = _save_wordpiece_tokenizer(tmp_path / "qa")
    torch.manual_seed(0)
    teacher = _save_model(BertForQuestionAnswering(_bert_config(n)).eval(), tmp_path / "qa")
    proc = in_process(capfd, "export", teacher, "--out", tmp_path / "fp32")
    assert proc.returncode == 0, proc.stderr
    proc = in_process(capfd, "package", tmp_path / "fp32", "--profile", "aws-lambda-arm64", "--out", tmp_path / "b.zip",
                      "--no-download", "--no-cold-start")
    assert_one_line_error(proc, "question-answering", "does not serve answer spans", "start logits only")
    assert not (tmp_path / "b.zip").exists() and not list(tmp_path.glob("b.*"))


@pytest.mark.parametrize("names, ok", [("first:1,last:1", True), ("no_such_matmul", False)])
def test_openvino_encoders_exclude_nodes_take_first_last_and_refuse_unknown_names(capfd, ov_artifact, tmp_path, names,
                                                                                 ok):
    proc = in_process(capfd, "quantize", ov_artifact.path, "--weights-only", "--exclude-nodes", names,
                      "--out", tmp_path / "q")
    if ok:
        assert proc.returncode == 0, proc.stderr
    else:
        assert_one_line_error(proc, "--exclude-nodes names no node of the graph: no_such_matmul", "first:N")
        assert not (tmp_path / "q").exists()


@pytest.fixture(scope="module")
def lm_openvino(ckpt, tmp_path_factory):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    return export(ckpt, tmp_path_factory.mktemp("lm69ov") / "fp32", ExportConfig(format="openvino"))


def test_openvino_causal_lms_exclude_nodes_resolve_first_and_refuse_unknown_names(capfd, lm_openvino, tmp_path):
    proc = in_process(capfd, "quantize", lm_openvino.path, "--precision", "int4", "--exclude-nodes", "no_such_matmul",
                      "--out", tmp_path / "q")
    assert_one_line_error(proc, "--exclude-nodes names no node of the graph: no_such_matmul", "first:N")
    assert not (tmp_path / "q").exists()
    proc = in_process(capfd, "quantize", lm_openvino.path, "--precision", "int4", "--exclude-nodes", "first:2",
                      "--out", tmp_path / "q")
    assert proc.returncode == 0, proc.stderr
