"""edgecompress's on-disk cache, shared by every command that reuses work between runs.

What it holds, one folder per kind under the cache directory:

- ``baselines/KEY/``: the teacher's FP32 export that ``validate`` times beside the artifact (speedup);
- ``teacher-outputs/KEY.npz``: the teacher's (PyTorch FP32) outputs on an eval set, so a second
  ``validate`` on the same teacher and data does not run the teacher again;
- ``gguf-checkpoints/SHA/``: the checkpoint a ``.gguf`` dequantizes to (``compress.teachers.gguf_checkpoint``), made
  again from the file when it has been removed.

Where: ``$EDGECOMPRESS_CACHE_DIR``, default ``~/.cache/edgecompress``. Size: capped at
``$EDGECOMPRESS_CACHE_MB`` MiB (default 2048); after each write the least recently used entries are
removed until the cache fits (the entry just used is always kept). Deleting the directory clears it.

Leases: a command that reads an entry for a while (the checkpoint a ``.gguf`` dequantizes to, which an export reads for
minutes) holds it with :func:`lease` until the process ends: a shared ``flock`` on ``leases/KIND--NAME``. Eviction,
by this process or any other, takes that file's exclusive lock without waiting and skips the entry when it cannot;
the kernel drops a dead process's locks, so the lease of a process that died is no lease. Where ``fcntl`` is missing
(Windows) there are no leases.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from compress.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no leases
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

ENV_DIR = "EDGECOMPRESS_CACHE_DIR"
ENV_LIMIT = "EDGECOMPRESS_CACHE_MB"
DEFAULT_LIMIT_MB = 2048
KINDS = ("baselines", "teacher-outputs", "gguf-checkpoints")
MB = 1024 * 1024
STALE_PARTIAL_S = 3600.0  # a staging file this old belongs to a writer that died
LEASES = "leases"  #: the folder of the entries' lease files (not an entry: it is no kind)
_HELD: dict[str, int] = {}  #: this process's leases: lease file -> its open descriptor (the shared lock)


def cache_root() -> Path:
    """The cache directory: $EDGECOMPRESS_CACHE_DIR, else ~/.cache/edgecompress."""
    value = os.environ.get(ENV_DIR, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "edgecompress"


def limit_mb() -> float:
    """The size cap in MiB from $EDGECOMPRESS_CACHE_MB (default 2048)."""
    value = os.environ.get(ENV_LIMIT, "").strip()
    if not value:
        return float(DEFAULT_LIMIT_MB)
    try:
        limit = float(value)
    except ValueError:
        limit = -1.0
    if limit < 0:
        raise ConfigError(f"{ENV_LIMIT}={value!r} is not a size in MiB",
                          hint=f"set {ENV_LIMIT} to a number >= 0, e.g. {DEFAULT_LIMIT_MB}, or unset it")
    return limit


def kind_dir(kind: str) -> Path:
    return cache_root() / kind


def _size(path: Path) -> int:
    try:
        if path.is_dir() and not path.is_symlink():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
        return path.stat().st_size
    except OSError:  # removed by another process meanwhile
        return 0


def _entries() -> list[Path]:
    out: list[Path] = []
    for kind in KINDS:
        d = kind_dir(kind)
        if d.is_dir():
            out.extend(d.iterdir())
    return out


def touch(path: Path) -> None:
    """Mark an entry as just used (its mtime orders the least-recently-used eviction)."""
    try:
        os.utime(path)
    except OSError:
        pass


def size_bytes() -> int:
    return sum(_size(p) for p in _entries())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _lease_file(entry: Path) -> Path:
    return cache_root() / LEASES / f"{entry.parent.name}--{entry.name}"


def _lock(file: Path, *, exclusive: bool) -> int | None:
    """An open descriptor of ``file`` (created) holding its ``flock``: shared (waiting for an evictor's exclusive
    lock), or exclusive without waiting (None when a lease holds it). The lock is on the file the path names now: an
    evictor unlinks it once the entry is gone, so a lock taken on an unlinked file is taken again."""
    file.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX | fcntl.LOCK_NB) if exclusive else fcntl.LOCK_SH)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.fstat(fd).st_ino == os.stat(file).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def lease(entry: Path) -> None:
    """Hold the cache entry ``entry`` (there, or about to be made) against eviction by any process until this process
    ends or :func:`release`. Taken before the entry is looked at, so an evictor either removed it already (it is made
    again) or waits for nothing and skips it. Idempotent."""
    file = _lease_file(Path(entry))
    if fcntl is None or str(file) in _HELD:
        return
    fd = _lock(file, exclusive=False)
    if fd is not None:
        _HELD[str(file)] = fd


def release(entry: Path) -> None:
    """Give back this process's :func:`lease` on ``entry`` (nothing when it holds none)."""
    fd = _HELD.pop(str(_lease_file(Path(entry))), None)
    if fd is not None:
        os.close(fd)


def _evict(path: Path) -> bool:
    """Remove the entry ``path`` unless a lease holds it (then False)."""
    if fcntl is None:
        _remove(path)
        return True
    file = _lease_file(path)
    fd = _lock(file, exclusive=True)
    if fd is None:
        log.info("cache: kept %s (a running command holds it)", path)
        return False
    try:
        _remove(path)
        file.unlink(missing_ok=True)
    finally:
        os.close(fd)
    return True


def enforce_limit(keep: Path | None = None) -> list[Path]:
    """Remove least recently used entries (and dead writers' staging files) until the cache fits its cap; ``keep``
    and the entries a command holds (:func:`lease`) stay."""
    cap = limit_mb() * MB
    now = time.time()
    removed: list[Path] = []
    entries = []
    for p in _entries():
        try:
            mtime = p.stat().st_mtime
        except OSError:
            continue
        if p.name.startswith(".") and now - mtime > STALE_PARTIAL_S:
            _remove(p)
            removed.append(p)
        elif not p.name.startswith("."):
            entries.append((mtime, p))
    total = sum(_size(p) for _, p in entries)
    for _, p in sorted(entries, key=lambda e: e[0]):
        if total <= cap:
            break
        if keep is not None and p.resolve() == keep.resolve():
            continue
        size = _size(p)
        if not _evict(p):
            continue
        removed.append(p)
        total -= size
        log.info("cache: removed %s (%.1f MB, least recently used) to stay under %g MB", p, size / MB, cap / MB)
    return removed


def over_limit(size: int, what: str) -> str | None:
    """One line when an entry of ``size`` bytes (``what``, in words) is larger than the cache's whole cap, said before
    it is made: it is still made and kept while the command holds it, and the next write anywhere drops it; the line
    names the setting that would hold it. None when it fits."""
    cap = limit_mb()
    if size <= cap * MB:
        return None
    need = 1024 * math.ceil(size * 1.1 / MB / 1024)  # the entry and a tenth more, in whole GiB
    return (f"{what} (about {size / MB:,.{0 if size >= 10 * MB else 1}f} MB) is larger than the whole cache ({ENV_LIMIT}={cap:g} MB): it is kept "
            f"while this command uses it, then the next command that writes to the cache drops it and it is made "
            f"again when needed; set {ENV_LIMIT}={need} (or more) to keep it")


def usage() -> dict[str, Any]:
    """Where the cache is, how big it is and its cap, for reports and the -v log."""
    return {"dir": str(cache_root()), "size_mb": round(size_bytes() / MB, 1), "limit_mb": limit_mb()}


def describe(info: dict[str, Any]) -> str:
    """One line for the user: the cache's place and size, and what this run did with it."""
    what = {"hit": "the teacher's outputs were reused from it", "stored": "the teacher's outputs were stored in it",
            "off": "not used for the teacher's outputs (--no-cache)"}.get(info.get("teacher_outputs", ""), "")
    return (f"cache: {info['dir']} ({info['size_mb']:.1f} MB of {info['limit_mb']:g} MB, {ENV_LIMIT}; "
            f"{ENV_DIR} moves it)" + (f"; {what}" if what else ""))
