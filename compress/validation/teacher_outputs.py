"""The teacher's outputs on eval data for ``validate``, computed once and reused from the cache.

The reference for retention and agreement is the PyTorch FP32 teacher run over every eval row: on
SST-2 dev (872 sentences) about half of a validate run. Its outputs depend only on the teacher's
files, the rows fed to it and how they are batched and run, so they are stored in
``teacher-outputs/KEY.npz`` under the cache directory (:mod:`compress.cache`), keyed by:

- the teacher directory's digest (weights, config and tokenizer files: tokenization and max length),
  its max length, input names and post-processing (pooling);
- a digest of the eval rows as tokenized (texts and second segments, after column selection and
  ``--limit``), the eval batch size and the torch thread count;
- the torch, transformers and edgecompress versions.

A file whose stored key or shape does not match is recomputed. Writes go to a hidden staging file
renamed into place, so a killed run never leaves a half-written entry that a later run reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from compress import __version__, cache
from compress.artifact import Format
from compress.device.shipped import concatenate_rows
from compress.progress import Advance, Progress, start_phase
from compress.validation.common import scoring_batch

log = logging.getLogger(__name__)

KIND = "teacher-outputs"


def _row_bytes(item) -> bytes:
    """A row's content: a text's UTF-8, an image file's bytes, an image array's shape and bytes."""
    if isinstance(item, Path):
        return item.read_bytes()
    if isinstance(item, str):
        return item.encode("utf-8", "surrogatepass")
    if isinstance(item, list | tuple):  # a text split into words
        return "\x1f".join(item).encode("utf-8", "surrogatepass")
    arr = np.ascontiguousarray(item)
    return f"{arr.shape}{arr.dtype}".encode() + arr.tobytes()


def data_digest(dataset) -> str:
    """sha256 of the rows the teacher sees (texts and pairs, or images, in order)."""
    h = hashlib.sha256()
    for i, text in enumerate(dataset.inputs):
        h.update(_row_bytes(text) + b"\0")
        if dataset.pairs is not None:
            h.update(dataset.pairs[i].encode("utf-8", "surrogatepass") + b"\0")
        h.update(b"\n")
    return h.hexdigest()


def cache_key(teacher, dataset, batch_size: int, threads: int | None) -> dict[str, Any]:
    from compress._optional import version_of

    return {
        "teacher_sha256": teacher.sha256,
        "max_length": teacher.info.max_length,
        "inputs": list(teacher.input_names),
        "postprocess": teacher.info.postprocess.model_dump(mode="json") if teacher.info.postprocess else None,
        "task": str(teacher.task),
        "data_sha256": data_digest(dataset),
        "rows": len(dataset),
        "pairs": dataset.pairs is not None,
        "batch_size": batch_size,
        "threads": threads,
        "versions": {"torch": version_of("torch"), "transformers": version_of("transformers"),
                     "onnxruntime": version_of("onnxruntime"),
                     "edgecompress": __version__},
    }


def _path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache.kind_dir(KIND) / f"{digest}.npz"


def _read(path: Path, key: dict[str, Any]) -> np.ndarray | None:
    if not path.is_file():
        return None
    from compress.data.arrays import read_npz

    try:
        f = read_npz(path, finite=False)  # NaN by design: a tagger's outputs past each row's words
        stored, outputs = json.loads(str(f["key"])), f["outputs"]
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file (DataError, KeyError, ...) is recomputed
        log.warning("ignoring damaged teacher-output cache %s (%s)", path, exc)
        return None
    if stored != key or len(outputs) != key["rows"]:
        return None
    return outputs


def _write(path: Path, key: dict[str, Any], outputs: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, key=np.array(json.dumps(key, sort_keys=True)), outputs=outputs)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def teacher_outputs(teacher, dataset, *, batch_size: int, threads: int | None, use_cache: bool = True,
                    progress: Progress | None = None) -> tuple[np.ndarray, str]:
    """The teacher's outputs (logits or pooled embeddings) on ``dataset`` and what the cache did:
    ``hit`` (read), ``stored`` (computed and written) or ``off`` (``use_cache`` False: computed only).
    ``progress`` hears the phase "evaluating the teacher" counted by rows when the teacher runs."""
    key = cache_key(teacher, dataset, batch_size, threads) if use_cache else None
    path = _path(key) if key is not None else None
    if path is not None:
        cached = _read(path, key)
        if cached is not None:
            cache.touch(path)
            log.info("teacher outputs on %d rows reused from %s", len(dataset), path)
            return cached, "hit"
    outputs = _run(teacher, dataset, batch_size, threads, progress)
    if path is None:
        return outputs, "off"
    try:
        _write(path, key, outputs)
        cache.enforce_limit(keep=path)
        log.info("teacher outputs on %d rows cached in %s (%.0f KB)", len(dataset), path, path.stat().st_size / 1024)
    except OSError as exc:  # a full or read-only cache costs the next run time, not this run its result
        log.warning("could not cache the teacher's outputs in %s: %s", path.parent, exc)
        return outputs, "off"
    return outputs, "stored"


def _run(teacher, dataset, batch_size: int, threads: int | None, progress: Progress | None) -> np.ndarray:
    from compress.artifact import Format
    from compress.runtimes.base import RuntimeSettings, load_runtime
    from compress.runtimes.torch_backend import TorchBackend
    from compress.teachers.load import teacher_format

    tick = start_phase(progress, "evaluating the teacher", len(dataset)) if progress else None
    if teacher_format(teacher) is Format.pytorch:
        backend = TorchBackend.from_teacher(teacher, RuntimeSettings(threads=threads))
    else:  # an adopted model file runs in its own runtime
        backend = load_runtime(teacher.as_artifact(), settings=RuntimeSettings(threads=threads))
    try:
        return predict_all(backend, dataset, batch_size, tick)
    finally:
        backend.close()


def predict_all(backend, dataset, batch_size: int, progress: Advance | None) -> np.ndarray:
    """A runtime backend's outputs on every row of ``dataset``, in order (:func:`predict_batches` joined)."""
    return concatenate_rows([out for out, _ in predict_batches(backend, dataset, batch_size, progress)])


def predict_batches(backend, dataset, batch_size: int, progress: Advance | None):
    """A runtime backend's outputs on ``dataset``, batch by batch in order: ``(outputs, labels)`` of each batch of
    ``batch_size`` rows (labels None when the data has none); ``progress(rows)`` after each batch (a counted phase's
    :data:`compress.progress.Advance`). A question-answering model gives each question's best answer span over its
    context's windows (:func:`predict_answers`)."""
    qa = str(backend.artifact.manifest.task) == "question-answering"
    for texts, pairs, labels in dataset.batches(batch_size):
        out = predict_answers(backend, texts, pairs) if qa else backend.predict_text(texts, pairs)
        if progress:
            progress(len(texts))
        yield out, labels


def qa_logits(backend, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A question-answering model's start and end logits (``[windows, tokens]``) on ``feeds``: a graph's two named
    outputs, or a PyTorch model's (through its teacher's :meth:`~compress.teachers.load.Teacher.call_outputs`)."""
    from compress.teachers.load import QA_OUTPUTS

    teacher = getattr(backend, "teacher", None)
    if teacher is not None and hasattr(teacher, "call_outputs"):  # the torch runtime: its model, on its device
        import torch

        with torch.inference_mode():
            out = teacher.call_outputs(backend.model, {k: torch.from_numpy(v).to(backend.device)
                                                       for k, v in feeds.items()})
        return tuple(out[n].float().cpu().numpy() for n in QA_OUTPUTS)
    named = backend.outputs(feeds)
    if named is None or not set(QA_OUTPUTS) <= set(named):
        from compress.errors import ConfigError

        raise ConfigError(f"{backend.artifact.path}: a question-answering model must give outputs "
                          f"{' and '.join(QA_OUTPUTS)} (it gives {', '.join(named or ['its primary output only'])})",
                          hint="export the ...ForQuestionAnswering checkpoint with edgecompress export")
    return named[QA_OUTPUTS[0]], named[QA_OUTPUTS[1]]


def predict_answers(backend, questions: list[str], contexts: list[str]) -> np.ndarray:
    """Each question's best answer in its context (:func:`compress.tasks.qa.best_spans` rows): the context cut into
    overlapping windows as the manifest's postprocess says (:func:`compress.data.tokenization.qa_windows`), the
    model run on every window, the best span over them."""
    from compress.data.tokenization import qa_windows
    from compress.tasks.qa import best_spans

    m, enc = backend.artifact.manifest, backend.encoder
    post = m.postprocess
    windows = qa_windows(enc.tokenizer, list(questions), list(contexts), max_length=min(post.window, enc.max_length),
                         stride=post.stride, pad_id=enc.pad_id)
    start, end = qa_logits(backend, windows.feeds(enc.input_names))
    return best_spans(start, end, windows.offsets, windows.example, len(questions), post)


def other_outputs_fidelity(backend, run, settings) -> dict[str, Any]:
    """Fidelity of every output but the first against the teacher's same output, where both run their graphs' outputs
    (an adopted file and its artifact: a detector's boxes beside its scores); one more pass over the eval rows."""
    from compress.runtimes.base import load_runtime
    from compress.tasks.outputs import output_fidelity
    from compress.teachers.load import teacher_format

    teacher, dataset = run.teacher, run.dataset
    batch_size = scoring_batch(backend.artifact.manifest, run.profile.measure)
    if teacher_format(teacher) is Format.pytorch:  # a PyTorch teacher gives its primary output only
        return {}
    ref_backend = load_runtime(teacher.as_artifact(), settings=settings)
    got: dict[str, list] = {}
    want: dict[str, list] = {}
    tick = start_phase(run.progress, "comparing the other outputs", len(dataset))
    try:
        for items, pairs, _ in dataset.batches(batch_size):
            feeds = backend.encode(items, pairs)
            a, b = backend.outputs(feeds), ref_backend.outputs(feeds)
            if a is None or b is None:
                return {}
            for name in a.keys() & b.keys():
                got.setdefault(name, []).append(a[name])
                want.setdefault(name, []).append(b[name])
            tick(len(items))
    finally:
        ref_backend.close()
    primary = backend.artifact.manifest.outputs[0].name
    out = {}
    for name in [n for n in got if n != primary]:
        cand, ref = np.concatenate(got[name]), np.concatenate(want[name])
        if cand.shape == ref.shape:
            out[name] = output_fidelity(cand, ref)
    return out
