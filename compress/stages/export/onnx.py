"""Export a teacher checkpoint to ONNX with PyTorch's exporter (or Optimum's), optimise it, and prove FP32 parity.

The default exporter is PyTorch's own ``torch.onnx.export``: it works with transformers 4 and 5 alike and
gives the graph Optimum gives (Optimum calls the same TorchScript exporter), with nodes named by module
(``/bert/encoder/layer.0/attention/self/query/MatMul``), which ``--exclude-nodes`` and the quantize reports
use. ``--exporter dynamo`` uses ``torch.export`` (``dynamo=True``; needs ``onnxscript``); its nodes carry
generated names. ``--exporter optimum`` keeps Optimum's exporter for the architectures it knows and
this package does not (``pip install edgecompress[optimum]``; optimum-onnx needs transformers < 4.58).
``--optimize O1/O2`` runs ONNX Runtime's transformer optimizer directly, whichever exporter wrote the graph.
"""


from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from compress.artifact import (
    Artifact,
    Format,
    Precision,
    child_manifest,
    copy_tokenizer_files,
    is_artifact,
    library_versions,
    load_artifact,
)
from compress.artifact_entries import TensorSpec
from compress.data.inputs import sample_inputs
from compress.errors import ConfigError, EdgeCompressError, ModelLoadError, ParityError, StageError
from compress.stages.common import measure_parity
from compress.stages.export.config import (
    EXPORT_ONNX,
    EXPORT_OPENVINO,
    ExportConfig,
    Exporter,
    ExportFormat,
    GraphOptimization,
)

log = logging.getLogger(__name__)

def _graph_specs(model_path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    import onnx

    from compress.teachers.model_files import graph_specs

    return graph_specs(model_path, onnx.load(str(model_path), load_external_data=False))


def _raise_if_storage(e: Exception) -> None:
    """A full disk or an unwritable location is the user's environment, not the architecture."""
    from compress.storage import storage_error

    env = storage_error(e)
    if env is not None:
        raise env from e


def _onnx_export(teacher, directory: Path, config: ExportConfig, optimize: GraphOptimization) -> Path:
    """Export a loaded teacher into ``directory`` with ``config.exporter``; returns the model file."""
    log.info("exporting %s to ONNX with the %s exporter (opset %d, optimisation %s)",
             teacher.path, config.exporter, config.opset, optimize)
    model_file = directory / "model.onnx"
    try:
        if config.exporter is Exporter.optimum:
            _optimum_export(teacher, directory, config, optimize)
        else:
            _torch_export(teacher, model_file, config)
            if optimize is not GraphOptimization.none:
                _ort_optimize(teacher, model_file, optimize)
    except EdgeCompressError:
        raise
    except Exception as e:
        _raise_if_storage(e)
        other = "torch" if config.exporter is not Exporter.torch else "dynamo"
        raise StageError(
            f"ONNX export of {teacher.info.architecture} with the {config.exporter} exporter failed: "
            f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}",
            hint=f"try --exporter {other}, or --exporter optimum where Optimum supports the architecture "
            "(pip install edgecompress[optimum]); --debug shows the exporter's traceback",
        ) from e
    if not model_file.is_file():
        raise StageError("the exporter wrote no model.onnx", hint="rerun with --debug and report it")
    return model_file


def _torch_export(teacher, model_file: Path, config: ExportConfig) -> None:
    """PyTorch's exporter: the model's inputs with dynamic axes (batch, and sequence for text), one named output.

    The teacher says what the graph takes (``example_inputs``, in ``forward``'s order), which axes are dynamic and
    how its output is read (``call``). A ``torch.export`` program is exported from its own graph."""
    import inspect
    import warnings

    import torch

    primary = teacher.primary_output
    outputs = list(getattr(teacher, "output_names", [primary]))  # a QA head: start and end logits
    example = teacher.example_inputs()
    names = list(example)
    args = tuple(example.values())
    kind = getattr(teacher.info, "kind", None)
    if kind in ("program", "module", "timm"):
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if kind == "program":
                _program_export(teacher, model_file, config, names, args)
            else:  # a timm model, TorchScript or a pickled module (opted in): PyTorch's exporter on the module
                torch.onnx.export(teacher.model, args, str(model_file), input_names=names,
                                  output_names=[primary], opset_version=config.opset, dynamo=False,
                                  do_constant_folding=True, dynamic_axes=teacher.dynamic_axes())
        return
    model = teacher.model.eval()
    original = model.forward

    # The exporter sees a forward taking exactly the graph's inputs, positionally: the TorchScript exporter
    # otherwise fills every defaulted parameter in positionally (transformers 5's `use_cache` handling then
    # fails), and a ModelOutput is reduced to the primary tensor by a forward hook. The module itself is
    # exported (not a wrapper), so node names follow its own hierarchy.
    def forward(*args):
        return original(**dict(zip(names, args)))

    forward.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
    )
    model.forward = forward
    hook = model.register_forward_hook(
        lambda _m, _i, out: (out,) if torch.is_tensor(out) else tuple(out[n] for n in outputs))
    axes = teacher.dynamic_axes()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about constants in mask code: parity decides
            if config.exporter is Exporter.dynamo:
                from compress._optional import require

                require("onnxscript", "the dynamo ONNX exporter")
                shapes = {n: {i: torch.export.Dim(a) for i, a in axes[n].items()} for n in names}
                program = torch.onnx.export(
                    model, args, None, input_names=names, output_names=outputs, opset_version=config.opset,
                    dynamo=True, external_data=False, dynamic_shapes=shapes,
                )
                program.save(str(model_file))
            else:
                torch.onnx.export(
                    model, args, str(model_file), input_names=names, output_names=outputs,
                    opset_version=config.opset, dynamo=False, do_constant_folding=True, dynamic_axes=axes,
                )
    finally:
        hook.remove()
        del model.forward


def _program_export(teacher, model_file: Path, config: ExportConfig, names: list[str], args: tuple) -> None:
    """A ``torch.export`` program to ONNX straight from the program (``torch.onnx.export(program, dynamo=True)``):
    its graph and dynamic dimensions are what it was exported with; the TorchScript exporter cannot run an
    exported program's module (it has no train/eval modes)."""
    import torch

    from compress._optional import require
    from compress.teachers.programs import load_program

    require("onnxscript", "exporting a torch.export program to ONNX")
    program = load_program(teacher.path / teacher.info.weights[0] if teacher.path.is_dir() else teacher.path)
    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch.onnx._internal.exporter._registration", "onnxscript")]
    levels = [q.level for q in quiet]
    for q in quiet:  # "torchvision is not installed" and the exporter's progress lines: edgecompress reports its own
        q.setLevel(logging.ERROR)
    try:
        outputs = [t.name for t in getattr(teacher.info, "outputs", [])] or [teacher.primary_output]
        onnx_program = torch.onnx.export(program, args, None, input_names=names, output_names=outputs,
                                         opset_version=config.opset, dynamo=True, external_data=False, verbose=False)
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    onnx_program.save(str(model_file))


#: ONNX Runtime transformer-optimizer model types, by Hugging Face ``model_type`` (encoder families).
_ORT_MODEL_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert",
                    "electra": "bert", "mpnet": "bert", "camembert": "bert", "deberta-v2": "bert"}


def _ort_optimize(teacher, model_file: Path, level: GraphOptimization) -> None:
    """ONNX Runtime's transformer optimizer in place, at Optimum's levels: O1 basic rewrites (ONNX Runtime
    only), O2 adds the transformer fusions (attention, LayerNorm, GELU; embedding LayerNorm left alone)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    cfg = teacher.info.config
    model_type = cfg.get("model_type", "bert")
    if level is GraphOptimization.O1:
        opt = optimize_model(str(model_file), model_type="bert", opt_level=1, only_onnxruntime=True)
    else:
        if model_type not in _ORT_MODEL_TYPES:
            raise ConfigError(
                f"--optimize O2 has no ONNX Runtime fusions for model type {model_type!r}",
                hint=f"use --optimize none (ONNX Runtime fuses at session creation anyway) or O1; O2 knows "
                f"{', '.join(sorted(_ORT_MODEL_TYPES))}",
            )
        kind = _ORT_MODEL_TYPES[model_type]
        options = FusionOptions(kind)
        options.enable_embed_layer_norm = False
        heads = int(cfg.get("num_attention_heads") or cfg.get("n_heads") or 0)
        hidden = int(cfg.get("hidden_size") or cfg.get("dim") or 0)
        opt = optimize_model(str(model_file), model_type=kind, num_heads=heads, hidden_size=hidden, opt_level=2,
                             optimization_options=options, only_onnxruntime=False)
    opt.save_model_to_file(str(model_file))


def _optimum_export(teacher, directory: Path, config: ExportConfig, optimize: GraphOptimization) -> None:
    from compress._optional import require

    require("optimum", "--exporter optimum")
    from optimum.exporters.onnx import onnx_export_from_model

    onnx_export_from_model(
        teacher.model,
        output=str(directory),
        task=str(teacher.task),
        opset=config.opset,
        optimize=None if optimize is GraphOptimization.none else str(optimize),
        do_validation=False,
    )


def _to_openvino(onnx_file: Path, directory: Path) -> Path:
    """Convert an ONNX file to OpenVINO IR (model.xml + model.bin, FP32 weights) in ``directory``."""
    import openvino as ov

    try:
        model = ov.convert_model(str(onnx_file))
    except Exception as e:
        _raise_if_storage(e)
        raise StageError(
            f"OpenVINO cannot convert {onnx_file}: {type(e).__name__}: {str(e).strip().splitlines()[0]}",
            hint="export from the teacher checkpoint, or an ONNX artifact made with --optimize none "
            "(ONNX Runtime's fused operators are not standard ONNX)",
        ) from e
    xml = directory / "model.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml


#: largest per-value difference allowed between the teacher's image processor and the pinned preprocessing
PREPROCESS_ATOL = 1e-3


def _processor_agreement(teacher) -> dict:
    """Run the teacher's own image processor and the manifest's preprocessing on images of odd sizes (so resize and
    crop are exercised); a difference above :data:`PREPROCESS_ATOL` fails the export."""
    import numpy as np

    from compress.teachers.image_processors import processor_agreement

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((37, 53), (64, 41), (96, 96), (23, 120))]
    agreement = processor_agreement(teacher.processor, teacher.info.preprocess, images)
    agreement["atol"] = PREPROCESS_ATOL
    if not agreement["max_abs_diff"] <= PREPROCESS_ATOL:
        raise ParityError(
            f"the pinned preprocessing differs from the teacher's image processor by {agreement['max_abs_diff']:.3g} "
            f"(allowed {PREPROCESS_ATOL:g})", max_abs_diff=agreement["max_abs_diff"], atol=PREPROCESS_ATOL,
            hint="the processor uses a setting edgecompress does not reproduce; describe the preprocessing in the "
            "model's YAML or fix preprocessor_config.json; no artifact was written")
    return agreement


def export_onnx(
    source: Path | str,
    out: Path | str,
    config: ExportConfig | None = None,
    *,
    force: bool = False,
) -> Artifact:
    """Export ``source`` to a new artifact at ``out`` in ``config.format``.

    ``source`` is a teacher checkpoint (or a pytorch artifact); for ``--format openvino`` it may also be
    an FP32 ONNX artifact. The result must match its reference (the PyTorch teacher, or the source
    ONNX model in ONNX Runtime) within ``config.atol`` on the parity samples, else nothing is written.
    """
    from compress._optional import require
    from compress.runtimes.base import load_runtime
    from compress.teachers.load import load_teacher

    config = config or ExportConfig()
    spec = EXPORT_OPENVINO if config.format is ExportFormat.openvino else EXPORT_ONNX
    output = spec.output(out, config, force=force)
    out = output.path
    source = Path(source)
    teacher_dir = source
    source_art = None
    prior = None  # manifest of a pytorch-format source artifact
    if is_artifact(source):
        source_art = load_artifact(source)
        spec.check(source_art)
        if source_art.format is Format.pytorch:  # e.g. a distilled or pruned student: keep its lineage
            prior = source_art.manifest
            teacher_dir, source_art = source_art.path, None
    if Path(out).resolve() == source.resolve():
        raise ConfigError("--out is the source directory", hint="choose a new directory for the artifact")
    if config.format is ExportFormat.openvino:
        require("openvino", "OpenVINO export")
    teacher = None
    if source_art is None:
        teacher = load_teacher(
            teacher_dir, config.task, allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code
        )
    require("onnxruntime", "checking the exported model")
    from compress.runtimes.ort_backend import OrtBackend
    from compress.runtimes.torch_backend import TorchBackend
    from compress.storage import tree_bytes

    need = tree_bytes(teacher_dir if source_art is None else source_art.path)  # FP32: about the source's size
    if source_art is None and config.format is ExportFormat.openvino:
        need *= 2  # the intermediate ONNX is written beside it
    with output.writing(need_bytes=need) as o:
        tmp = o.dir
        if config.format is ExportFormat.onnx:
            model_file = _onnx_export(teacher, tmp, config, config.optimize)
            inputs, outputs = _graph_specs(model_file)
        else:
            if source_art is not None:
                onnx_file = source_art.model_path
                inputs, outputs = source_art.manifest.inputs, source_art.manifest.outputs
                model_file = _to_openvino(onnx_file, tmp)
            else:
                with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=".onnx-for-ov.") as scratch:
                    onnx_file = _onnx_export(teacher, Path(scratch), config, GraphOptimization.none)
                    inputs, outputs = _graph_specs(onnx_file)
                    model_file = _to_openvino(onnx_file, tmp)
        if teacher is not None:
            teacher.save_inputs(tmp)
            manifest = teacher.manifest()
            if prior is not None:
                manifest.source, manifest.steps = prior.source, list(prior.steps)
            outputs = sorted(outputs, key=lambda s: s.name != teacher.primary_output)
            input_digest = teacher.sha256
        else:
            copy_tokenizer_files(source_art.path, tmp)
            manifest = child_manifest(source_art.manifest)
            input_digest = source_art.digest
        manifest.format = Format(config.format.value)
        manifest.precision = Precision.fp32
        manifest.model_file = model_file.name
        manifest.inputs = list(inputs)
        manifest.outputs = list(outputs)
        manifest.versions = library_versions("openvino") if config.format is ExportFormat.openvino else library_versions()
        step = o.describe(manifest, input_digest=input_digest, lineage=manifest.steps)
        texts = sample_inputs(config.sample_data, config.parity_samples, manifest.preprocess)
        candidate = load_runtime(o.draft())
        if teacher is not None:
            reference, ref_name = TorchBackend.from_teacher(teacher), "PyTorch FP32"
        else:
            reference, ref_name = OrtBackend(source_art), "ONNX FP32 in ONNX Runtime"
        parity = measure_parity(reference, candidate, texts, manifest.labels is not None)
        shown = texts if isinstance(texts[0], str) else f"{len(texts)} seeded noise images at the input size"
        step.metrics["parity"] = {**parity.as_dict(), "atol": config.atol, "reference": ref_name, "texts": shown}
        if teacher is not None:  # the PyTorch model itself (a student's own directory): what QAD trains
            step.metrics["exported_from"] = str(Path(teacher_dir).resolve())
        if getattr(teacher, "processor", None) is not None:  # our preprocessing against the teacher's own
            step.metrics["preprocess_agreement"] = _processor_agreement(teacher)
        if not parity.reference_finite:  # no tolerance helps: the source itself is broken
            raise ModelLoadError(
                f"{source}: the model's weights hold NaN or Inf: its own outputs ({ref_name}) are not finite, so no "
                "export can match them", hint="re-save or re-download the checkpoint (check the training run that "
                "wrote it); no artifact was written")
        if not parity.max_abs_diff <= config.atol:
            raise ParityError(
                f"{config.format} output differs from {ref_name} by {parity.max_abs_diff:.3g} "
                f"(allowed {config.atol:g}) on {parity.n} samples",
                max_abs_diff=parity.max_abs_diff,
                atol=config.atol,
                hint="try --optimize none or another --opset; no artifact was written",
            )
    log.info("wrote %s (parity max |diff| %.2e)", out, parity.max_abs_diff)
    return output.artifact
