"""What validation reports whatever the task: the prediction metrics of an artifact against its teacher (the task's
own metric from :data:`compress.tasks.TASKS`, the output's fidelity, a user's ``--metric``, retention; local and remote
validation) and the size breakdown. Each task's metric lives in its module under :mod:`compress.tasks`."""

from __future__ import annotations

from typing import Any

import numpy as np

from compress.errors import DataError
from compress.tasks import TASKS
from compress.tasks.outputs import FidelityStream


def prediction_metrics(m, cand: np.ndarray, ref: np.ndarray | None, labels, user_metric=None, *,
                       batch_size: int | None = None) -> dict[str, Any]:
    """:class:`Scores` of the artifact's outputs ``cand`` on every eval row and the teacher's ``ref`` (None: no
    teacher), fed in slices of ``batch_size`` rows (None: all at once): what remote validation gives the outputs a
    device returned, in the batches a local run scores (so both give the same figures), and a streaming model's
    calls."""
    scores = Scores(m, user_metric)
    step = batch_size or max(len(cand), 1)
    for i in range(0, max(len(cand), 1), step):
        scores.update(cand[i:i + step], None if labels is None else labels[i:i + step],
                      None if ref is None else ref[i:i + step])
    return scores.result()


class Scores:
    """Task metric, teacher metric, agreement and retention of an artifact's outputs against the teacher's, fed batch
    by batch as the outputs arrive (:meth:`update`) and read at the end (:meth:`result`); shared by local and remote
    validation.

    The task's metric and its direction come from its entry in :data:`compress.tasks.TASKS`, scored through its
    streaming form (:meth:`~compress.tasks.TaskInfo.stream`: sums and counts, or the batches kept where the metric
    needs every row); for a ``generic`` model (an adopted file whose task edgecompress does not know) the output
    cosine is the metric, unless labels make it a classifier. Whatever the task, the primary output's fidelity to the
    teacher's (:class:`compress.tasks.outputs.FidelityStream`) is reported as ``output_fidelity`` with
    ``output_cosine`` and ``output_snr_db`` for budgets. ``user_metric`` (``--metric``,
    :class:`compress.validation.user_metric.UserMetric`), the user's function of every output and label, replaces
    the task metric (the outputs are then kept for it); the task's own stays under ``task_metric``."""

    def __init__(self, m, user_metric=None) -> None:
        self.m, self.info, self.user_metric = m, TASKS[m.task], user_metric
        self.task = self.info.stream(m)
        self.fidelity = FidelityStream(m)
        self.rows = 0
        self.has_ref = False
        # the outputs, the teacher's and the labels, kept for a user's metric only (a function of every row)
        self.kept: list[np.ndarray] = []
        self.kept_ref: list[np.ndarray] = []
        self.kept_labels: list[Any] | None = []

    def update(self, cand: np.ndarray, labels=None, ref: np.ndarray | None = None) -> None:
        """Add one batch: the artifact's outputs ``cand``, their ``labels`` (None: none) and the teacher's ``ref``
        (None: no teacher). Per-word outputs as wide as their batch's longest row are padded with NaN to the
        teacher's (as wide as every row's)."""
        if self.info.labels != "boxes" and labels is not None and len(labels) and isinstance(labels[0], dict):
            raise DataError(f"the eval data holds boxes, but the model is a {self.m.task} model",
                            hint="boxes are for task: object-detection; pass the data its task reads")
        self.rows += len(cand)
        if self.user_metric is not None:
            self._keep(cand, labels, ref)
        if ref is not None:
            cand, ref = _as_wide(cand, ref)
            self.has_ref = True
            self.fidelity.update(cand, ref)
        self.task.update(cand, labels, ref)

    def _keep(self, cand: np.ndarray, labels, ref: np.ndarray | None) -> None:
        self.kept.append(np.asarray(cand))
        if ref is not None:
            self.kept_ref.append(np.asarray(ref))
        if labels is None:
            self.kept_labels = None
        elif self.kept_labels is not None:
            self.kept_labels.extend(labels)

    def result(self) -> dict[str, Any]:
        """The report's prediction metrics over every batch given."""
        m, info = self.m, self.info
        metrics: dict[str, Any] = {"eval_samples": self.rows}
        if self.has_ref:
            name = m.outputs[0].name if m.outputs else "output"
            fid = self.fidelity.result()
            metrics["output_fidelity"] = {name: fid}
            metrics["output_cosine"], metrics["output_snr_db"] = fid["cosine"], fid["snr_db"]
        metrics.update(self.task.result())
        if not info.higher_is_better:
            metrics["lower_is_better"] = True
        if self.user_metric is not None:
            self._user_metric(metrics)
        teacher = metrics.get("teacher_metric")
        if "retention" not in metrics and teacher is not None and teacher > 0:
            metrics["retention"] = metrics["metric"] / teacher
        elif "retention" not in metrics and teacher is not None:  # both given, yet no ratio: say why, not "needs --data"
            metrics.setdefault("not_measured", {})["min_accuracy_retention"] = (
                f"the teacher scores {teacher:g} ({metrics.get('metric_name', 'its metric')}) on the eval data, so "
                "retention, a ratio to it, is undefined: check that the eval labels are what the teacher predicts")
        return metrics

    def _user_metric(self, metrics: dict[str, Any]) -> None:
        """The user's metric of every output (and of the teacher's) in place of the task's."""
        from compress.device.shipped import concatenate_rows

        if "metric" in metrics:
            metrics["task_metric"] = {"name": metrics["metric_name"], "artifact": metrics["metric"],
                                      "teacher": metrics.get("teacher_metric")}
        labels = self.kept_labels
        lab = None if labels is None else labels if self.info.labels == "per-word" else np.asarray(labels)
        metrics["metric_name"] = self.user_metric.spec
        metrics["metric"] = self.user_metric(concatenate_rows(self.kept), lab)
        metrics.pop("teacher_metric", None)
        if self.has_ref:
            metrics["teacher_metric"] = self.user_metric(concatenate_rows(self.kept_ref), lab)


def _as_wide(cand: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``cand`` and ``ref`` with the narrower per-token or per-word output (``[batch, tokens, labels]``, as wide as
    its batch's longest row) padded with NaN to the other's width, as
    :func:`compress.device.shipped.concatenate_rows` pads."""
    if cand.ndim < 3 or ref.ndim != cand.ndim or cand.shape[1] == ref.shape[1]:
        return cand, ref
    width = max(cand.shape[1], ref.shape[1])

    def wide(x: np.ndarray) -> np.ndarray:
        return x if x.shape[1] == width else np.pad(x.astype(np.float32, copy=False), [(0, 0), (0, width - x.shape[1])]
                                                    + [(0, 0)] * (x.ndim - 2), constant_values=np.nan)

    return wide(cand), wide(ref)


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
    # a quantized weight reaches its MatMul/Conv through DequantizeLinear, an FP16 table through a Cast: one hop
    for node in nodes:
        if node.op_type in ("DequantizeLinear", "Cast") and node.output:
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
        group = ("RoPE tables" if init.name.startswith(("cos_cache", "sin_cache")) else
                 _WEIGHT_GROUPS.get(consumers.get(init.name, ""), "norms, biases, scales"))
        groups[group] = groups.get(group, 0) + size
    return groups
