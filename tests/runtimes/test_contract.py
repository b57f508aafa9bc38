"""The contract every runtime adapter keeps, run against each adapter this machine can run.

One artifact per format of the same tiny BERT classifier (PyTorch checkpoint, ONNX, OpenVINO IR, ExecuTorch); every
adapter must load its format and refuse others, encode only the inputs its model takes, predict what the
PyTorch reference predicts, answer ``call`` (the one way in) on its main entry with what ``run`` returns and refuse an
entry the artifact lacks, describe itself in the same keys, and close twice without harm. A new adapter
(TensorRT needs a GPU: skipped here) passes the same test.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from compress.errors import EdgeCompressError

pytestmark = pytest.mark.slow  # 33 s of a 2,979 s run (tests/conftest.py SLOW_SHARE)

TEXTS = ["a gripping, beautifully acted film.", "the plot is thin and the jokes fall flat.",
         "an ambitious mess that never finds its footing", "I would happily watch it again"]


@pytest.fixture(scope="module")
def artifacts(bert_one_layer, tmp_path_factory):
    """The one-layer tiny BERT in every format a runtime here runs (one layer: its ExecuTorch lowering costs half
    the 2-layer model's)."""
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig
    from compress.teachers.load import load_teacher

    arts = {"torch": load_teacher(bert_one_layer).as_artifact(),
            "onnxruntime": export(bert_one_layer, tmp_path_factory.mktemp("contract") / "onnx")}
    if importlib.util.find_spec("openvino") is not None:
        arts["openvino"] = export(bert_one_layer, tmp_path_factory.mktemp("contract") / "ov",
                                  ExportConfig(format="openvino", parity_samples=2))
    if importlib.util.find_spec("executorch") is not None:
        arts["executorch"] = export(bert_one_layer, tmp_path_factory.mktemp("contract") / "pte",
                                    ExportConfig(format="executorch", parity_samples=2))
    return arts


@pytest.fixture(scope="module")
def reference(bert_one_layer):
    from compress.runtimes.torch_backend import TorchBackend
    from compress.teachers.load import load_teacher

    return TorchBackend.from_teacher(load_teacher(bert_one_layer)).predict_text(TEXTS)


def _runtimes() -> list[str]:
    from compress.runtimes.base import RUNTIMES

    return sorted(RUNTIMES)


@pytest.mark.parametrize("name", _runtimes())
def test_every_adapter_keeps_the_contract(name, artifacts, reference):
    from compress.runtimes.base import RuntimeSettings, available_runtimes, runtime_class

    cls = runtime_class(name)
    if not available_runtimes()[name]:
        pytest.skip(f"{cls.module} is not installed here")
    if not cls.runs_here():  # Core ML off Apple's systems: its refusal is tests/stages/test_coreml.py's
        pytest.skip(f"{name} does not run on this operating system")
    art = next((a for a in artifacts.values() if a.format in cls.formats), None)
    if art is None:
        pytest.skip(f"{name} runs {sorted(map(str, cls.formats))}, which needs hardware this machine lacks")

    rt = cls(art, RuntimeSettings(threads=1))
    try:
        batch = rt.encode(TEXTS)
        assert set(batch) <= set(rt.input_names) and "input_ids" in batch, (set(batch), rt.input_names)
        out = rt.predict(batch)
        assert out.shape == reference.shape and out.dtype == np.float32
        np.testing.assert_allclose(out, reference, atol=1e-3)
        np.testing.assert_array_equal(rt.predict_text(TEXTS), out)
        # call is the one way in: the main entry's outputs by name, the primary what run returns; another entry is
        # refused in one line
        assert rt.main == "model" and rt.artifact.manifest.roles == ("model",)
        called = rt.call(rt.main, batch)
        primary = art.manifest.outputs[0].name
        assert called and all(isinstance(v, np.ndarray) for v in called.values()), called
        np.testing.assert_allclose(np.asarray(called.get(primary, next(iter(called.values()))), np.float32),
                                   rt.run(batch), atol=1e-5)
        with pytest.raises(EdgeCompressError, match="no entry decoder"):
            rt.call("decoder", batch)
        info = rt.describe()
        assert {"runtime", "version", "provider", "threads", "format", "precision"} <= set(info)
        assert info["runtime"] == name and info["format"] == str(art.format)
    finally:
        rt.close()
        rt.close()  # closing twice is harmless

    other = next((a for a in artifacts.values() if a.format not in cls.formats), None)
    if other is not None:
        with pytest.raises(EdgeCompressError):
            cls(other, RuntimeSettings(threads=1))
