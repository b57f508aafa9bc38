"""compress.formats: the one table of model formats, and a format added by one entry and its modules.

The ``tiny`` format below is registered in a fixture (an entry of FORMATS and a runtime of RUNTIMES, monkeypatched) with
a tiny exporter, graph reader and runtime defined here; export's dispatch, the estimate's reader, the default
runtime, the remote runner's runtime, validate's baseline and ``export --format`` pick it up with no other edit.
:class:`compress.artifact.Format` and ``ExportFormat`` are made from the table when they are first imported, so a
real format's entry gives them its member; a format patched in after that import is not in them, so the test builds its
settings unvalidated, and checks below that both enums name exactly the table's formats.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from compress.artifact import Format
from compress.estimates.cost import GraphCost, NodeCost
from compress.formats import FORMATS, PLACES, FormatSpec, export_formats, file_format, remote_runtime
from compress.runtimes.base import RUNTIMES
from compress.stages.export.config import ExportConfig, ExportFormat

CALLS: list[tuple] = []


def export_tiny(source, out, config, *, force=False):
    """The tiny format's exporter: records its call, writes the model file."""
    CALLS.append(("export", Path(source), Path(out), str(config.format), force))
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "model.tiny").write_bytes(b"tiny")
    return "exported"


def tiny_cost(path, batch_size, sequence_length):
    """The tiny format's graph reader: one MatMul of batch × sequence × 8 × 8."""
    flops = 2.0 * batch_size * sequence_length * 64
    return GraphCost(str(path), batch_size, sequence_length,
                     [NodeCost("mm", "MatMul", flops=flops, bytes=4.0 * 64)])


class TinyRuntime:
    """The tiny format's runtime adapter (only what load_runtime calls)."""

    def __init__(self, artifact, settings=None):
        self.artifact, self.settings = artifact, settings


@pytest.fixture
def tiny(monkeypatch):
    """A new format, ``tiny``: one entry in FORMATS (and its runtime in RUNTIMES), nothing else edited."""
    CALLS.clear()
    monkeypatch.setitem(RUNTIMES, "tinyrt", f"{__name__}:TinyRuntime")
    monkeypatch.setitem(FORMATS, "tiny", FormatSpec(
        "Tiny", "tinyrt", model_files=("model.tiny",), exporter=f"{__name__}:export_tiny",
        graph_reader=f"{__name__}:tiny_cost", runs_on=("host", "remote"),
    ))
    return "tiny"


def test_the_enums_name_the_tables_formats():
    assert list(FORMATS) == [f.value for f in Format]
    assert export_formats() == [f.value for f in ExportFormat]


def test_every_entry_names_what_exists():
    for name, spec in FORMATS.items():
        assert spec.runtime in RUNTIMES, name
        assert set(spec.runs_on) <= set(PLACES), name
        for ref in filter(None, (spec.exporter, spec.graph_reader, spec.quantizer)):
            module, _, attr = ref.partition(":")
            assert attr and importlib.util.find_spec(module) is not None, (name, ref)


def test_the_tables_facts():
    assert [n for n in FORMATS if FORMATS[n].graph_reader] == ["onnx", "openvino", "executorch", "litert", "coreml"]
    assert {n: remote_runtime(n) for n in FORMATS if remote_runtime(n)} == {"onnx": "onnxruntime",
                                                                              "openvino": "openvino"}
    assert [file_format(f"m{s}", adopted=True) for s in (".onnx", ".XML", ".tflite", ".pte", ".pt2")] == [
        "onnx", "openvino", "litert", None, None]
    assert FORMATS["onnx"].suffix == ".onnx" and FORMATS["pytorch"].suffix is None


def test_the_quantizers_take_what_quantize_declares():
    from compress.stages.quantize.config import QUANTIZE_SPECS

    assert {str(f) for spec in QUANTIZE_SPECS for f in spec.accepts} == {n for n in FORMATS if FORMATS[n].quantizer}


def test_export_dispatches_to_a_new_formats_exporter(tiny, tmp_path):
    from compress.stages.export import export

    src = tmp_path / "teacher"
    src.mkdir()
    config = ExportConfig.model_construct(format=tiny)  # ExportFormat is a closed enum: built unvalidated
    assert export(src, tmp_path / "out", config, force=True) == "exported"
    assert CALLS == [("export", src, tmp_path / "out", "tiny", True)]


def test_the_estimate_reads_a_new_formats_graph(tiny, tmp_path):
    from compress.estimates.roofline import graph_cost

    out = tmp_path / "art"
    export_tiny(tmp_path, out, SimpleNamespace(format=tiny))
    for source in (out / "model.tiny", out):  # a bare file, and a folder with no manifest
        cost = graph_cost(source, 2, 16)
        assert cost.source.endswith("model.tiny") and cost.flops == 2 * 2 * 16 * 64


def test_a_graph_no_format_reads_is_refused_by_the_table(tiny, tmp_path):
    from compress.errors import ArtifactError
    from compress.estimates.roofline import graph_cost

    (tmp_path / "model.plan").write_bytes(b"")
    with pytest.raises(ArtifactError, match=r"ONNX \(\.onnx\), .* and Tiny \(\.tiny\) graphs are read"):
        graph_cost(tmp_path / "model.plan", 1, 8)


def test_the_cli_offers_a_new_format(tiny):
    from compress.cli.export import export_cmd

    fmt = next(p for p in export_cmd.params if p.name == "fmt")
    assert fmt.type.choices == (*[f.value for f in ExportFormat], "tiny")
    help_text = CliRunner().invoke(export_cmd, ["--help"], terminal_width=200).output
    assert "[onnx|openvino|tensorrt|executorch|litert|coreml|gguf|tiny]" in help_text


def test_a_new_format_runs_in_its_runtime_here_and_remotely(tiny):
    from compress.runtimes.base import load_runtime
    from compress.validation.common import baseline_artifact

    artifact = SimpleNamespace(format=tiny)
    rt = load_runtime(artifact)
    assert isinstance(rt, TinyRuntime) and rt.artifact is artifact
    assert remote_runtime(tiny) == "tinyrt"
    assert baseline_artifact(None, "tinyrt", artifact) is None  # no baseline: validate times it alone


@pytest.mark.parametrize(("file", "fmt", "says"), [
    ("m.onnx", "executorch", "m.onnx: ExecuTorch starts from the PyTorch model, not an ONNX file"),
    ("m.onnx", "coreml", "m.onnx: Core ML starts from the PyTorch model, not an ONNX file"),
    ("m.xml", "tensorrt", "m.xml: the OpenVINO IR model is adopted as it is"),
    ("m.tflite", "openvino", "m.tflite: the LiteRT model is adopted as it is"),
])
def test_a_model_file_is_converted_only_as_the_table_allows(tmp_path, monkeypatch, file, fmt, says):
    from compress.errors import ConfigError
    from compress.stages.export import export

    monkeypatch.chdir(tmp_path)
    Path(file).write_bytes(b"")  # refused before it is read
    with pytest.raises(ConfigError, match=f"^{says}"):
        export(file, tmp_path / "out", ExportConfig(format=fmt))
