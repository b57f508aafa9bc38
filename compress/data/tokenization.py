"""Feeds for a model on this machine, from its manifest's input description (no transformers, no torch).

The feed builders themselves live in :mod:`compress.device.shipped`, the code shipped to boards and serverless bundles,
so the host, the remote runner's controller and the bundle handler tokenise with one piece of code.
:func:`encoder_for` is the seam every runtime adapter and stage goes through. :func:`qa_windows`: a question and
its long context as overlapping windows (extractive question answering).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from compress.device.feeds import ImageFeeds, TextFeeds, make_feeds
from compress.errors import ArtifactError

if TYPE_CHECKING:
    from compress.artifact import Artifact


#: the host-side name of the text feed builder (kept for code that imported it from here)
TextEncoder = TextFeeds


def encoder_for(artifact: Artifact) -> TextFeeds | ImageFeeds:
    """The feed builder ``artifact``'s manifest describes (its ``preprocess``, input names and max length)."""
    m = artifact.manifest
    try:
        return make_feeds(artifact.path, m.preprocess.model_dump(), [t.name for t in m.inputs], m.max_length)
    except FileNotFoundError as e:
        raise ArtifactError(f"{artifact.path}: no {Path(e.args[0]).relative_to(artifact.path)}",
                            hint="re-create the artifact from a checkpoint with a fast tokenizer") from None


@dataclass
class QAWindows:
    """Questions with their contexts as overlapping windows (:func:`qa_windows`): ``arrays`` (every tensor the
    tokenizer makes, ``[windows, tokens]``, padded to the longest), ``offsets`` (``[windows,
    tokens, 2]``: each token's characters in its context, -1 outside it) and ``example`` (the question of each
    window)."""

    arrays: dict[str, np.ndarray]
    offsets: np.ndarray
    example: np.ndarray

    def feeds(self, input_names: list[str]) -> dict[str, np.ndarray]:
        """The inputs a graph takes, by name."""
        return {n: self.arrays[n] for n in input_names}

    def positions(self, starts: list[int], ends: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Each window's answer as token positions, given each question's answer in characters (``[start, end)``):
        the tokens holding its first and last characters, or (0, 0) where the window does not hold the whole answer
        (Hugging Face run_qa's training labels: the first token, [CLS], stands for "not in this window")."""
        n = len(self.example)
        s_pos, e_pos = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        for w in range(n):
            a, b = starts[self.example[w]], ends[self.example[w]]
            off = self.offsets[w]
            inside = off[:, 0] >= 0
            if not inside.any() or off[inside, 0].min() > a or off[inside, 1].max() < b:
                continue
            s_pos[w] = np.flatnonzero(inside & (off[:, 0] <= a))[-1]  # run_qa: the last token starting by a
            e_pos[w] = np.flatnonzero(inside & (off[:, 1] >= b))[0]  # the first token ending at or after b
        return s_pos, e_pos


def qa_windows(tokenizer, questions: list[str], contexts: list[str], *, max_length: int, stride: int,
               pad_id: int = 0) -> QAWindows:
    """Each question with its context as windows of at most ``max_length`` tokens sharing ``stride`` context tokens
    (:meth:`compress.device.feeds.TextFeeds.windows`, the feed builder devices run); ``tokenizer``: a ``tokenizers``
    Tokenizer. A question too long to leave room for its context is a DataError."""
    from compress.errors import DataError

    try:
        arrays, offsets, example = TextFeeds(tokenizer, (), max_length, pad_id).windows(
            list(questions), list(contexts), max_length, stride)
    except ValueError as e:
        raise DataError(str(e), hint="shorten the question, or raise the window (postprocess.window, --max-length)") \
            from None
    return QAWindows(arrays, offsets, example)
