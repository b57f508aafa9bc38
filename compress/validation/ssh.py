"""Remote validation's transport: the target (``user@host[:port]``, its ssh_config and Python) and the device
session over the system OpenSSH client (one preflight round trip, one tar stream, the runner, the clean-up).
:mod:`compress.validation.remote` prepares the job and judges the result."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.artifact import Artifact
from compress.errors import ConfigError, EdgeCompressError, IntegrityError, MissingBackendError
from compress.formats import FORMATS, remote_runtime

log = logging.getLogger(__name__)

RUNNER = Path(__file__).resolve().parents[1] / "device" / "remote_runner.py"  # the device-side code (compress/device/remote_runner.py)
DEVICE = Path(__file__).resolve().parents[1] / "device" / "shipped.py"  # shared with the bundle handler; ships beside the runner
MARKER = "EDGECOMPRESS-RESULT "
CONNECT_TIMEOUT_S = 15
CHECK_TIMEOUT_S = 120
TRANSFER_TIMEOUT_S = 3600
RUN_TIMEOUT_S = 3600
CLEANUP_TIMEOUT_S = 60
SSH_CONFIG_ENV = "EDGECOMPRESS_SSH_CONFIG"
# exit codes of the preflight shell script and of remote_runner.py
EXIT_NO_PYTHON = 96
EXIT_NO_MKTEMP = 97
R_MISSING, R_ARCH, R_INTEGRITY, R_LOAD, R_ERROR, R_PYTHON = 10, 11, 12, 13, 14, 15
_WORKDIR = re.compile(r"^/[^\n'\"\\]*/edgecompress\.[A-Za-z0-9]{10}$")
_SPEC = re.compile(
    r"^(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?"
    r"(?P<host>\[[0-9A-Fa-f:.%A-Za-z]+\]|[A-Za-z0-9_][A-Za-z0-9._-]*)"
    r"(?::(?P<port>[0-9]+))?$"
)
ARCH_NAMES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


class RemoteError(EdgeCompressError):
    """The device could not be reached or logged into, or a step on it failed."""


class DeviceUnreachable(RemoteError):
    """The device did not answer: connection refused, timed out, no route, or the connection dropped mid-run. In a
    validation on several devices (:mod:`compress.validation.fleet`) this one device is marked, not the run failed."""


# -- the target ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RemoteTarget:
    """Where to measure: ``user@host[:port]`` as given, the ssh_config to use, the device's Python."""

    spec: str
    user: str | None
    host: str
    port: int | None
    python: str = "python3"
    ssh_config: str | None = None
    identity: str | None = None  # a private key for ssh -i (a fleet file's ``key``); None: ssh_config's

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def ssh(self, remote_command: str) -> list[str]:
        """The ssh command line running ``remote_command`` (a shell string) on the device."""
        cmd = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}"]
        if self.ssh_config:
            cmd += ["-F", self.ssh_config]
        if self.identity:
            cmd += ["-i", self.identity]
        if self.port:
            cmd += ["-p", str(self.port)]
        return [*cmd, "--", self.destination, remote_command]

    @property
    def python_word(self) -> str:
        """The device's Python as a shell word: quoted, with a leading ``~/`` expanded remotely."""
        if self.python.startswith("~/"):
            return '"$HOME"/' + shlex.quote(self.python[2:])
        return shlex.quote(self.python)


def parse_remote(spec: str) -> tuple[str | None, str, int | None]:
    """``user@host[:port]`` (host may be an ssh_config alias or ``[ipv6]``) -> (user, host, port)."""
    match = _SPEC.match(spec.strip())
    if not match:
        raise ConfigError(f"--remote {spec!r}: expected user@host[:port]", hint="e.g. --remote pi@raspberrypi.local:22")
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"--remote {spec!r}: port {port} is out of range 1-65535")
    host = match["host"]
    return match["user"], host[1:-1] if host.startswith("[") else host, port


def remote_target(config, profile, art: Artifact):
    """Check a ``--remote`` request before any work: spec, artifact format, profile, ssh client.

    One ``user@host[:port]``: its :class:`RemoteTarget` (several devices are
    :func:`compress.validation.fleet.remote_of`'s)."""
    user, host, port = parse_remote(config.remote)
    check_remote_profile(config, profile, art)
    python, ssh_config = ssh_setup(config)
    return RemoteTarget(spec=config.remote.strip(), user=user, host=host, port=port, python=python,
                        ssh_config=ssh_config)


def check_remote_profile(config, profile, art: Artifact) -> str:
    """The artifact can be measured remotely and ``profile`` describes a device that runs it; its runtime."""
    runtime = remote_runtime(art.format)
    if runtime is None:
        spec = FORMATS[art.format]
        if spec.built_for:
            raise ConfigError(
                f"{art.path}: a {spec.label} model runs only on {spec.built_for}",
                hint="build it on the device, or validate the ONNX artifact remotely",
            )
        remote = [FORMATS[f].label for f in FORMATS if remote_runtime(f)]
        raise ConfigError(
            f"{art.path}: remote validation runs {', '.join(remote[:-1])} and {remote[-1]} artifacts, not {art.format}",
            hint="export it first: edgecompress export TEACHER --out DIR",
        )
    if profile.runtime.name != runtime:
        raise ConfigError(
            f"profile {profile.name} runs {profile.runtime.name}; the remote runner runs {art.format} artifacts "
            f"with {runtime}",
            hint=f"use a profile whose runtime is {runtime}",
        )
    if profile.source == "detected" or profile.name == "host":
        raise ConfigError(
            "--profile host describes this machine, not the remote device",
            hint="pass the device's profile (`edgecompress profiles list`) or a YAML file describing it",
        )
    if config.measure.baseline and profile.budgets.min_speedup is not None and profile.measure.speedup_baseline == "pytorch":
        raise ConfigError(
            f"profile {profile.name}: measure -> speedup_baseline: pytorch times the teacher in PyTorch, which the "
            f"remote runner does not run (the device needs only numpy and the runtime)",
            hint="use speedup_baseline: runtime (the teacher's FP32 export on the device's runtime) with --remote",
        )
    return runtime


def check_python(python: str | None, option: str = "--remote-python") -> str:
    """The device's Python command, stripped; one line naming ``option`` when it is empty or spans lines."""
    word = (python or "").strip()
    if not word or any(c in word for c in "\n\r\0"):
        raise ConfigError(f"{option} {python!r}: expected a command or path such as python3")
    return word


def ssh_setup(config) -> tuple[str, str | None]:
    """The device's Python and the ssh_config file (``--ssh-config``, else $EDGECOMPRESS_SSH_CONFIG) checked, and the
    ssh client found."""
    python = check_python(config.remote_python)
    ssh_config = config.ssh_config or os.environ.get(SSH_CONFIG_ENV) or None
    if ssh_config and not Path(ssh_config).expanduser().is_file():
        raise ConfigError(f"--ssh-config {ssh_config}: no such file")
    if shutil.which("ssh") is None:
        raise MissingBackendError(
            "the OpenSSH client (ssh) is not installed on this machine",
            hint="install it: apt-get install openssh-client (or your system's package)",
        )
    return python, str(Path(ssh_config).expanduser()) if ssh_config else None


# -- ssh ----------------------------------------------------------------------------------------------

def _ssh_failure(target: RemoteTarget, stderr: str, what: str) -> RemoteError:
    """One clear error from ssh's own diagnostics (exit status 255)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith("Warning: Permanently")]
    text = "\n".join(lines)
    low = text.lower()
    where = f"{target.destination}{f' port {target.port}' if target.port else ''}"
    if "could not resolve hostname" in low or "name or service not known" in low:
        return RemoteError(f"cannot reach {target.spec}: unknown host {target.host}",
                           hint="check the name, or define it as a Host in ~/.ssh/config")
    if "connection refused" in low:
        return DeviceUnreachable(f"cannot reach {target.spec}: connection refused by {where}",
                           hint="is sshd running there, and is the port right?")
    if "timed out" in low or "no route to host" in low or "network is unreachable" in low:
        reason = "timed out" if "timed out" in low else ("no route to host" if "no route" in low
                                                          else "network unreachable")
        return DeviceUnreachable(f"cannot reach {target.spec}: connection {reason}",
                           hint="check that the device is on and reachable from here (VPN, ProxyJump)")
    if "host key verification failed" in low or "remote host identification has changed" in low:
        return RemoteError(f"host key of {target.host} is not trusted (unknown or changed)",
                           hint=f"connect once with `ssh {f'-p {target.port} ' if target.port else ''}"
                           f"{target.destination}` to check and store its key; "
                           "edgecompress keeps host-key checking on")
    if "permission denied" in low or "too many authentication failures" in low:
        return RemoteError(f"authentication to {target.destination} failed ({lines[-1] if lines else 'denied'})",
                           hint="set up key login (ssh-copy-id, an agent or IdentityFile in ~/.ssh/config); "
                           "passwords cannot be prompted for in batch mode")
    if "connection closed" in low or "connection reset" in low or "broken pipe" in low:
        return DeviceUnreachable(f"{what} on {target.spec} failed: the connection was closed ({lines[-1]})",
                           hint="retry; check the link to the device")
    last = lines[-1] if lines else "ssh exited with status 255"
    return RemoteError(f"{what} on {target.spec} failed: {last}")


def _run_ssh(target: RemoteTarget, command: str, what: str, *, timeout: float, stdin: bytes | None = None,
             ) -> subprocess.CompletedProcess:
    argv = target.ssh(command)
    log.debug("ssh: %s", shlex.join(argv))
    try:
        proc = subprocess.run(argv, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                              capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise DeviceUnreachable(f"{what} on {target.spec} did not finish within {timeout:.0f} s",
                          hint="check the device's load and the link") from e
    if proc.returncode == 255:
        raise _ssh_failure(target, proc.stderr.decode(errors="replace"), what)
    return proc


def _result(proc: subprocess.CompletedProcess) -> dict[str, Any] | None:
    lines = [ln for ln in proc.stdout.decode(errors="replace").splitlines() if ln.startswith(MARKER)]
    if not lines:
        return None
    try:
        return json.loads(lines[-1][len(MARKER):])
    except json.JSONDecodeError:
        return None


def _runner_failure(target: RemoteTarget, proc: subprocess.CompletedProcess, what: str) -> EdgeCompressError:
    """The runner's JSON error (or the shell's) as one clear error."""
    res = _result(proc) or {}
    stderr = proc.stderr.decode(errors="replace").strip()
    last = (stderr.splitlines() or ["(no output)"])[-1]
    msg = res.get("message") or last
    rc = proc.returncode
    if rc == R_MISSING:
        return MissingBackendError(f"on {target.spec}: {msg}",
                                   hint=f"install it there: {res.get('install') or 'pip install ' + str(res.get('pip'))}"
                                   f" (for {target.python})")
    if rc == R_ARCH:
        return RemoteError(f"{target.spec} cannot run this artifact: {msg}",
                           hint="use a device of a supported architecture, or an ONNX artifact (portable)")
    if rc == R_INTEGRITY:
        return IntegrityError(f"transfer to {target.spec} was interrupted or damaged: {msg}",
                              hint="retry; if it repeats, check the device's disk and the link")
    if rc == R_PYTHON or "SyntaxError" in stderr:
        return RemoteError(f"{target.python} on {target.spec} is not Python 3.7+ ({msg})",
                           hint="install python3 there or pass --remote-python PATH")
    if rc == R_LOAD:
        return RemoteError(f"on {target.spec}: {msg}")
    if rc in (126, 127) and not res:
        first = (stderr.splitlines() or [last])[0].strip()
        return RemoteError(f"{target.python} on {target.spec} could not be run: {first}",
                           hint=f"is {target.python} installed there? pass --remote-python PATH")
    return RemoteError(f"{what} on {target.spec} failed (exit {rc}): {msg}")


def preflight_program() -> bytes:
    """What ``python -`` runs on the device for ``check``, before anything is sent: every part of the device code (the
    device facts, such as the CPU's name, are read there) registered under the name it ships as
    (``edgecompress_device``, ``edgecompress_feeds``, ``edgecompress_facts``), then the runner as ``__main__``, all
    compiled from their sources; nothing is written on the device."""
    from compress.device.shipped import SHIPPED_FILES

    lines = ["import sys, types"]
    for shipped, source in SHIPPED_FILES.items():
        name = shipped.rpartition(".")[0]
        lines += [f"part = types.ModuleType({name!r})",
                  f"exec(compile({(DEVICE.parent / source).read_text(encoding='utf-8')!r}, {shipped!r}, 'exec'), "
                  "part.__dict__)",
                  f"sys.modules[{name!r}] = part"]
    return "\n".join([
        *lines,
        f"exec(compile({RUNNER.read_text(encoding='utf-8')!r}, 'remote_runner.py', 'exec'), {{'__name__': '__main__'}})",
        "",
    ]).encode("utf-8")


# -- the session on the device ------------------------------------------------------------------------

class DeviceSession:
    """One validation's use of the device: preflight, transfer, run, and a cleanup that always runs."""

    def __init__(self, target: RemoteTarget) -> None:
        self.target = target
        self.workdir: str | None = None
        self.facts: dict[str, Any] = {}
        self.runtime_info: dict[str, Any] = {}
        self.avail_bytes: int | None = None
        self.device_match: dict[str, Any] = {}  # set by compress.validation.remote.check_device

    def preflight(self, runtime: str, provider: str | None, fmt: str) -> None:
        """Python, numpy, runtime and architecture (runner piped to ``python -``); then mktemp and df."""
        py = self.target.python_word
        check = f"{py} - check --runtime {shlex.quote(runtime)} --format {shlex.quote(fmt)}"
        if provider:
            check += f" --provider {shlex.quote(provider)}"
        script = "\n".join([
            f"command -v {py} >/dev/null 2>&1 || exit {EXIT_NO_PYTHON}",
            f"{check} || exit $?",
            f'd=$(mktemp -d "${{TMPDIR:-/tmp}}/edgecompress.XXXXXXXXXX") || exit {EXIT_NO_MKTEMP}',
            'echo "workdir=$d"',
            "df -Pk \"$d\" | awk 'NR==2 {print \"avail_kb=\" $4}'",
        ])
        proc = _run_ssh(self.target, "sh -c " + shlex.quote(script), "checking the device",
                        timeout=CHECK_TIMEOUT_S, stdin=preflight_program())
        out = proc.stdout.decode(errors="replace")
        for line in out.splitlines():  # record the work dir first: cleanup must find it whatever follows
            if line.startswith("workdir="):
                wd = line.partition("=")[2].strip()
                if not _WORKDIR.match(wd):
                    raise RemoteError(f"unexpected work directory {wd!r} from mktemp on {self.target.spec}")
                self.workdir = wd
            elif line.startswith("avail_kb="):
                with contextlib.suppress(ValueError):
                    self.avail_bytes = int(line.partition("=")[2]) * 1024
        if proc.returncode == EXIT_NO_PYTHON:
            raise RemoteError(
                f"no Python on {self.target.spec}: `{self.target.python}` was not found",
                hint="install Python 3 with numpy and the runtime there (e.g. apt install python3 python3-numpy), "
                "or pass --remote-python PATH",
            )
        if proc.returncode == EXIT_NO_MKTEMP:
            raise RemoteError(f"cannot create a work directory under $TMPDIR on {self.target.spec}: "
                              f"{(proc.stderr.decode(errors='replace').strip().splitlines() or ['mktemp failed'])[-1]}",
                              hint="check that $TMPDIR (or /tmp) exists there and is writable")
        if proc.returncode != 0:
            raise _runner_failure(self.target, proc, "checking the device")
        res = _result(proc)
        if res is None or self.workdir is None:
            raise RemoteError(f"checking the device on {self.target.spec} gave no result: "
                              f"{(proc.stderr.decode(errors='replace').strip().splitlines() or ['no output'])[-1]}")
        self.facts = res.get("device", {})
        self.runtime_info = res.get("runtime", {})

    def send(self, files: dict[str, Path]) -> float:
        """Stream ``files`` (remote relative path -> local file) as one tar into the work dir; seconds taken."""
        t0 = time.perf_counter()
        cmd = self.target.ssh(f"tar -xf - -C {shlex.quote(self.workdir)}")
        log.debug("ssh: %s", shlex.join(cmd))
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
            broken = False
            try:
                with tarfile.open(fileobj=proc.stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                    for rel, src in files.items():
                        info = tar.gettarinfo(str(src), arcname=rel)
                        info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        info.mode = 0o644
                        with open(src, "rb") as f:
                            tar.addfile(info, f)
            except (BrokenPipeError, ConnectionResetError):
                broken = True
            finally:
                with contextlib.suppress(BrokenPipeError, OSError):
                    proc.stdin.close()
                try:
                    rc = proc.wait(timeout=TRANSFER_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    raise DeviceUnreachable(f"sending files to {self.target.spec} did not finish within "
                                      f"{TRANSFER_TIMEOUT_S} s") from None
            err.seek(0)
            stderr = err.read().decode(errors="replace")
        if rc == 255:
            raise _ssh_failure(self.target, stderr, "sending files")
        if rc != 0 or broken:
            last = (stderr.strip().splitlines() or [f"exit {rc}"])[-1]
            raise RemoteError(f"sending files to {self.target.spec} was interrupted: {last}",
                              hint="check free space on the device and the link, then retry")
        return time.perf_counter() - t0

    def run(self, job_sha256: str) -> dict[str, Any]:
        wd = self.workdir
        cmd = f"{self.target.python_word} {shlex.quote(wd + '/runner.py')} run {shlex.quote(wd)} --job-sha256 {job_sha256}"
        proc = _run_ssh(self.target, cmd, "measuring", timeout=RUN_TIMEOUT_S)
        if proc.returncode != 0:
            raise _runner_failure(self.target, proc, "measuring")
        res = _result(proc)
        if res is None or not res.get("ok"):
            raise RemoteError(f"the runner on {self.target.spec} gave no result: "
                              f"{(proc.stderr.decode(errors='replace').strip().splitlines() or ['no output'])[-1]}")
        return res

    def cleanup(self) -> None:
        """Stop a runner still going (its process group) and ``rm -rf`` the exact work dir. Best effort."""
        if self.workdir is None:
            return
        d = shlex.quote(self.workdir)
        script = (
            f"d={d}; if [ -f \"$d/runner.pid\" ]; then p=$(cat \"$d/runner.pid\"); "
            "kill -s TERM -- \"-$p\" 2>/dev/null || kill -s TERM \"$p\" 2>/dev/null; fi; rm -rf -- \"$d\""
        )
        try:
            proc = _run_ssh(self.target, "sh -c " + shlex.quote(script), "removing the work directory",
                            timeout=CLEANUP_TIMEOUT_S)
            if proc.returncode != 0:
                raise RemoteError(proc.stderr.decode(errors="replace").strip() or f"exit {proc.returncode}")
            self.workdir = None
        except (EdgeCompressError, OSError) as e:
            log.warning("could not remove %s on %s (%s): remove it by hand", self.workdir, self.target.spec, e)
