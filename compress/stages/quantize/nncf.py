"""The NNCF calls behind OpenVINO quantization: weight compression (INT8/INT4), post-training INT8, and INT8
with accuracy control, with NNCF's logging routed through ours and its errors turned into one-line ones."""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import ConfigError, EdgeCompressError, StageError
from compress.progress import hidden_output
from compress.stages.quantize.config import QuantizeConfig

log = logging.getLogger("compress.stages.quantize.openvino")

MIN_ADJUSTED_GROUP_SIZE = 32  # smallest group size NNCF may fall back to when --block-size does not divide a weight
_QUANTIZABLE = ("MatMul", "Convolution", "GroupConvolution", "ScaledDotProductAttention", "Gather")
_INT_TYPES = {"i8": "int8", "u8": "int8", "i4": "int4", "u4": "int4"}


# --------------------------------------------------------------------------------------------------
# Graph inspection
# --------------------------------------------------------------------------------------------------


def _int_constant_behind(node, depth: int = 8):
    """The integer Constant a dequantization chain (Convert/Subtract/Multiply/Reshape/Transpose) starts from."""
    for _ in range(depth):
        kind = node.get_type_name()
        if kind == "Constant":
            return node if node.get_output_element_type(0).get_type_name() in _INT_TYPES else None
        if kind not in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze"):
            return None
        node = node.input_value(0).get_node()
    return None


def _quantized_operations(model) -> set[str]:
    """Friendly names of compute operations with a quantized input: fed by a FakeQuantize node (activations,
    or weights before compression) or by a dequantized integer constant (weights after compression)."""
    out = set()
    for op in model.get_ops():
        if op.get_type_name() not in _QUANTIZABLE:
            continue
        for i in range(op.get_input_size()):
            src = op.input_value(i).get_node()
            if src.get_type_name() == "FakeQuantize" or _int_constant_behind(src) is not None:
                out.add(op.get_friendly_name())
                break
    return out


def _is_zero_point(const) -> bool:
    """An integer Constant that is the zero point of a dequantization (Subtract's second input)."""
    for target in const.output(0).get_target_inputs():
        node = target.get_node()
        if node.get_type_name() == "Convert":
            targets = list(node.output(0).get_target_inputs())
            if any(t.get_node().get_type_name() == "Subtract" and t.get_index() == 1 for t in targets):
                return True
        elif node.get_type_name() == "Subtract" and target.get_index() == 1:
            return True
    return False


def graph_summary(model) -> dict[str, Any]:
    """What quantization left in an ov.Model: FakeQuantize nodes, quantized operations, and the integer
    weight constants by precision (tensors, elements, INT4 group sizes; which weights stayed INT8 in INT4 mode).
    """
    ops = collections.Counter(op.get_type_name() for op in model.get_ops())
    weights: dict[str, dict[str, int]] = {}
    group_sizes: collections.Counter[int] = collections.Counter()
    int8_names: list[str] = []
    for op in model.get_ops():
        if op.get_type_name() != "Constant":
            continue
        et = op.get_output_element_type(0).get_type_name()
        if et not in _INT_TYPES or _is_zero_point(op):
            continue
        shape = list(op.get_output_shape(0))
        if len(shape) < 2:  # scalars and per-tensor parameters, not weights
            continue
        kind = _INT_TYPES[et]
        entry = weights.setdefault(kind, {"tensors": 0, "elements": 0})
        entry["tensors"] += 1
        entry["elements"] += int(np.prod(shape))
        if kind == "int4" and len(shape) == 3:
            group_sizes[int(shape[-1])] += 1
        if kind == "int8":
            int8_names.append(op.get_friendly_name())
    summary: dict[str, Any] = {
        "fake_quantize_nodes": ops.get("FakeQuantize", 0),
        "quantized_operations": len(_quantized_operations(model)),
        "integer_weights": weights,
    }
    if group_sizes:
        summary["int4_group_sizes"] = {str(k): v for k, v in sorted(group_sizes.items())}
    if "int4" in weights and int8_names:
        summary["int8_weights"] = sorted(int8_names)[:50]
    return summary


def _budget(config: QuantizeConfig):
    """The accuracy budget of an accuracy-control run (the ONNX search's Budget: same bounds, same wording)."""
    from compress.stages.quantize.accuracy import Budget

    return Budget(max_drop=config.accuracy.max_drop, min_retention=config.accuracy.min_retention)


def _weight_elements(model) -> dict[str, int]:
    """Elements of the constant weight of every quantizable operation that has one (integer or float)."""
    out = {}
    for op in model.get_ops():
        if op.get_type_name() not in _QUANTIZABLE:
            continue
        for i in range(op.get_input_size()):
            node = op.input_value(i).get_node()
            if node.get_type_name() == "FakeQuantize":
                node = node.input_value(0).get_node()
            for _ in range(8):
                if node.get_type_name() == "Constant" or node.get_type_name() not in (
                        "Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze"):
                    break
                node = node.input_value(0).get_node()
            if node.get_type_name() == "Constant" and len(node.get_output_shape(0)) >= 2:
                out[op.get_friendly_name()] = int(np.prod(list(node.get_output_shape(0))))
                break
    return out


class _RevertLog(logging.Handler):
    """Collects the operations NNCF reports reverting to float, in the order it reverts them (most costly first)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.reverted: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("Reverted ") and "floating-point precision" in msg:
            self.reverted += [line.strip() for line in msg.splitlines()[1:] if line.strip()]


@contextlib.contextmanager
def _nncf_logging(capture: logging.Handler | None = None) -> Iterator[None]:
    """NNCF's own stdout handler shows INFO (its bit-width tables, accuracy-control steps) only when our
    logger is at INFO (``edgecompress -v``), warnings otherwise; ``capture`` receives NNCF's INFO records.

    NNCF sets its logger to INFO with a stdout handler when imported, which undoes the CLI's quieting. Its progress
    bars (rich, on standard output: "Statistics collection", "Applying Smooth Quant", ...) show only at INFO too:
    otherwise they would interleave with the CLI's own progress and land in a search's log once per candidate.
    """
    from nncf.common.logging import nncf_logger

    saved_level = nncf_logger.level
    saved = [(h, h.level) for h in nncf_logger.handlers]
    if not log.isEnabledFor(logging.INFO):
        for h, level in saved:
            h.setLevel(max(level, logging.WARNING))
    if capture is not None:
        nncf_logger.addHandler(capture)
        nncf_logger.setLevel(logging.INFO)
    bars = contextlib.nullcontext() if log.isEnabledFor(logging.INFO) else hidden_output("stdout")
    try:
        with bars:
            yield
    finally:
        if capture is not None:
            nncf_logger.removeHandler(capture)
        nncf_logger.setLevel(saved_level)
        for h, level in saved:
            h.setLevel(level)


# --------------------------------------------------------------------------------------------------
# NNCF calls
# --------------------------------------------------------------------------------------------------


#: the OpenVINO operations with a weight that NNCF quantizes, in graph order: what --exclude-nodes first:N / last:N count
WEIGHT_OPS = ("MatMul", "Convolution", "GroupConvolution")


def weight_layers(model, types: tuple[str, ...] = WEIGHT_OPS) -> list[str]:
    """The ``openvino.Model``'s operations of ``types`` whose weight is a constant (through Convert/Reshape/Transpose:
    FP16-compressed IRs), in graph order, by friendly name: the layers --exclude-nodes names."""
    out = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in types or len(op.inputs()) < 2:
            continue
        src = op.input(1).get_source_output().get_node()
        while src.get_type_name() in ("Convert", "Reshape", "Transpose") and src.inputs():
            src = src.input(0).get_source_output().get_node()
        if src.get_type_name() == "Constant":
            out.append(op.get_friendly_name())
    return out


def _ignored_scope(nncf, model, config: QuantizeConfig, weight_compression: bool):
    from compress.stages.quantize.config import EmbeddingPrecision
    from compress.stages.quantize.graph import resolve_exclude_nodes

    names = list(config.exclude_nodes or [])
    if names:  # first:N / last:N as the layers they stand for; an unknown name refused in our words
        names = resolve_exclude_nodes(names, weight_layers(model),
                                      {op.get_friendly_name() for op in model.get_ordered_ops()})
    types = []
    if weight_compression and config.embedding_precision is EmbeddingPrecision.fp32:
        types.append("Gather")
    if not names and not types:
        return None
    return nncf.IgnoredScope(names=names, types=types, validate=bool(names) and not types)


def nncf_error(e: Exception, what: str) -> EdgeCompressError:
    """An NNCF failure as one of ours: the environment's storage error, a ConfigError for rejected options, else a
    StageError."""
    import nncf

    from compress.storage import storage_error

    env = storage_error(e)  # a full disk or read-only location is the environment, not the options
    if env is not None:
        return env
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, nncf.ValidationError):
        return ConfigError(f"NNCF rejected the options for {what}: {first}", hint="check the --exclude-nodes names "
                           "(operation names as in model.xml)")
    return StageError(f"NNCF {what} failed: {type(e).__name__}: {first}", hint="rerun with --debug")


def _compress_weights(nncf, model, config: QuantizeConfig) -> tuple[Any, dict[str, Any]]:
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    from compress.stages.quantize.config import EmbeddingPrecision, QuantPrecision

    if config.precision is QuantPrecision.int8:
        mode = nncf.CompressWeightsMode.INT8_ASYM
        kwargs: dict[str, Any] = {"mode": mode}
    else:
        mode = nncf.CompressWeightsMode.INT4_SYM if config.int4.symmetric else nncf.CompressWeightsMode.INT4_ASYM
        kwargs = {
            "mode": mode,
            "group_size": config.int4.block_size,
            # 1.0 (NNCF's default): every eligible MatMul in INT4. Measured on the SST-2 MiniLM-L6 teacher
            # (dev, 872 rows, FP32 0.8865): ratio 1.0 -> 17.7 MB .bin, 0.8888; ratio 0.8 (data-free ranking)
            # -> 18.8 MB, 0.8876. The INT8 embeddings are most of what is left (12 MB).
            "ratio": 1.0,
            "all_layers": config.embedding_precision is EmbeddingPrecision.int4,
            "advanced_parameters": AdvancedCompressionParameters(
                group_size_fallback_mode=GroupSizeFallbackMode.ADJUST,
                min_adjusted_group_size=min(MIN_ADJUSTED_GROUP_SIZE, config.int4.block_size),
            ),
        }
    scope = _ignored_scope(nncf, model, config, weight_compression=True)
    if scope is not None:
        kwargs["ignored_scope"] = scope
    log.info("nncf.compress_weights(mode=%s%s)", mode.value,
             f", group_size={config.int4.block_size}, ratio=1.0" if "group_size" in kwargs else "")
    result = nncf.compress_weights(model, **kwargs)
    record = {k: (v.value if hasattr(v, "value") else v) for k, v in kwargs.items()
              if k not in ("advanced_parameters", "ignored_scope")}
    if "advanced_parameters" in kwargs:
        record["group_size_fallback_mode"] = "adjust"
        record["min_adjusted_group_size"] = kwargs["advanced_parameters"].min_adjusted_group_size
        record["backup_precision"] = "int8_asym (embeddings and the last MatMul unless all_layers)"
    if scope is not None:
        record["ignored_scope"] = {"names": scope.names, "types": scope.types}
    return result, record


def model_type(nncf, model):
    """``ModelType.TRANSFORMER`` for a model with attention (a Softmax inside the graph: text encoders, ViT), else
    None, NNCF's default for convolutional networks (its CNN preset and BatchNorm-aware statistics)."""
    attention = ("Softmax", "SoftMax", "ScaledDotProductAttention")
    return nncf.ModelType.TRANSFORMER if any(op.get_type_name() in attention for op in model.get_ops()) else None


def _quantize(nncf, model, items, config: QuantizeConfig) -> tuple[Any, dict[str, Any]]:
    kind = model_type(nncf, model)
    kwargs: dict[str, Any] = {"subset_size": config.calibration.samples, "model_type": kind}
    scope = _ignored_scope(nncf, model, config, weight_compression=False)
    if scope is not None:
        kwargs["ignored_scope"] = scope
    name = "transformer" if kind is not None else "default (convolutional)"
    log.info("nncf.quantize on %d calibration samples (model type %s)", len(items), name)
    result = nncf.quantize(model, nncf.Dataset(items), **kwargs)
    record = {"subset_size": config.calibration.samples, "model_type": name,
              "calibration_items": len(items), "preset": f"NNCF default for {name} models"}
    if scope is not None:
        record["ignored_scope"] = {"names": scope.names}
    return result, record


def _quantize_with_accuracy_control(
    nncf, model, calibration, evaluator, config: QuantizeConfig, workdir: Path
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """-> (model to write, record of the call, accuracy report with ``budget_met``).

    The budget (``max_drop`` and/or ``min_retention``) becomes one absolute drop for NNCF once the FP32
    metric is known. NNCF returns where its search stopped; we re-measure that model and the full-INT8
    one it started from and keep the better, within ``max_fp32_fraction`` of the weights in float.
    """
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    log.info("evaluating the FP32 input on %d eval rows", len(evaluator.items))
    baseline = evaluator.evaluate(model)
    budget = _budget(config)
    allowed_min = budget.min_metric(baseline)
    max_drop = max(baseline - allowed_min, 0.0)
    inter = workdir / "intermediate"
    inter.mkdir()
    ranking = min(len(evaluator.items), 300)
    kwargs: dict[str, Any] = {
        "max_drop": max_drop,
        "drop_type": nncf.DropType.ABSOLUTE,
        "subset_size": config.calibration.samples,
        "model_type": model_type(nncf, model),
        "advanced_accuracy_restorer_parameters": AdvancedAccuracyRestorerParameters(
            intermediate_model_dir=str(inter), ranking_subset_size=ranking
        ),
    }
    scope = _ignored_scope(nncf, model, config, weight_compression=False)
    if scope is not None:
        kwargs["ignored_scope"] = scope
    validation = nncf.Dataset(evaluator.items, lambda item: item[1])
    log.info("nncf.quantize_with_accuracy_control(max_drop=%.6g absolute; budget %s, FP32 %s %.4f)",
             max_drop, budget.describe(), evaluator.metric_name, baseline)
    reverts = _RevertLog()
    with _nncf_logging(capture=reverts):
        result = nncf.quantize_with_accuracy_control(
            model, nncf.Dataset(calibration), validation, evaluator, **kwargs
        )
    full_int8 = ov.Core().read_model(str(inter / "intermediate_model.xml"))
    try:  # NNCF saves it before turning weight FakeQuantize into INT8 constants; do what it does to its result
        from openvino._offline_transformations import compress_quantize_weights_transformation

        compress_quantize_weights_transformation(full_int8)
    except ImportError:  # pragma: no cover - an OpenVINO without it: compare as is
        log.warning("cannot compress the full-INT8 model's weights; its size is not comparable")
    full_ops = _quantized_operations(full_int8)
    weights = _weight_elements(full_int8)
    total_weights = sum(weights[n] for n in full_ops if n in weights) or 1
    max_fp32 = config.accuracy.max_fp32_fraction

    def describe(candidate, metric: float) -> dict[str, Any]:
        reverted = sorted(full_ops - _quantized_operations(candidate))
        share = sum(weights.get(n, 0) for n in reverted) / total_weights
        return {"metric": metric, "reverted": reverted, "fp32_weight_fraction": share,
                "eligible": max_fp32 is None or share <= max_fp32 + 1e-9}

    final = describe(result, evaluator.evaluate(result))
    full = describe(full_int8, evaluator.evaluate(full_int8))
    chosen_model, chosen = result, final
    met = final["eligible"] and final["metric"] >= allowed_min - 1e-9
    if not met:  # the best reachable: highest metric among the candidates within the float-share limit
        options = [(m, c) for m, c in ((result, final), (full_int8, full)) if c["eligible"]] or [(result, final)]
        chosen_model, chosen = max(options, key=lambda mc: mc[1]["metric"])
    record = {
        "max_drop": max_drop,
        "drop_type": "absolute",
        "budget": budget.describe(),
        "subset_size": config.calibration.samples,
        "model_type": "transformer" if kwargs["model_type"] is not None else "default (convolutional)",
        "calibration_items": len(calibration),
        "validation_items": len(evaluator.items),
        "ranking_subset_size": ranking,
        "validation_fn": f"{evaluator.metric_name} on the eval rows of a candidate NNCF compiles on CPU (f32); "
        "it also returns each row's outputs, so NNCF ranks layers by how much they change them",
    }
    if scope is not None:
        record["ignored_scope"] = {"names": scope.names}
    report = {
        "metric_name": evaluator.metric_name,
        "eval_samples": len(evaluator.items),
        "budget": budget.describe(),
        "baseline_metric": baseline,
        "allowed_min_metric": allowed_min,
        "full_int8_metric": full["metric"],
        "final_metric": chosen["metric"],
        "drop": baseline - chosen["metric"],
        "retention": chosen["metric"] / baseline if baseline else None,
        "budget_met": met,
        "quantized_operations_full_int8": len(full_ops),
        "quantized_operations_final": len(full_ops) - len(chosen["reverted"]),
        "reverted_to_float": chosen["reverted"],
        # NNCF's result, in the order NNCF reverted them (most costly first; groups it stepped back from dropped)
        "reversion_order": list(dict.fromkeys(n for n in reverts.reverted if n in set(final["reverted"]))),
        "fp32_weight_fraction": round(chosen["fp32_weight_fraction"], 6),
        "max_fp32_fraction": max_fp32,
        "nncf_result": {"metric": final["metric"], "reverted": len(final["reverted"]),
                        "fp32_weight_fraction": round(final["fp32_weight_fraction"], 6)},
    }
    if not met:
        why = []
        if not final["eligible"]:
            why.append(f"NNCF's result keeps {final['fp32_weight_fraction']:.0%} of the quantizable weights in "
                       f"float (max_fp32_fraction {max_fp32:.0%}) at {final['metric']:.6f}")
        why.append(f"the best {'eligible ' if not final['eligible'] else ''}model "
                   f"({'full INT8' if chosen_model is full_int8 else 'NNCF result'}) reaches {chosen['metric']:.6f} "
                   f"< {allowed_min:.6f}")
        report["why"] = "; ".join(why)
    return chosen_model, record, report
