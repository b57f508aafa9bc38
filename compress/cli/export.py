from __future__ import annotations

from pathlib import Path

import click

from compress.cli._common import PhaseProgress, build_config, console, force_option, require_input, section_help
from compress.formats import export_formats
from compress.stages.export.config import ExportConfig, Exporter, GraphOptimization

F = ExportConfig.flat_fields()
_TRT = "TensorRT"
_INT8 = "TensorRT and ExecuTorch int8"


class FormatChoice(click.Choice):
    """``--format``'s choices: the formats :data:`compress.formats.FORMATS` exports, read whenever the command runs or
    prints its help, so a format added to the table is a choice."""

    def __init__(self) -> None:  # no fixed list to store
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(export_formats())


@click.command("export")
@click.argument("source", type=click.Path(path_type=Path), metavar="SOURCE")
@click.option("--format", "fmt", type=FormatChoice(),
              help="Default: onnx (a model file made elsewhere: adopted as it is; a .gguf given a --format is "
              "exported from the checkpoint it dequantizes to). onnx, openvino (IR .xml/.bin via openvino.convert_model; SOURCE may be an ONNX artifact), "
              "tensorrt (engine model.plan; SOURCE may be an unfused ONNX artifact; --dry-run needs no TensorRT; "
              "--via torch-tensorrt: a Torch-TensorRT program model.pt2), executorch (a phone's model.pte, "
              "XNNPACK; --precision int8 quantizes it first), litert (model.tflite through litert-torch, where "
              "it is installed; a .tflite made elsewhere is adopted as it is), or coreml (an iPhone's "
              "model.mlpackage, FP16; --precision int8 stores INT8 weights).")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="New artifact directory.")
@click.option("--task", type=click.Choice(["text-classification", "feature-extraction"]),
              help="Default: from the checkpoint (…ForSequenceClassification → text-classification).")
@click.option("--opset", type=int, default=18, show_default=True, help=F["opset"].description)
@click.option("--optimize", type=click.Choice([o.value for o in GraphOptimization]), default="none", show_default=True,
              help=F["optimize"].description)
@click.option("--exporter", type=click.Choice([e.value for e in Exporter]), default="torch", show_default=True,
              help=F["exporter"].description)
@click.option("--atol", type=float, default=1e-4, show_default=True, help=F["atol"].description)
@click.option("--parity-samples", type=int, default=8, show_default=True, help="Texts in the parity check.")
@click.option("--sample-data", type=click.Path(path_type=Path), help="Data file for the parity texts.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickled .bin weights (can run arbitrary code).")
@click.option("--trust-remote-code", is_flag=True, help="Allow the checkpoint's own Python code to run.")
@click.option("--precision", type=click.Choice(["fp16", "int8"]),
              help=F["precision"].description)
@click.option("--int8-mode", type=click.Choice(["static", "dynamic"]),
              help=section_help("ExecuTorch int8", F["int8_mode"].description))
@click.option("--calibration", type=click.Path(path_type=Path), help=section_help(_INT8, F["calibration"].description))
@click.option("--calibration-samples", type=int, help=section_help(_INT8, F["calibration_samples"].description))
@click.option("--calibration-method", type=click.Choice(["auto", "mean-minmax", "minmax", "histogram"]),
              help=section_help("ExecuTorch static int8", F["calibration_method"].description))
@click.option("--embedding-precision", type=click.Choice(["int8", "fp32"]),
              help=section_help("ExecuTorch int8", F["embedding_precision"].description))
@click.option("--dry-run", is_flag=True, help=section_help(_TRT, F["dry_run"].description))
@click.option("--profile", "-p", "profile_name", help=section_help(_TRT, F["profile"].description))
@click.option("--min-shape", help=section_help(_TRT, F["min_shape"].description))
@click.option("--opt-shape", help=f"{_TRT}: " + F["opt_shape"].description)  # not section_help: BATCH keeps its capitals
@click.option("--max-shape", help=section_help(_TRT, F["max_shape"].description))
@click.option("--shape", help=section_help(_TRT, F["shape"].description))
@click.option("--timing-cache", type=click.Path(path_type=Path), help=section_help(_TRT, F["timing_cache"].description))
@click.option("--via", type=click.Choice(["onnx", "torch-tensorrt"]), help=section_help(_TRT, F["via"].description))
@click.option("--llama-cpp", "llama_cpp", type=click.Path(path_type=Path), help=F["llama_cpp"].description)
@click.option("--max-context", type=int, help=F["max_context"].description)
@force_option
def export_cmd(source, fmt, out, task, opset, optimize, exporter, atol, parity_samples, sample_data, allow_pickle,
               trust_remote_code, precision, int8_mode, calibration, calibration_samples, calibration_method,
               embedding_precision, dry_run, profile_name, min_shape, opt_shape, max_shape, shape, timing_cache, via,
               llama_cpp, max_context, force):
    """Export a fine-tuned teacher checkpoint (SOURCE) to an ONNX, OpenVINO, TensorRT, ExecuTorch, LiteRT or Core ML
    artifact.

    SOURCE may also be a model file made elsewhere: an ONNX graph (adopted: checked, upgraded to opset 13 when
    older; a model.yaml beside it says what the graph cannot), an OpenVINO IR (.xml with its .bin), or a .pt2
    program with its model.yaml. See docs/guides/model-files.md. A llama.cpp .gguf is adopted as it is; given a --format
    (onnx, openvino, executorch, gguf) it is dequantized by transformers' GGUF loader into the checkpoint that
    format is exported from (once per file, cached). See docs/guides/lm.md.

    Uses PyTorch's ONNX exporter (dynamic batch and sequence axes; transformers 4 and 5), optionally
    ONNX Runtime's transformer fusions (--optimize), then checks FP32 parity with PyTorch; a miss beyond
    --atol fails and writes nothing.

    --format tensorrt writes plain ONNX (fp16) or INT8 QDQ following TensorRT's explicit-quantization
    rules (int8), with min/opt/max shapes from --profile or the --*-shape options, then builds model.plan
    with TensorRT (or trtexec); --dry-run stops at the TensorRT-ready ONNX and prints the trtexec command.
    --via torch-tensorrt instead compiles the PyTorch model with Torch-TensorRT (FP16, same shape options)
    into model.pt2, checked against PyTorch FP32 on the GPU.

    --format executorch writes the ExecuTorch program a phone app loads (model.pte, lowered to XNNPACK, one
    row per call), checked in ExecuTorch's runtime against PyTorch; --precision int8 quantizes it with
    PT2E first (--int8-mode dynamic, the default for text, or static with --calibration, needed for images).

    --format coreml writes the Core ML package an iOS app loads (model.mlpackage, an ML program computing in
    FP16, one row per call); --precision int8 stores its weights in INT8. Core ML runs only on macOS and iOS:
    elsewhere the package is read back and its inputs checked, and its parity is recorded as not measured.
    """
    from compress.stages.export import export

    config = build_config(
        ExportConfig, format=fmt, task=task, opset=opset, optimize=optimize, exporter=exporter, atol=atol,
        parity_samples=parity_samples, sample_data=str(sample_data) if sample_data else None,
        allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
        precision=precision, int8_mode=int8_mode, calibration=str(calibration) if calibration else None,
        calibration_method=calibration_method, embedding_precision=embedding_precision,
        calibration_samples=calibration_samples, dry_run=dry_run or None, profile=profile_name,
        min_shape=min_shape, opt_shape=opt_shape, max_shape=max_shape, shape=shape,
        timing_cache=str(timing_cache) if timing_cache else None, via=via,
        llama_cpp=str(llama_cpp) if llama_cpp else None, max_context=max_context,
    )
    if via == "torch-tensorrt":  # refused before the long phase, so the error is the one line the user sees
        from compress.stages.export.torch_tensorrt import check_request

        check_request(config)
    require_input(source, "model")
    fmt = str(config.format)
    with _Progress() as progress:  # a spinner (lines in a CI log), then any phase the exporter counts
        progress({"phase": "export", "label": f"exporting {source} to {fmt}"})
        art = export(source, out, config, force=force, progress=progress)
    if fmt == "tensorrt":
        target, parity = art.manifest.target, art.manifest.steps[-1].metrics["parity"]
        what = "TensorRT-ready ONNX" if target.get("tensorrt_ready") else f"TensorRT {target.get('tensorrt_version')} engine"
        if target.get("builder") == "torch-tensorrt":
            what = f"Torch-TensorRT {target.get('torch_tensorrt_version')} program"
            checked = "vs PyTorch FP32 on the GPU"
        else:
            checked = "ONNX vs FP32 in onnxruntime"
        agree = parity.get("argmax_agreement")
        console().print(
            f"wrote [bold]{art.path}[/] ({what}, {art.format}/{art.precision}, {art.size_bytes() / 1e6:.1f} MB); "
            f"{checked}: max |diff| {parity['max_abs_diff']:.2e}"
            + (f", argmax agreement {agree:.0%}" if agree is not None else ""),
            highlight=False,
        )
        if target.get("trtexec"):
            click.echo("build the engine on the target GPU with:")
            click.echo(target["trtexec"])
        return
    if (gen := art.manifest.steps[-1].metrics.get("generation_parity")) is not None:  # a causal LM with a KV cache
        console().print(
            f"wrote [bold]{art.path}[/] ({art.format}/{art.precision}, {art.size_bytes() / 1e6:.1f} MB, text-generation); "
            f"vs {gen['reference']}: prefill logits max |diff| {gen['prefill_max_abs_diff']:.2e} over "
            f"{gen['prefill_tokens']} tokens, {gen['decode_steps']} greedy decode steps "
            f"{'the same tokens' if gen['same_tokens'] else 'DIFFERENT tokens'}", highlight=False)
        return
    parity = art.manifest.steps[-1].metrics["parity"]
    if parity.get("measured") is False:
        console().print(f"wrote [bold]{art.path}[/] ({art.format}/{art.precision}, {art.size_bytes() / 1e6:.1f} MB); "
                        f"its inputs and output checked; parity not measured: {parity['why']}", highlight=False)
        return
    held = (f"≤ {parity['atol']:g}" if parity.get("enforced", True) else
            f"(not held to --atol: {art.precision}; argmax agreement {parity.get('argmax_agreement', float('nan')):.3f})")
    console().print(
        f"wrote [bold]{art.path}[/] ({art.format}/{art.precision}, {art.size_bytes() / 1e6:.1f} MB); "
        f"parity vs {parity['reference']}: max |diff| {parity['max_abs_diff']:.2e} {held}", highlight=False
    )


class _Progress(PhaseProgress):
    """The exporter's phases as spinners; a causal LM's decoder layers, as the ONNX builder makes them, counted."""

    def show(self, d: dict) -> None:
        if (done := d.get("done")) is not None:
            self.bar.update(self.task(d["phase"], d.get("label", d["phase"]), d["total"]), completed=done)
