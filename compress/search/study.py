"""What every search's Optuna study shares (the one driver is :func:`compress.search.run.run_search`): Optuna
itself, the study's storage (SQLite in the search directory, or a database several machines share:
:func:`open_storage`), the search directory (its marker holds the settings that define it, so a search resumes only
with them, or starts over with --force), the trials an interrupted process left, and the wait for the trials other
workers run (:func:`drain`)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

from compress.errors import ConfigError, MissingBackendError, OutputExistsError
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


#: the SQLAlchemy driver a database URL names -> the package that provides it
DRIVERS = {"psycopg": "'edgecompress[postgres]' (psycopg 3)", "psycopg2": "psycopg2-binary",
           "pg8000": "pg8000", "pymysql": "PyMySQL", "mysqldb": "mysqlclient",
           "mysqlconnector": "mysql-connector-python"}


def open_storage(optuna, url: str, heartbeat_s: int):
    """The study's storage at ``url`` (an SQLAlchemy database URL: sqlite:///..., postgresql://..., mysql://...), with
    heartbeats: a worker records one every ``heartbeat_s`` seconds while it runs a trial, and a trial whose worker has
    been silent for four (its machine died, or was killed) is failed and queued again (RetryFailedTrialCallback, at
    most twice) by the next worker that starts a trial. A database URL whose driver is not installed, or whose
    server does not answer, is refused in one line that names the URL without its password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, IntegrityError, ProgrammingError, SQLAlchemyError

    given = url  # (what the messages name)
    try:
        parsed = make_url(url)
        if parsed.drivername == "postgresql":  # SQLAlchemy's default driver changed (psycopg2 in 2.0, psycopg in 2.1):
            from compress._optional import is_available  # the one installed, psycopg 3 first

            parsed = parsed.set(drivername="postgresql+psycopg2" if not is_available("psycopg")
                                and is_available("psycopg2") else "postgresql+psycopg")
            url = parsed.render_as_string(hide_password=False)
        dialect = parsed.get_dialect()
    except (ArgumentError, ValueError) as e:
        raise ConfigError(f"--storage {url!r} is not a database URL ({e})",
                          hint="write e.g. postgresql://USER:PASSWORD@HOST:5432/DATABASE") from None
    except ImportError as e:  # an unknown dialect plug-in
        raise ConfigError(f"--storage {public_url(given)}: no SQLAlchemy dialect {parsed.drivername!r} ({e})",
                          hint="use sqlite:///, postgresql:// or mysql://") from None
    driver = parsed.get_driver_name()
    try:
        dialect.import_dbapi()
    except ImportError:
        raise MissingBackendError(f"--storage {public_url(given)} needs the {driver} database driver, which is not "
                                  "installed", hint=f"install it with: pip install {DRIVERS.get(driver, driver)}") from None
    engine = {"connect_args": {"connect_timeout": 10}} if driver in ("psycopg2", "psycopg") else {}
    try:
        for attempt in range(5):
            try:
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine, heartbeat_interval=heartbeat_s, grace_period=4 * heartbeat_s,
                    failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=2))
            except (IntegrityError, ProgrammingError):  # workers started together create Optuna's tables together:
                if attempt == 4:  # the one that loses the race finds them made on its next try
                    raise
                time.sleep(0.5 + attempt)
    except SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0].strip()
        raise ConfigError(f"cannot reach the study database {public_url(given)}: {reason}",
                          hint="start the database server there, or correct --storage "
                               "(postgresql://USER:PASSWORD@HOST:PORT/DATABASE); every worker must reach it") from None


def public_url(url: str) -> str:
    """``url`` without its password (what the search may print and record)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 -- not a URL at all: nothing to hide but the part before the host
        return url.split("@")[-1]


def worker_name(search_dir: Path) -> str:
    """Who builds a trial, as recorded in the study: host, process and search directory."""
    return f"{socket.gethostname()}:{os.getpid()}:{search_dir.resolve()}"


def is_queued(trial) -> bool:
    """The trial was taken from the study's queue, not sampled: every trial the search queues (the reference, a draw,
    a promotion, an interrupted or a dead worker's trial queued again) carries its fidelity from the start."""
    return "fidelity" in trial.user_attrs


def drain(optuna, study, run_queued: Callable[[], None], say: Callable[[str], None], poll_s: float) -> None:
    """Run the trials queued in the study (whichever worker queued them) and wait for those other workers are still
    running, so that what follows (the promotion, the choice) sees every trial of the search. A worker that died
    holds this up for its heartbeat's grace period: its trial is then failed, queued again, and run here.
    ``run_queued`` runs one trial from the queue (another worker may take it first: it must then run nothing)."""
    from optuna.storages import fail_stale_trials
    from optuna.storages._heartbeat import is_heartbeat_enabled

    TS = optuna.trial.TrialState
    heartbeats = is_heartbeat_enabled(study._storage)
    told: set[int] = set()
    while True:
        fail_stale_trials(study)  # (the retry callback queues the stale trial again)
        trials = study.get_trials(deepcopy=False, states=(TS.WAITING, TS.RUNNING))
        if any(t.state == TS.WAITING for t in trials):
            run_queued()
            continue
        if not trials or not heartbeats:  # (without heartbeats a dead worker's trial would be waited for forever)
            return
        new = [t for t in trials if t.number not in told]
        if new:
            say("waiting for " + ", ".join(f"trial {t.number} ({t.user_attrs.get('label', 'starting')}, "
                                           f"{t.user_attrs.get('worker', 'another worker')})" for t in new)
                + ": running on another worker")
            told.update(t.number for t in new)
        time.sleep(poll_s)


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

    fail_stale_trials(study)  # a dead worker's trial (no heartbeat for the grace period): queued again by Optuna
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
