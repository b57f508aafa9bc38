"""LoRA against QLoRA (``edgecompress finetune --lora-rank R [--qlora]``) on a causal LM, on this host's CPU: trainable
parameters, the bytes the frozen base is held in, the training phase's peak resident memory, time, the task's
perplexity and forgetting. Each fine-tune runs in a fresh process (its own peak memory).

* **Quality** on stories260K (``../shared/models/stories260K/hf``, a real 260K-parameter Llama trained on TinyStories
  by someone else): adapted to a new domain, Shakespeare (continuation text: the first 90 % of tiny-shakespeare's
  lines to train on, the last 10 % for the task's perplexity), its forgetting measured on TinyStories (its own domain,
  ``valid-first500.txt``).
* **Memory and time** on random-weight Llamas of larger real shapes (:data:`SHAPES`: 13M parameters, hidden 384,
  8 layers, 6 query / 2 key-value heads, FFN 1024; and 76M, hidden 768, 12 layers, 12 / 4 heads, FFN 2048; both with
  stories260K's 512-token vocabulary): random weights are test material, so only their bytes, memory and seconds are
  reported, never their perplexity. The peak resident memory is the training phase's (VmHWM reset once the model to
  train is built; QLoRA's FP32 copy, which measured the base, released before).

    nice -n 5 python benchmarks/generators/lm_finetune.py            # writes benchmarks/results/lm_finetune.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import compress  # noqa: F401 - first: the torchvision hook transformers needs beside CPU torch

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
STORIES = SHARED / "models" / "stories260K" / "hf"
DATA = SHARED / "data"
#: the issue's adapters: rank 32, alpha 64, on the attention projections peft seeds (q_proj, v_proj)
LORA = dict(lora_rank=32, lora_alpha=64)
#: the larger random shapes (memory and time only) and the steps each trains: (shape, steps, batch size, tokens)
SHAPES = {"shape": (dict(hidden=384, layers=8, heads=6, kv_heads=2, intermediate=1024, context=512), 3, 4, 128),
          "large": (dict(hidden=768, layers=12, heads=12, kv_heads=4, intermediate=2048, context=512), 2, 2, 64)}


def write_data(work: Path) -> dict[str, Path]:
    """Shakespeare to train on and to judge by, TinyStories to measure forgetting on (each a .txt document)."""
    lines = (DATA / "tiny-shakespeare" / "input.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    cut = int(len(lines) * 0.9)
    stories = (DATA / "tinystories" / "valid-first500.txt").read_text(encoding="utf-8").split("\n\n")
    out = {"train": work / "shakespeare-train.txt", "eval": work / "shakespeare-heldout.txt",
           "retain": work / "tinystories.txt"}
    out["train"].write_text("".join(lines[:cut]), encoding="utf-8")
    out["eval"].write_text("".join(lines[cut:cut + 400]), encoding="utf-8")
    out["retain"].write_text("\n\n".join(stories[:150]), encoding="utf-8")
    return out


def one(base: str, mode: str, flat: dict, data: dict[str, str], out: str) -> dict:
    """One fine-tune in this process; its metrics."""
    from compress.stages.finetune import finetune
    from compress.stages.finetune.config import FinetuneConfig

    config = FinetuneConfig.from_flat(task="text-generation", **LORA, qlora=mode == "qlora" or None, **flat)
    r = finetune(base, data["train"], out, config, eval_data=data.get("eval"), retain_data=data.get("retain"),
                 force=True)
    m = r.metrics
    keep = ("mode", "parameters", "trainable_parameters", "trainable_share", "steps", "train_seconds",
            "steps_per_second", "peak_rss_mb", "memory", "eval_perplexity", "base_eval_perplexity", "forgetting",
            "lora", "train", "window")
    return {k: m[k] for k in keep if k in m}


def run(base: Path, mode: str, flat: dict, data: dict[str, Path], out: Path) -> dict:
    """:func:`one` in a fresh process (its peak memory its own)."""
    args = json.dumps({"base": str(base), "mode": mode, "flat": flat, "data": {k: str(v) for k, v in data.items()},
                       "out": str(out)})
    proc = subprocess.run([sys.executable, __file__, "--one", args], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{mode} on {base} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=40, help="optimiser steps on stories260K (batches of 8 x 128 tokens)")
    ap.add_argument("--parts", default="stories,shape,large", help="which runs: stories (quality), shape and large "
                    "(memory, time); a part run alone replaces its runs in an existing --out")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lm_finetune.json")
    args = ap.parse_args()
    if args.one:
        spec = json.loads(args.one)
        print(json.dumps(one(**spec)))
        return
    sys.path.insert(0, str(ROOT))
    from benchmarks.harness.results import write_results
    from compress.stages.finetune.qlora import nf4_backend
    from tests.builders.lm import tiny_causal_lm

    parts = set(args.parts.split(","))
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results: dict = {"benchmark": "lm_finetune", "bitsandbytes": nf4_backend(),
                     "lora": LORA, "shapes": {k: v[0] for k, v in SHAPES.items()}, "runs": old.get("runs", {})}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = write_data(work)
        quality = dict(max_steps=args.steps, batch_size=8, max_length=128, lr=2e-3, eval_every=max(1, args.steps // 2))
        for mode in ("lora", "qlora") if "stories" in parts else ():
            results["runs"][f"stories260K/{mode}"] = run(STORIES, mode, quality, data, work / f"stories-{mode}")
            print(mode, json.dumps(results["runs"][f"stories260K/{mode}"]), flush=True)
        for part, (dims, steps, batch, tokens) in SHAPES.items():
            if part not in parts:
                continue
            shape = tiny_causal_lm(work / part, **dims)  # random weights: memory and time only
            speed = dict(max_steps=steps, batch_size=batch, max_length=tokens, lr=2e-3)
            for mode in ("lora", "qlora"):
                r = run(shape, mode, speed, {"train": data["train"]}, work / f"{part}-{mode}")
                results["runs"][f"random-{round(r['parameters'] / 1e6)}M/{mode}"] = r
                print(mode, json.dumps(r), flush=True)
            shutil.rmtree(shape)
    write_results(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
