from __future__ import annotations

from pathlib import Path

import click

from compress.cli._common import PhaseProgress, build_config, console, force_option
from compress.stages.quantize.config import CalibrationMethod, QuantizeConfig


@click.command("quantize")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(["int8", "int4"]), default="int8", show_default=True,
              help="int8: weights and activations (ONNX Runtime / NNCF); int4: weight-only (MatMulNBits / NNCF).")
@click.option("--mode", type=click.Choice(["dynamic", "static"]), default="dynamic", show_default=True,
              help=QuantizeConfig.model_fields["mode"].description)
@click.option("--calibration", type=click.Path(path_type=Path),
              help="Calibration data file: ONNX static mode, and OpenVINO INT8 (unless --weights-only).")
@click.option("--calibration-samples", type=int, default=128, show_default=True, help="Calibration texts.")
@click.option("--calibration-method", type=click.Choice([m.value for m in CalibrationMethod]), default="minmax",
              show_default=True, help="Activation range estimator (static mode).")
@click.option("--per-channel/--per-tensor", default=True, show_default=True, help="Weight scales per output channel.")
@click.option("--weight-type", type=click.Choice(["int8", "uint8"]), default="int8", show_default=True,
              help="Signed weights (u8s8) or unsigned (u8u8).")
@click.option("--reduce-range/--full-range", default=None,
              help="7-bit weights (static INT8: 8 bits kept where no kernel saturates, depthwise and linear-output "
                   "convolutions). Default: from the target, never this host: off for a --profile with VNNI (or "
                   "Arm), on for x86 without VNNI and without --profile (avoids u8s8 saturation).")
@click.option("--op-types", help="Comma-separated operator types to quantize (default: see docs).")
@click.option("--exclude-nodes", help="Comma-separated node names to keep in float; first:N / last:N "
              "name the first / last N quantizable layers (e.g. first:12,last:36: a stem and a head).")
@click.option("--block-size", type=click.Choice(["32", "64", "128"]), default="128", show_default=True,
              help="INT4 (and INT4 embeddings): weights per quantization block.")
@click.option("--symmetric/--asymmetric", default=True, show_default=True, help="INT4 block zero points.")
@click.option("--embedding-precision", type=click.Choice(["fp32", "int8", "int4"]), default="int8", show_default=True,
              help="INT4 and dynamic INT8: precision of the embedding table (int4: blocks of --block-size, two "
                   "weights per byte; the table is most of a small model's size).")
@click.option("--int4-algorithm",
              type=click.Choice(["auto", "rtn", "hqq", "gptq", "awq", "scale_estimation", "k_quant"]),
              help="Generators (causal LMs), weight-only INT4/INT8 (default: auto for ONNX Runtime and OpenVINO INT4, "
                   "rtn elsewhere and for INT8): auto (each weight matrix's bits and algorithm chosen by measuring "
                   "the model: within llama.cpp Q4_K_M's bytes, more where a check on a built-in text needs them), "
                   "rtn (round to nearest), hqq, gptq (calibrated on text windows), awq, scale_estimation, k_quant; "
                   "each runtime takes its subset (ONNX Runtime: auto, rtn, hqq, gptq, k_quant).")
@click.option("--embeddings-bits", type=click.Choice(["4", "8", "32"]), default="8", show_default=True,
              help="Generators: bits of the token embedding table (32: float).")
@click.option("--lm-head-bits", type=click.Choice(["4", "8"]), default="8", show_default=True,
              help="Generators: bits of the LM head.")
@click.option("--gguf-type", type=click.Choice(["q4_0", "q4_k_m", "q4_k_s", "q5_k_m", "q6_k", "q8_0"]),
              help="GGUF (llama.cpp) generators: llama.cpp's quantization type; default q4_k_m for int4, q8_0 for "
                   "int8 (q5/q6/q8 with --precision int8).")
@click.option("--imatrix", type=click.Path(path_type=Path),
              help="GGUF: an importance matrix made by llama.cpp's llama-imatrix (imatrix.gguf or .dat) for its "
                   "quantizer; or give --calibration TEXT and llama-imatrix makes one.")
@click.option("--weights-only", is_flag=True, help="OpenVINO INT8: compress weights only (nncf.compress_weights).")
@click.option("--activation-bits", type=click.Choice(["8", "16"]), default="8", show_default=True,
              help="LiteRT static INT8: bits of the activations (16: INT8 weights with 16-bit activations, "
                   "ai-edge-quantizer's w8a16, for NPUs; slow on CPUs).")
@click.option("--max-drop", type=float,
              help="Accuracy-aware: largest allowed absolute drop of the eval metric (e.g. 0.01); needs --data.")
@click.option("--max-perplexity-increase", type=float,
              help="Generators (causal LMs), accuracy-aware INT4: largest perplexity increase over the input (0.02 = "
                   "+2%) on --data text, or without it on text the FP32 model samples itself; the MatMuls INT4 hurts most "
                   "go back to 8 bits until it holds.")
@click.option("--data", "--eval-data", "-d", "data", type=click.Path(path_type=Path), help="Labelled eval data for --max-drop.")
@click.option("--metric", metavar="MODULE:FUNCTION", help="Accuracy-aware: your metric, function(outputs, labels) -> "
              "number, higher is better, instead of the task's. Runs that code: name only code you trust.")
@click.option("--eval-samples", type=int, default=300, show_default=True, help="Eval rows for --max-drop.")
@click.option("--rank-by", type=click.Choice(["layer-errors", "leave-one-out"]),
              help="--max-drop with ONNX Runtime: the order in which layers go back to float. layer-errors (default): "
                   "the error each adds itself in the per-layer table (one pass); leave-one-out: the eval metric "
                   "with each kept float alone (one candidate per layer or block).")
@click.option("--speed-aware", is_flag=True,
              help="INT8: time each layer group quantized and in float side by side (the --profile's threads) and "
                   "return the groups INT8 makes slower to float; reported in the manifest.")
@click.option("--strict", is_flag=True,
              help="Fail (exit code 1, nothing written) when the parity check with the input collapses (mean "
                   "output cosine < 0.95 or argmax agreement < 0.5), or when an INT8 model runs slower than its input "
                   "(timed side by side on this host where it is the target; under 0.97x), instead of warning.")
@click.option("--allow-slower", is_flag=True,
              help="Keep an INT8 model that runs slower than its input even with --strict (for its size).")
@click.option("--qat-steps", type=int, default=0, show_default=True,
              help="INT8, and INT4 of a causal LM's ONNX artifact: first train the PyTorch model the artifact was "
                   "exported from for N steps, fake-quantized exactly as ONNX Runtime will quantize it, to match its "
                   "FP32 self (quantization-aware distillation; a causal LM: KL of the next-token distributions on "
                   "--qat-data text); resumable. 0: post-training only.")
@click.option("--qat-data", type=click.Path(path_type=Path),
              help="QAD training inputs (like --calibration; labels used when present; a causal LM: text, .txt or "
                   ".jsonl). Default: --calibration.")
@click.option("--qat-source", type=click.Path(path_type=Path),
              help="QAD: the checkpoint, .pt2 program or student the artifact was exported from, when its lineage "
                   "does not name it (a distilled or pruned student).")
@click.option("--qat-lr", type=float, help="QAD peak learning rate (default 1e-5 images, 2e-5 text; a causal LM's "
              "INT4: 3e-4, with --qat-lora-rank 3e-3).")
@click.option("--qat-batch-size", type=int, default=16, show_default=True,
              help="QAD inputs per step (a causal LM: text windows).")
@click.option("--qat-lora-rank", type=int,
              help="Quantization-aware INT4 of a causal LM: train LoRA adapters of rank R on every linear layer "
                   "(under the fake quantizer, merged before export) instead of the weights.")
@click.option("--profile", "-p", "profile_name",
              help="Target device profile: its CPU (VNNI or not) picks the defaults; with --data, its "
                   "min_accuracy_retention budget drives accuracy-aware quantization.")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="New artifact directory.")
@force_option
def quantize_cmd(artifact, precision, mode, calibration, calibration_samples, calibration_method, per_channel,
                 weight_type, reduce_range, op_types, exclude_nodes, block_size, symmetric, embedding_precision,
                 int4_algorithm, embeddings_bits, lm_head_bits, gguf_type, imatrix, weights_only, activation_bits, max_drop, max_perplexity_increase, data, metric, eval_samples, rank_by, speed_aware, strict, allow_slower, qat_steps, qat_data, qat_source,
                 qat_lr, qat_batch_size, qat_lora_rank, profile_name, out, force):
    """Quantize an ONNX or OpenVINO ARTIFACT to INT8 or INT4.

    ONNX artifacts use ONNX Runtime's quantizers (dynamic/static INT8, MatMulNBits INT4);
    OpenVINO artifacts use NNCF (nncf.quantize, nncf.compress_weights, and
    nncf.quantize_with_accuracy_control for --max-drop).
    """
    from compress.stages.quantize import quantize

    values = dict(
        precision=precision, mode=mode, calibration=str(calibration) if calibration else None,
        calibration_samples=calibration_samples, calibration_method=calibration_method, per_channel=per_channel,
        weight_type=weight_type, reduce_range=reduce_range,
        op_types=[s.strip() for s in op_types.split(",") if s.strip()] if op_types else None,
        exclude_nodes=[s.strip() for s in exclude_nodes.split(",") if s.strip()] if exclude_nodes else None,
        block_size=int(block_size), symmetric=symmetric, embedding_precision=embedding_precision,
        int4_algorithm=int4_algorithm, embeddings_bits=int(embeddings_bits), lm_head_bits=int(lm_head_bits),
        gguf_type=gguf_type, imatrix=str(imatrix) if imatrix else None,
        weights_only=weights_only, activation_bits=int(activation_bits), max_drop=max_drop, max_perplexity_increase=max_perplexity_increase, data=str(data) if data else None, metric=metric,
        eval_samples=eval_samples, rank_by=rank_by,
        speed_aware=speed_aware, strict=strict, refuse_slower=False if allow_slower else None,
        qat_steps=qat_steps, qat_data=str(qat_data) if qat_data else None,
        qat_source=str(qat_source) if qat_source else None, qat_lr=qat_lr, qat_batch_size=qat_batch_size,
        qat_lora_rank=qat_lora_rank,
    )
    # only what the user gave: the stage refuses settings the chosen quantization would ignore
    from click.core import ParameterSource

    ctx = click.get_current_context()
    values = {k: (None if k in ctx.params and ctx.get_parameter_source(k) is ParameterSource.DEFAULT else v)
              for k, v in values.items()}
    target = QuantizeConfig.profile_settings(profile_name, values) if profile_name else {}
    config = build_config(QuantizeConfig, **values, **target)
    with _Progress() as progress:  # a spinner (lines in a CI log), then any phase the quantizer counts
        progress({"phase": "quantize", "label": f"quantizing {artifact} to {precision.upper()}"})
        art = quantize(artifact, out, config, force=force, progress=progress)
    m = art.manifest.steps[-1].metrics
    if (g := m.get("generation_vs_input")) is not None:  # a generator (causal LM): weight-only, greedy continuations
        console().print(
            f"wrote [bold]{art.path}[/] ({art.precision} {m.get('scheme', 'weight-only')}, "
            f"{m['size_bytes_after'] / 1e6:.2f} MB, "
            f"{m['compression']:.2f}x smaller); vs input: prompt top-1 agreement {g['prompt_top1_agreement']:.3f}, "
            f"KL {g['prompt_kl_mean']:.4f}, greedy continuations equal for {g['continuation_agreement']:.1%}")
        if (qat := m.get("qat")) is not None:
            console().print(f"quantization-aware INT4: held-out KL of the simulated INT4 to FP32 "
                            f"{qat['before']['kl_mean']:.4f} before, {qat['best']['kl_mean']:.4f} kept ({qat['kept']})")
        if (mix := m.get("int4_mix")) is not None:
            from compress.stages.quantize.lm.bit_allocation import summary

            console().print(f"INT4 {summary(mix)}", highlight=False)
        if (warning := m.get("warning")) is not None:
            console().print(f"[bold yellow]warning[/]: {warning}", highlight=False)
        _not_shippable(art)
        return
    p = m["parity_vs_input"]
    agree = f", argmax agreement {p['argmax_agreement']:.3f}" if "argmax_agreement" in p else ""
    speed = m.get("speed_vs_input") or {}
    faster = f", {speed['speedup']:.2f}x its speed on this host" if "speedup" in speed else ""
    console().print(
        f"wrote [bold]{art.path}[/] ({art.precision}, {m['size_bytes_after'] / 1e6:.1f} MB, {m['compression']:.2f}x smaller); "
        f"vs input: min cosine {p['cosine_min']:.4f}{agree}{faster}"
    )
    if "warning" in speed:  # slower than its input: why, and what would pay
        from compress.stages.quantize.speed_check import remedies

        console().print(f"[bold yellow]warning[/]: {speed['warning']}; {remedies(speed['boundaries'])}",
                        highlight=False)
    if (qad := m.get("qad")) is not None:
        console().print(f"quantization-aware distillation: held-out agreement of the simulated INT8 with FP32 "
                        f"{_score(qad['before'])} before, {_score(qad['best'])} kept ({qad['kept']})")
    if (warning := m.get("warning")) is not None:
        console().print(f"[bold yellow]warning[/]: {warning}", highlight=False)
    _not_shippable(art, p.get("collapsed", {}).get("remedies"))


def _not_shippable(art, remedies: str | None = None) -> None:
    """One loud line when quantize's own check found the model it wrote collapsed (written only without --strict)."""
    if (reason := art.manifest.collapsed()) is None:
        return
    console().print(f"[bold red]NOT SHIPPABLE[/]: its own check found it collapsed against its input ({reason}); "
                    "validate fails it unless --data proves its accuracy, package refuses it"
                    + (f"; try {remedies}" if remedies else "") + " (--strict writes nothing instead)")


def _score(score: dict) -> str:
    return f"{score['agreement']:.3f} (cosine {score['cosine']:.4f})" if "agreement" in score else \
        f"cosine {score['cosine']:.4f}"


class _Progress(PhaseProgress):
    """Quantization-aware distillation's steps, the INT4 mix's measurement and checks; loading, re-export and the
    rest of the work as spinners."""

    labels = {"qad": "quantization-aware distillation"}

    def note(self, d: dict) -> str | None:
        return d.get("note")

    def show(self, d: dict) -> None:
        if "note" in d:  # a check's line, above the bars
            self.bar.console.print(d["note"], highlight=False)
            return
        if "qad" not in d["phase"] and (done := d.get("done")) is not None:  # a counted phase (the INT4 mix's)
            self.bar.update(self.task(d["phase"], d.get("label", d["phase"]), d["total"]), completed=done)
            return
        if d["phase"] == "qad":
            info = f"loss {d['loss']:.4f}" if "loss" in d else ""
            if "cosine" in d:
                info += f", held-out {_score(d)}"
            elif "kl_mean" in d:  # a causal LM's quantization-aware INT4
                info += f", held-out KL {d['kl_mean']:.4f}"
            self.bar.update(self.task("qad", self.labels["qad"], d["total"]), completed=d["step"], info=info)
