"""Recipes (`edgecompress run`): the schema's errors name file, line and field; the content-keyed cache re-runs only
what an edit changes; an interrupted run resumes; --dry-run, --rerun, --from-artifact; the gate over run
directories; the HTML reports are self-contained."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.builders.cli import assert_one_line_error, in_process
from tests.builders.profiles import GENEROUS_BUDGETS
from tests.conftest import write_tsv

pytestmark = pytest.mark.slow

pytest.importorskip("jinja2")
pytest.importorskip("matplotlib")


def write(path: Path, data: dict | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, bert_classifier, home):
    """A recipe folder: the tiny classifier as teacher, labelled data, a quick profile with generous budgets."""
    d = tmp_path_factory.mktemp("recipe")
    shutil.copytree(bert_classifier, d / "teacher")
    write_tsv(d, name="train.tsv")
    write_tsv(d, name="dev.tsv")
    for name, parent in (("quick.yaml", "host"), ("other.yaml", "host")):
        write(d / name, {"name": name.removesuffix(".yaml"), "extends": parent,
                         "measure": {"warmup": 2, "min_runs": 20, "min_duration_s": 0.2},
                         "budgets": GENEROUS_BUDGETS})
    return d


def recipe(**changes) -> dict:
    r = {
        "name": "tiny",
        "teacher": "teacher",
        "data": {"train": "train.tsv", "eval": "dev.tsv"},
        "steps": {
            "student": {"distill": {"student": {"layers": 1}, "training": {"max_steps": 4, "batch_size": 8},
                                    "evaluation": {"every": 2}}},
            "pruned": {"from": "student", "prune": {"ffn": 0.5, "vocab": {"corpus": "train"}, "recovery": {"steps": 2}}},
            "onnx": {"from": "pruned", "export": {}},
            "int8": {"from": "onnx", "quantize": {}},
        },
        "validate": {"profiles": ["quick.yaml"], "artifacts": ["int8"]},
        "gate": {"baseline": "previous", "threshold": 5.0},  # a tiny model timed for 0.2 s: only gross changes
    }
    r.update(changes)
    return r


def statuses(result) -> dict[str, str]:
    return {j["name"]: j["status"] for j in result.index["jobs"]}


@pytest.fixture(scope="module")
def first_run(workspace):
    from compress.recipes.execute import run_recipe

    path = write(workspace / "recipe.yaml", recipe())
    return run_recipe(path, workspace / "run")


# -- the schema ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps_text, where, words", [
    ("  int8: {quantize: {precison: int8}}\n", 5, ["steps.int8.quantize.precison", "unknown field"]),
    ("  int8: {from: nope, quantize: {}}\n", 5, ["steps.int8.from", "no step named 'nope'"]),
    ("  int8: {export: {}, quantize: {}}\n", 5, ["steps.int8", "exactly one of"]),
    ("  int8:\n    from: teacher\n    quantize: {}\n", 6, ["quantize cannot take the output of the teacher"]),
    ("  onnx: {export: {opset: 3}}\n", 5, ["steps.onnx.export.opset"]),
])
def test_errors_name_the_file_line_and_field(tmp_path, steps_text, where, words):
    from compress.recipes.schema import RecipeError, read_recipe

    p = tmp_path / "r.yaml"
    p.write_text(f"name: r\nteacher: t\ndata: {{train: a.tsv}}\nsteps:\n{steps_text}", encoding="utf-8")
    with pytest.raises(RecipeError) as e:
        read_recipe(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:{where}: "), msg
    for w in words:
        assert w in msg, msg


def test_graph_and_section_errors(tmp_path):
    from compress.recipes.schema import RecipeError, read_recipe

    p = write(tmp_path / "r.yaml", "name: r\nteacher: t\nsteps:\n  a: {from: b, prune: {}}\n  b: {from: a, prune: {}}\n")
    with pytest.raises(RecipeError, match=r"r.yaml:4: steps.a.from: the from: links form a cycle"):
        read_recipe(p)
    p = write(tmp_path / "r.yaml", "name: r\nteacher: t\nsteps:\n  s: {distill: {}}\nvalidate:\n  profiles: [host]\n"
              "  artifacts: [s]\n")
    with pytest.raises(RecipeError, match=r"r.yaml:7: validate.artifacts\[0\]: 's' is not an export or quantize step"):
        read_recipe(p)
    p = write(tmp_path / "r.yaml", "name: r\nteacher: t\nsteps:\n  s: {distill: {}}\n  s: {distill: {}}\n")
    with pytest.raises(RecipeError, match=r"r.yaml:5: invalid YAML: duplicate key 's' \(first at line 4\)"):
        read_recipe(p)


def test_cli_bad_recipe_is_one_line_exit_2(capfd, tmp_path):
    p = write(tmp_path / "r.yaml", "name: r\nteacher: t\nsteps:\n  int8: {quantize: {mode: fast}}\n")
    assert_one_line_error(in_process(capfd, "run", p), f"{p}:4:", "steps.int8.quantize.mode")
    assert_one_line_error(in_process(capfd, "run", tmp_path / "missing.yaml"), "recipe file not found")


# -- running, caching, resuming -----------------------------------------------------------------------------------


def test_a_run_writes_every_artifact_report_and_the_index(first_run, workspace):
    run = workspace / "run"
    idx = json.loads((run / "index.json").read_text())
    assert [j["name"] for j in idx["jobs"]] == ["student", "pruned", "onnx", "int8", "validate/int8@quick"]
    assert all(j["status"] == "ran" for j in idx["jobs"])
    assert first_run.verdict == "pass" and first_run.exit_code == 0
    int8 = next(j for j in idx["jobs"] if j["name"] == "int8")
    assert (int8["format"], int8["precision"]) == ("onnx", "int8") and (run / int8["path"] / "manifest.json").is_file()
    val = next(j for j in idx["jobs"] if j["verb"] == "validate")
    report = json.loads((run / val["report"]).read_text())
    assert report["verdict"] == "pass" and report["profile"]["name"] == "quick"
    assert [s["stage"] for s in report["artifact"]["lineage"]] == ["distill", "prune", "export", "quantize"]
    assert first_run.gate == [] or all(g["verdict"] == "new" for g in first_run.gate)  # nothing to compare with yet
    assert (run / "recipe.yaml").is_file() and not (run / "work").exists() or not any((run / "work").iterdir())


def test_a_rerun_is_all_cached_and_an_edit_reruns_only_what_it_changes(first_run, workspace):
    from compress.recipes.execute import plan_recipe, run_recipe

    path = workspace / "recipe.yaml"
    again = run_recipe(path, workspace / "run", html=False)
    assert set(statuses(again).values()) == {"cached"}
    assert all(g["verdict"] == "pass" and "same (cached) measurement" in g["note"] for g in again.gate)
    # edit only the quantize step: distillation, pruning and export are reused
    r = recipe()
    r["steps"]["int8"]["quantize"] = {"int8": {"per_channel": False}}
    write(path, r)
    _, _, rows = plan_recipe(path, workspace / "run")
    assert {x["name"]: x["cached"] for x in rows} == {
        "student": True, "pruned": True, "onnx": True, "int8": False, "validate/int8@quick": False}
    edited = run_recipe(path, workspace / "run", html=False)
    assert statuses(edited) == {"student": "cached", "pruned": "cached", "onnx": "cached", "int8": "ran",
                                "validate/int8@quick": "ran"}
    # and back: the first quantization is still in the store
    write(path, recipe())
    back = run_recipe(path, workspace / "run", html=False)
    assert set(statuses(back).values()) == {"cached"}


def test_rerun_remeasures_and_the_gate_compares_two_measurements(first_run, workspace):
    from compress.recipes.execute import run_recipe

    write(workspace / "recipe.yaml", recipe())
    result = run_recipe(workspace / "recipe.yaml", workspace / "run", rerun=["validate/*"], html=False)
    assert statuses(result)["validate/int8@quick"] == "ran" and statuses(result)["int8"] == "cached"
    (g,) = result.gate
    assert g["name"] == "validate/int8@quick" and not g["note"]
    assert {m["metric"] for m in g["metrics"]} >= {"latency p50 ms", "accuracy", "size MB"}
    acc = next(m for m in g["metrics"] if m["metric"] == "accuracy")
    assert acc["verdict"] == "pass" and acc["note"] == "identical predictions on every row"
    assert result.verdict == "pass"


def test_an_interrupted_run_resumes_where_it_stopped(workspace, monkeypatch, bert_classifier):
    import compress.stages.quantize as q
    from compress.recipes.execute import read_index, run_recipe

    r = recipe(name="resume")
    r["steps"] = {"onnx": {"export": {}}, "int8": {"from": "onnx", "quantize": {}}}
    r["validate"]["artifacts"] = ["int8"]
    path = write(workspace / "resume.yaml", r)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(q, "quantize", boom)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(path, workspace / "run-resume", html=False)
    idx = read_index(workspace / "run-resume")
    assert {j["name"]: j["status"] for j in idx["jobs"]} == {
        "onnx": "ran", "int8": "interrupted", "validate/int8@quick": "pending"}
    assert not list((workspace / "run-resume" / "steps").glob("int8-*"))  # nothing half-written in the store
    monkeypatch.undo()
    result = run_recipe(path, workspace / "run-resume", html=False)
    assert statuses(result) == {"onnx": "cached", "int8": "ran", "validate/int8@quick": "ran"}


def test_dry_run_prints_the_plan_with_cache_hits(capfd, first_run, workspace):
    write(workspace / "recipe.yaml", recipe())
    proc = in_process(capfd, "run", workspace / "recipe.yaml", "--run-dir", workspace / "run", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"student\s.*distill.*teacher.*yes", proc.stdout), proc.stdout
    assert "5 of 5 jobs cached" in proc.stdout


def test_from_artifact_writes_a_recipe_that_reproduces_the_lineage(capfd, first_run, workspace, tmp_path):
    from compress.recipes.plan import make_plan
    from compress.recipes.schema import read_recipe

    int8 = workspace / "run" / next(j for j in first_run.index["jobs"] if j["name"] == "int8")["path"]
    out = tmp_path / "again.yaml"
    proc = in_process(capfd, "run", "--from-artifact", int8, out)
    assert proc.returncode == 0, proc.stderr
    r = read_recipe(out)
    assert [s.verb for s in r.steps.values()] == ["distill", "prune", "export", "quantize"]
    assert r.steps["student"].distill == {"student": {"layers": 1}, "training": {"max_steps": 4, "batch_size": 8},
                                         "evaluation": {"every": 2}}
    assert r.steps["pruned"].prune["ffn"] == 0.5 and r.steps["pruned"].from_ == "student"
    assert Path(r.data.train) == (workspace / "train.tsv").resolve()
    assert Path(r.teacher) == (workspace / "teacher").resolve()
    make_plan(r, out.parent)  # every path it names exists
    assert in_process(capfd, "run", "--from-artifact", int8, out).returncode == 2  # no overwrite without --force


def test_a_revised_verb_rebuilds_only_its_own_jobs_and_those_after_them(workspace, monkeypatch):
    """A verb whose output changed for the same settings (``REVISIONS``) gets new keys, so the store's outputs of
    the older code are rebuilt, not reused; the jobs before it keep their keys (a student is not retrained)."""
    from compress.recipes import plan as plan_mod
    from compress.recipes.schema import read_recipe

    r = read_recipe(write(workspace / "revised.yaml", recipe()))
    keys = lambda: {j.name: j.key for j in plan_mod.make_plan(r, workspace).jobs}  # noqa: E731
    now = keys()
    monkeypatch.setitem(plan_mod.REVISIONS, "quantize", plan_mod.REVISIONS.get("quantize", 0) + 1)
    revised = keys()
    same = {n for n in now if now[n] == revised[n]}
    assert same == {"student", "pruned", "onnx"}, same


# -- the gate over run directories, and the HTML ------------------------------------------------------------------


@pytest.mark.after_transformers
def test_gate_cli_on_run_directories(capfd, first_run, workspace, tmp_path):
    from compress.recipes.execute import run_recipe

    base = tmp_path / "base"
    shutil.copytree(workspace / "run", base)
    write(workspace / "recipe.yaml", recipe())
    run_recipe(workspace / "recipe.yaml", workspace / "run", rerun=["validate/*"], html=False)
    proc = in_process(capfd, "gate", workspace / "run", "--baseline", base, "--markdown", tmp_path / "gate.md",
                      "--threshold", "5", "--junit", tmp_path / "gate.xml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'name="validate/int8@quick"' in (tmp_path / "gate.xml").read_text()
    assert "int8@quick" in (tmp_path / "gate.md").read_text()
    # a run validated on another profile is not comparable: exit 3, and what differs is named
    other = recipe(name="other")
    other["validate"]["profiles"] = ["other.yaml"]
    write(workspace / "other-recipe.yaml", other)
    run_recipe(workspace / "other-recipe.yaml", tmp_path / "other-run", html=False)
    # the job names differ (int8@other): pair them through the report files instead
    new = next((tmp_path / "other-run" / "steps").glob("validate-int8@other-*/*/report/report.json"))
    old = next((workspace / "run" / "steps").glob("validate-int8@quick-*/*/report/report.json"))
    proc = in_process(capfd, "gate", new, "--baseline", old)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "profile: 'quick' in the baseline, 'other' now" in proc.stdout


def test_html_reports_are_self_contained(first_run, workspace):
    page = (workspace / "run" / "report.html").read_text()
    assert "<svg" in page and "Pareto" in page and "int8@quick" in page and "Provenance" in page
    assert not re.search(r"<script|<link|<img|src=\"http|href=\"http|@import", page)
    val = next(j for j in first_run.index["jobs"] if j["verb"] == "validate")
    single = (workspace / "run" / val["report"]).with_name("report.html").read_text()
    assert "Latency distribution" in single and "What takes the bytes" in single and "<svg" in single


@pytest.mark.parametrize("teacher", ["/proc", "/etc"])
def test_a_teacher_that_is_no_checkpoint_is_refused_before_it_is_read(capfd, tmp_path, teacher):
    """Checked by what marks a checkpoint, before the plan hashes the directory's content (it used to read /etc
    through, and fail on /proc with "cannot write /proc/1/cwd")."""
    from tests.builders.cli import assert_one_line_error, in_process

    (tmp_path / "r.yaml").write_text(f"name: r\nteacher: {teacher}\nsteps:\n  onnx: {{export: {{}}}}\n")
    proc = in_process(capfd, "run", tmp_path / "r.yaml", "--dry-run", cwd=tmp_path)
    assert_one_line_error(proc, f"teacher: {teacher} is not a checkpoint directory", code=2)
    assert not (tmp_path / "runs").exists()


def test_a_recipe_fine_tunes_its_teacher_from_a_base_and_the_lineage_starts_there(capfd, workspace, bert_encoder,
                                                                                  tmp_path):
    """teacher: {finetune: {base: ...}}: the fine-tune is the run's first job, cached and keyed like every step; the
    chain takes its output as the teacher, and the INT8 artifact's lineage starts at the base."""
    from compress.artifact import load_artifact
    from compress.recipes.execute import run_recipe
    from compress.recipes.schema import read_recipe
    from compress.teachers.load import load_teacher

    shutil.copytree(bert_encoder, workspace / "base", dirs_exist_ok=True)
    tuned = recipe(name="tuned", teacher={"finetune": {"base": "base", "training": {"max_steps": 4, "batch_size": 8,
                                                                                    "lr": 1e-3}}},
                   steps={"student": {"distill": {"student": {"layers": 1},
                                                  "training": {"max_steps": 2, "batch_size": 8}}},
                          "onnx": {"from": "student", "export": {}}, "int8": {"from": "onnx", "quantize": {}}})
    del tuned["gate"]
    path = write(workspace / "tuned.yaml", tuned)
    first = run_recipe(path, workspace / "tuned-run", html=False)
    assert list(statuses(first))[0] == "teacher" and set(statuses(first).values()) == {"ran"}
    teacher_out = workspace / "tuned-run" / first.index["jobs"][0]["path"]
    assert first.index["teacher"] == str(teacher_out) and first.index["jobs"][0]["mode"] == "full"
    int8 = load_artifact(workspace / "tuned-run" / next(j for j in first.index["jobs"] if j["name"] == "int8")["path"])
    assert int8.manifest.steps[0].stage == "finetune"
    assert int8.manifest.source.sha256 == load_teacher(bert_encoder).sha256  # the lineage starts at the base
    tuned_teacher = int8.manifest.steps[0].metrics["teacher"]  # ... and names the teacher it is judged against
    assert Path(tuned_teacher["path"]) == teacher_out.resolve()
    assert tuned_teacher["sha256"] == load_teacher(teacher_out).sha256
    report = json.loads((workspace / "tuned-run" / next(j for j in first.index["jobs"] if j["verb"] == "validate")[
        "report"]).read_text())
    assert not any("differs from" in w for w in report["warnings"]), report["warnings"]
    again = run_recipe(path, workspace / "tuned-run", html=False)
    assert set(statuses(again).values()) == {"cached"}
    out = tmp_path / "again.yaml"
    assert in_process(capfd, "run", "--from-artifact", int8.path, out).returncode == 0
    r = read_recipe(out)
    assert r.teacher.finetune["training"]["max_steps"] == 4 and Path(r.teacher.base) == (workspace / "base").resolve()
    assert [s.verb for s in r.steps.values()] == ["distill", "export", "quantize"]


def test_a_fine_tuned_teacher_needs_training_data_and_finetunes_options(capfd, workspace):
    bad = recipe(teacher={"finetune": {"base": "teacher", "epoch": 1}})
    proc = in_process(capfd, "run", write(workspace / "bad.yaml", bad), "--dry-run")
    assert_one_line_error(proc, "teacher.finetune.epoch")
    no_data = recipe(teacher={"finetune": {"base": "teacher"}}, data={})
    proc = in_process(capfd, "run", write(workspace / "bad.yaml", no_data), "--dry-run")
    assert_one_line_error(proc, "data.train")
