"""The ``edgecompress`` console script's entry: a Ctrl-C while the command line itself imports (``compress.cli`` and
Click, the first ~0.2 s of every command) ends in one line and exit 130, as one later in the command does, not in
Python's traceback. Nothing else is imported before the guard; the ``compress`` package's own import (before this
module runs) answers one the same way (:func:`compress.interrupt.exit_interrupted`, when
:func:`compress.interrupt.is_command_line`): the window left is the interpreter's own start (its ``site`` and
``runpy`` imports, and ``runpy`` reading the package's ``__init__.py``), before any of the package's code runs."""

import os
import sys


def passive_waits() -> None:
    """OpenMP threads that sleep instead of spinning when they wait (``OMP_WAIT_POLICY=PASSIVE``), unless the user
    chose a policy. libgomp (PyTorch's OpenMP) reads it once, when it loads, so this runs before anything imports
    torch. Spinning barriers on a busy machine wait for a thread the kernel has parked behind other work: training
    steps of the demo's student on 2 threads took 3.88 s spinning vs 1.42 s passive (medians of 3, a 2-core VM at a
    load of 4-15), 8.2-8.8 vs 3.0-3.4 s beside two more busy loops (benchmarks/devices/busy_host.py; docs/guides/validate.md "Busy
    machines")."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    """Import and run :func:`compress.cli.main`; an interrupt before it has taken over the signals exits 130."""
    passive_waits()
    try:
        from compress.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:  # cli_main answers its own; this is one that came before or as it started
        try:
            from compress.interrupt import exit_interrupted
        except BaseException:  # noqa: BLE001 - a second signal while it imports: the plain line
            sys.stderr.write("interrupted (Ctrl-C); no output was written\n")
            sys.exit(130)
        exit_interrupted()
