"""Quantization-aware distillation (``quantize --qat-steps``): a depthwise/ReLU6 stack whose per-tensor INT8
provably collapses is recovered by training it fake-quantized at ONNX Runtime's placement; the run resumes after an
interrupt; a text classifier goes through it in dynamic mode; and what it cannot do is refused in one line.

The models and inputs are test material (random weights, noise images, a handful of sentences)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

pytest.importorskip("onnxruntime")
pytest.importorskip("PIL")


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict[str, Path]:
    from tests.builders.images import depthwise_stack

    return depthwise_stack(tmp_path_factory.mktemp("qad"), 96)


def _cli_error(capsys, args: list[str], *words: str) -> None:
    """The CLI's entry point refuses ``args`` with one ``error:`` line naming ``words``, exit code 2."""
    from compress.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["-q", *args])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (e.value.code, lines)
    for w in words:
        assert w in lines[0], (w, lines[0])


def _qad(stack, **kw):
    """Per-tensor INT8 with 8-bit weights whatever this host's CPU: where it is x86 without VNNI, the default would be
    ONNX Runtime's 7-bit weights (``reduce_range``), a coarser grid on which this stack's QAD reaches a cosine of 0.91."""
    from compress.stages.quantize.config import QuantizeConfig

    return QuantizeConfig.from_flat(calibration=str(stack["images"]), per_channel=False, reduce_range=False, **kw)


def test_qad_recovers_per_tensor_int8_that_post_training_collapses(stack, tmp_path):
    from compress.stages.quantize import quantize
    from compress.stages.quantize.qad import work_dir

    # post-training INT8 without the default's fall-back to float (no float share allowed): what QAD starts from
    ptq = quantize(stack["onnx"], tmp_path / "ptq", _qad(stack, max_fp32_fraction=0.0)).manifest.steps[-1].metrics[
        "parity_vs_input"]
    assert ptq["collapsed"] and ptq["argmax_agreement"] < 0.5  # the weights of 7 of 8 depthwise channels round to 0

    art = quantize(stack["onnx"], tmp_path / "qad", _qad(stack, qat_steps=60, qat_lr=1e-3))
    metrics = art.manifest.steps[-1].metrics
    parity, qad = metrics["parity_vs_input"], metrics["qad"]
    # measured against the original FP32 artifact, not the retrained one
    assert parity["reference"] == "onnx fp32"
    assert "collapsed" not in parity and parity["argmax_agreement"] >= 0.9 and parity["cosine_mean"] > ptq["cosine_mean"]
    # the simulation saw what ONNX Runtime then did: the untrained model collapsed in it too, the trained one did not
    assert qad["before"]["agreement"] < 0.5 <= qad["best"]["agreement"] and qad["best_step"] > 0
    assert qad["layers_fake_quantized"] == 3 and qad["activations"] == "static"  # the 3 convolutions; the tiny head is float
    assert [h["step"] for h in qad["history"]][0] == 0 and "kept" in qad
    assert art.manifest.steps[-1].config["qad"]["steps"] == 60
    assert not work_dir(tmp_path / "qad").exists()  # the run's state is gone once the artifact is written


def test_an_interrupted_qad_run_resumes_where_it_stopped(stack, tmp_path, monkeypatch, caplog):
    import compress.interrupt as interrupt
    from compress.errors import EdgeCompressError
    from compress.stages.quantize import quantize
    from compress.stages.quantize.qad import STATE, work_dir

    class StopAt(interrupt.StopFlag):  # as if Ctrl-C arrived during step 10
        checks = 0

        @property
        def requested(self):
            StopAt.checks += 1
            return StopAt.checks >= 10

        @requested.setter
        def requested(self, value):
            pass

    monkeypatch.setattr(interrupt, "StopFlag", StopAt)
    out = tmp_path / "q"
    with pytest.raises(EdgeCompressError, match="stopped at step 10 of 30") as e:
        quantize(stack["onnx"], out, _qad(stack, qat_steps=30, qat_lr=1e-3))
    assert e.value.exit_code == 130 and not out.exists() and (work_dir(out) / STATE).is_file()

    monkeypatch.undo()
    caplog.set_level("INFO", logger="compress.stages.quantize")
    art = quantize(stack["onnx"], out, _qad(stack, qat_steps=30, qat_lr=1e-3))
    assert "resuming at step 10 of 30" in caplog.text
    assert [h["step"] for h in art.manifest.steps[-1].metrics["qad"]["history"]][-1] == 30


def test_qad_trains_a_text_classifier_in_dynamic_mode(onnx_artifact, tmp_path, make_tsv):
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    data = make_tsv(tmp_path)
    art = quantize(onnx_artifact.path, tmp_path / "q", QuantizeConfig.from_flat(qat_steps=4, qat_data=str(data), qat_batch_size=4))
    qad = art.manifest.steps[-1].metrics["qad"]
    assert qad["activations"] == "dynamic" and qad["layers_fake_quantized"] > 0 and len(qad["history"]) >= 2
    assert art.precision == "int8" and art.manifest.steps[-1].metrics["parity_vs_input"]["n"] > 0


@pytest.mark.parametrize("extra, words", [
    (["--qat-steps", "5"], ["trains on data", "--qat-data"]),  # dynamic INT8 reads no calibration data
    (["--qat-lr", "1e-4"], ["--qat-lr", "--qat-steps"]),
    (["--qat-steps", "5", "--precision", "int4", "--qat-data", "DATA"], ["INT4 is weight-only"]),
])
def test_qad_requests_it_cannot_serve_are_one_line_errors(onnx_artifact, tmp_path, make_tsv, capsys, extra, words):
    data = make_tsv(tmp_path)
    args = [a.replace("DATA", str(data)) for a in extra]
    _cli_error(capsys, ["quantize", str(onnx_artifact.path), *args, "--out", str(tmp_path / "q")], *words)
    assert not (tmp_path / "q").exists()


def test_qad_refuses_an_adopted_model_file_with_no_trainable_source(tmp_path, capsys):
    import torch

    from compress.stages.export import export

    net = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3)).eval()
    torch.onnx.export(net, (torch.randn(2, 4),), str(tmp_path / "model.onnx"), input_names=["x"], dynamo=False,
                      dynamic_axes={"x": {0: "batch"}})
    adopted = export(tmp_path / "model.onnx", tmp_path / "adopted")
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32))
    _cli_error(capsys, ["quantize", str(adopted.path), "--qat-steps", "5", "--qat-data", str(tmp_path / "x.npz"),
                   "--out", str(tmp_path / "q")], "no trainable source", "--qat-steps")


def test_the_cli_reports_what_qad_changed(stack, tmp_path, capsys):
    from compress.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["quantize", str(stack["onnx"]), "--calibration", str(stack["images"]), "--per-tensor", "--qat-steps", "10",
              "--qat-lr", "1e-3", "--out", str(tmp_path / "q")])
    out = " ".join(capsys.readouterr().out.split())
    assert e.value.code in (0, None) and "quantization-aware distillation: held-out agreement" in out, out
    assert "kept (the weights of step" in out or "kept (the original weights" in out


def _mlp_file_and_program(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """The same MLP as an ONNX file exported outside edgecompress and as a ``torch.export`` program (input ``x``)."""
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16)).eval()

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)

    root.mkdir(parents=True, exist_ok=True)
    if seed == 0:
        torch.onnx.export(net, (torch.randn(2, 16),), str(root / "model.onnx"), input_names=["x"], dynamo=False,
                          dynamic_axes={"x": {0: "batch"}})
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(Net().eval(), (torch.randn(2, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(root / f"program{seed}.pt2"))
    (root / f"program{seed}.yaml").write_text("architecture: mlp\n")  # what says it is not an image classifier
    return root / "model.onnx", root / f"program{seed}.pt2"


def test_an_adopted_file_trains_through_the_program_it_came_from(tmp_path):
    from compress.errors import ConfigError
    from compress.stages.export import export
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    file, program = _mlp_file_and_program(tmp_path)
    adopted = export(file, tmp_path / "adopted")
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32))
    cfg = dict(mode="static", calibration=str(tmp_path / "x.npz"), qat_steps=6)
    art = quantize(adopted.path, tmp_path / "q", QuantizeConfig.from_flat(**cfg, qat_source=str(program)))
    step = art.manifest.steps[-1]
    assert step.metrics["qad"]["source"] == str(program) and step.metrics["qad"]["layers_fake_quantized"] == 2
    assert step.metrics["parity_vs_input"]["reference"] == "onnx fp32"  # against the file itself
    _, other = _mlp_file_and_program(tmp_path, seed=1)  # another model's program: refused, nothing written
    with pytest.raises(ConfigError, match="does not compute what"):
        quantize(adopted.path, tmp_path / "q2", QuantizeConfig.from_flat(**cfg, qat_source=str(other)))
    assert not (tmp_path / "q2").exists()



@pytest.mark.parametrize(("groups", "levels"), [(64, 255), (1, 129)])
def test_fake_quant_keeps_depthwise_weights_at_8_bits_under_reduce_range(groups, levels):
    """QAD trains on the grid the artifact gets: with 7-bit weights a depthwise convolution still takes ±127 (ONNX
    Runtime's x86 depthwise kernels cannot saturate: ``ort_quantizer.depthwise_convs``), any other convolution ±64.
    The same 64 x 1 x 3 x 3 weights, as a depthwise convolution of 64 channels or a plain one of 1: an impulse input
    gives back the fake-quantized weights, whose distinct values count the grid's levels."""
    import torch

    from compress.stages.quantize.fake_quant import FakeQuant

    w = torch.linspace(-1.0, 1.0, 64 * 9).reshape(64, 1, 3, 3)
    x = torch.zeros(1, groups, 3, 3)
    x[:, :, 1, 1] = 1.0
    fq = FakeQuant(per_channel=False, reduce_range=True, activations="off")
    with fq.on():
        y = torch.nn.functional.conv2d(x, w, None, 1, 1, 1, groups)
    got = y[0, :, :, :] if groups == 64 else y[0]  # depthwise: channel c is w[c]; plain: each output channel w[c]
    assert fq.quantized == 1 and len(torch.unique(got)) == levels
