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


class StreamCalibrationReader:
    """ONNX Runtime CalibrationDataReader over a streaming model's calls (the manifest's ``stream``): each sequence of
    ``data`` (:func:`compress.data.streams.sequences_for`) runs call by call through ``backend`` (the FP32 model), the
    state carried; every call's whole feeds (chunk, state, constants) are kept in stream order, and ``samples`` of them
    spread evenly over the stream are read (every call when there are fewer)."""

    def __init__(self, backend, data, samples: int) -> None:
        from compress.data.streams import sequences_for

        calls = backend.stream_calls
        seen: list[dict[str, np.ndarray]] = []

        def call(feeds):
            seen.append(feeds)
            return backend.run_named(feeds)

        for seq in sequences_for(backend.artifact.manifest, data):
            calls.run(call, seq.values)
        self.calls = len(seen)
        self._items = seen[::max(1, math.ceil(len(seen) / samples))]
        self._it = iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._items)
