"""`edgecompress search` with ExecuTorch as a runtime dimension: on a phone's profile the candidates are ExecuTorch
programs (and ONNX Runtime models), their latency estimated from each built program on the phone's peaks; on this
machine's profile, asked for with ``--space``, programs are timed here beside the other candidates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.builders.profiles import host_profile
from tests.conftest import write_search_workspace

pytest.importorskip("optuna")
pytest.importorskip("executorch")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, bert_one_layer, home):
    d = write_search_workspace(tmp_path_factory.mktemp("search-phones"), bert_one_layer)
    # (no speedup, cold start or peak memory budget: the search then exports no FP32 baseline program for the
    # estimate and runs no cold-start probe (compress.search.space.measured_beside); neither is what these tests are about)
    unread = {"min_speedup": None, "max_cold_start_ms": None, "max_peak_memory_mb": None}
    host_profile(d, "phone", extends="pixel-8", budgets=unread)
    # this machine: no speedup budget either, so no FP32 ExecuTorch program is exported to time beside each program
    # (20 s at rest; the side-by-side timing against the PyTorch teacher is the search's own)
    host_profile(d, "here", extends=str(d / "quick.yaml"), budgets=unread)
    return d


def config(ws: Path, profile: str, space: dict, **kw):
    from compress.search.config import SearchConfig

    return SearchConfig.from_flat(**{**dict(
        teacher=str(ws / "teacher"), profile=str(ws / profile), train=str(ws / "train.tsv"), eval=str(ws / "dev.tsv"),
        holdout=str(ws / "test.tsv"), time_budget_s=3600, trials=2, short_steps=3, short_recover_steps=2,
        full_epochs=1, full_recover_steps=3, promote=1, space=space), **kw})


def test_a_phone_profile_searches_executorch_programs_estimated_on_its_peaks(workspace):
    from compress.search.directory import Search
    from compress.search.run import run_search

    space = {"layers": [1], "width": [1.0], "heads": [0.0], "ffn": [0.0], "vocab": [False], "quant": ["int8-dynamic"],
             "et_quant": ["int8-static"], "threads": [0]}  # the runtime left to the profile
    cfg = config(workspace, "phone.yaml", space, trials=1)  # the reference: the teacher as the phone's INT8 program
    assert Search(cfg, workspace / "unused").space["runtime"] == ["executorch", "onnxruntime"]
    result = run_search(cfg, workspace / "phone-search", progress=lambda *a, **k: None)
    s = result.summary
    programs = [p for p in s["measured"] if p["label"].endswith(" L1 et-int8-static")]
    assert programs and s["chosen"], [p["label"] for p in s["measured"]]
    first = programs[0]
    steps = yaml.safe_load(Path(first["recipe"]).read_text())["steps"]
    assert steps["model"]["export"] == {"format": "executorch", "precision": "int8", "executorch": {"int8_mode": "static"},
                                        "calibration": {"data": "calibration"}} and "onnx" not in steps
    report = yaml.safe_load(Path(first["report"]).read_text()) if first.get("report") else None
    assert first["p50_ms"] > 0 and first["estimated"], first  # the built program's graph on the phone's peaks
    assert report is None or report["metrics"]["latency_ms"]["estimated"]
    assert "side_by_side" not in s or not s["side_by_side"]  # nothing is timed here for a phone


def test_this_machines_profile_times_programs_beside_onnx_runtime_when_asked(workspace):
    from compress.search.run import run_search

    space = {"layers": [1], "width": [1.0], "heads": [0.0], "ffn": [0.0], "vocab": [False],
             "quant": ["int8-dynamic"], "runtime": ["onnxruntime", "executorch"], "et_quant": ["int8-dynamic"],
             "threads": [0]}
    result = run_search(config(workspace, "here.yaml", space), workspace / "quick-search",
                        progress=lambda *a, **k: None)
    s = result.summary
    labels = {p["label"].split(" ", 1)[1] for p in s["measured"]}
    assert {"L1 int8-dynamic", "L1 et-int8-dynamic"} <= labels
    assert result.exit_code == 0 and not any(p.get("estimated") for p in s["measured"])
    timed = [k for k in s["side_by_side"] if k.startswith("trial ")]
    assert len(timed) >= 1 and "teacher (PyTorch FP32)" in s["side_by_side"]


def test_executorch_is_refused_where_it_cannot_run_with_the_reason(workspace, tmp_path):
    from compress.search.directory import Search

    (workspace / "gpu.yaml").write_text(yaml.safe_dump({"name": "gpu", "extends": "nvidia-t4"}))
    lines: list[dict] = []
    cfg = config(workspace, "gpu.yaml", {"runtime": ["executorch", "onnxruntime"]})
    s = Search(cfg, tmp_path / "s", progress=lines.append)
    assert s.space["runtime"] == ["onnxruntime"]
    assert {"phase": "search", "note": "runtime: no executorch candidates (not this profile's kind of device)"} in lines
