"""The accuracy a pruned artifact really has: its written model, run with its own (possibly pruned)
tokenizer, scored on the eval data against the unpruned input and against the lineage's original teacher.

Vocabulary pruning changes how held-out text tokenizes, so the number a user gets is only known from the
written model itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def predictions(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 32) -> np.ndarray:
    """Argmax per text, in the order of ``texts`` (batched shortest first for little padding, then put back)."""
    import torch

    from compress.teachers.load import model_feed

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    pred = np.empty(len(texts), dtype=np.int64)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt")
            pred[idx] = model(**model_feed(model, dict(enc))).logits.argmax(-1).numpy()
    return pred


def _accuracy(model, tokenizer, texts: list[str], labels: np.ndarray, max_length: int) -> float:
    return float((predictions(model, tokenizer, texts, max_length) == labels).mean())


def written_eval(written, unpruned, eval_ds, max_length: int, original_teacher: str | None) -> dict[str, Any] | None:
    """Accuracy of ``written`` (a loaded Teacher) vs ``unpruned`` and the original teacher on ``eval_ds``.

    None when the task is not classification or the eval rows are not all labelled.
    """
    labels = None if eval_ds.labels is None else np.asarray(eval_ds.labels)
    if labels is None or written.model.config.num_labels < 2 or (labels < 0).any():
        return None
    texts = list(eval_ds.texts)
    rec: dict[str, Any] = {"metric": "accuracy", "rows": len(texts)}
    rec["written"] = _accuracy(written.model, written.tokenizer, texts, labels, max_length)
    rec["unpruned"] = _accuracy(unpruned.model, unpruned.tokenizer, texts, labels, max_length)
    rec["retention_vs_unpruned"] = rec["written"] / rec["unpruned"] if rec["unpruned"] else None
    root = Path(original_teacher) if original_teacher else None
    if root is not None and root.resolve() != unpruned.path.resolve():
        if root.is_dir():
            from compress.teachers.load import load_teacher

            teacher = load_teacher(root, written.task)
            rec["teacher"] = _accuracy(teacher.model, teacher.tokenizer, texts, labels, max_length)
            rec["teacher_path"] = str(root)
        else:
            log.warning("the original teacher %s is gone: retention is reported against the unpruned input only", root)
    else:
        rec["teacher"] = rec["unpruned"]
        rec["teacher_path"] = str(unpruned.path)
    if rec.get("teacher"):
        rec["retention_vs_teacher"] = rec["written"] / rec["teacher"]
    return rec


# -- question answering ---------------------------------------------------------------------------------------------

@dataclass
class SpanRows:
    """A question answerer's rows for pruning: ``texts`` (question, context) pairs and ``labels`` each first gold
    answer's ``(start, end)`` characters."""

    texts: list[tuple[str, str]]
    labels: list[tuple[int, int]]


def span_rows(path, n: int | None, seed: int) -> SpanRows:
    """The questions of a SQuAD-format file (``n``: a deterministic sample) as :class:`SpanRows`."""
    from compress.data.squad import load_squad

    ds = load_squad(path)
    ds = ds.sample(n, seed=seed) if n is not None else ds
    return SpanRows(list(zip(ds.questions, ds.contexts, strict=True)),
                    [(s[0], s[0] + len(a.answers[0])) for s, a in zip(ds.starts, ds.labels, strict=True)])


def span_batches(tokenizer, texts: list[tuple[str, str]], labels: list[tuple[int, int]] | None, max_length: int,
                 stride: int, batch_size: int):
    """``(feeds, labels)`` batches of the windows of ``texts`` (:func:`compress.data.tokenization.qa_windows`): labels
    are each window's answer start and end positions, interleaved (start, end of window 0, ...) as
    :func:`compress.stages.prune.structured.class_scores` lays its rows out; None without labels."""
    import torch

    from compress.data.tokenization import qa_windows

    for i in range(0, len(texts), batch_size):
        rows = texts[i:i + batch_size]
        w = qa_windows(tokenizer.backend_tokenizer, [q for q, _ in rows], [c for _, c in rows], max_length=max_length,
                       stride=stride, pad_id=tokenizer.pad_token_id or 0)
        width = int(w.arrays["attention_mask"].sum(1).max())
        feeds = {k: torch.from_numpy(v[:, :width]) for k, v in w.arrays.items()}
        lab = None
        if labels is not None:
            part = labels[i:i + batch_size]
            s, e = w.positions([a for a, _ in part], [b for _, b in part])
            lab = torch.from_numpy(np.stack([s, e], 1).reshape(-1))
        yield feeds, lab


def written_squad(written, unpruned, eval_data, max_length: int) -> dict[str, Any]:
    """SQuAD F1 and exact match of the written question answerer and of the unpruned one on ``eval_data``."""
    from compress.data.squad import load_squad
    from compress.stages.transfer import squad_f1

    ds = load_squad(eval_data)
    post = written.info.postprocess
    own = squad_f1(written.model, written.tokenizer, ds, max_length, post)
    ref = squad_f1(unpruned.model, unpruned.tokenizer, ds, max_length, post)
    return {"metric": "f1", "rows": len(ds), "written": own["metric"], "written_exact_match": own["exact_match"],
            "unpruned": ref["metric"], "unpruned_exact_match": ref["exact_match"],
            "retention_vs_unpruned": own["metric"] / ref["metric"] if ref["metric"] else None}
