"""Quantization of OpenVINO IR artifacts with NNCF.

``compress.stages.quantize.quantize`` checks the common preconditions (precision, format, output path)
and hands OpenVINO artifacts to :func:`quantize_openvino`, which picks one NNCF function:

- INT8 (default): post-training quantization, ``nncf.quantize`` with ``ModelType.TRANSFORMER`` on
  calibration texts (one unpadded sample per text). FakeQuantize nodes on activations, INT8 weights.
  It needs data: without ``--calibration`` it fails and points to ``--weights-only``; it never
  silently switches to a different technique.
- INT8 ``--weights-only``: ``nncf.compress_weights(mode=INT8_ASYM)``, per-channel INT8 weights that
  are dequantized at run time; no data needed, activations stay float.
- INT4: ``nncf.compress_weights(mode=INT4_SYM|INT4_ASYM, group_size=--block-size, ratio=1.0)``. NNCF
  keeps the embeddings and the last MatMul (the classifier) in INT8_ASYM unless
  ``--embedding-precision int4`` (``all_layers=True``). Weights whose input dimension the block size
  does not divide get the largest power-of-two group size that does (>= 32, NNCF's ``ADJUST``
  fallback) or INT8; the manifest records what every weight ended up as.
- INT8 with ``--max-drop`` and/or ``min_retention`` (a profile's retention budget; needs ``--data``):
  ``nncf.quantize_with_accuracy_control``. The eval rows are the sample the ONNX accuracy-aware path
  uses (:func:`compress.stages.accuracy.load_eval_set`), encoded one unpadded row each; the budget
  becomes one absolute drop once the FP32 metric is known. The validation function computes accuracy
  (classifiers) or the mean cosine similarity to the FP32 input's pooled embeddings (encoders) on a
  candidate NNCF compiles on CPU in f32; it also returns each row's outputs, so NNCF ranks layers by
  how much they change them. Without ``--calibration`` the eval texts calibrate too (NNCF's simplest
  documented setup; labels are not used for calibration). NNCF keeps the full-INT8 model it starts
  from in a scratch directory; the manifest records the FP32, full-INT8 and final metrics, and the
  operations reverted to float (quantized in the full-INT8 graph, not in the result; in NNCF's
  reversion order as well) with their share of the weights. If the result misses the budget or keeps
  more than ``max_fp32_fraction`` of the weights in float, the best eligible model (NNCF's result or
  the full-INT8 one) is still written to ``OUT.best-candidate/`` with ``accuracy_report.json``, and
  :class:`~compress.errors.AccuracyBudgetError` (exit code 1) names the best reachable value.

Every result is saved with ``openvino.save_model(..., compress_to_fp16=False)`` and checked against
the FP32 input on the parity texts (argmax agreement, cosine similarity) before it is renamed into place.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from compress.artifact import (
    Artifact,
    Precision,
    Task,
    child_manifest,
    copy_tokenizer_files,
    library_versions,
    load_artifact,
    staged_dir,
    write_manifest,
)
from compress.errors import ConfigError, EdgeCompressError, StageError
from compress.stages.common import measure_parity, sample_texts
from compress.stages.quantize_config import QUANTIZE_OPENVINO, QuantizeConfig

log = logging.getLogger(__name__)

MIN_ADJUSTED_GROUP_SIZE = 32  # smallest group size NNCF may fall back to when --block-size does not divide a weight
_QUANTIZABLE = ("MatMul", "Convolution", "GroupConvolution", "ScaledDotProductAttention", "Gather")
_INT_TYPES = {"i8": "int8", "u8": "int8", "i4": "int4", "u4": "int4"}


# --------------------------------------------------------------------------------------------------
# Option checks (before any work)
# --------------------------------------------------------------------------------------------------


def _method(config: QuantizeConfig) -> str:
    """The NNCF function this config maps to, or a ConfigError for combinations NNCF has no answer to."""
    from compress.stages.quantize_config import QuantPrecision

    if config.precision is QuantPrecision.int4:
        if config.accuracy_aware:
            raise ConfigError(
                "--max-drop/accuracy control quantizes INT8 activations and weights (NNCF "
                "quantize_with_accuracy_control); it does not apply to --precision int4",
                hint="use --precision int8 --max-drop X --data EVAL, or INT4 without --max-drop",
            )
        return "compress_weights"
    if config.weights_only:
        if config.accuracy_aware:
            raise ConfigError(
                "--weights-only and --max-drop cannot be combined: accuracy control reverts quantized "
                "activations, which weight-only compression does not have",
                hint="drop --weights-only to quantize with accuracy control",
            )
        return "compress_weights"
    if config.accuracy_aware:
        return "quantize_with_accuracy_control"
    if not config.calibration:
        raise ConfigError(
            "OpenVINO INT8 post-training quantization (nncf.quantize) calibrates activation ranges "
            "and needs data",
            hint="pass --calibration DATA (a few hundred texts, e.g. --calibration-samples 300), or "
            "--weights-only for INT8 weight compression without data",
        )
    return "quantize"


def _check_onnx_only_options(config: QuantizeConfig) -> None:
    """Options that configure ONNX Runtime's quantizers have no NNCF counterpart: refuse rather than ignore."""
    from compress.stages.quantize_config import CalibrationMethod, WeightType

    wrong = []
    if config.calibration_method is not CalibrationMethod.minmax:
        wrong.append(f"--calibration-method {config.calibration_method}")
    if not config.per_channel:
        wrong.append("--per-tensor")
    if config.weight_type is not WeightType.int8:
        wrong.append(f"--weight-type {config.weight_type}")
    if config.reduce_range:
        wrong.append("--reduce-range")
    if config.op_types:
        wrong.append("--op-types")
    target = getattr(config, "target_runtime", None)
    if target not in (None, "openvino"):
        raise ConfigError(
            f"the target profile runs {target}, but an OpenVINO artifact runs only in OpenVINO",
            hint="use an OpenVINO profile (intel-cpu-openvino, ...), or quantize the ONNX artifact for " + target,
        )
    if wrong:
        raise ConfigError(
            f"{', '.join(wrong)} configure ONNX Runtime's quantizer and do not apply to OpenVINO artifacts "
            "(NNCF picks range estimators, per-channel signed weights and its own overflow fix for "
            "ModelType.TRANSFORMER)",
            hint="drop them, or quantize the ONNX artifact instead; --exclude-nodes works for both",
        )


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


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def _encoder(art: Artifact):
    from compress.tokenization import TextEncoder

    m = art.manifest
    return TextEncoder.from_dir(art.path, [t.name for t in m.inputs], m.max_length)


def _calibration_items(encoder, texts: list[str], pairs: list[str] | None = None) -> list[dict[str, np.ndarray]]:
    """One unpadded encoded sample per text: what NNCF collects activation statistics on."""
    if pairs is None:
        return [encoder.encode([t]) for t in texts]
    return [encoder.encode([t], [p]) for t, p in zip(texts, pairs, strict=True)]


def _output_index(model, art: Artifact) -> int:
    wanted = art.manifest.outputs[0].name if art.manifest.outputs else None
    for i, o in enumerate(model.outputs):
        if wanted in o.get_names():
            return i
    return 0


class _Evaluator:
    """Accuracy (classifiers) or mean cosine to the FP32 input's pooled embeddings (encoders) on eval rows.

    ``__call__`` is NNCF's ``validation_fn(compiled_model, data_items) -> (metric, outputs per item)``;
    items are ``(index, inputs)`` pairs so that a subset NNCF picks still finds its labels/references.
    """

    def __init__(self, art: Artifact, encoder, dataset, output_index: int) -> None:
        self.classification = art.task is Task.text_classification
        self.output_index = output_index
        self.items = list(enumerate(_calibration_items(encoder, dataset.texts, dataset.pairs)))
        self.labels = np.asarray(dataset.labels) if dataset.labels is not None else None
        self.reference: np.ndarray | None = None
        pp = art.manifest.postprocess
        self.pooling = pp.pooling or ("mean" if not self.classification else None)
        self.normalize = pp.normalize
        self.metric_name = "accuracy" if self.classification else "cosine_to_fp32"

    def _vector(self, raw: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if self.classification:
            return raw.reshape(-1)
        from compress.tokenization import pool

        return pool(raw, inputs["attention_mask"], self.pooling, self.normalize)[0]

    def run(self, compiled, items: Iterable[tuple[int, dict[str, np.ndarray]]]):
        idx, vecs, outs = [], [], []
        for i, inputs in items:
            result = compiled(inputs)
            raw = np.asarray(result[self.output_index], dtype=np.float32)
            idx.append(i)
            vecs.append(self._vector(raw, inputs))
            outs.append([np.asarray(result[k]) for k in range(len(compiled.outputs))])
        return idx, np.stack(vecs), outs

    def metric(self, idx: list[int], vecs: np.ndarray) -> float:
        if self.classification:
            return float((vecs.argmax(-1) == self.labels[idx]).mean())
        ref = self.reference[idx].astype(np.float64)
        cand = vecs.astype(np.float64)
        cos = (ref * cand).sum(-1) / np.clip(np.linalg.norm(ref, axis=-1) * np.linalg.norm(cand, axis=-1), 1e-12, None)
        return float(cos.mean())

    def __call__(self, compiled, items):
        idx, vecs, outs = self.run(compiled, items)
        return self.metric(idx, vecs), outs

    def evaluate(self, model) -> float:
        """Compile ``model`` on CPU in f32 (as NNCF does) and return the metric on all eval rows."""
        import openvino as ov

        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        idx, vecs, _ = self.run(compiled, self.items)
        if not self.classification and self.reference is None:
            self.reference = vecs
        return self.metric(idx, vecs)


def _eval_dataset(art: Artifact, config: QuantizeConfig):
    """The labelled eval rows: the same sample the ONNX accuracy-aware path uses when
    :mod:`compress.stages.accuracy` is available (so ONNX and OpenVINO results compare), else the first rows."""
    try:
        from compress.stages.accuracy import load_eval_set
    except ImportError:  # pragma: no cover - older tree without the shared evaluation helpers
        load_eval_set = None
    if load_eval_set is not None:
        return load_eval_set(config.data, art.manifest, config.eval_samples).dataset
    from compress.data import load_dataset

    m = art.manifest
    label2id = {name: i for i, name in enumerate(m.labels)} if m.labels else None
    return load_dataset(
        config.data, label2id=label2id, num_labels=len(m.labels) if m.labels else None,
        require_labels=m.task is Task.text_classification, limit=config.eval_samples,
    )


def _budget(config: QuantizeConfig):
    """The accuracy budget of an accuracy-control run (the ONNX search's Budget: same bounds, same wording)."""
    from compress.stages.accuracy import Budget

    return Budget(max_drop=config.max_drop, min_retention=config.min_retention)


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

    NNCF sets its logger to INFO with a stdout handler when imported, which undoes the CLI's quieting.
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
    try:
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


def _ignored_scope(nncf, config: QuantizeConfig, weight_compression: bool):
    from compress.stages.quantize_config import EmbeddingPrecision

    names = list(config.exclude_nodes or [])
    types = []
    if weight_compression and config.embedding_precision is EmbeddingPrecision.fp32:
        types.append("Gather")
    if not names and not types:
        return None
    return nncf.IgnoredScope(names=names, types=types, validate=bool(names) and not types)


def _nncf_error(e: Exception, what: str) -> EdgeCompressError:
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

    from compress.stages.quantize_config import EmbeddingPrecision, QuantPrecision

    if config.precision is QuantPrecision.int8:
        mode = nncf.CompressWeightsMode.INT8_ASYM
        kwargs: dict[str, Any] = {"mode": mode}
    else:
        mode = nncf.CompressWeightsMode.INT4_SYM if config.symmetric else nncf.CompressWeightsMode.INT4_ASYM
        kwargs = {
            "mode": mode,
            "group_size": config.block_size,
            # 1.0 (NNCF's default): every eligible MatMul in INT4. Measured on the SST-2 MiniLM-L6 teacher
            # (dev, 872 rows, FP32 0.8865): ratio 1.0 -> 17.7 MB .bin, 0.8888; ratio 0.8 (data-free ranking)
            # -> 18.8 MB, 0.8876. The INT8 embeddings are most of what is left (12 MB).
            "ratio": 1.0,
            "all_layers": config.embedding_precision is EmbeddingPrecision.int4,
            "advanced_parameters": AdvancedCompressionParameters(
                group_size_fallback_mode=GroupSizeFallbackMode.ADJUST,
                min_adjusted_group_size=min(MIN_ADJUSTED_GROUP_SIZE, config.block_size),
            ),
        }
    scope = _ignored_scope(nncf, config, weight_compression=True)
    if scope is not None:
        kwargs["ignored_scope"] = scope
    log.info("nncf.compress_weights(mode=%s%s)", mode.value,
             f", group_size={config.block_size}, ratio=1.0" if "group_size" in kwargs else "")
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


def _quantize(nncf, model, items, config: QuantizeConfig) -> tuple[Any, dict[str, Any]]:
    kwargs: dict[str, Any] = {"subset_size": config.calibration_samples, "model_type": nncf.ModelType.TRANSFORMER}
    scope = _ignored_scope(nncf, config, weight_compression=False)
    if scope is not None:
        kwargs["ignored_scope"] = scope
    log.info("nncf.quantize on %d calibration samples (ModelType.TRANSFORMER)", len(items))
    result = nncf.quantize(model, nncf.Dataset(items), **kwargs)
    record = {"subset_size": config.calibration_samples, "model_type": "transformer",
              "calibration_items": len(items), "preset": "NNCF default for transformer (mixed)"}
    if scope is not None:
        record["ignored_scope"] = {"names": scope.names}
    return result, record


def _quantize_with_accuracy_control(
    nncf, model, calibration, evaluator: _Evaluator, config: QuantizeConfig, workdir: Path
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
        "subset_size": config.calibration_samples,
        "model_type": nncf.ModelType.TRANSFORMER,
        "advanced_accuracy_restorer_parameters": AdvancedAccuracyRestorerParameters(
            intermediate_model_dir=str(inter), ranking_subset_size=ranking
        ),
    }
    scope = _ignored_scope(nncf, config, weight_compression=False)
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
    max_fp32 = getattr(config, "max_fp32_fraction", None)

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
        "subset_size": config.calibration_samples,
        "model_type": "transformer",
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


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------


def _write(
    model, art: Artifact, dest: Path, force: bool, precision: Precision, resolved: dict[str, Any],
    metrics: dict[str, Any], config: QuantizeConfig, t0: float, extra_files: dict[str, str] | None = None,
) -> Artifact:
    """Save ``model`` as a complete artifact at ``dest``: IR, tokenizer, manifest, parity vs the input."""
    import openvino as ov

    from compress.runtimes.openvino_backend import OpenVINOBackend

    with staged_dir(dest, force) as tmp:
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        copy_tokenizer_files(art.path, tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        manifest = child_manifest(art.manifest, precision=precision, model_file="model.xml")
        manifest.versions = library_versions("openvino", "nncf")
        step = QUANTIZE_OPENVINO.record(manifest, resolved, input_digest=art.digest, lineage=art.manifest.steps)
        write_manifest(tmp, manifest)

        texts = sample_texts(config.sample_data, config.parity_samples)
        parity = measure_parity(OpenVINOBackend(art), OpenVINOBackend(Artifact(tmp, manifest)), texts,
                                art.manifest.labels is not None)
        before = art.size_bytes()
        after = sum((tmp / n).stat().st_size for n in ("model.xml", "model.bin"))
        step.metrics = {
            "parity_vs_input": {**parity.as_dict(), "reference": f"{art.format} {art.precision} (OpenVINO CPU)"},
            "size_bytes_before": before,
            "size_bytes_after": after,
            "compression": round(before / after, 3),
            "graph": graph_summary(model),
            **copy.deepcopy(metrics),
        }
        QUANTIZE_OPENVINO.seal(step, tmp, t0)
        write_manifest(tmp, manifest)
    log.info("wrote %s (%.1f MB -> %.1f MB)", dest, before / 1e6, after / 1e6)
    return load_artifact(dest)


def quantize_openvino(art: Artifact, out: Path | str, config: QuantizeConfig, *, force: bool = False) -> Artifact:
    """Quantize an FP32 OpenVINO artifact with NNCF into a new artifact at ``out`` (see the module doc)."""
    import tempfile

    from compress._optional import require
    from compress.stages.quantize_config import QuantPrecision

    method = _method(config)
    _check_onnx_only_options(config)
    require("openvino", "OpenVINO quantization")
    nncf = require("nncf", "OpenVINO quantization")
    out = Path(out)

    # read every input before the (slow) NNCF work, so bad data fails fast
    encoder = _encoder(art)
    calibration = None
    calibration_source = None
    if config.calibration:
        calibration = _calibration_items(encoder, sample_texts(config.calibration, config.calibration_samples))
        calibration_source = config.calibration
    evaluator = None
    if method == "quantize_with_accuracy_control":
        dataset = _eval_dataset(art, config)
        if len(dataset) < 10:
            raise ConfigError(f"{config.data} has {len(dataset)} rows; accuracy control needs at least 10",
                              hint="pass a larger --data file")
        if calibration is None:  # NNCF's documented simplest case: calibrate on the validation texts
            calibration = _calibration_items(encoder, dataset.texts[: config.calibration_samples],
                                             dataset.pairs[: config.calibration_samples] if dataset.pairs else None)
            calibration_source = f"{config.data} (eval texts; no --calibration given)"

    import openvino as ov

    t0 = time.perf_counter()
    model = ov.Core().read_model(str(art.model_path))
    precision = Precision.int4 if config.precision is QuantPrecision.int4 else Precision.int8
    accuracy: dict[str, Any] | None = None
    try:
        with tempfile.TemporaryDirectory(prefix=".nncf.", dir=out.parent if out.parent.is_dir() else None) as scratch:
            if method == "compress_weights":
                with _nncf_logging():
                    result, record = _compress_weights(nncf, model, config)
            elif method == "quantize":
                with _nncf_logging():
                    result, record = _quantize(nncf, model, calibration, config)
            else:
                evaluator = _Evaluator(art, encoder, dataset, _output_index(model, art))
                result, record, accuracy = _quantize_with_accuracy_control(
                    nncf, model, calibration, evaluator, config, Path(scratch)
                )
    except EdgeCompressError:
        raise
    except Exception as e:  # noqa: BLE001 - NNCF and OpenVINO raise many types
        raise _nncf_error(e, f"{method} of {art.path}") from e
    nncf_seconds = round(time.perf_counter() - t0, 3)

    resolved = config.model_dump(mode="json")
    for k in ("mode", "calibration_method", "percentile", "per_channel", "weight_type", "reduce_range", "op_types",
              "target_vnni", "target_x86"):
        resolved.pop(k, None)  # ONNX Runtime settings: not used by NNCF
    resolved.update({
        "backend": "nncf",
        "nncf_function": f"nncf.{method}",
        "nncf_arguments": record,
        "calibration_source": calibration_source,
    })
    metrics: dict[str, Any] = {"nncf_seconds": nncf_seconds}
    if accuracy is not None:
        metrics["accuracy_control"] = accuracy
        if not accuracy["budget_met"]:
            raise _fail_budget(result, art, out, precision, resolved, metrics, config, t0)
    return _write(result, art, out, force, precision, resolved, metrics, config, t0)


def _fail_budget(result, art: Artifact, out: Path, precision: Precision, resolved: dict[str, Any],
                 metrics: dict[str, Any], config: QuantizeConfig, t0: float) -> EdgeCompressError:
    """Write the best candidate beside ``out`` (with accuracy_report.json) and return the error to raise."""
    import json

    from compress import errors
    from compress.artifact import is_artifact

    acc = metrics["accuracy_control"]
    best_dir = out.parent / f"{out.name}.best-candidate"
    written = None
    message = (
        f"accuracy budget not met ({acc['budget']}): FP32 {acc['metric_name']} {acc['baseline_metric']:.6f}, "
        f"best reachable {acc['final_metric']:.6f} with {len(acc['reverted_to_float'])} operation(s) in float; "
        f"{acc['why']}"
    )
    if best_dir.exists() and not is_artifact(best_dir):
        log.error("%s exists and is not an artifact: the best candidate was not written", best_dir)
    else:
        metrics = copy.deepcopy(metrics)
        metrics["accuracy_control"]["note"] = (
            "best candidate of a failed accuracy-control run: it does NOT meet the budget")
        report = {"status": "failed: accuracy budget not met", "message": message, "requested_output": str(out),
                  "input": str(art.path), **acc}
        _write(result, art, best_dir, True, precision, resolved, metrics, config, t0,
               extra_files={"accuracy_report.json": json.dumps(report, indent=2, default=str) + "\n"})
        written = best_dir
        log.warning("wrote the best candidate (budget not met) to %s", best_dir)
    hint = (f"best candidate and accuracy_report.json written to {written}" if written
            else "no candidate written") + "; relax --max-drop, or calibrate on more/better --calibration data"
    costliest = acc["reversion_order"] or acc["reverted_to_float"]
    cls = getattr(errors, "AccuracyBudgetError", None)
    if cls is not None:
        try:
            return cls(message, metric=acc["metric_name"], baseline=acc["baseline_metric"], best=acc["final_metric"],
                       allowed_min=acc["allowed_min_metric"], costliest=costliest[:10],
                       best_candidate=str(written) if written else None, hint=hint)
        except TypeError:  # pragma: no cover - a different signature: fall back to a plain stage error
            pass
    return StageError(message, hint=hint)
