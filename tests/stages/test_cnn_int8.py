"""Static INT8 of a depthwise / ReLU6 stack, the shape of MobileNet-class models: the default fuses into ONNX
Runtime's integer kernels and keeps the model's outputs, checked on calibration rows held out from calibration;
per-tensor weights provably collapse on it, and the default falls back by itself (the depthwise layer back to float,
fidelity restored); where it cannot (a float share it may not exceed, or the user's own --exclude-nodes) the
collapse is said (a warning recorded in the manifest) or, with ``strict``, refused with nothing written.

The model and images are test material: random weights shaped so the depthwise channels' weight ranges differ
by 10^4 (as BatchNorm folding leaves them in real MobileNets), and noise images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.builders.images import depthwise_stack

pytest.importorskip("onnxruntime")
pytest.importorskip("PIL")

pytestmark = pytest.mark.slow  # 20 s of a 1,917 s run (tests/conftest.py SLOW_SHARE)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, Path]:
    return depthwise_stack(tmp_path_factory.mktemp("dw-relu6"), 48)


def _optimized_ops(model_path: Path, tmp: Path) -> dict[str, int]:
    """Operator counts of the graph ONNX Runtime actually runs (after its QDQ fusions)."""
    from collections import Counter

    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp / "optimized.onnx")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    return dict(Counter(n.op_type for n in onnx.load(str(tmp / "optimized.onnx")).graph.node))


def test_default_static_int8_fuses_every_conv_and_relu6_into_integer_kernels(stack, tmp_path):
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    art = quantize(stack["onnx"], tmp_path / "q", QuantizeConfig.from_flat(calibration=str(stack["images"])))
    step = art.manifest.steps[-1]
    assert step.config["calibration"]["method"] == "mean-minmax"  # the image default, recorded
    ops = _optimized_ops(art.model_path, tmp_path)
    # every convolution runs as QLinearConv: no float Conv, no ReLU6 (Clip) left between a dequantize and a quantize
    assert ops.get("QLinearConv") == 3, ops
    assert "Conv" not in ops and "Clip" not in ops, ops
    # the logits stay float: no quantize/dequantize pair on the graph output
    import onnx

    g = onnx.load(str(art.model_path)).graph
    producer = {o: n for n in g.node for o in n.output}
    assert producer[g.output[0].name].op_type != "DequantizeLinear"
    parity = step.metrics["parity_vs_input"]
    assert "collapsed" not in parity and parity["cosine_mean"] > 0.95, parity
    # judged on rows held out from calibration (48 images: every 4th held out), and healthy: no fall-back
    fb = step.metrics["fallback"]
    assert fb["held_out"] == {"calibration_rows": 36, "held_out_rows": 12, "disjoint": True, "rows_judged": 12,
                              "split": "every 4th of 48 rows held out (12), the other 36 calibrate"}
    assert fb["needed"] is False and "float_nodes" not in fb and parity["n"] == 12
    assert not [k for k in step.metrics["nodes"]["kept_float"] if "fall-back" in k["reason"]]


def test_per_tensor_collapse_falls_back_to_float_and_fidelity_returns(stack, tmp_path):
    """Per-tensor weights ruin the depthwise layer (its channels' weights differ by 10^4): the held-out check fails,
    the runs of layers are quantized one at a time, the worst (the depthwise conv) goes back to float, and the
    written model keeps its outputs; the manifest says what was kept float, why, and the figures before and after."""
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    art = quantize(stack["onnx"], tmp_path / "q", QuantizeConfig.from_flat(calibration=str(stack["images"]), per_channel=False))
    m = art.manifest.steps[-1].metrics
    fb, parity = m["fallback"], m["parity_vs_input"]
    assert fb["needed"] and fb["held"] and fb["before"]["cosine_mean"] < 0.95 <= fb["after"]["cosine_mean"]
    assert "collapsed" not in parity and parity["cosine_mean"] == fb["after"]["cosine_mean"]
    assert len(fb["runs"]) == 3 and max(fb["runs"], key=lambda r: r["shortfall_alone"])["first"] in fb["float_nodes"]
    floated = {k["node"]: k["reason"] for k in m["nodes"]["kept_float"]}
    assert all("fall-back" in floated[n] for n in fb["float_nodes"])
    assert 0 < fb["float_weight_share"] <= fb["max_float_share"] == 0.5
    assert m["nodes"]["quantized"]["Conv"]  # the others stay INT8


def test_a_run_too_big_to_float_is_halved_until_a_part_that_mends_it_fits(stack, tmp_path, monkeypatch):
    """One run of all three convolutions (GROUPS 1) is over the float cap (half the weights): before, the fall-back
    stopped there and the collapse stood. The run left is halved and ranked again: the stem alone costs nothing, the
    depthwise + pointwise half costs most and fits, and the check holds."""
    from compress.stages.quantize import fallback, quantize
    from compress.stages.quantize.config import QuantizeConfig

    monkeypatch.setattr(fallback, "GROUPS", 1)
    art = quantize(stack["onnx"], tmp_path / "q", QuantizeConfig.from_flat(calibration=str(stack["images"]),
                                                                         per_channel=False))
    m = art.manifest.steps[-1].metrics
    fb = m["fallback"]
    assert fb["needed"] and fb["held"] and "collapsed" not in m["parity_vs_input"], fb
    assert [(r.get("refined", 0), r["layers"]) for r in fb["runs"]] == [(0, 3), (1, 1), (1, 2)]
    stem, rest = fb["runs"][1:]
    assert rest["shortfall_alone"] > stem["shortfall_alone"] and stem["first"] not in fb["float_nodes"]
    assert len(fb["float_nodes"]) == 2 and fb["float_weight_share"] <= 0.5
    assert [s.get("refined") for s in fb["steps"]] == [1]


def test_a_collapse_the_fall_back_cannot_mend_is_said_in_the_manifest(stack, tmp_path):
    """Test material for an unfixable case: the float share allowed (max_fp32_fraction) is below the depthwise
    layer's, so the fall-back cannot float it; the artifact is written with the collapse recorded and the remedies."""
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    art = quantize(stack["onnx"], tmp_path / "q", QuantizeConfig.from_flat(
        calibration=str(stack["images"]), per_channel=False, max_fp32_fraction=0.01))
    m = art.manifest.steps[-1].metrics
    assert m["fallback"]["needed"] and not m["fallback"]["held"] and not m["fallback"]["float_nodes"]
    parity = m["parity_vs_input"]
    assert parity["cosine_mean"] < 0.95
    assert parity["collapsed"]["below"] and "fall-back" in parity["collapsed"]["remedies"]
    assert "--exclude-nodes first:N,last:M" in parity["collapsed"]["remedies"]


def test_strict_refuses_a_collapse_the_fall_back_cannot_mend_and_writes_nothing(stack, tmp_path):
    from compress.errors import QuantizationCollapsed
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    with pytest.raises(QuantizationCollapsed, match="collapsed against its input") as e:
        quantize(stack["onnx"], tmp_path / "q", QuantizeConfig.from_flat(
            calibration=str(stack["images"]), per_channel=False, max_fp32_fraction=0.01, strict=True))
    assert e.value.exit_code == 1
    assert not (tmp_path / "q").exists() and list(tmp_path.iterdir()) == []


def test_cli_strict_is_one_line_exit_1(capfd, stack, tmp_path):
    """The user's own --exclude-nodes keeps today's behaviour: no fall-back, the collapse refused in one line."""
    import onnx

    from tests.builders.cli import assert_one_line_error, in_process

    stem = next(n.name for n in onnx.load(str(stack["onnx"] / "model.onnx")).graph.node if n.op_type == "Conv")
    proc = in_process(capfd, "quantize", stack["onnx"], "--calibration", stack["images"], "--per-tensor", "--strict",
                      "--exclude-nodes", stem, "--out", tmp_path / "q")
    assert_one_line_error(proc, "collapsed against its input", "try --max-drop", code=1)
    assert not (tmp_path / "q").exists()


def test_a_collapse_written_without_strict_is_not_shippable(capfd, stack, tmp_path):
    """Without --strict the collapsed model is written (for a look), but nothing ships it as it stands: quantize's
    last line says NOT SHIPPABLE; validate without data fails it (``no_collapse``, exit 1); package refuses it in one
    line (exit 2, nothing written) unless --allow-collapsed."""
    import json

    import onnx

    from tests.builders.cli import assert_one_line_error, in_process

    stem = next(n.name for n in onnx.load(str(stack["onnx"] / "model.onnx")).graph.node if n.op_type == "Conv")
    q = tmp_path / "q"
    proc = in_process(capfd, "quantize", stack["onnx"], "--calibration", stack["images"], "--per-tensor",
                      "--exclude-nodes", stem, "--out", q)
    assert proc.returncode == 0, proc.stderr
    assert "NOT SHIPPABLE" in proc.stdout and "mean output cosine" in " ".join(proc.stdout.split())
    proc = in_process(capfd, "validate", q, "--profile", "cpu-x86-avx2", "--no-cold-start", "--no-baseline",
                      "--report-dir", tmp_path / "r")
    assert proc.returncode == 1, proc.stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    failed = [b for b in report["budgets"] if b["name"] == "no_collapse"]
    assert report["verdict"] == "fail" and failed and "mean output cosine" in failed[0]["note"], report["budgets"]
    out = tmp_path / "bundle.zip"
    proc = in_process(capfd, "package", q, "--profile", "aws-lambda-x86_64", "--out", out, "--no-download",
                      "--no-cold-start")
    assert_one_line_error(proc, "collapsed against its input", "--allow-collapsed")
    assert not out.exists()
    proc = in_process(capfd, "package", q, "--profile", "aws-lambda-x86_64", "--out", out, "--no-download",
                      "--no-cold-start", "--allow-collapsed")
    assert proc.returncode in (0, 4), proc.stderr
    assert out.is_file()


def test_static_int8_on_too_few_rows_to_hold_any_out_says_so(capfd, stack, tmp_path):
    """Issue 77: one calibration row (nothing to hold out) was written without a word; the check then reads the
    calibration rows themselves, and quantize says so (a warning printed and recorded) and names the fix."""
    import json

    from tests.builders.cli import in_process

    few = tmp_path / "one.npz"
    np.savez(few, images=np.load(stack["images"])["images"][:1])
    proc = in_process(capfd, "quantize", stack["onnx"], "--calibration", few, "--out", tmp_path / "q")
    said = " ".join(proc.stdout.split())
    assert proc.returncode == 0, proc.stderr
    assert "warning: static INT8 was checked on its own calibration rows, not held-out ones" in said, said
    assert "give --calibration at least 8 rows" in said
    step = json.loads((tmp_path / "q" / "manifest.json").read_text())["steps"][-1]
    assert "not held-out ones" in step["metrics"]["warning"]
    proc = in_process(capfd, "quantize", stack["onnx"], "--calibration", stack["images"], "--out", tmp_path / "q48")
    assert proc.returncode == 0 and "not held-out ones" not in proc.stdout  # 48 rows: held out, nothing to say


def test_cli_default_falls_back_where_per_tensor_collapses(capfd, stack, tmp_path):
    from tests.builders.cli import in_process

    proc = in_process(capfd, "quantize", stack["onnx"], "--calibration", stack["images"], "--per-tensor", "--strict",
                      "--allow-slower", "--out", tmp_path / "q")  # a tiny model: INT8 is slower, and kept
    assert proc.returncode == 0, proc.stderr
    assert "fails its check on 12 held-out rows" in " ".join(proc.stderr.split())


def _scripted_timings(monkeypatch, first: dict[str, float], final: float, real: list | None = None):
    """Replace speed-aware's timing by set medians (ms), so which group INT8 makes slower does not depend on the
    CPU and its load (on the CI machine every group once timed faster in float, and INT8 was refused). With
    ``real``, the real timing runs first and its medians are appended there."""
    from compress.stages.quantize import speed

    measured = speed._time
    calls = []

    def timed(models, *args):
        if real is not None:
            real.append(measured(models, *args))
        calls.append(sorted(models))
        return dict(first) if len(calls) == 1 else {"int8": 1.0, "final": final}

    monkeypatch.setattr(speed, "_time", timed)
    return calls


def _speed_aware(stack, tmp_path):
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    return quantize(stack["onnx"], tmp_path / "q", QuantizeConfig.from_flat(calibration=str(stack["images"]),
                                                                          speed_aware=True, speed_threads=1,
                                                                          speed_seconds=0.2))


def test_speed_aware_times_every_layer_group_and_reports_what_it_kept(stack, tmp_path, monkeypatch):
    """Each group is timed in float against the INT8 model (real timing, checked), and the groups at least MIN_GAIN
    faster in float go back to float with the reason, once the mix is confirmed faster (medians set: dw 10% faster
    in float, stem slower, pw within the margin)."""
    real: list[dict[str, float]] = []
    calls = _scripted_timings(monkeypatch, {"int8": 1.0, "g0": 1.2, "g1": 0.9, "g2": 0.99}, final=0.93, real=real)
    art = _speed_aware(stack, tmp_path)
    # the INT8 model and one candidate per group, then the INT8 model against the chosen mix, all really timed
    assert calls == [["g0", "g1", "g2", "int8"], ["final", "int8"]]
    assert all(ms > 0 for r in real for ms in r.values())
    m = art.manifest.steps[-1].metrics
    rec = m["speed_aware"]
    # one group per exporting module: stem, dw, pw (the head is a small GEMM: 16 -> 4, float before any timing)
    assert [(g["group"], g["kept"], g["gain"]) for g in rec["groups"]] == [
        ("stem", "int8", -0.2), ("dw", "float", 0.1), ("pw", "int8", 0.01)]
    assert rec["final"] == {"p50_ms_int8": 1.0, "p50_ms_mixed": 0.93, "gain": 0.07}
    floated = {k["node"]: k["reason"] for k in m["nodes"]["kept_float"]}
    assert rec["float_nodes"] and set(rec["float_nodes"]) <= set(floated)
    assert all("speed-aware" in floated[n] for n in rec["float_nodes"])
    assert m["nodes"]["quantized"]["Conv"]  # stem and pw stay INT8


def test_speed_aware_keeps_int8_when_the_mix_is_not_faster_timed_again(stack, tmp_path, monkeypatch):
    """Noise is not a reason to give up INT8's size: a mix that is not faster by the margin on its second timing
    moves nothing."""
    _scripted_timings(monkeypatch, {"int8": 1.0, "g0": 1.1, "g1": 0.9, "g2": 1.0}, final=0.99)
    rec = _speed_aware(stack, tmp_path).manifest.steps[-1].metrics["speed_aware"]
    assert rec["float_nodes"] == [] and all(g["kept"] == "int8" for g in rec["groups"])
    assert "stays INT8" in rec["final"]["note"]


def test_speed_aware_that_floats_every_group_writes_nothing_and_says_deploy_fp32(stack, tmp_path, monkeypatch):
    from compress.errors import ConfigError

    _scripted_timings(monkeypatch, {"int8": 1.0, "g0": 0.8, "g1": 0.8, "g2": 0.8}, final=0.7)
    with pytest.raises(ConfigError, match="timed every layer group faster in float") as e:
        _speed_aware(stack, tmp_path)
    assert "deploy it" in e.value.hint and not (tmp_path / "q").exists()


def test_small_gemms_stay_float_with_the_reason(stack, tmp_path):
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    art = quantize(stack["onnx"], tmp_path / "q", QuantizeConfig.from_flat(calibration=str(stack["images"])))
    m = art.manifest.steps[-1].metrics
    (small,) = m["small_gemms_float"]
    assert small["op_type"] == "Gemm" and (small["K"], small["N"]) == (16, 4)
    (kept,) = [k for k in m["nodes"]["kept_float"] if k["node"] == small["node"]]
    assert kept["reason"].startswith("small GEMM")
    assert m["nodes"]["quantized"]["Conv"] and "Gemm" not in m["nodes"]["quantized"]


def test_cli_names_an_undecodable_calibration_image(capfd, stack, tmp_path):
    """quantize --calibration with a PNG that passes verify() but does not decode: one line naming the file, and no
    suggestion of --mode dynamic (refused for conv nets)."""
    from PIL import Image

    from tests.builders.cli import assert_one_line_error, in_process
    from tests.conftest import png_bytes

    (tmp_path / "cal").mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "cal" / "ok.png")
    (tmp_path / "cal" / "broken.png").write_bytes(png_bytes(16, 16, b"\x78\x9c" + bytes(range(200))))
    (tmp_path / "cal.csv").write_text("path\ncal/ok.png\ncal/broken.png\n")
    proc = in_process(capfd, "quantize", stack["onnx"], "--calibration", tmp_path / "cal.csv", "--out", tmp_path / "q")
    line = assert_one_line_error(proc, "broken.png", "cannot be decoded", code=2)
    assert "--mode dynamic" not in line and not (tmp_path / "q").exists()


def test_an_activation_on_a_graph_output_keeps_its_clamp(tmp_path):
    """A network ending in ReLU6 (a feature map): the Clip is not folded into a quantize that the float graph outputs
    then remove, so INT8 outputs stay clamped to [0, 6] like the FP32 model's."""
    import numpy as np
    import torch

    from compress.runtimes.base import load_runtime
    from compress.stages.export import export
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), torch.nn.ReLU6(), torch.nn.Conv2d(32, 32, 3), torch.nn.ReLU6())
    with torch.no_grad():
        net[2].bias -= 0.5  # many negative pre-activations: without the clamp the outputs differ
    torch.onnx.export(net.eval(), (torch.randn(1, 3, 16, 16),), str(tmp_path / "f.onnx"), opset_version=13,
                      dynamo=False, input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((32, 3, 16, 16)).astype(np.float32))
    fp32 = export(tmp_path / "f.onnx", tmp_path / "fp32")
    q = quantize(fp32, tmp_path / "int8", QuantizeConfig.from_flat(calibration=str(tmp_path / "c.npz")))
    feeds = {"x": rng.standard_normal((4, 3, 16, 16)).astype(np.float32)}
    got, ref = load_runtime(q).predict(feeds), load_runtime(fp32).predict(feeds)
    assert got.min() >= 0.0 and got.max() <= 6.0 + 1e-4
    cos = (got * ref).sum() / np.linalg.norm(got) / np.linalg.norm(ref)
    assert cos > 0.99


def test_accuracy_aware_candidates_keep_a_dense_outputs_relu6_clamp(tmp_path):
    """A map ending in ReLU6 (a feature extractor's output): the clamp stays float in every candidate the
    accuracy-aware search measures and in what it writes, as in plain static INT8; folded into a quantize that the
    float graph output then drops, the map would come out unclamped."""
    import torch
    import yaml

    from compress.runtimes.ort_backend import OrtBackend
    from compress.stages.export import export
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    class Map(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.b = torch.nn.Conv2d(16, 16, 1)

        def forward(self, image):
            return torch.nn.functional.relu6(self.b(torch.nn.functional.relu6(self.a(image))))

    torch.manual_seed(0)
    net = Map().eval()
    with torch.no_grad():  # outputs well past 6 before the clamp, as a real feature map's
        net.b.weight *= 8.0
    program = torch.export.export(net, (torch.randn(2, 3, 16, 16),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=256)},))
    torch.export.save(program, str(tmp_path / "map.pt2"))
    (tmp_path / "map.yaml").write_text(yaml.safe_dump({"architecture": "dense map"}))
    x = np.random.default_rng(0).normal(size=(48, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "x.npz", image=x)
    art = export(tmp_path / "map.pt2", tmp_path / "onnx")
    q = quantize(art, tmp_path / "q", QuantizeConfig.from_flat(mode="static", calibration=str(tmp_path / "x.npz"),
                                                     data=str(tmp_path / "x.npz"), min_retention=0.995))
    backend = OrtBackend(q)
    try:
        out = backend.predict(backend.encode([{"image": row} for row in x[:8]]))
    finally:
        backend.close()
    assert out.max() <= 6.0 + 1e-3 and out.min() >= -1e-3, (out.min(), out.max())
    aa = q.manifest.steps[-1].metrics["accuracy_aware"]
    assert min(t["metric"] for t in aa["candidates"]) > 0.9, aa["candidates"]  # no candidate lost its clamp



def _weight_codes(model_path: Path) -> dict[str, tuple[str, int]]:
    """Each quantized Conv's (integer type, largest |integer weight - zero point|), by node name, in graph order."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(model_path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    out = {}
    for n in g.node:
        dq = producer.get(n.input[1]) if n.op_type == "Conv" else None
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
            q, zero = inits[dq.input[0]].astype(np.int32), inits[dq.input[2]].astype(np.int32)
            out[n.name] = (str(inits[dq.input[0]].dtype), int(np.abs(q - zero.reshape(-1, *[1] * (q.ndim - 1))).max()))
    return out


@pytest.mark.parametrize("target", [{}, {"target_x86": True, "target_vnni": False}])
def test_seven_bit_weights_only_where_the_kernel_can_saturate(stack, tmp_path, target):
    """Without VNNI (or without a profile) the weights are 7-bit s8 where ONNX Runtime's u8 x s8 GEMM kernels could
    saturate (the stem, clamped by its ReLU6); the depthwise convolution, whose x86 kernels widen to 16 bits first,
    keeps 8-bit s8, and the convolution whose output goes on without an activation (pw) takes 8-bit u8 weights,
    which the U8U8 kernels widen first; recorded."""
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    art = quantize(stack["onnx"], tmp_path / "q", QuantizeConfig.from_flat(calibration=str(stack["images"]), **target))
    codes = _weight_codes(art.model_path)
    (stem, s8_7bit), (dw, s8_8bit), (pw, u8_8bit) = codes.items()  # graph order: stem (ReLU6), dw (ReLU6), pw
    assert s8_7bit == ("int8", 64) and s8_8bit == ("int8", 127), codes  # 7-bit: -64..64
    assert u8_8bit[0] == "uint8" and u8_8bit[1] >= 127, codes  # zero point 128, 0..255
    record = art.manifest.steps[-1].metrics["weight_range"]
    assert record["bits"] == 7 and record["eight_bit"] == {"depthwise_s8": [dw], "linear_output_u8": [pw]}


def test_full_range_everywhere_for_a_vnni_target(stack, tmp_path):
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    art = quantize(stack["onnx"], tmp_path / "q", QuantizeConfig.from_flat(
        calibration=str(stack["images"]), target_x86=True, target_vnni=True))
    assert set(_weight_codes(art.model_path).values()) == {("int8", 127)}
    record = art.manifest.steps[-1].metrics["weight_range"]
    assert record["bits"] == 8 and "eight_bit" not in record


def test_which_convolutions_keep_8_bits():
    """Depthwise: one input and one output channel per group (a grouped convolution with two inputs per group, or a
    channel multiplier, is a GEMM in ONNX Runtime); linear output: no consumer is an activation (SiLU's Sigmoid and
    Mul count as one), or a graph output."""
    from onnx import TensorProto, helper, numpy_helper

    from compress.stages.quantize.ort_quantizer import depthwise_convs, linear_output_convs

    def conv(name, x, w_shape, group=1):
        w = numpy_helper.from_array(np.ones(w_shape, np.float32), f"{name}.w")
        return helper.make_node("Conv", [x, w.name], [f"{name}.y"], name=name, group=group), w

    nodes, inits = zip(*[conv("stem", "x", (8, 3, 3, 3)), conv("dw", "r0", (8, 1, 3, 3), 8),
                         conv("grouped", "r1", (8, 2, 3, 3), 4), conv("mult", "r1", (16, 1, 3, 3), 8),
                         conv("silu", "r1", (8, 8, 1, 1)), conv("head", "r1", (4, 8, 1, 1)),
                         conv("hswish", "r1", (8, 8, 1, 1)), conv("biased", "r1", (8, 8, 1, 1)),
                         conv("residual", "r1", (8, 8, 1, 1))])
    three, bias = numpy_helper.from_array(np.float32(3.0), "three"), numpy_helper.from_array(np.ones(8, np.float32), "b")
    nodes = [*nodes, helper.make_node("Relu", ["stem.y"], ["r0"]), helper.make_node("Clip", ["dw.y"], ["r1"]),
             helper.make_node("Add", ["grouped.y", "r1"], ["s"]), helper.make_node("Relu", ["mult.y"], ["m"]),
             helper.make_node("Sigmoid", ["silu.y"], ["sig"]), helper.make_node("Mul", ["silu.y", "sig"], ["a"]),
             # Paddle2ONNX's hard-swish, x * Clip(x + 3, 0, 6) / 6, and a bias added through a reshaped constant
             helper.make_node("Add", ["hswish.y", "three"], ["h3"]), helper.make_node("Clip", ["h3"], ["hc"]),
             helper.make_node("Mul", ["hswish.y", "hc"], ["hm"]),
             helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([1, 8, 1, 1]))),
             helper.make_node("Reshape", ["b", "shape"], ["b4"]), helper.make_node("Add", ["biased.y", "b4"], ["bb"]),
             helper.make_node("Relu", ["bb"], ["br"]),
             # a residual sum (another tensor, not a constant) before the activation: still linear
             helper.make_node("Add", ["residual.y", "r1"], ["rs"]), helper.make_node("Relu", ["rs"], ["rr"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                               for n in ("head.y", "s", "m", "a", "hm", "br", "rr")], [*inits, three, bias])
    model = helper.make_model(graph)
    assert depthwise_convs(model) == {"dw": "dw.w"}
    assert linear_output_convs(model) == {"grouped": "grouped.w", "head": "head.w", "residual": "residual.w"}


def test_a_run_that_wrote_a_collapsed_model_says_not_shippable_and_the_budget(capfd, stack, tmp_path):
    """Issue 77: a recipe whose quantize step wrote a NOT SHIPPABLE model and validated it ended with only "budget
    failed: validate/q@fast"; the run's job records now carry the collapse and the failed budgets, and its last line
    says both, as quantize and validate alone do."""
    from types import SimpleNamespace

    import onnx

    from compress.cli.run import end_run
    from compress.errors import BudgetFailed
    from compress.recipes.steps import _artifact_summary
    from tests.builders.cli import in_process

    stem = next(n.name for n in onnx.load(str(stack["onnx"] / "model.onnx")).graph.node if n.op_type == "Conv")
    q = tmp_path / "q"
    proc = in_process(capfd, "quantize", stack["onnx"], "--calibration", stack["images"], "--per-tensor",
                      "--exclude-nodes", stem, "--out", q)
    assert proc.returncode == 0, proc.stderr
    job = _artifact_summary(q)  # what the run records of its quantize step
    assert "mean output cosine" in job["collapsed"]
    validated = {"name": "validate/q@fast", "verdict": "fail", "failed": "no_collapse (0 vs <= 0)"}
    result = SimpleNamespace(index={"jobs": [{"name": "q", **job}, validated]}, run_dir=tmp_path, gate=[],
                             verdict="fail")
    with pytest.raises(BudgetFailed) as e:
        end_run(result)
    said = str(e.value)
    assert said.startswith("budget failed: validate/q@fast (no_collapse"), said
    assert "NOT SHIPPABLE, collapsed against its input: q (mean output cosine" in said, said


def _scripted_speed(monkeypatch, input_ms: float, int8_ms: float) -> list:
    """Replace the INT8-vs-input timing by set medians (ms): slower or faster whatever the CPU and its load."""
    from compress.stages.quantize import speed

    calls = []

    def timed(models, *args):
        calls.append(sorted(models))
        return {"input": input_ms, "int8": int8_ms}

    monkeypatch.setattr(speed, "time_models", timed)
    return calls


def test_an_int8_slower_than_its_input_is_said_with_its_boundaries_and_refused_with_strict(stack, tmp_path,
                                                                                           monkeypatch):
    """Issue 77: quantize times what it wrote against its input on this host (the target when no --profile names
    one); slower, the step records a warning naming the float layers and the float operators between INT8 ones;
    --strict refuses it with nothing written, unless refuse_slower is off (--allow-slower)."""
    from compress.errors import SlowerThanInput
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    calls = _scripted_speed(monkeypatch, 1.0, 1.4)
    art = quantize(stack["onnx"], tmp_path / "q", QuantizeConfig.from_flat(calibration=str(stack["images"])))
    sp = art.manifest.steps[-1].metrics["speed_vs_input"]
    assert calls == [["input", "int8"]] and sp["speedup"] == pytest.approx(1 / 1.4, abs=1e-3)
    assert "runs at 0.71x its input's speed on this host" in sp["warning"]
    assert "float operators between INT8 ones (ReduceMean x1)" in sp["warning"], sp
    assert sp["boundaries"]["float_operators_between_int8"] == {"ReduceMean": 1}
    strict = dict(calibration=str(stack["images"]), strict=True)
    with pytest.raises(SlowerThanInput, match=r"0\.71x its input's speed.*nothing written \(--strict\)") as e:
        quantize(stack["onnx"], tmp_path / "s", QuantizeConfig.from_flat(**strict))
    assert "--speed-aware" in e.value.hint and "OpenVINO" in e.value.hint
    assert not (tmp_path / "s").exists()
    kept = quantize(stack["onnx"], tmp_path / "k", QuantizeConfig.from_flat(**strict, refuse_slower=False))
    assert kept.manifest.steps[-1].metrics["speed_vs_input"]["speedup"] < 1


def test_an_int8_faster_than_its_input_says_its_ratio_and_a_target_elsewhere_is_not_timed(stack, tmp_path,
                                                                                          monkeypatch):
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    _scripted_speed(monkeypatch, 1.0, 0.5)
    art = quantize(stack["onnx"], tmp_path / "q", QuantizeConfig.from_flat(calibration=str(stack["images"]),
                                                                            strict=True))
    sp = art.manifest.steps[-1].metrics["speed_vs_input"]
    assert sp["speedup"] == 2.0 and "warning" not in sp
    calls = _scripted_speed(monkeypatch, 1.0, 2.0)
    arm = quantize(stack["onnx"], tmp_path / "arm", QuantizeConfig.from_flat(calibration=str(stack["images"]),
                                                                              strict=True, target_x86=False))
    assert calls == [] and "not this host's kind" in arm.manifest.steps[-1].metrics["speed_vs_input"]["not_timed"]


def test_the_cli_says_int8_s_speed_against_its_input(capfd, stack, tmp_path):
    """Timed for real (the ratio itself depends on the machine): the summary line says it."""
    from tests.builders.cli import in_process

    proc = in_process(capfd, "quantize", stack["onnx"], "--calibration", stack["images"], "--out", tmp_path / "q")
    assert proc.returncode == 0, proc.stderr
    assert "x its speed on this host" in " ".join(proc.stdout.split())
