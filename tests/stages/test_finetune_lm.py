"""``edgecompress finetune`` of a causal LM (task text-generation): continuation text or prompt/response rows (the loss
on the response only), full, frozen layers, LoRA and QLoRA (LoRA over a base held in NF4 by bitsandbytes), adapters
merged into a plain FP32 checkpoint that loads as a causal-LM teacher. The tiny random Llama (tests/builders) and the
prompt/response rows below are test material; stories260K (a real model, ../shared/models) checks the perplexity
before and after on its own domain."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
from types import SimpleNamespace

import numpy as np
import pytest

from compress.stages.finetune import finetune
from compress.stages.finetune.config import FinetuneConfig
from tests.builders.cli import main_error
from tests.builders.lm import STORIES, STORY, TINYSTORIES, tiny_causal_lm
from tests.builders.shared import needs_shared

pytestmark = pytest.mark.slow

pytest.importorskip("peft")

NF4 = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                         reason="QLoRA's 4-bit backend is not installed: pip install 'bitsandbytes>=0.45'")
#: test material: instruction rows written for these tests
ROWS = [{"prompt": f"Q: What did {name} find in the park?\nA:", "response": f" {name} found a big red ball."}
        for name in ("Lily", "Tom", "Sue", "Ben", "Max", "Mia")]
STEPS = dict(max_steps=6, batch_size=6, lr=2e-2, eval_every=6)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    rows, docs = root / "rows.jsonl", root / "story.txt"
    rows.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    docs.write_text(STORY * 3)  # one perplexity window of 256 tokens
    return SimpleNamespace(root=root, base=tiny_causal_lm(root / "base"), rows=rows, docs=docs)


@pytest.fixture(scope="module")
def lora(lm):
    return finetune(lm.base, lm.rows, lm.root / "lora", FinetuneConfig.from_flat(lora_rank=4, **STEPS),
                    eval_data=lm.rows, retain_data=lm.docs)


def _weights(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_lora_on_instruction_rows_writes_a_merged_causal_lm_teacher(lm, lora):
    from compress.teachers.lm import CausalLM
    from compress.teachers.load import load_teacher

    m = lora.metrics
    assert m["mode"] == "lora" and m["lora"]["targets"] == ["q_proj", "v_proj"]  # the seeds' projections
    assert m["trainable_parameters"] == 2 * 4 * ((64 + 64) + (64 + 32))  # 2 layers, rank 4, q 64->64, v 64->32
    assert m["train"]["kind"] == "instruction" and m["train"]["rows"] == len(ROWS)
    assert m["eval_perplexity"] < 0.5 * m["base_eval_perplexity"]  # it learnt the responses
    f = m["forgetting"]
    assert f["data"] == str(lm.docs) and f["retain_windows"] == 1 and f["base_perplexity"] > 1
    fp32 = 4 * sum(v.numel() for v in _weights(lm.base).values())
    assert fp32 <= m["memory"]["base_weight_bytes"] < fp32 + 1024  # the frozen base in FP32 (and RoPE's buffer)
    art = lora.artifact
    assert art.manifest.task == "text-generation" and art.manifest.source.sha256 == load_teacher(lm.base).sha256
    teacher = CausalLM.load(art.path)  # a plain checkpoint with its tokenizer and generation defaults
    assert type(teacher.model).__name__ == "LlamaForCausalLM" and teacher.encode("Once")[0] == 1
    assert json.loads((art.path / "generation_config.json").read_text())["eos_token_id"] == 2
    base, tuned = _weights(lm.base), _weights(art.path)
    assert set(base) == set(tuned)  # merged: no adapter left
    changed = {k for k in base if not np.array_equal(base[k].numpy(), tuned[k].numpy())}
    assert changed == {f"model.layers.{i}.self_attn.{p}_proj.weight" for i in (0, 1) for p in "qv"}


def test_the_loss_is_on_the_response_tokens_only(lm):
    import torch

    from compress.data.text import read_training_texts
    from compress.stages.finetune.lm import IGNORE, lm_rows
    from compress.teachers.load import load_teacher

    teacher = load_teacher(lm.base)
    tok = teacher.tokenizer
    rows = lm_rows(tok, read_training_texts(lm.rows), 64)
    for row, ids, labels in zip(ROWS, rows.ids, rows.labels, strict=True):
        prompt = len(tok(row["prompt"])["input_ids"])
        assert (labels[:prompt] == IGNORE).all() and (labels[prompt:] == ids[prompt:]).all() and ids[-1] == 2
    batch = rows.collate([0, 1])
    logits = teacher.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    trained = targets != IGNORE
    by_hand = torch.nn.functional.cross_entropy(logits[:, :-1][trained], targets[trained])
    assert torch.allclose(teacher.model(**{k: v for k, v in batch.items() if k != "index"}).loss, by_hand)
    docs = lm_rows(tok, read_training_texts(lm.docs), 64)  # continuation: every token trained
    assert docs.record()["kind"] == "continuation" and all((d == lab).all() for d, lab in zip(docs.ids, docs.labels))


def test_a_full_fine_tune_on_documents_resumes(lm):
    from compress.stages.training import Interrupted

    cfg = FinetuneConfig.from_flat(max_steps=2, batch_size=4, max_length=32, save_every=1)

    def stop_at_1(event):  # Ctrl-C during step 1: a checkpoint at its end, then Interrupted
        if event["step"] == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        finetune(lm.base, lm.docs, lm.root / "full", cfg, progress=stop_at_1)
    seen = []
    r = finetune(lm.base, lm.docs, lm.root / "full", cfg, resume=True, progress=lambda e: seen.append(e["step"]))
    assert seen == [2] and r.metrics["mode"] == "full" and r.metrics["trainable_share"] == 1.0
    assert r.metrics["train"]["kind"] == "continuation" and r.metrics["window"] == 32


@NF4
def test_qlora_trains_over_an_nf4_base_and_writes_fp32(lm, lora):
    import torch

    r = finetune(lm.base, lm.rows, lm.root / "qlora", FinetuneConfig.from_flat(lora_rank=4, qlora=True, **STEPS),
                 eval_data=lm.rows)
    m = r.metrics
    assert m["mode"] == "qlora" and m["lora"]["base"]["quant_type"] == "nf4"
    assert m["trainable_parameters"] == lora.metrics["trainable_parameters"]
    # the linear layers at ~4.5 bits instead of 32: the embedding (tied head, 512 x 64) stays FP32
    embedding = 512 * 64 * 4
    assert m["memory"]["base_weight_bytes"] - embedding < 0.2 * (lora.metrics["memory"]["base_weight_bytes"] - embedding)
    assert m["eval_perplexity"] < 0.5 * m["base_eval_perplexity"]
    assert "quantization_config" not in json.loads((r.artifact.path / "config.json").read_text())
    base, tuned = _weights(lm.base), _weights(r.artifact.path)
    assert all(t.dtype == torch.float32 for t in tuned.values())
    import bitsandbytes.functional as bnbf

    up = "model.layers.0.mlp.up_proj.weight"  # no adapter: exactly the base's weight through NF4 and back
    codes, state = bnbf.quantize_4bit(base[up], quant_type="nf4", compress_statistics=True)
    assert torch.allclose(tuned[up], bnbf.dequantize_4bit(codes, state), atol=1e-6)
    assert not torch.equal(tuned[up], base[up])


@NF4
def test_the_nf4_merge_computes_what_was_trained(lm):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from compress.stages.finetune.qlora import load_nf4, merge_nf4

    tuned = get_peft_model(load_nf4(lm.base, "cpu"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in tuned.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # a trained adapter: B is no longer zero
    ids = torch.tensor([[1, 300, 45, 97, 12, 400]])
    with torch.inference_mode():
        trained = tuned(input_ids=ids).logits
        merged = merge_nf4(tuned, AutoModelForCausalLM.from_pretrained(lm.base))(input_ids=ids).logits
    assert torch.allclose(merged, trained, atol=1e-4)


def test_qlora_without_a_4bit_backend_names_the_package(lm, capsys, monkeypatch):
    import compress._optional

    available = compress._optional.is_available
    monkeypatch.setattr(compress._optional, "is_available", lambda m: m != "bitsandbytes" and available(m))
    line = main_error(capsys, "finetune", lm.base, "--train", lm.rows, "--out", lm.root / "no-nf4", "--lora-rank", "4",
                      "--qlora")
    assert "bitsandbytes" in line and "pip install 'bitsandbytes>=0.45'" in line
    assert not (lm.root / "no-nf4").exists()


@pytest.mark.parametrize("rows, args, words", [
    ([{"prompt": "Q: who?\nA:"}], [], ["rows.jsonl:1: no 'response' field", "--response-field"]),
    (ROWS, ["--response-field", "answer"], ["no 'answer' field (the line has 'prompt', 'response')"]),
    (ROWS, ["--qlora"], ["--qlora", "applies to LoRA only"]),
    (ROWS, ["--freeze", "all"], ["--freeze all", "nothing would train"]),
    (ROWS, ["--labels", "a,b"], ["--labels", "predicts tokens"]),
])
def test_bad_input_is_one_line(lm, tmp_path, capsys, rows, args, words):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = main_error(capsys, "finetune", lm.base, "--train", data, "--out", tmp_path / "o", "--max-steps", "1", *args)
    for w in words:
        assert w in line, (w, line)
    assert not (tmp_path / "o").exists()


@needs_shared(STORIES, TINYSTORIES)
def test_stories260k_keeps_its_domain_under_lora(tmp_path):
    """A real LM: its perplexity on TinyStories (its own domain, measured as validate does) is the published loss's
    level, and a few LoRA steps on more of that text, merged, keep it within a few percent."""
    text = TINYSTORIES.read_text(encoding="utf-8").split("\n\n")
    train, retain = tmp_path / "train.jsonl", tmp_path / "retain.jsonl"
    train.write_text("".join(json.dumps({"text": t}) + "\n" for t in text[200:216]))
    retain.write_text("".join(json.dumps({"text": t}) + "\n" for t in text[:40]))  # 16 windows of 256 tokens
    r = finetune(STORIES, train, tmp_path / "t", FinetuneConfig.from_flat(lora_rank=8, max_steps=2, batch_size=8,
                 max_length=64, lr=1e-3), retain_data=retain)
    f = r.metrics["forgetting"]
    assert 2.0 < f["base_perplexity"] < 6.0  # its published validation loss 1.30: perplexity 3.7
    assert f["retain_windows"] >= 8 and abs(f["perplexity_increase"]) < 0.05
