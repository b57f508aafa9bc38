"""The target platform's wheels: ``pip download`` for a platform tag, unpacking, hashing."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from compress.errors import StageError
from compress.packaging.config import _canonical

log = logging.getLogger("compress.packaging.bundle")  # the verb's logger


# ----------------------------------------------------------------------------------------------------
# Wheels
# ----------------------------------------------------------------------------------------------------


def _pip_download_cmd(requirements: Path, dest: Path, platforms: list[str], python_version: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--dest", str(dest),
           "-r", str(requirements), "--disable-pip-version-check", "--no-input", "--progress-bar", "off"]
    if platforms:
        for tag in platforms:
            cmd += ["--platform", tag]
        cmd += ["--implementation", "cp"]
    if python_version:
        cmd += ["--python-version", python_version]
        if not platforms:
            cmd += ["--implementation", "cp"]
    return cmd


def _shell(cmd: list[str]) -> str:
    import shlex

    shown = ["pip", *cmd[3:]] if cmd[1:3] == ["-m", "pip"] else cmd
    return " ".join(shlex.quote(c) for c in shown)


_NET_ERRORS = ("Failed to establish a new connection", "Network is unreachable", "Temporary failure in name resolution",
               "Name or service not known", "ConnectTimeoutError", "Max retries exceeded", "ProxyError",
               "No route to host", "Connection refused", "Read timed out")


def _pip_download(cmd: list[str], timeout_s: float, target: str) -> list[Path]:
    """Run pip download; the wheels it saved. Errors name the target and the fix."""
    dest = Path(cmd[cmd.index("--dest") + 1])
    dest.mkdir(parents=True, exist_ok=True)
    log.info("resolving wheels for %s: %s", target, _shell(cmd))
    env = dict(os.environ, PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise StageError(f"pip download for {target} took longer than {timeout_s:.0f} s",
                         hint="check the network or the index (PIP_INDEX_URL), or package with --no-download") from None
    if proc.returncode != 0:
        text = proc.stderr + proc.stdout
        if any(s in text for s in _NET_ERRORS):
            raise StageError(f"pip download for {target}: the package index is unreachable",
                             hint="check the network or set PIP_INDEX_URL to a reachable mirror, or package with "
                                  "--no-download (sizes of the dependencies are then not measured)")
        missing = re.search(r"No matching distribution found for (\S+)", text)
        if missing:
            raise StageError(
                f"pip download: no wheel of {missing.group(1)} for {target}",
                hint="pin a version that publishes wheels for the target, e.g. --pin onnxruntime==VERSION "
                     "(see its files on pypi.org)",
            )
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-3:]
        raise StageError(f"pip download for {target} failed: {' / '.join(last)}", hint="rerun with -v to see pip's command")
    found = sorted(dest.glob("*.whl"))
    if not found:
        raise StageError(f"pip download for {target} saved no wheels", hint="rerun with -v to see pip's command")
    return found


def _wheel_name(whl: Path) -> tuple[str, str]:
    parts = whl.name[:-4].split("-")
    if len(parts) < 5:
        raise StageError(f"{whl.name}: not a wheel file name", hint="report this as a bug")
    return _canonical(parts[0]), parts[1]


def _safe_member(name: str) -> str | None:
    p = Path(name)
    if p.is_absolute() or ".." in p.parts or not name or name.endswith("/"):
        return None
    return p.as_posix()


def _unpack_wheel(whl: Path, root: Path) -> list[str]:
    """Unpack a wheel into ``root`` the way an install would lay it out (purelib/platlib at the top)."""
    written = []
    with zipfile.ZipFile(whl) as zf:
        for info in zf.infolist():
            rel = _safe_member(info.filename)
            if rel is None:
                continue
            first, _, rest = rel.partition("/")
            if first.endswith(".data"):
                kind, _, inner = rest.partition("/")
                if kind not in ("purelib", "platlib") or not inner:
                    continue  # scripts, headers, data: not importable, not needed by a handler
                rel = inner
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(target, 0o755 if mode & 0o111 else 0o644)
            written.append(rel)
    return written
