"""Latency measurement and statistics, the shapes of measurement (one forward pass, a prompt then N generated
tokens, a stream of chunks: :class:`Measurement`), plus the fresh-process probe for cold start and peak memory.

Percentiles use the nearest-rank definition: the p-th percentile of n sorted samples is the value at
rank ceil(p/100 * n) (1-based). Every figure is reported with its run count and coefficient of variation.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from compress.errors import StageError
from compress.progress import Progress, start_phase
from compress.tasks import Kind


def nearest_rank(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (p in (0, 100])."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def quantile_ci(sorted_values: list[float], p: float, confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the p-th percentile from order statistics.

    The number of samples below the true percentile is Binomial(n, p/100); the interval runs from
    the order statistics at ranks np ∓ z·sqrt(np(1-p)) (normal approximation, ranks clipped to 1..n).
    It assumes independent runs, which consecutive timings only approximate.
    """
    n = len(sorted_values)
    if n == 0:
        raise ValueError("no samples")
    q = p / 100.0
    z = {0.90: 1.6449, 0.95: 1.9600, 0.99: 2.5758}.get(confidence, 1.96)
    half = z * math.sqrt(n * q * (1 - q))
    lo = max(1, math.floor(n * q - half))
    hi = min(n, math.ceil(n * q + half) + 1)
    return sorted_values[lo - 1], sorted_values[hi - 1]


@dataclass
class LatencyStats:
    """Latency of one configuration, in milliseconds."""

    n: int
    p50: float
    p90: float
    p95: float
    p99: float
    mean: float
    std: float
    min: float
    max: float
    cv: float
    total_s: float
    batch_size: int
    throughput: float  # samples per second
    ci95: dict[str, tuple[float, float]] | None = None  # percentile -> 95% confidence interval (ms)
    samples_ms: list[float] | None = None  # every timed call, in order (kept in reports for the regression gate)

    @classmethod
    def from_samples(cls, samples_s: list[float], batch_size: int) -> LatencyStats:
        raw = [round(s * 1e3, 5) for s in samples_s]
        ms = sorted(s * 1e3 for s in samples_s)
        n = len(ms)
        mean = sum(ms) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in ms) / (n - 1)) if n > 1 else 0.0
        total = sum(samples_s)
        return cls(
            n=n,
            p50=nearest_rank(ms, 50), p90=nearest_rank(ms, 90), p95=nearest_rank(ms, 95), p99=nearest_rank(ms, 99),
            mean=mean, std=std, min=ms[0], max=ms[-1], cv=std / mean if mean else 0.0, total_s=total,
            batch_size=batch_size, throughput=batch_size * n / total if total else 0.0,
            ci95={f"p{p}": quantile_ci(ms, p) for p in (50, 90, 95, 99)}, samples_ms=raw,
        )

    def as_dict(self) -> dict[str, Any]:
        out = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()
               if k not in ("ci95", "samples_ms")}
        if self.ci95:
            out["ci95"] = {k: [round(lo, 4), round(hi, 4)] for k, (lo, hi) in self.ci95.items()}
        return out


def measure_interleaved(
    runs: dict[str, Callable[[], Any]],
    *,
    batch_size: int,
    warmup: int = 10,
    min_runs: int = 100,
    min_duration_s: float = 5.0,
    max_runs: int = 10000,
    rounds: int = 10,
    progress: Progress | None = None,
    phase: str = "timing",
) -> dict[str, LatencyStats]:
    """Time each callable until every one has ``min_runs`` samples and ``min_duration_s`` of timed work.

    ``progress`` hears ``phase`` start, then after each round the ``fraction`` of the work done
    (:func:`compress.progress.start_phase`).

    The callables run in alternating rounds (A×k, B×k, A×k, ...) so that slow drifts of a shared,
    noisy machine hit all of them alike: ratios between them are then fair. Each callable must
    finish its work before returning (GPU adapters synchronise inside).
    """
    from compress.device.shipped import time_interleaved

    advance = start_phase(progress, phase) if progress else None

    def on_round(samples: dict[str, list[float]]) -> None:
        advance(min(
            min(min(len(s) / min_runs, sum(s) / min_duration_s if min_duration_s else 1.0), 1.0)
            for s in samples.values()
        ))

    samples = time_interleaved(runs, warmup, min_runs, min_duration_s, max_runs, rounds,
                               on_round=on_round if advance else None)
    return {name: LatencyStats.from_samples(s, batch_size) for name, s in samples.items()}


# -- measurement shapes --------------------------------------------------------------------------
#
# A measurement is a shape of work timed on the host: one forward pass (validate's), a prompt then N generated
# tokens, a stream of chunks with the state fed back. Each is built with what it times and returns its figures as
# LatencyStats by name, so reports read them alike.


@runtime_checkable
class Measurement(Protocol):
    """A shape of measurement: ``measure(progress)`` times its work and returns :class:`LatencyStats` by name."""

    kind: ClassVar[Kind]  #: the kind of model it times (compress.tasks.kind_of)

    def measure(self, progress: Progress | None = None) -> dict[str, LatencyStats]: ...


@dataclass
class ForwardPass:
    """One forward pass per call: each callable (an artifact's ``run`` then ``synchronize``, its baseline's) timed
    in interleaved rounds by :func:`measure_interleaved`; the figures are each callable's by its name."""

    kind: ClassVar[Kind] = "forward"
    runs: dict[str, Callable[[], Any]]
    batch_size: int
    warmup: int = 10
    min_runs: int = 100
    min_duration_s: float = 5.0
    max_runs: int = 10000
    rounds: int = 10
    phase: str = "timing"

    def measure(self, progress: Progress | None = None) -> dict[str, LatencyStats]:
        return measure_interleaved(
            self.runs, batch_size=self.batch_size, warmup=self.warmup, min_runs=self.min_runs,
            min_duration_s=self.min_duration_s, max_runs=self.max_runs, rounds=self.rounds, progress=progress,
            phase=self.phase,
        )


@dataclass
class Generation:
    """A prompt, then ``new_tokens`` generated greedily, through the backend's generation loop (its
    :meth:`~compress.runtimes.base.RuntimeBackend.generate`, timed: the runtime's own loop where the adapter runs it,
    else edgecompress's prefill/step loop), repeated ``repeats`` times after ``warmup`` untimed ones.

    Figures: ``time_to_first_token`` (the prefill and the first pick, one sample per repeat), ``decode`` (one sample
    per further token; its ``throughput`` is decode tokens per second) and ``decode_host`` (each decode token's time
    outside the runtime's own calls: Python, feeds, copies)."""

    kind: ClassVar[Kind] = "generation"
    backend: Any
    prompt: list[int]
    new_tokens: int = 16
    repeats: int = 5
    warmup: int = 1

    def generate(self) -> Any:
        """One timed generation (:class:`~compress.tasks.generation.Generated`, its ``seconds`` and
        ``native_seconds`` filled): the first token from the prompt, then ``new_tokens`` decode steps."""
        return self.backend.generate(self.prompt, self.new_tokens + 1, timed=True)

    def measure(self, progress: Progress | None = None) -> dict[str, LatencyStats]:
        advance = start_phase(progress, "generation") if progress else None
        for _ in range(self.warmup):
            self.generate()
        samples = GenerationSamples()
        for i in range(self.repeats):
            samples.add(self.generate())
            if advance:
                advance((i + 1) / self.repeats)
        return samples.stats()


@dataclass
class GenerationSamples:
    """Timed generations' samples, gathered: each run's first token, its further tokens, and their host overhead."""

    first: list[float] = field(default_factory=list)
    decode: list[float] = field(default_factory=list)
    host: list[float] = field(default_factory=list)
    runs: list[float] = field(default_factory=list)  #: each generation's decode seconds (its tokens after the first)

    def add(self, made: Any) -> float:
        """One timed generation's samples; returns its seconds in all."""
        self.first.append(made.seconds[0])
        self.decode += made.seconds[1:]
        self.runs.append(float(sum(made.seconds[1:])))
        self.host += [max(0.0, t - n) for t, n in zip(made.seconds[1:], made.native_seconds[1:], strict=True)]
        return float(sum(made.seconds))

    def stats(self) -> dict[str, LatencyStats]:
        out = {"time_to_first_token": LatencyStats.from_samples(self.first, 1),
               "decode": LatencyStats.from_samples(self.decode, 1)}
        if self.host:
            out["decode_host"] = LatencyStats.from_samples(self.host, 1)
        return out


def measure_generations(backends: dict[str, Any], prompt: list[int], new_tokens: int, *, warmup: int = 1,
                        min_rounds: int = 5, min_duration_s: float = 0.0, max_rounds: int = 1000,
                        progress: Progress | None = None,
                        phase: str = "timing generation") -> dict[str, GenerationSamples]:
    """Several generation routes timed side by side: each backend (anything with the runtime contract's
    ``generate(prompt, n, timed=True)``: a runtime adapter, or a benchmark's anchor) makes ``warmup`` untimed
    generations, then rounds in which every backend makes one timed :class:`Generation` (``prompt``, then
    ``new_tokens`` decode steps), in the given order on even rounds and reversed on odd ones, so that slow drifts of a
    shared machine fall on every route alike. Rounds go on until there are ``min_rounds`` and ``min_duration_s`` of
    timed work, or ``max_rounds``. ``progress`` hears ``phase`` start, then the fraction done after each round.
    Returns each backend's :class:`GenerationSamples` (its ``stats()`` are the figures; ``runs`` are per round)."""
    gens = {name: Generation(b, prompt, new_tokens=new_tokens) for name, b in backends.items()}
    advance = start_phase(progress, phase) if progress else None
    for _ in range(warmup):  # inside the phase: a warm-up generation of a real model takes a while too
        for g in gens.values():
            g.generate()
    samples = {n: GenerationSamples() for n in gens}
    rounds, spent = 0, 0.0
    while rounds < min_rounds or (spent < min_duration_s and rounds < max_rounds):
        order = list(gens) if rounds % 2 == 0 else list(reversed(gens))
        for name in order:
            spent += samples[name].add(gens[name].generate())
        rounds += 1
        if advance:
            advance(min(1.0, min(rounds / min_rounds if min_rounds else 1.0,
                                 spent / min_duration_s if min_duration_s else 1.0)))
    return samples


@dataclass
class Stream:
    """A stream of chunks (audio frames, sensor windows) through a stateful step, the state fed back from chunk to
    chunk: a runtime's ``prefill`` on the first chunk then ``step`` on each next one, the whole stream ``repeats``
    times (after ``warmup`` untimed passes). Figures: ``chunk``, one sample per chunk."""

    kind: ClassVar[Kind] = "stream"
    backend: Any
    chunks: list[dict[str, Any]]
    repeats: int = 5
    warmup: int = 1

    def run_stream(self) -> tuple[list[float], list[dict[str, Any]]]:
        """One timed pass over the stream: (each chunk's seconds, each chunk's outputs), through the runtime's loop
        (:meth:`~compress.runtimes.base.RuntimeBackend.run_steps`)."""
        rest = iter(self.chunks[1:])
        seen, seconds = self.backend.run_steps(self.chunks[0], len(self.chunks) - 1, lambda _out, _feeds: next(rest),
                                               timed=True)
        return seconds, seen

    def measure(self, progress: Progress | None = None) -> dict[str, LatencyStats]:
        advance = start_phase(progress, "stream") if progress else None
        for _ in range(self.warmup):
            self.run_stream()
        samples = []
        for i in range(self.repeats):
            samples += self.run_stream()[0]
            if advance:
                advance((i + 1) / self.repeats)
        rows = len(next(iter(self.chunks[0].values())))
        return {"chunk": LatencyStats.from_samples(samples, rows)}


# -- fresh-process probe -------------------------------------------------------------------------

def probe_target(source: Any) -> Path:
    """What the fresh process loads for ``source`` (an :class:`~compress.artifact.Artifact` or a path): an artifact's
    directory; for a source measured as it is (a checkpoint, a model file: described as an artifact but not one on
    disk) the checkpoint or file it was read from, which its manifest's ``source`` names."""
    from compress.artifact import is_artifact

    path = Path(getattr(source, "path", source))
    if is_artifact(path) or not hasattr(source, "manifest") or source.manifest.source is None:
        return path
    return Path(source.manifest.source.path)


def probe_cold_start(
    artifact: Any,
    runtime: str,
    threads: int | None,
    provider: str | None,
    batch_size: int,
    sequence_length: int,
    timeout_s: float = 600,
    feeds: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``python -m compress.validation.probe`` in a fresh process: phases of a cold start and peak RSS.
    ``artifact``: an :class:`~compress.artifact.Artifact` (or its directory), or a source measured as it is
    (:func:`probe_target`). ``feeds``: the model's inputs to run (numpy arrays by input name: the batch the caller
    timed), else the probe makes seeded ones of the declared shapes."""
    import tempfile

    import numpy as np

    cmd = [
        sys.executable, "-m", "compress.validation.probe", str(probe_target(artifact)), "--runtime", runtime,
        "--batch-size", str(batch_size), "--sequence-length", str(sequence_length),
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    if provider:
        cmd += ["--provider", provider]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    with tempfile.TemporaryDirectory(prefix="edgecompress-probe-") as tmp:
        if feeds is not None:
            np.savez(Path(tmp) / "feeds.npz", **{k: np.asarray(v) for k, v in feeds.items()})
            cmd += ["--feeds", str(Path(tmp) / "feeds.npz")]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise StageError(f"cold-start probe failed: {last}", hint="rerun with --debug")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_ms"] = round(wall * 1e3, 2)
    return result
