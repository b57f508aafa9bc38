"""A stateful step (a recurrent state, a KV cache fed back) through the ONNX Runtime adapter, on tiny graphs."""

from __future__ import annotations

import numpy as np
import pytest

from compress.errors import ConfigError
from compress.runtimes.base import StatePair, StateSpec, load_runtime


def test_state_pairs_are_read_from_the_manifests_tensors(accumulator_artifact, kv_cache_artifact):
    m = accumulator_artifact.manifest
    assert StateSpec.from_tensors(m.inputs, m.outputs) == StateSpec((StatePair("state", "stateN", (1, 4)),))
    m = kv_cache_artifact.manifest
    spec = StateSpec.from_tensors(m.inputs, m.outputs)
    assert spec.pairs == (StatePair("past_key_values.0.key", "present.0.key", (1, 0, 4)),)
    assert StateSpec.from_tensors(m.inputs, m.outputs, sizes={"batch": 3}).pairs[0].shape == (3, 0, 4)


def test_a_recurrent_state_is_fed_back(accumulator_artifact):
    backend = load_runtime(accumulator_artifact, "onnxruntime")
    assert backend.stateful
    x = np.ones((1, 4), dtype=np.float32)
    outputs, state = backend.prefill({"x": x})
    assert set(outputs) == {"y"} and set(state) == {"state"}
    np.testing.assert_allclose(outputs["y"], x)
    for i in range(2, 5):
        outputs, state = backend.step({"x": x}, state)
        np.testing.assert_allclose(outputs["y"], i * x)
        np.testing.assert_allclose(state["state"], i * x)


def test_a_kv_cache_grows_by_one_position_per_step(kv_cache_artifact):
    backend = load_runtime(kv_cache_artifact, "onnxruntime")
    prompt = np.array([[1, 2, 3]], dtype=np.int64)
    outputs, state = backend.prefill({"input_ids": prompt})
    assert state["past_key_values.0.key"].shape == (1, 3, 4) and outputs["logits"].shape == (1, 8)
    for n in range(4, 7):
        outputs, state = backend.step({"input_ids": np.array([[n % 8]], dtype=np.int64)}, state)
        assert state["past_key_values.0.key"].shape == (1, n, 4)
    # stepping through the tokens one at a time ends where one pass over all of them does
    whole, _ = backend.prefill({"input_ids": np.array([[1, 2, 3, 4, 5, 6]], dtype=np.int64)})
    np.testing.assert_allclose(outputs["logits"], whole["logits"], rtol=1e-5)


def test_a_state_can_be_declared(accumulator_artifact):
    backend = load_runtime(accumulator_artifact, "onnxruntime")
    backend.declared_state = StateSpec((StatePair("state", "y", (1, 4)),))  # feed y back instead of stateN
    outputs, state = backend.prefill({"x": np.ones((1, 4), dtype=np.float32)})
    assert set(outputs) == {"stateN"} and set(state) == {"state"}


def test_a_model_of_one_forward_pass_has_no_step(onnx_artifact):
    backend = load_runtime(onnx_artifact, "onnxruntime")
    assert not backend.stateful and backend.state_spec is None
    with pytest.raises(ConfigError, match="stateful step"):
        backend.prefill({})
