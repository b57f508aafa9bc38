"""What a causal LM checkpoint's files say (task text-generation), read without loading the model: its architecture,
the KV cache's dimensions (head_dim where the config names it), BOS/EOS (generation_config.json, else config.json),
the manifest's postprocess block; and the one-line checks of a tokenizer's special tokens and of a window against the
context. :mod:`compress.teachers.load` and :mod:`compress.teachers.lm` both read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.errors import ConfigError, ModelLoadError
from compress.tasks import is_generator
from compress.tasks.generation import GENERATION_FILES, GenerationPostprocess, KVCache, portable_tokenizer_config

__all__ = ["CAUSAL_LM_SUFFIXES", "GGUF_ORIGIN", "cache_of", "check_special_tokens", "check_window",
           "config_kwargs", "from_pretrained_lm", "generation_ids", "given_gguf", "gguf_origin", "head_size",
           "is_causal_lm", "legacy_rope", "load_tokenizer", "portable_config", "postprocess_of",
           "refuse_causal_lm", "rope_of", "source_info"]



#: how transformers names a causal LM's class: ``…ForCausalLM`` (Llama, Qwen, Gemma, Phi, …) or, in its older
#: families, ``…LMHeadModel`` (GPT-2's ``GPT2LMHeadModel``); both load with ``AutoModelForCausalLM``
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
#: config.json keys of the families that name their dimensions their own way (GPT-2: n_layer, n_head, n_embd,
#: n_positions), read as the common names
_ALIASES = {"num_hidden_layers": "n_layer", "num_attention_heads": "n_head", "hidden_size": "n_embd",
            "max_position_embeddings": "n_positions"}


#: the file in a checkpoint folder made from a GGUF (:mod:`compress.teachers.gguf_checkpoint`) that names the file
GGUF_ORIGIN = "gguf_origin.json"


#: the checkpoint folders made from a GGUF that this process was given a .gguf for -> that file's path
_GIVEN: dict[str, str] = {}


def given_gguf(folder: Path | str, path: Path | str) -> None:
    """Note that this process reads the checkpoint ``folder`` for the .gguf at ``path``: the folder is made once per
    content (its :data:`GGUF_ORIGIN` names the first copy it was made from); :func:`gguf_origin`, and so the lineage,
    names the file given."""
    _GIVEN[str(Path(folder).resolve())] = str(Path(path).resolve())


def gguf_origin(folder: Path | str) -> dict[str, Any] | None:
    """What :data:`GGUF_ORIGIN` in a checkpoint folder says (None when the folder was not made from a GGUF), its
    ``path`` the .gguf this process was given for it (:func:`given_gguf`) where it was given one."""
    import json

    p = Path(folder) / GGUF_ORIGIN
    if not p.is_file():
        return None
    origin = json.loads(p.read_text(encoding="utf-8"))
    given = _GIVEN.get(str(Path(folder).resolve()))
    return origin | {"path": given} if given else origin


def source_info(source: Path, config: dict[str, Any]):
    """The lineage's :class:`~compress.artifact.SourceInfo` of the causal LM checkpoint ``source`` (``config``: its
    config.json): path, content digest, architecture, and the GGUF it was dequantized from, if any."""
    from compress.artifact import SourceInfo, digest_dir

    return SourceInfo(path=str(Path(source).resolve()), sha256=digest_dir(Path(source)),
                      architecture=(config.get("architectures") or [None])[0], model_type=config.get("model_type"),
                      origin=gguf_origin(source))


def is_causal_lm(config: dict[str, Any]) -> bool:
    """A checkpoint config whose architecture is a causal LM (a ``…ForCausalLM`` or ``…LMHeadModel``)."""
    archs = config.get("architectures") or []
    return isinstance(archs, list) and any(str(a).endswith(CAUSAL_LM_SUFFIXES) for a in archs)


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    c = config.get("text_config") or config
    return c | {k: c[alias] for k, alias in _ALIASES.items() if k not in c and alias in c}


# -- RoPE and the two transformers majors ----------------------------------------------------------------------
#
# transformers 4 writes a checkpoint's RoPE as ``rope_theta`` (+ ``rope_scaling`` when scaled; Gemma 3's local layers:
# ``rope_local_base_freq``); transformers 5 as ``rope_parameters``: one dict (``rope_type``, ``rope_theta``, the
# scaling's fields) or, for models with layers of two kinds (Gemma 3), one per layer type (``full_attention``,
# ``sliding_attention``). transformers 5 reads both forms; transformers 4 ignores ``rope_parameters`` without a word
# (RoPE base 10,000 in PyTorch too), and tools written against 4's attributes (ONNX Runtime GenAI's builder reads
# ``config.rope_theta``) build base 10,000 from a config 5 loaded. Every real Llama, Qwen, Gemma or Phi has another
# base (SmolLM2 100,000, Qwen3 1,000,000, Llama 3.2 500,000 with llama3 scaling).


def rope_of(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint config's RoPE in one form, whichever major wrote it: ``{"theta", "scaling", "local_theta"}`` —
    the (global layers') base, their scaling (``{"rope_type": ..., "factor": ...}``, None when unscaled), the local
    layers' base (Gemma 3's sliding-window layers; None elsewhere)."""
    c = _text_config(config)
    params = c.get("rope_parameters")
    if isinstance(params, dict) and ("full_attention" in params or "sliding_attention" in params):
        full, local = params.get("full_attention") or {}, params.get("sliding_attention") or {}
        return {"theta": full.get("rope_theta", c.get("rope_theta")), "scaling": _scaling(full),
                "local_theta": local.get("rope_theta", c.get("rope_local_base_freq"))}
    if isinstance(params, dict):
        return {"theta": params.get("rope_theta", c.get("rope_theta")), "scaling": _scaling(params),
                "local_theta": c.get("rope_local_base_freq")}
    legacy = c.get("rope_scaling")
    return {"theta": c.get("rope_theta"), "scaling": _scaling(legacy) if isinstance(legacy, dict) else None,
            "local_theta": c.get("rope_local_base_freq")}


def _scaling(params: dict[str, Any]) -> dict[str, Any] | None:
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return None
    return {"rope_type": kind, **{k: v for k, v in params.items() if k not in ("rope_theta", "rope_type", "type")}}


def legacy_rope(config: dict[str, Any]) -> dict[str, Any]:
    """The keys transformers 4 reads for the RoPE of ``config`` (either major's form): ``rope_theta``, ``rope_scaling``
    (None when unscaled) and, where there are local layers, ``rope_local_base_freq``; {} when the config names no
    RoPE base (the model's own default then holds in both majors)."""
    rope = rope_of(config)
    if rope["theta"] is None:
        return {}
    out: dict[str, Any] = {"rope_theta": float(rope["theta"]), "rope_scaling": rope["scaling"]}
    if rope["local_theta"] is not None:
        out["rope_local_base_freq"] = float(rope["local_theta"])
    return out


def portable_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config.json`` as both majors read it: transformers 5's ``rope_parameters`` kept, transformers 4's keys
    (:func:`legacy_rope`) added beside them where missing. A config with a ``text_config`` gets them there too."""
    out = dict(config)
    if isinstance(out.get("text_config"), dict):
        out["text_config"] = portable_config(out["text_config"])
    if isinstance(out.get("rope_parameters"), dict):
        out.update({k: v for k, v in legacy_rope(out).items() if k not in out or out[k] is None})
    return out


def head_size(config: dict[str, Any]) -> int:
    """The attention head size: ``head_dim`` where the config names it (stories260K: 8 = 64 / 8), else hidden / heads."""
    c = _text_config(config)
    return int(c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"])


def cache_of(config: dict[str, Any], *, layout: str = "past_key_values", dtype: str = "float32") -> KVCache:
    """The KV cache dimensions of a checkpoint ``config`` (config.json as a dict)."""
    c = _text_config(config)
    try:
        return KVCache(layers=int(c["num_hidden_layers"]),
                       kv_heads=int(c.get("num_key_value_heads") or c["num_attention_heads"]),
                       head_size=head_size(c), dtype=dtype, max_length=int(c.get("max_position_embeddings") or 2048),
                       layout=layout)
    except KeyError as e:
        raise ModelLoadError(f"config.json has no {e.args[0]}: not a decoder edgecompress knows",
                             hint="a Llama-, Qwen2-, Mistral- or Phi-like …ForCausalLM checkpoint") from None


def generation_ids(path: Path | str, config: dict[str, Any]) -> tuple[int | None, int | list[int] | None]:
    """BOS and EOS ids: generation_config.json's, else config.json's."""
    import json

    gen: dict[str, Any] = {}
    p = Path(path) / "generation_config.json"
    if p.is_file():
        try:
            gen = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{p}: not JSON ({e.msg})", hint="fix or remove generation_config.json") from None
    c = _text_config(config)
    bos = gen.get("bos_token_id", c.get("bos_token_id", config.get("bos_token_id")))
    eos = gen.get("eos_token_id", c.get("eos_token_id", config.get("eos_token_id")))
    return bos, eos


def postprocess_of(path: Path | str, config: dict[str, Any], *, window: int = 256) -> GenerationPostprocess:
    """The manifest's postprocess of the causal LM at ``path``: BOS/EOS, the window (at most the context) and the
    KV cache."""
    cache = cache_of(config)
    bos, eos = generation_ids(path, config)
    return GenerationPostprocess(window=min(window, cache.max_length), bos_token_id=bos, eos_token_id=eos, cache=cache)


def _special_ids(tokenizer) -> set[int]:
    """The ids a transformers tokenizer treats as special (its BOS/EOS/PAD/UNK and added special tokens)."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(int(i) for i, t in added.items() if getattr(t, "special", False))
    return ids


def check_special_tokens(path: Path | str, tokenizer, bos: int | None, eos: int | list[int] | None) -> None:
    """Refuse a tokenizer that lacks the model's BOS or EOS token: the id is outside its vocabulary, or is an
    ordinary token of it (the tokenizer belongs to another model and would feed it nonsense)."""
    size = len(tokenizer)
    special = _special_ids(tokenizer)
    for name, ids in (("BOS", [bos]), ("EOS", eos if isinstance(eos, list) else [eos])):
        for i in ids:
            if i is None:
                continue
            if not 0 <= int(i) < size:
                why = f"is not in its tokenizer's vocabulary ({size} tokens)"
            elif special and int(i) not in special:
                why = (f"is {tokenizer.convert_ids_to_tokens(int(i))!r} in its tokenizer, an ordinary token, not a "
                       f"special one")
            else:
                continue
            raise ModelLoadError(f"{path}: the model's {name} token id {i} {why}: the tokenizer is not this model's",
                                 hint="save the model's own tokenizer beside it (tokenizer.save_pretrained)")


def check_window(window: int, context: int) -> None:
    """Refuse a perplexity window longer than the model's context (max_position_embeddings)."""
    if window > context:
        raise ConfigError(f"a window of {window} tokens is longer than the model's context "
                          f"(max_position_embeddings {context})", hint=f"give --window {context} or less")


def refuse_causal_lm(teacher: Any, verb: str, what: str) -> None:
    """Refuse a causal LM teacher (task text-generation) in a verb that takes none: ``what`` says what it takes."""
    if is_generator(teacher):
        raise ConfigError(f"{verb} takes {what}; {teacher.path} is a causal language model (text-generation), which "
                          f"takes plain text and no labels",
                          hint="export, quantize and validate it (--data a .txt or .jsonl of documents)")


# -- loading a checkpoint the other major wrote -------------------------------------------------------------------


def _major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def config_kwargs(path: Path | str) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments that make this transformers read the checkpoint at ``path`` as written:
    under transformers 4, a config that transformers 5 wrote (``rope_parameters``, no ``rope_theta``) is loaded with
    4's RoPE keys set from it (``{"config": ...}``); {} where ``from_pretrained`` reads it right by itself."""
    import json

    p = Path(path) / "config.json"
    if _major() >= 5 or not p.is_file():
        return {}
    raw = json.loads(p.read_text(encoding="utf-8"))
    text = _text_config(raw)
    legacy = legacy_rope(raw)
    if not isinstance(text.get("rope_parameters"), dict) or not legacy or text.get("rope_theta") is not None:
        return {}
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    target = getattr(config, "text_config", None) or config
    for key, value in legacy.items():
        setattr(target, key, value)
    return {"config": config}


def load_tokenizer(path: Path | str, **kwargs: Any):
    """``AutoTokenizer.from_pretrained(path, **kwargs)``, also for a tokenizer transformers 5 wrote and 4 reads
    (:func:`portable_tokenizer_config`: read from a copy of its files with the portable config)."""
    import json
    import shutil
    import tempfile

    from transformers import AutoTokenizer

    p = Path(path) / "tokenizer_config.json"
    raw = json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
    if _major() >= 5 or raw is None or portable_tokenizer_config(raw) == raw:
        return AutoTokenizer.from_pretrained(str(path), **kwargs)
    with tempfile.TemporaryDirectory(prefix="edgecompress-tokenizer-") as tmp:
        for name in GENERATION_FILES:
            if (Path(path) / name).is_file():
                shutil.copy(Path(path) / name, Path(tmp) / name)
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps(portable_tokenizer_config(raw)), encoding="utf-8")
        return AutoTokenizer.from_pretrained(tmp, **kwargs)


def from_pretrained_lm(path: Path | str, **kwargs: Any):
    """``AutoModelForCausalLM.from_pretrained(path, dtype=float32, **kwargs)`` as every export route loads its
    reference: the config read as written whichever major wrote it (:func:`config_kwargs`), and transformers 5's
    "Loading weights" bar off (the command shows its own progress)."""
    import torch
    import transformers

    if not (Path(path) / "config.json").is_file():  # gone (a cache entry removed meanwhile): never a hub repo id
        raise ModelLoadError(f"{path}: the checkpoint is not there any more (removed while this command ran)",
                             hint="run the command again; keep other tools from deleting it meanwhile")
    transformers.utils.logging.disable_progress_bar()
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, **kwargs,
                                                             **config_kwargs(path)).eval()
