"""validate's estimate mode on a machine that is not the device: the tiny INT8 classifier of conftest.py validated
against profiles whose ``identify`` cannot match this machine (roofline estimates: tests/estimates/).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import yaml
from conftest import write_tsv

from compress.profiles.load import load_profile
from tests.builders.cli import in_process
from tests.builders.profiles import GENEROUS_BUDGETS

pytestmark = pytest.mark.slow

# ----------------------------------------------------------------------------------- validate: estimates

FAST = {"warmup": 1, "min_runs": 5, "min_duration_s": 0.01, "eval_batch_size": 8}
BOARD_HW = {"cores": 2, "memory_mb": 4096, "clock_ghz": 2.0, "peak_gflops_fp32": 64.0, "peak_gops_int8": 256.0,
            "memory_bandwidth_gbs": 10.0, "identify": "^No Such Board$"}
GENEROUS = GENEROUS_BUDGETS


def board(directory: Path, name: str, arch: str = "x86_64", budgets: dict | None = None, **hw) -> Path:
    simd = ["avx2", "fma"] if arch == "x86_64" else ["neon", "dotprod"]
    data = {"name": name, "extends": "cpu-x86-avx2" if arch == "x86_64" else "cpu-arm64-neon",
            "hardware": {"arch": arch, "simd": simd, **BOARD_HW, **hw}, "measure": FAST,
            "budgets": {**GENEROUS, **(budgets or {})}}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data_tsv(tmp_path_factory) -> Path:
    return write_tsv(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def estimated_report(int8_artifact, bert_classifier, data_tsv, tmp_path_factory, home):
    """Full validation (baseline, cold start) against an x86 board this machine is not."""
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    profile = board(tmp_path_factory.mktemp("profiles"), "other-x86-board")
    return validate(int8_artifact, ValidateConfig(profile=str(profile), data=str(data_tsv),
                                                  teacher=str(bert_classifier)))


def _by_name(report):
    return {b.name: b for b in report.budgets}


def test_estimate_mode_verdict_and_statuses(estimated_report):
    r = estimated_report
    assert r.verdict == "unverified" and not r.passed
    b = _by_name(r)
    for name in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "min_throughput", "min_speedup",
                 "max_cold_start_ms"):
        assert b[name].status == "unverified" and b[name].passed is False and b[name].estimated, name
        assert b[name].measured is not None and "roofline from other-x86-board peaks" in b[name].measured_on
    for name in ("max_model_size_mb", "min_accuracy_retention", "min_agreement"):
        assert b[name].status == "pass" and b[name].passed and not b[name].estimated, name
    # peak memory: measured on this host, and judged, because the board has this machine's arch
    assert b["max_peak_memory_mb"].status == "pass" and "this host" in b["max_peak_memory_mb"].measured_on


def test_estimate_mode_metrics_are_marked(estimated_report):
    m = estimated_report.metrics
    assert m["estimated"] is True and m["measured_on"] == "estimate (roofline from other-x86-board peaks)"
    assert {"latency_ms", "throughput", "speedup", "cold_start_ms"} <= set(m["estimated_metrics"])
    assert m["latency_ms"]["estimated"] is True and m["latency_ms"]["p50"] == m["latency_ms"]["p99"]
    assert m["baseline_latency_ms"]["estimated"] is True
    assert m["speedup"] == pytest.approx(m["baseline_latency_ms"]["p50"] / m["latency_ms"]["p50"], rel=1e-3)
    assert m["estimate"]["gflops"] + m["estimate"]["int8_gops"] > 0
    assert m["cold_start"]["measured_on"].startswith("this host") and m["cold_start_ms_this_host"] > 0
    assert "metric" in m and "retention" in m["measured_on_this_host"]  # accuracy still measured here
    env = estimated_report.environment
    assert env["device_match"]["how"] == "not-identified" and "latency_source" in env
    assert any("ESTIMATED" in w for w in estimated_report.warnings)


def test_estimate_mode_report_files(estimated_report, tmp_path):
    from compress.reports.render import write_report

    write_report(estimated_report, tmp_path / "rep")
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert data["verdict"] == "unverified" and data["metrics"]["estimated"] is True
    lat = next(b for b in data["budgets"] if b["name"] == "latency_p50_ms")
    assert lat["status"] == "unverified" and lat["estimated"] is True and lat["passed"] is False
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md.startswith("# edgecompress validation: UNVERIFIED") and "**ESTIMATED**" in md
    assert "(estimated) | UNVERIFIED |" in md
    suite = ET.parse(tmp_path / "rep" / "junit.xml").getroot().find("testsuite")
    assert suite.get("failures") == "0" and int(suite.get("skipped")) == 6
    skipped = {c.get("name"): c.find("skipped") for c in suite.iter("testcase")}
    assert skipped["latency_p50_ms"] is not None and "UNVERIFIED" in skipped["latency_p50_ms"].get("message")
    assert skipped["max_model_size_mb"] is None


def test_render_shows_estimates(estimated_report):
    from rich.console import Console

    con = Console(record=True, width=200)
    from compress.reports.render import render_report

    render_report(estimated_report, con)
    text = con.export_text()
    assert "(estimated)" in text and "UNVERIFIED" in text and "ESTIMATED" in text


def test_other_arch_makes_peak_memory_unverified(int8_artifact, data_tsv, tmp_path):
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    profile = board(tmp_path, "arm-board", arch="arm64")
    r = validate(int8_artifact, ValidateConfig.from_flat(profile=str(profile), data=str(data_tsv), baseline=False,
                                               teacher=None))
    b = _by_name(r)
    assert r.environment["device_match"]["how"] == "arch-mismatch"
    assert b["max_peak_memory_mb"].status == "unverified" and not b["max_peak_memory_mb"].estimated
    assert b["latency_p50_ms"].status == "unverified"


def test_a_measured_failure_still_fails(int8_artifact, data_tsv, tmp_path):
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    profile = board(tmp_path, "tiny-board", budgets={"max_model_size_mb": 0.0001, "max_peak_memory_mb": None})
    r = validate(int8_artifact, ValidateConfig.from_flat(profile=str(profile), data=str(data_tsv), baseline=False,
                                               cold_start=False))
    assert r.verdict == "fail"
    assert [b.name for b in r.budgets if b.status == "fail"] == ["max_model_size_mb"]


def test_profile_without_peaks_gives_unverified_without_figures(int8_artifact, data_tsv, tmp_path):
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    path = tmp_path / "arm-class.yaml"
    path.write_text(yaml.safe_dump({"name": "arm-class", "extends": "cpu-arm64-neon", "measure": FAST,
                                    "budgets": GENEROUS}), encoding="utf-8")
    r = validate(int8_artifact, ValidateConfig.from_flat(profile=str(path), data=str(data_tsv), baseline=False,
                                               cold_start=False))
    lat = _by_name(r)["latency_p50_ms"]
    assert r.verdict == "unverified" and lat.status == "unverified" and lat.measured is None
    assert "latency_ms" not in r.metrics and any("no latency estimate" in w for w in r.warnings)


def test_class_profile_on_this_arch_is_measured_as_before(int8_artifact, data_tsv, tmp_path):
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    path = tmp_path / "cls.yaml"
    path.write_text(yaml.safe_dump({"name": "cls", "extends": "cpu-x86-avx2", "measure": FAST,
                                    "budgets": {**GENEROUS, "min_speedup": None, "max_cold_start_ms": None,
                                                "max_peak_memory_mb": None}}), encoding="utf-8")
    from compress.profiles.host import host_arch

    if host_arch() is None or host_arch().value != "x86_64":
        pytest.skip("an x86_64 class profile is measured only on x86_64")
    r = validate(int8_artifact, ValidateConfig.from_flat(profile=str(path), data=str(data_tsv), baseline=False,
                                               cold_start=False))
    assert r.verdict == "pass" and all(b.status == "pass" and not b.estimated for b in r.budgets)
    assert r.environment["device_match"]["how"] == "class"
    assert "estimated" not in r.metrics and r.metrics["latency_ms"]["n"] >= 5
    # --estimate always: the same profile, estimated (from this host's derived peaks where it has none: no)
    r2 = validate(int8_artifact, ValidateConfig.from_flat(profile="host", data=str(data_tsv), baseline=False,
                                                cold_start=False, estimate="always"))
    if load_profile("host").hardware.peak_gflops_fp32 is not None:
        assert r2.metrics["estimated"] is True and r2.metrics["latency_ms"]["p50"] > 0


def test_estimate_never_measures_here_with_a_warning(int8_artifact, data_tsv, tmp_path):
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    profile = board(tmp_path, "never-board", budgets={"min_speedup": None, "max_cold_start_ms": None,
                                                      "max_peak_memory_mb": None})
    r = validate(int8_artifact, ValidateConfig.from_flat(profile=str(profile), data=str(data_tsv), baseline=False,
                                               cold_start=False, estimate="never"))
    assert r.verdict == "pass" and "estimated" not in r.metrics
    assert any("--estimate never" in w for w in r.warnings)


# ------------------------------------------------------------------------------------------------- CLI


def _cli(capfd, *args: str, home: Path) -> subprocess.CompletedProcess:
    # in this process (in_process): an exit code and two streams need no fresh interpreter, whose start cost an
    # import of torch and transformers
    return in_process(capfd, *args, env={"HOME": str(home), "COLUMNS": "200"})


@pytest.mark.parametrize("flag, code", [((), 4), (("--unverified-exit-code", "0"), 0)])
def test_cli_unverified_exit_code(flag, code, int8_artifact, data_tsv, tmp_path, home, capfd):
    profile = board(tmp_path, "cli-board", budgets={"min_speedup": None, "max_cold_start_ms": None,
                                                    "max_peak_memory_mb": None})
    rep = tmp_path / "rep"
    proc = _cli(capfd, "validate", str(int8_artifact.path), "-p", str(profile), "-d", str(data_tsv), "--report-dir",
                str(rep), "--no-baseline", "--no-cold-start", *flag, home=home)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "UNVERIFIED" in proc.stdout and "(estimated)" in proc.stdout
    assert "UNVERIFIED: " in proc.stderr and "not judged on cli-board" in proc.stderr
    assert "latency_p50_ms" in proc.stderr and "error" not in proc.stderr
    assert json.loads((rep / "report.json").read_text())["verdict"] == "unverified"


def test_a_pytorch_speedup_baseline_is_not_estimated(int8_artifact, bert_classifier, data_tsv, tmp_path):
    """speedup_baseline: pytorch on an absent board: no roofline stands for PyTorch eager, so there is no speedup
    figure (the budget is unverified, with nothing measured) and a warning says why."""
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    path = board(tmp_path, "other-x86-vs-pytorch")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["measure"] = {**FAST, "speedup_baseline": "pytorch"}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    r = validate(int8_artifact, ValidateConfig.from_flat(profile=str(path), data=str(data_tsv), teacher=str(bert_classifier),
                                               cold_start=False))
    b = _by_name(r)["min_speedup"]
    assert b.status == "unverified" and b.measured is None
    assert "speedup" not in r.metrics and "baseline_latency_ms" not in r.metrics
    assert any("speedup_baseline: pytorch" in w for w in r.warnings)


# -- LiteRT files (compress.estimates.tflite_graph) ---------------------------------------------------------------------
