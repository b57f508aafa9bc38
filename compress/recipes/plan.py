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
from compress.teachers.images import MODULE_FILES, PROGRAM_FILE
from compress.recipes.schema import PATH_FIELDS, TEACHER, Recipe, resolve_path

#: names in a path field that mean one of the recipe's data files
DATA_NAMES = ("train", "eval", "calibration")
#: a rough cost (seconds on 2 CPU cores) of a job never run before, for --dry-run; previous runs' timings win
ROUGH_SECONDS = {"export": 30, "quantize": 20, "validate": 90, "package": 60, "prune": 60}
SECONDS_PER_TRAIN_STEP = 0.5  # a 3-layer MiniLM student, batch 32, 2 threads


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
    key: str = ""

    @property
    def dirname(self) -> str:
        return f"{re.sub(r'[^A-Za-z0-9_.@-]+', '-', self.name)}-{self.key[:12]}"

    @property
    def measures(self) -> bool:
        return self.verb in ("validate", "package")


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
            from compress.artifact import digest_dir, sha256_file

            p = Path(path)
            if p.is_dir():
                self.memo[path] = digest_dir(p, exclude=())
            elif p.is_file():
                self.memo[path] = sha256_file(p)
            else:
                raise ConfigError(f"{path}: no such file or directory", hint="check the recipe's paths (relative to the recipe file)")
        return self.memo[path]


def _resolve_settings(verb: str, settings: dict[str, Any], data: dict[str, str], base: Path) -> dict[str, Any]:
    out = dict(settings)
    for f in PATH_FIELDS[verb]:
        v = out.get(f)
        if isinstance(v, str):
            if v in DATA_NAMES:
                if v not in data:
                    raise ConfigError(f"{verb}: {f}: {v} names the recipe's data.{v}, which is not set",
                                      hint=f"set data.{v} in the recipe, or give a path")
                out[f] = data[v]
            else:
                out[f] = resolve_path(v, base)
    return out


def _profile_facts(profile: str, base: Path) -> tuple[str, dict[str, Any]]:
    from compress.profiles.load import load_profile

    name = resolve_path(profile, base) if _profile_label(profile) != profile else profile
    return name, load_profile(name).model_dump(mode="json")


def make_plan(recipe: Recipe, base: Path | str) -> Plan:
    """Resolve paths, expand validation and packaging per artifact × profile, and key every job."""
    from compress import __version__

    base = Path(base)
    teacher = resolve_path(recipe.teacher, base)
    from compress.teachers.model_files import is_model_file, load_model_file

    model_file = is_model_file(teacher)  # an ONNX file made elsewhere: adopted by export; nothing to train
    if model_file:
        trained = [n for n, st in recipe.steps.items() if st.verb in ("distill", "prune") and st.from_ == TEACHER]
        if trained:
            raise ConfigError(f"steps.{trained[0]}: {recipe.steps[trained[0]].verb} needs a trainable teacher; "
                              f"teacher: {Path(teacher).name} is a model file (no PyTorch source)",
                              hint="start the recipe with an export step (it adopts the file), then quantize; "
                                   "distill and prune need a checkpoint")
    elif not Path(teacher).is_dir():
        raise ConfigError(f"teacher: {teacher} is not a checkpoint directory", hint="check the recipe's teacher path")
    if not model_file and not any((Path(teacher) / name).is_file() for name in TEACHER_FILES):
        # checked before the directory's content is hashed: /etc or /proc is not read through to find out
        raise ConfigError(f"teacher: {teacher} is not a checkpoint directory (no {', '.join(TEACHER_FILES)})",
                          hint="point teacher: at a Hugging Face checkpoint, a model.pt2 with its model.yaml, or an "
                               "edgecompress artifact")
    data = {k: resolve_path(v, base) for k, v in recipe.data.model_dump().items() if v}
    if "calibration" not in data and "train" in data:
        data["calibration"] = data["train"]
    digest = _Digests()
    jobs: list[Job] = []
    for name, step in recipe.steps.items():
        settings = _resolve_settings(step.verb, step.settings, data, base)
        io: dict[str, str] = {}
        if step.verb in ("distill", "prune"):
            if "train" in data:
                io["train"] = data["train"]
            elif step.verb == "distill":
                raise ConfigError(f"steps.{name}: distill needs transfer data", hint="set data.train in the recipe")
            if "eval" in data:
                io["eval_data"] = data["eval"]
        if step.verb == "export":
            settings.setdefault("sample_data", data.get("eval") or data.get("train"))
        if step.verb == "quantize":
            settings.setdefault("sample_data", data.get("eval") or data.get("train"))
            if "calibration" not in settings and data.get("calibration"):
                io["calibration"] = data["calibration"]  # used where calibration applies (static, images)
        settings = {k: v for k, v in settings.items() if v is not None}
        jobs.append(Job(name, step.verb, None if step.from_ == TEACHER else step.from_, settings, io))
    for verb, spec in [(v, t) for v in ("validate", "package") for t in recipe.targets(v)]:
        for art in spec.artifacts or recipe.deployable():
            for prof in spec.profiles:
                settings = _resolve_settings(verb, spec.options, data, base)
                if verb == "validate":
                    settings.setdefault("data", data.get("eval"))
                    settings.setdefault("teacher", teacher)
                settings = {k: v for k, v in settings.items() if v is not None}
                name = f"{verb}/{art}@{_profile_label(prof)}"
                if any(j.name == name for j in jobs):
                    raise ConfigError(f"{name} is listed twice", hint=f"list {art} under {prof} once")
                jobs.append(Job(name, verb, art, settings, profile=prof))
    teacher_digest = load_model_file(teacher).sha256 if model_file else digest(teacher)  # with its model.yaml
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
                from compress.device.cpu import cpu_model

                if j.profile not in profiles:
                    profiles[j.profile] = _profile_facts(j.profile, base)
                pname, facts = profiles[j.profile]
                payload |= {"profile": facts, "cpu": cpu_model()}
                j.settings = {**j.settings, "profile": pname}
            j.key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
            keys[j.name] = j.key
    depth = {j.name: _depth(j, jobs) for j in jobs}
    jobs.sort(key=lambda j: depth[j.name])
    return Plan(recipe, base, teacher, teacher_digest, jobs)


def _profile_label(profile: str) -> str:
    """How job names show a profile: its name, or a profile file's stem."""
    from compress.profiles.load import looks_like_path

    return Path(profile).stem if looks_like_path(profile) else profile


def _depth(job: Job, jobs: list[Job]) -> int:
    d, cur = 0, job
    while cur.parent is not None:
        cur = next(j for j in jobs if j.name == cur.parent)
        d += 1
    return 1000 if job.measures else d  # validations and packages last, in the order the recipe lists them


def _paths(job: Job, teacher: str) -> dict[str, str]:
    """Every file or directory the job reads besides its input."""
    out = dict(job.data)
    for f in PATH_FIELDS[job.verb]:
        if f == "teacher_cache":  # a cache of what the teacher and data already key: its content changes no output
            continue
        if isinstance(job.settings.get(f), str) and job.settings[f] != teacher:  # the teacher: in the parent chain
            out[f] = job.settings[f]
    return out


def rough_seconds(job: Job) -> float:
    """A rough cost for a job never run before (the dry run labels it an estimate)."""
    if job.verb == "distill":
        rows = min(_train_rows(job.data.get("train")), int(job.settings.get("max_train_rows") or 10**9))
        return rows * (1 + int(job.settings.get("augment", 0)) + int(job.settings.get("augment_join", 0))) * float(
            job.settings.get("epochs", 3.0)) / int(job.settings.get("batch_size", 32)) * SECONDS_PER_TRAIN_STEP \
            if "max_steps" not in job.settings else job.settings["max_steps"] * SECONDS_PER_TRAIN_STEP
    if job.verb == "prune":
        return ROUGH_SECONDS["prune"] + int(job.settings.get("recover_steps", 0)) * SECONDS_PER_TRAIN_STEP
    return ROUGH_SECONDS[job.verb]


def _train_rows(path: str | None) -> int:
    if not path or not Path(path).is_file():
        return 1000
    with open(path, "rb") as f:
        return max(sum(1 for _ in f) - 1, 1)
