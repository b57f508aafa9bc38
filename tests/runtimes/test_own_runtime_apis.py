"""Generator artifacts run in their runtime's own API, as an app loads them (issue 76): the artifact folder alone, in a
process that imports nothing of edgecompress, tokenizes a prompt with the runtime's own tokenizer and generates
greedily; the tokens are the ones validate's own loop makes for the same prompt (its tokenizer, its runtime backend's
generate). ONNX Runtime GenAI (og.Model + og.Tokenizer + og.Generator), OpenVINO GenAI (LLMPipeline), ExecuTorch's
LLM runner (TextLLMRunner, its Python binding) and llama.cpp (llama_cpp.Llama).

The material is a tiny random Llama with stories260K's tokenizer: a sentencepiece BPE written out as tokenizer.json,
the kind a tokenizer reading it as GPT-2 bytes splits wrongly ("The" -> "T", "he"), and a chat template. Random
weights say nothing of quality; a tie between two logits could differ between runtimes, so the model's logits are
spread (tests.builders.lm)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from compress._optional import is_available
from tests.builders.lm import tiny_causal_lm

pytestmark = pytest.mark.slow  # 52 s of a 2,979 s run (tests/conftest.py SLOW_SHARE)

PROMPT = "Once upon a time, there was a little girl named Lily. She"
NEW = 10
TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"

#: each runtime's app, run with the artifact folder, the prompt and the new tokens as arguments; prints
#: {"prompt": the runtime's own token ids of the prompt, "tokens": the greedy tokens} (or "text" where the runner
#: hands back text only)
APPS = {
    "onnxruntime_genai": """
import json, sys
import onnxruntime_genai as og
model = og.Model(sys.argv[1])
tokenizer = og.Tokenizer(model)
tokenizer.update_options(add_special_tokens="true")  # BOS as the model's tokenizer.json adds it
ids = [int(t) for t in tokenizer.encode(sys.argv[2])]
params = og.GeneratorParams(model)
params.set_search_options(do_sample=False, max_length=len(ids) + int(sys.argv[3]))
generator = og.Generator(model, params)
generator.append_tokens([ids])
made = []
while not generator.is_done():
    generator.generate_next_token()
    made.append(int(generator.get_next_tokens()[0]))
print(json.dumps({"prompt": ids, "tokens": made}))
""",
    "openvino_genai": """
import json, sys
import numpy as np
import openvino as ov
import openvino_genai
pipe = openvino_genai.LLMPipeline(sys.argv[1], "CPU")
ids = pipe.get_tokenizer().encode(sys.argv[2]).input_ids.data[0].tolist()
config = openvino_genai.GenerationConfig()
config.max_new_tokens, config.do_sample, config.apply_chat_template = int(sys.argv[3]), False, False
feed = ov.Tensor(np.asarray([ids], dtype=np.int64))
made = pipe.generate(openvino_genai.TokenizedInputs(feed, ov.Tensor(np.ones((1, len(ids)), dtype=np.int64))), config)
print(json.dumps({"prompt": ids, "tokens": [int(t) for t in made.tokens[0]],
                  "chat_template": bool(pipe.get_tokenizer().chat_template)}))
""",
    "executorch": """
import json, sys
import executorch.extension.llm.custom_ops.custom_ops  # the program's fused SDPA kernel (llama_main links it in)
from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner
runner = TextLLMRunner(sys.argv[1] + "/model.pte", sys.argv[1] + "/tokenizer.json")
pieces, stats = [], []
config = GenerationConfig(echo=False, max_new_tokens=int(sys.argv[3]), temperature=0.0, num_bos=1)
runner.generate(sys.argv[2], config, token_callback=pieces.append, stats_callback=stats.append)
print(json.dumps({"text": "".join(pieces), "prompt_tokens": stats[-1].num_prompt_tokens,
                  "generated": stats[-1].num_generated_tokens}))
""",
    "llama_cpp": """
import json, sys
import llama_cpp
llm = llama_cpp.Llama(sys.argv[1] + "/model.gguf", n_ctx=256, n_threads=1, verbose=False)
ids = llm.tokenize(sys.argv[2].encode(), add_bos=True, special=True)
made = []
for t in llm.generate(ids, temp=0.0, top_k=1):
    if t == llm.token_eos() or len(made) == int(sys.argv[3]):
        break
    made.append(int(t))
print(json.dumps({"prompt": ids, "tokens": made, "chat_template": llm.metadata.get("tokenizer.chat_template")}))
""",
}


def run_app(runtime: str, folder: Path) -> dict:
    """Run the runtime's app on the artifact ``folder`` in a fresh process: only the folder, no edgecompress (the
    script is run from the folder's parent, not the repository, and imports compress nowhere)."""
    done = subprocess.run([sys.executable, "-c", APPS[runtime], str(folder), PROMPT, str(NEW)], cwd=folder.parent,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def validate_loop(art, runtime: str, eos: bool = True) -> tuple[list[int], list[int], str]:
    """The prompt's ids, the greedy tokens and their text as validate makes them: the artifact's own tokenizer, its
    runtime backend's generate through the KV cache, stopping at EOS."""
    from compress.runtimes.base import RuntimeSettings, load_runtime
    from compress.validation.decoding import context_of, greedy_artifact
    from compress.validation.generation_plan import encode, tokenizer_of

    tok = tokenizer_of(art)
    ids = encode(tok, PROMPT)
    backend = load_runtime(art, runtime, RuntimeSettings(threads=1))
    stop = {int(tok.eos_token_id)} if eos and tok.eos_token_id is not None else set()
    made = greedy_artifact(backend, ids, NEW, stop, context_of(art))
    return ids, made, tok.decode(made, skip_special_tokens=True)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tiny_causal_lm(tmp_path_factory.mktemp("own") / "ckpt", layers=2)
    (out / "chat_template.jinja").write_text(TEMPLATE, encoding="utf-8")
    return out


def _export(ckpt, out, fmt):
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    return export(ckpt, out, ExportConfig(format=fmt))


def _quantize(art, out, **flat):
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    return quantize(art, out, QuantizeConfig.from_flat(**flat))


@pytest.mark.skipif(not is_available("onnxruntime_genai"), reason="onnxruntime-genai is not installed")
def test_the_onnx_artifacts_generate_in_onnx_runtime_genai_with_its_own_tokenizer(ckpt, tmp_path):
    from compress.artifact import load_artifact
    from compress.stages.export.lm.own_runtime import own_runtime
    from tests.builders.lm import genai_builder_missing

    if genai_builder_missing():
        pytest.skip(genai_builder_missing())
    fp32 = _export(ckpt, tmp_path / "fp32", "onnx")
    cfg = json.loads((fp32.path / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"  # what transformers 4 and 5 both read
    assert json.loads((fp32.path / "tokenizer_module.json").read_text()) == {"tokenizer_class": "LlamaTokenizer"}
    int4 = _quantize(fp32, tmp_path / "int4", precision="int4", int4_algorithm="rtn")
    older = tmp_path / "older"  # a folder made before the override: inspect says what it lacks
    shutil.copytree(fp32.path, older)
    (older / "tokenizer_module.json").unlink()
    assert "tokenizer_module.json" in own_runtime(load_artifact(older, verify=False))["missing"]
    for art in (fp32, int4):
        assert own_runtime(art)["missing"] is None
        ids, made, _ = validate_loop(art, "onnxruntime")
        got = run_app("onnxruntime_genai", art.path)
        assert got["prompt"] == ids  # the runtime's own tokenizer: the same ids, BOS first
        assert got["tokens"] == made[:len(got["tokens"])] and len(got["tokens"]) >= min(len(made), NEW)


@pytest.mark.skipif(not is_available("openvino_genai") or not is_available("openvino_tokenizers"),
                    reason="openvino-genai and openvino-tokenizers are not installed")
def test_the_openvino_artifacts_generate_in_openvino_genai_s_llm_pipeline(ckpt, tmp_path):
    from compress.stages.export.lm.own_runtime import own_runtime

    fp32 = _export(ckpt, tmp_path / "fp32", "openvino")
    assert fp32.manifest.model_file == "openvino_model.xml"
    int4 = _quantize(fp32, tmp_path / "int4", precision="int4", int4_algorithm="rtn")
    for art in (fp32, int4):
        assert own_runtime(art)["missing"] is None
        assert art.manifest.steps[-1].config["own_runtime"]["ready"] is True
        ids, made, _ = validate_loop(art, "openvino", eos=False)
        got = run_app("openvino_genai", art.path)
        assert got["prompt"] == ids and got["chat_template"]
        assert got["tokens"] == made


@pytest.mark.skipif(not is_available("executorch"), reason="executorch is not installed")
def test_the_executorch_program_generates_in_executorch_s_llm_runner(ckpt, tmp_path):
    from compress.stages.export.lm.own_runtime import own_runtime

    art = _export(ckpt, tmp_path / "pte", "executorch")
    meta = art.manifest.steps[-1].config["lowering"]["runner_metadata"]
    assert meta["get_max_context_len"] == art.manifest.postprocess.cache.max_length and meta["get_eos_ids"] == [2]
    assert own_runtime(art)["missing"] is None
    ids, made, text = validate_loop(art, "executorch", eos=False)
    got = run_app("executorch", art.path)
    assert got["prompt_tokens"] == len(ids)  # its tokenizer (tokenizer.json) and BOS: as many ids as validate's
    assert got["text"] == text and text.strip()  # the runner hands back text pieces


@pytest.mark.skipif(not is_available("llama_cpp"), reason="llama-cpp-python is not installed")
def test_the_gguf_artifact_generates_in_llama_cpp_with_its_chat_template(ckpt, tmp_path):
    from compress.stages.export.lm.gguf import llama_cpp_tree

    if llama_cpp_tree() is None:
        pytest.skip("no llama.cpp source tree for the converter (EDGECOMPRESS_LLAMA_CPP)")
    art = _export(ckpt, tmp_path / "gguf", "gguf")
    # the checkpoint has tokenizer.json alone: llama.cpp's converter leaves placeholder scores, which split "little"
    # as "li", "t", "t", "le" in llama.cpp's tokenizer until the merge order is written in
    assert "merge order" in art.manifest.steps[-1].config["converter"]["vocabulary_scores"]
    ids, made, _ = validate_loop(art, "llamacpp")
    got = run_app("llama_cpp", art.path)
    assert got["prompt"] == ids and got["tokens"] == made
    assert got["chat_template"] == TEMPLATE  # llama.cpp's chat tools read it from the file
