"""One search directory (:class:`Search`), whatever the teacher: its settings, profile, budgets, data and time, and
the profile each runtime's candidates are validated on. What differs by the teacher's kind is its space, which also
builds and measures one candidate: :class:`compress.search.encoder.EncoderSpace` (a forward pass: students, pruning
and precision, at two fidelities) or :class:`compress.search.generation.GeneratorSpace` (a causal LM: routes, INT4
settings and shapes). :func:`compress.search.run.run_search` drives the Optuna study over it, through the space's
hooks (:class:`compress.search.space.Space`)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from compress.errors import ConfigError
from compress.progress import Progress, note, sink
from compress.search.artifacts import open_store
from compress.search.config import SearchConfig
from compress.search.encoder import EncoderSpace
from compress.search.holdout import split_eval, split_text
from compress.search.space import RUNTIME_SETTINGS, Space
from compress.search.study import open_dir, open_storage, requeue_interrupted, worker_name
from compress.settings import flag


class Search:
    """One search directory: its study, its store, its budgets, its time, and its space (``kind``: the space's
    class, a forward-pass teacher's by default)."""

    def __init__(self, config: SearchConfig, search_dir: Path, progress: Progress | None = None,
                 kind: type[Space] = EncoderSpace):
        """``progress`` hears the search's narration as ``note`` events (phase "search"): :meth:`say`."""
        from compress.profiles.load import load_profile

        key = next(iter(config.set_for_others(kind.kind)), None)  # the settings' marks: what this kind ignores
        if key is not None:
            raise ConfigError(f"{key + ' options' if isinstance(getattr(config, key, None), dict) else flag(key)}: "
                              f"{kind.ignores}", hint="drop it")
        self.config = config
        self.dir = search_dir
        self.progress: Progress = sink(progress)
        self.store = search_dir / "store"
        self.profile = load_profile(config.profile)
        self.profile_ref = str(Path(config.profile).resolve()) if Path(config.profile).is_file() else config.profile
        self.notes: list[str] = []  # said once every input is checked (a refused start says one line)
        self.budgets = kind.judged(self.profile, self.notes)
        self.eval = self.holdout = ""  # set by split(), where the space reads the data
        self.spent_before = 0.0
        self.study = None  # set by open_study: the time spent is recorded in it as the search goes
        self.artifacts = None  # set by open: the Optuna artifact store full candidates are uploaded to (or None)
        self.worker = worker_name(search_dir)  # who builds this process's trials, as the study records it
        self._recorded = 0.0
        self.space = kind(self)
        for line in self.notes:
            self.say(line)
        self.t0 = time.monotonic()

    @classmethod
    def open(cls, optuna, config: SearchConfig, search_dir: Path, progress: Progress | None = None, *,
             force: bool = False, kind: type[Space] = EncoderSpace) -> tuple[Search, Any]:
        """The search in ``search_dir`` (a new one, or the one there resumed with the same settings; ``force``: over
        one with other settings) and its study's storage (SQLite there, or --storage's database). The inputs (profile,
        budgets, data, teacher, the study's database) are checked here: a refused start leaves no directory behind."""
        created = not search_dir.exists() or not any(search_dir.iterdir())
        open_dir(search_dir, config, force)
        try:
            url = config.study.storage or f"sqlite:///{(search_dir / 'study.db').resolve()}"
            storage = open_storage(optuna, url, config.study.heartbeat_s)
            artifacts = open_store(config.study.artifact_store)
            s = cls(config, search_dir, progress, kind)
            s.artifacts = artifacts
        except BaseException:
            if created:
                shutil.rmtree(search_dir, ignore_errors=True)
            raise
        return s, storage

    def open_study(self, optuna, storage):
        """The Optuna study in ``storage`` (made, or loaded to resume): multi-objective TPE over the space's
        objectives, the budgets (and the space's own checks) as constraints; the time it recorded is this search's
        so far, and the trials an interrupted process left are queued again."""
        space = type(self.space)
        n = len(self.budgets) + space.own_constraints
        sampler = optuna.samplers.TPESampler(seed=self.config.study.seed, n_startup_trials=space.startup_trials,
                                             constraints_func=lambda t: t.user_attrs.get("constraints", [1.0] * n))
        study = optuna.create_study(study_name=self.config.study.name, storage=storage, sampler=sampler,
                                    load_if_exists=True, directions=[d for _, d in space.objectives])
        study.set_metric_names([m for m, _ in space.objectives])
        self.spent_before = float(study.user_attrs.get("spent_s", 0.0))
        self.study = study
        requeue_interrupted(optuna, study, self.say)
        return study

    def say(self, line: str) -> None:
        """One line of the search's narration, as a ``note`` event."""
        note(self.progress, line, phase="search")

    def record_time(self, force: bool = False) -> None:
        """Store the time spent in the study (at most once a minute unless ``force``), so a resumed search
        continues the same time budget, however it was stopped."""
        if self.study is not None and (force or time.monotonic() - self._recorded > 60):
            self._recorded = time.monotonic()
            self.study.set_user_attr("spent_s", round(self.spent(), 1))

    def spent(self) -> float:
        return self.spent_before + time.monotonic() - self.t0

    def left(self) -> float:
        return self.config.time_budget_s - self.spent()

    def split(self, text: bool = False) -> None:
        """The ranking data and the held-out data: --eval and --holdout, or --eval's two halves (SEARCH/data).
        ``text``: the space reads text (a generator's), so labelled rows or images are refused."""
        config = self.config
        if text:
            for label, p in (("--train", config.train), ("--eval", config.eval), ("--holdout", config.holdout)):
                if p and Path(p).suffix.lower() not in (".txt", ".jsonl"):
                    raise ConfigError(f"{label} {p}: a generator search reads text (.txt, or .jsonl with \"text\"), "
                                      "not labelled rows or images", hint="pass the text the model generates (documents)")
        ev = str(Path(config.eval).resolve())
        if config.holdout:
            self.eval, self.holdout = ev, str(Path(config.holdout).resolve())
        elif text:
            self.eval, self.holdout = split_text(Path(config.eval), self.dir / "data")
        else:
            self.eval, self.holdout = split_eval(Path(ev), self.dir / "data", config.study.seed)

    def profile_for(self, c) -> str:
        """The profile candidate ``c`` (its runtime and threads; or a runtime's name) is validated on: the given one
        where it runs that runtime on its own threads (a detected profile, ``host``, where the space's artifacts run
        in whatever runtime they need), else the same device and budgets on ``c``'s runtime and threads."""
        runtime, threads = (c, 0) if isinstance(c, str) else (c.runtime, getattr(c, "threads", 0))
        own = runtime == self.profile.runtime.name or (self.space.detected_runs_any
                                                        and self.profile.source == "detected")
        if own and not threads:
            return self.profile_ref
        d = self.dir / "profiles"
        d.mkdir(parents=True, exist_ok=True)
        name = f"{self.profile.name}-{runtime}" + (f"-{threads}t" if threads else "")
        path = d / f"{name}.yaml"
        if not path.is_file():
            settings = {"name": runtime, **RUNTIME_SETTINGS[runtime]} if runtime != self.profile.runtime.name else {}
            if threads:
                settings["threads"] = threads
            path.write_text(yaml.safe_dump({
                "name": name, "extends": self.profile_ref,
                "description": f"{self.profile.name} running {runtime}"
                               + (f" on {threads} intra-op thread(s)" if threads else "")
                               + ": the same device and budgets",
                "runtime": settings,
            }, sort_keys=False), encoding="utf-8")
        return str(path.resolve())
