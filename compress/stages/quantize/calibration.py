"""Calibration data for every quantization backend: representative texts, encoded the way each one reads them.

* :class:`CalibrationReader`: ONNX Runtime's ``CalibrationDataReader`` protocol (static INT8 QDQ here, and the
  INT8 QDQ model TensorRT export builds).
* :func:`calibration_items`: one unpadded sample per text, what NNCF collects activation statistics on.
* :class:`StreamCalibrationReader`: a streaming model's calls in stream order, each with the state the FP32 model
  carried to it (a recurrent state's ranges are those it takes while streaming, not zeros).

Texts come from a data file (``--calibration``; labels, ids or names, are not read) through
:func:`compress.stages.common.sample_texts`; encoders from :func:`compress.data.tokenization.encoder_for`.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["CalibrationReader", "StreamCalibrationReader", "calibration_items"]


class CalibrationReader:
    """ONNX Runtime CalibrationDataReader over encoded texts, one sample at a time.

    Unpadded by default. ``same_length``: every sample padded to the longest text (each already cut at the
    model's max length), for ONNX Runtime's histogram calibrators (percentile, entropy), which stack the
    samples' activations and so need one shape; ``length`` is then that length.
    """

    def __init__(self, encoder, texts: list[str], input_names: set[str], same_length: bool = False) -> None:
        self.length = max(len(encoder.encode([t])["input_ids"][0]) for t in texts) if same_length else None
        self._items = [
            {k: v for k, v in encoder.encode([t], pad_to=self.length).items() if k in input_names} for t in texts
        ]
        self._it = iter(self._items)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._items)


def calibration_items(encoder, texts: list[str], pairs: list[str] | None = None) -> list[dict[str, np.ndarray]]:
    """One unpadded encoded sample per text: what NNCF collects activation statistics on."""
    if pairs is None:
        return [encoder.encode([t]) for t in texts]
    return [encoder.encode([t], [p]) for t, p in zip(texts, pairs, strict=True)]


#: calls stacked into one calibration batch of a streaming model (where its batch axes are open)
STREAM_BATCH = 16


class StreamCalibrationReader:
    """ONNX Runtime CalibrationDataReader over a streaming model's calls (the manifest's ``stream``): each sequence of
    ``data`` (:func:`compress.data.streams.sequences_for`) runs call by call through ``backend`` (the FP32 model), the
    state carried; every call's whole feeds (chunk, state, constants) are kept in stream order, and ``samples`` of them
    spread evenly over the stream are read (every call when there are fewer).

    The calls are read :data:`STREAM_BATCH` at a time, stacked on the batch axes (each call is independent once its
    state is given), where the graph leaves them open: a moving-average calibrator (``mean-minmax``) averages each
    batch's extremes, and over one call at a time a one-value tensor (Silero's speech logit) would get the mean of its
    values as its range, clipping every negative logit."""

    def __init__(self, backend, data, samples: int) -> None:
        from compress.data.streams import sequences_for

        calls = backend.stream_calls
        seen: list[dict[str, np.ndarray]] = []

        def call(feeds):
            seen.append(feeds)
            return backend.call(backend.main, feeds)

        for seq in sequences_for(backend.artifact.manifest, data):
            calls.run(call, seq.values)
        self.calls = len(seen)
        picked = seen[::max(1, math.ceil(len(seen) / samples))]
        self.samples = len(picked)
        self._items = _stacked(picked, calls)
        self._it = iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._items)


def _stacked(items: list[dict[str, np.ndarray]], calls) -> list[dict[str, np.ndarray]]:
    """``items`` (one call's feeds each) in batches of :data:`STREAM_BATCH` calls of one size (histogram calibrators
    stack them), each input stacked on its batch axis (a dimension named like ``batch``; the chunked input's first);
    the calls one at a time where an axis is fixed or has no name."""
    axes = {calls.input: 0 if not isinstance(calls.shapes[calls.input][0], int) else None}
    for name in calls.state.values():
        axes[name] = next((i for i, d in enumerate(calls.shapes[name]) if "batch" in str(d).lower()), None)
    if any(a is None for a in axes.values()) or len(items) < STREAM_BATCH:
        return items
    whole = len(items) // STREAM_BATCH * STREAM_BATCH
    return [{**group[0], **{name: np.concatenate([g[name] for g in group], axis=axis) for name, axis in axes.items()}}
            for group in (items[i:i + STREAM_BATCH] for i in range(0, whole, STREAM_BATCH))]
