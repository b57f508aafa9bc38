"""``export --format tensorrt --via torch-tensorrt``: a PyTorch model compiled by Torch-TensorRT.

The teacher (or a pytorch artifact such as a distilled/pruned student) is wrapped so that it takes the
tokenizer's inputs as keyword tensors and returns one tensor (logits, or the last hidden state of an
encoder), captured with ``torch.export`` with dynamic batch and sequence axes bounded by the same
min/opt/max shapes as the ONNX path (:func:`compress.stages.export.tensorrt.resolve_shapes`), compiled with
``torch_tensorrt.dynamo.compile`` (FP16 by autocast, or by the FP16 precision flag on Torch-TensorRT
releases without autocast) and saved as an ExportedProgram (``model.pt2``) whose TensorRT engines are
embedded. Subgraphs TensorRT cannot convert stay in PyTorch, inside the same program.

The program is checked against the PyTorch FP32 model on the GPU before anything is written, and the
manifest ``target`` records the TensorRT and Torch-TensorRT versions, GPU and compute capability: the
embedded engines are bound to them like a ``model.plan``.

Everything except ``torch_tensorrt.dynamo.compile`` itself (capture, shapes, saving, loading, running a
saved program: :class:`ProgramRunner`) runs on the CPU too and is tested there; the compile step needs
Torch-TensorRT, TensorRT and an NVIDIA GPU.

INT8 is not offered on this path: Torch-TensorRT quantizes only models already quantized with NVIDIA
ModelOpt. ``--via onnx --precision int8`` (explicit QDQ, no calibrator) is the INT8 route.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

from compress.artifact import Artifact, Format, Precision, is_artifact, library_versions, load_artifact
from compress.artifact_entries import TensorSpec
from compress.data.inputs import sample_texts
from compress.errors import ConfigError, MissingBackendError, StageError, first_line
from compress.runtimes.torch_tensorrt_program import ProgramRunner, install_hint
from compress.stages.export.config import EXPORT_TORCH_TENSORRT, ExportConfig, TrtPrecision
from compress.tasks.embeddings import pooling_of

log = logging.getLogger(__name__)

PROGRAM = "model.pt2"

Shape = tuple[int, int]


def check_request(config: ExportConfig, device: str = "cuda:0") -> None:
    """Refuse what this path does not do, and a machine that cannot run it, before any work."""
    from compress._optional import is_available

    if config.tensorrt.dry_run:
        raise ConfigError(
            "--dry-run writes TensorRT-ready ONNX, which --via torch-tensorrt does not use",
            hint="drop --dry-run (the build needs torch-tensorrt and a GPU), or use --via onnx --dry-run",
        )
    if config.precision is TrtPrecision.int8 or config.calibration.data:
        raise ConfigError(
            "--via torch-tensorrt builds FP16 engines; Torch-TensorRT's INT8 needs a model quantized with NVIDIA "
            "ModelOpt, which edgecompress does not make",
            hint="use --via onnx --precision int8 --calibration DATA (explicit QDQ, no calibrator)",
        )
    if not is_available("torch_tensorrt"):
        raise MissingBackendError(
            "torch_tensorrt is not installed (needed for --via torch-tensorrt)",
            hint=f"install it with: {install_hint()}, or use --via onnx",
        )
    _check_device(device)


def _check_device(device: str) -> None:
    from compress.runtimes.tensorrt_backend import check_cuda, cuda_device

    check_cuda(cuda_device(device), "--via torch-tensorrt")


# ---------------------------------------------------------------------------------------------
# Capture (CPU or GPU)
# ---------------------------------------------------------------------------------------------


KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def output_module(model: Any, input_names: list[str]):
    """``model`` as a module taking the tokenizer's inputs by keyword and returning one tensor.

    The forward has named parameters (torch.export cannot give shapes to ``**kwargs``); an input the
    tokenizer does not produce stays None and is not passed to the model.
    """
    import torch

    unknown = [n for n in input_names if n not in KNOWN_INPUTS]
    if unknown or "input_ids" not in input_names:
        raise ConfigError(f"--via torch-tensorrt handles the inputs {', '.join(KNOWN_INPUTS)}; this tokenizer gives "
                          f"{', '.join(input_names)}", hint="use --via onnx (the default)")

    class OutputOf(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask=None, token_type_ids=None):
            given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            out = self.model(**{k: v for k, v in given.items() if v is not None}, return_dict=True)
            return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state

    return OutputOf().eval()


def example_inputs(input_names: list[str], shapes: dict[str, Shape], device: str = "cpu") -> dict[str, Any]:
    """Tensors at the opt shape (at least 2 on a dynamic axis: torch.export specialises sizes 0 and 1)."""
    import torch

    lo, opt, hi = shapes["min"], shapes["opt"], shapes["max"]
    shape = tuple(o if a == b else min(max(o, 2), b) for a, o, b in zip(lo, opt, hi))
    out = {}
    for n in input_names:
        t = torch.ones(shape, dtype=torch.int64, device=device)
        out[n] = torch.zeros_like(t) if n == "token_type_ids" else t
    return out


def dynamic_shapes(input_names: list[str], shapes: dict[str, Shape]) -> dict[str, Any] | None:
    """One shared batch Dim and one shared sequence Dim for every input; None when the shape is static."""
    from torch.export import Dim

    lo, hi = shapes["min"], shapes["max"]
    if lo == hi:
        return None
    axes = {}
    if lo[0] != hi[0]:
        axes[0] = Dim("batch", min=lo[0], max=hi[0])
    if lo[1] != hi[1]:
        axes[1] = Dim("sequence", min=lo[1], max=hi[1])
    return {n: dict(axes) for n in input_names}


def capture(model: Any, input_names: list[str], shapes: dict[str, Shape], device: str = "cpu"):
    """``torch.export`` of :func:`output_module` over the min..max shapes; returns (program, examples, dims)."""
    import torch

    module = output_module(model, input_names)
    examples = example_inputs(input_names, shapes, device)
    dims = dynamic_shapes(input_names, shapes)
    try:
        with torch.no_grad():
            program = torch.export.export(module, (), kwargs=examples, dynamic_shapes=dims)
    except Exception as e:
        first = first_line(e, default="")
        raise StageError(
            f"torch.export could not capture the model for Torch-TensorRT: {type(e).__name__}: {first}",
            hint="use --via onnx (the default), or a static --shape BxS",
        ) from e
    return program, examples, dims


# ---------------------------------------------------------------------------------------------
# Compile and save (Torch-TensorRT + GPU)
# ---------------------------------------------------------------------------------------------


def compile_program(program: Any, input_names: list[str], shapes: dict[str, Shape], timing_cache: Path,
                    device: str = "cuda:0"):
    """``torch_tensorrt.dynamo.compile`` in FP16 over one optimisation profile (min/opt/max per input)."""
    import torch
    import torch_tensorrt

    inputs = {
        n: torch_tensorrt.Input(min_shape=shapes["min"], opt_shape=shapes["opt"], max_shape=shapes["max"],
                                dtype=torch.int64, name=n)
        for n in input_names
    }
    params = inspect.signature(torch_tensorrt.dynamo.compile).parameters
    kwargs: dict[str, Any] = {"kwarg_inputs": inputs, "arg_inputs": (), "device": device,
                              "timing_cache_path": str(timing_cache), "min_block_size": 1}
    if "enable_autocast" in params:  # 2.10+: explicit typing; FP16 by autocast (reductions kept in FP32)
        kwargs.update(enable_autocast=True, autocast_low_precision_type=torch.float16)
    else:  # older releases: the FP16 precision flag
        kwargs["enabled_precisions"] = {torch.float16, torch.float32}
    kwargs = {k: v for k, v in kwargs.items() if k in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())}
    try:
        return torch_tensorrt.dynamo.compile(program, **kwargs)
    except Exception as e:
        first = first_line(e, default="")
        raise StageError(f"Torch-TensorRT could not compile the model: {type(e).__name__}: {first}",
                         hint="rerun with --debug for the log, or use --via onnx") from e


def save_program(module: Any, path: Path, examples: dict[str, Any]) -> None:
    """Save a compiled module as an ExportedProgram with its TensorRT engines embedded.

    ``retrace=False``: Torch-TensorRT's exporter rewrites the compiled graph as it is (its symbolic batch
    and sequence sizes included) instead of tracing it again.
    """
    import torch_tensorrt

    torch_tensorrt.save(module, str(path), output_format="exported_program", kwarg_inputs=examples, retrace=False)


# ---------------------------------------------------------------------------------------------
# Running a saved program (used by the tensorrt runtime for model.pt2)
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def _facts(device: str) -> dict[str, Any]:
    """What the embedded engines are bound to: TensorRT and Torch-TensorRT versions, GPU, compute capability."""
    import tensorrt as trt
    import torch
    import torch_tensorrt

    facts = {"tensorrt_version": trt.__version__, "torch_tensorrt_version": torch_tensorrt.__version__,
             "compute_capability": None, "gpu_name": None}
    if torch.device(device).type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        facts.update(compute_capability=f"{major}.{minor}", gpu_name=torch.cuda.get_device_name(device))
    return facts


def export_torch_tensorrt(source: Path | str, out: Path | str, config: ExportConfig, *, force: bool = False,
                          device: str = "cuda:0") -> Artifact:
    """A ``tensorrt`` artifact (``model.pt2``) compiled by Torch-TensorRT from a PyTorch ``source``.

    ``source``: a teacher checkpoint or a pytorch artifact (its lineage is kept). ``device``: the CUDA
    device that compiles and checks it (``cuda:N``); the engines run only on that GPU model.
    """
    import torch

    from compress.device.shipped import pool
    from compress.runtimes.base import RuntimeSettings
    from compress.runtimes.torch_backend import TorchBackend
    from compress.stages.export.tensorrt_shapes import TIMING_CACHE, compare_in_range, require_agreement, resolve_shapes
    from compress.teachers.load import load_teacher

    check_request(config, device)
    output = EXPORT_TORCH_TENSORRT.output(out, config, force=force)
    out = output.path
    source = Path(source)
    if out.resolve() == source.resolve():
        raise ConfigError("--out is the source directory", hint="choose a new directory for the artifact")
    prior = None
    if is_artifact(source):
        art = load_artifact(source)
        EXPORT_TORCH_TENSORRT.check(art)
        prior = art.manifest
    teacher = load_teacher(source, config.task, allow_pickle=config.allow_pickle,
                           trust_remote_code=config.trust_remote_code)
    with output.writing() as o:
        tmp = o.dir
        manifest = teacher.manifest()
        if prior is not None:
            manifest.source, manifest.steps = prior.source, list(prior.steps)
        shapes = resolve_shapes(config, manifest.max_length)
        names = teacher.input_names
        # the FP32 reference on the device; its model (a copy there) is also what gets captured
        reference = TorchBackend.from_teacher(teacher, RuntimeSettings(provider=device))
        log.info("torch.export over min %s / opt %s / max %s", shapes["min"], shapes["opt"], shapes["max"])
        program, examples, _ = capture(reference.model, names, shapes, device)
        timing_cache = Path(config.tensorrt.timing_cache) if config.tensorrt.timing_cache else tmp / TIMING_CACHE
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        compiled = compile_program(program, names, shapes, timing_cache, device)
        save_program(compiled, tmp / PROGRAM, examples)
        teacher.tokenizer.save_pretrained(str(tmp))
        shape_rec = {k: {n: list(v) for n in names} for k, v in shapes.items()}
        manifest.format = Format.tensorrt
        manifest.precision = Precision.fp16
        manifest.model_file = PROGRAM
        static = shapes["min"] == shapes["max"]
        manifest.inputs = [TensorSpec(name=n, dtype="int64", shape=list(shapes["min"]) if static else
                                      ["batch_size", "sequence_length"]) for n in names]
        manifest.versions = library_versions("tensorrt", "torch_tensorrt")
        manifest.target = {**_facts(device), "precision": "fp16", "shapes": shape_rec, "static": static,
                           "builder": "torch-tensorrt"}
        step = o.describe(manifest, input_digest=teacher.sha256, lineage=manifest.steps)
        o.draft()

        # the compiled program must agree with the PyTorch FP32 model on the same GPU
        texts = sample_texts(config.sample_data, max(config.parity_samples, 16, shapes["min"][0]))
        runner = ProgramRunner(tmp / PROGRAM, device, shape_rec)
        pooling, normalize = pooling_of(manifest.postprocess)

        def candidate(batch):
            out = runner.run(batch)
            return pool(out, batch["attention_mask"], pooling, normalize) if pooling else out

        parity = compare_in_range(reference, candidate, texts, shapes, manifest.labels is not None)
        reference.close()
        if parity is None:
            raise ConfigError(f"the parity check needs at least {shapes['min'][0]} texts (the smallest batch); "
                              f"{config.sample_data} has {len(texts)}", hint="pass a larger --sample-data file")
        step.metrics["parity"] = {**parity.as_dict(), "reference": "PyTorch FP32 on the same GPU"}
        require_agreement(parity, "the Torch-TensorRT FP16 program", "PyTorch FP32",
                          "use --via onnx --precision fp16, or report it")
        del compiled, program
        torch.cuda.empty_cache()
    log.info("wrote %s (Torch-TensorRT program)", out)
    return output.artifact
