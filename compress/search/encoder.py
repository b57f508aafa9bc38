"""What a search of a forward-pass teacher explores (:class:`EncoderSpace`): a text encoder's, a ViT's or a CNN's
students, pruning and precision, or a model file's precision, on each runtime and thread count, at two fidelities;
how it estimates, builds (a recipe in the search's store) and measures one candidate, and the hooks the one driver
(:func:`compress.search.run.run_search`) calls: the plain INT8 teacher first, skips by the estimate, draws of
candidates expected to fit, the short exploration, the promotion to full fidelity and the end
(:mod:`compress.search.conclude`)."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import yaml

from compress.errors import ConfigError, EdgeCompressError
from compress.search.artifacts import digest, publish
from compress.search.conclude import TIMING_NOISE, conclude, promote
from compress.search.config import Objective
from compress.search.encoder_space import (
    KINDS,
    SHAPE_DIMS,
    Candidate,
    Fidelity,
    TeacherShape,
    all_candidates,
    candidate_steps,
    from_params,
    quant_choices,
    roofline,
    suggest,
    trial_params,
)
from compress.search.space import SearchResult, Space, measured_beside, violation
from compress.search.trials import (
    exhausted,
    latency_ratio,
    measured_twin,
    new_shorts,
    skipped_before,
    teacher_fp32_ms,
    too_slow_like,
    typical_ratio,
)


class EncoderSpace(Space):
    """A forward-pass teacher's space: its dimensions and their choices (the mapping: ``space["runtime"]``), the
    teacher's shape, the two fidelities, and one candidate's estimate, recipe, measurement and cost. ``s``: the
    search (:class:`compress.search.directory.Search`) it belongs to."""

    kind = "forward"
    detected_runs_any = False  # a detected profile (host) still names the runtime its candidates run on
    ignores = "this teacher's search generates no text (it is a causal LM teacher's option)"
    objectives = (("retention", "maximize"), ("p50_ms", "minimize"), ("size_mb", "minimize"))
    startup_trials = 6
    own_constraints = 0
    promotes = True

    def __init__(self, s) -> None:
        self.search = s
        self.config, self.profile, self.dir, self.store = s.config, s.profile, s.dir, s.store
        config = s.config
        self.shape = self._shape()
        self.choices = self._choices()
        if True in self.choices.get("vocab", []):
            self.shape = dataclasses.replace(self.shape, vocab_kept=_vocab_kept(Path(config.teacher), config.train))
        s.split()
        self.peaks = self._peaks()
        kind = KINDS[self.shape.kind]
        distill, prune = {**kind.distill, **config.distill}, {**kind.prune, **config.prune}
        self.short = Fidelity("short", {"max_steps": config.short.steps, "eval_every": max(config.short.steps // 2, 1),
                                        **distill}, config.short.recover_steps, prune)
        augment = config.full.augment if kind.augments else 0
        join = config.full.augment_join if kind.augments else 0
        average = config.full.average and kind.averages
        full = {"epochs": config.full.epochs, **({"augment": augment} if augment else {}),
                **({"average": True, "average_start": 0.5} if average else {})}
        # the pruned student's long recovery learns from the teacher itself, on the same augmented texts and on
        # sentence-length joined ones
        recovery = {"teacher": str(Path(config.teacher).resolve()), **({"recover_augment": augment} if augment else {}),
                    **({"recover_augment_join": join} if join else {}), **({"recover_average": True} if average else {})} \
            if kind.recovers_from_teacher else {}
        self.full = Fidelity("full", {**full, **distill}, config.full.recover_steps, {**recovery, **prune},
                             {"qat_steps": config.full.qat_steps} if config.full.qat_steps else {})
        self._estimates: dict[Candidate, dict[str, float | None]] = {}
        self._samplers = None  # (the study's, a random one): set after the first explored trial

    @classmethod
    def judged(cls, profile, notes: list[str]) -> list[str]:
        """The budgets its candidates are judged by: every one the profile sets (as validate judges them)."""
        from compress.profiles.budgets import judge

        return [b.name for b in judge(profile.budgets, {})]

    def _budget(self, name: str) -> float | None:
        """The limit the profile sets on budget ``name`` (None: not set)."""
        from compress.profiles.budgets import BUDGETS

        return BUDGETS[name].limit_in(self.profile.budgets)

    # -- setting up -------------------------------------------------------------------------------------------

    def _choices(self) -> dict[str, list[Any]]:
        kind = KINDS[self.shape.kind]
        base = kind.space
        other = [k for k in self.config.space if k not in base]
        if other:
            raise ConfigError(f"--space {', '.join(other)}: not a dimension of a {self.shape.kind} teacher's search",
                              hint=f"a {self.shape.kind} teacher's dimensions: {', '.join(base)}")
        if self.shape.kind == "file" and self.config.full.qat_steps:
            raise ConfigError("--qat-steps: a model file has no trainable source, so its candidates cannot be "
                              "distilled, quantization-aware or otherwise", hint="drop --qat-steps, or search from "
                              "the PyTorch checkpoint the file came from")
        if not kind.counts_ops and self.config.objective is Objective.energy_proxy:
            raise ConfigError(f"--objective energy-proxy needs a candidate's operations before it is built, which a "
                              f"{self.shape.kind} teacher's estimate does not count",
                              hint=f"use --objective latency or size for a {self.shape.kind} teacher")
        space = {k: list(v) for k, v in base.items()} | self.config.space
        notes = []
        space["runtime"] = self._runtimes(space["runtime"], notes)
        if self.shape.embeds and any(w != 1.0 for w in space.get("width", [])):
            if "width" in self.config.space:
                raise ConfigError("--space width: a sentence encoder's students keep its width (their embeddings are "
                                  "what it outputs, and must keep its dimensions)", hint="leave width out, or width=1.0")
            space["width"] = [1.0]
            notes.append("width: kept (a sentence encoder's students keep its embedding dimensions)")
        if self.shape.kind == "file" and not self.shape.text and "int8-dynamic" in space.get("quant", []):
            space["quant"] = [q for q in space["quant"] if q != "int8-dynamic"] or ["int8-static"]
            notes.append("quant: static INT8 (dynamic INT8 is for text models' files)")
        if any(space.get("heads", [])) and not _heads_prunable():
            space["heads"] = [0.0]
            notes.append("heads: not pruned (transformers 5 cannot reload a head-pruned checkpoint)")
        if not space["runtime"]:
            raise ConfigError("--space leaves no runtime this profile can run", hint="allow onnxruntime")
        for n in notes:
            self.search.say(n)
        return space

    def _runtimes(self, asked: list[str], notes: list[str]) -> list[str]:
        """The runtimes candidates run on: ONNX Runtime anywhere; OpenVINO on a CPU profile that runs ONNX Runtime or
        OpenVINO; ExecuTorch on a CPU profile, where it is installed. By default a profile's own runtime leads
        (OpenVINO's profile: OpenVINO alone; a phone's: ExecuTorch, then ONNX Runtime), and ExecuTorch is asked
        for elsewhere (--space runtime=onnxruntime,executorch)."""
        from compress._optional import is_available

        own = self.profile.runtime.name
        why = {}
        if own not in ("onnxruntime", "openvino"):
            why["openvino"] = "not this profile's kind of device"
        elif not is_available("openvino"):
            why["openvino"] = "not installed: pip install 'edgecompress[openvino]'"
        if own not in ("onnxruntime", "openvino", "executorch") or self.shape.kind == "file":
            why["executorch"] = ("a model file is not a PyTorch model to export" if self.shape.kind == "file"
                                 else "not this profile's kind of device")
        elif not is_available("executorch"):
            why["executorch"] = "not installed: pip install 'edgecompress[executorch]'"
        why["llamacpp"] = "GGUF (llama.cpp) is a causal LM's route: search a text-generation teacher for it"
        if "runtime" not in self.config.space:
            asked = {"openvino": ["openvino"], "executorch": ["executorch", "onnxruntime"]}.get(
                own, [r for r in asked if r != "executorch"])
        kept = [r for r in asked if r not in why]
        for r in asked:
            if r in why:
                notes.append(f"runtime: no {r} candidates ({why[r]})")
        return kept

    def _shape(self) -> TeacherShape:
        from compress.teachers.model_files import is_model_file

        teacher = Path(self.config.teacher)
        if is_model_file(teacher):  # an ONNX file or IR: nothing to distil or prune, so precision, runtime, threads
            shape = TeacherShape.read(teacher)
            self.search.say("a model file has no trainable source: the search explores precision, runtime and "
                            "threads (distillation and pruning need a checkpoint)")
            return shape
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
        from compress.estimates.roofline import host_peaks, profile_peaks

        try:
            return profile_peaks(self.profile)
        except EdgeCompressError:
            try:
                return host_peaks()  # the profile states no peaks: it is this machine's kind of device
            except EdgeCompressError as e:
                self.search.say(f"no latency estimate before training ({e}): only the size is checked before training")
                return None

    # -- one candidate ------------------------------------------------------------------------------------------

    def recipe(self, number: int, c: Candidate, fid: Fidelity) -> Path:
        steps, final = candidate_steps(c, self.shape, fid)
        # only what a budget reads is measured beside accuracy and latency (left out of the recipe where on, as before)
        off = {k: False for k, on in measured_beside(self.search.budgets).items() if not on}
        options = {**({"metric": self.config.metric} if self.config.metric else {}), **({"measure": off} if off else {})}
        recipe = {
            "name": f"search-{number:04d}-{fid.name}",
            "teacher": str(Path(self.config.teacher).resolve()),
            "data": {"train": str(Path(self.config.train).resolve()), "eval": self.search.eval},
            "steps": steps,
            "validate": {"profiles": [self.search.profile_for(c)], "artifacts": [final],
                         **({"options": options} if options else {})},
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
            self.search.record_time()
            if d.get("note"):
                self.search.say(f"    {d['note']}")
            elif d.get("total") and ("done" in d or "step" in d) and time.monotonic() - last[0] > 60:  # a line a minute
                last[0] = time.monotonic()
                self.search.say(f"    {d.get('label') or d.get('phase')}: {d.get('done', d.get('step'))}/{d['total']}")

        result = run_recipe(path, self.store, progress=forward, html=False)
        job = next(j for j in result.index["jobs"] if j["verb"] == "validate")
        report = json.loads((self.store / job["report"]).read_text(encoding="utf-8"))
        m = report["metrics"]
        lat = m.get("latency_ms") or {}
        budgets = {b["name"]: b for b in report["budgets"]}
        return {
            "fidelity": fid.name, "label": c.label, "recipe": str(path), "report": str(self.store / job["report"]),
            "artifact": report["artifact"]["path"], "artifact_digest": digest(Path(report["artifact"]["path"])),
            "built_by": self.search.worker, "verdict": report["verdict"],
            "retention": m.get("retention"), "agreement": m.get("agreement"), "metric": m.get("metric"),
            "p50_ms": lat.get("p50"), "p95_ms": lat.get("p95"), "size_mb": m.get("size_mb"),
            "speedup": m.get("speedup"), "peak_rss_mb": m.get("peak_rss_mb"), "cold_start_ms": m.get("cold_start_ms"),
            "estimated": bool(lat.get("estimated")),
            "budgets": {k: {"limit": b["limit"], "measured": b["measured"], "status": b["status"],
                            "comparison": b["comparison"]} for k, b in budgets.items()},
            "constraints": [violation(budgets.get(n)) for n in self.search.budgets],
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
        the latency bound, which moves the edge. The edge is where the candidate is *expected* to fit: its roofline
        scaled by the ratio every candidate measured on its runtime and threads ran at (:func:`typical_ratio`), not
        only by the optimistic bound that rules candidates out, which for the largest is the bare roofline."""
        import random

        tried = {from_params(t.params) for t in trials if t.params and t.user_attrs.get("fidelity", "short") == "short"}
        expected, possible = [], []  # expected to fit; may fit (the bound the sampler's proposals are skipped by)
        for c in all_candidates(self.choices, self.shape):
            if c in tried or self.cannot_meet(c, trials) is not None:
                continue
            est = self.estimate(c)
            item = (est["gops"] if est["gops"] is not None else est["size_mb"], c)
            possible.append(item)
            if self.cannot_meet(c, trials, expected=True) is None:
                expected.append(item)
        pool = expected or possible  # when none is expected to fit, those that may still do
        if not pool:
            return None, 0
        pool.sort(key=lambda x: -x[0])
        top = pool[: max(1, len(pool) // 10)]
        return trial_params(random.Random(self.config.study.seed + len(trials)).choice(top)[1], self.choices), len(pool)

    def cannot_meet(self, c: Candidate, trials: list, expected: bool = False) -> str | None:
        """Why ``c``'s optimistic estimate already misses a budget (None: it may meet them). The roofline is scaled by
        the latency bound learnt from ``trials``; a ``min_speedup`` budget divides the FP32 teacher's p50 timed beside
        them by that, so a busy machine slows both sides alike. ``expected``: scaled by what every candidate measured
        on its runtime and threads ran at, where that is more (what the feasible draw aims at; never a reason to skip
        a candidate the sampler proposes)."""
        est = self.estimate(c)
        ratio = latency_ratio(trials, c.runtime, c.threads, est["p50_ms"])
        if expected:
            ratio = max(ratio, typical_ratio(trials, c.runtime, c.threads) or 1.0)
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

    def cost(self, number: int, c: Candidate, fid: Fidelity, short_number: int | None) -> float:
        """Seconds a full-fidelity candidate still needs: each uncached job's time at short fidelity (same candidate,
        same job), scaled by how many more training steps it takes; a rough figure where there is none."""
        from compress.recipes.execute import completed_record, plan_recipe
        from compress.recipes.plan import rough_seconds

        plan, _, rows = plan_recipe(self.recipe(number, c, fid), self.store)
        short = None
        if short_number is not None and (self.dir / "candidates" / f"{short_number:04d}-short.yaml").is_file():
            short, _, _ = plan_recipe(self.dir / "candidates" / f"{short_number:04d}-short.yaml", self.store)
        total = 0.0
        for row in rows:
            if row["cached"]:
                continue
            job = plan.job(row["name"])
            twin = short is not None and any(j.name == job.name for j in short.jobs)
            rec = completed_record(self.store, short.job(job.name)) if twin else None
            if rec is None:
                total += rough_seconds(job)
            elif job.verb == "distill":
                total += rec["seconds"] * rough_seconds(job) / rough_seconds(short.job(job.name))
            elif job.verb == "prune":
                total += rec["seconds"] * (fid.recover_steps + 50) / (self.short.recover_steps + 50)
            else:
                total += rec["seconds"]
        return total

    # -- the driver's hooks -----------------------------------------------------------------------------------

    def first_trials(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """The plain INT8 teacher: where the search starts from."""
        runtime = self["runtime"][0]
        reference = Candidate(self.shape.layers, runtime=runtime, quant=quant_choices(runtime, self)[1][0])
        if all(getattr(reference, d) in self[d] for d in SHAPE_DIMS if d in self) and "quant" in self \
                and "runtime" in self:
            return [(trial_params(reference, self), {"fidelity": "short", "reference": True})]
        return []

    def _others_shorts(self, study) -> int:
        """Short trials other workers are running (between this worker's trials, none is its own): with them the
        --trials cap holds however many workers share the study."""
        from optuna.trial import TrialState

        return sum(t.user_attrs.get("fidelity", "short") == "short" and "duplicate_of" not in t.user_attrs
                   for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

    def stop_reason(self, study) -> str | None:
        """Exploration ends when its share of the time budget is spent, after --trials short trials (this worker's
        and those others are running), or when the space is used up."""
        s, short = self.search, self.config.short
        if s.spent() >= short.explore_share * self.config.time_budget_s:
            return "its share of the time budget is spent"
        if short.trials and len(new_shorts(study)) >= short.trials:
            return f"{short.trials} trials done"
        if short.trials and len(new_shorts(study)) + self._others_shorts(study) >= short.trials:
            return f"{short.trials} trials done or running on other workers"
        if exhausted(study):
            return ("the space is used up (the last trials, random draws included, proposed only candidates tried "
                    "already)")
        return None

    def exploring(self) -> str:
        steps = f"{self.config.short.steps} distillation steps, " if "layers" in self or "width" in self else ""
        return (f"exploring at short fidelity ({steps}{self.config.short.recover_steps} recovery steps) for up to "
                f"{max(self.config.short.explore_share * self.config.time_budget_s - self.search.spent(), 0) / 60:.0f}"
                " min")

    def after_trial(self, study, trial) -> None:
        """After a wasted trial (a repeat, or one the estimate rules out) with nothing queued, a candidate drawn from
        those expected to fit is queued; while TPE keeps proposing what it measured, candidates are drawn at random."""
        import optuna

        TS = optuna.trial.TrialState
        if self._samplers is None:
            self._samplers = (study.sampler, optuna.samplers.RandomSampler(seed=self.config.study.seed))
        trials = study.get_trials(deepcopy=False)
        wasted = "duplicate_of" in trial.user_attrs or trial.state == TS.PRUNED
        if wasted and not any(t.state == TS.WAITING for t in trials):
            params, pool = self.draw_feasible(trials)
            if params is not None:
                study.enqueue_trial(params, user_attrs={"fidelity": "short", "drawn_from": pool})
                return
        if exhausted(study, patience=10):  # TPE keeps proposing what it measured: draw at random a while
            study.sampler = self._samplers[1]
        elif "duplicate_of" not in trial.user_attrs:
            study.sampler = self._samplers[0]

    def promote(self, study) -> list[tuple[int, dict[str, Any]]]:
        return promote(self.search, study)

    def conclude(self, study) -> SearchResult:
        return conclude(self.search, study)

    def draw(self, trial) -> tuple[Candidate, str]:
        fid = self.full if trial.user_attrs.get("fidelity") == "full" else self.short
        trial.set_user_attr("fidelity", fid.name)
        c = suggest(trial, self, self.shape)
        trial.set_user_attr("label", c.label)
        est = self.estimate(c)
        trial.set_user_attr("estimate", {k: None if v is None else round(v, 4) for k, v in est.items()})
        return c, f"[trial {trial.number}, {fid.name}] {c.label}"

    def answered(self, trial, c: Candidate, tag: str):
        """A twin measured already (its figures), one another worker is measuring, or a candidate skipped: by its
        estimate at short fidelity, for want of time at full."""
        import optuna

        say, fid = self.search.say, trial.user_attrs["fidelity"]
        twin = measured_twin(trial, fid)
        if twin is not None:  # sampled before: the same recipe, the same cached figures
            for k, v in twin.user_attrs.items():
                if k != "worker":
                    trial.set_user_attr(k, v)
            trial.set_user_attr("duplicate_of", twin.number)
            say(f"{tag}: as trial {twin.number} (measured already)")
            return twin.values
        running = next((t for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                        if t.number != trial.number and t.params == trial.params
                        and t.user_attrs.get("fidelity") == fid), None)
        if running is not None:  # a shared study: another worker is measuring it right now
            trial.set_user_attr("duplicate_of", running.number)
            say(f"{tag}: as trial {running.number} (being measured by {running.user_attrs.get('worker')})")
            raise optuna.TrialPruned(f"being measured in trial {running.number}")
        if fid == self.short.name:
            why = self.cannot_meet(c, trial.study.get_trials(deepcopy=False))
            if why:
                trial.set_user_attr("skipped", why)
                before = skipped_before(trial)
                if before is not None:  # a repeat: counts towards "the space is used up", and says nothing new
                    trial.set_user_attr("duplicate_of", before.number)
                else:
                    say(f"{tag}: skipped before training: {why}")
                raise optuna.TrialPruned(why)
        else:
            need = self.cost(trial.number, c, self.full, trial.user_attrs.get("promoted_from"))
            if need > self.search.left():
                why = f"needs ~{need / 60:.0f} min, {max(self.search.left(), 0) / 60:.0f} min of the time budget left"
                trial.set_user_attr("skipped", why)
                trial.set_user_attr("not_run_for_time", True)
                say(f"{tag}: not run: {why}")
                raise optuna.TrialPruned(why)
        return None

    def build(self, trial, c: Candidate, tag: str) -> dict[str, Any]:
        """Build and validate ``c`` at the trial's fidelity; a full candidate goes to the artifact store too."""
        fid = self.full if trial.user_attrs["fidelity"] == self.full.name else self.short
        drawn = trial.user_attrs.get("drawn_from")
        self.search.say(f"{tag}: building and validating" + (f" (drawn from the {drawn} untried candidates expected "
                                                             "to fit)" if drawn else "") + " ...")
        res = self.measure(trial.number, c, fid)
        if fid is self.full and self.search.artifacts is not None:  # for the worker that ends the search, anywhere
            res |= publish(self.search.artifacts, trial, Path(res["artifact"]))
        return res

    def figures(self, res: dict[str, Any]) -> str:
        return (f": retention {_f(res['retention'])}, p50 {_f(res['p50_ms'], 2)} ms"
                f"{' (est.)' if res['estimated'] else ''}, {_f(res['size_mb'], 1)} MB")

    def values(self, res: dict[str, Any]) -> tuple[float, float, float]:
        return (res["retention"] if res["retention"] is not None else res["agreement"] or 0.0,
                res["p50_ms"] if res["p50_ms"] is not None else math.inf, res["size_mb"])


def _heads_prunable() -> bool:
    import transformers

    return int(transformers.__version__.split(".")[0]) < 5


def _vocab_kept(teacher: Path, train: str) -> int:
    """How many tokens vocabulary pruning on ``train`` keeps (for the size estimate)."""
    from transformers import AutoConfig, AutoTokenizer

    from compress.data.tables import load_dataset
    from compress.data.words import load_word_dataset
    from compress.stages.prune.vocab import corpus_strings, plan_vocabulary

    tok = AutoTokenizer.from_pretrained(teacher)
    config = AutoConfig.from_pretrained(teacher)
    words = (config.architectures or [""])[0].endswith("ForTokenClassification")  # sentences split into words
    ds = load_word_dataset(train, texts_only=True) if words else load_dataset(train, texts_only=True)
    return len(plan_vocabulary(tok, corpus_strings(ds.inputs), model_config=config).keep)



def _f(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
