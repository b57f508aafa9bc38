"""Raw inputs by the manifest's input kind, on the host: data sets, parity and calibration samples, latency batches.

The one place that knows a text model reads a table of texts and an image model reads images; stages, validation
and the remote controller ask here with the artifact's ``preprocess`` description and get a data set with the
shared face (``inputs``, ``pairs``, ``labels``, ``batches``, ``head``, ``sample``) or a list of raw inputs that
the model's feed builder (:func:`compress.device.feeds.make_feeds`) encodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_SAMPLES", "is_image", "preprocess_kind", "splits_words", "latency_inputs", "load_inputs", "sample_inputs", "sample_texts", "synthetic_images"]


# Texts used when the user gives no sample data: varied lengths so padding is exercised.
DEFAULT_SAMPLES = [
    "a gripping, beautifully acted film.",
    "the plot is thin and the jokes fall flat.",
    "I would happily watch it again with friends, and probably will, because it rewards a second look.",
    "dull.",
    "the service was slow but the food made up for it.",
    "an ambitious mess that never finds its footing despite a talented cast and a generous budget.",
    "works exactly as described.",
    "not worth the money.",
]


def sample_texts(path: Path | str | None, n: int) -> list[str]:
    """``n`` texts from a data file (its labels, ids or names, are not read), or the built-in samples."""
    if path is None:
        return (DEFAULT_SAMPLES * (n // len(DEFAULT_SAMPLES) + 1))[:n]
    from compress.data.tables import load_dataset

    return load_dataset(path, limit=n, texts_only=True).texts


def preprocess_kind(preprocess: Any) -> str:
    """The input kind (``text``, ``image``, ``arrays``) of a manifest's ``preprocess``, as a model or a dict; None reads as text."""
    if isinstance(preprocess, dict):
        return preprocess.get("kind", "text")
    return getattr(preprocess, "kind", "text")


def splits_words(preprocess: Any) -> bool:
    """Whether a text model reads texts split into words (token classification: CoNLL data)."""
    return bool(preprocess.get("words") if isinstance(preprocess, dict) else getattr(preprocess, "words", False))


def is_image(preprocess: Any) -> bool:
    return preprocess_kind(preprocess) == "image"


def load_inputs(path: Path | str, preprocess: Any = None, *, label2id: dict[str, int] | None = None,
                num_labels: int | None = None, require_labels: bool = False, limit: int | None = None,
                texts_only: bool = False, text_column: str | None = None, text_pair_column: str | None = None,
                label_column: str | None = None, targets: bool = False):
    """A data set for a model whose inputs ``preprocess`` describes: arrays (:mod:`compress.data.arrays`), images
    (:mod:`compress.data.images`) or texts
    (:func:`compress.data.tables.load_dataset`; the column options apply to texts only). ``targets``: the model is a
    regressor, so a table's label column holds numbers (target values), not class names or ids; an ``.npz``'s
    ``labels`` are read as numbers already when there are no class names."""
    if preprocess_kind(preprocess) == "arrays":
        from compress.data.arrays import load_array_dataset

        return load_array_dataset(path, preprocess, label2id=None if texts_only else label2id,
                                  require_labels=require_labels and not texts_only, limit=limit)
    if is_image(preprocess):
        from compress.data.images import load_image_dataset

        return load_image_dataset(path, label2id=None if texts_only else label2id,
                                  require_labels=require_labels and not texts_only, limit=limit,
                                  targets=targets and not texts_only)
    if splits_words(preprocess):
        from compress.data.words import load_word_dataset

        return load_word_dataset(path, label2id=label2id, require_labels=require_labels and not texts_only,
                                 limit=limit, texts_only=texts_only)
    from compress.data.tables import load_dataset

    return load_dataset(path, text_column=text_column, text_pair_column=text_pair_column, label_column=label_column,
                        label2id=label2id, num_labels=num_labels, require_labels=require_labels, limit=limit,
                        texts_only=texts_only, targets=targets)


def synthetic_images(preprocess: Any, n: int, seed: int = 0) -> list[Any]:
    """``n`` seeded noise images at the model's input size (uint8): parity and latency need no data set."""
    import numpy as np

    spec = preprocess if isinstance(preprocess, dict) else preprocess.model_dump()
    h, w = spec.get("crop") or (spec["size"] if len(spec["size"]) == 2 else spec["size"] * 2)
    c = 1 if spec.get("channels") == "L" else 3
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (int(h), int(w), c), dtype=np.uint8) for _ in range(n)]


def sample_inputs(path: Path | str | None, n: int, preprocess: Any = None) -> list[Any]:
    """``n`` raw inputs from a data file (labels are not read), or the built-in ones: texts, or seeded noise images
    at the input size (numerical parity needs inputs of the right shape, not meaningful ones); for an array model,
    seeded arrays of its input shapes (:func:`compress.data.arrays.synthetic_arrays`)."""
    if preprocess_kind(preprocess) == "arrays" and path is None:
        from compress.data.arrays import synthetic_arrays

        return synthetic_arrays(preprocess, n)
    if preprocess_kind(preprocess) == "text" and not (path is not None and splits_words(preprocess)):
        return sample_texts(path, n)
    if path is None:
        return synthetic_images(preprocess, n)
    return list(load_inputs(path, preprocess, limit=n, texts_only=True).inputs)


def latency_inputs(inputs: list[Any] | None, batch_size: int, sequence_length: int, preprocess: Any = None) -> list[Any]:
    """One batch of raw inputs for timing: texts long enough to fill ``sequence_length`` tokens, or ``batch_size``
    images (the data set's first, else noise at the input size; every image is resized to the same shape)."""
    if preprocess_kind(preprocess) != "text":
        items = list(inputs[:batch_size]) if inputs else []
        while items and len(items) < batch_size:
            items += items[: batch_size - len(items)]
        return items or sample_inputs(None, batch_size, preprocess)
    # Real sentences, never one phrase repeated: ONNX Runtime's GatherBlockQuantized (INT4 embeddings) costs ~3.7 µs
    # per *distinct* token on one Xeon core, so a repeated 9-word pangram timed a 2-layer student at 0.48 ms that
    # runs real text at 0.68 ms.
    base = " ".join(t if isinstance(t, str) else " ".join(t) for t in inputs[:64]) if inputs else \
        " ".join(DEFAULT_SAMPLES)  # (texts split into words joined again: timing needs no word alignment)
    long = (base + " ") * (sequence_length // max(1, len(base.split())) + 2)
    return [long] * batch_size
