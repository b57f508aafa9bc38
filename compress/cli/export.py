from __future__ import annotations

from pathlib import Path

import click

from compress.cli._common import build_config, console, force_option, status
from compress.stages.export import ExportConfig, GraphOptimization


@click.command("export")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["onnx", "openvino"]), default="onnx", show_default=True,
              help="onnx, or openvino (IR .xml/.bin via openvino.convert_model; SOURCE may be an ONNX artifact).")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="New artifact directory.")
@click.option("--task", type=click.Choice(["text-classification", "feature-extraction"]),
              help="Default: from the checkpoint (…ForSequenceClassification → text-classification).")
@click.option("--opset", type=int, default=18, show_default=True, help=ExportConfig.model_fields["opset"].description)
@click.option("--optimize", type=click.Choice([o.value for o in GraphOptimization]), default="O2", show_default=True,
              help=ExportConfig.model_fields["optimize"].description)
@click.option("--atol", type=float, default=1e-4, show_default=True, help=ExportConfig.model_fields["atol"].description)
@click.option("--parity-samples", type=int, default=8, show_default=True, help="Texts in the parity check.")
@click.option("--sample-data", type=click.Path(path_type=Path), help="Data file for the parity texts.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickled .bin weights (can run arbitrary code).")
@click.option("--trust-remote-code", is_flag=True, help="Allow the checkpoint's own Python code to run.")
@force_option
def export_cmd(source, fmt, out, task, opset, optimize, atol, parity_samples, sample_data, allow_pickle,
               trust_remote_code, force):
    """Export a fine-tuned teacher checkpoint (SOURCE) to an ONNX or OpenVINO artifact.

    Uses Optimum's exporter (dynamic batch and sequence axes), applies ONNX Runtime's transformer
    fusions, then checks FP32 parity with PyTorch; a miss beyond --atol fails and writes nothing.
    """
    from compress.stages.export import export

    config = build_config(
        ExportConfig, format=fmt, task=task, opset=opset, optimize=optimize, atol=atol,
        parity_samples=parity_samples, sample_data=str(sample_data) if sample_data else None,
        allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
    )
    with status(f"exporting {source} to {fmt}"):
        art = export(source, out, config, force=force)
    parity = art.manifest.steps[-1].metrics["parity"]
    console().print(
        f"wrote [bold]{art.path}[/] ({art.format}/{art.precision}, {art.size_bytes() / 1e6:.1f} MB); "
        f"parity vs {parity['reference']}: max |diff| {parity['max_abs_diff']:.2e} ≤ {parity['atol']:g}"
    )
