"""A causal language model (task text-generation) to ONNX with its KV cache, through ONNX Runtime GenAI's model
builder (``onnxruntime_genai.models.builder.create_model``, called in-process: FP32, CPU execution provider).

Why the builder's format: it is what ONNX Runtime GenAI's own ``og.Model`` runs (``genai_config.json`` beside the
graph names the inputs, the cache and the search defaults), and plain ONNX Runtime runs the very same file, because
the cache is ordinary graph inputs and outputs (``past_key_values.N.key/value`` in, ``present.N.key/value`` out):
:class:`compress.runtimes.ort_backend.OrtBackend` feeds ``present`` back as the next step's ``past``
(:meth:`~compress.runtimes.base.RuntimeBackend.prefill` / ``step``). The builder fuses what ONNX Runtime's CPU
kernels want (GroupQueryAttention with rotary embedding inside, SkipSimplifiedLayerNormalization, one QKV MatMul), so
the file is the fast one, not a traced graph that needs optimisation afterwards. Its tied embeddings stay tied
(the embedding Gather reads the transposed LM head); :mod:`compress.stages.quantize.lm.matmul_nbits_graph` unties them.

ONNX Runtime's CPU GroupQueryAttention takes head sizes that are multiples of 16 only; a model with another head size
(stories260K's is 8) is built with the builder's MultiHeadAttention path instead, which adds a ``position_ids``
input (the ORT backend makes it from the attention mask). The step records which.

The result is checked against PyTorch before anything is written: the prompt's logits (max |diff| within
``--atol``; :data:`compress.tasks.generation.GENERATOR_ATOL` where it is left at its default) and ``DECODE_STEPS``
greedy decode steps through the cache (the same tokens). Batch 1.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from compress.artifact import Artifact, Format, Precision
from compress.errors import ConfigError
from compress.host.memory import release_freed
from compress.progress import Advance, Progress, start_phase
from compress.stages.export.config import ExportConfig
from compress.stages.export.lm.common import draft_against_torch, hf_config, prompt_ids
from compress.stages.spec import StageSpec, pairs
from compress.storage import check_output
from compress.tasks.generation import (
    DECODE_STEPS,
    GENERATION_FILES,
    copy_travel,
    generator_atol,
    require_generation_parity,
)
from compress.teachers.lm_config import head_size, legacy_rope, postprocess_of, rope_of, source_info

log = logging.getLogger(__name__)

#: PyTorch causal LM -> ONNX with past_key_values (ONNX Runtime GenAI's builder), FP32, checked against PyTorch.
EXPORT_GENAI = StageSpec(
    "export", "ONNX export (ONNX Runtime GenAI builder)", accepts=pairs(Format.pytorch, Precision.fp32),
    produces=pairs(Format.onnx, Precision.fp32), versions=("onnxruntime_genai", "onnxruntime", "onnx", "transformers"),
    hint="export starts from a causal LM checkpoint (a Hugging Face …ForCausalLM folder)", config_version=2,
)
_GENAI_BUILDERS: dict[str, Any] = {}  #: the builder's top-level ``builders`` modules, kept between calls


def _ours(name: str) -> bool:
    return name == "builders" or name.startswith("builders.")


@contextlib.contextmanager
def _attention(gqa: bool):
    """The builder with GroupQueryAttention (its CPU default) or, where ORT's CPU kernel cannot take the head size,
    MultiHeadAttention: the builder's own switch (``is_gqa_supported``), set for this call only.

    The builder imports its classes as a top-level package ``builders`` (its folder on ``sys.path``); another
    ``builders`` already imported or earlier on the path (a test suite's) is set aside for the call and put back."""
    import importlib.util

    models = str(Path(importlib.util.find_spec("onnxruntime_genai").origin).parent / "models")
    others = {k: sys.modules.pop(k) for k in [k for k in sys.modules if _ours(k)]}
    sys.modules.update(_GENAI_BUILDERS)
    sys.path.insert(0, models)
    original = None
    try:
        from onnxruntime_genai.models import builder

        model_cls = sys.modules["builders.base"].Model
        original = model_cls.is_gqa_supported
        if not gqa:
            model_cls.is_gqa_supported = lambda self: False
        yield builder
    finally:
        if original is not None:
            sys.modules["builders.base"].Model.is_gqa_supported = original
        _GENAI_BUILDERS.update({k: sys.modules.pop(k) for k in [k for k in sys.modules if _ours(k)]})
        sys.modules.update(others)
        sys.path.remove(models)


#: where a causal LM goes when the GenAI builder does not take it
OTHER_ROUTE = ("export it with --format openvino (a stateful IR converted from the PyTorch model), or --format gguf "
               "where llama.cpp's converter takes the architecture")


def _arch(cfg: dict[str, Any]) -> str:
    return str((cfg.get("architectures") or ["an unnamed architecture"])[0])


def gqa_kernel_takes(cfg: dict[str, Any]) -> bool:
    """Whether ONNX Runtime's CPU GroupQueryAttention takes the model's heads: a head size that is a multiple of 16
    and a rotary part (head size × ``partial_rotary_factor``: Phi-4-mini's 3/4) whose cos/sin caches are a multiple
    of 8 wide. Otherwise the builder's MultiHeadAttention path is used."""
    c = cfg.get("text_config") or cfg
    size = head_size(cfg)
    rotary = int(size * float(c.get("partial_rotary_factor") or 1.0))
    return size % 16 == 0 and rotary % 16 == 0


#: RoPE scalings the builder builds (llama3's rescaled frequencies, YaRN, Phi's long/short factors); it leaves any
#: other (linear, dynamic) out without a word
_BUILT_SCALINGS = ("llama3", "yarn", "longrope", "su")


def check_builder_takes(source: Path, cfg: dict[str, Any]) -> None:
    """Refuse what the builder would build wrongly without a word: a RoPE scaling it does not build, a Gemma 3 whose
    ``layer_types`` are not Gemma 3's five-local-one-global pattern (the builder places its sliding-window layers by
    that pattern, not by the config)."""
    scaling = rope_of(cfg)["scaling"]
    if scaling is not None and scaling["rope_type"] not in _BUILT_SCALINGS:
        raise ConfigError(f"{source}: {_arch(cfg)}'s RoPE scaling {scaling['rope_type']!r} is one ONNX Runtime "
                          f"GenAI's builder does not build (it builds {', '.join(_BUILT_SCALINGS)})",
                          hint=OTHER_ROUTE)
    c = cfg.get("text_config") or cfg
    types = c.get("layer_types")
    if str(c.get("model_type", "")).startswith("gemma3") and types:
        pattern = ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(len(types))]
        if list(types) != pattern:
            raise ConfigError(f"{source}: {_arch(cfg)}'s layer_types are not Gemma 3's five sliding-window layers to "
                              f"one global, the only pattern ONNX Runtime GenAI's builder builds", hint=OTHER_ROUTE)


@contextlib.contextmanager
def _portable_rope(builder, cfg: dict[str, Any]):
    """The builder reads RoPE by transformers 4's names (``config.rope_theta``, Gemma 3's ``rope_local_base_freq``),
    which a config loaded by transformers 5 lacks (it then builds base 10,000), and which transformers 4 fills with
    its defaults from a config transformers 5 wrote: for this call its ``AutoConfig`` gives configs with those set
    from the checkpoint's own RoPE (:func:`~compress.teachers.lm_config.legacy_rope`). llama3 scaling's original
    context too: the builder reads it only as ``config.original_max_position_embeddings`` (Llama 3.2 keeps it in
    ``rope_scaling``, under either major) and otherwise takes the whole context (131,072), which moves every
    rescaled frequency."""
    real = builder.AutoConfig
    written = cfg.get("text_config") or cfg
    legacy = {k: v for k, v in legacy_rope(cfg).items() if k != "rope_scaling"}  # 5's alias of rope_parameters
    scaling = rope_of(cfg)["scaling"] or {}
    if "original_max_position_embeddings" in scaling:  # llama3's: the builder looks for it as a top-level attribute
        legacy.setdefault("original_max_position_embeddings", scaling["original_max_position_embeddings"])

    class PortableConfig:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            config = real.from_pretrained(*args, **kwargs)
            for key, value in legacy.items():
                if getattr(config, key, None) is None or key not in written:
                    setattr(config, key, value)
            return config

    builder.AutoConfig = PortableConfig
    try:
        yield
    finally:
        builder.AutoConfig = real


@contextlib.contextmanager
def _reported(progress: Progress | None, layers: int):
    """The builder's phases to ``progress``, in place of its dropped chatter: loading the checkpoint, each of the
    ``layers`` decoder layers built (counted: the phase whose length grows with the model, minutes at 1.7B), saving
    the graph and its weights. Its base class's methods are wrapped for this call only."""
    if progress is None:
        yield
        return
    model_cls = sys.modules["builders.base"].Model
    real = {name: getattr(model_cls, name) for name in ("load_weights", "make_layer", "save_model")}
    tick: list[Advance] = []

    def load_weights(self, *args, **kwargs):
        start_phase(progress, "the builder loads the checkpoint")
        return real["load_weights"](self, *args, **kwargs)

    def make_layer(self, *args, **kwargs):
        if not tick:
            tick.append(start_phase(progress, "the builder makes the decoder layers", layers))
        result = real["make_layer"](self, *args, **kwargs)
        tick[0](1)
        return result

    def save_model(self, *args, **kwargs):
        start_phase(progress, "the builder saves the graph and its weights")
        return real["save_model"](self, *args, **kwargs)

    for name, wrapper in (("load_weights", load_weights), ("make_layer", make_layer), ("save_model", save_model)):
        setattr(model_cls, name, wrapper)
    try:
        yield
    finally:
        for name, method in real.items():
            setattr(model_cls, name, method)


def build_genai(source: Path, out_dir: Path, cache_dir: Path, *, trust_remote_code: bool = False,
                progress: Progress | None = None) -> dict[str, Any]:
    """Run the builder on the checkpoint ``source`` into ``out_dir`` (FP32, CPU); return what the step records. The
    checkpoint's own code (``auto_map``) runs only when ``trust_remote_code`` (the builder's default trusts it).
    ``progress`` hears the builder's phases, its decoder layers counted (:func:`_reported`)."""
    import os

    import compress  # noqa: F401 - the torchvision shim before transformers, which the builder imports
    from compress._optional import require

    require("onnxruntime_genai", "the ONNX Runtime GenAI builder (export of a causal LM to ONNX)")
    cfg = hf_config(source)
    check_builder_takes(source, cfg)
    gqa = gqa_kernel_takes(cfg)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from compress.progress import hidden_output

    # the builder's own chatter (a line per layer, a tqdm bar per tensor) is dropped: the command shows its progress
    layers = int((cfg.get("text_config") or cfg).get("num_hidden_layers") or 0)
    with _attention(gqa) as builder, _portable_rope(builder, cfg), _reported(progress, layers), \
            hidden_output("stdout"), hidden_output("stderr"):
        try:
            builder.create_model(str(source), str(source), str(out_dir), "fp32", "cpu", str(cache_dir),
                                 hf_remote=trust_remote_code)
        except NotImplementedError as e:  # "The … model is not currently supported." (its architecture switch)
            raise ConfigError(f"{source}: ONNX Runtime GenAI's builder does not take {_arch(cfg)} ({e})",
                              hint=OTHER_ROUTE) from None
        except AttributeError as e:  # a config field this transformers no longer has (Gemma 3's under transformers 5)
            import transformers

            raise ConfigError(f"{source}: ONNX Runtime GenAI's builder cannot read {_arch(cfg)}'s config as "
                              f"transformers {transformers.__version__} loads it ({e})",
                              hint=OTHER_ROUTE + ", or run the builder under the transformers it supports") from None
    return {"builder": "onnxruntime_genai.models.builder", "precision": "fp32", "execution_provider": "cpu",
            "rope": legacy_rope(cfg) or "the architecture's default",
            "attention": "GroupQueryAttention" if gqa else "MultiHeadAttention (head size not a multiple of 16)"}


#: the context a causal LM's ONNX artifact is made for when --max-context is not given (the model's own where shorter):
#: Gemma 3's RoPE tables for its whole 32,768-token context are 67 MB of FP32; cut to 4,096, 8 MB (4 in FP16)
DEFAULT_MAX_CONTEXT = 4096


def limit_context(model_path: Path, length: int) -> dict[str, Any]:
    """Cut the builder's RoPE tables (``cos_cache*`` / ``sin_cache*`` initializers, one row per position) in the graph
    at ``model_path`` to ``length`` positions, and set ``context_length`` and ``search.max_length`` in
    ``genai_config.json`` beside it. Exact for every position below ``length``: each row is the same position's
    angles (quantize stores them in FP16: :func:`compress.stages.quantize.lm.matmul_nbits_graph.half_rope_tables`).
    The weights are never loaded together: the graph is read without them and the data file written again a tensor
    at a time (:func:`rewrite_external_data`), so the step holds a few chunks, not the model. Returns what the
    step records."""
    import json

    import onnx
    from onnx import numpy_helper
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    model = onnx.load(str(model_path), load_external_data=False)
    tables, before, after = [], 0, 0
    for t in model.graph.initializer:
        if t.name.startswith(("cos_cache", "sin_cache")) and len(t.dims) == 2 and t.dims[0] > length:
            if uses_external_data(t):
                load_external_data_for_tensor(t, str(model_path.parent))
            a = numpy_helper.to_array(t)
            before, after = before + a.nbytes, after + a[:length].nbytes
            t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(a[:length]), t.name))
            tables.append(t.name)
    if tables:
        rewrite_external_data(model, model_path)
    genai = model_path.with_name("genai_config.json")
    if genai.is_file():
        cfg = json.loads(genai.read_text(encoding="utf-8"))
        cfg["model"]["context_length"] = length
        cfg.setdefault("search", {})["max_length"] = min(length, cfg["search"].get("max_length", length))
        genai.write_text(json.dumps(cfg, indent=4), encoding="utf-8")
    return {"max_context": length, "rope_tables": tables, "rope_bytes_before": before, "rope_bytes_after": after}


#: an external tensor's offset in the data file is a multiple of this (onnx's own alignment for large tensors)
_ALIGN = 4096
_CHUNK = 64 << 20  #: bytes copied at a time


def rewrite_external_data(model, model_path: Path, threshold: int = 1024) -> None:
    """Save ``model`` (read with ``load_external_data=False``: its external tensors still point into
    ``model_path``'s ``.data`` file; the others in memory) at ``model_path``, its data file written anew one tensor
    at a time: an external tensor's bytes copied from the old file, an in-memory tensor of ``threshold`` bytes or more
    moved out into it. Memory: a chunk of :data:`_CHUNK` bytes, never the model."""
    import os

    import onnx
    from onnx.external_data_helper import uses_external_data

    data = model_path.with_name(model_path.name + ".data")
    new = data.with_name(data.name + ".new")
    with open(data, "rb") as old, open(new, "wb") as out:
        for t in model.graph.initializer:
            if not uses_external_data(t) and len(t.raw_data) < threshold:
                continue
            out.write(b"\0" * (-out.tell() % _ALIGN))
            offset = out.tell()
            if uses_external_data(t):  # copied in chunks: not even the largest tensor is held whole
                info = {e.key: e.value for e in t.external_data}
                old.seek(int(info.get("offset", 0)))
                left = length = int(info["length"])
                while left:
                    chunk = old.read(min(left, _CHUNK))
                    out.write(chunk)
                    left -= len(chunk)
            else:
                length = len(t.raw_data)
                out.write(t.raw_data)
            del t.external_data[:]
            for key, value in (("location", data.name), ("offset", offset), ("length", length)):
                entry = t.external_data.add()
                entry.key, entry.value = key, str(value)
            t.data_location = onnx.TensorProto.EXTERNAL
            t.ClearField("raw_data")
    os.replace(new, data)
    onnx.save(model, str(model_path))


def graph_tensors(model_path: Path):
    """The graph's inputs and outputs as :class:`~compress.artifact_entries.TensorSpec` lists (numpy dtypes, named axes)."""
    import onnx
    from onnx import helper

    from compress.artifact_entries import TensorSpec

    g = onnx.load(str(model_path), load_external_data=False).graph

    def spec(v) -> TensorSpec:
        t = v.type.tensor_type
        shape = [d.dim_param or d.dim_value for d in t.shape.dim]
        return TensorSpec(name=v.name, dtype=np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).name, shape=shape)

    return [spec(v) for v in g.input], [spec(v) for v in g.output]


def export_genai(source: Path | str, out: Path | str, config: ExportConfig | None = None, *,
                 force: bool = False, progress: Progress | None = None) -> Artifact:
    """Export the causal LM checkpoint ``source`` to an FP32 ONNX artifact with a KV cache at ``out``.

    The artifact holds ``model.onnx`` + ``model.onnx.data``, ``genai_config.json``, the tokenizer files and
    ``generation_config.json``; the manifest's postprocess describes the cache (layout ``past_key_values``). The
    export step's metrics hold the check against PyTorch (``generation_parity``); a prefill difference above
    the tolerance or a different greedy token is a :class:`~compress.errors.ParityError` and nothing is written.
    """
    import tempfile

    from compress.artifact import Manifest, TextPreprocess, library_versions
    from compress.storage import tree_bytes
    from compress.tasks import task_for

    config = config or ExportConfig()
    source = Path(source)
    out = check_output(out, force)
    cfg = hf_config(source)
    output = EXPORT_GENAI.output(out, config, force=force)
    with output.writing(need_bytes=2 * tree_bytes(source) + (1 << 20)) as o, \
            tempfile.TemporaryDirectory(prefix=".genai-cache.", dir=o.dir.parent) as cache:
        built = build_genai(source, o.dir, Path(cache), trust_remote_code=config.trust_remote_code, progress=progress)
        release_freed()  # the builder's graph and model, freed but resident: not beside the parity check's
        post = postprocess_of(source, cfg)
        context = min(config.generator.max_context or DEFAULT_MAX_CONTEXT, post.cache.max_length)
        start_phase(progress, f"cutting the RoPE tables to {context} positions")
        built["context"] = limit_context(o.dir / "model.onnx", context) | {"model_context": post.cache.max_length}
        post = post.model_copy(update={"cache": post.cache.model_copy(update={"max_length": context}),
                                       "window": min(post.window, context)})
        copy_travel(source, o.dir, GENERATION_FILES)  # not config.json: genai_config.json states the graph's shape
        inputs, outputs = graph_tensors(o.dir / "model.onnx")
        manifest = Manifest(
            task=task_for("text", kind="generation"), format=Format.onnx, precision=Precision.fp32,
            model_file="model.onnx",
            inputs=inputs, outputs=outputs, preprocess=TextPreprocess(), postprocess=post,
            max_length=context,
            source=source_info(source, cfg),
            versions=library_versions("onnxruntime_genai"),
        )
        step = o.describe(manifest, input_digest=manifest.source.sha256, extra_config={"builder": built})
        prompt, said = prompt_ids(source, config.sample_data)
        start_phase(progress, f"checking the graph against PyTorch (a prompt and {DECODE_STEPS} decode steps)")
        check = draft_against_torch(o.draft(), "onnxruntime", source, prompt)
        atol = generator_atol(config, check)
        check |= {"prompt": said, "atol": atol, "reference": "PyTorch (transformers) FP32"}
        step.metrics["generation_parity"] = check
        require_generation_parity(check, atol, "the ONNX graph")
    log.info("exported %s to %s (prefill max |diff| %.2e, %d decode steps equal)", source, out,
             check["prefill_max_abs_diff"], DECODE_STEPS)
    return output.artifact
