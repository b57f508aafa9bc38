"""Streaming models (issue 54 item 4): a tiny recurrent ONNX graph shaped like Silero VAD (``input`` [batch, samples],
``state`` [2, batch, 4] fed back as ``stateN``, ``sr`` an int64 scalar; ``output`` [batch, 1] a probability), built with
onnx.helper: random-free test material whose outputs follow a recurrence computed here with numpy."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
from test_remote import profile, sshd, work  # noqa: F401 - the loopback sshd and its profile, as fixtures

from tests.builders.cli import main_error

CHUNK, CONTEXT, RATE = 8, 2, 16000

YAML = f"""task: multi-label-classification
labels: [speech]
postprocess: {{threshold: 0.5, scores_are_probabilities: true}}
stream:
  input: input
  chunk: {CHUNK}
  context: {CONTEXT}
  sample_rate: {RATE}
  state: {{stateN: state}}
  constants: {{sr: {RATE}}}
"""


def write_vad(d: Path, yaml_text: str = YAML, samples: int | str = "samples") -> Path:
    """``vad.onnx``: m = mean(input) * sr / 16000; stateN = (0.5 * state) @ I + m; output = sigmoid(8 * mean(stateN))."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c = {n: numpy_helper.from_array(np.array(v, dtype=np.float32), n) for n, v in
         {"rate": 16000.0, "half": 0.5, "gain": 8.0}.items()}
    axes0 = numpy_helper.from_array(np.array([0], dtype=np.int64), "axes0")
    axes1 = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes1")
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["srf", "rate"], ["k"]),
        helper.make_node("Mul", ["m", "k"], ["mk"]),
        helper.make_node("Unsqueeze", ["mk", "axes0"], ["mk3"]),
        helper.make_node("Mul", ["state", "half"], ["hs"]),
        helper.make_node("MatMul", ["hs", "eye"], ["hw"]),  # a weight for static INT8 to quantize
        helper.make_node("Add", ["hw", "mk3"], ["stateN"]),
        helper.make_node("ReduceMean", ["stateN"], ["s"], axes=[0, 2], keepdims=0),
        helper.make_node("Unsqueeze", ["s", "axes1"], ["s1"]),
        helper.make_node("Mul", ["s1", "gain"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "vad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", samples]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 4]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", 4])],
        initializer=[*c.values(), axes0, axes1, numpy_helper.from_array(np.eye(4, dtype=np.float32), "eye")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    d.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(d / "vad.onnx"))
    (d / "vad.yaml").write_text(yaml_text, encoding="utf-8")
    return d / "vad.onnx"


def expected(values: np.ndarray, carried: bool = True) -> np.ndarray:
    """What the graph gives per call, streamed as Silero VAD is: context before each chunk, the state fed back (or,
    ``carried=False``, every call from a zero state)."""
    calls = -(-len(values) // CHUNK)
    x = np.concatenate([np.zeros(CONTEXT), values, np.zeros(calls * CHUNK - len(values))])
    state, out = 0.0, []
    for i in range(calls):
        state = (0.5 * state if carried else 0.0) + x[i * CHUNK:i * CHUNK + CHUNK + CONTEXT].mean()
        out.append(1 / (1 + np.exp(-8 * state)))
    return np.array(out)


def write_wav(path: Path, values: np.ndarray, rate: int = RATE, channels: int = 1, width: int = 2) -> Path:
    """Test material: ``values`` in [-1, 1] as PCM."""
    ints = np.round(np.clip(values, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(np.repeat(ints, channels).tobytes() if width == 2 else (ints // 256).astype("i1").tobytes())
    return path


def speechy(n: int = 200) -> np.ndarray:
    """A made-up signal: loud positive stretches (decisions 1) between silent or negative ones (decisions 0)."""
    t = np.arange(n)
    return np.where((t // 40) % 2 == 0, 0.5, -0.3).astype(np.float32) + 0.01 * np.sin(t)


@pytest.fixture(scope="module")
def vad(tmp_path_factory):
    from compress.stages.export.adopt import adopt
    from compress.stages.export.config import ExportConfig

    d = tmp_path_factory.mktemp("vad")
    return adopt(write_vad(d / "file"), d / "fp32", ExportConfig(), force=False)


def test_the_state_is_carried_from_call_to_call(vad):
    from compress.runtimes.base import load_runtime

    values = speechy()
    backend = load_runtime(vad, "onnxruntime")
    got = backend.run_stream(values)
    assert set(got) == {"output"} and got["output"].shape == (25, 1)
    np.testing.assert_allclose(got["output"][:, 0], expected(values), rtol=1e-5)
    assert not np.allclose(got["output"][:, 0], expected(values, carried=False), rtol=1e-3)  # the state matters
    assert vad.manifest.stream.state == {"stateN": "state"} and vad.manifest.preprocess.shapes == {"input": [10]}


def test_openvino_carries_the_state_too(vad, tmp_path):
    """The adopted graph converted to an OpenVINO IR streams the same (its scalar sr stays a scalar)."""
    from compress.runtimes.base import load_runtime
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    ir = export(vad.path, tmp_path / "ov", ExportConfig(format="openvino"))
    assert ir.manifest.stream == vad.manifest.stream
    got = load_runtime(ir, "openvino").run_stream(speechy())
    np.testing.assert_allclose(got["output"][:, 0], expected(speechy()), rtol=1e-5)


def test_old_manifests_read_without_a_stream(vad):
    from compress.artifact import Manifest

    data = vad.manifest.model_dump(mode="json")
    del data["stream"]
    assert Manifest.model_validate(data).stream is None


def test_a_state_output_with_no_matching_input_is_refused(tmp_path, capsys):
    f = write_vad(tmp_path, YAML.replace("{stateN: state}", "{stateN: hidden}"))
    line = main_error(capsys, "export", f, "--out", tmp_path / "out")
    assert "state output 'stateN' has no matching input: 'hidden' is not an input of vad.onnx" in line
    assert not (tmp_path / "out").exists()


def test_a_chunk_the_fixed_input_cannot_take_is_refused(tmp_path, capsys):
    f = write_vad(tmp_path, samples=12)
    line = main_error(capsys, "export", f, "--out", tmp_path / "out")
    assert "chunk 8 + context 2 makes 10 values per call, but input 'input' of vad.onnx takes 12" in line


def test_an_input_the_stream_does_not_feed_is_refused(tmp_path, capsys):
    f = write_vad(tmp_path, YAML.replace(f"  constants: {{sr: {RATE}}}\n", ""))
    line = main_error(capsys, "export", f, "--out", tmp_path / "out")
    assert "input 'sr' of vad.onnx is neither the stream's input, a state fed back nor a constant" in line


def test_npz_rows_are_each_calls_new_values(vad, tmp_path):
    from compress.data.streams import sequences_for
    from compress.errors import DataError

    values = speechy()
    np.savez(tmp_path / "ok.npz", input=values.reshape(25, CHUNK))
    (seq,) = sequences_for(vad.manifest, tmp_path / "ok.npz")
    np.testing.assert_allclose(seq.values, values, rtol=1e-6)  # rows joined: the context comes from the row before
    np.savez(tmp_path / "bad.npz", input=np.zeros((25, CHUNK + CONTEXT), np.float32))
    with pytest.raises(DataError, match=r"array 'input' has shape \[25, 10\]; expected \[calls, 8\]"):
        sequences_for(vad.manifest, tmp_path / "bad.npz")


def test_wav_files_are_read_and_bad_ones_refused(tmp_path):
    from compress.data.audio import read_wav
    from compress.errors import DataError

    values = speechy(50)
    got = read_wav(write_wav(tmp_path / "ok.wav", values), RATE)
    np.testing.assert_allclose(got, np.round(values * 32767) / 32768, atol=1e-6)
    with pytest.raises(DataError, match=r"sampled at 8000 Hz; the model takes 16000 Hz"):
        read_wav(write_wav(tmp_path / "8k.wav", values, rate=8000), RATE)
    with pytest.raises(DataError, match="2 channels; the stream takes mono"):
        read_wav(write_wav(tmp_path / "st.wav", values, channels=2), RATE)
    with pytest.raises(DataError, match="8-bit samples"):
        read_wav(write_wav(tmp_path / "u8.wav", values, width=1), RATE)
    float_wav = bytearray((tmp_path / "ok.wav").read_bytes())
    float_wav[20:22] = (3).to_bytes(2, "little")  # WAVE_FORMAT_IEEE_FLOAT
    (tmp_path / "float.wav").write_bytes(bytes(float_wav))
    with pytest.raises(DataError, match="not a PCM .wav"):
        read_wav(tmp_path / "float.wav", RATE)


def test_validate_streams_a_wav_and_an_npz(vad, tmp_path, capsys, fast_host):
    from compress.cli import main

    values = speechy()
    write_wav(tmp_path / "a.wav", values)
    with pytest.raises(SystemExit) as e:
        main(["-q", "validate", str(vad.path), "--data", str(tmp_path / "a.wav"), "--profile", fast_host,
              "--no-cold-start", "--report-dir", str(tmp_path / "rep")])
    assert e.value.code in (0, 1, 4), capsys.readouterr().err  # 1: a latency budget on a loaded machine; 4: no
    # cold start measured, so peak memory is unverified
    m = json.loads((tmp_path / "rep" / "report.json").read_text())["metrics"]
    assert m["stream"]["calls"] == 25 and m["stream"]["state_carried"] and m["agreement"] == 1.0
    np.testing.assert_allclose(m["stream"]["first_outputs"], expected(np.round(values * 32767) / 32768)[:4], rtol=1e-4)
    assert m["latency_ms"]["n"] > 0 and m["baseline_latency_ms"]["n"] > 0
    # an .npz of ordered rows (each call's new values) and per-call labels: the task metric is measured too
    rows = values.reshape(25, CHUNK)
    labels = (expected(values) > 0.5).astype(np.int64)[:, None]
    np.savez(tmp_path / "a.npz", input=rows, labels=labels)
    with pytest.raises(SystemExit):
        main(["-q", "validate", str(vad.path), "--data", str(tmp_path / "a.npz"), "--profile", fast_host,
              "--no-cold-start", "--no-baseline", "--report-dir", str(tmp_path / "rep2")])
    m = json.loads((tmp_path / "rep2" / "report.json").read_text())["metrics"]
    assert m["metric_name"] == "micro_f1" and m["metric"] == 1.0 and m["stream"]["calls"] == 25
    # a wav at another rate than the stream declares: one line naming both
    write_wav(tmp_path / "b.wav", values, rate=8000)
    capsys.readouterr()
    line = main_error(capsys, "validate", vad.path, "--data", tmp_path / "b.wav", "--profile", fast_host)
    assert "sampled at 8000 Hz; the model takes 16000 Hz" in line


def test_a_wav_cut_mid_sample_is_one_line_in_validate_and_quantize(vad, tmp_path, capsys, fast_host):
    """Issue 69: a .wav whose last sample is cut in half (a copy stopped short) was numpy's 'buffer size must be a
    multiple of element size', exit 3."""
    cut = write_wav(tmp_path / "cut.wav", speechy())
    cut.write_bytes(cut.read_bytes()[:-1])
    line = main_error(capsys, "validate", vad.path, "--data", cut, "--profile", fast_host, "--report-dir",
                      tmp_path / "rep")
    assert "cut.wav: cut mid-sample" in line and not (tmp_path / "rep").exists()
    line = main_error(capsys, "quantize", vad.path, "--mode", "static", "--calibration", cut, "--out", tmp_path / "q")
    assert "cut.wav: cut mid-sample" in line and not (tmp_path / "q").exists()


def test_static_int8_calibrates_and_checks_parity_on_the_stream(vad, tmp_path, capsys):
    from compress.cli import main

    values = np.concatenate([speechy(), speechy()[::-1]])
    write_wav(tmp_path / "cal.wav", values)
    with pytest.raises(SystemExit) as e:
        main(["-q", "quantize", str(vad.path), "--mode", "static", "--op-types", "MatMul",
              "--calibration", str(tmp_path / "cal.wav"), "--out", str(tmp_path / "int8")])
    assert e.value.code == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "int8" / "manifest.json").read_text())
    assert manifest["stream"]["state"] == {"stateN": "state"}
    parity = manifest["steps"][-1]["metrics"]["parity_vs_input"]
    assert parity["state_carried"] and parity["n"] == 50 and parity["sequences"] == 1
    assert parity["decision_agreement"] >= 0.9 and parity["cosine_mean"] > 0.95


def test_the_serverless_handler_streams_each_sequence(vad, tmp_path):
    import zipfile

    from compress.packaging.bundle import package
    from compress.packaging.config import PackageConfig
    from tests.builders.bundles import run_handler, write_profile

    prof = write_profile(tmp_path / "profiles")
    report = package(vad, tmp_path / "b.zip", PackageConfig(profile=str(prof), download=False, cold_start_runs=1))
    assert report.cold_start is not None  # its first request: one sequence of seeded chunks, streamed
    with zipfile.ZipFile(tmp_path / "b.zip") as zf:
        zf.extractall(tmp_path / "x")
    values = speechy()
    out = run_handler(tmp_path / "x", f"""
        import json, handler
        one = handler.handler({{"sequence": {values.tolist()!r}}}, None)
        two = handler.handler({{"body": json.dumps({{"sequences": [{values.tolist()!r}, [0.5] * 20]}})}}, None)
        bad = handler.handler({{"body": json.dumps({{"sequence": "nope"}})}}, None)
        print(json.dumps({{"one": one, "two": json.loads(two["body"]), "bad": bad["statusCode"]}}))
    """)
    np.testing.assert_allclose(np.array(out["one"]["outputs"][0])[:, 0], expected(values), rtol=1e-5)
    assert out["one"]["calls"] == [25] and out["one"]["decisions"][0] == [[int(p >= 0.5)] for p in expected(values)]
    assert out["two"]["calls"] == [25, 3] and out["two"]["outputs"][0] == out["one"]["outputs"][0]  # state reset
    assert out["bad"] == 400


def test_remote_streams_on_the_device(vad, tmp_path, sshd, profile, home):  # noqa: F811 - fixtures
    """Over SSH (test_remote's loopback sshd): the device streams the sequence with the state carried (its outputs are
    the recurrence's) and times the calls."""
    import sys

    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    values = speechy()
    write_wav(tmp_path / "a.wav", values)
    rem = validate(vad, ValidateConfig.from_flat(
        profile=str(profile), data=str(tmp_path / "a.wav"), cold_start=False, baseline=False, remote=sshd.spec,
        remote_python=sys.executable, ssh_config=str(sshd.ssh_config())))
    assert rem.environment["measured_on"].startswith("remote: ")
    assert rem.metrics["stream"]["calls"] == 25 and rem.metrics["agreement"] == 1.0
    np.testing.assert_allclose(rem.metrics["stream"]["first_outputs"],
                               expected(np.round(values * 32767) / 32768)[:4], rtol=1e-4)
    assert rem.metrics["latency_ms"]["n"] > 0 and sshd.leftovers() == []


def test_accuracy_aware_quantization_of_a_stream_is_refused_saying_why(vad, tmp_path, capsys):
    """Issue 77: quantize --max-drop of a stream with a .wav said "not an .npz of input arrays"; the search does not
    run streams (it scores single calls), and that is what the line says now, before the data is read."""
    wav = write_wav(tmp_path / "eval.wav", speechy())
    line = main_error(capsys, "quantize", vad.path, "--mode", "static", "--calibration", wav, "--max-drop", "0.01",
                      "--data", wav, "--out", tmp_path / "q")
    assert "does not run a stream model" in line and "parity_vs_input" in line, line
    assert not (tmp_path / "q").exists()
