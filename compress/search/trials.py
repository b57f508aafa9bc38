"""Reading the search's study: which trials repeat a candidate, which were skipped on their estimate, when the
space is used up, how much slower than its roofline a measured candidate runs (the latency bound), and the FP32
teacher's p50 timed beside them (the speedup bound)."""

from __future__ import annotations


def measured_twin(trial, fidelity: str):
    """An earlier measured trial with the same candidate at the same fidelity."""
    from optuna.trial import TrialState

    return next((t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if t.params == trial.params and t.user_attrs.get("fidelity") == fidelity
                 and "duplicate_of" not in t.user_attrs), None)


def skipped_before(trial):
    """An earlier trial that skipped the same candidate on its estimate."""
    from optuna.trial import TrialState

    return next((t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
                 if t.params == trial.params and t.user_attrs.get("skipped") and not t.user_attrs.get("not_run_for_time")
                 and "duplicate_of" not in t.user_attrs and t.number != trial.number), None)


def new_shorts(study) -> list:
    """Short-fidelity trials that tried a candidate for the first time (measured, skipped or failed)."""
    return [t for t in study.trials if t.user_attrs.get("fidelity", "short") == "short" and t.state.is_finished()
            and "duplicate_of" not in t.user_attrs]


def exhausted(study, patience: int = 40) -> bool:
    """The last ``patience`` trials all proposed candidates already tried: the space (as narrowed) is used up."""
    recent = [t for t in study.trials if t.state.is_finished()][-patience:]
    return len(recent) == patience and all("duplicate_of" in t.user_attrs for t in recent)


def _timed_on(t, runtime: str | None, threads: int) -> bool:
    """``t`` measured (not estimated) a new candidate on ``runtime`` at ``threads`` (any, when ``runtime`` is None)."""
    a = t.user_attrs
    return bool(a.get("p50_ms")) and not a.get("estimated") and "duplicate_of" not in a \
        and (runtime is None or (t.params.get("runtime") == runtime and t.params.get("threads", 0) == threads))


def latency_ratio(trials: list, runtime: str, threads: int = 0, estimate_ms: float | None = None) -> float:
    """How much slower than its optimistic roofline a measured candidate on ``runtime`` (and thread count) ran: the
    smallest ratio seen so far (x0.8), so the bound stays optimistic; 1.0 until two such candidates are measured (the
    roofline assumes every core busy and no operator waiting: it is optimistic on its own).

    Only candidates whose roofline is at least ``estimate_ms`` count: a small model spends more of its time between
    operators than the roofline sees, so its ratio is the larger one (measured on SST-2: ~2.2 for one narrow layer,
    ~1.3 for three full-width layers) and would skip a larger candidate that can meet the budget."""
    ratios = _ratios(trials, runtime, threads, estimate_ms)
    return max(min(ratios) * 0.8, 1.0) if len(ratios) >= 2 else 1.0


def _ratios(trials: list, runtime: str, threads: int, at_least_ms: float | None = None) -> list[float]:
    """measured p50 / roofline of the candidates measured on ``runtime`` at ``threads`` (with a roofline of at least
    ``at_least_ms``, when given)."""
    return [t.user_attrs["p50_ms"] / t.user_attrs["estimate"]["p50_ms"] for t in trials
            if _timed_on(t, runtime, threads) and (t.user_attrs.get("estimate") or {}).get("p50_ms")
            and (at_least_ms is None or t.user_attrs["estimate"]["p50_ms"] >= at_least_ms)]


def typical_ratio(trials: list, runtime: str, threads: int = 0) -> float | None:
    """The smallest measured/roofline ratio of every candidate measured on ``runtime`` at ``threads``, whatever its
    size (None until two are measured): what the feasible draw predicts an untried candidate runs at. Unlike
    :func:`latency_ratio` it is applied to candidates larger than any measured too, so it is not safe for ruling one
    out (a larger model may run nearer its roofline), only for choosing which to try next. On the Intel Xeon VM every
    one of 83 SST-2 candidates of a search ran at 1.74-5.9x its roofline, while the draw, bounded by the bare roofline
    for the largest, chose 75 of them, 58 more than 25% too slow for the speed budget."""
    ratios = _ratios(trials, runtime, threads)
    return min(ratios) if len(ratios) >= 2 else None


def teacher_fp32_ms(trials: list, runtime: str | None, threads: int = 0) -> float | None:
    """The teacher's FP32 p50 on ``runtime`` at ``threads`` (None: the PyTorch teacher, the same beside every
    candidate) as timed beside the candidates measured so far (every validation times it in alternating rounds with
    its candidate; the median of those): what a ``min_speedup`` budget divides. A busy machine slows it as much as
    the latency bound's measured candidates, so the speedup bound holds whatever the load. None until one such
    candidate is measured."""
    import statistics

    base = [t.user_attrs["p50_ms"] * t.user_attrs["speedup"] for t in trials
            if _timed_on(t, runtime, threads) and t.user_attrs.get("speedup")]
    return statistics.median(base) if base else None


#: the speed budgets a measured candidate can be too slow for
SPEED_BUDGETS = ("latency_p50_ms", "min_speedup")


def too_slow_like(trials, c, estimate_ms: float, noise: float) -> tuple[int, str] | None:
    """A measured candidate that shows candidate ``c`` (roofline ``estimate_ms``) is too slow: one on the same
    runtime, thread count and precision, no deeper and with no larger a roofline, that missed a p50 or speedup budget
    by more than ``noise`` (a share of the limit: run-to-run noise). Its trial number and the budget, or None.

    On the same runtime and precision a candidate runs at least as slow as one with fewer operators (per layer) and
    less work (the roofline). Depth is asked apart from the roofline as a safeguard: a small student's time is mostly
    per-operator overhead, which the roofline does not count (SST-2 students on 2 cores ran at 1.7-5.3x their
    roofline, the smallest the furthest off), so a shallower student with more roofline may be the faster. The
    latency bound (:func:`latency_ratio`) learns from larger candidates only, so the largest ones, where the feasible
    draw looks, keep their bare roofline; this rule learns from smaller ones."""
    from compress.search.space import violation

    for t in trials:
        if not _timed_on(t, c.runtime, c.threads) or t.params.get("quant") != c.quant:
            continue
        est = (t.user_attrs.get("estimate") or {}).get("p50_ms")
        if est is None or est > estimate_ms or t.params.get("layers", 0) > c.layers:
            continue
        budgets = t.user_attrs.get("budgets") or {}
        missed = next((name for name in SPEED_BUDGETS if violation(budgets.get(name)) > noise), None)
        if missed:
            return t.number, missed
    return None
