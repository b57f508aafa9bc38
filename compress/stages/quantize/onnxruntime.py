"""Quantization of ONNX artifacts with ONNX Runtime's own tools (OpenVINO artifacts go to NNCF).

INT8 dynamic: weights quantized offline, activations at run time (no data needed).
INT8 static: activations calibrated on N samples (MinMax / mean-MinMax / Entropy / Percentile), QDQ format,
per-channel weights; the QDQ pair ONNX Runtime puts on a graph output is removed (the logits stay float:
:func:`compress.stages.quantize.graph.float_graph_outputs`). Image models also quantize the Clip/Relu between
convolutions so ONNX Runtime fuses QLinearConv (see ``IMAGE_STATIC_OPS``, docs/benchmarks/cnn-int8.md).

Every INT8 mode leaves GEMMs with K or N under 16 float, and ``speed_aware`` returns the layer groups INT8 makes
slower to float (:mod:`compress.stages.quantize.speed`); the parity check against the input warns on a collapse, or
fails with ``strict`` (:mod:`compress.stages.quantize.parity`).

INT8 weights (:meth:`QuantizeConfig.weight_range`, recorded as the step's ``weight_range``): decided by the target
device, never by the host that quantizes. x86 CPUs without VNNI (AVX2) compute u8 x s8 products with VPMADDUBSW,
whose 16-bit intermediate saturates (the ImageNet MobileNetV2's full-range artifact keeps 0.835 of its top-1 there,
0.990 with VNNI); 7-bit weights (``reduce_range``) cannot. So: full-range weights for a ``--profile`` whose CPU sums
them exactly (x86 with VNNI, Arm); 7-bit weights for x86 without VNNI and when no profile names the target (the same
figures on every x86 host: ``benchmarks/vision/weight_range.py``). U8U8 cannot saturate either but ran slower than FP32.

INT4 (weight-only): ONNX Runtime's ``MatMulNBitsQuantizer`` turns every MatMul with a constant weight
into a ``com.microsoft.MatMulNBits`` node: blocks of ``block_size`` weights along the input dimension K,
one scale (and, asymmetric, one zero point) per block and output column. ``accuracy_level`` is 4: the
kernel quantizes the activations to int8 per block and uses integer dot products (VNNI / AVX512 /
Arm dot-product); measured on the SST-2 MiniLM-L6 teacher (AVX512-VNNI host, 2 threads, batch 1 x 64)
it is ~20% faster than level 0 (float compute) at the same accuracy. The embedding tables (Gather) are
INT8 (``quantize_dynamic`` on Gather after the INT4 pass), INT4 (blocks along the hidden dimension; ONNX
Runtime's ``GatherBlockQuantized`` is then replaced by standard operators that unpack only the gathered rows,
:mod:`compress.stages.quantize.int4_gather`, 7x faster on CPU) or FP32, per ``embedding_precision``.

* When ``block_size`` does not divide a weight's K, ONNX Runtime zero-pads K up to the next multiple of
  ``block_size``: the layer is still INT4, its last block per column holds ``K mod block_size`` real
  weights, and the padding is stored (measured, not assumed; logged and recorded in the manifest).
  Embedding tables are not padded: their last block is simply shorter.
* MatMulNBits only sees plain MatMuls. A graph exported with ``--optimize O2`` holds the Q/K/V weights
  inside fused ``Attention`` nodes (a quarter of a BERT encoder's weights); quantizing only what is
  reachable gave 27.5 MB instead of 18.4 MB on MiniLM-L6, so such graphs are refused with the fix
  (re-export with ``--optimize none``) instead of producing a model that is INT4 in name only.
* MatMulNBits is an ONNX Runtime contrib op (CPU and CUDA execution providers):
  INT4 for another runtime, or with ``--mode static`` (QDQ INT8 for TensorRT/NPUs), is refused with a
  message naming what can run it.

Accuracy-aware (``max_drop`` / ``min_retention`` with ``data``): see :mod:`compress.stages.quantize.accuracy`;
the layers it keeps in float are passed to ONNX Runtime as ``nodes_to_exclude``.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from compress.artifact import (
    Artifact,
    Precision,
    child_manifest,
    copy_tokenizer_files,
    is_artifact,
    library_versions,
)
from compress.data.inputs import sample_inputs
from compress.errors import AccuracyBudgetError, ConfigError
from compress.progress import Progress
from compress.stages.common import measure_parity
from compress.stages.quantize.config import (
    QUANTIZE_ONNX,
    EmbeddingPrecision,
    QuantizeConfig,
    QuantMode,
    QuantPrecision,
)
from compress.stages.quantize.fallback import (
    FallBack,
    HeldOutCheck,
    copy_candidate,
    fall_back,
    split_calibration,
)
from compress.stages.quantize.graph import (
    INT4_ACCURACY_LEVEL,
    _block_padding,
    _check_applicable,
    _check_int4_graph,
    _check_int4_request,
    _check_op_types,
    _check_openvino_only_options,
    _check_something_quantized,
    _node_report,
    initializer_bytes,
    is_static_first,
    output_activations,
    quantizable_layers,
    resolve_exclude_nodes,
    static_mode,
    warn_padding,
)
from compress.stages.quantize.layer_errors import artifact_layer_errors
from compress.stages.quantize.ort_accuracy import accuracy_search, granularity_search, verify_final
from compress.stages.quantize.ort_quantizer import OnnxQuantizer
from compress.stages.quantize.parity import check_collapse, stream_parity
from compress.stages.quantize.speed import SMALL_GEMM, small_gemm_layers, speed_search
from compress.stages.quantize.subgraphs import subgraph_read_activations
from compress.stages.spec import StageOutput

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------


def _write_artifact(
    art: Artifact,
    o: StageOutput,
    q: OnnxQuantizer,
    exclude: list[str],
    searched: list[str],
    *,
    extra_metrics: dict[str, Any] | None = None,
    extra_files: dict[str, str] | None = None,
    reasons: dict[str, str] | None = None,
    strict: bool = True,
    fallback: FallBack | None = None,
    check: HeldOutCheck | None = None,
):
    """Quantize into the output ``o`` (inside its ``writing``) and describe it with parity and size; return its
    manifest. ``reasons``:
    why nodes in ``exclude`` beyond the user's and the accuracy search's stay float (small GEMMs, speed-aware);
    ``strict``: whether ``config.strict`` may refuse a collapse (not for a failed search's best candidate);
    ``fallback``: the default static INT8's checked candidate (:mod:`.fallback`), copied when ``exclude`` is its own,
    its held-out figures the parity; ``check``: the held-out rows' check, for a candidate written here."""
    import onnx

    from compress.runtimes.ort_backend import OrtBackend

    config = q.config
    precision = Precision.int4 if q.int4 else Precision.int8
    tmp = o.dir
    dst = tmp / "model.onnx"
    reuse = fallback is not None and list(exclude) == fallback.exclude
    if reuse:
        copy_candidate(fallback, dst)
    else:
        q.write(dst, exclude)
    copy_tokenizer_files(art.path, tmp)
    for extra_file in ("ort_config.json",):
        if (art.path / extra_file).is_file():
            (tmp / extra_file).write_bytes((art.path / extra_file).read_bytes())
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text, encoding="utf-8")

    manifest = child_manifest(art.manifest, precision=precision, model_file="model.onnx")
    manifest.versions = library_versions()
    step = o.describe(manifest, input_digest=art.digest, lineage=art.manifest.steps,
                      extra_config={"int8": {**config.int8.model_dump(mode="json"), "reduce_range": q.reduce_range}})
    written = o.draft()

    static = not q.int4 and config.mode is QuantMode.static
    if check is not None:  # the default static INT8: judged on the rows held out from calibration
        texts = check.rows
        parity_figures = fallback.figures if reuse else check.measure(dst)
    elif art.manifest.stream is not None:  # a streaming model: its sequences call by call, the state carried
        parity = stream_parity(OrtBackend(art), OrtBackend(written), config.sample_data or config.calibration.data)
        texts = []  # no per-layer table: its samples are fed one call from a zero state
    else:
        texts = sample_inputs(config.sample_data or (config.calibration.data if static else None),
                              config.parity_samples, art.manifest.preprocess)
        parity = measure_parity(OrtBackend(art), OrtBackend(written), texts, art.manifest.labels is not None)
    if check is None:
        parity_figures = parity.as_dict()
    collapsed = check_collapse(parity_figures, strict=config.strict and strict, remedies=(
        "--max-drop with --data (keeps the sensitive layers float), --precision int8" if q.int4 else
        "--mode static --calibration DATA with per-channel weights, or OpenVINO (export --format openvino) "
        "with NNCF" if config.mode is QuantMode.dynamic else
        ("the automatic fall-back kept its share of float layers and still fails: " if check is not None else "")
        + "--max-drop with --data (keeps the sensitive layers float), --exclude-nodes first:N,last:M, more "
        "--calibration-samples, or OpenVINO (export --format openvino) with NNCF"))
    before = art.size_bytes()
    after = written.size_bytes()
    op_types = q.op_types()
    metrics: dict[str, Any] = {
        "parity_vs_input": {**parity_figures, "reference": f"{art.format} {art.precision}",
                            **({"collapsed": collapsed} if collapsed else {})},
        "size_bytes_before": before,
        "size_bytes_after": after,
        "compression": round(before / after, 3),
        "initializer_bytes_before": initializer_bytes(q.model),
        "initializer_bytes_after": initializer_bytes(onnx.load(str(dst), load_external_data=False)),
        "nodes": _node_report(q.model, dst, config, op_types, list(config.exclude_nodes), searched, reasons),
    }
    _check_something_quantized(metrics["nodes"], op_types, searched)
    int8_tables = q.int8_tables
    if q.int4:
        layers = quantizable_layers(q.model, op_types)
        padding = _block_padding(
            [lay for lay in layers if lay.name not in exclude and lay.name not in int8_tables
             and (lay.op_type == "MatMul" or config.embedding_precision is EmbeddingPrecision.int4)],
            q.model, config.int4.block_size,
        )
        metrics["int4"] = {
            "block_size": config.int4.block_size,
            "symmetric": config.int4.symmetric,
            "accuracy_level": INT4_ACCURACY_LEVEL,
            "accuracy_level_meaning": "MatMulNBits quantizes activations to int8 per block and uses integer dot "
                                      "products (VNNI / AVX512 / Arm dot-product on CPU)",
            "embedding_precision": str(config.embedding_precision) if "Gather" in op_types else "fp32",
            "runs_on": "onnxruntime (CPU, CUDA execution providers): MatMulNBits is a contrib op",
            "block_padding": padding,
            **({"int8_tables": int8_tables} if int8_tables else {}),
        }
    elif config.mode is QuantMode.dynamic and "Gather" in op_types:
        metrics["embeddings"] = {"precision": str(config.embedding_precision)}
        if config.embedding_precision is EmbeddingPrecision.int4:
            metrics["embeddings"].update(block_size=config.int4.block_size, symmetric=config.int4.symmetric,
                                         op="Gather of packed INT4 rows and their scales, unpacked in standard ONNX "
                                            "operators (compress.stages.quantize.int4_gather)",
                                         int8_tables=int8_tables)
    if strict and not q.int4 and art.manifest.stream is None and texts and not collapsed:
        # faster than its input? timed side by side where the target can be timed here (.speed_check)
        from compress.stages.quantize.speed_check import check_speed, not_timed_here

        why = not_timed_here(config)
        metrics["speed_vs_input"] = {"not_timed": why} if why else \
            check_speed(art, written, texts, config, list(exclude), tuple(op_types))
    metrics.update(extra_metrics or {})
    if (table := artifact_layer_errors(art, dst, texts)) is not None:
        metrics["layer_errors"] = table
    step.metrics = metrics
    return manifest


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def quantize_onnxruntime(art: Artifact, out: Path, config: QuantizeConfig, *, force: bool = False,
                         progress: Progress | None = None, qad_source: Path | None = None) -> Artifact:
    """Quantize an FP32 ONNX artifact with ONNX Runtime (INT8 dynamic/static, INT4 weight-only) into ``out``.

    With ``max_drop``/``min_retention`` and ``data`` the most sensitive layers stay in float until the
    eval metric meets the budget; if no mix within ``max_fp32_fraction`` does, the best candidate is
    written to ``OUT.best-candidate/`` (with ``accuracy_report.json``) and
    :class:`~compress.errors.AccuracyBudgetError` is raised.
    """
    from compress._optional import require

    _check_openvino_only_options(config)
    if is_static_first(art):
        config = static_mode(art, config)
    if config.precision is QuantPrecision.int4:
        _check_int4_request(config)  # first: its reasons (weight-only, runtimes) are the specific ones
    else:
        _check_op_types(config)
    _check_applicable(config)
    if config.precision is not QuantPrecision.int4 and config.mode is QuantMode.static and not config.calibration.data:
        raise ConfigError("static quantization needs calibration data", hint="pass --calibration DATA")

    require("onnxruntime", "INT4 quantization" if config.precision is QuantPrecision.int4 else "INT8 quantization")
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    source = art  # what is quantized: the artifact, or its QAD-trained re-export (parity stays against ``art``)
    if config.qad.steps:
        from compress.stages.quantize.qad import quantization_aware_distillation

        source, extra["qad"] = quantization_aware_distillation(art, config, out, config.resolved_reduce_range(),
                                                                progress, source=qad_source)
    q = OnnxQuantizer(source, config)
    if not q.int4:
        extra["weight_range"] = q.weights.record()
        log.info("INT8 weights: %s, %d bits (%s)", q.weights.weight_type, 7 if q.reduce_range else 8, q.weights.why)
        if eight := q.eight_bit_layers:  # in kernels that cannot saturate: 8 bits whatever the target
            extra["weight_range"]["eight_bit"] = {
                **({"depthwise_s8": list(eight["depthwise"])} if "depthwise" in eight else {}),
                **({"linear_output_u8": list(eight["linear_output"])} if "linear_output" in eight else {})}
            log.info("INT8 weights at 8 bits where no kernel can saturate: %d depthwise convolution(s) (s8), %d "
                     "convolution(s) with a linear output (u8 weights, U8U8)", len(eight.get("depthwise", {})),
                     len(eight.get("linear_output", {})))
    layers = q.layers()
    if q.int4:
        _check_int4_graph(art, q.model, layers)
    resolved = resolve_exclude_nodes(config.exclude_nodes, [lay.name for lay in layers],
                                     {node.name for node in q.model.graph.node})
    if resolved != config.exclude_nodes:  # first:N / last:N as the names they stand for, for every later step
        config = q.config = config.model_copy(update={"exclude_nodes": resolved})
    if q.int4:
        log.info(
            "INT4 weight-only quantization: %d MatMul(s) with MatMulNBits (block %d, %s, accuracy_level %d), "
            "embeddings %s", sum(lay.op_type == "MatMul" for lay in layers), config.int4.block_size,
            "symmetric" if config.int4.symmetric else "asymmetric", INT4_ACCURACY_LEVEL,
            config.embedding_precision if "Gather" in q.op_types() else "fp32",
        )
    elif config.mode is QuantMode.dynamic:
        log.info("dynamic INT8 quantization (reduce_range=%s, per_channel=%s)", q.reduce_range, config.int8.per_channel)

    exclude = list(config.exclude_nodes)
    searched: list[str] = []
    reasons: dict[str, str] = {}
    if not q.int4 and (small := small_gemm_layers(q.model, layers, exclude)):  # INT8 only where it pays
        extra["small_gemms_float"] = list(small.values())
        exclude += list(small)
        reasons.update({name: f"small GEMM (K {g['K']}, N {g['N']}: under {SMALL_GEMM})" for name, g in small.items()})
    if not q.int4 and config.mode is QuantMode.static and (last := output_activations(q.model, q.op_types())):
        exclude += [n for n in last if n not in exclude]  # its clamp must survive the float graph outputs
        reasons.update({n: "the graph output's activation: its clamp must survive the float output" for n in last})
    if not q.int4 and config.mode is QuantMode.static and (read := subgraph_read_activations(q.model, q.op_types())):
        exclude += [n for n in read if n not in exclude]  # ONNX Runtime's fold would hand the subgraph it unclamped
        extra["activations_float_for_subgraphs"] = read
        reasons.update({n: "an If/Loop subgraph reads its output (compress.stages.quantize.subgraphs)" for n in read})
    scratch = None
    fallback = check = None
    try:
        if falls_back(art, config):  # the default static INT8: checked on held-out rows, falling back where it fails
            out.parent.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".check", dir=out.parent))
            split = split_calibration(config, art.manifest.preprocess)
            log.info("static INT8: %s", split.how)
            if (said := split.warning()) is not None:  # nothing held out: recorded, logged, printed by the CLI
                extra["warning"] = said
                log.warning("%s", said)
            q.calibration_rows, q.calibration_cache = split.calibration, scratch / "calibration.json"
            fallback = fall_back(art, q, layers, exclude, split, scratch, progress)
            check = fallback.check
            for name in fallback.exclude[len(exclude):]:
                reasons[name] = "fall-back: its run of layers cost most in the held-out check (fallback.runs)"
            exclude = list(fallback.exclude)
            extra["fallback"] = fallback.record
        if config.accuracy_aware:
            out.parent.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".search", dir=out.parent))
            if is_static_first(art) and config.mode is QuantMode.static and config.int8.per_channel:
                extra["weight_scales"] = granularity_search(art, q, scratch)
            result, eval_set = accuracy_search(art, q, layers, scratch, initial=exclude)
            if not result.met:
                _fail_budget(art, q, out, result, t0, reasons)
            exclude = list(dict.fromkeys([*result.excluded, *exclude]))  # the search's layers, and what is fixed
            searched = [n for n in exclude if n not in config.exclude_nodes and n not in reasons]
            extra["accuracy_aware"] = result.to_dict()
        if config.speed.aware:
            if scratch is None:
                out.parent.mkdir(parents=True, exist_ok=True)
                scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".search", dir=out.parent))
            if config.mode is QuantMode.static:
                q.calibration_cache = q.calibration_cache or scratch / "calibration.json"
            items = sample_inputs(config.calibration.data or config.sample_data, 1, art.manifest.preprocess)
            extra["speed_aware"] = speed_search(art, q, layers, exclude, scratch, items)
            for name in extra["speed_aware"]["float_nodes"]:
                exclude.append(name)
                reasons[name] = "speed-aware: its layer group ran faster in float (see speed_aware.groups)"
        if q.int4:
            warn_padding([lay for lay in q.layers() if lay.name not in exclude], q.model, config.int4.block_size)
        others = art.size_bytes(model_only=False) - art.size_bytes()
        output = QUANTIZE_ONNX.output(out, config, force=force, t0=t0)
        with output.writing(need_bytes=art.size_bytes() // 4 + others) as o:  # about 4x smaller
            manifest = _write_artifact(art, o, q, exclude, searched, extra_metrics=extra, reasons=reasons,
                                       fallback=fallback, check=check)
            if config.accuracy_aware:
                verify_final(o.dir, manifest, eval_set, manifest.steps[-1].metrics["accuracy_aware"])
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if config.qad.steps:
        from compress.stages.quantize.qad import finish

        finish(out)
    m = manifest.steps[-1].metrics
    log.info("wrote %s (%.1f MB -> %.1f MB)", out, m["size_bytes_before"] / 1e6, m["size_bytes_after"] / 1e6)
    return output.artifact


def falls_back(art: Artifact, config: QuantizeConfig) -> bool:
    """Is this the default static INT8 that checks itself on held-out rows and falls back (:mod:`.fallback`)? Static
    INT8 of a model that is not streamed, without the user's own choice of float layers (``--exclude-nodes``, an
    accuracy budget) or QAD, which keep their behaviour."""
    return config.precision is QuantPrecision.int8 and config.mode is QuantMode.static and art.manifest.stream is None \
        and not config.exclude_nodes and not config.accuracy_aware and not config.qad.steps


def _fail_budget(art: Artifact, q: OnnxQuantizer, out: Path, result, t0: float, reasons: dict[str, str]) -> None:
    """Write the best candidate beside ``out`` with a failure report, then raise AccuracyBudgetError."""
    best_dir = out.parent / f"{out.name}.best-candidate"
    record = result.to_dict()
    message = f"accuracy budget not met: {result.summary()}"
    written = None
    if best_dir.exists() and not is_artifact(best_dir):
        log.error("%s exists and is not an artifact: the best candidate was not written", best_dir)
    else:
        report = {
            "status": "failed: accuracy budget not met",
            "message": message,
            "requested_output": str(out),
            "input": str(art.path),
            **record,
        }
        excluded = list(dict.fromkeys([*result.excluded, *reasons]))  # with what stays float for its own reason
        searched = [n for n in result.excluded if n not in q.config.exclude_nodes and n not in reasons]
        output = QUANTIZE_ONNX.output(best_dir, q.config, force=True, t0=t0)
        with output.writing(load=False) as o:
            manifest = _write_artifact(
                art, o, q, excluded, searched,
                extra_metrics={"accuracy_aware": record, "weight_range": q.weights.record()},
                extra_files={"accuracy_report.json": json.dumps(report, indent=2) + "\n"},
                reasons=reasons, strict=False,
            )
            manifest.steps[-1].metrics["accuracy_aware"]["note"] = (
                "best candidate of a failed accuracy-aware run: it does NOT meet the budget"
            )
        written = best_dir
        log.warning("wrote the best candidate (budget not met) to %s", best_dir)
    b = result.best
    raise AccuracyBudgetError(
        message,
        metric=result.metric_name,
        baseline=result.baseline,
        best=b.metric,
        allowed_min=result.budget.min_metric(result.baseline),
        costliest=result.costliest_names(),
        best_candidate=str(written) if written else None,
        hint=(f"best candidate and accuracy_report.json written to {written}" if written else "no candidate written")
        + "; relax --max-drop, allow more layers in float (max_fp32_fraction), or "
        + ("use --precision int8 or a smaller --block-size" if q.int4 else "try --mode static (calibrated QDQ)"),
    )
