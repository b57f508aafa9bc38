"""Causal LM teachers (task text-generation): loading, logits by window batch, greedy decoding through the KV cache
against transformers' generate, and the one-line refusals. The tiny Llama/Qwen2 models have random weights: test
material for plumbing and agreement with PyTorch; stories260K (a real model, slow test) gives a real perplexity."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import compress  # noqa: F401 - the torchvision shim before transformers
from compress.errors import ConfigError, ModelLoadError
from compress.tasks import Task
from compress.tasks.generation import GENERATION_FILES
from compress.teachers.lm import CausalLM
from compress.teachers.lm_config import cache_of
from compress.teachers.load import load_teacher
from tests.builders.lm import STORIES, STORIES_ASSETS, STORY, TINYSTORIES, tiny_causal_lm
from tests.builders.shared import needs_shared

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_causal_lm(tmp_path_factory.mktemp("lm") / "llama")


def test_a_causal_lm_loads_as_text_generation_with_its_cache(tiny):
    t = load_teacher(tiny)
    assert t.task is Task.text_generation and type(t.model).__name__ == "LlamaForCausalLM"
    m = t.manifest()
    assert [o.name for o in m.outputs] == ["logits"] and m.outputs[0].shape[-1] == 512
    post = m.postprocess
    assert (post.bos_token_id, post.eos_token_id, post.window) == (1, 2, 256)
    assert (post.cache.layers, post.cache.kv_heads, post.cache.head_size, post.cache.max_length) == (2, 2, 16, 256)
    # stories260K names head_dim (8 = 64 / 8 heads); GQA 8 query heads over 4 KV heads
    real = cache_of(json.loads((STORIES_ASSETS / "config.json").read_text()))
    assert (real.layers, real.kv_heads, real.head_size, real.max_length) == (5, 4, 8, 512)
    assert "generation_config.json" in GENERATION_FILES and "tokenizer.json" in GENERATION_FILES


def test_the_tokenizer_and_generation_config_travel(tiny, tmp_path):
    load_teacher(tiny).save_inputs(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "generation_config.json").read_text())["eos_token_id"] == 2


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_greedy_through_the_cache_equals_generate(tmp_path, arch):
    import torch

    lm = CausalLM.load(tiny_causal_lm(tmp_path / arch, arch=arch, seed=3))
    prompt = lm.encode(STORY[:60])
    ours = lm.greedy(prompt, 24)
    with torch.inference_mode():
        ids = torch.tensor([prompt])
        ref = lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24,
                                min_new_tokens=24, pad_token_id=0, eos_token_id=None)[0, len(prompt):].tolist()
    assert ours == ref and len(ours) == 24
    stop = ours[5]
    assert lm.greedy(prompt, 24, eos=stop) == ours[:ours.index(stop) + 1]


def test_logits_come_in_window_batches_equal_to_one_call(tiny):
    import torch

    lm = CausalLM.load(tiny)
    windows = np.random.default_rng(0).integers(3, 512, (5, 32)).astype(np.int64)
    batches = list(lm.logits(windows, batch_size=2))
    assert [b.shape for b in batches] == [(2, 32, 512), (2, 32, 512), (1, 32, 512)]
    with torch.inference_mode():
        whole = lm.model(input_ids=torch.from_numpy(windows)).logits.numpy()
    np.testing.assert_allclose(np.concatenate(batches), whole, atol=1e-4)
    with pytest.raises(ConfigError, match="longer than the model's context"):
        next(lm.logits(np.zeros((1, 300), dtype=np.int64)))


def test_a_causal_lm_refuses_another_task_in_one_line(tiny):
    with pytest.raises(ConfigError, match="is a causal language model .*its task is text-generation, not "
                                          "text-classification"):
        load_teacher(tiny, "text-classification")


def test_a_tokenizer_without_the_models_special_tokens_is_refused(tiny, tmp_path):
    for bos, why in ((300, "an ordinary token"), (9999, "not in its tokenizer's vocabulary")):
        bad = tmp_path / f"bos{bos}"
        shutil.copytree(tiny, bad)
        (bad / "generation_config.json").write_text(json.dumps({"bos_token_id": bos, "eos_token_id": 2}))
        with pytest.raises(ModelLoadError, match=f"BOS token id {bos} .*{why}"):
            CausalLM.load(bad)


def _cli(capsys, *args) -> tuple[int, str]:
    from compress.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["-q", *map(str, args)])
    return e.value.code, capsys.readouterr()


def test_inspect_shows_a_causal_lm_folder_and_bad_ones_in_one_line(tiny, tmp_path, capsys):
    code, out = _cli(capsys, "inspect", tiny, "--json")
    assert code in (0, None), out.err
    m = json.loads(out.out)
    assert m["task"] == "text-generation" and m["postprocess"]["cache"]["kv_heads"] == 2
    code, out = _cli(capsys, "export", tiny, "--task", "text-classification", "--out", tmp_path / "x")
    assert code == 2 and len(out.err.strip().splitlines()) == 1 and "text-generation" in out.err
    assert not (tmp_path / "x").exists()
    bad = tmp_path / "foreign"
    shutil.copytree(tiny, bad)
    (bad / "generation_config.json").write_text(json.dumps({"bos_token_id": 300, "eos_token_id": 2}))
    code, out = _cli(capsys, "inspect", bad)
    assert code == 2 and out.err.strip().splitlines()[0].startswith("error: ") and "Traceback" not in out.err
    assert "BOS token id 300" in out.err


def test_a_causal_lm_given_labels_is_one_line(tiny, tmp_path, capsys):
    labelled = tmp_path / "train.tsv"
    labelled.write_text("label\ttext\n1\tgood\n0\tbad\n")
    code, out = _cli(capsys, "finetune", tiny, "--train", labelled, "--out", tmp_path / "ft")
    assert code == 2 and len(out.err.strip().splitlines()) == 1, out.err
    assert "train.tsv: text data is .txt or .jsonl" in out.err and "not labelled rows" in out.err
    assert not (tmp_path / "ft").exists()


# ~2 min on a busy 2-core VM
@needs_shared(STORIES, TINYSTORIES)
def test_stories260k_fp32_perplexity_over_tinystories_in_windows_of_256():
    """4.273 over 775 windows (98,425 scored tokens). The issue quotes llama.cpp's llama-perplexity at 4.522 (-c 256).
    Not a difference of arithmetic: llama.cpp (llama-cpp-python 0.3.36, an F32 GGUF converted with tok512.model) gives
    this model's logits on the same windows within KL 1.4e-6 (perplexity equal to 2e-5 on the first 60 windows). The
    Hugging Face tokenizer.json cuts the text as the model's SentencePiece model does (198,573 tokens); a GGUF converted
    from tokenizer.json alone (no SentencePiece scores) makes llama.cpp cut it into 199,640 tokens, split otherwise
    ("▁r e" for "▁ re"), on which this model's perplexity is 8.59. Which text handling gave 4.522 is not known."""
    from compress.data.text import read_texts, token_windows
    from compress.tasks.generation import GenerationStream

    lm = CausalLM.load(STORIES)
    windows = token_windows(lm.tokenizer, read_texts(TINYSTORIES), 256, context=lm.context)
    assert windows.shape == (775, 256) and (windows[:, 0] == 1).all()
    stream = GenerationStream(lm.postprocess())
    done = 0
    for logits in lm.logits(windows, batch_size=32):
        stream.update(logits, windows[done:done + len(logits)])
        done += len(logits)
    out = stream.result()
    assert out["tokens"] == 775 * 127
    assert out["perplexity"] == pytest.approx(4.273, abs=0.01)



def test_logits_leave_inference_mode_off_between_batches(tiny):
    """A caller that reads the logits batch by batch (two interleaved evaluations, as prune's scoring did) trains in
    between: the generator must not keep torch's inference mode on while it is suspended."""
    import torch

    lm = CausalLM.load(tiny)
    batches = lm.logits(np.ones((4, 8), dtype=np.int64), batch_size=1)
    first = next(batches)
    assert first.shape[:2] == (1, 8) and not torch.is_inference_mode_enabled()
    w = torch.ones(2, requires_grad=True)
    (w * 2).sum().backward()  # a training step between batches
    assert w.grad is not None and len(list(batches)) == 3
