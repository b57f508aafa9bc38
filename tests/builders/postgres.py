"""A real PostgreSQL server for tests and benchmarks of a shared search (``search --storage postgresql://``): this
machine's installation (``initdb``/``pg_ctl`` on PATH or under /usr/lib/postgresql/*/bin, as ``.ci/run`` installs
it), a throw-away cluster in a temporary directory, trusting connections from loopback and from the test network
namespaces' links (:func:`tests.builders.sshd.make_netns`, 10.213.0.0/16), stopped and removed afterwards. As root it
runs as the ``postgres`` user (initdb refuses root). Skips the test with the reason where no server is installed."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.builders.sshd import free_port


def pg_bin(name: str) -> str | None:
    """A PostgreSQL program: on PATH, or the newest under /usr/lib/postgresql (Debian's packages keep it there)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return versions[-1] if versions else None


@contextlib.contextmanager
def running_postgres(listen: tuple[str, ...] = ("127.0.0.1",)) -> Iterator[int]:
    """A PostgreSQL server listening on ``listen`` (addresses of this machine) at a free port, which it yields; its
    superuser ``edge`` (trusted, any password) owns the database ``postgres``."""
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("no PostgreSQL server installed (apt-get install postgresql)")
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root with no postgres user to run the server as (apt-get install postgresql)")
        as_user = ["runuser", "-u", "postgres", "--"]
    d = Path(tempfile.mkdtemp(prefix="edgecompress-pg-"))  # (not under pytest's 0700 root folders: postgres reads it)
    if as_user:
        shutil.chown(d, "postgres")
    port = free_port()
    try:
        subprocess.run([*as_user, initdb, "-D", str(d / "data"), "-U", "edge", "--auth=trust", "--no-sync", "-E",
                        "UTF8"], check=True, capture_output=True)
        with open(d / "data" / "pg_hba.conf", "a", encoding="utf-8") as f:  # the namespaces' links
            f.write("host all all 10.213.0.0/16 trust\n")
        started = subprocess.run(
            [*as_user, pg_ctl, "-D", str(d / "data"), "-l", str(d / "log"), "-w", "start", "-o",
             f"-c listen_addresses={','.join(listen)} -c port={port} -c unix_socket_directories={d} -c fsync=off"],
            capture_output=True, text=True)
        if started.returncode != 0:
            log = (d / "log").read_text(errors="replace") if (d / "log").is_file() else ""
            raise RuntimeError(f"PostgreSQL did not start: {started.stderr.strip()} {log[-2000:]}")
        yield port
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(d / "data"), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)
