"""A causal language model (task text-generation) to an ExecuTorch program (``model.pte``) lowered to XNNPACK, with
its KV cache inside the program, as ExecuTorch's own LLM export (``export_llm``, optimum-executorch) makes it.

How, with the maintained pieces of the field:

- the model is wrapped by transformers' ExecuTorch integration
  (``transformers.integrations.executorch.TorchExportableModuleWithStaticCache``, what
  ``TorchExportableModuleForDecoderOnlyLM`` uses for a model of one attention kind): a ``StaticCache`` of
  ``max_length`` positions whose key/value tensors are the module's buffers. ``torch.export`` makes them *mutable
  buffers* of the program, so the cache lives in the loaded method between calls (the manifest's ``KVCache`` layout
  ``stateful``), and the program has one entry point, ``forward(input_ids [1, S], cache_position [S]) -> logits
  [1, S, V]``: the prompt at positions 0..S-1, then one token at a time (the ExecuTorch LLM runner's signature);
- attention is ExecuTorch's fused ``llama::custom_sdpa`` (:mod:`executorch.extension.llm.custom_ops`, registered
  as a transformers attention function): causal attention of the new tokens over the cache up to ``start_pos + S``,
  as ``export_llm``'s ``--use_sdpa_with_kv_cache`` and optimum-executorch's ``custom_sdpa`` do (GQA inside the kernel;
  the cache beyond the current position is never read, so a new prompt overwrites what an older one left);
- the program is lowered with ``to_edge_transform_and_lower`` and ``XnnpackPartitioner`` (every linear layer goes to
  XNNPACK) and ``to_executorch`` with ExecuTorch's quant fusion (a quantized embedding table becomes
  ``quantized_decomposed::embedding_byte``/``embedding_4bit``).

Weight-only quantization cannot be done to a lowered program: :func:`lower_lm` quantizes the PyTorch model first
with torchao (:func:`torchao_quantize`: ExecuTorch's standard LLM scheme, ``8da4w``) and then lowers it; the
quantize verb's generator quantizer (:mod:`compress.stages.quantize.lm.executorch`) calls it on the teacher the FP32
artifact records. Export writes FP32.

The result is checked against PyTorch before anything is written: the prompt's logits (max |diff| within ``--atol``)
and ``DECODE_STEPS`` greedy decode steps through the program's cache (the same tokens). Batch 1.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from compress.artifact import Artifact, Format, Precision
from compress.artifact_entries import TensorSpec
from compress.errors import ConfigError
from compress.progress import Progress, start_phase
from compress.stages.export.config import ExportConfig
from compress.stages.export.lm.common import draft_against_torch, hf_config, prompt_ids
from compress.stages.spec import StageSpec, pairs
from compress.storage import check_output
from compress.tasks.generation import (
    DECODE_STEPS,
    copy_travel,
    generator_atol,
    require_generation_parity,
)
from compress.teachers.lm_config import from_pretrained_lm, postprocess_of, source_info

log = logging.getLogger(__name__)

#: PyTorch causal LM -> ExecuTorch program (XNNPACK, static KV cache in mutable buffers, custom SDPA), FP32, checked
#: against PyTorch
EXPORT_EXECUTORCH_LM = StageSpec(
    "export", "ExecuTorch export of a causal LM (KV cache in the program)",
    accepts=pairs(Format.pytorch, Precision.fp32), produces=pairs(Format.executorch, Precision.fp32),
    versions=("executorch", "torch", "torchao", "transformers"),
    hint="export starts from a causal LM checkpoint (a Hugging Face …ForCausalLM folder)", config_version=1,
)
#: the longest KV cache a program gets: the model's context, at most this many positions (the cache is allocated
#: whole in the program's memory: 2 x layers x kv_heads x head_size x 4 bytes per position)
MAX_CACHE = 2048
#: the most tokens one call takes (a longer prompt is fed in chunks by the runtime): the logits output is planned
#: for this many positions, so it bounds the program's activation memory (S x vocabulary floats)
MAX_CHUNK = 256
INPUTS = ("input_ids", "cache_position")
#: the transformers attention function name under which ExecuTorch's custom SDPA is registered
ATTENTION = "executorch_custom_sdpa"
#: the files of the teacher that travel with the program (config.json too: the quantizer reads the model's shape)


def _custom_sdpa(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention interface over ExecuTorch's ``llama::custom_sdpa``: ``query`` [B, H, S, D] and the
    static cache's ``key``/``value`` [B, KV, max, D] (already updated) in, [B, S, H, D] out; the new tokens start at
    ``position_ids[0, 0]`` and attend causally to the cache up to their own position."""
    import torch

    start = kwargs["position_ids"][0][0].item()
    torch._check_is_size(start)
    out = torch.ops.llama.custom_sdpa(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), start,
                                      None, 0.0, True, scaling)
    return out, None


def _register_attention() -> None:
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401 - registers llama::custom_sdpa (AOT)
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, _custom_sdpa)


def load_lm(source: Path):
    """The checkpoint as an FP32 transformers model whose attention is ExecuTorch's custom SDPA."""
    _register_attention()
    model = from_pretrained_lm(source)
    model.set_attn_implementation(ATTENTION)
    # an embedding's padding_idx (a config's pad_token_id: SmolLM2's 2) only keeps that row's gradient at zero; in the
    # graph it is an argument ExecuTorch's quant fusion does not match, which left torchao's 8-bit table unfused
    # ("Missing out variants: torchao::dequantize_affine"). The forward is the same without it
    emb = model.get_input_embeddings()
    if getattr(emb, "padding_idx", None) is not None:
        emb.padding_idx = None
    return model


def cache_length(cfg: dict[str, Any]) -> int:
    """The program's KV cache length: the model's context, at most :data:`MAX_CACHE`."""
    c = cfg.get("text_config") or cfg
    return min(int(c.get("max_position_embeddings") or MAX_CACHE), MAX_CACHE)


def torchao_quantize(model, bits: int, group: int, embeddings_bits: int, lm_head_bits: int) -> dict[str, Any]:
    """Quantize ``model`` in place with torchao as ExecuTorch's LLM export does (``8da4w``): every linear layer's
    weights to ``bits`` (4: groups of ``group`` along the input; 8: one scale per output channel), symmetric, its
    activations quantized to int8 per token at run time (XNNPACK's ``qd8`` kernels); the LM head at
    ``lm_head_bits`` the same way (32: float) and the embedding table weight-only at ``embeddings_bits`` (8: one
    scale per row; 4: groups of ``group``; 32: float). A tied head is untied first, so each keeps its own bits."""
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    def weights(b: int):
        return (torch.int4, PerGroup(group)) if b == 4 else (torch.int8, PerAxis(0))

    head = model.get_output_embeddings()
    embed = model.get_input_embeddings()
    if head is not None and head.weight is embed.weight:
        head.weight = torch.nn.Parameter(embed.weight.detach().clone())
    if embeddings_bits != 32:
        dtype, granularity = weights(embeddings_bits)
        quantize_(model, IntxWeightOnlyConfig(weight_dtype=dtype, granularity=granularity),
                  filter_fn=lambda m, _: m is embed)
    # INT4 groups must tile a layer's input: a layer whose input is not a multiple of the group (stories260K's FFN
    # down projection reads 172) takes 8 bits per channel instead, as llama.cpp falls back to a wider type there
    # (ExecuTorch's own LLM export leaves such layers float)
    def untileable(m) -> bool:
        return m.in_features % group != 0

    at8 = {n: m for n, m in model.named_modules()
           if isinstance(m, torch.nn.Linear) and m is not head and bits == 4 and untileable(m)}
    wider = {id(m) for m in at8.values()}
    head_bits = 8 if head is not None and lm_head_bits == 4 and untileable(head) else lm_head_bits
    for b, pick in ((bits, lambda m, _: isinstance(m, torch.nn.Linear) and m is not head and id(m) not in wider),
                    (8, lambda m, _: id(m) in wider), (head_bits, lambda m, _: m is head)):
        if b != 32:
            dtype, granularity = weights(b)
            quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=dtype, weight_granularity=granularity),
                      filter_fn=pick)
    return {"library": "torchao", "scheme": f"8da{bits}w", "linear_bits": bits,
            "group_size": group if bits == 4 else None, "symmetric": True, "activations": "int8 per token, dynamic",
            "lm_head_bits": lm_head_bits, "embeddings_bits": embeddings_bits,
            "at_8_bits_indivisible": sorted(at8),
            "configs": ["Int8DynamicActivationIntxWeightConfig", "IntxWeightOnlyConfig (embedding)"]}


def quantized_weights(program) -> dict[str, int]:
    """The quantized weights the exported graph holds, read from its ``torchao::dequantize_affine`` nodes (what
    XNNPACK packs, or ExecuTorch's quant fusion turns into a quantized embedding): counts by
    ``{int4|int8}_{group G|per channel}``, from each node's integer range and block size."""
    counts: Counter[str] = Counter()
    for node in program.graph.nodes:
        if node.op != "call_function" or "dequantize_affine" not in str(node.target):
            continue
        made_by = str(getattr(node.args[0], "target", ""))
        if "quantize_affine" in made_by and "dequantize" not in made_by:  # activations quantized at run time
            continue
        block, qmin, qmax = node.args[1], node.args[5], node.args[6]
        bits = {(-8, 7): "int4", (-128, 127): "int8"}.get((int(qmin), int(qmax)), f"[{qmin},{qmax}]")
        counts[f"{bits} {'per channel' if block[-1] == node.args[0].meta['val'].shape[-1] else f'group {block[-1]}'}"
               ] += 1
    return dict(counts)


def runner_metadata(model, max_length: int, chunk: int) -> dict[str, Any]:
    """The constant methods ExecuTorch's LLM runner (``TextLLMRunner``, ``llama_main``) reads from a program to drive
    it, as its own ``export_llm`` writes them: the most tokens one call takes (``get_max_seq_len``: the runner prefills
    a longer prompt in chunks of it, ``enable_dynamic_shape``), the cache's length (``get_max_context_len``), the
    special ids (``get_bos_id``, ``get_eos_ids``: every id generation_config.json ends on), the vocabulary and the
    depth, and that the cache and the fused SDPA are inside (``use_kv_cache``, ``use_sdpa_with_kv_cache``)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    eos = eos if eos is not None else config.eos_token_id
    eos = [int(e) for e in (eos if isinstance(eos, list | tuple) else [eos]) if e is not None]
    bos = getattr(gen, "bos_token_id", None)
    bos = bos if bos is not None else config.bos_token_id
    made = {"get_max_seq_len": chunk, "get_max_context_len": max_length, "get_vocab_size": int(config.vocab_size),
            "get_n_layers": int(config.num_hidden_layers), "use_kv_cache": True, "use_sdpa_with_kv_cache": True,
            "enable_dynamic_shape": True}
    if bos is not None:
        made["get_bos_id"] = int(bos)
    if eos:
        made["get_eos_ids"] = eos
    return made


def lower_lm(model, max_length: int) -> tuple[bytes, dict[str, Any]]:
    """``model`` (transformers, ExecuTorch's attention, optionally torchao-quantized) through ``torch.export`` with
    a static cache of ``max_length``, lowered to XNNPACK: the program's bytes and what the step records."""
    import warnings

    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from transformers import GenerationConfig
    from transformers.integrations.executorch import TorchExportableModuleWithStaticCache

    from compress.stages.export.executorch import delegation_of, short_error

    t0 = time.perf_counter()
    chunk = min(MAX_CHUNK, max_length)
    metadata = runner_metadata(model, max_length, chunk)
    model.generation_config = GenerationConfig(use_cache=True, cache_implementation="static")
    wrapped = TorchExportableModuleWithStaticCache(model, batch_size=1, max_cache_len=max_length)
    seq = torch.export.Dim("sequence", min=1, max=chunk)
    example = {"input_ids": torch.tensor([[1, 2, 3]]), "cache_position": torch.arange(3)}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(wrapped, (), example, strict=True,
                                          dynamic_shapes={"input_ids": {1: seq}, "cache_position": {0: seq}})
            weights = quantized_weights(program)
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                               compile_config=EdgeCompileConfig(_check_ir_validity=False),
                                               constant_methods=metadata)
            delegated = delegation_of(edge)
            # the cache tensors the program writes (functionalized by to_edge: the program's mutable buffers)
            mutable = sorted(edge.exported_program().graph_signature.buffers_to_mutate.values())
            made = edge.to_executorch(ExecutorchBackendConfig(do_quant_fusion_and_const_prop=True))
    except Exception as e:
        raise ConfigError(f"ExecuTorch cannot export {type(model).__name__} with its KV cache ({short_error(e)})",
                          hint="export it with --format onnx, openvino or gguf instead") from e
    return made.buffer, {
        "wrapper": "transformers.integrations.executorch.TorchExportableModuleWithStaticCache",
        "attention": "executorch llama::custom_sdpa", "backend": "xnnpack", "batch": 1, "cache_length": max_length,
        "max_tokens_per_call": chunk, "mutable_buffers": mutable, "quantized_weights": weights,
        "runner_metadata": metadata,
        **delegated, "lower_seconds": round(time.perf_counter() - t0, 1)}


def lm_manifest(source: Path, cfg: dict[str, Any], precision: Precision, max_length: int):
    """The manifest of a generator program: the entry point's tensors and the cache (layout ``stateful``)."""
    from compress.artifact import Manifest, TextPreprocess, library_versions
    from compress.tasks import task_for

    post = postprocess_of(source, cfg)
    post.cache = post.cache.model_copy(update={"layout": "stateful", "max_length": max_length,
                                               "prefill": list(INPUTS), "decode": list(INPUTS)})
    post.window = min(post.window, max_length)
    vocab = int((cfg.get("text_config") or cfg)["vocab_size"])
    return Manifest(
        task=task_for("text", kind="generation"), format=Format.executorch, precision=precision,
        model_file="model.pte",
        inputs=[TensorSpec(name="input_ids", dtype="int64", shape=[1, "sequence"]),
                TensorSpec(name="cache_position", dtype="int64", shape=["sequence"])],
        outputs=[TensorSpec(name="logits", dtype="float32", shape=[1, "sequence", vocab])],
        preprocess=TextPreprocess(), postprocess=post, max_length=max_length,
        source=source_info(source, cfg),
        versions=library_versions("executorch", "torchao"),
    )


def check_against_torch(source: Path, draft: Artifact, config, what: str) -> dict[str, Any]:
    """Prefill logits and :data:`DECODE_STEPS` greedy steps of the program ``draft`` against PyTorch FP32."""

    prompt, said = prompt_ids(source, getattr(config, "sample_data", None))
    prompt = prompt[:draft.manifest.postprocess.cache.max_length - DECODE_STEPS - 1]
    return draft_against_torch(draft, "executorch", source, prompt) | {
        "prompt": said, "reference": "PyTorch (transformers) FP32", "checked": what}


def _refuse_options(config: ExportConfig) -> None:
    if config.precision is not None:
        raise ConfigError(f"--precision {config.precision}: a causal LM's ExecuTorch program is exported FP32",
                          hint="export without --precision, then `edgecompress quantize ART --precision int4` "
                          "(or int8)")
    if config.calibration.data or config.executorch.int8_mode or config.executorch.calibration_method or \
            config.executorch.embedding_precision:
        raise ConfigError("the ExecuTorch INT8 options apply to image and text classifiers, not to a causal LM",
                          hint="drop them; quantize the FP32 program with `edgecompress quantize --precision int4`")


def export_executorch_lm(source: Path | str, out: Path | str, config: ExportConfig | None = None, *,
                         force: bool = False, progress: Progress | None = None) -> Artifact:
    """Export the causal LM checkpoint ``source`` to an FP32 ExecuTorch program (XNNPACK) with its KV cache at ``out``.

    The artifact holds ``model.pte``, the tokenizer files, ``generation_config.json`` and ``config.json``; the
    manifest's postprocess describes the cache (layout ``stateful``: the program's mutable buffers; its length is
    the model's context, at most :data:`MAX_CACHE`) and the entry point (``input_ids``, ``cache_position``). The
    step's metrics hold the check against PyTorch (``generation_parity``); a prefill difference above the tolerance
    or a different greedy token is a :class:`~compress.errors.ParityError` and nothing is written.
    """
    from compress._optional import require
    from compress.storage import tree_bytes

    require("executorch", "ExecuTorch export")
    config = config or ExportConfig()
    _refuse_options(config)
    source = Path(source)
    out = check_output(out, force)
    if Path(out).resolve() == source.resolve():
        raise ConfigError("--out is the source directory", hint="choose a new directory for the artifact")
    cfg = hf_config(source)
    max_length = cache_length(cfg)
    output = EXPORT_EXECUTORCH_LM.output(out, config, force=force)
    with output.writing(need_bytes=2 * tree_bytes(source) + (1 << 20)) as o:
        start_phase(progress, "tracing and lowering the model to XNNPACK")
        data, record = lower_lm(load_lm(source), max_length)
        (o.dir / "model.pte").write_bytes(data)
        copy_travel(source, o.dir)
        manifest = lm_manifest(source, cfg, Precision.fp32, max_length)
        step = o.describe(manifest, input_digest=manifest.source.sha256, extra_config={"lowering": record})
        start_phase(progress, "checking the program against PyTorch")
        check = check_against_torch(source, o.draft(), config, "export")
        atol = generator_atol(config, check)
        check["atol"] = atol
        step.metrics["generation_parity"] = check
        require_generation_parity(check, atol, "the ExecuTorch program")
    log.info("exported %s to %s (ExecuTorch, XNNPACK; prefill max |diff| %.2e, %d decode steps equal)", source, out,
             check["prefill_max_abs_diff"], DECODE_STEPS)
    return output.artifact

