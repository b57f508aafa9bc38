"""Weight-only INT4 / INT8 of a causal LM's ONNX artifact (ONNX Runtime GenAI's builder graph, task text-generation),
through ONNX Runtime's ``MatMulNBitsQuantizer``.

What is quantized, and how:

- every MatMul with a constant weight (the fused QKV, o_proj, the MLP) to ``MatMulNBits`` at 4 bits (``--precision
  int4``) or 8 (``int8``), in blocks of ``int4.block_size`` weights along the input dimension, by
  ``int4.algorithm``: ``rtn`` (ONNX Runtime's own round-to-nearest, symmetric unless ``--asymmetric``), ``hqq``
  (half-quadratic, asymmetric), ``gptq`` (calibrated on text windows: ``--calibration`` text, else the built-in
  sentence), ``k_quant`` (llama.cpp's k-quant search). Others (awq, scale_estimation) are refused in one line.
- the LM head (the MatMul that makes ``logits``) at ``int4.lm_head_bits`` (8 by default, a measured choice: on the
  real SmolLM2-135M, HQQ blocks of 32, 16 WikiText-2 windows of 256 against the FP32 export, the head and the tied
  embedding at 8 bits cost +0.45% perplexity, KL 0.004, top-1 95.9%, 100.9 MB; both at 4 bits +12.5%, KL 0.118,
  top-1 75.6%, and 104.5 MB, larger, since a 4-bit tied table is written twice, as head and as embedding; issue 68,
  docs/guides/lm.md), round to nearest;
- the token embedding table at ``int4.embeddings_bits`` (8 by default: int8 rows in blocks with a float scale each,
  read by standard Gather/Cast/Mul; 4: ONNX Runtime's GatherBlockQuantized, rewritten to standard operators by
  :mod:`compress.stages.quantize.int4_gather`; 32: float). The builder ties the embedding to the LM head (a Gather of the transposed head
  weight); it is untied first, so each gets its own precision.

Every MatMulNBits gets accuracy level :data:`ACCURACY_LEVEL` (int8 activations in the CPU kernel: the fast one).
Generators default to blocks of 32 (:data:`compress.stages.quantize.lm.common.GENERATOR_BLOCK`), as llama.cpp's
Q4_0: on stories260K over the TinyStories sample (windows of 256) RTN with blocks of 128 loses more perplexity than
with 32 (docs/guides/lm.md has the figures); ``--block-size`` overrides it.

After quantizing, greedy continuations of a few prompts through the quantized artifact (the ORT backend's prefill /
step) are compared with the FP32 input's: the share of tokens equal before the first divergence, the prompt logits'
top-1 agreement and KL, and a collapse (all one token, a repetition loop, KL far off) is a loud warning, or an error
with ``--strict`` (nothing written). The step records the size before and after and what each weight became.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from compress.artifact import Artifact, Precision, child_manifest
from compress.errors import ConfigError
from compress.host.memory import check_memory, release_freed
from compress.progress import Progress
from compress.stages.quantize.config import QUANTIZE_ONNX, QuantizeConfig, refuse_ignored
from compress.stages.quantize.graph import resolve_exclude_nodes
from compress.stages.quantize.lm.common import calibration_windows, collapse_check, resolve_int4, text_windows
from compress.stages.quantize.lm.matmul_nbits_graph import (
    embedding_gather,
    fold_zero_points,
    half_rope_tables,
    half_scales,
    int8_gather,
    lm_head,
    shared_int8_gather,
    untie_embeddings,
)
from compress.tasks.generation import copy_travel, require_no_collapse

log = logging.getLogger(__name__)

ALGORITHMS = ("rtn", "hqq", "gptq", "k_quant")  #: what ONNX Runtime's MatMulNBits quantizer takes here
#: the INT4 default: each MatMul's candidate by measurement (:mod:`.onnx_mix`); "auto" is not an algorithm of its own
AUTO = "auto"
#: quantize's own check (greedy continuations of its prompts against the FP32 input's) warns below / above these, a
#: model that is not collapsed but has moved: the default gate's bars are top-1 0.80 and KL 0.10 on the user's text
WARN_CONTINUATION = 0.5
WARN_PROMPT_KL = 0.05
#: MatMulNBits' accuracy_level for generators: 4 = int8 activations in the CPU kernel, as ONNX Runtime GenAI's builder
#: sets for CPU INT4. At 0 (float compute) a 106M Llama decodes 24 tokens/s in INT4 and 2 in INT8 on this VM
#: (2 threads) against 37 and 32 at 4; stories260K's perplexity moves by < 0.1% (docs/guides/lm.md)
ACCURACY_LEVEL = 4
#: accuracy-aware INT4 without --data judges on this many windows the FP32 model samples itself (seed below)
SELF_WRITTEN_WINDOWS = 16
SELF_WRITTEN_SEED = 0
#: the settings a generator's weight-only quantization reads (flat keys); any other given is refused
_APPLIES = {"precision", "block_size", "symmetric", "int4_algorithm", "embeddings_bits", "lm_head_bits", "calibration",
            "calibration_samples", "exclude_nodes", "strict", "max_perplexity_increase", "data", "eval_samples",
            "qat_steps", "qat_data", "qat_source", "qat_lr", "qat_batch_size", "qat_lora_rank"}  # QAT: .qat


def _algo_config(algorithm: str, *, bits: int, block: int, symmetric: bool, reader=None,
                 accuracy_level: int | None = None):
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    if algorithm == "rtn":
        return mnq.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=symmetric, bits=bits,
                                                op_types_to_quantize=("MatMul",), accuracy_level=accuracy_level)
    if algorithm == "hqq":
        return mnq.HQQWeightOnlyQuantConfig(block_size=block, bits=bits, op_types_to_quantize=("MatMul",))
    if bits != 4:
        raise ConfigError(f"--int4-algorithm {algorithm} makes 4-bit weights only in ONNX Runtime",
                          hint="use rtn or hqq with --precision int8")
    if algorithm == "gptq":
        return mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=reader, block_size=block,
                                             op_types_to_quantize=("MatMul",))
    return mnq.KQuantWeightOnlyQuantConfig(op_types_to_quantize=("MatMul",))


def _matmuls(model) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]


def _check_k_quant_blocks(model, block: int, exclude: tuple[str, ...]) -> None:
    """ONNX Runtime's k-quant path (its neural_compressor RTN) packs two 4-bit zero points a byte per output row, so it
    takes only a weight whose input dimension makes an even number of ``block`` blocks (a 64-wide layer under
    --block-size 64 or 128 ends in an unexplained reshape error, exit 3): refused in one line before the work, naming a
    block size every quantized MatMul takes."""
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    head = lm_head(model)
    widths = {n: dims[nodes[n].input[1]][0] for n in _matmuls(model) if n != head and n not in exclude}

    def takes(b: int, k: int) -> bool:
        return -(-k // b) % 2 == 0

    odd = sorted(n for n, k in widths.items() if not takes(block, k))
    if odd:
        fits = [b for b in (128, 64, 32, 16) if all(takes(b, k) for k in widths.values())]
        raise ConfigError(f"--int4-algorithm k_quant takes a weight only where its input makes an even number of "
                          f"--block-size {block} blocks: {len(odd)} MatMul(s) are {widths[odd[0]]} wide (e.g. {odd[0]})",
                          hint=f"use --block-size {fits[0]}" if fits else "use --int4-algorithm rtn or hqq")


def more_bits_layers(layers: int) -> list[int]:
    """The layers llama.cpp's Q4_K_M gives more bits (``use_more_bits`` in its quantizer: the first and last eighth,
    and every third layer between)."""
    from compress.stages.quantize.lm.bit_allocation import use_more_bits

    return [i for i in range(layers) if use_more_bits(i, layers)]


#: the builder graph's MatMuls of a layer that Q4_K_M's rule gives more bits: ffn_down, and the fused QKV (llama.cpp
#: raises attn_v; the builder fuses V into one MatMul with Q and K)
_MORE_BITS = {"down": ("mlp/down_proj",), "down+qkv": ("mlp/down_proj", "attn/qkv_proj")}


def more_bits_nodes(model, layers: int, which: str = "down") -> tuple[str, ...]:
    """The MatMuls of ``model`` (a builder graph) that Q4_K_M's rule raises (``which``: a key of :data:`_MORE_BITS`)
    in :func:`more_bits_layers`."""
    wanted = {f"/model/layers.{i}/{part}/MatMul" for i in more_bits_layers(layers) for part in _MORE_BITS[which]}
    return tuple(n for n in _matmuls(model) if n in wanted)


def weight_only(model, *, bits: int, block: int, symmetric: bool = True, algorithm: str = "rtn",
                lm_head_bits: int = 8, embeddings_bits: int = 8, exclude: tuple[str, ...] = (),
                at8: tuple[str, ...] = (), reader=None, accuracy_level: int | None = None,
                share_tied: bool = True, fp16_scales: bool = False, mix: dict[str, str] | None = None,
                source_dir: Path | None = None) -> tuple[Any, dict[str, Any]]:
    """Quantize the ONNX ``model`` weight-only; return the new ModelProto and
    what each weight became (``{"layers": {node: bits}, "lm_head": ..., "embeddings": ...}``). ``at8``: MatMuls kept
    at 8 bits (round to nearest) whatever ``bits`` is (accuracy-aware INT4); ``exclude``: kept in float.
    ``mix``: MatMul -> a :data:`.bit_allocation.ONNX_CANDIDATES` name, each body MatMul by its own candidate (the
    INT4 default, :mod:`.onnx_mix`); MatMuls it does not name take ``algorithm`` at ``bits``.
    ``share_tied``: a tied embedding at 8 bits reads the 8-bit LM head's table (:func:`shared_int8_gather`, the table
    written once) instead of a copy of its own. HQQ's float zero points are folded out of the nodes
    (:func:`fold_zero_points`: ONNX Runtime's fast kernels take integer ones only); ``fp16_scales``: every scale (and
    those offsets) stored in FP16 (:func:`half_scales`: the body runs in FP16 between Casts; the LM head keeps FP32
    compute, its FP16 scales cast back when the session loads). ``model``'s weights may still be in its data file
    (``onnx.load(..., load_external_data=False)``) in the folder ``source_dir``: the body's are then read a batch at a
    time as they are quantized (:mod:`.onnx_weights`), never all at once."""
    from compress.stages.quantize.lm.bit_allocation import ONNX_CANDIDATES
    from compress.stages.quantize.lm.onnx_weights import load_tensors, quantize_nodes

    if algorithm not in ALGORITHMS:
        raise ConfigError(f"--int4-algorithm {algorithm} is not one ONNX Runtime's MatMulNBits quantizer runs here",
                          hint=f"choose {', '.join(ALGORITHMS)}")
    head = lm_head(model)
    body = [n for n in _matmuls(model) if n != head and n not in exclude]
    kept = [n for n in _matmuls(model) if n in exclude]
    nodes = {n.name: n for n in model.graph.node}
    load_tensors(model, source_dir, skip={nodes[n].input[1] for n in body})  # all but the body: read as quantized
    tied = untie_embeddings(model)
    level = {"accuracy_level": accuracy_level, "base_dir": source_dir}
    # the head first, round to nearest at its own bits: the body's algorithm then finds it already MatMulNBits;
    # symmetric at 8 bits whatever the body is: the tied embedding reads the same table (shared_int8_gather)
    if head not in exclude:
        model = quantize_nodes(model, [head], None, bits=lm_head_bits, block=block,
                                symmetric=symmetric or lm_head_bits == 8, **level)
    mix = {n: c for n, c in (mix or {}).items() if n in body}
    by_name = {c.name: c for c in ONNX_CANDIDATES}
    layers: dict[str, int] = {}
    for cand in ONNX_CANDIDATES:  # the mix's groups, each by its own candidate
        names = [n for n in body if mix.get(n) == cand.name]
        cfg = _algo_config(cand.algorithm, bits=cand.bits, block=block, symmetric=cand.symmetric,
                           accuracy_level=accuracy_level)
        model = quantize_nodes(model, names, cfg, bits=cand.bits, block=block, symmetric=cand.symmetric, **level)
        layers |= {n: cand.bits for n in names}
    body = [n for n in body if n not in mix]
    at8 = tuple(n for n in at8 if n in body)
    if at8 and bits != 8:
        model = quantize_nodes(model, list(at8), None, bits=8, block=block, symmetric=symmetric, **level)
    rest = [n for n in body if n not in at8 or bits == 8]
    cfg = _algo_config(algorithm, bits=bits, block=block, symmetric=symmetric, reader=reader,
                       accuracy_level=accuracy_level)
    model = quantize_nodes(model, rest, cfg, bits=bits, block=block, symmetric=symmetric, **level)
    layers |= {n: 8 for n in at8 if bits != 8} | {n: bits for n in rest}
    load_tensors(model, source_dir)  # what the quantizer left as it was (a weight it does not take)
    emb = embedding_gather(model)
    shared = (share_tied and emb is not None and tied is not None and embeddings_bits == 8 and lm_head_bits == 8
              and head not in exclude and shared_int8_gather(model, emb, head))
    if shared:
        pass  # the tied table is written once: the head's 8-bit weight, read by the embedding too
    elif emb is not None and embeddings_bits == 8:
        int8_gather(model, emb, block)
    elif emb is not None and embeddings_bits == 4:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        from compress.stages.quantize.int4_gather import unpack_int4_gathers

        q = MatMulNBitsQuantizer(model, bits=4, block_size=block, is_symmetric=True, op_types_to_quantize=("Gather",),
                                 nodes_to_include=[emb], quant_axes=(("Gather", 1),))
        q.process()
        model = q.model.model
        unpack_int4_gathers(model)
    hqq = algorithm == "hqq" or any(by_name[c].algorithm == "hqq" for c in mix.values())
    folded = fold_zero_points(model, offsets_fp16=fp16_scales) if hqq else 0
    heads = tuple(n.name for n in model.graph.node if n.op_type == "MatMulNBits" and n.name.startswith(f"{head}_Q"))
    halved = half_scales(model, keep=heads) if fp16_scales else 0
    rope_fp16 = 0
    if fp16_scales:
        half_scales(model, only=heads, compute="float32")
        rope_fp16 = half_rope_tables(model)
    if accuracy_level is not None:  # every MatMulNBits, whichever algorithm made it (HQQ, GPTQ, k_quant set none)
        from onnx import helper

        for node in model.graph.node:
            if node.op_type == "MatMulNBits":
                keep = [a for a in node.attribute if a.name != "accuracy_level"]
                del node.attribute[:]
                node.attribute.extend([*keep, helper.make_attribute("accuracy_level", accuracy_level)])
    layers |= {n: 32 for n in kept}
    return model, {"layers": layers, "lm_head": {"node": head, "bits": 32 if head in exclude else lm_head_bits},
                   "embeddings": {"node": emb, "bits": embeddings_bits if emb else None, "untied": tied is not None,
                                  "shared_with_lm_head": bool(shared)},
                   "algorithm": algorithm, "block_size": block, "accuracy_level": accuracy_level,
                   "scales": "float16" if fp16_scales else "float32", "zero_points_folded": folded,
                   "fp16_nodes": halved, "rope_tables_fp16": rope_fp16}


class _Windows:
    """GPTQ's calibration reader: token windows fed with an empty cache (past length 0)."""

    def __init__(self, windows: list[list[int]], state: dict[str, np.ndarray], inputs: set[str]):
        self._it = iter(windows)
        self._state, self._inputs = state, inputs

    def get_next(self):
        ids = next(self._it, None)
        if ids is None:
            return None
        x = np.asarray([ids], dtype=np.int64)
        feed = {"input_ids": x, "attention_mask": np.ones_like(x), **self._state}
        if "position_ids" in self._inputs:
            feed["position_ids"] = np.arange(x.shape[1], dtype=np.int64)[None]
        return feed

    def __iter__(self):  # GPTQ iterates the reader
        return self

    def __next__(self):
        feed = self.get_next()
        if feed is None:
            raise StopIteration
        return feed


def _state_for(art: Artifact) -> dict[str, np.ndarray]:
    from compress.runtimes.base import StateSpec

    spec = StateSpec.from_tensors(art.manifest.inputs, art.manifest.outputs)
    return spec.initial() if spec else {}


def self_written_windows(art: Artifact, count: int, window: int, *, seed: int = 0) -> np.ndarray:
    """``count`` windows [count, window] of text the generator ``art`` writes itself through ONNX Runtime: each
    starts at BOS (else EOS) and samples every next token from the model's distribution (temperature 1, ``seed``),
    through the cache (prefill, then one step a token). Accuracy-aware INT4 judges on them when no text is given: in
    the model's own domain by construction, though easier to predict than human text (a lower perplexity)."""
    from compress.runtimes.base import load_runtime

    post = art.manifest.postprocess
    start = post.bos_token_id if post.bos_token_id is not None else post.eos_token_id
    if start is None:
        raise ConfigError("the model has neither a BOS nor an EOS token to start its own text from",
                          hint="pass --data TEXT for the perplexity budget")
    rng = np.random.default_rng(seed)
    backend = load_runtime(art, "onnxruntime")
    out = np.empty((count, window), dtype=np.int64)
    try:
        for row in out:
            row[0] = start
            ids = row[:1][None]
            logits, state = backend.prefill({"input_ids": ids, "attention_mask": np.ones_like(ids)})
            for t in range(1, window):
                z = logits["logits"][0, -1].astype(np.float64)
                p = np.exp(z - z.max())
                row[t] = rng.choice(p.size, p=p / p.sum())
                if t + 1 < window:
                    logits, state = backend.step({"input_ids": row[t:t + 1][None],
                                                  "attention_mask": np.ones((1, t + 1), dtype=np.int64)}, state)
    finally:
        backend.close()
    return out


def window_scores(model, windows: np.ndarray, state: dict[str, np.ndarray],
                  ref: list[np.ndarray] | None = None) -> tuple[dict[str, float], list[np.ndarray]]:
    """:class:`compress.tasks.generation.GenerationStream` of ``model`` (a ModelProto, run in ONNX Runtime) on
    ``windows``: perplexity and, with ``ref`` (the reference's logits per window), KL and top-1 agreement; also this
    model's logits per window ([1, T, V] each)."""
    from compress.stages.quantize.lm.onnx_mix import feeds, session
    from compress.tasks.generation import GenerationStream

    sess = session(model)
    stream, out = GenerationStream(), []
    for k, w in enumerate(windows):
        logits = sess.run(["logits"], feeds(sess, w[None], state))[0]
        stream.update(logits, w[None], None if ref is None else ref[k])
        out.append(logits)
    return stream.result(), out


def _accuracy_aware(art: Artifact, model, windows: np.ndarray, budget: float, block: int, exclude: tuple[str, ...],
                    quantize_with, progress) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """INT4 within ``budget`` (the largest perplexity increase over the FP32 ``model`` on ``windows``): the default's
    measurement and budget search judged on those windows (:func:`.onnx_mix.within_perplexity`), each choice
    written by ``quantize_with(model, mix=...)`` and measured for real. Returns (model, what each weight became, the
    record)."""
    import copy

    from compress.stages.quantize.lm import onnx_mix

    inputs = _mix_inputs(art, model, exclude)

    def verify(choice: dict[str, str]):
        q, made = quantize_with(copy.deepcopy(model), mix=choice)
        scores, _ = window_scores(q, windows, inputs["state"])
        return q, made, scores["perplexity"]

    return onnx_mix.within_perplexity(model, block=block, windows=windows, budget=budget, verify=verify,
                                      progress=progress, **inputs)


def _mix_inputs(art: Artifact, model, exclude: tuple[str, ...]) -> dict[str, Any]:
    """What the INT4 default's measurement reads of ``art`` and its FP32 ``model``: the body's MatMuls (all but the
    LM head and ``exclude``), the built-in text in the model's own tokens, the empty cache, the KV width Q4_K_M's rule
    costs."""
    from compress.stages.quantize.lm.bit_allocation import importance_ids

    head = lm_head(model)
    cache = art.manifest.postprocess.cache
    return {"body": [n for n in _matmuls(model) if n != head and n not in exclude], "ids": importance_ids(art),
            "state": _state_for(art), "kv_width": cache.kv_heads * cache.head_size if cache else None,
            "source": art.path / art.manifest.model_file}  # the probe maps its weights from the file


def _mix(art: Artifact, model, block: int, exclude: tuple[str, ...], progress) -> tuple[dict[str, str], dict]:
    """The INT4 default's plan for the FP32 ``model`` of ``art`` (:func:`.onnx_mix.plan`)."""
    from compress.stages.quantize.lm import onnx_mix

    return onnx_mix.plan(model, block=block, progress=progress, **_mix_inputs(art, model, exclude))


def quantize_lm_onnx(art: Artifact, out: Path | str, config: QuantizeConfig, *, force: bool = False,
                     trained: Artifact | None = None, qat: dict[str, Any] | None = None,
                     progress: Progress | None = None) -> Artifact:
    """Quantize the FP32 ONNX artifact ``art`` of a causal LM weight-only (INT4 or INT8) into a new artifact at
    ``out``; see the module's docstring. A collapse is a warning (in the step's metrics), an error with ``strict``.
    ``trained``: quantization-aware INT4's re-export of ``art`` (:mod:`.qat`), whose graph is quantized instead,
    its run's record ``qat`` in the step's metrics; lineage and checks stay ``art``'s."""
    import onnx

    from compress.storage import tree_bytes

    QUANTIZE_ONNX.check(art)  # an INT4/INT8 generator again: refused naming the FP32 one it came from
    given = config.given_keys()
    refuse_ignored(config, "onnx-causal-lm")  # what this quantizer does not read, in one line
    bits = 4 if config.precision == "int4" else 8
    # quantization-aware weights (trained) were trained for round to nearest's grid, with FP32 scales
    config = resolve_int4(config, bits, rtn=trained is not None)
    block, algorithm = config.int4.block_size, config.int4.algorithm
    if algorithm not in (*ALGORITHMS, AUTO):
        raise ConfigError(f"--int4-algorithm {algorithm}: ONNX Runtime's MatMulNBits quantizer takes "
                          f"{', '.join((AUTO, *ALGORITHMS))}", hint="awq and scale_estimation are OpenVINO's (NNCF)")
    if algorithm in (AUTO, "hqq") and "symmetric" in given and config.int4.symmetric and bits == 4:
        raise ConfigError(f"--symmetric does not apply to --int4-algorithm {algorithm} (it would be ignored): "
                          + ("the default chooses symmetric or asymmetric blocks per matrix by measurement"
                             if algorithm == AUTO else "HQQ's blocks are asymmetric (a float zero point each)"),
                          hint="add --int4-algorithm rtn for symmetric blocks everywhere, or drop --symmetric")
    if "calibration" in given and algorithm != "gptq":
        raise ConfigError("--calibration calibrates GPTQ only (it would be ignored)",
                          hint="add --int4-algorithm gptq, or drop --calibration")
    budget = config.accuracy.max_perplexity_increase
    if budget is None and config.accuracy.data:
        raise ConfigError("--data measures accuracy-aware INT4's perplexity (it would be ignored)",
                          hint="add --max-perplexity-increase, or drop --data")
    if budget is not None and bits != 4:
        raise ConfigError("--max-perplexity-increase moves INT4 layers back to 8 bits (it would be ignored for int8)",
                          hint="add --precision int4, or drop it")
    src = (trained or art).path / (trained or art).manifest.model_file
    if algorithm == AUTO:  # the measured mix's peak (compress.host.memory): refused before the work
        check_memory("quantize", art.size_bytes(), art.path.name)
    output = QUANTIZE_ONNX.output(out, config, force=force)
    with output.writing(need_bytes=tree_bytes(art.path)) as o:
        measured = algorithm == AUTO and budget is None  # the default: measured per model
        # the graph alone: the measurement reads the weights from the file (.onnx_mix.Probe), the quantizer a batch
        # at a time (.onnx_weights)
        model = onnx.load(str(src), load_external_data=False)  # the weights are read as they are quantized
        if config.exclude_nodes:  # first:N / last:N as the MatMuls they stand for; an unknown name refused
            config = config.model_copy(update={"exclude_nodes": resolve_exclude_nodes(
                config.exclude_nodes, _matmuls(model), {n.name for n in model.graph.node})})
            o.config = config  # the step records the names they stood for
        if algorithm == "k_quant":
            _check_k_quant_blocks(model, block, tuple(config.exclude_nodes))
        reader = None
        if algorithm == "gptq":
            names = {t.name for t in art.manifest.inputs}
            reader = _Windows(calibration_windows(art, config), _state_for(art), names)
        mix, planned = None, None
        if measured:
            mix, planned = _mix(art, model, block, tuple(config.exclude_nodes), progress)
            release_freed()  # the probe's session and candidates, gone before the weights are read
        uniform = "hqq" if algorithm == AUTO else algorithm  # MatMuls no mix names (none where it is auto)

        def quantize_with(m, at8=(), mix=mix):
            return weight_only(m, bits=bits, block=block, symmetric=config.int4.symmetric, algorithm=uniform,
                               lm_head_bits=config.int4.lm_head_bits, embeddings_bits=config.int4.embeddings_bits,
                               exclude=tuple(config.exclude_nodes), at8=at8, reader=reader,
                               accuracy_level=ACCURACY_LEVEL, fp16_scales=trained is None, mix=mix,
                               source_dir=src.parent)

        record = None
        if budget is not None:
            window = art.manifest.postprocess.window
            if config.accuracy.data:
                windows = text_windows(art, config.accuracy.data, window, max(1, min(config.accuracy.samples, 16)),
                                       "--data")
            else:  # no text given: the FP32 model's own, sampled (it is the distribution the budget protects)
                windows = self_written_windows(art, SELF_WRITTEN_WINDOWS, window, seed=SELF_WRITTEN_SEED)
            model, made, record = _accuracy_aware(art, model, windows, budget, block, tuple(config.exclude_nodes),
                                                  quantize_with, progress)
            record["text"] = (str(config.accuracy.data) if config.accuracy.data else
                              f"self-written: {len(windows)} windows sampled from the FP32 input "
                              f"(temperature 1, seed {SELF_WRITTEN_SEED})")
        else:
            model, made = quantize_with(model)
        onnx.save(model, str(o.dir / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                  location="model.onnx.data", size_threshold=1024)
        del model
        release_freed()  # the quantized model's protobuf, gone before the check's two sessions
        copy_travel(art.path, o.dir)
        manifest = child_manifest(art.manifest, precision=Precision(config.precision.value), model_file="model.onnx")
        before, after = tree_bytes(art.path), tree_bytes(o.dir)
        step = o.describe(manifest, input_digest=art.digest,
                          lineage=art.manifest.steps, extra_config={"weights": {k: v for k, v in made.items()
                                                                                if k != "layers"}})
        step.metrics.update({"size_bytes_before": before, "size_bytes_after": after,
                             "compression": round(before / max(after, 1), 3),
                             "weights": {"bits": made["layers"], "lm_head": made["lm_head"],
                                         "embeddings": made["embeddings"]}})
        if qat is not None:
            step.metrics["qat"] = qat
        if planned is not None:
            step.metrics["int4_mix"] = planned
        if record is not None:
            step.metrics["accuracy_aware"] = record
            if not record["held"]:
                from compress.errors import AccuracyBudgetError

                last = min(record["written"], key=lambda w: w["increase"])
                worst = sorted(record["matrices"], key=lambda n: -max(record["matrices"][n]["output_error"].values()))
                raise AccuracyBudgetError(
                    f"INFEASIBLE: no INT4 mix holds perplexity within +{budget:.1%}; the closest, "
                    f"{last['counts']} (body {last['body_bytes'] / 1e6:.1f} MB), makes {last['increase']:+.1%}",
                    metric="perplexity", baseline=record["fp32_perplexity"], best=last["perplexity"],
                    allowed_min=record["fp32_perplexity"] * (1 + budget), costliest=worst[:5], best_candidate=None,
                    hint="the LM head and embeddings stay at --lm-head-bits/--embeddings-bits: try --precision int8, "
                    "or a larger budget; nothing was written")
        check = collapse_check(art, o.draft())
        step.metrics["generation_vs_input"] = check
        require_no_collapse(check, f"the {config.precision} generator", strict=config.strict, log=log,
                            hint="try --max-perplexity-increase 0.05 --data TEXT, or --precision int8; nothing was "
                            "written (--strict)")
        if (said := moved(check, planned, bits)) is not None:
            step.metrics["warning"] = said
            log.warning("%s", said)
    return output.artifact


def moved(check: dict[str, Any], planned: dict[str, Any] | None, bits: int) -> str | None:
    """A warning where quantize's own check saw the model move though not collapse (continuation agreement under
    :data:`WARN_CONTINUATION`, prompt KL over :data:`WARN_PROMPT_KL`), or where the INT4 mix's own check could not
    hold on the built-in text even with every matrix at 8 bits; naming what the measurement suggests. None when all
    held."""
    if check.get("collapsed"):
        return None  # require_no_collapse has said it
    why = []
    if check["continuation_agreement"] < WARN_CONTINUATION:
        why.append(f"greedy continuations agree with the input's for {check['continuation_agreement']:.0%}")
    if check["prompt_kl_mean"] > WARN_PROMPT_KL:
        why.append(f"prompt KL {check['prompt_kl_mean']:.3f} > {WARN_PROMPT_KL}")
    if planned is not None and not planned["held"]:
        last = planned["tried"][-1]
        why.append(f"the INT4 mix missed its check on the built-in text even at {last['body_bytes'] / 1e6:.1f} MB "
                   f"(KL {last['kl']:.3f})")
    if not why:
        return None
    fix = ("validate it on your text (validate --data); if it fails, --max-perplexity-increase 0.05 --data TEXT "
           "moves the costliest matrices to 8 bits, or --precision int8" if bits == 4 else
           "validate it on your text (validate --data)")
    return f"the quantized model moved from its input ({'; '.join(why)}): {fix}"
