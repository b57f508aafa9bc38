"""Model files as other tools write them: weights stored as ``Constant`` nodes (Paddle2ONNX, some TensorFlow
converters) are normalised at adoption and quantize like their initializer twin; a bare model file is validated with
its cold start measured; an adopted ``.tflite`` has a phone profile; an adopted file asked for another format is
refused in one line.

The models are tiny and random (``tests/builders/model_files.py``'s two-input Conv1d + Linear model, the LiteRT
asset): test material, not claims about real models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.builders.model_files import TwoInputs, torch_onnx_export

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")


def initializers_as_constants(model):
    """``model`` re-saved the way Paddle2ONNX writes it: every initializer a ``Constant`` node at the graph's top."""
    from onnx import helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    consts = [helper.make_node("Constant", [], [t.name], name=f"const_{t.name}", value=t) for t in g.initializer]
    nodes = consts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    names = {t.name for t in model.graph.initializer}
    kept = [v for v in g.input if v.name not in names]  # an initializer listed as an input (old exporters) too
    del g.input[:]
    g.input.extend(kept)
    onnx.checker.check_model(out)
    return out


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> Path:
    """two.onnx (opset 12, as torch.onnx writes it) and const.onnx (its weights as Constant nodes), each with the
    model.yaml fixing the time axis, and two.npz with 48 samples and labels."""
    d = tmp_path_factory.mktemp("twins")
    torch.manual_seed(0)
    torch_onnx_export(TwoInputs(), (torch.randn(2, 6, 40), torch.randn(2, 24)), d / "two.onnx", ["window", "feats"],
                      {"window": {0: "batch", 2: "time"}, "feats": {0: "batch"}, "scores": {0: "batch"}})
    model = onnx.load(str(d / "two.onnx"))
    onnx.save(initializers_as_constants(model), str(d / "const.onnx"))
    for name in ("two", "const"):
        (d / f"{name}.yaml").write_text("dims: {time: 40}\n", encoding="utf-8")
    rng = np.random.default_rng(0)
    np.savez(d / "two.npz", window=rng.standard_normal((48, 6, 40)).astype(np.float32),
             feats=rng.standard_normal((48, 24)).astype(np.float32), labels=rng.integers(0, 4, 48))
    return d


def test_constant_node_weights_are_normalised_and_quantize_like_their_initializer_twin(twins, tmp_path):
    from compress.artifact import load_artifact
    from compress.stages.export import export
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.validation.local import ValidateConfig, validate

    n_weights = len(onnx.load(str(twins / "two.onnx")).graph.initializer)
    calib = QuantizeConfig.from_flat(calibration=str(twins / "two.npz"), mode="static")
    runs = {}
    for name in ("two", "const"):
        art = export(twins / f"{name}.onnx", tmp_path / f"{name}-fp32")
        q = quantize(art, tmp_path / f"{name}-int8", calib)
        report = validate(load_artifact(q.path), ValidateConfig.from_flat(data=str(twins / "two.npz"),
                                                                          cold_start=False))
        runs[name] = (art, q, report)
    art, q, report = runs["const"]
    graph = onnx.load(str(art.model_path)).graph
    assert not [n for n in graph.node if n.op_type == "Constant"]  # every weight is an initializer now
    assert len(graph.value_info) > 0  # shapes inferred
    moved = art.manifest.steps[0].config["normalized"]
    assert moved["constants_to_initializers"] == moved["float_weights"] == n_weights
    assert moved["shapes_inferred"] is True
    assert "normalized" not in runs["two"][0].manifest.steps[0].config  # an exporter's graph is left as it came
    assert art.manifest.steps[0].metrics["parity"]["max_abs_diff"] <= 1e-4

    twin_art, twin_q, twin_report = runs["two"]
    layers = {r["node"] for r in q.manifest.steps[-1].metrics["layer_errors"]["layers"]}
    assert layers == {r["node"] for r in twin_q.manifest.steps[-1].metrics["layer_errors"]["layers"]}
    assert layers == {"/conv/Conv", "/dense/Gemm"}

    def qdq(a):
        return sum(n.op_type == "DequantizeLinear" for n in onnx.load(str(a.model_path)).graph.node)

    assert qdq(q) == qdq(twin_q) > 0
    assert q.size_bytes() == pytest.approx(twin_q.size_bytes(), rel=0.05)
    assert q.size_bytes() < art.size_bytes()  # INT8 weights, not FP32 labelled INT8 (the head stays float)
    met, twin_met = report.metrics, twin_report.metrics
    assert met["agreement"] == pytest.approx(twin_met["agreement"], abs=0.05)
    fid, twin_fid = met["output_fidelity"]["scores"], twin_met["output_fidelity"]["scores"]
    assert fid["cosine"] == pytest.approx(twin_fid["cosine"], abs=2e-3) and fid["cosine"] > 0.98
