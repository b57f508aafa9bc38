"""Search a text generator: a causal LM teacher (task text-generation) over runtime × INT4 algorithm × group size ×
layers back to 8 bits, and where ``--space`` names them the model's shape (layers kept, query heads and FFN neurons
removed, the vocabulary cut to --train's tokens), each candidate measured as ``validate`` measures a generator and
judged against the profile's budgets.

The search directory::

    SEARCH/study.db                  the Optuna study (as the encoders' search)
    SEARCH/shapes/KEY/               a shape's checkpoint (``prune`` of the teacher, recovered by distillation from it
                                     over --short-recover-steps steps of --train), once per shape
    SEARCH/exports/FORMAT[-KEY]/     the teacher's (or a shape's) FP32 export, once per route and shape: every candidate
                                     of a route and shape is quantized from it
    SEARCH/candidates/NNNN/          trial NNNN's INT4 artifact; NNNN.json its validation report on the ranking text
    SEARCH/data/                     --eval's two halves (the first ranks, the second is held out) without --holdout
    SEARCH/profiles/                 the profile on another runtime (same device and budgets), where a route needs it
    SEARCH/holdout/report.json       the chosen artifact validated on the held-out text
    SEARCH/search.json               every trial, the choice (or the closest and a diagnosis)

A trial is: the shape's checkpoint (the teacher itself, or pruned the first time the shape is drawn), the route's
FP32 export of it (made the first time the route and shape are drawn), quantized with the candidate's settings
through the route's own quantizer (``edgecompress quantize``'s library function), then validated on the profile
(:func:`compress.validation.local.validate`: decode tokens/s, time to first token, perplexity increase and top-1
agreement against the PyTorch teacher (the unpruned one: a shape's loss counts) on the ranking text, size, and what else the profile budgets). The sampler is
Optuna's multi-objective TPE (decode tokens/s up, perplexity increase down, size down) with the budgets as
constraints; a candidate drawn again reuses its figures, and then an untried one is queued instead. The search stops
after ``--trials`` measured candidates, when the time budget is spent, or when every candidate is measured. The chosen
candidate meets every budget and is best on the objective (latency: the most decode tokens/s; size: the smallest);
its perplexity and top-1 agreement are then measured again on held-out text the search never ranked on.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from compress.errors import ConfigError, EdgeCompressError, StageError
from compress.progress import Progress, note, sink
from compress.search.config import Objective, SearchConfig
from compress.search.generator_space import (
    GENERATOR_SPACE,
    ROUTES,
    SHAPE_DEFAULTS,
    GenCandidate,
    all_candidates,
    params_of,
    shapes_for,
    space_for,
    suggest,
)
from compress.search.space import RUNTIME_SETTINGS

#: how a route's runtime runs on a profile that names another (the device and budgets stay the profile's)
_RUNTIME = {**RUNTIME_SETTINGS, "llamacpp": {"provider": None, "options": {}}}


def is_generator_teacher(teacher: str | Path) -> bool:
    """A Hugging Face checkpoint folder whose config.json names a ``…ForCausalLM``."""
    from compress.teachers.lm_config import is_causal_lm

    cfg = Path(teacher) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return is_causal_lm(json.loads(cfg.read_text(encoding="utf-8")))
    except ValueError:
        return False


def _refuse_encoder_options(config: SearchConfig) -> None:
    """One line for the first option a generator search would ignore (distillation, pruning, labels, images)."""
    from compress.search.config import Full, Short

    shaped = any(k in config.space for k in SHAPE_DEFAULTS)  # a shape is recovered over --short-recover-steps
    flag = next((f for f, bad in (
        ("--metric", config.metric), ("distill options", config.distill), ("prune options", config.prune),
        ("--short-steps", config.short.steps != Short.model_fields["steps"].default),
        ("--short-recover-steps", not shaped and config.short.recover_steps != Short.model_fields["recover_steps"].default),
        *((f"--{k.replace('_', '-')}" if k != "epochs" else "--full-epochs",
           getattr(config.full, k) != Full.model_fields[k].default) for k in Full.model_fields),
    ) if bad), None)
    if flag:
        raise ConfigError(f"{flag}: a generator search labels nothing and trains only the shapes --space names "
                          "(layers, heads, ffn, vocab: recovered over --short-recover-steps)", hint="drop it")
    if config.objective is Objective.energy_proxy:
        raise ConfigError("--objective energy-proxy counts an encoder's operations; a generator search ranks by "
                          "decode tokens/s or size", hint="use --objective latency or size")
    other = [k for k in config.space if k not in GENERATOR_SPACE]
    if other:
        raise ConfigError(f"--space {', '.join(other)}: not a dimension of a generator search (image and encoder "
                          "dimensions do not apply to a causal LM)",
                          hint=f"a generator's dimensions: {', '.join(GENERATOR_SPACE)}")
    for k, choices in config.space.items():
        bad = [c for c in choices if c not in GENERATOR_SPACE[k]]
        if bad:
            raise ConfigError(f"--space {k}={','.join(map(str, bad))}: not a generator choice",
                              hint=f"{k}: {', '.join(map(str, GENERATOR_SPACE[k]))}")


class GeneratorSearch:
    """One generator search directory: its profile and budgets, routes, data, exports and trials."""

    def __init__(self, config: SearchConfig, search_dir: Path, progress: Progress | None = None):
        from compress.profiles.load import load_profile

        _refuse_encoder_options(config)
        self.config = config
        self.dir = search_dir
        self.progress: Progress = sink(progress)
        self.profile = load_profile(config.profile)
        self.profile_ref = str(Path(config.profile).resolve()) if Path(config.profile).is_file() else config.profile
        self._notes: list[str] = []  # said once every input is checked (a refused start says one line)
        self.budgets = self._budget_names()
        self.eval, self.holdout = self._data()
        self.space = self._space()
        self.teacher_layers, self.shapes = self._shapes()
        for line in self._notes:
            self.say(line)
        self.train = str(Path(config.train).resolve())
        self.t0 = time.monotonic()
        self.spent_before = 0.0
        self.study = None
        self._exports: dict[str, Any] = {}
        self._shaped: dict[str, str] = {}

    def say(self, line: str) -> None:
        note(self.progress, line, phase="search")

    def spent(self) -> float:
        return self.spent_before + time.monotonic() - self.t0

    def record_time(self) -> None:
        if self.study is not None:
            self.study.set_user_attr("spent_s", round(self.spent(), 1))

    # -- setting up -------------------------------------------------------------------------------------------

    def _budget_names(self) -> list[str]:
        from compress.profiles.budgets import budgets_of, judge, judged_for

        names = [b.name for b in judge(self.profile.generator_limits(), {})]
        ours = [n for n in names if n in budgets_of("generation")]
        theirs = [n for n in names if n not in judged_for("generation")]
        if not ours:
            raise ConfigError(
                f"profile {self.profile.name} states no budget a generator is measured by ("
                + ", ".join(budgets_of("generation")) + ")" + (f"; its {', '.join(theirs)} read an encoder's or a "
                                                          "classifier's outputs" if theirs else ""),
                hint=f"give a profile YAML with extends: {self.profile.name} and budgets such as "
                     "max_perplexity_increase: 0.1, min_decode_tokens_per_s: 50 (docs/profiles.md)")
        if theirs:
            self._notes.append(f"budgets {', '.join(theirs)} read an encoder's outputs: not judged for a generator")
        return [n for n in names if n in judged_for("generation")]

    def _space(self) -> dict[str, dict[str, list[Any]]]:
        asked = self.config.space
        routes = [r for r in ROUTES if r in asked.get("runtime", list(ROUTES))]
        kept, skipped = [], []
        for name in routes:
            why = _unavailable(name)
            if why:
                skipped.append(f"{name}: {why}")
                self._notes.append(f"runtime: no {name} candidates ({why})")
            else:
                kept.append(name)
        space = space_for(asked, kept)
        if not space:
            narrowed = ";".join(f"{k}={','.join(map(str, v))}" for k, v in asked.items())
            raise ConfigError("no generator route is left to search" + (f" in --space {narrowed}" if asked else "")
                              + (f" ({'; '.join(skipped)})" if skipped else ""),
                              hint="widen --space, or install a route: "
                                   + "; ".join(f"{r.runtime}: {r.install}" for r in ROUTES.values()))
        n = len(all_candidates(space))
        self._notes.append("generator search: " + "; ".join(
            f"{rt}: {', '.join(d['algorithm'])}" + (f" x groups {', '.join(map(str, d['group']))}"
                                                   if d["group"] != [None] else "")
            + (f" x 8-bit layers: {', '.join('none' if x == 0 else f'until +{x:.0%}' for x in d['int8'])}"
               if len(d["int8"]) > 1 else "") for rt, d in space.items()) + f" ({n} candidates)")
        return space

    def _shapes(self) -> tuple[int, dict[str, list[Any]]]:
        """The teacher's depth and the shapes to search (the teacher's own unless --space names a dimension)."""
        cfg = json.loads((Path(self.config.teacher) / "config.json").read_text(encoding="utf-8"))
        layers = int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or 0)
        shapes = shapes_for(self.config.space, layers)
        n = math.prod(len(v) for v in shapes.values())
        if n > 1:
            try:
                from compress.stages.prune.causal_lm import prune_causal_lm  # noqa: F401 - prune of a causal LM
            except ImportError:
                raise ConfigError("--space layers/heads/ffn/vocab: this edgecompress cannot prune a causal LM",
                                  hint="search the INT4 dimensions only (runtime, algorithm, group, int8)") from None
            self._notes.append(f"shapes ({n}, each pruned from the teacher and recovered over "
                               f"{self.config.short.recover_steps} steps of --train): " + "; ".join(
                                   f"{k} {', '.join('all' if c is None else str(c) for c in v)}"
                                   for k, v in shapes.items() if v != [SHAPE_DEFAULTS[k]]))
        return layers, shapes

    def _data(self) -> tuple[str, str]:
        from compress.search.holdout import split_text

        for label, p in (("--train", self.config.train), ("--eval", self.config.eval),
                         ("--holdout", self.config.holdout)):
            if p and Path(p).suffix.lower() not in (".txt", ".jsonl"):
                raise ConfigError(f"{label} {p}: a generator search reads text (.txt, or .jsonl with \"text\"), not "
                                  "labelled rows or images", hint="pass the text the model generates (documents)")
        if self.config.holdout:
            return str(Path(self.config.eval).resolve()), str(Path(self.config.holdout).resolve())
        return split_text(Path(self.config.eval), self.dir / "data")

    def profile_for(self, runtime: str) -> str:
        """The profile a route's candidates are validated on: the given one where it runs that runtime (``host``
        runs whatever the artifact needs), else the same device and budgets on ``runtime``."""
        if runtime == self.profile.runtime.name or self.profile.source == "detected":
            return self.profile_ref
        d = self.dir / "profiles"
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{self.profile.name}-{runtime}.yaml"
        if not path.is_file():
            path.write_text(yaml.safe_dump({
                "name": f"{self.profile.name}-{runtime}", "extends": self.profile_ref,
                "description": f"{self.profile.name} running {runtime}: the same device and budgets",
                "runtime": {"name": runtime, **_RUNTIME[runtime]}}, sort_keys=False), encoding="utf-8")
        return str(path.resolve())

    # -- one trial ----------------------------------------------------------------------------------------------

    def shaped(self, c: GenCandidate) -> str:
        """The checkpoint of ``c``'s shape: the teacher, or its pruned and recovered copy, made once
        (SEARCH/shapes/KEY)."""
        from compress.stages.prune import prune
        from compress.stages.prune.config import PruneConfig

        key = c.shape_key
        if key is None:
            return self.config.teacher
        if key not in self._shaped:
            where = self.dir / "shapes" / key
            if not _complete(where):
                settings = c.prune_settings(teacher_layers=self.teacher_layers, train=self.train,
                                            recover_steps=self.config.short.recover_steps)
                self.say(f"pruning the teacher to {key} (once for every candidate of that shape) ...")
                t = time.monotonic()
                prune(self.config.teacher, where, PruneConfig.from_flat(**settings), train=self.train,
                      eval_data=self.eval, force=True)
                self.say(f"pruned {where} ({time.monotonic() - t:.0f} s)")
            self._shaped[key] = str(where)
        return self._shaped[key]

    def export(self, c: GenCandidate):
        """The route's FP32 export of ``c``'s shape, made once (SEARCH/exports/FORMAT[-KEY])."""
        from compress.artifact import load_artifact
        from compress.stages.export import export
        from compress.stages.export.config import ExportConfig

        fmt = ROUTES[c.runtime].format
        name = fmt + (f"-{c.shape_key}" if c.shape_key else "")
        if name not in self._exports:
            where = self.dir / "exports" / name
            art = load_artifact(where) if _complete(where) else None
            if art is None:
                source = self.shaped(c)
                what = f"the {c.shape_key} shape" if c.shape_key else "the teacher"
                self.say(f"exporting {what} to {fmt} (FP32, once for every such {c.runtime} candidate) ...")
                t = time.monotonic()
                art = export(source, where, ExportConfig(format=fmt), force=True)
                self.say(f"exported {where} ({time.monotonic() - t:.0f} s)")
            self._exports[name] = art
        return self._exports[name]

    def reference(self, c: GenCandidate) -> str:
        """What ``c`` is compared with: the teacher, or where ``c`` cuts the vocabulary its own shape's checkpoint
        (the teacher's token ids are others: its logits would be read at the wrong rows)."""
        return str(Path(self.shaped(c) if c.vocab else self.config.teacher).resolve())

    def validate(self, art, data: str, *, runtime: str, timing: bool = True, teacher: str | None = None):
        """Validate ``art`` on the profile with ``data`` text, as ``edgecompress validate`` does a generator, against
        ``teacher`` (default: the search's)."""
        from compress.validation.local import ValidateConfig, validate

        g = self.config.generation
        names = set(self.budgets)
        cfg = ValidateConfig.from_flat(
            profile=self.profile_for(runtime), data=data, teacher=teacher or str(Path(self.config.teacher).resolve()),
            limit=g.limit, prompt_tokens=g.prompt_tokens, new_tokens=g.new_tokens,
            baseline=timing and "min_speedup" in names,
            cold_start=timing and bool(names & {"max_cold_start_ms", "max_peak_memory_mb"}))
        return validate(art, cfg)

    def measure(self, number: int, c: GenCandidate) -> dict[str, Any]:
        """Quantize ``c`` from its route's export into SEARCH/candidates/NNNN, validate it on the ranking text; its
        figures and constraints."""
        from compress.profiles.budgets import BudgetStatus
        from compress.search.conclude import violation
        from compress.stages.quantize import quantize
        from compress.stages.quantize.config import QuantizeConfig

        t = time.monotonic()
        fp32 = self.export(c)
        g = self.config.generation
        settings = c.quantize_settings(calibration=self.train, windows=g.calibration_samples, data=self.eval,
                                       samples=g.limit)
        out = self.dir / "candidates" / f"{number:04d}"
        art = quantize(fp32, out, QuantizeConfig.from_flat(**settings), force=True)
        report = self.validate(art, self.eval, runtime=c.runtime, teacher=self.reference(c))
        (out.parent / f"{number:04d}.json").write_text(report.model_dump_json(indent=1), encoding="utf-8")
        m = report.metrics
        budgets = {b.name: {"limit": b.limit, "measured": b.measured, "status": str(b.status),
                            "comparison": b.comparison, "estimated": b.estimated} for b in report.budgets}
        step = art.manifest.steps[-1].metrics
        aa = step.get("accuracy_aware") or {}
        bits = (step.get("weights") or {}).get("bits") or {}
        return {
            "label": c.label, "runtime": c.runtime, "algorithm": c.algorithm, "group": c.group, "int8": c.int8,
            "shape": c.shape_key, "layers": c.layers or self.teacher_layers, "heads": c.heads, "ffn": c.ffn,
            "vocab": c.vocab, "reference": self.reference(c), "pruned": _prune_figures(self.shaped(c)),
            "artifact": str(out), "report": str(out.parent / f"{number:04d}.json"),
            "export": str(fp32.path), "quantize": settings,
            "verdict": report.verdict, "decode_tokens_per_s": m.get("decode_tokens_per_s"),
            "time_to_first_token_ms": m.get("time_to_first_token_ms"), "perplexity": m.get("perplexity"),
            "perplexity_increase": m.get("perplexity_increase"), "top1_agreement": m.get("top1_agreement"),
            "kl_mean": m.get("kl_mean"), "size_mb": m.get("size_mb"), "speedup": m.get("speedup"),
            "at_8_bits": len(aa.get("at_8_bits", [])) if aa else None,
            "matmuls_at_4_bits": sum(1 for b in bits.values() if b == 4) if bits else None,
            "estimated": any(b["estimated"] for b in budgets.values()),
            "budgets": budgets, "failed": [k for k, b in budgets.items() if b["status"] == BudgetStatus.failed],
            # the profile's budgets, then validate's collapse check (a budget of its own, limit 0)
            "constraints": [violation(budgets.get(n)) for n in self.budgets]
            + [1.0 if budgets.get("no_collapse", {}).get("status") == BudgetStatus.failed else 0.0],
            "seconds": round(time.monotonic() - t, 1),
        }


def _prune_figures(path: str) -> dict[str, Any] | None:
    """A shape's prune step's figures (its perplexity before and after on --eval), None for the teacher's."""
    from compress.artifact import load_artifact

    if not (Path(path) / "manifest.json").is_file():
        return None
    step = load_artifact(path, verify=False).manifest.steps[-1]
    keep = ("perplexity", "parameters_before", "parameters_after", "parameter_ratio", "vocab", "recovery")
    return {k: v for k, v in step.metrics.items() if k in keep} if step.stage == "prune" else None


def _complete(where: Path) -> bool:
    """Whether ``where`` holds an artifact that loads (a search resumed reuses it)."""
    from compress.artifact import load_artifact

    if not (where / "manifest.json").is_file():
        return False
    try:
        load_artifact(where)
    except EdgeCompressError:
        return False
    return True


def _unavailable(runtime: str) -> str | None:
    """Why ``runtime``'s route cannot run here (None: it can)."""
    from compress._optional import is_available

    if runtime == "onnxruntime":
        return None if is_available("onnxruntime_genai") else f"not installed: {ROUTES[runtime].install}"
    if runtime == "openvino":
        return None if is_available("openvino") and is_available("nncf") else \
            f"not installed: {ROUTES[runtime].install}"
    from compress.stages.export.gguf import llama_cpp_tree

    try:
        tree = llama_cpp_tree()
    except ConfigError as e:
        return str(e)
    if tree is None or not is_available("llama_cpp"):
        return f"llama.cpp is not here: {ROUTES[runtime].install}"
    return None


# -- the study ----------------------------------------------------------------------------------------------------


def run_generator_search(config: SearchConfig, search_dir: Path, *, progress: Progress | None = None,
                         force: bool = False):
    """Search ``config.teacher`` (a causal LM) for the INT4 generator that meets ``config.profile``'s budgets and is
    best on ``config.objective``; see the module's docstring. Returns a
    :class:`~compress.search.conclude.SearchResult` whose summary has ``generator: true``."""
    from compress.recipes.execute import write_json_atomic
    from compress.search.generator_conclude import conclude_generator
    from compress.search.study import open_dir, optuna_module, requeue_interrupted

    optuna = optuna_module()
    created = not search_dir.exists() or not any(search_dir.iterdir())
    open_dir(search_dir, config, force)
    try:  # bad input is refused before anything is built, and leaves no directory behind
        s = GeneratorSearch(config, search_dir, progress)
    except BaseException:
        if created:
            shutil.rmtree(search_dir, ignore_errors=True)
        raise
    url = config.study.storage or f"sqlite:///{(search_dir / 'study.db').resolve()}"
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120,
                                         failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=2)) \
        if url.split(":")[0].split("+")[0] in ("sqlite", "postgresql", "mysql") else url
    sampler = optuna.samplers.TPESampler(
        seed=config.study.seed, n_startup_trials=4,
        constraints_func=lambda t: t.user_attrs.get("constraints", [1.0] * (len(s.budgets) + 1)))
    study = optuna.create_study(study_name=config.study.name, storage=storage, sampler=sampler, load_if_exists=True,
                                directions=["maximize", "minimize", "minimize"])
    study.set_metric_names(["decode_tokens_per_s", "perplexity_increase", "size_mb"])
    s.spent_before = float(study.user_attrs.get("spent_s", 0.0))
    s.study = study
    requeue_interrupted(optuna, study, s.say)
    candidates = all_candidates(s.space, s.shapes)
    if not study.trials:  # the routes' plainest candidate first: round to nearest (or Q4_0), the smallest group,
        first = {k: v[0] for k, v in s.shapes.items()}  # of the first shape; then each other shape's on one route
        plain = {rt: GenCandidate(rt, d["algorithm"][0], d["group"][0], d["int8"][0], **first)
                 for rt, d in s.space.items()}
        others = [replace(next(iter(plain.values())), layers=n, heads=h, ffn=f, vocab=v)
                  for n in s.shapes["layers"] for h in s.shapes["heads"] for f in s.shapes["ffn"]
                  for v in s.shapes["vocab"] if (n, h, f, v) != tuple(first.values())]
        for c in [*plain.values(), *others]:
            study.enqueue_trial(params_of(c, s.space, s.shapes))
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
        s.record_time()
        if done():
            study.stop()
            return
        waiting = any(t.state == optuna.trial.TrialState.WAITING for t in study.get_trials(deepcopy=False))
        if "duplicate_of" in trial.user_attrs and not waiting:  # the sampler proposed one tried: an untried one
            seen = tried()
            untried = [c for c in candidates if c.label not in seen]
            if untried:
                study.enqueue_trial(params_of(rng.choice(untried), s.space, s.shapes))

    objective = _objective(optuna, s)
    if not done():
        study.optimize(objective, callbacks=[callback], catch=(EdgeCompressError,))
    s.say(f"search ends: {done() or 'stopped'}")
    result = conclude_generator(s, study)
    s.record_time()
    result.summary["spent_s"] = round(s.spent(), 1)
    write_json_atomic(search_dir / "search.json", result.summary)
    return result


def _objective(optuna, s: GeneratorSearch):
    from compress.profiles.budgets import BudgetStatus

    def objective(trial):
        c = suggest(trial, s.space, s.shapes)
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
            res = s.measure(trial.number, c)
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


__all__ = ["GeneratorSearch", "is_generator_teacher", "line", "run_generator_search"]
