"""Budget judging every layer shares: results, statuses, the verdict, and the noise warning.

A budget is PASS, FAIL, ANOMALOUS (measured, but the timing spread is too wide to tell pass from fail) or UNVERIFIED
(not measured, only estimated, or timed on an emulated device: never a pass). Validation (local and remote) and
packaging judge with these; a search that finds nothing meeting its budgets ends INFEASIBLE, a validation on several
devices one of which did not answer INCOMPLETE, the gate REGRESSED, NOT COMPARABLE, INCONCLUSIVE or IMPROVED. Every
verdict, its meaning and its exit code: :data:`VERDICTS` (the README's exit-code table lists the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, model_validator

from compress.errors import Anomalous, BudgetFailed, Incomplete, Infeasible, NotComparable, Regressed, Unverified
from compress.host.measure import LatencyStats

MB = 1024 * 1024
NOISY_CV = 0.15  # run-to-run coefficient of variation above which latency is called noisy
NEAR_LIMIT = 0.20  # a noisy latency within this fraction of its limit gets an "unreliable" warning
LATENCY_BUDGETS = ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "min_throughput", "min_decode_tokens_per_s",
                   "max_time_to_first_token_ms")
# Budgets judged from timings on the device: an estimate makes them UNVERIFIED, never PASS.
ESTIMATED_BUDGETS = (*LATENCY_BUDGETS, "min_speedup", "max_cold_start_ms")


class BudgetStatus(StrEnum):
    passed = "pass"
    failed = "fail"
    anomalous = "anomalous"  # measured, but too noisy near its limit to say which side it is on: never a pass
    unverified = "unverified"  # judged from an estimate, not a measurement on the device: never a pass


#: verdict -> (exit code, meaning): the one table of every verdict a command ends with (validate's, a fleet's,
#: a search's, the gate's; each code is its error class's, compress.errors), where every exit code of one is read
VERDICTS: dict[str, tuple[int, str]] = {
    "pass": (0, "every budget was measured and holds"),
    "fail": (BudgetFailed.exit_code, "a budget was measured and missed (or the gate found a regression)"),
    "anomalous": (Anomalous.exit_code,
                  "no budget failed, but a latency measurement is not trustworthy: its run-to-run spread (CV > 15%) "
                  "is wider than its distance to the limit (within 20%), so noise could flip it, or it failed while "
                  "the machine was busy (host_load) where its fastest run held; measure on a quieter machine or with "
                  "more runs"),
    "unverified": (Unverified.exit_code,
                   "no budget failed, but some were not measured (estimates, or measurements switched off); "
                   "--unverified-exit-code changes the code"),
    "infeasible": (Infeasible.exit_code, "a search measured candidates and none meets every budget"),
    "incomplete": (Incomplete.exit_code, "validate on several devices: a device did not answer or failed there, and "
                   "none of the others failed (their verdicts are in the report)"),
    # the gate's (a new report against a baseline's)
    "improved": (0, "the gate found a metric better than the baseline's beyond noise, and none worse"),
    "inconclusive": (0, "the gate saw a large change that its test cannot tell from noise, and none worse"),
    "regressed": (Regressed.exit_code, "the gate found a metric worse than the baseline's beyond noise"),
    "not comparable": (NotComparable.exit_code, "the gate's two reports were measured under different conditions"),
}


class BudgetResult(BaseModel):
    name: str
    limit: float
    measured: float | None
    passed: bool  # True only for status "pass" (kept for readers of schema v1)
    unit: str = ""
    comparison: str = "<="
    note: str | None = None
    status: BudgetStatus | None = None  # derived from ``passed`` when not given
    estimated: bool = False  # ``measured`` is an estimate (compress.estimates.roofline), not a measurement
    measured_on: str | None = None  # where the figure comes from, when not the report's environment

    @model_validator(mode="after")
    def _status(self) -> BudgetResult:
        if self.status is None:
            self.status = BudgetStatus.passed if self.passed else BudgetStatus.failed
        elif self.status is not BudgetStatus.passed:
            self.passed = False
        return self


def noise_warning(lat: LatencyStats, budgets: list[BudgetResult]) -> str | None:
    """A warning when latency is noisy (high CV) and a latency verdict sits close to its limit."""
    if lat.cv <= NOISY_CV:
        return None
    close = [b.name for b in budgets if b.name in LATENCY_BUDGETS and b.measured is not None
             and b.status is not BudgetStatus.unverified and abs(b.measured / b.limit - 1) < NEAR_LIMIT]
    if not close:
        return None
    return (
        f"latency varies a lot between runs (CV {lat.cv:.0%} over {lat.n} runs) and {', '.join(close)} "
        f"{'is' if len(close) == 1 else 'are'} within {NEAR_LIMIT:.0%} of the limit: that verdict is "
        "unreliable on this machine; measure on a quieter one or with more runs"
    )


def _best_run_holds(b: BudgetResult, lat: LatencyStats) -> bool:
    """Whether ``b`` would hold at the fastest run's figure: a time scaled by min / p50, a rate (a ``>=`` budget)
    by p50 / min."""
    if not lat.min or not lat.p50:
        return False
    rate = b.comparison == ">="
    best = b.measured * (lat.p50 / lat.min if rate else lat.min / lat.p50)
    return best >= b.limit if rate else best <= b.limit


def anomalous_latency(lat: LatencyStats, budgets: list[BudgetResult], busy: bool = False) -> list[str]:
    """Mark the latency budgets a noisy measurement cannot separate from their limit ANOMALOUS (in place); return
    their names. Noisy: run-to-run CV over :data:`NOISY_CV`; cannot separate: within :data:`NEAR_LIMIT` of it.

    ``busy``: other processes took a good share of the CPUs while it timed (:class:`compress.host.load.HostLoad`).
    A noisy timing on a busy machine also makes a latency budget it *fails* ANOMALOUS however far from the limit,
    where its fastest run would have held it (the queue's figure, not the model's: 151 ms per token at p50 where the
    best run gave 24); a budget that even the fastest run misses fails, and one it holds under load still holds."""
    if lat.cv <= NOISY_CV:
        return []
    names = []
    for b in budgets:
        if b.name not in LATENCY_BUDGETS or b.measured is None \
                or b.status not in (BudgetStatus.passed, BudgetStatus.failed):
            continue
        off = abs(b.measured / b.limit - 1)
        if off < NEAR_LIMIT:
            b.note = (f"{'holds' if b.passed else 'misses'} by {off:.0%}, inside the "
                      f"run-to-run spread (CV {lat.cv:.0%} over {lat.n} runs): not trustworthy either way")
        elif busy and not b.passed and _best_run_holds(b, lat):
            b.note = (f"misses by {off:.0%}, timed while the machine was busy (CV {lat.cv:.0%} over {lat.n} runs): "
                      "the other processes' share, not the model's; measure again on a quiet machine")
        else:
            continue
        b.status, b.passed = BudgetStatus.anomalous, False
        names.append(b.name)
    return names


def emulated_timings(profile, budgets: list[BudgetResult]) -> str | None:
    """On an emulated device (the profile's ``hardware.emulated``) mark every budget judged from a timing
    (:data:`ESTIMATED_BUDGETS`: latency, throughput, speedup, cold start) UNVERIFIED in place, its figure kept: an
    emulator runs the device's instructions, so outputs and accuracy are the device's, but its speed is the
    emulator's. Returns the report's warning, or None (not emulated, or no timing budget measured)."""
    if not profile.hardware.emulated:
        return None
    names = []
    for b in budgets:
        if b.name in ESTIMATED_BUDGETS and b.measured is not None and b.status is not BudgetStatus.unverified:
            b.note = (f"measured under emulation ({'within' if b.passed else 'outside'} the limit): profile "
                      f"{profile.name} is an emulated device (hardware.emulated), whose timings are the emulator's, "
                      "not the chip's")
            b.status, b.passed = BudgetStatus.unverified, False
            names.append(b.name)
    if not names:
        return None
    return (f"{profile.name} is an emulated device: {', '.join(names)} {'is' if len(names) == 1 else 'are'} "
            "UNVERIFIED (the emulator's speed, not the device's); accuracy and outputs are the device's instruction "
            "set's own")


def own_check(manifest, budgets: list[BudgetResult]) -> tuple[BudgetResult | None, str | None]:
    """What quantize's own check (``manifest.collapsed()``) adds to a verdict: a failed ``no_collapse`` when it found
    the model collapsed and no quality budget measured on the eval data holds (the check is then the only evidence
    of its fidelity), else only a warning (the data measured it: its quality budgets decide). ``(None, None)`` when
    the check held."""
    reason = manifest.collapsed()
    if reason is None:
        return None, None
    held = [b.name for b in budgets if b.name in BUDGETS and BUDGETS[b.name].quality and b.status is BudgetStatus.passed]
    if held:
        return None, (f"quantize's own check found this model collapsed against its input ({reason}); "
                      f"{', '.join(held)}, measured on the eval data, hold")
    return (BudgetResult(name="no_collapse", limit=0, measured=1.0, passed=False, comparison="<=",
                         note=f"quantize's own check found it collapsed against its input: {reason}; quantize it "
                         "again (its warning named what to try), or prove it on data: --data with "
                         "min_accuracy_retention or min_agreement in the profile"),
            f"not shippable as measured: quantize's own check found this model collapsed ({reason})")


def verdict_of(budgets: list[BudgetResult]) -> str:
    """fail when a budget failed; else anomalous when a measurement cannot be trusted; else unverified when one was
    not measured (or only estimated); else pass."""
    statuses = {b.status for b in budgets}
    for status in (BudgetStatus.failed, BudgetStatus.anomalous, BudgetStatus.unverified):
        if status in statuses:
            return str(status)
    return "pass"


@dataclass(frozen=True)
class Budget:
    """One row of :data:`BUDGETS`: what a budget limits, how it is compared, what measuring it needs, and which kind
    of model it judges (the task table's kinds: ``forward`` for one forward pass's outputs, ``generation`` for a
    generator's; None: any)."""

    limit: str  # the profile's field (a dotted path into ``budgets``)
    metric: str  # the report's metric (a dotted path into the metrics)
    unit: str
    comparison: str  # "<=" or ">="
    needs: str  # what measuring it needs (an unmeasured budget's note)
    kind: str | None = None  # the one kind it reads the outputs of (None: every kind's)
    quality: bool = False  # judged on held-out data (quality, not speed, size or memory)

    def limit_in(self, budgets) -> float | None:
        """The limit ``budgets`` (a profile's) sets, or None."""
        value = budgets
        for part in self.limit.split("."):
            value = getattr(value, part)
        return value

    def measured_in(self, metrics: dict[str, Any]) -> Any:
        """The figure ``metrics`` (a report's) measured, or None."""
        value: Any = metrics
        for part in self.metric.split("."):
            value = (value or {}).get(part)
        return value


_DATA, _TEXT = "eval data and teacher (--data, --teacher)", "--data text and the teacher"
#: name -> what it limits: the one table of budgets (judged in this order)
BUDGETS: dict[str, Budget] = {
    "latency_p50_ms": Budget("latency_ms.p50", "latency_ms.p50", "ms", "<=", "latency"),
    "latency_p95_ms": Budget("latency_ms.p95", "latency_ms.p95", "ms", "<=", "latency"),
    "latency_p99_ms": Budget("latency_ms.p99", "latency_ms.p99", "ms", "<=", "latency"),
    "min_throughput": Budget("min_throughput", "throughput", "samples/s", ">=", "latency"),
    "max_model_size_mb": Budget("max_model_size_mb", "size_mb", "MB", "<=", "size"),
    "max_peak_memory_mb": Budget("max_peak_memory_mb", "peak_rss_mb", "MB", "<=", "cold start (disabled)"),
    "min_accuracy_retention": Budget("min_accuracy_retention", "retention", "", ">=", _DATA, "forward", True),
    "min_agreement": Budget("min_agreement", "agreement", "", ">=", _DATA, "forward", True),
    "min_output_cosine": Budget("min_output_cosine", "output_cosine", "", ">=", _DATA, "forward", True),
    "min_output_snr_db": Budget("min_output_snr_db", "output_snr_db", "dB", ">=", _DATA, "forward", True),
    "max_mae_increase": Budget("max_mae_increase", "mae_increase", "", "<=",
                               "regression targets in the eval data, and the teacher", "forward", True),
    "min_speedup": Budget("min_speedup", "speedup", "x", ">=", "the teacher's FP32 baseline (--teacher)"),
    "max_cold_start_ms": Budget("max_cold_start_ms", "cold_start_ms", "ms", "<=", "cold start (disabled)"),
    "min_decode_tokens_per_s": Budget("min_decode_tokens_per_s", "decode_tokens_per_s", "tokens/s", ">=",
                                      "a text-generation artifact", "generation"),
    "max_time_to_first_token_ms": Budget("max_time_to_first_token_ms", "time_to_first_token_ms", "ms", "<=",
                                         "a text-generation artifact", "generation"),
    "max_perplexity_increase": Budget("max_perplexity_increase", "perplexity_increase", "", "<=", _TEXT,
                                      "generation", True),
    "min_top1_agreement": Budget("min_top1_agreement", "top1_agreement", "", ">=", _TEXT, "generation", True),
    "max_kl": Budget("max_kl", "kl_mean", "nats", "<=", _TEXT, "generation", True),
}


def budgets_of(kind: str) -> tuple[str, ...]:
    """The budgets that read only a ``kind`` model's outputs (a generator's: decode speed, time to first token,
    perplexity, top-1 agreement, KL)."""
    return tuple(n for n, b in BUDGETS.items() if b.kind == kind)


def judged_for(kind: str) -> tuple[str, ...]:
    """The budgets a ``kind`` model is judged by: those of every kind and its own."""
    return tuple(n for n, b in BUDGETS.items() if b.kind in (None, kind))


def quality_of(kind: str) -> tuple[str, ...]:
    """The budgets a ``kind`` model's held-out data judges: quality, not speed (measured on the ranking run)."""
    return tuple(n for n in judged_for(kind) if BUDGETS[n].quality)


def judge(budgets, metrics: dict[str, Any]) -> list[BudgetResult]:
    """One result per budget the profile sets; an unmeasurable budget is UNVERIFIED (CI must not pass blind)."""
    results = []
    why = metrics.get("not_measured") or {}  # a budget the metrics could not measure though its inputs were given
    for name, b in BUDGETS.items():
        limit, measured = b.limit_in(budgets), b.measured_in(metrics)
        if limit is None:
            continue
        if measured is None:  # not measured is not a failure, and never a pass
            results.append(BudgetResult(name=name, limit=limit, measured=None, passed=False, unit=b.unit,
                                        comparison=b.comparison, note=f"not measured: {why.get(name) or 'needs ' + b.needs}",
                                        status=BudgetStatus.unverified))
            continue
        ok = measured <= limit if b.comparison == "<=" else measured >= limit
        results.append(BudgetResult(name=name, limit=limit, measured=float(measured), passed=ok, unit=b.unit,
                                    comparison=b.comparison))
    return results
