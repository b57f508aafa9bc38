"""Export a teacher checkpoint to ONNX with Optimum's exporter, optimise it, and prove FP32 parity."""

from __future__ import annotations

import logging
import time
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from compress.artifact import (
    Artifact,
    Format,
    StepRecord,
    Task,
    TensorSpec,
    check_output,
    digest_dir,
    is_artifact,
    library_versions,
    load_artifact,
    staged_dir,
    write_manifest,
)
from compress.errors import ArtifactError, ConfigError, ParityError, StageError
from compress.stages.common import compare_outputs, sample_texts

log = logging.getLogger(__name__)

CONFIG_VERSION = 1


class ExportFormat(StrEnum):
    onnx = "onnx"


class GraphOptimization(StrEnum):
    none = "none"
    O1 = "O1"
    O2 = "O2"


class ExportConfig(BaseModel):
    """Settings of ``edgecompress export``."""

    model_config = ConfigDict(extra="forbid")

    format: ExportFormat = Field(ExportFormat.onnx, description="Target format.")
    task: Task | None = Field(None, description="Task; inferred from the checkpoint's architecture when omitted.")
    opset: int = Field(
        18, ge=14, le=23,
        description="ONNX opset. 18 is Optimum's recommended minimum for transformers and runs in "
        "ONNX Runtime, OpenVINO and TensorRT 10.",
    )
    optimize: GraphOptimization = Field(
        GraphOptimization.O2,
        description="ONNX Runtime transformer graph optimisation (Optimum levels): O1 basic, O2 adds "
        "attention/LayerNorm/GELU fusions (exact math, onnxruntime-only ops), none keeps plain ONNX "
        "for other runtimes.",
    )
    atol: float = Field(
        1e-4, gt=0,
        description="Largest absolute difference allowed between PyTorch and ONNX outputs (logits or "
        "pooled embeddings) on the parity samples; beyond it the export fails.",
    )
    parity_samples: int = Field(8, ge=1, le=512, description="Number of texts in the parity check.")
    sample_data: str | None = Field(None, description="Data file whose first texts are the parity samples.")
    allow_pickle: bool = Field(False, description="Allow loading pickled (.bin) weights.")
    trust_remote_code: bool = Field(False, description="Allow a checkpoint's own Python code to run.")


def _graph_specs(model_path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph

    def spec(v) -> TensorSpec:
        t = v.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
        return TensorSpec(name=v.name, dtype=dtype, shape=dims)

    return [spec(v) for v in graph.input], [spec(v) for v in graph.output]


def export(
    source: Path | str,
    out: Path | str,
    config: ExportConfig | None = None,
    *,
    force: bool = False,
) -> Artifact:
    """Export ``source`` (a teacher checkpoint or a pytorch artifact) to a new ONNX artifact at ``out``."""
    from compress._optional import require
    from compress.models import load_teacher

    config = config or ExportConfig()
    out = check_output(out, force)
    source = Path(source)
    teacher_dir = source
    if is_artifact(source):
        art = load_artifact(source)
        if art.format is not Format.pytorch:
            raise ArtifactError(
                f"{source} is already a {art.format} artifact", hint="export starts from a teacher checkpoint"
            )
        teacher_dir = art.path
    if Path(out).resolve() == teacher_dir.resolve():
        raise ConfigError("--out is the teacher directory", hint="choose a new directory for the artifact")
    teacher = load_teacher(
        teacher_dir, config.task, allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code
    )
    require("optimum", "ONNX export")
    require("onnxruntime", "checking the exported model")
    from optimum.exporters.onnx import onnx_export_from_model

    from compress.runtimes.ort_backend import OrtBackend
    from compress.runtimes.torch_backend import TorchBackend

    t0 = time.perf_counter()
    with staged_dir(out, force) as tmp:
        log.info("exporting %s to ONNX (opset %d, optimisation %s)", teacher_dir, config.opset, config.optimize)
        try:
            onnx_export_from_model(
                teacher.model,
                output=str(tmp),
                task=str(teacher.task),
                opset=config.opset,
                optimize=None if config.optimize is GraphOptimization.none else str(config.optimize),
                do_validation=False,
            )
        except Exception as e:  # noqa: BLE001 - the exporter raises many types
            raise StageError(
                f"ONNX export of {teacher.info.architecture} failed: {type(e).__name__}: {str(e).splitlines()[0]}",
                hint="check that optimum supports this architecture (`optimum-cli export onnx --help`)",
            ) from e
        model_file = "model.onnx"
        if not (tmp / model_file).is_file():
            raise StageError(f"the exporter wrote no {model_file}", hint="rerun with --debug and report it")
        teacher.tokenizer.save_pretrained(str(tmp))
        inputs, outputs = _graph_specs(tmp / model_file)
        primary = "logits" if teacher.task is Task.text_classification else "last_hidden_state"
        outputs.sort(key=lambda s: s.name != primary)

        manifest = teacher.manifest()
        manifest.format = Format.onnx
        manifest.model_file = model_file
        manifest.inputs = inputs
        manifest.outputs = outputs
        manifest.versions = library_versions()
        step = StepRecord(
            stage="export",
            config=config.model_dump(mode="json"),
            config_version=CONFIG_VERSION,
            versions={k: manifest.versions.get(k) for k in ("optimum", "onnx", "onnxruntime", "torch", "transformers")},
            input_digest=teacher.sha256,
        )
        manifest.steps = [step]
        write_manifest(tmp, manifest)

        texts = sample_texts(config.sample_data, config.parity_samples)
        candidate = OrtBackend(Artifact(tmp, manifest))
        reference = TorchBackend.from_teacher(teacher)
        batch = reference.encode(texts)
        parity = compare_outputs(reference.predict(batch), candidate.predict(batch), teacher.task is Task.text_classification)
        candidate.close()
        step.metrics["parity"] = {**parity.as_dict(), "atol": config.atol, "reference": "pytorch fp32", "texts": texts}
        if not parity.max_abs_diff <= config.atol:
            raise ParityError(
                f"ONNX output differs from PyTorch by {parity.max_abs_diff:.3g} (allowed {config.atol:g}) "
                f"on {parity.n} samples",
                max_abs_diff=parity.max_abs_diff,
                atol=config.atol,
                hint="try --optimize none or another --opset; no artifact was written",
            )
        step.seconds = round(time.perf_counter() - t0, 3)
        step.output_digest = digest_dir(tmp)
        write_manifest(tmp, manifest)
    art = load_artifact(out)
    log.info("wrote %s (parity max |diff| %.2e)", out, parity.max_abs_diff)
    return art
