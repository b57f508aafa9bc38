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
  uses (:func:`compress.stages.quantize.eval_set.load_eval_set`), encoded one unpadded row each; the budget
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

import copy
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from compress.artifact import (
    Artifact,
    Precision,
    child_manifest,
    copy_tokenizer_files,
    library_versions,
)
from compress.data.inputs import sample_inputs
from compress.errors import ConfigError, EdgeCompressError, StageError
from compress.stages.common import measure_parity
from compress.stages.quantize.calibration import calibration_items
from compress.stages.quantize.config import QUANTIZE_OPENVINO, QuantizeConfig
from compress.stages.quantize.nncf import (
    _compress_weights,
    _nncf_logging,
    _quantize,
    _quantize_with_accuracy_control,
    graph_summary,
    nncf_error,
)
from compress.stages.quantize.ov_layer_errors import openvino_layer_errors
from compress.stages.quantize.parity import check_collapse
from compress.tasks import TASKS
from compress.tasks.embeddings import pooling_of

log = logging.getLogger(__name__)
LAYER_TABLE_SAMPLES = 8  # inputs the per-layer error table runs on (as the ONNX Runtime table)



# --------------------------------------------------------------------------------------------------
# Option checks (before any work)
# --------------------------------------------------------------------------------------------------


#: the settings NNCF's quantization of a model that is not a causal LM reads (flat keys); any other given is refused
#: by :func:`compress.stages.quantize.config.refuse_ignored`
_APPLIES = {"precision", "mode", "weights_only", "calibration", "calibration_samples", "block_size", "symmetric",
            "embedding_precision", "exclude_nodes", "parity_samples", "sample_data", "strict",
            "max_drop", "min_retention", "data", "metric", "eval_samples", "max_fp32_fraction"}


def _method(config: QuantizeConfig) -> str:
    """The NNCF function this config maps to, or a ConfigError for combinations NNCF has no answer to."""
    from compress.stages.quantize.config import QuantMode, QuantPrecision

    weight_only = config.precision is QuantPrecision.int4 or config.int8.weights_only
    if "mode" in config.given() and (weight_only or config.mode is QuantMode.dynamic):
        raise ConfigError(f"--mode {config.mode} would be ignored: NNCF's INT8 of an OpenVINO artifact calibrates its "
                          "activations (static), its weight compression (INT4, --weights-only) has none",
                          hint="drop --mode; --weights-only compresses weights without data")
    if config.precision is QuantPrecision.int4:
        if config.accuracy_aware:
            raise ConfigError(
                "--max-drop/accuracy control quantizes INT8 activations and weights (NNCF "
                "quantize_with_accuracy_control); it does not apply to --precision int4",
                hint="use --precision int8 --max-drop X --data EVAL, or INT4 without --max-drop",
            )
        return "compress_weights"
    if config.int8.weights_only:
        if config.accuracy_aware:
            raise ConfigError(
                "--weights-only and --max-drop cannot be combined: accuracy control reverts quantized "
                "activations, which weight-only compression does not have",
                hint="drop --weights-only to quantize with accuracy control",
            )
        return "compress_weights"
    if config.accuracy_aware:
        return "quantize_with_accuracy_control"
    if not config.calibration.data:
        raise ConfigError(
            "OpenVINO INT8 post-training quantization (nncf.quantize) calibrates activation ranges "
            "and needs data",
            hint="pass --calibration DATA (a few hundred texts, e.g. --calibration-samples 300), or "
            "--weights-only for INT8 weight compression without data",
        )
    return "quantize"


def _check_onnx_only_options(config: QuantizeConfig) -> None:
    """Options that configure ONNX Runtime's quantizers have no NNCF counterpart: refuse rather than ignore."""
    from compress.stages.quantize.config import CalibrationMethod, WeightType

    wrong = []
    if config.calibration.method is not CalibrationMethod.minmax:
        wrong.append(f"--calibration-method {config.calibration.method}")
    if not config.int8.per_channel:
        wrong.append("--per-tensor")
    if config.int8.weight_type is not WeightType.int8:
        wrong.append(f"--weight-type {config.int8.weight_type}")
    if config.int8.reduce_range:
        wrong.append("--reduce-range")
    if config.op_types:
        wrong.append("--op-types")
    if config.speed.aware:
        wrong.append("--speed-aware")
    if config.accuracy.rank_by:
        wrong.append(f"--rank-by {config.accuracy.rank_by}")
    target = config.target.runtime
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
# Data
# --------------------------------------------------------------------------------------------------


def _encoder(art: Artifact):
    from compress.data.tokenization import encoder_for

    return encoder_for(art)


def _output_index(model, art: Artifact) -> int:
    wanted = art.manifest.outputs[0].name if art.manifest.outputs else None
    for i, o in enumerate(model.outputs):
        if wanted in o.get_names():
            return i
    return 0


class _Evaluator:
    """Accuracy (classifiers) or mean cosine to the FP32 input's outputs (pooled embeddings of a text encoder, the whole
    output of any other model) on eval rows.

    ``__call__`` is NNCF's ``validation_fn(compiled_model, data_items) -> (metric, outputs per item)``;
    items are ``(index, inputs)`` pairs so that a subset NNCF picks still finds its labels/references.
    """

    def __init__(self, art: Artifact, encoder, dataset, output_index: int, user_metric=None) -> None:
        from compress.data.inputs import preprocess_kind

        self.classification = art.manifest.labels is not None and TASKS[art.task].labels != "none"
        self.output_index = output_index
        self.items = list(enumerate(calibration_items(encoder, dataset.inputs, dataset.pairs)))
        self.labels = np.asarray(dataset.labels) if dataset.labels is not None else None
        self.reference: np.ndarray | None = None
        pooling, normalize = pooling_of(art.manifest.postprocess)
        # token states of a text encoder are pooled; any other output (an image or array model's) is compared whole
        text = preprocess_kind(art.manifest.preprocess) == "text"
        self.pooling = pooling or ("mean" if not self.classification and text else None)
        self.normalize = normalize
        self.user_metric = user_metric
        self.metric_name = user_metric.spec if user_metric is not None else \
            "accuracy" if self.classification else "cosine_to_fp32"

    def _vector(self, raw: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if self.classification or self.pooling is None:
            return raw.reshape(-1)
        from compress.device.shipped import pool

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
        if self.user_metric is not None:
            return self.user_metric(vecs, self.labels[idx] if self.labels is not None else None)
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
    :mod:`compress.stages.quantize.accuracy` is available (so ONNX and OpenVINO results compare), else the first rows."""
    try:
        from compress.stages.quantize.eval_set import load_eval_set
    except ImportError:  # pragma: no cover - older tree without the shared evaluation helpers
        load_eval_set = None
    if load_eval_set is not None:
        return load_eval_set(config.accuracy.data, art.manifest, config.accuracy.samples).dataset
    from compress.data.tables import load_dataset

    m = art.manifest
    label2id = {name: i for i, name in enumerate(m.labels)} if m.labels else None
    return load_dataset(
        config.accuracy.data, label2id=label2id, num_labels=len(m.labels) if m.labels else None,
        require_labels=TASKS[m.task].classifies and TASKS[m.task].inputs == "text", limit=config.accuracy.samples,
    )


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------


def _write(
    model, art: Artifact, dest: Path, force: bool, precision: Precision, resolved: dict[str, Any],
    metrics: dict[str, Any], config: QuantizeConfig, t0: float, extra_files: dict[str, str] | None = None,
    strict: bool = True,
) -> Artifact:
    """Save ``model`` as a complete artifact at ``dest``: IR, tokenizer, manifest, parity vs the input (``strict``:
    whether ``config.strict`` may refuse a collapse; not for a failed accuracy control's best candidate)."""
    import openvino as ov

    from compress.runtimes.openvino_backend import OpenVINOBackend

    output = QUANTIZE_OPENVINO.output(dest, resolved, force=force, t0=t0)
    with output.writing() as o:
        tmp = o.dir
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        copy_tokenizer_files(art.path, tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        manifest = child_manifest(art.manifest, precision=precision, model_file="model.xml")
        manifest.versions = library_versions("openvino", "nncf")
        step = o.describe(manifest, input_digest=art.digest, lineage=art.manifest.steps)
        written = o.draft()

        texts = sample_inputs(config.sample_data or (None if config.int8.weights_only else config.calibration.data),
                              config.parity_samples, art.manifest.preprocess)
        parity = measure_parity(OpenVINOBackend(art), OpenVINOBackend(written), texts,
                                art.manifest.labels is not None)
        collapsed = check_collapse(parity.as_dict(), strict=config.strict and strict,
                                   remedies="--max-drop with --data (nncf.quantize_with_accuracy_control), more "
                                            "--calibration-samples, or --weights-only")
        before = art.size_bytes()
        after = sum((tmp / n).stat().st_size for n in ("model.xml", "model.bin"))
        step.metrics = {
            "parity_vs_input": {**parity.as_dict(), "reference": f"{art.format} {art.precision} (OpenVINO CPU)",
                                **({"collapsed": collapsed} if collapsed else {})},
            "size_bytes_before": before,
            "size_bytes_after": after,
            "compression": round(before / after, 3),
            "graph": graph_summary(model),
            **copy.deepcopy(metrics),
        }
        encoder = _encoder(art)
        feeds = [encoder.encode([item]) for item in texts[:LAYER_TABLE_SAMPLES]]
        if (table := openvino_layer_errors(art.model_path, model, feeds)) is not None:
            step.metrics["layer_errors"] = table
    log.info("wrote %s (%.1f MB -> %.1f MB)", dest, before / 1e6, after / 1e6)
    return output.artifact


def quantize_openvino(art: Artifact, out: Path | str, config: QuantizeConfig, *, force: bool = False) -> Artifact:
    """Quantize an FP32 OpenVINO artifact with NNCF into a new artifact at ``out`` (see the module doc)."""
    import tempfile

    from compress._optional import require
    from compress.stages.quantize.config import QuantPrecision

    method = _method(config)
    _check_onnx_only_options(config)
    require("openvino", "OpenVINO quantization")
    nncf = require("nncf", "OpenVINO quantization")
    out = Path(out)

    # read every input before the (slow) NNCF work, so bad data fails fast
    encoder = _encoder(art)
    calibration = None
    calibration_source = None
    if config.calibration.data:
        calibration = calibration_items(encoder, sample_inputs(config.calibration.data, config.calibration.samples,
                                                               art.manifest.preprocess))
        calibration_source = config.calibration.data
    evaluator = None
    if method == "quantize_with_accuracy_control":
        dataset = _eval_dataset(art, config)
        if len(dataset) < 10:
            raise ConfigError(f"{config.accuracy.data} has {len(dataset)} rows; accuracy control needs at least 10",
                              hint="pass a larger --data file")
        if calibration is None:  # NNCF's documented simplest case: calibrate on the validation texts
            calibration = calibration_items(encoder, dataset.inputs[: config.calibration.samples],
                                             dataset.pairs[: config.calibration.samples] if dataset.pairs else None)
            calibration_source = f"{config.accuracy.data} (eval texts; no --calibration given)"

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
                evaluator = _Evaluator(art, encoder, dataset, _output_index(model, art), config.user_metric())
                result, record, accuracy = _quantize_with_accuracy_control(
                    nncf, model, calibration, evaluator, config, Path(scratch)
                )
    except EdgeCompressError:
        raise
    except Exception as e:
        raise nncf_error(e, f"{method} of {art.path}") from e
    nncf_seconds = round(time.perf_counter() - t0, 3)

    resolved = config.model_dump(mode="json")
    for path in ("mode", "calibration.method", "calibration.percentile", "int8.per_channel", "int8.weight_type",
                 "int8.reduce_range", "op_types", "target.vnni", "target.x86"):  # ONNX Runtime settings: not NNCF's
        *section, key = path.split(".")
        (resolved[section[0]] if section else resolved).pop(key, None)
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
               extra_files={"accuracy_report.json": json.dumps(report, indent=2, default=str) + "\n"}, strict=False)
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
