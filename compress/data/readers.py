"""Reading data files row by row: CSV/TSV and JSON Lines with the standard library, Parquet with pyarrow or
pandas, ``datasets.save_to_disk`` directories with datasets. Each reader yields ``(row, line, {column: value})``
and raises :class:`~compress.errors.DataError` naming the file, the row and the fix; :mod:`compress.data.tables` finds
the columns and maps the labels."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from compress._optional import is_available, require
from compress.data.utf8 import read_utf8, utf8_lines
from compress.errors import DataError, MissingBackendError

log = logging.getLogger("compress.data.tables")

SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_SPLIT_ORDER = ("validation", "test", "train")

# A record as read: (row number from 1, line number in a text file or None, {column: value}).
Row = tuple[int, int | None, dict[str, Any]]
RowReader = Callable[[list[str]], Iterator[Row]]


def _names(columns: list[str]) -> str:
    return ", ".join(columns) if columns else "(none)"


def split_path(path: str | Path) -> tuple[Path, str | None]:
    """``dir::split`` -> (dir, split); a path that exists as written is never split."""
    p = Path(path)
    s = str(path)
    if "::" in s and not p.exists():
        base, _, split = s.rpartition("::")
        if not split:
            raise DataError(f"{s}: empty split name after '::'", hint="write DIR::SPLIT, e.g. data::validation")
        return Path(base), split
    return p, None


def open_table(file: Path, split: str | None, source: str) -> tuple[list[str], RowReader]:
    """The columns of a data file (or a saved dataset's ``split``) and a reader of its rows: ``read(columns)`` yields
    ``(row, line, {column: value})``. ``source`` is the path as the user wrote it, for the errors."""
    if not file.exists():
        raise DataError(f"{file}: no such file or directory", hint="check the path")
    if file.is_dir():
        if not any((file / m).exists() for m in _DATASET_MARKERS):
            raise DataError(
                f"{file} is a directory but not a dataset saved with datasets' save_to_disk "
                f"(no {' / '.join(_DATASET_MARKERS)})",
                hint=f"point at a {', '.join(SUFFIXES)} file or a save_to_disk directory",
            )
        return _open_saved_dataset(file, split)
    if split is not None:
        raise DataError(
            f"{source}: '::{split}' picks a split of a saved dataset directory, but {file} is a file",
            hint=f"drop '::{split}'",
        )
    suffix = file.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(
            f"{file}: unsupported data format {suffix or '(no extension)'!r}",
            hint=f"use one of {', '.join(SUFFIXES)} or a datasets save_to_disk directory",
        )
    if file.stat().st_size == 0:
        raise DataError(f"{file} is empty", hint="point at a file with a header and at least one data row")
    if suffix in (".csv", ".tsv"):
        return _open_delimited(file, tsv=suffix == ".tsv")
    if suffix in (".jsonl", ".json"):
        return _open_json(file)
    return _open_parquet(file)


# --- text files ---------------------------------------------------------------------------------


def _open_delimited(file: Path, *, tsv: bool) -> tuple[list[str], RowReader]:
    kind = "TSV" if tsv else "CSV"
    fmt: dict[str, Any] = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if tsv else {"delimiter": ","}
    sep_hint = (
        "a tab inside a text cell splits it in two: remove tabs from the text, or use CSV/JSONL"
        if tsv
        else 'put text that contains commas in double quotes ("a, b"), or use TSV/JSONL'
    )

    def records() -> Iterator[tuple[int, list[str]]]:
        # csv refuses fields over 128 KiB by default; a long text is truncated by the tokenizer like any other
        csv.field_size_limit(2**31 - 1)
        reader = csv.reader(utf8_lines(file), **fmt)
        try:
            for fields in reader:
                if fields:  # blank lines are skipped
                    yield reader.line_num, fields
        except csv.Error as e:
            raise DataError(f"{file}: line {reader.line_num} is not valid {kind} ({e})", hint=sep_hint) from None

    with contextlib.closing(records()) as recs:
        first = next(recs, None)
    if first is None:
        raise DataError(f"{file} has no header and no rows", hint="the first line must name the columns")
    header = [h.strip() for h in first[1]]
    _check_header(file, header, kind)

    def read(needed: list[str]) -> Iterator[Row]:
        with contextlib.closing(records()) as recs:
            next(recs)  # header
            for row_no, (line_no, fields) in enumerate(recs, 1):
                if len(fields) != len(header):
                    raise DataError(
                        f"{file}: row {row_no} (line {line_no}) has {len(fields)} fields "
                        f"but the header has {len(header)}",
                        hint=sep_hint,
                    )
                yield row_no, line_no, dict(zip(header, fields))

    return header, read


def _check_header(file: Path, header: list[str], kind: str) -> None:
    seen: set[str] = set()
    for i, name in enumerate(header, 1):
        if not name:
            raise DataError(
                f"{file}: header column {i} has no name", hint=f"the first line of a {kind} file must name every column"
            )
        if name in seen:
            raise DataError(f"{file}: header names column {name!r} twice", hint="give every column a unique name")
        seen.add(name)


def _open_json(file: Path) -> tuple[list[str], RowReader]:
    # A .json file may be one array of objects; everything else is read as JSON lines.
    with open(file, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if file.suffix.lower() == ".json" and head.startswith(b"["):
        return _open_json_array(file)
    if file.suffix.lower() == ".json" and head.startswith(b"{") and b'"data"' in head:
        squad = _open_squad(file)  # question-answering data: one row per question
        if squad is not None:
            return squad

    def objects() -> Iterator[tuple[int, dict[str, Any]]]:
        for line_no, line in enumerate(utf8_lines(file), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{file}: line {line_no} is not valid JSON ({e.msg}, column {e.colno})",
                    hint='write one JSON object per line, e.g. {"text": "...", "label": 1}',
                ) from None
            if not isinstance(obj, dict):
                raise DataError(
                    f"{file}: line {line_no} is a JSON {type(obj).__name__}, not an object",
                    hint='write one JSON object per line, e.g. {"text": "...", "label": 1}',
                )
            yield line_no, obj

    with contextlib.closing(objects()) as objs:
        first = next(objs, None)
    if first is None:
        raise DataError(f"{file} has no rows (only blank lines)", hint="write one JSON object per line")
    columns = list(first[1])

    def read(needed: list[str]) -> Iterator[Row]:
        with contextlib.closing(objects()) as objs:
            for row_no, (line_no, obj) in enumerate(objs, 1):
                yield row_no, line_no, obj

    return columns, read


def _open_squad(file: Path) -> tuple[list[str], RowReader] | None:
    """A SQuAD-format document's questions as rows (:func:`compress.data.squad.squad_rows`), None for any other
    JSON object."""
    from compress.data.squad import is_squad, read_json, squad_rows

    doc = read_json(file)
    if not is_squad(doc):
        return None
    columns, items = squad_rows(file, doc)

    def read(needed: list[str]) -> Iterator[Row]:
        for row_no, obj in enumerate(items, 1):
            yield row_no, None, obj

    return columns, read


def _open_json_array(file: Path) -> tuple[list[str], RowReader]:
    text = read_utf8(file)
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{file}: not valid JSON ({e.msg}, line {e.lineno}, column {e.colno})",
            hint="fix the JSON, or write one object per line (.jsonl)",
        ) from None
    if not isinstance(items, list) or not items:
        raise DataError(
            f"{file} has no rows (expected a non-empty array of objects)",
            hint='write [{"text": "...", "label": 1}, ...] or one object per line (.jsonl)',
        )
    for i, obj in enumerate(items, 1):
        if not isinstance(obj, dict):
            raise DataError(
                f"{file}: item {i} of the array is a JSON {type(obj).__name__}, not an object",
                hint='make every item an object, e.g. {"text": "...", "label": 1}',
            )
    columns = list(items[0])

    def read(needed: list[str]) -> Iterator[Row]:
        for row_no, obj in enumerate(items, 1):
            yield row_no, None, obj

    return columns, read


# --- Parquet and datasets -----------------------------------------------------------------------


def _open_parquet(file: Path) -> tuple[list[str], RowReader]:
    if is_available("pyarrow"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(file)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{file}: not a readable Parquet file ({e})", hint="re-write the file") from None
        columns = list(pf.schema_arrow.names)

        def read(needed: list[str]) -> Iterator[Row]:
            row_no = 0
            for batch in pf.iter_batches(batch_size=1024, columns=needed):
                for rec in batch.to_pylist():
                    row_no += 1
                    yield row_no, None, rec

        return columns, read

    if not is_available("pandas"):
        require("pyarrow", "reading Parquet")  # raises MissingBackendError with the install command
    pd = require("pandas", "reading Parquet")
    try:
        frame = pd.read_parquet(file)
    except ImportError as e:  # pandas without pyarrow/fastparquet
        raise MissingBackendError(
            f"pandas cannot read Parquet without an engine ({e})",
            hint="install it with: pip install 'edgecompress[data]'",
        ) from None
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a damaged or foreign file
        raise DataError(f"{file}: not a readable Parquet file ({e})", hint="re-write the file") from None
    columns = [str(c) for c in frame.columns]

    def read_pandas(needed: list[str]) -> Iterator[Row]:
        for row_no, rec in enumerate(frame[needed].to_dict("records"), 1):
            yield row_no, None, rec

    return columns, read_pandas


def _open_saved_dataset(directory: Path, split: str | None) -> tuple[list[str], RowReader]:
    hf = require("datasets", "reading a dataset saved with save_to_disk")
    try:
        obj = hf.load_from_disk(str(directory))
    except Exception as e:  # noqa: BLE001 - datasets raises many types for a directory it cannot read
        raise DataError(
            f"{directory}: could not load the saved dataset ({type(e).__name__}: {e})",
            hint="re-save it with datasets' save_to_disk",
        ) from None
    if isinstance(obj, hf.DatasetDict):
        splits = list(obj)
        if split is None:
            split = next((s for s in _SPLIT_ORDER if s in obj), None)
            if split is None:
                raise DataError(
                    f"{directory} holds splits {_names(splits)} and none is validation, test or train",
                    hint=f"pick one with {directory}::SPLIT, e.g. {directory}::{splits[0] if splits else 'NAME'}",
                )
            log.info("%s: using split %r of %s", directory, split, splits)
        elif split not in obj:
            raise DataError(
                f"{directory} has no split {split!r} (splits: {_names(splits)})",
                hint=f"pick one with {directory}::SPLIT",
            )
        ds = obj[split]
    elif split is not None:
        raise DataError(
            f"{directory} is a single dataset, not a DatasetDict with splits, so '::{split}' does not apply",
            hint=f"drop '::{split}'",
        )
    else:
        ds = obj
    columns = list(ds.column_names)

    def read(needed: list[str]) -> Iterator[Row]:
        for row_no, rec in enumerate(ds.select_columns(needed), 1):
            yield row_no, None, rec

    return columns, read
