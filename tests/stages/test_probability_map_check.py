"""Static INT8's held-out check of a probability map (issue 69, PaddleOCR's PP-OCRv4 text detector): the cosine of the
maps of all the held-out rows together (``map_cosine``, floor 0.98) judges the map, not the mean of the per-row
cosines, which a row without foreground (a map near 0 everywhere) turns into noise."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from compress.stages.quantize.fallback import shortfall
from compress.stages.quantize.parity import TASK_FLOORS, collapse
from compress.tasks import Task
from compress.tasks.maps import mask_agreement

#: the wheel's config.yaml (rapidocr_onnxruntime 1.4.4, Det): the DB threshold; the file ends in a Sigmoid
DB = SimpleNamespace(task=Task.probability_map, postprocess={"scores_are_probabilities": True, "threshold": 0.3})


def _maps(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two views with text (lines of probability near 1) and two without (maps near 0), ``[4, 1, 32, 32]``, and a
    candidate that follows them closely where there is text and differs only by noise around 1e-4 where there is
    none."""
    rng = np.random.default_rng(seed)
    ref = np.abs(rng.normal(0, 1e-4, (4, 1, 32, 32)))
    ref[:2, :, 8:12, 4:28] = 0.95
    ref[:2, :, 20:23, 2:30] = 0.9
    cand = np.clip(ref + rng.normal(0, 0.01, ref.shape) * (ref > 0.5), 0, 1)
    cand[2:] = np.abs(rng.normal(0, 1e-4, (2, 1, 32, 32)))  # other noise where there is no text
    return cand.astype(np.float32), ref.astype(np.float32)


def _per_row_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean((a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))))


def test_the_pooled_map_cosine_follows_the_text_where_the_per_row_mean_is_noise():
    cand, ref = _maps()
    figures = mask_agreement(DB, cand, ref)
    assert figures["mask_iou"] == 1.0 and figures["map_cosine"] > 0.999
    assert _per_row_cosine(cand, ref) < 0.9  # the empty rows' cosines are noise (what the old check floored at 0.95)


def test_a_map_that_agrees_is_not_called_a_collapse_for_its_empty_rows():
    cand, ref = _maps()
    parity = {"cosine_min": 0.6, "cosine_mean": _per_row_cosine(cand, ref), **mask_agreement(DB, cand, ref)}
    assert collapse(parity) == []
    assert shortfall(parity) < 0.001  # the fall-back ranks a run by the pooled cosine too


def test_a_map_below_its_pooled_floor_is_a_collapse():
    cand, ref = _maps()
    cand[:2, :, 8:12, 4:28] = 0.2  # a line lost
    figures = mask_agreement(DB, cand, ref)
    below = collapse({"cosine_min": 0.6, "cosine_mean": 0.99, **figures})
    assert figures["map_cosine"] < TASK_FLOORS["map_cosine"] == 0.98
    assert any(b.startswith("map cosine") for b in below) and any(b.startswith("mask iou") for b in below)


def test_other_tasks_keep_the_per_row_floor():
    assert collapse({"cosine_min": 0.5, "cosine_mean": 0.9}) == ["mean output cosine 0.900 < 0.95"]
    assert shortfall({"cosine_mean": 0.9, "mask_iou": 0.99}) == 1.0 - 0.9
