"""Quantization of LiteRT (``.tflite``) artifacts with ai-edge-quantizer, Google's quantizer for LiteRT models.

``compress.stages.quantize.quantize`` hands FP32 LiteRT artifacts (an exported or adopted ``.tflite``) to
:func:`quantize_litert`, which applies one of ai-edge-quantizer's recipes:

- INT8 ``--mode dynamic`` (the default): ``dynamic_wi8_afp32``, INT8 weights per output channel, activations quantized
  at run time (XNNPACK's dynamic-range kernels). No data needed. Depthwise convolutions get INT8 weights only (float
  compute): one activation scale over channels that never mix costs them most of their precision (MediaPipe's selfie
  segmenter on photo views with a person: mask IoU against FP32 0.963 dynamic, 0.990 weight-only, and faster), and
  they do little arithmetic.
- INT8 ``--weights-only``: ``weight_only_wi8_afp32``, INT8 weights expanded to float as they are used.
- INT8 ``--mode static --calibration DATA``: ``static_wi8_ai8``, INT8 weights and activations, the activation ranges
  calibrated on the data run through the float model (the full-integer model XNNPACK's INT8 kernels and NPUs run).
  Its inputs and outputs are INT8 too: the ``litert`` runtime quantizes float inputs and dequantizes outputs with
  the file's scales. Activation ranges: ``--calibration-method mean-minmax`` (the default: each sample's extremes,
  averaged) or ``minmax`` (the whole set's). A sigmoid, softmax or tanh that writes a model output stays float (its output then float):
  INT8 on the logits it reads costs the resolution where its probability is thresholded. Operators that the
  calibration rows name too sensitive for one INT8 scale stay float with their neighbours
  (:mod:`.litert_sensitivity`: chosen by output SQNR against FP32 and 16-bit activations; recorded in the manifest's
  ``float_ops_chosen``). With INT8 activations and the default ranges it is checked against FP32 on calibration rows
  held out from calibration (:mod:`.fallback`'s split and check; a segmenter's mask IoU) and, where it misses, more
  operators are kept float, then dynamic INT8 is taken (:func:`_check_routes`; the manifest's ``fallback``).

The file is first made ready for the quantizer (:mod:`.litert_graph`): FP16 weights behind ``DEQUANTIZE`` ops (the
TFLite converter's float16 quantization, MediaPipe's models) are folded into the FP32 constants they compute, and a
file without signature definitions gets one over its inputs and outputs. A quantization that adds no integer weight
quantized nothing: an error, no artifact. The result is checked against the FP32 input in LiteRT's interpreter on the
parity samples (argmax agreement, cosine) before it is renamed into place.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from compress.artifact import Artifact, Precision, child_manifest, copy_tokenizer_files, library_versions
from compress.data.inputs import sample_inputs
from compress.errors import ConfigError, QuantizationCollapsed, StageError
from compress.progress import hidden_output
from compress.stages.common import measure_parity
from compress.stages.quantize.config import QUANTIZE_LITERT, QuantizeConfig
from compress.stages.quantize.fallback import HeldOutCheck, shortfall, split_calibration
from compress.stages.quantize.litert_graph import Prepared, integer_weights, output_activations, prepare
from compress.stages.quantize.litert_sensitivity import choose_float_ops, operator_scopes, scope_regex
from compress.stages.quantize.parity import check_collapse, collapse

log = logging.getLogger(__name__)
MODEL_FILE = "model.tflite"
#: static INT8's activation ranges from the calibration samples' extremes: their mean (the default, as for ONNX image
#: models: one photo with a wide range no longer stretches a layer's range for all the others; the selfie segmenter's
#: mask IoU 0.946, against 0.944 with ai-edge-quantizer's own order-dependent moving average and 0.906 with the
#: whole set's extremes), or the whole set's (``minmax``)
RANGES = ("mean-minmax", "minmax")
#: the default static INT8's fall-back: at most this many more operators (with their neighbours) kept float, by the
#: sensitivity ranking, before dynamic INT8 is tried
MORE_FLOAT_STEPS = 3


#: the settings ai-edge-quantizer's quantization reads (flat keys); any other given is refused by
#: :func:`compress.stages.quantize.config.refuse_ignored`
_APPLIES = {"precision", "mode", "weights_only", "activation_bits", "calibration", "calibration_samples", "calibration_method",
            "parity_samples", "sample_data", "strict"}


def _mean_extremes(qsv: dict, new: dict) -> dict:
    """ai-edge-quantizer's range update for ``mean-minmax``: the running mean of each sample's min and max."""
    if not qsv:
        return {**new, "samples": 1}
    n = qsv.get("samples", 1)
    return {"min": (qsv["min"] * n + new["min"]) / (n + 1), "max": (qsv["max"] * n + new["max"]) / (n + 1),
            "samples": n + 1}


def activation_ranges(qt, model: bytes, calibration: dict, method: str) -> dict:
    """The activation ranges of ``model`` on ``calibration`` under the recipe loaded in ``qt``, by ``method``."""
    from ai_edge_quantizer import calibrator, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(qt.get_quantization_recipe())
    update = _mean_extremes if method == "mean-minmax" else qsv_utils.min_max_update
    calib = calibrator.Calibrator(bytearray(model), qsv_update_func=update)
    calib.calibrate(calibration, manager)
    return {name: {k: v for k, v in qsv.items() if k != "samples"} for name, qsv in calib.get_model_qsvs().items()}


def _recipe(config: QuantizeConfig) -> str:
    """The ai-edge-quantizer recipe the settings ask for; refuses what it has none for, before any work."""
    from compress.stages.quantize.config import QuantMode, QuantPrecision

    if config.precision is not QuantPrecision.int8:
        raise ConfigError("LiteRT quantization here is INT8", hint="drop --precision int4")
    ignored = [o for o, v in (("--max-drop", config.accuracy.max_drop), ("--min-retention", config.accuracy.min_retention),
                              ("--qat-steps", config.qad.steps), ("--speed-aware", config.speed.aware)) if v]
    if ignored:
        raise ConfigError(f"{ignored[0]} applies to ONNX and OpenVINO artifacts, not LiteRT",
                          hint="drop it; quantize the model's ONNX export for accuracy- or speed-aware INT8")
    if "calibration.method" in config.given() and config.mode is not QuantMode.static:
        raise ConfigError("--calibration-method sets static INT8's activation ranges (it would be ignored)",
                          hint="drop it, or add --mode static --calibration DATA")
    if config.int8.weights_only:
        return "weight_only_wi8_afp32"
    if config.mode is QuantMode.static:
        if not config.calibration.data:
            raise ConfigError("static INT8 of a LiteRT model needs calibration data",
                              hint="pass --calibration DATA (inputs like the model's), or --mode dynamic")
        if "calibration.method" in config.given() and config.calibration.method not in RANGES:
            raise ConfigError(f"--calibration-method {config.calibration.method} is not one ai-edge-quantizer has",
                              hint=f"use {' or '.join(RANGES)} for LiteRT (default mean-minmax)")
        return "static_wi8_ai16" if config.int8.activation_bits == 16 else "static_wi8_ai8"
    if "activation_bits" in config.given_keys():
        raise ConfigError(f"--activation-bits {config.int8.activation_bits} sets static INT8's activations (it would "
                          "be ignored)", hint="add --mode static --calibration DATA, or drop it")
    return "dynamic_wi8_afp32"


def _calibration(art: Artifact, config: QuantizeConfig, model: bytes,
                 items: list | None = None) -> dict[str, list[dict[str, np.ndarray]]]:
    """The calibration inputs as ai-edge-quantizer takes them: per signature of the prepared ``model`` (one is added
    where the file has none), one dict of its inputs per sample (``items``, or the calibration data's), encoded and
    fitted as the runtime feeds them. A signature input named as a manifest input takes that input; otherwise they
    pair in order (``args_0``, ...)."""
    from ai_edge_litert.interpreter import Interpreter

    from compress.runtimes.base import load_runtime

    signatures = Interpreter(model_content=model).get_signature_list()
    if not signatures:
        raise ConfigError(f"static INT8 of {art.path} needs a signature, and its model has several subgraphs and none",
                          hint="use --mode dynamic or --weights-only")
    key, sig = next(iter(signatures.items()))
    names = [t.name for t in art.manifest.inputs]
    args = sig["inputs"] if not set(sig["inputs"]) >= set(names) else names
    runtime = load_runtime(art)
    try:
        rows = []
        if items is None:
            items = sample_inputs(config.calibration.data, config.calibration.samples, art.manifest.preprocess)
        for item in items:
            fitted = runtime.fitted(runtime.encode([item]))
            rows.append({arg: fitted[n] for arg, n in zip(args, names)})
    finally:
        runtime.close()
    return {key: rows}


def quantize_litert(art: Artifact, out: Path | str, config: QuantizeConfig, *, force: bool = False) -> Artifact:
    """Quantize an FP32 LiteRT artifact with ai-edge-quantizer into a new artifact at ``out`` (see the module doc)."""
    from compress._optional import require

    recipe_name = _recipe(config)
    require("ai_edge_quantizer", "LiteRT quantization (pip install 'edgecompress[litert]')")

    prepared = prepare(art.model_path)
    split = split_calibration(config, art.manifest.preprocess) if falls_back(config) else None
    calibration = _calibration(art, config, prepared.model, split.calibration if split else None) \
        if recipe_name.startswith("static") else None
    method = str(config.calibration.method) if "calibration.method" in config.given() else "mean-minmax"
    t0 = time.perf_counter()
    try:
        model, kept, ranges = _quantize(prepared.model, recipe_name, calibration, method, max_bytes=art.size_bytes())
    except Exception as e:
        raise StageError(f"ai-edge-quantizer could not quantize {art.path} ({' '.join(str(e).split())[:200]})",
                         hint="try --mode dynamic or --weights-only, or quantize the model's ONNX export") from e
    record = None
    if split is not None:  # the default static INT8: checked on held-out rows, another route where it fails
        log.info("static INT8: %s", split.how)
        model, recipe_name, kept, record = _check_routes(art, config, prepared.model, model, kept, ranges, split,
                                                         Path(out))
    seconds = round(time.perf_counter() - t0, 3)
    weights = _check_something_quantized(art, prepared, model, recipe_name)
    for note in prepared.notes:
        log.info("%s: %s", art.path, note)
    calibrated = calibration and recipe_name.startswith("static")
    resolved = {"precision": "int8", "recipe": recipe_name, "backend": "ai-edge-quantizer",
                "fp16_weights_dequantized": prepared.fp16_weights_dequantized, **kept,
                "activations_fused": prepared.activations_fused,
                "calibration": {"data": config.calibration.data if calibrated else None,
                                "method": method if calibrated else None,
                                "samples": len(next(iter(calibration.values()))) if calibrated else 0}}
    output = QUANTIZE_LITERT.output(out, resolved, force=force, t0=t0)
    with output.writing() as o:
        (o.dir / MODEL_FILE).write_bytes(model)
        copy_tokenizer_files(art.path, o.dir)
        manifest = child_manifest(art.manifest, precision=Precision.int8, model_file=MODEL_FILE)
        manifest.versions = library_versions("ai_edge_litert", "ai_edge_quantizer")
        step = o.describe(manifest, input_digest=art.digest, lineage=art.manifest.steps)
        step.metrics = _parity(art, o.draft(), config)
        if record is not None:
            step.metrics["fallback"] = record
        before, after = art.size_bytes(), (o.dir / MODEL_FILE).stat().st_size
        step.metrics.update({"quantizer_seconds": seconds, "integer_weights": weights, "size_bytes_before": before, "size_bytes_after": after,
                             "compression": round(before / after, 3)})
    log.info("wrote %s (%s)", out, recipe_name)
    return output.artifact


def falls_back(config: QuantizeConfig) -> bool:
    """Is this the default static INT8 that checks itself on held-out rows and takes another route where the check
    fails (:func:`_check_routes`)? ``--mode static`` with INT8 activations and the default ranges; 16-bit
    activations, ``--calibration-method`` or ``--weights-only`` keep their behaviour."""
    from compress.stages.quantize.config import QuantMode

    return config.mode is QuantMode.static and not config.int8.weights_only and config.int8.activation_bits != 16 \
        and "calibration.method" not in config.given()


def _quantize(model: bytes, recipe_name: str, calibration: dict | None, method: str, *,
              max_bytes: int) -> tuple[bytes, dict[str, Any], dict | None]:
    """``model`` quantized by the recipe ``recipe_name`` with its exceptions (:func:`_refine`, the sensitive
    operators kept float under static INT8); the recipe's record for the manifest and the activation ranges."""
    from ai_edge_quantizer import quantizer, recipe

    qt = quantizer.Quantizer(bytearray(model))
    qt.load_quantization_recipe(getattr(recipe, recipe_name)())
    kept = _refine(qt, recipe_name, model)
    with hidden_output():  # its progress bars: quantize shows its own status
        ranges = activation_ranges(qt, model, calibration, method) if calibration else None
        if recipe_name == "static_wi8_ai8":
            kept["float_ops_chosen"] = _keep_sensitive_float(qt, model, ranges, calibration, max_bytes=max_bytes)
        result = qt.quantize(ranges, enable_progress_bar=False, enable_progress_report=False)
    return bytes(result.quantized_model), kept, ranges


def _check_routes(art: Artifact, config: QuantizeConfig, prepared: bytes, model: bytes, kept: dict[str, Any],
                  ranges: dict, split, out: Path) -> tuple[bytes, str, dict[str, Any], dict[str, Any]]:
    """Static INT8's ``model`` checked against FP32 on ``split``'s held-out rows (the parity floors and the task's
    own: a segmenter's mask IoU, :mod:`.parity`); where it fails, the routes in turn until one holds: more operators
    kept float by the sensitivity ranking (at most :data:`MORE_FLOAT_STEPS` more, while the file stays smaller than
    its input), then dynamic INT8. Returns the model, its recipe, the recipe's record and the manifest's
    ``fallback`` record; ``--strict`` raises when no route holds (nothing written), otherwise the route that comes
    closest is written with a warning."""
    from compress.runtimes.base import load_runtime

    t0 = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".check", dir=out.parent)) \
        if out.parent.is_dir() else Path(tempfile.mkdtemp(suffix=".check"))
    try:
        check = HeldOutCheck(art, split.held_out, load_runtime)

        def measure(candidate: bytes, name: str) -> dict[str, Any]:
            path = scratch / name / MODEL_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(candidate)
            return check.measure(path)

        figures = measure(model, "static")
        below = collapse(figures)
        record: dict[str, Any] = {"held_out": {**split.record(), "rows_judged": check.n}, "before": figures}
        routes = [{"route": "static INT8", "figures": figures, "below": below}]
        if not below:
            return model, "static_wi8_ai8", kept, {**record, "needed": False, "route": "static INT8",
                                                   "seconds": round(time.perf_counter() - t0, 2)}
        log.warning("static INT8 fails its check on %d held-out rows (%s): trying more operators float, then dynamic "
                    "INT8", check.n, "; ".join(below))
        best = ("static INT8", model, "static_wi8_ai8", kept, figures, below)
        chosen = kept["float_ops_chosen"]
        ranking = [r["op"] for r in chosen.get("most_sensitive", [])]
        graph = operator_scopes(prepared) if ranking else {}
        scopes = list(chosen["float_ops"])
        for scope in [s for s in ranking if s not in scopes][:MORE_FLOAT_STEPS]:
            unit = [s for s in (scope, *sorted(graph.get(scope, ()))) if s not in scopes and s in graph]
            if not unit:
                continue
            scopes += unit
            candidate = _build(prepared, ranges, float_scopes=scopes)
            if len(candidate) >= art.size_bytes():
                routes.append({"route": f"static INT8, {len(scopes)} operators float", "skipped":
                               "as large as the input file"})
                break
            figures = measure(candidate, f"float{len(scopes)}")
            below = collapse(figures)
            routes.append({"route": f"static INT8, {len(scopes)} operators float", "float_ops": list(scopes),
                           "figures": figures, "below": below})
            if not below or _closer(figures, best[4]):
                best = (routes[-1]["route"], candidate, "static_wi8_ai8", {**kept, "float_ops_fallback": list(scopes)},
                        figures, below)
            if not below:
                break
        if not ranking:
            routes.append({"route": "more operators float", "skipped": "no sensitivity ranking: INT8 met the SQNR bar "
                           "on the calibration rows"})
        if best[5]:
            dynamic, dkept, _ = _quantize(prepared, "dynamic_wi8_afp32", None, "", max_bytes=art.size_bytes())
            figures = measure(dynamic, "dynamic")
            below = collapse(figures)
            routes.append({"route": "dynamic INT8", "figures": figures, "below": below})
            if not below or _closer(figures, best[4]):
                best = ("dynamic INT8", dynamic, "dynamic_wi8_afp32", dkept, figures, below)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    taken, model, recipe_name, kept, figures, below = best
    record.update(needed=True, held=not below, route=taken, after=figures, routes=routes,
                  why="static INT8 fell below its floors on the held-out rows: " + "; ".join(routes[0]["below"]),
                  seconds=round(time.perf_counter() - t0, 2))
    if below:
        message = f"no route holds on {check.n} held-out rows (the closest, {taken}: {'; '.join(below)})"
        if config.strict:
            raise QuantizationCollapsed(message + "; no artifact was written",
                                        hint="try --activation-bits 16, or quantize the model's ONNX export")
        log.warning("%s: writing it (--strict makes this an error)", message)
    else:
        log.info("fall-back: %s holds on the held-out rows", taken)
    return model, recipe_name, kept, record


def _closer(figures: dict[str, Any], than: dict[str, Any]) -> bool:
    """Are ``figures`` nearer FP32 than ``than`` (the smaller worst shortfall of the judged figures)?"""
    return shortfall(figures) < shortfall(than)


def _refine(qt, recipe_name: str, model: bytes) -> dict[str, Any]:
    """The recipe's exceptions (see the module doc): depthwise convolutions weight-only under ``dynamic_wi8_afp32``,
    output activations float under ``static_wi8_ai8``. Returns them, for the manifest."""
    from ai_edge_quantizer import qtyping

    if recipe_name == "dynamic_wi8_afp32":
        qt.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.DEPTHWISE_CONV_2D, num_bits=8)
        return {"weight_only_ops": ["DEPTHWISE_CONV_2D"]}
    if recipe_name == "static_wi8_ai8":
        scopes = output_activations(model)
        _keep_float(qt, scopes)
        return {"float_ops": [s.rstrip(";") for s in scopes]}
    return {}


def _keep_float(qt, scopes) -> None:
    """Each operator of ``scopes`` (ai-edge-quantizer's scopes: output tensors' names, each followed by ``;``) left
    float in ``qt``'s recipe."""
    from ai_edge_quantizer import algorithm_manager, qtyping

    for scope in scopes:
        qt.update_quantization_recipe(regex=scope_regex(scope), operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                      algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)


def _build(model: bytes, ranges: dict, *, float_scopes=(), only: str | None = None, int16: bool = False) -> bytes:
    """``model`` quantized with ``ranges``: static INT8 (or 16-bit activations) with the output activations and
    ``float_scopes`` float, or only the operator ``only`` quantized (the sensitivity table's models)."""
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer, recipe

    ops, no = qtyping.TFLOperationName, algorithm_manager.AlgorithmName.NO_QUANTIZE
    qt = quantizer.Quantizer(bytearray(model))
    qt.load_quantization_recipe(recipe.static_wi8_ai16() if int16 else recipe.static_wi8_ai8())
    if only is not None:
        qt.update_quantization_recipe(regex=".*", operation_name=ops.ALL_SUPPORTED, algorithm_key=no)
        qt.add_static_config(regex=scope_regex(only), operation_name=ops.ALL_SUPPORTED, activation_num_bits=8,
                             weight_num_bits=8)
    _keep_float(qt, [*output_activations(model), *float_scopes])
    return bytes(qt.quantize(ranges, enable_progress_bar=False, enable_progress_report=False).quantized_model)


def _keep_sensitive_float(qt, model: bytes, ranges: dict, calibration: dict, *, max_bytes: int) -> dict[str, Any]:
    """Static INT8's operators that the calibration rows name too sensitive for one INT8 scale, kept float in ``qt``
    (:mod:`.litert_sensitivity`); the choice and its measurements, for the manifest."""
    choice = choose_float_ops(model, lambda **kw: _build(model, ranges, **kw), calibration,
                              kept=output_activations(model), max_bytes=max_bytes)
    _keep_float(qt, choice.float_ops)
    return choice.record()


def _check_something_quantized(art: Artifact, prepared: Prepared, result: bytes, recipe_name: str) -> int:
    """The integer weights the quantization added; none is an error (nothing was quantized), not an artifact labelled
    INT8."""
    added = integer_weights(result) - integer_weights(prepared.model)
    if added > 0:
        return added
    raise ConfigError(f"nothing was quantized: ai-edge-quantizer's {recipe_name} left every weight of {art.path} as "
                      "it was (no operator it quantizes carries a float constant weight); no artifact was written",
                      hint="the LiteRT file is the one to deploy as it is, or quantize the model's ONNX export")


def _parity(art: Artifact, written: Artifact, config: QuantizeConfig) -> dict[str, Any]:
    from compress.runtimes.base import load_runtime

    samples = sample_inputs(config.sample_data or config.calibration.data, config.parity_samples, art.manifest.preprocess)
    before, after = load_runtime(art), load_runtime(written)
    try:
        parity = measure_parity(before, after, samples, art.manifest.labels is not None)
    finally:
        before.close()
        after.close()
    collapsed = check_collapse(parity.as_dict(), strict=config.strict,
                               remedies="--weights-only, or --mode dynamic instead of static")
    return {"parity_vs_input": {**parity.as_dict(), "reference": f"{art.format} {art.precision} (LiteRT)",
                                **({"collapsed": collapsed} if collapsed else {})}}
