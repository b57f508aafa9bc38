"""``export --format executorch``: a PyTorch teacher or student to an ExecuTorch program (``model.pte``) that a
phone app loads, lowered to the XNNPACK backend (the CPU delegate of Android and iOS).

The path is ExecuTorch's own: ``torch.export`` of the model (one row per call, the sequence length dynamic up to
``max_length`` for text; a fixed image), ``to_edge_transform_and_lower`` with the ``XnnpackPartitioner`` (what it
cannot take stays in ExecuTorch's portable kernels), ``to_executorch()``. ``--precision int8`` quantizes first with
PT2E and the ``XNNPACKQuantizer`` (symmetric, per-channel weights): **static** activations calibrated on
``--calibration`` data (the default for images, and needed for them; the ranges of the estimator, mean-minmax or
histogram, whose INT8 outputs on the calibration rows are closer to the FP32 program's, and a layer's output quantized
after its ReLU6, where XNNPACK fuses the clamp), or **dynamic** activations (per-row scales at run time:
the default for text, no calibration). The written program is checked against the PyTorch model in ExecuTorch's own
runtime on the parity samples: an FP32 program must match within ``--atol``; an INT8 program's agreement is recorded.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from pathlib import Path
from typing import Any

from compress.artifact import Artifact, Format, Precision, is_artifact, library_versions, load_artifact
from compress.artifact_entries import TensorSpec
from compress.errors import ConfigError, ParityError
from compress.stages.export.config import EXPORT_EXECUTORCH, ExportConfig

log = logging.getLogger("compress.stages.export")

PROGRAM_FILE = "model.pte"
#: rows an ExecuTorch program takes per call: phones run one request at a time
BATCH = 1


def traced_module(teacher):
    """The teacher as a module of its inputs, in order, returning its primary output (logits or token states)."""
    import torch
    import transformers

    # transformers 5 builds attention masks (masking_utils) with index ops on tensors that PT2E's passes turn into
    # floats; given the additive [b, 1, 1, s] mask it uses it as it is. transformers 4 builds it simply from the 0/1
    # mask (and refuses a 4-D one).
    additive = int(transformers.__version__.split(".")[0]) >= 5 and input_kind(teacher) == "text"

    class Primary(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = teacher.model

        def forward(self, *xs):
            feeds = dict(zip(teacher.input_names, xs))
            if additive and "attention_mask" in feeds:
                mask = feeds["attention_mask"]
                feeds["attention_mask"] = (1.0 - mask[:, None, None, :].to(torch.float32)) * torch.finfo(
                    torch.float32).min
            return teacher.call(self.model, feeds)

    wrapper = Primary()
    wrapper.training = False  # the wrapper alone: the teacher is loaded in eval mode, and a .pt2 program's module
    return wrapper            # refuses .eval()


def example_rows(teacher) -> tuple[list[str], tuple, Any]:
    """Input names, one example row per input, and the dynamic shapes ``torch.export`` takes (text: the sequence
    length, 2 to ``max_length`` tokens; images: none)."""
    import torch

    feeds = teacher.example_inputs()
    # the order traced_module reads its inputs in (a tokenizer's outputs come in another: BERT's example feeds
    # attention_mask second, its forward takes token_type_ids second)
    names = list(teacher.input_names) if set(teacher.input_names) == set(feeds) else list(feeds)
    # in row-major strides: a one-channel image transposed from HWC has a channel stride of 1, which .contiguous()
    # keeps (a size-1 dimension's stride is free), and torch.export then records the input as channels-last, which
    # XNNPACK refuses at run time on a row-major tensor ("Propagating input shapes failed")
    example = tuple(feeds[n][:BATCH].clone(memory_format=torch.contiguous_format) for n in names)
    if input_kind(teacher) != "text":  # images and arrays: the shape traced is the shape run
        return names, example, None
    top = max(int(teacher.info.max_length or 512), example[0].shape[1] + 1)
    seq = torch.export.Dim("sequence_length", min=2, max=top)
    return names, example, (tuple({1: seq} for _ in names),)  # the module's one *args parameter


def _calibration_rows(teacher, config: ExportConfig, names: list[str]) -> list[tuple]:
    """The calibration data as one-row model inputs (static INT8)."""
    import torch

    from compress.data.inputs import sample_inputs

    items = sample_inputs(config.calibration.data, config.calibration.samples, teacher.manifest().preprocess)
    encoder = teacher.encoder()
    rows = []
    for item in items:
        feed = encoder.encode([item])
        rows.append(tuple(torch.from_numpy(feed[n]) for n in names))
    return rows


def lower(teacher, config: ExportConfig, out_file: Path) -> dict[str, Any]:
    """Export, quantize (``config.precision`` int8), lower to XNNPACK and write ``out_file``; what was done."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    names, example, dynamic = example_rows(teacher)
    record: dict[str, Any] = {"backend": "xnnpack", "batch": BATCH}
    t0 = time.perf_counter()
    try:
        if getattr(teacher.info, "kind", None) == "program":  # already a torch.export program: FP32 lowered as it
            from compress.teachers.programs import load_program  # is; INT8 quantizes its module, exported again

            program = load_program(teacher.path / teacher.info.weights[0] if teacher.path.is_dir() else teacher.path,
                                   allow_pickle=config.allow_pickle)
        else:
            program = torch.export.export(traced_module(teacher), example, dynamic_shapes=dynamic)
    except Exception as e:
        raise ConfigError(f"torch.export cannot capture {type(teacher.model).__name__} ({short_error(e)})",
                          hint="ExecuTorch needs a model torch.export can trace; export it to ONNX instead") from e
    if config.precision is not None and config.precision.value == "int8":
        program, record["quantization"] = _quantize(program, teacher, config, names, example, dynamic)
    try:
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        record["delegated"] = delegation_of(edge)
        executorch_program = edge.to_executorch()
    except Exception as e:
        raise ConfigError(f"ExecuTorch cannot lower {type(teacher.model).__name__} ({short_error(e)})",
                          hint="the operator named is not supported by ExecuTorch's kernels; export to ONNX "
                          "instead") from e
    out_file.write_bytes(executorch_program.buffer)
    record["lower_seconds"] = round(time.perf_counter() - t0, 1)
    return record


def _quantize(program, teacher, config: ExportConfig, names: list[str], example: tuple, dynamic):
    """PT2E INT8 with the XNNPACK quantizer: static (calibrated) or dynamic activations, per-channel weights."""
    import torch

    mode = int8_mode(teacher, config)
    asked = str(config.executorch.calibration_method or "auto")
    rows = _calibration_rows(teacher, config, names) if mode == "static" else [example]
    methods = AUTO_METHODS if mode == "static" and asked == "auto" else (asked,)
    tried = {m: _calibrated(program, rows, dynamic=mode == "dynamic", method=m) for m in methods}
    method = max(tried, key=lambda m: tried[m][2]) if len(tried) > 1 else methods[0]
    converted, quantizer, _ = tried[method]
    tables = quantize_embeddings(converted) if str(config.executorch.embedding_precision or "int8") == "int8" else 0
    # the converted graph takes its inputs flat, not as one *args tuple
    quantized = torch.export.export(converted, example, dynamic_shapes=dynamic[0] if dynamic else None)
    record = {"scheme": "PT2E XNNPACKQuantizer, symmetric, per-channel weights", "activations": mode,
              "calibration": config.calibration.data if mode == "static" else None,
              "calibration_rows": len(rows) if mode == "static" else 0,
              "embeddings": {"tables": tables, "weights": "int8, symmetric, one scale per row"} if tables else None}
    if mode == "static":
        record |= {"calibration_method": method, "clamps_fused": getattr(quantizer, "clamps_fused", 0)}
    if len(tried) > 1:
        record["range_choice"] = {"sqnr_db": {m: round(t[2], 2) for m, t in tried.items()},
                                  "judged_on": "the calibration rows: each estimator's INT8 outputs against the FP32 "
                                               "program's (signal-to-quantization-noise ratio), the higher kept"}
    return quantized, record


#: the range estimators ``auto`` (the default) tries: neither wins on every network (docs/benchmarks/cnn-int8.md: the digits CNN
#: keeps 0.978 of its accuracy with mean-minmax and 0.996 with histogram; the ImageNet MobileNetV2 1.000 and 0.964)
AUTO_METHODS = ("mean-minmax", "histogram")


def _calibrated(program, rows: list[tuple], *, dynamic: bool, method: str):
    """``program`` prepared with ``method``'s ranges, calibrated on ``rows`` and converted; with its quantizer and the
    signal-to-quantization-noise ratio (dB) of its outputs against the FP32 program's over the rows."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = xnnpack_quantizer(dynamic=dynamic, method=method)
    prepared = prepare_pt2e(program.module(), quantizer)
    with torch.no_grad():
        for row in rows:
            prepared(*row)
    converted = convert_pt2e(prepared)
    if dynamic:
        return converted, quantizer, 0.0
    reference, signal, noise = program.module(), 0.0, 0.0
    with torch.no_grad():
        for row in rows:
            for ref, got in zip(_tensors(reference(*row)), _tensors(converted(*row)), strict=True):
                signal += float(ref.double().pow(2).sum())
                noise += float((ref.double() - got.double()).pow(2).sum())
    return converted, quantizer, 10 * math.log10(max(signal, 1e-30) / max(noise, 1e-30))


def _tensors(out) -> list:
    """A model's outputs as a flat list of tensors (one tensor, or a tuple/list of them)."""
    return [t for t in (out if isinstance(out, (tuple, list)) else [out]) if hasattr(t, "double")]


def quantize_embeddings(gm) -> int:
    """Store each embedding table the graph looks up in INT8, one scale per row, read by ExecuTorch's
    ``quantized_decomposed::embedding_byte`` kernel (the rows it gathers are dequantized as they are read); how many
    tables. XNNPACKQuantizer takes linear and convolution layers only, which left a text model's word embeddings, most
    of its weights, in FP32 (an INT8 MiniLM program of 59 MB where ONNX Runtime's is 23)."""
    import functools

    import executorch.kernels.quantized  # noqa: F401 - registers the kernel's out variant for to_executorch
    import torch

    lookups = [n for n in gm.graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.embedding.default
               and n.args[0].op == "get_attr"]
    for i, node in enumerate(lookups):
        table = functools.reduce(getattr, node.args[0].target.split("."), gm).detach().float()
        scale = table.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        gm.register_buffer(f"_int8_table_{i}", torch.round(table / scale[:, None]).clamp(-127, 127).to(torch.int8))
        gm.register_buffer(f"_int8_scale_{i}", scale)
        with gm.graph.inserting_before(node):
            weight, scales = gm.graph.get_attr(f"_int8_table_{i}"), gm.graph.get_attr(f"_int8_scale_{i}")
            lookup = gm.graph.call_function(torch.ops.quantized_decomposed.embedding_byte.default,
                                            (weight, scales, None, -127, 127, node.args[1]))
        node.replace_all_uses_with(lookup)
        gm.graph.erase_node(node)
    if lookups:
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return len(lookups)


#: static INT8 activation ranges: each calibration row's extremes, averaged (ONNX Runtime's moving-average MinMax, NNCF's
#: estimator for activations, ``quantize``'s default for image models), where XNNPACKQuantizer's HistogramObserver
#: searches the range of least L2 error; the graph's outputs keep the extremes of the whole set (averaged, the largest
#: logits, whose order is the prediction, would saturate and tie). docs/benchmarks/cnn-int8.md has the figures. The default,
#: ``auto``, tries :data:`AUTO_METHODS` and keeps the closer.
CALIBRATION_METHOD = "mean-minmax"


def xnnpack_quantizer(*, dynamic: bool, method: str = CALIBRATION_METHOD):
    """ExecuTorch's XNNPACKQuantizer, symmetric with per-channel weights; for static activations with two changes:
    ranges by ``method`` (:data:`CALIBRATION_METHOD` unless asked; ``histogram`` is the quantizer's own), the graph's
    outputs by their extremes, and a convolution's or linear layer's output quantized after the ReLU6 that follows it
    (:func:`quantize_after_clamps`)."""
    import dataclasses

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e import MinMaxObserver

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
    if dynamic:
        return XNNPACKQuantizer().set_global(config)
    ranges = {"mean-minmax": mean_minmax_observer, "minmax": lambda: MinMaxObserver}.get(method)
    act = dataclasses.replace(config.output_activation, observer_or_fake_quant_ctr=ranges().with_args(eps=2**-12)) \
        if ranges else config.output_activation  # histogram: the config's own HistogramObserver
    outputs = dataclasses.replace(config.output_activation,
                                  observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))

    class StaticQuantizer(XNNPACKQuantizer):
        # without the conv-BN patterns of QAT, which cannot match here (prepare_pt2e has folded BatchNorm) and
        # cost twelve torch.export calls, seconds, per prepare
        SUPPORTED_PATTERNS = [p for p in XNNPACKQuantizer.SUPPORTED_PATTERNS if not p.is_qat]
        clamps_fused = 0

        def annotate(self, model):
            model = super().annotate(model)
            self.clamps_fused = quantize_after_clamps(model)
            observe_outputs_with(model, outputs)
            return model

    return StaticQuantizer().set_global(dataclasses.replace(config, input_activation=act, output_activation=act))


#: where PT2E keeps a node's quantization annotation (torchao.quantization.pt2e.quantizer.quantizer.Q_ANNOTATION_KEY)
_ANNOTATION = "quantization_annotation"


def quantize_after_clamps(model) -> int:
    """Move the output quantizer of each convolution or linear layer whose one user is a hardtanh (ReLU6) onto the
    hardtanh; how many moved. XNNPACK fuses the clamp into the layer and requantizes once, so the range that matters
    is the clamped one; XNNPACKQuantizer does this for ReLU only and left ReLU6 sharing the unclamped output's range
    (tens of units wide where [0, 6] is used)."""
    import torch
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    layers = {torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default, torch.ops.aten.linear.default}
    clamps = {torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default}
    moved = 0
    for clamp in model.graph.nodes:
        layer = clamp.args[0] if clamp.op == "call_function" and clamp.target in clamps else None
        annotation = layer.meta.get(_ANNOTATION) if isinstance(layer, torch.fx.Node) else None
        if annotation is None or annotation.output_qspec is None or layer.target not in layers or len(layer.users) != 1:
            continue
        clamp.meta[_ANNOTATION] = QuantizationAnnotation(output_qspec=annotation.output_qspec, _annotated=True)
        annotation.output_qspec = None
        moved += 1
    return moved


def observe_outputs_with(model, spec) -> None:
    """The tensors the graph returns (through views sharing a producer's quantizer) observed with ``spec``."""
    import torch
    from torchao.quantization.pt2e.quantizer import QuantizationSpec, SharedQuantizationSpec

    returned: list = []
    torch.fx.node.map_arg(next(n for n in model.graph.nodes if n.op == "output").args, returned.append)
    for node in returned:
        annotation = node.meta.get(_ANNOTATION)
        while annotation is not None and isinstance(annotation.output_qspec, SharedQuantizationSpec):
            source = annotation.output_qspec.edge_or_node
            annotation = (source if isinstance(source, torch.fx.Node) else source[0]).meta.get(_ANNOTATION)
        if annotation is not None and isinstance(annotation.output_qspec, QuantizationSpec):
            annotation.output_qspec = spec


@functools.cache
def mean_minmax_observer():
    """torchao's MinMaxObserver keeping the mean of each observed tensor's extremes (made once, on first use: torchao
    is imported only here)."""
    import torch
    from torchao.quantization.pt2e import MinMaxObserver

    class MeanMinMaxObserver(MinMaxObserver):
        rows = 0

        def forward(self, x):
            if x.numel() == 0:
                return x
            low, high = torch.aminmax(x.detach().to(self.min_val.dtype))
            seen, self.rows = self.rows, self.rows + 1
            self.min_val.copy_(low if seen == 0 else (self.min_val * seen + low) / self.rows)
            self.max_val.copy_(high if seen == 0 else (self.max_val * seen + high) / self.rows)
            return x

    return MeanMinMaxObserver


def int8_mode(teacher, config: ExportConfig) -> str:
    """static or dynamic: asked for, else dynamic for text and static for other inputs (images: XNNPACK's convolutions
    need it); static needs calibration data."""
    text = input_kind(teacher) == "text"
    mode = str(config.executorch.int8_mode or ("dynamic" if text else "static"))
    if config.executorch.calibration_method and mode != "static":
        raise ConfigError("--calibration-method applies to static INT8 (activations calibrated ahead of time)",
                          hint="add --int8-mode static with --calibration, or drop --calibration-method")
    if mode == "static" and not config.calibration.data:
        raise ConfigError("static INT8 for ExecuTorch needs calibration data",
                          hint="pass --calibration DATA (inputs like the model's: texts, images or arrays)"
                          + (", or --int8-mode dynamic" if text else ""))
    return mode


def input_kind(teacher) -> str:
    """What the teacher reads, from its input description (a checkpoint with a tokenizer has none: text)."""
    from compress.data.inputs import preprocess_kind

    return preprocess_kind(getattr(teacher.info, "preprocess", None))


def delegation_of(edge) -> dict[str, Any]:
    """How much of the graph XNNPACK took: delegated calls, and the operators left to the portable kernels."""
    graph = edge.exported_program().graph_module.graph
    calls = [n for n in graph.nodes if n.op == "call_function"]
    delegated = [n for n in calls if "executorch_call_delegate" in str(n.target)]
    other = sorted({str(n.target).split(".")[1] for n in calls if str(n.target).startswith("aten.")})
    return {"delegate_calls": len(delegated), "portable_operators": other}


def short_error(e: Exception) -> str:
    """An exception as one short line (its type and first 200 characters), for an error message."""
    text = " ".join(str(e).split())
    return (f"{type(e).__name__}: {text}")[:200]


# -- what the phone formats share (ExecuTorch here, LiteRT in compress.stages.export.litert) -----------------------

def load_pytorch_source(source: Path | str, config: ExportConfig, spec):
    """The PyTorch teacher or student a phone format is made from (an artifact is checked against ``spec`` first)."""
    from compress.teachers.load import load_teacher

    source = Path(source)
    if is_artifact(source):
        spec.check(load_artifact(source))
    return load_teacher(source, config.task, allow_pickle=config.allow_pickle,
                        trust_remote_code=config.trust_remote_code)


def describe_program(o, teacher, *, fmt: Format, precision: Precision, model_file: str, library: str,
                     input_shapes: list[list] | None = None, metrics: dict[str, Any] | None = None,
                     max_length: int | None = None):
    """The teacher's inputs saved beside the written program and the program described: the teacher's manifest in
    ``fmt``, its inputs of ``input_shapes`` (default: the teacher's, one row), one row per call out, the teacher's
    lineage carried. ``(manifest, step)``."""
    teacher.save_inputs(o.dir)
    manifest = teacher.manifest()
    manifest.source, prior = teacher.lineage()
    manifest.format, manifest.precision, manifest.model_file = fmt, precision, model_file
    shapes = input_shapes or [[BATCH, *t.shape[1:]] for t in manifest.inputs]
    manifest.inputs = [TensorSpec(name=t.name, dtype=t.dtype, shape=shape) for t, shape in zip(manifest.inputs, shapes)]
    manifest.outputs = [TensorSpec(name=t.name, dtype=t.dtype, shape=[BATCH, *t.shape[1:]])
                        for t in manifest.outputs[:1]]
    if max_length is not None:
        manifest.max_length = max_length
    manifest.files = {}
    manifest.versions = library_versions(library)
    step = o.describe(manifest, input_digest=teacher.sha256, lineage=prior, metrics=metrics)
    return manifest, step


def check_parity(o, teacher, manifest, step, config: ExportConfig, what: str, *, strict: bool):
    """The written program in its own runtime against PyTorch FP32 on the parity samples, recorded; with ``strict``,
    a difference beyond ``--atol`` fails and nothing is written."""
    from compress.data.inputs import sample_inputs
    from compress.runtimes.base import load_runtime
    from compress.runtimes.torch_backend import TorchBackend
    from compress.stages.common import measure_parity

    samples = sample_inputs(config.sample_data, config.parity_samples, manifest.preprocess)
    parity = measure_parity(TorchBackend.from_teacher(teacher), load_runtime(o.draft()), samples,
                            manifest.labels is not None)
    step.metrics["parity"] = {**parity.as_dict(), "atol": config.atol, "reference": "PyTorch FP32",
                              "enforced": strict}  # an INT8 program's difference is recorded, not held to --atol
    if strict and not parity.max_abs_diff <= config.atol:
        raise ParityError(f"the {what} differs from PyTorch FP32 by {parity.max_abs_diff:.3g} (allowed "
                          f"{config.atol:g}) on {parity.n} samples", max_abs_diff=parity.max_abs_diff,
                          atol=config.atol, hint="raise --atol if the difference is acceptable; no artifact was written")
    return parity


def export_executorch(source: Path | str, out: Path | str, config: ExportConfig, *, force: bool = False) -> Artifact:
    """Export ``source`` (a teacher checkpoint or a pytorch artifact) to an ExecuTorch program at ``out``."""
    from compress._optional import require

    require("executorch", "ExecuTorch export (pip install 'edgecompress[executorch]')")
    output = EXPORT_EXECUTORCH.output(out, config, force=force)
    teacher = load_pytorch_source(source, config, EXPORT_EXECUTORCH)
    precision = Precision.int8 if config.precision is not None and config.precision.value == "int8" else Precision.fp32
    if precision is Precision.int8:
        int8_mode(teacher, config)  # refused before any work
    with output.writing() as o:
        record = lower(teacher, config, o.dir / PROGRAM_FILE)
        manifest, step = describe_program(o, teacher, fmt=Format.executorch, precision=precision,
                                          model_file=PROGRAM_FILE, library="executorch", metrics=record)
        step.metrics["exported_from"] = str(Path(source).resolve())
        parity = check_parity(o, teacher, manifest, step, config, "ExecuTorch program",
                              strict=precision is Precision.fp32)
    log.info("wrote %s (%s, parity max |diff| %.2e)", output.path, precision, parity.max_abs_diff)
    return output.artifact
