"""`search --storage postgresql://...`: one search shared by several machines. A real PostgreSQL server on this machine,
two workers started independently as separate processes (as root, each in its own network namespace, reaching the
server over a virtual link, and each unable to see the other's search directory: two hosts sharing only the database
and the artifact store), one of them killed mid-trial and started again: its trial is retried through the heartbeats,
the search resumes, and both workers choose the best full candidate of either worker, fetching from the artifact store
what the other built. Bad input: an unreachable database, a missing driver, one line each."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.builders.cli import assert_one_line_error
from tests.builders.postgres import running_postgres
from tests.builders.sshd import free_port, make_netns
from tests.conftest import write_search_workspace

pytestmark = pytest.mark.slow

pytest.importorskip("optuna")

#: two candidates that need no training (the tiny teacher's own depth): INT8 with FP32 or INT4 embeddings; the
#: objective is size, so the INT4-embedding one is the best whichever machine builds it
SPACE = "layers=2;width=1.0;heads=0.0;ffn=0.0;vocab=false;quant=int8-dynamic,int8-dynamic-emb4;runtime=onnxruntime;threads=0"
STUDY = "edgecompress-search"


class Hosts:
    """Two worker hosts: network namespaces linked to this one (:func:`tests.builders.sshd.make_netns`; as root), each
    reaching the database at this side of its link; else both this machine, on loopback."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.names: list[str | None] = [None, None]
        self.server = ["127.0.0.1", "127.0.0.1"]
        for k in range(2):
            name = f"ech6{'ab'[k]}{os.getpid() % 100000}"
            there = stack.enter_context(make_netns(name, 6 + k))
            if there is not None:
                self.names[k], self.server[k] = name, there.rsplit(".", 1)[0] + ".1"

    @property
    def isolated(self) -> bool:
        return all(self.names)

    def command(self, k: int, hide: Path, argv: list[str]) -> list[str]:
        """``argv`` run on host ``k``, with the other host's search directory ``hide`` out of its sight."""
        if not self.names[k]:
            return argv
        return ["ip", "netns", "exec", self.names[k], "sh", "-c", f'mount -t tmpfs tmpfs "{hide}" && exec "$@"',
                "sh", *argv]


@pytest.fixture(scope="module")
def hosts():
    with contextlib.ExitStack() as stack:
        yield Hosts(stack)


@pytest.fixture(scope="module")
def postgres(hosts):
    """The server's port: listening on loopback and on the hosts' links."""
    pytest.importorskip("psycopg", reason="the PostgreSQL driver: pip install 'edgecompress[postgres]'")
    with running_postgres(tuple(sorted({"127.0.0.1", *hosts.server}))) as port:
        yield port


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, bert_classifier, home):
    return write_search_workspace(tmp_path_factory.mktemp("pg-search"), bert_classifier)


def _search(ws: Path, url: str, search_dir: Path) -> list[str]:
    return [sys.executable, "-m", "compress", "search", "--teacher", str(ws / "teacher"), "--profile",
            str(ws / "quick.yaml"), "--train", str(ws / "train.tsv"), "--eval", str(ws / "dev.tsv"), "--holdout",
            str(ws / "test.tsv"), "--trials", "2", "--promote", "2", "--objective", "size", "--space", SPACE,
            "--no-html", "--storage", url, "--artifact-store", str(ws / "artifact-store"), "--heartbeat", "1",
            "--search-dir", str(search_dir)]


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    with open(log, "w", encoding="utf-8") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while text not in log.read_text(encoding="utf-8"):
        assert proc.poll() is None, f"worker ended before {text!r}:\n{log.read_text()}"
        assert time.monotonic() < end, f"no {text!r} in {timeout:.0f} s:\n{log.read_text()}"
        time.sleep(0.2)


def test_two_workers_share_one_search_and_a_dead_workers_trial_is_retried(workspace, postgres, hosts):
    import optuna

    dirs = [workspace / "host-a" / "search", workspace / "host-b" / "search"]
    for d in dirs:
        d.mkdir(parents=True)  # (each host hides the other's: the folder must exist to be mounted over)
    urls = [f"postgresql://edge:not-checked@{hosts.server[k]}:{postgres}/postgres" for k in range(2)]
    logs = [workspace / "a1.log", workspace / "a2.log", workspace / "b.log"]
    procs: list[subprocess.Popen] = []
    try:
        a1 = _start(hosts.command(0, dirs[1], _search(workspace, urls[0], dirs[0])), logs[0])
        b = _start(hosts.command(1, dirs[0], _search(workspace, urls[1], dirs[1])), logs[2])
        procs += [a1, b]
        # host A dies in the middle of its first trial (its heartbeat stops), then is started again in its directory
        _wait_for(logs[0], "building and validating", a1, timeout=240)
        time.sleep(1.0)  # (a heartbeat recorded)
        doomed = next(ln for ln in logs[0].read_text().splitlines() if "building and validating" in ln)
        killed = int(doomed.split("[trial ", 1)[1].split(",", 1)[0])
        os.killpg(a1.pid, signal.SIGKILL)
        a1.wait()
        a2 = _start(hosts.command(0, dirs[1], _search(workspace, urls[0], dirs[0])), logs[1])
        procs.append(a2)
        for p in (a2, b):
            p.wait(timeout=420)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    out = {name: log.read_text(encoding="utf-8") for name, log in zip(("a1", "a2", "b"), logs)}
    assert a2.returncode == 0 and b.returncode == 0, out

    study = optuna.load_study(study_name=STUDY, storage=f"postgresql+psycopg://edge@127.0.0.1:{postgres}/postgres")
    TS = optuna.trial.TrialState
    trials = {t.number: t for t in study.trials}
    # the heartbeats: the dead worker's trial failed, and its retry (a copy queued for any worker) was measured
    assert trials[killed].state == TS.FAIL
    retry = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed]
    assert len(retry) == 1 and retry[0].state == TS.COMPLETE, out
    assert f"retries trial {killed}, whose worker stopped answering" in out["a2"] + out["b"]
    # every full candidate built by either worker; the best of them on the objective (size) is both workers' choice
    fulls = [t for t in trials.values() if t.state == TS.COMPLETE and t.user_attrs["fidelity"] == "full"
             and "duplicate_of" not in t.user_attrs]
    assert len(fulls) == 2 and all(t.user_attrs["verdict"] == "pass" for t in fulls)
    best = min(fulls, key=lambda t: t.user_attrs["size_mb"])
    assert best.params["quant"] == "int8-dynamic-emb4"
    fetched = 0
    for d in dirs:
        s = json.loads((d / "search.json").read_text(encoding="utf-8"))
        assert s["chosen"]["trial"] == best.number and s["not_reachable"] == []
        assert s["storage"].startswith("postgresql") and "not-checked" not in json.dumps(s)  # no password recorded
        assert (d / "chosen.yaml").is_file() and s["chosen"]["holdout"]["verdict"] == "pass"
        points = {p["trial"]: p for p in s["measured"]}
        for t in fulls:  # timed side by side here, wherever it was built
            assert f"trial {t.number}" in s["side_by_side"]
            if hosts.isolated and not t.user_attrs["built_by"].endswith(f":{d}"):
                assert points[t.number]["artifact"].startswith(str(d / "fetched"))
                fetched += 1
    assert fetched == (len(fulls) if hosts.isolated else 0)  # each fetched by the host that did not build it

    # a store copy that is not what its worker built is refused, not used
    from compress.errors import IntegrityError
    from compress.search.artifacts import locate, open_store

    attrs = {**best.user_attrs, "artifact": str(workspace / "elsewhere" / Path(best.user_attrs["artifact"]).name)}
    stored = workspace / "artifact-store" / attrs["artifact_id"]
    data = bytearray(stored.read_bytes())
    data[len(data) // 3] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="does not match the sha256 its worker recorded"):
        locate(open_store(str(workspace / "artifact-store")), attrs, workspace / "fetch-again")


def test_an_unreachable_database_is_one_line_naming_it_without_the_password(workspace, tmp_path):
    url = f"postgresql://edge:s3cret@127.0.0.1:{free_port()}/search"
    cmd = _search(workspace, url, tmp_path / "s")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    line = assert_one_line_error(proc, "cannot reach the study database", "postgresql://edge:***@127.0.0.1",
                                 "correct --storage")
    assert "s3cret" not in proc.stdout + proc.stderr, line
    assert not (tmp_path / "s").exists()  # nothing half-made


def test_a_missing_database_driver_names_the_package(monkeypatch):
    from compress.errors import MissingBackendError
    from compress.search.study import open_storage, optuna_module

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg were not installed
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    monkeypatch.setitem(sys.modules, "pymysql", None)
    with pytest.raises(MissingBackendError) as e:
        open_storage(optuna_module(), "postgresql://edge:s3cret@db.example:5432/search", 30)
    assert "edgecompress[postgres]" in str(e.value) and "s3cret" not in str(e.value)
    with pytest.raises(MissingBackendError, match="pip install PyMySQL"):
        open_storage(optuna_module(), "mysql+pymysql://u@db.example/search", 30)
