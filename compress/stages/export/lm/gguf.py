"""A causal language model (task text-generation) to GGUF, llama.cpp's file, through llama.cpp's own converter.

The converter, ``convert_hf_to_gguf.py``, ships in llama.cpp's source tree only (no wheel holds it). Like a compiler,
it is the user's tool: :func:`llama_cpp_tree` finds the tree from the export setting ``llama_cpp`` (``--llama-cpp``)
or the environment variable ``EDGECOMPRESS_LLAMA_CPP`` (a llama.cpp checkout, or an extracted llama-cpp-python sdist's
``vendor/llama.cpp``), and a missing tree is a one-line error that names how to get one. It runs in a subprocess with
the tree's own ``gguf-py`` first on ``PYTHONPATH`` (the converter and its gguf package move together), started through
``import compress`` so that it gets the same torchvision shim as this process (:func:`converter_command`), writing
``--outtype f32`` (FP32; ``--precision fp16``: ``f16``): the floating-point artifact that
:mod:`compress.stages.quantize.lm.gguf` quantizes with llama.cpp's quantizer.

llama.cpp keeps the KV cache inside its context: the manifest's :class:`~compress.tasks.generation.KVCache` has the
layout ``runtime`` and :class:`compress.runtimes.llamacpp_backend.LlamaCppBackend` runs the file. The teacher's
tokenizer files and ``generation_config.json`` travel beside ``model.gguf``: edgecompress feeds token ids from the
teacher's tokenizer (the GGUF's own vocabulary is llama.cpp's business, and its tokenization of a text may differ).

Before anything is written the file is checked against PyTorch: the prompt's logits (max |diff| within ``--atol``,
at least :data:`F32_REL` (FP32) or :data:`F16_REL` (FP16) of the largest reference logit: llama.cpp keeps its KV
cache in FP16 by default and its kernels sum in another order) and
:data:`~compress.tasks.generation.DECODE_STEPS` greedy decode steps through llama.cpp's cache (the same tokens).

A ``.gguf`` made elsewhere is adopted as it is (:func:`adopt_gguf`): its metadata gives the cache's shape and the
precision; a teacher (the Hugging Face checkpoint it came from) is what validate compares it with, and an architecture
transformers cannot read has none here. Batch 1.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from compress.artifact import Artifact, Format, Precision
from compress.errors import ConfigError, ModelLoadError, ParityError, StageError, first_line
from compress.progress import Progress, start_phase
from compress.stages.export.config import ExportConfig
from compress.stages.spec import StageSpec, pairs
from compress.storage import check_output
from compress.tasks.generation import copy_travel, make_tokenizer_portable
from compress.teachers.gguf_checkpoint import is_gguf
from compress.teachers.lm_config import is_causal_lm, postprocess_of

log = logging.getLogger(__name__)

#: PyTorch causal LM -> GGUF (llama.cpp's converter), FP32 or FP16, checked against PyTorch.
EXPORT_GGUF = StageSpec(
    "export", "GGUF export (llama.cpp's convert_hf_to_gguf.py)", accepts=pairs(Format.pytorch, Precision.fp32),
    produces={Format.gguf: frozenset({Precision.fp32, Precision.fp16})}, versions=("llama_cpp", "gguf", "transformers"),
    hint="export starts from a causal LM checkpoint (a Hugging Face …ForCausalLM folder)", config_version=1,
)
#: a .gguf made elsewhere, adopted as it is
ADOPT_GGUF = StageSpec(
    "export", "GGUF adoption", accepts=pairs(Format.gguf, *Precision), produces=pairs(Format.gguf, *Precision),
    versions=("llama_cpp", "gguf"), hint="a .gguf file is adopted as it is",
)
ENV = "EDGECOMPRESS_LLAMA_CPP"  #: the environment variable naming a llama.cpp source tree
CONVERTER = "convert_hf_to_gguf.py"
GET_TREE = ("pip download --no-binary :all: --no-deps llama-cpp-python==0.3.36, extract it and pass "
            f"--llama-cpp DIR/vendor/llama.cpp (or set {ENV}), or a llama.cpp checkout")
#: the least prefill tolerance of an FP32 GGUF, a share of the largest |logit| (FP16 KV cache: a random 30-layer
#: SmolLM2-135M-bodied Llama differs by 0.75%, stories260K by 0.13%)
F32_REL = 1e-2
F16_REL = 3e-2  #: ... of an FP16 GGUF (the 30-layer body: 1.7%)


def llama_cpp_tree(setting: str | None = None) -> Path | None:
    """The llama.cpp source tree holding :data:`CONVERTER`: ``setting`` (export's ``llama_cpp``), else
    ``$EDGECOMPRESS_LLAMA_CPP``; a folder holding ``vendor/llama.cpp`` (an extracted sdist) counts too. None when
    neither is set; a set location without the converter is a :class:`ConfigError`."""
    given = setting or os.environ.get(ENV)
    if not given:
        return None
    root = Path(given).expanduser()
    for tree in (root, root / "vendor" / "llama.cpp"):
        if (tree / CONVERTER).is_file():
            return tree
    raise ConfigError(f"{given}: no {CONVERTER} (not a llama.cpp source tree)", hint=GET_TREE)


def require_tree(setting: str | None = None) -> Path:
    """:func:`llama_cpp_tree`, or a one-line error naming how to get one."""
    tree = llama_cpp_tree(setting)
    if tree is None:
        raise ConfigError(f"export --format gguf runs llama.cpp's {CONVERTER}, which no wheel ships: name a llama.cpp "
                          f"source tree with --llama-cpp or {ENV}", hint=GET_TREE)
    return tree


#: how the converter is started: ``import compress`` first, so that the subprocess gets the torchvision shim the CLI's
#: process has (:mod:`compress._optional`: PyPI's torchvision beside the CPU torch wheel does not import without it, and
#: with it transformers' ``LlamaConfig``), then the script as ``python convert_hf_to_gguf.py ARGS`` runs it (its folder
#: first on the path: it imports its ``conversion`` package from there). ``where`` (appended: it shadows nothing) is
#: the folder holding the ``compress`` package, for a checkout that is not installed.
_LAUNCHER = ("import runpy, sys\n"
             "sys.argv = sys.argv[1:]\n"
             "sys.path.append({where!r})\n"
             "import compress\n"
             "sys.path[0] = {tree!r}\n"
             "runpy.run_path(sys.argv[0], run_name='__main__')\n")


def converter_command(tree: Path, *args: str) -> list[str]:
    """The command line that runs llama.cpp's converter in ``tree`` with ``args`` (see :data:`_LAUNCHER`)."""
    import compress

    where = str(Path(compress.__file__).resolve().parent.parent)
    return [sys.executable, "-c", _LAUNCHER.format(where=where, tree=str(tree)), str(tree / CONVERTER), *args]


def convert(source: Path, outfile: Path, *, outtype: str = "f32", tree: Path) -> dict[str, Any]:
    """Run llama.cpp's converter on the checkpoint ``source`` (a subprocess, the tree's gguf-py first on the path);
    return what the step records. A failure is a :class:`StageError` with the converter's last line."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_LOCAL_GGUF="")
    gguf_py = tree / "gguf-py"
    if gguf_py.is_dir():
        env["PYTHONPATH"] = os.pathsep.join([str(gguf_py), *filter(None, [env.get("PYTHONPATH")])])
    cmd = converter_command(tree, str(source), "--outtype", outtype, "--outfile", str(outfile))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not outfile.is_file():
        output = done.stderr or done.stdout or ""
        log.debug("converter output:\n%s", output)
        last, cause = converter_error(output, done.returncode)
        if "is not supported" in last and "Model " in last:  # its architecture switch: a refusal, not a failure
            raise ConfigError(f"{source}: llama.cpp's {CONVERTER} does not take this architecture ({last})",
                              hint="export it with --format onnx or --format openvino")
        said = f"{last} (caused by {cause})" if cause else last
        raise StageError(f"llama.cpp's {CONVERTER} failed on {source}: {said}", hint=_converter_hint(last))
    log.debug("converter output:\n%s", done.stderr)
    return {"converter": str(tree / CONVERTER), "outtype": outtype, "gguf_py": str(gguf_py) if gguf_py.is_dir() else None}


def merge_scores(gguf_file: Path, source: Path) -> dict[str, Any] | None:
    """Give a converted sentencepiece-style vocabulary its merge order, in place: a Llama-family checkpoint with
    ``tokenizer.json`` but no ``tokenizer.model`` (what transformers 5 saves, and a GGUF teacher's checkpoint) is
    converted by llama.cpp's ``LlamaHfVocab``, which writes every token's score as a -1000 placeholder; llama.cpp's
    sentencepiece tokenizer merges by score, so its ids then differ from the model's own tokenizer on most texts
    (stories260K's vocabulary: 46 of 500 TinyStories lines the same). Each token a BPE merge makes gets minus that
    merge's rank, the order tokenizer.json merges in (500 of 500 the same). Returns what the step records, or None
    where the file's scores are not the placeholder (a ``tokenizer.model`` was read) or there are no merges."""
    import json

    import numpy as np
    from gguf import GGUFReader

    tok_path = Path(source) / "tokenizer.json"
    if not tok_path.is_file():
        return None
    model = json.loads(tok_path.read_text(encoding="utf-8")).get("model") or {}
    merges = model.get("merges") or []
    if model.get("type") != "BPE" or not merges:
        return None
    reader = GGUFReader(str(gguf_file), "r+")
    kind, scores = reader.fields.get("tokenizer.ggml.model"), reader.fields.get("tokenizer.ggml.scores")
    if kind is None or kind.contents() != "llama" or scores is None:
        return None
    values = np.array([scores.parts[i][0] for i in scores.data], dtype=np.float32)
    if not np.all(values == values[0]):
        return None
    index = {t: i for i, t in enumerate(reader.fields["tokenizer.ggml.tokens"].contents())}
    ranks: dict[int, int] = {}
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        if (i := index.get(left + right)) is not None:
            ranks.setdefault(i, rank)  # the first merge making a token is its rank
    for i, rank in ranks.items():
        scores.parts[scores.data[i]][0] = -float(rank)
    reader.data.flush()
    return {"vocabulary_scores": f"{len(ranks)} tokens scored by tokenizer.json's merge order (llama.cpp's converter "
                                 "wrote placeholders: the checkpoint has no tokenizer.model)"}


_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")
#: the last line of an error that only says an import failed: its cause is the news
_IMPORT_FAILURE = ("ModuleNotFoundError", "ImportError", "Could not import module")


def converter_error(output: str, returncode: int) -> tuple[str, str | None]:
    """The converter's error from its output: its last line, and, when that line only says an import failed
    (transformers' ``Could not import module 'LlamaConfig'``), the exception that caused it (Python prints a chain
    cause first: the error line before the "direct cause" separator that precedes the last traceback), else None."""
    lines = [ln.rstrip() for ln in output.splitlines() if ln.strip()]
    last = lines[-1].strip() if lines else f"exit code {returncode}"
    if not any(k in last for k in _IMPORT_FAILURE):
        return last, None
    separators = [i for i, ln in enumerate(lines) if ln.startswith(("The above exception was the direct cause",
                                                                       "During handling of the above exception"))]
    if not separators or not lines[separators[-1]].startswith("The above exception was the direct cause"):
        return last, None  # raised on its own, or while handling another error (that one is not its cause)
    before = [ln.strip() for ln in lines[:separators[-1]] if _ERROR_LINE.match(ln)]
    return last, before[-1] if before else None


def _converter_hint(last: str) -> str:
    """The fix for the converter's last line: its tokenizer checks are the usual cause besides the architecture; an
    import failure is the environment's, whatever the architecture."""
    if "sentencepiece" in last and "Missing" not in last:
        return "pip install 'edgecompress[llamacpp]' (it installs sentencepiece, which the converter imports)"
    if any(k in last for k in _IMPORT_FAILURE):
        return (f"the converter's Python ({sys.executable}) could not import what it needs: a missing, broken or "
                "mismatched package in this environment (the error above says which), not the model's architecture; "
                "see the converter's whole output with -vv")
    if "pre-tokenizer was not recognized" in last:
        return ("the converter knows a BPE tokenizer by its pre-tokenizer's hash and does not know this checkpoint's "
                "tokenizer.json (another model's tokenizer, or newer than the llama.cpp tree): give the model's own "
                "tokenizer or a newer tree, or export with --format onnx or --format openvino")
    if "tokenizer.model" in last:
        return ("this architecture's converter reads the sentencepiece tokenizer.model: save it beside the "
                "checkpoint, or export with --format onnx or --format openvino")
    return "the converter supports the architectures llama.cpp runs; see its output with -vv"


def gguf_postprocess(source: Path, cfg: dict[str, Any]):
    """The manifest's postprocess: bos/eos and the KV cache (kept inside llama.cpp's context: layout ``runtime``)."""
    post = postprocess_of(source, cfg)  # llama.cpp's cache: FP16 by default
    return post.model_copy(update={"cache": post.cache.model_copy(update={"layout": "runtime", "dtype": "float16"})})


def tensors(vocab: int):
    """The artifact's inputs and outputs as llama.cpp takes and returns them (batch 1)."""
    from compress.artifact_entries import TensorSpec

    ids = [TensorSpec(name=n, dtype="int64", shape=[1, "sequence"]) for n in ("input_ids", "attention_mask")]
    return ids, [TensorSpec(name="logits", dtype="float32", shape=[1, "sequence", vocab])]


def export_gguf(source: Path | str, out: Path | str, config: ExportConfig | None = None, *,
                force: bool = False, progress: Progress | None = None) -> Artifact:
    """Export the causal LM checkpoint ``source`` to an FP32 (``--precision fp16``: FP16) GGUF artifact at ``out``
    through llama.cpp's converter (see the module's docstring); a ``.gguf`` file is adopted (:func:`adopt_gguf`).

    The step's metrics hold the check against PyTorch (``generation_parity``); a prefill difference above the
    tolerance or a different greedy token is a :class:`~compress.errors.ParityError` and nothing is written."""
    import tempfile

    from compress.artifact import Manifest, SourceInfo, TextPreprocess, digest_dir, library_versions
    from compress.runtimes.base import load_runtime
    from compress.stages.export.lm.common import greedy_torch, hf_config, prompt_ids
    from compress.storage import tree_bytes
    from compress.tasks import task_for
    from compress.tasks.generation import DECODE_STEPS, compare_generation, require_generation_parity

    config = config or ExportConfig()
    source = Path(source)
    if is_gguf(source):
        return adopt_gguf(source, out, config, force=force)
    cfg = hf_config(source)
    if not is_causal_lm(cfg):
        raise ConfigError(f"{source}: GGUF (llama.cpp) takes causal language models only (…ForCausalLM, …LMHeadModel)",
                          hint="export it with --format onnx")
    precision = str(config.precision) if config.precision else "fp32"
    if precision not in ("fp32", "fp16"):
        raise ConfigError(f"export --format gguf writes fp32 or fp16, not {precision}",
                          hint="quantize the GGUF artifact: edgecompress quantize ART --precision int4|int8")
    tree = require_tree(config.generator.llama_cpp)
    out = check_output(out, force)
    outtype = "f16" if precision == "fp16" else "f32"
    output = EXPORT_GGUF.output(out, config, force=force)
    with output.writing(need_bytes=2 * tree_bytes(source) + (1 << 20)) as o, \
            tempfile.TemporaryDirectory(prefix=".gguf-convert.", dir=o.dir.parent) as scratch:
        start_phase(progress, "converting with llama.cpp's converter")
        built = convert(source, Path(scratch) / "model.gguf", outtype=outtype, tree=tree)
        built.update(merge_scores(Path(scratch) / "model.gguf", source) or {})
        shutil.move(str(Path(scratch) / "model.gguf"), o.dir / "model.gguf")
        copy_travel(source, o.dir)
        inputs, outputs = tensors(int(cfg["vocab_size"]))
        post = gguf_postprocess(source, cfg)
        manifest = Manifest(
            task=task_for("text", kind="generation"), format=Format.gguf, precision=Precision(precision),
            model_file="model.gguf",
            inputs=inputs, outputs=outputs, preprocess=TextPreprocess(), postprocess=post,
            max_length=post.cache.max_length,
            source=SourceInfo(path=str(source.resolve()), sha256=digest_dir(source),
                              architecture=(cfg.get("architectures") or [None])[0], model_type=cfg.get("model_type")),
            versions=library_versions("llama_cpp", "gguf"),
        )
        step = o.describe(manifest, input_digest=manifest.source.sha256, extra_config={"converter": built})
        prompt, said = prompt_ids(source, config.sample_data)
        try:
            backend = load_runtime(o.draft(), "llamacpp")
        except ModelLoadError as e:  # converted, yet llama.cpp cannot load it: named with the checkpoint given
            raise ModelLoadError(f"{source}: converted, but " + e.message.removeprefix(f"{o.dir / 'model.gguf'}: "),
                                 hint="export it with --format onnx or --format openvino; see llama.cpp's log with "
                                      "--debug") from None
        try:
            cand = backend.generate(prompt, DECODE_STEPS, logits=True)
        finally:
            backend.close()
        ref = greedy_torch(source, prompt, DECODE_STEPS)
        atol = max(config.atol, (F16_REL if outtype == "f16" else F32_REL) * float(abs(ref[0]).max()))
        check = compare_generation(ref, cand) | {"prompt": said, "atol": atol,
                                                 "reference": "PyTorch (transformers) FP32"}
        step.metrics["generation_parity"] = check
        require_generation_parity(check, atol, "the GGUF")
    log.info("exported %s to %s (GGUF %s, prefill max |diff| %.2e, %d decode steps equal)", source, out, outtype,
             check["prefill_max_abs_diff"], DECODE_STEPS)
    return output.artifact


#: llama.cpp's file types (``general.file_type``) -> the precision a manifest names (Q5/Q6 blocks count as int8: more
#: than four bits)
_FILE_TYPES = {0: "fp32", 1: "fp16", 32: "bf16", 7: "int8", 8: "int8", 9: "int8", 16: "int8", 17: "int8", 18: "int8"}


def gguf_metadata(path: Path) -> dict[str, Any]:
    """What a GGUF's header says: architecture, file type, the cache's dimensions, context, vocabulary, bos/eos."""
    from compress._optional import require

    require("gguf", "reading a GGUF file's header")
    from gguf import GGUFReader

    try:
        fields = GGUFReader(str(path)).fields
    except Exception as e:  # noqa: BLE001 - any parse failure: not a GGUF file llama.cpp would take
        raise ConfigError(f"{path}: not a readable GGUF file ({type(e).__name__}: {first_line(e)})",
                          hint="give a .gguf written by llama.cpp's tools (convert_hf_to_gguf.py, llama-quantize)"
                          ) from None

    def get(key: str, default: Any = None) -> Any:
        field = fields.get(key)
        return field.contents() if field is not None else default

    arch = get("general.architecture")
    heads = get(f"{arch}.attention.head_count")
    tokens = fields.get("tokenizer.ggml.tokens")
    return {"architecture": arch, "file_type": get("general.file_type", 0), "layers": get(f"{arch}.block_count"),
            "heads": heads, "kv_heads": get(f"{arch}.attention.head_count_kv", heads),
            "head_size": get(f"{arch}.attention.key_length") or
            (get(f"{arch}.embedding_length") // heads if heads else None),
            "context": get(f"{arch}.context_length") or 2048,
            "vocab": get(f"{arch}.vocab_size") or (len(tokens.data) if tokens is not None else None),
            "bos_token_id": get("tokenizer.ggml.bos_token_id"), "eos_token_id": get("tokenizer.ggml.eos_token_id")}


def adopt_tokenizer(source: Path, dst: Path) -> str:
    """Tokenizer files for the adopted GGUF in ``dst``: the Hugging Face files found beside ``source`` (copied by
    the caller), else the GGUF's own vocabulary converted by transformers' GGUF loader (``gguf_file=``; llama, gpt2
    and the other tokenizer models it knows). Returns where they came from ("none: ..." when neither)."""
    if any((dst / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        return "beside the file"
    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # the merges it builds from the vocabulary: a bar per file
        try:
            tok = AutoTokenizer.from_pretrained(str(dst), gguf_file="model.gguf", local_files_only=True)
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        tok.save_pretrained(str(dst))
    except Exception as e:  # noqa: BLE001 - transformers knows only some GGUF tokenizer models
        log.warning("%s: its vocabulary could not be turned into a tokenizer (%s): validate needs tokenizer files "
                    "beside the .gguf", source, first_line(e))
        return f"none: transformers cannot convert its vocabulary ({first_line(e)})"
    for extra in ("chat_template.jinja",):  # only what a tokenizer needs travels
        (dst / extra).unlink(missing_ok=True)
    make_tokenizer_portable(dst)
    return "the GGUF's own vocabulary (transformers' GGUF tokenizer conversion)"


def adopt_gguf(source: Path, out: Path | str, config: ExportConfig, *, force: bool = False) -> Artifact:
    """Adopt a ``.gguf`` file made elsewhere as it is: the manifest from its header (precision from its file type,
    the cache's shape, context, BOS/EOS), its tokenizer from the files beside it or its own vocabulary
    (:func:`adopt_tokenizer`), checked by one prefill through llama.cpp (finite logits). Its reference in validate
    is the file itself (as for an adopted ONNX file): perplexity and speed are measured, and artifacts quantized from
    it are compared with it; give the Hugging Face checkpoint it came from as ``--teacher`` to compare with PyTorch.
    A file that is not GGUF, or whose architecture llama.cpp cannot load, is a one-line error; nothing is written."""
    import numpy as np

    from compress.artifact import Manifest, SourceInfo, TextPreprocess, library_versions, sha256_file
    from compress.runtimes.base import load_runtime
    from compress.tasks import task_for
    from compress.tasks.generation import GenerationPostprocess, KVCache

    meta = gguf_metadata(source)
    if not meta["layers"] or not meta["vocab"] or not meta["heads"]:
        raise ConfigError(f"{source}: its GGUF header names no block count, heads or vocabulary (architecture "
                          f"{meta['architecture']}: not a language model llama.cpp generates with)",
                          hint="adopt a causal language model's GGUF (llama.cpp's convert_hf_to_gguf.py writes one)")
    ft = int(meta["file_type"])
    precision = _FILE_TYPES.get(ft, "int4")
    out = check_output(out, force)
    cache = KVCache(layers=meta["layers"], kv_heads=meta["kv_heads"], head_size=meta["head_size"], dtype="float16",
                    max_length=meta["context"], layout="runtime", prefill=["input_ids", "attention_mask"],
                    decode=["input_ids", "attention_mask"])
    inputs, outputs = tensors(int(meta["vocab"]))
    output = ADOPT_GGUF.output(out, config, force=force)
    with output.writing(need_bytes=source.stat().st_size + (1 << 20)) as o:
        shutil.copy2(source, o.dir / "model.gguf")
        copy_travel(source.parent, o.dir)
        manifest = Manifest(
            task=task_for("text", kind="generation"), format=Format.gguf, precision=Precision(precision),
            model_file="model.gguf",
            inputs=inputs, outputs=outputs, preprocess=TextPreprocess(),
            postprocess=GenerationPostprocess(bos_token_id=meta["bos_token_id"], eos_token_id=meta["eos_token_id"],
                                              cache=cache),
            max_length=int(meta["context"]),
            source=SourceInfo(path=str(source.resolve()), sha256=sha256_file(source), architecture=meta["architecture"]),
            versions=library_versions("llama_cpp", "gguf"),
        )
        step = o.describe(manifest, input_digest=manifest.source.sha256, extra_config={"gguf": meta})
        try:
            backend = load_runtime(o.draft(), "llamacpp")
        except ModelLoadError as e:  # an architecture llama.cpp does not know: named with the file given
            raise ModelLoadError(f"{source}: " + e.message.removeprefix(f"{o.dir / 'model.gguf'}: "),
                                 hint=e.hint) from None
        try:
            first = [meta["bos_token_id"]] if meta["bos_token_id"] is not None else []
            logits = backend.prefill({"input_ids": np.asarray([[*first, 1, 2, 3]], dtype=np.int64)})[0]["logits"]
        finally:
            backend.close()
        if not np.isfinite(logits).all():
            raise ParityError(f"{source}: llama.cpp's logits are not finite", max_abs_diff=float("inf"), atol=0.0)
        tokenizer = adopt_tokenizer(source, o.dir)
        step.metrics["adopted"] = {"file_type": ft, "architecture": meta["architecture"], "logits_finite": True,
                                   "tokenizer": tokenizer,
                                   "reference": f"{source.name} itself in llama.cpp (--teacher: the Hugging Face "
                                   "checkpoint it came from, for PyTorch)"}
        step.metrics["parity"] = {"measured": False, "why": "an adopted GGUF is its own reference (one prefill "
                                  "through llama.cpp gave finite logits)"}
    log.info("adopted %s as %s (GGUF %s, %s, %d layers; tokenizer: %s)", source, out, precision, meta["architecture"],
             meta["layers"], tokenizer)
    return output.artifact
