"""A GGUF made elsewhere, adopted as a model file (``export model.gguf``): the manifest from its header, its tokenizer
from its own vocabulary, validate against the file itself in llama.cpp; a file that is not GGUF, or of an
architecture llama.cpp cannot load, is a one-line error. The GGUF is made by the repo's own route (llama.cpp's
converter) from a tiny random Llama of tests/builders: test material for the plumbing, not a real model's quality.

Needs llama-cpp-python (the llamacpp extra) and a llama.cpp source tree for the converter (EDGECOMPRESS_LLAMA_CPP);
skipped without them."""

from __future__ import annotations

import shutil
import signal

import pytest

pytest.importorskip("torch")
pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'edgecompress[llamacpp]')")
pytest.importorskip("gguf", reason="the gguf package is not installed (pip install 'edgecompress[llamacpp]')")

from compress.errors import ConfigError, ModelLoadError
from compress.stages.export.lm.gguf import ENV, llama_cpp_tree
from tests.builders.cli import ENV as CLI_ENV
from tests.builders.cli import assert_one_line_error, edgecompress
from tests.builders.lm import STORY, tiny_causal_lm


@pytest.fixture(scope="module")
def made(tmp_path_factory, home):
    """A tiny Llama's GGUF made by llama.cpp's converter, alone in a folder (no tokenizer files beside it), and its
    adoption."""
    tree = llama_cpp_tree()
    if tree is None:
        pytest.skip(f"no llama.cpp source tree for the converter: set {ENV}")
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    root = tmp_path_factory.mktemp("adopt")
    ckpt = tiny_causal_lm(root / "ckpt")
    converted = export(ckpt, root / "fp32", ExportConfig(format="gguf"))
    (root / "elsewhere").mkdir()
    bare = shutil.copy2(converted.path / "model.gguf", root / "elsewhere" / "tiny.gguf")
    adopted = export(bare, root / "adopted", ExportConfig())
    text = root / "story.txt"
    text.write_text("\n\n".join([STORY] * 4), encoding="utf-8")
    return {"root": root, "ckpt": ckpt, "bare": bare, "adopted": adopted, "text": text}


def test_the_manifest_comes_from_the_gguf_header_and_the_tokenizer_from_its_vocabulary(made):
    from transformers import AutoTokenizer

    m = made["adopted"].manifest
    assert (str(m.format), str(m.precision), str(m.task), m.model_file) == ("gguf", "fp32", "text-generation",
                                                                           "model.gguf")
    cache = m.postprocess.cache
    assert (cache.layers, cache.kv_heads, cache.head_size, cache.max_length, cache.layout) == (2, 2, 16, 256, "runtime")
    assert (m.postprocess.bos_token_id, m.postprocess.eos_token_id, m.max_length) == (1, 2, 256)
    assert m.source.path == str(made["bare"].resolve()) and m.source.architecture == "llama"
    adopted = m.steps[-1].metrics["adopted"]
    assert adopted["tokenizer"].startswith("the GGUF's own vocabulary") and adopted["logits_finite"]
    # the vocabulary turned into a tokenizer splits text as the checkpoint's own tokenizer does (under transformers 4;
    # transformers 5.24 rebuilds a llama sentencepiece vocabulary's merges in another order: "picked" becomes
    # p/i/c/ked, not p/i/ck/ed; docs/guides/model-files.md says to put the model's tokenizer files beside the .gguf)
    import transformers

    ours = AutoTokenizer.from_pretrained(str(made["adopted"].path))
    theirs = AutoTokenizer.from_pretrained(str(made["ckpt"]))
    same = ours(STORY).input_ids == theirs(STORY).input_ids
    if not same and not transformers.__version__.startswith("4."):
        pytest.xfail(f"transformers {transformers.__version__} rebuilds a sentencepiece GGUF vocabulary's merges in "
                     "another order (upstream; transformers 4 matches)")
    assert same


def test_validate_of_an_adopted_gguf_measures_speed_and_perplexity_against_the_file_itself(made):
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    cfg = ValidateConfig.from_flat(profile="host", data=str(made["text"]), prompt_tokens=24,
                                   new_tokens=8, window=32, limit=3, cold_start=False)
    report = validate(made["adopted"].path, cfg)
    met, gen = report.metrics, report.metrics["generation"]
    assert met["decode_tokens_per_s"] > 0 and gen["new_tokens"] == 8
    assert met["perplexity"] > 1.0 and gen["teacher_perplexity"] == pytest.approx(met["perplexity"], rel=1e-4)
    assert met["top1_agreement"] == 1.0 and met["kl_mean"] == pytest.approx(0.0, abs=1e-6)  # the file against itself
    assert report.teacher["path"] == str(made["bare"])
    assert not any("differs from" in w for w in report.warnings)  # the reference is the adopted file itself


def test_a_quantized_adopted_gguf_is_compared_with_the_file_it_came_from(made, tmp_path):
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig
    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    q = quantize(made["adopted"].path, tmp_path / "q4", QuantizeConfig.from_flat(precision="int4"))
    cfg = ValidateConfig.from_flat(profile="host", data=str(made["text"]), prompt_tokens=24,
                                   new_tokens=8, window=32, limit=3, cold_start=False, baseline=False)
    report = validate(q.path, cfg)
    met = report.metrics
    assert met["kl_mean"] > 0 and met["top1_agreement"] < 1.0  # Q4_0 moved the logits of the F32 file
    assert met["generation"]["teacher_perplexity"] != pytest.approx(met["perplexity"], rel=1e-6)


def test_a_file_that_is_not_gguf_is_a_one_line_error(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"this is not a GGUF file at all" * 4)
    proc = edgecompress("export", bad, "-o", tmp_path / "out")
    assert_one_line_error(proc, "not a readable GGUF file")
    assert not (tmp_path / "out").exists()


def test_an_architecture_llama_cpp_cannot_load_is_a_one_line_error(tmp_path):
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "strange.gguf"
    w = GGUFWriter(str(path), "notanarch")
    w.add_block_count(1)
    w.add_uint32("notanarch.attention.head_count", 2)
    w.add_uint32("notanarch.embedding_length", 8)
    w.add_uint32("notanarch.vocab_size", 4)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    proc = edgecompress("export", path, "-o", tmp_path / "out")
    assert_one_line_error(proc, "llama.cpp", "cannot load this GGUF", "notanarch")
    assert not (tmp_path / "out").exists()
    from compress.stages.export import export
    from compress.stages.export.config import ExportConfig

    with pytest.raises(ModelLoadError):
        export(path, tmp_path / "out", ExportConfig())
    no_layers = tmp_path / "empty.gguf"
    w = GGUFWriter(str(no_layers), "llama")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ConfigError, match="no block count"):
        export(no_layers, tmp_path / "out", ExportConfig())
    assert not (tmp_path / "out").exists()


#: the CLI as a user's terminal runs it: Ctrl-C raises KeyboardInterrupt even where the test runner's shell started
#: this process with SIGINT ignored
_CLI = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from compress.cli import main; main(sys.argv[1:])")


@pytest.mark.parametrize(("sig", "code", "name"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_a_signal_during_validate_of_a_gguf_ends_in_one_line(made, tmp_path, sig, code, name):
    """Issue 66: SIGTERM while a GGUF was validated printed a traceback from ``Llama.__del__``. Both llama.cpp models
    (the artifact and the file it is compared with) are now closed on the way out: one line, 128 + the signal."""
    import subprocess
    import sys
    import time

    from tests.builders.cli import ENV

    big = tmp_path / "big.txt"
    big.write_text("\n\n".join([STORY] * 400), encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-c", _CLI, "validate", str(made["adopted"].path), "--data", str(big),
                             "--limit", "400", "--window", "32", "--no-cold-start", "--report-dir", str(tmp_path / "r")],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()  # the bounds, said once the text is read: the models load and run next
        assert first.startswith("perplexity on 400 windows of 32 tokens"), (first, proc.poll())
        time.sleep(3)
        assert proc.poll() is None, "the run ended before the signal: give it more work"
        proc.send_signal(sig)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, rest
    assert "Traceback" not in rest and "Exception ignored" not in rest, rest
    assert rest.strip().splitlines()[-1] == f"interrupted ({name}); no output was written", rest
    assert not (tmp_path / "r").exists()


def test_a_gguf_artifacts_baseline_without_a_llama_cpp_tree_is_refused_before_the_work(made, tmp_path, monkeypatch):
    """Its FP32 baseline is exported by llama.cpp's converter: without a tree, one line (exit 2) before any window is
    scored, naming --no-baseline; nothing is written."""
    from compress.stages.quantize import quantize
    from compress.stages.quantize.config import QuantizeConfig

    q8 = quantize(made["root"] / "fp32", tmp_path / "q8", QuantizeConfig.from_flat(precision="int8"))
    proc = edgecompress("validate", q8.path, "-p", "host", "--data", made["text"], "--report-dir", tmp_path / "r",
                        env={k: v for k, v in CLI_ENV.items() if k != ENV})
    assert_one_line_error(proc, "no llama.cpp source tree", "--no-baseline")
    assert "perplexity windows" not in proc.stderr and not (tmp_path / "r").exists()
