"""Remote validation: measure an artifact on a device over SSH, judge it here like a local run.

``edgecompress validate ARTIFACT --profile P --remote user@host[:port]``:

1. here (the controller): load and verify the artifact, tokenize the eval data and the latency inputs
   with the artifact's tokenizer, run the teacher (the reference) and, when the profile sets a speedup
   budget, export the teacher's FP32 baseline;
2. check the device in one SSH round trip before anything is sent: Python, numpy, the runtime, the
   architecture (the runner, piped to ``python3 -``), then ``mktemp -d`` under the device's $TMPDIR
   and its free space (``df -Pk``) against the bytes to send;
3. send the model files, their manifest, the input tensors (``inputs.npz``), ``job.json`` and
   :mod:`compress.remote_runner` as one tar stream (``ssh host tar -x``);
4. run the runner there: it verifies every file's sha256 (an interrupted transfer is detected there),
   predicts the eval batches, times the artifact and the baseline interleaved, probes a cold start in
   a fresh process, and prints one JSON document with the outputs, latency samples and device facts;
5. always remove the remote work directory (also on errors and Ctrl-C), then compute the metrics and
   judge the budgets with the same code as a local run (:func:`compress.metrics.prediction_metrics`,
   :func:`compress.validation.local.conclude`).

SSH is the system OpenSSH client, so ``~/.ssh/config`` (keys, agent, ProxyJump, ControlMaster) applies.
The only options passed are ``BatchMode=yes`` (never a password prompt) and a ``ConnectTimeout``;
host-key checking stays as configured. Every remote path is quoted with :func:`shlex.quote`.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compress import __version__
from compress.artifact import Artifact, Format, sha256_file
from compress.errors import ConfigError, EdgeCompressError, IntegrityError, MissingBackendError
from compress.interrupt import sigterm_as_interrupt
from compress.measure import LatencyStats

log = logging.getLogger(__name__)

RUNNER = Path(__file__).resolve().parents[1] / "remote_runner.py"  # the device-side code (compress/remote_runner.py)
DEVICE = Path(__file__).resolve().parents[1] / "device.py"  # shared with the bundle handler; ships beside the runner
MARKER = "EDGECOMPRESS-RESULT "
CONNECT_TIMEOUT_S = 15
CHECK_TIMEOUT_S = 120
TRANSFER_TIMEOUT_S = 3600
RUN_TIMEOUT_S = 3600
CLEANUP_TIMEOUT_S = 60
SSH_CONFIG_ENV = "EDGECOMPRESS_SSH_CONFIG"
# the runtime that runs each format on the device; others are refused before connecting
REMOTE_RUNTIMES = {Format.onnx: "onnxruntime", Format.openvino: "openvino"}
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
_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}

# test hook: called as hook(target, workdir) after the transfer and before the run
_after_transfer: Callable[[RemoteTarget, str], None] | None = None


class RemoteError(EdgeCompressError):
    """The device could not be reached or logged into, or a step on it failed."""


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

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def ssh(self, remote_command: str) -> list[str]:
        """The ssh command line running ``remote_command`` (a shell string) on the device."""
        cmd = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}"]
        if self.ssh_config:
            cmd += ["-F", self.ssh_config]
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


def remote_target(config, profile, art: Artifact) -> RemoteTarget:
    """Check a ``--remote`` request before any work: spec, artifact format, profile, ssh client."""
    user, host, port = parse_remote(config.remote)
    if art.format not in REMOTE_RUNTIMES:
        if art.format is Format.tensorrt:
            raise ConfigError(
                f"{art.path}: a TensorRT engine runs only on the GPU model and TensorRT version it was built with",
                hint="build the engine on the device, or validate the ONNX artifact remotely",
            )
        raise ConfigError(
            f"{art.path}: remote validation runs ONNX and OpenVINO artifacts, not {art.format}",
            hint="export it first: edgecompress export TEACHER --out DIR",
        )
    if profile.runtime.name != REMOTE_RUNTIMES[art.format]:
        raise ConfigError(
            f"profile {profile.name} runs {profile.runtime.name}; the remote runner runs {art.format} artifacts "
            f"with {REMOTE_RUNTIMES[art.format]}",
            hint=f"use a profile whose runtime is {REMOTE_RUNTIMES[art.format]}",
        )
    if profile.source == "detected" or profile.name == "host":
        raise ConfigError(
            "--profile host describes this machine, not the remote device",
            hint="pass the device's profile (`edgecompress profiles list`) or a YAML file describing it",
        )
    if config.baseline and profile.budgets.min_speedup is not None and profile.measure.speedup_baseline == "pytorch":
        raise ConfigError(
            f"profile {profile.name}: measure -> speedup_baseline: pytorch times the teacher in PyTorch, which the "
            f"remote runner does not run (the device needs only numpy and the runtime)",
            hint="use speedup_baseline: runtime (the teacher's FP32 export on the device's runtime) with --remote",
        )
    python = (config.remote_python or "").strip()
    if not python or any(c in python for c in "\n\r\0"):
        raise ConfigError(f"--remote-python {config.remote_python!r}: expected a command or path such as python3")
    ssh_config = config.ssh_config or os.environ.get(SSH_CONFIG_ENV) or None
    if ssh_config and not Path(ssh_config).expanduser().is_file():
        raise ConfigError(f"--ssh-config {ssh_config}: no such file")
    if shutil.which("ssh") is None:
        raise MissingBackendError(
            "the OpenSSH client (ssh) is not installed on this machine",
            hint="install it: apt-get install openssh-client (or your system's package)",
        )
    return RemoteTarget(
        spec=config.remote.strip(), user=user, host=host, port=port, python=python,
        ssh_config=str(Path(ssh_config).expanduser()) if ssh_config else None,
    )


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
        return RemoteError(f"cannot reach {target.spec}: connection refused by {where}",
                           hint="is sshd running there, and is the port right?")
    if "timed out" in low or "no route to host" in low or "network is unreachable" in low:
        reason = "timed out" if "timed out" in low else ("no route to host" if "no route" in low
                                                          else "network unreachable")
        return RemoteError(f"cannot reach {target.spec}: connection {reason}",
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
        return RemoteError(f"{what} on {target.spec} failed: the connection was closed ({lines[-1]})",
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
        raise RemoteError(f"{what} on {target.spec} did not finish within {timeout:.0f} s",
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


# -- the session on the device ------------------------------------------------------------------------

class _Device:
    """One validation's use of the device: preflight, transfer, run, and a cleanup that always runs."""

    def __init__(self, target: RemoteTarget) -> None:
        self.target = target
        self.workdir: str | None = None
        self.facts: dict[str, Any] = {}
        self.runtime_info: dict[str, Any] = {}
        self.avail_bytes: int | None = None

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
                        timeout=CHECK_TIMEOUT_S, stdin=RUNNER.read_bytes())
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
                    raise RemoteError(f"sending files to {self.target.spec} did not finish within "
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


# -- the validation -----------------------------------------------------------------------------------

def _npz(arrays: dict[str, np.ndarray], path: Path) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _model_spec(art: Artifact, prefix: str) -> dict[str, Any]:
    m = art.manifest
    return {
        "path": f"{prefix}/{m.model_file}",
        "output": m.outputs[0].name if m.outputs else None,
        "input_names": [t.name for t in m.inputs],
        "format": str(m.format),
        "precision": str(m.precision),
        "pooling": m.postprocess.pooling,
        "normalize": m.postprocess.normalize,
    }


def _ship_model(art: Artifact, prefix: str, files: dict[str, Path], hashes: dict[str, str]) -> None:
    for name in art.model_files():
        files[f"{prefix}/{name}"] = art.path / name
        hashes[f"{prefix}/{name}"] = art.manifest.files[name]
    files[f"{prefix}/manifest.json"] = art.path / "manifest.json"
    hashes[f"{prefix}/manifest.json"] = sha256_file(art.path / "manifest.json")


def _prepare(tmpdir: Path, art: Artifact, profile, settings, dataset, teacher, config, runtime: str, phase,
             ) -> tuple[dict[str, Path], str, np.ndarray | None]:
    """Tokenize, run the teacher, export the baseline, write inputs.npz and job.json into ``tmpdir``.

    Returns the files to send (remote relative path -> local path), job.json's sha256 and the teacher's
    outputs on the eval data (None without data or teacher).
    """
    from compress.tokenization import encoder_for
    from compress.validation.common import baseline_artifact, latency_texts

    meas = profile.measure
    encoder = encoder_for(art)
    arrays: dict[str, np.ndarray] = {}
    n_batches = 0
    ref = None
    if dataset is not None:  # the exact batches a local run feeds (same padding), tokenized here
        for texts, pairs, _ in dataset.batches(meas.eval_batch_size):
            for name, arr in encoder.encode(texts, pairs).items():
                arrays[f"eval.{n_batches}.{name}"] = arr
            n_batches += 1
        if teacher is not None:  # the reference runs here (or comes from the cache, as in a local run)
            from compress.teacher_outputs import teacher_outputs

            ref, _ = teacher_outputs(teacher, dataset, batch_size=meas.eval_batch_size, threads=settings.threads,
                                     use_cache=config.cache, progress=phase)
    lat_texts = latency_texts(dataset.inputs if dataset is not None else None, meas.batch_size, meas.sequence_length,
                              art.manifest.preprocess)
    for name, arr in encoder.encode(lat_texts, pad_to=meas.sequence_length).items():
        arrays[f"lat.artifact.{name}"] = arr

    models = {"artifact": _model_spec(art, "artifact")}
    files: dict[str, Path] = {}
    hashes: dict[str, str] = {}
    _ship_model(art, "artifact", files, hashes)
    base_art = None
    if config.baseline and teacher is not None:
        if profile.budgets.min_speedup is not None:
            base_art = baseline_artifact(teacher, runtime, art)
        else:
            log.info("no speedup budget in profile %s: the FP32 baseline is not sent", profile.name)
    if base_art is not None:
        models["baseline"] = _model_spec(base_art, "baseline")
        _ship_model(base_art, "baseline", files, hashes)
        for name, arr in encoder_for(base_art).encode(lat_texts, pad_to=meas.sequence_length).items():
            arrays[f"lat.baseline.{name}"] = arr

    _npz(arrays, tmpdir / "inputs.npz")
    files["inputs.npz"] = tmpdir / "inputs.npz"
    hashes["inputs.npz"] = sha256_file(tmpdir / "inputs.npz")
    files["runner.py"] = RUNNER
    hashes["runner.py"] = sha256_file(RUNNER)
    from compress.device import SHIPPED_NAME

    files[SHIPPED_NAME] = DEVICE
    hashes[SHIPPED_NAME] = sha256_file(DEVICE)
    job = {
        "version": 1,
        "runtime": runtime,
        "provider": settings.provider,
        "threads": settings.threads,
        "options": settings.options,
        "models": models,
        "eval_batches": n_batches,
        "measure": {"warmup": meas.warmup, "min_runs": meas.min_runs, "min_duration_s": meas.min_duration_s,
                    "max_runs": meas.max_runs, "batch_size": meas.batch_size},
        "cold_start": config.cold_start,
        "files": hashes,
    }
    (tmpdir / "job.json").write_text(json.dumps(job, indent=1, default=str), encoding="utf-8")
    files["job.json"] = tmpdir / "job.json"
    return files, sha256_file(tmpdir / "job.json"), ref


def validate_remote(target: RemoteTarget, art: Artifact, profile, settings, dataset, teacher, config,
                    warnings: list[str], phase, t_start: float):
    """The remote half of :func:`compress.validation.validate` (called from it after data and teacher load)."""
    from compress.metrics import prediction_metrics
    from compress.validation.common import conclude

    m = art.manifest
    meas = profile.measure
    runtime = REMOTE_RUNTIMES[art.format]
    device = _Device(target)
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="edgecompress-remote-") as tmp:
        try:
            # the device first: a missing runtime or a wrong architecture fails before any work here
            phase(f"checking {target.spec}", None)
            device.preflight(runtime, settings.provider, str(art.format))
            _check_arch(target, profile, device.facts)
            device_match = _identify(target, profile, device.facts, warnings)
            files, job_sha, ref = _prepare(Path(tmp), art, profile, settings, dataset, teacher, config, runtime, phase)
            total = sum(p.stat().st_size for p in files.values())
            need = total + max(1 << 20, total // 20)
            if device.avail_bytes is not None and device.avail_bytes < need:
                raise RemoteError(
                    f"not enough free space on {target.spec}: {device.avail_bytes / 2**20:.1f} MiB free under "
                    f"{os.path.dirname(device.workdir)}, {need / 2**20:.1f} MiB needed",
                    hint="free space there, or point TMPDIR on the device at a bigger disk",
                )
            phase(f"sending {total / 2**20:.1f} MiB to {target.spec}", None)
            transfer_s = device.send(files)
            if _after_transfer is not None:
                _after_transfer(target, device.workdir)
            phase(f"measuring on {target.spec}", None)
            res = device.run(job_sha)
        finally:
            device.cleanup()

    metrics: dict[str, Any] = {}
    if dataset is not None:
        cand = np.load(io.BytesIO(base64.b64decode(res["outputs_npy_b64"])), allow_pickle=False)
        if len(cand) != len(dataset):
            raise RemoteError(f"the device returned {len(cand)} outputs for {len(dataset)} eval rows")
        metrics.update(prediction_metrics(m, cand, ref, dataset.labels))
    stats = {name: LatencyStats.from_samples(s, meas.batch_size) for name, s in res["latency_s"].items()}
    dev = res.get("device") or device.facts
    rt = res.get("runtime") or {}
    where = (f"remote: {target.destination} ({dev.get('hostname')}, {dev.get('cpu')}, {dev.get('machine')}), "
             f"{rt.get('runtime')} {rt.get('version')}")
    env = {
        "host": dev.get("hostname"),
        "machine": dev.get("machine"),
        "cpu": dev.get("cpu"),
        "python": dev.get("python"),
        "edgecompress": __version__,
        "runtime": rt,
        "measured_on": where,
        "remote": {
            "target": target.spec,
            "device": dev,
            "numpy": res.get("numpy"),
            "bytes_sent": total,
            "transfer_s": round(transfer_s, 3),
            "files_verified_on_device": res.get("verified_files"),
            "runner_phases_s": res.get("phases_s"),
        },
        "device_match": device_match,
        "controller": {"host": platform.node(), "machine": platform.machine(), "python": platform.python_version()},
        "measured_where": {
            "artifact_outputs_and_metric": where,
            "teacher_outputs": f"controller {platform.node()} (PyTorch FP32, the reference)",
            "tokenization": f"controller {platform.node()} (the artifact's tokenizer)",
            "latency": where,
            "baseline_latency": where if "baseline" in stats else None,
            "cold_start_and_peak_memory": (f"{where}; fresh process with numpy + runtime only (no tokenizer)"
                                           if res.get("cold_start") else None),
            "size": "artifact files (sha256 verified on the device)",
        },
    }
    return conclude(art, profile, teacher, metrics, stats, res.get("cold_start"), env, warnings, t_start)


def _identify(target: RemoteTarget, profile, facts: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    """Does the device match the profile's ``hardware.identify``? A mismatch is a warning: the figures
    are still the device's own, but the budgets are another device's. Same keys as a local run's
    ``environment.device_match`` (``host_*`` describe the device here); ``how`` is ``remote-class``,
    ``remote-identified`` or ``remote-not-identified``."""
    model = str(facts.get("model") or facts.get("cpu") or "")
    pattern = getattr(profile.hardware, "identify", None)
    out = {"is_device": True, "how": "remote-class", "host_arch": facts.get("machine"), "host_model": model,
           "reason": f"measured on {target.destination} ({model}); {profile.name} describes a class of CPUs"}
    if pattern:
        if re.search(pattern, model, flags=re.IGNORECASE):
            out.update(how="remote-identified",
                       reason=f"{target.destination} ({model}) matches {profile.name}'s identify /{pattern}/")
        else:
            out.update(is_device=False, how="remote-not-identified",
                       reason=f"{target.destination} ({model}) does not match {profile.name}'s identify /{pattern}/")
            warnings.append(
                f"{target.spec} ({model}) does not match profile {profile.name}'s identify /{pattern}/: the figures "
                f"are that device's, judged against {profile.name}'s budgets"
            )
    return out


def _check_arch(target: RemoteTarget, profile, facts: dict[str, Any]) -> None:
    """The profile must describe a device of the architecture we reached."""
    machine = str(facts.get("machine", "")).lower()
    arch = _ARCH.get(machine, machine)
    want = str(profile.hardware.arch)
    if arch and arch != want:
        raise RemoteError(
            f"{target.spec} is {machine} ({facts.get('cpu')}) but profile {profile.name} describes an {want} device",
            hint="use the profile of this device (`edgecompress profiles list`) or a YAML file describing it",
        )

