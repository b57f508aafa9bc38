"""Embeddings (``feature-extraction``, and a classifier whose manifest names no classes): judged against the teacher
only, by the cosine of each sample's output to the teacher's (the metric) and by nearest-neighbour agreement.

Its streaming form keeps every row (:class:`compress.tasks.CollectedMetric`): a row's nearest neighbour is found among
all the others, so the metric needs every row at once."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from compress.tasks.outputs import unit


class EmbeddingPostprocess(BaseModel):
    """The ``postprocess`` block of ``feature-extraction``: how token states become one embedding per sample."""

    model_config = ConfigDict(extra="forbid")
    pooling: str | None = Field(None, description="'mean' or 'cls' (sentence-transformers), or None: the output is "
                                "the embedding already.")
    normalize: bool = Field(False, description="L2-normalise pooled embeddings.")


def pooling_of(postprocess) -> tuple[str | None, bool]:
    """``(pooling, normalize)`` of a postprocess block: a feature extractor's, ``(None, False)`` for any other
    task's (whose outputs are used as they are)."""
    if isinstance(postprocess, EmbeddingPostprocess):
        return postprocess.pooling, postprocess.normalize
    return None, False


def neighbour_agreement(reference: np.ndarray, candidate: np.ndarray, k: int = 1) -> float:
    """Share of rows whose nearest other row under ``reference`` is among the ``k`` nearest under ``candidate``.

    k=1: the same nearest neighbour; k=3 tolerates near-ties between neighbours, which short texts
    have many of (and which quantization noise legitimately reorders).
    """
    if len(reference) < 2:
        return 1.0

    def sims(e: np.ndarray) -> np.ndarray:
        u = unit(e.astype(np.float64))
        sim = u @ u.T
        np.fill_diagonal(sim, -np.inf)
        return sim

    ref_nn = sims(reference).argmax(axis=1)
    cand_topk = np.argsort(-sims(candidate), axis=1)[:, : min(k, len(reference) - 1)]
    return float((cand_topk == ref_nn[:, None]).any(axis=1).mean())


def embedding_metrics(m, cand: np.ndarray, ref: np.ndarray | None, labels) -> dict[str, Any]:
    """Mean cosine to the teacher's embeddings (the metric) and the lowest; agreement: the teacher's nearest
    neighbour among the artifact's 3 nearest (and 1 nearest, ``agreement_top1``)."""
    metrics: dict[str, Any] = {"metric_name": "cosine_to_teacher"}
    if ref is not None:
        cos = (unit(cand.astype(np.float64)) * unit(ref.astype(np.float64))).sum(axis=1)
        metrics["metric"] = float(cos.mean())
        metrics["cosine_min"] = float(cos.min())
        metrics["teacher_metric"] = 1.0
        metrics["agreement"] = neighbour_agreement(ref, cand, k=3)
        metrics["agreement_top1"] = neighbour_agreement(ref, cand, k=1)
        metrics["agreement_definition"] = (
            "share of eval texts whose nearest neighbour under the teacher is among the artifact's 3 nearest"
        )
    return metrics
