"""Writing a pruned model as a checkpoint directory: weights (safetensors), tokenizer, and the teacher's
sentence-transformers files (pooling and module config) that the model itself does not carry."""

from __future__ import annotations

import shutil
from pathlib import Path

from compress.stages.prune.config import _ST_DIRS, _ST_FILES


def save_checkpoint(model, tokenizer, teacher, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))
    for name in _ST_FILES:
        if (teacher.path / name).is_file():
            shutil.copy2(teacher.path / name, directory / name)
    for name in _ST_DIRS:
        if (teacher.path / name).is_dir() and not (directory / name).exists():
            shutil.copytree(teacher.path / name, directory / name)
