"""Where output is written: staging directories that clean up after themselves, and the user's
environment (a read-only or full disk, no permission, a quota) told apart from a failing stage.

- :func:`storage_error` turns an ``OSError`` (or a library error caused by one, or a C++ exception
  whose text is ``No space left on device``) into one :class:`~compress.errors.StorageError` naming
  the path, the free space there and roughly what was needed. Everything that writes output maps
  its errors through it (:func:`staged_dir`; the CLI for the rest), so a full disk is never
  reported as an unsupported architecture.
- :func:`staged_dir` is where every command writes a new output: a staging directory beside it, renamed into place
  only when complete (:func:`check_output` refuses an existing one without ``--force`` before any work).
- :func:`make_staging` creates a hidden ``.NAME.XXXX.partial`` (or ``.old``) sibling with an owner
  record (pid, host); :func:`sweep_stale` removes the siblings of a previous run of the same output
  that was killed (its pid is gone), and nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from compress import interrupt
from compress.errors import OutputExistsError, StorageError

log = logging.getLogger(__name__)

OWNER = ".edgecompress-owner"
FULL_BELOW = 1 << 20  # a write that failed with less than this free on its file system ran out of space

_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a parent of the path is a file, not a directory",
    errno.EFBIG: "the file is too large for this file system",
    errno.ENAMETOOLONG: "the path is too long",
}
# the text C++ libraries (ONNX Runtime, OpenVINO, torch) put in their exceptions for the same causes
_TEXTS = {
    "no space left on device": errno.ENOSPC,
    "disk quota exceeded": errno.EDQUOT,
    "read-only file system": errno.EROFS,
}
_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n < 10e9 else f"{n / 1e9:,.1f} GB"


def _existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path if path.is_dir() else path.parent


def free_bytes(path: Path | str) -> int | None:
    """Bytes free for this user on the file system holding ``path`` (its nearest existing parent)."""
    try:
        return shutil.disk_usage(_existing(Path(path))).free
    except OSError:
        return None


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it is gone)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def _cause(exc: BaseException) -> tuple[int, str | None] | None:
    """(errno, filename) of the environment error in ``exc``'s chain, if any."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, StorageError):
            return None
        if isinstance(e, OSError) and e.errno in _REASONS:
            return e.errno, e.filename
        text = str(e).lower()
        for needle, code in _TEXTS.items():
            if needle in text:
                return code, None
        e = e.__cause__ or e.__context__
    return None


def _opaque(exc: BaseException) -> bool:
    """An error that may hide a failed write: a third-party exception or a stage wrapper around one."""
    from compress.errors import EdgeCompressError, StageError

    if isinstance(exc, KeyboardInterrupt):
        return False
    return not isinstance(exc, EdgeCompressError) or type(exc) is StageError


def classify(exc: BaseException, out: Path | str | None = None) -> tuple[int, str | None] | None:
    """(errno, filename) when the user's environment caused ``exc``, else None.

    The chain is searched for an ``OSError`` with an environment errno or a C++ message saying so.
    When it names no cause but the file system of ``out`` has less than 1 MB free, a third-party
    failure is taken as a full disk (C++ writers rarely say why). Call it before cleaning up.
    """
    if isinstance(exc, StorageError):
        return _cause(exc.__cause__) if exc.__cause__ is not None else None
    found = _cause(exc)
    if found is None and out is not None and _opaque(exc):
        free = free_bytes(out)
        if free is not None and free < FULL_BELOW:
            found = (errno.ENOSPC, None)
    return found


def describe(
    found: tuple[int, str | None], out: Path | str | None = None, *, need_bytes: int | None = None,
    written_bytes: int = 0, scratch: Path | None = None,
) -> StorageError:
    """One line for an environment failure: the path, the reason, and for a full disk the free space
    there and roughly what the step needs (``need_bytes``, or more than the ``written_bytes`` it wrote).
    A path inside the staging directory ``scratch`` is named as the output ``out`` it was to become."""
    code, filename = found
    path = Path(filename) if filename else (Path(out) if out is not None else None)
    if path is not None and scratch is not None and out is not None:
        with contextlib.suppress(ValueError):
            path = Path(out) / Path(os.path.abspath(path)).relative_to(os.path.abspath(scratch))
    where = f"cannot write {path}" if path is not None else "cannot write the output"
    reason = _REASONS.get(code, "input/output error")
    if code in _SPACE:
        parts = [f"{where}: {reason}"]
        free = free_bytes(path) if path is not None else None
        if free is not None and path is not None:
            parts.append(f"{_mb(free)} free on {_existing(path)}")
        if need_bytes:
            parts.append(f"it needs about {_mb(max(need_bytes, written_bytes))}")
        elif written_bytes:
            parts.append(f"it needs more than the {_mb(written_bytes)} it had written")
        return StorageError(", ".join(parts), hint=_hint(path, "free up space there or choose another location"))
    if code == errno.ENOTDIR:
        return StorageError(f"{where}: {reason}", hint="choose an output path whose parents are directories")
    return StorageError(f"{where}: {reason}", hint=_hint(path, "choose a location you can write to"))


def storage_error(exc: BaseException, out: Path | str | None = None, *,
                  need_bytes: int | None = None) -> StorageError | None:
    """A :class:`StorageError` for ``exc`` when the user's environment caused it, else None."""
    if isinstance(exc, StorageError):
        return exc
    found = classify(exc, out)
    return describe(found, out, need_bytes=need_bytes) if found is not None else None


def _hint(path: Path | None, hint: str) -> str:
    from compress.cache import ENV_DIR, cache_root

    try:
        if path is not None and Path(os.path.abspath(path)).is_relative_to(os.path.abspath(cache_root())):
            return f"it is edgecompress's cache: {hint} (set {ENV_DIR}), or pass --no-cache where the command has it"
    except (OSError, ValueError):
        pass
    return hint


# -- staging directories ----------------------------------------------------------------------------

def make_staging(out: Path, suffix: str = ".partial") -> Path:
    """A new hidden ``.OUT.XXXX<suffix>`` directory beside ``out``, recording this process as its owner."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=suffix, dir=out.parent))
    try:
        (tmp / OWNER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def release(tmp: Path) -> None:
    """Remove the owner record (before the staging directory becomes the output)."""
    (tmp / OWNER).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def sweep_stale(out: Path) -> list[Path]:
    """Remove ``.OUT.*.partial`` / ``.OUT.*.old`` siblings left by a killed run of this output.

    Only directories with an owner record naming this host and a pid that no longer runs are removed:
    a concurrent run's staging directory, or anything edgecompress did not create, is left alone.
    """
    removed: list[Path] = []
    host = socket.gethostname()
    try:
        candidates = [p for p in out.parent.glob(f".{out.name}.*") if p.suffix in (".partial", ".old")]
    except OSError:
        return removed
    for p in candidates:
        try:
            owner = json.loads((p / OWNER).read_text())
            pid, owner_host = int(owner["pid"]), owner["host"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if owner_host != host or pid == os.getpid() or _alive(pid):
            continue
        shutil.rmtree(p, ignore_errors=True)
        if not p.exists():
            removed.append(p)
            log.info("removed %s, left by an earlier run (pid %d) that was killed", p, pid)
    return removed


def check_output(out: Path | str, force: bool, flag: str = "--out") -> Path:
    """Fail early when ``out`` exists and ``force`` is off; return it as a Path. ``flag``: the option that named it
    (what the message tells the user to change)."""
    out = Path(out)
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists", hint=f"choose another {flag} or pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a directory", hint=f"choose another {flag}")
    parent = out.parent
    while parent != parent.parent and not parent.exists():
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise OutputExistsError(f"cannot write {out}: {parent} is a file, not a directory",
                                hint=f"choose a {flag} whose parent is a directory")
    return out


@contextlib.contextmanager
def staged_dir(out: Path | str, force: bool = False, *, need_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; rename it to ``out`` only if the block succeeds.

    The staging directory is removed on any error, Ctrl-C or SIGTERM (the CLI turns SIGTERM into
    KeyboardInterrupt), and staging directories of an earlier run of the same output that was killed
    are removed first. A full disk, a quota, a read-only or unwritable location raises
    :class:`~compress.errors.StorageError` naming ``out`` (``need_bytes``: what the step expects to
    write, for the message), whatever wrapper the failure came through.
    """
    out = check_output(out, force)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(out)
        tmp = make_staging(out)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
    except OSError as e:  # the location cannot be written at all: name it, not the staging directory
        found = classify(e)
        if found is None:
            raise
        where = out.parent if out.parent.is_dir() else out
        raise describe((found[0], None), where, need_bytes=need_bytes) from e
    try:
        yield tmp
        interrupt.check()  # a Ctrl-C a library swallowed while the output was made: it is not committed
        release(tmp)
        if out.exists():
            old = make_staging(out, ".old")
            os.replace(out, old / "x")
            try:
                os.replace(tmp, out)
                interrupt.note_written(out)
            except BaseException:
                if tmp.exists():  # not renamed: put the previous output back
                    os.replace(old / "x", out)
                else:  # renamed, then interrupted: the new output stands, complete; the previous one goes
                    shutil.rmtree(old, ignore_errors=True)
                raise
            finally:
                if not (old / "x").exists():
                    shutil.rmtree(old, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
            interrupt.note_written(out)
    except BaseException as e:
        if not tmp.exists() and out.exists():  # renamed into place, then interrupted: complete, and said so
            interrupt.note_written(out)
        found = classify(e, out) if isinstance(e, Exception) else None  # before the space is freed
        written = tree_bytes(tmp) if found else 0
        shutil.rmtree(tmp, ignore_errors=True)
        if found is not None:
            raise describe(found, out, need_bytes=need_bytes, written_bytes=written, scratch=tmp) from e
        raise


def safetensors_header(file: Path) -> tuple[int, dict]:
    """The JSON header of the safetensors ``file`` (tensor names -> dtype, shape, data offsets; no tensor read) and
    its length in bytes (the tensors' data starts 8 bytes after it). ValueError where the file is shorter than its
    header or the declared length is out of range."""
    size = Path(file).stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("file shorter than its header")
        n = int.from_bytes(head, "little")
        if n <= 0 or n > size - 8:
            raise ValueError("header length out of range")
        return n, json.loads(f.read(n))
