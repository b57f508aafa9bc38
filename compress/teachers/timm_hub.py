"""timm image classifiers: a directory as timm saves one for the Hugging Face hub (``timm.models.save_for_hf``):
``config.json`` naming the ``architecture`` with its ``pretrained_cfg`` (input size, interpolation, crop, mean, std),
``model.safetensors`` (pickled weights only with ``--allow-pickle``), class names in ``label_names`` when given.

The model is built by ``timm.create_model(architecture, pretrained=False)`` (nothing is downloaded) and the weights
are loaded strictly from the file. The preprocessing is timm's eval transform for that ``pretrained_cfg`` (``center``
crop: shortest edge to ``size / crop_pct``, centre crop; ``squash``: both edges, then crop), pinned as the manifest's
``image`` description; ``export`` runs timm's own transform beside it and fails when they differ. timm needs
torchvision, which imports beside the CPU torch wheel only through :func:`compress._optional.define_torchvision_schemas`
(``import compress`` installs the hook that calls it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from compress.artifact import ImagePreprocess
from compress.errors import ConfigError, ModelLoadError, first_line

__all__ = ["TimmProcessor", "is_timm_config", "timm_labels", "timm_preprocess", "load_timm_model"]


def is_timm_config(config: dict[str, Any]) -> bool:
    """Does a ``config.json`` describe a timm model (``architecture`` + ``pretrained_cfg``, no ``architectures``)?"""
    return isinstance(config.get("architecture"), str) and isinstance(config.get("pretrained_cfg"), dict)


def timm_labels(config: dict[str, Any], where: str) -> list[str]:
    names = config.get("label_names")
    n = config.get("num_classes") or config["pretrained_cfg"].get("num_classes")
    if isinstance(names, list) and names:
        if n and len(names) != int(n):
            raise ModelLoadError(f"{where}: {len(names)} label_names for {n} classes", hint="fix config.json")
        return [str(x) for x in names]
    if not n:
        raise ModelLoadError(f"{where}: no num_classes or label_names in config.json", hint="save the model with them")
    return [f"LABEL_{i}" for i in range(int(n))]


def _data_config(config: dict[str, Any]) -> dict[str, Any]:
    from compress._optional import require

    require("timm", "loading a timm model")
    from timm.data import resolve_data_config

    return resolve_data_config({}, pretrained_cfg=config["pretrained_cfg"])


def timm_preprocess(config: dict[str, Any], where: str) -> ImagePreprocess:
    """timm's eval transform for the model's ``pretrained_cfg``, as an ``image`` input description."""
    data = _data_config(config)
    c, h, w = data["input_size"]
    crop_pct = float(data.get("crop_pct") or 0.875)
    mode = data.get("crop_mode") or "center"
    interpolation = data.get("interpolation") or "bilinear"
    if interpolation not in ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"):
        raise ConfigError(f"{where}: timm interpolation {interpolation!r} is not reproduced",
                          hint="use bilinear or bicubic")
    if c not in (1, 3):
        raise ConfigError(f"{where}: {c} input channels", hint="timm models with 1 or 3 channels are supported")
    scale = (math.floor(h / crop_pct), math.floor(w / crop_pct))
    common = dict(kind="image", crop=[h, w], crop_offset="round", interpolation=interpolation,
                  mean=list(data["mean"])[:c], std=list(data["std"])[:c], channels="RGB" if c == 3 else "L")
    if mode == "squash":
        return ImagePreprocess.model_validate({**common, "resize": "exact", "size": list(scale)})
    if mode != "center" or scale[0] != scale[1]:
        raise ConfigError(f"{where}: timm crop_mode {mode!r} at {h}x{w} is not reproduced",
                          hint="edgecompress reproduces center (square inputs) and squash crops")
    return ImagePreprocess.model_validate({**common, "resize": "shortest_edge", "size": [scale[0]]})


def load_timm_model(path: Path, config: dict[str, Any], weights: list[str], *, pickled: bool):
    """``timm.create_model(architecture)`` with the directory's weights, strictly, in eval mode."""
    from compress._optional import require

    torch = require("torch", "loading a timm model")
    timm = require("timm", "loading a timm model")
    cfg = config["pretrained_cfg"]
    kwargs = {"num_classes": int(config.get("num_classes") or cfg.get("num_classes")),
              "in_chans": int(_data_config(config)["input_size"][0])}
    kwargs.update(config.get("model_args") or {})
    try:
        model = timm.create_model(config["architecture"], pretrained=False, **kwargs)
    except Exception as e:
        raise ModelLoadError(f"{path}: timm cannot build {config['architecture']!r} ({type(e).__name__}: "
                             f"{first_line(e, 160, default='')})",
                             hint=f"check the architecture name against timm {timm.__version__}") from e
    state: dict[str, Any] = {}
    for name in weights:
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file

            state.update(load_file(str(path / name)))
        elif pickled:
            state.update(torch.load(str(path / name), map_location="cpu", weights_only=False))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"{path}: the weights do not fit {config['architecture']} "
                             f"({first_line(e, 160, default='')})",
                             hint="the config.json and the weights must come from the same model") from e
    return model.eval()


def save_timm_model(model, config: dict[str, Any], labels: list[str], directory: Path, *,
                    regression: bool = False) -> None:
    """Write ``model`` in timm's hub format with timm's own writer (``save_for_hf``): ``config.json`` with the new
    classes and the base's model arguments, and safetensors weights. A regressor's ``config.json`` also says
    ``problem_type: regression`` (as a Hugging Face regressor's does): its outputs are numbers, not class scores."""
    from timm.models import save_for_hf

    args = {k: v for k, v in (config.get("model_args") or {}).items() if k != "num_classes"}  # the base's classes
    # the base's preprocessing, not the architecture's default (a model built from a config.json carries the default)
    model.pretrained_cfg = {**config["pretrained_cfg"], "architecture": config["architecture"],
                            "num_classes": len(labels)}
    extra = {"problem_type": "regression"} if regression else {}
    save_for_hf(model, str(directory), model_config={"label_names": list(labels), **extra}, model_args=args or None,
                safe_serialization=True)


class TimmProcessor:
    """timm's own eval transform behind the image-processor call ``export`` compares the pinned preprocessing with."""

    def __init__(self, config: dict[str, Any]) -> None:
        from timm.data import create_transform

        self.transform = create_transform(**_data_config(config), is_training=False)

    def __call__(self, images, return_tensors: str = "np") -> dict[str, Any]:
        import numpy as np

        return {"pixel_values": np.stack([self.transform(im).numpy() for im in images])}
