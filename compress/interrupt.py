"""SIGTERM handled like Ctrl-C, in one place.

CI timeouts, ``timeout``, ``docker stop`` and Kubernetes stop a job with SIGTERM. The CLI installs
:func:`sigterm_as_interrupt` around every command: SIGTERM raises :class:`Terminated` (a
``KeyboardInterrupt``), so the same cleanup runs as for Ctrl-C (staging directories removed, remote
work directories deleted) and the process exits 128 + the signal: 130 for SIGINT, 143 for SIGTERM.
Long work that can stop cleanly at a boundary (distillation) uses :class:`StopFlag` instead.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any, Self

log = logging.getLogger(__name__)

_last_signal: int | None = None


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; raised where Python was when it did, like Ctrl-C's KeyboardInterrupt."""


def note_signal(signum: int) -> None:
    """Remember which signal stopped the work (the exit code follows it)."""
    global _last_signal
    _last_signal = signum


def exit_code() -> int:
    """128 + the last stopping signal: 143 after SIGTERM, 130 after Ctrl-C (or when none was recorded)."""
    return 128 + int(_last_signal or signal.SIGINT)


def signal_received() -> bool:
    return _last_signal is not None


def signal_name() -> str:
    return "SIGTERM" if _last_signal == signal.SIGTERM else "Ctrl-C"


def reset() -> None:
    global _last_signal
    _last_signal = None


def _raise_interrupt(signum, frame) -> None:
    note_signal(signum)
    raise KeyboardInterrupt


def _raise_terminated(signum, frame) -> None:
    note_signal(signum)
    raise Terminated


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    old_int = signal.getsignal(signal.SIGINT)
    if old_int is signal.default_int_handler:
        signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
        if old_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, old_int)


class StopFlag:
    """First Ctrl-C/SIGTERM asks for a checkpoint at the next step boundary; a second one aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        note_signal(signum)
        if self.requested:
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        self.requested = True
        log.warning("interrupt received: saving a checkpoint at the end of this step (Ctrl-C again to abort)")

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
