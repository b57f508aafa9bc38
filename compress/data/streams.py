"""Data for a streaming model (the manifest's ``stream``): sequences, each one stream whose state resets at its start.

* a ``.wav`` file (:func:`compress.data.audio.read_wav`), or a folder of them, in name order: one stream per file;
* an ``.npz`` (:func:`compress.data.arrays.read_npz`) whose array named as the stream's input holds the calls' new
  values in order, ``[calls, ..., chunk]`` (the context is prepended from the previous row, as for audio), with an
  optional ``labels`` array, one row per call (0/1 flags of a per-call probability); or a folder of them.

The calls themselves (context, zero padding, the state fed back) are :class:`compress.device.shipped.StreamCalls`'.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compress.data.arrays import LABELS, read_npz
from compress.data.audio import read_wav
from compress.errors import DataError

__all__ = ["Sequence", "read_sequences", "seeded_sequence", "sequences_for"]

SUFFIXES = (".wav", ".npz")


@dataclass
class Sequence:
    """One stream: its new values along the last axis (a ``.wav``'s samples), and per-call labels where the data has
    them."""

    name: str
    values: np.ndarray
    labels: np.ndarray | None = None

    def calls(self, chunk: int) -> int:
        return max(1, -(-self.values.shape[-1] // chunk))


def read_sequences(path: Path | str, stream: Any, input_shape: list, dtype: str,
                   limit: int | None = None) -> list[Sequence]:
    """The sequences at ``path`` (see the module doc) for ``stream`` (:class:`~compress.artifact.StreamSpec`), whose
    input takes ``input_shape`` per call (batch axis left out, the last axis context + chunk) as ``dtype``. ``limit``:
    at most that many calls in all (the last sequence cut short)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder", hint="pass a .wav, an .npz, or a folder of them")
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in SUFFIXES) if p.is_dir() else [p]
    if not files:
        raise DataError(f"{p}: holds no .wav or .npz file", hint="a streaming model reads one sequence per file")
    out: list[Sequence] = []
    left = limit
    for f in files:
        if f.suffix.lower() == ".wav":
            if stream.sample_rate is None:
                raise DataError(f"{f}: a .wav needs the model's sample rate, which its stream does not declare",
                                hint="add stream: {sample_rate: HZ} to model.yaml and adopt the file again")
            seq = Sequence(f.name, read_wav(f, stream.sample_rate))
        elif f.suffix.lower() == ".npz":
            seq = _npz_sequence(f, stream, input_shape, dtype)
        else:
            raise DataError(f"{f}: not a .wav or an .npz", hint="a streaming model reads audio (.wav) or the calls' "
                            f"values ({stream.input}=[calls, ..., {stream.chunk}] in an .npz)")
        if left is not None:
            seq = _head(seq, left, stream.chunk)
            left -= seq.calls(stream.chunk)
        out.append(seq)
        if left is not None and left <= 0:
            break
    return out


def _npz_sequence(f: Path, stream: Any, input_shape: list, dtype: str) -> Sequence:
    data = read_npz(f, hint=f"np.savez(f, {stream.input}=rows, labels=flags) with rows [calls, ..., {stream.chunk}]")
    if stream.input not in data:
        raise DataError(f"{f}: no array {stream.input!r} (arrays: {', '.join(data) or '(none)'})",
                        hint=f"save the calls' new values as {stream.input}: [calls, ..., {stream.chunk}]")
    rows = data[stream.input]
    want = [*input_shape[:-1], stream.chunk]
    if rows.ndim != len(want) + 1 or any(w is not None and w != d for w, d in zip(want, rows.shape[1:])) or \
            not len(rows):
        raise DataError(f"{f}: array {stream.input!r} has shape {list(rows.shape)}; expected [calls, "
                        f"{', '.join('?' if w is None else str(w) for w in want)}]",
                        hint=f"one row per call, each its {stream.chunk} new values (the {stream.context} of context "
                        "come from the row before)")
    if rows.dtype.kind not in ("iuf" if np.dtype(dtype).kind == "f" else "iu"):
        raise DataError(f"{f}: array {stream.input!r} is {rows.dtype}; the model takes {dtype}",
                        hint=f"save it as {dtype}")
    labels = data.get(LABELS)
    if labels is not None and len(labels) != len(rows):
        raise DataError(f"{f}: {len(labels)} labels for {len(rows)} calls", hint="one row of labels per call")
    values = np.concatenate(list(rows.astype(dtype, copy=False)), axis=-1)
    return Sequence(f.name, values, None if labels is None else labels.astype(np.float64).reshape(len(rows), -1))


def _head(seq: Sequence, calls: int, chunk: int) -> Sequence:
    if seq.calls(chunk) <= calls:
        return seq
    labels = None if seq.labels is None else seq.labels[:calls]
    return Sequence(seq.name, seq.values[..., :calls * chunk], labels)


def sequences_for(m: Any, path: Path | str | None, limit: int | None = None) -> list[Sequence]:
    """The sequences at ``path`` for the streaming manifest ``m`` (its ``stream`` and its chunked input's shape and
    dtype); without a path, one :func:`seeded_sequence`."""
    stream = m.stream
    if path is None:
        return [seeded_sequence(stream.chunk, limit or 64)]
    return read_sequences(path, stream, m.preprocess.shapes[stream.input], m.preprocess.dtypes[stream.input], limit)


def seeded_sequence(chunk: int, calls: int, seed: int = 0) -> Sequence:
    """Test material where no data is given: ``calls`` chunks of seeded noise (standard normal x 0.1, in [-1, 1] as
    audio is), for numerical parity and timing, not for meaning."""
    values = np.clip(0.1 * np.random.default_rng(seed).standard_normal(chunk * calls), -1, 1).astype(np.float32)
    return Sequence("seeded noise", values)
