"""Estimates for text generators (causal LMs with a KV cache) on a device we cannot measure on.

A generator's speed has two regimes, each with its own roof:

- **Decode** (one token at a time, batch 1) reads every weight once per token, plus the KV cache of the context so
  far, and does ~2 FLOPs per weight: far below any CPU's compute peak, so memory bandwidth bounds it::

      decode tokens/s <= bandwidth / (weight bytes + KV cache bytes read per token at context C)

  with KV bytes = 2 (K and V) x layers x kv_heads x head_size x bytes per element x C. The estimate takes the larger
  of that memory time and the compute time (2 x parameters / the FP32 peak at the calibrated efficiency), so a model
  small enough to sit in cache still has a floor.
- **Prefill** (the prompt in one pass) does 2 x parameters FLOPs per prompt token plus the attention products
  (4 x layers x heads x head_size x position per token): compute bound. It goes through the encoders' roofline
  (:func:`compress.estimates.roofline.roofline`, same efficiency factors). Time to first token = the prefill.

**Weight bytes are the size on disk of the model's weight files** (ONNX + external data, OpenVINO's .bin, GGUF,
safetensors): a fair first proxy, since weight-only INT4/INT8 formats store what the kernels read (MatMulNBits
blocks with their scales, GGUF's Q4_0/Q8_0 blocks, NNCF's compressed constants). Two corrections: an embedding table
that is only gathered (a ``Gather`` in ONNX, ``token_embd`` in a GGUF whose LM head is a separate ``output`` matrix,
``embed_tokens`` of an untied checkpoint) is read a row per token, so its bytes are left out; a tied table is read
whole by the LM head, so it stays. Graph metadata (the .onnx protobuf, the IR's .xml) is counted: negligible.
Parameters (for FLOPs) are the weights of the matrix products: ``MatMul``/``Gemm`` initializers and
``MatMulNBits``' K x N (ONNX), every 2-D tensor but a gathered-only ``token_embd`` (GGUF), the static 2-D weight
inputs of ``MatMul`` (OpenVINO IR), every 2-D tensor but a gathered-only embedding (safetensors).

What this cannot know: the runtime's kernels (INT4 dequantisation is compute the bound ignores; llama.cpp's SIMD
dot products are faster than ONNX Runtime's on some CPUs), caches (a model that fits the L2/L3 decodes faster than
DRAM bandwidth allows), threads (decode needs several cores to saturate DRAM on most SoCs), per-operator overhead
(dominant for tiny models), and thermal limits. Figures are UNVERIFIED, as the encoders' estimates are: ``validate``
never judges a budget PASS from them. The measured error on this repository's host is in ``docs/guides/lm.md``
(``benchmarks/generators/generation_estimate.py``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.errors import ArtifactError, ConfigError
from compress.estimates.cost import GraphCost, NodeCost
from compress.estimates.roofline import DEFAULT_EFFICIENCY, Efficiency, Peaks, profile_peaks, roofline
from compress.storage import safetensors_header
from compress.tasks.generation import GENAI_CONFIG

if TYPE_CHECKING:
    from compress.profiles.schema import DeviceProfile

__all__ = ["ModelFacts", "GenerationEstimate", "model_facts", "kv_bytes_per_token", "estimate_generation", "main",
           "speed_estimate", "UNVERIFIED"]

UNVERIFIED = ("UNVERIFIED: a bandwidth/compute roofline of the model's files on the profile's peaks, not a "
              "measurement on the device")
_DTYPE_BYTES = {"float32": 4, "float": 4, "f32": 4, "float16": 2, "f16": 2, "fp16": 2, "bfloat16": 2, "bf16": 2,
                "int8": 1, "uint8": 1, "u8": 1, "i8": 1, "q8_0": 1}
_WEIGHT_SUFFIXES = (".onnx", ".data", ".bin", ".gguf", ".safetensors", ".xml")


@dataclass(frozen=True)
class ModelFacts:
    """What an estimate needs from a generator's files."""

    weight_bytes: int  # read per decoded token: weight files on disk minus gathered-only embedding tables
    file_bytes: int  # the model's weight files on disk
    gathered_bytes: int  # embedding tables read a row per token, left out of weight_bytes
    parameters: int  # weights of the matrix products (2 FLOPs each per token)
    layers: int
    kv_heads: int
    head_size: int
    heads: int | None = None  # attention heads (query); None: attention FLOPs from kv_heads (an underestimate)
    kv_dtype_bytes: int = 4
    model_file: str = ""
    source: list[str] = field(default_factory=list)  # how each figure was read


@dataclass
class GenerationEstimate:
    """A generator's estimated speed on one device (batch 1)."""

    decode_tokens_per_s: float
    decode_ms_per_token: float
    decode_bound: str  # "memory" or "compute"
    prefill_tokens_per_s: float
    time_to_first_token_ms: float
    prompt_tokens: int
    new_tokens: int
    context: int  # tokens in the KV cache at the decode step estimated (prompt + new_tokens / 2 by default)
    weight_mb: float
    kv_mb_per_token: float  # KV cache read per decoded token at ``context``
    parameters: int
    peaks: dict[str, Any]
    efficiency: dict[str, Any]
    facts: dict[str, Any]
    profile: str | None = None
    estimated: bool = True
    label: str = UNVERIFIED

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for k, v in list(out.items()):
            if isinstance(v, float):
                out[k] = round(v, 4)
        return out


# --------------------------------------------------------------------------------------------------
# Estimate
# --------------------------------------------------------------------------------------------------


def kv_bytes_per_token(facts: ModelFacts, context: int) -> int:
    """KV cache bytes one decode step reads at ``context`` tokens: K and V of every layer, every position."""
    return 2 * facts.layers * facts.kv_heads * facts.head_size * facts.kv_dtype_bytes * max(0, int(context))


def estimate_generation(
    model: Any,
    profile: DeviceProfile | str | None = None,
    *,
    peaks: Peaks | None = None,
    prompt_tokens: int = 128,
    new_tokens: int = 128,
    context: int | None = None,
    efficiency: Efficiency | None = None,
    facts: ModelFacts | None = None,
) -> GenerationEstimate:
    """Decode tokens/s, prefill tokens/s and time to first token of the generator ``model`` (an artifact, its
    directory, a model file, or a Hugging Face folder) on ``profile``'s device (or ``peaks``), batch 1.

    ``context``: the tokens in the cache at the decode step estimated; default the middle of the generation,
    ``prompt_tokens + new_tokens // 2``. ConfigError when the profile lacks the peaks; ArtifactError when the files
    say nothing of the model's shape."""
    if prompt_tokens < 1 or new_tokens < 0:
        raise ConfigError(f"prompt_tokens must be >= 1 and new_tokens >= 0 (got {prompt_tokens}, {new_tokens})")
    prof = None
    if peaks is None:
        if profile is None:
            raise ConfigError("estimate_generation needs a profile or peaks")
        from compress.profiles.load import load_profile

        prof = load_profile(profile) if isinstance(profile, (str, Path)) else profile
        peaks = profile_peaks(prof)
    elif profile is not None and not isinstance(profile, (str, Path)):
        prof = profile
    eff = efficiency or DEFAULT_EFFICIENCY
    facts = facts or model_facts(model)
    ctx = prompt_tokens + new_tokens // 2 if context is None else int(context)
    kv = kv_bytes_per_token(facts, ctx)

    memory_s = (facts.weight_bytes + kv) / (peaks.bandwidth_gbs * 1e9)
    compute_s = (2.0 * facts.parameters + _attention_flops(facts, ctx)) / (peaks.fp32_gflops * 1e9 * eff.compute_fp32)
    step_s = max(memory_s, compute_s)

    p = prompt_tokens
    attn = sum(_attention_flops(facts, i) for i in (range(p) if p <= 4096 else range(0, p, max(1, p // 4096))))
    if p > 4096:
        attn *= p / len(range(0, p, max(1, p // 4096)))
    nodes = [
        NodeCost("matrix products", "MatMul", flops=2.0 * facts.parameters * p,
                 bytes=facts.weight_bytes + kv_bytes_per_token(facts, p), weight_bytes=facts.weight_bytes,
                 dispatch=False),
        NodeCost("attention", "Attention", flops=attn, bytes=kv_bytes_per_token(facts, p), dispatch=False),
    ]
    pre = roofline(GraphCost(facts.model_file, 1, p, nodes), peaks, eff, profile=prof.name if prof else None)
    ttft_ms = pre.latency_ms
    return GenerationEstimate(
        decode_tokens_per_s=1.0 / step_s, decode_ms_per_token=step_s * 1e3,
        decode_bound="memory" if memory_s >= compute_s else "compute",
        prefill_tokens_per_s=p * 1000.0 / ttft_ms if ttft_ms > 0 else math.inf, time_to_first_token_ms=ttft_ms,
        prompt_tokens=p, new_tokens=new_tokens, context=ctx, weight_mb=facts.weight_bytes / 1e6,
        kv_mb_per_token=kv / 1e6, parameters=facts.parameters, peaks=asdict(peaks), efficiency=asdict(eff),
        facts=asdict(facts), profile=prof.name if prof else None,
    )


def speed_estimate(art: Any, profile: DeviceProfile, prompt_tokens: int, new_tokens: int,
                   warnings: list[str]) -> GenerationEstimate | None:
    """``validate``'s estimate of a generator away from its device: on the profile's peaks (this host's, bandwidth
    measured, for the detected ``host`` profile); None with the reason in ``warnings`` when it cannot be made."""
    from compress.errors import EdgeCompressError
    from compress.estimates.roofline import host_peaks

    try:
        peaks = host_peaks() if profile.source == "detected" else profile_peaks(profile)
        return estimate_generation(art, profile, peaks=peaks, prompt_tokens=prompt_tokens, new_tokens=new_tokens)
    except EdgeCompressError as exc:
        warnings.append(f"no estimate of the generator's speed on {profile.name}: {exc}")
        return None


def _attention_flops(facts: ModelFacts, position: int) -> float:
    """QK^T and AV for one query token attending to ``position`` earlier tokens (2 products x 2 FLOPs per MAC)."""
    heads = facts.heads or facts.kv_heads
    return 4.0 * facts.layers * heads * facts.head_size * position


# --------------------------------------------------------------------------------------------------
# What the files say
def bytes_per_token(facts: ModelFacts, context: int, copies_cache: bool) -> dict[str, Any]:
    """An estimate of the bytes one decode token moves at ``context`` tokens: the weights read once (gathered
    embedding rows left out), the KV cache read, and, in a loop that feeds the cache back as fresh arrays each step
    (``copies_cache``), the cache written again."""
    kv = kv_bytes_per_token(facts, context)
    return {"weights": facts.weight_bytes, "kv_cache": kv, "cache_copies": kv if copies_cache else 0,
            "context": int(context), "estimated": True}


# --------------------------------------------------------------------------------------------------


def model_facts(model: Any) -> ModelFacts:
    """Weight bytes, parameters and KV cache shape of a generator: an :class:`~compress.artifact.Artifact`, its
    directory, a bare ``.onnx``/``.xml``/``.gguf`` file, or a Hugging Face folder of ``*.safetensors``."""
    from compress.artifact import Artifact, load_artifact

    cache = None
    if isinstance(model, Artifact):
        art = model
    else:
        p = Path(model)
        art = load_artifact(p, verify=False) if (p / "manifest.json").is_file() else None
        if art is None:
            if p.is_dir() and any(p.glob("*.safetensors")):
                return _safetensors_facts(p)
            path = p if p.is_file() else _find_model(p)
            return _facts_for_file(path, None)
    cache = getattr(getattr(art.manifest, "postprocess", None), "cache", None)
    return _facts_for_file(art.model_path, cache)


def _find_model(d: Path) -> Path:
    if not d.exists():
        raise ArtifactError(f"{d}: no such model file or directory")
    for pattern in ("*.gguf", "*.onnx", "*.xml"):
        found = sorted(d.glob(pattern))
        if found:
            return found[0]
    raise ArtifactError(f"{d}: no generator model file (.gguf, .onnx, .xml, or *.safetensors)",
                        hint="give an artifact directory or the model file")


def _facts_for_file(path: Path, cache: Any) -> ModelFacts:
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        facts = _onnx_facts(path)
    elif suffix == ".gguf":
        facts = _gguf_facts(path)
    elif suffix == ".xml":
        facts = _ir_facts(path)
    else:
        raise ArtifactError(f"cannot estimate a generator from {path.name}: ONNX, OpenVINO IR, GGUF and safetensors "
                            "are read")
    if cache is not None:  # the manifest's KV cache is what the runtime keeps: it wins over what the files suggest
        facts = ModelFacts(**{**asdict(facts), "layers": int(cache.layers), "kv_heads": int(cache.kv_heads),
                              "head_size": int(cache.head_size),
                              "kv_dtype_bytes": _DTYPE_BYTES.get(str(getattr(cache, "dtype", "float32")).lower(), 4),
                              "source": [*facts.source, "KV cache dims: the manifest's postprocess.cache"]})
    return facts


def _weight_files(path: Path) -> int:
    """Bytes of the model file and its companions (external data, .bin) beside it with the same stem."""
    total = path.stat().st_size
    for other in path.parent.iterdir():
        if other != path and other.is_file() and other.name.startswith(path.stem + ".") \
                and other.suffix.lower() in _WEIGHT_SUFFIXES:
            total += other.stat().st_size
    return total


def _config_dims(folder: Path) -> dict[str, Any]:
    """layers, kv_heads, head_size, heads from config.json or genai_config.json in ``folder`` ({} when neither)."""
    cfg_path, gen_path = folder / "config.json", folder / GENAI_CONFIG
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg = cfg.get("text_config", cfg)
        heads = int(cfg["num_attention_heads"])
        return {"layers": int(cfg["num_hidden_layers"]), "heads": heads,
                "kv_heads": int(cfg.get("num_key_value_heads") or heads),
                "head_size": int(cfg.get("head_dim") or cfg["hidden_size"] // heads), "from": cfg_path.name}
    if gen_path.is_file():
        dec = json.loads(gen_path.read_text(encoding="utf-8"))["model"]["decoder"]
        return {"layers": int(dec["num_hidden_layers"]), "heads": int(dec["num_attention_heads"]),
                "kv_heads": int(dec["num_key_value_heads"]), "head_size": int(dec["head_size"]),
                "from": gen_path.name}
    return {}


def _onnx_facts(path: Path) -> ModelFacts:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    params, matmul_weights, gathered = 0, set(), 0
    for n in g.node:
        if n.op_type == "MatMulNBits":
            a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
            params += int(a["K"]) * int(a["N"])
            matmul_weights.add(n.input[1])
        elif n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits \
                and len(inits[n.input[1]].dims) == 2:
            params += math.prod(inits[n.input[1]].dims)
            matmul_weights.add(n.input[1])
    producers = {o: n for n in g.node for o in n.output}
    for n in g.node:  # a table only gathered (not also a MatMul's weight): a row per token
        if n.op_type not in ("Gather", "GatherBlockQuantized"):
            continue
        table = n.input[0]
        if table not in inits and table in producers and producers[table].op_type in ("Transpose", "Cast"):
            table = producers[table].input[0]  # a table transposed once at load (the LM head's, after quantization)
        if table in inits and table not in matmul_weights and len(inits[table].dims) == 2:
            init = inits[table]
            gathered += math.prod(init.dims) * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
    dims = _config_dims(path.parent)
    kv_bytes = 4
    for i in g.input:
        if i.name.startswith("past_key_values.") and i.name.endswith(".key"):
            kv_bytes = onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).itemsize
            shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
            if not dims and len(shape) == 4 and shape[1] and shape[3]:
                layers = sum(1 for x in g.input if x.name.startswith("past_key_values.") and x.name.endswith(".key"))
                dims = {"layers": layers, "heads": None, "kv_heads": shape[1], "head_size": shape[3],
                        "from": "the graph's past_key_values inputs"}
            break
    if not dims:
        raise ArtifactError(f"{path.name}: no KV cache dims (no config.json, genai_config.json or past_key_values "
                            "inputs)", hint="give the artifact directory, whose manifest describes the cache")
    if params == 0:
        raise ArtifactError(f"{path.name}: no matrix-product weights found (MatMul/Gemm initializers, MatMulNBits)")
    files = _weight_files(path)
    return ModelFacts(weight_bytes=files - gathered, file_bytes=files, gathered_bytes=gathered, parameters=params,
                      layers=dims["layers"], kv_heads=dims["kv_heads"], head_size=dims["head_size"],
                      heads=dims["heads"], kv_dtype_bytes=kv_bytes, model_file=path.name,
                      source=["weight bytes: size on disk of the .onnx and its external data, minus gathered-only "
                              "embedding tables", "parameters: MatMul/Gemm initializers and MatMulNBits K x N",
                              f"KV cache dims: {dims['from']}"])


def _gguf_facts(path: Path) -> ModelFacts:
    from compress._optional import require

    require("gguf", "reading a GGUF file's tensors (the estimate of a GGUF generator)")
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    untied = "output.weight" in tensors
    params = sum(int(t.n_elements) for t in reader.tensors
                 if len(t.shape) >= 2 and int(min(t.shape)) > 1 and not (untied and t.name == "token_embd.weight"))
    gathered = int(tensors["token_embd.weight"].n_bytes) if untied and "token_embd.weight" in tensors else 0

    def field_value(key: str) -> Any:
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    arch = field_value("general.architecture") or "llama"
    layers = field_value(f"{arch}.block_count")
    heads = field_value(f"{arch}.attention.head_count")
    kv_heads = field_value(f"{arch}.attention.head_count_kv") or heads
    head_size = field_value(f"{arch}.attention.key_length")
    if head_size is None and heads:
        head_size = int(field_value(f"{arch}.embedding_length")) // int(heads)
    if layers is None or heads is None:
        raise ArtifactError(f"{path.name}: no {arch}.block_count / {arch}.attention.head_count in its metadata")
    files = path.stat().st_size
    return ModelFacts(weight_bytes=files - gathered, file_bytes=files, gathered_bytes=gathered, parameters=params,
                      layers=int(layers), kv_heads=int(kv_heads), head_size=int(head_size), heads=int(heads),
                      kv_dtype_bytes=2, model_file=path.name,
                      source=["weight bytes: size on disk of the .gguf, minus token_embd when the LM head is a "
                              "separate output matrix", "parameters: the 2-D tensors' elements",
                              f"KV cache dims: the GGUF's {arch}.* metadata; F16 cache (llama.cpp's default)"])


def _ir_facts(path: Path) -> ModelFacts:
    from compress._optional import require

    require("openvino", "reading an OpenVINO IR (the estimate of an OpenVINO generator)")
    import openvino as ov

    model = ov.Core().read_model(str(path))
    params = 0
    ops = model.get_ordered_ops()
    for op in ops:
        if op.get_type_name() == "MatMul":
            shape = op.input(1).get_partial_shape()
            if shape.is_static and len(shape) == 2:
                src = op.input_value(1).get_node()
                if src.get_type_name() != "Parameter":
                    params += math.prod(d.get_length() for d in shape)
    gathered = 0
    for op in ops:  # a 2-D constant table only gathered (through a Convert at most): a row per token
        if op.get_type_name() != "Gather":
            continue
        table = op.input_value(0).get_node()
        if table.get_type_name() == "Convert":
            table = table.input_value(0).get_node()
        if table.get_type_name() != "Constant" or len(table.get_output_shape(0)) != 2:
            continue
        readers = {t.get_node().get_type_name() for t in table.output(0).get_target_inputs()}
        if readers <= {"Gather", "Convert"}:
            out = table.output(0)
            gathered += math.prod(out.get_shape()) * out.get_element_type().size
    dims = _config_dims(path.parent)
    if not dims:
        raise ArtifactError(f"{path.name}: no KV cache dims (no config.json beside it)",
                            hint="give the artifact directory, whose manifest describes the cache")
    files = _weight_files(path)
    return ModelFacts(weight_bytes=files - gathered, file_bytes=files, gathered_bytes=gathered, parameters=params,
                      layers=dims["layers"], kv_heads=dims["kv_heads"], head_size=dims["head_size"],
                      heads=dims["heads"], kv_dtype_bytes=4, model_file=path.name,
                      source=["weight bytes: size on disk of the .xml and .bin, minus constant tables only gathered",
                              "parameters: static 2-D weight inputs of MatMul",
                              f"KV cache dims: {dims['from']}"])


def _safetensors_facts(folder: Path) -> ModelFacts:
    dims = _config_dims(folder)
    if not dims:
        raise ArtifactError(f"{folder}: no config.json beside the safetensors")
    sizes: dict[str, tuple[int, int]] = {}  # name -> (elements, bytes)
    files = 0
    for f in sorted(folder.glob("*.safetensors")):
        files += f.stat().st_size
        for name, t in safetensors_header(f)[1].items():
            if name != "__metadata__" and len(t["shape"]) == 2:
                sizes[name] = (math.prod(t["shape"]), t["data_offsets"][1] - t["data_offsets"][0])
    embed = next((k for k in sizes if k.endswith("embed_tokens.weight")), None)
    untied = any(k.endswith("lm_head.weight") for k in sizes)
    gathered = sizes[embed][1] if embed and untied else 0
    params = sum(e for k, (e, _) in sizes.items() if not (untied and k == embed))
    return ModelFacts(weight_bytes=files - gathered, file_bytes=files, gathered_bytes=gathered, parameters=params,
                      layers=dims["layers"], kv_heads=dims["kv_heads"], head_size=dims["head_size"],
                      heads=dims["heads"], kv_dtype_bytes=4, model_file="*.safetensors",
                      source=["weight bytes: size on disk of the safetensors, minus embed_tokens when lm_head is "
                              "separate", "parameters: 2-D tensors", "KV cache dims: config.json; FP32 cache"])


def main(argv: list[str] | None = None) -> int:
    """``python -m compress.estimates.generation MODEL --profile raspberry-pi-5``: the estimate, one figure a line."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m compress.estimates.generation",
                                     description="Decode tokens/s, prefill tokens/s and TTFT of a text generator "
                                     "(artifact, .onnx/.xml/.gguf, or a Hugging Face folder) on a device profile.")
    parser.add_argument("model", help="artifact directory, model file, or Hugging Face folder of safetensors")
    parser.add_argument("--profile", "-p", default="host",
                        help="profile name or YAML path; 'host' uses this machine's derived peaks and measured bandwidth")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--context", type=int, help="tokens in the KV cache (default: prompt + new tokens / 2)")
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")
    args = parser.parse_args(argv)
    from compress.errors import EdgeCompressError
    from compress.estimates.roofline import host_peaks
    from compress.profiles.load import load_profile

    try:
        prof = load_profile(args.profile)
        est = estimate_generation(args.model, prof, peaks=host_peaks() if prof.source == "detected" else None,
                                  prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, context=args.context)
    except EdgeCompressError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if args.json:
        print(json.dumps(est.as_dict(), indent=2))
        return 0
    p = est.peaks
    print(f"{args.model} on {prof.name} (ESTIMATED, {UNVERIFIED.split(':')[0]}):")
    print(f"  decode  ≈ {est.decode_tokens_per_s:.1f} tokens/s ({est.decode_ms_per_token:.2f} ms/token, "
          f"{est.decode_bound} bound; {est.weight_mb:.1f} MB weights + {est.kv_mb_per_token:.2f} MB KV cache at "
          f"{est.context} tokens per token)")
    print(f"  prefill ≈ {est.prefill_tokens_per_s:.1f} tokens/s; TTFT ≈ {est.time_to_first_token_ms:.1f} ms for "
          f"{est.prompt_tokens} prompt tokens ({est.parameters / 1e6:.1f} M parameters in matrix products)")
    print(f"  peaks: {p['fp32_gflops']} GFLOP/s fp32, {p['bandwidth_gbs']} GB/s ({p['source']})")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
