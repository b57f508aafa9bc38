"""A causal LM's stage that will not fit in memory is refused before the work, in one line naming what lowers it
(compress.host.memory, issue 76): the estimate reads the weights' sizes from the files' headers, never the weights."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("torch")

from compress.errors import MemoryShortage
from compress.host import memory
from tests.builders.lm import tiny_causal_lm


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_causal_lm(tmp_path_factory.mktemp("mem") / "ckpt", layers=2)


def _available(monkeypatch, n: int) -> None:
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=n))
    monkeypatch.delenv(memory.ENV, raising=False)


def test_the_parameters_are_read_from_the_safetensors_headers(ckpt):
    from safetensors.numpy import load_file

    values = sum(a.size for a in load_file(str(ckpt / "model.safetensors")).values())
    assert memory.safetensors_parameters(ckpt) == values
    assert memory.safetensors_parameters(ckpt / "nowhere") is None


def test_the_estimate_grows_with_the_weights_and_is_checked_against_what_is_available(monkeypatch):
    assert memory.estimate("quantize", 2 * 10**9) > memory.estimate("quantize", 10**9) > memory.estimate("export", 10**9)
    _available(monkeypatch, 64 * 10**9)
    said = memory.check_memory("quantize", 10**9, "m")
    assert said["estimated_peak_bytes"] == memory.estimate("quantize", 10**9) and said["available_bytes"] == 64 * 10**9
    _available(monkeypatch, 10**9)
    with pytest.raises(MemoryShortage, match=r"quantize of m \(1.0 GB of FP32 weights\) needs about .* GB .*"
                                             r"1.0 GB are available.*--int4-algorithm rtn.*EDGECOMPRESS_MEMORY_CHECK=off"):
        memory.check_memory("quantize", 10**9, "m")
    monkeypatch.setenv(memory.ENV, "off")  # the user's way past an estimate that is wrong for their machine
    assert memory.check_memory("quantize", 10**9, "m") is None


@pytest.mark.parametrize("fmt, said", [("onnx", "export of ckpt"), ("openvino", "export --format openvino of ckpt")])
def test_export_is_refused_in_one_line_before_any_work_when_memory_is_short(ckpt, tmp_path, fmt, said, monkeypatch,
                                                                           capfd):
    from tests.builders.cli import assert_one_line_error, in_process

    out = tmp_path / fmt
    _available(monkeypatch, 10**6)  # the CLI, on a machine with 1 MB available
    assert_one_line_error(in_process(capfd, "export", ckpt, "--format", fmt, "--out", out),
                          said, "needs about", "--format gguf", f"{memory.ENV}=off")
    assert not out.exists()


def test_each_route_is_checked_by_its_own_measured_peak_and_an_unmeasured_one_not_at_all(monkeypatch):
    """The ONNX Runtime route's stages keep their names; another route's are ``stage@format`` (as
    benchmarks/generators/lm_cost_curve.py records them), checked only where PEAK has their measured line."""
    from compress.host import memory

    assert memory.route_stage("export", "onnx") == "export"
    assert memory.route_stage("quantize", "openvino") == "quantize@openvino"
    monkeypatch.delenv(memory.ENV, raising=False)
    assert memory.check_memory("quantize@nowhere", 10**15, "a petabyte") is None  # no measured line: not checked
    monkeypatch.setitem(memory.PEAK, "quantize@nowhere", (0.0, 1.0))
    monkeypatch.setitem(memory.LOWER, "quantize@nowhere", "a smaller model")
    with pytest.raises(MemoryShortage, match="quantize --format nowhere of a petabyte .* a smaller model"):
        memory.check_memory("quantize@nowhere", 10**15, "a petabyte")
