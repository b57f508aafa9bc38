"""Labelled evaluation / calibration text: load it from a file, find its columns, map its labels.

Formats, chosen by extension (or shape, for a directory):

* ``.csv`` (standard quoting) and ``.tsv`` (no quoting at all: SST-2 style sentences contain bare
  ``"`` characters), read with the standard library;
* ``.jsonl`` / ``.json`` - one JSON object per line (a ``.json`` file holding one array of objects
  also works), standard library;
* ``.parquet`` - needs pyarrow (streamed) or pandas;
* a directory written by ``datasets.Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``; pick a
  split with ``dir::validation``) - needs datasets.

pandas, pyarrow and datasets are optional extras and are imported only for the formats that need
them. Every problem with the input raises :class:`~compress.errors.DataError` naming the file, the
row (and line, for text files) and the fix.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib.resources
import json
import logging
import math
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress._optional import is_available, require
from compress.errors import ConfigError, DataError, MissingBackendError

log = logging.getLogger(__name__)

__all__ = [
    "LABEL_COLUMNS",
    "PAIR_COLUMNS",
    "TEXT_COLUMNS",
    "TextDataset",
    "load_dataset",
    "sample_data_path",
]

#: Text column candidates, in order of preference, when ``text_column`` is not given.
TEXT_COLUMNS = ("text", "sentence", "sentence1", "content", "review", "question", "question1", "premise")
#: Second-segment candidates for each text column that starts a sentence pair.
PAIR_COLUMNS: dict[str, tuple[str, ...]] = {
    "sentence1": ("sentence2", "text_pair"),
    "question": ("question2", "sentence", "text_pair"),
    "question1": ("question2",),
    "premise": ("hypothesis",),
    "text": ("text_pair",),
}
#: Label column candidates when ``label_column`` is not given (absence is fine unless labels are required).
LABEL_COLUMNS = ("label", "labels", "target", "class")

SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_SPLIT_ORDER = ("validation", "test", "train")
_ID_RE = re.compile(r"[+-]?\d+(?:\.0*)?")
_UNLABELLED = -1  # datasets' marker for a row without a label (GLUE test splits)

# A record as read: (row number from 1, line number in a text file or None, {column: value}).
_Row = tuple[int, int | None, dict[str, Any]]
_RowReader = Callable[[list[str]], Iterator[_Row]]


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------


@dataclass
class TextDataset:
    """Texts (and optional second segments and label ids) read from one source, in file order."""

    texts: list[str]
    pairs: list[str] | None = None  # second segment for sentence-pair tasks
    labels: list[int] | None = None  # label ids (already mapped), or None when the file has no labels
    source: str = "<memory>"  # path it came from
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str | None = None

    def __post_init__(self) -> None:
        n = len(self.texts)
        for name in ("pairs", "labels"):
            values = getattr(self, name)
            if values is not None and len(values) != n:
                raise ValueError(f"TextDataset: {name} has {len(values)} items but texts has {n}")

    def __len__(self) -> int:
        return len(self.texts)

    def _subset(self, idx: list[int] | range) -> TextDataset:
        return dataclasses.replace(
            self,
            texts=[self.texts[i] for i in idx],
            pairs=None if self.pairs is None else [self.pairs[i] for i in idx],
            labels=None if self.labels is None else [self.labels[i] for i in idx],
        )

    def head(self, n: int) -> TextDataset:
        """The first ``n`` rows (all of them when ``n >= len``)."""
        if n < 0:
            raise ValueError(f"head: n must be >= 0, got {n}")
        return self if n >= len(self) else self._subset(range(n))

    def sample(self, n: int, seed: int = 0) -> TextDataset:
        """A deterministic random subset of ``n`` rows, kept in file order; ``self`` when ``n >= len``."""
        if n < 0:
            raise ValueError(f"sample: n must be >= 0, got {n}")
        if n >= len(self):
            return self
        return self._subset(sorted(random.Random(seed).sample(range(len(self)), n)))

    def batches(self, size: int) -> Iterator[tuple[list[str], list[str] | None, list[int] | None]]:
        """Consecutive ``(texts, pairs, labels)`` batches of at most ``size`` rows."""
        if size < 1:
            raise ValueError(f"batches: size must be >= 1, got {size}")
        for i in range(0, len(self), size):
            yield (
                self.texts[i : i + size],
                None if self.pairs is None else self.pairs[i : i + size],
                None if self.labels is None else self.labels[i : i + size],
            )

    def __repr__(self) -> str:
        cols = ", ".join(c for c in (self.text_column, self.text_pair_column, self.label_column) if c)
        return f"TextDataset({self.source!r}, rows={len(self)}, columns=[{cols}])"


def sample_data_path() -> Path:
    """The shipped demo file (``label<TAB>sentence``, 200 rows, 100 negative / 100 positive)."""
    res = importlib.resources.files("compress") / "samples" / "sentiment.tsv"
    if isinstance(res, Path):
        return res
    # Installed inside a zip: extract once to a real file that lives as long as the process.
    global _extracted_sample
    if _extracted_sample is None:
        import atexit

        stack = contextlib.ExitStack()
        atexit.register(stack.close)
        _extracted_sample = Path(stack.enter_context(importlib.resources.as_file(res)))
    return _extracted_sample


_extracted_sample: Path | None = None


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_dataset(
    path: str | Path,
    *,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    label2id: dict[str, int] | None = None,
    num_labels: int | None = None,
    require_labels: bool = False,
    limit: int | None = None,
    texts_only: bool = False,
) -> TextDataset:
    """Read texts (and labels, mapped to the model's ids) from ``path``.

    ``path`` is a ``.csv``/``.tsv``/``.jsonl``/``.json``/``.parquet`` file or a ``save_to_disk``
    directory (``dir::split`` picks a split of a DatasetDict). Columns not given are detected
    (:data:`TEXT_COLUMNS`, :data:`PAIR_COLUMNS`, :data:`LABEL_COLUMNS`). Label ids are checked against
    ``range(num_labels)`` (``num_labels`` defaults to ``max(label2id.values()) + 1`` when only
    ``label2id`` is given); label names are mapped through ``label2id`` (exact, then
    case-insensitive). An auto-detected label column that is entirely empty (or ``-1``, the
    datasets marker for "unlabelled") is dropped unless ``require_labels``. ``limit`` stops reading
    after that many rows. ``texts_only`` reads no labels at all (calibration, parity samples): a label
    column of names is then no concern, whatever the model knows.
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}", hint="pass a positive --limit or leave it out")
    if num_labels is not None and num_labels < 1:
        raise ConfigError(f"num_labels must be >= 1, got {num_labels}", hint="check the model's config")
    source = str(path)
    file, split = _split_path(path)
    columns, read_rows = _open_table(file, split, source)

    text_col, pair_col, label_col, label_explicit = _resolve_columns(
        columns, source, text_column, text_pair_column, label_column
    )
    if texts_only:
        label_col = None
    if require_labels and label_col is None:
        raise DataError(
            f"{source} has no label column (columns: {_names(columns)})",
            hint="pass --label-column NAME",
        )
    log.info("%s: text column %r, pair column %r, label column %r", source, text_col, pair_col, label_col)

    needed = [c for c in (text_col, pair_col, label_col) if c is not None]
    texts: list[str] = []
    pairs: list[str] | None = [] if pair_col else None
    raw_labels: list[Any] = []
    where: list[tuple[int, int | None]] = []
    with contextlib.closing(read_rows(needed)) as rows:
        for row_no, line_no, rec in rows:
            texts.append(_text_cell(rec, text_col, source, row_no, line_no))
            if pairs is not None:
                pairs.append(_text_cell(rec, pair_col, source, row_no, line_no))  # type: ignore[arg-type]
            if label_col is not None:
                raw_labels.append(rec.get(label_col))
                where.append((row_no, line_no))
            if limit is not None and len(texts) >= limit:
                break
    if not texts:
        raise DataError(
            f"{source} has no rows (only a header, or nothing at all)",
            hint="point at a file with at least one data row",
        )

    labels: list[int] | None = None
    if label_col is not None:
        labels = _map_labels(
            raw_labels, where, source, label_col, label2id, num_labels,
            drop_if_unlabelled=not (require_labels or label_explicit),
        )  # fmt: skip
        if labels is None:
            log.warning("%s: column %r holds no labels; loading texts only", source, label_col)
            label_col = None
    return TextDataset(
        texts=texts,
        pairs=pairs,
        labels=labels,
        source=source,
        text_column=text_col,
        text_pair_column=pair_col,
        label_column=label_col,
    )


def _split_path(path: str | Path) -> tuple[Path, str | None]:
    """``dir::split`` -> (dir, split); a path that exists as written is never split."""
    p = Path(path)
    s = str(path)
    if "::" in s and not p.exists():
        base, _, split = s.rpartition("::")
        if not split:
            raise DataError(f"{s}: empty split name after '::'", hint="write DIR::SPLIT, e.g. data::validation")
        return Path(base), split
    return p, None


def _open_table(file: Path, split: str | None, source: str) -> tuple[list[str], _RowReader]:
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


def _utf8_lines(file: Path) -> Iterator[str]:
    """Lines of ``file`` decoded as UTF-8 (line endings kept, BOM dropped); bad bytes -> DataError."""
    offset = 0
    with open(file, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(file, offset + e.start, line_no, raw if line_no == 1 else b"") from None
            if line_no == 1 and line.startswith("\ufeff"):
                line = line[1:]
            offset += len(raw)
            yield line


def _not_utf8(file: Path, offset: int, line_no: int, first: bytes) -> DataError:
    if first.startswith((b"\xff\xfe", b"\xfe\xff")):
        what = " (it looks like UTF-16)"
    else:
        what = ""
    return DataError(
        f"{file} is not valid UTF-8{what}: undecodable byte at offset {offset} (line {line_no})",
        hint=f"re-encode it as UTF-8, e.g. iconv -f cp1252 -t utf-8 {file.name} > utf8-{file.name}",
    )


def _open_delimited(file: Path, *, tsv: bool) -> tuple[list[str], _RowReader]:
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
        reader = csv.reader(_utf8_lines(file), **fmt)
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

    def read(needed: list[str]) -> Iterator[_Row]:
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


def _open_json(file: Path) -> tuple[list[str], _RowReader]:
    # A .json file may be one array of objects; everything else is read as JSON lines.
    with open(file, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if file.suffix.lower() == ".json" and head.startswith(b"["):
        return _open_json_array(file)

    def objects() -> Iterator[tuple[int, dict[str, Any]]]:
        for line_no, line in enumerate(_utf8_lines(file), 1):
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

    def read(needed: list[str]) -> Iterator[_Row]:
        with contextlib.closing(objects()) as objs:
            for row_no, (line_no, obj) in enumerate(objs, 1):
                yield row_no, line_no, obj

    return columns, read


def _open_json_array(file: Path) -> tuple[list[str], _RowReader]:
    data = file.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _not_utf8(file, e.start, data.count(b"\n", 0, e.start) + 1, data[:2]) from None
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

    def read(needed: list[str]) -> Iterator[_Row]:
        for row_no, obj in enumerate(items, 1):
            yield row_no, None, obj

    return columns, read


# --- Parquet and datasets -----------------------------------------------------------------------


def _open_parquet(file: Path) -> tuple[list[str], _RowReader]:
    if is_available("pyarrow"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(file)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{file}: not a readable Parquet file ({e})", hint="re-write the file") from None
        columns = list(pf.schema_arrow.names)

        def read(needed: list[str]) -> Iterator[_Row]:
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
    except Exception as e:
        raise DataError(f"{file}: not a readable Parquet file ({e})", hint="re-write the file") from None
    columns = [str(c) for c in frame.columns]

    def read_pandas(needed: list[str]) -> Iterator[_Row]:
        for row_no, rec in enumerate(frame[needed].to_dict("records"), 1):
            yield row_no, None, rec

    return columns, read_pandas


def _open_saved_dataset(directory: Path, split: str | None) -> tuple[list[str], _RowReader]:
    hf = require("datasets", "reading a dataset saved with save_to_disk")
    try:
        obj = hf.load_from_disk(str(directory))
    except Exception as e:
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

    def read(needed: list[str]) -> Iterator[_Row]:
        for row_no, rec in enumerate(ds.select_columns(needed), 1):
            yield row_no, None, rec

    return columns, read


# ---------------------------------------------------------------------------------------------
# Columns
# ---------------------------------------------------------------------------------------------


def _names(columns: list[str]) -> str:
    return ", ".join(columns) if columns else "(none)"


def _find(columns: list[str], candidates: tuple[str, ...], exclude: set[str]) -> str | None:
    """First candidate present in ``columns`` (exact names first, then ignoring case)."""
    for exact in (True, False):
        for cand in candidates:
            for col in columns:
                if col not in exclude and (col == cand if exact else col.lower() == cand):
                    return col
    return None


def _explicit(columns: list[str], name: str, role: str, option: str, source: str) -> str:
    if name in columns:
        return name
    close = [c for c in columns if c.lower() == name.lower()]
    suggestion = f"did you mean {close[0]!r}? " if close else ""
    raise DataError(
        f"{source}: {role} column {name!r} not found (columns: {_names(columns)})",
        hint=f"{suggestion}pass {option} with one of: {_names(columns)}",
    )


def _resolve_columns(
    columns: list[str],
    source: str,
    text_column: str | None,
    text_pair_column: str | None,
    label_column: str | None,
) -> tuple[str, str | None, str | None, bool]:
    """-> (text, pair, label, label_was_explicit)."""
    pair = _explicit(columns, text_pair_column, "text pair", "--text-pair-column", source) if text_pair_column else None
    label = _explicit(columns, label_column, "label", "--label-column", source) if label_column else None

    if text_column:
        text = _explicit(columns, text_column, "text", "--text-column", source)
    else:
        taken = {c for c in (pair, label) if c}
        text = None
        if pair is None:
            # Prefer a text column that starts a pair present in the file (sentence1+sentence2, QNLI's
            # question+sentence, ...) over a single-text candidate that appears earlier in the list.
            for cand in TEXT_COLUMNS:
                col = _find(columns, (cand,), taken)
                if col and cand in PAIR_COLUMNS and _find(columns, PAIR_COLUMNS[cand], taken | {col}):
                    text = col
                    break
        text = text or _find(columns, TEXT_COLUMNS, taken)
        if text is None:
            raise DataError(
                f"{source}: no text column found (looked for {', '.join(TEXT_COLUMNS)}; "
                f"columns: {_names(columns)})",
                hint="pass --text-column NAME",
            )
    if pair is None and text_pair_column is None:
        partners = PAIR_COLUMNS.get(text.lower(), ())
        pair = _find(columns, partners, {text, label} - {None}) if partners else None  # type: ignore[arg-type]
    if label is None:
        label = _find(columns, LABEL_COLUMNS, {c for c in (text, pair) if c})
    if len({c for c in (text, pair, label) if c}) != len([c for c in (text, pair, label) if c]):
        raise DataError(
            f"{source}: the same column is used twice (text={text!r}, pair={pair!r}, label={label!r})",
            hint="pass different --text-column / --text-pair-column / --label-column",
        )
    return text, pair, label, label_column is not None


# ---------------------------------------------------------------------------------------------
# Cells and labels
# ---------------------------------------------------------------------------------------------


def _at(source: str, row_no: int, line_no: int | None) -> str:
    return f"{source}: row {row_no}" + (f" (line {line_no})" if line_no is not None else "")


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _text_cell(rec: dict[str, Any], column: str, source: str, row_no: int, line_no: int | None) -> str:
    value = rec.get(column)
    if _is_missing(value):
        raise DataError(
            f"{_at(source, row_no, line_no)} has an empty text in column {column!r}",
            hint="fill in or remove that row",
        )
    if not isinstance(value, str):
        raise DataError(
            f"{_at(source, row_no, line_no)}: column {column!r} holds {type(value).__name__} {value!r}, not text",
            hint="pass --text-column NAME for the column that holds the text",
        )
    return value


def _label_id(value: Any) -> int | str | None:
    """A raw cell as an int id, a label name (str), or None when missing; ValueError if unusable."""
    if _is_missing(value):
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise ValueError(f"{value!r} is not a whole number (a regression target?)")
    if isinstance(value, str):
        s = value.strip()
        return int(float(s)) if _ID_RE.fullmatch(s) else s
    if hasattr(value, "item"):  # numpy scalars from pandas
        return _label_id(value.item())
    raise ValueError(f"{value!r} ({type(value).__name__}) is neither a label id nor a label name")


def _known(label2id: dict[str, int], limit: int = 20) -> str:
    items = sorted(label2id.items(), key=lambda kv: (kv[1], kv[0]))
    shown = ", ".join(f"{k!r} ({v})" for k, v in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _map_labels(
    raw: list[Any],
    where: list[tuple[int, int | None]],
    source: str,
    column: str,
    label2id: dict[str, int] | None,
    num_labels: int | None,
    *,
    drop_if_unlabelled: bool,
) -> list[int] | None:
    """Raw label cells -> model label ids; None when the column holds no labels and may be dropped."""
    parsed: list[int | str | None] = []
    for value, (row_no, line_no) in zip(raw, where):
        try:
            parsed.append(_label_id(value))
        except ValueError as e:
            raise DataError(
                f"{_at(source, row_no, line_no)}: label {e} in column {column!r}",
                hint="labels must be integer ids or label names",
            ) from None

    if all(p is None or p == _UNLABELLED for p in parsed):
        if drop_if_unlabelled:
            return None
        raise DataError(
            f"{source}: column {column!r} holds no labels (every value is empty or {_UNLABELLED})",
            hint="use a labelled file or split (test splits of GLUE-style datasets are unlabelled; "
            "try DIR::validation)",
        )

    if num_labels is None and label2id:
        num_labels = max(label2id.values()) + 1
    folded: dict[str, int] = {}
    if label2id:
        for name, i in label2id.items():
            folded.setdefault(name.lower(), i)
    id_hint = f"ids 0..{num_labels - 1}" if num_labels is not None else "ids"

    ids: list[int] = []
    for p, value, (row_no, line_no) in zip(parsed, raw, where):
        at = _at(source, row_no, line_no)
        if p is None:
            raise DataError(
                f"{at} has no label in column {column!r}",
                hint="fill in every label, or leave the label column out to load texts only",
            )
        if isinstance(p, int):
            if p < 0 or (num_labels is not None and p >= num_labels):
                known = f"the model has {num_labels} labels ({id_hint})" if num_labels is not None else "ids are >= 0"
                more = (
                    f" ({_UNLABELLED} marks an unlabelled row in datasets' test splits)" if p == _UNLABELLED else ""
                )
                raise DataError(
                    f"{at}: label id {p} in column {column!r} is out of range: {known}{more}",
                    hint=f"use {id_hint}" + (f" or label names: {_known(label2id)}" if label2id else ""),
                )
            ids.append(p)
            continue
        if not label2id:
            raise DataError(
                f"{at}: label {p!r} in column {column!r} is a name, but the model has no label names "
                "to map it with (no label2id in its config)",
                hint="write labels as integer ids in the file, or give the model id2label/label2id in its config",
            )
        mapped = label2id.get(p)
        if mapped is None:
            mapped = folded.get(p.lower())
        if mapped is None:
            raise DataError(
                f"{at}: label {p!r} in column {column!r} is not a label the model knows "
                f"(known labels: {_known(label2id)})",
                hint="fix that label in the file or use a model trained with it",
            )
        ids.append(mapped)
    return ids
