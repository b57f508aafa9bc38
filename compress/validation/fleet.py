"""Validation on a fleet: one artifact measured on several devices over SSH at once, a verdict per device and one
overall (the worst).

``validate ARTIFACT --remote a@board1 --remote b@board2`` (or ``--remote a@board1,b@board2``) measures on each
device with ``--profile``; ``--remote fleet.yaml`` names the devices in a file, each with its own profile, user,
port, key and Python (:class:`FleetFile`). In order:

1. every device is checked at once (threads: the work there is waiting on ssh): Python, numpy, the runtime, the
   profile's ``hardware.arch`` against the device's ``uname -m``. A device that does not answer is marked
   ``unreachable``; a device that answers but cannot run this (wrong architecture, no runtime, a refused key) is
   bad input: one line naming it, exit 2, after every device was cleaned up;
2. the controller's work runs once per distinct profile (tokenizing, the teacher, the FP32 baseline:
   :func:`compress.validation.remote.prepare_job`), not once per device;
3. every device that answered gets its job and measures at once; a device that drops off mid-run (its connection
   refused, closed or timed out) is marked ``unreachable`` with the phase it was in, any other failure there
   ``error`` with its message, and the others' results are kept;
4. every work directory is removed (those of devices that dropped off cannot be, and the report says so), then each
   device's outputs are judged here against its own profile (:func:`compress.validation.remote.judge`).

The :class:`FleetReport`'s ``verdict`` is the worst device's: ``fail`` > ``incomplete`` (a device did not answer
or failed there; none failed a budget) > ``anomalous`` > ``unverified`` > ``pass``.
"""

from __future__ import annotations

import dataclasses
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from compress.errors import ConfigError, EdgeCompressError
from compress.interrupt import sigterm_as_interrupt
from compress.progress import start_phase
from compress.validation.common import ValidationReport, ValidationRun
from compress.validation.ssh import (
    DeviceSession,
    DeviceUnreachable,
    RemoteTarget,
    check_python,
    check_remote_profile,
    parse_remote,
    remote_target,
    ssh_setup,
)

FLEET_SUFFIXES = (".yaml", ".yml")
FLEET_SCHEMA_VERSION = 1
MAX_PARALLEL = 32  # devices measured at once (each is a thread waiting on ssh)
#: a device's status, worst first; the overall verdict is the worst device's (unreachable/error -> incomplete)
ORDER = ("fail", "error", "unreachable", "anomalous", "unverified", "pass")
LOST = ("unreachable", "error")


# -- the fleet ------------------------------------------------------------------------------------------------

class FleetEntry(BaseModel):
    """One device of a fleet file."""

    model_config = ConfigDict(extra="forbid")
    host: str = Field(description="Host name, address or ~/.ssh/config alias (user and port as their own keys).")
    name: str | None = Field(None, description="The device's name in reports [default: host, with :port if given].")
    user: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    key: str | None = Field(None, description="Private key for ssh -i (relative to the fleet file).")
    profile: str | None = Field(None, description="Its profile: a built-in name or a YAML path [default: --profile].")
    python: str | None = Field(None, description="Python on the device [default: --remote-python].")
    ssh_config: str | None = Field(None, description="ssh_config for ssh -F [default: the file's, else --ssh-config].")


class FleetFile(BaseModel):
    """A fleet file: defaults for every device, then the devices.

    .. code-block:: yaml

        profile: raspberry-pi-5      # default for devices without one (else --profile)
        user: pi
        key: ~/.ssh/boards           # ssh -i; relative paths are relative to this file
        devices:
          - host: 10.0.0.11
          - {host: 10.0.0.12, port: 2222, name: shelf-2}
          - {host: jetson.lan, user: nvidia, profile: jetson-orin-nano-cpu, python: ~/venv/bin/python}
    """

    model_config = ConfigDict(extra="forbid")
    profile: str | None = None
    user: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    key: str | None = None
    python: str | None = None
    ssh_config: str | None = Field(None, description="ssh_config for ssh -F [default: --ssh-config].")
    devices: list[FleetEntry] = Field(min_length=1)


@dataclass(frozen=True)
class FleetDevice:
    name: str
    target: RemoteTarget
    profile: Any  # compress.profiles.schema.DeviceProfile, its runtime resolved for the artifact


@dataclass(frozen=True)
class Fleet:
    """The devices one validation measures on, each checked against its profile (:func:`fleet_of`)."""

    devices: list[FleetDevice]
    source: str  # what named them: the --remote list, or the fleet file


def remote_of(config, profile, art, *, fleet: bool):
    """What ``config.remote`` names, checked before any work: a :class:`Fleet` of the devices it names (``fleet``:
    :func:`compress.validation.local.validate_fleet`, one device included), else one device's
    :class:`compress.validation.ssh.RemoteTarget` (:func:`compress.validation.local.validate`, which refuses several:
    its callers, a recipe's step and a search, read one device's report)."""
    if fleet:
        return fleet_of(config, profile, art)
    if is_fleet(config.remote):
        raise ConfigError(f"remote {config.remote!r} names several devices; this validation (a recipe's step, "
                          "validate()) measures on one",
                          hint="use `edgecompress validate --remote ...` (or compress.validation.local."
                          "validate_fleet) for several devices, or name one user@host[:port]")
    return remote_target(config, profile, art)


def measure_remote(target, run: ValidationRun):
    """Measure ``run`` on ``target`` (:func:`remote_of`'s): one device's report, or a :class:`FleetReport`."""
    from compress.validation.remote import validate_remote

    return measure_fleet(target, run) if isinstance(target, Fleet) else validate_remote(target, run)


def is_fleet(remote: str | None) -> bool:
    """Does ``--remote`` name several devices (a comma list) or a fleet file (``.yaml``/``.yml``)?"""
    value = (remote or "").strip()
    return "," in value or value.lower().endswith(FLEET_SUFFIXES)


def _resolve(path: str | None, base: Path) -> str | None:
    if not path:
        return None
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else base / p)


def read_fleet_file(path: Path) -> FleetFile:
    """A fleet file, checked: one line naming the file and the key on any problem."""
    if not path.is_file():
        raise ConfigError(f"--remote {path}: no such fleet file",
                          hint="pass user@host[:port], a comma list of them, or a fleet YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: not a readable YAML fleet file ({str(e).splitlines()[0]})") from None
    try:
        return FleetFile.model_validate(data if data is not None else {})
    except ValidationError as e:
        err = e.errors()[0]
        where = " -> ".join(str(x) for x in err["loc"]) or "top level"
        raise ConfigError(f"{path}: {where}: {err['msg']}",
                          hint="see docs/guides/remote.md (a fleet file: devices: [{host: ..., profile: ...}])") from None


def _entries(config) -> list[tuple[str, FleetEntry, Path | None, FleetFile | None]]:
    """(where it was named, the entry, its fleet file's folder, the file's defaults) for every device named."""
    out = []
    for item in (s.strip() for s in config.remote.split(",")):
        if not item:
            continue
        if item.lower().endswith(FLEET_SUFFIXES):
            path = Path(item).expanduser()
            fleet = read_fleet_file(path)
            for i, e in enumerate(fleet.devices, 1):
                out.append((f"{path}: device {i} ({e.name or e.host})", e, path.resolve().parent, fleet))
            continue
        user, host, port = parse_remote(item)
        out.append((f"--remote {item}", FleetEntry(host=host, user=user, port=port, name=item), None, None))
    if not out:
        raise ConfigError(f"--remote {config.remote!r}: names no device", hint="pass user@host[:port]")
    return out


def fleet_of(config, default_profile, art) -> Fleet:
    """The devices ``config.remote`` names (a comma list of ``user@host[:port]`` and fleet files), each checked
    before any work: spec, profile (loaded, its runtime the artifact's), Python, key; no host named twice."""
    from compress.profiles.load import load_profile
    from compress.runtimes.host import runtime_for

    python, ssh_config = ssh_setup(config)
    devices: list[FleetDevice] = []
    seen: dict[tuple[str, int | None], str] = {}
    names: dict[str, str] = {}
    profiles: dict[str, Any] = {}
    for where, e, base, file in _entries(config):
        d = file or FleetFile(devices=[e])  # the file's defaults (none for a --remote item)
        if base is not None and any(parse_remote(e.host)[0::2]):
            raise ConfigError(f"{where}: host {e.host!r} carries a user or port",
                              hint="give them as their own keys: user: and port:")
        user, port = e.user or d.user, e.port or d.port
        spec = f"{user + '@' if user else ''}{e.host}{f':{port}' if port else ''}"
        name = e.name or spec
        ident = (e.host.lower(), port or 22)  # ssh's default port: board and board:22 are one device
        if ident in seen:
            raise ConfigError(f"{where}: host {e.host} port {port or 22} is named twice (first as {seen[ident]})",
                              hint="name each device once")
        if name in names:
            raise ConfigError(f"{where}: device name {name!r} is used twice (first by {names[name]})",
                              hint="give each device its own name:")
        seen[ident], names[name] = where, where
        try:
            key = _resolve(e.key or d.key, base or Path.cwd())
            if key and not Path(key).is_file():
                raise ConfigError(f"key {key}: no such file")
            cfg = _resolve(e.ssh_config or d.ssh_config, base or Path.cwd()) or ssh_config
            if cfg and not Path(cfg).is_file():
                raise ConfigError(f"ssh_config {cfg}: no such file")
            profile = default_profile
            if prof_name := e.profile or d.profile:
                if base is not None and prof_name.lower().endswith(FLEET_SUFFIXES):
                    prof_name = _resolve(prof_name, base)
                if prof_name not in profiles:
                    profiles[prof_name] = runtime_for(load_profile(prof_name), art.format)
                profile = profiles[prof_name]
            check_remote_profile(config, profile, art)
            dev_python = check_python(e.python or d.python or python, "python")
        except EdgeCompressError as err:  # the same error, naming the device
            err.message = f"{where}: {err.message}"
            raise
        devices.append(FleetDevice(name, RemoteTarget(spec=spec, user=user, host=e.host, port=port, python=dev_python,
                                                      ssh_config=cfg, identity=key), profile))
    return Fleet(devices, config.remote.strip())


# -- the report -----------------------------------------------------------------------------------------------

class DeviceResult(BaseModel):
    """One device's row: its status (its report's verdict, or ``unreachable``/``error``) and its report."""

    name: str
    target: str
    profile: str
    status: str
    message: str | None = Field(None, description="Why it is unreachable or in error.")
    phase: str | None = Field(None, description="Where it stopped: checking, sending and measuring, judging.")
    left_on_device: str | None = Field(None, description="A work directory that could not be removed there.")
    seconds: float = 0.0
    report: ValidationReport | None = None


class FleetReport(BaseModel):
    """A validation on several devices: a row per device and the worst verdict."""

    schema_version: int = FLEET_SCHEMA_VERSION
    kind: str = "fleet"
    verdict: str
    fleet: str
    devices: list[DeviceResult]
    artifact: dict[str, Any]
    seconds: float = 0.0
    phases_s: dict[str, float] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    data: dict[str, Any] | None = None

    @property
    def lost(self) -> list[DeviceResult]:
        return [d for d in self.devices if d.status in LOST]

    def device_reports(self) -> dict[str, ValidationReport]:
        """Each judged device's report, with the fleet's eval-data record (what ``gate`` compares)."""
        return {d.name: d.report.model_copy(update={"data": self.data}) for d in self.devices if d.report is not None}


def overall(statuses: list[str]) -> str:
    worst = min(statuses, key=ORDER.index, default="pass")
    return "incomplete" if worst in LOST else worst


# -- the validation -------------------------------------------------------------------------------------------

def _device_run(run: ValidationRun, profile) -> ValidationRun:
    """``run`` for one device: its profile and the runtime settings that follow from it, its own warnings list,
    no progress (the threads report nothing; the fleet's phases do)."""
    from compress.runtimes.base import RuntimeSettings

    settings = RuntimeSettings(threads=profile.runtime.threads or profile.hardware.cores,
                               provider=profile.runtime.provider, options=dict(profile.runtime.options))
    return dataclasses.replace(run, profile=profile, settings=settings, warnings=list(run.warnings), progress=None)


def _at_once(pool: ThreadPoolExecutor, calls: dict[str, Any]) -> dict[str, tuple[Any, float]]:
    """Run every ``calls[name]()`` in ``pool`` at once; each one's (result or the exception it raised, seconds)."""
    took: dict[str, float] = {}

    def timed(name: str, fn) -> Any:
        t = time.perf_counter()
        try:
            return fn()
        finally:
            took[name] = time.perf_counter() - t

    futures = {name: pool.submit(timed, name, fn) for name, fn in calls.items()}
    out = {}
    for name, f in futures.items():
        exc = f.exception()
        out[name] = (exc if exc is not None else f.result(), took[name])
    return out


def _bad_input(errors: dict[str, EdgeCompressError], devices: dict[str, FleetDevice]) -> EdgeCompressError:
    """The first device's bad-input error (fleet order) as one line naming it, and how many more there are."""
    name, err = next(iter(errors.items()))
    more = f" (and {len(errors) - 1} more device(s): {', '.join(list(errors)[1:])})" if len(errors) > 1 else ""
    if devices[name].target.spec not in err.message:
        err.message = f"{name}: {err.message}"
    err.message += more
    return err


def measure_fleet(fleet: Fleet, run: ValidationRun) -> FleetReport:
    """Measure ``run.art`` on every device of ``fleet`` at once and judge each against its profile (module doc)."""
    import tempfile

    from compress.formats import remote_runtime
    from compress.validation.remote import check_device, judge, measure_on, prepare_job

    t0 = time.perf_counter()
    runtime = remote_runtime(run.art.format)
    devices = {d.name: d for d in fleet.devices}
    sessions = {n: DeviceSession(d.target) for n, d in devices.items()}
    runs = {n: _device_run(run, d.profile) for n, d in devices.items()}
    rows = {n: DeviceResult(name=n, target=d.target.spec, profile=d.profile.name, status="pending")
            for n, d in devices.items()}
    seconds = dict.fromkeys(devices, 0.0)  # each device's own: its check, then its transfer and run
    phases: dict[str, float] = {}
    measured: dict[str, Any] = {}
    jobs: dict[str, Any] = {}

    def lose(name: str, err: BaseException, phase: str) -> None:
        status = "unreachable" if isinstance(err, DeviceUnreachable) else "error"
        rows[name] = rows[name].model_copy(update={"status": status, "message": str(err), "phase": phase,
                                                   "seconds": round(seconds[name], 3)})

    pool = ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(devices)), thread_name_prefix="edgecompress-device")
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="edgecompress-fleet-") as tmp:
        try:
            start_phase(run.progress, f"checking {len(devices)} devices")
            checked = _at_once(pool, {n: (lambda n=n: check_device(sessions[n], runs[n], runtime)) for n in devices})
            bad = {}
            for n, (res, dt) in checked.items():
                seconds[n] += dt
                if isinstance(res, DeviceUnreachable):
                    lose(n, res, "checking")
                elif isinstance(res, BaseException):
                    if not isinstance(res, EdgeCompressError):
                        raise res
                    bad[n] = res
            if bad:  # a device that answered but cannot run this: bad input, nothing measured anywhere
                raise _bad_input(bad, devices)
            phases["checking"] = round(time.perf_counter() - t0, 3)
            alive = [n for n in devices if rows[n].status == "pending"]
            t1 = time.perf_counter()
            for n in alive:  # the controller's work, once per profile
                key = runs[n].profile.model_dump_json()
                if key not in jobs:
                    start_phase(run.progress, f"preparing the job for {runs[n].profile.name}")
                    folder = Path(tmp) / f"job{len(jobs)}"
                    folder.mkdir()
                    jobs[key] = prepare_job(dataclasses.replace(runs[n], progress=run.progress), runtime, folder)
            phases["preparing"] = round(time.perf_counter() - t1, 3)
            t2 = time.perf_counter()
            start_phase(run.progress, f"sending and measuring on {len(alive)} devices")
            done = _at_once(pool, {n: (lambda n=n: measure_on(sessions[n], jobs[runs[n].profile.model_dump_json()]))
                                   for n in alive})
            for n, (res, dt) in done.items():
                seconds[n] += dt
                if isinstance(res, BaseException):
                    if not isinstance(res, EdgeCompressError | OSError):
                        raise res
                    lose(n, res, "sending and measuring")
                else:
                    measured[n] = res
            phases["sending_and_measuring"] = round(time.perf_counter() - t2, 3)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            _clean_up(sessions)
            pool.shutdown(wait=True)
    for n, session in sessions.items():
        if session.workdir is not None:
            rows[n] = rows[n].model_copy(update={"left_on_device": session.workdir})
    t3 = time.perf_counter()
    for n, (res, transfer_s) in measured.items():
        try:
            report = judge(runs[n], sessions[n], jobs[runs[n].profile.model_dump_json()], res, transfer_s)
        except EdgeCompressError as e:
            lose(n, e, "judging")
            continue
        rows[n] = rows[n].model_copy(update={"status": report.verdict, "report": report,
                                             "seconds": round(seconds[n], 3)})
    phases["judging"] = round(time.perf_counter() - t3, 3)
    first = next((r.report for r in rows.values() if r.report is not None), None)
    art = first.artifact if first is not None else {"path": str(run.art.path), "format": str(run.art.format)}
    warnings = [f"{r.name} left {r.left_on_device} on the device (it stopped answering): remove it by hand"
                for r in rows.values() if r.left_on_device]
    return FleetReport(verdict=overall([r.status for r in rows.values()]), fleet=fleet.source,
                       devices=list(rows.values()), artifact=art, seconds=round(time.perf_counter() - t0, 3),
                       phases_s=phases, warnings=list(run.warnings) + warnings)


def _clean_up(sessions: dict[str, DeviceSession]) -> None:
    """Every device's work directory removed at once (a device that stopped answering keeps its own: logged)."""
    live = [s for s in sessions.values() if s.workdir is not None]
    if not live:
        return
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(live))) as cleaners:
        list(cleaners.map(DeviceSession.cleanup, live))


def device_dir_name(name: str) -> str:
    """A device's folder under the fleet report: its name with anything but letters, digits, ``._-`` as ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "device"
