"""Pretrain a small Llama-architecture causal LM on real text here: the teacher of ``benchmarks/generators/lm_smaller.py``.

**Test material**: a few million parameters trained for half an hour on two shared CPU cores is not a useful language
model; it is a real LM trained on real text, with real shapes (8 layers, grouped-query attention, tied embeddings),
so that fine-tuning, distillation, pruning and INT4 have something honest to act on (issue 55's "Material").
stories260K (``../shared/models/stories260K``) stays the correctness check: at 260K parameters there is nothing to
distil it into.

Data (``../shared/data``), split so that each later step has text the teacher never saw:

* pretraining: WikiText-2 ``wiki.valid.raw`` (all of it) and the first 90 % of tiny-shakespeare's lines;
* held out, the base's own domain (perplexity here and the fine-tunes' forgetting): WikiText-2 ``wiki.test.raw``
  (the standard perplexity text) and the last 10 % of tiny-shakespeare;
* never seen in pretraining (neither by the model nor by the tokenizer): TinyStories ``valid-first500.txt``, the
  fine-tuning task of lm_smaller.py.

Tokenizer: a 4,096-token sentencepiece BPE with byte fallback, trained here on the pretraining text only (the
Llama 2 / stories260K kind: llama.cpp's converter reads its ``tokenizer.model`` for every export route, where a new
byte-level BPE's pre-tokenizer hash is unknown to it; 4,096 tokens rather than stories260K's 512 so that WikiText is
not cut into bytes and vocabulary pruning has a vocabulary to prune). Saved as a Hugging Face ``LlamaTokenizerFast``
(``tokenizer.json`` and ``tokenizer.model``).

Training: edgecompress's loop (``TrainLoop``, through ``benchmarks.harness.training``: AdamW, bf16 autocast where the CPU has it, windows of 128 tokens), the learning rate on
a warmup + cosine schedule over the *wall time* given (``--minutes``), as the machine is shared and steps per minute
vary. Writes a Hugging Face checkpoint folder (``config.json``, ``model.safetensors``, the tokenizer,
``generation_config.json``) and ``pretraining.json`` (split, steps, tokens, held-out perplexity) to ``--out``.

    pip install sentencepiece  # the tokenizer's trainer (not one of edgecompress's dependencies)
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/generators/lm_teacher.py --out /tmp/s62/lm-teacher --minutes 33 --threads 1

Threads: on two cores shared with other sessions, one torch thread ran a step in ~1 s where two took ~8 s (the
threads wait for each other on oversubscribed cores): the first teacher (/tmp/s61/lm-teacher, two threads, 55
minutes) made 131 steps (held-out perplexity 738 on WikiText-2 test: near-unigram); one thread for 33 minutes
(/tmp/s62/lm-teacher) made 3,620 steps, 3.7M tokens (85.5 on WikiText-2 test, 42.8 on the held-out Shakespeare);
one thread for 36 minutes on an idle VM (/tmp/s65/lm-teacher) made 5,183 steps, 5.3M tokens (92.1 and 40.4).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import compress  # noqa: F401 - first: the torchvision hook transformers needs beside CPU torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness
from benchmarks.harness.training import train_steps

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
WINDOW = 128
VOCAB = 4096
#: the teacher's shape: 8 layers (a half-depth student of 4 makes sense), GQA 4 query heads over 2 KV heads; small
#: (about 2M parameters) because two CPU cores shared by eight sessions give it a fraction of a core
SHAPE = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=8, num_attention_heads=4,
             num_key_value_heads=2, head_dim=32, max_position_embeddings=512)


def split(data: Path) -> dict[str, str]:
    """The pretraining text and the held-out text of the base's domain (see the module's docstring)."""
    shakes = (data / "tiny-shakespeare" / "input.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    cut = int(len(shakes) * 0.9)
    return {"train": (data / "wikitext-2" / "wiki.valid.raw").read_text(encoding="utf-8") + "".join(shakes[:cut]),
            "heldout_wiki": (data / "wikitext-2" / "wiki.test.raw").read_text(encoding="utf-8"),
            "heldout_shakespeare": "".join(shakes[cut:])}


def train_tokenizer(text: str, work: Path):
    """A sentencepiece BPE (byte fallback, Llama 2's settings) on ``text``, as a Hugging Face fast tokenizer."""
    try:
        import sentencepiece as spm
    except ImportError:
        raise SystemExit("lm_teacher.py trains its tokenizer with sentencepiece: pip install sentencepiece") from None
    from transformers import LlamaTokenizerFast

    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(line for line in text.splitlines() if line.strip()), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(work / "tokenizer"), model_type="bpe", vocab_size=VOCAB,
        byte_fallback=True, split_digits=True, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        max_sentence_length=1 << 16, num_threads=2, minloglevel=2)
    return LlamaTokenizerFast(vocab_file=str(work / "tokenizer.model"), legacy=False, add_bos_token=True,
                              add_eos_token=False, from_slow=True)


def ids_of(tokenizer, text: str) -> list[int]:
    """``text`` as one token stream: paragraphs (blank-line separated) each encoded, BOS before each."""
    out: list[int] = []
    for para in text.split("\n\n"):
        if para.strip():
            out += tokenizer(para.strip() + "\n", add_special_tokens=True)["input_ids"]
    return out


def perplexity(model, ids, *, windows: int = 32) -> float:
    """Perplexity over the first ``windows`` non-overlapping windows of ``ids`` (every position predicted)."""
    import torch

    n = min(windows, len(ids) // WINDOW)
    x = torch.tensor(ids[:n * WINDOW]).view(n, WINDOW)
    model.eval()
    nll = 0.0
    with torch.no_grad():
        for b in x.split(16):
            nll += float(model(input_ids=b, labels=b).loss) * len(b)
    model.train()
    return math.exp(nll / n)


def lr_at(frac: float, peak: float) -> float:
    """Warmup over the first 3 % of the time, then cosine to a tenth of the peak."""
    if frac < 0.03:
        return peak * max(frac / 0.03, 0.02)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, (frac - 0.03) / 0.97))))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the checkpoint folder to write (outside the repository)")
    p.add_argument("--minutes", type=float, default=30.0, help="wall time for training (the schedule spans it)")
    p.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    p.add_argument("--batch", type=int, default=8, help="windows of 128 tokens per step")
    p.add_argument("--lr", type=float, default=4e-3, help="peak learning rate")
    p.add_argument("--threads", type=int, default=2, help="torch threads (1 where the cores are shared: see above)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    a = p.parse_args(argv)
    if a.out.exists() and not a.force:
        print(f"error: {a.out} exists (give --force to replace it)", file=sys.stderr)
        return 2

    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    tmp = a.out.with_name(a.out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    text = split(a.data)
    t0 = time.time()
    tok = train_tokenizer(text["train"], tmp)
    for f in ("corpus.txt", "tokenizer.vocab"):
        (tmp / f).unlink(missing_ok=True)
    train = torch.tensor(ids_of(tok, text["train"]))
    held = {k: ids_of(tok, v) for k, v in text.items() if k.startswith("heldout")}
    print(f"tokenizer {time.time() - t0:.0f}s; train tokens {len(train)}; "
          + ", ".join(f"{k} {len(v)}" for k, v in held.items()), flush=True)

    config = LlamaConfig(vocab_size=len(tok), tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                         rms_norm_eps=1e-5, rope_theta=10000.0, **SHAPE)
    model = LlamaForCausalLM(config)
    params = sum(q.numel() for q in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1)
    bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    gen = torch.Generator().manual_seed(a.seed)
    budget = a.minutes * 60

    def windows():
        start = time.time()
        while (frac := (time.time() - start) / budget) < 1.0:
            for g in opt.param_groups:
                g["lr"] = lr_at(frac, a.lr)
            at = torch.randint(0, len(train) - WINDOW - 1, (a.batch,), generator=gen)
            yield torch.stack([train[i:i + WINDOW] for i in at.tolist()])

    def loss(model, x):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(input_ids=x, labels=x).loss

    run = train_steps(model, loss, windows, optimizer=opt, clip=1.0, log_every=10, what="pretraining",
                      log=lambda msg: print(msg, flush=True))
    step, tokens = run["steps"], run["steps"] * a.batch * WINDOW
    ppl = {k: round(perplexity(model, v), 2) for k, v in held.items()}
    print(f"done: {step} steps, {tokens} tokens, held-out perplexity {ppl}", flush=True)

    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    GenerationConfig(bos_token_id=1, eos_token_id=2, max_length=config.max_position_embeddings).save_pretrained(tmp)
    record = {"what": "test material: a small Llama-architecture LM pretrained here on two shared CPU cores",
              "parameters": params, "shape": SHAPE, "vocab": len(tok), "window": WINDOW, "steps": step,
              "tokens_seen": tokens, "train_tokens": len(train), "minutes": a.minutes, "bf16_autocast": bf16,
              "threads": a.threads,
              "split": {"pretraining": "wikitext-2/wiki.valid.raw + tiny-shakespeare lines [0, 90%)",
                        "heldout_wiki": "wikitext-2/wiki.test.raw",
                        "heldout_shakespeare": "tiny-shakespeare lines [90%, 100%)",
                        "unseen": "tinystories/valid-first500.txt (the fine-tuning task)"},
              "heldout_perplexity": ppl, "perplexity_windows": f"first 32 windows of {WINDOW}, BOS per paragraph"}
    (tmp / "pretraining.json").write_text(json.dumps(record, indent=2) + "\n")
    if a.out.exists():
        shutil.rmtree(a.out)
    tmp.rename(a.out)
    print(f"wrote {a.out} ({params} parameters)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
