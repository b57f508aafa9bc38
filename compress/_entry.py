"""The ``edgecompress`` console script's entry: a Ctrl-C while the command line itself imports (``compress.cli`` and
Click, the first ~0.2 s of every command) ends in one line and exit 130, as one later in the command does, not in
Python's traceback. Nothing else is imported before the guard: the window it leaves is the interpreter's start and
the ``compress`` package's own import."""

import sys


def main() -> None:
    """Import and run :func:`compress.cli.main`; an interrupt before it has taken over the signals exits 130."""
    try:
        from compress.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:  # cli_main answers its own; this is one that came before or as it started
        interrupt = sys.modules.get("compress.interrupt")  # imported: it knows the signal and any output written
        sys.stderr.write(f"{interrupt.interrupted_line() if interrupt else 'interrupted (Ctrl-C); no output was written'}\n")
        sys.exit(interrupt.exit_code() if interrupt else 130)
