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
    SEARCH/report.html               the same, with decode tokens/s plotted against the perplexity increase

A trial is: the shape's checkpoint (the teacher itself, or pruned the first time the shape is drawn), the route's
FP32 export of it (made the first time the route and shape are drawn), quantized with the candidate's settings
through the route's own quantizer (``edgecompress quantize``'s library function), then validated on the profile
(:func:`compress.validation.local.validate`: decode tokens/s, time to first token, perplexity increase and top-1
agreement against the PyTorch teacher (the unpruned one: a shape's loss counts) on the ranking text, size, and what
else the profile budgets). The sampler is
Optuna's multi-objective TPE (decode tokens/s up, perplexity increase down, size down) with the budgets as
constraints; a candidate drawn again reuses its figures, and then an untried one is queued instead. The search stops
after ``--trials`` measured candidates, when the time budget is spent, or when every candidate is measured. The chosen
candidate meets every budget and is best on the objective (latency: the most decode tokens/s; size: the smallest);
its perplexity and top-1 agreement are then measured again on held-out text the search never ranked on.

:class:`GeneratorSpace` is this search's space under the one driver (:func:`compress.search.run.run_search`, over the
search directory :class:`compress.search.directory.Search`): one fidelity, the plainest candidates queued first, an
untried candidate queued where the sampler proposes one tried; its end is :mod:`compress.search.generation_conclude`.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from compress.errors import ConfigError, EdgeCompressError, StageError
from compress.search.config import Objective, SearchConfig
from compress.search.generation_conclude import conclude_generator
from compress.search.generation_space import (
    GENERATOR_SPACE,
    ROUTES,
    SHAPE_DEFAULTS,
    GenCandidate,
    generator_candidates,
    params_of,
    shapes_for,
    space_for,
    suggest_generator,
)
from compress.search.space import SearchResult, Space, measured_beside, violation


class GeneratorSpace(Space):
    """A causal LM's space: per route its INT4 choices (the mapping: ``space["onnxruntime"]["algorithm"]``), the
    shapes, and one trial's shape, export, quantization and validation. ``s``: the search
    (:class:`compress.search.directory.Search`) it belongs to."""

    kind = "generation"
    detected_runs_any = True  # a detected profile (host) runs whatever runtime a route's artifact needs
    ignores = ("a generator search labels nothing and trains only the shapes --space names (layers, heads, ffn, "
               "vocab: recovered over --short-recover-steps)")
    objectives = (("decode_tokens_per_s", "maximize"), ("perplexity_increase", "minimize"), ("size_mb", "minimize"))
    startup_trials = 4
    own_constraints = 1  # validate's collapse check (a budget of its own, limit 0)
    promotes = False  # one fidelity: every candidate is measured as it will ship

    def __init__(self, s) -> None:
        self.search = s
        self.config, self.profile, self.dir = s.config, s.profile, s.dir
        _refuse(s.config)
        s.split(text=True)
        self.choices = self._routes()
        self.teacher_layers, self.shapes = self._shapes()
        self.train = str(Path(s.config.train).resolve())
        self._exports: dict[str, Any] = {}
        self._shaped: dict[str, str] = {}
        self.candidates = generator_candidates(self.choices, self.shapes)
        self._rng = random.Random(s.config.study.seed)

    @classmethod
    def judged(cls, profile, notes: list[str]) -> list[str]:
        """The budgets its candidates are judged by: the profile's generator budgets over its budgets, less those that
        read another kind's outputs (a note says which); at least one a generator is measured by."""
        from compress.profiles.budgets import budgets_of, judge, judged_for

        names = [b.name for b in judge(profile.generator_limits(), {})]
        ours = [n for n in names if n in budgets_of(cls.kind)]
        theirs = [n for n in names if n not in judged_for(cls.kind)]
        if not ours:
            raise ConfigError(
                f"profile {profile.name} states no budget a generator is measured by ("
                + ", ".join(budgets_of(cls.kind)) + ")" + (f"; its {', '.join(theirs)} read an encoder's or a "
                                                         "classifier's outputs" if theirs else ""),
                hint=f"give a profile YAML with extends: {profile.name} and budgets such as "
                     "max_perplexity_increase: 0.1, min_decode_tokens_per_s: 50 (docs/reference/profiles.md)")
        if theirs:
            notes.append(f"budgets {', '.join(theirs)} read an encoder's outputs: not judged for a generator")
        return [n for n in names if n in judged_for(cls.kind)]

    # -- setting up -------------------------------------------------------------------------------------------

    def _routes(self) -> dict[str, dict[str, list[Any]]]:
        asked = self.config.space
        routes = [r for r in ROUTES if r in asked.get("runtime", list(ROUTES))]
        kept, skipped, missing = [], [], []
        for name in routes:
            why = _unavailable(name)
            if why:
                skipped.append(f"{name}: {why}")
                missing.append(f"{name}: {ROUTES[name].install}")
                self.search.notes.append(f"runtime: no {name} candidates ({why})")
            else:
                kept.append(name)
        space = space_for(asked, kept)
        if not space:  # the install hint names only the routes asked for that are not here
            narrowed = ";".join(f"{k}={','.join(map(str, v))}" for k, v in asked.items())
            raise ConfigError("no generator route is left to search" + (f" in --space {narrowed}" if asked else "")
                              + (f" ({'; '.join(skipped)})" if skipped else ""),
                              hint="widen --space" + (f", or install a route: {'; '.join(missing)}" if missing else ""))
        n = len(generator_candidates(space))
        self.search.notes.append("generator search: " + "; ".join(
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
                from compress.stages.prune.lm.prune import prune_causal_lm  # noqa: F401 - prune of a causal LM
            except ImportError:
                raise ConfigError("--space layers/heads/ffn/vocab: this edgecompress cannot prune a causal LM",
                                  hint="search the INT4 dimensions only (runtime, algorithm, group, int8)") from None
            self.search.notes.append(f"shapes ({n}, each pruned from the teacher and recovered over "
                               f"{self.config.short.recover_steps} steps of --train): " + "; ".join(
                                   f"{k} {', '.join('all' if c is None else str(c) for c in v)}"
                                   for k, v in shapes.items() if v != [SHAPE_DEFAULTS[k]]))
        return layers, shapes

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
                self.search.say(f"pruning the teacher to {key} (once for every candidate of that shape) ...")
                t = time.monotonic()
                prune(self.config.teacher, where, PruneConfig.from_flat(**settings), train=self.train,
                      eval_data=self.search.eval, force=True)
                self.search.say(f"pruned {where} ({time.monotonic() - t:.0f} s)")
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
                self.search.say(f"exporting {what} to {fmt} (FP32, once for every such {c.runtime} candidate) ...")
                t = time.monotonic()
                art = export(source, where, ExportConfig(format=fmt), force=True)
                self.search.say(f"exported {where} ({time.monotonic() - t:.0f} s)")
            self._exports[name] = art
        return self._exports[name]

    def reference(self, c: GenCandidate) -> str:
        """What ``c`` is compared with: the teacher, or where ``c`` cuts the vocabulary its own shape's checkpoint
        (the teacher's token ids are others: its logits would be read at the wrong rows)."""
        return str(Path(self.shaped(c) if c.vocab else self.config.teacher).resolve())

    def validate(self, art, data: str, *, runtime: str, timing: bool = True, teacher: str | None = None):
        """Validate ``art`` on the profile with ``data`` text, as ``edgecompress validate`` does a generator, against
        ``teacher`` (default: the search's)."""
        from compress.validation.config import ValidateConfig
        from compress.validation.local import validate

        g = self.config.generation
        beside = measured_beside(self.search.budgets)
        cfg = ValidateConfig.from_flat(
            profile=self.search.profile_for(runtime), data=data, teacher=teacher or str(Path(self.config.teacher).resolve()),
            limit=g.limit, prompt_tokens=g.prompt_tokens, new_tokens=g.new_tokens,
            baseline=timing and beside["baseline"], cold_start=timing and beside["cold_start"])
        return validate(art, cfg)

    def measure(self, number: int, c: GenCandidate) -> dict[str, Any]:
        """Quantize ``c`` from its route's export into SEARCH/candidates/NNNN, validate it on the ranking text; its
        figures and constraints."""
        from compress.profiles.budgets import BudgetStatus
        from compress.stages.quantize import quantize
        from compress.stages.quantize.config import QuantizeConfig

        t = time.monotonic()
        fp32 = self.export(c)
        g = self.config.generation
        settings = c.quantize_settings(calibration=self.train, windows=g.calibration_samples, data=self.search.eval,
                                       samples=g.limit)
        out = self.dir / "candidates" / f"{number:04d}"
        art = quantize(fp32, out, QuantizeConfig.from_flat(**settings), force=True)
        report = self.validate(art, self.search.eval, runtime=c.runtime, teacher=self.reference(c))
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
            "at_8_bits": len(aa.get("at_8_bits") or []) if aa else None,
            "matmuls_at_4_bits": sum(1 for b in bits.values() if b == 4) if bits else None,
            "estimated": any(b["estimated"] for b in budgets.values()),
            "budgets": budgets, "failed": [k for k, b in budgets.items() if b["status"] == BudgetStatus.failed],
            # the profile's budgets, then validate's collapse check (a budget of its own, limit 0)
            "constraints": [violation(budgets.get(n)) for n in self.search.budgets]
            + [1.0 if budgets.get("no_collapse", {}).get("status") == BudgetStatus.failed else 0.0],
            "seconds": round(time.monotonic() - t, 1),
        }


    # -- the driver's hooks -----------------------------------------------------------------------------------

    def first_trials(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """The routes' plainest candidate first (round to nearest, or Q4_0; the smallest group) of the first shape;
        then each other shape's on one route."""
        shapes = self.shapes
        first = {k: v[0] for k, v in shapes.items()}
        plain = {rt: GenCandidate(rt, d["algorithm"][0], d["group"][0], d["int8"][0], **first) for rt, d in self.items()}
        others = [replace(next(iter(plain.values())), layers=n, heads=h, ffn=f, vocab=v)
                  for n in shapes["layers"] for h in shapes["heads"] for f in shapes["ffn"]
                  for v in shapes["vocab"] if (n, h, f, v) != tuple(first.values())]
        return [(params_of(c, self, shapes), {}) for c in [*plain.values(), *others]]

    def _tried(self, study) -> set[str]:
        """The candidates measured or answered (as another's figures, or a failure not tried again)."""
        from optuna.trial import TrialState

        return {t.user_attrs["label"] for t in study.get_trials(deepcopy=False) if "label" in t.user_attrs
                and (t.state == TrialState.COMPLETE or "duplicate_of" in t.user_attrs or "error" in t.user_attrs)}

    def stop_reason(self, study) -> str | None:
        """After --trials measured candidates, when the time budget is spent, or when every candidate is tried."""
        from optuna.trial import TrialState

        trials = self.config.short.trials
        if trials and sum(1 for t in study.get_trials(deepcopy=False)
                          if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs) >= trials:
            return f"{trials} candidates measured"
        if self.search.spent() >= self.config.time_budget_s:
            return "the time budget is spent"
        if len(self._tried(study)) >= len(self.candidates):
            return f"every candidate ({len(self.candidates)}) is tried"
        return None

    def after_trial(self, study, trial) -> None:
        """The sampler proposed a candidate tried already, and nothing is queued: an untried one is."""
        from optuna.trial import TrialState

        waiting = any(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))
        if "duplicate_of" in trial.user_attrs and not waiting:
            seen = self._tried(study)
            untried = [c for c in self.candidates if c.label not in seen]
            if untried:
                study.enqueue_trial(params_of(self._rng.choice(untried), self, self.shapes))

    def conclude(self, study) -> SearchResult:
        return conclude_generator(self.search, study)

    def draw(self, trial) -> tuple[GenCandidate, str]:
        c = suggest_generator(trial, self, self.shapes)
        trial.set_user_attr("label", c.label)
        return c, f"[trial {trial.number}] {c.label}"

    def answered(self, trial, c: GenCandidate, tag: str):
        """The figures of the same candidate measured already, or of its all-4-bit twin where that is within the
        8-bit target already; a candidate that failed before is not tried again."""
        import optuna

        TS = optuna.trial.TrialState
        trials = trial.study.get_trials(deepcopy=False)
        twin = next((t for t in trials if t.state == TS.COMPLETE and t.user_attrs.get("label") == c.label
                     and "duplicate_of" not in t.user_attrs), None)
        plain = None if twin is not None or not c.int8 else next(
            (t for t in trials if t.state == TS.COMPLETE and t.user_attrs.get("label") == replace(c, int8=0.0).label
             and "duplicate_of" not in t.user_attrs and (t.user_attrs.get("perplexity_increase") or 0.0) <= c.int8),
            None)
        for t in filter(None, (twin, plain)):
            for k, v in t.user_attrs.items():
                if k != "worker":
                    trial.set_user_attr(k, v)
            trial.set_user_attr("label", c.label)
            trial.set_user_attr("duplicate_of", t.number)
            self.search.say(f"{tag}: as trial {t.number} (measured already)" if t is twin else
                            f"{tag}: as trial {t.number} (its perplexity {t.user_attrs['perplexity_increase']:+.2%} "
                            f"is within +{c.int8:.0%} already: no layer would go back to 8 bits)")
            return t.values
        broken = next((t for t in trials if t.state == TS.FAIL and t.user_attrs.get("label") == c.label
                       and "error" in t.user_attrs), None)
        if broken is not None:  # failed with an error before: the same error again
            trial.set_user_attr("duplicate_of", broken.number)
            raise optuna.TrialPruned(f"failed in trial {broken.number}")
        return None

    def build(self, trial, c: GenCandidate, tag: str) -> dict[str, Any]:
        self.search.say(f"{tag}: quantizing and validating ...")
        try:
            return self.measure(trial.number, c)
        except EdgeCompressError:
            raise
        except Exception as e:  # a quantizer's own bug fails this trial, not the search
            raise StageError(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e

    def figures(self, res: dict[str, Any]) -> str:
        from compress.profiles.budgets import BudgetStatus

        def f(x, fmt):
            return "-" if x is None else format(x, fmt)

        odd = [k if b["status"] == BudgetStatus.failed else f"{k} {b['status']}" for k, b in res["budgets"].items()
               if b["status"] != BudgetStatus.passed]
        est = " (est.)" if res.get("estimated") else ""
        return ((f" ({', '.join(odd)})" if odd else "")
                + f": decode {f(res['decode_tokens_per_s'], '.1f')} tokens/s{est}, TTFT "
                f"{f(res['time_to_first_token_ms'], '.1f')} ms, perplexity {f(res['perplexity_increase'], '+.2%')}, "
                f"top-1 {f(res['top1_agreement'], '.3f')}, {f(res['size_mb'], '.3f')} MB"
                + (f", {res['at_8_bits']} MatMuls at 8 bits" if res.get("at_8_bits") else ""))

    def values(self, res: dict[str, Any]) -> tuple[float, float, float]:
        return (res["decode_tokens_per_s"] or 0.0,
                res["perplexity_increase"] if res["perplexity_increase"] is not None else math.inf, res["size_mb"])


def _refuse(config: SearchConfig) -> None:
    """One line for what a generator search cannot take beyond the options marked for another kind: the shapes'
    recovery steps without a shape, the energy proxy, an encoder's dimensions and choices."""
    from compress.search.config import Short
    from compress.settings import flag

    shaped = any(k in config.space for k in SHAPE_DEFAULTS)  # a shape is recovered over --short-recover-steps
    if not shaped and config.short.recover_steps != Short.model_fields["recover_steps"].default:
        raise ConfigError(f"{flag('short_recover_steps')}: {GeneratorSpace.ignores}", hint="drop it")
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
    from compress.stages.export.lm.gguf import llama_cpp_tree

    try:
        tree = llama_cpp_tree()
    except ConfigError as e:
        return str(e)
    if tree is None or not is_available("llama_cpp"):
        return f"llama.cpp is not here: {ROUTES[runtime].install}"
    return None


__all__ = ["GeneratorSpace"]
