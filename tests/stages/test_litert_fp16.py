"""LiteRT files as MediaPipe and the TFLite converter's float16 quantization write them: every weight an FP16 constant
behind a ``DEQUANTIZE`` op, and no signature definitions. ``tests/assets/tiny_cnn.tflite`` (a random 3-channel 16×16
CNN, test material) is rewritten that way with LiteRT's own flatbuffer tools; quantize must quantize it for real, or
say that nothing was quantized; static INT8 must calibrate without a signature; a ``[batch, H, W, 1]`` probability
map is taken as the map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("ai_edge_litert")
pytest.importorskip("ai_edge_quantizer")

from tests.builders.cli import main_error

ASSET = Path(__file__).resolve().parents[1] / "assets" / "tiny_cnn.tflite"


def fp16_weights(src: Path, dst: Path, *, signatures: bool = False, ops: tuple[str, ...] | None = None) -> int:
    """``src`` with each float constant of more than one element (``ops``: only those read by these operators) stored
    as FP16 behind a DEQUANTIZE op, as MediaPipe's files are; signature definitions dropped unless ``signatures``.
    Returns how many constants were rewritten."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fb

    model = fb.read_model(str(src))
    sg = model.subgraphs[0]
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.DEQUANTIZE
    code.version = 3
    model.operatorCodes.append(code)
    deq = []
    for op in list(sg.operators):
        if ops and fb.opcode_to_name(model, op.opcodeIndex) not in ops:
            continue
        for t in op.inputs:
            tensor = sg.tensors[t] if t >= 0 else None
            data = None if tensor is None else model.buffers[tensor.buffer].data
            if tensor is None or tensor.type != schema.TensorType.FLOAT32 or data is None or len(data) <= 4:
                continue
            half = schema.TensorT()
            half.name, half.shape, half.type = tensor.name + b"_fp16", list(tensor.shape), schema.TensorType.FLOAT16
            half.buffer = len(model.buffers)
            buf = schema.BufferT()
            buf.data = np.frombuffer(np.asarray(data, np.uint8).view(np.float32).astype(np.float16).tobytes(), np.uint8)
            model.buffers.append(buf)
            tensor.buffer = 0
            sg.tensors.append(half)
            d = schema.OperatorT()
            d.opcodeIndex, d.inputs, d.outputs = len(model.operatorCodes) - 1, [len(sg.tensors) - 1], [t]
            deq.append(d)
    sg.operators = deq + sg.operators
    if not signatures:
        model.signatureDefs = None
    dst.write_bytes(fb.convert_object_to_bytearray(model))
    return len(deq)


def _adopted(tmp_path: Path, name: str, **kw):
    from compress.stages.export import export

    src = tmp_path / name / "model.tflite"
    src.parent.mkdir(parents=True)
    assert fp16_weights(ASSET, src, **kw) > 0
    (src.parent / "model.yaml").write_text(yaml.safe_dump({
        "task": "image-classification", "labels": ["a", "b", "c", "d"],
        "preprocess": {"size": [16, 16], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    return export(src, tmp_path / f"{name}-adopted")


@pytest.fixture()
def calibration(tmp_path) -> Path:
    from PIL import Image

    images = tmp_path / "cal" / "any"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype("uint8")).save(images / f"{i}.png")
    return tmp_path / "cal"


def test_fp16_weights_behind_dequantize_are_quantized_for_real(tmp_path, calibration):
    from ai_edge_litert.interpreter import Interpreter

    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.stages.quantize.litert_graph import integer_weights, prepare

    art = _adopted(tmp_path, "fp16")
    prepared = prepare(art.model_path)  # the folded graph computes what the FP16 file computes, exactly
    assert prepared.fp16_weights_dequantized == 4 and prepared.signature_added
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    outs = []
    for kw in ({"model_path": str(art.model_path)}, {"model_content": prepared.model}):
        it = Interpreter(**kw)
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        outs.append(it.get_tensor(it.get_output_details()[0]["index"]))
    np.testing.assert_array_equal(outs[0], outs[1])
    for name, cfg in (("dynamic", QuantizeConfig()), ("static", QuantizeConfig.from_flat(
            mode="static", calibration=str(calibration))), ("weights-only", QuantizeConfig.from_flat(weights_only=True))):
        q = quantize(art, tmp_path / name, cfg)
        step = q.manifest.steps[-1]
        assert integer_weights(q.model_path.read_bytes()) >= 2 and step.metrics["integer_weights"] >= 2, name
        assert step.config["fp16_weights_dequantized"] == 4
        assert step.metrics["parity_vs_input"]["cosine_mean"] > 0.95, (name, step.metrics["parity_vs_input"])


def test_static_int8_of_a_file_without_signatures(tmp_path, calibration, capsys):
    """The FP32 CNN with its signature definitions dropped (as MediaPipe's files come) calibrates on its input."""
    from ai_edge_litert.tools import flatbuffer_utils as fb

    from compress.stages.export import export
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    model = fb.read_model(str(ASSET))
    model.signatureDefs = None
    src = tmp_path / "src" / "model.tflite"
    src.parent.mkdir()
    src.write_bytes(fb.convert_object_to_bytearray(model))
    (src.parent / "model.yaml").write_text(yaml.safe_dump({
        "task": "image-classification", "labels": ["a", "b", "c", "d"],
        "preprocess": {"size": [16, 16], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    art = export(src, tmp_path / "adopted")
    q = quantize(art, tmp_path / "static", QuantizeConfig.from_flat(mode="static", calibration=str(calibration)))
    step = q.manifest.steps[-1]
    assert step.config["recipe"] == "static_wi8_ai8" and step.config["calibration"]["samples"] == 6
    assert step.metrics["parity_vs_input"]["cosine_mean"] > 0.95, step.metrics["parity_vs_input"]
    assert step.config["calibration"]["method"] == "mean-minmax"
    line = main_error(capsys, "quantize", art.path, "--mode", "static", "--calibration", calibration,
                      "--calibration-method", "entropy", "--out", tmp_path / "e")
    assert "--calibration-method entropy" in line and "mean-minmax or minmax" in line


def test_a_quantize_that_quantizes_nothing_is_an_error_not_an_artifact(tmp_path, capsys):
    """A file with no weight ai-edge-quantizer quantizes (here the CNN cut after its first op, a TRANSPOSE) gets no
    artifact labelled INT8."""
    from ai_edge_litert.tools import flatbuffer_utils as fb

    from compress.stages.export import export

    model = fb.read_model(str(ASSET))
    sg = model.subgraphs[0]
    sg.operators = sg.operators[:1]
    sg.outputs = [sg.operators[0].outputs[0]]
    model.signatureDefs = None
    src = tmp_path / "src" / "model.tflite"
    src.parent.mkdir()
    src.write_bytes(fb.convert_object_to_bytearray(model))
    art = export(src, tmp_path / "adopted")
    for args in ((), ("--weights-only",)):
        out = tmp_path / f"none{len(args)}"
        line = main_error(capsys, "quantize", art.path, *args, "--out", out)
        assert line.startswith("error: nothing was quantized") and "no artifact was written" in line, line
        assert not out.exists()


def test_a_channel_last_probability_map_is_taken_as_the_map():
    """``[batch, H, W, 1]`` (a LiteRT segmenter's output) against ``[batch, H, W]`` labels, batch by batch and whole;
    the channel-first ``[batch, 1, H, W]`` as before."""
    from compress.tasks.maps import ProbabilityMapStream, probability_map_metrics
    from compress.tasks.values import ThresholdPostprocess

    rng = np.random.default_rng(0)
    ref = rng.random((4, 8, 6)).astype(np.float32)
    cand = np.where(np.arange(6) < 3, ref, 1 - ref)  # the right half of every map inverted: IoU well below 1
    labels = (ref >= 0.5).astype(np.int64)
    post = ThresholdPostprocess(scores_are_probabilities=True)
    want = probability_map_metrics(post, cand, ref, labels)
    assert 0.1 < want["metric"] < 0.9 and want["teacher_metric"] == 1.0
    for c, r in ((cand[..., None], ref[..., None]), (cand[:, None], ref[:, None])):
        assert probability_map_metrics(post, c, r, labels) == want
        stream = ProbabilityMapStream(post)
        for k in (0, 2):
            stream.update(c[k:k + 2], labels[k:k + 2], r[k:k + 2])
        assert stream.result()["metric"] == pytest.approx(want["metric"])


def test_a_lone_relu_is_fused_into_the_convolution_it_follows(tmp_path):
    """MediaPipe's graphs keep RELU apart from the convolution; prepared for the quantizer, it is fused (the INT8
    range then covers what the activation keeps), and the graph computes the same."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.tools import flatbuffer_utils as fb

    from compress.stages.quantize.litert_graph import prepare

    model = fb.read_model(str(ASSET))  # its CONV_2D has RELU fused: take it out into an op of its own
    sg = model.subgraphs[0]
    conv = next(op for op in sg.operators if fb.opcode_to_name(model, op.opcodeIndex) == "CONV_2D")
    conv.builtinOptions.fusedActivationFunction = schema.ActivationFunctionType.NONE
    raw = schema.TensorT()
    raw.name, raw.shape, raw.type = b"conv_raw", list(sg.tensors[conv.outputs[0]].shape), schema.TensorType.FLOAT32
    raw.buffer = 0
    sg.tensors.append(raw)
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.RELU
    code.version = 1
    model.operatorCodes.append(code)
    relu = schema.OperatorT()
    relu.opcodeIndex, relu.inputs, relu.outputs = len(model.operatorCodes) - 1, [len(sg.tensors) - 1], list(conv.outputs)
    conv.outputs = [len(sg.tensors) - 1]
    sg.operators.insert(sg.operators.index(conv) + 1, relu)
    src = tmp_path / "unfused.tflite"
    src.write_bytes(fb.convert_object_to_bytearray(model))
    prepared = prepare(src)
    assert prepared.activations_fused == 1 and prepared.fp16_weights_dequantized == 0
    ready = fb.read_model_from_bytearray(bytearray(prepared.model))
    assert [fb.opcode_to_name(ready, op.opcodeIndex) for op in ready.subgraphs[0].operators] == \
        ["TRANSPOSE", "CONV_2D", "TRANSPOSE", "MEAN", "FULLY_CONNECTED"]
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    outs = []
    for kw in ({"model_path": str(src)}, {"model_content": prepared.model}, {"model_path": str(ASSET)}):
        it = Interpreter(**kw)
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        outs.append(it.get_tensor(it.get_output_details()[0]["index"]))
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)
    np.testing.assert_allclose(outs[1], outs[2], atol=1e-6)


def test_activation_bits_16_gives_w8a16_closer_to_fp32_than_int8(tmp_path, calibration, capsys):
    """--activation-bits 16: ai-edge-quantizer's static_wi8_ai16 (INT8 weights, 16-bit activations, as NPUs run
    w8a16), at least as close to the FP32 file as static INT8; refused where no activation is calibrated."""
    from compress.stages.export import export
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.tflite").write_bytes(ASSET.read_bytes())
    (tmp_path / "src" / "model.yaml").write_text(yaml.safe_dump({
        "task": "image-classification", "labels": ["a", "b", "c", "d"],
        "preprocess": {"size": [16, 16], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    art = export(tmp_path / "src" / "model.tflite", tmp_path / "adopted")
    cosine = {}
    for bits in (8, 16):
        q = quantize(art, tmp_path / f"a{bits}", QuantizeConfig.from_flat(mode="static", calibration=str(calibration),
                                                                          activation_bits=bits))
        step = q.manifest.steps[-1]
        assert step.config["recipe"] == f"static_wi8_ai{bits}"
        cosine[bits] = step.metrics["parity_vs_input"]["cosine_mean"]
    assert cosine[16] >= cosine[8] - 1e-4 and cosine[16] > 0.99, cosine
    line = main_error(capsys, "quantize", art.path, "--activation-bits", "16", "--out", tmp_path / "d")
    assert "--activation-bits 16" in line and "--mode static" in line


def test_static_int8_keeps_float_the_operators_the_calibration_rows_name(monkeypatch):
    """The rule behind static INT8's float operators (``litert_sensitivity``), on rows where most of the values fall
    below one step of the INT8 scale (one huge pixel among small ones, as a raw-pixel stem sees; test material): the
    operators the sensitivity table names, each with its neighbours, kept float until the output SQNR on the rows
    reaches the bar; at most the share allowed and while the model stays smaller than its source (none kept when
    nothing within them helps, and the bar recorded as not met); nothing kept where INT8 meets the bar."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    from compress.stages.quantize import litert_sensitivity as sens
    from compress.stages.quantize.litert import _build, activation_ranges
    from compress.stages.quantize.litert_graph import SIGNATURE_KEY, prepare

    model = prepare(ASSET).model  # TRANSPOSE, CONV_2D, TRANSPOSE, MEAN, FULLY_CONNECTED
    arg = next(iter(Interpreter(model_content=model).get_signature_list()[SIGNATURE_KEY]["inputs"]))
    x = np.random.default_rng(0).standard_normal((8, 1, 3, 16, 16)).astype(np.float32) * 0.01
    x[:, :, :, 0, 0] = 200.0
    rows = {SIGNATURE_KEY: [{arg: r} for r in x]}
    qt = quantizer.Quantizer(bytearray(model))
    qt.load_quantization_recipe(recipe.static_wi8_ai8())
    ranges = activation_ranges(qt, model, rows, "mean-minmax")

    def choose():
        return sens.choose_float_ops(model, lambda **kw: _build(model, ranges, **kw), rows, kept=[])

    capped = choose()  # 25% of five operators: the first unit only (the spike runs through all but the last)
    assert capped.int8_sqnr_db < min(capped.int16_sqnr_db - sens.MARGIN_DB, sens.GOOD_DB)
    assert capped.float_ops == [] and not capped.record()["bar_met"] and capped.chosen_sqnr_db == capped.int8_sqnr_db
    graph = sens.operator_scopes(model)
    first = capped.most_sensitive[0]["op"]
    assert first in graph and first.startswith("__main__.Net;;")  # the convolution: its output is the spiky tensor
    monkeypatch.setattr(sens, "MAX_FLOAT_SHARE", 1.0)
    free = choose()
    assert free.record()["bar_met"] and free.chosen_sqnr_db >= sens.GOOD_DB > free.int8_sqnr_db + 5, free.record()
    assert {first, *graph[first]} <= set(free.float_ops) <= set(graph)
    small = sens.choose_float_ops(model, lambda **kw: _build(model, ranges, **kw), rows, kept=[],
                                  max_bytes=len(_build(model, ranges)) + 1)  # float weights would not fit
    assert small.float_ops == [] and not small.met and small.most_sensitive
    monkeypatch.setattr(sens, "GOOD_DB", free.int8_sqnr_db - 1)  # INT8 good enough: nothing kept float, no table
    again = choose()
    assert again.float_ops == [] and again.met and again.most_sensitive == []


def test_the_default_static_int8_falls_back_to_the_route_that_holds_on_held_out_rows(tmp_path, monkeypatch, capsys):
    """Static INT8 is checked against FP32 on calibration rows held out from calibration (issue 69): where it holds it
    is written; where it misses (here: a cosine floor between static's and dynamic's on the tiny CNN) the route that
    holds, dynamic INT8, is written and the manifest says which and why; ``--strict`` with a miss no route fixes
    writes nothing; 16-bit activations, asked for, keep their behaviour."""
    from PIL import Image

    from compress.stages.quantize import parity, quantize
    from compress.stages.quantize.config import QuantizeConfig

    art = _adopted(tmp_path, "fp16")
    images = tmp_path / "cal16" / "any"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype("uint8")).save(images / f"{i}.png")
    static = QuantizeConfig.from_flat(mode="static", calibration=str(tmp_path / "cal16"))
    step = quantize(art, tmp_path / "holds", static).manifest.steps[-1]
    fb = step.metrics["fallback"]
    assert step.config["recipe"] == "static_wi8_ai8" and fb["needed"] is False and fb["route"] == "static INT8"
    assert fb["held_out"]["held_out_rows"] == 4 and fb["held_out"]["calibration_rows"] == 12
    assert step.config["calibration"]["samples"] == 12  # the held-out rows do not calibrate

    monkeypatch.setattr(parity, "COSINE_MEAN_FLOOR", 0.9999)  # static INT8 0.9996 here, dynamic 0.99999
    step = quantize(art, tmp_path / "falls", static).manifest.steps[-1]
    fb = step.metrics["fallback"]
    assert step.config["recipe"] == "dynamic_wi8_afp32" and fb["needed"] and fb["held"], fb
    assert fb["route"] == "dynamic INT8" and fb["routes"][0]["below"] and "0.9999" in fb["why"]
    assert fb["after"]["cosine_mean"] >= 0.9999 > fb["before"]["cosine_mean"]
    assert step.config["calibration"]["data"] is None  # dynamic INT8 calibrates nothing

    w8a16 = QuantizeConfig.from_flat(mode="static", activation_bits=16, calibration=str(tmp_path / "cal16"))
    step = quantize(art, tmp_path / "asked", w8a16).manifest.steps[-1]
    assert step.config["recipe"] == "static_wi8_ai16" and "fallback" not in step.metrics

    monkeypatch.setattr(parity, "COSINE_MEAN_FLOOR", 1.01)  # no route holds
    out = tmp_path / "strict"
    line = main_error(capsys, "quantize", art.path, "--mode", "static", "--calibration", tmp_path / "cal16",
                      "--strict", "--out", out, code=1)
    assert "no route holds" in line and "dynamic INT8" in line and not out.exists(), line
