"""llama.cpp's importance matrix for GGUF quantization: read one made by ``llama-imatrix``, or make one with it.

An importance matrix holds, for each weight matrix, the mean square of the activations that multiply its columns over
some calibration text; llama.cpp's quantizer then weighs each column's rounding error by it when it picks the block
scales (k-quants and Q4_0 alike). ``llama-imatrix`` (a tool of llama.cpp's source tree) computes it: it runs the
model over the text with llama.cpp's own tokenizer and collects the sums in an eval callback.

- :func:`read_imatrix` reads its file (``imatrix.gguf``, tensors ``NAME.in_sum2`` and ``NAME.counts``; or the legacy
  ``.dat``) with llama.cpp's ``gguf`` package and divides the sums by the counts as ``llama-quantize`` does, giving
  the per-weight vectors that ``llama_model_quantize_params.imatrix`` (an array of ``llama_model_imatrix_data``, a
  plain C struct) takes, so the quantizer runs in-process through llama-cpp-python as without one.
- :func:`compute_imatrix` runs ``llama-imatrix`` on an FP32/FP16 GGUF and calibration text (a subprocess). No wheel
  ships the tool: :func:`imatrix_tool` finds it in the llama.cpp tree named by ``EDGECOMPRESS_LLAMA_CPP``
  (``build/bin``, as llama.cpp's ``cmake -B build`` leaves it) or on ``PATH``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import ConfigError, StageError
from compress.host.cpu import usable_cpus

log = logging.getLogger(__name__)

TOOL = "llama-imatrix"
BUILD = ("cmake -S LLAMA_CPP -B LLAMA_CPP/build -DLLAMA_CURL=OFF && cmake --build LLAMA_CPP/build --target "
         "llama-imatrix (or put llama-imatrix on PATH)")
#: the GGUF metadata llama-quantize writes about the matrix it used (kept: provenance inside the file)
KV_FILE, KV_DATASET = "quantize.imatrix.file", "quantize.imatrix.dataset"
KV_ENTRIES, KV_CHUNKS = "quantize.imatrix.entries_count", "quantize.imatrix.chunks_count"


@dataclass
class Imatrix:
    """An importance matrix as llama.cpp's quantizer takes it: weight name -> per-column mean squared activation."""

    path: Path
    entries: dict[str, np.ndarray]
    datasets: list[str] = field(default_factory=list)
    chunks: int = 0
    legacy: bool = False

    def describe(self) -> dict[str, Any]:
        from compress.artifact import sha256_file

        return {"path": str(self.path.resolve()), "sha256": sha256_file(self.path), "entries": len(self.entries),
                "chunks": self.chunks, "datasets": self.datasets, "format": "dat" if self.legacy else "gguf"}


def _not_imatrix(path: Path, why: str) -> ConfigError:
    return ConfigError(f"{path}: not an importance matrix ({why})",
                       hint="give the imatrix.gguf (or .dat) that llama.cpp's llama-imatrix wrote for this model")


def read_imatrix(path: Path | str) -> Imatrix:
    """The importance matrix in ``path`` (llama-imatrix's GGUF, else its legacy ``.dat``), normalized as
    ``llama-quantize`` normalizes it; a file that is neither is a :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such importance matrix file",
                          hint="give the file llama.cpp's llama-imatrix wrote (-o imatrix.gguf)")
    with path.open("rb") as f:
        magic = f.read(4)
    return _read_gguf(path) if magic == b"GGUF" else _read_legacy(path)


def _read_gguf(path: Path) -> Imatrix:
    from compress._optional import require

    require("gguf", "reading an importance matrix")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure
        raise _not_imatrix(path, f"{type(e).__name__}: {e}") from None
    fields = reader.fields

    def get(key: str, default: Any = None) -> Any:
        f = fields.get(key)
        return f.contents() if f is not None else default

    if get("imatrix.chunk_count") is None or get("imatrix.datasets") is None:
        raise _not_imatrix(path, "a GGUF without llama-imatrix's metadata (imatrix.datasets, imatrix.chunk_count)")
    tensors = {t.name: np.asarray(t.data, dtype=np.float32) for t in reader.tensors}
    entries: dict[str, np.ndarray] = {}
    for name, sums in tensors.items():
        if not name.endswith(".in_sum2"):
            continue
        base = name[: -len(".in_sum2")]
        counts = tensors.get(base + ".counts")
        if counts is None:
            raise _not_imatrix(path, f"{base} has sums but no counts")
        counts = counts.reshape(-1)
        per = sums.reshape(len(counts), -1)  # one row per expert (one for a dense weight)
        safe = np.where(counts > 0, counts, 1.0)[:, None]
        entries[base] = np.ascontiguousarray(np.where(counts[:, None] > 0, per / safe, 1.0).reshape(-1),
                                             dtype=np.float32)
    if not entries:
        raise _not_imatrix(path, "no NAME.in_sum2 tensors")
    datasets = get("imatrix.datasets") or []
    return Imatrix(path, entries, [str(d) for d in (datasets if isinstance(datasets, list) else [datasets])],
                   int(get("imatrix.chunk_count", 0)))


def _read_legacy(path: Path) -> Imatrix:
    """llama-imatrix's ``.dat``: int32 count, then per entry (int32 length, name, int32 ncall, int32 nval,
    nval float32 sums of (value / count) x ncall), then optionally int32 chunks and the dataset's name."""
    raw = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(raw):
            raise _not_imatrix(path, "neither llama-imatrix's GGUF nor its legacy .dat (the file ends early)")
        out = struct.unpack_from(fmt, raw, pos)
        pos += size
        return out

    (n,) = take("<i")
    if not 0 < n < 1_000_000:
        raise _not_imatrix(path, "neither llama-imatrix's GGUF nor its legacy .dat")
    entries: dict[str, np.ndarray] = {}
    for _ in range(n):
        (length,) = take("<i")
        if not 0 < length < 4096:
            raise _not_imatrix(path, "a bad entry name")
        name = bytes(take(f"<{length}s")[0]).decode("utf-8", "replace")
        ncall, nval = take("<ii")
        if nval < 1:
            raise _not_imatrix(path, f"{name} has no values")
        sums = np.frombuffer(raw, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        take(f"<{4 * nval}x")
        entries[name] = sums / ncall if ncall > 0 else sums
    chunks, datasets = 0, []
    if pos + 8 <= len(raw):
        chunks, length = take("<ii")
        if 0 < length and pos + length <= len(raw):
            datasets = [raw[pos:pos + length].decode("utf-8", "replace")]
    return Imatrix(path, entries, datasets, int(chunks), legacy=True)


def check_against(imatrix: Imatrix, model: Path) -> dict[str, int]:
    """Check that ``imatrix`` was made for the GGUF ``model``: at least one entry names one of its weights and every
    such entry has the weight's column count (llama.cpp's quantizer would stop on a mismatch mid-way). Returns how
    many weight matrices it covers."""
    from gguf import GGUFReader

    cols = {}
    for t in GGUFReader(str(model)).tensors:
        shape = [int(d) for d in t.shape]
        if len(shape) >= 2:
            cols[t.name] = shape[0] * (shape[2] if len(shape) > 2 else 1)
    matched = [n for n in imatrix.entries if n in cols]
    if not matched:
        raise ConfigError(f"{imatrix.path}: none of its {len(imatrix.entries)} entries names a weight of {model.name} "
                          "(an importance matrix of another model)",
                          hint="make one for this model: llama-imatrix -m MODEL.gguf -f TEXT, or give --calibration TEXT")
    wrong = [n for n in matched if imatrix.entries[n].size != cols[n]]
    if wrong:
        raise ConfigError(f"{imatrix.path}: {wrong[0]} has {imatrix.entries[wrong[0]].size} values, the weight "
                          f"{cols[wrong[0]]} columns (an importance matrix of another model)",
                          hint="make one for this model: llama-imatrix -m MODEL.gguf -f TEXT, or give --calibration TEXT")
    return {"covered": len(matched), "weights": len(cols)}


def quantize_params(params, imatrix: Imatrix) -> list[Any]:
    """Point llama.cpp's quantize ``params`` at ``imatrix`` (``params.imatrix``, and the ``quantize.imatrix.*``
    metadata llama-quantize writes, as ``kv_overrides``). Returns what must stay alive while the quantizer runs."""
    import ctypes

    import llama_cpp

    names = [n.encode() for n in imatrix.entries]
    arrays = [np.ascontiguousarray(v, dtype=np.float32) for v in imatrix.entries.values()]
    rows = (llama_cpp.llama_model_imatrix_data * (len(arrays) + 1))()
    for i, (name, arr) in enumerate(zip(names, arrays, strict=True)):
        rows[i].name, rows[i].size = name, arr.size
        rows[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    rows[len(arrays)].name = None  # the terminator
    params.imatrix = ctypes.cast(rows, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))

    kv = [(KV_FILE, str(imatrix.path)[:127]), (KV_ENTRIES, len(arrays))]
    if imatrix.datasets:
        kv.append((KV_DATASET, imatrix.datasets[0][:127]))
    if imatrix.chunks > 0:
        kv.append((KV_CHUNKS, imatrix.chunks))
    overrides = (llama_cpp.llama_model_kv_override * (len(kv) + 1))()
    for i, (key, value) in enumerate(kv):
        overrides[i].key = key.encode()
        if isinstance(value, str):
            overrides[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            overrides[i].value.val_str = value.encode()
        else:
            overrides[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
            overrides[i].value.val_i64 = value
    overrides[len(kv)].key = b""  # the terminator
    params.kv_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_kv_override))
    return [names, arrays, rows, overrides]


def imatrix_tool() -> Path | None:
    """``llama-imatrix``: in the llama.cpp tree of ``$EDGECOMPRESS_LLAMA_CPP`` (``build/bin``), else on ``PATH``."""
    from compress.stages.export.lm.gguf import ENV

    given = os.environ.get(ENV)
    if given:
        root = Path(given).expanduser()
        for tree in (root, root / "vendor" / "llama.cpp"):
            for sub in ("build/bin", "bin", "."):
                tool = tree / sub / TOOL
                if tool.is_file() and os.access(tool, os.X_OK):
                    return tool
    found = shutil.which(TOOL)
    return Path(found) if found else None


def compute_imatrix(model: Path, texts: list[str], out: Path, *, context: int, chunks: int,
                    threads: int | None = None) -> Imatrix:
    """Run ``llama-imatrix`` on the GGUF ``model`` over ``texts`` (joined by blank lines; at most ``chunks``
    windows of ``context`` tokens of llama.cpp's own tokenization) and read the ``out`` it writes."""
    tool = imatrix_tool()
    if tool is None:
        raise ConfigError(f"--calibration text for a GGUF is run through llama.cpp's {TOOL}, which no wheel ships: "
                          f"not found in $EDGECOMPRESS_LLAMA_CPP/build/bin nor on PATH",
                          hint=f"build it: {BUILD}; or give an importance matrix made elsewhere with --imatrix")
    text = out.with_suffix(".txt")
    text.write_text("\n\n".join(texts), encoding="utf-8")
    cmd = [str(tool), "-m", str(model), "-f", str(text), "-o", str(out), "-c", str(context), "--chunks", str(chunks),
           "-t", str(threads or usable_cpus()), "--no-ppl", "--output-format", "gguf"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not out.is_file():
        lines = [ln.strip() for ln in f"{done.stderr}\n{done.stdout}".splitlines() if ln.strip()]
        # llama.cpp's log lines: "0.00.020.641 E compute_imatrix: ..." (I, W, E: the level)
        errors = [m.group(1) for ln in lines if (m := re.match(r"^[\d.]+ E (.*)", ln))]
        why = "; ".join(errors[:2]) if errors else lines[-1] if lines else f"exit code {done.returncode}"
        short = "you need at least" in why
        raise (ConfigError if short else StageError)(
            f"llama.cpp's {TOOL} failed: {why}",
            hint=f"give more --calibration text (at least two windows of {context} tokens)" if short else
            "run it by hand to see its log: " + " ".join(cmd))
    log.debug("%s output:\n%s", TOOL, done.stderr)
    imatrix = read_imatrix(out)
    imatrix.datasets = imatrix.datasets or [str(text)]
    return imatrix
