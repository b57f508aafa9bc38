"""The one decoder of users' text files: UTF-8 (a BOM dropped), or a one-line
:class:`~compress.errors.DataError` naming the file, where its bytes stop being UTF-8 (or that it is binary) and the
fix. Every reader of a user's text (plain text, prompts, tables, tagged words, SQuAD and COCO JSON, a search's split)
decodes through :func:`read_utf8` or :func:`utf8_lines`, never through ``Path.read_text``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from compress.errors import DataError

__all__ = ["not_utf8", "read_utf8", "utf8_lines"]


def not_utf8(file: Path, offset: int, line_no: int, first: bytes) -> DataError:
    """The error for ``file`` whose bytes stop being UTF-8 at ``offset`` (on line ``line_no``); ``first``: its first
    bytes (a UTF-16 BOM is named)."""
    what = " (it looks like UTF-16)" if first.startswith((b"\xff\xfe", b"\xfe\xff")) else ""
    return DataError(
        f"{file} is not valid UTF-8{what}: undecodable byte at offset {offset} (line {line_no})",
        hint=f"re-encode it as UTF-8, e.g. iconv -f cp1252 -t utf-8 {file.name} > utf8-{file.name}",
    )


def _binary(file: Path, offset: int, line_no: int) -> DataError:
    return DataError(f"{file} is binary, not text: a NUL byte at offset {offset} (line {line_no})",
                     hint="give a UTF-8 text file")


def read_utf8(path: str | Path) -> str:
    """The text of ``path`` decoded as UTF-8 (a BOM dropped); bytes that are not UTF-8, or a NUL byte -> DataError."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DataError(f"{p}: cannot read it ({e.strerror or e})", hint="check the path and its permissions") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise not_utf8(p, e.start, data.count(b"\n", 0, e.start) + 1, data[:2]) from None
    nul = data.find(b"\x00")
    if nul >= 0:
        raise _binary(p, nul, data.count(b"\n", 0, nul) + 1)
    return text


def utf8_lines(path: str | Path) -> Iterator[str]:
    """Lines of ``path`` decoded as UTF-8 (line endings kept, BOM dropped), read as they are needed; bad bytes or a
    NUL byte -> DataError."""
    file = Path(path)
    offset = 0
    with open(file, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise not_utf8(file, offset + e.start, line_no, raw if line_no == 1 else b"") from None
            if "\x00" in line:
                raise _binary(file, offset + raw.index(b"\x00"), line_no)
            if line_no == 1 and line.startswith("\ufeff"):
                line = line[1:]
            offset += len(raw)
            yield line
