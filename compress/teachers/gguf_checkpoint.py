"""A ``.gguf`` file as a teacher: the Hugging Face checkpoint it dequantizes to, which every route takes.

Most small LMs are handed around as a GGUF (llama.cpp's file), not as a checkpoint folder. transformers' GGUF loader
reads one (``from_pretrained(folder, gguf_file=name)``: llama, qwen2/3, gemma3, phi3, ... dequantized to FP32 in
memory, the tokenizer rebuilt from the file's vocabulary), but ``save_pretrained`` refuses such a model ("quantized
with gguf"). :func:`gguf_checkpoint` writes the folder the routes take instead: the same weights copied into a model
built from the same config (its logits are the loaded model's, bit for bit), the tokenizer, ``generation_config.json``
with the file's BOS/EOS, and ``gguf_origin.json``: the source file, its sha256, its llama.cpp file type and the
count of each tensor type. The config is written in the form both transformers majors read
(:func:`compress.teachers.lm_config.portable_config`).

The folder lives in edgecompress's cache (``gguf-checkpoints/SHA``, made once per file, written under a staging name
and renamed into place), so ``export model.gguf --format onnx`` and then ``validate`` on the result read the same
checkpoint; when the cache has dropped it, or it is damaged (weights cut short), it is made again from the recorded
file (:func:`recorded_checkpoint`, which validate and quantize's QAT source lookup read). The command using it holds it
against other commands' eviction (a lease). The cache is keyed by the file's content: a second copy of the file reads
the same folder, and the lineage names the copy given.

What the source costs: the checkpoint carries the file's rounding. A Q4_1 or K-quant GGUF is already a 4-bit model,
so its FP32 form is the quantized model's, not the original's (docs/guides/lm.md measures what a second
quantization then costs).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from compress.errors import ConfigError, ModelLoadError, first_line
from compress.host.memory import check_memory, gguf_parameters
from compress.tasks.generation import make_tokenizer_portable
from compress.teachers.lm_config import GGUF_ORIGIN, given_gguf, portable_config

log = logging.getLogger(__name__)

__all__ = ["checkpoint_damage", "gguf_checkpoint", "is_gguf", "recorded_checkpoint", "sha256_cached",
           "source_changed"]

KIND = "gguf-checkpoints"  #: the cache's folder of dequantized checkpoints


def is_gguf(path: Path | str | None) -> bool:
    """A ``.gguf`` file (by its suffix; the header is read when it is used)."""
    return path is not None and Path(path).suffix.lower() == ".gguf" and Path(path).is_file()


def _describe(path: Path) -> dict[str, Any]:
    """The file's llama.cpp file type and tensor types, as names (``MOSTLY_Q4_1``; ``Q4_1: 211, F32: 61``)."""
    from compress._optional import require

    require("gguf", "reading a GGUF file")
    from gguf import GGUFReader, LlamaFileType

    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure: not a GGUF file
        raise ModelLoadError(f"{path}: not a readable GGUF file ({type(e).__name__}: {first_line(e)})",
                             hint="give a .gguf written by llama.cpp's tools") from None
    field = reader.fields.get("general.file_type")
    ft = int(field.contents()) if field is not None else 0
    try:
        ft_name = LlamaFileType(ft).name
    except ValueError:
        ft_name = f"file type {ft}"
    arch = reader.fields.get("general.architecture")
    types = Counter(t.tensor_type.name for t in reader.tensors)
    return {"file_type": ft, "file_type_name": ft_name, "architecture": arch.contents() if arch else None,
            "tensor_types": dict(types.most_common())}


def gguf_checkpoint(path: Path | str) -> Path:
    """The Hugging Face checkpoint folder the GGUF file at ``path`` dequantizes to (made once, then read from the
    cache; a damaged one made again), leased for this process (:func:`compress.cache.lease`: no other command evicts
    it while this one reads it). One-line errors: a file that is not GGUF, an architecture transformers' GGUF loader
    does not read. A dequantized size over the cache's whole cap is said before the work (and the entry kept)."""
    from compress import cache as ec_cache

    src = Path(path).resolve()
    if not src.is_file():
        raise ModelLoadError(f"{path}: no such file", hint="pass the .gguf file")
    sha = sha256_cached(src)
    folder = ec_cache.kind_dir(KIND) / sha[:24]
    ec_cache.lease(folder)  # before it is looked at: an evictor has removed it already, or cannot any more
    given_gguf(folder, src)  # the lineage names the file given, not the copy the cache was made from
    damage = checkpoint_damage(folder) if folder.exists() else None
    if folder.exists() and damage is None:
        ec_cache.touch(folder)
        return folder
    about = _describe(src) | {"path": str(src), "sha256": sha}
    weights = 4 * gguf_parameters(src)
    check_memory("dequantize", weights, src.name)  # before the loader holds a byte of it
    if (over := ec_cache.over_limit(weights, f"the checkpoint {src.name} dequantizes to")) is not None:
        log.warning("%s", over)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    if damage is not None:  # a cut or emptied cache entry: put aside, then made again from the file
        log.warning("%s is damaged (%s): making it again from %s", folder, damage, src.name)
        aside = folder.parent / f".{folder.name}.damaged"
        shutil.rmtree(aside, ignore_errors=True)
        with contextlib.suppress(OSError):  # another process may have put it aside first
            folder.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)
    log.info("dequantizing %s (%s) into a checkpoint (once per file; cached in %s)", src.name,
             about["file_type_name"], folder.parent)
    try:
        _write(src, staging, about)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if (folder / GGUF_ORIGIN).is_file():  # another process made it meanwhile (the rename found it there)
            return folder
        raise
    ec_cache.enforce_limit(keep=folder)
    return folder


def checkpoint_damage(folder: Path) -> str | None:
    """What is wrong with a dequantized checkpoint ``folder``, in words (no record of its file, no config.json, weights
    cut short), or None when it is whole. Headers only: no tensor read."""
    from compress.teachers.checkpoints import inspect_weights

    for name in (GGUF_ORIGIN, "config.json"):
        if not (folder / name).is_file():
            return f"no {name}"
    try:
        inspect_weights(folder)
    except ModelLoadError as e:
        return e.message.replace(f"{folder}{os.sep}", "")  # "model.safetensors: corrupt or truncated weights (...)"
    return None


def source_changed(origin: dict[str, Any]) -> str | None:
    """``origin`` (a lineage's :data:`GGUF_ORIGIN` record)'s .gguf in words when it is on this machine with another
    sha256 than the one recorded (rewritten since), else None."""
    file = Path(origin.get("path") or "")
    if not file.is_file() or (now := sha256_cached(file)) == origin.get("sha256"):
        return None
    return (f"{file} changed since it was exported (its sha256 is {now[:12]}…, the lineage's "
            f"{str(origin.get('sha256'))[:12]}…)")


def recorded_checkpoint(folder: Path | str, origin: dict[str, Any]) -> Path | None:
    """The checkpoint a lineage records at ``folder``, dequantized from the .gguf ``origin`` (its :data:`GGUF_ORIGIN`
    record) names: the folder when it is whole (leased for this process), else made again from the file when it is
    there with the recorded sha256 (a damaged entry replaced). None when it is gone and the file is gone or changed
    (:func:`source_changed` says which); a damaged folder that cannot be made again is one line naming it."""
    from compress import cache as ec_cache

    folder, file = Path(folder), Path(origin.get("path") or "")
    ec_cache.lease(folder)
    damage = checkpoint_damage(folder) if folder.exists() else None
    if folder.exists() and damage is None:
        if origin.get("path"):
            given_gguf(folder, file)
        return folder
    if file.is_file() and sha256_cached(file) == origin.get("sha256"):
        return gguf_checkpoint(file)
    if damage is not None:
        why = source_changed(origin) or f"{file} is not on this machine"
        raise ModelLoadError(f"{folder}: the checkpoint {file.name} dequantized to is damaged ({damage}), and it cannot "
                             f"be made again: {why}",
                             hint=f"delete {folder} (a cache entry; nothing else is lost), or restore {file}")
    return None


@functools.lru_cache(maxsize=8)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    from compress.device.facts import sha256_file

    return sha256_file(path)


def sha256_cached(path: Path) -> str:
    """The file's sha256, read once per process for the same size and modification time (a GGUF is gigabytes)."""
    st = Path(path).stat()
    return _sha256_of(str(path), st.st_size, st.st_mtime_ns)


def _load(src: Path):
    """transformers' GGUF loader on ``src``: the model (FP32) and its tokenizer, its chatter silenced."""
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    from compress.progress import hidden_output

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with hidden_output("stderr"):  # its bar of the tensors dequantized draws whatever the setting
            model = transformers.AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name,
                                                                      dtype=torch.float32, local_files_only=True)
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name,
                                                                   local_files_only=True)
    except (ValueError, KeyError, NotImplementedError) as e:  # an architecture or tokenizer its loader lacks
        raise ModelLoadError(f"{src}: transformers {transformers.__version__} cannot read this GGUF "
                             f"({first_line(e)})",
                             hint="export the Hugging Face checkpoint it came from, or adopt the file as it is "
                                  "(leave --format out)") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return model.eval(), tokenizer


def _write(src: Path, out: Path, about: dict[str, Any]) -> None:
    """Write the dequantized checkpoint of ``src`` into ``out``."""
    import torch

    from compress.progress import hidden_output

    loaded, tokenizer = _load(src)
    config = loaded.config
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config  # what made save_pretrained refuse it: the weights are plain FP32 now
    with torch.device("meta"):
        model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), assign=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    with hidden_output("stderr"):  # "Writing model shards" (transformers 5)
        model.eval().save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    spm = out / "tokenizer.model"
    if spm.is_file() and spm.read_bytes()[:4] == b"GGUF":  # transformers 4 "saves" the .gguf itself as the slow
        spm.unlink()  # tokenizer's vocabulary file (98 MB for SmolLM2); tokenizer.json is the tokenizer
    raw = json.loads((out / "config.json").read_text(encoding="utf-8"))
    (out / "config.json").write_text(json.dumps(portable_config(raw), indent=2) + "\n", encoding="utf-8")
    make_tokenizer_portable(out)
    gen = {k: getattr(config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")
           if getattr(config, k, None) is not None}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
    if not (out / "model.safetensors").is_file() and not list(out.glob("model-*.safetensors")):
        raise ConfigError(f"{src}: the dequantized checkpoint has no weights file", hint="report it with --debug")
    (out / GGUF_ORIGIN).write_text(json.dumps(about, indent=2) + "\n", encoding="utf-8")
