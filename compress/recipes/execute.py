"""Running a plan: every job in order, each output cached in the run directory's store under its key.

The run directory::

    RUN/index.json          every job: key, where its output is, cached or ran, seconds, verdict, headline figures
                            (.last-finished.json: the same, of the last run that finished: the gate's "previous")
    RUN/recipe.yaml         the recipe as run
    RUN/steps/NAME-KEY/     one job's output: an artifact, a validation report directory, or a package
    RUN/steps/NAME-KEY.json the job's record, written last (its presence marks the output complete)
    RUN/work/NAME-KEY/      distillation checkpoints while a distill job runs (an interrupted run resumes from them)
    RUN/teacher-cache/      the teacher's outputs on the transfer rows, shared by every distillation in the run
    RUN/gate.json, gate.md  the gate against the baseline run, when the recipe has gate:
    RUN/report.html         the run's HTML report

An interrupted run leaves only complete outputs in the store (each job writes to a staging directory and renames
it), so running the recipe again continues where it stopped.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.errors import EdgeCompressError, OutputExistsError
from compress.interrupt import ensure_signal_stack
from compress.progress import Progress, sink
from compress.recipes.plan import Job, Plan, make_plan, rough_seconds
from compress.recipes.schema import read_recipe, recipe_file
from compress.recipes.verbs import VERBS, StepContext
from compress.validation.gate import RUN_INDEX, RUN_MARKER

log = logging.getLogger(__name__)

MARKER, INDEX = RUN_MARKER, RUN_INDEX
LAST_FINISHED = ".last-finished.json"  # the index of the last run that finished: the gate's "previous"


@dataclass
class RunResult:
    run_dir: Path
    index: dict[str, Any]
    verdict: str  #: pass, unverified, anomalous, fail, regressed, not comparable
    gate: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        from compress.profiles.budgets import VERDICTS

        ends = ("fail", "regressed", "not comparable", "anomalous")  # unverified steps end a run with 0
        return VERDICTS[self.verdict][0] if self.verdict in ends else 0


def default_run_dir(recipe_name: str) -> Path:
    return Path("runs") / recipe_name


def _read_json(p: Path) -> dict[str, Any] | None:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_index(run_dir: Path | str) -> dict[str, Any] | None:
    """The run directory's index.json (None: not a run directory, or never started)."""
    return _read_json(Path(run_dir) / INDEX)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _open_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and not (run_dir / MARKER).is_file() and any(run_dir.iterdir()):
        raise OutputExistsError(f"{run_dir} exists and is not an edgecompress run directory",
                                hint="pass another --run-dir (a run directory is reused: it is the recipe's cache)")
    (run_dir / "steps").mkdir(parents=True, exist_ok=True)
    (run_dir / MARKER).write_text("an edgecompress run directory: index.json lists what is in it\n")


def completed_record(run_dir: Path, job: Job) -> dict[str, Any] | None:
    """The job's record when its output is complete in the store (the record is written last)."""
    rec = run_dir / "steps" / f"{job.dirname}.json"
    try:
        data = json.loads(rec.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if (run_dir / data.get("path", "-")).exists() else None


def _output_path(run_dir: Path, job: Job) -> Path:
    """Where the job writes. A validation writes a new directory per measurement, so a re-measured report never
    replaces the one the gate compares it with."""
    out = run_dir / "steps" / job.dirname
    if VERBS[job.verb].stamped:
        out = out / time.strftime("%Y%m%d-%H%M%S")
        while out.exists():
            out = out.with_name(out.name + "-1")
    return out


def plan_recipe(recipe_path: Path | str, run_dir: Path | str | None = None, rerun: Iterable[str] = (),
                overrides: dict[str, Any] | None = None) -> tuple[Plan, Path, list[dict]]:
    """The plan and, per job, whether it is cached and what it will cost (for --dry-run and the run itself).
    ``overrides``: {dotted key: value} over the recipe's (``--set``; :func:`compress.recipes.schema.apply_overrides`)."""
    recipe_path = recipe_file(recipe_path)
    recipe = read_recipe(recipe_path, overrides)
    run = Path(run_dir) if run_dir else default_run_dir(recipe.name)
    plan = make_plan(recipe, recipe_path.parent, run)
    previous = read_index(run) or {}
    before = {j["name"]: j for j in previous.get("jobs", [])}
    rows = []
    for job in plan.jobs:
        rec = completed_record(run, job)
        forced = any(fnmatch.fnmatch(job.name, pat) for pat in rerun)
        cached = rec is not None and not forced
        known = (rec or {}).get("seconds") or (before.get(job.name) or {}).get("build_seconds")
        origin = "base" if VERBS[job.verb].makes_teacher else job.parent or "teacher"
        rows.append({"name": job.name, "verb": job.verb, "from": origin, "key": job.key[:12],
                     "cached": cached, "estimate_s": 0.0 if cached else float(known or rough_seconds(job)),
                     "estimate_from": "cached" if cached else ("an earlier run" if known else "rough")})
    return plan, run, rows


def run_recipe(recipe_path: Path | str, run_dir: Path | str | None = None, *, rerun: Iterable[str] = (),
               progress: Progress | None = None, html: bool = True,
               overrides: dict[str, Any] | None = None) -> RunResult:
    """Run the recipe at ``recipe_path`` (a file, or ``builtin:NAME``) in ``run_dir`` (default runs/<name>), reusing
    every cached output; ``overrides`` set recipe fields by dotted key (``--set``; recorded in index.json)."""
    recipe_path = recipe_file(recipe_path)
    rerun = tuple(rerun)
    plan, run, rows = plan_recipe(recipe_path, run_dir, rerun, overrides)
    if html:
        from compress._optional import require

        for module in ("jinja2", "matplotlib"):
            require(module, "the run's HTML report (or run with --no-html)")
    _open_run_dir(run)
    previous = _read_json(run / LAST_FINISHED)  # the gate's "previous": the last run that finished
    if recipe_path.resolve() != (run / "recipe.yaml").resolve():
        shutil.copyfile(recipe_path, run / "recipe.yaml")
    say = sink(progress)
    index: dict[str, Any] = {
        "recipe": plan.recipe.name, "recipe_file": str(recipe_path.resolve()), "teacher": plan.teacher,
        "teacher_sha256": plan.teacher_digest, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "finished": None, "jobs": [], "verdict": None,
    }
    if overrides:
        index["overrides"] = overrides  # recipe.yaml is the file as written; these were set over it
    index["edgecompress"] = _version()
    entries = {row["name"]: {**row, "status": "pending"} for row in rows}
    index["jobs"] = list(entries.values())
    write_json_atomic(run / INDEX, index)
    t_run = time.perf_counter()
    for n, job in enumerate(plan.jobs, 1):
        entry = entries[job.name]
        if entry["cached"]:
            rec = completed_record(run, job)
            entry.update(status="cached", seconds=0.0, build_seconds=rec.get("seconds"), path=rec["path"],
                         **rec.get("summary", {}))
            say({"phase": "job", "note": f"[{n}/{len(plan.jobs)}] {job.name}: cached ({job.key[:12]})"})
            continue
        say({"phase": "job", "note": f"[{n}/{len(plan.jobs)}] {job.name}: {job.verb} ..."})
        say({"phase": f"job:{job.name}", "label": f"{job.name}: {job.verb}"})
        out = _output_path(run, job)
        entry.update(status="running", path=str(out.relative_to(run)))
        write_json_atomic(run / INDEX, index)
        t0 = time.perf_counter()
        ensure_signal_stack()  # an earlier job's OpenVINO models may have left a freed one (compress.interrupt)
        try:
            summary = _run_job(plan, job, run, out, say)
        except BaseException as e:
            stopped = isinstance(e, KeyboardInterrupt) or getattr(e, "exit_code", None) == 130  # Ctrl-C, SIGTERM
            entry["status"] = "interrupted" if stopped else "failed"
            entry["error"] = str(e)
            write_json_atomic(run / INDEX, index)
            if isinstance(e, EdgeCompressError):
                e.message = f"{job.name}: {e.message}"
            raise
        seconds = round(time.perf_counter() - t0, 2)
        write_json_atomic(run / "steps" / f"{job.dirname}.json",
                          {"name": job.name, "verb": job.verb, "key": job.key, "from": job.parent,
                           "settings": job.settings, "data": job.data, "path": entry["path"], "seconds": seconds,
                           "summary": summary})
        entry.update(status="ran", seconds=seconds, build_seconds=seconds, **summary)
        say({"phase": "job", "note": f"[{n}/{len(plan.jobs)}] {job.name}: done in {seconds:.1f} s"
             + (f", {summary['verdict'].upper()}" if "verdict" in summary else "")})
        write_json_atomic(run / INDEX, index)
    index["seconds"] = round(time.perf_counter() - t_run, 2)
    gate_rows: list[dict[str, Any]] = []
    if plan.recipe.gate is not None:
        gate_rows = gate_run(run, index, plan.recipe.gate, previous)
        index["gate"] = {"baseline": _baseline_label(plan.recipe.gate.baseline, run), "results": gate_rows}
    index["verdict"] = _verdict(index["jobs"], gate_rows)
    index["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json_atomic(run / INDEX, index)
    write_json_atomic(run / LAST_FINISHED, index)
    if html:
        say({"phase": "html", "label": "writing the HTML report"})
        from compress.reports.html import write_run_html

        write_run_html(run, index)
    return RunResult(run, index, index["verdict"], gate_rows)


def _version() -> str:
    from compress import __version__

    return __version__


def _verdict(jobs: list[dict[str, Any]], gate_rows: list[dict[str, Any]]) -> str:
    verdicts = [j.get("verdict") for j in jobs if j.get("verdict")] + [g["verdict"] for g in gate_rows]
    for v in ("fail", "regressed", "not comparable", "anomalous", "unverified"):
        if v in verdicts:
            return v
    return "pass"


# -- one job ----------------------------------------------------------------------------------------------------


def _run_job(plan: Plan, job: Job, run: Path, out: Path, say: Progress) -> dict[str, Any]:
    if VERBS[job.verb].makes_teacher:  # the recipe's teacher, from its base
        src = job.data["base"]
    else:
        src = plan.teacher if job.parent is None else str(run / completed_record(run, plan.job(job.parent))["path"])
    verb = VERBS[job.verb]
    settings = job.settings
    if job.budgets is not None:  # the recipe's budgets over the profile's: a profile that extends it, in the run
        settings = {**settings, "profile": str(_budget_profile(run, job, plan.recipe.format_of(job.parent)))}
    config = verb.config_model().model_validate(settings)
    force = out.exists()  # a --rerun of a cached job, or a leftover of an interrupted one
    ctx = StepContext(run=run, work=run / "work" / job.dirname, teacher=plan.teacher, data=job.data, force=force,
                      say=say)
    return verb.runner()(src, config, out, ctx)


def _budget_profile(run: Path, job: Job, fmt: str) -> Path:
    """``run/profiles/<job>.yaml``: the job's profile with the recipe's budgets (its name kept: the gate compares
    reports of the same profile). Over ``host``, which runs each format in its own runtime, the runtime of the
    artifact's format ``fmt`` is written in (a file that extends host pins host's)."""
    import yaml

    from compress.formats import FORMATS
    from compress.profiles.load import load_profile

    base = job.settings["profile"]
    profile = load_profile(base)
    path = run / "profiles" / f"{job.dirname}.yaml"
    path.parent.mkdir(exist_ok=True)
    data: dict[str, Any] = {"name": profile.name, "extends": base, "budgets": job.budgets}
    if profile.source == "detected" and FORMATS[fmt].runtime != profile.runtime.name:
        data["runtime"] = {"name": FORMATS[fmt].runtime, "provider": None, "options": {}}
    text = yaml.safe_dump(data, sort_keys=False)
    path.write_text(f"# {job.name}: the recipe's budgets over {base}'s (written by edgecompress run)\n{text}",
                    encoding="utf-8")
    return path


# -- the gate over a run ------------------------------------------------------------------------------------------


def _baseline_label(baseline: str, run: Path) -> str:
    return f"the previous run in {run}" if baseline == "previous" else baseline


def gate_run(run: Path, index: dict[str, Any], spec, previous: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Gate every validation of this run against the same artifact × profile in the baseline run."""
    from compress.validation.gate import GateConfig, gate_indexes, runs_markdown

    if spec.baseline == "previous":
        base_index, base_dir = previous or {}, run
    else:
        base_dir = Path(spec.baseline)
        if not base_dir.is_absolute():
            base_dir = Path(index["recipe_file"]).parent / base_dir
        base_index = read_index(base_dir)
        if base_index is None:
            from compress.errors import DataError

            raise DataError(f"gate: {base_dir} is not a run directory (no {INDEX})",
                            hint="name the last release's run directory, or use baseline: previous")
    rows = gate_indexes(run, index, base_dir, base_index, GateConfig(latency_threshold=spec.threshold, alpha=spec.alpha))
    write_json_atomic(run / "gate.json", rows)
    (run / "gate.md").write_text(runs_markdown(rows, new=str(run), baseline=str(base_dir)), encoding="utf-8")
    return rows
