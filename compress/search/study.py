"""What every search's Optuna study shares, the encoders' (:mod:`compress.search.run`) and the generators'
(:mod:`compress.search.generator`): Optuna itself, the search directory (its marker holds the settings that define it,
so a search resumes only with them, or starts over with --force), and the trials an interrupted process left."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from compress.errors import OutputExistsError
from compress.recipes.execute import write_json_atomic
from compress.search.config import SearchConfig

MARKER = ".edgecompress-search"
#: the settings that define what a search directory searches; the rest (time, trials, ...) may change on resume
IDENTITY = ("teacher", "profile", "train", "eval", "holdout", "space", "short_steps", "short_recover_steps",
            "full_epochs", "full_augment", "full_augment_join", "full_average",
            "full_recover_steps", "distill", "prune", "seed", "metric")
PATHS = ("teacher", "profile", "train", "eval", "holdout")


def optuna_module():
    from compress._optional import require

    optuna = require("optuna", "edgecompress search")
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the search says what happened to each trial itself
    import warnings

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def open_dir(search_dir: Path, config: SearchConfig, force: bool) -> None:
    marker = search_dir / MARKER
    dump = config.model_dump(mode="json")
    flat = {k: _at(dump, SearchConfig.MOVED.get(k, k)) for k in IDENTITY}  # by flat key: a search dir of v1 resumes
    ident = {k: str(Path(v).resolve()) if k in PATHS and v and Path(v).exists() else v for k, v in flat.items()}
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
    write_json_atomic(marker, ident)


def _at(settings: dict, path: str) -> object:
    """The value at a dotted ``path`` of dumped settings."""
    for part in path.split("."):
        settings = settings[part]
    return settings


def requeue_interrupted(optuna, study, say: Callable[[str], None]) -> None:
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
