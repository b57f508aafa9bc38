"""The shapes of measurement: one forward pass, a prompt then N generated tokens, a stream of chunks."""

from __future__ import annotations

import numpy as np

from compress.host.measure import ForwardPass, Generation, LatencyStats, Measurement, Stream, greedy_next
from compress.runtimes.base import load_runtime


def test_every_shape_is_a_measurement(kv_cache_artifact):
    backend = load_runtime(kv_cache_artifact, "onnxruntime")
    shapes = [ForwardPass({"a": lambda: None}, batch_size=1),
              Generation(backend, {"input_ids": np.array([[1, 2]], dtype=np.int64)}),
              Stream(backend, [{"input_ids": np.array([[1]], dtype=np.int64)}])]
    assert all(isinstance(s, Measurement) for s in shapes)
    assert [s.kind for s in shapes] == ["forward", "generation", "stream"]


def test_a_forward_pass_times_each_callable():
    stats = ForwardPass({"a": lambda: None, "b": lambda: None}, batch_size=2, warmup=0, min_runs=5,
                        min_duration_s=0, rounds=1).measure()
    assert set(stats) == {"a", "b"} and all(s.n >= 5 and s.batch_size == 2 for s in stats.values())


def test_generation_times_the_prompt_then_each_token(kv_cache_artifact):
    backend = load_runtime(kv_cache_artifact, "onnxruntime")
    prompt = {"input_ids": np.array([[1, 2, 3]], dtype=np.int64)}
    shape = Generation(backend, prompt, new_tokens=6, repeats=3, warmup=1)
    _, steps, outputs = shape.generate()
    assert len(steps) == 6 and len(outputs) == 7 and all(o["logits"].shape == (1, 8) for o in outputs)
    stats = shape.measure()
    ttft, decode = stats["time_to_first_token"], stats["decode"]
    assert isinstance(ttft, LatencyStats) and ttft.n == 3 and decode.n == 18
    assert ttft.p50 > 0 and decode.p50 > 0 and decode.throughput > 0  # decode tokens per second


def test_greedy_next_feeds_the_arg_max_token():
    feeds = {"input_ids": np.array([[5]], dtype=np.int64), "attention_mask": np.ones((1, 1), dtype=np.int64)}
    nxt = greedy_next({"logits": np.array([[0.1, 0.9, 0.2]])}, feeds)
    assert nxt["input_ids"].tolist() == [[1]] and nxt["attention_mask"].shape == (1, 2)


def test_a_stream_feeds_the_state_from_chunk_to_chunk(accumulator_artifact):
    backend = load_runtime(accumulator_artifact, "onnxruntime")
    chunks = [{"x": np.full((1, 4), i, dtype=np.float32)} for i in range(1, 5)]
    shape = Stream(backend, chunks, repeats=2, warmup=0)
    samples, outputs = shape.run_stream()
    assert len(samples) == 4
    assert [float(o["y"][0, 0]) for o in outputs] == [1.0, 3.0, 6.0, 10.0]  # running sums: the state fed back
    chunk = shape.measure()["chunk"]
    assert chunk.n == 8 and chunk.p50 > 0 and chunk.throughput > 0
