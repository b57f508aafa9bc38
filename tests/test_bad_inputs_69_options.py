"""Issue 69's options that do not apply, refused in one line (exit 2, nothing written), and messages that name the
right fix: a causal LM's export given an encoder exporter's option, ``--exclude-nodes`` resolved by the one resolver
for every backend (``first:N`` / ``last:N``, unknown names refused)."""

from __future__ import annotations

import json

import pytest

from tests.builders.causal_lm import genai_builder_missing, tiny_causal_lm
from tests.conftest import assert_one_line_error, edgecompress

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_causal_lm(tmp_path_factory.mktemp("lm69") / "ckpt")


@pytest.mark.parametrize("option", [("--optimize", "O2"), ("--exporter", "dynamo"), ("--opset", "17")])
def test_a_causal_lms_export_refuses_an_encoder_exporters_option(ckpt, tmp_path, option):
    proc = edgecompress("export", ckpt, "--out", tmp_path / "o", *option)
    assert_one_line_error(proc, option[0], "would be ignored", f"drop {option[0]}")
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def lm_onnx(ckpt, tmp_path_factory):
    if genai_builder_missing():
        pytest.skip(genai_builder_missing())
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    return export(ckpt, tmp_path_factory.mktemp("lm69onnx") / "fp32", ExportConfig(format="onnx"))


def test_exclude_nodes_of_a_causal_lm_refuses_a_name_the_graph_lacks(lm_onnx, tmp_path):
    proc = edgecompress("quantize", lm_onnx.path, "--precision", "int4", "--exclude-nodes", "no_such_matmul",
                        "--out", tmp_path / "q")
    assert_one_line_error(proc, "--exclude-nodes names no node of the graph: no_such_matmul", "first:N")
    assert not (tmp_path / "q").exists()


def test_exclude_nodes_first_and_last_keep_that_many_matmuls_of_a_causal_lm_float(lm_onnx, tmp_path):
    proc = edgecompress("quantize", lm_onnx.path, "--precision", "int4", "--exclude-nodes", "first:2,last:1",
                        "--out", tmp_path / "q")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    bits = manifest["steps"][-1]["metrics"]["weights"]["bits"]
    kept = [n for n, b in bits.items() if b == 32]
    assert kept == ["/model/layers.0/attn/qkv_proj/MatMul", "/model/layers.0/attn/o_proj/MatMul",
                    "/lm_head/MatMul"], bits  # the first two MatMuls and the last (the LM head)
    assert manifest["steps"][-1]["metrics"]["weights"]["lm_head"]["bits"] == 32
    assert manifest["steps"][-1]["config"]["exclude_nodes"] == kept
