"""One candidate of ONNX Runtime quantization written (:class:`OnnxQuantizer`): a quantized copy of an ONNX artifact's
model with given nodes left in float, INT8 dynamic, static QDQ (calibrated once, reused per candidate) or INT4
weight-only (MatMulNBits), the way :mod:`.onnxruntime`'s module doc describes; the accuracy, speed and granularity
searches (:mod:`.ort_accuracy`, :mod:`.speed`) ask it for one candidate after another."""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import tempfile
from pathlib import Path

import numpy as np

from compress.artifact import Artifact
from compress.data.inputs import sample_inputs
from compress.errors import EdgeCompressError, StageError
from compress.native_stderr import ort_log_severity
from compress.stages.quantize.calibration import CalibrationReader, StreamCalibrationReader
from compress.stages.quantize.config import (
    CalibrationMethod,
    EmbeddingPrecision,
    QuantizeConfig,
    QuantMode,
    QuantPrecision,
    WeightType,
)
from compress.stages.quantize.graph import (
    DYNAMIC_WEIGHT_OPS,
    IMAGE_STATIC_OPS,
    INT4_ACCURACY_LEVEL,
    STATIC_DEFAULT_OPS,
    _int4_op_types,
    float_graph_outputs,
    is_static_first,
    quantizable_layers,
    small_embedding_tables,
)
from compress.stages.quantize.int4_gather import unpack_int4_gathers_file

log = logging.getLogger(__name__)


def ort_error(e: Exception) -> EdgeCompressError:
    from compress.storage import storage_error

    env = storage_error(e)  # a full disk or read-only location is the environment, not the options
    if env is not None:
        return env
    return StageError(
        f"ONNX Runtime quantization failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
        hint="rerun with --debug; try --mode dynamic or fewer --op-types",
    )


def depthwise_convs(model) -> dict[str, str]:
    """The depthwise convolutions of ``model`` (one input and one output channel per group: ONNX Runtime's
    ``is_depthwise_conv``), node name -> weight name. ONNX Runtime's x86 kernels for them (``MlasConvDepthwise``; AVX2:
    ``qdwconv_avx2.cpp``) widen the u8 inputs and s8 weights to 16 bits and multiply-add pairs into 32 bits
    (VPMADDWD): exact at full range on every x86. Only the GEMM-based layers (other convolutions, MatMul, Gemm) go
    through VPMADDUBSW's saturating 16-bit sums on x86 without VNNI (``benchmarks/vision/weight_range.py``)."""
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        dims = list(inits[node.input[1]].dims)
        if group > 1 and len(dims) >= 3 and dims[0] == group and dims[1] == 1:
            out[node.name] = node.input[1]
    return out


#: activations: a convolution whose output feeds one of these is not a linear-output one (SiLU is Sigmoid and Mul)
ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
               "Softplus", "Gelu", "Mish")


def linear_output_convs(model) -> dict[str, str]:
    """The convolutions of ``model`` (not depthwise) whose output goes on without an activation (node name -> weight
    name): no activation of :data:`ACTIVATIONS` reads it, directly or after steps that only add, multiply or divide by
    a constant (a bias Add, a hard-swish written as ``Add(3) -> Clip``, a hard-sigmoid as ``Mul -> Add -> Clip``:
    Paddle2ONNX's and TensorFlow converters' forms), or it is a graph output. A linear bottleneck's projection, a
    residual branch's last convolution, a box regression head: no activation rectifies or squashes their rounding
    error before the sums after them. On the ImageNet MobileNetV2 the 7th bit lost in its 17 projections cost 2.4
    points of top-1 on tuning views, the stem, expansions and classifier 0 to 1 view (``benchmarks/vision/weight_range.py``,
    docs/benchmarks/cnn-int8.md); YOLOX-Nano (SiLU everywhere) has 3 of 113."""
    inits = {t.name for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def constant(name: str, depth: int = 0) -> bool:  # an initializer, or computed from constants alone
        node = producer.get(name)
        return name in inits or (node is not None and depth < 4 and (node.op_type == "Constant" or all(
            constant(i, depth + 1) for i in node.input if i)))

    def activated(name: str, hops: int = 0) -> bool:
        for node in consumers.get(name, []):
            if node.op_type in ACTIVATIONS:
                return True
            if (hops < 3 and node.op_type in ("Add", "Sub", "Mul", "Div")
                    and all(constant(i) for i in node.input if i != name) and activated(node.output[0], hops + 1)):
                return True
        return False

    depthwise = depthwise_convs(model)
    outputs = {o.name for o in model.graph.output}
    return {node.name: node.input[1] for node in model.graph.node
            if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in inits and node.name not in depthwise
            and (node.output[0] in outputs or not activated(node.output[0]))}


class OnnxQuantizer:
    """Writes a quantized copy of one ONNX artifact's model with given nodes left in float."""

    def __init__(self, art: Artifact, config: QuantizeConfig) -> None:
        self.art = art
        self.config = config
        self.weights = config.weight_range()  # decided by the target, never by this host
        self.reduce_range = self.weights.reduce_range
        self.calibration_cache: Path | None = None  # static mode: ranges computed once, reused per candidate
        self.calibration_rows: list | None = None  # static: the rows that calibrate (None: the data's first samples)
        self.per_tensor_nodes: set[str] = set()  # static: layers given per-tensor weight scales (granularity search)
        self._model = None
        self._reader = None

    @property
    def int4(self) -> bool:
        return self.config.precision is QuantPrecision.int4

    @property
    def model(self):
        if self._model is None:
            import onnx

            self._model = onnx.load(str(self.art.model_path))
        return self._model

    @property
    def large(self) -> bool:
        return self.model.ByteSize() > 1_800_000_000

    @functools.cached_property
    def int8_tables(self) -> list[str]:
        """With INT4 embeddings, the small tables (positions, token types) that stay INT8; none otherwise."""
        if self.config.embedding_precision is not EmbeddingPrecision.int4 or "Gather" not in self.op_types():
            return []
        return small_embedding_tables(self.model)

    def op_types(self) -> tuple[str, ...]:
        c = self.config
        if self.int4:
            return _int4_op_types(c)
        if c.mode is QuantMode.static:
            return tuple(c.op_types or (IMAGE_STATIC_OPS if is_static_first(self.art) else STATIC_DEFAULT_OPS))
        return tuple(c.op_types or DYNAMIC_WEIGHT_OPS)

    def layers(self) -> list:
        dynamic_gemm = not self.int4 and self.config.mode is QuantMode.dynamic and "MatMul" in self.op_types()
        return quantizable_layers(self.model, self.op_types(), dynamic_gemm=dynamic_gemm)

    @functools.cached_property
    def eight_bit_layers(self) -> dict[str, dict[str, str]]:
        """Static INT8 with 7-bit weights: the layers whose weights keep 8 bits in a kernel that cannot saturate, by
        kind, node -> weight: ``depthwise`` (s8: :func:`depthwise_convs`) and ``linear_output`` (u8 weights, ONNX
        Runtime's U8U8 kernels, which widen to 16 bits first: :func:`linear_output_convs`); none otherwise."""
        if self.int4 or self.config.mode is not QuantMode.static or not self.reduce_range:
            return {}
        return {k: v for k, v in (("depthwise", depthwise_convs(self.model)),
                                  ("linear_output", linear_output_convs(self.model))) if v}

    def _weight_overrides(self, ortq, per_channel: bool) -> dict[str, list[dict]]:
        """ONNX Runtime's ``TensorQuantOverrides`` for :attr:`eight_bit_layers`."""
        axis = {"axis": 0} if per_channel else {}
        u8 = {"quant_type": ortq.QuantType.QUInt8}
        return {w: [{"reduce_range": False, **axis, **(u8 if kind == "linear_output" else {})}]
                for kind, layers in self.eight_bit_layers.items() for w in layers.values()}

    def _weight_type(self, ortq):
        return ortq.QuantType.QInt8 if self.weights.weight_type is WeightType.int8 else ortq.QuantType.QUInt8

    def write(self, dst: Path, exclude: list[str]) -> None:
        import onnxruntime

        onnxruntime.set_default_logger_severity(ort_log_severity())  # the quantizer's own sessions, as ours
        try:
            if self.int4:
                self._int4(dst, exclude)
            elif self.config.mode is QuantMode.dynamic:
                self._dynamic(dst, exclude)
            else:
                self._static(dst, exclude)
            if self.config.embedding_precision is EmbeddingPrecision.int4 and (self.int4 or self.config.mode is QuantMode.dynamic):
                unpack_int4_gathers_file(dst, self.large)
        except EdgeCompressError:  # bad calibration data etc.: already a clear error
            raise
        except Exception as e:
            raise ort_error(e) from e

    def _dynamic(self, dst: Path, exclude: list[str]) -> None:
        """Dynamic INT8; embedding tables INT8 with the rest (the default), FP32, or INT4 (GatherBlockQuantized,
        written first, then the MatMuls are quantized around it)."""
        from onnxruntime import quantization as ortq

        c = self.config
        op_types = c.op_types
        emb = c.embedding_precision
        with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".int8-") as scratch:
            src = self.art.model_path
            if emb is not EmbeddingPrecision.int8 and "Gather" in self.op_types():
                op_types = [o for o in self.op_types() if o != "Gather"]
                if emb is EmbeddingPrecision.int4:
                    src = Path(scratch) / "int4-embeddings.onnx"
                    self._nbits(("Gather",), exclude + self.int8_tables).model.save_model_to_file(str(src), self.large)
                    if self.int8_tables:  # the small tables become INT8 with the MatMuls
                        op_types.append("Gather")
            self._quantize_dynamic(ortq, src, dst, op_types, exclude)

    def _quantize_dynamic(self, ortq, src: Path, dst: Path, op_types, exclude: list[str]) -> None:
        c = self.config
        ortq.quantize_dynamic(
            str(src),
            str(dst),
            op_types_to_quantize=op_types,
            per_channel=c.int8.per_channel,
            reduce_range=self.reduce_range,
            weight_type=self._weight_type(ortq),
            nodes_to_exclude=exclude or None,
            use_external_data_format=self.large,
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": 1},  # 1 = FLOAT: fused ops lack shape inference
        )

    def _static(self, dst: Path, exclude: list[str], per_channel: bool | None = None) -> None:
        """Static QDQ INT8; with ``per_tensor_nodes`` (and per-channel scales), those layers' weight scales are taken
        from a per-tensor quantization of the same graph (compress.stages.quantize.granularity)."""
        per_channel = self.config.int8.per_channel if per_channel is None else per_channel
        self._static_uniform(dst, exclude, per_channel)
        if per_channel and self.per_tensor_nodes:
            import onnx

            from compress.stages.quantize.granularity import swap_scales

            with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".per-tensor-") as scratch:
                other = Path(scratch) / "model.onnx"
                self._static_uniform(other, exclude, False)
                onnx.save(swap_scales(onnx.load(str(dst)), onnx.load(str(other)), self.per_tensor_nodes), str(dst))

    def _static_uniform(self, dst: Path, exclude: list[str], per_channel: bool) -> None:
        from onnxruntime import quantization as ortq

        from compress.runtimes.ort_backend import OrtBackend

        c = self.config
        if self._reader is None and self.art.manifest.stream is not None:  # calls in stream order, state carried
            self._reader = StreamCalibrationReader(OrtBackend(self.art), c.calibration.data, c.calibration.samples)
        if self._reader is None:
            texts = self.calibration_rows if self.calibration_rows is not None else \
                sample_inputs(c.calibration.data, c.calibration.samples, self.art.manifest.preprocess)
            source = OrtBackend(self.art)
            self._reader = CalibrationReader(source.encoder, texts, set(source.input_names))
            source.close()
            log.info("static INT8 QDQ quantization on %d samples (%s)", len(texts), c.calibration.method)
        self._reader.rewind()
        method = {
            CalibrationMethod.minmax: ortq.CalibrationMethod.MinMax,
            CalibrationMethod.mean_minmax: ortq.CalibrationMethod.MinMax,
            CalibrationMethod.entropy: ortq.CalibrationMethod.Entropy,
            CalibrationMethod.percentile: ortq.CalibrationMethod.Percentile,
        }[c.calibration.method]
        extra = {"MatMulConstBOnly": True, "WeightSymmetric": True, "ActivationSymmetric": False, "DefaultTensorType": 1}
        if self.eight_bit_layers:  # 7 bits only where the kernel can saturate
            extra["TensorQuantOverrides"] = self._weight_overrides(ortq, per_channel)
        if c.calibration.method is CalibrationMethod.percentile:
            extra["CalibPercentile"] = c.calibration.percentile
        if c.calibration.method is CalibrationMethod.mean_minmax:
            extra["CalibMovingAverage"] = True
        kwargs = {}
        if self.calibration_cache is not None and "calibration_cache_path" in inspect.signature(ortq.quantize_static).parameters:
            kwargs["calibration_cache_path"] = str(self.calibration_cache)
        ortq.quantize_static(
            str(self.art.model_path),
            str(dst),
            self._reader,
            quant_format=ortq.QuantFormat.QDQ,
            op_types_to_quantize=list(self.op_types()),
            per_channel=per_channel,
            reduce_range=self.reduce_range,
            activation_type=ortq.QuantType.QUInt8,
            weight_type=self._weight_type(ortq),
            nodes_to_exclude=exclude or None,
            calibrate_method=method,
            use_external_data_format=self.large,
            extra_options=extra,
            **kwargs,
        )
        import onnx

        model = onnx.load(str(dst), load_external_data=False)
        if float_graph_outputs(model):
            onnx.save(model, str(dst))

    def _nbits(self, nbits_ops: tuple[str, ...], exclude: list[str]):
        """ONNX Runtime's MatMulNBitsQuantizer run on ``nbits_ops`` (MatMul: MatMulNBits; Gather:
        GatherBlockQuantized, blocks along the hidden dimension); returns it, processed."""
        from onnxruntime import quantization as ortq
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

        c = self.config
        algo = DefaultWeightOnlyQuantConfig(
            block_size=c.int4.block_size,
            is_symmetric=c.int4.symmetric,
            accuracy_level=INT4_ACCURACY_LEVEL,
            quant_format=ortq.QuantFormat.QOperator,
            op_types_to_quantize=nbits_ops,
            quant_axes=(("MatMul", 0), ("Gather", 1)),
        )
        quantizer = MatMulNBitsQuantizer(copy.deepcopy(self.model), nodes_to_exclude=list(exclude), algo_config=algo)
        ort_log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
        level = ort_log.level
        ort_log.setLevel(logging.ERROR)  # per-node INFO lines, and the opset-21 notice handled below
        try:
            with np.errstate(invalid="ignore", divide="ignore"):  # all-zero embedding rows: scale 0, handled by ORT
                quantizer.process()
        finally:
            ort_log.setLevel(level)
        if "Gather" in nbits_ops:
            log.info("INT4 embeddings (GatherBlockQuantized) need INT4 tensors: the model's opset is raised to 21 "
                     "and IR version to 10 (the output is checked by running it in ONNX Runtime)")
        return quantizer

    def _int4(self, dst: Path, exclude: list[str]) -> None:
        from onnxruntime import quantization as ortq

        c = self.config
        ops = self.op_types()
        nbits_ops = tuple(o for o in ops if o == "MatMul" or c.embedding_precision is EmbeddingPrecision.int4)
        quantizer = self._nbits(nbits_ops, exclude + self.int8_tables)
        if "Gather" in ops and (c.embedding_precision is EmbeddingPrecision.int8 or self.int8_tables):
            # MatMulNBits' Gather path is 4-bit only: INT8 tables come from quantize_dynamic's Gather support
            with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".int4-") as scratch:
                mid = Path(scratch) / "int4.onnx"
                quantizer.model.save_model_to_file(str(mid), self.large)
                ortq.quantize_dynamic(
                    str(mid),
                    str(dst),
                    op_types_to_quantize=["Gather"],
                    per_channel=False,
                    reduce_range=False,
                    weight_type=self._weight_type(ortq),
                    nodes_to_exclude=list(exclude) or None,
                    use_external_data_format=self.large,
                    extra_options={"DefaultTensorType": 1},
                )
        else:
            quantizer.model.save_model_to_file(str(dst), self.large)
