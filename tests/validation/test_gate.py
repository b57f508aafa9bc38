"""The regression gate: comparability first, then tests (Mann-Whitney U on raw latency, McNemar on paired rows)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

pytest.importorskip("scipy")


def report(samples, correct="1" * 90 + "0" * 10, size=10.0, **changes) -> dict:
    r = {
        "verdict": "pass", "budgets": [],
        "metrics": {"latency_samples_ms": {"artifact": list(samples)}, "correct": correct, "size_mb": size,
                    "input_shape": {"batch_size": 1, "sequence_length": 64}},
        "profile": {"name": "cpu-x86-avx2"},
        "environment": {"cpu": "AMD EPYC", "measured_on": "local",
                        "runtime": {"runtime": "onnxruntime", "version": "1.32.0", "threads": 2}},
        "data": {"sha256": "ab" * 32},
    }
    for path, value in changes.items():
        *keys, last = path.split("__")
        d = r
        for k in keys:
            d = d[k]
        d[last] = value
    return r


def noisy(median: float, n: int = 400, seed: int = 0) -> np.ndarray:
    """Latencies with a long right tail, as a shared machine gives them."""
    rng = np.random.default_rng(seed)
    return median * (1 + rng.gamma(2.0, 0.05, n))


def test_a_rerun_from_the_same_distribution_passes():
    from compress.validation.gate import gate

    for seed in range(10):  # noise alone never trips it
        assert gate(report(noisy(5.0, seed=seed)), report(noisy(5.0, seed=100 + seed))).verdict == "pass"


def test_a_slower_artifact_regresses_but_a_small_significant_shift_does_not():
    from compress.validation.gate import gate

    slow = gate(report(noisy(6.5)), report(noisy(5.0, seed=1)))
    lat = slow.metrics[0]
    assert slow.verdict == "regressed" and lat.verdict == "regressed" and lat.p_value < 1e-6 and slow.exit_code == 1
    small = gate(report(noisy(5.25, n=5000)), report(noisy(5.0, n=5000, seed=1)))  # 5%: the test agrees, threshold not
    assert small.metrics[0].verdict == "pass" and small.metrics[0].p_value < 0.05
    fast = gate(report(noisy(4.0)), report(noisy(5.0, seed=1)))
    assert fast.verdict == "improved"


def test_accuracy_is_judged_on_paired_rows():
    from compress.validation.gate import gate

    base = "1" * 90 + "0" * 10
    worse = "0" * 12 + "1" * 78 + "0" * 10  # 12 rows lost, none won
    res = gate(report(noisy(5.0), worse), report(noisy(5.0, seed=1), base))
    acc = next(m for m in res.metrics if m.metric == "accuracy")
    assert acc.verdict == "regressed" and "12 rows lost, 0 won" in acc.note
    swapped = "0" * 3 + "1" * 87 + "1" * 3 + "0" * 7  # 3 lost, 3 won: same accuracy, not a regression
    assert next(m for m in gate(report(noisy(5.0), swapped), report(noisy(5.0, seed=1), base)).metrics
                if m.metric == "accuracy").verdict == "pass"


def test_reports_from_other_conditions_are_not_comparable_and_say_what_differs():
    from compress.validation.gate import gate

    other = report(noisy(5.0), profile__name="raspberry-pi-4", environment__cpu="Cortex-A72")
    res = gate(other, report(noisy(5.0, seed=1)))
    assert res.verdict == "not comparable" and res.exit_code == 3 and not res.metrics
    assert any(d.startswith("profile: 'cpu-x86-avx2' in the baseline, 'raspberry-pi-4' now") for d in res.differences)
    assert any(d.startswith("CPU:") for d in res.differences)
    resized = report(noisy(5.0), artifact={"preprocess": {"kind": "image", "size": [64, 64]}})
    assert gate(resized, report(noisy(5.0, seed=1), artifact={"preprocess": {"kind": "image", "size": [32, 32]}})
                ).differences[0].startswith("preprocessing:")


def test_no_raw_samples_is_inconclusive_not_a_pass():
    from compress.validation.gate import gate

    old = report([])
    res = gate(report(noisy(5.0)), old)
    assert res.metrics[0].verdict == "inconclusive" and res.verdict == "inconclusive"


def test_cli_exit_codes_markdown_and_junit(capfd, tmp_path):
    from tests.builders.cli import assert_one_line_error, in_process

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "report.json").write_text(json.dumps(report(noisy(5.0, seed=1))))
    (tmp_path / "same.json").write_text(json.dumps(report(noisy(5.0, seed=2))))
    (tmp_path / "slow.json").write_text(json.dumps(report(noisy(7.0, seed=2))))
    (tmp_path / "other.json").write_text(json.dumps(report(noisy(5.0), profile__name="nvidia-t4")))
    ok = in_process(capfd, "gate", tmp_path / "same.json", "--baseline", tmp_path / "base",
                    "--markdown", tmp_path / "s.md", "--junit", tmp_path / "j.xml")
    assert ok.returncode == 0, ok.stderr
    assert "## edgecompress gate: **pass**" in (tmp_path / "s.md").read_text()
    assert 'failures="0"' in (tmp_path / "j.xml").read_text()
    slow = in_process(capfd, "gate", tmp_path / "slow.json", "-b", tmp_path / "base", "--junit", tmp_path / "j2.xml")
    assert_one_line_error(slow, "regressed: latency p50 ms", code=1)
    assert "<failure" in (tmp_path / "j2.xml").read_text()
    other = in_process(capfd, "gate", tmp_path / "other.json", "-b", tmp_path / "base")
    assert_one_line_error(other, "not comparable", code=3)
    bad = in_process(capfd, "gate", tmp_path / "missing.json", "-b", tmp_path / "base")
    assert_one_line_error(bad, "no validation report", code=2)


def test_validation_reports_keep_raw_latency_and_per_row_correctness(int8_artifact, tmp_path):
    """What the gate needs is in every report validate writes; two runs of the same artifact pass the gate."""
    from compress.validation.config import ValidateConfig
    from compress.validation.gate import GateConfig, gate
    from compress.validation.local import validate
    from tests.conftest import write_tsv

    data = write_tsv(tmp_path / "data")
    prof = tmp_path / "fast.yaml"
    prof.write_text("name: fast\nextends: host\nmeasure: {min_runs: 200, min_duration_s: 0.5, warmup: 5}\n")
    reports = []
    for _ in range(2):
        rep = validate(int8_artifact, ValidateConfig.from_flat(profile=str(prof), data=str(data), cold_start=False,
                                                     baseline=False))
        m = rep.metrics
        assert len(m["latency_samples_ms"]["artifact"]) == m["latency_ms"]["n"] >= 200
        assert len(m["correct"]) == m["eval_samples"] and set(m["correct"]) <= {"0", "1"}
        reports.append(json.loads(rep.model_dump_json()))
    # a 0.1 ms model timed for 0.5 s without a baseline alongside: only a gross change may count
    res = gate(copy.deepcopy(reports[1]), copy.deepcopy(reports[0]), GateConfig(latency_threshold=10.0))
    assert res.verdict == "pass", res.as_dict()
    assert next(m for m in res.metrics if m.metric == "accuracy").verdict == "pass"


def test_two_estimates_are_compared_by_the_threshold_alone():
    from compress.validation.gate import gate

    def est(p50):
        r = report([])
        r["metrics"]["latency_samples_ms"] = {}
        r["metrics"]["latency_ms"] = {"p50": p50, "estimated": True}
        return r

    assert gate(est(5.0), est(5.0)).metrics[0].verdict == "pass"
    slow = gate(est(6.0), est(5.0)).metrics[0]
    assert slow.verdict == "regressed" and slow.p_value is None and "estimated" in slow.note
    mixed = gate(est(5.0), report(noisy(5.0))).metrics[0]
    assert mixed.verdict == "inconclusive"


@pytest.mark.parametrize("edit, words", [
    (lambda r: r["metrics"]["latency_samples_ms"].update(artifact=["1.0"] * 20 + ["fast"]),
     ("metrics -> latency_samples_ms -> artifact",)),
    (lambda r: r.update(metrics="all good"), ("metrics",)),
    (lambda r: r["metrics"].update(correct="1101x"), ("metrics -> correct",)),
    (lambda r: r["metrics"].update(size_mb=-3), ("metrics -> size_mb",)),
])
def test_a_malformed_report_is_one_line_naming_the_field(capfd, tmp_path, edit, words):
    """A report is input: the fields the gate reads are type-checked, a bad one named (not an unexpected crash)."""
    from tests.builders.cli import assert_one_line_error, in_process

    (tmp_path / "base.json").write_text(json.dumps(report(noisy(5.0, seed=1))))
    bad = report(noisy(5.0, seed=2))
    edit(bad)
    (tmp_path / "new.json").write_text(json.dumps(bad))
    proc = in_process(capfd, "gate", tmp_path / "new.json", "--baseline", tmp_path / "base.json")
    assert_one_line_error(proc, "new.json", *words, code=2)


def test_an_unwritable_summary_is_refused_before_gating(capfd, tmp_path):
    from tests.builders.cli import assert_one_line_error, in_process

    (tmp_path / "base.json").write_text(json.dumps(report(noisy(5.0, seed=1))))
    (tmp_path / "new.json").write_text(json.dumps(report(noisy(5.0, seed=2))))
    proc = in_process(capfd, "gate", tmp_path / "new.json", "-b", tmp_path / "base.json",
                      "--markdown", tmp_path / "no" / "such" / "g.md")
    assert_one_line_error(proc, "--markdown", "no such directory", code=2)
    proc = in_process(capfd, "gate", tmp_path / "new.json", "-b", tmp_path / "base.json", "--junit", tmp_path)
    assert_one_line_error(proc, "--junit", "is a directory", code=2)
