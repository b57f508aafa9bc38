"""A causal language model (task text-generation) to a stateful OpenVINO IR: the KV cache lives inside the model.

How: ``openvino.convert_model`` on the PyTorch model itself, wrapped so that the cache is flat tensors
(``past_key_values.N.key/value`` in, ``present.N.key/value`` out, [1, kv_heads, past, head_size]), then OpenVINO's
own ``apply_make_stateful_transformation`` turns each past/present pair into a variable (ReadValue/Assign) that the
InferRequest keeps between calls. Before that, every past tensor is read through ``Gather(past, beam_idx, 0)`` with a
new ``beam_idx`` input (the cache reorder of beam search, as optimum-intel's IRs have it; the backend feeds 0): the
CPU plugin's StatefulSDPAFusion matches ReadValue -> Gather(beam_idx) -> Concat -> [GQA Unsqueeze/Broadcast/Reshape]
-> ScaledDotProductAttention with the Concat's Assign, and only then runs one ScaledDotProductAttentionWithKVCache per
layer (the cache read and appended inside the attention, stored in KV_CACHE_PRECISION); without the Gather it
decomposes the attention into MatMul + Softmax with a Concat of the whole cache per step, about half the decode speed
(:func:`compress.runtimes.openvino_backend.attention_path` reports which path a compiled IR took). The IR's inputs are
``input_ids``, ``attention_mask`` (past + new tokens), ``position_ids`` and ``beam_idx``; its output is ``logits``
[1, S, V] (every position: the parity check and quantize's comparison read the prompt's; a step feeds one token).
:class:`compress.runtimes.openvino_backend.OpenVINOBackend` runs it: prefill = ``reset_state`` then the prompt, step =
one token (the request is the state). This is the form OpenVINO GenAI's ``LLMPipeline`` and optimum-intel's
``OVModelForCausalLM`` run.

Why this exporter and not optimum-intel's ``main_export``: optimum-intel 2.2 needs optimum 2.3 (``pip install
--dry-run "optimum-intel[openvino]"`` would install openvino-tokenizers, optimum 2.3.0 and optimum-intel 2.2.0 over
the optimum 2.1 that optimum-onnx 0.1 is pinned with for transformers < 4.58), a new dependency and a version move
for one step; ``convert_model`` + ``make_stateful`` is in the openvino wheel the project already has, and the graph is
the same kind (stateful, the SDPA and its cache fused by OpenVINO's CPU plugin). Two things transformers 4.57 does that TorchScript
tracing cannot follow are done here instead: the causal+padding mask is built as a 4-D float mask from
``attention_mask`` (its vmap'd mask functions do not trace), and the cache layers are filled directly (its lazy
``torch.cat`` onto an empty tensor converts to a rank-1 Concat). Each cache variable gets an initial value (zeros with
no positions, the batch read from ``input_ids``), as optimum-intel's IRs have: NNCF's GPTQ needs it. Weights are
FP32 (no FP16 compression on save), the CPU plugin runs them and the cache in f32 (the backend's
INFERENCE_PRECISION_HINT and, for an FP32 artifact, KV_CACHE_PRECISION).

The result is checked against PyTorch before anything is written: the prompt's logits (max |diff| within
``--atol``) and ``DECODE_STEPS`` greedy decode steps through the stateful cache (the same tokens). Batch 1.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from compress.artifact import Artifact, Format, Precision
from compress.errors import ConfigError
from compress.host.memory import release_freed
from compress.progress import Progress, start_phase
from compress.stages.export.config import ExportConfig
from compress.stages.export.lm.common import draft_against_torch, hf_config, prompt_ids
from compress.stages.spec import StageSpec, pairs
from compress.storage import check_output
from compress.tasks.generation import DECODE_STEPS, copy_travel, require_generation_parity
from compress.teachers.lm_config import cache_of, from_pretrained_lm, postprocess_of, source_info

log = logging.getLogger(__name__)

#: PyTorch causal LM -> stateful OpenVINO IR (convert_model + make_stateful), FP32, checked against PyTorch.
EXPORT_OPENVINO_LM = StageSpec(
    "export", "OpenVINO export of a causal LM (stateful KV cache)", accepts=pairs(Format.pytorch, Precision.fp32),
    produces=pairs(Format.openvino, Precision.fp32), versions=("openvino", "torch", "transformers"),
    hint="export starts from a causal LM checkpoint (a Hugging Face …ForCausalLM folder)", config_version=1,
)
INPUTS = ("input_ids", "attention_mask", "position_ids")  # then beam_idx, added by beam_gather
#: the model file OpenVINO GenAI's ``LLMPipeline(folder, device)`` opens (optimum-intel's name for it)
MODEL_XML = "openvino_model.xml"
#: the tokenizer and detokenizer IRs ``LLMPipeline`` reads beside it, made by openvino-tokenizers
TOKENIZER_IRS = ("openvino_tokenizer.xml", "openvino_tokenizer.bin", "openvino_detokenizer.xml",
                 "openvino_detokenizer.bin")
#: what the step records of the folder's own runner
LLM_PIPELINE = "openvino_genai.LLMPipeline"


def genai_tokenizer(source: Path, out: Path) -> dict[str, Any]:
    """Put the tokenizer and detokenizer IRs OpenVINO GenAI's ``LLMPipeline`` reads (:data:`TOKENIZER_IRS`) into the
    artifact folder ``out``, whose Hugging Face tokenizer files are already there: copied from ``source`` where it
    holds them (a quantized artifact's input), else converted by openvino-tokenizers (``convert_tokenizer``, with the
    chat template in their runtime info). openvino-tokenizers is OpenVINO's own converter and the only one GenAI
    reads; without it the artifact still runs in edgecompress and in ``OVModelForCausalLM``, and the record says what
    is missing. Returns what the step records (``own_runtime``)."""
    import shutil

    from compress._optional import is_available

    said = {"api": LLM_PIPELINE}
    if all((Path(source) / n).is_file() for n in TOKENIZER_IRS):
        for n in TOKENIZER_IRS:
            shutil.copy2(Path(source) / n, out / n)
        return said | {"ready": True, "tokenizer": "copied from the input"}
    if not is_available("openvino_tokenizers"):
        return said | {"ready": False, "missing": "the tokenizer IRs: openvino-tokenizers is not installed "
                       "(pip install openvino-tokenizers, then export again)"}
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer

    from compress.teachers.lm_config import load_tokenizer

    try:
        tokenizer, detokenizer = convert_tokenizer(load_tokenizer(out), with_detokenizer=True)
    except Exception as e:  # noqa: BLE001 - its converters cover the common tokenizer models, not every one
        from compress.errors import first_line

        log.warning("openvino-tokenizers cannot convert this tokenizer (%s): the artifact runs in edgecompress, not "
                    "in %s", first_line(e), LLM_PIPELINE)
        return said | {"ready": False, "missing": f"the tokenizer IRs: openvino-tokenizers cannot convert this "
                       f"tokenizer ({first_line(e)})"}
    ov.save_model(tokenizer, str(out / TOKENIZER_IRS[0]))
    ov.save_model(detokenizer, str(out / TOKENIZER_IRS[2]))
    import openvino_tokenizers

    return said | {"ready": True, "tokenizer": f"openvino-tokenizers {openvino_tokenizers.__version__}"}


def cache_names(layers: int) -> dict[str, str]:
    """past input -> present output, the pairs ``make_stateful`` turns into variables."""
    return {f"past_key_values.{i}.{k}": f"present.{i}.{k}" for i in range(layers) for k in ("key", "value")}


def layer_masks(config, input_ids, attention_mask):
    """The 4-D float attention mask(s) from ``attention_mask`` (past + new tokens): causal, and for a sliding-window
    layer (Gemma 3's local layers, Mistral's) also no further back than ``sliding_window`` tokens, as transformers'
    ``sliding_window_causal_mask_function``. A model whose config lists ``layer_types`` takes a dict by layer type;
    one without takes the one mask its attention uses (sliding where the config names a window)."""
    import torch

    new, total = input_ids.shape[1], attention_mask.shape[1]
    q = torch.arange(new)[:, None] + (total - new)
    k = torch.arange(total)[None, :]
    causal = (k <= q)[None, None] & attention_mask[:, None, None, :].bool()

    def float_mask(allowed):
        return torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)

    c = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(c, "sliding_window", None)
    sliding = float_mask(causal & (k > q - window)[None, None]) if window else None
    types = getattr(c, "layer_types", None)
    if types:
        return {"full_attention": float_mask(causal), "sliding_attention": sliding if window else float_mask(causal)}
    return sliding if sliding is not None else float_mask(causal)


def _wrapper(model, layers: int):
    """``model`` as a module of flat tensors: (input_ids, attention_mask, position_ids, *past) -> (logits, *present)."""
    import torch
    from transformers.cache_utils import DynamicCache, DynamicLayer

    class FlatCache(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache()
            for i in range(layers):  # filled directly: DynamicLayer's first update concatenates onto torch.tensor([])
                if len(cache.layers) <= i:
                    cache.layers.append(DynamicLayer())
                layer = cache.layers[i]
                layer.dtype, layer.device, layer.is_initialized = past[2 * i].dtype, past[2 * i].device, True
                layer.keys, layer.values = past[2 * i], past[2 * i + 1]
            out = self.model(input_ids=input_ids, attention_mask=layer_masks(model.config, input_ids, attention_mask),
                             position_ids=position_ids,
                             past_key_values=cache, use_cache=True)
            flat = []
            for layer in out.past_key_values.layers:
                flat += [layer.keys, layer.values]
            return (out.logits, *flat)

    return FlatCache().eval()


def convert_stateful(source: Path, cfg: dict[str, Any]):
    """The checkpoint ``source`` as a stateful ``openvino.Model`` (FP32) and what the step records."""
    import warnings

    import openvino as ov
    import torch
    from openvino._offline_transformations import apply_make_stateful_transformation

    model = from_pretrained_lm(source, attn_implementation="sdpa")
    cache = cache_of(cfg)
    layers, kv, hd = cache.layers, cache.kv_heads, cache.head_size
    past = [torch.zeros(1, kv, 2, hd) for _ in range(2 * layers)]
    example = (torch.ones(1, 3, dtype=torch.long), torch.ones(1, 5, dtype=torch.long), torch.arange(2, 5)[None], *past)
    shapes = [ov.PartialShape([1, -1])] * 3 + [ov.PartialShape([1, kv, -1, hd])] * (2 * layers)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's tracer warnings on transformers' Python branches
        om = ov.convert_model(_wrapper(model, layers), example_input=example, input=shapes)
    names = cache_names(layers)
    for port, name in zip(om.inputs, [*INPUTS, *names], strict=True):
        port.get_tensor().set_names({name})
    for port, name in zip(om.outputs, ["logits", *names.values()], strict=True):
        port.get_tensor().set_names({name})
    beam_gather(om, list(names))
    apply_make_stateful_transformation(om, names)
    state_initializer(om)
    return om, {"converter": "openvino.convert_model (TorchScript trace) + apply_make_stateful_transformation",
                "precision": "fp32", "variables": len(names)}


def beam_gather(om, past: list[str]) -> None:
    """Add a ``beam_idx`` input (i32 [batch]) and read every past tensor through ``Gather(past, beam_idx, axis 0)``
    (the cache rows reordered for beam search: identity for batch 1 with ``beam_idx`` 0). Run before make_stateful.
    Without it the CPU plugin's StatefulSDPAFusion, whose pattern is ReadValue -> Gather(beam_idx) -> Concat -> SDPA
    with the Concat's Assign, does not match and the attention runs decomposed (MatMul, Softmax, a Concat per step)."""
    import openvino as ov
    import openvino.opset13 as ops

    beam = ops.parameter(ov.PartialShape([om.input("input_ids").get_partial_shape()[0]]), ov.Type.i32, name="beam_idx")
    beam.output(0).get_tensor().set_names({"beam_idx"})
    om.add_parameters([beam])
    for name in past:
        port = om.input(name)
        users = port.get_target_inputs()
        gathered = ops.gather(port, beam, ops.constant(0))
        for user in users:
            user.replace_source_output(gathered.output(0))
    om.validate_nodes_and_infer_types()


def state_initializer(om) -> None:
    """Give every ReadValue (a cache variable) an initial value: zeros [batch, kv_heads, 0, head_size], the batch read
    from ``input_ids``, as optimum-intel's ``build_state_initializer`` does. OpenVINO's make_stateful leaves them
    without one; NNCF's layer-wise algorithms (GPTQ) cut subgraphs out of the model and need it."""
    import numpy as np
    import openvino.opset13 as ops

    batch = ops.gather(ops.shape_of(om.input("input_ids"), output_type="i64"), ops.constant([0]), ops.constant(0))
    for op in om.get_ops():
        if op.get_type_name() != "ReadValue":
            continue
        dims = [batch if i == 0 else ops.constant(np.array([d.min_length], dtype=np.int64))
                for i, d in enumerate(op.get_output_partial_shape(0))]
        zeros = ops.broadcast(ops.constant(0.0, dtype=op.get_output_element_type(0)), ops.concat(dims, axis=0))
        op.set_arguments([zeros])
    om.validate_nodes_and_infer_types()


def ir_tensors(om):
    """The stateful IR's inputs and outputs as :class:`~compress.artifact_entries.TensorSpec` lists."""
    from compress.artifact_entries import TensorSpec

    def spec(port) -> TensorSpec:
        dtype = {"i64": "int64", "i32": "int32", "f32": "float32"}.get(port.get_element_type().get_type_name(),
                                                                        port.get_element_type().get_type_name())
        shape = [d.get_length() if d.is_static else ("batch" if i == 0 else "sequence")
                 for i, d in enumerate(port.get_partial_shape())]
        return TensorSpec(name=port.get_any_name(), dtype=dtype, shape=shape)

    return [spec(p) for p in om.inputs], [spec(p) for p in om.outputs]


def export_openvino_lm(source: Path | str, out: Path | str, config: ExportConfig | None = None, *,
                       force: bool = False, progress: Progress | None = None) -> Artifact:
    """Export the causal LM checkpoint ``source`` to an FP32 stateful OpenVINO IR at ``out``.

    The artifact holds ``openvino_model.xml`` + ``.bin``, the tokenizer files (and the tokenizer IRs OpenVINO GenAI
    reads: :func:`genai_tokenizer`), ``generation_config.json`` and ``config.json``; the manifest's postprocess
    describes the cache (layout ``stateful``). The export step's metrics
    hold the check against PyTorch (``generation_parity``); a prefill difference above ``config.atol`` or a different
    greedy token is a :class:`~compress.errors.ParityError` and nothing is written.
    """
    from compress._optional import require
    from compress.artifact import Manifest, TextPreprocess, library_versions
    from compress.storage import tree_bytes
    from compress.tasks import task_for

    require("openvino", "OpenVINO export")
    config = config or ExportConfig()
    source = Path(source)
    out = check_output(out, force)
    if Path(out).resolve() == source.resolve():
        raise ConfigError("--out is the source directory", hint="choose a new directory for the artifact")
    cfg = hf_config(source)
    output = EXPORT_OPENVINO_LM.output(out, config, force=force)
    with output.writing(need_bytes=2 * tree_bytes(source) + (1 << 20)) as o:
        import openvino as ov

        start_phase(progress, "converting to a stateful OpenVINO IR")
        om, built = convert_stateful(source, cfg)
        ov.save_model(om, str(o.dir / MODEL_XML), compress_to_fp16=False)
        copy_travel(source, o.dir)
        own = genai_tokenizer(source, o.dir)
        post = postprocess_of(source, cfg)
        # callers feed input_ids + attention_mask (the backend derives position_ids), as for the ONNX route
        post.cache = post.cache.model_copy(update={"layout": "stateful"})
        inputs, outputs = ir_tensors(om)
        del om
        release_freed()  # the converted graph's weights (and PyTorch's, freed with the trace): not beside the check's
        manifest = Manifest(
            task=task_for("text", kind="generation"), format=Format.openvino, precision=Precision.fp32,
            model_file=MODEL_XML,
            inputs=inputs, outputs=outputs, preprocess=TextPreprocess(), postprocess=post,
            max_length=post.cache.max_length,
            source=source_info(source, cfg),
            versions=library_versions("openvino"),
        )
        step = o.describe(manifest, input_digest=manifest.source.sha256, extra_config={"converter": built,
                                                                                     "own_runtime": own})
        prompt, said = prompt_ids(source, config.sample_data)
        start_phase(progress, "checking the IR against PyTorch")
        check = draft_against_torch(o.draft(), "openvino", source, prompt) | {
            "prompt": said, "atol": config.atol, "reference": "PyTorch (transformers) FP32"}
        step.metrics["generation_parity"] = check
        require_generation_parity(check, config.atol, "the OpenVINO IR")
    log.info("exported %s to %s (stateful IR; prefill max |diff| %.2e, %d decode steps equal)", source, out,
             check["prefill_max_abs_diff"], DECODE_STEPS)
    return output.artifact
