"""The Optuna study of a generator search (a causal LM teacher: :class:`compress.search.generator.GeneratorSpace`):
one fidelity, every candidate quantized from its route's export and validated, the plainest candidates first, an
untried one queued where the sampler proposes one tried; see :mod:`compress.search.generator` for the directory."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

from compress.errors import EdgeCompressError, StageError
from compress.progress import Progress
from compress.recipes.execute import write_json_atomic
from compress.search.config import SearchConfig
from compress.search.directory import Search
from compress.search.generator import GeneratorSpace
from compress.search.generator_conclude import conclude_generator
from compress.search.generator_space import GenCandidate, all_candidates, params_of, suggest
from compress.search.study import optuna_module


def run_generator_search(config: SearchConfig, search_dir: Path, *, progress: Progress | None = None,
                         force: bool = False):
    """Search ``config.teacher`` (a causal LM) for the INT4 generator that meets ``config.profile``'s budgets and is
    best on ``config.objective``; see the module's docstring. Returns a
    :class:`~compress.search.conclude.SearchResult` whose summary has ``generator: true``."""
    optuna = optuna_module()
    s, storage = Search.open(optuna, config, search_dir, progress, force=force, kind=GeneratorSpace)
    study = s.open_study(optuna, storage)
    shapes = s.space.shapes
    candidates = all_candidates(s.space, shapes)
    if not study.trials:  # the routes' plainest candidate first: round to nearest (or Q4_0), the smallest group,
        first = {k: v[0] for k, v in shapes.items()}  # of the first shape; then each other shape's on one route
        plain = {rt: GenCandidate(rt, d["algorithm"][0], d["group"][0], d["int8"][0], **first)
                 for rt, d in s.space.items()}
        others = [replace(next(iter(plain.values())), layers=n, heads=h, ffn=f, vocab=v)
                  for n in shapes["layers"] for h in shapes["heads"] for f in shapes["ffn"]
                  for v in shapes["vocab"] if (n, h, f, v) != tuple(first.values())]
        for c in [*plain.values(), *others]:
            study.enqueue_trial(params_of(c, s.space, shapes))
    s.say(f"search {search_dir}: {len(study.trials)} trials so far, {s.spent_before / 60:.1f} of "
          f"{config.time_budget_s / 60:.0f} min spent; objective {config.objective.value}; profile {s.profile.name}; "
          f"budgets {', '.join(s.budgets)}")
    rng = random.Random(config.study.seed)

    def tried() -> set[str]:
        """The candidates measured or answered (as another's figures, or a failure not tried again)."""
        TS = optuna.trial.TrialState
        return {t.user_attrs["label"] for t in study.get_trials(deepcopy=False) if "label" in t.user_attrs
                and (t.state == TS.COMPLETE or "duplicate_of" in t.user_attrs or "error" in t.user_attrs)}

    def measured() -> int:
        return sum(1 for t in study.get_trials(deepcopy=False)
                   if t.state == optuna.trial.TrialState.COMPLETE and "duplicate_of" not in t.user_attrs)

    def done() -> str | None:
        if config.short.trials and measured() >= config.short.trials:
            return f"{config.short.trials} candidates measured"
        if s.spent() >= config.time_budget_s:
            return "the time budget is spent"
        if len(tried()) >= len(candidates):
            return f"every candidate ({len(candidates)}) is tried"
        return None

    def callback(study, trial) -> None:
        s.record_time(force=True)
        if done():
            study.stop()
            return
        waiting = any(t.state == optuna.trial.TrialState.WAITING for t in study.get_trials(deepcopy=False))
        if "duplicate_of" in trial.user_attrs and not waiting:  # the sampler proposed one tried: an untried one
            seen = tried()
            untried = [c for c in candidates if c.label not in seen]
            if untried:
                study.enqueue_trial(params_of(rng.choice(untried), s.space, shapes))

    objective = _objective(optuna, s)
    if not done():
        study.optimize(objective, callbacks=[callback], catch=(EdgeCompressError,))
    s.say(f"search ends: {done() or 'stopped'}")
    result = conclude_generator(s, study)
    s.record_time(force=True)
    result.summary["spent_s"] = round(s.spent(), 1)
    write_json_atomic(search_dir / "search.json", result.summary)
    return result


def _objective(optuna, s: Search):
    from compress.profiles.budgets import BudgetStatus

    def objective(trial):
        c = suggest(trial, s.space, s.space.shapes)
        trial.set_user_attr("label", c.label)
        tag = f"[trial {trial.number}] {c.label}"
        twin = next((t for t in trial.study.get_trials(deepcopy=False)
                     if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("label") == c.label
                     and "duplicate_of" not in t.user_attrs), None)
        if twin is not None:
            for k, v in twin.user_attrs.items():
                trial.set_user_attr(k, v)
            trial.set_user_attr("duplicate_of", twin.number)
            s.say(f"{tag}: as trial {twin.number} (measured already)")
            return twin.values
        plain = next((t for t in trial.study.get_trials(deepcopy=False) if c.int8 and t.state == optuna.trial.TrialState.COMPLETE
                      and t.user_attrs.get("label") == replace(c, int8=0.0).label and "duplicate_of" not in t.user_attrs
                      and (t.user_attrs.get("perplexity_increase") or 0.0) <= c.int8), None)
        if plain is not None:  # within the target at 4 bits already: accuracy-aware INT4 would move no layer
            for k, v in plain.user_attrs.items():
                trial.set_user_attr(k, v)
            trial.set_user_attr("label", c.label)
            trial.set_user_attr("duplicate_of", plain.number)
            s.say(f"{tag}: as trial {plain.number} (its perplexity {plain.user_attrs['perplexity_increase']:+.2%} is "
                  f"within +{c.int8:.0%} already: no layer would go back to 8 bits)")
            return plain.values
        broken = next((t for t in trial.study.get_trials(deepcopy=False)
                       if t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get("label") == c.label
                       and "error" in t.user_attrs), None)
        if broken is not None:  # failed with an error before: the same error again
            trial.set_user_attr("duplicate_of", broken.number)
            raise optuna.TrialPruned(f"failed in trial {broken.number}")
        s.say(f"{tag}: quantizing and validating ...")
        try:
            res = s.space.measure(trial.number, c)
        except EdgeCompressError as e:
            if getattr(e, "exit_code", None) == 130:
                raise KeyboardInterrupt(str(e)) from e
            trial.set_user_attr("error", str(e).splitlines()[0])
            s.say(f"{tag}: failed: {str(e).splitlines()[0]}")
            raise
        except Exception as e:  # a quantizer's own bug fails this trial, not the search
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            trial.set_user_attr("error", why)
            s.say(f"{tag}: failed: {why}")
            raise StageError(f"{c.label}: {why}") from e
        for k, v in res.items():
            trial.set_user_attr(k, v)
        odd = [k if b["status"] == BudgetStatus.failed else f"{k} {b['status']}" for k, b in res["budgets"].items()
               if b["status"] != BudgetStatus.passed]
        fails = f" ({', '.join(odd)})" if odd else ""
        s.say(f"{tag}: {res['verdict'].upper()}{fails}: {line(res)} ({res['seconds']:.0f} s)")
        return (res["decode_tokens_per_s"] or 0.0,
                res["perplexity_increase"] if res["perplexity_increase"] is not None else math.inf, res["size_mb"])

    return objective


def line(p: dict[str, Any]) -> str:
    """A candidate's figures on one line."""
    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    est = " (est.)" if p.get("estimated") else ""
    return (f"decode {f(p['decode_tokens_per_s'], '.1f')} tokens/s{est}, TTFT {f(p['time_to_first_token_ms'], '.1f')} "
            f"ms, perplexity {f(p['perplexity_increase'], '+.2%')}, top-1 {f(p['top1_agreement'], '.3f')}, "
            f"{f(p['size_mb'], '.3f')} MB" + (f", {p['at_8_bits']} MatMuls at 8 bits" if p.get("at_8_bits") else ""))
