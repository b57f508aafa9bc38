"""What quantize knows about an ONNX graph and a request: weight-carrying nodes, the checks that refuse what
cannot work or would be ignored, and the report of which nodes were quantized."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from compress.artifact import Artifact
from compress.data.inputs import is_image, preprocess_kind
from compress.errors import ConfigError
from compress.stages.quantize.config import (
    CalibrationMethod,
    EmbeddingPrecision,
    QuantizeConfig,
    QuantMode,
    QuantPrecision,
)

log = logging.getLogger("compress.stages.quantize")  # the verb's logger

#: MatMulNBits accuracy_level: 4 = int8 compute on the activations (see the module docstring).
INT4_ACCURACY_LEVEL = 4
#: ONNX Runtime execution providers that implement MatMulNBits (and GatherBlockQuantized).
INT4_PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider")
#: Fused ONNX Runtime ops that hold weights MatMulNBits cannot reach.
FUSED_WEIGHT_OPS = ("Attention", "EmbedLayerNormalization", "PackedAttention", "QAttention")
#: Ops quantize_dynamic quantizes by default (ONNX Runtime's IntegerOps registry) that carry weights.
DYNAMIC_WEIGHT_OPS = ("MatMul", "Attention", "Gather", "EmbedLayerNormalization", "Conv", "LSTM")
STATIC_DEFAULT_OPS = ("MatMul", "Attention")
#: static INT8 of an image model: convolutions and fully connected layers (per-channel weights by default), and the
#: clipping activations between them. With ``Clip``/``Relu`` listed, ONNX Runtime's QDQ quantizer folds each into the
#: quantize that follows its convolution (the calibrated range lies inside the clip), so DQ -> Conv -> Q fuses into
#: QLinearConv; left out, every ReLU6 stays in float between a dequantize and the next quantize, nothing fuses, and a
#: real ImageNet MobileNetV2 ran 0.73x its FP32 speed at 0.87 retention (1.58x, 0.990 with them and mean-minmax
#: ranges: benchmarks/vision/cnn_int8.py).
IMAGE_STATIC_OPS = ("Conv", "MatMul", "Gemm", "Clip", "Relu")


# ---------------------------------------------------------------------------------------------
# Graph inspection
# ---------------------------------------------------------------------------------------------

_FLOAT_TYPES = (1, 10, 16)  # FLOAT, FLOAT16, BFLOAT16
# bytes per element of initializer types (INT4/UINT4 pack two per byte)
_ELEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2, 21: 0.5, 22: 0.5}


def _numel(t) -> int:
    n = 1
    for d in t.dims:
        n *= int(d)
    return n


def _weights_of(node, inits: dict) -> list:
    """The float initializers of rank >= 2 a node uses as weights (MatMul: B; Gather: the table)."""
    if node.op_type == "MatMul":
        idx: Any = [1]
    elif node.op_type == "Gather":
        idx = [0]
    else:
        idx = range(len(node.input))
    out = []
    for i in idx:
        if i < len(node.input) and node.input[i] in inits:
            t = inits[node.input[i]]
            if t.data_type in _FLOAT_TYPES and len(t.dims) >= 2:
                out.append(t)
    return out


def weight_nodes(model) -> list[tuple[Any, list]]:
    """``(node, weight initializers)`` for every top-level node that carries a float weight matrix."""
    inits = {t.name: t for t in model.graph.initializer}
    return [(n, w) for n in model.graph.node if (w := _weights_of(n, inits))]


#: INT4 embeddings: tables under this share of the largest table's values (positions, token types) stay INT8.
INT4_TABLE_MIN_SHARE = 0.1


def small_embedding_tables(model) -> list[str]:
    """Gather nodes whose table holds under ``INT4_TABLE_MIN_SHARE`` of the largest table's values.

    With INT4 embeddings these stay INT8: they hold a fraction of the bytes (an INT4 position table saved 0.1 MB of
    a 2-layer student), and each INT4 table read is one more unpack (:mod:`compress.stages.quantize.int4_gather`;
    with ONNX Runtime's GatherBlockQuantized it cost 0.23 ms of p50, 3.27 -> 3.50 ms); the vocabulary holds the bytes."""
    tables = [(n.name, sum(_numel(w) for w in ws)) for n, ws in weight_nodes(model) if n.op_type == "Gather"]
    largest = max((v for _, v in tables), default=0)
    return [name for name, v in tables if v < INT4_TABLE_MIN_SHARE * largest]


def _gemm_as_matmul(node) -> bool:
    """quantize_dynamic rewrites such a Gemm into ``<name>_MatMul`` + ``<name>_Add`` and quantizes the MatMul."""
    attrs = {a.name: a for a in node.attribute}

    def val(name, default):
        a = attrs.get(name)
        return default if a is None else (a.f if a.type == 1 else a.i)

    return val("alpha", 1.0) == 1.0 and val("beta", 1.0) == 1.0 and val("transA", 0) == 0


def quantizable_layers(model, op_types, *, dynamic_gemm: bool = False) -> list:
    """The nodes of ``op_types`` with a constant float weight, as :class:`~compress.stages.quantize.accuracy.Layer`.

    ``dynamic_gemm``: also list plain Gemms (classifier heads) under the name quantize_dynamic gives the
    MatMul it rewrites them into (``<name>_MatMul``), which is the name its ``nodes_to_exclude`` takes.
    """
    from compress.stages.quantize.accuracy import Layer, group_of

    layers = []
    for node, ws in weight_nodes(model):
        if dynamic_gemm and node.op_type == "Gemm" and node.name and _gemm_as_matmul(node) and \
                node.input[1] in {w.name for w in ws}:
            name = f"{node.name}_MatMul"
            layers.append(Layer(name, "Gemm", sum(_numel(w) for w in ws), group_of(node.name, "Gemm")))
            continue
        if node.op_type not in op_types or not node.name:
            continue
        if node.op_type == "MatMul" and any(int(d) != 1 for d in ws[0].dims[:-2]):
            continue  # batched constant weights: ONNX Runtime's quantizers skip them
        layers.append(Layer(node.name, node.op_type, sum(_numel(w) for w in ws), group_of(node.name, node.op_type)))
    return layers


def initializer_bytes(model) -> dict[str, int]:
    """Bytes of the model's initializers by element type (what the weights really occupy)."""
    from onnx import TensorProto

    out: dict[str, float] = {}
    for t in model.graph.initializer:
        name = TensorProto.DataType.Name(t.data_type).lower()
        out[name] = out.get(name, 0) + _numel(t) * _ELEM_BYTES.get(t.data_type, 4)
    return {k: int(round(v)) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def _int4_op_types(config: QuantizeConfig) -> tuple[str, ...]:
    allowed = ("MatMul", "Gather")
    if config.op_types:
        bad = [o for o in config.op_types if o not in allowed]
        if bad:
            raise ConfigError(
                f"--op-types {','.join(bad)} cannot be INT4: weight-only INT4 covers MatMul (MatMulNBits) and "
                "Gather embeddings (--embedding-precision)",
                hint="use --op-types MatMul[,Gather] with --precision int4, or --precision int8 for other operators",
            )
    requested = tuple(config.op_types) if config.op_types else allowed
    return tuple(o for o in requested if o == "MatMul" or config.embedding_precision is not EmbeddingPrecision.fp32)


def _check_int4_request(config: QuantizeConfig) -> None:
    """INT4 settings that no graph can fix: refused before any work."""
    if config.mode is QuantMode.static:
        raise ConfigError(
            "--precision int4 with --mode static: INT4 here is weight-only (ONNX Runtime's MatMulNBits, float "
            "activations, no calibration), which runs in onnxruntime on CPU/CUDA; static mode makes "
            "activation-quantized QDQ INT8 models for TensorRT and NPUs",
            hint="drop --mode static for INT4 in onnxruntime, or use --precision int8 --mode static for TensorRT/NPUs",
        )
    runtime = (config.target.runtime or "onnxruntime").lower()
    if runtime != "onnxruntime":
        other = {
            "openvino": "for OpenVINO, export --format openvino and quantize that artifact to INT4 (NNCF "
                        "compress_weights), or use --precision int8",
            "tensorrt": "for TensorRT use --precision int8 --mode static (QDQ)",
        }.get(runtime, "use --precision int8")
        raise ConfigError(
            f"INT4 ONNX models use ONNX Runtime's MatMulNBits/GatherBlockQuantized contrib operators, which the "
            f"target runtime {runtime} cannot run; only onnxruntime can (CPU and CUDA execution providers)",
            hint=f"target an onnxruntime profile; {other}",
        )
    if config.target.provider and config.target.provider not in INT4_PROVIDERS:
        log.warning(
            "%s does not implement MatMulNBits/GatherBlockQuantized (%s do): ONNX Runtime will run those nodes on "
            "its CPU fallback provider", config.target.provider, " and ".join(INT4_PROVIDERS),
        )
    _int4_op_types(config)  # --calibration with INT4 is refused by _check_applicable: weight-only needs no ranges


def _check_int4_graph(art: Artifact, model, layers: list) -> None:
    """Refuse a graph whose weights MatMulNBits cannot reach (ONNX Runtime's fused operators)."""
    from collections import Counter

    fused = [(n, ws) for n, ws in weight_nodes(model) if n.op_type in FUSED_WEIGHT_OPS]
    if fused:
        fused_params = sum(_numel(w) for _, ws in fused for w in ws)
        matmul_params = sum(lay.params for lay in layers if lay.op_type == "MatMul")
        share = fused_params / max(fused_params + matmul_params, 1)
        counts = ", ".join(f"{c} {op}" for op, c in Counter(n.op_type for n, _ in fused).items())
        export_cfg = next((s.config for s in art.manifest.steps if s.stage == "export"), {})
        how = f" (exported with --optimize {export_cfg['optimize']})" if export_cfg.get("optimize") else ""
        log.warning("%s holds fused ONNX Runtime operators (%s)%s that MatMulNBits cannot quantize", art.path, counts, how)
        raise ConfigError(
            f"{art.path} has fused ONNX Runtime operators ({counts}){how} holding {share:.0%} of the encoder's "
            "weight matrices; INT4 MatMulNBits only quantizes plain MatMuls, so they would stay FP32 (an INT4 "
            "model in name only: 27.5 MB instead of 18.4 MB for MiniLM-L6)",
            hint=f"re-export unfused with `edgecompress export {art.manifest.source.path} --optimize none --out DIR` "
            "and quantize that artifact to INT4 (INT8 works on this artifact as it is)",
        )
    if not any(lay.op_type == "MatMul" for lay in layers):
        raise ConfigError(
            f"{art.path} has no MatMul with a constant weight: nothing for INT4 MatMulNBits to quantize",
            hint="use --precision int8",
        )


def _check_openvino_only_options(config: QuantizeConfig) -> None:
    """NNCF's options have no ONNX Runtime counterpart: refuse rather than ignore them."""
    if config.int8.weights_only:
        raise ConfigError(
            "--weights-only is OpenVINO's INT8 weight compression and does not apply to an ONNX artifact",
            hint="drop it (ONNX dynamic INT8 already needs no data), or use --precision int4 for weight-only "
            "INT4, or export --format openvino first",
        )


#: the settings ONNX Runtime's quantization of a model that is not a causal LM reads (flat keys); any other given is
#: refused by :func:`compress.stages.quantize.config.refuse_ignored`, and the kind-specific ones below by
#: :func:`_check_applicable`
_APPLIES = {
    "precision", "mode", "op_types", "exclude_nodes", "parity_samples", "sample_data", "strict", "embedding_precision",
    "calibration", "calibration_samples", "calibration_method", "percentile",
    "per_channel", "weight_type", "reduce_range", "block_size", "symmetric",
    "qat_steps", "qat_data", "qat_source", "qat_lr", "qat_batch_size",
    "max_drop", "min_retention", "data", "metric", "eval_samples", "max_fp32_fraction", "rank_by",
    "speed_aware", "speed_threads", "speed_seconds", "refuse_slower",
}
#: settings that only one kind of ONNX quantization reads, and which kind that is
_ONLY_FOR = {
    "calibration": "--mode static", "calibration_samples": "--mode static", "calibration_method": "--mode static",
    "block_size": "--precision int4", "symmetric": "--precision int4",
    "embedding_precision": "--precision int4 or --mode dynamic",
    "weight_type": "--precision int8", "per_channel": "--precision int8", "reduce_range": "--precision int8",
}


def _check_applicable(config: QuantizeConfig) -> None:
    """Settings given explicitly that this kind of ONNX quantization would ignore are refused, from Python as
    from the CLI (which passes only the options the user gave)."""
    int4 = config.precision is QuantPrecision.int4
    static = config.mode is QuantMode.static
    kind = "INT4" if int4 else ("static INT8" if static else "dynamic INT8")
    # dynamic INT8 with INT4 embeddings reads the INT4 block settings
    blocks = int4 or (not static and config.embedding_precision is EmbeddingPrecision.int4)
    ignored = [
        name for name in sorted(config.given_keys() & set(_ONLY_FOR))
        if (_ONLY_FOR[name] == "--mode static" and (int4 or not static))
        or (_ONLY_FOR[name] == "--precision int4" and not blocks)
        or (_ONLY_FOR[name] == "--precision int4 or --mode dynamic" and static and not int4)
        or (_ONLY_FOR[name] == "--precision int8" and int4)
    ]
    if ignored:
        opts = ", ".join("--" + n.replace("_", "-") for n in ignored)
        needs = sorted({"--precision int8 --mode static" if int4 and _ONLY_FOR[n] == "--mode static" else _ONLY_FOR[n]
                        for n in ignored})
        raise ConfigError(f"{opts} do(es) not apply to {kind} quantization (it would be ignored)",
                          hint=f"drop it, or use {' / '.join(needs)}")


def _check_op_types(config: QuantizeConfig) -> None:
    """Unknown operator types (a typo such as ``Matmul``) are refused with the ones ONNX Runtime knows."""
    if not config.op_types:
        return
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry

    dynamic = config.mode is QuantMode.dynamic
    registry = set(IntegerOpsRegistry if dynamic else QDQRegistry) | set(DYNAMIC_WEIGHT_OPS if dynamic else STATIC_DEFAULT_OPS)
    bad = [o for o in config.op_types if o not in registry]
    if bad:
        near = {o.lower(): o for o in registry}
        fix = [near[b.lower()] for b in bad if b.lower() in near]
        raise ConfigError(
            f"--op-types {', '.join(bad)}: not an operator type ONNX Runtime's {config.mode} quantizer knows "
            "(names are case-sensitive)" + (f"; did you mean {', '.join(fix)}?" if fix else ""),
            hint=f"known: {', '.join(sorted(registry))}",
        )


def resolve_exclude_nodes(names: list[str], layers: list[str], known: set[str] | None = None) -> list[str]:
    """--exclude-nodes as node names, the one resolver every backend uses: ``first:N`` / ``last:N`` stand for the
    first / last N of ``layers`` (the quantizable layers' names in graph order: the stem and the head, which the
    field's advice keeps in higher precision); every other entry must be one of ``known`` (the graph's node names;
    ``layers`` when not given), else one line names it and the names it may have meant."""
    known = set(layers) | set(known or ())
    out: list[str] = []
    for name in names:
        where, _, count = name.partition(":")
        if name not in known and where.lower() in ("first", "last") and count.isdigit() and int(count) > 0:
            chosen = layers[:int(count)] if where.lower() == "first" else layers[-int(count):]
            out += [lay for lay in chosen if lay not in out]
        elif name not in out:
            out.append(name)
    _check_exclude_nodes(out, known, layers)
    return out


def _check_exclude_nodes(names: list[str], known: set[str], layers: list[str]) -> None:
    unknown = [n for n in names if n not in known]
    if unknown:
        import difflib

        near = [m for n in unknown for m in difflib.get_close_matches(n, sorted(known), n=2)]
        examples = near or layers[:3]
        raise ConfigError(
            f"--exclude-nodes names no node of the graph: {', '.join(unknown)}",
            hint=f"use node names as `edgecompress inspect` lists them, e.g. {', '.join(examples)}, or first:N / "
            "last:N for the first or last N quantizable layers",
        )


def _check_something_quantized(nodes: dict[str, Any], op_types: tuple[str, ...], searched: list[str]) -> None:
    """A quantize that leaves every weight float is an error, not an artifact labelled int8."""
    if nodes["quantized_count"]:
        return
    kept = nodes["kept_float"]
    present = sorted({k["op_type"] for k in kept})
    if searched:
        why = "the accuracy-aware search kept every quantizable layer in float"
        hint = "loosen --max-drop / the profile's retention, or quantize without an accuracy budget"
    elif any(str(k["reason"]).startswith("speed-aware") for k in kept):
        why = "--speed-aware timed every layer group faster in float on this machine"
        hint = "the FP32 model is the faster one here: deploy it, or drop --speed-aware for the smaller INT8 model"
    elif kept and all(str(k["reason"]).startswith("small GEMM") for k in kept):
        why = "every quantizable layer is a small GEMM (K or N under 16), which runs faster in float"
        hint = "the FP32 model is the one to deploy; --op-types names other layers to quantize"
    elif any(k["reason"] == "excluded by --exclude-nodes" for k in kept) and \
            all(k["reason"] == "excluded by --exclude-nodes" or "not among" in k["reason"] for k in kept):
        why = "--exclude-nodes covers every quantizable node"
        hint = "exclude fewer nodes"
    else:
        why = (f"no node of --op-types {', '.join(op_types)} carries a constant float weight"
               + (f" (weight-carrying nodes here: {', '.join(present)})" if present else ""))
        hint = "choose operator types the model has (e.g. --op-types MatMul), or leave --op-types out"
    raise ConfigError(f"nothing was quantized: {why}; no artifact was written", hint=hint)


def _block_padding(layers: list, model, block_size: int) -> list[dict[str, Any]]:
    """What ONNX Runtime does with weights whose blocked dimension is not a multiple of ``block_size``."""
    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    out = []
    for lay in layers:
        node = nodes[lay.name]
        w = _weights_of(node, inits)[0]
        if lay.op_type == "MatMul":
            k, n = int(w.dims[-2]), int(w.dims[-1])
            if k % block_size:
                padded = -(-k // block_size) * block_size
                out.append({
                    "node": lay.name, "K": k, "block_size": block_size, "padded_K": padded,
                    "padding_bytes": (padded - k) * n // 2,
                    "fallback": f"zero-padded to K={padded}: still INT4, the last block of each column holds "
                                f"{k % block_size} real weights",
                })
        else:  # Gather, blocks along the hidden dimension (quantize_axis 1)
            h = int(w.dims[-1])
            if h % block_size:
                out.append({
                    "node": lay.name, "K": h, "block_size": block_size, "padded_K": h, "padding_bytes": 0,
                    "fallback": f"GatherBlockQuantized: last block holds {h % block_size} values (no padding)",
                })
    return out


def warn_padding(layers: list, model, block_size: int) -> None:
    """Say (and the manifest records) when the INT4 block size does not divide some MatMuls' K."""
    padded = [p for p in _block_padding(layers, model, block_size) if p["padding_bytes"]]
    if padded:
        first = padded[0]
        log.warning(
            "block size %d does not divide K of %d MatMul(s) (e.g. %s, K=%d): ONNX Runtime zero-pads K to a multiple "
            "of %d, so these layers are still INT4 but store %d bytes of padding (their last block per column holds "
            "K mod %d real weights); recorded in the manifest (int4.block_padding). A block size dividing K avoids it.",
            block_size, len(padded), first["node"], first["K"], block_size,
            sum(p["padding_bytes"] for p in padded), block_size,
        )


def _node_report(
    source_model, dst: Path, config: QuantizeConfig, op_types: tuple[str, ...], user: list[str], searched: list[str],
    reasons: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Which weight-carrying nodes were quantized and which kept float (and why)."""
    from collections import Counter

    import onnx

    out_model = onnx.load(str(dst), load_external_data=False)
    used = {i for n in out_model.graph.node for i in n.input}
    float_inits = {t.name for t in out_model.graph.initializer if t.data_type in _FLOAT_TYPES and t.name in used}
    quantized: dict[str, list[str]] = {}
    kept = []
    for node, ws in weight_nodes(source_model):
        # a quantized weight's float initializer is replaced (MatMulNBits, MatMulInteger, QDQ, Gather int8);
        # ONNX Runtime >= 1.32 rewrites a Gemm it leaves float as MatMul over a `<weight>_Transposed` copy
        if not all(w.name in float_inits or f"{w.name}_Transposed" in float_inits for w in ws):
            quantized.setdefault(node.op_type, []).append(node.name)
            continue
        names = {node.name, f"{node.name}_MatMul"}
        if names & set(user):
            reason = "excluded by --exclude-nodes"
        elif names & set(searched):
            reason = "accuracy-aware: kept FP32 (see accuracy_aware.kept_fp32)"
        elif names & set(reasons or {}):
            reason = (reasons or {})[sorted(names & set(reasons or {}))[0]]
        elif node.op_type == "Gather" and config.embedding_precision is EmbeddingPrecision.fp32:
            reason = "embedding_precision fp32"
        elif node.op_type not in op_types:
            reason = f"{node.op_type} is not among the quantized operator types ({', '.join(op_types)})"
        else:
            reason = "left in float by ONNX Runtime's quantizer"
        kept.append({"node": node.name, "op_type": node.op_type, "params": sum(_numel(w) for w in ws), "reason": reason})
    new_ops = Counter(n.op_type for n in out_model.graph.node if n.name not in {m.name for m in source_model.graph.node})
    return {
        "quantized": quantized,
        "quantized_count": sum(len(v) for v in quantized.values()),
        "kept_float": kept,
        "new_op_types": dict(sorted(new_ops.items())),
    }


def conv_weight_fraction(model) -> float:
    """Share of a graph's weight elements held by convolutions."""
    total = conv = 0
    for node, weights in weight_nodes(model):
        n = sum(_numel(w) for w in weights)
        total += n
        conv += n if node.op_type == "Conv" else 0
    return conv / total if total else 0.0


def is_static_first(art: Artifact) -> bool:
    """Is INT8 of ``art`` static by default? Models fed images or arrays (conv nets, sensor and audio models, MLPs):
    their activations are calibrated once. Text transformers keep dynamic INT8, whose per-batch activation ranges
    suit token states."""
    return preprocess_kind(art.manifest.preprocess) != "text"


def static_mode(art: Artifact, config: QuantizeConfig) -> QuantizeConfig:
    """INT8 of an image or array model is static (QDQ, per-channel weights, calibrated on its data): dynamic
    quantization leaves convolutions to ONNX Runtime's ConvInteger (slow, and unsupported by most providers). An
    explicit ``--mode dynamic`` is refused for a conv net (convolutions hold over 10% of the weights); without
    ``--mode`` the mode becomes static, which needs ``--calibration`` data."""
    import onnx

    explicit = "mode" in config.model_fields_set
    if config.precision is QuantPrecision.int4:  # MatMulNBits: MatMul weights only
        share = conv_weight_fraction(onnx.load(str(art.model_path), load_external_data=False))
        if share > 0.1:
            raise ConfigError(
                f"INT4 weight-only quantization (MatMulNBits) covers MatMul weights only; convolutions hold {share:.0%} "
                "of this model's weights and would stay FP32", hint="use INT8 (static, per-channel) for conv nets")
        return config
    if config.mode is QuantMode.dynamic:
        share = conv_weight_fraction(onnx.load(str(art.model_path), load_external_data=False))
        if explicit and share > 0.1:
            raise ConfigError(
                f"dynamic INT8 does not quantize convolutions well, and they hold {share:.0%} of this model's weights",
                hint="use --mode static --calibration IMAGES (QDQ with per-channel weights)")
        if not explicit:
            log.info("%s model: static INT8 (QDQ, per-channel weights) calibrated on its data",
                     "image" if is_image(art.manifest.preprocess) else "array")
            config = config.model_copy(update={"mode": QuantMode.static})
    if config.mode is QuantMode.static and "calibration.method" not in config.given():
        # per-sample ranges averaged: one bright photo no longer stretches a layer's range for all the others
        # (MobileNetV2 on real photos: retention 0.965 -> 0.990 over min-max of the whole set)
        config = config.model_copy(update={"calibration": config.calibration.model_copy(
            update={"method": CalibrationMethod.mean_minmax})})
    if config.mode is QuantMode.static and not config.calibration.data:
        if not is_image(art.manifest.preprocess):
            raise ConfigError("static INT8 of an array model needs calibration data",
                              hint="pass --calibration DATA.npz: one array per input, 100-300 representative samples")
        raise ConfigError("static INT8 of an image model needs calibration images",
                          hint="pass --calibration DATA: a folder of class folders, a path table or an .npz "
                          "(100-300 representative images)")
    return config


def output_activations(model, op_types) -> list[str]:
    """The Clip/Relu nodes (when quantized at all) whose output is a graph output: they stay float.

    Quantized, ONNX Runtime folds such an activation into the quantize after the layer before it (the range clamps),
    and :func:`float_graph_outputs` then removes that quantize: the clamp would go with it, and the model would output
    the layer's raw values (a MobileNetV2 feature map ending in ReLU6: output cosine 0.41). Kept float, the activation
    reads the layer's float output (:func:`float_graph_outputs` removes the quantize between them too)."""
    if not {"Clip", "Relu"} & set(op_types):
        return []
    outputs = {o.name for o in model.graph.output}
    return [n.name for n in model.graph.node if n.op_type in ("Clip", "Relu") and n.op_type in op_types
            and n.name and any(o in outputs for o in n.output)]


def float_graph_outputs(model) -> list[str]:
    """Remove the QuantizeLinear -> DequantizeLinear pair that ends on a graph output (or that feeds the float Clip/Relu
    ending on one: :func:`output_activations`), in place; return those outputs.

    The model's outputs (logits, embeddings) are what every later step reads: rounding them to the 256 levels of a
    calibrated range saturates the largest logits, whose order is the prediction (MobileNetV2 with mean-minmax
    ranges: retention 0.55 with the pair, 0.990 without). The op before the pair then writes float directly, which
    ONNX Runtime's integer kernels do (QLinearConv / QGemm with a float output)."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in g.output}
    done = []
    for out in list(graph_outputs):  # a float activation on an output (output_activations) reads its input unrounded
        act = producer.get(out)
        if act is None or act.op_type not in ("Clip", "Relu") or act.input[0] not in producer:
            continue
        dq = producer[act.input[0]]
        q = producer.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or len(consumers.get(dq.output[0], [])) != 1 \
                or len(consumers.get(q.output[0], [])) != 1 or len(consumers.get(q.input[0], [])) != 1:
            continue
        act.input[0] = q.input[0]
        g.node.remove(q)
        g.node.remove(dq)
        done.append(out)
    for out in list(graph_outputs):
        dq = producer.get(out)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in producer:
            continue
        q = producer[dq.input[0]]
        src = q.input[0]
        if q.op_type != "QuantizeLinear" or len(consumers.get(q.output[0], [])) != 1 or src not in producer \
                or src in graph_outputs or len(consumers.get(src, [])) != 1:
            continue
        writer = producer[src]
        writer.output[list(writer.output).index(src)] = out
        g.node.remove(q)
        g.node.remove(dq)
        done.append(out)
    if done:  # their scales and zero points, unless shared
        used = {i for n in g.node for i in n.input}
        for init in [t for t in g.initializer if t.name not in used]:
            g.initializer.remove(init)
    return done
