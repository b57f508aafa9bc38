"""Timing for the benchmark scripts: calls timed after a warm-up, several routes side by side in interleaved rounds,
and a median with its spread.

Side by side: every round runs each route once, in the routes' order on even rounds and reversed on odd ones, so a
slow drift of a shared machine (another job starting, the CPU warming) falls on every route alike and the per-round
ratios between routes stay fair. The value a round records is what the route returns (seconds, tokens/s, a dict of
figures); :func:`seconds_of` turns a callable into one that returns its own wall time.

Percentiles use :func:`compress.host.measure.nearest_rank` (the value at rank ceil(p/100 * n)); the median is the
middle value (the mean of the two middle ones for an even n: ``statistics.median``), as the scripts always wrote it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from compress.host.measure import nearest_rank


@dataclass(frozen=True)
class Spread:
    """A median with its spread: ``n`` values, their median, the 5th/25th/75th/95th percentiles (nearest rank), the
    extremes."""

    n: int
    median: float
    p5: float
    p25: float
    p75: float
    p95: float
    min: float
    max: float

    @property
    def iqr(self) -> float:
        """The interquartile range (p75 - p25)."""
        return self.p75 - self.p25

    def as_dict(self, digits: int = 4) -> dict[str, float | int]:
        """The figures for a results file, floats rounded to ``digits``."""
        return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def spread(values: Iterable[float]) -> Spread:
    """The :class:`Spread` of ``values`` (at least one)."""
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("no values")
    return Spread(n=len(xs), median=statistics.median(xs), p5=nearest_rank(xs, 5), p25=nearest_rank(xs, 25),
                  p75=nearest_rank(xs, 75), p95=nearest_rank(xs, 95), min=xs[0], max=xs[-1])


def median(values: Iterable[float]) -> float:
    """The median of ``values`` (the mean of the two middle ones for an even count)."""
    return statistics.median(list(values))


def seconds_of(fn: Callable[[], Any]) -> Callable[[], float]:
    """A callable that runs ``fn`` and returns its wall seconds (what a side-by-side round records for a route whose
    value is its time)."""

    def timed() -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return timed


def time_calls(fn: Callable[[], Any], *, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    timed = seconds_of(fn)
    return [timed() for _ in range(repeats)]


def round_order(names: Sequence[str], round_index: int, *, flip: bool = True) -> list[str]:
    """The routes' order in round ``round_index`` (from 0): as given on even rounds, reversed on odd ones (``flip``),
    else always as given."""
    return list(reversed(names)) if flip and round_index % 2 else list(names)


def side_by_side(routes: dict[str, Callable[[], Any]], rounds: int, *, warmup: int = 1, flip: bool = True,
                 on_round: Callable[[int, dict[str, list[Any]]], None] | None = None) -> dict[str, list[Any]]:
    """Each route's value per round: ``warmup`` untimed calls of each route, then ``rounds`` rounds in which every
    route runs once (order: :func:`round_order`). ``on_round(i, values)`` hears each round's end (a script logs, or
    saves what it has). Returns {route: [its value in round 0, 1, ...]}."""
    for fn in routes.values():
        for _ in range(warmup):
            fn()
    values: dict[str, list[Any]] = {name: [] for name in routes}
    for r in range(rounds):
        for name in round_order(list(routes), r, flip=flip):
            values[name].append(routes[name]())
        if on_round is not None:
            on_round(r, values)
    return values


def paired_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Round by round, ``a``'s value over ``b``'s (two routes timed side by side: the ratio of one round is free of
    the drift between rounds)."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} values against {len(b)}: not the same rounds")
    return [x / y for x, y in zip(a, b)]
