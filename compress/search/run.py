"""Budget-driven search: an Optuna study over candidates, each built and validated as a recipe in one shared store.

The search directory::

    SEARCH/study.db                 the Optuna study (SQLite; --storage names a shared database instead)
    SEARCH/store/                   the recipe run directory every candidate runs in: steps/ is the cache, so a
                                    student or pruned model that two candidates share is built once
    SEARCH/candidates/NNNN-F.yaml   trial NNNN's recipe at fidelity F (short or full): re-run it with
                                    ``edgecompress run SEARCH/candidates/NNNN-F.yaml --run-dir SEARCH/store``
    SEARCH/chosen.yaml              the chosen candidate's recipe (when one meets every budget)
    SEARCH/holdout/                 the chosen artifact validated on the held-out data
    SEARCH/search.json              every trial, the front, the side-by-side timing, the choice or the diagnosis
    SEARCH/report.html              the same, with the Pareto plot

One driver (:func:`run_search`) runs every search: the study, its first queued trials, the trials, the time budget,
the stop, the promotion to full fidelity where the space has one, the end, resuming. What differs by the teacher's
kind is its space (:class:`compress.search.space.Space`), chosen from a table by the kind, whose hooks the driver
calls: :class:`compress.search.encoder.EncoderSpace` for a forward pass, :class:`compress.search.generation.GeneratorSpace`
for a causal LM (its directory: :mod:`compress.search.generation`).

A forward pass's search has three fidelities, so the time budget buys the most:

1. **estimate**: each sampled candidate's size and optimistic latency from its shape (:func:`space.roofline`); one
   whose optimistic figures cannot meet the size or p50 budget is skipped before anything is trained (Optuna
   records it as pruned, with the reason). The latency bound is recalibrated from the candidates measured so far.
2. **short**: a student distilled for ``short.steps`` steps, a short pruning recovery, quantized and validated on
   the profile. The sampler (multi-objective TPE, with the budgets as constraints) learns from these.
3. **full**: the best short candidates (those meeting every budget but accuracy, best retention first; else the
   front) are rebuilt with full distillation and recovery, and validated.

The full candidates are then timed side by side in alternating rounds (with the PyTorch FP32 teacher as the
reference), the one that meets every budget and is best on the objective is chosen, and it is validated once more
on held-out data the search never ranked on.

Interrupting loses nothing: the study is in the database, every finished step in the store (a distillation
resumes from its checkpoint), and the interrupted trial is queued again when the search resumes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from compress.errors import EdgeCompressError
from compress.progress import Progress
from compress.recipes.execute import write_json_atomic
from compress.search.config import SearchConfig
from compress.search.directory import Search
from compress.search.encoder import EncoderSpace
from compress.search.generation import GeneratorSpace
from compress.search.space import SearchResult
from compress.search.study import drain, is_queued, optuna_module, public_url

#: the space a teacher of each kind is searched over (:func:`compress.tasks.by_kind`)
SPACES = {"forward": EncoderSpace, "generation": GeneratorSpace, "stream": EncoderSpace}


def run_search(config: SearchConfig, search_dir: Path | str, *, progress: Progress | None = None,
               force: bool = False, html: bool = True) -> SearchResult:
    """Search for the candidate that meets ``config.profile``'s budgets and is best on ``config.objective``.

    ``progress`` hears what the search does as ``note`` events, one line each (:func:`compress.progress.to_lines`).
    """
    optuna = optuna_module()  # a missing optuna is named before anything else
    search_dir = Path(search_dir)
    from compress.tasks import by_kind
    from compress.teachers.kinds import source_kind

    if (Path(config.teacher) / "config.json").is_file():  # refused before the first trial, not in every trial
        from compress.errors import ModelLoadError
        from compress.teachers.checkpoints import remote_code

        if where := remote_code(config.teacher):
            raise ModelLoadError(f"{config.teacher}: the checkpoint brings its own Python code ({where}), which a "
                                 "search never runs", hint="export it with --trust-remote-code and search the "
                                                           "exported model file")
    # a causal LM's folder (its routes start from the checkpoint): runtime x INT4 algorithm x group x 8-bit layers;
    # anything else one forward pass (a stream's calls too)
    kind = source_kind(config.teacher) if Path(config.teacher).is_dir() else "forward"
    space = by_kind(SPACES, config.teacher, "search", kind=kind)
    if html:
        from compress._optional import require

        for module in ("jinja2", "matplotlib"):
            require(module, "the search's HTML report (or pass --no-html)")
    s, storage = Search.open(optuna, config, search_dir, progress, force=force, kind=space)
    study = s.open_study(optuna, storage)
    if not study.trials:  # (another worker starting at the same moment queues them too: skip_if_exists keeps one)
        for params, attrs in s.space.first_trials():
            study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=True)
    if config.study.storage:
        s.say(f"shared study {config.study.name!r} in {public_url(config.study.storage)}: this worker is {s.worker}"
              + (f"; full-fidelity artifacts go to {config.study.artifact_store}" if config.study.artifact_store
                 else ""))
    s.say(f"search {search_dir}: {len(study.trials)} trials so far, {s.spent_before / 60:.1f} of "
          f"{config.time_budget_s / 60:.0f} min spent; objective {config.objective.value}; profile {s.profile.name}; "
          f"budgets {', '.join(s.budgets)}")
    objective = _objective(optuna, s)

    def run_queued() -> None:
        study.optimize(_queued_only(optuna, objective), n_trials=1, callbacks=[_record_time(s)],
                       catch=(EdgeCompressError,))

    poll_s = max(1.0, min(5.0, config.study.heartbeat_s / 2))
    promotes = s.space.promotes
    phase = study.user_attrs.get("phase", "explore")
    if phase == "explore":
        _explore(s, study, objective)
        if promotes:
            # what other workers are still measuring counts for the promotion: every worker promotes the same ones
            drain(optuna, study, run_queued, s.say, poll_s)
            _promote(optuna, s, study)
    elif phase == "final":
        _requeue_for_time(optuna, study, s.say)
    if promotes:
        drain(optuna, study, run_queued, s.say, poll_s)  # the full candidates, whichever worker builds them
        study.set_user_attr("phase", "final")
    result = s.space.conclude(study)
    s.record_time(force=True)
    result.summary["spent_s"] = round(s.spent(), 1)
    result.summary["kind"] = s.space.kind  # (the report's page is the kind's)
    write_json_atomic(search_dir / "search.json", result.summary)
    if html:
        from compress.search.report import write_search_html

        write_search_html(search_dir, result.summary)
    return result


def _record_time(s: Search):
    def record(_study, _trial) -> None:
        s.record_time(force=True)

    return record


def _explore(s: Search, study, objective) -> None:
    """Run trials the sampler draws (and those the space queues) until the space says the exploration is over."""
    def after(study, trial) -> None:
        s.record_time(force=True)
        if s.space.stop_reason(study) or study.user_attrs.get("phase", "explore") != "explore":  # (or another
            study.stop()  # worker's search moved on)
            return
        s.space.after_trial(study, trial)

    if s.space.stop_reason(study) is None:
        if line := s.space.exploring():
            s.say(line)
        study.optimize(objective, callbacks=[after], catch=(EdgeCompressError,))
    s.say(f"exploration ends: {s.space.stop_reason(study) or 'stopped'}")


def _promote(optuna, s: Search, study) -> None:
    """Queue the space's promoted trials at full fidelity, once each (a search stopped right here queues none twice)."""
    promoted = s.space.promote(study)
    queued = {json.dumps(t.params, sort_keys=True) for t in study.trials
              if t.user_attrs.get("fidelity") == "full" and t.state != optuna.trial.TrialState.FAIL}
    for number, params in promoted:
        if json.dumps(params, sort_keys=True) not in queued:
            study.enqueue_trial(params, user_attrs={"fidelity": "full", "promoted_from": number})
    study.set_user_attr("promoted", [n for n, _ in promoted])
    study.set_user_attr("phase", "full")
    s.say(f"full fidelity for trials {', '.join(map(str, (n for n, _ in promoted))) or '(none measured)'}")


def _requeue_for_time(optuna, study, say: Callable[[str], None]) -> None:
    """A finished search resumed with a larger ``--time-budget``: the promoted candidates it had no time to build
    are queued again (each is queued once per resume; its cost is checked against the new budget)."""
    TS = optuna.trial.TrialState
    built = {json.dumps(t.params, sort_keys=True) for t in study.trials
             if t.user_attrs.get("fidelity") == "full" and t.state in (TS.COMPLETE, TS.WAITING)}
    for t in study.trials:
        key = json.dumps(t.params, sort_keys=True)
        if t.user_attrs.get("not_run_for_time") and t.state == TS.PRUNED and key not in built:
            study.enqueue_trial(t.params, user_attrs={"fidelity": "full",
                                                      "promoted_from": t.user_attrs.get("promoted_from")})
            built.add(key)
            say(f"trial {t.number} had no time to be built: queued again ({t.user_attrs.get('label', t.params)})")


def _queued_only(optuna, objective):
    """``objective`` for a trial taken from the queue; a trial sampled because another worker took the last queued
    one first (the queue is shared) is dropped at once."""
    def run(trial):
        if not is_queued(trial):
            trial.set_user_attr("fidelity", "none")
            trial.set_user_attr("unqueued", True)
            raise optuna.TrialPruned("another worker took the queued trial first")
        return objective(trial)

    return run


def _objective(optuna, s: Search):
    """One trial: the space draws a candidate; an earlier trial may answer it (or rule it out); else the space builds
    and measures it, and its figures are the trial's."""
    def objective(trial):
        dead = trial.user_attrs.get("worker")  # only a copy Optuna queued again carries its first worker's name
        trial.set_user_attr("worker", s.worker)
        if dead:
            first = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
            s.say(f"[trial {trial.number}] retries trial {first.system_attrs.get('failed_trial')}, whose worker "
                  f"stopped answering ({dead}: no heartbeat for {4 * s.config.study.heartbeat_s} s)")
        c, tag = s.space.draw(trial)
        values = s.space.answered(trial, c, tag)
        if values is not None:
            return values
        try:
            res = s.space.build(trial, c, tag)
        except EdgeCompressError as e:
            if getattr(e, "exit_code", None) == 130:  # Ctrl-C or SIGTERM inside a step: stop the search, not the trial
                raise KeyboardInterrupt(str(e)) from e
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            trial.set_user_attr("error", why)
            s.say(f"{tag}: failed: {why}")
            raise
        for k, v in res.items():
            trial.set_user_attr(k, v)
        s.say(f"{tag}: {res['verdict'].upper()}{s.space.figures(res)} ({res['seconds']:.0f} s)")
        return s.space.values(res)

    return objective
