"""Train the three image teachers of the image benchmark on scikit-learn's digits (``benchmarks/vision/digits.py``).

timm and torchvision ship no weights, and nothing here is downloaded: every teacher is trained from scratch on
the fixed digits train split (1,437 images), the test split (360) is never seen.

* ``cnn``: a Hugging Face ``MobileNetV2ForImageClassification`` (BatchNorm, depthwise convolutions, inverted
  residuals), 32×32 RGB, saved with ``save_pretrained`` and its ``MobileNetV2ImageProcessor``;
* ``vit``: a Hugging Face ``ViTForImageClassification`` (6 layers, 4×4 patches), 32×32 RGB, with its
  ``ViTImageProcessor``;
* ``program``: a plain ``nn.Module`` (convolutions, BatchNorm, a residual block), 16×16 grey, saved with
  ``torch.export.save`` as ``model.pt2`` plus the ``model.yaml`` that says what the program cannot.

Inputs are made by the same code edgecompress runs (``compress.device.feeds.ImageFeeds`` with each teacher's pinned
preprocessing), with random shifts of up to 1 pixel (at 8×8 scale, before upscaling: 4 pixels at 32×32) as augmentation.

    python benchmarks/vision/digits.py
    python benchmarks/vision/image_teachers.py [--digits benchmarks/.cache/digits] [--out benchmarks/.cache/images]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: benchmarks.harness
from benchmarks.harness.training import train_steps

LABELS = [str(i) for i in range(10)]


def _feeds_for(kind: str):
    from compress.device.feeds import ImageFeeds

    if kind == "program":
        return ImageFeeds(size=(16, 16), channels="L", mean=(0.5,), std=(0.5,), interpolation="bilinear")
    return ImageFeeds(size=(32, 32), channels="RGB", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                      interpolation="bilinear")


def shifted(images: np.ndarray, rng: np.random.Generator, max_shift: int = 1) -> np.ndarray:
    """Each 8×8 image moved by up to ``max_shift`` pixels (zeros fill in): the augmentation of the transfer set."""
    out = np.zeros_like(images)
    for i, img in enumerate(images):
        dy, dx = rng.integers(-max_shift, max_shift + 1, 2)
        out[i] = np.roll(np.roll(img, dy, 0), dx, 1)
    return out


def encode(feeds, images: np.ndarray):
    import torch

    return torch.from_numpy(feeds.encode(list(images))[feeds.input_names[0]])


class DigitNet:
    """The plain ``nn.Module`` teacher (built lazily so importing this file needs no torch)."""

    @staticmethod
    def build():
        import torch
        from torch import nn

        class Block(nn.Module):
            def __init__(self, c: int) -> None:
                super().__init__()
                self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
                self.bn1 = nn.BatchNorm2d(c)
                self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
                self.bn2 = nn.BatchNorm2d(c)

            def forward(self, x):
                return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
                self.block = Block(32)
                self.down = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64),
                                          nn.ReLU())
                self.head = nn.Linear(64, 10)

            def forward(self, pixel_values):
                x = self.down(self.block(self.stem(pixel_values)))
                return self.head(x.mean(dim=(2, 3)))

        return Net()


def build(kind: str):
    import transformers

    ids = {i: name for i, name in enumerate(LABELS)}
    common = dict(num_labels=10, id2label=ids, label2id={v: k for k, v in ids.items()})
    if kind == "cnn":
        # tf_padding=False: PyTorch padding; TensorFlow "same" padding is computed at run time, op by op, in ONNX
        cfg = transformers.MobileNetV2Config(num_channels=3, image_size=32, depth_multiplier=1.0, tf_padding=False,
                                             **common)
        return transformers.MobileNetV2ForImageClassification(cfg)
    if kind == "vit":
        cfg = transformers.ViTConfig(image_size=32, patch_size=4, num_channels=3, hidden_size=128, num_hidden_layers=6,
                                     num_attention_heads=4, intermediate_size=256, **common)
        return transformers.ViTForImageClassification(cfg)
    return DigitNet.build()


def logits(model, x):
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


def train(kind: str, train_npz: Path, test_npz: Path, epochs: int, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data, test = np.load(train_npz), np.load(test_npz)
    x, y = data["images"], torch.from_numpy(data["labels"].astype(np.int64))
    feeds = _feeds_for(kind)
    model = build(kind)
    lr = {"cnn": 3e-3, "vit": 1e-3, "program": 3e-3}[kind]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    per_epoch = (len(x) + 63) // 64
    steps = epochs * per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)

    def batches():
        for _ in range(epochs):
            order = rng.permutation(len(x))
            for i in range(0, len(x), 64):
                idx = order[i:i + 64]
                yield encode(feeds, shifted(x[idx], rng)), y[idx]

    def loss(model, batch):
        return torch.nn.functional.cross_entropy(logits(model, batch[0]), batch[1], label_smoothing=0.05)

    run = train_steps(model, loss, batches, optimizer=opt, scheduler=sched, steps=steps, every=10 * per_epoch,
                      evaluate=lambda: accuracy(model, feeds, test["images"], test["labels"]),
                      log_every=10 * per_epoch, what=kind, log=lambda msg: print(msg, flush=True))
    return model, feeds, accuracy(model, feeds, test["images"], test["labels"]), run["seconds"]


def accuracy(model, feeds, images: np.ndarray, labels: np.ndarray) -> float:
    import torch

    was_training = model.training
    model.eval()
    with torch.inference_mode():
        pred = torch.cat([logits(model, encode(feeds, images[i:i + 256])).argmax(-1) for i in range(0, len(images), 256)])
    model.train(was_training)
    return float((pred.numpy() == labels).mean())


def save(kind: str, model, out: Path) -> None:
    import torch
    import transformers
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    if kind == "cnn":
        model.save_pretrained(out)
        transformers.MobileNetV2ImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                               image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(out)
    elif kind == "vit":
        model.save_pretrained(out)
        transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3,
                                       image_std=[0.5] * 3).save_pretrained(out)
    else:
        model.eval()  # BatchNorm on its running statistics: the program is an inference graph
        batch = torch.export.Dim("batch_size", min=1, max=4096)
        program = torch.export.export(model, (torch.zeros(2, 1, 16, 16),), dynamic_shapes=({0: batch},))
        torch.export.save(program, out / "model.pt2")
        (out / "model.yaml").write_text(yaml.safe_dump({
            "task": "image-classification", "labels": LABELS, "architecture": "DigitNet",
            "preprocess": {"size": [16, 16], "channels": "L", "mean": [0.5], "std": [0.5], "interpolation": "bilinear"},
        }, sort_keys=False), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--digits", type=Path, default=Path("benchmarks/.cache/digits"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/.cache/images"))
    ap.add_argument("--only", choices=("cnn", "vit", "program"), action="append")
    ap.add_argument("--epochs", type=int, default=None, help="override every teacher's epochs")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    epochs = {"cnn": 25, "vit": 40, "program": 30}
    summary = args.out / "teachers.json"
    results = json.loads(summary.read_text()) if summary.is_file() else {}  # --only retrains some, keeps the rest
    for kind in args.only or ("program", "cnn", "vit"):
        model, _, acc, seconds = train(kind, args.digits / "train.npz", args.digits / "test.npz",
                                       args.epochs or epochs[kind])
        save(kind, model, args.out / kind)
        results[kind] = {"test_accuracy": acc, "seconds": round(seconds, 1),
                         "parameters": sum(p.numel() for p in model.parameters())}
        print(f"{kind}: test accuracy {acc:.4f}, {results[kind]['parameters']:,} parameters, saved to "
              f"{args.out / kind}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    summary.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
