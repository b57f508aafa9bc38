"""What both TensorRT paths (ONNX → engine, and Torch-TensorRT) share: the optimisation-profile shapes, the
parity batches inside them, and the agreement they must reach."""

from __future__ import annotations

import re
from typing import Any

from compress.errors import ConfigError, StageError
from compress.stages.export.config import ExportConfig

INT8_MIN_AGREEMENT = 0.9
PLAN = "model.plan"
TIMING_CACHE = "timing.cache"

Shape = tuple[int, int]


def parse_shape(text: str) -> Shape:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text or "")
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ConfigError(f"shape {text!r} is not BATCHxSEQUENCE", hint="write it like 8x128")
    return int(m.group(1)), int(m.group(2))


def resolve_shapes(config: ExportConfig, max_length: int) -> dict[str, Shape]:
    """min/opt/max (batch, sequence) from the options, else the profile's ``measure`` section.

    Defaults: min 1x1, opt batch_size x sequence_length, max max(4 x batch_size, 32) x max_length. A
    profile may give ``measure.min_shape``/``opt_shape``/``max_shape`` ("BxS") itself. ``--shape`` makes
    all three one static shape.
    """
    batch, seq, given = 1, 64, {}
    if config.tensorrt.profile:
        from compress.profiles.load import load_profile

        measure = load_profile(config.tensorrt.profile).measure
        batch, seq = measure.batch_size, measure.sequence_length
        for key in ("min", "opt", "max"):
            v = getattr(measure, f"{key}_shape", None)
            if v:
                given[key] = parse_shape(v) if isinstance(v, str) else tuple(v)
    if config.tensorrt.shape:
        s = parse_shape(config.tensorrt.shape)
        return {"min": s, "opt": s, "max": s}
    shapes = {
        "min": given.get("min", (1, 1)),
        "opt": given.get("opt", (batch, min(seq, max_length))),
        "max": given.get("max", (max(4 * batch, 32), max_length)),
    }
    for key in ("min", "opt", "max"):
        if getattr(config.tensorrt, f"{key}_shape"):
            shapes[key] = parse_shape(getattr(config.tensorrt, f"{key}_shape"))
    lo, mid, hi = shapes["min"], shapes["opt"], shapes["max"]
    if not all(lo[i] <= mid[i] <= hi[i] for i in (0, 1)):
        raise ConfigError(
            f"optimisation profile shapes must satisfy min <= opt <= max per axis, got "
            f"min {lo[0]}x{lo[1]}, opt {mid[0]}x{mid[1]}, max {hi[0]}x{hi[1]}",
            hint="fix --min-shape/--opt-shape/--max-shape",
        )
    return shapes


def parity_batches(runtime: Any, texts: list[str], shapes: dict[str, Shape]):
    """Encoded batches of ``texts`` that fit the min..max shapes (split on batch, padded or cut on sequence)."""
    (lo_b, lo_s), (hi_b, hi_s) = shapes["min"], shapes["max"]
    step = hi_b if lo_b == hi_b else min(hi_b, max(lo_b, 8))
    for i in range(0, len(texts) - lo_b + 1, step):
        chunk = texts[i: i + step]
        batch = runtime.encode(chunk)
        length = batch["input_ids"].shape[1]
        if not lo_s <= length <= hi_s:
            batch = runtime.encode(chunk, pad_to=min(max(length, lo_s), hi_s))
        yield batch


MIN_COSINE = 0.99  # embedding models: worst cosine to the reference


def require_agreement(parity: Any, what: str, reference: str, hint: str) -> None:
    """StageError unless ``what`` agrees with ``reference``: argmax agreement >= 90% (classifiers) or
    worst cosine >= 0.99 (embedding models)."""
    agree = parity.argmax_agreement
    if agree is not None and agree < INT8_MIN_AGREEMENT:
        raise StageError(f"{what} agrees with {reference} on {agree:.0%} of samples (needs {INT8_MIN_AGREEMENT:.0%})",
                         hint=hint)
    if agree is None and parity.cosine_min < MIN_COSINE:
        raise StageError(f"{what}'s embeddings have cosine {parity.cosine_min:.3f} to {reference} (needs {MIN_COSINE})",
                         hint=hint)


def compare_in_range(reference: Any, candidate: Any, texts: list[str], shapes: dict[str, Shape],
                     classification: bool):
    """Parity of ``candidate(batch)`` with ``reference.predict(batch)`` over :func:`parity_batches` (the
    texts in batches inside the min..max shapes); None when no batch fits (fewer texts than the min batch)."""
    import numpy as np

    from compress.stages.common import compare_outputs

    refs, gots = [], []
    for batch in parity_batches(reference, texts, shapes):
        refs.append(reference.predict(batch))
        gots.append(candidate(batch))
    if not refs:
        return None
    return compare_outputs(np.concatenate(refs), np.concatenate(gots), classification)
