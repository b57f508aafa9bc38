"""What validation reports whatever the task: the prediction metrics of an artifact against its teacher (the task's
own metric from :data:`compress.tasks.TASKS`, the output's fidelity, a user's ``--metric``, retention; local and remote
validation) and the size breakdown. Each task's metric lives in its module under :mod:`compress.tasks`."""

from __future__ import annotations

from typing import Any

import numpy as np

from compress.errors import DataError
from compress.tasks import TASKS
from compress.tasks.outputs import fidelity_of


def prediction_metrics(m, cand: np.ndarray, ref: np.ndarray | None, labels, user_metric=None) -> dict[str, Any]:
    """Task metric, teacher metric, agreement and retention from the artifact's outputs ``cand`` and the
    teacher's ``ref`` (None: no teacher) on the eval rows; shared by local and remote validation.

    Whatever the task, the primary output's fidelity to the teacher's (:func:`compress.tasks.outputs.output_fidelity`)
    is reported as ``output_fidelity`` with ``output_cosine`` and ``output_snr_db`` for budgets. The task's metric and
    its direction come from its entry in :data:`compress.tasks.TASKS`; for a ``generic`` model (an adopted file whose
    task edgecompress does not know) the output cosine is the metric, unless labels make it a classifier.
    ``user_metric`` (``--metric``, :class:`compress.validation.user_metric.UserMetric`) replaces the task metric; the
    task's own stays under ``task_metric``."""
    info = TASKS[m.task]
    metrics: dict[str, Any] = {"eval_samples": len(cand)}
    if ref is not None:
        name = m.outputs[0].name if m.outputs else "output"
        fid = fidelity_of(m, cand, ref)
        metrics["output_fidelity"] = {name: fid}
        metrics["output_cosine"], metrics["output_snr_db"] = fid["cosine"], fid["snr_db"]
    if info.labels != "boxes" and labels is not None and len(labels) and isinstance(labels[0], dict):
        raise DataError(f"the eval data holds boxes, but the model is a {m.task} model",
                        hint="boxes are for task: object-detection; pass the data its task reads")
    metrics.update(info.metric_fn(m)(m, cand, ref, labels))
    if not info.higher_is_better:
        metrics["lower_is_better"] = True
    if user_metric is not None:
        if "metric" in metrics:
            metrics["task_metric"] = {"name": metrics["metric_name"], "artifact": metrics["metric"],
                                      "teacher": metrics.get("teacher_metric")}
        lab = None if labels is None else labels if info.labels == "per-word" else np.asarray(labels)
        metrics["metric_name"] = user_metric.spec
        metrics["metric"] = user_metric(cand, lab)
        metrics.pop("teacher_metric", None)
        if ref is not None:
            metrics["teacher_metric"] = user_metric(ref, lab)
    teacher = metrics.get("teacher_metric")
    if "retention" not in metrics and teacher is not None and teacher > 0:
        metrics["retention"] = metrics["metric"] / teacher
    elif "retention" not in metrics and teacher is not None:  # both given, yet no ratio: say why, not "needs --data"
        metrics.setdefault("not_measured", {})["min_accuracy_retention"] = (
            f"the teacher scores {teacher:g} ({metrics.get('metric_name', 'its metric')}) on the eval data, so "
            "retention, a ratio to it, is undefined: check that the eval labels are what the teacher predicts")
    return metrics


#: ONNX op types, by what the weights they read are for (the size breakdown's groups)
_WEIGHT_GROUPS = {
    "Gather": "embeddings", "GatherElements": "embeddings",
    "MatMul": "dense (MatMul/Gemm)", "Gemm": "dense (MatMul/Gemm)", "MatMulInteger": "dense (MatMul/Gemm)",
    "MatMulNBits": "dense (MatMul/Gemm)", "QAttention": "dense (MatMul/Gemm)", "Attention": "dense (MatMul/Gemm)",
    "Conv": "convolutions", "ConvInteger": "convolutions", "QLinearConv": "convolutions",
}


def size_breakdown(art) -> list[dict[str, Any]]:
    """What takes the artifact's bytes: the model's weights by what they feed (embeddings, dense layers,
    convolutions, the rest) for ONNX, then every other file (tokenizer, config, ...), largest first."""
    rows: dict[str, int] = {}
    model_files = set(art.model_files())
    onnx_file = art.path / art.manifest.model_file
    if onnx_file.suffix == ".onnx":
        try:
            rows = _onnx_groups(onnx_file)
        except Exception:  # noqa: BLE001 - a breakdown is a nicety; the file sizes below always hold
            rows = {}
    counted = sum(rows.values())
    model_bytes = sum((art.path / n).stat().st_size for n in model_files)
    if rows:
        rows["graph and other model data"] = max(model_bytes - counted, 0)
    else:
        for n in sorted(model_files):
            rows[f"model: {n}"] = (art.path / n).stat().st_size
    for n in sorted(set(art.manifest.files) - model_files):
        rows[n] = (art.path / n).stat().st_size
    return sorted(({"part": k, "bytes": v} for k, v in rows.items() if v), key=lambda r: -r["bytes"])


def _onnx_groups(path) -> dict[str, int]:
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    consumers: dict[str, str] = {}
    nodes = list(model.graph.node)
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, node.op_type)
    # a quantized weight reaches its MatMul/Conv through DequantizeLinear: follow one hop
    for node in nodes:
        if node.op_type == "DequantizeLinear" and node.output:
            after = consumers.get(node.output[0])
            if after:
                consumers[node.input[0]] = after
    groups: dict[str, int] = {}
    for init in model.graph.initializer:
        n = 1
        for d in init.dims:
            n *= d
        if init.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            size = (n + 1) // 2
        else:
            size = n * np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
        group = _WEIGHT_GROUPS.get(consumers.get(init.name, ""), "norms, biases, scales")
        groups[group] = groups.get(group, 0) + size
    return groups
