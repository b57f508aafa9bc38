"""Accuracy-aware ONNX Runtime quantization: which layers stay in float (``max_drop`` / ``min_retention``), per-channel
or per-tensor weight scales per layer group (static INT8 of image models), and the check of the written artifact.

``q`` is the :class:`compress.stages.quantize.ort_quantizer.OnnxQuantizer` of the run: these functions ask it to
write candidates and read its config; they never import it (the stage, onnxruntime.py, imports both).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from compress.artifact import Artifact, Precision, child_manifest, copy_tokenizer_files
from compress.data.inputs import sample_inputs
from compress.stages.quantize.config import QuantMode
from compress.stages.quantize.layer_errors import artifact_layer_errors

log = logging.getLogger(__name__)
TABLE_SAMPLES = 8  # inputs the per-layer table that orders the search runs on


def accuracy_search(art: Artifact, q, layers: list, scratch: Path, initial: list[str] | None = None):
    """The layers to keep in float so the eval metric meets the budget (:func:`compress.stages.quantize.accuracy.search_exclusions`
    over candidates ``q`` writes into ``scratch``); returns the search result and the eval rows."""
    from compress.runtimes.ort_backend import OrtBackend
    from compress.stages.quantize.accuracy import Budget, search_exclusions
    from compress.stages.quantize.eval_set import load_eval_set

    config = q.config
    eval_set = load_eval_set(config.accuracy.data, art.manifest, config.accuracy.samples, user_metric=config.user_metric())
    reference = OrtBackend(art)
    baseline = eval_set.set_reference(reference)
    reference.close()
    log.info("accuracy-aware: FP32 %s %.4f on %d rows of %s; budget %s", eval_set.metric_name, baseline,
             len(eval_set), config.accuracy.data, Budget(config.accuracy.max_drop, config.accuracy.min_retention).describe())
    candidate_dir = scratch / "candidate"
    candidate_dir.mkdir()
    copy_tokenizer_files(art.path, candidate_dir)
    manifest = child_manifest(art.manifest, precision=Precision.int4 if q.int4 else Precision.int8,
                              model_file="model.onnx")
    if config.mode is QuantMode.static and not q.int4:
        q.calibration_cache = scratch / "calibration.json"

    names = {lay.name for lay in layers}
    fixed = [n for n in (initial or []) if n not in names]  # not layers the search moves: a graph output's clamp

    def build(excluded: list[str]) -> Artifact:
        q.write(candidate_dir / "model.onnx", [*excluded, *fixed])
        return Artifact(candidate_dir, manifest)

    initial_excluded = [n for n in (config.exclude_nodes if initial is None else initial) if n in names]

    def layer_table() -> dict[str, float] | None:
        """Own SNR per layer in the all-quantized model's per-layer table, on a few calibration (or eval) inputs."""
        (scratch / "table").mkdir()
        q.write(scratch / "table" / "model.onnx", [*initial_excluded, *fixed])
        items = sample_inputs(config.sample_data or config.calibration.data or config.accuracy.data, TABLE_SAMPLES,
                              art.manifest.preprocess)
        table = artifact_layer_errors(art, scratch / "table" / "model.onnx", items, n=TABLE_SAMPLES, top=None)
        return {r["node"]: r["own_snr_db"] for r in table["layers"]} if table else None

    result = search_exclusions(
        layers, build, eval_set, Budget(config.accuracy.max_drop, config.accuracy.min_retention), baseline,
        initial_excluded=initial_excluded, max_fp32_fraction=config.accuracy.max_fp32_fraction,
        layer_table=None if config.accuracy.rank_by == "leave-one-out" else layer_table,
    )
    return result, eval_set


def granularity_search(art: Artifact, q, scratch: Path) -> dict[str, Any]:
    """Per-channel or per-tensor weight scales per layer group, by accuracy on the eval rows (see granularity.py)."""
    import onnx

    from compress.runtimes.ort_backend import OrtBackend
    from compress.stages.quantize.eval_set import evaluate_metric, load_eval_set
    from compress.stages.quantize.granularity import choose_granularity

    config = q.config
    eval_set = load_eval_set(config.accuracy.data, art.manifest, config.accuracy.samples, user_metric=config.user_metric())
    reference = OrtBackend(art)
    eval_set.set_reference(reference)
    reference.close()
    q.calibration_cache = scratch / "calibration.json"
    work = scratch / "granularity"
    work.mkdir()
    exclude = list(config.exclude_nodes)
    q._static_uniform(work / "per-channel.onnx", exclude, True)
    q._static_uniform(work / "per-tensor.onnx", exclude, False)
    candidate = work / "candidate"
    candidate.mkdir()
    manifest = child_manifest(art.manifest, precision=Precision.int8, model_file="model.onnx")

    def measure(model) -> float:
        onnx.save(model, str(candidate / "model.onnx"))
        backend = OrtBackend(Artifact(candidate, manifest))
        try:
            return evaluate_metric(backend, eval_set)
        finally:
            backend.close()

    q.per_tensor_nodes, record = choose_granularity(work / "per-channel.onnx", work / "per-tensor.onnx", measure)
    return record


def verify_final(tmp: Path, manifest, eval_set, record: dict[str, Any]) -> None:
    """Measure the written artifact itself on the eval rows (it is rebuilt, not copied, from the search)."""
    from compress.runtimes.ort_backend import OrtBackend
    from compress.stages.quantize.eval_set import evaluate_metric

    backend = OrtBackend(Artifact(tmp, manifest))
    record["final"]["metric_of_written_model"] = round(evaluate_metric(backend, eval_set), 6)
    backend.close()
