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

Three fidelities, so the time budget buys the most:

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
import math
from collections.abc import Callable
from pathlib import Path

from compress.errors import EdgeCompressError
from compress.progress import Progress
from compress.recipes.execute import write_json_atomic
from compress.search.artifacts import publish
from compress.search.conclude import SearchResult, conclude, promote
from compress.search.config import SearchConfig
from compress.search.directory import Search
from compress.search.space import SHAPE_DIMS, Candidate, quant_choices, suggest, trial_params
from compress.search.study import (
    drain,
    is_queued,
    optuna_module,
    public_url,
)
from compress.search.trials import exhausted, measured_twin, new_shorts, skipped_before


def run_search(config: SearchConfig, search_dir: Path | str, *, progress: Progress | None = None,
               force: bool = False, html: bool = True) -> SearchResult:
    """Search for the candidate that meets ``config.profile``'s budgets and is best on ``config.objective``.

    ``progress`` hears what the search does as ``note`` events, one line each (:func:`compress.progress.to_lines`).
    """
    optuna_module()  # a missing optuna is named before anything else
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
    return by_kind(_KINDS, config.teacher, "search", kind=kind)(config, search_dir, progress=progress, force=force,
                                                                html=html)


def _run_forward_search(config: SearchConfig, search_dir: Path, *, progress: Progress | None, force: bool,
                        html: bool) -> SearchResult:
    """A model of one forward pass a batch: shape x runtime x quantization, the trials run as recipes."""
    optuna = optuna_module()
    if html:
        from compress._optional import require

        for module in ("jinja2", "matplotlib"):
            require(module, "the search's HTML report (or pass --no-html)")
    s, storage = Search.open(optuna, config, search_dir, progress, force=force)
    say = s.say
    study = s.open_study(optuna, storage)
    sampler = study.sampler
    if not study.trials:
        # the plain INT8 teacher: where the search starts from (another worker starting at the same moment queues
        # it too: skip_if_exists keeps one)
        runtime = s.space["runtime"][0]
        reference = Candidate(s.space.shape.layers, runtime=runtime, quant=quant_choices(runtime, s.space)[1][0])
        if all(getattr(reference, d) in s.space[d] for d in SHAPE_DIMS
               if d in s.space) and "quant" in s.space and "runtime" in s.space:
            study.enqueue_trial(trial_params(reference, s.space), user_attrs={"fidelity": "short", "reference": True},
                                skip_if_exists=True)
    if config.study.storage:
        say(f"shared study {config.study.name!r} in {public_url(config.study.storage)}: this worker is {s.worker}"
            + (f"; full-fidelity artifacts go to {config.study.artifact_store}" if config.study.artifact_store else ""))
    say(f"search {search_dir}: {len(study.trials)} trials so far, {s.spent_before / 60:.1f} of "
        f"{config.time_budget_s / 60:.0f} min spent; objective {config.objective.value}; profile {s.profile.name}")

    def record_time(_study, _trial) -> None:
        s.record_time(force=True)

    objective = _objective(optuna, s)

    def run_queued() -> None:
        study.optimize(_queued_only(optuna, objective), n_trials=1, callbacks=[record_time], catch=(EdgeCompressError,))

    poll_s = max(1.0, min(5.0, config.study.heartbeat_s / 2))
    phase = study.user_attrs.get("phase", "explore")
    if phase == "explore":
        def explored() -> bool:
            return s.spent() >= config.short.explore_share * config.time_budget_s or exhausted(study) \
                or bool(config.short.trials and len(new_shorts(study)) + others_shorts() >= config.short.trials)

        def others_shorts() -> int:
            """Short trials other workers are running (between this worker's trials, none is its own): with them
            the --trials cap holds however many workers share the study."""
            return sum(t.user_attrs.get("fidelity", "short") == "short" and "duplicate_of" not in t.user_attrs
                       for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))

        def stop_exploring(study, trial) -> None:
            record_time(study, trial)
            if explored() or study.user_attrs.get("phase", "explore") != "explore":  # (or another worker's search)
                study.stop()
                return
            trials = study.get_trials(deepcopy=False)
            wasted = "duplicate_of" in trial.user_attrs or trial.state == optuna.trial.TrialState.PRUNED
            if wasted and not any(t.state == optuna.trial.TrialState.WAITING for t in trials):
                # the sampler proposed a candidate tried already or one its estimate rules out: the next trial is
                # one that may fit instead
                params, pool = s.space.draw_feasible(trials)
                if params is not None:
                    study.enqueue_trial(params, user_attrs={"fidelity": "short", "drawn_from": pool})
                    return
            if exhausted(study, patience=10):  # TPE keeps proposing what it measured: draw at random a while
                study.sampler = random_sampler
            elif "duplicate_of" not in trial.user_attrs:
                study.sampler = sampler

        random_sampler = optuna.samplers.RandomSampler(seed=config.study.seed)

        if not explored():
            steps = f"{config.short.steps} distillation steps, " if "layers" in s.space or "width" in s.space else ""
            say(f"exploring at short fidelity ({steps}{config.short.recover_steps} recovery steps) for up to "
                f"{max(config.short.explore_share * config.time_budget_s - s.spent(), 0) / 60:.0f} min")
            study.optimize(objective, callbacks=[stop_exploring], catch=(EdgeCompressError,))
        why = ("its share of the time budget is spent" if s.spent() >= config.short.explore_share * config.time_budget_s
               else f"{config.short.trials} trials done" if config.short.trials and len(new_shorts(study)) >= config.short.trials
               else f"{config.short.trials} trials done or running on other workers" if config.short.trials
               and len(new_shorts(study)) + others_shorts() >= config.short.trials
               else "the space is used up (the last trials, random draws included, proposed only candidates tried "
               "already)")
        say(f"exploration ends: {why}")
        # what other workers are still measuring counts for the promotion: every worker promotes the same candidates
        drain(optuna, study, run_queued, say, poll_s)
        promoted = promote(s, study)
        queued = {json.dumps(t.params, sort_keys=True) for t in study.trials
                  if t.user_attrs.get("fidelity") == "full" and t.state != optuna.trial.TrialState.FAIL}
        for number, params in promoted:  # (a search stopped right here queues each one once)
            if json.dumps(params, sort_keys=True) not in queued:
                study.enqueue_trial(params, user_attrs={"fidelity": "full", "promoted_from": number})
        study.set_user_attr("promoted", [n for n, _ in promoted])
        study.set_user_attr("phase", "full")
        say(f"full fidelity for trials {', '.join(map(str, (n for n, _ in promoted))) or '(none measured)'}")
    elif phase == "final":
        _requeue_for_time(optuna, study, say)
    drain(optuna, study, run_queued, say, poll_s)  # the full candidates, whichever worker builds them
    study.set_user_attr("phase", "final")
    result = conclude(s, study)
    record_time(study, None)
    result.summary["spent_s"] = round(s.spent(), 1)
    write_json_atomic(search_dir / "search.json", result.summary)
    if html:
        from compress.search.report import write_search_html

        write_search_html(search_dir, result.summary)
    return result



def _run_generator_search(config: SearchConfig, search_dir: Path, *, progress: Progress | None, force: bool,
                          html: bool) -> SearchResult:
    """A causal LM: runtime x INT4 algorithm x group x 8-bit layers (:mod:`.generator_run`)."""
    from compress.search.generator_run import run_generator_search

    return run_generator_search(config, search_dir, progress=progress, force=force)


#: how search explores a teacher of each kind (:func:`compress.tasks.by_kind`)
_KINDS = {"forward": _run_forward_search, "generation": _run_generator_search, "stream": _run_forward_search}


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
    def objective(trial):
        fid = s.space.full if trial.user_attrs.get("fidelity") == "full" else s.space.short
        trial.set_user_attr("fidelity", fid.name)
        dead = trial.user_attrs.get("worker")  # only a copy Optuna queued again carries its first worker's name
        trial.set_user_attr("worker", s.worker)
        if dead:
            first = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
            s.say(f"[trial {trial.number}] retries trial {first.system_attrs.get('failed_trial')}, whose worker "
                  f"stopped answering ({dead}: no heartbeat for {4 * s.config.study.heartbeat_s} s)")
        c = suggest(trial, s.space, s.space.shape)
        trial.set_user_attr("label", c.label)
        est = s.space.estimate(c)
        trial.set_user_attr("estimate", {k: None if v is None else round(v, 4) for k, v in est.items()})
        tag = f"[trial {trial.number}, {fid.name}] {c.label}"
        twin = measured_twin(trial, fid.name)
        if twin is not None:  # sampled before: the same recipe, the same cached figures
            for k, v in twin.user_attrs.items():
                if k != "worker":
                    trial.set_user_attr(k, v)
            trial.set_user_attr("duplicate_of", twin.number)
            s.say(f"{tag}: as trial {twin.number} (measured already)")
            return twin.values
        running = next((t for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                        if t.number != trial.number and t.params == trial.params
                        and t.user_attrs.get("fidelity") == fid.name), None)
        if running is not None:  # a shared study: another worker is measuring it right now
            trial.set_user_attr("duplicate_of", running.number)
            s.say(f"{tag}: as trial {running.number} (being measured by {running.user_attrs.get('worker')})")
            raise optuna.TrialPruned(f"being measured in trial {running.number}")
        if fid is s.space.short:
            why = s.space.cannot_meet(c, trial.study.get_trials(deepcopy=False))
            if why:
                trial.set_user_attr("skipped", why)
                before = skipped_before(trial)
                if before is not None:  # a repeat: counts towards "the space is used up", and says nothing new
                    trial.set_user_attr("duplicate_of", before.number)
                else:
                    s.say(f"{tag}: skipped before training: {why}")
                raise optuna.TrialPruned(why)
        else:
            need = s.space.cost(trial.number, c, fid, trial.user_attrs.get("promoted_from"))
            if need > s.left():
                why = f"needs ~{need / 60:.0f} min, {max(s.left(), 0) / 60:.0f} min of the time budget left"
                trial.set_user_attr("skipped", why)
                trial.set_user_attr("not_run_for_time", True)
                s.say(f"{tag}: not run: {why}")
                raise optuna.TrialPruned(why)
        drawn = trial.user_attrs.get("drawn_from")
        s.say(f"{tag}: building and validating" + (f" (drawn from the {drawn} untried candidates expected to fit)"
                                                  if drawn else "") + " ...")
        try:
            res = s.space.measure(trial.number, c, fid)
        except EdgeCompressError as e:
            if getattr(e, "exit_code", None) == 130:  # Ctrl-C or SIGTERM inside a step: stop the search, not the trial
                raise KeyboardInterrupt(str(e)) from e
            trial.set_user_attr("error", str(e))
            s.say(f"{tag}: failed: {e}")
            raise
        if fid is s.space.full and s.artifacts is not None:  # for the worker that ends the search, wherever it runs
            res |= publish(s.artifacts, trial, Path(res["artifact"]))
        for k, v in res.items():
            trial.set_user_attr(k, v)
        s.say(f"{tag}: {res['verdict'].upper()}: retention {_f(res['retention'])}, p50 {_f(res['p50_ms'], 2)} ms"
              f"{' (est.)' if res['estimated'] else ''}, {_f(res['size_mb'], 1)} MB ({res['seconds']:.0f} s)")
        return (res["retention"] if res["retention"] is not None else res["agreement"] or 0.0,
                res["p50_ms"] if res["p50_ms"] is not None else math.inf, res["size_mb"])

    return objective


def _f(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
