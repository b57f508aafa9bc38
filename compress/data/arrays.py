"""Data for a model fed arrays (the manifest's ``arrays`` input kind): an ``.npz`` of named arrays, one per graph input.

Each array's first axis is the samples; the rest is one sample's shape, which must match what the model takes
(``ArrayPreprocess.shapes``; a dimension the graph leaves open may be anything, the same for every sample). An
optional ``labels`` array holds one integer class id per sample. Object arrays are refused: only a pickle can load
them. Calibration (quantize), validation and search read the same files; every problem is a
:class:`~compress.errors.DataError` naming the file, the array and the fix.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import DataError

__all__ = ["ArrayDataset", "LABELS", "label_array", "load_array_dataset", "read_npz", "synthetic_arrays"]

#: the array that holds class ids, beside the inputs
LABELS = "labels"


@dataclass
class ArrayDataset:
    """Samples (each a mapping of input name to one array) with optional integer labels, in file order."""

    arrays: dict[str, np.ndarray]  # input name -> (samples, ...)
    labels: list[int] | None
    source: str

    #: arrays have no second segment; the field keeps the data sets' shared face (``inputs, pairs, labels``)
    pairs = None

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    @property
    def inputs(self) -> list[dict[str, np.ndarray]]:
        """What a model's feed builder takes: one ``{input name: array}`` per sample."""
        return [{name: a[i] for name, a in self.arrays.items()} for i in range(len(self))]

    def _take(self, idx) -> ArrayDataset:
        idx = np.asarray(list(idx), dtype=np.int64)
        return ArrayDataset({k: v[idx] for k, v in self.arrays.items()},
                            [self.labels[i] for i in idx] if self.labels is not None else None, self.source)

    def batches(self, size: int):
        """``(samples, None, labels)`` batches of ``size``, as the other data sets give."""
        rows = self.inputs
        for i in range(0, len(rows), size):
            yield rows[i:i + size], None, (self.labels[i:i + size] if self.labels is not None else None)

    def head(self, n: int) -> ArrayDataset:
        return self if n >= len(self) else self._take(range(n))

    def sample(self, n: int, seed: int = 0) -> ArrayDataset:
        """A seeded subset of ``n`` rows (all of them when there are fewer), in file order."""
        if n >= len(self):
            return self
        return self._take(sorted(random.Random(seed).sample(range(len(self)), n)))


def read_npz(file: Path, hint: str = "np.savez(f, INPUT_NAME=array, labels=int_array)", *,
             finite: bool = True) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` ``file``, or a one-line :class:`DataError`: a file that is not a whole ``.npz``
    (truncated, random bytes), object arrays (only a pickle loads them) and NaN or infinite values (no model input,
    label or target means anything with them; ``finite=False`` lets them through, for arrays that hold NaN by design,
    such as a tagger's outputs past a row's words). The one reader of ``.npz`` data: users' inputs, images and labels,
    and the files edgecompress writes for itself. ``hint``: how this kind of file is written."""
    import zipfile
    import zlib

    try:
        with np.load(file, allow_pickle=False) as npz:  # arrays are read lazily: load them all inside the try
            data = {name: npz[name] for name in npz.files}
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
        raise DataError(f"{file}: not a readable .npz, truncated or not written by numpy ({type(e).__name__})",
                        hint=f"write it again with {hint}") from None
    except ValueError:  # a zip's object arrays need pickle; bytes that are no zip at all "need" it too
        if not zipfile.is_zipfile(file):
            raise DataError(f"{file}: not an .npz (no zip archive of arrays)", hint=f"write it with {hint}") from None
        raise DataError(f"{file}: holds object arrays, which only a pickle can load",
                        hint=f"save plain numeric arrays: {hint}") from None
    for name, arr in data.items() if finite else ():
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            bad = ~np.isfinite(arr.reshape(len(arr), -1) if arr.ndim > 1 else arr)
            rows = np.flatnonzero(bad.any(axis=1) if bad.ndim > 1 else bad)
            raise DataError(f"{file}: array {name!r} holds {int(bad.sum())} NaN or infinite value(s), in "
                            f"{len(rows)} sample(s) (first: index {int(rows[0])})",
                            hint="drop or repair those samples (np.isfinite(x).all(axis=...) finds them)")
    return data


def _check_dtype(file: Path, name: str, arr: np.ndarray, want: str) -> None:
    """Integers feed integer or float inputs; floats feed float inputs only (a float would be truncated to an id)."""
    want_kind = np.dtype(want).kind
    ok = arr.dtype.kind in ("iu" if want_kind in "iu" else "iuf") if want_kind != "b" else arr.dtype.kind in "bui"
    if not ok:
        raise DataError(f"{file}: array {name!r} is {arr.dtype}; the model takes {want}",
                        hint=f"save {name} as {want} (np.asarray(x, dtype='{want}'))")


def load_array_dataset(path: Path | str, preprocess: Any, *, label2id: dict[str, int] | None = None,
                       require_labels: bool = False, limit: int | None = None) -> ArrayDataset:
    """Read an ``.npz`` for a model whose ``arrays`` description is ``preprocess`` (see the module doc)."""
    spec = preprocess if isinstance(preprocess, dict) else preprocess.model_dump()
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file", hint="check the path")
    if p.is_dir() or p.suffix.lower() != ".npz":
        raise DataError(f"{p}: not an .npz of input arrays",
                        hint=f"np.savez(f, {', '.join(f'{n}=...' for n in spec['shapes'])}) with one sample per "
                             "first index")
    data = read_npz(p)
    missing = [n for n in spec["shapes"] if n not in data]
    if missing:
        raise DataError(f"{p}: no array for input {missing[0]!r} (arrays: {', '.join(data) or '(none)'})",
                        hint=f"the model takes {', '.join(spec['shapes'])}: one array each, samples on the first axis")
    arrays: dict[str, np.ndarray] = {}
    for name, want in spec["shapes"].items():
        arr = data[name]
        if arr.ndim != len(want) + 1 or any(w is not None and w != d for w, d in zip(want, arr.shape[1:], strict=True)):
            shown = ["?" if w is None else w for w in want]
            raise DataError(f"{p}: array {name!r} has shape {list(arr.shape)}; expected [samples, "
                            f"{', '.join(map(str, shown))}]",
                            hint="one sample per first index, each of the model's input shape")
        _check_dtype(p, name, arr, spec["dtypes"][name])
        arrays[name] = arr.astype(spec["dtypes"][name], copy=False)
    counts = {n: len(a) for n, a in arrays.items()}
    if len(set(counts.values())) > 1:
        raise DataError(f"{p}: the input arrays hold different numbers of samples ({counts})",
                        hint="every input array needs one entry per sample")
    n = next(iter(counts.values()))
    if n == 0:
        raise DataError(f"{p}: no samples", hint="the first axis of each array is the samples")
    labels = label_array(p, data[LABELS], n, label2id) if LABELS in data and LABELS not in spec["shapes"] else None
    if require_labels and labels is None:
        raise DataError(f"{p}: no '{LABELS}' array", hint="accuracy needs one integer class id per sample: labels=...")
    ds = ArrayDataset(arrays, labels, str(p))
    return ds.head(limit) if limit is not None else ds


def label_array(file: Path, lab: np.ndarray, n: int, label2id: dict[str, int] | None) -> list[Any]:
    """An ``.npz``'s ``labels``: ``n`` integer class ids, each one the model has (``label2id``'s ids, when given); for
    a model without class names, numbers too (regression targets, multi-label 0/1 rows, label maps: one per sample)
    or strings (CTC recognition, a fixed-width unicode array: np.array(["12ab", ...]))."""
    if label2id is None and len(lab) == n and lab.dtype.kind == "U" and lab.ndim == 1:
        return [str(v) for v in lab]  # a string per sample (CTC recognition)
    if label2id is None and len(lab) == n and lab.dtype.kind in "fiub" and (lab.dtype.kind == "f" or lab.ndim > 1):
        return list(lab.astype(np.float64))
    if lab.shape != (n,) or lab.dtype.kind not in "iu":
        raise DataError(f"{file}: '{LABELS}' is {lab.dtype} {list(lab.shape)}; expected {n} integer class ids",
                        hint="one integer class id per sample")
    labels = [int(v) for v in lab]
    if label2id is not None:
        known = set(label2id.values())
        bad = sorted({v for v in labels if v not in known})
        if bad:
            raise DataError(f"{file}: label id(s) {bad[:5]} are not among the model's ({sorted(known)[:20]})",
                            hint="relabel the data with the model's class ids")
    return labels


def synthetic_arrays(preprocess: Any, n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` seeded samples at the model's input shapes: standard normal floats, small non-negative integers (valid
    as ids and indices), for parity and latency when no data is given."""
    spec = preprocess if isinstance(preprocess, dict) else preprocess.model_dump()
    for name, shape in spec["shapes"].items():
        if any(d is None for d in shape):
            raise DataError(f"input {name!r} has a dimension the graph leaves open ({shape}) and no data was given",
                            hint="pass data (an .npz of the inputs), or fix the dimension in model.yaml: "
                                 "dims: {NAME: SIZE}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        row = {}
        for name, shape in spec["shapes"].items():
            dtype = np.dtype(spec["dtypes"][name])
            if dtype.kind in "iu":
                row[name] = rng.integers(0, 2, size=shape).astype(dtype)
            elif dtype.kind == "b":
                row[name] = rng.integers(0, 2, size=shape).astype(bool)
            else:
                row[name] = rng.standard_normal(shape).astype(dtype)
        out.append(row)
    return out
