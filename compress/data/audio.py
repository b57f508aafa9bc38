"""Audio for streaming models: a ``.wav`` read with the standard library's :mod:`wave` (16-bit PCM, mono).

A file is checked before any sample reaches a model: its sample rate against the one the stream declares
(``stream.sample_rate`` in ``model.yaml``), one channel, 16-bit integer PCM. Anything else is a one-line
:class:`~compress.errors.DataError` naming the file, what it is and what the model takes. Samples come back as float32
in [-1, 1) (int16 / 32768, as Silero's and torchaudio's loaders scale them).
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from compress.errors import DataError

__all__ = ["read_wav"]


def read_wav(path: Path | str, sample_rate: int) -> np.ndarray:
    """The samples of the mono 16-bit PCM ``.wav`` at ``path``, float32 in [-1, 1); ``sample_rate`` is what the
    model takes (Hz): a file at another rate is refused, naming both."""
    p = Path(path)
    try:
        with wave.open(str(p), "rb") as w:
            channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(frames)
    except wave.Error as e:  # the stdlib reads PCM only: WAVE_FORMAT_IEEE_FLOAT (3), A-law, mu-law, ... are refused
        raise DataError(f"{p}: not a PCM .wav ({e})", hint="convert it to 16-bit PCM: "
                        "sox in.wav -b 16 -e signed-integer out.wav (or ffmpeg -i in.wav -c:a pcm_s16le out.wav)") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{p}: not a readable .wav ({type(e).__name__}: {e})", hint="check the file") from None
    if channels != 1:
        raise DataError(f"{p}: {channels} channels; the stream takes mono audio",
                        hint="mix it down: sox in.wav -c 1 out.wav (or ffmpeg -i in.wav -ac 1 out.wav)")
    if width != 2:
        raise DataError(f"{p}: {8 * width}-bit samples; the stream reads 16-bit PCM",
                        hint="convert it: sox in.wav -b 16 out.wav (or ffmpeg -i in.wav -c:a pcm_s16le out.wav)")
    if rate != sample_rate:
        raise DataError(f"{p}: sampled at {rate} Hz; the model takes {sample_rate} Hz (stream.sample_rate)",
                        hint=f"resample it: sox in.wav -r {sample_rate} out.wav (or ffmpeg -i in.wav -ar {sample_rate} "
                        "out.wav)")
    if not raw:
        raise DataError(f"{p}: no samples", hint="record or export the audio again")
    if len(raw) % 2:  # the file ends inside a sample: cut short while it was written or copied
        raise DataError(f"{p}: cut mid-sample ({len(raw)} bytes of 16-bit samples, an odd count; the header promises "
                        f"{frames} samples)", hint="copy or export the .wav again (the file is truncated)")
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
