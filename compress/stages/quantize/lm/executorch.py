"""INT4 / INT8 of a causal LM's ExecuTorch program (task text-generation): torchao on the PyTorch model, then the
program lowered again.

An ExecuTorch program is not quantized after lowering: its weights are packed inside XNNPACK's delegate blobs. So, as
ExecuTorch's own LLM export does, the PyTorch model is quantized with torchao first and then exported and lowered
(:func:`compress.stages.export.lm.executorch.lower_lm`); the model is the teacher the FP32 program's manifest
records (its ``source``), checked to be the same files (sha256) before anything runs. The cache length is the FP32
program's.

The scheme is ExecuTorch's standard one for LLMs on XNNPACK, ``8da4w``: every linear layer's weights INT4,
symmetric, in groups of ``--block-size`` (32 by default for generators, as the other routes) along the input, its
activations quantized to int8 per token at run time (torchao's ``Int8DynamicActivationIntxWeightConfig``, which
XNNPACK runs with its ``qd8-f32-qb4w`` kernels); ``--precision int8`` is ``8da8w`` (one scale per output channel,
``qd8-f32-qc8w``). The LM head takes ``--lm-head-bits`` (8 by default, as the other routes; 4: its groups) and the
embedding table ``--embeddings-bits`` weight-only (torchao's ``IntxWeightOnlyConfig``: 8, one scale per row, the
default; 4: groups; 32: float), which ExecuTorch's quant fusion turns into ``quantized_decomposed::embedding_byte`` /
``embedding_4bit``. Only round to nearest (torchao's default), symmetric: XNNPACK's blockwise INT4 kernels take no
zero point.

After quantizing, greedy continuations of a few prompts through the new program and the FP32 one are compared, as
every generator quantizer does (:func:`compress.stages.quantize.lm.common.collapse_check`); a collapse is a loud
warning, an error with ``--strict`` (nothing written). Batch 1.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from compress.artifact import Artifact, Format, Precision, child_manifest
from compress.errors import ConfigError
from compress.progress import Progress
from compress.stages.quantize.config import QuantizeConfig, refuse_ignored
from compress.stages.quantize.lm.common import GENERATOR_BLOCK, collapse_check
from compress.stages.spec import StageSpec, pairs
from compress.tasks.generation import copy_travel, require_no_collapse

log = logging.getLogger(__name__)

#: torchao then ExecuTorch's lowering, from the teacher an FP32 program records
QUANTIZE_EXECUTORCH_LM = StageSpec(
    "quantize", "quantize (torchao, ExecuTorch)", accepts=pairs(Format.executorch, Precision.fp32),
    produces=pairs(Format.executorch, Precision.int4, Precision.int8), versions=("torchao", "executorch", "torch"),
    hint="quantize starts from the FP32 ExecuTorch program of a causal LM (export --format executorch)",
    precision_hint="the program is already quantized: quantize its FP32 export", config_version=1,
)
#: the settings this quantizer reads (flat keys); any other given is refused
_APPLIES = {"precision", "block_size", "symmetric", "int4_algorithm", "embeddings_bits", "lm_head_bits", "strict",
            "parity_samples", "sample_data"}


def check_request(config: QuantizeConfig) -> tuple[int, int, int, int]:
    """(bits, group, embeddings bits, LM head bits) of a request, or a one-line :class:`ConfigError`."""
    given = config.given_keys()
    refuse_ignored(config, "executorch-causal-lm")  # what this quantizer does not read, in one line
    if config.int4.algorithm != "rtn":
        raise ConfigError(f"--int4-algorithm {config.int4.algorithm}: the ExecuTorch route quantizes by round to "
                          "nearest (torchao's 8da4w)", hint="drop it, or use --format onnx or openvino for "
                          f"{config.int4.algorithm}")
    if not config.int4.symmetric:
        raise ConfigError("--asymmetric: XNNPACK's blockwise INT4 kernels take symmetric weights (no zero point)",
                          hint="drop --asymmetric")
    bits = 4 if config.precision == "int4" else 8
    if bits == 8 and ("embeddings_bits" in given and config.int4.embeddings_bits == 4 or
                      "lm_head_bits" in given and config.int4.lm_head_bits == 4):
        raise ConfigError("--embeddings-bits/--lm-head-bits 4 apply to --precision int4", hint="drop them")
    if bits == 8 and "block_size" in given:
        raise ConfigError("--block-size applies to --precision int4 (INT8 has one scale per output channel)",
                          hint="drop it")
    group = config.int4.block_size if "block_size" in given else GENERATOR_BLOCK
    return bits, group, config.int4.embeddings_bits, config.int4.lm_head_bits


def teacher_of(art: Artifact) -> Path:
    """The checkpoint the FP32 program was exported from, checked to be the same files."""
    from compress.artifact import digest_dir

    src = art.manifest.source
    path = Path(src.path) if src and src.path else None
    if path is None or not (path / "config.json").is_file():
        raise ConfigError(f"{art.path}: the checkpoint it was exported from ({path}) is not on this machine; an "
                          "ExecuTorch program is quantized from its PyTorch model",
                          hint="put the checkpoint back at that path, or export it again with --format executorch")
    if src.sha256 and digest_dir(path) != src.sha256:
        raise ConfigError(f"{path} changed since {art.path} was exported from it",
                          hint="export the checkpoint again with --format executorch, then quantize that")
    return path


def quantize_lm_executorch(art: Artifact, out: Path | str, config: QuantizeConfig, *,
                           force: bool = False, progress: Progress | None = None) -> Artifact:
    """Quantize the FP32 ExecuTorch program ``art`` of a causal LM to INT4 (8da4w) or INT8 (8da8w) into a new
    artifact at ``out``; see the module's docstring. A collapse is a warning (in the step's metrics), an error with
    ``strict``."""
    from compress._optional import require
    from compress.stages.export.lm.executorch import load_lm, lower_lm, torchao_quantize
    from compress.storage import tree_bytes

    require("torchao", "ExecuTorch INT4/INT8 of a causal LM")
    bits, group, embeddings_bits, lm_head_bits = check_request(config)
    if str(art.precision) != "fp32":
        raise ConfigError(f"{art.path} is already {art.precision}", hint="quantize its FP32 export")
    source = teacher_of(art)
    max_length = int(art.manifest.postprocess.cache.max_length)
    from compress.host.memory import check_memory, route_stage

    # the route's measured peak (compress.host.memory), refused before the work
    check_memory(route_stage("quantize", str(art.format)), art.size_bytes(), art.path.name)
    output = QUANTIZE_EXECUTORCH_LM.output(out, config, force=force)
    with output.writing(need_bytes=tree_bytes(art.path)) as o:
        model = load_lm(source)
        record: dict[str, Any] = torchao_quantize(model, bits, group, embeddings_bits, lm_head_bits)
        data, lowering = lower_lm(model, max_length)
        (o.dir / "model.pte").write_bytes(data)
        copy_travel(art.path, o.dir)
        manifest = child_manifest(art.manifest, precision=Precision(config.precision.value), model_file="model.pte")
        before, after = (art.path / "model.pte").stat().st_size, len(data)
        step = o.describe(manifest, input_digest=art.digest, lineage=art.manifest.steps,
                          extra_config={"torchao": record, "lowering": lowering})
        step.metrics.update({"size_bytes_before": before, "size_bytes_after": after,
                             "compression": round(before / max(after, 1), 3),
                             "weights": lowering["quantized_weights"],
                             "scheme": f"{record['scheme']}, int8 activations at run time"})
        check = collapse_check(art, o.draft(), runtime="executorch")
        step.metrics["generation_vs_input"] = check
        require_no_collapse(check, f"the {config.precision} generator", strict=config.strict, log=log,
                            hint="try --precision int8, --block-size 32 or --lm-head-bits 8; nothing was "
                            "written (--strict)")
    return output.artifact
