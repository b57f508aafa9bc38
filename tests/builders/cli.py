"""Running the CLI in tests: as a user does (``python -m compress`` in a fresh interpreter, :func:`edgecompress`) or
in the test's own process (:func:`in_process`, :func:`main_error`: no interpreter start), and the one-line error
every refusal ends in (:func:`assert_one_line_error`). Imported by test modules, after ``tests/conftest.py`` has set
the environment the CLI processes inherit (:data:`ENV` is taken then)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

#: the environment of a CLI subprocess: offline, quiet, no --debug tracebacks
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
ENV.pop("EDGECOMPRESS_DEBUG", None)


def edgecompress(*args: str, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the real entry point (``python -m compress``) in a fresh interpreter (``env``: instead of :data:`ENV`)."""
    return subprocess.run(
        [sys.executable, "-m", "compress", *map(str, args)],
        capture_output=True, text=True, env=ENV if env is None else env, cwd=cwd, timeout=300,
    )


# The plain progress lines a phase that ran PhaseProgress.delay seconds leaves in a CI log (stderr not a terminal):
# "LABEL ...", "LABEL: 3/10 (30%), 12s elapsed ...", "LABEL: stopped in 11s". On a loaded machine loading a checkpoint
# can pass the delay before the load fails; those lines are progress, not a second error.
PROGRESS_LINE = re.compile(r"^(?!error: ).+(?: \.\.\.|: \S.* elapsed.*|: (?:done|stopped) in \d\S*(?: \(.*)?)$")


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str, code: int = 2) -> str:
    """``proc`` failed with ``code`` and one ``error:`` line on stderr holding every one of ``words``, no traceback.
    Returns the line."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if not PROGRESS_LINE.match(ln)]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert proc.stderr.strip().splitlines()[-1] == line, proc.stderr  # the error comes last
    assert line.startswith("error: "), line
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in line, (w, line)
    return line


def main_error(capsys, *args, code: int = 2) -> str:
    """The one-line error of ``edgecompress ARGS`` run in this process (no interpreter start: for the many refusal
    tests): its exit code, one ``error:`` line on stderr, no traceback. Returns the line."""
    from compress.cli import main

    with pytest.raises(SystemExit) as e:
        main(["-q", *map(str, args)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == code and len(err) == 1 and err[0].startswith("error: "), (e.value.code, err)
    assert "Traceback" not in err[0], err
    return err[0]


def in_process(capfd, *args, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """:func:`edgecompress` run in this process, without an interpreter's start (seconds each: torch and the rest
    imported again): ``compress.cli.main(ARGS)``, which is what ``python -m compress`` runs (its entry,
    :mod:`compress._entry`, adds the OpenMP wait policy, which this process sets too, and an answer to a Ctrl-C before
    the CLI has imported), in :data:`ENV`'s terms (no EDGECOMPRESS_DEBUG; ``env``: variables set on top) and ``cwd``.
    What it writes to file descriptors 1 and 2 (``capfd``: Python's lines and native libraries' alike) comes back as
    stdout and stderr, its exit code as the returncode: :func:`assert_one_line_error` checks it as it checks a
    subprocess. Not for what needs a fresh interpreter: import-time behaviour, signals, what the real entry prints
    before the CLI quiets third-party libraries, --debug's traceback. Put back after the command: the environment, the
    directory, torch's thread count (a profile's threads), the root logger (:func:`_restore_logging`)."""
    from compress.cli import main

    capfd.readouterr()  # what came before is not this command's
    saved_env = os.environ.copy()
    try:
        import torch
    except ImportError:
        torch = None
    threads = torch.get_num_threads() if torch is not None else 0
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.delenv("EDGECOMPRESS_DEBUG", raising=False)
            for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", **(env or {})}.items():
                mp.setenv(k, v)
            mp.chdir(os.getcwd() if cwd is None else cwd)  # put back after, whatever the command does
            with pytest.raises(SystemExit) as e:
                main([*map(str, args)])
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        if torch is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    out, err = capfd.readouterr()
    code = 0 if e.value.code is None else e.value.code if isinstance(e.value.code, int) else 1
    return subprocess.CompletedProcess(["edgecompress", *map(str, args)], code, out, err)
