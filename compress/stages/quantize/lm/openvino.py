"""Weight-only INT4 / INT8 of a causal LM's stateful OpenVINO IR (task text-generation), through
``nncf.compress_weights``.

What is quantized, and how:

- ``--precision int4``: every MatMul with a constant weight (q/k/v/o projections, the MLP) to INT4_ASYM with HQQ's
  values, or 8 bits where the default's measurement chose them (``auto``, below; INT4_SYM for ``rtn``, INT4_ASYM with
  ``--asymmetric``) in groups of ``int4.block_size`` weights
  (generators default to 32, as the ONNX route: :func:`compress.stages.quantize.lm.common.resolve_int4`), ratio 1.0; a
  layer whose input width the group does not divide takes the largest group of at least :data:`MIN_GROUP` that does (NNCF's ADJUST fallback), else INT8_ASYM
  (ONNX Runtime pads the last block instead); ``--precision int8``: every weight INT8_ASYM per output channel.
- the token embedding table and the LM head (the last MatMul): NNCF's backup mode, INT8_ASYM per channel, which is
  ``int4.embeddings_bits`` 8 / ``int4.lm_head_bits`` 8, the defaults (the step records each weight's element type read
  back from the IR, so that is checked, not assumed); 4 and 4 is NNCF's ``all_layers`` (both in INT4 groups); other
  mixes and a float embedding table (32) are refused in one line (NNCF has no switch for them on a tied model).
- ``int4.algorithm``: ``auto`` (the INT4 default; data-free): each body MatMul's candidate chosen by measurement
  (:mod:`.openvino_mix`: 4-bit HQQ groups or 8 bits per channel, within Q4_K_M's bytes where a check on a built-in text
  holds), written by NNCF: INT4_ASYM with the 8-bit choices ignored, then INT8_ASYM over those, then HQQ's values
  into the u4 groups, each matrix's element type read back against the plan (the step's ``int4_mix`` record);
  ``hqq``: every body MatMul in NNCF's INT4_ASYM groups with HQQ's values written in
  (:func:`hqq_groups`: ONNX Runtime's HQQ quantizer fits each group's scale and a float zero point, kept in FP16);
  ``rtn`` (data-free round to nearest), or the data-aware ``awq``, ``scale_estimation``, ``gptq`` on text windows
  (``--calibration`` text cut into windows of 128 tokens, at most ``--calibration-samples``; else a few built-in
  prompts): NNCF runs the stateful IR on each window after a state reset. ``awq`` also turns on scale
  estimation, as optimum-intel's INT4 presets do; ``k_quant`` is refused (ONNX Runtime's). On SmolLM2-135M from its
  Q4_1 GGUF (WikiText-2): hqq +0.17% perplexity, top-1 0.969; NNCF's best, AWQ with scale estimation, +15.5%, 0.759
  (benchmarks/results/lm_int4_openvino_real.json).

After quantizing, greedy continuations of a few prompts through the quantized IR and the FP32 input (the OpenVINO
backend's prefill/step) are compared, as the ONNX route does: continuation agreement, the prompts' top-1 agreement and
KL, and a collapse is a loud warning, or an error with ``--strict`` (nothing written). Batch 1.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from compress.artifact import Artifact, Precision, child_manifest
from compress.errors import ConfigError, EdgeCompressError
from compress.host.memory import check_memory, release_freed, route_stage
from compress.progress import Progress
from compress.stages.export.lm.openvino import MODEL_XML, genai_tokenizer
from compress.stages.quantize.config import QUANTIZE_OPENVINO, QuantizeConfig, refuse_ignored
from compress.stages.quantize.graph import resolve_exclude_nodes
from compress.stages.quantize.lm.common import calibration_windows, collapse_check, resolve_int4
from compress.stages.quantize.lm.openvino_mix import MIN_GROUP, weight_type
from compress.tasks.generation import copy_travel, require_no_collapse

log = logging.getLogger(__name__)

ALGORITHMS = ("hqq", "rtn", "awq", "scale_estimation", "gptq")  #: hqq: below; the others nncf.compress_weights's
#: the INT4 default: each MatMul's candidate by measurement (:mod:`.openvino_mix`); "auto" is not an algorithm of its own
AUTO = "auto"
#: the settings a generator's weight-only quantization reads (flat keys); any other given is refused
_APPLIES = {"precision", "block_size", "symmetric", "int4_algorithm", "embeddings_bits", "lm_head_bits", "calibration",
            "calibration_samples", "exclude_nodes", "strict", "parity_samples", "sample_data"}


def check_request(config: QuantizeConfig) -> tuple[int, int, str]:
    """(bits, group size, algorithm) of a request, or a one-line :class:`ConfigError` for what NNCF cannot do here."""
    given = config.given_keys()
    refuse_ignored(config, "openvino-causal-lm")  # what this quantizer does not read, in one line
    bits = 4 if config.precision == "int4" else 8
    resolved = resolve_int4(config, bits)
    algorithm = resolved.int4.algorithm
    if algorithm not in (AUTO, *ALGORITHMS):
        raise ConfigError(f"--int4-algorithm {algorithm}: OpenVINO's INT4 here takes {', '.join((AUTO, *ALGORITHMS))}",
                          hint="k_quant is ONNX Runtime's (export --format onnx)")
    if algorithm == AUTO and "symmetric" in given and config.int4.symmetric and bits == 4:
        raise ConfigError("--symmetric does not apply to --int4-algorithm auto (it would be ignored): the default "
                          "chooses 4-bit HQQ groups or 8 bits per matrix by measurement, both asymmetric",
                          hint="add --int4-algorithm rtn for symmetric groups everywhere, or drop --symmetric")
    if algorithm == "hqq" and "symmetric" in given and config.int4.symmetric:
        raise ConfigError("--int4-algorithm hqq is asymmetric (a float zero point per group)",
                          hint="drop --symmetric, or choose rtn")
    if bits == 8 and algorithm != "rtn":
        raise ConfigError(f"--int4-algorithm {algorithm} applies to --precision int4 (INT8 is per-channel round to "
                          "nearest)", hint="drop it, or add --precision int4")
    if "calibration" in given and algorithm in ("rtn", "hqq", AUTO):
        raise ConfigError("--calibration feeds the data-aware algorithms only (it would be ignored)",
                          hint="add --int4-algorithm awq, scale_estimation or gptq, or drop --calibration")
    pair = (config.int4.embeddings_bits, config.int4.lm_head_bits)
    if pair not in ((8, 8), (4, 4)):
        raise ConfigError(f"--embeddings-bits {pair[0]} with --lm-head-bits {pair[1]}: NNCF takes both at 8 (its backup "
                          "mode, the default) or both at 4 (all_layers)", hint="give 8 and 8, or 4 and 4")
    if bits == 8 and pair != (8, 8):
        raise ConfigError("--embeddings-bits/--lm-head-bits 4 apply to --precision int4", hint="drop them")
    return bits, resolved.int4.block_size, algorithm


def nncf_dataset(art: Artifact, config: QuantizeConfig):
    """Text windows as an ``nncf.Dataset`` of the stateful IR's feeds (input_ids, attention_mask, position_ids,
    beam_idx where it has one); NNCF resets the state before each."""
    import nncf

    names = {t.name for t in art.manifest.inputs}

    def feeds(ids: list[int]) -> dict[str, np.ndarray]:
        x = np.asarray([ids], dtype=np.int64)
        f = {"input_ids": x, "attention_mask": np.ones_like(x), "position_ids": np.arange(x.shape[1])[None]}
        if "beam_idx" in names:
            f["beam_idx"] = np.zeros(1, dtype=np.int32)
        return {k: v for k, v in f.items() if k in names}

    windows = calibration_windows(art, config)
    return nncf.Dataset(windows, feeds), len(windows)


def compress(model, art: Artifact, config: QuantizeConfig, bits: int, block: int, algorithm: str,
             ignore: tuple[str, ...] = ()):
    """``nncf.compress_weights`` on the ``openvino.Model``; (the model, what the step records). ``ignore``: more
    layers (friendly names) left as they are, beside ``--exclude-nodes``'s."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    from compress.stages.quantize.nncf import nncf_error, weight_layers

    kwargs: dict[str, Any] = {}
    if bits == 8:
        kwargs["mode"] = nncf.CompressWeightsMode.INT8_ASYM
    else:  # hqq: NNCF's INT4_ASYM groups, their values then HQQ's (hqq_groups)
        kwargs.update(mode=nncf.CompressWeightsMode.INT4_SYM if config.int4.symmetric and algorithm != "hqq" else
                      nncf.CompressWeightsMode.INT4_ASYM, group_size=block, ratio=1.0,
                      all_layers=config.int4.embeddings_bits == 4, backup_mode=nncf.BackupMode.INT8_ASYM,
                      advanced_parameters=AdvancedCompressionParameters(
                          group_size_fallback_mode=GroupSizeFallbackMode.ADJUST,
                          min_adjusted_group_size=min(MIN_GROUP, block)))
        if algorithm not in ("rtn", "hqq"):
            dataset, n = nncf_dataset(art, config)
            kwargs.update(dataset=dataset, subset_size=n, awq=algorithm == "awq",
                          scale_estimation=algorithm in ("awq", "scale_estimation"), gptq=algorithm == "gptq")
    names = list(ignore)
    if config.exclude_nodes:  # first:N / last:N as the MatMuls they stand for; an unknown name refused
        names += resolve_exclude_nodes(config.exclude_nodes, weight_layers(model, ("MatMul",)),
                                       {op.get_friendly_name() for op in model.get_ordered_ops()})
    if names:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=names, validate=False)
    log.info("nncf.compress_weights(%s)", ", ".join(f"{k}={getattr(v, 'value', v)}" for k, v in kwargs.items()
                                                    if k not in ("dataset", "ignored_scope", "advanced_parameters")))
    try:
        result = nncf.compress_weights(model, **kwargs)
    except EdgeCompressError:
        raise
    except Exception as e:  # NNCF's own errors become one line
        raise nncf_error(e, "weight compression") from e
    record = {k: getattr(v, "value", v) for k, v in kwargs.items()
              if k not in ("dataset", "ignored_scope", "advanced_parameters")}
    if "advanced_parameters" in kwargs:
        record.update(group_size_fallback_mode="adjust", min_adjusted_group_size=min(MIN_GROUP, block))
    if "dataset" in kwargs:
        record["calibration_windows"] = kwargs["subset_size"]
    return result, record


def hqq_groups(model, weights: dict[str, np.ndarray]) -> int:
    """Give every INT4 group NNCF wrote (``u4`` weights, ``Convert -> Subtract(zero point) -> Multiply(scale)``) the
    values of HQQ instead (half-quadratic: scale and a *float* zero point per group fitted to the weight, ONNX
    Runtime's ``HQQWeightOnlyQuantizer`` on the FP32 weight ``weights[name]``): the zero point becomes an FP16 constant,
    which OpenVINO's CPU plugin reads as it reads NNCF's. On weights that already carry a 4-bit grid with a float
    minimum (a Q4_1 GGUF's) HQQ finds that grid; integer zero points (NNCF's) cannot. Returns the groups' count."""
    import openvino as ov
    import torch
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, HQQWeightOnlyQuantizer
    from openvino import opset13 as ops

    done = 0
    for op in list(model.get_ordered_ops()):
        if op.get_type_name() != "Multiply":
            continue
        sub, scale = (i.get_source_output().get_node() for i in op.inputs())
        if sub.get_type_name() != "Subtract" or scale.get_type_name() != "Constant":
            continue
        wconv = sub.input(0).get_source_output().get_node()
        const = wconv.input(0).get_source_output().get_node() if wconv.get_type_name() == "Convert" else None
        if const is None or const.get_output_element_type(0) != ov.Type.u4:
            continue
        n, groups, group = (int(d) for d in const.get_output_shape(0))
        w = weights.get(const.get_friendly_name())
        if w is None or w.shape != (n, groups * group):
            continue
        q, s, z = HQQWeightOnlyQuantizer(HQQWeightOnlyQuantConfig(block_size=group)).quantize_internal(
            torch.from_numpy(np.array(w, dtype=np.float32)), bits=4, group_size=group, axis=1)
        q = q.numpy().astype(np.uint8).reshape(-1)
        packed = ov.op.Constant(ov.Type.u4, ov.Shape([n, groups, group]), q.tolist())
        wconv.input(0).replace_source_output(packed.output(0))
        sub.input(1).replace_source_output(ops.constant(z.numpy().reshape(n, groups, 1).astype(np.float16)).output(0))
        op.input(1).replace_source_output(ops.constant(s.numpy().reshape(n, groups, 1).astype(np.float16)).output(0))
        done += 1
    return done


def float_weights(model) -> dict[str, np.ndarray]:
    """The FP32 IR's 2-D weight constants by name (what :func:`hqq_groups` fits HQQ to)."""
    return {op.get_friendly_name(): op.get_data() for op in model.get_ordered_ops()
            if op.get_type_name() == "Constant" and op.get_output_partial_shape(0).rank.get_length() == 2
            and op.get_output_element_type(0).get_type_name() == "f32"}


def weight_types(model) -> dict[str, Any]:
    """Each weight's element type as the compressed IR holds it (:func:`weight_type`): counts per type over the
    MatMul/Gather weights, and the LM head's and the embedding table's own (the MatMul that makes ``logits``, the
    Gather of ``input_ids``)."""
    counts: dict[str, int] = {}
    head = embed = None
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("MatMul", "Gather"):
            continue
        t = weight_type(op.input(1 if kind == "MatMul" else 0).get_source_output().get_node())
        if t == "none":
            continue
        counts[t] = counts.get(t, 0) + 1
        if kind == "MatMul":
            head = t  # the last MatMul with a constant weight (ordered ops: the head comes last)
        elif embed is None:
            embed = t
    return {"matmul_and_gather_weights": counts, "lm_head": head, "embeddings": embed}


def _exclude_resolved(config: QuantizeConfig, model) -> QuantizeConfig:
    """``config`` with ``--exclude-nodes`` (first:N / last:N) as the MatMuls they stand for in the FP32 ``model``:
    the INT4 mix compresses in two passes, and the second must not read them on a half-compressed model."""
    from compress.stages.quantize.nncf import weight_layers

    if not config.exclude_nodes:
        return config
    names = resolve_exclude_nodes(config.exclude_nodes, weight_layers(model, ("MatMul",)),
                                  {op.get_friendly_name() for op in model.get_ordered_ops()})
    return config.model_copy(update={"exclude_nodes": names})


def _auto(model, art: Artifact, config: QuantizeConfig, block: int,
          progress: Progress | None) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The INT4 default: each body MatMul's candidate by measurement (:func:`.openvino_mix.plan`), written by NNCF:
    INT4_ASYM (ratio 1.0, the LM head and embedding at the backup INT8_ASYM as for every INT4) with the 8-bit choices
    ignored, then INT8_ASYM over what is still float but ``--exclude-nodes`` (NNCF leaves compressed weights alone),
    then HQQ's values into every u4 group (:func:`hqq_groups`); each planned matrix's element type is read back
    (:func:`.openvino_mix.check_written`). Returns (the model, NNCF's record, the mix's record)."""
    from compress.stages.quantize.lm import openvino_mix
    from compress.stages.quantize.lm.bit_allocation import importance_ids

    post = art.manifest.postprocess
    kv = post.cache.kv_heads * post.cache.head_size if post.cache else None
    body = openvino_mix.body_matmuls(model, tuple(config.exclude_nodes or ()))
    choice, planned = openvino_mix.plan(model, body, block=block, ids=importance_ids(art), kv_width=kv,
                                        progress=progress, source=art.model_path)
    at8 = tuple(n for n, c in choice.items() if c == "int8")
    weights = float_weights(model)
    model, record = compress(model, art, config, 4, block, "hqq", ignore=at8)
    if at8:
        model, second = compress(model, art, config, 8, block, "rtn")
        record["int8_pass"] = {**second, "matmuls": len(at8)}
    record.update(algorithm=AUTO, hqq_groups=hqq_groups(model, weights), zero_points="float16")
    del weights
    planned["written"] = openvino_mix.check_written(model, choice)
    return model, record, planned


def quantize_lm_openvino(art: Artifact, out: Path | str, config: QuantizeConfig, *, force: bool = False,
                         progress: Progress | None = None) -> Artifact:
    """Quantize the FP32 stateful OpenVINO IR ``art`` of a causal LM weight-only (INT4 or INT8) into a new artifact at
    ``out``; see the module's docstring. A collapse is a warning (in the step's metrics), an error with ``strict``."""
    import openvino as ov

    from compress.storage import tree_bytes

    bits, block, algorithm = check_request(config)
    config = resolve_int4(config, bits)

    # the route's measured peak (compress.host.memory), refused before the work
    check_memory(route_stage("quantize", str(art.format)), art.size_bytes(), art.path.name)
    output = QUANTIZE_OPENVINO.output(out, config, force=force)
    with output.writing(need_bytes=tree_bytes(art.path)) as o:
        model = ov.Core().read_model(str(art.model_path))
        planned = None
        if algorithm == AUTO:  # the default: measured per model
            config = o.config = _exclude_resolved(config, model)  # the step records the names they stood for
            model, record, planned = _auto(model, art, config, block, progress)
        else:
            weights = float_weights(model) if algorithm == "hqq" else {}
            model, record = compress(model, art, config, bits, block, algorithm)
            if algorithm == "hqq":
                record.update(algorithm="hqq", hqq_groups=hqq_groups(model, weights), zero_points="float16")
                del weights
        ov.save_model(model, str(o.dir / MODEL_XML), compress_to_fp16=False)
        copy_travel(art.path, o.dir)
        own = genai_tokenizer(art.path, o.dir)
        made = weight_types(model)
        del model
        release_freed()  # the compressed model (and the FP32 IR it came from): not beside the check's two
        manifest = child_manifest(art.manifest, precision=Precision(config.precision.value), model_file=MODEL_XML)
        before, after = tree_bytes(art.path), tree_bytes(o.dir)
        step = o.describe(manifest, input_digest=art.digest, lineage=art.manifest.steps,
                          extra_config={"nncf": record, "own_runtime": own})
        step.metrics.update({"size_bytes_before": before, "size_bytes_after": after,
                             "compression": round(before / max(after, 1), 3), "weights": made})
        if planned is not None:
            step.metrics["int4_mix"] = planned
            if not planned["held"]:
                last = planned["tried"][-1]
                step.metrics["warning"] = (
                    f"the INT4 mix missed its check on the built-in text even at {last['body_bytes'] / 1e6:.1f} MB "
                    f"(KL {last['kl']:.3f}): validate it on your text (validate --data); if it fails, try "
                    "--precision int8")
                log.warning("%s", step.metrics["warning"])
        check = collapse_check(art, o.draft(), runtime="openvino")
        step.metrics["generation_vs_input"] = check
        require_no_collapse(check, f"the {config.precision} generator", strict=config.strict, log=log,
                            hint="try --int4-algorithm awq or scale_estimation with --calibration text, "
                            "--block-size 32, or --precision int8; nothing was written (--strict)")
    return output.artifact
