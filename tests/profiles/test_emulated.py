"""An emulated device (``hardware.emulated``): its outputs and accuracy are judged, its timings never are.

Under qemu-system-aarch64 (TCG) the Arm instructions really run, so accuracy and agreement measured there are an Arm
CPU's, but every latency, throughput, speedup and cold-start figure is the emulator's speed: those budgets must come
out UNVERIFIED (never pass, never fail) with that reason, while size and accuracy budgets are judged as usual.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import write_tsv

from compress.profiles.budgets import BudgetStatus, emulated_timings, judge, verdict_of
from compress.profiles.load import load_profile
from compress.profiles.schema import Budgets, DeviceProfile
from tests.builders.profiles import GENEROUS_BUDGETS

TIMED = {"latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "min_throughput", "min_speedup", "max_cold_start_ms"}
BUDGETS = Budgets(latency_ms={"p50": 30, "p95": 50, "p99": 80}, min_throughput=30, min_speedup=1.0,
                  max_cold_start_ms=3000, max_model_size_mb=64, min_agreement=0.97, min_accuracy_retention=0.99)
# every budget above met: a real board would PASS with these figures
MET = {"latency_ms": {"p50": 12.0, "p95": 15.0, "p99": 18.0}, "throughput": 80.0, "speedup": 2.0,
       "cold_start_ms": 900.0, "size_mb": 23.0, "agreement": 0.99, "retention": 1.0}


def profile(emulated: bool) -> DeviceProfile:
    return DeviceProfile(name="board", hardware={"arch": "arm64", "cores": 2, "memory_mb": 2048,
                                                 "emulated": emulated})


def test_builtin_qemu_profile_is_an_emulated_arm_board():
    p = load_profile("qemu-arm64")
    assert p.hardware.emulated and p.hardware.arch == "arm64"
    assert p.budgets.latency_ms.p50 is not None and p.budgets.max_cold_start_ms is not None
    assert not load_profile("raspberry-pi-5").hardware.emulated  # a real board's timings stay judged


def test_timings_on_an_emulated_device_are_unverified_with_the_reason():
    results = judge(BUDGETS, MET)
    assert emulated_timings(profile(False), results) is None and verdict_of(results) == "pass"

    results = judge(BUDGETS, MET)
    warning = emulated_timings(profile(True), results)
    by = {b.name: b for b in results}
    assert {n for n, b in by.items() if b.status is BudgetStatus.unverified} == TIMED
    for name in TIMED:
        assert not by[name].passed and by[name].measured is not None  # the figure is kept, never a pass
        assert "emulat" in by[name].note
    assert by["max_model_size_mb"].passed and by["min_agreement"].passed  # what emulation does not change
    assert verdict_of(results) == "unverified"
    assert "board is an emulated device" in warning and "latency_p50_ms" in warning


def test_emulated_slowness_is_not_a_failure_but_a_real_miss_is():
    slow = {**MET, "latency_ms": {"p50": 900.0, "p95": 1200.0, "p99": 1500.0}, "throughput": 1.0,
            "cold_start_ms": 40000.0}
    results = judge(BUDGETS, slow)
    emulated_timings(profile(True), results)
    assert verdict_of(results) == "unverified"  # TCG's speed says nothing about the chip

    results = judge(BUDGETS, {**slow, "agreement": 0.5})
    emulated_timings(profile(True), results)
    assert verdict_of(results) == "fail"  # the Arm kernels' predictions are the device's own


@pytest.fixture(scope="module")
def emulated_report(int8_artifact, tmp_path_factory):
    """A local validation of the tiny INT8 classifier against a profile of this machine marked emulated."""
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    d = tmp_path_factory.mktemp("emulated")
    prof = d / "emulated-host.yaml"
    prof.write_text(yaml.safe_dump({
        "name": "emulated-host", "extends": "host", "hardware": {"emulated": True},
        "measure": {"warmup": 1, "min_runs": 5, "min_duration_s": 0, "max_runs": 5, "eval_batch_size": 8},
        "budgets": {**GENEROUS_BUDGETS, "min_speedup": None, "max_peak_memory_mb": None, "max_cold_start_ms": None},
    }), encoding="utf-8")
    data = write_tsv(Path(d))
    return validate(int8_artifact, ValidateConfig.from_flat(profile=str(prof), data=str(data), baseline=False,
                                                            cold_start=False))


def test_validate_on_an_emulated_device_reports_latency_unverified(emulated_report):
    r = emulated_report
    by = {b.name: b for b in r.budgets}
    assert by["latency_p50_ms"].status is BudgetStatus.unverified and by["latency_p50_ms"].measured > 0
    assert by["max_model_size_mb"].status is BudgetStatus.passed
    assert r.verdict == "unverified"
    assert any("emulated device" in w for w in r.warnings)
