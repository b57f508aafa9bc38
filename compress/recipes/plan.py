"""A recipe as a plan: one job per step, validation and package (artifact × profile), each with a content key.

A job's key is the sha256 of what its output depends on: its verb, its resolved settings, the content of every
data file it reads, its input's key (the teacher's: the content of its directory), the edgecompress version, and
for measuring jobs (validate, package) the resolved profile and this machine's CPU. The output lives in the run
directory's store under ``steps/<job>-<key[:12]>``, so a job whose key is unchanged is a cache hit, and editing
one step re-runs that step and what depends on it, nothing else.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.artifact import MANIFEST
from compress.errors import ConfigError
from compress.recipes.schema import FinetuneSpec, Recipe, finetune_base, resolve_path
from compress.recipes.verbs import MEASURING_VERBS, TEACHER, VERBS
from compress.teachers.images import MODULE_FILES, PROGRAM_FILE

#: names in a path field that mean one of the recipe's data files
DATA_NAMES = ("train", "eval", "calibration")


#: verbs whose output changed under the same settings and edgecompress version: the revision joins their jobs' keys
#: (only when set, so every other key stays as it was), and outputs cached by the older code are rebuilt, not
#: reused. quantize 1: INT4 embedding tables read by standard operators instead of GatherBlockQuantized; 2: image
#: static INT8 quantizes Clip/Relu with mean-minmax ranges, graph outputs and small GEMMs stay float, recipes strict.
REVISIONS: dict[str, int] = {"quantize": 2}
#: what marks a teacher directory (Hugging Face config, a program or module with its model.yaml, an artifact)
TEACHER_FILES = ("config.json", PROGRAM_FILE, *MODULE_FILES, MANIFEST)


@dataclass
class Job:
    name: str  #: step name, or validate/<artifact>@<profile>, package/<artifact>@<profile>
    verb: str
    parent: str | None  #: the job whose output it takes; None: the teacher
    settings: dict[str, Any]  #: the verb's options, paths resolved
    data: dict[str, str] = field(default_factory=dict)  #: train / eval_data passed beside the settings
    profile: str | None = None
    budgets: dict[str, Any] | None = None  #: the recipe's budgets over the profile's (a measuring job)
    key: str = ""

    @property
    def dirname(self) -> str:
        return f"{re.sub(r'[^A-Za-z0-9_.@-]+', '-', self.name)}-{self.key[:12]}"

    @property
    def measures(self) -> bool:
        return VERBS[self.verb].measures


@dataclass
class Plan:
    recipe: Recipe
    base: Path  #: the recipe file's directory
    teacher: str
    teacher_digest: str
    jobs: list[Job]

    def job(self, name: str) -> Job:
        return next(j for j in self.jobs if j.name == name)


class _Digests:
    """Content hashes of data files and directories, each computed once."""

    def __init__(self) -> None:
        self.memo: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        if path not in self.memo:
            from compress.artifact import digest_dir
            from compress.device.facts import sha256_file

            p = Path(path)
            if p.is_dir():
                self.memo[path] = digest_dir(p, exclude=())
            elif p.is_file():
                self.memo[path] = sha256_file(p)
            else:
                raise ConfigError(f"{path}: no such file or directory", hint="check the recipe's paths (relative to the recipe file)")
        return self.memo[path]


def setting(settings: dict[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` of nested settings (``recovery.teacher``), or None."""
    node: Any = settings
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _with_setting(settings: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``settings`` with ``value`` at a dotted ``path``: the dicts along it copied, the input left as it was."""
    head, _, rest = path.partition(".")
    return {**settings, head: _with_setting(settings.get(head) or {}, rest, value) if rest else value}


def _resolve_settings(verb: str, settings: dict[str, Any], data: dict[str, str], base: Path) -> dict[str, Any]:
    out = dict(settings)
    for f in VERBS[verb].paths:
        v = setting(out, f)
        if isinstance(v, str):
            if v in DATA_NAMES:
                if v not in data:
                    raise ConfigError(f"{verb}: {f}: {v} names the recipe's data.{v}, which is not set",
                                      hint=f"set data.{v} in the recipe, or give a path")
                out = _with_setting(out, f, data[v])
            else:
                out = _with_setting(out, f, resolve_path(v, base))
    return out


def _profile_facts(profile: str, base: Path) -> tuple[str, dict[str, Any]]:
    from compress.profiles.load import load_profile

    name = resolve_path(profile, base) if _profile_label(profile) != profile else profile
    return name, load_profile(name).model_dump(mode="json")


def make_plan(recipe: Recipe, base: Path | str, run: Path | str | None = None) -> Plan:
    """Resolve paths, expand validation and packaging per artifact × profile, and key every job. ``run``: the run
    directory, where a teacher the recipe fine-tunes will be (``teacher: {finetune: ...}``)."""
    from compress import __version__

    base = Path(base)
    data = {k: resolve_path(v, base) for k, v in recipe.data.model_dump().items() if v}
    digest = _Digests()
    tune = None
    if isinstance(recipe.teacher, FinetuneSpec):  # the first job: its output is the teacher
        tune = _finetune_job(recipe.teacher, data, base, digest, __version__)
        teacher = str(Path(run or ".") / "steps" / tune.dirname)
    else:
        teacher = resolve_path(recipe.teacher, base)
    from compress.teachers.model_files import is_model_file, load_model_file

    model_file = tune is None and is_model_file(teacher)  # an ONNX file made elsewhere: adopted by export
    if model_file:
        trained = [n for n, st in recipe.steps.items() if VERBS[st.verb].trains and st.from_ == TEACHER]
        if trained:
            raise ConfigError(f"steps.{trained[0]}: {recipe.steps[trained[0]].verb} needs a trainable teacher; "
                              f"teacher: {Path(teacher).name} is a model file (no PyTorch source)",
                              hint="start the recipe with an export step (it adopts the file), then quantize; "
                                   "distill and prune need a checkpoint")
    elif tune is None and not Path(teacher).is_dir():
        raise ConfigError(f"teacher: {teacher} is not a checkpoint directory", hint="check the recipe's teacher path")
    if tune is None and not model_file and not any((Path(teacher) / name).is_file() for name in TEACHER_FILES):
        # checked before the directory's content is hashed: /etc or /proc is not read through to find out
        raise ConfigError(f"teacher: {teacher} is not a checkpoint directory (no {', '.join(TEACHER_FILES)})",
                          hint="point teacher: at a Hugging Face checkpoint, a model.pt2 with its model.yaml, or an "
                               "edgecompress artifact")
    if "calibration" not in data and "train" in data:
        data["calibration"] = data["train"]
    from compress.recipes.generation import recipe_kind
    from compress.tasks import KIND_INFO

    # a causal LM (or a recipe that fine-tunes one from a causal LM base): its verbs read fewer defaults
    generator = KIND_INFO[recipe_kind(None if tune else teacher, finetune_base(recipe, base))].generates
    jobs: list[Job] = [tune] if tune else []
    for name, step in recipe.steps.items():
        settings = _defaults(step.verb, _resolve_settings(step.verb, step.settings, data, base), data, teacher,
                             _reads(generator, step.verb, recipe.format_of(name)))
        io = _inputs(name, step.verb, settings, data)
        settings = {k: v for k, v in settings.items() if v is not None}
        jobs.append(Job(name, step.verb, None if step.from_ == TEACHER else step.from_, settings, io))
    for verb, spec in [(v, t) for v in MEASURING_VERBS for t in recipe.targets(v)]:
        for art in spec.artifacts or recipe.deployable():
            for prof in spec.profiles:
                settings = _defaults(verb, _resolve_settings(verb, spec.options, data, base), data, teacher,
                                     _reads(generator, verb, recipe.format_of(art)))
                settings = {k: v for k, v in settings.items() if v is not None}
                name = f"{verb}/{art}@{_profile_label(prof)}"
                if any(j.name == name for j in jobs):
                    raise ConfigError(f"{name} is listed twice", hint=f"list {art} under {prof} once")
                jobs.append(Job(name, verb, art, settings, profile=prof, budgets=spec.budgets))
    teacher_digest = tune.key if tune else load_model_file(teacher).sha256 if model_file else digest(teacher)
    keys: dict[str | None, str] = {None: teacher_digest}
    profiles: dict[str, tuple[str, dict[str, Any]]] = {}  # each profile resolved once, however many jobs use it
    for job in jobs:  # steps come before the jobs that take them (from: is checked acyclic; validate/package last)
        pending = [job]
        while job.parent not in keys:  # a step declared before the step it takes
            job = next(j for j in jobs if j.name == job.parent)
            pending.append(job)
        for j in reversed(pending):
            if j.key:
                continue
            payload: dict[str, Any] = {
                "verb": j.verb, "settings": j.settings, "parent": keys[j.parent], "version": __version__,
                "files": {k: digest(v) for k, v in _paths(j, teacher).items()},
            }
            if REVISIONS.get(j.verb):
                payload["revision"] = REVISIONS[j.verb]
            if j.measures:
                from compress.device.facts import cpu_model

                if j.profile not in profiles:
                    profiles[j.profile] = _profile_facts(j.profile, base)
                pname, facts = profiles[j.profile]
                if j.budgets is not None:  # judged against the recipe's budgets: they key the job like a profile's
                    facts = {**facts, "budgets": with_budgets(facts["budgets"], j.budgets)}
                payload |= {"profile": facts, "cpu": cpu_model()}
                j.settings = {**j.settings, "profile": pname}
            j.key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
            keys[j.name] = j.key
    depth = {j.name: _depth(j, jobs) for j in jobs}
    jobs.sort(key=lambda j: depth[j.name])
    return Plan(recipe, base, teacher, teacher_digest, jobs)


def with_budgets(budgets: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """A profile's ``budgets`` with a recipe's ``over`` them (``latency_ms`` merged key by key)."""
    out = dict(budgets)
    for k, v in over.items():
        out[k] = {**(out.get(k) or {}), **v} if isinstance(v, dict) else v
    return out


def _finetune_job(spec: FinetuneSpec, data: dict[str, str], base: Path, digest: _Digests, version: str) -> Job:
    """The job that fine-tunes the recipe's teacher, keyed by its base's content, its settings and its data."""
    files = {"base": resolve_path(spec.base, base)}
    if spec.retain_data:
        files["retain_data"] = resolve_path(spec.retain_data, base)
    io = {**_inputs(TEACHER, "finetune", spec.settings, data), **files}
    job = Job(TEACHER, "finetune", None, dict(spec.settings), io)
    payload = {"verb": "finetune", "settings": job.settings, "version": version,
               "files": {k: digest(v) for k, v in io.items()}}
    job.key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return job


def _reads(generator: bool, verb: str, fmt: str) -> set[str] | None:
    """The options a generator's ``verb`` reads (None: not a generator, or every one)."""
    from compress.recipes.generation import reads

    return reads(verb, fmt) if generator else None


def _defaults(verb: str, settings: dict[str, Any], data: dict[str, str], teacher: str,
              reads: set[str] | None = None) -> dict[str, Any]:
    """``settings`` with the verb's unset options taken from the recipe's data (or its teacher), first set wins;
    only those in ``reads`` when given (a generator's quantize reads no parity texts)."""
    given = {**data, TEACHER: teacher}
    for option, names in VERBS[verb].defaults.items():
        if reads is not None and option not in reads:
            continue
        settings.setdefault(option, next((given[n] for n in names if given.get(n)), None))
    return settings


def _inputs(step: str, verb: str, settings: dict[str, Any], data: dict[str, str]) -> dict[str, str]:
    """The recipe's data files a step reads beside its settings (where its settings name none)."""
    for name, what in VERBS[verb].needs.items():
        if name not in data:
            raise ConfigError(f"steps.{step}: {verb} needs {what}", hint=f"set data.{name} in the recipe")
    # quantize's calibration: used where calibration applies (static, images), unless its settings name their own
    # (a flat key read at its nested place: calibration.data)
    moved = getattr(VERBS[verb].config_model(), "MOVED", {})
    return {key: data[name] for key, name in VERBS[verb].data.items()
            if (setting(settings, moved[key]) is None if key in moved else key not in settings) and data.get(name)}


def _profile_label(profile: str) -> str:
    """How job names show a profile: its name, or a profile file's stem."""
    from compress.profiles.load import looks_like_path

    return Path(profile).stem if looks_like_path(profile) else profile


def _depth(job: Job, jobs: list[Job]) -> int:
    if VERBS[job.verb].makes_teacher:
        return -1  # the teacher, before every job that takes it
    d, cur = 0, job
    while cur.parent is not None:
        cur = next(j for j in jobs if j.name == cur.parent)
        d += 1
    return 1000 if job.measures else d  # validations and packages last, in the order the recipe lists them


def _paths(job: Job, teacher: str) -> dict[str, str]:
    """Every file or directory the job reads besides its input."""
    out = dict(job.data)
    for f in VERBS[job.verb].paths:
        if f.rpartition(".")[2] == "teacher_cache":  # a cache of what the teacher and data already key: its content
            continue  # changes no output
        v = setting(job.settings, f)
        if isinstance(v, str) and v != teacher:  # the teacher: in the parent chain
            out[f] = v
    return out


def rough_seconds(job: Job) -> float:
    """A rough cost for a job never run before (the dry run labels it an estimate)."""
    return VERBS[job.verb].rough_seconds(job.settings, job.data)
