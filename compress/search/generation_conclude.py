"""The end of a generator search: the choice among the candidates meeting every budget (or the closest and which budget
binds), and the chosen artifact's perplexity and top-1 agreement on held-out text. ``s`` is the search
(:class:`compress.search.directory.Search`) over a :class:`compress.search.generation.GeneratorSpace`, which calls
:func:`conclude_generator` as its ``conclude`` hook."""

from __future__ import annotations

from typing import Any

from compress.search.config import Objective
from compress.search.space import SearchResult, violation


def _points(study) -> list[dict[str, Any]]:
    from optuna.trial import TrialState

    return [{"trial": t.number, **t.user_attrs}
            for t in study.trials if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]


def _key(objective: Objective, p: dict[str, Any]) -> tuple[float, float]:
    """Lower is better: the objective, then the perplexity increase."""
    ppl = p["perplexity_increase"] if p["perplexity_increase"] is not None else float("inf")
    if objective is Objective.size:
        return (p["size_mb"], ppl)
    return (-(p["decode_tokens_per_s"] or 0.0), ppl)


def _total_violation(p: dict[str, Any]) -> float:
    return sum(max(c, 0.0) for c in p["constraints"])


def conclude_generator(s, study) -> SearchResult:
    """The choice (every budget met, on the ranking text; best on the objective), its held-out check, the summary."""
    from optuna.trial import TrialState

    points = _points(study)
    passing = [p for p in points if p["verdict"] in ("pass", "unverified")]
    chosen = min(passing, key=lambda p: _key(s.config.objective, p)) if passing else None
    closest = None
    diagnosis: list[str] = []
    if chosen is not None:
        chosen = dict(chosen)
        chosen["holdout"] = _check_held_out(s, chosen)
        h = chosen["holdout"]
        s.say(f"chosen: trial {chosen['trial']} ({chosen['label']}); held-out text: {str(h['verdict']).upper()}, "
              f"perplexity {_pct(h.get('perplexity_increase'))} (ranking {_pct(chosen['perplexity_increase'])}), "
              f"top-1 {_num(h.get('top1_agreement'))}")
    elif points:
        closest = min(points, key=_total_violation)
        diagnosis = binding_budgets(s, points)
        for d in diagnosis:
            s.say(f"diagnosis: {d}")
    failed = [{"trial": t.number, "label": t.user_attrs.get("label"), "error": t.user_attrs.get("error")}
              for t in study.trials if t.state == TrialState.FAIL and t.user_attrs.get("error")]
    if not points and failed:
        diagnosis = [f"no candidate was measured: {len(failed)} failed (trial {failed[0]['trial']}, "
                     f"{failed[0]['label']}: {failed[0]['error']})"]
    summary = {
        "generator": True, "teacher": s.config.teacher, "profile": s.profile.name, "budgets": s.budgets,
        "objective": s.config.objective.value, "eval": s.eval, "holdout": s.holdout,
        "space": {rt: {k: v for k, v in d.items()} for rt, d in s.space.items()},
        "trials": len(study.trials), "measured": points, "failed": failed,
        "repeats": sum(1 for t in study.trials if "duplicate_of" in t.user_attrs),
        "chosen": chosen, "closest": closest, "diagnosis": diagnosis,
    }
    return SearchResult(s.dir, summary, chosen, diagnosis)


def _check_held_out(s, chosen: dict[str, Any]) -> dict[str, Any]:
    """Validate the chosen artifact on the held-out text (quality only: its speed was measured on the ranking run) and
    judge the profile's perplexity and top-1 budgets there."""
    from compress.artifact import load_artifact
    from compress.profiles.budgets import BudgetStatus, quality_of
    from compress.recipes.execute import write_json_atomic

    s.say(f"held-out check: trial {chosen['trial']} on {s.holdout} ...")
    report = s.space.validate(load_artifact(chosen["artifact"]), s.holdout, runtime=chosen["runtime"], timing=False,
                        teacher=chosen.get("reference"))
    out = s.dir / "holdout"
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", report.model_dump(mode="json"))
    judged = [b for b in report.budgets if b.name in quality_of("generation")]
    m = report.metrics
    return {"verdict": "fail" if any(b.status == BudgetStatus.failed for b in judged) else "pass",
            "perplexity": m.get("perplexity"), "perplexity_increase": m.get("perplexity_increase"),
            "top1_agreement": m.get("top1_agreement"), "kl_mean": m.get("kl_mean"),
            "windows": (m.get("generation") or {}).get("windows"),
            "budgets": {b.name: {"limit": b.limit, "measured": b.measured, "status": str(b.status)} for b in judged},
            "report": str(out / "report.json")}


def binding_budgets(s, points: list[dict[str, Any]]) -> list[str]:
    """Which budgets bind: per budget, how many candidates meet it and the best figure measured."""
    out = []
    for name in s.budgets:
        seen = [(p, p["budgets"][name]) for p in points if name in p["budgets"]
                and p["budgets"][name]["measured"] is not None]
        if not seen:
            continue
        met = [p for p, b in seen if violation(b) <= 0]
        best_p, best = min(seen, key=lambda pb: violation(pb[1]))
        cmp = "at most" if best["comparison"] == "<=" else "at least"
        out.append(f"{name}: {len(met)} of {len(seen)} candidates meet it ({cmp} {best['limit']:g}); best "
                   f"{best['measured']:.4g} (trial {best_p['trial']}, {best_p['label']})")
    binding = [d for d in out if d.split(": ", 1)[1].startswith("0 of")]
    if binding:
        out.append("no candidate meets " + ", ".join(d.split(":")[0] for d in binding)
                   + ": relax it, or widen --space (more 8-bit layers: int8=0.05,0.02; a runtime not tried)")
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2%}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
