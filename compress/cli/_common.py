"""Helpers shared by the command modules: consoles, progress, config building."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self, TypeVar

import click
from pydantic import BaseModel, ValidationError

from compress.errors import ConfigError, EdgeCompressError, ModelLoadError
from compress.progress import counts
from compress.settings import Settings, flag

M = TypeVar("M", bound=BaseModel)


def build_config(model: type[M], **values: Any) -> M:
    """Build a typed config from CLI values (None means 'not given'), nested through the settings' ``MOVED`` table;
    errors name the option's flag, and a rule's own message (an option that does not apply) stands as it is."""
    try:
        if issubclass(model, Settings):
            return model.from_flat(**values)
        return model(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        hint = f"see `edgecompress {click.get_current_context().info_name} --help`"
        if not err["loc"]:
            raise ConfigError(err["msg"], hint=hint) from None
        path = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
        key = model.flat_key(path) if issubclass(model, Settings) else str(err["loc"][0])
        raise ConfigError(f"{flag(key)}: {err['msg']}", hint=hint) from None


def given_or_none(name: str, value: Any) -> Any:
    """The option ``name``'s ``value`` when the user gave it, None when it is the flag's default (shown in --help):
    a config then tells what was asked from what was not (options that do not apply are refused, not ignored)."""
    from click.core import ParameterSource

    return None if click.get_current_context().get_parameter_source(name) is ParameterSource.DEFAULT else value


def require_input(path: Path | None, takes: str, error: type[EdgeCompressError] = ModelLoadError) -> None:
    """A path the command reads that does not exist: one line naming it and what the command takes (``takes``, or
    ``"model"`` for :func:`model_sources`). Called once the options and the output are checked (their refusals come
    first, as in the library); left to the loaders, a missing ``model.onnx`` or artifact was told to be "the directory
    of a Hugging Face checkpoint"."""
    if path is not None and not Path(path).exists():
        what = "file" if Path(path).suffix else "directory"  # as the path reads: model.onnx, teacher-dir
        raise error(f"{path}: no such {what}",
                    hint=f"check the path; pass {model_sources() if takes == 'model' else takes}")


def model_sources() -> str:
    """What a command that takes any model reads: the model files edgecompress adopts (by their suffixes, from
    :data:`compress.formats.FORMATS`), a program, an artifact or a checkpoint directory."""
    from compress.formats import FORMATS

    suffixes = ", ".join(f.suffix for f in FORMATS.values() if f.adopt and f.suffix)
    return (f"a model file ({suffixes}, or a .pt2 program with its model.yaml), an artifact directory or a Hugging Face "
            "checkpoint directory")


def section_help(section: str, description: str | None) -> str:
    """A nested option's help text for its flat flag, which no section names: ``Recovery: extra copies ...``."""
    text = description or ""
    return f"{section}: {text[:1].lower()}{text[1:]}"


def state() -> Any:
    return click.get_current_context().find_root().obj


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def live_console():
    """The stderr console when live output is wanted; None with -q or when stderr is not a terminal."""
    st = state()
    con = console(stderr=True)
    if (st is not None and st.quiet) or not con.is_terminal:
        return None
    return con


def status(message: str):
    """Long work without a count: a spinner on stderr in a terminal; in a CI log (no terminal), a line once it has
    run ``PhaseProgress.delay`` seconds, one every ``PhaseProgress.every`` seconds and one when it ends. Off with -q."""
    import contextlib

    con = live_console()
    if con is not None:
        return con.status(message)

    @contextlib.contextmanager
    def lines():
        with _Status() as progress:
            progress({"phase": "work", "label": message})
            yield

    return lines()


def retention_text(value: float | None) -> str:
    """A retention for a summary line: three decimals, or why there is none (the reference scored 0: no ratio)."""
    return f"{value:.3f}" if value is not None else "undefined: the reference scores 0"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class PhaseProgress:
    """Progress on stderr for a library call that reports :data:`compress.progress.Progress` events.

    Used as ``with Sub() as progress: library_call(..., progress=progress)``; off with -q. In a terminal:
    rich progress bars (subclasses map phases to bars in ``show`` with ``task``). When stderr is not a
    terminal (CI logs): plain lines for every phase that runs ``delay`` seconds or longer, one when it
    starts, one when it ends and one every ``every`` seconds with done/total, elapsed time and ETA
    (quicker phases stay quiet, so input errors found early stay one-line errors). An event
    ``{"phase": key, "label": "loading the teacher"}`` (no counts) names a stretch of work without a
    count: a spinner in a terminal, lines as above otherwise. ``labels`` names the counted phases in
    plain lines; ``note`` turns an event into a one-off line. ``fraction`` events are not shown; the announcement of
    a counted phase before its first item (``total`` without ``done``) starts the phase's plain lines at 0 of total
    (a first item that takes minutes is not silent) and no bar.
    """

    labels: dict[str, str] = {}
    every = 30.0
    delay = 10.0

    def __init__(self, clock=None) -> None:
        import threading
        import time

        self.bar = None
        self.tasks: dict[str, int] = {}
        self.plain = False
        self.clock = clock or time.monotonic
        self._ticking = clock is None  # a fake clock is ticked by hand
        self._spinner = None  # rich task of the running labelled phase
        self._current: dict | None = None  # plain lines: the running phase
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def note(self, d: dict) -> str | None:
        """A one-off line for an event (e.g. a budget candidate), or None."""
        return None

    def __enter__(self) -> Self:
        ctx = click.get_current_context(silent=True)
        st = ctx.find_root().obj if ctx is not None else None
        quiet = st is not None and st.quiet
        con = live_console() if ctx is not None else None
        if con is None:
            self.plain = not quiet and not console(stderr=True).is_terminal
            if self.plain and self._ticking:
                import threading

                self._thread = threading.Thread(target=self._tick_loop, name="progress-lines", daemon=True)
                self._thread.start()
            return self
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=con)
        self.bar.start()
        return self

    def task(self, key: str, label: str, total, completed: int = 0) -> int:
        """The bar for ``key``, added on first use."""
        if key not in self.tasks:
            self.tasks[key] = self.bar.add_task(label, total=total, info="", completed=completed)
        return self.tasks[key]

    def __call__(self, d: dict) -> None:
        if "total" in d and "done" not in d and "step" not in d and "fraction" not in d:  # a counted phase announced
            if self.plain:  # it starts now (its first item may take minutes): at 0 of total, as a line once it lasts
                self._plain({**d, "done": 0})
            return
        if "fraction" in d:
            return
        labelled = "label" in d and counts(d)[0] is None
        if self.bar is not None:
            self._end_spinner()
            if labelled:
                self._spinner = self.bar.add_task(d["label"], total=None, info="")
            else:
                self.show(d)
        elif self.plain:
            self._plain(d)

    def show(self, d: dict) -> None:
        raise NotImplementedError

    def _end_spinner(self) -> None:
        if self._spinner is not None:
            self.bar.update(self._spinner, total=1, completed=1)
            self._spinner = None

    def _line(self, text: str) -> None:
        click.echo(text, err=True)

    def _tick_loop(self) -> None:
        while not self._stop.wait(0.5):
            self.tick()

    def tick(self) -> None:
        """Announce a phase that has run ``delay`` seconds; a progress line every ``every`` seconds."""
        with self._lock:
            self._tick(self.clock())

    def _tick(self, now: float) -> None:
        cur = self._current
        if cur is None:
            return
        if not cur["announced"]:
            if now - cur["start"] >= self.delay:
                self._announce(cur, now)
            return
        if now - cur["last"] < self.every:
            return
        cur["last"] = now
        elapsed = now - cur["start"]
        done, total = cur["done"], cur["total"]
        if done is None:
            self._line(f"{cur['label']}: {_duration(elapsed)} elapsed")
            return
        if total is not None and done >= total:
            return
        rate = (done - (cur["first"] or 0)) / elapsed if elapsed > 0 else 0.0
        eta = f", ETA {_duration((total - done) / rate)}" if total and rate > 0 else ""
        pct = f" ({done / total:.0%})" if total else ""
        self._line(f"{cur['label']}: {done}/{total}{pct}, {_duration(elapsed)} elapsed{eta}{cur['extra']}")

    def _announce(self, cur: dict, now: float) -> None:
        if not cur["announced"]:
            cur["announced"], cur["last"] = True, now
            self._line(f"{cur['label']} ..." if cur["total"] is None else f"{cur['label']}: 0/{cur['total']} ...")

    def _plain(self, d: dict) -> None:
        with self._lock:
            self._plain_event(d, self.clock())

    def _plain_event(self, d: dict, now: float) -> None:
        key = d["phase"]
        label = d.get("label") or self.labels.get(key, key)
        done, total = counts(d)
        note = self.note(d)
        if "label" not in d and done is None:  # an event that neither starts work nor counts it
            if note:
                self._line(note)
            return
        cur = self._current
        if cur is None or cur["key"] != key or ("label" in d and cur["label"] != label):
            self._end_plain(now)
            cur = self._current = {"key": key, "label": label, "start": now, "last": now, "first": done,
                                   "done": None, "total": total, "extra": "", "announced": False}
            if self.delay <= 0:
                self._announce(cur, now)
        if note:
            self._line(note)
        if done is None:
            self._tick(now)
            return
        cur["done"], cur["total"] = done, total
        cur["extra"] = f", loss {d['loss']:.4f}" if isinstance(d.get("loss"), float) else ""
        if d.get("eval") is not None:
            self._announce(cur, now)
            best = f" (best {d['best']:.4f})" if d.get("best") is not None else ""
            self._line(f"{label}: {done}/{total}: eval {d.get('metric', 'metric')} {d['eval']:.4f}{best}")
        self._tick(now)
        if total is not None and done >= total:
            self._end_plain(now)

    def _end_plain(self, now: float, how: str = "done") -> None:
        cur, self._current = self._current, None
        if cur is None or not cur["announced"]:
            return
        tally = f" ({cur['done']}/{cur['total']})" if cur["done"] is not None else ""
        self._line(f"{cur['label']}: {how} in {_duration(now - cur['start'])}{tally}{cur['extra']}")

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self._end_spinner()
            self.bar.stop()
        elif self.plain:
            if self._thread is not None:
                self._stop.set()
                self._thread.join()
            with self._lock:
                self._end_plain(self.clock(), how="done" if exc[0] is None else "stopped")


force_option = click.option("--force", is_flag=True, help="Replace OUT (and its reports) if it exists.")
#: validate writes no artifact: --force replaces its report directory
force_reports_option = click.option("--force", is_flag=True, help="Replace an existing --report-dir.")


#: ``--unverified-exit-code``, the same on every command that judges budgets.
unverified_exit_code_option = click.option(
    "--unverified-exit-code", type=click.IntRange(0, 255), default=4, show_default=True,
    help="Exit code when no budget failed but some are UNVERIFIED (estimated, or not measured: e.g. "
         "--no-cold-start, --no-download). 0 lets CI pass on them; the default 4 is distinct from 1 (a budget "
         "failed), 2 (bad input) and 3 (unexpected error).",
)


def end_with_verdict(verdict: str, budgets: list, *, where: str, unverified_exit_code: int, failed_note: str = "") -> None:
    """The one ending every judging command shares: 0 pass; 1 a budget failed; UNVERIFIED (one short line,
    not an error) with ``unverified_exit_code`` when none failed but some were not measured."""
    from compress.errors import Anomalous, BudgetFailed, Unverified
    from compress.reports.render import failed_summary, unverified_names

    if verdict == "fail":
        raise BudgetFailed(f"budget failed: {failed_summary(budgets)}{failed_note}")
    if verdict == "anomalous":
        noisy = [f"{b.name} {b.measured:.4g} vs {b.limit:g}" for b in budgets if str(b.status) == "anomalous"]
        raise Anomalous(f"latency too noisy to judge {where}: {', '.join(noisy)} (inside the run-to-run spread); "
                        "none failed", hint="measure on a quieter machine or with more runs (exit code 5)")
    if verdict != "unverified":
        return
    names = unverified_names(budgets)
    message = f"{len(names)} budget(s) not judged {where} (not measured, or measured under emulation): {', '.join(names)}; none failed (the report says why)"
    if unverified_exit_code == 0:
        console(stderr=True).print(f"UNVERIFIED: {message} (exit code 0: --unverified-exit-code 0)", markup=False)
        return
    err = Unverified(message, hint=f"exit code {unverified_exit_code} (--unverified-exit-code)")
    err.exit_code = unverified_exit_code
    raise err


class _Status(PhaseProgress):
    """:func:`status` without a terminal: one labelled stretch of work, as plain lines."""

    def show(self, d: dict) -> None:  # pragma: no cover - a labelled phase never reaches show
        pass

