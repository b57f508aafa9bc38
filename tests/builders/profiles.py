"""Profiles the tests validate and search against: generous budgets (a working artifact passes them on any machine)
and a brief latency measurement (the tests check what is reported, not how fast; :func:`host_profile` writes one)."""

from __future__ import annotations

from pathlib import Path

#: every budget set, all generous: a working artifact passes them on any machine
GENEROUS_BUDGETS = {
    "latency_ms": {"p50": 10000, "p95": 20000, "p99": 30000},
    "min_throughput": 0.001,
    "max_model_size_mb": 1000,
    "max_peak_memory_mb": 100000,
    "min_accuracy_retention": 0.01,
    "min_agreement": 0.0,
    "min_speedup": 0.001,
    "max_cold_start_ms": 600000,
}
#: a search test's budgets: GENEROUS_BUDGETS less cold start and peak memory, which a search measures (a fresh process
#: per candidate: 10-25 s on the 2-core VM) only where a budget reads them (compress.search.space.measured_beside), and
#: which no search test is about (test_search.py's test_a_search_measures_only_what_its_budgets_read covers the rule)
SEARCH_BUDGETS = {**GENEROUS_BUDGETS, "max_peak_memory_mb": None, "max_cold_start_ms": None}

#: quick timing for profiles the tests validate against (enough calls for a median, a fraction of a second); host's
#: own (100 runs over at least 5 s, for the artifact and again for its FP32 baseline) was most of such a validate's time
QUICK_MEASURE = {"warmup": 2, "min_runs": 20, "min_duration_s": 0.2}
#: briefer still, and the accuracy pass in batches of 8: the ``fast_host`` fixture's, for tests of metrics, not timings
BRIEF_MEASURE = {"warmup": 2, "min_runs": 10, "min_duration_s": 0.05, "eval_batch_size": 8}


def host_profile(directory: Path, name: str | None = None, *, runtime: str | None = None, extends: str = "host",
                 measure: dict = QUICK_MEASURE, budgets: dict | None = None) -> str:
    """The path of a profile file ``NAME.yaml`` written in ``directory``: ``extends`` (this machine by default) timed
    with ``measure``. ``runtime``: run that one, as host does for a format its default runtime cannot run (a file
    that extends host keeps host's runtime); ``budgets``: over those ``extends`` sets. ``name``: ``quick-host``, with
    the runtime's name after it."""
    import yaml

    name = name or "quick-host" + (f"-{runtime}" if runtime else "")
    profile: dict = {"name": name, "extends": extends, "measure": measure}
    if runtime:
        profile["runtime"] = {"name": runtime, "provider": None, "options": {}}
    if budgets is not None:
        profile["budgets"] = budgets
    path = Path(directory) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(profile), encoding="utf-8")
    return str(path)
