"""Quantize a GGUF causal LM (task text-generation) with llama.cpp's own quantizer: ``llama_model_quantize`` through
llama-cpp-python, the same code as llama.cpp's ``llama-quantize`` tool.

Types (``--gguf-type``): ``q4_k_m`` (the default for ``--precision int4``) / ``q4_k_s`` (k-quants: 256-weight
super-blocks with 6-bit sub-block scales and mins; ``_m`` keeps some tensors at higher precision; a tensor whose rows
256 does not divide takes llama.cpp's fallback type), ``q4_0`` (32-weight blocks, one FP16 scale), and for ``--precision int8``: ``q8_0`` (the default), ``q5_k_m``, ``q6_k`` (more than four
bits, counted as int8 in the manifest). llama.cpp decides per tensor (the token embeddings and output take its
defaults for the type, e.g. Q6_K output with k-quants); the step records the type and sizes.

An importance matrix (:mod:`compress.stages.quantize.lm.gguf_imatrix`) weighs the rounding error of each weight column by
how large its activations are on some text: ``--imatrix FILE`` (made by llama.cpp's ``llama-imatrix``), or
``--calibration TEXT`` that ``llama-imatrix`` turns into one here (at most ``--calibration-samples`` windows of the
model's context, up to 512 tokens). Its sha256, entries and chunks are recorded; the GGUF holds llama-quantize's
``quantize.imatrix.*`` keys.

Input: an FP32 or FP16 GGUF artifact (:mod:`compress.stages.export.lm.gguf`). After quantizing, greedy continuations
of a few prompts through both files (:class:`compress.runtimes.llamacpp_backend.LlamaCppBackend`) are compared: the
prompts' top-1 agreement and KL, the continuations' agreement, and a collapse is a loud warning, an error with
``--strict`` (nothing written). Batch 1.
"""

from __future__ import annotations

import logging
from pathlib import Path

from compress.artifact import Artifact, Format, Precision, child_manifest
from compress.errors import ConfigError, StageError
from compress.host.cpu import usable_cpus
from compress.progress import Progress
from compress.stages.quantize.config import QuantizeConfig, refuse_ignored
from compress.stages.quantize.lm.common import collapse_check
from compress.stages.spec import StageSpec, pairs
from compress.tasks.generation import copy_travel, require_no_collapse

log = logging.getLogger(__name__)

#: llama.cpp's quantizer, GGUF in and out
QUANTIZE_GGUF = StageSpec(
    "quantize", "quantize (llama.cpp)", accepts=pairs(Format.gguf, Precision.fp32, Precision.fp16),
    produces=pairs(Format.gguf, Precision.int4, Precision.int8), versions=("llama_cpp", "gguf"),
    hint="quantize starts from an FP32 or FP16 GGUF artifact (export --format gguf)",
    precision_hint="the GGUF is already quantized: quantize its FP32 export", config_version=1,
)
#: --gguf-type -> (llama.cpp's LLAMA_FTYPE_MOSTLY_* name, the manifest's precision)
TYPES: dict[str, tuple[str, str]] = {
    "q4_0": ("LLAMA_FTYPE_MOSTLY_Q4_0", "int4"), "q4_k_m": ("LLAMA_FTYPE_MOSTLY_Q4_K_M", "int4"),
    "q4_k_s": ("LLAMA_FTYPE_MOSTLY_Q4_K_S", "int4"), "q5_k_m": ("LLAMA_FTYPE_MOSTLY_Q5_K_M", "int8"),
    "q6_k": ("LLAMA_FTYPE_MOSTLY_Q6_K", "int8"), "q8_0": ("LLAMA_FTYPE_MOSTLY_Q8_0", "int8"),
}
#: the default type of each precision: Q4_K_M for INT4, llama.cpp's own recommended 4-bit (SmolLM2-135M on WikiText-2:
#: +3.8% perplexity, top-1 0.843, where Q4_0 costs +24.9%, 0.694; benchmarks/results/lm_int4_real.json)
DEFAULT_TYPE = {"int4": "q4_k_m", "int8": "q8_0"}
#: the settings this quantizer reads (flat keys); any other given is refused
_APPLIES = {"precision", "gguf_type", "strict", "imatrix", "calibration", "calibration_samples"}
IMATRIX_CONTEXT = 512  #: llama-imatrix's default window (tokens), capped by the model's context


def gguf_type(config: QuantizeConfig) -> str:
    """The llama.cpp type ``config`` asks for (its default for the precision), checked against the precision."""
    precision = str(config.precision)
    name = config.gguf.type or DEFAULT_TYPE[precision]
    if TYPES[name][1] != precision:
        raise ConfigError(f"--gguf-type {name} stores {TYPES[name][1]} weights, not {precision}",
                          hint=f"add --precision {TYPES[name][1]}, or pick a type of {precision}: "
                          f"{', '.join(k for k, v in TYPES.items() if v[1] == precision)}")
    return name


def llama_quantize(src: Path, dst: Path, name: str, *, threads: int | None = None, imatrix=None) -> None:
    """Write ``dst``, ``src`` quantized to llama.cpp's type ``name`` (llama.cpp's own quantizer, quietly), weighed
    by ``imatrix`` (:class:`~compress.stages.quantize.lm.gguf_imatrix.Imatrix`) when given."""
    from compress._optional import require

    llama_cpp = require("llama_cpp", "llama.cpp's quantizer (GGUF)")
    from llama_cpp._utils import suppress_stdout_stderr

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, TYPES[name][0])
    params.nthread = threads or usable_cpus()
    alive: list = []  # the C arrays behind params.imatrix must outlive the call
    if imatrix is not None:
        from compress.stages.quantize.lm.gguf_imatrix import quantize_params

        alive = quantize_params(params, imatrix)
    with suppress_stdout_stderr(disable=log.isEnabledFor(logging.DEBUG)):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    alive.clear()
    if rc != 0 or not dst.is_file():
        raise StageError(f"llama.cpp's quantizer failed on {src} (return code {rc})",
                         hint="run with --debug to see llama.cpp's log")


def given_imatrix(config: QuantizeConfig, model: Path):
    """The importance matrix of ``--imatrix`` (read and checked against ``model``) and what the step records;
    ``(None, None)`` without one."""
    from compress.stages.quantize.lm.gguf_imatrix import check_against, read_imatrix

    if config.gguf.imatrix and config.calibration.data:
        raise ConfigError("--imatrix and --calibration both give the importance matrix",
                          hint="give the matrix llama-imatrix made (--imatrix), or the text to make it from "
                          "(--calibration), not both")
    if not config.gguf.imatrix:
        return None, None
    imatrix = read_imatrix(config.gguf.imatrix)
    return imatrix, imatrix.describe() | check_against(imatrix, model) | {"made_by": "given (--imatrix)"}


def made_imatrix(art: Artifact, config: QuantizeConfig, scratch_dir: Path):
    """An importance matrix made by llama.cpp's ``llama-imatrix`` from the ``--calibration`` text (windows of the
    model's context up to :data:`IMATRIX_CONTEXT` tokens, at most ``--calibration-samples`` of them)."""
    import tempfile

    from compress.artifact import sha256_file
    from compress.data.text import read_texts
    from compress.stages.quantize.lm.gguf_imatrix import check_against, compute_imatrix

    texts = read_texts(config.calibration.data)
    cache = getattr(art.manifest.postprocess, "cache", None)
    context = min(int(getattr(cache, "max_length", None) or art.manifest.max_length or IMATRIX_CONTEXT),
                  IMATRIX_CONTEXT)
    src = art.path / art.manifest.model_file
    with tempfile.TemporaryDirectory(prefix=".imatrix.", dir=scratch_dir) as scratch:
        imatrix = compute_imatrix(src, texts, Path(scratch) / "imatrix.gguf", context=context,
                                  chunks=config.calibration.samples)
        imatrix.datasets = [str(Path(config.calibration.data).resolve())]
        record = imatrix.describe() | check_against(imatrix, src)
    imatrix.path = Path(f"llama-imatrix on {Path(config.calibration.data).name}")  # the GGUF's quantize.imatrix.file
    record |= {"path": None, "made_by": "llama-imatrix", "context": context,
               "calibration_sha256": sha256_file(Path(config.calibration.data))}
    log.info("importance matrix: %d weights over %d windows of %d tokens of %s", record["covered"], imatrix.chunks,
             context, config.calibration.data)
    return imatrix, record


def quantize_gguf(art: Artifact, out: Path | str, config: QuantizeConfig, *, force: bool = False,
                  progress: Progress | None = None) -> Artifact:
    """Quantize the FP32/FP16 GGUF artifact ``art`` of a causal LM with llama.cpp's quantizer into a new artifact at
    ``out`` (see the module's docstring). A collapse is a warning (in the step's metrics), an error with ``strict``."""
    from compress.storage import tree_bytes

    refuse_ignored(config, "gguf-causal-lm")  # what this quantizer does not read, in one line
    QUANTIZE_GGUF.check(art)
    name = gguf_type(config)
    src = art.path / art.manifest.model_file
    imatrix, record = given_imatrix(config, src)
    from compress.host.memory import check_memory, route_stage

    # the route's measured peak (compress.host.memory), refused before the work
    check_memory(route_stage("quantize", str(art.format)), art.size_bytes(), art.path.name)
    output = QUANTIZE_GGUF.output(out, config, force=force)
    with output.writing(need_bytes=tree_bytes(art.path)) as o:
        if imatrix is None and config.calibration.data:
            imatrix, record = made_imatrix(art, config, o.dir.parent)
        llama_quantize(src, o.dir / "model.gguf", name, imatrix=imatrix)
        copy_travel(art.path, o.dir)
        manifest = child_manifest(art.manifest, precision=Precision(TYPES[name][1]), model_file="model.gguf")
        before, after = tree_bytes(art.path), tree_bytes(o.dir)
        step = o.describe(manifest, input_digest=art.digest, lineage=art.manifest.steps,
                          extra_config={"gguf_type": name, "llama_ftype": TYPES[name][0], "imatrix": record})
        step.metrics.update({"size_bytes_before": before, "size_bytes_after": after,
                             "compression": round(before / max(after, 1), 3), "gguf_type": name,
                             "model_bytes": (o.dir / "model.gguf").stat().st_size, "imatrix": bool(imatrix)})
        check = collapse_check(art, o.draft(), runtime="llamacpp")
        step.metrics["generation_vs_input"] = check
        require_no_collapse(check, f"the {name} generator", strict=config.strict, log=log,
                            hint="try --gguf-type q4_k_m or --precision int8 (q8_0); nothing was written "
                            "(--strict)")
    return output.artifact
