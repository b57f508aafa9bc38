"""Checkpoint files, read without importing torch: JSON configs, and weights that are safe to load (safetensors,
checked to hold every byte they declare) or pickles (refused unless opted in). Shared by the text and the image
teacher loaders.

:func:`check_checkpoint` is the one check of a Hugging Face checkpoint folder before any third-party loader
(transformers, ONNX Runtime GenAI's builder, ONNX Runtime) reads it: config.json readable with a ``model_type``
transformers knows, no remote code unless trusted, weights safe and whole, a text model's tokenizer fitting
``vocab_size``, and for a causal LM its tokenizer files present."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compress.errors import ModelLoadError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
#: what a text checkpoint's tokenizer is saved as (fast tokenizer, WordPiece/BPE vocabularies, SentencePiece models)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")


def check_checkpoint(path: Path | str, *, allow_pickle: bool = False,
                     trust_remote_code: bool = False) -> tuple[dict[str, Any], list[str], bool]:
    """Check the Hugging Face checkpoint folder ``path`` before transformers or ONNX Runtime reads it, each fault one
    line (:class:`~compress.errors.ModelLoadError`): config.json readable, its ``model_type`` one transformers knows
    (or its own code, trusted), no remote code unless ``trust_remote_code``, weights safe and whole
    (:func:`inspect_weights`: pickles refused unless ``allow_pickle``, safetensors headers read); no token id of the
    tokenizer past ``vocab_size``; for a causal LM its tokenizer files present. Returns ``(config, weight files, pickled)``."""
    from compress.teachers.lm_config import is_causal_lm

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: not a Hugging Face checkpoint (no config.json)",
                             hint="pass a directory written by save_pretrained()")
    config = _read_json(path / "config.json")
    if "model_type" not in config:
        raise ModelLoadError(f"{path}/config.json has no model_type", hint="pass a transformers checkpoint")
    refuse_remote_code(path, config, trust_remote_code)
    _check_model_type(path, config, trust_remote_code)
    weights, pickled = inspect_weights(path, allow_pickle=allow_pickle)
    if is_causal_lm(config) and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(f"{path}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...)",
                             hint="save the tokenizer beside the model: tokenizer.save_pretrained(DIR)")
    _check_vocab(path, config)
    return config, weights, pickled


def _check_model_type(path: Path, config: dict[str, Any], trusted: bool) -> None:
    """``model_type`` must be one the installed transformers knows (a checkpoint bringing its own code, trusted,
    names its own)."""
    if config.get("auto_map") and trusted:
        return
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    except ImportError:  # no transformers: the loader that needs it says so
        return
    kind = config.get("model_type")
    if kind not in CONFIG_MAPPING_NAMES:
        import transformers

        raise ModelLoadError(f"cannot load the model in {path}: model_type {kind!r} in its config.json is not one "
                             f"transformers {transformers.__version__} knows",
                             hint="fix model_type in config.json, or install the transformers release that added it")


def _tokenizer_top_id(path: Path) -> int | None:
    """The largest token id the checkpoint's tokenizer can emit, read from tokenizer.json (else vocab.json, else
    vocab.txt: WordPiece's, a token a line); None when none is there (a SentencePiece model: its loader reads it)."""
    if (path / "tokenizer.json").is_file():
        data = _read_json(path / "tokenizer.json")
        vocab = (data.get("model") or {}).get("vocab")
        ids = list(vocab.values()) if isinstance(vocab, dict) else \
            [len(vocab) - 1] if isinstance(vocab, list) and vocab else []
        ids += [t.get("id", -1) for t in data.get("added_tokens") or [] if isinstance(t, dict)]
        ints = [i for i in ids if isinstance(i, int)]
        return max(ints) if ints else None
    if (path / "vocab.json").is_file():
        ints = [i for i in _read_json(path / "vocab.json").values() if isinstance(i, int)]
        return max(ints) if ints else None
    if (path / "vocab.txt").is_file():
        with open(path / "vocab.txt", "rb") as f:
            lines = sum(1 for _ in f)
        return lines - 1 if lines else None
    return None


def _check_vocab(path: Path, config: dict[str, Any]) -> None:
    """A text model's tokenizer may not emit a token id its embedding has no row for (``vocab_size``): ONNX Runtime
    would fail on the first input with an out-of-bounds Gather, transformers with an IndexError."""
    c = config.get("text_config") or config
    size = c.get("vocab_size")
    top = _tokenizer_top_id(path)
    if isinstance(size, int) and top is not None and top >= size:
        raise ModelLoadError(f"{path}: the tokenizer has ids up to {top} but the model's vocab_size is {size} "
                             "(a tokenizer saved from another model)",
                             hint="save the model's own tokenizer beside it: tokenizer.save_pretrained(DIR)")


#: the files of a checkpoint folder whose ``auto_map`` names the checkpoint's own Python code (the model's config,
#: its tokenizer's, its processors'), and the folder a checkpoint's own generation loop lives in
CODE_CONFIGS = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json",
                "feature_extractor_config.json", "image_processor_config.json")
CUSTOM_GENERATE = "custom_generate"


def remote_code(path: Path | str, config: dict[str, Any] | None = None) -> str | None:
    """Where the checkpoint folder ``path`` names its own Python code, or None: an ``auto_map`` in any of
    :data:`CODE_CONFIGS` (``config`` is config.json already read), or a ``custom_generate/`` folder. transformers runs
    that code when asked to trust it, and llama.cpp's converter always asks."""
    path = Path(path)
    for name in CODE_CONFIGS:
        data = config if name == "config.json" and config is not None else \
            _read_json(path / name) if (path / name).is_file() else {}
        if isinstance(data, dict) and data.get("auto_map"):
            return f"auto_map in {name}"
    if (path / CUSTOM_GENERATE).is_dir():
        return f"{CUSTOM_GENERATE}/"
    return None


def refuse_remote_code(path: Path | str, config: dict[str, Any] | None, trusted: bool) -> None:
    """Refuse a checkpoint folder that names its own Python code (:func:`remote_code`) unless ``trusted``
    (``--trust-remote-code``): every loader (text, image, causal LM), transformers, ONNX Runtime GenAI's builder and
    llama.cpp's converter alike, would run it."""
    where = None if trusted else remote_code(path, config)
    if where:
        raise ModelLoadError(f"{path}: the checkpoint brings its own Python code ({where})",
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
    from compress.storage import safetensors_header

    try:
        size = file.stat().st_size
        n, header = safetensors_header(file)
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
