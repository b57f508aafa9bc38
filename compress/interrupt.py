"""SIGTERM handled like Ctrl-C, in one place.

CI timeouts, ``timeout``, ``docker stop`` and Kubernetes stop a job with SIGTERM. The CLI installs
:func:`sigterm_as_interrupt` around every command: SIGTERM raises :class:`Terminated` (a
``KeyboardInterrupt``), so the same cleanup runs as for Ctrl-C (staging directories removed, remote
work directories deleted) and the process exits 128 + the signal: 130 for SIGINT, 143 for SIGTERM.
Long work that can stop cleanly at a boundary (distillation) uses :class:`StopFlag` instead.

A stopping signal that arrives while a library imports or runs can come back as another exception (a pybind11
module's ``ImportError: initialization failed`` from the KeyboardInterrupt raised inside its initialisation):
:func:`caused_by_signal` tells the CLI it was the interrupt, not a bug. A signal after the command's work ended
(its output renamed into place and reported) meets :func:`finishing`'s handler, which says so and exits 128 + the
signal instead of letting Python's default handler kill the process by the signal; from Python's own exit on, a
Ctrl-C is ignored (the command's exit code stands). Whatever was committed before an
interrupt is recorded with :func:`note_written`, so the CLI's interrupted line says what is complete.

Both first give the main thread an alternate signal stack of edgecompress's own (:func:`ensure_signal_stack`).
Python runs its signal handlers on the alternate stack (``SA_ONSTACK``), and OpenVINO's CPU plugin swaps that stack
for one of each compiled model's and restores the previous one when it is destroyed: destroyed in another order than
created (two Cores, or NNCF's own beside ours), the thread is left pointing at freed memory, and the next Ctrl-C or
SIGTERM kills the process with SIGSEGV instead of stopping it cleanly (seen: a distillation interrupted after an
OpenVINO quantization in the same process). A recipe (and so a search) sets it again before each job, since an
earlier job's models can be destroyed out of order after the handlers are in place.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any, Self

log = logging.getLogger(__name__)

_last_signal: int | None = None
_raised = False  # a stopping signal was raised into the running code (not a StopFlag's request)
_written: list[str] = []  # outputs committed (renamed into place) during this command
_signal_stack: tuple[Any, Any] | None = None  # (buffer, stack_t): allocated once, alive for the whole process


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def ensure_signal_stack() -> bool:
    """Point the main thread's alternate signal stack at memory edgecompress owns for the life of the process.

    Linux only (elsewhere, or off the main thread, it does nothing and returns False); see the module docstring
    for why. The stack is at least 64 KiB (Python's faulthandler uses about as much; AMX state needs more than the
    old SIGSTKSZ).
    """
    global _signal_stack
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if _signal_stack is None:
            size = max(1 << 16, os.sysconf("SC_SIGSTKSZ") if "SC_SIGSTKSZ" in os.sysconf_names else 0)
            buf = ctypes.create_string_buffer(size)
            _signal_stack = (buf, _StackT(ctypes.cast(buf, ctypes.c_void_p), 0, size))
        return libc.sigaltstack(ctypes.byref(_signal_stack[1]), None) == 0
    except (OSError, AttributeError, ValueError):  # no libc to call: leave the stack as it is
        return False


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
    global _last_signal, _raised
    _last_signal = None
    _raised = False
    _written.clear()


def note_written(path: os.PathLike | str) -> None:
    """``path`` is complete and in place (renamed from its staging directory): an interrupt after this leaves it."""
    if str(path) not in _written:
        _written.append(str(path))


def written() -> list[str]:
    """The outputs committed during this command (:func:`note_written`), in order."""
    return list(_written)


def caused_by_signal(exc: BaseException) -> bool:
    """Did ``exc`` come from a stopping signal: a KeyboardInterrupt is in its cause/context chain (a library that
    wrapped it: pybind11's ``ImportError: initialization failed``), or one was raised into the running code during
    the command (a library swallowed it: ``require`` then found the half-imported module "not installed")? A
    StopFlag's first Ctrl-C only asks for a checkpoint: an error after it is still that error."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return _raised


def swallowed() -> bool:
    """Was a stopping signal raised into the running code during this command (not a StopFlag's first request)? A
    library that catches it while it imports (``except BaseException``, or a native module's initialisation that
    turns it into an ImportError a caller then treats as "not available") lets the command carry on as if no one had
    pressed Ctrl-C; :func:`check` and the CLI's end ask this."""
    return _raised


def check() -> None:
    """Raise the stopping signal again if one was raised into the running code and swallowed there (:func:`swallowed`):
    called before an output is renamed into place, so a Ctrl-C a library ate is still honoured and nothing that
    looks complete is left."""
    if _raised:
        raise Terminated if _last_signal == signal.SIGTERM else KeyboardInterrupt


def answered() -> None:
    """The interrupt has been answered (its line written, its exit code chosen): forget CPython's own mark of an
    unhandled one. CPython 3.11 sets that mark whenever a KeyboardInterrupt leaves code run by ``exec`` of a string
    (dataclasses and namedtuple build their methods so, as pydantic imports), even when it is caught further up,
    and at exit kills the process by SIGINT instead of exiting with the code asked for (seen: a Ctrl-C at 0.2 s of
    ``export`` ended by the signal, returncode -2, after its one line). Where the mark is not reachable, nothing."""
    with contextlib.suppress(Exception):
        ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt").value = 0


def exit_interrupted() -> None:
    """Write :func:`interrupted_line` and exit 128 + the signal, the interrupt answered (:func:`answered`): the end of
    a Ctrl-C that came before the CLI took over the signals (``compress._entry``, and ``compress/__init__.py`` while
    the package itself imports, when :func:`is_command_line`)."""
    with contextlib.suppress(Exception):
        sys.stderr.write(f"{interrupted_line()}\n")
    answered()
    sys.exit(exit_code())


def is_command_line() -> bool:
    """Is this process the command line (``python -m compress``, the ``edgecompress`` script), not a program that
    imports the library?"""
    argv = list(getattr(sys, "orig_argv", []))
    return any(a == "-m" and b == "compress" for a, b in zip(argv, argv[1:], strict=False)) or \
        (bool(sys.argv) and sys.argv[0].replace("\\", "/").rsplit("/", 1)[-1] in ("edgecompress", "edgecompress.exe"))


def interrupted_line() -> str:
    """The one line an interrupted command ends with: which signal, and what it left (complete outputs or none)."""
    done = written()
    left = f"{', '.join(done)} {'is' if len(done) == 1 else 'are'} complete" if done else "no output was written"
    return f"interrupted ({signal_name()}); {left}"


def finishing(ended: str) -> None:
    """From here to the process's exit a stopping signal raises nothing: the command's work is over (``ended``: how,
    for the line). It prints one line saying the signal came after the command had ended and exits 128 + the signal
    at once (the output is complete, nothing is left to clean). Main thread only; the process's own entry calls it."""
    if threading.current_thread() is not threading.main_thread():
        return

    def late(signum, frame) -> None:
        note_signal(signum)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with contextlib.suppress(Exception):
            os.write(2, f"interrupted ({signal_name()}) after the command had {ended}; nothing was left "
                        "half-written\n".encode())
        os._exit(exit_code())

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, late)
    atexit.register(_ignore_late_ctrl_c)


def _ignore_late_ctrl_c() -> None:
    """Python's own exit (the atexit handlers this one precedes, then the teardown of every module) is the command's
    last instant: there CPython puts a handler it installed back to the default, so a Ctrl-C would kill the process
    by the signal (returncode -2, no line; seen 60-100 ms after export's last line). Ignored from here on, the exit
    code stays the command's (its output complete). SIGTERM keeps its default: a process manager's stop still ends
    it."""
    with contextlib.suppress(Exception):
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _raise_interrupt(signum, frame) -> None:
    _note_raised(signum)
    raise KeyboardInterrupt


def _raise_terminated(signum, frame) -> None:
    _note_raised(signum)
    raise Terminated


def _note_raised(signum: int) -> None:
    global _raised
    note_signal(signum)
    _raised = True


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ensure_signal_stack()
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    old_int = signal.getsignal(signal.SIGINT)
    if old_int is signal.default_int_handler:
        signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        yield
    finally:  # a handler set within the block (finishing's, to the process's exit) stays
        if signal.getsignal(signal.SIGTERM) is _raise_terminated:
            signal.signal(signal.SIGTERM, old)
        if old_int is signal.default_int_handler and signal.getsignal(signal.SIGINT) is _raise_interrupt:
            signal.signal(signal.SIGINT, old_int)


class StopFlag:
    """First Ctrl-C/SIGTERM asks for a checkpoint at the next step boundary; a second one aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            ensure_signal_stack()
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        note_signal(signum)
        if self.requested:
            _note_raised(signum)
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        self.requested = True
        log.warning("interrupt received: saving a checkpoint at the end of this step (Ctrl-C again to abort)")

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        if self.requested and exc[0] is None:  # asked for after the last boundary that looked: still a Ctrl-C (check)
            _note_raised(_last_signal or signal.SIGINT)
