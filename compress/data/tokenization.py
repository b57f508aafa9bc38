"""Feeds for a model on this machine, from its manifest's input description (no transformers, no torch).

The feed builders themselves live in :mod:`compress.device.shipped`, the code shipped to boards and serverless bundles,
so the host, the remote runner's controller and the bundle handler tokenise with one piece of code.
:func:`encoder_for` is the seam every runtime adapter and stage goes through.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from compress.device.shipped import ImageFeeds, TextFeeds, make_feeds
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
