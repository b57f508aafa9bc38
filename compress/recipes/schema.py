"""The recipe file: its schema, and reading it with errors that name the file, the line and the field.

A recipe declares a pipeline as named steps, each one verb (distill, prune, export, quantize) applied to the
output of another step (``from:``, default the teacher), then which artifacts to validate on which profiles,
which to package for serverless profiles, and what to gate against. Relative paths are relative to the
recipe file; ``builtin:NAME`` names what ships with edgecompress (the demo teacher and sample sentences).

Example::

    name: sst2-release
    teacher: ./teacher
    data: {train: data/train.tsv, eval: data/dev.tsv}
    steps:
      student:  {distill: {student: {layers: 3}, training: {epochs: 1}}}
      pruned:   {from: student, prune: {heads: 0.3, ffn: 0.3, recovery: {steps: 500}}}
      onnx:     {from: pruned, export: {}}
      int8:     {from: onnx, quantize: {}}
    validate: {profiles: [cpu-x86-avx2], artifacts: [int8]}
    gate: {baseline: previous}

The teacher may itself be made by the recipe, fine-tuned from a pretrained base (``edgecompress finetune``'s options,
snake_case, on the recipe's ``data.train`` and ``data.eval``), cached and keyed like every step::

    teacher:
      finetune: {base: builtin:all-MiniLM-L6-v2, training: {epochs: 1}, labels: [negative, positive]}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from compress.errors import ConfigError
from compress.profiles.load import UniqueKeyLoader, looks_like_path  # duplicate keys refused, as in profiles
from compress.recipes.verbs import MEASURING_VERBS, STEP_VERBS, TEACHER, VERBS

NAME = r"^[a-z0-9][a-z0-9_-]*$"
BUILTIN = "builtin:"
ALIASES = {"from_": "from", "validate_": "validate"}  # pydantic field -> the key written in the file


class DataSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train: str | None = Field(None, description="Transfer/training data (distill, prune recovery, vocabulary).")
    eval: str | None = Field(None, description="Labelled eval data: distillation checkpoints and validation.")
    calibration: str | None = Field(None, description="Calibration data for static quantization (default: train).")


class FinetuneSpec(BaseModel):
    """A teacher the recipe fine-tunes from a pretrained base: ``{finetune: {base: ..., <finetune options>}}``."""

    model_config = ConfigDict(extra="forbid")
    finetune: dict[str, Any] = Field(description="edgecompress finetune's options (snake_case), with base: (the "
                                     "pretrained checkpoint) and optionally retain_data:.")

    @model_validator(mode="after")
    def _has_base(self) -> FinetuneSpec:
        if not isinstance(self.finetune.get("base"), str):
            raise ValueError("finetune needs base: (the pretrained checkpoint to fine-tune)")
        return self

    @property
    def base(self) -> str:
        return self.finetune["base"]

    @property
    def retain_data(self) -> str | None:
        return self.finetune.get("retain_data")

    @property
    def settings(self) -> dict[str, Any]:
        """The options finetune's settings model takes (the paths are passed beside them)."""
        return {k: v for k, v in self.finetune.items() if k not in FINETUNE_PATHS}


#: a finetune teacher's paths: read beside its settings and keyed by their content
FINETUNE_PATHS = ("base", "retain_data")


class StepSpec(BaseModel):
    """One step: exactly one verb with its settings (the verb's own options, snake_case), and its input."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: str = Field(TEACHER, alias="from", description="The step whose output this step takes (or 'teacher').")
    distill: dict[str, Any] | None = None
    prune: dict[str, Any] | None = None
    export: dict[str, Any] | None = None
    quantize: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_verb(self) -> StepSpec:
        given = [v for v in STEP_VERBS if getattr(self, v) is not None]
        if len(given) != 1:
            raise ValueError(f"a step needs exactly one of {', '.join(STEP_VERBS)} (got {', '.join(given) or 'none'})")
        return self

    @property
    def verb(self) -> str:
        return next(v for v in STEP_VERBS if getattr(self, v) is not None)

    @property
    def settings(self) -> dict[str, Any]:
        return dict(getattr(self, self.verb))


class TargetsSpec(BaseModel):
    """Artifacts × profiles for validation or packaging."""

    model_config = ConfigDict(extra="forbid")
    profiles: list[str] = Field(min_length=1, description="Profile names or YAML paths.")
    artifacts: list[str] | None = Field(None, description="Step names (default: every export and quantize step).")
    options: dict[str, Any] = Field(default_factory=dict, description="The verb's own options, snake_case.")
    budgets: dict[str, Any] | None = Field(
        None, description="Budgets that replace these profiles' own, as a profile's budgets: section writes them "
        "(min_decode_tokens_per_s, max_time_to_first_token_ms, max_perplexity_increase, min_top1_agreement, ...; "
        "null: not judged).")


class GateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    baseline: str = Field("previous", description="'previous' (this run directory's last run) or a run directory.")
    threshold: float = Field(0.10, ge=0, description="Relative change of the median latency that counts.")
    alpha: float = Field(0.05, gt=0, lt=1, description="Significance level of the rank and paired tests.")


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(pattern=NAME, description="Names the run directory (lowercase letters, digits, - and _).")
    teacher: str | FinetuneSpec = Field(description="The teacher checkpoint (a path, or builtin:all-MiniLM-L6-v2), or "
                                        "{finetune: {base: ..., ...}}: a teacher the recipe fine-tunes from a base.")
    data: DataSpec = Field(default_factory=DataSpec)
    steps: dict[str, StepSpec] = Field(min_length=1)
    validate_: TargetsSpec | list[TargetsSpec] | None = Field(None, alias="validate")
    package: TargetsSpec | list[TargetsSpec] | None = None
    gate: GateSpec | None = None

    def deployable(self) -> list[str]:
        return [n for n, s in self.steps.items() if VERBS[s.verb].deployable]

    def targets(self, verb: str) -> list[TargetsSpec]:
        """The validate: or package: entries (one mapping, or a list of them: different profiles per artifact)."""
        spec = getattr(self, VERBS[verb].section)
        return [] if spec is None else spec if isinstance(spec, list) else [spec]

    def format_of(self, step: str) -> str:
        """The format a step's artifact will have (quantize keeps its input's)."""
        s = self.steps[step]
        verb = VERBS[s.verb]
        if verb.format is None:
            return self.format_of(s.from_)
        return str((s.settings.get(verb.format_option) if verb.format_option else None) or verb.format)


# -- reading --------------------------------------------------------------------------------------------------


class RecipeError(ConfigError):
    """A recipe file is unreadable or invalid: the message names the file, line and field."""


def _line(node: yaml.Node | None, loc: tuple) -> int | None:
    """The line of the deepest YAML node along ``loc`` (a key's own line for a mapping entry)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == ALIASES.get(str(part), str(part)):
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _field(loc: tuple) -> str:
    parts = []
    for p in loc:
        if isinstance(p, int):
            parts[-1:] = [f"{parts[-1]}[{p}]"] if parts else [f"[{p}]"]
        elif not str(p).startswith(("function-", "union[")):
            parts.append(ALIASES.get(str(p), str(p)))
    return ".".join(parts)


def _set_key(root, field: str, problem: str) -> str | None:
    """The ``--set`` key (recorded on ``root`` by :func:`read_recipe`) a problem at ``field`` comes from: the key
    itself, one inside a value it set, or one set beneath ``field`` that the problem names; None: the file's."""
    for key in getattr(root, "set_keys", ()):
        below = key[len(field) + 1:].split(".")[0] if key.startswith(field + ".") else None
        if key == field or field.startswith(key + ".") or (below and (f"`{below}`" in problem or below in problem.split())):
            return key
    return None


def _raise(label: str, root, loc: tuple, problem: str, hint: str) -> None:
    field = _field(loc)
    if (key := _set_key(root, field, problem)) is not None:  # not a line of the file: the option that set it
        inside = field if field.startswith(key + ".") else ""  # a field inside the value set, else the key says it
        raise RecipeError(f"--set {key}: {inside + ': ' if inside else ''}{problem}", hint=hint)
    line = _line(root, loc)
    where = f"{label}:{line}" if line else label
    raise RecipeError(f"{where}: {field + ': ' if field else ''}{problem}", hint=hint)


def _pydantic(label: str, root, err: ValidationError, prefix: tuple = (), hint: str = "") -> None:
    e = err.errors()[0]
    loc = prefix + tuple(e["loc"])
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        msg = "unknown field"
    elif e["type"] == "missing":
        msg = "required field missing"
    _raise(label, root, loc, msg, hint or "see `edgecompress run --help` and the README's Recipes section")


#: the recipes that ship with edgecompress (compress/recipes/NAME.yaml), run as ``edgecompress run builtin:NAME``
SHIPPED = {"demo": "the demo (what `edgecompress demo` runs)",
           "lm-stories": "a small causal LM to a gated INT4 ONNX artifact (--set teacher=DIR --set data.eval=TEXT)",
           "lm-smaller": "a causal LM from its pretrained base: LoRA fine-tune, half-depth student, pruned, INT4, "
                         "gated (--set teacher.finetune.base=DIR --set data.train=TEXT --set data.eval=TEXT)"}


def recipe_file(value: Path | str) -> Path:
    """The recipe file ``value`` names: a path, or ``builtin:NAME``, a recipe shipped with edgecompress."""
    text = str(value)
    if not text.startswith(BUILTIN):
        return Path(value)
    name = text[len(BUILTIN):].removesuffix(".yaml")
    if name not in SHIPPED:
        raise RecipeError(f"{text}: no such recipe ships with edgecompress",
                          hint="shipped: " + "; ".join(f"builtin:{n} ({what})" for n, what in SHIPPED.items()))
    import importlib.resources

    return Path(str(importlib.resources.files("compress") / "recipes" / f"{name}.yaml"))


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (``--set``) as {dotted key: value}; each value read as YAML (numbers, null, lists)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not re.match(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$", key.strip()):
            raise RecipeError(f"--set {pair}: expected KEY=VALUE with a dotted KEY",
                              hint="e.g. --set teacher=./model --set validate.budgets.min_top1_agreement=0.9")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def _is_path_key(parts: list[str]) -> bool:
    """Whether a ``--set`` key names a path field: the teacher (or its base), a data file, a verb's path option."""
    if parts in (["teacher"], ["teacher", "finetune", "base"], ["teacher", "finetune", "retain_data"]) or \
            (len(parts) == 2 and parts[0] == "data"):
        return True
    if len(parts) >= 4 and parts[0] == "steps" and parts[2] in VERBS:
        return ".".join(parts[3:]) in VERBS[parts[2]].paths
    rest = parts[2:] if len(parts) > 2 and parts[1].isdigit() else parts[1:]
    return parts[0] in ("validate", "package") and rest[:1] == ["options"] and ".".join(rest[1:]) in VERBS[parts[0]].paths


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any], cwd: Path | None = None) -> dict[str, Any]:
    """``data`` (a recipe as read) with each dotted key of ``overrides`` set; a relative path given for a path
    field is taken relative to ``cwd`` (the current directory: where the user typed it), not the recipe file."""
    cwd = Path.cwd() if cwd is None else cwd
    for key, value in overrides.items():
        parts = key.split(".")
        if isinstance(value, str) and _is_path_key(parts) and value not in ("train", "eval", "calibration") \
                and not value.startswith(BUILTIN):
            value = resolve_path(value, cwd)
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            nxt = node[int(part)] if isinstance(node, list) and part.isdigit() and int(part) < len(node) else \
                node.setdefault(part, {}) if isinstance(node, dict) else None
            if not isinstance(nxt, (dict, list)):
                raise RecipeError(f"--set {key}: {'.'.join(parts[:i + 1])} is not a mapping in the recipe",
                                  hint="set a field inside a mapping (steps.NAME.VERB.OPTION, data.eval, ...)")
            node = nxt
        if isinstance(node, list):
            raise RecipeError(f"--set {key}: {'.'.join(parts[:-1])} is a list", hint="name one entry: KEY.0.FIELD")
        node[parts[-1]] = value
    return data


def read_recipe(path: Path | str, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read and check a recipe file. Every problem is one :class:`RecipeError` naming file, line and field.
    ``overrides``: {dotted key: value} set over the file's (``edgecompress run --set``), paths relative to the
    current directory."""
    p = recipe_file(path)
    label = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{label}: recipe file not found", hint="check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"{label}: unreadable recipe ({e})", hint="save the recipe as UTF-8 YAML") from None
    try:
        root = yaml.compose(text, Loader=UniqueKeyLoader)
        data = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f":{mark.line + 1}" if mark else ""
        raise RecipeError(f"{label}{at}: invalid YAML: {e.problem or e.context}",
                          hint="check indentation (spaces, not tabs) and a ':' after each key") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{label}: expected a mapping with name, teacher, steps", hint="see the README's Recipes section")
    data.setdefault("name", re.sub(r"[^a-z0-9_-]+", "-", p.stem.lower()).strip("-_") or "recipe")
    if overrides:
        apply_overrides(data, overrides)
        if root is not None:  # a problem in what --set wrote is named by its key, not by a line of the file
            root.set_keys = tuple(overrides)
    if "teacher" not in data:
        raise RecipeError(f"{label}: teacher: required field missing",
                          hint="name the checkpoint in the recipe, or give it: --set teacher=DIR")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        _pydantic(label, root, e)
    _check(recipe, label, root, p.parent)
    return recipe


def _check(recipe: Recipe, label: str, root, base: Path) -> None:
    """What the schema cannot say: names, the graph, each verb's own options."""
    steps = recipe.steps
    if isinstance(recipe.teacher, FinetuneSpec):
        from compress.stages.finetune.config import FinetuneConfig

        try:
            FinetuneConfig.model_validate(recipe.teacher.settings)
        except ValidationError as e:
            _pydantic(label, root, e, ("teacher", "finetune"),
                      hint="the options of `edgecompress finetune --help`, in snake_case")
        if not recipe.data.train:
            _raise(label, root, ("teacher",), "a fine-tuned teacher needs data.train", "set data.train in the recipe")
    for name, step in steps.items():
        if not re.match(NAME, name) or name == TEACHER:
            _raise(label, root, ("steps", name), f"{name!r} is not a step name",
                   "lowercase letters, digits, - and _; 'teacher' names the recipe's teacher")
        model = VERBS[step.verb].config_model()
        try:
            model.model_validate(step.settings)
        except ValidationError as e:
            _pydantic(label, root, e, ("steps", name, step.verb),
                      hint=f"the options of `edgecompress {step.verb} --help`, in snake_case")
        parent = step.from_
        if parent != TEACHER and parent not in steps:
            _raise(label, root, ("steps", name, "from_"), f"no step named {parent!r}",
                   f"name one of: teacher, {', '.join(n for n in steps if n != name)}")
        parent_verb = TEACHER if parent == TEACHER else steps[parent].verb
        takes_from = VERBS[step.verb].takes_from
        if parent_verb not in takes_from:
            what = "the teacher" if parent == TEACHER else f"{parent_verb} step {parent!r}"
            _raise(label, root, ("steps", name, "from_"), f"{step.verb} cannot take the output of {what}",
                   f"{step.verb} takes the output of: {', '.join(takes_from)}")
    # a cycle of from: links
    for name in steps:
        seen, cur = {name}, steps[name].from_
        while cur != TEACHER:
            if cur in seen:
                _raise(label, root, ("steps", name, "from_"), "the from: links form a cycle", "make one step start from teacher")
            seen.add(cur)
            cur = steps[cur].from_
    for verb in MEASURING_VERBS:
        section = VERBS[verb].section
        specs = recipe.targets(verb)
        for n, spec in enumerate(specs):
            at = (section, n) if isinstance(getattr(recipe, section), list) else (section,)
            for i, a in enumerate(spec.artifacts or []):
                if a not in steps or not VERBS[steps[a].verb].deployable:
                    _raise(label, root, (*at, "artifacts", i), f"{a!r} is not an export or quantize step",
                           f"name one of: {', '.join(recipe.deployable()) or '(none: add an export step)'}")
            if "profile" in spec.options:
                _raise(label, root, (*at, "options", "profile"), "the profiles are listed under profiles:",
                       "remove profile from options")
            if spec.budgets is not None:
                from compress.profiles.schema import Budgets

                try:
                    Budgets.model_validate(spec.budgets)
                except ValidationError as e:
                    _pydantic(label, root, e, (*at, "budgets"),
                              hint="a profile's budgets (docs/reference/profiles.md), e.g. min_decode_tokens_per_s: 20")
            try:
                VERBS[verb].config_model().model_validate({"profile": spec.profiles[0], **spec.options})
            except ValidationError as e:
                _pydantic(label, root, e, (*at, "options"), hint=f"the options of `edgecompress {verb} --help`, in snake_case")
            if not (spec.artifacts or recipe.deployable()):
                _raise(label, root, at, f"nothing to {verb}", "add an export step")
            for j, prof in enumerate(spec.profiles):
                runtime = _profile_runtime(prof, base)
                for a in spec.artifacts or recipe.deployable():
                    fmt = recipe.format_of(a)
                    if runtime is not None and not _runs(runtime, fmt):
                        _raise(label, root, (*at, "profiles", j), f"profile {prof} runs {runtime}, which cannot run "
                               f"{a!r} ({fmt})", f"list {fmt} artifacts under a profile for a runtime that runs them "
                               "(validate: and package: also take a list of {profiles, artifacts} entries)")


    from compress.errors import EdgeCompressError
    from compress.recipes.generation import problem

    try:
        teacher = None if isinstance(recipe.teacher, FinetuneSpec) else resolve_path(recipe.teacher, base)
    except EdgeCompressError:  # a builtin: not installed: the plan names it
        teacher = None
    found = problem(recipe, teacher, finetune_base(recipe, base))  # a generator's options, verbs and formats (or a generator's elsewhere)
    if found:
        _raise(label, root, *found)


def _profile_runtime(profile: str, base: Path) -> str | None:
    """The runtime a named or file profile pins (None for host, which picks one per format, or when unreadable:
    the run then reports the profile's own error)."""
    from compress.errors import EdgeCompressError
    from compress.profiles.load import load_profile

    if profile == "host":
        return None
    if looks_like_path(profile):
        profile = resolve_path(profile, base)
    try:
        p = load_profile(profile)
    except EdgeCompressError:
        return None
    return None if p.source == "detected" else p.runtime.name


def _runtime_of(fmt: str) -> str:
    from compress.formats import FORMATS

    return FORMATS[fmt].runtime


def _runs(runtime: str, fmt: str) -> bool:
    from compress.artifact import Format
    from compress.runtimes.base import RUNTIMES, runtime_class

    return runtime not in RUNTIMES or Format(fmt) in runtime_class(runtime).formats


def finetune_base(recipe, base: Path) -> str | None:
    """The resolved base ``recipe`` fine-tunes its teacher from; None when it names its teacher (or a builtin base that
    is not installed: the plan names it)."""
    from compress.errors import EdgeCompressError

    if not isinstance(recipe.teacher, FinetuneSpec):
        return None
    try:
        return resolve_path(recipe.teacher.base, base)
    except EdgeCompressError:
        return None


def resolve_path(value: str, base: Path) -> str:
    """A recipe's path as the stages take it: ``builtin:`` expanded, relative to the recipe file's directory."""
    if value.startswith(BUILTIN):
        return str(builtin_path(value[len(BUILTIN):]))
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def builtin_path(name: str) -> Path:
    """What ``builtin:NAME`` names: the demo teacher, or a file shipped under compress/data/samples."""
    if name in ("all-MiniLM-L6-v2", "all-minilm-l6-v2"):
        from compress.data.tables import demo_teacher_path

        return demo_teacher_path()
    from compress.data.tables import sample_data_path

    sample = sample_data_path()
    if name == sample.name:
        return sample
    raise ConfigError(f"builtin:{name} is not shipped with edgecompress",
                      hint=f"use builtin:all-MiniLM-L6-v2 or builtin:{sample.name}, or a path")
