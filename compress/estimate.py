"""Roofline latency estimates: what an artifact would take on a device we cannot measure on.

``validate --profile raspberry-pi-5`` run on a machine that is not a Raspberry Pi 5 cannot time the
model there. It estimates instead, from the graph and the profile's hardware facts:

1. **Graph cost.** Every node's FLOPs and bytes at the profile's input shape (batch × sequence
   length bound to the model's dynamic dimensions):

   - ONNX: ``onnx.shape_inference`` (with data propagation) on the bound graph, then our own shape
     rules for what it leaves unknown — ONNX Runtime's fused contrib ops (Attention, QAttention,
     SkipLayerNormalization, BiasGelu, MatMulInteger, MatMulNBits, ...) and everything downstream
     of them.
   - OpenVINO IR: read with ``openvino``, reshaped to the static input shape, so every partial
     shape is concrete. We read the IR itself rather than the FP32 ONNX of the lineage, because the
     IR is what runs: NNCF's INT8 (FakeQuantize) and compressed weights change the cost.

   FLOPs: MatMul/Gemm 2·M·N·K (also their INT8 forms MatMulInteger, DynamicQuantizeMatMul,
   MatMulIntegerToFloat, QLinearMatMul, QGemm, and MatMul fed by a dequantized INT8 weight in a QDQ
   graph); Attention/QAttention count the QKV projection (INT8 in QAttention) plus the two S×S
   attention products; Softmax and the layer norms ~5·numel; transcendental activations (Erf,
   Tanh, Gelu, ...) ~8·numel; other elementwise ops ~numel; shape-only ops nothing. Bytes: each
   weight read once (a Gather reads only the rows it gathers), activations read and written.

2. **Roofline.** Per node: ``max(fp32_flops / (peak_fp32 · e_fp32) + int8_ops / (peak_int8 ·
   e_int8), bytes / (bandwidth · e_mem)) + overhead``, summed over the nodes. INT8 ops use
   ``peak_gops_int8`` (the FP32 peak where a profile has none). ``overhead`` is a fixed per-operator
   dispatch cost (µs) at the calibration host's clock, scaled by host clock / device clock.

3. **Efficiency**, calibrated on a machine we *can* measure: ``benchmarks/estimator_error.py``
   times real models with ONNX Runtime on the host, computes the host's peaks the same way the
   profiles state theirs (cores × GHz × FLOP/cycle from /proc/cpuinfo; bandwidth from a numpy copy
   of a 256 MB array), and fits the four factors below (least squares on log(estimate/measured)).

Measured error on the calibration host — a 2-core AMD EPYC (Zen 5) VM at 2.6 GHz with AVX-512 VNNI,
64 FP32 FLOP/cycle/core (332 GFLOP/s FP32, 1329 GOP/s INT8 for both cores), ONNX Runtime 1.31.1
(``python benchmarks/estimator_error.py --fit --statistic min --threads 1 --repeat 3``, full output in
``benchmarks/results/estimator_error.json``). The machine is shared with other jobs (load average 5-7
on 2 cores while timing), so the calibration times one thread and keeps each configuration's fastest
run (contention only adds time); two-thread timings under that load were 3-7x the quiet figures and
are not usable. Estimate / measured, batch 1:

    SST-2 MiniLM-L6 ONNX FP32, 1x64       0.96  (11.0 vs 11.5 ms, 1 thread)
    SST-2 MiniLM-L6 INT8 dynamic, 1x64    0.97  (4.47 vs 4.61 ms; 0.85 with factors fitted without it)
    all 18 configurations (6 models x 16/64/128 tokens)   0.67-1.20, median |error| 10%
    leave one model out (factors fitted on the other 5)   0.67-1.27
    host profile (2 threads) vs benchmarks/foundation.py's quieter p50 at 1x64:
        FP32 6.0 vs 5.33 ms = 1.13, INT8 3.73 vs 3.31 ms = 1.13

The worst case is FP32 at 16 tokens (0.67: small GEMMs run below the calibrated efficiency).

What this cannot know: how well a runtime uses *another* microarchitecture (the efficiency factors
are the host's), thread scaling (the factors are one core's and estimates assume the profile's cores
scale linearly: optimistic at batch 1, most for INT8 whose small GEMMs parallelise worst), caches (INT8 MiniLM weights fit this
host's L3 but not a Raspberry Pi's), thermal throttling, and tail latency (a roofline gives one
number: p50 = p95 = p99 in the estimate). Treat estimates as ±2× at best on other hardware; that is
why ``validate`` never judges a latency budget PASS from one (it reports UNVERIFIED).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.errors import ArtifactError, ConfigError, MissingBackendError

if TYPE_CHECKING:
    from compress.artifact import Artifact
    from compress.profiles import DeviceProfile

log = logging.getLogger(__name__)

__all__ = [
    "NodeCost", "GraphCost", "Peaks", "Efficiency", "Estimate", "DEFAULT_EFFICIENCY", "MEASURED_ERROR",
    "graph_cost", "profile_peaks", "host_peaks", "measure_bandwidth", "roofline", "estimate",
    "estimate_cold_start",
]

# Calibrated on this repository's CI host by benchmarks/estimator_error.py (see the docstring).
DEFAULT_EFFICIENCY_VALUES = {
    "compute_fp32": 0.81, "compute_int8": 0.81, "memory": 0.81, "overhead_us": 0.5, "reference_clock_ghz": 2.596,
}
# estimate / measured on the calibration host (benchmarks/results/estimator_error.json); reports carry it.
MEASURED_ERROR: dict[str, Any] = {
    "host": "2-core AMD EPYC (Zen 5) VM, 2.6 GHz, ONNX Runtime 1.31.1",
    "sst2_minilm_l6_fp32_1x64": 0.96,
    "sst2_minilm_l6_int8_1x64": 0.97,
    "range_18_configs": [0.67, 1.20],
    "range_leave_one_model_out": [0.67, 1.27],
    "host_profile_2_threads_vs_foundation_p50": {"fp32": 1.13, "int8": 1.13},
    "source": "benchmarks/estimator_error.py",
}


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


@dataclass
class NodeCost:
    """What one operator costs at the bound input shape."""

    name: str
    op_type: str
    flops: float = 0.0  # floating-point operations (FP32/FP16 arithmetic)
    int8_ops: float = 0.0  # integer multiply-add operations (2 per MAC), INT8 kernels
    bytes: float = 0.0  # weights (first read only) + activations in + out
    weight_bytes: float = 0.0
    dispatch: bool = True  # False for shape-only ops a runtime folds away (no per-operator cost)


@dataclass
class GraphCost:
    """Per-node costs of one model at one input shape."""

    source: str
    batch_size: int
    sequence_length: int
    nodes: list[NodeCost]
    unknown: list[str] = field(default_factory=list)  # "op_type:name" of nodes whose shapes stayed unknown

    @property
    def flops(self) -> float:
        return sum(n.flops for n in self.nodes)

    @property
    def int8_ops(self) -> float:
        return sum(n.int8_ops for n in self.nodes)

    @property
    def bytes(self) -> float:
        return sum(n.bytes for n in self.nodes)

    @property
    def weight_bytes(self) -> float:
        return sum(n.weight_bytes for n in self.nodes)

    @property
    def dispatched(self) -> int:
        return sum(1 for n in self.nodes if n.dispatch)


@dataclass(frozen=True)
class Peaks:
    """A device's roofline: compute peaks for the cores the model uses, and memory bandwidth."""

    fp32_gflops: float
    int8_gops: float | None
    bandwidth_gbs: float
    clock_ghz: float | None = None
    source: str = ""

    @property
    def int8(self) -> float:
        return self.int8_gops or self.fp32_gflops


@dataclass(frozen=True)
class Efficiency:
    """Achievable fractions of the peaks, and the per-operator overhead, as calibrated on a host."""

    compute_fp32: float
    compute_int8: float
    memory: float
    overhead_us: float
    reference_clock_ghz: float | None = None
    calibrated_on: str = "benchmarks/estimator_error.py"


DEFAULT_EFFICIENCY = Efficiency(**DEFAULT_EFFICIENCY_VALUES)


@dataclass
class Estimate:
    """A roofline estimate of one inference (one batch)."""

    latency_ms: float
    compute_ms: float  # nodes where compute is the bound
    memory_ms: float  # nodes where memory traffic is the bound
    overhead_ms: float
    gflops: float
    int8_gops: float
    mbytes: float
    weight_mb: float
    nodes: int
    batch_size: int
    sequence_length: int
    peaks: dict[str, Any]
    efficiency: dict[str, Any]
    by_op: dict[str, float]  # ms per op type, largest first
    unknown_nodes: int = 0
    profile: str | None = None

    @property
    def throughput(self) -> float:
        return self.batch_size * 1000.0 / self.latency_ms if self.latency_ms > 0 else 0.0

    @property
    def bound(self) -> str:
        parts = {"compute": self.compute_ms, "memory": self.memory_ms, "overhead": self.overhead_ms}
        return max(parts, key=parts.get)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["throughput"] = self.throughput
        out["bound"] = self.bound
        for k, v in list(out.items()):
            if isinstance(v, float):
                out[k] = round(v, 4)
        out["by_op"] = {k: round(v, 4) for k, v in self.by_op.items()}
        return out


# --------------------------------------------------------------------------------------------------
# Roofline
# --------------------------------------------------------------------------------------------------


def node_time_s(n: NodeCost, peaks: Peaks, eff: Efficiency) -> tuple[float, str]:
    """Seconds for one node without the dispatch overhead, and which roof bounds it."""
    compute = n.flops / (peaks.fp32_gflops * 1e9 * eff.compute_fp32) + n.int8_ops / (peaks.int8 * 1e9 * eff.compute_int8)
    memory = n.bytes / (peaks.bandwidth_gbs * 1e9 * eff.memory)
    return (compute, "compute") if compute >= memory else (memory, "memory")


def roofline(cost: GraphCost, peaks: Peaks, eff: Efficiency = DEFAULT_EFFICIENCY, profile: str | None = None) -> Estimate:
    """Sum of per-node roofline times plus per-operator overhead."""
    compute = memory = 0.0
    by_op: dict[str, float] = defaultdict(float)
    scale = 1.0
    if eff.reference_clock_ghz and peaks.clock_ghz:
        scale = eff.reference_clock_ghz / peaks.clock_ghz
    per_node = eff.overhead_us * 1e-6 * scale
    for n in cost.nodes:
        t, bound = node_time_s(n, peaks, eff)
        if bound == "compute":
            compute += t
        else:
            memory += t
        by_op[n.op_type] += (t + (per_node if n.dispatch else 0.0)) * 1e3
    overhead = per_node * cost.dispatched
    total = compute + memory + overhead
    return Estimate(
        latency_ms=total * 1e3, compute_ms=compute * 1e3, memory_ms=memory * 1e3, overhead_ms=overhead * 1e3,
        gflops=cost.flops / 1e9, int8_gops=cost.int8_ops / 1e9, mbytes=cost.bytes / 1e6,
        weight_mb=cost.weight_bytes / 1e6, nodes=cost.dispatched, batch_size=cost.batch_size,
        sequence_length=cost.sequence_length, peaks=asdict(peaks), efficiency=asdict(eff),
        by_op=dict(sorted(by_op.items(), key=lambda kv: -kv[1])), unknown_nodes=len(cost.unknown), profile=profile,
    )


def profile_peaks(profile: DeviceProfile) -> Peaks:
    """The profile's roofline; ConfigError naming the missing fact when it has none."""
    hw = profile.hardware
    missing = [k for k in ("peak_gflops_fp32", "memory_bandwidth_gbs") if getattr(hw, k) is None]
    if missing:
        raise ConfigError(
            f"profile {profile.name} has no {' or '.join('hardware.' + m for m in missing)}: cannot estimate latency",
            hint="add the device's peaks to the profile (see profiles/raspberry-pi-5.yaml), or run on the device",
        )
    return Peaks(hw.peak_gflops_fp32, hw.peak_gops_int8, hw.memory_bandwidth_gbs, hw.clock_ghz,
                 source=f"profile {profile.name}")


def measure_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Sustained memory bandwidth in GB/s: best of ``repeats`` numpy copies of a large array.

    Counts bytes read plus bytes written (as STREAM's copy does), single-threaded.
    """
    import numpy as np

    src = np.ones(megabytes * (1 << 20) // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return round(2 * src.nbytes / best / 1e9, 2)


def host_peaks(bandwidth_gbs: float | None = None) -> Peaks:
    """This machine's roofline: derived compute peaks (``host`` profile) and a measured bandwidth."""
    from compress.profiles import detect_host

    hw = detect_host().hardware
    if hw.peak_gflops_fp32 is None:
        raise ConfigError("cannot derive this machine's peak FLOP/s (no CPU clock in /proc/cpuinfo or cpufreq)",
                          hint="estimate against a profile that states hardware.peak_gflops_fp32")
    bw = bandwidth_gbs or measure_bandwidth()
    return Peaks(hw.peak_gflops_fp32, hw.peak_gops_int8, bw, hw.clock_ghz,
                 source=f"host ({hw.cpu_model}, {hw.cores} cores x {hw.clock_ghz} GHz; bandwidth measured)")


def estimate_cold_start(host_cold: dict[str, Any], host_clock_ghz: float | None, device_clock_ghz: float | None,
                        latency_ms: float) -> float:
    """Cold start on the device: the host's measured cold start without its first inference, scaled by
    host clock / device clock (interpreter start, imports and session creation are scalar work), plus
    the estimated inference. Storage speed is not modelled (an SD card reads slower than an SSD)."""
    rest = float(host_cold["process_wall_ms"]) - float(host_cold.get("first_inference_ms", 0.0))
    scale = host_clock_ghz / device_clock_ghz if host_clock_ghz and device_clock_ghz else 1.0
    return max(0.0, rest) * scale + latency_ms


def estimate(
    artifact: Artifact | Path | str,
    profile: DeviceProfile | str,
    *,
    batch_size: int | None = None,
    sequence_length: int | None = None,
    efficiency: Efficiency | None = None,
    peaks: Peaks | None = None,
) -> Estimate:
    """Estimate one inference of ``artifact`` on ``profile``'s device at its measure shape (or the given one)."""
    from compress.profiles import load_profile

    prof = load_profile(profile) if isinstance(profile, (str, Path)) else profile
    b = batch_size or prof.measure.batch_size
    s = sequence_length or prof.measure.sequence_length
    cost = graph_cost(artifact, b, s)
    return roofline(cost, peaks or profile_peaks(prof), efficiency or DEFAULT_EFFICIENCY, profile=prof.name)


# --------------------------------------------------------------------------------------------------
# Graph cost
# --------------------------------------------------------------------------------------------------


def graph_cost(artifact: Artifact | Path | str, batch_size: int, sequence_length: int) -> GraphCost:
    """Per-node costs of an artifact (or a bare .onnx / .xml file) at ``batch_size`` × ``sequence_length``."""
    path = _model_path(artifact)
    if path.suffix == ".onnx":
        return _onnx_cost(path, batch_size, sequence_length)
    if path.suffix == ".xml":
        return _openvino_cost(path, batch_size, sequence_length)
    raise ArtifactError(f"cannot estimate {path.name}: only ONNX (.onnx) and OpenVINO IR (.xml) graphs are read",
                        hint="export the model to ONNX first (edgecompress export)")


def _model_path(artifact: Any) -> Path:
    from compress.artifact import Artifact, load_artifact

    if isinstance(artifact, Artifact):
        return artifact.model_path
    p = Path(artifact)
    if p.is_dir():
        return load_artifact(p, verify=False).model_path if (p / "manifest.json").is_file() else _find_model(p)
    if not p.is_file():
        raise ArtifactError(f"{p}: no such model file or artifact directory")
    return p


def _find_model(d: Path) -> Path:
    for pattern in ("*.onnx", "*.xml"):
        found = sorted(d.glob(pattern))
        if found:
            return found[0]
    raise ArtifactError(f"{d}: no manifest.json and no .onnx or .xml model in it")


# Ops that only move metadata (or are folded by every runtime): no FLOPs, no bytes, no dispatch.
_FREE = frozenset({
    "Shape", "Size", "Constant", "ConstantOfShape", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten",
    "Dropout", "Range",
    # OpenVINO
    "Parameter", "Result", "ShapeOf", "Convert_weights",
})
_NORMS = frozenset({
    "Softmax", "LogSoftmax", "LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization", "ReduceMean", "ReduceSum", "ReduceMax",
    "GroupNormalization", "BatchNormalization", "InstanceNormalization", "RMSNormalization", "MVN", "NormalizeL2",
})
_TRANSCENDENTAL = frozenset({
    "Erf", "Tanh", "Sigmoid", "Exp", "Log", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Swish", "HardSwish",
    "Softplus", "Mish", "Pow", "Sqrt", "Reciprocal",
})
_INT8_MATMUL = frozenset({
    "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul", "QGemm", "QLinearConv",
    "ConvInteger",
})
_MATMUL = frozenset({"MatMul", "FusedMatMul"}) | {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
_SAME_SHAPE = frozenset({
    "Relu", "LeakyRelu", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Erf", "Tanh", "Sigmoid", "Sqrt", "Exp", "Log",
    "Neg", "Abs", "Reciprocal", "Softmax", "LogSoftmax", "LayerNormalization", "SkipLayerNormalization",
    "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "Identity", "Dropout", "Cast", "Not",
    "DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear", "Clip", "Floor", "Ceil", "Round", "Sign",
    "BiasAdd", "BiasSplitGelu", "Swish", "HardSwish", "Softplus", "IsNaN", "CastLike",
})
_BROADCAST = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Where", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And",
    "Or", "Xor", "Max", "Min", "Mod", "Sum", "Mean", "PRelu",
})


def _numel(shape: tuple[int, ...] | None) -> int:
    return math.prod(shape) if shape is not None else 0


def _broadcast(*shapes: tuple[int, ...]) -> tuple[int, ...] | None:
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dims = {s[i - rank + len(s)] for s in shapes if i - rank + len(s) >= 0}
        dims.discard(1)
        if len(dims) > 1:
            return None
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def _bind_dim(name: str, position: int, batch: int, seq: int) -> int:
    low = name.lower()
    if "batch" in low or low in ("n", "b"):
        return batch
    if any(k in low for k in ("seq", "length", "token", "len")) or low in ("s", "t", "l"):
        return seq
    return batch if position == 0 else seq


# -- ONNX -------------------------------------------------------------------------------------------


def _onnx_cost(path: Path, batch: int, seq: int) -> GraphCost:
    try:
        import onnx
        from onnx import helper, numpy_helper, shape_inference
    except ImportError:  # pragma: no cover - onnx is a core dependency
        raise MissingBackendError("estimating an ONNX model needs the onnx package", hint="pip install onnx") from None

    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    init_names = {i.name for i in g.initializer}
    for inp in g.input:
        if inp.name in init_names or not inp.type.HasField("tensor_type"):
            continue
        for pos, dim in enumerate(inp.type.tensor_type.shape.dim):
            if not dim.HasField("dim_value"):
                dim.dim_value = _bind_dim(dim.dim_param, pos, batch, seq)
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - our own rules take over
        log.debug("onnx shape inference failed (%s); using our own rules only", exc)
        inferred = model

    shapes: dict[str, tuple[int, ...] | None] = {}
    dtypes: dict[str, int] = {}

    def record(vi) -> None:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            return
        dtypes[vi.name] = tt.elem_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = tuple(d.dim_value for d in tt.shape.dim)

    for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        record(vi)
    consts: dict[str, Any] = {}
    for init in g.initializer:
        shapes[init.name] = tuple(init.dims)
        dtypes[init.name] = init.data_type
        if init.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and _numel(tuple(init.dims)) <= 64:
            try:
                consts[init.name] = numpy_helper.to_array(init)
            except Exception:  # noqa: BLE001 - external data not loaded
                pass

    def itemsize(name: str) -> int:
        t = dtypes.get(name)
        if not t:
            return 4
        try:
            return helper.tensor_dtype_to_np_dtype(t).itemsize
        except Exception:  # noqa: BLE001 - e.g. int4: half a byte, round up
            return 1

    def nbytes(name: str) -> float:
        return _numel(shapes.get(name)) * itemsize(name)

    weight_alias: dict[str, str] = {}  # output of a weight DequantizeLinear -> the INT8 initializer
    counted: set[str] = set()
    nodes: list[NodeCost] = []
    unknown: list[str] = []

    for node in g.node:
        op = node.op_type
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ins = [x for x in node.input]
        outs = [x for x in node.output if x]
        if op == "Constant":
            value = attrs.get("value")
            if value is not None:
                shapes[outs[0]] = tuple(value.dims)
                dtypes[outs[0]] = value.data_type
                if value.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and _numel(tuple(value.dims)) <= 64:
                    consts[outs[0]] = numpy_helper.to_array(value)
            nodes.append(NodeCost(node.name, op, dispatch=False))
            continue
        if op == "DequantizeLinear" and ins and ins[0] in init_names:
            weight_alias[outs[0]] = ins[0]  # folded into the consuming (INT8) kernel
            shapes[outs[0]] = shapes.get(ins[0])
            dtypes[outs[0]] = onnx.TensorProto.FLOAT
            nodes.append(NodeCost(node.name, op, dispatch=False))
            continue
        in_shapes = [shapes.get(x) if x else None for x in ins]
        value = _eval_small(op, attrs, ins, in_shapes, consts)
        if value is not None and outs:
            consts[outs[0]] = value
            shapes[outs[0]] = tuple(value.shape)
            dtypes.setdefault(outs[0], onnx.TensorProto.INT64 if value.dtype.kind in "iu" else
                              onnx.TensorProto.BOOL if value.dtype.kind == "b" else onnx.TensorProto.FLOAT)
        if any(o not in shapes for o in outs):
            _onnx_rule(op, node, attrs, ins, in_shapes, outs, shapes, dtypes, consts)
        if any(o not in shapes for o in outs[:1]):
            unknown.append(f"{op}:{node.name}")
            nodes.append(NodeCost(node.name, op, dispatch=op not in _FREE))
            continue
        if op in _FREE:
            nodes.append(NodeCost(node.name, op, dispatch=False))
            continue

        # bytes: weights once, activations in and out
        weight = act_in = 0.0
        for i, x in enumerate(ins):
            if not x:
                continue
            src = weight_alias.get(x, x)
            if src in init_names:
                if op == "Gather" and i == 0:
                    weight += nbytes(outs[0]) * itemsize(src) / max(1, itemsize(outs[0]))  # rows gathered
                    continue
                if src not in counted:
                    counted.add(src)
                    weight += nbytes(src)
            else:
                act_in += nbytes(x)
        act_out = sum(nbytes(o) for o in outs)
        flops, int8 = _onnx_flops(op, node, attrs, ins, in_shapes, outs, shapes, weight_alias, dtypes, itemsize)
        nodes.append(NodeCost(node.name, op, flops=flops, int8_ops=int8, bytes=weight + act_in + act_out,
                              weight_bytes=weight))
    if unknown:
        log.info("%d node(s) without static shapes were counted as free: %s", len(unknown), ", ".join(unknown[:5]))
    return GraphCost(str(path), batch, seq, nodes, unknown)


def _onnx_flops(op, node, attrs, ins, in_shapes, outs, shapes, weight_alias, dtypes, itemsize) -> tuple[float, float]:
    out0 = shapes.get(outs[0])
    n_out = _numel(out0)
    if op in _MATMUL or op == "QLinearMatMul":
        a = in_shapes[0]
        k = a[-1] if a else 0
        macs = n_out * k
        int8 = op in _INT8_MATMUL or _is_int8_weight(ins, weight_alias, dtypes)
        return (0.0, 2.0 * macs) if int8 else (2.0 * macs, 0.0)
    if op in ("Gemm", "QGemm"):
        a = in_shapes[0]
        k = (a[0] if attrs.get("transA") else a[-1]) if a else 0
        int8 = op == "QGemm" or _is_int8_weight(ins, weight_alias, dtypes)
        macs = n_out * k
        return (n_out, 2.0 * macs) if int8 else (2.0 * macs + n_out, 0.0)
    if op == "MatMulNBits":
        k = int(attrs.get("K", in_shapes[0][-1] if in_shapes[0] else 0))
        macs = n_out * k
        # accuracy_level 4: INT8 compute on the quantized activations; otherwise weights dequantize to float
        return (0.0, 2.0 * macs) if int(attrs.get("accuracy_level", 0)) == 4 else (2.0 * macs, 0.0)
    if op in ("Attention", "QAttention"):
        x, w = in_shapes[0], in_shapes[1]
        if not x or not w:
            return 0.0, 0.0
        b, s, h = (x + (1, 1, 1))[:3] if len(x) == 3 else (1, x[0], x[-1])
        qkv = w[-1]
        sizes = attrs.get("qkv_hidden_sizes")
        hidden_v = int(sizes[2]) if sizes else qkv // 3
        hidden_qk = int(sizes[0]) if sizes else qkv // 3
        heads = int(attrs.get("num_heads", 1))
        proj = 2.0 * b * s * h * qkv
        core = 2.0 * b * s * s * hidden_qk + 2.0 * b * s * s * hidden_v + 5.0 * b * heads * s * s
        bias = b * s * qkv
        if op == "QAttention":
            return core + bias + b * s * qkv, proj  # dequantize the INT32 projection
        return core + bias + proj, 0.0
    if op == "MultiHeadAttention":
        q = in_shapes[0]
        if not q or len(q) != 3:
            return 0.0, 0.0
        b, s, h = q
        heads = int(attrs.get("num_heads", 1))
        k = in_shapes[1] if len(in_shapes) > 1 and in_shapes[1] else q
        sk = k[1] if len(k) == 3 else s
        return 4.0 * b * s * sk * h + 5.0 * b * heads * s * sk, 0.0
    if op == "Conv":
        w = in_shapes[1]
        if not w:
            return 0.0, 0.0
        per_out = math.prod(w[1:])  # Cin/group x kernel
        return 2.0 * n_out * per_out, 0.0
    if op in ("ConvInteger", "QLinearConv"):
        w = in_shapes[3] if op == "QLinearConv" else in_shapes[1]
        return 0.0, 2.0 * n_out * (math.prod(w[1:]) if w else 0)
    if op in _NORMS:
        base = _numel(in_shapes[0]) if in_shapes and in_shapes[0] else n_out
        return 5.0 * base, 0.0
    if op in _TRANSCENDENTAL:
        return 8.0 * n_out, 0.0
    if op in ("Gather", "GatherElements", "GatherND", "Transpose", "Concat", "Slice", "Split", "Expand", "Tile",
              "Pad", "Cast", "ScatterND", "Scatter", "ScatterElements"):
        return 0.0, 0.0
    return float(n_out), 0.0


_SMALL = 4096  # largest tensor (elements) the shape-value evaluator keeps


def _eval_small(op, attrs, ins, in_shapes, consts):  # noqa: C901 - a table
    """Value of a small integer tensor computed from shapes and constants (position ids, reshape targets)."""
    import numpy as np

    if op == "Shape":
        s = in_shapes[0] if in_shapes else None
        if s is None:
            return None
        start, end = attrs.get("start", 0), attrs.get("end")
        return np.array(s[start:end], dtype=np.int64)
    if op == "Size":
        return np.array(_numel(in_shapes[0]), dtype=np.int64) if in_shapes and in_shapes[0] is not None else None
    if op == "ConstantOfShape":
        if not ins or ins[0] not in consts:
            return None
        shape = [int(v) for v in consts[ins[0]].reshape(-1)]
        if _numel(tuple(shape)) > _SMALL:
            return None
        fill = attrs.get("value")
        from onnx import numpy_helper

        val = numpy_helper.to_array(fill).reshape(-1)[0] if fill is not None else np.float32(0)
        return np.full(shape, val)
    present = [x for x in ins if x]
    if not present or any(x not in consts for x in present):
        return None
    v = [consts.get(x) if x else None for x in ins]
    try:
        if op == "Gather":
            out = np.take(v[0], v[1].astype(np.int64), axis=int(attrs.get("axis", 0)))
        elif op == "Unsqueeze":
            axes = attrs.get("axes") or [int(a) for a in v[1].reshape(-1)]
            out = v[0]
            for a in sorted(a % (out.ndim + len(axes)) for a in axes):
                out = np.expand_dims(out, a)
        elif op == "Squeeze":
            axes = attrs.get("axes") or ([int(a) for a in v[1].reshape(-1)] if len(v) > 1 and v[1] is not None else None)
            out = np.squeeze(v[0], axis=tuple(axes) if axes else None)
        elif op == "Concat":
            out = np.concatenate([x for x in v if x is not None], axis=int(attrs.get("axis", 0)))
        elif op == "Slice":
            data, starts, ends = v[0], v[1].reshape(-1), v[2].reshape(-1)
            axes = v[3].reshape(-1) if len(v) > 3 and v[3] is not None else range(len(starts))
            steps = v[4].reshape(-1) if len(v) > 4 and v[4] is not None else [1] * len(starts)
            idx = [slice(None)] * data.ndim
            for st, en, ax, sp in zip(starts, ends, axes, steps):
                idx[int(ax)] = slice(int(st), int(en), int(sp))
            out = data[tuple(idx)]
        elif op in ("Cast", "Identity"):
            out = v[0]
        elif op in ("Add", "Sub", "Mul", "Div", "Equal", "Less", "Greater", "Max", "Min", "Mod"):
            fn = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.floor_divide, "Equal": np.equal,
                  "Less": np.less, "Greater": np.greater, "Max": np.maximum, "Min": np.minimum, "Mod": np.mod}[op]
            out = fn(v[0], v[1])
        elif op == "Where":
            out = np.where(v[0], v[1], v[2])
        elif op == "Neg":
            out = -v[0]
        elif op == "Range":
            out = np.arange(v[0].item(), v[1].item(), v[2].item())
        elif op == "Expand":
            out = v[0] * np.ones([int(d) for d in v[1].reshape(-1)], dtype=v[0].dtype)
        elif op == "Reshape":
            out = v[0].reshape([int(d) if int(d) != 0 else v[0].shape[i] for i, d in enumerate(v[1].reshape(-1))])
        else:
            return None
    except Exception:  # noqa: BLE001 - leave it to the shape rules
        return None
    out = np.asarray(out)
    return out if out.size <= _SMALL else None


def _is_int8_weight(ins, weight_alias, dtypes) -> bool:
    """A float MatMul fed by a dequantized INT8 weight (QDQ): runtimes fuse it into an INT8 kernel."""
    for x in ins[:2]:
        src = weight_alias.get(x)
        if src is not None and dtypes.get(src) in (2, 3):  # UINT8, INT8
            return True
    return False


def _onnx_rule(op, node, attrs, ins, in_shapes, outs, shapes, dtypes, consts) -> None:  # noqa: C901 - a table
    """Fill in output shapes (and element types) ONNX's inference left unknown."""
    s0 = in_shapes[0] if in_shapes else None
    t0 = dtypes.get(ins[0], 1) if ins else 1

    def put(i: int, shape, dtype: int | None = None) -> None:
        if i < len(outs) and shape is not None:
            shapes[outs[i]] = tuple(int(d) for d in shape)
            dtypes.setdefault(outs[i], dtype if dtype is not None else t0)

    if op in _SAME_SHAPE and s0 is not None:
        out_t = {"Cast": attrs.get("to"), "DequantizeLinear": 1, "QuantizeLinear": dtypes.get(ins[2], 2) if len(ins) > 2
                 else 2, "DynamicQuantizeLinear": 2}.get(op, t0)
        put(0, s0, out_t)
        if op == "DynamicQuantizeLinear":
            put(1, (), 1)
            put(2, (), 2)
        if op in ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization") and len(outs) > 3:
            put(3, s0)
        return
    if op in _BROADCAST:
        known = [s for s in in_shapes if s is not None]
        if len(known) == len([x for x in ins if x]):
            out = _broadcast(*known)
            put(0, out, 9 if op in ("Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or") else
                (dtypes.get(ins[1], t0) if op == "Where" else t0))
        return
    if op in _MATMUL or op == "QLinearMatMul":
        a, b = (in_shapes[0], in_shapes[3]) if op == "QLinearMatMul" else (in_shapes[0], in_shapes[1])
        if a is None or b is None:
            return
        a2 = a if len(a) > 1 else (1, *a)
        b2 = b if len(b) > 1 else (*b, 1)
        batch = _broadcast(a2[:-2], b2[:-2]) if (len(a2) > 2 or len(b2) > 2) else ()
        out = (*(batch or ()), a2[-2], b2[-1])
        if len(a) == 1:
            out = out[:-2] + out[-1:]
        if len(b) == 1:
            out = out[:-1]
        put(0, out, {"MatMulInteger": 6, "QLinearMatMul": dtypes.get(ins[7], 2) if len(ins) > 7 else 2}.get(op, 1))
        return
    if op in ("Gemm", "QGemm"):
        a, b = in_shapes[0], in_shapes[1] if op == "Gemm" else in_shapes[3]
        if a and b:
            m = a[1] if attrs.get("transA") else a[0]
            n = b[0] if attrs.get("transB") else b[1]
            put(0, (m, n), 1)
        return
    if op == "MatMulNBits" and s0 is not None:
        put(0, (*s0[:-1], int(attrs["N"])), t0)
        return
    if op in ("Attention", "QAttention") and s0 is not None and in_shapes[1] is not None:
        sizes = attrs.get("qkv_hidden_sizes")
        hv = int(sizes[2]) if sizes else in_shapes[1][-1] // 3
        put(0, (*s0[:-1], hv), 1)
        return
    if op == "MultiHeadAttention" and s0 is not None:
        v = in_shapes[2] if len(in_shapes) > 2 and in_shapes[2] is not None else s0
        put(0, (*s0[:-1], v[-1] if len(v) == 3 else s0[-1]), t0)
        return
    if op == "EmbedLayerNormalization":
        ids, word = in_shapes[0], in_shapes[2] if len(in_shapes) > 2 else None
        if ids and word:
            put(0, (*ids, word[-1]), dtypes.get(ins[2], 1))
            put(1, (ids[0],), 6)
        return
    if op == "Gather" and s0 is not None and in_shapes[1] is not None:
        axis = int(attrs.get("axis", 0)) % max(1, len(s0))
        put(0, (*s0[:axis], *in_shapes[1], *s0[axis + 1:]), t0)
        return
    if op == "Transpose" and s0 is not None:
        perm = attrs.get("perm") or list(reversed(range(len(s0))))
        put(0, tuple(s0[p] for p in perm))
        return
    if op == "Reshape" and s0 is not None and len(ins) > 1 and ins[1] in consts:
        target = [int(v) for v in consts[ins[1]].reshape(-1)]
        target = [s0[i] if v == 0 and not attrs.get("allowzero") else v for i, v in enumerate(target)]
        if target.count(-1) == 1:
            known = math.prod(v for v in target if v != -1)
            target[target.index(-1)] = _numel(s0) // max(1, known)
        put(0, target)
        return
    if op in ("Unsqueeze", "Squeeze") and s0 is not None:
        axes = attrs.get("axes")
        if axes is None and len(ins) > 1 and ins[1] in consts:
            axes = [int(v) for v in consts[ins[1]].reshape(-1)]
        if op == "Squeeze":
            if axes is None:
                put(0, tuple(d for d in s0 if d != 1))
            else:
                ax = {a % len(s0) for a in axes}
                put(0, tuple(d for i, d in enumerate(s0) if i not in ax))
        elif axes is not None:
            rank = len(s0) + len(axes)
            ax = {a % rank for a in axes}
            it = iter(s0)
            put(0, tuple(1 if i in ax else next(it) for i in range(rank)))
        return
    if op.startswith("Reduce") and s0 is not None:
        axes = attrs.get("axes")
        if axes is None and len(ins) > 1 and ins[1] in consts:
            axes = [int(v) for v in consts[ins[1]].reshape(-1)]
        axes = {a % len(s0) for a in (axes if axes is not None else range(len(s0)))}
        keep = attrs.get("keepdims", 1)
        put(0, tuple((1 if i in axes else d) for i, d in enumerate(s0) if keep or i not in axes))
        return
    if op == "Slice" and s0 is not None and all(x in consts for x in ins[1:3]):
        starts, ends = consts[ins[1]].reshape(-1), consts[ins[2]].reshape(-1)
        axes = consts[ins[3]].reshape(-1) if len(ins) > 3 and ins[3] in consts else range(len(starts))
        steps = consts[ins[4]].reshape(-1) if len(ins) > 4 and ins[4] in consts else [1] * len(starts)
        out = list(s0)
        for st, en, ax, sp in zip(starts, ends, axes, steps):
            ax = int(ax) % len(s0)
            out[ax] = len(range(*slice(int(st), int(en), int(sp)).indices(s0[ax])))
        put(0, out)
        return
    if op == "Expand" and s0 is not None and len(ins) > 1 and ins[1] in consts:
        put(0, _broadcast(s0, tuple(int(d) for d in consts[ins[1]].reshape(-1))))
        return
    if op == "ConstantOfShape" and ins and ins[0] in consts:
        put(0, tuple(int(d) for d in consts[ins[0]].reshape(-1)), 1)
        return
    if op == "Concat":
        if all(s is not None for s in in_shapes):
            axis = int(attrs.get("axis", 0)) % len(in_shapes[0])
            out = list(in_shapes[0])
            out[axis] = sum(s[axis] for s in in_shapes)
            put(0, out)
        return


# -- OpenVINO ---------------------------------------------------------------------------------------

_OV_FREE = frozenset({"Parameter", "Result", "Constant", "ShapeOf", "Reshape", "Squeeze", "Unsqueeze", "Convert"})
_OV_NORMS = frozenset({"MVN", "Softmax", "NormalizeL2", "ReduceMean", "ReduceSum", "ReduceMax", "RMS"})


def _openvino_cost(path: Path, batch: int, seq: int) -> GraphCost:
    try:
        import openvino as ov
    except ImportError:
        raise MissingBackendError("estimating an OpenVINO IR needs openvino", hint="pip install openvino") from None

    model = ov.Core().read_model(str(path))
    new_shapes = {}
    for p in model.inputs:
        ps = p.get_partial_shape()
        dims = []
        for pos, d in enumerate(ps):
            dims.append(d.get_length() if d.is_static else (batch if pos == 0 else seq))
        new_shapes[p.any_name] = dims
    model.reshape(new_shapes)

    # A node is "constant-derived" when all its inputs are (weight decompression: Convert, Subtract,
    # Multiply on a u8/i8/u4 Constant); such chains are folded or decompressed inside the consumer.
    const_bytes: dict[str, float] = {}  # node friendly name -> bytes of the originating constant(s)
    const_nodes: set[str] = set()
    int8_nodes: set[str] = set()  # outputs of FakeQuantize with 256 levels (INT8 activations)
    counted: set[str] = set()
    nodes: list[NodeCost] = []
    unknown: list[str] = []

    def out_bytes(node, i=0) -> float:
        ps = node.get_output_partial_shape(i)
        if not ps.is_static:
            return 0.0
        return _numel(tuple(ps.to_shape())) * node.get_output_element_type(i).size

    for node in model.get_ordered_ops():
        op = node.get_type_name()
        name = node.get_friendly_name()
        srcs = [node.input_value(i).get_node() for i in range(node.get_input_size())]
        if op == "Constant":
            const_nodes.add(name)
            const_bytes[name] = out_bytes(node)
            nodes.append(NodeCost(name, op, dispatch=False))
            continue
        if srcs and all(s.get_friendly_name() in const_nodes for s in srcs):
            const_nodes.add(name)  # folded weight subgraph (decompression, transposes)
            const_bytes[name] = sum(const_bytes.get(s.get_friendly_name(), 0.0) for s in srcs)
            nodes.append(NodeCost(name, op, dispatch=False))
            continue
        if any(not node.get_output_partial_shape(i).is_static for i in range(node.get_output_size())):
            unknown.append(f"{op}:{name}")
            nodes.append(NodeCost(name, op, dispatch=False))
            continue
        if op in _OV_FREE:
            nodes.append(NodeCost(name, op, dispatch=False))
            continue
        if op == "FakeQuantize" and int(node.get_attributes().get("levels", 0)) <= 256:
            int8_nodes.add(name)
        weight = act = 0.0
        for i, s in enumerate(srcs):
            sname = s.get_friendly_name()
            if sname in const_nodes:
                if op == "Gather" and i == 0:
                    weight += out_bytes(node)
                elif sname not in counted:
                    counted.add(sname)
                    weight += const_bytes.get(sname, 0.0)
            else:
                ps = node.get_input_partial_shape(i)
                act += _numel(tuple(ps.to_shape())) * node.get_input_element_type(i).size if ps.is_static else 0.0
        outb = sum(out_bytes(node, i) for i in range(node.get_output_size()))
        n_out = _numel(tuple(node.get_output_partial_shape(0).to_shape()))
        flops = int8 = 0.0
        if op == "MatMul":
            a = tuple(node.get_input_partial_shape(0).to_shape())
            k = a[-2] if node.get_attributes().get("transpose_a") else a[-1]
            macs = n_out * k
            if any(s.get_friendly_name() in int8_nodes for s in srcs):
                int8 = 2.0 * macs
            else:
                flops = 2.0 * macs
        elif op in ("ScaledDotProductAttention",):
            q = tuple(node.get_input_partial_shape(0).to_shape())
            k = tuple(node.get_input_partial_shape(1).to_shape())
            flops = 4.0 * _numel(q) * k[-2] + 5.0 * _numel(q[:-1]) * k[-2]
        elif op in ("Convolution", "GroupConvolution"):
            w = tuple(node.get_input_partial_shape(1).to_shape())
            flops = 2.0 * n_out * math.prod(w[1:] if op == "Convolution" else w[2:])
        elif op in _OV_NORMS:
            flops = 5.0 * n_out
        elif op in ("Gelu", "Tanh", "Erf", "Exp", "Sigmoid", "Swish", "HSwish", "Power", "Sqrt"):
            flops = 8.0 * n_out
        elif op in ("Gather", "Transpose", "Concat", "StridedSlice", "Slice", "Split", "VariadicSplit",
                    "Broadcast", "Tile", "Pad"):
            flops = 0.0
        else:
            flops = float(n_out)
        nodes.append(NodeCost(name, op, flops=flops, int8_ops=int8, bytes=weight + act + outb, weight_bytes=weight))
    return GraphCost(str(path), batch, seq, nodes, unknown)


# --------------------------------------------------------------------------------------------------
# python -m compress.estimate ARTIFACT --profile P
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m compress.estimate",
        description="Roofline latency estimate of an ONNX/OpenVINO artifact on a device profile.",
    )
    parser.add_argument("artifact", help="artifact directory, or a .onnx / .xml file")
    parser.add_argument("--profile", "-p", default="host",
                        help="profile name or YAML path; 'host' uses this machine's derived peaks and measured bandwidth")
    parser.add_argument("--batch-size", type=int, help="default: the profile's measure.batch_size")
    parser.add_argument("--sequence-length", type=int, help="default: the profile's measure.sequence_length")
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")
    args = parser.parse_args(argv)
    from compress.errors import EdgeCompressError
    from compress.profiles import load_profile

    try:
        prof = load_profile(args.profile)
        peaks = host_peaks() if prof.source == "detected" else None
        est = estimate(args.artifact, prof, batch_size=args.batch_size, sequence_length=args.sequence_length,
                       peaks=peaks)
    except EdgeCompressError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if args.json:
        print(json.dumps(est.as_dict(), indent=2))
        return 0
    p = est.peaks
    print(f"{args.artifact} on {prof.name} at {est.batch_size}x{est.sequence_length}: "
          f"≈ {est.latency_ms:.2f} ms (estimated), ≈ {est.throughput:.1f} samples/s")
    print(f"  {est.gflops:.3f} GFLOP fp32 + {est.int8_gops:.3f} GOP int8, {est.mbytes:.1f} MB moved "
          f"({est.weight_mb:.1f} MB weights), {est.nodes} operators")
    print(f"  roofline: {p['fp32_gflops']} GFLOP/s fp32, {p['int8_gops'] or p['fp32_gflops']} GOP/s int8, "
          f"{p['bandwidth_gbs']} GB/s ({p['source']})")
    print(f"  compute-bound {est.compute_ms:.2f} ms, memory-bound {est.memory_ms:.2f} ms, "
          f"per-operator overhead {est.overhead_ms:.2f} ms")
    print("  by op: " + ", ".join(f"{k} {v:.2f}" for k, v in list(est.by_op.items())[:6]))
    if est.unknown_nodes:
        print(f"  {est.unknown_nodes} node(s) had no static shape and were counted as free")
    return 0


if __name__ == "__main__":
    sys.exit(main())
