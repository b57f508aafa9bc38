"""The shapes of measurement: one forward pass, a prompt then N generated tokens, a stream of chunks."""

from __future__ import annotations

import numpy as np

from compress.host.measure import (
    ForwardPass,
    Generation,
    LatencyStats,
    Measurement,
    Stream,
    measure_generations,
)
from compress.runtimes.base import load_runtime
from compress.tasks.generation import Generated


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


class _Route:
    """A generation route that takes ``step`` seconds a token (made up) and logs each call in ``calls``."""

    def __init__(self, name: str, step: float, calls: list[str]):
        self.name, self.step, self.calls = name, step, calls

    def generate(self, prompt, n, timed=False):
        self.calls.append(self.name)
        seconds = (2 * self.step,) + (self.step,) * (n - 1)
        return Generated(None, [7] * n, [], seconds, tuple(0.5 * t for t in seconds))


def test_several_generation_routes_are_timed_side_by_side():
    calls: list[str] = []
    routes = {"a": _Route("a", 0.01, calls), "b": _Route("b", 0.02, calls)}
    heard = []
    samples = measure_generations(routes, [1, 2, 3], 4, warmup=1, min_rounds=3, min_duration_s=0,
                                  progress=lambda event: heard.append(event))
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # a warm-up each, then a b | b a | a b
    assert samples["a"].first == [0.02] * 3 and samples["a"].runs == [0.04] * 3  # 4 decode tokens a round
    stats = {name: s.stats() for name, s in samples.items()}
    assert stats["b"]["decode"].n == 12 and stats["b"]["decode"].p50 == 20.0  # ms
    assert stats["a"]["decode_host"].p50 == 5.0 and stats["a"]["time_to_first_token"].n == 3
    assert heard[0]["phase"] == "timing generation" and heard[-1]["fraction"] == 1.0  # the phase, then each round


def test_generation_rounds_go_on_until_the_timed_work_is_long_enough():
    calls: list[str] = []
    samples = measure_generations({"a": _Route("a", 0.5, calls)}, [1], 2, warmup=0, min_rounds=1,
                                  min_duration_s=5.0, max_rounds=10)
    assert len(samples["a"].first) == 3  # 2 s a round (the first token 1 s, then 2 of 0.5 s): 3 rounds pass 5 s
    capped = measure_generations({"a": _Route("a", 0.5, calls)}, [1], 2, warmup=0, min_rounds=1,
                                 min_duration_s=100.0, max_rounds=2)
    assert len(capped["a"].first) == 2
