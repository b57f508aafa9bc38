"""Bad model files, data files and options (from issue 53): every quantize backend refuses, in one line, each option it
does not read (the list generated from the settings model, so a new option is covered as soon as it exists); a
truncated, random or NaN/Inf-holding ``.npz`` is one line wherever data files are read; a parity check that measured
no number (NaN outputs) fails before anything is written.
Also: a preprocess or declared inputs that do not fit the graph, a truncated OpenVINO IR, a generic or TorchScript
program, a path that does not exist, class names given twice, and a Ctrl-C at a command's first and last instants."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from compress.errors import ConfigError, DataError, QuantizationCollapsed
from compress.settings import flag
from compress.stages.quantize.config import PROFILE_KEYS, QuantizeConfig, applies, backends, refuse_ignored
from tests.builders.cli import ENV, assert_one_line_error, edgecompress, main_error

TFLITE = Path(__file__).resolve().parent / "assets" / "tiny_cnn.tflite"
#: values tried in order for an option until one validates and differs from its default (a bool, an enum member, a
#: number within the field's bounds, a path string, a list of names)
_CANDIDATES = (True, False, 4, 16, 64, 99.0, 0.05, 1e-4, "static", "int4", "fp32", "uint8", "entropy", "q4_0", "hqq",
               "layer-errors", ["Node"])


def _given(key: str) -> QuantizeConfig:
    """Settings with ``key`` (a flat key) given explicitly, at a valid value other than its default."""
    default = QuantizeConfig.flat_fields()[key].get_default(call_default_factory=True)
    for value in _CANDIDATES:
        if value == default:
            continue
        try:
            config = QuantizeConfig.from_flat(**{key: value})
        except ValueError:
            continue
        if key in config.given_keys():
            return config
    raise AssertionError(f"no candidate value validates for {key}: add one to _CANDIDATES")


def _unread() -> list[tuple[str, str]]:
    every = sorted(QuantizeConfig.flat_fields())
    return [(b, k) for b in sorted(backends()) for k in every if k not in applies(b) and k not in PROFILE_KEYS]


@pytest.mark.parametrize("backend, key", _unread(), ids=lambda v: v)
def test_every_backend_refuses_each_option_it_does_not_read(backend, key):
    with pytest.raises(ConfigError, match="would be ignored") as e:
        refuse_ignored(_given(key), backend)
    assert flag(key) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("backend", sorted(backends()))
def test_each_backend_declares_real_options_and_takes_them(backend):
    """A backend's declaration names options of the settings model, and what it declares passes the shared check."""
    declared = applies(backend)
    assert declared <= set(QuantizeConfig.flat_fields()), declared - set(QuantizeConfig.flat_fields())
    for key in declared:
        refuse_ignored(_given(key), backend)


def test_every_format_quantize_takes_has_a_backend():
    from compress.formats import FORMATS
    from compress.stages.quantize.config import QUANTIZE_SPECS, backend_of

    formats = {str(f) for spec in QUANTIZE_SPECS for f in spec.accepts}
    assert {backend_of(f, "generic") for f in formats} <= set(backends())
    assert {backend_of(n, "text-generation") for n, f in FORMATS.items() if f.generator_quantizer} <= set(backends())


# --- the verb on real artifacts ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> Path:
    """mlp.onnx: x [batch, 16] -> MatMul -> Relu -> MatMul -> y [batch, 4], and calibration arrays for it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d = tmp_path_factory.mktemp("mlp")
    rng = np.random.default_rng(0)
    w1, w2 = (numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
              for n, s in (("w1", (16, 32)), ("w2", (32, 4))))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [w1, w2])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), d / "mlp.onnx")
    np.savez(d / "cal.npz", x=rng.standard_normal((24, 16)).astype(np.float32), labels=rng.integers(0, 4, 24))
    return d


@pytest.fixture(scope="module")
def adopted(mlp, tmp_path_factory) -> dict[str, Path]:
    """The MLP adopted as ONNX and as OpenVINO IR, and the tiny CNN .tflite adopted as LiteRT."""
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    d = tmp_path_factory.mktemp("adopted")
    out = {"onnx": export(mlp / "mlp.onnx", d / "onnx").path,
           "openvino": export(mlp / "mlp.onnx", d / "ov", ExportConfig(format="openvino")).path}
    if _has("ai_edge_litert"):
        shutil.copy2(TFLITE, d / "cnn.tflite")
        out["litert"] = export(d / "cnn.tflite", d / "litert").path
    return out


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("fmt, args, words", [
    ("litert", ("--qat-lr", "1e-4"), ("--qat-lr 0.0001 would be ignored", "LiteRT", "ONNX")),
    ("litert", ("--embedding-precision", "fp32"), ("--embedding-precision fp32 would be ignored", "LiteRT")),
    ("litert", ("--exclude-nodes", "no/such/node"), ("--exclude-nodes no/such/node would be ignored", "LiteRT")),
    ("litert", ("--weight-type", "uint8"), ("--weight-type uint8 would be ignored", "LiteRT")),
    ("litert", ("--speed-aware",), ("--speed-aware would be ignored", "(it applies to ONNX artifacts)")),
    ("openvino", ("--qat-lr", "1e-4"), ("--qat-lr 0.0001 would be ignored", "OpenVINO artifact")),
    ("openvino", ("--calibration", "x.npz", "--mode", "dynamic"), ("--mode dynamic would be ignored",)),
    ("onnx", ("--int4-algorithm", "hqq"), ("--int4-algorithm hqq would be ignored", "ONNX artifact", "causal-LM")),
])
def test_quantize_refuses_what_its_backend_would_ignore(adopted, tmp_path, capsys, fmt, args, words):
    if fmt not in adopted:
        pytest.skip("ai-edge-litert is not installed")
    line = main_error(capsys, "quantize", adopted[fmt], "--out", tmp_path / "q", *args)
    for w in words:
        assert w in line, line
    assert list(tmp_path.iterdir()) == []


# --- data files: one reader, one line ---------------------------------------------------------------------------


def _bad_npz(kind: str, directory: Path, good: Path) -> Path:
    f = directory / f"{kind}.npz"
    if kind == "truncated":
        data = good.read_bytes()
        f.write_bytes(data[: len(data) // 2])
    elif kind == "random":
        f.write_bytes(np.random.default_rng(1).bytes(4096))
    else:
        x = np.load(good)["x"].copy()
        x[3, 5] = np.nan if kind == "nan" else np.inf
        np.savez(f, x=x)
    return f


@pytest.mark.parametrize("kind, words", [
    ("truncated", ("not a readable .npz", "truncated")), ("random", ("not an .npz",)),
    ("nan", ("'x' holds 1 NaN or infinite", "index 3")), ("inf", ("'x' holds 1 NaN or infinite",)),
])
def test_bad_calibration_npz_is_one_line_and_writes_nothing(adopted, mlp, tmp_path, capsys, kind, words):
    data = _bad_npz(kind, tmp_path, mlp / "cal.npz")
    out = tmp_path / "out"
    line = main_error(capsys, "quantize", adopted["onnx"], "--mode", "static", "--calibration", data, "--out", out)
    for w in words + (str(data),):
        assert w in line, line
    assert "allow_pickle" not in line and not out.exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_targets_are_refused_by_the_reader(mlp, tmp_path, bad):
    """Regression targets (float labels) with NaN/Inf: refused where the file is read, for every consumer."""
    from compress.data.arrays import load_array_dataset

    y = np.linspace(0, 1, 24)
    y[7] = bad
    np.savez(tmp_path / "t.npz", x=np.load(mlp / "cal.npz")["x"], labels=y)
    with pytest.raises(DataError, match="'labels' holds 1 NaN or infinite value.*index 7"):
        load_array_dataset(tmp_path / "t.npz", {"shapes": {"x": [16]}, "dtypes": {"x": "float32"}})


def test_images_npz_goes_through_the_same_reader(tmp_path):
    from compress.data.images import _arrays

    images = np.zeros((4, 8, 8, 3), np.float32)
    images[2, 0, 0, 0] = np.nan
    np.savez(tmp_path / "i.npz", images=images)
    with pytest.raises(DataError, match="'images' holds 1 NaN"):
        _arrays(tmp_path / "i.npz", None)


# --- parity that measured nothing -------------------------------------------------------------------------------


@pytest.mark.parametrize("parity", [
    {"n": 8, "cosine_min": float("nan"), "cosine_mean": float("nan"), "argmax_agreement": 1.0},
    {"n": 8, "cosine_min": None},
    {"n": 8, "cosine_min": 0.99, "cosine_mean": 0.99, "argmax_agreement": float("nan")},
])
def test_a_parity_that_is_no_number_fails_even_without_strict(parity):
    from compress.stages.quantize.parity import check_collapse

    with pytest.raises(QuantizationCollapsed, match="no artifact was written"):
        check_collapse(parity, strict=False, remedies="x")


def test_a_model_whose_outputs_are_nan_gets_no_artifact(mlp, tmp_path, capsys):
    """A graph that computes NaN from finite data (the square root of a negative sum): quantize stops, nothing is
    written (before: an artifact with a null parity, exit 0)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).uniform(0.1, 1, (16, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"), helper.make_node("Sqrt", ["h"], ["y"])], "nan",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "n.onnx")
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    x = np.abs(np.load(mlp / "cal.npz")["x"])
    np.savez(tmp_path / "pos.npz", x=x)  # adopted on inputs where its outputs are numbers
    np.savez(tmp_path / "neg.npz", x=-x)  # calibrated and checked on inputs where they are not
    art = export(tmp_path / "n.onnx", tmp_path / "fp32", ExportConfig(sample_data=str(tmp_path / "pos.npz")))
    out = tmp_path / "int8"
    line = main_error(capsys, "quantize", art.path, "--mode", "static", "--calibration", tmp_path / "neg.npz", "--out",
                      out, code=1)
    assert "no artifact was written" in line and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32", "n.onnx", "neg.npz", "pos.npz"]


# --- model.yaml's preprocess against the graph's input ----------------------------------------------------------


def _image_graph(path: Path, shape: list) -> None:
    """A graph averaging its image input into 4 scores: input ``pixel_values`` of ``shape``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((shape[1] if len(shape) == 4 else shape[-1], 4), np.float32), "w")
    nodes = ([helper.make_node("GlobalAveragePool", ["pixel_values"], ["p"]),
              helper.make_node("Flatten", ["p"], ["f"])] if len(shape) == 4 else
             [helper.make_node("Identity", ["pixel_values"], ["f"])])
    graph = helper.make_graph(nodes + [helper.make_node("MatMul", ["f", "w"], ["y"])], "img",
                              [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


@pytest.mark.parametrize("shape, yaml, words", [
    (["batch", 3, 32, 32], "{size: [64, 64]}", ("images of [3, 64, 64]", "takes [3, 32, 32]")),
    (["batch", 3, 32, 32], "{size: [32, 32], layout: NHWC}", ("NHWC", "takes [3, 32, 32]")),
    (["batch", 16], "{size: [32, 32]}", ("images of [3, 32, 32]", "takes [16]")),
    (["batch", 1, 32, 32], "{size: [32, 32]}", ("RGB", "takes [1, 32, 32]")),
])
def test_a_preprocess_that_does_not_fit_the_graph_is_refused_at_adoption(tmp_path, capsys, shape, yaml, words):
    _image_graph(tmp_path / "m.onnx", shape)
    (tmp_path / "m.yaml").write_text(f"preprocess: {yaml}\n", encoding="utf-8")
    line = main_error(capsys, "export", tmp_path / "m.onnx", "--out", tmp_path / "a")
    for w in words + ("m.yaml",):
        assert w in line, line
    assert not (tmp_path / "a").exists()


def test_a_preprocess_that_fits_is_adopted(tmp_path):
    from compress.stages.export import export

    _image_graph(tmp_path / "m.onnx", ["batch", 3, "height", 32])  # an open dimension takes any size
    (tmp_path / "m.yaml").write_text("preprocess: {size: [48, 32]}\n", encoding="utf-8")
    assert export(tmp_path / "m.onnx", tmp_path / "a").manifest.preprocess.size == [48, 32]


# --- Ctrl-C at the edges of a command ---------------------------------------------------------------------------

#: the real entry point (``compress._entry.main``, as the console script calls it) with SIGINT sent at a set moment,
#: deterministically: ``import:MODULE`` stands in for a native extension interrupted while it initialises (pybind11
#: raises ``ImportError: initialization failed`` from the KeyboardInterrupt); ``importing:MODULE``: a pure-Python
#: module interrupted as it imports (the KeyboardInterrupt goes through the import); ``renamed``: the instant the artifact ``out`` was
#: renamed into place; ``exit``: the command has ended, its artifact in place and reported, and the signal comes as the
#: process exits
SIGINT_DRIVER = textwrap.dedent("""
    import os, signal, sys
    # as a terminal's Ctrl-C finds it: a process started in the background by a non-interactive shell (a CI runner's
    # `cmd &`) inherits SIGINT ignored, and Python then leaves it ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = ["edgecompress", *sys.argv[1:]]
    point = os.environ["SIGINT_AT"]
    if point.startswith("import"):
        class Interrupted:
            def find_spec(self, name, path=None, target=None):
                if name != point.partition(":")[2]:
                    return None
                sys.meta_path.remove(self)
                try:
                    os.kill(os.getpid(), signal.SIGINT)
                except KeyboardInterrupt as e:
                    if point.startswith("importing:"):
                        raise
                    raise ImportError("initialization failed") from e
                raise AssertionError("SIGINT was not delivered")
        sys.meta_path.insert(0, Interrupted())
    elif point == "renamed":
        real_replace = os.replace
        def replace_interrupted(src, dst, *args, **kwargs):
            real_replace(src, dst, *args, **kwargs)
            if os.path.basename(os.fspath(dst)) == "out":
                os.kill(os.getpid(), signal.SIGINT)
        os.replace = replace_interrupted
    elif point == "teardown":  # Python's exit, as it tears its modules down (after its signal handling ended)
        import time
        class Teardown:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
        sys.modules["__main__"].teardown = Teardown()
    else:
        real_exit = sys.exit
        def exit_interrupted(code=0):
            os.kill(os.getpid(), signal.SIGINT)
            real_exit(code)
        sys.exit = exit_interrupted
    from compress._entry import main
    main()
""")


def _export_interrupted(at: str, mlp: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SIGINT_DRIVER, "export", str(mlp / "mlp.onnx"), "--out", str(out)],
                          capture_output=True, text=True, env={**ENV, "SIGINT_AT": at}, timeout=240)


@pytest.mark.parametrize("module", ["onnx", "onnxruntime"])
def test_ctrl_c_while_a_library_imports_is_an_interrupt(mlp, tmp_path, module):
    """Before: exit 3 "unexpected ImportError: initialization failed" (onnx), exit 2 "onnxruntime is not installed"."""
    proc = _export_interrupted(f"import:{module}", mlp, tmp_path / "out")
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "interrupted (Ctrl-C); no output was written", proc.stderr
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("module", ["compress.cli", "click"])
def test_ctrl_c_while_the_command_line_imports_is_an_interrupt(mlp, tmp_path, module):
    """The first ~0.2 s of every command. Before: Python's traceback ending in KeyboardInterrupt, exit 1."""
    proc = _export_interrupted(f"importing:{module}", mlp, tmp_path / "out")
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines() == ["interrupted (Ctrl-C); no output was written"], proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_console_script_runs_through_the_guarded_entry():
    """``edgecompress`` (pip's console script) and ``python -m compress`` start at the entry that answers an early
    Ctrl-C, not at ``compress.cli.main`` (whose import is the window it guards)."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    scripts = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts["edgecompress"] == "compress._entry:main"
    assert "from compress._entry import main" in (root / "compress" / "__main__.py").read_text(encoding="utf-8")


def test_ctrl_c_after_the_command_ended_exits_130_and_says_the_output_is_complete(mlp, tmp_path):
    """Before: the process died by the signal (-2) with a traceback, the artifact in place and nothing said."""
    from compress.artifact import load_artifact

    proc = _export_interrupted("exit", mlp, tmp_path / "out")
    assert proc.returncode == 130, proc.stderr
    assert "wrote " in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("interrupted (Ctrl-C) after the command had ended; nothing was "
                                                     "left half-written"), proc.stderr
    load_artifact(tmp_path / "out", verify=True)  # complete: every file's sha256 as its manifest says


def test_ctrl_c_in_the_last_instant_of_python_s_exit_leaves_the_command_s_exit_code(mlp, tmp_path):
    """Issue 69: a Ctrl-C while Python tears its modules down (60-100 ms after export's last line) found CPython's
    default handler back in place: the process died by the signal (returncode -2, no line). It is ignored there: the
    export's own exit code, its artifact complete."""
    from compress.artifact import load_artifact

    proc = _export_interrupted("teardown", mlp, tmp_path / "out")
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    load_artifact(tmp_path / "out", verify=True)


def test_ctrl_c_the_instant_the_artifact_is_renamed_says_it_is_complete(mlp, tmp_path):
    """Before: "interrupted (Ctrl-C); no output was written", with the complete artifact in place."""
    from compress.artifact import load_artifact

    proc = _export_interrupted("renamed", mlp, tmp_path / "out")
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"interrupted (Ctrl-C); {tmp_path / 'out'} is complete", proc.stderr
    assert "Traceback" not in proc.stderr and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    load_artifact(tmp_path / "out", verify=True)


# --- messages that named the wrong problem ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def linear_program(tmp_path_factory) -> Path:
    """A Linear(6 -> 3) as a torch.export program (``model.pt2``, dynamic batch) and as a TorchScript archive
    (``ts.pt``), random weights: test material."""
    import torch

    d = tmp_path_factory.mktemp("program")
    torch.manual_seed(0)
    module = torch.nn.Linear(6, 3).eval()
    program = torch.export.export(module, (torch.randn(2, 6),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(d / "model.pt2"))
    torch.jit.save(torch.jit.script(module), str(d / "ts.pt"))
    return d


def test_a_directory_holding_a_generic_program_is_that_program(linear_program, tmp_path):
    """Before: the directory was taken for an image program ("task 'generic' is not supported for programs")."""
    from compress.teachers.load import load_teacher

    d = tmp_path / "sensor"
    d.mkdir()
    shutil.copy2(linear_program / "model.pt2", d / "model.pt2")
    (d / "model.yaml").write_text("task: generic\n", encoding="utf-8")
    teacher = load_teacher(d)
    assert teacher.info.kind == "program" and teacher.task == "generic" and teacher.info.outputs[0].shape[1:] == [3]


@pytest.mark.parametrize("pickle", [(), ("--allow-pickle",)])
def test_a_torchscript_archive_without_inputs_is_asked_for_them(linear_program, tmp_path, capsys, pickle):
    """Before: "task 'generic' is not supported for programs"; without --allow-pickle it was told to pass it, then
    refused anyway: the missing ``inputs:`` is named first, whatever the flags."""
    shutil.copy2(linear_program / "ts.pt", tmp_path / "ts.pt")
    (tmp_path / "ts.yaml").write_text("task: generic\n", encoding="utf-8")
    line = main_error(capsys, "export", tmp_path / "ts.pt", "--out", tmp_path / "o", *pickle)
    assert "ts.yaml: a TorchScript archive records no input signature" in line and "declare inputs:" in line, line
    assert "--allow-pickle" not in line and not (tmp_path / "o").exists()


def _declared_exit_codes() -> set[int]:
    """Every ``exit_code = N`` an error class of the package declares (read from the source: modules not imported yet
    count too)."""
    import ast

    import compress

    codes = set()
    for f in Path(compress.__file__).parent.rglob("*.py"):
        text = f.read_text(encoding="utf-8")
        if "exit_code =" not in text:
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                codes |= {stmt.value.value for stmt in node.body if isinstance(stmt, ast.Assign)
                          and any(isinstance(t, ast.Name) and t.id == "exit_code" for t in stmt.targets)
                          and isinstance(stmt.value, ast.Constant)}
    return codes


def test_top_level_help_lists_every_exit_code(capsys):
    """Before: 5 (ANOMALOUS) and 6 (INFEASIBLE) were missing from ``edgecompress --help``."""
    from compress.cli import main
    from compress.errors import EXIT_CODES
    from compress.profiles.budgets import VERDICTS

    declared = _declared_exit_codes() | {code for code, _ in VERDICTS.values()}  # and every verdict's code
    assert {1, 2, 3, 4, 5, 6, 130} <= declared, declared
    assert declared | {0, 143} <= set(EXIT_CODES), declared - set(EXIT_CODES)
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for code, meaning in EXIT_CODES.items():
        assert f"  {code:<4} {meaning}" in out, (code, out)


@pytest.mark.parametrize("cut", [10, 200])
def test_a_truncated_ir_gives_its_detail_and_no_native_chatter(adopted, tmp_path, capfd, cut):
    """OpenVINO's message on a truncated .xml starts with source locations ("Exception from .../core.cpp:84:", before:
    the whole detail shown), and its TensorFlow frontend logs absl lines to descriptor 2 first: first_line gives the
    line that says what is wrong, captured_stderr keeps the rest off the terminal."""
    import openvino as ov

    from compress.errors import first_line
    from compress.native_stderr import captured_stderr

    xml = tmp_path / "model.xml"
    xml.write_bytes((adopted["openvino"] / "model.xml").read_bytes()[:cut])
    shutil.copy2(adopted["openvino"] / "model.bin", tmp_path / "model.bin")
    capfd.readouterr()
    with captured_stderr() as native, pytest.raises(Exception) as e:
        ov.Core().read_model(str(xml))
    assert capfd.readouterr().err == ""
    detail = first_line(e.value)
    assert not detail.startswith(("Exception from", "Check ")) and detail, str(e.value)
    assert ("Unable to read the model" if cut == 10 else "Error parsing") in detail, detail
    if cut == 10:  # the TensorFlow frontend's absl lines were written, and kept
        assert "tensorflow.GraphDef" in native.text, native.text


@pytest.mark.parametrize("kind, words", [
    ("truncated", ("not a readable .npz",)), ("random", ("not an .npz",)), ("nan", ("'x' holds 1 NaN or infinite",)),
])
def test_search_splits_its_eval_npz_through_the_one_reader(mlp, tmp_path, kind, words):
    """search's held-out split read --eval .npz with np.load itself: BadZipFile (exit 3), numpy's allow_pickle
    advice on random bytes, NaN rows split into both halves."""
    from compress.search.holdout import split_eval

    data = _bad_npz(kind, tmp_path, mlp / "cal.npz")
    with pytest.raises(DataError) as e:
        split_eval(data, tmp_path / "split", seed=0)
    assert all(w in str(e.value) for w in words) and "allow_pickle" not in str(e.value), str(e.value)
    assert list((tmp_path / "split").iterdir()) == []


@pytest.mark.parametrize("args, words", [
    (("validate", "{d}/no-such-dir"), ("no-such-dir: no such directory", ".onnx", "an artifact directory")),
    (("validate", "{d}/m.onnx", "--teacher", "{d}/gone"), ("gone: no such directory", "a model file")),
    (("export", "{d}/m.onnx", "--out", "{d}/o"), ("m.onnx: no such file", ".onnx, .xml, .tflite", "checkpoint")),
    (("inspect", "{d}/m.onnx"), ("m.onnx: no such file", "a model file")),  # was "no such artifact directory"
])
def test_a_path_that_does_not_exist_is_named_with_what_the_command_takes(mlp, tmp_path, capsys, args, words):
    """Before: `validate DIR` (and export of a missing model.onnx) said "pass the directory of a Hugging Face
    checkpoint", whatever the command takes. Checked after the options and the output (their refusals come first)."""
    if "--teacher" in args:  # the artifact is there, its teacher is not
        shutil.copy2(mlp / "mlp.onnx", tmp_path / "m.onnx")
    line = main_error(capsys, *(a.format(d=tmp_path) for a in args))
    for w in words:
        assert w in line, line
    assert "Hugging Face checkpoint\"" not in line and not (tmp_path / "o").exists()


def test_a_long_library_message_is_cut_at_a_word_not_mid_word():
    """peft's "Target modules ... not found" reached the user cut mid-word (``[:160]``)."""
    from compress.errors import first_line

    message = ("Target modules {'query', 'value'} not found in the base model. Please check the target modules and "
               "try again. " * 3)
    line = first_line(ValueError(message), limit=80)
    assert len(line) <= 80 and line.endswith("…") and message.startswith(line[:-1]), line
    assert message[len(line) - 1] in " ,;:." or line[-2] in ".", line  # the last word kept is whole
    assert first_line(ValueError("short"), limit=80) == "short"
    assert first_line(ValueError("/a/very/long/path/without/spaces" * 10), limit=40).endswith("…")


def test_an_error_after_a_checkpoint_request_is_that_error_not_an_interrupt():
    """A StopFlag's first Ctrl-C asks for a checkpoint at the next step: a disk-full error while saving it must reach
    the user as itself, while an error that a raised Ctrl-C caused (a library swallowed it) is the interrupt."""
    import signal

    from compress import interrupt
    from compress.errors import StorageError

    interrupt.reset()
    try:
        with interrupt.StopFlag() as flag:
            flag._handle(signal.SIGINT, None)  # as the interpreter calls it (a real signal would hit the test runner)
            assert not interrupt.caused_by_signal(StorageError("disk full"))
            with pytest.raises(KeyboardInterrupt):
                flag._handle(signal.SIGINT, None)  # the second one aborts
            assert interrupt.caused_by_signal(StorageError("disk full"))
    finally:
        interrupt.reset()
    try:
        raise ImportError("initialization failed") from KeyboardInterrupt()
    except ImportError as e:
        assert interrupt.caused_by_signal(e)


@pytest.mark.parametrize("fmt", ["executorch", "litert", "coreml"])
def test_an_onnx_artifact_to_a_format_that_starts_from_pytorch_is_refused_naming_its_model(adopted, fmt, tmp_path,
                                                                                          capsys):
    """Before: 'executorch is not installed ... pip install' (or the exporter's own failure), advice that would not
    help: those formats start from the PyTorch model."""
    line = main_error(capsys, "export", adopted["onnx"], "--format", fmt, "--out", tmp_path / "o")
    assert "starts from the PyTorch model, not an ONNX artifact" in line and "not installed" not in line
    assert not (tmp_path / "o").exists()


def test_export_of_a_truncated_ir_is_one_line_with_no_native_chatter(adopted, tmp_path):
    """Before: three absl/TensorFlow-frontend lines on the terminal before the error."""
    (tmp_path / "cut.xml").write_bytes((adopted["openvino"] / "model.xml").read_bytes()[:10])
    shutil.copy2(adopted["openvino"] / "model.bin", tmp_path / "cut.bin")
    proc = edgecompress("export", tmp_path / "cut.xml", "--out", tmp_path / "o")
    assert_one_line_error(proc, "not a readable OpenVINO IR", "Unable to read the model")
    assert "absl" not in proc.stderr and "GraphDef" not in proc.stderr and not (tmp_path / "o").exists()


@pytest.mark.parametrize("declared, words", [
    ("{wrong: {shape: [16]}}", ("inputs declares wrong", "takes x")),
    ("{x: {shape: [17]}}", ("input x is declared [17]", "[16]")),
    ("{x: {shape: [4, 4]}}", ("input x is declared [4, 4]",)),
])
def test_declared_inputs_that_contradict_the_graph_are_refused(mlp, tmp_path, capsys, declared, words):
    """Before: model.yaml's inputs: beside an ONNX file was silently ignored (exported, exit 0)."""
    shutil.copy2(mlp / "mlp.onnx", tmp_path / "m.onnx")
    (tmp_path / "m.yaml").write_text(f"inputs: {declared}\n", encoding="utf-8")
    line = main_error(capsys, "export", tmp_path / "m.onnx", "--out", tmp_path / "o")
    assert "m.yaml" in line and all(w in line for w in words), line
    assert not (tmp_path / "o").exists()


def test_declared_inputs_that_agree_with_the_graph_are_taken(mlp, tmp_path):
    from compress.stages.export import export

    shutil.copy2(mlp / "mlp.onnx", tmp_path / "m.onnx")
    (tmp_path / "m.yaml").write_text("inputs: {x: {shape: [16]}}\n", encoding="utf-8")
    assert [t.name for t in export(tmp_path / "m.onnx", tmp_path / "o").manifest.inputs] == ["x"]


def test_a_class_name_given_twice_is_refused_where_labels_enter(mlp, tmp_path, capsys):
    """Before: labels [cat, cat, bird, dog] adopted, exit 0: name -> id ambiguous, one 'cat' never scored."""
    shutil.copy2(mlp / "mlp.onnx", tmp_path / "m.onnx")
    (tmp_path / "m.yaml").write_text("labels: [cat, cat, bird, dog]\n", encoding="utf-8")
    line = main_error(capsys, "export", tmp_path / "m.onnx", "--out", tmp_path / "o")
    assert "m.yaml" in line and "'cat' is given twice (ids 0 and 1)" in line and not (tmp_path / "o").exists()


def test_a_checkpoint_whose_id2label_repeats_a_name_is_refused(bert_classifier, tmp_path):
    import json

    from compress.errors import ModelLoadError
    from compress.teachers.load import inspect_checkpoint

    shutil.copytree(bert_classifier, tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    cfg["id2label"], cfg["label2id"] = {"0": "neg", "1": "neg"}, {"neg": 1}
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="'neg' is given twice"):
        inspect_checkpoint(tmp_path / "ckpt")


def test_a_tagger_labelled_label_n_is_refused_when_it_is_read(ner_teacher, tmp_path, capsys):
    """Before: exported (exit 0), then every validate refused it: its tags are no entity scheme."""
    import json

    shutil.copytree(ner_teacher, tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    n = len(cfg["id2label"])
    cfg["id2label"] = {str(i): f"LABEL_{i}" for i in range(n)}
    cfg["label2id"] = {f"LABEL_{i}": i for i in range(n)}
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    line = main_error(capsys, "export", tmp_path / "ckpt", "--out", tmp_path / "o")
    assert "not an entity tag scheme" in line and "id2label" in line and not (tmp_path / "o").exists()


def test_the_teacher_output_cache_goes_through_the_one_npz_reader(tmp_path, caplog):
    """A damaged cache file is recomputed (one warning, no numpy allow_pickle advice); a tagger's outputs keep the NaN
    they hold by design past each row's words."""
    import json
    import logging

    from compress.validation.teacher_outputs import _read

    key = {"rows": 2}
    (tmp_path / "bad.npz").write_bytes(np.random.default_rng(0).bytes(4096))
    with caplog.at_level(logging.WARNING):
        assert _read(tmp_path / "bad.npz", key) is None
    assert "ignoring damaged teacher-output cache" in caplog.text and "allow_pickle" not in caplog.text
    outputs = np.array([[1.0, np.nan], [2.0, 3.0]], dtype=np.float32)
    np.savez(tmp_path / "ok.npz", key=json.dumps(key), outputs=outputs)
    np.testing.assert_array_equal(_read(tmp_path / "ok.npz", key), outputs)
