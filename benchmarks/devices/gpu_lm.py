"""GPU check of small language models: generation in the torch runtime on a CUDA GPU (FP16 / BF16, eager and
``torch.compile``) through ``validate``, and LoRA fine-tuning and distillation of a causal LM, against the CPU.

* **Generation** on random-weight models of real shapes (:data:`SHAPES`: SmolLM2-135M's and Qwen3-0.6B's configs,
  their real vocabularies; random weights are test material: speed and memory only, never quality), batch 1:
  time to first token and prefill tokens/s for a 128- and a 512-token prompt, decode tokens/s over 128 new tokens
  (validate's figures: the prefill returns the prompt's logits to the host, as every runtime's does), and the GPU's
  peak allocated memory. Each row is one ``validate`` of the checkpoint on a profile with ``runtime: {name: torch,
  provider: cuda, options: {dtype, compile}}`` (no data: a built-in prompt; no cold-start probe).
* **Training**: ``finetune --lora-rank 32`` and ``distill --layers 10`` of the SmolLM2-135M shape, batches of
  8 x 256 tokens of real text (tiny-shakespeare, TinyStories in ../shared/data), steps/s of the training phase. The
  CPU reference is this script's ``--parts train`` run on the CPU (``--device cpu``, the same settings, fewer
  steps), written to ``results/gpu_lm_cpu.json`` and compared when present.

    python benchmarks/devices/gpu_lm.py                                   # on a CUDA machine: results/gpu_lm.json
    OMP_NUM_THREADS=2 python benchmarks/devices/gpu_lm.py --device cpu --parts train --train-steps 3 \\
        --out benchmarks/results/gpu_lm_cpu.json                  # the CPU reference, here

QLoRA is not timed on the GPU: bitsandbytes' CUDA wheel is larger than what could be carried to the lent machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness
DATA = HERE.parent.parent / "shared" / "data"

#: real shapes (from the models' config.json), random weights
SHAPES = {
    "smollm2-135m": ("llama", dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                                   rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)),
    "qwen3-0.6b": ("qwen3", dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                                 num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                                 max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6,
                                 tie_word_embeddings=True)),
}
VARIANTS = [("fp16", {"dtype": "fp16"}), ("bf16", {"dtype": "bf16"}), ("fp16+compile", {"dtype": "fp16", "compile": True})]
PROMPTS = (128, 512)
TRAIN = dict(batch_size=8, max_length=256, lr=1e-4)


def checkpoint(work: Path, name: str, small: bool) -> Path:
    """A random-weight checkpoint of ``name``'s shape with stories260K's tokenizer (ids < 512 < the vocabulary)."""
    import torch
    import transformers

    from tests.builders.lm import ARCHS, STORIES, TOKENIZER_FILES

    out = work / name
    if (out / "config.json").is_file():
        return out
    arch, dims = SHAPES[name]
    if small:  # --smoke: the same code on a few layers
        dims = {**dims, "num_hidden_layers": 2}
    config_cls, cls = (getattr(transformers, n) for n in ARCHS[arch])
    torch.manual_seed(0)
    model = cls(config_cls(**dims, bos_token_id=1, eos_token_id=2)).eval()
    model.save_pretrained(out)
    for f in TOKENIZER_FILES:
        (out / f).write_bytes((STORIES / f).read_bytes())
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    return out


def generation_row(ckpt: Path, work: Path, variant: str, options: dict, prompt: int, device: str) -> dict:
    import yaml

    from compress.validation.config import ValidateConfig
    from compress.validation.local import validate

    doc = {"name": f"torch-{device}-{variant.replace('+', '-')}", "extends": "nvidia-h100",
           "runtime": {"name": "torch", "provider": device, "options": options, "threads": os.cpu_count()},
           "measure": {"warmup": 1, "min_runs": 640, "min_duration_s": 2.0}}
    prof = work / "profiles" / f"{doc['name']}.yaml"
    prof.parent.mkdir(parents=True, exist_ok=True)
    prof.write_text(yaml.safe_dump(doc, sort_keys=False))
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    report = validate(ckpt, ValidateConfig.from_flat(profile=str(prof), cold_start=False, baseline=False,
                                                     estimate="never", prompt_tokens=prompt, new_tokens=128))
    gen = report.metrics["generation"]
    row = {"model": ckpt.name, "variant": variant, "prompt_tokens": gen["prompt_tokens"],
           "new_tokens": gen["new_tokens"], "ttft_ms_p50": report.metrics["time_to_first_token_ms"],
           "prefill_tokens_per_s": gen["prefill_tokens_per_s"], "decode_tokens_per_s": gen["decode_tokens_per_s"],
           "wall_s": round(time.perf_counter() - t0, 1), "runtime": report.environment["runtime"]}
    if device == "cuda":
        import torch

        row["gpu_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return row


def texts(work: Path) -> dict[str, Path]:
    lines = (DATA / "tiny-shakespeare" / "input.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    out = {"shakespeare": work / "shakespeare.txt", "stories": work / "stories.txt"}
    out["shakespeare"].write_text("".join(lines[: len(lines) // 2]), encoding="utf-8")
    # the first 100k characters (~100 windows): the teacher's cache of them is filled before training, CPU included
    out["stories"].write_text((DATA / "tinystories" / "valid-first500.txt").read_text(encoding="utf-8")[:100_000])
    return out


def train_row(kind: str, ckpt: Path, work: Path, steps: int, layers: int) -> dict:
    data = texts(work)
    t0 = time.perf_counter()
    if kind == "lora":
        from compress.stages.finetune import finetune
        from compress.stages.finetune.config import FinetuneConfig

        cfg = FinetuneConfig.from_flat(task="text-generation", lora_rank=32, lora_alpha=64, max_steps=steps,
                                       eval_every=steps, **TRAIN)
        r = finetune(ckpt, data["shakespeare"], work / "lora", cfg, force=True)
    else:
        from compress.stages.distill import distill
        from compress.stages.distill.config import DistillConfig

        cfg = DistillConfig.from_flat(layers=layers, max_steps=steps, eval_every=steps, seed=0, **TRAIN)
        r = distill(ckpt, data["stories"], work / "student", cfg, force=True, teacher_cache=work / "teacher-cache")
    m = r.metrics
    row = {"kind": kind, "model": ckpt.name, **TRAIN, "steps": m.get("steps"), "train_seconds": m.get("train_seconds"),
           "wall_s": round(time.perf_counter() - t0, 1)}
    if m.get("steps") and m.get("train_seconds"):
        row["steps_per_s"] = round(m["steps"] / m["train_seconds"], 3)
    import torch

    if torch.cuda.is_available():
        row["gpu_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        torch.cuda.reset_peak_memory_stats()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--parts", default="gen,train", help="comma-separated: train (run first), gen")
    ap.add_argument("--models", default=",".join(SHAPES))
    ap.add_argument("--variants", default=",".join(v for v, _ in VARIANTS))
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--work", type=Path, default=HERE / ".cache" / "gpu-lm")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gpu_lm.json")
    ap.add_argument("--budget-s", type=float, default=420.0, help="start no run after this many seconds")
    ap.add_argument("--smoke", action="store_true", help="2-layer models, bf16 only: checks the script")
    args = ap.parse_args()
    t_all = time.perf_counter()
    import compress  # noqa: F401  (before torchvision-touching imports)
    from benchmarks.harness.results import Phases, cuda_machine

    args.work.mkdir(parents=True, exist_ok=True)
    cpu_ref = HERE / "results" / "gpu_lm_cpu.json"
    result = {"benchmark": "gpu_lm", "machine": cuda_machine(), "device": args.device, "generation": [], "training": [],
              "cpu_training": json.loads(cpu_ref.read_text())["training"] if cpu_ref.is_file() else None,
              "errors": []}

    run = Phases(result, args.out, args.budget_s, "gpu-lm", t0=t_all)

    def step(label, fn, into):
        row = run.run(label, fn)
        if row is not None:
            into.append(row)

    parts = args.parts.split(",")
    variants = [v for v in VARIANTS if v[0] in args.variants.split(",")]
    if args.smoke or args.device == "cpu":
        variants = [v for v in VARIANTS if v[0] == "bf16"]
    for part in parts:
        if part not in ("gen", "train"):
            raise SystemExit(f"--parts: {part!r} is not gen or train")
    if "train" in parts:
        ckpt = checkpoint(args.work, "smollm2-135m", args.smoke)
        for kind in ("lora", "distill"):
            step(f"{kind} smollm2-135m", lambda k=kind: train_row(k, ckpt, args.work, args.train_steps,
                                                                 1 if args.smoke else 10),
                 result["training"])
    for name in args.models.split(",") if "gen" in parts else ():
        ckpt = checkpoint(args.work, name, args.smoke)
        for variant, options in variants:
            for prompt in PROMPTS:
                step(f"generate {name} {variant} prompt {prompt}",
                     lambda c=ckpt, v=variant, o=options, p=prompt: generation_row(c, args.work, v, o, p, args.device),
                     result["generation"])
    run.done()


if __name__ == "__main__":
    main()
