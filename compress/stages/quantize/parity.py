"""The collapse floor of quantize's own parity check: below it the quantized model no longer computes what its
input computes, and saying "wrote ... int8" with exit code 0 would hide it.

The check compares the quantized model with its input on the parity samples (``sample_data``; for static INT8 the
calibration data when none is given, else built-in texts or noise images). Floors, measured on a real ImageNet
MobileNetV2 (``benchmarks/vision/cnn_int8.py``) over 32 calibration photos:

* mean cosine of the outputs: the old default INT8 (ReLU6 left float, min-max ranges) 0.899 and a per-tensor one
  0.877, against 0.981 for the fixed default that keeps 0.990 of the teacher's accuracy: the floor is **0.95**;
* argmax agreement: 0.31 / 0.25 against 0.66 (photos on which a 1,000-class teacher is unsure flip easily, so
  argmax is a weak signal there): the floor is **0.5**, a coin toss.

A task may add figures of its own (``TaskInfo.output_agreement``, measured by the held-out check of static INT8:
:mod:`compress.stages.quantize.fallback`), each with its floor in :data:`TASK_FLOORS`. A detector's is the cosine of
its per-cell score maps: on YOLOX-Nano (``benchmarks/vision/yolox_nano.py``, 18 held-out calibration views) candidates at
0.989 and 0.990 kept 0.937 and 0.950 of the FP32 boxes' mAP on 125 other views, one at 0.943 kept 0.78, whatever their
raw output cosine (0.99 for all three): the floor is **0.995**, the margin a small held-out set needs; the boxes of
the confident cells must overlap the teacher's at a mean IoU of **0.95**. A probability map's (a segmenter's) is the
IoU of its mask (at the task's threshold) against the teacher's: **0.97**, issue 69's bar for MediaPipe's selfie
segmenter (``benchmarks/vision/selfie_litert.py``: dynamic INT8 keeps 0.985-0.992 on views of photos no calibration view came
from, static INT8 0.961-0.968); beside it, the cosine of the probability maps of all the held-out rows together
(``map_cosine``): **0.98**, issue 69's bar for PaddleOCR's PP-OCRv4 text map (``benchmarks/vision/paddle_ocr.py``). A
probability map's mean *per-row* output cosine is not floored: a row without foreground has a map near 0 everywhere,
whose cosine is noise (0.0 for PP-OCRv4 on a photo without text, from a candidate at 0.96 pooled).

A streaming model (the manifest's ``stream``) is compared sequence by sequence, call by call with the state carried
(:func:`stream_parity`): the cosine is that of each sequence's trace, and the per-call decisions at the task's
threshold are compared beside it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from compress.errors import QuantizationCollapsed
from compress.stages.common import Parity

log = logging.getLogger("compress.stages.quantize")

#: the floors (see the module docstring)
COSINE_MEAN_FLOOR = 0.95
ARGMAX_AGREEMENT_FLOOR = 0.5
#: the floors of the figures a task adds (see the module docstring), by figure
TASK_FLOORS = {"score_cosine": 0.995, "box_iou": 0.95, "mask_iou": 0.97, "map_cosine": 0.98}


def not_measured(parity: dict[str, Any]) -> list[str]:
    """The parity figures that are no number (NaN, infinite, or missing where a cosine must be): the quantized model's
    outputs (or its input's) hold NaN or Inf, so nothing was measured; ``[]`` when every figure is a number."""
    figures = {k: parity.get(k) for k in ("cosine_min", "cosine_mean", "argmax_agreement")}
    return [k for k, v in figures.items() if (v is None and k == "cosine_min") or
            (v is not None and not math.isfinite(float(v)))]


def collapse(parity: dict[str, Any]) -> list[str]:
    """What fell below its floor, as phrases (``[]`` when nothing did)."""
    out = [f"{k} is {parity.get(k)}" for k in not_measured(parity)]
    cos = parity.get("cosine_mean")
    if cos is not None and cos < COSINE_MEAN_FLOOR and parity.get("map_cosine") is None:  # a map's is pooled
        out.append(f"mean output cosine {cos:.3f} < {COSINE_MEAN_FLOOR}")
    agree = parity.get("argmax_agreement")
    if agree is not None and agree < ARGMAX_AGREEMENT_FLOOR:
        out.append(f"argmax agreement {agree:.3f} < {ARGMAX_AGREEMENT_FLOOR}")
    for name, floor in TASK_FLOORS.items():
        value = parity.get(name)
        if value is not None and value < floor:
            out.append(f"{name.replace('_', ' ')} {value:.3f} < {floor}")
    return out


def check_collapse(parity: dict[str, Any], *, strict: bool, remedies: str) -> dict[str, Any] | None:
    """Warn loudly (or, ``strict``, raise :class:`QuantizationCollapsed`) when the parity check collapsed; return the
    record for the manifest (``None`` when it did not). A parity that is no number (:func:`not_measured`) is an
    error even without ``strict``: nothing is written with it."""
    below = collapse(parity)
    if not below:
        return None
    message = f"the quantized model collapsed against its input on {parity.get('n', '?')} parity samples: " + \
        "; ".join(below)
    if not_measured(parity):
        raise QuantizationCollapsed(message + " (its outputs hold NaN or Inf); no artifact was written",
                                    hint=f"check the calibration and parity data for NaN/Inf values, or try {remedies}")
    if strict:
        raise QuantizationCollapsed(message, hint=f"try {remedies}")
    log.warning("%s. This artifact is unlikely to keep its accuracy; try: %s (--strict makes this an error)",
                message, remedies)
    return {"floors": {"cosine_mean": COSINE_MEAN_FLOOR, "argmax_agreement": ARGMAX_AGREEMENT_FLOOR,
                       **{k: v for k, v in TASK_FLOORS.items() if k in parity}},
            "below": below, "remedies": remedies}


#: at most this many calls of the parity data are streamed through both models
STREAM_PARITY_CALLS = 4096


def stream_parity(reference, candidate, data) -> Parity:
    """A streaming model's parity: the sequences of ``data`` (seeded noise without it) through both runtime backends
    call by call, the state carried (:meth:`~compress.runtimes.base.RuntimeBackend.run_stream`); the traces compared
    (:func:`compress.tasks.streams.stream_figures`); both backends closed."""
    from compress.data.streams import sequences_for
    from compress.tasks.streams import stream_figures

    m = reference.artifact.manifest
    name = m.outputs[0].name
    try:
        sequences = sequences_for(m, data, STREAM_PARITY_CALLS)
        ref = [np.asarray(reference.run_stream(s.values)[name], dtype=np.float32) for s in sequences]
        cand = [np.asarray(candidate.run_stream(s.values)[name], dtype=np.float32) for s in sequences]
    finally:
        reference.close()
        candidate.close()
    figures = stream_figures(m, cand, ref)
    fid = figures.pop("fidelity")
    extra = {"sequences": len(sequences), "state_carried": True, "snr_db": fid["snr_db"],
             **{k: figures[k] for k in ("threshold", "decision_agreement", "calls_changed") if k in figures}}
    return Parity(fid["max_abs_error"], fid["mean_abs_error"], fid["cosine_min"], None, int(sum(map(len, ref))),
                  cosine_mean=fid["cosine"], extra=extra)
