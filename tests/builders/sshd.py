"""Test SSH "devices": a real ``sshd`` on this machine with its own host key, client key, ``authorized_keys``, pid file
and $TMPDIR, and the client ``ssh_config`` that reaches it with host-key checking on (the host key pinned in a
temporary ``known_hosts``).

:func:`running_sshd` starts one on 127.0.0.1 (a free port), or inside a network namespace as a separate host
(:func:`make_netns`: its own address on a veth pair, port 22). Skips the test with the reason when OpenSSH is not
installed (``.ci/run`` installs it) or the server does not come up.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SSHD = Path("/usr/sbin/sshd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Loopback:
    """A running test sshd and what clients need to reach it."""

    def __init__(self, root: Path, port: int, user: str, host: str = "127.0.0.1", netns: str | None = None) -> None:
        self.root = root
        self.port = port
        self.user = user
        self.host = host
        self.netns = netns  # the network namespace it listens in (a separate host), None: this machine's loopback
        self.remote_tmp = root / "device-tmp"  # the device's $TMPDIR
        self.remote_tmp.mkdir(exist_ok=True)
        self.spec = f"{user}@{host}:{port}"
        self.proc: subprocess.Popen | None = None

    def ssh_config(self, name: str = "ssh_config", key: str = "client_key", tmpdir: Path | None = None,
                   known_hosts: str = "known_hosts") -> Path:
        path = self.root / name
        path.write_text(
            "Host *\n"
            f"  IdentityFile {self.root / key}\n"
            "  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.root / known_hosts}\n"
            "  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n"
            "  LogLevel ERROR\n"
            f"  SetEnv TMPDIR={tmpdir or self.remote_tmp}\n",
            encoding="utf-8",
        )
        return path

    def leftovers(self, tmpdir: Path | None = None) -> list[str]:
        return sorted(p.name for p in (tmpdir or self.remote_tmp).glob("edgecompress.*"))

    def stop(self) -> None:
        """Stop the server (the device drops off: new connections are refused)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def require_openssh() -> None:
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.skip(f"OpenSSH client tool {tool} not installed (apt-get install openssh-client)")
    if not SSHD.is_file():
        pytest.skip("sshd not installed (apt-get install openssh-server; .ci/run does this)")


@contextlib.contextmanager
def make_netns(name: str, index: int) -> Iterator[str | None]:
    """A network namespace ``name`` joined to this machine by a veth pair: yields the address a server inside
    listens on (10.213.INDEX.2; this side is .1), or None when namespaces cannot be made here (not root, no ``ip``,
    a container without CAP_NET_ADMIN). Removed afterwards (with its veth pair)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        yield None
        return
    tag = f"{os.getpid() % 100000}{index}"
    here, there = f"ec{tag}h", f"ec{tag}d"
    subnet = f"10.213.{(os.getpid() * 8 + index) % 250}"
    steps = [
        ["ip", "netns", "add", name],
        ["ip", "link", "add", here, "type", "veth", "peer", "name", there],
        ["ip", "link", "set", there, "netns", name],
        ["ip", "addr", "add", f"{subnet}.1/30", "dev", here],
        ["ip", "link", "set", here, "up"],
        ["ip", "-n", name, "addr", "add", f"{subnet}.2/30", "dev", there],
        ["ip", "-n", name, "link", "set", there, "up"],
        ["ip", "-n", name, "link", "set", "lo", "up"],
    ]
    made = False
    try:
        for step in steps:
            if subprocess.run(step, capture_output=True).returncode != 0:
                yield None
                return
            made = True
        yield f"{subnet}.2"
    finally:
        if made:
            subprocess.run(["ip", "link", "del", here], capture_output=True)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@contextlib.contextmanager
def running_sshd(root: Path, *, host: str = "127.0.0.1", netns: str | None = None) -> Iterator[Loopback]:
    """An sshd for the current user on ``host`` (a free port on 127.0.0.1; port 22 inside ``netns``), stopped after."""
    require_openssh()
    root.mkdir(parents=True, exist_ok=True)
    for key in ("host_key", "client_key", "wrong_key", "other_host_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / key)], check=True)
    shutil.copy(root / "client_key.pub", root / "authorized_keys")
    port = 22 if netns else free_port()
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress {host}\nHostKey {root / 'host_key'}\nPidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\n"
        "AcceptEnv TMPDIR\nMaxStartups 50\nMaxSessions 50\n",
        encoding="utf-8",
    )
    host_pub = " ".join((root / "host_key.pub").read_text().split()[:2])
    other_pub = " ".join((root / "other_host_key.pub").read_text().split()[:2])
    known = host if port == 22 else f"[{host}]:{port}"
    (root / "known_hosts").write_text(f"{known} {host_pub}\n", encoding="utf-8")
    (root / "wrong_known_hosts").write_text(f"{known} {other_pub}\n", encoding="utf-8")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation directory
    argv = [str(SSHD), "-D", "-f", str(root / "sshd_config"), "-E", str(root / "sshd.log")]
    lb = Loopback(root, port, getpass.getuser(), host, netns)
    lb.proc = subprocess.Popen(["ip", "netns", "exec", netns, *argv] if netns else argv,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    config = lb.ssh_config()
    deadline = time.monotonic() + 20
    try:
        while True:
            probe = subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                                    "-p", str(port), f"{lb.user}@{host}", "echo ok"], capture_output=True, text=True)
            if probe.returncode == 0:
                break
            if lb.proc.poll() is not None or time.monotonic() > deadline:
                log = (root / "sshd.log").read_text() if (root / "sshd.log").exists() else ""
                pytest.skip(f"could not start a test sshd: {(log or probe.stderr).strip()[-300:]}")
            time.sleep(0.2)
        yield lb
    finally:
        lb.stop()
