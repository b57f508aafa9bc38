"""Checkpoint files, read without importing torch: JSON configs, and weights that are safe to load (safetensors,
checked to hold every byte they declare) or pickles (refused unless opted in). Shared by the text and the image
teacher loaders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compress.errors import ModelLoadError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def refuse_remote_code(path: Path | str, config: dict[str, Any], trusted: bool) -> None:
    """Refuse a checkpoint whose config names its own Python code (``auto_map``) unless ``trusted``
    (``--trust-remote-code``): every loader (text, image, causal LM), transformers and ONNX Runtime GenAI's builder
    alike, would run it."""
    if config.get("auto_map") and not trusted:
        raise ModelLoadError(f"{path}: the checkpoint needs its own Python code (auto_map in config.json)",
                             hint="review that code, then pass --trust-remote-code to run it")


class InfoTeacher:
    """What every loaded teacher shares (Hugging Face, image, timm, program, adopted file): its ``info``, read before
    anything loaded, gives its path and task."""

    info: Any

    @property
    def path(self) -> Path:
        return self.info.path

    @property
    def task(self):
        return self.info.task

    def lineage(self) -> tuple[Any, list]:
        """``(source, steps)`` a model derived from this teacher records: the teacher's own source and steps when it
        is an edgecompress artifact (a fine-tuned teacher's lineage starts at its base), else the teacher itself."""
        from compress.artifact import is_artifact, load_artifact

        root = self.path if self.path.is_dir() else self.path.parent
        if is_artifact(root):
            manifest = load_artifact(root, verify=False).manifest
            if manifest.source is not None:
                return manifest.source, list(manifest.steps)
        return self.source(), []


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}: unreadable JSON ({e})", hint="restore the file from the original checkpoint") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object", hint="restore the file from the original checkpoint")
    return data


def inspect_weights(path: Path, *, allow_pickle: bool = False) -> tuple[list[str], bool]:
    """A checkpoint directory's weight files and whether they are pickles (refused unless ``allow_pickle``);
    safetensors files are checked to hold every byte their header declares."""
    files = sorted(p.name for p in path.iterdir() if p.is_file())
    safetensors = [f for f in files if f.endswith(".safetensors")]
    pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES) and not f.startswith("training_args")]
    if not safetensors and not pickles:
        raise ModelLoadError(
            f"{path}: no model weights (model.safetensors)", hint="copy the weights next to config.json"
        )
    if not safetensors and not allow_pickle:
        raise ModelLoadError(
            f"{path}: only pickled weights ({pickles[0]}); loading pickle can run arbitrary code",
            hint="convert it to safetensors, or pass --allow-pickle if you trust its source",
        )
    for name in safetensors:
        _check_safetensors(path / name)
    return safetensors or pickles, not safetensors


def _check_safetensors(file: Path) -> None:
    """Read the safetensors header and check the file holds every byte it declares."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("file shorter than its header")
            n = int.from_bytes(head, "little")
            if n <= 0 or n > size - 8:
                raise ValueError("header length out of range")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end > size:
            raise ValueError(f"{size} bytes on disk, {8 + n + end} declared")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(
            f"{file}: corrupt or truncated weights ({e})", hint="re-download or re-save the checkpoint"
        ) from e


def model_load_error(auto, path: Path, kwargs: dict[str, Any], error: Exception) -> ModelLoadError:
    """The one-line error for ``auto.from_pretrained`` failing on ``path``: the shape mismatch in words when that is
    the cause (:func:`mismatch_message`), else the first line of transformers' own message."""
    why = mismatch_message(auto, path, kwargs, error) or \
        f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return ModelLoadError(f"{path}: cannot load the model ({why})",
                          hint="check that the weights match config.json (labels, sizes) and are complete")


def mismatch_message(auto, path: Path, kwargs: dict[str, Any], error: Exception) -> str | None:
    """When ``auto.from_pretrained`` refused weights whose shapes differ from the config (transformers 5 says only "look
    at the above report", 4 names one tensor without its key), the mismatched tensors in words, found by loading again
    with the mismatch allowed: ``classifier.weight: (2, 32) in the checkpoint, (3, 32) from config.json``. None for
    any other error."""
    text = str(error)
    if "ignore_mismatched_sizes" not in text and "size mismatch" not in text:
        return None
    try:
        model, info = auto.from_pretrained(str(path), ignore_mismatched_sizes=True, output_loading_info=True, **kwargs)
    except Exception:  # noqa: BLE001 - the first error stands
        return None
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = _checkpoint_shapes(path)
    rows = []
    for item in info.get("mismatched_keys") or []:
        key, *shapes = item if isinstance(item, (tuple, list)) else (item,)  # transformers 4: key; 5: (key, a, b)
        ckpt, cfg = (tuple(shapes[0]), tuple(shapes[1])) if len(shapes) >= 2 else (theirs.get(key), ours.get(key))
        rows.append(f"{key}: {ckpt} in the checkpoint, {cfg} from config.json" if ckpt and cfg else str(key))
    if not rows:
        return None
    return "weights do not match config.json (" + "; ".join(rows[:3]) + (f"; {len(rows) - 3} more" if len(rows) > 3 else "") + ")"


def _checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes in a checkpoint's safetensors files, from their headers (nothing is loaded)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(f), "np") as st:
            for k in st.keys():
                shapes[k] = tuple(st.get_slice(k).get_shape())
    return shapes
