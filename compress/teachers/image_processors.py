"""A teacher's own image preprocessing, pinned as the manifest's ``image`` input description, and proof that ours
matches it.

:func:`preprocess_from_hf` reads a Hugging Face ``preprocessor_config.json`` (ViT, DeiT, BEiT, ConvNeXt, ResNet,
MobileNet, EfficientNet, ... image processors: resize by ``size`` / ``shortest_edge`` / ``crop_pct``, centre crop,
rescale, normalise) into :class:`~compress.artifact.ImagePreprocess`. A setting it cannot reproduce exactly is
refused by name rather than approximated. :func:`processor_agreement` runs the teacher's processor and
:class:`compress.device.feeds.ImageFeeds` on the same images and reports the largest difference; a mismatch is a
failed check, not a note.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from compress.artifact import ImagePreprocess
from compress.errors import ConfigError

#: Hugging Face's ``resample`` numbers (PIL's) by the names the manifest uses
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
#: settings that change pixels in ways ImageFeeds does not reproduce
_UNSUPPORTED = ("do_pad", "do_reduce_labels", "do_flip_channel_order", "do_color_quantize", "do_thumbnail",
                "do_align_long_axis")


def preprocess_from_hf(cfg: dict[str, Any], *, input_name: str = "pixel_values", source: str = "the checkpoint"
                       ) -> ImagePreprocess:
    """The ``image`` input description equivalent to a Hugging Face image processor's config."""
    for key in _UNSUPPORTED:
        if cfg.get(key):
            raise ConfigError(f"{source}: preprocessor_config.json sets {key}, which edgecompress cannot reproduce",
                              hint="describe the preprocessing yourself (an ImagePreprocess in the model's YAML)")
    if cfg.get("do_convert_rgb") is False:
        raise ConfigError(f"{source}: do_convert_rgb is false", hint="edgecompress feeds RGB images")
    resample = cfg.get("resample", 2)
    if resample not in _RESAMPLE:
        raise ConfigError(f"{source}: unknown resample {resample!r}", hint="use a PIL resampling filter (0-5)")
    size = cfg.get("size") or {"height": 224, "width": 224}
    if isinstance(size, int):
        size = {"shortest_edge": size}
    crop = None
    if not cfg.get("do_resize", True):
        raise ConfigError(f"{source}: do_resize is false (images of any size)", hint="models need one input size")
    if "height" in size and "width" in size:
        resize, dims = "exact", [int(size["height"]), int(size["width"])]
    elif "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        resize, dims = "shortest_edge", [edge]
        if cfg.get("crop_pct") is not None:  # ConvNeXt: below 384, resize to edge / crop_pct and crop to edge
            if edge < 384:
                dims, crop = [int(edge / float(cfg["crop_pct"]))], [edge, edge]
            else:
                resize, dims = "exact", [edge, edge]
    else:
        raise ConfigError(f"{source}: size {size} is neither height/width nor shortest_edge",
                          hint="describe the preprocessing yourself")
    if cfg.get("do_center_crop"):
        cs = cfg.get("crop_size") or {"height": 224, "width": 224}
        cs = {"height": cs, "width": cs} if isinstance(cs, int) else cs
        crop = [int(cs["height"]), int(cs["width"])]
    normalize = cfg.get("do_normalize", True)
    if resize == "shortest_edge" and crop is None:
        raise ConfigError(f"{source}: the image processor resizes the shortest edge without a centre crop, so images "
                          "of different shapes give inputs of different sizes",
                          hint="describe a fixed input size yourself (resize: exact, or a crop) in the model's YAML")
    return ImagePreprocess(
        input_name=input_name, resize=resize, size=dims, crop=crop, interpolation=_RESAMPLE[resample],
        rescale=float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0,
        mean=[float(v) for v in cfg.get("image_mean", [0.5, 0.5, 0.5])] if normalize else [0.0, 0.0, 0.0],
        std=[float(v) for v in cfg.get("image_std", [0.5, 0.5, 0.5])] if normalize else [1.0, 1.0, 1.0],
        channels="RGB", layout="NCHW", crop_offset="floor",
    )


def processor_agreement(processor, preprocess: ImagePreprocess, images: Sequence[Any]) -> dict[str, Any]:
    """Run the teacher's processor and ours on ``images``; the largest and mean absolute difference per pixel."""
    import numpy as np

    from compress.device.feeds import ImageFeeds

    feeds = ImageFeeds.from_spec(preprocess.model_dump())
    ours = feeds.encode(list(images))[preprocess.input_name]
    theirs = np.asarray(processor([feeds.image(im) for im in images], return_tensors="np")["pixel_values"],
                        dtype=np.float32)
    if theirs.shape != ours.shape:
        return {"n": len(images), "shape_ours": list(ours.shape), "shape_teacher": list(theirs.shape),
                "max_abs_diff": float("inf"), "mean_abs_diff": float("inf")}
    diff = np.abs(theirs - ours)
    return {"n": len(images), "shape": list(ours.shape), "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean())}
