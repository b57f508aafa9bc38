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
2. **short**: a student distilled for ``short_steps`` steps, a short pruning recovery, quantized and validated on
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

import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from compress.errors import ConfigError, EdgeCompressError, OutputExistsError
from compress.search.config import Objective, SearchConfig
from compress.search.holdout import split_eval
from compress.search.trials import (exhausted, latency_ratio, measured_twin, new_shorts, skipped_before,
                                     teacher_fp32_ms, too_slow_like)
from compress.recipes.execute import _write_json
from compress.search.conclude import TIMING_NOISE, SearchResult, conclude, promote, violation
from compress.search.space import (
    KINDS, OPENVINO_QUANT, RUNTIME_SETTINGS, SHAPE_DIMS, Candidate, Fidelity, TeacherShape,
    all_candidates, candidate_steps, from_params, roofline, suggest, trial_params,
)

log = logging.getLogger(__name__)

MARKER = ".edgecompress-search"
#: the settings that define what a search directory searches; the rest (time, trials, ...) may change on resume
IDENTITY = ("teacher", "profile", "train", "eval", "holdout", "space", "short_steps", "short_recover_steps",
            "full_epochs", "full_augment", "full_recover_steps", "distill", "prune", "seed")
PATHS = ("teacher", "profile", "train", "eval", "holdout")
Progress = Callable[[str], None]


def _optuna():
    from compress._optional import require

    optuna = require("optuna", "edgecompress search")
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the search says what happened to each trial itself
    import warnings

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


class Search:
    """One search directory: its study, its store, its fidelities and its budgets."""

    def __init__(self, config: SearchConfig, search_dir: Path, progress: Progress | None = None):
        from compress.profiles import load_profile

        self.config = config
        self.dir = search_dir
        self.say: Progress = progress or (lambda line: None)
        self.store = search_dir / "store"
        self.profile = load_profile(config.profile)
        self.profile_ref = str(Path(config.profile).resolve()) if Path(config.profile).is_file() else config.profile
        self.budgets = self._budget_names()
        self.shape = self._shape()
        self.space = self._space()
        if True in self.space.get("vocab", []):
            self.shape = dataclasses.replace(self.shape, vocab_kept=_vocab_kept(Path(config.teacher), config.train))
        self.eval, self.holdout = self._data()
        self.peaks = self._peaks()
        kind = KINDS[self.shape.kind]
        distill, prune = {**kind.distill, **config.distill}, {**kind.prune, **config.prune}
        self.short = Fidelity("short", {"max_steps": config.short_steps, "eval_every": max(config.short_steps // 2, 1),
                                        **distill}, config.short_recover_steps, prune)
        augment = config.full_augment if kind.augments else 0
        full = {"epochs": config.full_epochs, **({"augment": augment} if augment else {})}
        # the pruned student's long recovery learns from the teacher itself, on the same augmented texts
        recovery = {"teacher": str(Path(config.teacher).resolve()), **({"recover_augment": augment} if augment else {})} \
            if kind.recovers_from_teacher else {}
        self.full = Fidelity("full", {**full, **distill}, config.full_recover_steps, {**recovery, **prune})
        self.t0 = time.monotonic()
        self.spent_before = 0.0
        self.study = None  # set by run_search: the time spent is recorded in it as the search goes
        self._recorded = 0.0
        self._estimates: dict[Candidate, dict[str, float | None]] = {}

    def record_time(self, force: bool = False) -> None:
        """Store the time spent in the study (at most once a minute unless ``force``), so a resumed search
        continues the same time budget, however it was stopped."""
        if self.study is not None and (force or time.monotonic() - self._recorded > 60):
            self._recorded = time.monotonic()
            self.study.set_user_attr("spent_s", round(self.spent(), 1))

    # -- setting up -------------------------------------------------------------------------------------------

    def _budget_names(self) -> list[str]:
        from compress.budgets import judge

        return [b.name for b in judge(self.profile.budgets, {})]

    def _budget(self, name: str) -> float | None:
        b = self.profile.budgets
        return {"latency_p50_ms": b.latency_ms.p50, "max_model_size_mb": b.max_model_size_mb,
                "min_speedup": b.min_speedup}.get(name)

    def _space(self) -> dict[str, list[Any]]:
        from compress._optional import is_available

        kind = KINDS[self.shape.kind]
        base = kind.space
        other = [k for k in self.config.space if k not in base]
        if other:
            raise ConfigError(f"--space {', '.join(other)}: not a dimension of a {self.shape.kind} teacher's search",
                              hint=f"a {self.shape.kind} teacher's dimensions: {', '.join(base)}")
        if not kind.counts_ops and self.config.objective is Objective.energy_proxy:
            raise ConfigError(f"--objective energy-proxy needs a candidate's operations before it is built, which a "
                              f"{self.shape.kind} teacher's estimate does not count",
                              hint=f"use --objective latency or size for a {self.shape.kind} teacher")
        space = {k: list(v) for k, v in base.items()} | self.config.space
        notes = []
        if self.profile.runtime.name not in ("onnxruntime", "openvino") or not is_available("openvino"):
            space["runtime"] = [r for r in space["runtime"] if r == "onnxruntime"]
            notes.append("runtime: ONNX Runtime only (OpenVINO not installed, or not this profile's kind of device)")
        if self.profile.runtime.name == "openvino" and "runtime" not in self.config.space:
            space["runtime"] = ["openvino"]
        if any(space.get("heads", [])) and not _heads_prunable():
            space["heads"] = [0.0]
            notes.append("heads: not pruned (transformers 5 cannot reload a head-pruned checkpoint)")
        if not space["runtime"]:
            raise ConfigError("--space leaves no runtime this profile can run", hint="allow onnxruntime")
        for n in notes:
            self.say(n)
        return space

    def _data(self) -> tuple[str, str]:
        ev = str(Path(self.config.eval).resolve())
        if self.config.holdout:
            return ev, str(Path(self.config.holdout).resolve())
        return split_eval(Path(ev), self.dir / "data", self.config.seed)

    def _shape(self) -> TeacherShape:
        teacher = Path(self.config.teacher)
        if not (teacher / "config.json").is_file():
            raise ConfigError(f"{teacher}: not a Hugging Face checkpoint directory (no config.json)",
                              hint="search takes a fine-tuned transformers checkpoint (text, ViT or CNN); distill a "
                                   "torch.export program into a --student checkpoint first")
        try:
            return TeacherShape.read(teacher)
        except KeyError as e:
            raise ConfigError(f"{teacher}/config.json has no {e.args[0]}: search explores BERT-family text encoders, "
                              "ViTs and CNN image classifiers",
                              hint="distill, prune and quantize other models step by step (edgecompress run)") from None

    def _peaks(self):
        from compress.estimate import host_peaks, profile_peaks

        try:
            return profile_peaks(self.profile)
        except EdgeCompressError:
            try:
                return host_peaks()  # the profile states no peaks: it is this machine's kind of device
            except EdgeCompressError as e:
                self.say(f"no latency estimate before training ({e}): only the size is checked before training")
                return None

    def profile_for(self, c: Candidate) -> str:
        """The profile a candidate is validated on: the given one, or the same device and budgets on OpenVINO,
        or with fewer intra-op threads."""
        if c.runtime == self.profile.runtime.name and not c.threads:
            return self.profile_ref
        d = self.dir / "profiles"
        d.mkdir(parents=True, exist_ok=True)
        name = f"{self.profile.name}-{c.runtime}" + (f"-{c.threads}t" if c.threads else "")
        path = d / f"{name}.yaml"
        if not path.is_file():
            runtime = {"name": c.runtime, **RUNTIME_SETTINGS[c.runtime]} if c.runtime != self.profile.runtime.name \
                else {}
            if c.threads:
                runtime["threads"] = c.threads
            path.write_text(yaml.safe_dump({
                "name": name, "extends": self.profile_ref,
                "description": f"{self.profile.name} running {c.runtime}"
                               + (f" on {c.threads} intra-op thread(s)" if c.threads else "")
                               + ": the same device and budgets",
                "runtime": runtime,
            }, sort_keys=False), encoding="utf-8")
        return str(path.resolve())

    # -- time ---------------------------------------------------------------------------------------------------

    def spent(self) -> float:
        return self.spent_before + time.monotonic() - self.t0

    def left(self) -> float:
        return self.config.time_budget_s - self.spent()

    # -- one candidate ------------------------------------------------------------------------------------------

    def recipe(self, number: int, c: Candidate, fid: Fidelity) -> Path:
        steps, final = candidate_steps(c, self.shape, fid)
        recipe = {
            "name": f"search-{number:04d}-{fid.name}",
            "teacher": str(Path(self.config.teacher).resolve()),
            "data": {"train": str(Path(self.config.train).resolve()), "eval": self.eval},
            "steps": steps,
            "validate": {"profiles": [self.profile_for(c)], "artifacts": [final]},
        }
        d = self.dir / "candidates"
        d.mkdir(exist_ok=True)
        path = d / f"{number:04d}-{fid.name}.yaml"
        head = (f"# trial {number}, {fid.name} fidelity: {c.label}\n"
                f"# edgecompress run {path} --run-dir {self.store}   (cached steps are reused)\n")
        path.write_text(head + yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
        return path

    def measure(self, number: int, c: Candidate, fid: Fidelity) -> dict[str, Any]:
        """Build and validate ``c`` at fidelity ``fid`` through the recipe store; its figures and constraints."""
        from compress.recipes.execute import run_recipe

        path = self.recipe(number, c, fid)
        last = [0.0]

        def forward(d: dict[str, Any]) -> None:
            self.record_time()
            if d.get("note"):
                self.say(f"    {d['note']}")
            elif d.get("total") and time.monotonic() - last[0] > 60:  # long phases: a line a minute
                last[0] = time.monotonic()
                self.say(f"    {d.get('label') or d.get('phase')}: {d.get('done', d.get('step'))}/{d['total']}")

        result = run_recipe(path, self.store, progress=forward, html=False)
        job = next(j for j in result.index["jobs"] if j["verb"] == "validate")
        report = json.loads((self.store / job["report"]).read_text(encoding="utf-8"))
        m = report["metrics"]
        lat = m.get("latency_ms") or {}
        budgets = {b["name"]: b for b in report["budgets"]}
        return {
            "fidelity": fid.name, "label": c.label, "recipe": str(path), "report": str(self.store / job["report"]),
            "artifact": report["artifact"]["path"], "verdict": report["verdict"],
            "retention": m.get("retention"), "agreement": m.get("agreement"), "metric": m.get("metric"),
            "p50_ms": lat.get("p50"), "p95_ms": lat.get("p95"), "size_mb": m.get("size_mb"),
            "speedup": m.get("speedup"), "peak_rss_mb": m.get("peak_rss_mb"), "cold_start_ms": m.get("cold_start_ms"),
            "estimated": bool(lat.get("estimated")),
            "budgets": {k: {"limit": b["limit"], "measured": b["measured"], "status": b["status"],
                            "comparison": b["comparison"]} for k, b in budgets.items()},
            "constraints": [violation(budgets.get(n)) for n in self.budgets],
            "seconds": round(sum(j.get("seconds", 0.0) for j in result.index["jobs"]), 1),
        }

    def estimate(self, c: Candidate) -> dict[str, float | None]:
        """``c``'s roofline at the profile's batch and sequence length (computed once per candidate)."""
        if c not in self._estimates:
            b = self.profile.measure
            self._estimates[c] = roofline(c, self.shape, b.batch_size, b.sequence_length, self.peaks)
        return self._estimates[c]

    def draw_feasible(self, trials: list) -> tuple[dict[str, Any] | None, int]:
        """The Optuna parameters of a candidate not tried yet whose estimate may meet the budgets, and how many such
        candidates there are. The estimate costs nothing, so exploration need not spend trials learning which
        candidates cannot fit: TPE, under six constraints, went 170 trials on SST-2 without sampling the region
        that fits (full-width students fit 6 MB only with vocabulary pruning and INT4 embeddings together).

        The draw is at random among the largest tenth (by the estimate's operations; a CNN's by size): retention
        grows with what a candidate keeps, so the front lies at the edge of what fits, and a candidate measured too
        slow there rules out those no faster than it (as deep, as much roofline; :func:`too_slow_like`) and teaches
        the latency bound, which moves the edge."""
        import random

        tried = {from_params(t.params) for t in trials if t.params and t.user_attrs.get("fidelity", "short") == "short"}
        pool = []
        for c in all_candidates(self.space, self.shape):
            if c in tried:
                continue
            if self.cannot_meet(c, trials) is None:
                est = self.estimate(c)
                pool.append((est["gops"] if est["gops"] is not None else est["size_mb"], c))
        if not pool:
            return None, 0
        pool.sort(key=lambda x: -x[0])
        top = pool[: max(1, len(pool) // 10)]
        return trial_params(random.Random(self.config.seed + len(trials)).choice(top)[1], self.space), len(pool)

    def cannot_meet(self, c: Candidate, trials: list) -> str | None:
        """Why ``c``'s optimistic estimate already misses a budget (None: it may meet them). The roofline is scaled by
        the latency bound learnt from ``trials``; a ``min_speedup`` budget divides the FP32 teacher's p50 timed beside
        them by that, so a busy machine slows both sides alike."""
        est = self.estimate(c)
        ratio = latency_ratio(trials, c.runtime, c.threads, est["p50_ms"])
        why = []
        size = self._budget("max_model_size_mb")
        if size is not None and est["size_mb"] * 0.9 > size:
            why.append(f"size ~{est['size_mb']:.1f} MB > {size:g} MB")
        p50 = self._budget("latency_p50_ms")
        if p50 is not None and est["p50_ms"] is not None and est["p50_ms"] * ratio > p50:
            why.append(f"p50 at least ~{est['p50_ms'] * ratio:.2f} ms > {p50:g} ms (roofline x {ratio:.2f})")
        speedup = self._budget("min_speedup")
        one_baseline = self.profile.measure.speedup_baseline == "pytorch"  # whatever the candidate runs on
        base = teacher_fp32_ms(trials, None if one_baseline else c.runtime, c.threads) \
            if speedup is not None and est["p50_ms"] else None
        if base is not None and base / (est["p50_ms"] * ratio) < speedup:
            why.append(f"speedup at most ~{base / (est['p50_ms'] * ratio):.1f}x < {speedup:g}x (FP32 teacher "
                       f"{base:.2f} ms as timed beside the candidates, roofline x {ratio:.2f})")
        if not why and est["p50_ms"] is not None and (slow := too_slow_like(trials, c, est["p50_ms"], TIMING_NOISE)):
            why.append(f"no faster than trial {slow[0]} (as deep or deeper, at least its roofline, same runtime, "
                       f"threads and precision), which missed {slow[1]} by more than {TIMING_NOISE:.0%}")
        return "; ".join(why) or None


def _heads_prunable() -> bool:
    import transformers

    return int(transformers.__version__.split(".")[0]) < 5


def _vocab_kept(teacher: Path, train: str) -> int:
    """How many tokens vocabulary pruning on ``train`` keeps (for the size estimate)."""
    from transformers import AutoConfig, AutoTokenizer

    from compress.data import load_dataset
    from compress.stages.prune.vocab import plan_vocabulary

    tok = AutoTokenizer.from_pretrained(teacher)
    texts = [t if isinstance(t, str) else " ".join(t) for t in load_dataset(train).inputs]
    return len(plan_vocabulary(tok, texts, model_config=AutoConfig.from_pretrained(teacher)).keep)


# -- the study ----------------------------------------------------------------------------------------------------


def _open_dir(search_dir: Path, config: SearchConfig, force: bool) -> None:
    marker = search_dir / MARKER
    ident = {k: str(Path(v).resolve()) if k in PATHS and v and Path(v).exists() else v
             for k, v in config.model_dump(mode="json").items() if k in IDENTITY}
    if search_dir.exists() and any(search_dir.iterdir()):
        if not marker.is_file():
            raise OutputExistsError(f"{search_dir} exists and is not a search directory",
                                    hint="pass another --search-dir")
        before = json.loads(marker.read_text(encoding="utf-8"))
        if before != ident and not force:
            diff = ", ".join(k for k in IDENTITY if before.get(k) != ident.get(k))
            raise OutputExistsError(f"{search_dir} holds a search with other settings ({diff})",
                                    hint="pass another --search-dir, the same settings to resume, or --force to "
                                    "start over")
        if before != ident:  # --force: a new study; the store (the step cache) stays useful
            for p in ("study.db", "candidates", "chosen.yaml", "holdout", "search.json", "report.html", "data"):
                target = search_dir / p
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    search_dir.mkdir(parents=True, exist_ok=True)
    _write_json(marker, ident)


def run_search(config: SearchConfig, search_dir: Path | str, *, progress: Progress | None = None,
               force: bool = False, html: bool = True) -> SearchResult:
    """Search for the candidate that meets ``config.profile``'s budgets and is best on ``config.objective``."""
    optuna = _optuna()
    search_dir = Path(search_dir)
    if html:
        from compress._optional import require

        for module in ("jinja2", "matplotlib"):
            require(module, "the search's HTML report (or pass --no-html)")
    _open_dir(search_dir, config, force)
    s = Search(config, search_dir, progress)
    say = s.say
    url = config.storage or f"sqlite:///{(search_dir / 'study.db').resolve()}"
    # heartbeats: a trial whose process died (kill -9, a lost machine) is failed after the grace period and queued
    # again; Ctrl-C and SIGTERM are handled by _requeue_interrupted
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120,
                                         failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=2)) \
        if url.split(":")[0].split("+")[0] in ("sqlite", "postgresql", "mysql") else url
    sampler = optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=6,
                                         constraints_func=lambda t: t.user_attrs.get("constraints", [1.0] * len(s.budgets)))
    study = optuna.create_study(study_name=config.study_name, storage=storage, sampler=sampler, load_if_exists=True,
                                directions=["maximize", "minimize", "minimize"])
    study.set_metric_names(["retention", "p50_ms", "size_mb"])
    s.spent_before = float(study.user_attrs.get("spent_s", 0.0))
    s.study = study
    _requeue_interrupted(optuna, study, say)
    if not study.trials:
        # the plain INT8 teacher: where the search starts from
        runtime = s.space["runtime"][0]
        reference = Candidate(s.shape.layers, runtime=runtime,
                              quant=OPENVINO_QUANT[0] if runtime == "openvino" else s.space["quant"][0])
        if all(getattr(reference, d) in s.space[d] for d in SHAPE_DIMS
               if d in s.space) and "quant" in s.space and "runtime" in s.space:
            study.enqueue_trial(trial_params(reference, s.space), user_attrs={"fidelity": "short", "reference": True})
    say(f"search {search_dir}: {len(study.trials)} trials so far, {s.spent_before / 60:.1f} of "
        f"{config.time_budget_s / 60:.0f} min spent; objective {config.objective.value}; profile {s.profile.name}")

    def record_time(_study, _trial) -> None:
        s.record_time(force=True)

    objective = _objective(optuna, s)
    phase = study.user_attrs.get("phase", "explore")
    if phase == "explore":
        def explored() -> bool:
            return s.spent() >= config.explore_share * config.time_budget_s or exhausted(study) \
                or bool(config.trials and len(new_shorts(study)) >= config.trials)

        def stop_exploring(study, trial) -> None:
            record_time(study, trial)
            if explored():
                study.stop()
                return
            trials = study.get_trials(deepcopy=False)
            wasted = "duplicate_of" in trial.user_attrs or trial.state == optuna.trial.TrialState.PRUNED
            if wasted and not any(t.state == optuna.trial.TrialState.WAITING for t in trials):
                # the sampler proposed a candidate tried already or one its estimate rules out: the next trial is
                # one that may fit instead
                params, pool = s.draw_feasible(trials)
                if params is not None:
                    study.enqueue_trial(params, user_attrs={"fidelity": "short", "drawn_from": pool})
                    return
            if exhausted(study, patience=10):  # TPE keeps proposing what it measured: draw at random a while
                study.sampler = random_sampler
            elif "duplicate_of" not in trial.user_attrs:
                study.sampler = sampler

        random_sampler = optuna.samplers.RandomSampler(seed=config.seed)

        if not explored():
            steps = f"{config.short_steps} distillation steps, " if "layers" in s.space or "width" in s.space else ""
            say(f"exploring at short fidelity ({steps}{config.short_recover_steps} recovery steps) for up to "
                f"{max(config.explore_share * config.time_budget_s - s.spent(), 0) / 60:.0f} min")
            study.optimize(objective, callbacks=[stop_exploring], catch=(EdgeCompressError,))
        why = ("its share of the time budget is spent" if s.spent() >= config.explore_share * config.time_budget_s
               else f"{config.trials} trials done" if config.trials and len(new_shorts(study)) >= config.trials
               else "the space is used up (the last trials, random draws included, proposed only candidates tried "
               "already)")
        say(f"exploration ends: {why}")
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
    waiting = [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]
    if waiting:
        study.optimize(objective, n_trials=len(waiting), callbacks=[record_time], catch=(EdgeCompressError,))
    study.set_user_attr("phase", "final")
    result = conclude(s, study)
    record_time(study, None)
    result.summary["spent_s"] = round(s.spent(), 1)
    _write_json(search_dir / "search.json", result.summary)
    if html:
        from compress.search.report import write_search_html

        write_search_html(search_dir, result.summary)
    return result


def _requeue_for_time(optuna, study, say: Progress) -> None:
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


def _requeue_interrupted(optuna, study, say: Progress) -> None:
    """Trials a previous process left running or stopped by Ctrl-C are queued again (their finished steps are
    in the store, so nothing done is redone); trials that failed with an error are not."""
    from optuna.storages import fail_stale_trials

    fail_stale_trials(study)
    TS = optuna.trial.TrialState
    done = {json.dumps(t.params, sort_keys=True) + t.user_attrs.get("fidelity", "short")
            for t in study.trials if t.state in (TS.COMPLETE, TS.PRUNED, TS.WAITING)}
    retried = set(study.user_attrs.get("requeued", []))
    for t in study.trials:
        key = json.dumps(t.params, sort_keys=True) + t.user_attrs.get("fidelity", "short")
        if t.state == TS.FAIL and "error" not in t.user_attrs and t.number not in retried and key not in done and t.params:
            study.enqueue_trial(t.params, user_attrs={k: v for k, v in t.user_attrs.items()
                                                      if k in ("fidelity", "promoted_from", "reference")})
            retried.add(t.number)
            done.add(key)
            say(f"trial {t.number} was interrupted: queued again ({t.user_attrs.get('label', t.params)})")
    study.set_user_attr("requeued", sorted(retried))


def _objective(optuna, s: Search):
    def objective(trial):
        fid = s.full if trial.user_attrs.get("fidelity") == "full" else s.short
        trial.set_user_attr("fidelity", fid.name)
        c = suggest(trial, s.space, s.shape)
        trial.set_user_attr("label", c.label)
        est = s.estimate(c)
        trial.set_user_attr("estimate", {k: None if v is None else round(v, 4) for k, v in est.items()})
        tag = f"[trial {trial.number}, {fid.name}] {c.label}"
        twin = measured_twin(trial, fid.name)
        if twin is not None:  # sampled before: the same recipe, the same cached figures
            for k, v in twin.user_attrs.items():
                trial.set_user_attr(k, v)
            trial.set_user_attr("duplicate_of", twin.number)
            s.say(f"{tag}: as trial {twin.number} (measured already)")
            return twin.values
        if fid is s.short:
            why = s.cannot_meet(c, trial.study.get_trials(deepcopy=False))
            if why:
                trial.set_user_attr("skipped", why)
                before = skipped_before(trial)
                if before is not None:  # a repeat: counts towards "the space is used up", and says nothing new
                    trial.set_user_attr("duplicate_of", before.number)
                else:
                    s.say(f"{tag}: skipped before training: {why}")
                raise optuna.TrialPruned(why)
        else:
            need = _cost(s, trial.number, c, fid, trial.user_attrs.get("promoted_from"))
            if need > s.left():
                why = f"needs ~{need / 60:.0f} min, {max(s.left(), 0) / 60:.0f} min of the time budget left"
                trial.set_user_attr("skipped", why)
                trial.set_user_attr("not_run_for_time", True)
                s.say(f"{tag}: not run: {why}")
                raise optuna.TrialPruned(why)
        drawn = trial.user_attrs.get("drawn_from")
        s.say(f"{tag}: building and validating" + (f" (drawn from the {drawn} untried candidates whose estimate fits)"
                                                  if drawn else "") + " ...")
        try:
            res = s.measure(trial.number, c, fid)
        except EdgeCompressError as e:
            if getattr(e, "exit_code", None) == 130:  # Ctrl-C or SIGTERM inside a step: stop the search, not the trial
                raise KeyboardInterrupt(str(e)) from e
            trial.set_user_attr("error", str(e))
            s.say(f"{tag}: failed: {e}")
            raise
        for k, v in res.items():
            trial.set_user_attr(k, v)
        s.say(f"{tag}: {res['verdict'].upper()}: retention {_f(res['retention'])}, p50 {_f(res['p50_ms'], 2)} ms"
              f"{' (est.)' if res['estimated'] else ''}, {_f(res['size_mb'], 1)} MB ({res['seconds']:.0f} s)")
        return (res["retention"] if res["retention"] is not None else res["agreement"] or 0.0,
                res["p50_ms"] if res["p50_ms"] is not None else math.inf, res["size_mb"])

    return objective


def _f(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _cost(s: Search, number: int, c: Candidate, fid: Fidelity, short_number: int | None) -> float:
    """Seconds a full-fidelity candidate still needs: each uncached job's time at short fidelity (same candidate,
    same job), scaled by how many more training steps it takes; a rough figure where there is none."""
    from compress.recipes.execute import _done, plan_recipe
    from compress.recipes.plan import rough_seconds

    plan, _, rows = plan_recipe(s.recipe(number, c, fid), s.store)
    short = None
    if short_number is not None and (s.dir / "candidates" / f"{short_number:04d}-short.yaml").is_file():
        short, _, _ = plan_recipe(s.dir / "candidates" / f"{short_number:04d}-short.yaml", s.store)
    total = 0.0
    for row in rows:
        if row["cached"]:
            continue
        job = plan.job(row["name"])
        rec = _done(s.store, short.job(job.name)) if short and any(j.name == job.name for j in short.jobs) else None
        if rec is None:
            total += rough_seconds(job)
        elif job.verb == "distill":
            total += rec["seconds"] * rough_seconds(job) / rough_seconds(short.job(job.name))
        elif job.verb == "prune":
            total += rec["seconds"] * (fid.recover_steps + 50) / (s.short.recover_steps + 50)
        else:
            total += rec["seconds"]
    return total
