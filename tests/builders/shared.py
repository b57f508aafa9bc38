"""Real models and data from ``../shared``, the folder beside the clone that CI has and a fresh clone does not. A test
that needs one of its files skips, saying which, where the file is not there: :func:`needs_shared` marks a test (or, as
``pytestmark``, a module); :func:`shared_file` skips a fixture or a test from inside. Small files the unit tests read
live in ``tests/assets`` instead."""

from __future__ import annotations

from pathlib import Path

#: the folder beside the clone with the real models (``models/``) and data sets (``data/``)
SHARED = Path(__file__).resolve().parents[3] / "shared"


def shared_missing(*paths: str | Path) -> str | None:
    """Why a test that reads ``paths`` (under :data:`SHARED`: relative to it, or a constant such as
    ``tests.builders.lm.STORIES``) cannot run here, or None when every one is there."""
    missing = [(SHARED / p).relative_to(SHARED).as_posix() for p in paths if not (SHARED / p).exists()]
    if not missing:
        return None
    return f"needs ../shared/{', ../shared/'.join(missing)} (real models and data beside the clone; not here)"


def needs_shared(*paths: str | Path):
    """A skip marker for a test (or, as ``pytestmark``, a module) that reads ``paths`` of :data:`SHARED`."""
    import pytest

    reason = shared_missing(*paths)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def shared_file(path: str | Path) -> Path:
    """``SHARED / path``; skips the calling test or fixture where it is not there."""
    reason = shared_missing(path)
    if reason is not None:
        import pytest

        pytest.skip(reason)
    return SHARED / path
