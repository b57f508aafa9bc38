"""ONNX export on transformers 4 and 5: PyTorch's exporter by default, dynamo and Optimum on request.

CI runs this suite twice, on transformers 4 (with Optimum) and on transformers 5 (without it).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

import numpy as np
import pytest

from compress.errors import ConfigError
from compress.stages.export import export
from compress.stages.export.config import ExportConfig

pytestmark = pytest.mark.slow

TRANSFORMERS_MAJOR = int(importlib.metadata.version("transformers").split(".")[0])


def _optimum_works() -> bool:
    if importlib.util.find_spec("optimum") is None:
        return False
    try:
        _ = importlib.import_module("optimum.exporters.onnx").onnx_export_from_model
    except Exception:  # noqa: BLE001 - optimum-onnx beside an unsupported transformers fails at import
        return False
    return True


def _run(art, texts):
    from compress.runtimes.ort_backend import OrtBackend

    rt = OrtBackend(art)
    try:
        return rt.predict(rt.encode(texts))
    finally:
        rt.close()


def test_default_export_names_nodes_by_module_and_matches_pytorch(bert_classifier, tmp_path, sample_texts):
    import onnx

    from compress.runtimes.torch_backend import TorchBackend
    from compress.teachers.load import load_teacher

    art = export(bert_classifier, tmp_path / "onnx")
    step = art.manifest.steps[-1]
    assert step.config["exporter"] == "torch" and step.metrics["parity"]["max_abs_diff"] <= 1e-4
    names = {n.name for n in onnx.load(str(art.model_path)).graph.node}
    assert "/bert/encoder/layer.0/attention/self/query/MatMul" in names
    assert [s.name for s in art.manifest.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [s.name for s in art.manifest.outputs] == ["logits"]
    ref = TorchBackend.from_teacher(load_teacher(bert_classifier)).predict_text(sample_texts)
    np.testing.assert_allclose(_run(art, sample_texts), ref, atol=1e-4)


def test_dynamo_exporter(bert_classifier, tmp_path, sample_texts):
    pytest.importorskip("onnxscript")
    art = export(bert_classifier, tmp_path / "onnx", ExportConfig(exporter="dynamo"))
    assert art.manifest.steps[-1].metrics["parity"]["max_abs_diff"] <= 1e-4
    assert _run(art, sample_texts).shape == (len(sample_texts), 2)


def test_dynamo_without_onnxscript_names_the_package(bert_classifier, tmp_path, monkeypatch):
    if importlib.util.find_spec("onnxscript") is not None:
        pytest.skip("onnxscript is installed here")
    from compress.errors import MissingBackendError

    with pytest.raises(MissingBackendError, match="onnxscript"):
        export(bert_classifier, tmp_path / "onnx", ExportConfig(exporter="dynamo"))
    assert not (tmp_path / "onnx").exists()


def test_optimum_exporter_where_it_works(bert_classifier, tmp_path, sample_texts):
    if not _optimum_works():
        pytest.skip("Optimum is not installed beside this transformers (optimum-onnx needs transformers<4.58)")
    a = export(bert_classifier, tmp_path / "optimum", ExportConfig(exporter="optimum"))
    b = export(bert_classifier, tmp_path / "torch")
    np.testing.assert_allclose(_run(a, sample_texts), _run(b, sample_texts), atol=1e-5)


def test_o2_uses_onnxruntime_fusions(bert_classifier, tmp_path, sample_texts):
    import onnx

    art = export(bert_classifier, tmp_path / "o2", ExportConfig(optimize="O2"))
    ops = {n.op_type for n in onnx.load(str(art.model_path)).graph.node}
    assert ops & {"SkipLayerNormalization", "LayerNormalization", "Attention", "FastGelu", "Gelu"}, ops
    assert art.manifest.steps[-1].metrics["parity"]["max_abs_diff"] <= 1e-4


@pytest.mark.skipif(TRANSFORMERS_MAJOR < 5, reason="transformers 4 has prune_heads")
def test_head_pruning_is_refused_clearly_on_transformers5(bert_classifier, tmp_path):
    from compress import PruneConfig, prune

    with pytest.raises(ConfigError, match="--heads needs transformers 4"):
        prune(bert_classifier, tmp_path / "p", PruneConfig.from_flat(heads=0.5, samples=4))
    assert not (tmp_path / "p").exists()


def test_phone_exports_trace_the_inputs_in_the_order_the_model_reads_them(bert_classifier):
    """ExecuTorch, Core ML and LiteRT trace one module of positional inputs: its example row must be in the module's
    order (BERT's tokenizer returns attention_mask second, its forward takes token_type_ids second; a Core ML package
    named its inputs after that row)."""
    import torch

    from compress.stages.export.executorch import example_rows, traced_module
    from compress.teachers.load import load_teacher

    teacher = load_teacher(bert_classifier)
    names, example, _ = example_rows(teacher)
    feeds = teacher.example_inputs()
    assert names == teacher.input_names and set(names) == set(feeds)
    with torch.no_grad():
        expected = teacher.call(teacher.model, {n: v[:1] for n, v in feeds.items()})
        torch.testing.assert_close(traced_module(teacher)(*example), expected)
