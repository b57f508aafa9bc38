"""The ``edgecompress`` CLI: help for every command, export -> quantize, one-line errors with exit code 2."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import compress
from compress.artifact import Precision, load_artifact
from compress.cli import COMMANDS, cli
from tests.builders.cli import ENV, assert_one_line_error, edgecompress, in_process

pytestmark = pytest.mark.slow


def invoke(*args: str):
    return CliRunner().invoke(cli, ["-q", *map(str, args)], catch_exceptions=False)


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def _module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


# --- help and version ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_for_every_command(name):
    module = COMMANDS[name].partition(":")[0]
    if not _module_exists(module):
        pytest.skip(f"{module} is not written yet")
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert f"Usage: cli {name}" in result.output or f"{name} [OPTIONS]" in result.output
    assert "--help" in result.output


def test_group_help_lists_commands():
    missing = [n for n, t in COMMANDS.items() if not _module_exists(t.partition(":")[0])]
    if missing:
        pytest.skip(f"command modules not written yet: {missing}")
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    for name in COMMANDS:
        assert name in result.output


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert compress.__version__ in result.output and "edgecompress" in result.output


def test_unknown_command_is_a_usage_error():
    proc = edgecompress("frobnicate")
    assert proc.returncode == 2
    assert "No such command" in proc.stderr and "Traceback" not in proc.stderr


LEAN_CHECK = textwrap.dedent(
    """
    import importlib.util, sys
    import compress, compress.cli
    from click.testing import CliRunner

    def exists(module):
        try:
            return importlib.util.find_spec(module) is not None
        except ImportError:
            return False

    for name, target in list(compress.cli.COMMANDS.items()):
        if not exists(target.partition(":")[0]):
            del compress.cli.COMMANDS[name]  # command still being written
    result = CliRunner().invoke(compress.cli.cli, ["--help"])
    assert result.exit_code == 0, result.output
    heavy = ("torch", "onnxruntime", "transformers", "openvino", "tensorrt")
    print(",".join(m for m in heavy if m in sys.modules))
    """
)


def test_import_and_help_import_no_heavy_backend():
    proc = subprocess.run([sys.executable, "-c", LEAN_CHECK], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"imported by `import compress` / `--help`: {proc.stdout.strip()}"


# --- export -> quantize through the CLI -----------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_onnx(bert_classifier, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "onnx"
    result = invoke("export", bert_classifier, "--out", out, "--parity-samples", "4")
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "parity vs PyTorch FP32: max |diff|" in flat(result.output)
    return out


def test_cli_export_writes_a_verified_artifact(cli_onnx, bert_classifier):
    art = load_artifact(cli_onnx)
    assert art.precision is Precision.fp32 and art.format == "onnx"
    step = art.manifest.steps[0]
    assert step.stage == "export" and step.config["parity_samples"] == 4 and step.config["optimize"] == "none"
    assert step.metrics["parity"]["max_abs_diff"] <= 1e-4
    assert art.manifest.source.path == str(bert_classifier.resolve())


def test_cli_quantize_dynamic(cli_onnx, tmp_path):
    out = tmp_path / "int8"
    result = invoke("quantize", cli_onnx, "--out", out)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "smaller" in flat(result.output) and "argmax agreement" in flat(result.output)
    art = load_artifact(out)
    assert art.precision is Precision.int8
    assert [s.stage for s in art.manifest.steps] == ["export", "quantize"]
    assert art.manifest.steps[1].config["mode"] == "dynamic"


def test_cli_quantize_static(cli_onnx, tsv_file, tmp_path):
    out = tmp_path / "static"
    result = invoke(
        "quantize", cli_onnx, "--mode", "static", "--calibration", tsv_file, "--calibration-samples", "6",
        "--calibration-method", "minmax", "--out", out,
    )
    assert result.exit_code == 0, result.output
    cfg = load_artifact(out).manifest.steps[-1].config
    assert (cfg["mode"], cfg["calibration"]["data"], cfg["calibration"]["samples"]) == ("static", str(tsv_file), 6)


@pytest.mark.parametrize(("profile", "reduce_range"), [("cpu-x86-avx2", True), ("cpu-x86-avx512-vnni", False)])
def test_cli_quantize_profile_picks_reduce_range(cli_onnx, tmp_path, profile, reduce_range):
    out = tmp_path / "int8"
    result = invoke("quantize", cli_onnx, "--profile", profile, "--out", out)
    assert result.exit_code == 0, result.output
    step = load_artifact(out).manifest.steps[-1]
    assert step.config["int8"]["reduce_range"] is step.metrics["weight_range"]["reduce_range"] is reduce_range
    assert "--profile" in step.metrics["weight_range"]["decided_by"]


def test_cli_quantize_options_reach_the_config(cli_onnx, tmp_path):
    out = tmp_path / "int8"
    result = invoke("quantize", cli_onnx, "--per-tensor", "--full-range", "--weight-type", "uint8",
                    "--op-types", "MatMul, Attention", "--out", out)
    assert result.exit_code == 0, result.output
    cfg = load_artifact(out).manifest.steps[-1].config
    assert cfg["int8"]["per_channel"] is False and cfg["int8"]["reduce_range"] is False and \
        cfg["int8"]["weight_type"] == "uint8"
    assert cfg["op_types"] == ["MatMul", "Attention"]


# --- error paths: one line on stderr, exit code 2 -------------------------------------------------------


def test_export_missing_teacher(tmp_path):
    """Through the real entry (``python -m compress``): a library error is one line and exit 2 there, no traceback
    (the other refusals here run in this process, :func:`tests.builders.cli.in_process`)."""
    proc = edgecompress("export", tmp_path / "no-teacher", "--out", tmp_path / "out")
    assert_one_line_error(proc, "no-teacher", "no such directory")
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path):
    proc = edgecompress("--debug", "export", tmp_path / "no-teacher", "--out", tmp_path / "out")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ModelLoadError" in proc.stderr


def test_export_existing_out_without_force(capfd, bert_classifier, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = in_process(capfd, "export", bert_classifier, "--out", out)
    assert_one_line_error(proc, "already exists", "--force")
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_export_bad_option_value(capfd, bert_classifier, tmp_path):
    proc = in_process(capfd, "export", bert_classifier, "--out", tmp_path / "o", "--atol", "-1")
    assert_one_line_error(proc, "--atol")
    assert not (tmp_path / "o").exists()


def test_quantize_int8_artifact(capfd, int8_artifact, tmp_path):
    proc = in_process(capfd, "quantize", int8_artifact.path, "--out", tmp_path / "again")
    assert_one_line_error(proc, "is already onnx int8")
    assert not (tmp_path / "again").exists()


def test_quantize_static_without_calibration(capfd, onnx_artifact, tmp_path):
    proc = in_process(capfd, "quantize", onnx_artifact.path, "--mode", "static", "--out", tmp_path / "s")
    assert_one_line_error(proc, "calibration")
    assert not (tmp_path / "s").exists()


def test_quantize_tampered_artifact(capfd, onnx_artifact, tmp_path):
    d = tmp_path / "tampered"
    shutil.copytree(onnx_artifact.path, d)
    model = d / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-10] ^= 0x01
    model.write_bytes(bytes(data))
    proc = in_process(capfd, "quantize", d, "--out", tmp_path / "q")
    assert_one_line_error(proc, "sha256", "model.onnx")
    assert not (tmp_path / "q").exists()


def test_quantize_not_an_artifact(capfd, tmp_path):
    (tmp_path / "dir").mkdir()
    proc = in_process(capfd, "quantize", tmp_path / "dir", "--out", tmp_path / "q")
    assert_one_line_error(proc, "not an edgecompress artifact")


def test_doctor_prints_install_commands_intact():
    """Missing backends show their install command as typed (``[tensorrt]`` is not swallowed as rich markup)."""
    import importlib.util

    result = CliRunner().invoke(cli, ["doctor"], catch_exceptions=False, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "onnxruntime" in result.output and "CPU features" in result.output
    if importlib.util.find_spec("tensorrt") is None:
        assert "pip install 'edgecompress[tensorrt]'" in result.output
    if importlib.util.find_spec("torch_tensorrt") is None:
        import torch

        assert f'pip install "torch-tensorrt=={torch.__version__.split("+")[0]}"' in result.output


@pytest.mark.parametrize("config", ["[1, 2]", '"bert"', '{"model_type": "bert", "architectures": "BertModel"}'])
def test_a_config_json_that_is_not_an_object_is_one_line(capfd, tmp_path, config):
    """Probing whether a directory is an image teacher must not crash on a malformed config.json: the loader names it."""
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "config.json").write_text(config)
    proc = in_process(capfd, "export", tmp_path / "ck", "--out", tmp_path / "e")
    assert_one_line_error(proc, "ck", code=2)
    assert not (tmp_path / "e").exists()


def test_a_checkpoint_without_a_tokenizer_is_refused_not_exported_with_an_empty_one(capfd, tmp_path):
    """transformers 5 builds a tokenizer of only the special tokens when a checkpoint has none: every word would be
    [UNK] in an artifact that exported "successfully". Refused on both majors, one line, nothing written."""
    import transformers

    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, num_labels=2)
    transformers.BertForSequenceClassification(cfg).save_pretrained(tmp_path / "ck")
    proc = in_process(capfd, "export", tmp_path / "ck", "--out", tmp_path / "e")
    assert_one_line_error(proc, "no tokenizer files", "save_pretrained", code=2)
    assert not (tmp_path / "e").exists()


def _tiny_bert_with_tokenizer(directory: Path, **config_changes) -> Path:
    import json

    import transformers

    from tests.conftest import _save_wordpiece_tokenizer

    vocab = _save_wordpiece_tokenizer(directory)
    cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, num_labels=2)
    transformers.BertForSequenceClassification(cfg).save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    config.update(config_changes)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize("changes, words, real_entry", [
    ({"id2label": {"0": "a", "1": "b", "2": "c"}, "label2id": {"a": 0, "b": 1, "c": 2}},
     ("classifier.weight: (2, 32) in the checkpoint, (3, 32) from config.json",), True),
    ({"model_type": "nosuchtype"}, ("nosuchtype",), False),
])
def test_a_checkpoint_transformers_cannot_load_is_one_line_that_says_why(capfd, tmp_path, changes, words, real_entry):
    """transformers 5 prints a LOAD REPORT table (or a model-type note) on stderr and then says "look at the above
    report": edgecompress's one line says what is wrong by itself, and the chatter stays behind -v. The LOAD REPORT
    case runs the real entry (a fresh interpreter, where the CLI quiets transformers before it is first imported)."""
    ck = _tiny_bert_with_tokenizer(tmp_path / "ck", **changes)
    args = ("export", ck, "--out", tmp_path / "e")
    proc = edgecompress(*args) if real_entry else in_process(capfd, *args)
    line = assert_one_line_error(proc, "cannot load the model", *words, code=2)
    assert "above report" not in line and "LOAD REPORT" not in proc.stderr and "[transformers]" not in proc.stderr
