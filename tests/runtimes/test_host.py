"""`--profile host` runs whatever runtime the artifact's format needs and this machine has (issue 13, item 19)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SENTENCES, write_tsv

from compress.errors import ConfigError, MissingBackendError
from compress.profiles import load as P
from compress.profiles.schema import MeasureConfig

FAST_MEASURE = MeasureConfig(warmup=1, min_runs=3, min_duration_s=0.0, max_runs=3, eval_batch_size=8)


@pytest.fixture(autouse=True)
def _isolated_home(home):
    assert Path.home() == home
    yield


@pytest.fixture
def fast_host(monkeypatch):
    """`host` as detected, with a few timed runs instead of five seconds' worth."""
    detect = P.detect_host
    monkeypatch.setattr(P, "detect_host", lambda: detect().model_copy(update={"measure": FAST_MEASURE}))


@pytest.fixture(scope="module")
def data_tsv(tmp_path_factory) -> Path:
    return write_tsv(tmp_path_factory.mktemp("host-data"), SENTENCES)


def test_host_validates_an_openvino_artifact_in_openvino(ov_artifact, bert_classifier, data_tsv, fast_host):
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    r = validate(ov_artifact, ValidateConfig.from_flat(profile="host", data=str(data_tsv), teacher=str(bert_classifier),
                                             baseline=False, cold_start=False))
    assert r.environment["runtime"]["runtime"] == "openvino"
    assert r.environment["runtime"]["device"] == "CPU"
    assert r.profile["runtime"]["name"] == "openvino" and r.profile["name"] == "host"
    assert r.metrics["agreement"] == 1.0 and r.metrics["latency_ms"]["n"] >= 3


def test_host_validates_a_pytorch_checkpoint_in_torch(bert_classifier, data_tsv, fast_host):
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    r = validate(bert_classifier, ValidateConfig.from_flat(profile="host", data=str(data_tsv), baseline=False,
                                                 cold_start=False))
    assert r.environment["runtime"]["runtime"] == "torch"
    assert r.metrics["agreement"] == 1.0


def test_host_keeps_onnxruntime_for_onnx(int8_artifact):
    from compress.runtimes.host import runtime_for

    host = P.load_profile("host")
    assert runtime_for(host, int8_artifact.format) is host
    assert host.runtime.name == "onnxruntime"


def test_host_names_the_missing_runtime(monkeypatch):
    from compress import _optional
    from compress.runtimes.host import runtime_for

    real = _optional.is_available
    monkeypatch.setattr(_optional, "is_available", lambda m: False if m == "openvino" else real(m))
    with pytest.raises(MissingBackendError) as exc:
        runtime_for(P.load_profile("host"), "openvino")
    assert "openvino is not installed" in str(exc.value) and "pip install" in exc.value.hint


def test_a_named_profile_keeps_its_runtime_and_says_so():
    from compress.runtimes.host import runtime_for

    with pytest.raises(ConfigError) as exc:
        runtime_for(P.load_profile("cpu-x86-avx2"), "openvino")
    assert "profile cpu-x86-avx2 runs onnxruntime, which cannot run openvino artifacts" in str(exc.value)
    assert "--profile host" in exc.value.hint
