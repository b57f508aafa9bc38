"""``export``: a teacher checkpoint (or a distilled/pruned student) to ONNX, OpenVINO IR, TensorRT, ExecuTorch, LiteRT
or Core ML.

The family in the shape NNCF gives its backends: the verb here dispatches on ``config.format`` to the exporter that
format's entry of :data:`compress.formats.FORMATS` names, one module per backend: ONNX and OpenVINO IR (through
ONNX) in :mod:`.onnx`, TensorRT in :mod:`.tensorrt` (shapes in :mod:`.tensorrt_shapes`) and :mod:`.torch_tensorrt`
for ``--via torch-tensorrt``, ExecuTorch in :mod:`.executorch`, LiteRT in :mod:`.litert`, Core ML in :mod:`.coreml`.
The settings and each backend's declaration (what it accepts and produces) live in the leaf :mod:`.config`.
"""

from __future__ import annotations

from pathlib import Path

from compress.artifact import Artifact
from compress.progress import Progress
from compress.stages.export.config import ExportConfig


def export(
    source: Path | str,
    out: Path | str,
    config: ExportConfig | None = None,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> Artifact:
    """Export ``source`` to a new artifact at ``out`` in ``config.format``.

    ``source`` is a teacher checkpoint (or a pytorch artifact), or a model file made elsewhere (``model.onnx``,
    adopted by :mod:`.adopt`); for ``--format openvino`` it may also be
    an FP32 ONNX artifact, for ``--format tensorrt`` an unfused or QDQ ONNX artifact. The result must match
    its reference within ``config.atol`` on the parity samples, else nothing is written.
    """
    config = config or ExportConfig()
    from compress.formats import FORMATS
    from compress.tasks import by_kind
    from compress.teachers.kinds import source_kind

    fmt = str(config.format)
    lm_formats = [n for n, f in FORMATS.items() if f.exporter_for("generation")]  # the formats a causal LM exports to
    _refuse_gguf_folder(source)
    if _gguf_teacher(source, config):  # a GGUF given a --format: its dequantized checkpoint is the teacher
        from compress.errors import ConfigError

        if not FORMATS[fmt].exporter_for("generation"):  # refused before the file is read (or dequantized)
            raise ConfigError(f"{source}: a .gguf is a causal language model, which {FORMATS[fmt].label} takes none of",
                              hint=f"export it with --format {'|'.join(lm_formats)}, or leave --format out to adopt it as "
                                   "it is")
        _refuse_encoder_options(config)  # before the file is dequantized into the cache
        return _export_gguf(Path(source), out, config, force=force, progress=progress)
    # a causal LM (a checkpoint folder or a pytorch artifact; a bare .gguf is adopted below): the format's exporter
    # with a KV cache; anything else one forward pass (a stream's calls too)
    kind = source_kind(source) if Path(source).is_dir() else "forward"
    return by_kind(_KINDS, source, "export", kind=kind)(source, out, config, force=force, progress=progress)


def _export_generator(source, out, config: ExportConfig, *, force: bool, progress: Progress | None) -> Artifact:
    """A causal LM's checkpoint folder (or pytorch artifact): the format's generator exporter, with its KV cache."""
    from compress.errors import ConfigError
    from compress.formats import FORMATS, import_string
    from compress.tasks import is_generator

    fmt, kind = str(config.format), "generation"
    lm_formats = [n for n, f in FORMATS.items() if f.exporter_for(kind)]  # the formats a causal LM exports to
    if config.task is not None and not is_generator(config.task):
        raise ConfigError(f"{source} is a causal language model: its task is text-generation, not {config.task}",
                          hint="leave --task out")
    from compress.teachers.checkpoints import check_checkpoint

    if (Path(source) / "config.json").is_file():  # before transformers or ONNX Runtime reads a byte of it
        check_checkpoint(source, allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code)
    if not FORMATS[fmt].exporter_for(kind):
        raise ConfigError(f"{FORMATS[fmt].label} takes no causal language model (text-generation)",
                          hint=f"export it with --format {'|'.join(lm_formats)}")
    _refuse_encoder_options(config)
    if config.generator.max_context is not None and fmt != "onnx":
        raise ConfigError(f"--max-context applies to --format onnx (its RoPE tables); {FORMATS[fmt].label} "
                          "sizes its cache itself", hint="drop --max-context")
    from compress.host.memory import check_memory, route_stage, safetensors_parameters

    # the measured peak of the route (compress.host.memory): refused before the work
    check_memory(route_stage("export", fmt), 4 * (safetensors_parameters(source) or 0), Path(source).name)
    return import_string(FORMATS[fmt].exporter_for(kind))(source, out, config, force=force, progress=progress)


def _export_forward(source, out, config: ExportConfig, *, force: bool, progress: Progress | None) -> Artifact:
    """One forward pass: a model file made elsewhere adopted (then converted), else the format's exporter."""
    from compress.formats import FORMATS, file_format, import_string
    from compress.teachers.model_files import is_model_file

    fmt = str(config.format)
    if config.generator.max_context is not None:
        from compress.errors import ConfigError

        raise ConfigError(f"--max-context sizes a causal language model's context; {source} is not one",
                          hint="drop --max-context")
    if is_model_file(source):  # a model file made elsewhere: adopt it (then convert it like any ONNX artifact)
        from compress.errors import ConfigError
        from compress.stages.export.adopt import adopt, adopt_then

        made = file_format(source, adopted=True)
        if made != "onnx":  # an OpenVINO IR or a LiteRT model stays one
            if fmt not in ("onnx", made):
                raise ConfigError(f"{source}: the {FORMATS[made].label} model is adopted as it is",
                                  hint=f"leave --format out (a {Path(source).suffix} is not converted to another format)")
            if made == "gguf":  # llama.cpp's file: its exporter adopts it (header, one prefill through llama.cpp)
                return import_string(FORMATS[made].exporter)(source, out, config, force=force)
            return adopt(source, out, config, force=force)
        if fmt == "onnx":
            return adopt(source, out, config, force=force)
        if not FORMATS[fmt].via_onnx:  # ExecuTorch, LiteRT, Core ML start from the PyTorch model
            raise ConfigError(f"{source}: {FORMATS[fmt].label} starts from the PyTorch model, not an ONNX file",
                              hint="pass the teacher checkpoint, or leave --format out to adopt the file")
        return adopt_then(source, out, config, force=force, export_artifact=import_string(FORMATS[fmt].exporter))
    if not FORMATS[fmt].via_onnx and fmt != "onnx" and (Path(source) / "manifest.json").is_file():
        _refuse_non_pytorch_artifact(source, fmt)
    return import_string(FORMATS[fmt].exporter)(source, out, config, force=force)


#: how export takes a source of each kind (:func:`compress.tasks.by_kind`)
_KINDS = {"forward": _export_forward, "generation": _export_generator, "stream": _export_forward}


#: the encoder exporters' options a causal LM's exporters (ONNX Runtime GenAI's builder, optimum-intel, llama.cpp,
#: ExecuTorch) do not read: (flag, why); given at another value than the default, they are refused, not ignored
_ENCODER_ONLY = {
    "optimize": ("--optimize", "the builder writes a causal LM's graph already fused (GroupQueryAttention, "
                 "SkipSimplifiedLayerNorm)"),
    "exporter": ("--exporter", "a causal LM is exported by its format's own builder"),
    "opset": ("--opset", "a causal LM's builder chooses the opset its fused operators need"),
    "parity_samples": ("--parity-samples", "a causal LM's parity check is one prompt's prefill and greedy decode "
                       "(--sample-data chooses the prompt)"),
}


def _refuse_encoder_options(config: ExportConfig) -> None:
    """A causal LM's export given an option only the encoder exporters read: one line, before any work."""
    from compress.errors import ConfigError

    for key, (flag, why) in _ENCODER_ONLY.items():
        value, default = getattr(config, key), ExportConfig.model_fields[key].get_default()
        if value != default:
            shown = getattr(value, "value", value)
            raise ConfigError(f"{flag} {shown} applies to encoder exports only (it would be ignored): {why}",
                              hint=f"drop {flag}")


def _export_gguf(source: Path, out: Path | str, config: ExportConfig, *, force: bool,
                 progress: Progress | None = None) -> Artifact:
    """Export the checkpoint the .gguf ``source`` dequantizes to (made, or found in the cache, and held there while
    this command reads it). A checkpoint removed meanwhile all the same (by hand, by another tool) is one line naming
    it, not whatever a loader makes of a path that is not there (transformers took it for a hub repo id)."""
    from compress.cache import ENV_DIR
    from compress.errors import ModelLoadError
    from compress.teachers.gguf_checkpoint import checkpoint_damage, gguf_checkpoint

    folder = gguf_checkpoint(source)
    try:
        return export(folder, out, config, force=force, progress=progress)
    except Exception:
        if folder.exists() and checkpoint_damage(folder) is None:
            raise
        raise ModelLoadError(f"{folder}: the checkpoint {source.name} dequantized to was removed while the export "
                             "read it", hint=f"run the export again (it is made again from {source.name}); keep other "
                             f"tools from deleting edgecompress's cache ({ENV_DIR}) meanwhile") from None


def _refuse_gguf_folder(source: Path | str) -> None:
    """A folder holding a .gguf and no checkpoint or artifact: one line naming the file to pass (the checkpoint check
    would say only that config.json is missing)."""
    folder = Path(source)
    if not folder.is_dir() or any((folder / n).is_file() for n in ("config.json", "manifest.json")):
        return
    files = sorted(folder.glob("*.gguf"))
    if files:
        from compress.errors import ConfigError

        raise ConfigError(f"{folder} holds {'a .gguf' if len(files) == 1 else f'{len(files)} .gguf files'} "
                          f"({', '.join(f.name for f in files[:3])}), not a Hugging Face checkpoint",
                          hint=f"pass the file itself: {folder / files[0].name}")


def _gguf_teacher(source: Path | str, config: ExportConfig) -> bool:
    """A ``.gguf`` file with ``--format`` given: exported from the checkpoint it dequantizes to
    (:mod:`compress.teachers.gguf_checkpoint`); without one it is adopted as it is."""
    from compress.teachers.gguf_checkpoint import is_gguf

    return is_gguf(source) and "format" in config.model_fields_set


def _refuse_non_pytorch_artifact(source: Path | str, fmt: str) -> None:
    """ExecuTorch, LiteRT and Core ML start from the PyTorch model: an artifact of another format as ``source`` is one
    line naming the model it came from (the exporter would say its package is missing, advice that would not help)."""
    from compress.artifact import load_artifact
    from compress.errors import ConfigError
    from compress.formats import FORMATS

    m = load_artifact(source, verify=False).manifest
    if str(m.format) != "pytorch":
        made = FORMATS[str(m.format)].label if str(m.format) in FORMATS else str(m.format)
        raise ConfigError(f"{source}: {FORMATS[fmt].label} starts from the PyTorch model, not an {made} artifact",
                          hint=f"pass the model it was exported from ({m.source.path})")

