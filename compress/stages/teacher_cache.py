"""The teacher's outputs for distillation, on disk: numpy memmaps filled in resumable chunks.

A cache directory holds ``key.json`` (what the outputs belong to: teacher, transfer rows, targets), one
memmap per target and ``labelled.npy``, the rows whose targets are written and flushed (the progress
marker, replaced atomically after every flush). Only the rows a run will draw are labelled (a
``--max-steps`` run draws a prefix of its first epoch), in length-sorted batches of the rows still
missing, so a pass stopped by Ctrl-C/SIGTERM continues where it stopped with exactly the batches an
uninterrupted pass runs. A later run that needs more rows labels only those.

Layout: ``soft`` is [rows, width] float32 (a token classifier's: flat [tokens, tags] indexed by token offsets); ``hidden`` is flat [tokens, mapped layers, hidden] float16
indexed by token offsets; ``attn`` / ``vr`` are flat float16 per-row blocks of [mapped layers x] heads x L x L.
Caches written before the marker existed (no ``labelled.npy``) were complete and are read as such.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import ConfigError, EdgeCompressError
from compress.progress import Progress

log = logging.getLogger(__name__)

KEY = "key.json"
LABELLED = "labelled.npy"
CHECKPOINT_SECONDS = 30.0  # flush the memmaps and move the progress marker at least this often


def layout(data, plan, intermediate: bool, t_cfg, soft_width: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Shape and dtype of every array a cache for ``data`` holds."""
    per_token = getattr(plan, "tokens", False)  # token classification: a row of scores per token
    out: dict[str, tuple[tuple[int, ...], Any]] = {
        "soft": ((int(data.offsets[-1]) if per_token else len(data), soft_width), np.float32)}
    if intermediate and plan.hidden:
        out["hidden"] = ((int(data.offsets[-1]), len(plan.mapping), t_cfg.hidden_size), np.float16)
    sq = int(data.sq_offsets[-1])
    if intermediate and plan.attention:
        out["attn"] = ((sq * len(plan.mapping) * t_cfg.num_attention_heads,), np.float16)
    if intermediate and plan.value_relation:
        out["vr"] = ((sq * plan.relation_heads,), np.float16)
    return out


def estimate_bytes(data, plan, t_cfg) -> dict[str, int]:
    """Bytes of the intermediate targets (hidden states, attentions, value relations) for every row."""
    return {k: int(np.prod(shape)) * np.dtype(dt).itemsize
            for k, (shape, dt) in layout(data, plan, True, t_cfg, 0).items() if k != "soft"}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _labelled(directory: Path, n: int) -> np.ndarray | None:
    """The progress marker: rows already labelled (all of them for a cache older than the marker)."""
    path = directory / LABELLED
    if not path.is_file():
        return np.ones(n, bool)
    try:
        mask = np.load(path)
    except (OSError, ValueError):
        return None
    return mask if mask.dtype == np.bool_ and mask.shape == (n,) else None


def _valid(directory: Path, key: dict[str, Any], shapes: dict[str, tuple[tuple[int, ...], Any]], n: int) -> bool:
    """``directory`` is a cache for ``key`` whose arrays and marker have the expected shapes."""
    if _read_json(directory / KEY) != key or _labelled(directory, n) is None:
        return False
    for name, (shape, dtype) in shapes.items():
        try:
            a = np.load(directory / f"{name}.npy", mmap_mode="r")
        except (OSError, ValueError):
            return False
        if a.shape != shape or a.dtype != dtype:
            return False
    return True


def _create(directory: Path, key: dict[str, Any], shapes: dict[str, tuple[tuple[int, ...], Any]], n: int) -> None:
    """An empty cache (sparse memmaps, nothing labelled), put in place by one rename."""
    tmp = directory.with_name(directory.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, (shape, dtype) in shapes.items():
        np.lib.format.open_memmap(tmp / f"{name}.npy", "w+", dtype, shape).flush()
    np.save(tmp / LABELLED, np.zeros(n, bool))
    (tmp / KEY).write_text(json.dumps(key) + "\n")
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


def _mark(directory: Path, arrays: dict[str, np.ndarray], labelled: np.ndarray) -> None:
    """Flush the targets, then move the marker (a crash between the two loses a chunk, never corrupts)."""
    for a in arrays.values():
        a.flush()
    tmp = directory / (LABELLED + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, labelled)
    os.replace(tmp, directory / LABELLED)


def check_directory(directory: Path) -> None:
    """Refuse a non-empty directory that is not a teacher cache (it would be replaced)."""
    if directory.is_dir() and any(directory.iterdir()) and not (directory / KEY).is_file():
        raise ConfigError(f"--teacher-cache {directory} is a non-empty directory that is not a teacher cache",
                          hint="pass a new or empty directory")


def _label(directory: Path, key: dict[str, Any], shapes: dict[str, tuple[tuple[int, ...], Any]], n: int,
           rows: np.ndarray | None, batch_size: int, label_batch: Callable[[list[int], dict[str, np.ndarray]], None],
           order: Callable[[np.ndarray], np.ndarray] = lambda missing: missing, progress: Progress | None = None,
           stop: Callable[[], bool] = lambda: False) -> tuple[int, int, bool]:
    """The fill loop :func:`fill` and :func:`fill_rows` share: the cache in ``directory`` (``n`` rows, ``shapes``:
    name -> (shape, dtype)) created or recreated when its key or arrays do not match, then the wanted ``rows``
    (None: all) it lacks, in ``order(missing)``, a batch at a time: ``label_batch(idx, arrays)`` runs the teacher on
    the rows ``idx`` and writes their targets into the memmaps. Progress after every batch; the memmaps flushed and
    the marker moved at least every :data:`CHECKPOINT_SECONDS`, at the end and when ``stop()`` turns true, which
    returns early. Returns (rows labelled by this call, rows wanted, complete)."""
    if not _valid(directory, key, shapes, n):
        if (directory / KEY).is_file():
            log.info("teacher cache %s belongs to other settings or is damaged: rebuilding it", directory)
        _create(directory, key, shapes, n)
    labelled = _labelled(directory, n)
    want = np.zeros(n, bool)
    want[slice(None) if rows is None else rows] = True
    missing = np.flatnonzero(want & ~labelled)
    total = int(want.sum())
    if not len(missing):
        log.info("reusing teacher outputs cached in %s", directory)
        return 0, total, True
    if len(missing) < total:
        log.info("continuing the teacher outputs in %s: %d of %d rows already done", directory, total - len(missing), total)
    ordered = order(missing)
    arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r+") for name in shapes}
    done, marked = total - len(missing), time.monotonic()
    for start in range(0, len(ordered), batch_size):
        idx = ordered[start : start + batch_size].tolist()
        label_batch(idx, arrays)
        labelled[idx] = True
        done += len(idx)
        if progress:
            progress({"phase": "teacher", "done": done, "total": total})
        stopping = stop()
        if stopping or done == total or time.monotonic() - marked >= CHECKPOINT_SECONDS:
            _mark(directory, arrays, labelled)
            marked = time.monotonic()
        if stopping and done < total:
            return done - (total - len(missing)), total, False
    return len(missing), total, True


def fill(directory: Path, key: dict[str, Any], data, plan, intermediate: bool, t_cfg, soft_width: int,
         rows: np.ndarray | None, forward: Callable[[list[int]], dict[str, Any]], batch_size: int,
         progress: Progress | None = None,
         stop: Callable[[], bool] = lambda: False) -> tuple[int, int, bool]:
    """Label ``rows`` of ``data`` (None: all) that the cache in ``directory`` lacks, in length-sorted batches.

    ``forward(idx)`` runs the teacher on the rows ``idx`` and returns ``compress.stages.transfer.model_outputs``' dict. The
    cache is created (or recreated, when its key or arrays do not match) first. Returns (rows labelled
    by this call, rows wanted, complete); complete is False when ``stop()`` turned true, after the
    labelled rows were flushed and marked.
    """
    import torch

    tplan = copy.copy(plan)
    if not intermediate:
        tplan.hidden = tplan.attention = tplan.value_relation = False

    def label_batch(idx: list[int], arrays: dict[str, np.ndarray]) -> None:
        _write_targets(arrays, forward(idx), idx, data, plan, tplan)

    with torch.inference_mode():
        return _label(directory, key, layout(data, plan, intermediate, t_cfg, soft_width), len(data), rows,
                      batch_size, label_batch, lambda missing: missing[np.argsort(data.lengths[missing], kind="stable")],
                      progress, stop)


def _write_targets(arrays: dict[str, np.ndarray], res: dict[str, Any], idx: list[int], data, plan, tplan) -> None:
    """The teacher's outputs ``res`` for the rows ``idx`` written into the cache's flat memmaps (``tplan``: the
    intermediate targets kept)."""
    import torch

    sq_off = data.sq_offsets
    soft = res["soft"].float().cpu().numpy()
    if getattr(plan, "tokens", False):
        for row, i in enumerate(idx):
            arrays["soft"][data.offsets[i] : data.offsets[i + 1]] = soft[row, : int(data.lengths[i])]
    else:
        arrays["soft"][idx] = soft
    if tplan.hidden:
        hs = torch.stack([res["hidden"][t + 1] for t in plan.mapping], 2).half().cpu().numpy()
    if tplan.attention:
        at = torch.stack([res["attn"][t] for t in plan.mapping], 1).half().cpu().numpy()
        heads_l = at.shape[1] * at.shape[2]
    if tplan.value_relation:
        vr = res["vr"].half().cpu().numpy()
    for row, i in enumerate(idx):
        ln = int(data.lengths[i])
        if tplan.hidden:
            arrays["hidden"][data.offsets[i] : data.offsets[i + 1]] = hs[row, :ln]
        if tplan.attention:
            a = at[row, :, :, :ln, :ln].reshape(-1)
            arrays["attn"][sq_off[i] * heads_l : sq_off[i] * heads_l + a.size] = a
        if tplan.value_relation:
            v = vr[row, :, :ln, :ln].reshape(-1)
            arrays["vr"][sq_off[i] * plan.relation_heads : sq_off[i] * plan.relation_heads + v.size] = v


class TeacherCache:
    """Reads the padded teacher targets of a batch back from a filled cache."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.arrays: dict[str, np.ndarray] = {
            f.stem: np.load(f, mmap_mode="r") for f in directory.glob("*.npy") if f.name != LABELLED
        }
        marker = directory / LABELLED  # one flag per row (a token classifier's soft targets are per token)
        n = len(np.load(marker)) if marker.is_file() else len(self.arrays["soft"]) if "soft" in self.arrays else 0
        self.labelled = _labelled(directory, n)

    def targets(self, batch, data, plan, t_cfg, device) -> dict[str, Any]:
        """Padded teacher targets for ``batch`` rebuilt from the cache."""
        import torch

        idx = batch["index"].tolist()
        if self.labelled is None or not self.labelled[idx].all():
            raise EdgeCompressError(f"teacher cache {self.dir}: rows {idx} were drawn but never labelled",
                                    hint="rerun with --force to rebuild the run (this is a bug: please report it)")
        width = batch["input_ids"].shape[1]
        res: dict[str, Any] = {}
        if "soft" in self.arrays and getattr(plan, "tokens", False):
            soft = np.zeros((len(idx), width, self.arrays["soft"].shape[1]), np.float32)
            for r, i in enumerate(idx):
                soft[r, : data.lengths[i]] = self.arrays["soft"][data.offsets[i] : data.offsets[i + 1]]
            res["soft"] = torch.from_numpy(soft).to(device)
        elif "soft" in self.arrays:
            res["soft"] = torch.from_numpy(np.asarray(self.arrays["soft"][idx])).to(device)
        if "hidden" in self.arrays:
            h = np.zeros((len(idx), width, len(plan.mapping), t_cfg.hidden_size), np.float16)
            for r, i in enumerate(idx):
                h[r, : data.lengths[i]] = self.arrays["hidden"][data.offsets[i] : data.offsets[i + 1]]
            h = torch.from_numpy(h).to(device).float()
            res["hidden"] = [h[:, :, j] for j in range(len(plan.mapping))]
        sq_off = data.sq_offsets
        for key, heads in (("attn", len(plan.mapping) * t_cfg.num_attention_heads), ("vr", plan.relation_heads)):
            if key not in self.arrays:
                continue
            a = np.zeros((len(idx), heads, width, width), np.float16)
            for r, i in enumerate(idx):
                ln = int(data.lengths[i])
                start = int(sq_off[i]) * heads
                a[r, :, :ln, :ln] = np.asarray(self.arrays[key][start : start + heads * ln * ln]).reshape(heads, ln, ln)
            t = torch.from_numpy(a).to(device).float()
            if key == "attn":
                t = t.view(len(idx), len(plan.mapping), t_cfg.num_attention_heads, width, width)
                res[key] = [t[:, j] for j in range(len(plan.mapping))]
            else:
                res[key] = t
        return res


# ---------------------------------------------------------------------------------------------
# Per-row arrays (a causal LM's top-k next-token targets per window)
# ---------------------------------------------------------------------------------------------


def fill_rows(directory: Path, key: dict[str, Any], shapes: dict[str, tuple[tuple[int, ...], Any]],
              rows: np.ndarray | None, forward: Callable[[list[int]], dict[str, np.ndarray]], batch_size: int,
              progress: Progress | None = None, stop: Callable[[], bool] = lambda: False) -> tuple[int, int, bool]:
    """Label ``rows`` (None: all) of a cache whose every array's first axis is the row (``shapes``: name ->
    (shape, dtype)); ``forward(idx)`` returns each array's values for the rows ``idx``. The same directory
    layout, key check, progress marker and stop as :func:`fill` (rows in index order). Returns (rows labelled by
    this call, rows wanted, complete)."""

    def label_batch(idx: list[int], arrays: dict[str, np.ndarray]) -> None:
        for name, values in forward(idx).items():
            arrays[name][idx] = values

    return _label(directory, key, shapes, next(iter(shapes.values()))[0][0], rows, batch_size, label_batch,
                  progress=progress, stop=stop)


class RowCache:
    """Reads the rows of a cache :func:`fill_rows` filled (refusing rows it never labelled)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.arrays = {f.stem: np.load(f, mmap_mode="r") for f in directory.glob("*.npy") if f.name != LABELLED}
        self.labelled = _labelled(directory, len(next(iter(self.arrays.values()))))

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def rows(self, idx: list[int]) -> dict[str, np.ndarray]:
        if self.labelled is None or not self.labelled[idx].all():
            raise EdgeCompressError(f"teacher cache {self.dir}: rows {idx} were drawn but never labelled",
                                    hint="rerun with --force to rebuild the run (this is a bug: please report it)")
        return {name: np.asarray(a[idx]) for name, a in self.arrays.items()}
