"""The end of a forward-pass teacher's search (:class:`compress.search.encoder.EncoderSpace`): which short candidates
get full training, the side-by-side timing, the choice (or the closest candidate and a diagnosis), the held-out check. ``s`` is the :class:`compress.search.directory.Search`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from compress.search.config import Objective
from compress.search.encoder_space import from_params
from compress.search.space import RUNTIME_SETTINGS, SearchResult, measured_beside, violation
from compress.search.study import public_url

ACCURACY_BUDGETS = ("min_accuracy_retention", "min_agreement", "min_output_cosine", "min_output_snr_db")
TIMING_BUDGETS = ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "min_throughput", "min_speedup")
TIMING_NOISE = 0.25  # how far over a timing budget a short candidate may be and still be promoted (run-to-run noise)


def measured(study, fidelity: str | None = None) -> list:
    from optuna.trial import TrialState

    return [t for t in study.trials if t.state == TrialState.COMPLETE and t.user_attrs.get("p50_ms") is not None
            and (fidelity is None or t.user_attrs.get("fidelity") == fidelity) and "duplicate_of" not in t.user_attrs]


def objective_value(s, attrs: dict[str, Any]) -> float:
    if s.config.objective is Objective.size:
        return attrs["size_mb"]
    if s.config.objective is Objective.energy_proxy:
        return attrs["estimate"]["energy_mj"]
    return attrs.get("side_by_side_p50_ms") or attrs["p50_ms"]


def _meets_all_but_accuracy(attrs: dict[str, Any]) -> bool:
    """Every budget but accuracy holds, timing budgets within their noise: a short candidate 10% over a p95 budget
    on a shared machine may well meet it when the full candidate is measured, so it is not ruled out here."""
    return all(b["status"] != "fail" or (n in TIMING_BUDGETS and violation(b) <= TIMING_NOISE)
               for n, b in attrs["budgets"].items() if n not in ACCURACY_BUDGETS)


def promote(s, study) -> list[tuple[int, dict[str, Any]]]:
    """The short candidates worth full training: those meeting every budget but accuracy (full training is what
    raises accuracy), on the retention x objective front, best retention first; else the closest to the budgets."""
    shorts = measured(study, "short")
    pool = [t for t in shorts if _meets_all_but_accuracy(t.user_attrs)]
    if pool:
        front = [t for t in pool if not any(
            (u.user_attrs["retention"] or 0) >= (t.user_attrs["retention"] or 0)
            and objective_value(s, u.user_attrs) <= objective_value(s, t.user_attrs)
            and u is not t and ((u.user_attrs["retention"] or 0) > (t.user_attrs["retention"] or 0)
                                or objective_value(s, u.user_attrs) < objective_value(s, t.user_attrs)) for u in pool)]
        rest = sorted((t for t in pool if t not in front), key=lambda t: -(t.user_attrs["retention"] or 0))
        ranked = sorted(front, key=lambda t: -(t.user_attrs["retention"] or 0)) + rest
    else:
        ranked = sorted(shorts, key=lambda t: sum(max(v, 0.0) for v in t.user_attrs["constraints"]))
    out, seen = [], set()
    for t in ranked:
        key = json.dumps(t.params, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append((t.number, t.params))
        if len(out) >= s.config.full.promote:
            break
    return out


def _eval_inputs(path: str, preprocess) -> list:
    """The first 64 inputs of the data the search ranks on (``Search.eval``: --eval, or its ranking half when the
    holdout is split from it), the texts every candidate's validation timed: the side-by-side batch is built from them."""
    from compress.data.inputs import load_inputs

    return list(load_inputs(path, preprocess, limit=64, texts_only=True).inputs)


def teacher_entry(s) -> tuple[str, str]:
    """How the teacher is named and run beside the candidates: PyTorch FP32, or a model file in its own runtime."""
    if s.space.shape.kind == "file":  # an OpenVINO IR (.xml) or an ONNX file (compress.teachers.model_files)
        from compress.formats import FORMATS, file_format

        runtime = FORMATS[file_format(s.config.teacher, adopted=True)].runtime
        return f"teacher (FP32 file in {runtime})", runtime
    return "teacher (PyTorch FP32)", "torch"


def _locate(s, full: list) -> dict[int, Path | None]:
    """Where this machine finds each full candidate's artifact: where it was built, or a verified copy fetched from the
    artifact store into ``SEARCH/fetched``; None when neither (:func:`compress.search.artifacts.locate`)."""
    from compress.search.artifacts import locate

    out = {}
    for t in full:
        out[t.number] = locate(s.artifacts, t.user_attrs, s.dir / "fetched")
        if out[t.number] is not None and out[t.number] != Path(t.user_attrs["artifact"]):
            s.say(f"trial {t.number}: built by {t.user_attrs.get('built_by')}, fetched from the artifact store "
                  f"({out[t.number]})")
    return out


def _side_by_side(s, trials: list, where: dict[int, Path | None]) -> dict[str, Any] | None:
    """The full candidates (their artifacts at ``where``) and the PyTorch FP32 teacher timed in alternating rounds in
    one process."""
    from compress.artifact import load_artifact
    from compress.formats import FORMATS
    from compress.host.measure import measure_interleaved
    from compress.runtimes.base import RuntimeSettings, load_runtime
    from compress.teachers.load import load_source
    from compress.validation.common import latency_texts

    if not trials or any(t.user_attrs.get("estimated") for t in trials):
        return None  # this machine is not the profile's device: the reports' estimates are all there is
    meas = s.profile.measure
    settings = RuntimeSettings(threads=s.profile.runtime.threads or s.profile.hardware.cores)
    backends, runs = [], {}
    texts = None
    entries = [(f"trial {t.number}", load_artifact(where[t.number]), None, t.params.get("threads"))
               for t in trials]
    key, teacher_runtime = teacher_entry(s)
    entries.append((key, load_source(s.config.teacher), teacher_runtime, None))
    for name, art, runtime, threads in entries:
        if texts is None:
            texts = latency_texts(_eval_inputs(s.eval, art.manifest.preprocess), meas.batch_size,
                                  meas.sequence_length, art.manifest.preprocess)
        rt = runtime or FORMATS[art.format].runtime
        opts = {} if rt == "torch" else dict(RUNTIME_SETTINGS[rt]) if rt != s.profile.runtime.name else \
            {"provider": s.profile.runtime.provider, "options": dict(s.profile.runtime.options)}
        b = load_runtime(art, rt, RuntimeSettings(threads=threads or settings.threads, **opts))
        backends.append(b)
        batch = b.encode(texts, pad_to=meas.sequence_length)
        runs[name] = (lambda b=b, batch=batch: (b.run(batch), b.synchronize()))
    s.say(f"timing {len(runs)} models side by side in alternating rounds ...")
    stats = measure_interleaved(runs, batch_size=meas.batch_size, warmup=meas.warmup, min_runs=meas.min_runs,
                                min_duration_s=meas.min_duration_s, max_runs=meas.max_runs)
    for b in backends:
        b.close()
    return {name: {"p50_ms": st.p50, "p95_ms": st.p95, "n": st.n} for name, st in stats.items()}


def conclude(s, study) -> SearchResult:
    from compress.profiles.budgets import judge
    from compress.reports.html import pareto_front

    done = measured(study)
    points = [_point(t) for t in done]
    front_names = pareto_front([p for p in points if p["retention"] is not None])
    full = measured(study, "full")
    where = _locate(s, full)
    elsewhere = [t.number for t in full if where[t.number] is None]
    if elsewhere:  # a shared study: other machines built these, and neither a shared filesystem nor a store has them
        s.say(f"trials {', '.join(map(str, elsewhere))} were built on another machine and are not reachable from here "
              "(no shared search directory, no --artifact-store): judged by their reports, not chosen")
    sbs = _side_by_side(s, [t for t in full if t.number not in elsewhere], where)
    teacher_key = teacher_entry(s)[0]
    for p, t in zip(points, done):
        p["front"] = p["name"] in front_names
        if sbs and f"trial {t.number}" in sbs:
            p["side_by_side_p50_ms"] = sbs[f"trial {t.number}"]["p50_ms"]
    by_number = {p["trial"]: p for p in points}
    for t in full:
        if where[t.number] is not None and where[t.number] != Path(t.user_attrs["artifact"]):  # fetched from the store
            by_number[t.number]["artifact"] = str(where[t.number])
            # paths of here
            by_number[t.number]["recipe"] = str(s.space.recipe(t.number, from_params(t.params), s.space.full))
    passing = [by_number[t.number] for t in full if t.user_attrs["verdict"] in ("pass", "unverified")
               and t.number not in elsewhere]
    chosen = min(passing, key=lambda p: objective_value(s, p)) if passing else None
    diagnosis: list[str] = []
    closest = None
    skipped = [{"trial": t.number, "label": t.user_attrs.get("label"), "why": t.user_attrs.get("skipped"),
                "estimate": t.user_attrs.get("estimate")} for t in study.trials
               if t.user_attrs.get("skipped") and "duplicate_of" not in t.user_attrs]
    if chosen is None:
        diagnosis = diagnose(s, points, skipped)
        fulls = [by_number[t.number] for t in full if t.number not in elsewhere]
        closest = dict(min(fulls, key=_violation)) if fulls else None  # checked on held-out data too
    else:
        chosen = dict(chosen)
        (s.dir / "chosen.yaml").unlink(missing_ok=True)
        shutil.copyfile(chosen["recipe"], s.dir / "chosen.yaml")
    for pick in filter(None, (chosen, closest)):
        pick["holdout"] = _holdout(s, pick)
        pick["vs_teacher_pytorch"] = {"teacher_size_mb": _dir_mb(Path(s.config.teacher))}
        pick["vs_teacher_pytorch"]["smaller"] = pick["vs_teacher_pytorch"]["teacher_size_mb"] / pick["size_mb"]
        if sbs:
            t = sbs[teacher_key]["p50_ms"]
            pick["vs_teacher_pytorch"] |= {"teacher_p50_ms": t, "speedup": t / sbs[f"trial {pick['trial']}"]["p50_ms"]}
    failed = [{"trial": t.number, "label": t.user_attrs.get("label"), "error": t.user_attrs.get("error")}
              for t in study.trials if t.user_attrs.get("error")]
    summary = {
        "search_dir": str(s.dir), "profile": s.profile.name, "objective": s.config.objective.value,
        "budgets": {b.name: {"limit": b.limit, "comparison": b.comparison} for b in judge(s.profile.budgets, {})},
        "teacher": str(Path(s.config.teacher).resolve()), "eval": s.eval, "holdout": s.holdout,
        "space": s.space.choices, "fidelities": {"short": s.space.short.__dict__, "full": s.space.full.__dict__},
        "trials": len(study.trials), "repeats": sum("duplicate_of" in t.user_attrs for t in study.trials),
        "measured": points, "skipped": skipped, "failed": failed,
        "promoted": study.user_attrs.get("promoted", []), "side_by_side": sbs, "chosen": chosen, "closest": closest,
        "diagnosis": diagnosis, "storage": public_url(s.config.study.storage) if s.config.study.storage
        else str(s.dir / "study.db"), "study": s.config.study.name, "artifact_store": s.config.study.artifact_store,
        "worker": s.worker, "workers": sorted({t.user_attrs["built_by"] for t in done if t.user_attrs.get("built_by")}),
        "not_reachable": elsewhere,
    }
    return SearchResult(s.dir, summary, chosen, diagnosis)


def _point(t) -> dict[str, Any]:
    a = t.user_attrs
    return {"trial": t.number, "name": f"trial {t.number}", "label": f"#{t.number} {a['label']}",
            "fidelity": a["fidelity"], "retention": a["retention"], "agreement": a["agreement"],
            "p50_ms": a["p50_ms"], "size_mb": a["size_mb"], "estimated": a.get("estimated", False),
            "verdict": a["verdict"], "budgets": a["budgets"], "recipe": a["recipe"], "report": a["report"],
            "artifact": a["artifact"], "estimate": a["estimate"], "seconds": a["seconds"], "params": t.params,
            "built_by": a.get("built_by")}


def _dir_mb(d: Path) -> float:
    """The teacher's weights in MB: a checkpoint's weight files, or a model file with its weights."""
    if d.is_file():
        from compress.teachers.load import load_source

        return load_source(d).size_bytes() / 2**20
    return sum(f.stat().st_size for f in d.iterdir() if f.is_file() and f.suffix in (".safetensors", ".bin")) / 2**20


def _holdout(s, chosen: dict[str, Any]) -> dict[str, Any]:
    """The chosen artifact validated on the held-out data, on the same profile."""
    from compress.reports.render import write_report
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    out = s.dir / "holdout"
    report_json = out / "report" / "report.json"
    if report_json.is_file() and json.loads(report_json.read_text(encoding="utf-8"))["artifact"]["path"] == chosen["artifact"]:
        report = json.loads(report_json.read_text(encoding="utf-8"))  # resumed: validated already
    else:
        s.say(f"validating trial {chosen['trial']} on the held-out data ({s.holdout}) ...")
        prof = s.profile_for(from_params(chosen["params"]))
        r = validate(chosen["artifact"], ValidateConfig(profile=prof, data=s.holdout, teacher=s.config.teacher,
                                                        metric=s.config.metric, measure=measured_beside(s.budgets)))
        if out.exists():
            shutil.rmtree(out)
        write_report(r, out / "report")
        report = r.model_dump(mode="json")
    m = report["metrics"]
    return {"verdict": report["verdict"], "retention": m.get("retention"), "agreement": m.get("agreement"),
            "metric": m.get("metric"), "teacher_metric": m.get("teacher_metric"),
            "p50_ms": (m.get("latency_ms") or {}).get("p50"), "rows": m.get("eval_samples"),
            "report": str(report_json)}


def _violation(p: dict[str, Any]) -> float:
    """How far a candidate is from meeting every budget (0: it meets them all)."""
    return sum(max(violation(b), 0.0) for b in p["budgets"].values())


#: how a skip reason (Search.cannot_meet) begins -> the budget it names
SKIP_BUDGETS = {"size": "max_model_size_mb", "p50": "latency_p50_ms", "speedup": "min_speedup"}


def diagnose(s, points: list[dict[str, Any]], skipped: list[dict[str, Any]] | None = None) -> list[str]:
    """Why nothing met every budget: which budget binds, the closest candidate, and what it would need."""
    if not points:
        by_budget: dict[str, list[str]] = {}
        for k in skipped or []:
            for part in str(k.get("why") or "").split("; "):
                name = SKIP_BUDGETS.get(part.split(" ", 1)[0])
                if name:
                    by_budget.setdefault(name, []).append(part)
        if by_budget:
            name, parts = max(by_budget.items(), key=lambda kv: len(kv[1]))
            return [f"no candidate was measured: {len(parts)} of {len(skipped or [])} sampled candidates were skipped "
                    f"because their estimate misses {name} (e.g. {parts[0]})",
                    f"binding budget: {name} (relax it in the profile: no candidate in --space comes near it)"]
        return ["no candidate was measured: raise --time-budget, or widen --space (every sampled candidate was "
                "skipped by its estimate or failed)"]
    lines = []
    fails: dict[str, int] = {}
    for p in points:
        for n, b in p["budgets"].items():
            if b["status"] == "fail":
                fails[n] = fails.get(n, 0) + 1
    for n, k in sorted(fails.items(), key=lambda kv: -kv[1]):
        lines.append(f"{n} fails for {k} of {len(points)} measured candidates")

    total = _violation
    best = min(points, key=total)
    missing = [(n, b) for n, b in best["budgets"].items() if b["status"] == "fail"]
    need = "; ".join(f"{n} {b['measured']:.4g} vs {b['comparison']} {b['limit']:g} "
                     f"({_needed(b)})" for n, b in missing)
    lines.append(f"closest: trial {best['trial']} ({best['label']}, {best['fidelity']} fidelity): {need}")
    for n, _ in missing:
        ok = [p for p in points if p["budgets"].get(n, {}).get("status") != "fail"]
        if ok:
            alt = min(ok, key=total)
            lines.append(f"meeting {n}: trial {alt['trial']} ({alt['label']}) fails "
                         + ", ".join(f"{m} {c['measured']:.4g}" for m, c in alt["budgets"].items() if c["status"] == "fail"))
    binding = max(fails, key=fails.get) if fails else None
    if binding:
        lines.append(f"binding budget: {binding} (relax it in the profile, give the search more time, or widen the "
                     "space: deeper students keep more accuracy, narrower ones run faster)")
    return lines


def _needed(b: dict[str, Any]) -> str:
    x, lim = float(b["measured"]), float(b["limit"])
    if b["comparison"] == "<=":
        return f"needs {100 * (x - lim) / x:.0f}% less"
    return f"needs +{lim - x:.4g}"
