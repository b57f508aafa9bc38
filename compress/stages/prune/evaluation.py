"""The accuracy a pruned artifact really has: its written model, run with its own (possibly pruned)
tokenizer, scored on the eval data against the unpruned input and against the lineage's original teacher.

Vocabulary pruning changes how held-out text tokenizes, so the number a user gets is only known from the
written model itself.
"""

from __future__ import annotations

import logging
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
