"""The shapes of measurement: one forward pass, a prompt then N generated tokens, a stream of chunks."""

from __future__ import annotations

import numpy as np

from compress.host.measure import ForwardPass, Generation, LatencyStats, Measurement, Stream
from compress.runtimes.base import load_runtime


def test_every_shape_is_a_measurement(kv_cache_artifact):
    backend = load_runtime(kv_cache_artifact, "onnxruntime")
    shapes = [ForwardPass({"a": lambda: None}, batch_size=1),
              Generation(backend, [1, 2]),
              Stream(backend, [{"input_ids": np.array([[1]], dtype=np.int64)}])]
    assert all(isinstance(s, Measurement) for s in shapes)
    assert [s.kind for s in shapes] == ["forward", "generation", "stream"]


def test_a_forward_pass_times_each_callable():
    stats = ForwardPass({"a": lambda: None, "b": lambda: None}, batch_size=2, warmup=0, min_runs=5,
                        min_duration_s=0, rounds=1).measure()
    assert set(stats) == {"a", "b"} and all(s.n >= 5 and s.batch_size == 2 for s in stats.values())


def test_generation_times_the_prompt_then_each_token(kv_cache_artifact):
    backend = load_runtime(kv_cache_artifact, "onnxruntime")
    shape = Generation(backend, [1, 2, 3], new_tokens=6, repeats=3, warmup=1)
    made = shape.generate()
    assert len(made.tokens) == 7 and len(made.seconds) == 7 and len(made.native_seconds) == 7  # the first + 6
    # the runtime's share of each token's time is inside it; the rest is the host's overhead
    assert all(0 < n <= t for t, n in zip(made.seconds, made.native_seconds, strict=True))
    stats = shape.measure()
    ttft, decode, host = stats["time_to_first_token"], stats["decode"], stats["decode_host"]
    assert isinstance(ttft, LatencyStats) and ttft.n == 3 and decode.n == 18 and host.n == 18
    assert ttft.p50 > 0 and decode.p50 > 0 and decode.throughput > 0  # decode tokens per second
    assert host.p50 < decode.p50


def test_an_untimed_generation_carries_no_seconds(kv_cache_artifact):
    made = load_runtime(kv_cache_artifact, "onnxruntime").generate([1, 2, 3], 4)
    assert len(made.tokens) == 4 and made.seconds == () and made.native_seconds == ()


def test_a_stream_feeds_the_state_from_chunk_to_chunk(accumulator_artifact):
    backend = load_runtime(accumulator_artifact, "onnxruntime")
    chunks = [{"x": np.full((1, 4), i, dtype=np.float32)} for i in range(1, 5)]
    shape = Stream(backend, chunks, repeats=2, warmup=0)
    samples, outputs = shape.run_stream()
    assert len(samples) == 4
    assert [float(o["y"][0, 0]) for o in outputs] == [1.0, 3.0, 6.0, 10.0]  # running sums: the state fed back
    chunk = shape.measure()["chunk"]
    assert chunk.n == 8 and chunk.p50 > 0 and chunk.throughput > 0
