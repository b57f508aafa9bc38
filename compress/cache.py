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
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from compress.errors import ConfigError

log = logging.getLogger(__name__)

ENV_DIR = "EDGECOMPRESS_CACHE_DIR"
ENV_LIMIT = "EDGECOMPRESS_CACHE_MB"
DEFAULT_LIMIT_MB = 2048
KINDS = ("baselines", "teacher-outputs", "gguf-checkpoints")
MB = 1024 * 1024
STALE_PARTIAL_S = 3600.0  # a staging file this old belongs to a writer that died


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


def enforce_limit(keep: Path | None = None) -> list[Path]:
    """Remove least recently used entries (and dead writers' staging files) until the cache fits its cap."""
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
        _remove(p)
        removed.append(p)
        total -= size
        log.info("cache: removed %s (%.1f MB, least recently used) to stay under %g MB", p, size / MB, cap / MB)
    return removed


def usage() -> dict[str, Any]:
    """Where the cache is, how big it is and its cap, for reports and the -v log."""
    return {"dir": str(cache_root()), "size_mb": round(size_bytes() / MB, 1), "limit_mb": limit_mb()}


def describe(info: dict[str, Any]) -> str:
    """One line for the user: the cache's place and size, and what this run did with it."""
    what = {"hit": "the teacher's outputs were reused from it", "stored": "the teacher's outputs were stored in it",
            "off": "not used for the teacher's outputs (--no-cache)"}.get(info.get("teacher_outputs", ""), "")
    return (f"cache: {info['dir']} ({info['size_mb']:.1f} MB of {info['limit_mb']:g} MB, {ENV_LIMIT}; "
            f"{ENV_DIR} moves it)" + (f"; {what}" if what else ""))
