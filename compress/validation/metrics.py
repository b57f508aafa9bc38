"""Metrics every layer shares: accuracy, macro-F1, neighbour agreement, and the prediction metrics of an
artifact against its teacher (local and remote validation, accuracy-aware quantization)."""

from __future__ import annotations

from typing import Any

import numpy as np

from compress.artifact import Task


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float((pred == labels).mean())


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose label is among the ``k`` highest scores."""
    top = np.argsort(-scores, axis=-1)[:, :k]
    return float((top == np.asarray(labels)[:, None]).any(axis=1).mean())


def macro_f1(pred: np.ndarray, labels: np.ndarray, num_labels: int) -> float:
    scores = []
    for c in range(num_labels):
        tp = float(((pred == c) & (labels == c)).sum())
        fp = float(((pred == c) & (labels != c)).sum())
        fn = float(((pred != c) & (labels == c)).sum())
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def neighbour_agreement(reference: np.ndarray, candidate: np.ndarray, k: int = 1) -> float:
    """Share of rows whose nearest other row under ``reference`` is among the ``k`` nearest under ``candidate``.

    k=1: the same nearest neighbour; k=3 tolerates near-ties between neighbours, which short texts
    have many of (and which quantization noise legitimately reorders).
    """
    if len(reference) < 2:
        return 1.0

    def sims(e: np.ndarray) -> np.ndarray:
        u = _unit(e.astype(np.float64))
        sim = u @ u.T
        np.fill_diagonal(sim, -np.inf)
        return sim

    ref_nn = sims(reference).argmax(axis=1)
    cand_topk = np.argsort(-sims(candidate), axis=1)[:, : min(k, len(reference) - 1)]
    return float((cand_topk == ref_nn[:, None]).any(axis=1).mean())


#: the SNR reported for outputs that match exactly (an infinite ratio is not a JSON number)
SNR_CAP_DB = 200.0


def class_axis(m, ndim: int) -> int | None:
    """The axis of the primary output holding class scores: ``postprocess.class_axis``, else the last axis of a
    [batch, classes] output; None when the output holds no class scores edgecompress can name."""
    axis = getattr(m.postprocess, "class_axis", None)
    if axis is not None:
        return axis if -ndim <= axis < ndim else None
    if m.task is Task.semantic_segmentation:
        return 1
    return -1 if ndim == 2 or m.task is Task.token_classification else None


def row_cosines(cand: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """The cosine of each sample (first axis) against the reference's, over every value of it (a map flattened). In
    float64, so outputs of 1e-20 (an untrained net's logits) still compare; two equal samples (two all-zero ones
    included) agree: 1.0."""
    c = cand.reshape(len(cand), -1).astype(np.float64)
    r = ref.reshape(len(ref), -1).astype(np.float64)
    den = np.linalg.norm(c, axis=1) * np.linalg.norm(r, axis=1)
    return np.where(np.all(c == r, axis=1), 1.0, (c * r).sum(axis=1) / np.clip(den, 1e-300, None))


def snr_db(signal: float, noise: float) -> float:
    """Signal-to-noise ratio in dB (sums of squares), :data:`SNR_CAP_DB` where the noise is zero or smaller still."""
    return SNR_CAP_DB if noise == 0 else float(min(SNR_CAP_DB, 10 * np.log10(max(signal, 1e-300) / noise)))


def output_fidelity(cand: np.ndarray, ref: np.ndarray, axis: int | None = None) -> dict[str, Any]:
    """How far an output is from the FP32 model's on the same rows: mean and lowest per-row cosine, SNR in dB over
    all values, largest absolute error, and top-1 agreement over ``axis`` (class scores) when given. NaN marks what a
    row does not have (per-word scores beyond its words): left out of every figure."""
    valid = None
    if np.isnan(ref).any() or np.isnan(cand).any():
        valid = np.isfinite(ref) & np.isfinite(cand)
        cand, ref = np.where(valid, cand, 0.0), np.where(valid, ref, 0.0)
    diff = cand.astype(np.float64) - ref.astype(np.float64)
    cos = row_cosines(cand, ref)
    out: dict[str, Any] = {"cosine": float(cos.mean()), "cosine_min": float(cos.min()),
                           "snr_db": snr_db(float((ref.astype(np.float64) ** 2).sum()), float((diff ** 2).sum())),
                           "max_abs_error": float(np.abs(diff).max()) if diff.size else 0.0}
    if axis is not None and cand.shape[axis] > 1:
        same = cand.argmax(axis) == ref.argmax(axis)
        out["top1_agreement"] = float(same.mean() if valid is None else same[valid.all(axis)].mean())
    return out


#: each task's own metric beside classification, encoders and generic outputs: (module, function, what of the
#: manifest it takes first: its labels, its postprocess, itself, or nothing); called with (that, cand, ref, labels)
TASK_METRICS: dict[Task, tuple[str, str, str | None]] = {
    Task.token_classification: ("compress.validation.entities", "entity_metrics", "labels"),
    Task.regression: ("compress.validation.values", "regression_metrics", None),
    Task.multi_label_classification: ("compress.validation.values", "multilabel_metrics", "postprocess"),
    Task.semantic_segmentation: ("compress.validation.maps", "segmentation_metrics", "postprocess"),
    Task.probability_map: ("compress.validation.maps", "probability_map_metrics", "postprocess"),
    Task.ctc_recognition: ("compress.validation.sequences", "ctc_metrics", "postprocess"),
    Task.object_detection: ("compress.validation.detection", "detection_metrics", "manifest"),
}


def task_metrics(task: Task):
    """``task``'s metric as f(manifest, cand, ref, labels), or None for the tasks judged here."""
    if task not in TASK_METRICS:
        return None
    import importlib

    module, name, first = TASK_METRICS[task]
    fn = getattr(importlib.import_module(module), name)

    def call(m, cand, ref, labels):
        head = [] if first is None else [m if first == "manifest" else getattr(m, first)]
        return fn(*head, cand, ref, labels)

    return call


def prediction_metrics(m, cand: np.ndarray, ref: np.ndarray | None, labels, user_metric=None) -> dict[str, Any]:
    """Task metric, teacher metric, agreement and retention from the artifact's outputs ``cand`` and the
    teacher's ``ref`` (None: no teacher) on the eval rows; shared by local and remote validation.

    Whatever the task, the primary output's fidelity to the teacher's (:func:`output_fidelity`) is reported as
    ``output_fidelity`` with ``output_cosine`` and ``output_snr_db`` for budgets; for a ``generic`` model (an adopted
    file whose task edgecompress does not know) the output cosine is the metric, unless labels make it a
    classifier. ``user_metric`` (``--metric``, :class:`compress.validation.user_metric.UserMetric`) replaces the task metric;
    the task's own stays under ``task_metric``."""
    metrics: dict[str, Any] = {"eval_samples": len(cand)}
    if ref is not None:
        name = m.outputs[0].name if m.outputs else "output"
        fid = output_fidelity(cand, ref, class_axis(m, cand.ndim) if m.task is not Task.feature_extraction else None)
        metrics["output_fidelity"] = {name: fid}
        metrics["output_cosine"], metrics["output_snr_db"] = fid["cosine"], fid["snr_db"]
    classification = m.labels is not None and m.task in (Task.text_classification, Task.image_classification,
                                                          Task.generic)
    if m.task is not Task.object_detection and labels is not None and len(labels) and isinstance(labels[0], dict):
        from compress.errors import DataError

        raise DataError(f"the eval data holds boxes, but the model is a {m.task} model",
                        hint="boxes are for task: object-detection; pass the data its task reads")
    own = task_metrics(m.task)
    if own is not None:
        metrics.update(own(m, cand, ref, labels))
    elif m.task is Task.generic and not classification:
        metrics["metric_name"] = "output_cosine"
        if ref is not None:
            metrics["metric"] = metrics["output_cosine"]
            metrics["teacher_metric"] = 1.0
            if "top1_agreement" in fid:
                metrics["agreement"] = fid["top1_agreement"]
                metrics["agreement_definition"] = "share of outputs whose top class (over the class axis) is the teacher's"
    elif classification:
        labels = np.asarray(labels)
        k = len(m.labels or [])
        pred = cand.argmax(-1)
        metrics["metric_name"] = "accuracy"
        metrics["metric"] = accuracy(pred, labels)
        metrics["macro_f1"] = macro_f1(pred, labels, k)
        # per row, in data order: what `edgecompress gate` pairs (McNemar) against a baseline report's rows
        metrics["correct"] = "".join("1" if ok else "0" for ok in (pred == labels))
        if k > 5:  # top-5, where it means something
            metrics["top5"] = top_k_accuracy(cand, labels, 5)
        if ref is not None:
            tpred = ref.argmax(-1)
            metrics["teacher_metric"] = accuracy(tpred, labels)
            metrics["teacher_macro_f1"] = macro_f1(tpred, labels, k)
            metrics["agreement"] = float((pred == tpred).mean())
            if k > 5:
                metrics["teacher_top5"] = top_k_accuracy(ref, labels, 5)
    else:
        metrics["metric_name"] = "cosine_to_teacher"
        if ref is not None:
            cos = (_unit(cand.astype(np.float64)) * _unit(ref.astype(np.float64))).sum(axis=1)
            metrics["metric"] = float(cos.mean())
            metrics["cosine_min"] = float(cos.min())
            metrics["teacher_metric"] = 1.0
            metrics["agreement"] = neighbour_agreement(ref, cand, k=3)
            metrics["agreement_top1"] = neighbour_agreement(ref, cand, k=1)
            metrics["agreement_definition"] = (
                "share of eval texts whose nearest neighbour under the teacher is among the artifact's 3 nearest"
            )
    if user_metric is not None:
        if "metric" in metrics:
            metrics["task_metric"] = {"name": metrics["metric_name"], "artifact": metrics["metric"],
                                      "teacher": metrics.get("teacher_metric")}
        lab = None if labels is None else labels if m.task is Task.token_classification else np.asarray(labels)
        metrics["metric_name"] = user_metric.spec
        metrics["metric"] = user_metric(cand, lab)
        metrics.pop("teacher_metric", None)
        if ref is not None:
            metrics["teacher_metric"] = user_metric(ref, lab)
    if "retention" not in metrics and metrics.get("teacher_metric") and metrics["teacher_metric"] > 0:
        metrics["retention"] = metrics["metric"] / metrics["teacher_metric"]
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
