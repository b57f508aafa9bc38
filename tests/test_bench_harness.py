"""The benchmark harness's pure parts (benchmarks/harness/): a median with its spread, the order of side-by-side
rounds, timed calls, the results file, and the anchors' greedy loop (on a made-up anchor). No model is loaded."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from benchmarks.harness import results, timing
from benchmarks.harness.lm import AnchorLoop
from compress.host.measure import measure_generations


def test_spread_is_the_median_and_nearest_rank_percentiles():
    s = timing.spread(range(20, 0, -1))  # 1..20, unsorted
    assert (s.n, s.median, s.min, s.max) == (20, 10.5, 1.0, 20.0)
    assert (s.p5, s.p25, s.p75, s.p95) == (1.0, 5.0, 15.0, 19.0)  # rank ceil(p/100 * 20)
    assert s.iqr == 10.0
    assert timing.spread([3.0]).as_dict() == {"n": 1, "median": 3.0, "p5": 3.0, "p25": 3.0, "p75": 3.0, "p95": 3.0,
                                              "min": 3.0, "max": 3.0}
    assert timing.spread([1, 2, 4]).median == timing.median([4, 1, 2]) == 2
    with pytest.raises(ValueError, match="no values"):
        timing.spread([])


def test_rounds_flip_the_order_every_other_round():
    assert timing.round_order(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert timing.round_order(["a", "b", "c"], 1) == ["c", "b", "a"]
    assert timing.round_order(["a", "b", "c"], 2) == ["a", "b", "c"]
    assert timing.round_order(["a", "b"], 1, flip=False) == ["a", "b"]


def test_side_by_side_interleaves_the_routes_after_their_warm_up():
    calls: list[str] = []

    def route(name: str, value: float):
        def run() -> float:
            calls.append(name)
            return value
        return run

    seen = []
    got = timing.side_by_side({"a": route("a", 1.0), "b": route("b", 2.0)}, rounds=3, warmup=1,
                              on_round=lambda r, v: seen.append((r, len(v["a"]), len(v["b"]))))
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-ups, then a b | b a | a b
    assert got == {"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0]}
    assert seen == [(0, 1, 1), (1, 2, 2), (2, 3, 3)]
    assert timing.paired_ratios(got["b"], got["a"]) == [2.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="not the same rounds"):
        timing.paired_ratios([1.0], [1.0, 2.0])


def test_time_calls_warms_up_then_times_each_call():
    calls = []
    seconds = timing.time_calls(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(calls) == 6 and len(seconds) == 4 and all(s >= 0 for s in seconds)
    assert timing.seconds_of(lambda: None)() >= 0


def test_the_results_file_carries_the_command_host_and_versions(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "host_and_versions", lambda: {"host": {"cpu": "X"}, "versions": {"numpy": "1"}})
    argv = [str(results.BENCH / "encoders" / "x.py"), "--rounds", "3", "--note", "a b"]
    path = results.write_results(tmp_path / "x.json", {"rows": [1], "host": {"cpu": "given"}}, argv=argv)
    data = json.loads(path.read_text())
    assert data["command"] == "python benchmarks/encoders/x.py --rounds 3 --note 'a b'"
    assert data["versions"] == {"numpy": "1"} and data["rows"] == [1]
    assert data["host"] == {"cpu": "given"}  # what the result sets wins
    monkeypatch.setattr(results, "RESULTS", tmp_path / "results")
    path = results.write_results("bare", {"rows": []}, facts=False, argv=["/elsewhere/y.py"])
    assert path == tmp_path / "results" / "bare.json"
    assert json.loads(path.read_text()) == {"command": "python /elsewhere/y.py", "rows": []}
    assert results.command([sys.executable]).startswith("python ")


class _Counting(AnchorLoop):
    """An anchor whose next token is always the last one fed + 1 (vocabulary 50)."""

    loop = "counting"

    def _logits(self, last: int):
        logits = np.zeros((1, 1, 50), dtype=np.float32)
        logits[0, 0, (last + 1) % 50] = 1.0
        return {"logits": logits}

    def prefill(self, feeds):
        return self._logits(int(feeds["input_ids"][0, -1])), feeds["input_ids"].shape[1]

    def step(self, feeds, state):
        assert feeds["attention_mask"].shape[1] == state + 1  # the mask grows a token a step
        return self._logits(int(feeds["input_ids"][0, -1])), state + 1


def test_an_anchor_keeps_the_runtime_contracts_generate():
    made = _Counting().generate([3, 4, 5], 4, timed=True)
    assert made.tokens == [6, 7, 8, 9]
    assert len(made.seconds) == len(made.native_seconds) == 4
    assert all(0 <= n <= t for t, n in zip(made.seconds, made.native_seconds))
    assert _Counting().generate([1], 2).seconds == ()  # untimed
    samples = measure_generations({"anchor": _Counting()}, [1, 2], 3, warmup=0, min_rounds=2)
    assert len(samples["anchor"].runs) == 2 and len(samples["anchor"].decode) == 6


def test_train_steps_runs_the_library_loop_and_keeps_nothing(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from benchmarks.harness.training import UNTIL_BATCHES_END, train_steps

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    x = torch.randn(64, 2)
    y = x @ torch.tensor([[2.0], [-1.0]])
    mse = torch.nn.functional.mse_loss
    lines: list[str] = []

    def score() -> float:
        with torch.no_grad():
            return -float(mse(model(x), y))

    got = train_steps(model, lambda m, b: mse(m(b[0]), b[1]), lambda: iter(lambda: (x, y), None),
                      optimizer=torch.optim.SGD(model.parameters(), lr=0.1), steps=40, log_every=20,
                      evaluate=score, every=10, smoothing=0.5, log=lines.append)
    assert got["steps"] == 40 and [s for s, _ in got["evaluations"]] == [10, 20, 30, 40]
    assert got["evaluations"][-1][1] > got["evaluations"][0][1] and got["loss"] < 0.1
    assert not model.training and list(tmp_path.iterdir()) == []  # eval mode, no checkpoint written
    assert lines[-1].startswith("train: step 40/40 loss ") and "eval -" in lines[-1]
    left = iter([(x, y)] * 3)  # a run that ends when its batches do
    assert train_steps(model, lambda m, b: mse(m(b[0]), b[1]), lambda: left, log=lines.append,
                       optimizer=torch.optim.SGD(model.parameters(), lr=0.1))["steps"] == 3
    assert UNTIL_BATCHES_END > 10**9


def test_results_keep_numpy_scalars_as_numbers(tmp_path):
    path = results.write_results(tmp_path / "n.json", {"a": np.float32(0.5), "b": np.arange(2), "c": tmp_path},
                                 facts=False, argv=["x.py"])
    data = json.loads(path.read_text())
    assert (data["a"], data["b"], data["c"]) == (0.5, [0, 1], str(tmp_path))
