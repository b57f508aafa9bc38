"""The FP32 weight buffers the INT4 mix's probes (:class:`.onnx_mix.Probe`, :class:`.openvino_mix.Probe`) feed their
one compiled model: one buffer a body matrix, shared with the runtime's request (no copy on feeding), holding the
original or what a candidate makes of it. The originals are read from the model's file into the buffers, not through
a memory map of it, so the file's pages stay the system's cache and are not also counted in the process's memory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from compress.stages.quantize.lm import bit_allocation as ba


def read_into(buffer: np.ndarray, file: Path, offset: int, dtype: Any = np.float32) -> None:
    """``buffer`` (float32) filled with the ``dtype`` values stored in ``file`` at ``offset`` (no map: the pages stay
    the system's cache, not ours; FP16 is read a slice at a time and widened)."""
    with open(file, "rb") as f:
        f.seek(offset)
        if np.dtype(dtype) == np.float32:
            f.readinto(memoryview(buffer.reshape(-1).view(np.uint8)))
            return
        flat, step = buffer.reshape(-1), 1 << 22
        for i in range(0, flat.size, step):
            part = np.frombuffer(f.read(min(step, flat.size - i) * np.dtype(dtype).itemsize), dtype)
            flat[i:i + part.size] = part


class Buffers:
    """One float32 buffer a weight (``shapes``: name -> the runtime's layout), each filled by ``read(name, buffer)``
    with the original. ``transposed``: the names stored [N, K] (the helpers take [K, N]: :meth:`original` and
    :meth:`load` see those through a transposed view)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], read: Callable[[str, np.ndarray], None],
                 transposed: frozenset[str] = frozenset()):
        self._read, self._transposed = read, transposed
        self.arrays = {n: np.empty(tuple(s), np.float32) for n, s in shapes.items()}
        self._holds: dict[str, object] = {}  # weight -> what it holds (a Coded or an 8-bit Candidate); absent: original
        for n in self.arrays:
            self._restore(n)

    def _restore(self, name: str) -> None:
        self._read(name, self.arrays[name])
        self._holds.pop(name, None)

    def _helpers_view(self, name: str) -> np.ndarray:
        b = self.arrays[name]
        return b.T if name in self._transposed else b

    def original(self, name: str) -> np.ndarray:
        """The weight ``name``'s FP32 values as the helpers take them ([K, N]; a view of its buffer, the original put
        back where a check had replaced it: read it, do not write it)."""
        if name in self._holds:
            self._restore(name)
        return self._helpers_view(name)

    def load(self, replaced: dict[str, Any]) -> None:
        """Each buffer holds what ``replaced`` (name -> a 4-bit candidate's :class:`.bit_allocation.Coded`, decoded, or
        an 8-bit :class:`.bit_allocation.Candidate`, made again per output channel from the original) makes of it,
        every other the original."""
        for name in self.arrays:
            want = replaced.get(name)
            if want is None:
                if name in self._holds:
                    self._restore(name)
            elif self._holds.get(name) is not want:
                out = self._helpers_view(name)
                if isinstance(want, ba.Coded):
                    want.decode(out=out)
                else:
                    if name in self._holds:
                        self._restore(name)
                    out[...] = ba.dequantized(out, want, out.shape[0])
                self._holds[name] = want
