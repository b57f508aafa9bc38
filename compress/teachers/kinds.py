"""What kind of model a source on disk is (:data:`compress.tasks.Kind`), read from its files without loading it: the
one probe export, finetune, inspect, the recipes and the search ask before they pick a door.

* a ``.gguf`` file: a generation (llama.cpp's files are causal LMs only);
* a folder with a ``manifest.json`` (an artifact): its manifest's kind (:func:`compress.tasks.kind_of`: the task's,
  a stream where it has a ``stream``);
* a Hugging Face checkpoint folder (``config.json``): a generation where its architecture is a causal LM's
  (``…ForCausalLM``, ``…LMHeadModel``: :func:`compress.teachers.lm_config.is_causal_lm`), else one forward pass;
* anything else, or a file that does not parse (its loader names it): one forward pass.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compress.tasks import Kind, kind_of
from compress.teachers.lm_config import is_causal_lm

__all__ = ["source_kind"]


def source_kind(source: Any) -> Kind:
    """The kind of the model at ``source`` (a path: a checkpoint folder, an artifact's folder, a ``.gguf``), or of an
    artifact or manifest already loaded."""
    if not isinstance(source, (str, Path)):
        return kind_of(source)
    path = Path(source)
    if path.suffix.lower() == ".gguf" and not path.is_dir():
        return "generation"
    manifest, config = path / "manifest.json", path / "config.json"
    found = manifest if manifest.is_file() else config if config.is_file() else None
    try:
        raw = json.loads(found.read_text(encoding="utf-8")) if found else None
    except (OSError, ValueError):
        return "forward"
    if not isinstance(raw, dict):  # a malformed file: the loader names it
        return "forward"
    if found is manifest:
        return kind_of(raw)
    return "generation" if is_causal_lm(raw) else "forward"
