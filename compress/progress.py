"""The one progress protocol: every long call reports to a :data:`Progress` sink, a callable taking event dicts.

A library call that does long work takes ``progress: Progress | None = None`` and calls it with one dict per
event; ``None`` means nobody listens (:func:`sink` turns it into :func:`silent`). Every event names its
``phase``, a short stable key (``"train"``, ``"teacher"``, ``"cold-start"``, ``"timing A and B"``), and
carries some of these keys:

``label``
    text naming a stretch of work for people (``"zipping the bundle"``). An event with a ``label`` and no
    count starts work that is not counted: a spinner in a terminal, a line in a CI log if it lasts.
``done`` (or ``step``, for training) with ``total``
    counted work: ``done`` of ``total`` items, steps or runs so far. ``{"phase": p, "total": n}`` without
    ``done`` announces a counted phase before its first item (a bar at 0 of n); :func:`counts` reads both.
``fraction``
    uncounted work measured as a share in [0, 1] (timing until enough samples); it follows the phase's
    ``label`` event and carries no ``label`` itself.
``note``
    a one-off line for a log (a search's narration, a recipe job finished or cached); it starts and counts
    nothing.

Any other key (``loss``, ``eval``, ``best``, ``metric``, ``path``, ...) is extra information a display may
show or ignore; a sink ignores what it does not understand, so the vocabulary can grow.

Helpers: :func:`start_phase` announces a phase and returns its :data:`Advance` callable (items done, or the
fraction reached), which is how validation, teacher outputs and timing report; :func:`note` emits a
``note``; :func:`to_lines` is a sink that writes each note as a line (a search's log). The CLI turns events
into terminal bars or CI-log lines (``compress.cli._common.PhaseProgress``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: The event sink every long call reports to (see the module docstring for the events).
Progress = Callable[[dict[str, Any]], None]
#: What :func:`start_phase` returns: items done since the last call (counted) or the fraction reached (not).
Advance = Callable[[float], None]


def silent(event: dict[str, Any]) -> None:
    """The sink nobody listens to."""


def sink(progress: Progress | None) -> Progress:
    """``progress``, or :func:`silent` when it is None."""
    return progress or silent


def counts(event: dict[str, Any]) -> tuple[int | None, int | None]:
    """(done, total) of an event that counts (``done`` or ``step`` of ``total``); (None, None) otherwise."""
    done = event.get("done", event.get("step"))
    return (done, event.get("total")) if isinstance(done, int) else (None, None)


def start_phase(progress: Progress | None, phase: str, total: int | None = None) -> Advance:
    """Announce ``phase`` (its name is also its label) and return how to report on it.

    With a ``total``: ``{"phase": phase, "total": total}`` now, then the returned callable takes the items
    done since its last call and sends ``{"phase", "label", "done", "total"}``. Without one (None or 0):
    ``{"phase": phase, "label": phase}`` now, then the callable takes the fraction reached and sends
    ``{"phase": phase, "fraction": f}``.
    """
    emit = sink(progress)
    if not total:
        emit({"phase": phase, "label": phase})
        return lambda fraction: emit({"phase": phase, "fraction": float(fraction)})
    emit({"phase": phase, "total": total})
    done = [0]

    def advance(k: float) -> None:
        done[0] += int(k)
        emit({"phase": phase, "label": phase, "done": done[0], "total": total})

    return advance


def note(progress: Progress | None, line: str, phase: str = "note") -> None:
    """Send ``line`` as a one-off ``note``."""
    sink(progress)({"phase": phase, "note": line})


def to_lines(write: Callable[[str], None]) -> Progress:
    """A sink that calls ``write`` with each event's ``note`` and ignores the rest (a search's log)."""

    def on_event(event: dict[str, Any]) -> None:
        if event.get("note"):
            write(event["note"])

    return on_event


def hidden_output(stream: str = "stderr"):
    """A context in which a library's own progress bars and chatter on ``stream`` ("stderr" or "stdout") are dropped:
    the command shows its own progress (coremltools' conversion passes, ai-edge-quantizer's and NNCF's bars)."""
    import contextlib
    import io

    return (contextlib.redirect_stderr if stream == "stderr" else contextlib.redirect_stdout)(io.StringIO())
