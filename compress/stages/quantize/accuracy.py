"""Accuracy-aware mixed precision: measure quantized candidates on labelled eval data and keep the layers
that cost the most in float until an accuracy budget holds.

Modelled on NNCF's ``quantize_with_accuracy_control`` and Intel Neural Compressor's tolerable-loss
tuning, but independent of the runtime: a stage supplies a ``build(excluded) -> Artifact`` function
that writes a candidate quantized with the named layers left in float, and this module loads each
candidate with :func:`compress.runtimes.base.load_runtime`, scores it and decides. The ONNX path
(``compress.stages.quantize``) uses ONNX Runtime's ``nodes_to_exclude``; an OpenVINO path can pass
NNCF's ignored scope the same way.

The metric:

* classifiers: accuracy of the argmax on the labelled eval rows;
* embedding models (feature extraction): mean cosine similarity of each row's pooled embedding to the
  FP32 model's, so the FP32 model scores 1.0 (labels are not needed).

Besides the metric every candidate gets an ``output_error`` versus the FP32 outputs (mean absolute
difference of the class probabilities for classifiers, mean ``1 - cosine`` for embeddings). Accuracy on a
few hundred rows moves in steps of ``1/n``, so most single layers change it by 0; the output error
breaks those ties when layers are ranked.

The search (:func:`search_exclusions`):

1. quantize everything (except user exclusions); done if the budget holds;
2. rank. By default (``rank_by: layer-errors``, ONNX Runtime) the stage hands in the all-quantized model's per-layer
   error table (:mod:`compress.stages.quantize.layer_errors`): layers go to float in the order of the error they add
   themselves (lowest own SNR first), one pass over a few inputs instead of one candidate per unit; a bisection finds
   how many of the first ones must (about log2 of the layer count in candidates), then step 4 prunes. When even all of
   them that fit the float-share limit miss the budget, the search goes on by leave-one-out as below. Otherwise
   (``rank_by: leave-one-out``, or no table): for every unit, a candidate with *that unit kept in float and everything else quantized*
   (leave-one-out). Its sensitivity is the metric that keeping it in float recovers (``cost`` = metric
   with it in float - metric with everything quantized), ties broken by the output error it removes.
   Units are single layers when there are at most ``group_above`` of them; otherwise transformer blocks
   (layer names matching ``layer.N``/``layers.N``/``block.N``/``h.N``), the embeddings (Gather) and the
   rest, so a 6-layer MiniLM costs ~8 candidates instead of ~40;
3. greedy: walk the units from the most sensitive; a block is refined by ranking its layers the same
   way (relative to what is already in float) and keeping them in float one at a time, re-measuring
   after each, until the budget holds. Units whose weights would push the float share past
   ``max_fp32_fraction`` are skipped (a model that is mostly float is not a quantized model);
4. prune: once the budget holds, try quantizing each kept layer again (least sensitive first) and keep
   it quantized when the budget still holds (greedy additions can overshoot).

If no candidate meets the budget the result names the best reachable candidate (highest metric within
the float-share limit) and the costliest layers; the stage writes that candidate and raises
:class:`~compress.errors.AccuracyBudgetError`.

Cost: one build + one evaluation per candidate; encodings of the eval rows are computed once (rows sorted
by length into batches so padding is short) and reused by every candidate.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from compress.artifact import Artifact
from compress.stages.quantize.eval_set import EvalSet, predict_outputs, score_outputs

log = logging.getLogger(__name__)

__all__ = [
    "Budget",
    "Layer",
    "SearchResult",
    "Trial",
    "group_of",
    "search_exclusions",
]

EPS = 1e-9


# ---------------------------------------------------------------------------------------------
# Budget
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """Allowed loss: ``max_drop`` absolute (metric >= baseline - max_drop) and/or ``min_retention``
    relative (metric >= baseline * min_retention). Both must hold when both are given."""

    max_drop: float | None = None
    min_retention: float | None = None

    def __post_init__(self) -> None:
        if self.max_drop is None and self.min_retention is None:
            raise ValueError("a Budget needs max_drop or min_retention")

    def min_metric(self, baseline: float) -> float:
        bounds = []
        if self.max_drop is not None:
            bounds.append(baseline - self.max_drop)
        if self.min_retention is not None:
            bounds.append(baseline * self.min_retention)
        return max(bounds)

    def holds(self, baseline: float, metric: float) -> bool:
        return metric >= self.min_metric(baseline) - EPS

    def describe(self) -> str:
        parts = []
        if self.max_drop is not None:
            parts.append(f"drop <= {self.max_drop:g}")
        if self.min_retention is not None:
            parts.append(f"retention >= {self.min_retention:g}")
        return " and ".join(parts)


# ---------------------------------------------------------------------------------------------
# Layers and the search
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """A quantizable node: the name the quantizer's exclusion list takes, its op, weight size, group."""

    name: str
    op_type: str
    params: int
    group: str


_BLOCK_RE = re.compile(r"(?:^|[/._])(?:layers?|blocks?|h)[/._]?(\d+)(?=[/._]|$)")


def group_of(name: str, op_type: str) -> str:
    """Transformer block of a node from its name (``layer.3`` -> ``block 3``); ``embeddings`` for
    Gather/EmbedLayerNormalization; ``other`` for the rest (fused Attention_N, heads, pooler)."""
    m = _BLOCK_RE.search(name)
    if m:
        return f"block {int(m.group(1))}"
    if op_type in ("Gather", "EmbedLayerNormalization"):
        return "embeddings"
    return "other"


@dataclass
class Trial:
    """One measured candidate."""

    excluded: tuple[str, ...]
    metric: float
    output_error: float
    drop: float
    retention: float | None
    fp32_fraction: float
    meets: bool
    phase: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "excluded": list(self.excluded),
            "metric": round(self.metric, 6),
            "drop": round(self.drop, 6),
            "retention": None if self.retention is None else round(self.retention, 6),
            "output_error": round(self.output_error, 6),
            "fp32_weight_fraction": round(self.fp32_fraction, 4),
            "meets_budget": self.meets,
            "seconds": round(self.seconds, 2),
        }


@dataclass
class Sensitivity:
    """What keeping a unit (one layer, or a block of layers) in float recovers, relative to ``base``."""

    unit: str
    layers: tuple[str, ...]
    cost: float  # metric gained by keeping it in float = metric lost by quantizing it
    error_reduction: float
    relative_to: tuple[str, ...]  # exclusions of the candidate it was compared with

    def key(self) -> tuple[float, float]:
        return (round(self.cost, 9), self.error_reduction)

    def as_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "layers": list(self.layers),
            "cost": round(self.cost, 6),
            "error_reduction": round(self.error_reduction, 6),
            "relative_to": list(self.relative_to),
        }


@dataclass
class SearchResult:
    metric_name: str
    baseline: float
    budget: Budget
    eval_samples: int
    max_fp32_fraction: float
    initial_excluded: tuple[str, ...]
    trials: list[Trial]
    sensitivities: list[Sensitivity]
    layer_sensitivity: dict[str, Sensitivity]
    best: Trial
    met: bool
    kept_fp32: list[dict[str, Any]]
    seconds: float = 0.0
    strategy: str = ""
    own_snr: dict[str, float] = field(default_factory=dict)  # per-layer table's own SNR, when it ordered the search

    @property
    def excluded(self) -> list[str]:
        return list(self.best.excluded)

    def costliest(self, k: int = 3) -> list[Sensitivity]:
        """The ``k`` units that cost the most when quantized (single layers preferred when measured)."""
        layer_level = list(self.layer_sensitivity.values())
        pool = layer_level if len(layer_level) >= k else layer_level + [
            s for s in self.sensitivities if s.unit not in self.layer_sensitivity
        ]
        return sorted(pool, key=lambda s: s.key(), reverse=True)[:k]

    def costliest_names(self, k: int = 3) -> list[str]:
        """The ``k`` layers (or blocks) that cost the most: measured, or else the table's lowest own SNR."""
        if self.sensitivities or not self.own_snr:
            return [s.unit for s in self.costliest(k)]
        return sorted(self.own_snr, key=self.own_snr.get)[:k]

    def summary(self) -> str:
        b = self.best
        ret = f", retention {b.retention:.4f}" if b.retention is not None else ""
        costly = ", ".join(
            f"{s.unit} (costs {s.cost:.4f}{'' if s.cost > EPS else f', output error {s.error_reduction:+.2g}'})"
            for s in self.costliest()
        ) or ", ".join(f"{n} (own SNR {self.own_snr[n]:.1f} dB)" for n in self.costliest_names())
        return (
            f"best reachable {self.metric_name} {b.metric:.4f} vs FP32 {self.baseline:.4f} (drop {b.drop:.4f}{ret}) "
            f"with {len(b.excluded)} layer(s) in FP32 ({b.fp32_fraction:.0%} of the quantizable weights, limit "
            f"{self.max_fp32_fraction:.0%}); budget: {self.budget.describe()}; costliest layers: {costly or 'none measured'}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric_name,
            "eval_samples": self.eval_samples,
            "baseline": round(self.baseline, 6),
            "budget": {
                "max_drop": self.budget.max_drop,
                "min_retention": self.budget.min_retention,
                "min_metric": round(self.budget.min_metric(self.baseline), 6),
            },
            "budget_met": self.met,
            "strategy": self.strategy,
            "max_fp32_fraction": self.max_fp32_fraction,
            "user_excluded": list(self.initial_excluded),
            "excluded": self.excluded,
            "final": {
                "metric": round(self.best.metric, 6),
                "drop": round(self.best.drop, 6),
                "retention": None if self.best.retention is None else round(self.best.retention, 6),
                "fp32_weight_fraction": round(self.best.fp32_fraction, 4),
            },
            "kept_fp32": self.kept_fp32,
            "sensitivity": [s.as_dict() for s in sorted(self.sensitivities, key=lambda s: s.key(), reverse=True)],
            "layer_sensitivity": {
                n: s.as_dict() for n, s in sorted(self.layer_sensitivity.items(), key=lambda kv: kv[1].key(), reverse=True)
            },
            "costliest": self.costliest_names(),
            **({"layer_own_snr_db": dict(sorted(self.own_snr.items(), key=lambda kv: kv[1]))} if self.own_snr else {}),
            "candidates": [t.as_dict() for t in self.trials],
            "seconds": round(self.seconds, 2),
        }


def _units(layers: Sequence[Layer], group_above: int) -> tuple[list[tuple[str, tuple[str, ...]]], str]:
    if len(layers) <= group_above:
        return [(lay.name, (lay.name,)) for lay in layers], "per-layer leave-one-out ranking, greedy, prune"
    groups: dict[str, list[str]] = {}
    for lay in layers:
        groups.setdefault(lay.group, []).append(lay.name)
    return (
        [(g if len(names) > 1 else names[0], tuple(names)) for g, names in groups.items()],
        "leave-one-block-out ranking, then per-layer ranking inside the blocks, greedy, prune",
    )


def search_exclusions(
    layers: Sequence[Layer],
    build: Callable[[list[str]], Artifact],
    eval_set: EvalSet,
    budget: Budget,
    baseline: float,
    *,
    initial_excluded: Sequence[str] = (),
    max_fp32_fraction: float = 0.5,
    group_above: int = 12,
    runtime: str | None = None,
    layer_table: Callable[[], dict[str, float] | None] | None = None,
) -> SearchResult:
    """Find the fewest layers to keep in float so that the eval metric meets ``budget``.

    ``layers``: the quantizable nodes; ``build(excluded)`` writes a candidate with those node names in
    float and returns it as an :class:`Artifact` (it may reuse one scratch directory: each candidate is
    loaded, evaluated and closed before the next build). ``baseline``: the FP32 metric on ``eval_set``
    (see :meth:`EvalSet.set_reference`, which must have been called). ``runtime`` overrides the runtime
    that loads candidates. ``layer_table``: called once the all-quantized candidate misses the budget, returns each
    layer's own SNR in dB from the per-layer error table (lower: adds more error), which then orders the float
    fallbacks instead of the leave-one-out ranking (None or empty: rank by leave-one-out). See the module docstring
    for the strategy.
    """
    if eval_set.reference is None:
        raise ValueError("call eval_set.set_reference(fp32_backend) before the search")
    search = _Search(layers, build, eval_set, budget, baseline, initial_excluded, max_fp32_fraction, runtime)
    full = search.trial(search.initial, "all quantized")
    if full.meets:
        return search.finish(full, True, "everything quantized met the budget")

    free = [lay for lay in layers if lay.name not in search.initial]
    table = layer_table() if layer_table is not None else None
    search.current = full
    if table:
        search.own_snr = {n: v for n, v in table.items() if n in {lay.name for lay in free}}
        strategy = ("per-layer error table ranking (the error each layer adds itself), bisection on how many of the "
                    "first layers stay float, prune")
        order = sorted(search.own_snr, key=search.own_snr.get)
        order += [lay.name for lay in free if lay.name not in search.own_snr]
        log.info("accuracy-aware: budget not met with everything quantized; keeping layers in float in the order of "
                 "the per-layer error table (%d layers)", len(order))
        found = search.bisect(order)
        if found is None:  # the table's order cannot meet it within the float share: measure instead
            units, ranked = _units(free, group_above)
            log.info("accuracy-aware: the per-layer table's order misses the budget within the float-share limit; "
                     "ranking %d unit(s) by leave-one-out instead", len(units))
            strategy = f"{strategy}; missed within the float-share limit, then {ranked}"
            search.current = full
            found = search.greedy(search.rank(units, full))
    else:
        units, strategy = _units(free, group_above)
        log.info("accuracy-aware: budget not met with everything quantized; ranking %d unit(s) (%s)", len(units),
                 strategy)
        found = search.greedy(search.rank(units, full))
    if found is not None:
        return search.finish(search.prune(found), True, strategy)
    eligible = [t for t in search.trials if t.fp32_fraction <= search.limit] or [full]
    best = max(eligible, key=lambda t: (round(t.metric, 9), -t.fp32_fraction, -len(t.excluded)))
    return search.finish(best, False, strategy)


class _Search:
    """One accuracy-aware search's state: the candidates measured (each excluded set once), the sensitivities
    found, and the layers kept in float so far (see :func:`search_exclusions`)."""

    def __init__(self, layers: Sequence[Layer], build: Callable[[list[str]], Artifact], eval_set: EvalSet,
                 budget: Budget, baseline: float, initial_excluded: Sequence[str], max_fp32_fraction: float,
                 runtime: str | None) -> None:
        self.layers, self.build, self.eval_set, self.budget, self.baseline = layers, build, eval_set, budget, baseline
        self.max_fp32_fraction, self.runtime = max_fp32_fraction, runtime
        self.t_start = time.perf_counter()
        self.known = {lay.name for lay in layers}
        self.initial = tuple(n for n in dict.fromkeys(initial_excluded))
        self.total = sum(lay.params for lay in layers) or 1
        self.params = {lay.name: lay.params for lay in layers}
        self.op_of = {lay.name: lay.op_type for lay in layers}
        self.trials: list[Trial] = []
        self.cache: dict[frozenset, Trial] = {}
        self.sensitivities: list[Sensitivity] = []
        self.layer_sens: dict[str, Sensitivity] = {}
        self.own_snr: dict[str, float] = {}  # from the per-layer error table, when it orders the search
        self.excluded = list(self.initial)
        self.current: Trial | None = None
        self.limit = max_fp32_fraction + EPS

    def fraction(self, excluded) -> float:
        return sum(self.params.get(n, 0) for n in excluded if n in self.known) / self.total

    def trial(self, excluded: Sequence[str], phase: str) -> Trial:
        """Build, load and score the candidate with ``excluded`` in float (once per set)."""
        from compress.runtimes.base import load_runtime

        key = frozenset(excluded)
        if key in self.cache:
            return self.cache[key]
        t0 = time.perf_counter()
        initial, eval_set, baseline = self.initial, self.eval_set, self.baseline
        ordered = [n for n in initial if n in key] + [lay.name for lay in self.layers
                                                      if lay.name in key and lay.name not in initial]
        art = self.build(list(ordered))
        backend = load_runtime(art, self.runtime)
        try:
            metric, error = score_outputs(predict_outputs(backend, eval_set), eval_set)
        finally:
            backend.close()
        t = Trial(excluded=tuple(ordered), metric=metric, output_error=error, drop=baseline - metric,
                  retention=(metric / baseline) if baseline > 0 else None, fp32_fraction=self.fraction(ordered),
                  meets=self.budget.holds(baseline, metric), phase=phase, seconds=time.perf_counter() - t0)
        self.cache[key] = t
        self.trials.append(t)
        log.info(
            "accuracy-aware [%s] %d in float: %s %.4f (drop %.4f, output error %.3g)%s",
            phase, len(ordered), eval_set.metric_name, metric, t.drop, error, " - budget met" if t.meets else "",
        )
        return t

    def rank(self, units: list[tuple[str, tuple[str, ...]]], full: Trial):
        """Leave each unit out of quantization alone; the units with their sensitivities, most sensitive first."""
        for unit, names in units:
            t = self.trial([*self.initial, *names], "rank")
            s = Sensitivity(unit, names, t.metric - full.metric, full.output_error - t.output_error, self.initial)
            self.sensitivities.append(s)
            if len(names) == 1:
                self.layer_sens[names[0]] = s
        return sorted(zip(units, self.sensitivities), key=lambda us: us[1].key(), reverse=True)

    def add(self, name: str) -> Trial | None:
        """Keep ``name`` in float too (unless that passes the float-share limit) and measure."""
        if self.fraction([*self.excluded, name]) > self.limit:
            log.info("accuracy-aware: %s would put more than %.0f%% of the weights in float; skipped",
                     name, 100 * self.max_fp32_fraction)
            return None
        self.excluded.append(name)
        self.current = self.trial(self.excluded, "greedy")
        return self.current

    def greedy(self, order) -> Trial | None:
        """Add units in order of sensitivity (a block's layers ranked inside it first) until the budget holds."""
        for (unit, names), _ in order:
            if len(names) == 1:
                t = self.add(names[0])
                if t is not None and t.meets:
                    return t
                continue
            # refine a block: rank its layers relative to what is already in float
            base = self.current
            ranked = []
            for name in names:  # layers beyond the float-share limit are measured too: they belong in the diagnosis
                t = self.trial([*self.excluded, name], "rank in " + unit)
                s = Sensitivity(name, (name,), t.metric - base.metric, base.output_error - t.output_error,
                                tuple(self.excluded))
                self.layer_sens[name] = s
                ranked.append(s)
            for s in sorted(ranked, key=lambda s: s.key(), reverse=True):
                t = self.add(s.unit)
                if t is not None and t.meets:
                    return t
        return None

    def bisect(self, order: list[str]) -> Trial | None:
        """The shortest run of ``order``'s first layers (those that fit the float-share limit, in order) whose float
        copies meet the budget, by bisection on its length (meeting it is taken to grow with the run's length)."""
        eligible: list[str] = []
        for name in order:
            if self.fraction([*self.initial, *eligible, name]) <= self.limit:
                eligible.append(name)
        if not eligible:
            return None
        top = self.trial([*self.initial, *eligible], "bisect")
        if not top.meets:
            return None
        lo, hi, best = 0, len(eligible), top  # the first lo layers miss the budget, the first hi meet it
        while hi - lo > 1:
            mid = (lo + hi) // 2
            t = self.trial([*self.initial, *eligible[:mid]], "bisect")
            lo, hi, best = (lo, mid, t) if t.meets else (mid, hi, best)
        return best

    def prune(self, t: Trial) -> Trial:
        """Greedy adds can over-shoot: put back (quantize) kept layers whose float copy is not needed."""
        layer_sens = self.layer_sens
        chosen = [n for n in t.excluded if n not in self.initial]
        own = self.own_snr  # measured sensitivities first; else the table's: the least error goes back first
        for name in sorted(chosen, key=lambda n: layer_sens[n].key() if n in layer_sens else
                           (-own.get(n, 0.0), 0.0) if own else (0.0, 0.0)):
            if len(chosen) <= 1:
                break
            rest = [n for n in chosen if n != name]
            candidate = self.trial([*self.initial, *rest], "prune")
            if candidate.meets:
                chosen, t = rest, candidate
        return t

    def finish(self, best: Trial, met: bool, strategy: str) -> SearchResult:
        """The result, with why each layer of ``best`` beyond the initial ones stays in float."""
        eval_set = self.eval_set
        items = []
        for name in best.excluded:
            if name in self.initial:
                continue
            s = self.layer_sens.get(name) or next((u for u in self.sensitivities if name in u.layers), None)
            cost = s.cost if s else 0.0
            if s is None and name in self.own_snr:
                reason = (f"kept FP32: among the layers that add the most error when quantized (own SNR "
                          f"{self.own_snr[name]:.1f} dB in the per-layer table)")
            elif s is None:
                reason = "kept FP32"
            elif cost > EPS:
                reason = f"kept FP32: costs {cost:.4f} {eval_set.metric_name} when quantized"
            else:
                reason = (
                    f"kept FP32: no measurable {eval_set.metric_name} change alone on {len(eval_set)} rows, "
                    f"but reduces output error vs FP32 by {s.error_reduction:.4g}"
                )
            items.append({"node": name, "op_type": self.op_of.get(name), "sensitivity": round(cost, 6),
                          **({"own_snr_db": self.own_snr[name]} if name in self.own_snr else {}),
                          "error_reduction": None if s is None else round(s.error_reduction, 6),
                          "measured_as": None if s is None else s.unit, "reason": reason})
        return SearchResult(
            metric_name=eval_set.metric_name, baseline=self.baseline, budget=self.budget, eval_samples=len(eval_set),
            max_fp32_fraction=self.max_fp32_fraction, initial_excluded=self.initial, trials=self.trials,
            sensitivities=self.sensitivities, layer_sensitivity=self.layer_sens, best=best, met=met, kept_fp32=items,
            seconds=time.perf_counter() - self.t_start, strategy=strategy, own_snr=self.own_snr,
        )
