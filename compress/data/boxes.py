"""Images with boxes, for object detection: a COCO-style JSON file or a per-box CSV.

* **COCO JSON** (``.json``): ``images`` (``id``, ``file_name``, ``width``, ``height``), ``annotations``
  (``image_id``, ``bbox`` as ``[x, y, width, height]`` in pixels, ``category_id``) and ``categories`` (``id``,
  ``name``). ``file_name`` is read against the JSON's folder, then its ``images/`` folder. Crowd annotations
  (``iscrowd: 1``) are left out, as COCO's own evaluation ignores them for matching.
* **CSV** (``.csv``/``.tsv``) with the columns ``image,x1,y1,x2,y2,label``: one row per box, corners in pixels; an
  image without boxes is a row whose box cells are empty. Paths are read against the CSV's folder.

Each image's label is ``{"boxes": float32 [k, 4] xyxy pixels of the image, "classes": int64 [k], "size": (w, h)}``.
A category the model does not have, a box outside its image or with no area, a row that is not numbers: one-line
:class:`~compress.errors.DataError` naming the file and the annotation (row) and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from compress.data.utf8 import read_utf8
from compress.errors import DataError

BOX_COLUMNS = ("x1", "y1", "x2", "y2")
#: how far (pixels) a box may reach past its image's edge before it is refused (annotation tools round outwards)
EDGE_TOLERANCE = 1.0

__all__ = ["BOX_COLUMNS", "is_box_table", "load_boxes"]


def is_box_table(columns: list[str]) -> bool:
    """Whether a table's columns are the per-box CSV's."""
    return all(c in columns for c in BOX_COLUMNS)


def load_boxes(path: Path, label2id: dict[str, int] | None) -> tuple[list[Path], list[dict[str, Any]]]:
    """The images (paths) and each one's boxes and classes (what :mod:`compress.data.images` makes a data set of)."""
    items, labels = (_coco if path.suffix.lower() == ".json" else _csv)(path, label2id)
    if not items:
        raise DataError(f"{path}: no images", hint="list at least one image")
    return items, labels


def _image_size(img: Path, where: str) -> tuple[int, int]:
    from compress.data.image_files import _check_image

    return _check_image(img, where)  # checked and measured in one read of its header


def _class_id(name: Any, label2id: dict[str, int] | None, where: str) -> int:
    if label2id is None:  # the images alone are wanted (calibration): classes are not read
        return -1
    if isinstance(name, str) and name in label2id:
        return label2id[name]
    raise DataError(f"{where}: class {name!r} is not among the model's labels ({', '.join(list(label2id)[:20])})",
                    hint="rename the category to one of the model's labels")


def _check_box(box: np.ndarray, size: tuple[int, int], where: str) -> None:
    w, h = size
    x1, y1, x2, y2 = (float(v) for v in box)
    if not np.isfinite(box).all() or x2 <= x1 or y2 <= y1:
        raise DataError(f"{where}: box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] has no area",
                        hint="write boxes as x1 < x2, y1 < y2 (COCO: [x, y, width, height] with width, height > 0)")
    t = EDGE_TOLERANCE
    if x1 < -t or y1 < -t or x2 > w + t or y2 > h + t:
        raise DataError(f"{where}: box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] lies outside the {w}x{h} image",
                        hint="boxes are pixels of the original image (not of the model's input, not fractions)")


def _one(boxes: list, classes: list, size: tuple[int, int]) -> dict[str, Any]:
    arr = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    w, h = size
    arr = np.clip(arr, 0, [w, h, w, h]).astype(np.float32)  # within the tolerance: onto the edge
    return {"boxes": arr, "classes": np.asarray(classes, dtype=np.int64), "size": (int(w), int(h))}


def _coco(path: Path, label2id: dict[str, int] | None):
    text = read_utf8(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not a readable JSON file ({e})", hint="write COCO-style JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DataError(f"{path}: no 'images' list", hint="a COCO-style file has images, annotations and categories")
    cats = {c.get("id"): c.get("name") for c in doc.get("categories", []) if isinstance(c, dict)}
    items, labels, index = [], [], {}
    for i, im in enumerate(doc["images"]):
        where = f"{path}: images[{i}]"
        if not isinstance(im, dict) or "file_name" not in im or "id" not in im:
            raise DataError(f"{where}: needs id and file_name", hint="give every image an id and a file_name")
        img = Path(im["file_name"])
        if not img.is_absolute():
            img = path.parent / img if (path.parent / img).is_file() else path.parent / "images" / img
        size = _image_size(img, where)
        if (im.get("width"), im.get("height")) not in ((None, None), size):
            raise DataError(f"{where}: says {im.get('width')}x{im.get('height')} but {img} is {size[0]}x{size[1]}",
                            hint="correct width and height, or remove them")
        index[im["id"]] = len(items)
        items.append(img)
        labels.append(([], [], size))
    for j, a in enumerate(doc.get("annotations", [])):
        where = f"{path}: annotations[{j}]"
        if not isinstance(a, dict) or a.get("image_id") not in index:
            raise DataError(f"{where}: image_id {a.get('image_id') if isinstance(a, dict) else a!r} is not an image "
                            "of the file", hint="every annotation names an image id from images")
        if a.get("iscrowd"):
            continue
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise DataError(f"{where}: bbox {bbox!r} is not [x, y, width, height]", hint="four numbers, in pixels")
        if a.get("category_id") not in cats:
            raise DataError(f"{where}: category_id {a.get('category_id')!r} is not in categories",
                            hint="list every category with its id and name")
        boxes, classes, size = labels[index[a["image_id"]]]
        box = np.asarray([bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]], dtype=np.float64)
        _check_box(box, size, where)
        boxes.append(box)
        classes.append(_class_id(cats[a["category_id"]], label2id, where))
    return items, [_one(b, c, s) for b, c, s in labels]


def _csv(path: Path, label2id: dict[str, int] | None):
    from compress.data.image_files import LABEL_COLUMNS, PATH_COLUMNS
    from compress.data.readers import open_table

    columns, read_rows = open_table(path, None, str(path))
    path_col = next((c for c in PATH_COLUMNS if c in columns), None)
    label_col = next((c for c in LABEL_COLUMNS if c in columns), None)
    if path_col is None or label_col is None:
        raise DataError(f"{path}: a box table needs an image and a label column (columns: {', '.join(columns)})",
                        hint="columns image,x1,y1,x2,y2,label")
    order: dict[Path, int] = {}
    labels: list[tuple[list, list, tuple[int, int]]] = []
    for row_no, _, rec in read_rows([path_col, *BOX_COLUMNS, label_col]):
        where = f"{path}: row {row_no}"
        value = str(rec.get(path_col) or "").strip()
        if not value:
            raise DataError(f"{where}: empty {path_col}", hint="give every row an image path")
        img = Path(value) if Path(value).is_absolute() else path.parent / value
        if img not in order:
            order[img] = len(labels)
            labels.append(([], [], _image_size(img, where)))
        cells = [str(rec.get(c) if rec.get(c) is not None else "").strip() for c in BOX_COLUMNS]
        if not any(cells):  # an image without boxes
            continue
        try:
            box = np.asarray([float(c) for c in cells], dtype=np.float64)
        except ValueError:
            raise DataError(f"{where}: x1,y1,x2,y2 {cells} are not numbers", hint="pixel corners of the box") from None
        boxes, classes, size = labels[order[img]]
        _check_box(box, size, where)
        boxes.append(box)
        classes.append(_class_id(str(rec.get(label_col) or "").strip(), label2id, where))
    return list(order), [_one(b, c, s) for b, c, s in labels]
