"""The runtime adapter contract, checked the same way for every runtime that can run the artifact."""

from __future__ import annotations

import numpy as np
import pytest

from compress.runtimes.base import RUNTIMES, RuntimeSettings, load_runtime, runtime_class


def test_registry_lists_the_runtimes():
    assert {"torch", "onnxruntime", "openvino"} <= set(RUNTIMES)
    for name in RUNTIMES:
        cls = runtime_class(name)
        assert cls.name == name and cls.formats


def test_adapter_does_not_mutate_the_callers_settings(int8_artifact):
    shared = RuntimeSettings(threads=1)
    backend = load_runtime(int8_artifact, "onnxruntime", shared)
    assert backend.settings.provider == "CPUExecutionProvider"
    assert shared.provider is None  # a second adapter (say OpenVINO) must not inherit an ORT provider
    d = backend.describe()
    assert d["runtime"] == "onnxruntime" and d["precision"] == "int8" and d["version"]


def test_predict_text_matches_encode_then_predict(onnx_artifact):
    backend = load_runtime(onnx_artifact)
    texts = ["a fine film", "dull and slow"]
    direct = backend.predict(backend.encode(texts))
    assert np.allclose(backend.predict_text(texts), direct)
    assert direct.shape == (2, len(onnx_artifact.manifest.labels))


def test_unknown_runtime_is_a_config_error(onnx_artifact):
    from compress.errors import ConfigError

    with pytest.raises(ConfigError, match="available runtimes"):
        load_runtime(onnx_artifact, "tflite")
    with pytest.raises(ConfigError, match="cannot run onnx"):
        load_runtime(onnx_artifact, "torch")


def test_ort_sessions_stop_spinning_after_a_run(onnx_artifact):
    """Idle sessions must not spin: models timed side by side in one process (the search's and validate's
    comparisons) would otherwise steal each other's cores (measured: 1.51 vs 1.09 ms p50 on 2 cores)."""
    import onnxruntime as ort

    from compress.device.shipped import ort_session_options

    assert ort_session_options(ort, 2).get_session_config_entry("session.force_spinning_stop") == "1"
    mine = ort_session_options(ort, 2, session_config={"session.force_spinning_stop": "0"})
    assert mine.get_session_config_entry("session.force_spinning_stop") == "0"  # the profile's session_config wins
    backend = load_runtime(onnx_artifact, "onnxruntime", RuntimeSettings(threads=1))
    try:
        opts = backend.session.get_session_options()
        assert opts.get_session_config_entry("session.force_spinning_stop") == "1"
    finally:
        backend.close()
