"""``export --format executorch``: tiny random text and image classifiers (test material) become ExecuTorch programs
lowered to XNNPACK, FP32 within the parity tolerance of PyTorch, INT8 through PT2E (dynamic for text, static and
calibrated for images); they run in ExecuTorch's runtime through validate; bad requests are one-line errors."""

from __future__ import annotations

import pytest

pytest.importorskip("executorch")

from compress.stages.export import export  # noqa: E402
from compress.stages.export.config import ExportConfig  # noqa: E402
from tests.cli.test_cli import assert_one_line_error, edgecompress, main_error  # noqa: E402
from tests.conftest import write_tsv  # noqa: E402


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from tests.test_image_pipeline import write_hf_image_teachers, write_image_set

    root = tmp_path_factory.mktemp("et-images")
    write_image_set(root)
    return {**write_hf_image_teachers(root / "t"), "set": root / "set"}


def test_a_text_classifier_becomes_an_xnnpack_program_that_validate_runs(bert_classifier, tmp_path):
    import yaml

    from compress.validation.local import ValidateConfig, validate

    art = export(bert_classifier, tmp_path / "pte", ExportConfig(format="executorch"))
    m = art.manifest
    assert (m.format, m.precision, m.model_file) == ("executorch", "fp32", "model.pte")
    assert m.inputs[0].shape == [1, "sequence_length"] and (art.path / "model.pte").stat().st_size > 0
    step = m.steps[-1].metrics
    assert step["parity"]["max_abs_diff"] <= 1e-4 and step["delegated"]["delegate_calls"] >= 1
    data = write_tsv(tmp_path)
    profile = tmp_path / "phone-here.yaml"  # this machine, running the phone's runtime, timed briefly
    profile.write_text(yaml.safe_dump({"name": "phone-here", "extends": "host", "runtime": {"name": "executorch"},
                                       "measure": {"warmup": 2, "min_runs": 10, "min_duration_s": 0.05}}))
    report = validate(art, ValidateConfig(profile=str(profile), data=str(data), teacher=str(bert_classifier),
                                          cold_start=False))
    assert report.metrics["agreement"] == 1.0 and report.environment["runtime"]["runtime"] == "executorch"


def test_text_int8_is_dynamic_pt2e_and_agrees_with_the_teacher(bert_classifier, tmp_path):
    art = export(bert_classifier, tmp_path / "pte8", ExportConfig(format="executorch", precision="int8"))
    step = art.manifest.steps[-1].metrics
    assert art.manifest.precision == "int8" and step["quantization"]["activations"] == "dynamic"
    assert step["parity"]["argmax_agreement"] >= 0.75


def test_image_int8_is_static_and_needs_calibration(images, tmp_path):
    art = export(images["vit"], tmp_path / "vit8", ExportConfig(format="executorch", precision="int8",
                                                              calibration=str(images["set"])))
    q = art.manifest.steps[-1].metrics["quantization"]
    assert q["activations"] == "static" and q["calibration_rows"] == 24
    proc = edgecompress("export", images["cnn"], "--format", "executorch", "--precision", "int8", "--out",
                        tmp_path / "no")
    assert_one_line_error(proc, "needs calibration data", "--calibration")
    assert not (tmp_path / "no").exists()


def test_cli_refuses_what_executorch_does_not_take(bert_classifier, tmp_path, capsys):
    assert "fp16" in main_error(capsys, "export", bert_classifier, "--format", "executorch", "--precision", "fp16",
                                "--out", tmp_path / "a")
    assert "--int8-mode applies to --precision int8" in main_error(
        capsys, "export", bert_classifier, "--format", "executorch", "--int8-mode", "static", "--out", tmp_path / "b")
    assert "--int8-mode" in main_error(capsys, "export", bert_classifier, "--int8-mode", "dynamic", "--out",
                                       tmp_path / "c")


def test_a_torch_export_program_is_lowered_as_it_is_and_its_int8_refused(images, tmp_path, capsys):
    from tests.test_image_pipeline import write_program_teacher

    program = write_program_teacher(tmp_path / "prog")
    art = export(program, tmp_path / "pte", ExportConfig(format="executorch"))
    assert art.manifest.steps[-1].metrics["parity"]["max_abs_diff"] <= 1e-4
    line = main_error(capsys, "export", program, "--format", "executorch", "--precision", "int8", "--calibration",
                      images["set"], "--out", tmp_path / "pte8")
    assert "torch.export program is not supported" in line and not (tmp_path / "pte8").exists()



def _relu6_depthwise_net():
    """conv-BN-ReLU6, depthwise-BN-ReLU6, projection, classifier, where one channel's pre-activations reach hundreds
    while ReLU6 keeps [0, 6] (as an ImageNet MobileNetV2's outlier channels do; seeded: the figures below are this
    net's)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6(),
                        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6(),
                        nn.Conv2d(16, 8, 1), nn.AvgPool2d(4), nn.Flatten(), nn.Linear(128, 10))
    with torch.no_grad():
        for bn in (net[1], net[4]):
            bn.weight.uniform_(1.0, 4.0)
            bn.weight[0] = 300.0
    return net.eval()


def test_static_int8_quantizes_relu6_after_its_clamp_and_keeps_a_depthwise_net_close_to_fp32():
    """XNNPACKQuantizer as it comes quantizes a convolution's output before its ReLU6, on the unclamped range, which the
    outlier channel sets: logit cosine to FP32 -0.39 on this net (0.958 with mean-minmax ranges alone). Quantized
    after the clamp, which XNNPACK fuses into the convolution: 0.9997, and XNNPACK still takes the whole graph. The
    logits keep the whole calibration set's extremes (averaged ones would saturate the largest)."""
    import numpy as np
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from compress.stages.export.executorch import xnnpack_quantizer

    net = _relu6_depthwise_net()
    xs = torch.randn(32, 1, 3, 16, 16)
    quantizer = xnnpack_quantizer(dynamic=False)
    prepared = prepare_pt2e(torch.export.export(net, (xs[0],)).module(), quantizer)
    with torch.no_grad():
        for x in xs[:16]:
            prepared(x)
        logits = next(n for n in prepared.graph.nodes if n.op == "output").args[0][0]
        assert float(prepared.get_submodule(logits.target).max_val) == pytest.approx(
            max(float(net(x).max()) for x in xs[:16]), rel=1e-5)
        converted = convert_pt2e(prepared)
        ref = torch.cat([net(x) for x in xs[16:]]).numpy()
        got = torch.cat([converted(x) for x in xs[16:]]).numpy()
    cosine = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert quantizer.clamps_fused == 2 and cosine.mean() > 0.999
    edge = to_edge_transform_and_lower(torch.export.export(converted, (xs[0],)), partitioner=[XnnpackPartitioner()])
    calls = [str(n.target) for n in edge.exported_program().graph_module.graph.nodes if n.op == "call_function"]
    assert not [c for c in calls if c.startswith("aten.")]  # nothing left to the portable kernels
