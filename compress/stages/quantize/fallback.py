"""Static INT8's own check on rows held out from calibration, and its fall-back to float where the check fails
(issue 69: a default INT8 that does not silently ruin a real model).

1. **The split** (:func:`split_calibration`): the calibration data's rows beyond ``calibration.samples`` are held out
   when there are at least :data:`MIN_HELD_OUT` of them (up to ``parity_samples``); otherwise every
   :data:`HOLD_OUT_EVERY`-th row is held out and the others calibrate; ``--sample-data``, where given, is the held-out
   set. Fewer than :data:`MIN_SPLIT_ROWS` rows are not split: the check then reads calibration rows, and says so.
2. **The check** (:class:`HeldOutCheck`): the quantized candidate against the FP32 model on the held-out rows, the
   figures of quantize's parity (mean and lowest output cosine, top-1 agreement of a classifier) and the task's own
   (``TaskInfo.output_agreement``: a detector's score-map cosine and box IoU), judged by the floors of
   :mod:`compress.stages.quantize.parity`.
3. **The fall-back** (:func:`fall_back`), only where the all-INT8 candidate fails it: the quantizable layers, in graph
   order, are cut into :data:`GROUPS` runs; each run is quantized *alone* (every other layer float) and its shortfall
   measured on a few calibration rows; the runs go back to float worst first, each step re-quantized and checked on
   the held-out rows, until the check holds or the float layers would exceed ``accuracy.max_fp32_fraction`` (0.5
   by default, the accuracy-aware search's cap) of the quantizable weights. A run stays float only where its step
   brings the candidate closer to FP32 (:func:`distance`), and the candidate written is the closest one checked:
   on PP-OCRv4's text detector (``benchmarks/vision/paddle_ocr.py``) the stem's run alone took the held-out map cosine
   from 0.75 to 0.99, and each run floated after it took it lower again (0.96, then 0.83 at half the weights float),
   which the fall-back used to keep and write. Where the cap stops a run and the check still fails, the runs left
   are halved, ranked and stepped through the same way (:data:`REFINE` times): a part of a run too big to float may
   fit (YOLOX-Nano: 0.994 to 0.996 score cosine, its check held). What is kept float, why, and the figures before
   and after go to the manifest (``fallback``).

Why runs of layers and not the per-layer error table's own-SNR ranking: on YOLOX-Nano (``benchmarks/vision/yolox_nano.py``)
the table blames layers all over the graph, and keeping 107 of its 113 convolutions float in the table's order still
left the output cosine at 0.938 (all INT8: 0.931), because the two it kept INT8 were the stem's first two: an error
of 17-26 dB there is amplified by every layer after it, which a table of the error each layer adds *itself* cannot
see. Quantizing one run alone measures what each run does to the output, amplification included, in
:data:`GROUPS` cheap candidates (mostly-float graphs quantize fast). The per-layer table of what was written stays in
the manifest (``layer_errors``).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.artifact import Artifact, copy_tokenizer_files
from compress.data.inputs import sample_inputs
from compress.progress import Progress, start_phase
from compress.stages.common import compare_outputs
from compress.stages.quantize.parity import collapse
from compress.tasks import TASKS, load

log = logging.getLogger(__name__)

#: rows beyond calibration.samples held out as they are when at least this many
MIN_HELD_OUT = 8
#: otherwise every n-th row is held out
HOLD_OUT_EVERY = 4
#: fewer rows than this are not split (the check reads calibration rows)
MIN_SPLIT_ROWS = 8
#: runs of layers (graph order) ranked by the fall-back
GROUPS = 8
#: calibration rows on which each run's shortfall is measured
RANK_ROWS = 16


@dataclass
class CalibrationSplit:
    """The rows that calibrate and the rows the check reads, and how they were split (for the manifest and log)."""

    calibration: list[Any]
    held_out: list[Any]
    how: str
    disjoint: bool = True

    def warning(self) -> str | None:
        """What a check on rows that also calibrated cannot see, and the fix (None when rows were held out)."""
        if self.disjoint:
            return None
        return (f"static INT8 was checked on its own calibration rows, not held-out ones ({self.how}): a range "
                f"fitted to too few rows goes unseen; give --calibration at least {MIN_SPLIT_ROWS} rows")

    def record(self) -> dict[str, Any]:
        return {"calibration_rows": len(self.calibration), "held_out_rows": len(self.held_out), "split": self.how,
                "disjoint": self.disjoint}


def split_calibration(config, preprocess) -> CalibrationSplit:
    """The split of ``config``'s calibration data (see the module docstring)."""
    samples, want = config.calibration.samples, config.parity_samples
    rows = sample_inputs(config.calibration.data, samples + want, preprocess)
    if config.sample_data:
        held = sample_inputs(config.sample_data, want, preprocess)
        return CalibrationSplit(rows[:samples], held, f"calibration: the first {min(samples, len(rows))} rows of "
                                f"--calibration; held out: {len(held)} rows of --sample-data")
    if len(rows) - samples >= MIN_HELD_OUT:
        return CalibrationSplit(rows[:samples], rows[samples:], f"calibration: the first {samples} rows; held out: "
                                f"the next {len(rows) - samples}")
    if len(rows) >= MIN_SPLIT_ROWS:
        held_at = set(range(HOLD_OUT_EVERY - 1, len(rows), HOLD_OUT_EVERY)[:want])
        return CalibrationSplit([r for i, r in enumerate(rows) if i not in held_at],
                                [r for i, r in enumerate(rows) if i in held_at],
                                f"every {HOLD_OUT_EVERY}th of {len(rows)} rows held out ({len(held_at)}), the other "
                                f"{len(rows) - len(held_at)} calibrate")
    return CalibrationSplit(rows, rows[:want], f"not split: {len(rows)} rows (fewer than {MIN_SPLIT_ROWS}); the "
                            "check reads calibration rows", disjoint=False)


class HeldOutCheck:
    """The FP32 model's outputs on some rows, kept, to judge quantized candidates against (:meth:`measure`), both run
    in ``runtime`` (a runtime backend's class, or :func:`~compress.runtimes.base.load_runtime`; ONNX Runtime's unless
    given)."""

    def __init__(self, art: Artifact, rows: list[Any], runtime: Callable[[Artifact], Any] | None = None) -> None:
        if runtime is None:
            from compress.runtimes.ort_backend import OrtBackend as runtime

        self.art, self.runtime = art, runtime
        reference = runtime(art)
        try:
            self.batch = reference.encode(rows)
            self.ref = reference.predict(self.batch)
        finally:
            reference.close()
        self.n = len(rows)
        self.rows = rows
        spec = TASKS[art.manifest.task].output_agreement
        self.agreement = load(spec) if spec else None

    def measure(self, model: Path) -> dict[str, Any]:
        """The parity figures (and the task's own) of the model file at ``model`` (a candidate of ``art``)."""
        copy_tokenizer_files(self.art.path, model.parent)
        candidate = self.runtime(Artifact(model.parent, self.art.manifest.with_model_file(model.name)))
        try:
            cand = candidate.predict(self.batch)
        finally:
            candidate.close()
        m = self.art.manifest
        figures = compare_outputs(self.ref, cand, m.labels is not None).as_dict()
        if self.agreement is not None:
            figures.update({k: round(v, 6) for k, v in self.agreement(m, cand, self.ref).items()})
        return figures


def _gaps(figures: dict[str, Any]) -> list[float]:
    """1 - each cosine-like figure of ``figures``; a probability map's pooled ``map_cosine`` stands for the mean
    per-row cosine (:func:`~compress.tasks.maps.mask_agreement`)."""
    keys = ("score_cosine", "box_iou", "mask_iou", "map_cosine", "argmax_agreement",
            *(("cosine_mean",) if figures.get("map_cosine") is None else ()))
    return [1.0 - float(figures[k]) for k in keys if figures.get(k) is not None]


def shortfall(figures: dict[str, Any]) -> float:
    """How far ``figures`` are from agreeing with the FP32 model: the worst of 1 - each cosine-like figure (a run
    quantized alone is ranked by it)."""
    return max(_gaps(figures))


def distance(figures: dict[str, Any]) -> float:
    """The sum of 1 - each cosine-like figure: a step back to float is kept where it lowers this (every figure
    counts, so a figure stuck at its worst, a classifier's agreement at 0 while its cosine climbs, does not hide the
    progress of the others)."""
    return sum(_gaps(figures))


@dataclass
class FallBack:
    """What :func:`fall_back` decided: the layers it put back to float (beyond ``base``), the candidate file that
    holds them, its held-out figures, and the record for the manifest."""

    exclude: list[str]
    model: Path
    figures: dict[str, Any]
    record: dict[str, Any]
    check: HeldOutCheck


def fall_back(art: Artifact, q, layers: list, base: list[str], split: CalibrationSplit, scratch: Path,
              progress: Progress | None = None) -> FallBack:
    """Quantize ``art`` with ``q`` (``base`` kept float), check it on ``split``'s held-out rows, and where the check
    fails put runs of layers back to float until it holds (see the module docstring). Returns the candidate to write;
    its ``record`` says what was decided and why (``held`` False: even the last candidate fails the check).
    ``progress`` hears the ranking (a tick per run quantized alone) and the steps back to float (a tick per step)."""
    t0 = time.perf_counter()
    check = HeldOutCheck(art, split.held_out)
    dst = scratch / "candidate" / art.manifest.model_file
    dst.parent.mkdir(parents=True, exist_ok=True)
    q.write(dst, base)
    figures = check.measure(dst)
    below = collapse(figures)
    record: dict[str, Any] = {"held_out": {**split.record(), "rows_judged": check.n}, "before": figures}
    if not below:
        return FallBack(list(base), dst, figures, {**record, "needed": False,
                                                   "seconds": round(time.perf_counter() - t0, 2)}, check)
    log.warning("static INT8 fails its check on %d held-out rows (%s): putting the layers that cost most back to "
                "float", check.n, "; ".join(below))
    free = [lay for lay in layers if lay.name not in base]
    k = min(GROUPS, len(free))
    runs = [free[i * len(free) // k:(i + 1) * len(free) // k] for i in range(k)]
    steps = _Steps(q, check, dst, base, sum(lay.params for lay in free) or 1, figures)
    ranker = HeldOutCheck(art, split.calibration[:RANK_ROWS]) if split.disjoint else check
    ranked: list[dict[str, Any]] = []
    for depth in range(REFINE + 1):  # runs first; where the cap stops them, the runs left halved
        costs = _rank(art, q, runs, [*base, *(lay.name for lay in free)], ranker, scratch, progress, depth)
        ranked += [{"first": r[0].name, "last": r[-1].name, "layers": len(r), "shortfall_alone": round(c, 6),
                    **({"refined": depth} if depth else {})} for r, c in zip(runs, costs)]
        if steps.float_worst_first(runs, costs, progress, depth):
            break
        runs = [half for r in runs if r[0].name not in steps.kept and len(r) > 1
                for half in (r[:len(r) // 2], r[len(r) // 2:])]
        if not runs:
            break
    held = not collapse(steps.figures)
    record.update(needed=True, held=held, after=steps.figures, float_nodes=steps.kept,
                  float_weight_share=round(steps.share, 4), max_float_share=steps.cap, runs=ranked, steps=steps.done,
                  seconds=round(time.perf_counter() - t0, 2))
    log.info("fall-back: %d layer(s) float (%.0f%% of the quantizable weights) in %.0f s: %s", len(steps.kept),
             100 * steps.share, record["seconds"], "the check holds" if held else "the check still fails")
    return FallBack(list(dict.fromkeys([*base, *steps.kept])), dst, steps.figures, record, check)


#: times the runs the float cap left are halved and ranked again when the check still fails
REFINE = 2


def _rank(art: Artifact, q, runs: list[list], every: list[str], ranker: HeldOutCheck, scratch: Path,
          progress: Progress | None, depth: int) -> list[float]:
    """Each run of ``runs`` quantized alone (every other layer of ``every`` float): its shortfall on the ranker's
    rows, amplification by the layers after it included."""
    probe = scratch / "probe" / art.manifest.model_file
    probe.parent.mkdir(parents=True, exist_ok=True)
    what = "runs of layers" if not depth else f"halves of the runs left (refinement {depth})"
    tick = start_phase(progress, f"fall-back: each of {len(runs)} {what} quantized alone", len(runs))
    costs = []
    for run in runs:
        names = {lay.name for lay in run}
        q.write(probe, list(dict.fromkeys(n for n in every if n not in names)))
        costs.append(shortfall(ranker.measure(probe)))
        tick(1)
    return costs


class _Steps:
    """The steps back to float: each run tried float beside the layers kept float so far, in a trial candidate
    checked on the held-out rows; kept (the trial moved to ``dst``) only where it brings the figures closer to FP32
    (:func:`distance`), and only while the float share stays under ``accuracy.max_fp32_fraction``."""

    def __init__(self, q, check: HeldOutCheck, dst: Path, base: list[str], total: int, figures: dict[str, Any]):
        self.q, self.check, self.dst, self.base, self.total = q, check, dst, base, total
        self.cap = q.config.accuracy.max_fp32_fraction
        self.kept: list[str] = []
        self.share = 0.0
        self.figures, self.worst = figures, distance(figures)  # the candidate at dst: all-INT8 until a step does better
        self.trial = dst.parent.parent / "trial" / dst.name
        self.trial.parent.mkdir(parents=True, exist_ok=True)
        self.done: list[dict[str, Any]] = []

    def float_worst_first(self, runs: list[list], costs: list[float], progress: Progress | None, depth: int) -> bool:
        """``runs`` tried float, costliest first, each that fits under the cap; True once the check holds."""
        tick = start_phase(progress, "fall-back: the costliest runs back to float until the check holds", len(runs))
        for i in sorted(range(len(runs)), key=lambda j: -costs[j]):
            run_share = sum(lay.params for lay in runs[i]) / self.total
            if self.share + run_share > self.cap:
                continue  # a cheaper run further down may still fit
            names = [lay.name for lay in runs[i]]
            self.q.write(self.trial, list(dict.fromkeys([*self.base, *self.kept, *names])))
            figures = self.check.measure(self.trial)
            gain = distance(figures) < self.worst  # a run whose float does not help stays INT8
            self.done.append({"run": i, "first": runs[i][0].name, "last": runs[i][-1].name, "layers": len(runs[i]),
                              **({"refined": depth} if depth else {}),
                              "float_weight_share": round(self.share + run_share, 4), "figures": figures,
                              "kept_float": gain})
            tick(1)
            if gain:
                self.share, self.kept = self.share + run_share, self.kept + names
                self.figures, self.worst = figures, distance(figures)
                _move_candidate(self.trial, self.dst)
                if not collapse(self.figures):
                    return True
        return False


def _move_candidate(src: Path, dst: Path) -> None:
    """The model file at ``src`` (and its external data, if any) to ``dst``."""
    src.replace(dst)
    for extra in src.parent.glob(f"{src.name}.data"):
        extra.replace(dst.parent / extra.name)


def copy_candidate(fb: FallBack, dst: Path) -> None:
    """The chosen candidate's model file (and its external data, if any) into ``dst``."""
    shutil.copyfile(fb.model, dst)
    for extra in fb.model.parent.glob(f"{fb.model.name}.data"):
        shutil.copyfile(extra, dst.parent / extra.name)


__all__ = ["CalibrationSplit", "FallBack", "HeldOutCheck", "copy_candidate", "distance", "fall_back", "shortfall",
           "split_calibration"]
