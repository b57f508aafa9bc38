"""Whether a generator artifact runs in its runtime's own API, as an app loads it without edgecompress: read from the
folder's files, so that an artifact made before a route wrote what its runner needs says what it lacks.

What each runner reads (docs/guides/lm.md, "Run it in your app"):

- ONNX Runtime GenAI (``og.Model(DIR)``, ``og.Tokenizer``, ``og.Generator``): ``genai_config.json``, the graph, and a
  ``tokenizer_config.json`` whose class its tokenizer knows (ONNX Runtime Extensions; ``tokenizer_module.json``
  overrides it: :func:`compress.tasks.generation.make_tokenizer_portable`);
- OpenVINO GenAI (``LLMPipeline(DIR, device)``): ``openvino_model.xml`` and the tokenizer and detokenizer IRs beside it
  (:func:`compress.stages.export.lm.openvino.genai_tokenizer`);
- ExecuTorch's LLM runner (``TextLLMRunner``, ``llama_main``): the program's metadata methods
  (:func:`compress.stages.export.lm.executorch.runner_metadata`) and ``tokenizer.json``;
- llama.cpp (``llama_cpp.Llama``, ``llama-cli``, ``llama-server``): the .gguf alone, its vocabulary, special tokens
  and chat template inside.
"""

from __future__ import annotations

import json
from typing import Any

from compress.artifact import Artifact
from compress.stages.export.lm.openvino import MODEL_XML, TOKENIZER_IRS
from compress.tasks import is_generator
from compress.tasks.generation import GENAI_CONFIG, TOKENIZER_MODULE, needs_tokenizer_module, portable_tokenizer_config

#: format -> the runner an app calls, as the docs' snippets call it
APIS = {
    "onnx": "onnxruntime_genai: og.Model(DIR), og.Tokenizer, og.Generator",
    "openvino": "openvino_genai.LLMPipeline(DIR, 'CPU')",
    "executorch": "executorch's TextLLMRunner(DIR/model.pte, DIR/tokenizer.json) (llama_main)",
    "gguf": "llama_cpp.Llama(DIR/model.gguf) (llama-cli, llama-server)",
}


def own_runtime(art: Artifact) -> dict[str, Any] | None:
    """``{"api": how an app runs it, "missing": what the folder lacks for that, or None}`` for a generator artifact;
    None for any other."""
    if not is_generator(art) or str(art.manifest.format) not in APIS:
        return None
    fmt, d = str(art.manifest.format), art.path
    missing = []
    tok_cfg = d / "tokenizer_config.json"
    if fmt in ("onnx", "openvino", "executorch") and tok_cfg.is_file():
        cfg = json.loads(tok_cfg.read_text(encoding="utf-8"))
        if portable_tokenizer_config(cfg).get("tokenizer_class") != cfg.get("tokenizer_class"):
            missing.append(f"tokenizer_config.json names {cfg.get('tokenizer_class')}, a class only transformers 5 "
                           "reads")
        elif fmt == "onnx" and needs_tokenizer_module(d, cfg):
            missing.append(f"{TOKENIZER_MODULE} (ORT GenAI would split its sentencepiece-style vocabulary as GPT-2 "
                           "bytes)")
    if fmt == "onnx" and not (d / GENAI_CONFIG).is_file():
        missing.append(f"{GENAI_CONFIG} (not made by ONNX Runtime GenAI's builder)")
    if fmt == "openvino":
        if art.manifest.model_file != MODEL_XML:
            missing.append(f"the model file is {art.manifest.model_file}, not {MODEL_XML}")
        if not all((d / n).is_file() for n in TOKENIZER_IRS):
            missing.append("the tokenizer and detokenizer IRs (install openvino-tokenizers)")
    if fmt == "executorch":
        lowered = [s.config.get("lowering") or {} for s in art.manifest.steps]
        if not any("runner_metadata" in low for low in lowered):
            missing.append("the metadata methods its LLM runner reads")
        if not (d / "tokenizer.json").is_file():
            missing.append("tokenizer.json")
    return {"api": APIS[fmt], "missing": "; ".join(missing) + ": export it again" if missing else None}
