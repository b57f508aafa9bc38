"""Labelled images for calibration, distillation and validation: a folder of classes, a table of paths, or arrays.

Formats, chosen by what the path is:

* a directory of ``class_name/*.png|jpg|jpeg|bmp|gif|webp|tif|tiff`` (the class is the folder's name);
* a ``.csv`` / ``.tsv`` / ``.jsonl`` table with a path column (``path``, ``image``, ``file`` or ``filename``;
  relative paths are read against the table's folder) and an optional label column (``label``, ``labels``,
  ``class``, ``target``): names or integer ids, or, for a regressor (``targets``), numbers;
* boxes for object detection: a COCO-style ``.json`` or a ``.csv`` of ``image,x1,y1,x2,y2,label``
  (:mod:`compress.data.boxes`);
* an ``.npz`` of an ``images`` array (``N×H×W`` or ``N×H×W×C``, uint8 or float in 0-255) and an optional
  ``labels`` array (integer ids; for a regressor, a number or a row of numbers per image). Object arrays are pickles
  and are refused.

Every problem raises :class:`~compress.errors.DataError` naming the file (and row) and the fix: no images, a
missing or unreadable image, a label the model does not know. Images are checked when the data set is loaded
(Pillow reads each header), so a bad file fails before any model work. Pillow is needed for image files.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.data.image_files import IMAGE_SUFFIXES, LABEL_COLUMNS, PATH_COLUMNS, _bomb, _check_image
from compress.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "ImageDataset", "load_image_dataset"]


@dataclass
class ImageDataset:
    """Images (paths, or arrays for ``.npz``) with integer labels (a regressor's: target values), in file order."""

    items: list[Any]
    labels: list[Any] | None
    source: str
    label_names: list[str] | None = None

    #: images have no second segment; the field keeps the data sets' shared face (``inputs, pairs, labels``)
    pairs = None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def inputs(self) -> list[Any]:
        """What a model's feed builder takes: image paths, or arrays."""
        return self.items

    def batches(self, size: int):
        """``(items, None, labels)`` batches of ``size`` (labels None when unlabelled), as text data sets give."""
        for i in range(0, len(self.items), size):
            yield self.items[i:i + size], None, (self.labels[i:i + size] if self.labels is not None else None)

    def head(self, n: int) -> ImageDataset:
        """The first ``n`` rows."""
        return ImageDataset(self.items[:n], self.labels[:n] if self.labels is not None else None, self.source,
                            self.label_names)

    def sample(self, n: int, seed: int = 0) -> ImageDataset:
        """A seeded subset of ``n`` rows (all of them when there are fewer), in file order."""
        if n >= len(self.items):
            return self
        keep = sorted(random.Random(seed).sample(range(len(self.items)), n))
        return ImageDataset([self.items[i] for i in keep],
                            [self.labels[i] for i in keep] if self.labels is not None else None,
                            self.source, self.label_names)


def load_image_dataset(path: Path | str, *, label2id: dict[str, int] | None = None, require_labels: bool = False,
                       limit: int | None = None, targets: bool = False) -> ImageDataset:
    """Read an image data set (see the module doc). ``label2id`` maps class names to the model's ids; without it,
    a folder's classes are numbered in sorted order. ``require_labels``: refuse unlabelled data. ``targets`` (a
    regressor's data): a table's label column is read as numbers (:func:`compress.data.tables.map_targets`), not as
    class names; a folder of classes, which has no numbers, is refused."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or directory", hint="check the path")
    if p.is_dir() and targets:
        raise DataError(f"{p}: a folder of classes carries class names, not the numbers a regressor is scored on",
                        hint="give the targets as a path,label table of numbers or an .npz with a labels array")
    if p.is_dir():
        ds = _folder(p, label2id)
    elif p.suffix.lower() in (".csv", ".tsv", ".jsonl"):
        ds = _table(p, label2id, targets)
    elif p.suffix.lower() == ".json":  # COCO-style boxes (object detection)
        from compress.data.boxes import load_boxes

        ds = ImageDataset(*load_boxes(p, label2id), str(p), _names(label2id))
    elif p.suffix.lower() == ".npz":
        ds = _arrays(p, label2id)
    else:
        raise DataError(f"{p}: not an image data set",
                        hint="pass a folder of class_name/ images, a .csv/.tsv/.jsonl of path,label, an .npz, or boxes: "
                        "a COCO .json or a .csv of image,x1,y1,x2,y2,label")
    if targets and ds.labels and isinstance(ds.labels[0], str):  # an .npz of strings (CTC's labels)
        raise DataError(f"{p}: 'labels' holds strings, not the numbers a regressor is scored on",
                        hint="np.savez(f, images=..., labels=float_targets)")
    if require_labels and ds.labels is None:
        raise DataError(f"{p}: the images have no labels",
                        hint="accuracy needs labels: class folders, a label column, or a labels array")
    ds = ds.head(limit) if limit is not None else ds
    for item in ds.items:  # the images that will be used, decoded once: a file can pass verify() and not decode
        if isinstance(item, (str, Path)):
            _decode(Path(item), str(p))
    return ds


# --- readers -------------------------------------------------------------------------------------------------


def _folder(root: Path, label2id: dict[str, int] | None) -> ImageDataset:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders", hint="lay the images out as DIR/class_name/image.png")
    ids = _label_ids(classes, label2id, str(root))
    items, labels = [], []
    for name in classes:
        files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        for f in files:
            _check_image(f, str(root))
            items.append(f)
            labels.append(ids[name])
    if not items:
        raise DataError(f"{root}: no images in its class folders ({', '.join(classes[:5])})",
                        hint=f"image files end in {', '.join(IMAGE_SUFFIXES)}")
    return ImageDataset(items, labels, str(root), _names(label2id) or classes)


def _table(file: Path, label2id: dict[str, int] | None, targets: bool = False) -> ImageDataset:
    from compress.data.readers import open_table
    from compress.data.tables import _map_labels, map_targets

    columns, read_rows = open_table(file, None, str(file))  # the readers text data goes through, same errors
    from compress.data.boxes import is_box_table, load_boxes

    if is_box_table(columns):  # image,x1,y1,x2,y2,label: boxes (object detection)
        return ImageDataset(*load_boxes(file, label2id), str(file), _names(label2id))
    path_col = next((c for c in PATH_COLUMNS if c in columns), None)
    if path_col is None:
        raise DataError(f"{file}: no path column (columns: {', '.join(columns) or '(none)'})",
                        hint=f"name the column with the image paths one of: {', '.join(PATH_COLUMNS)}")
    label_col = next((c for c in LABEL_COLUMNS if c in columns), None)
    items, raw, where = [], [], []
    for row_no, line_no, rec in read_rows([c for c in (path_col, label_col) if c]):
        value = str(rec.get(path_col) or "").strip()
        if not value:
            raise DataError(f"{file}: row {row_no}: empty {path_col}", hint="give every row an image path")
        img = Path(value) if Path(value).is_absolute() else file.parent / value
        _check_image(img, f"{file}: row {row_no}")
        items.append(img)
        raw.append(rec.get(label_col) if label_col else None)
        where.append((row_no, line_no))
    if not items:
        raise DataError(f"{file}: no rows", hint="one row per image: path[,label]")
    labels = None
    if label_col is not None and targets:
        labels = map_targets(raw, where, str(file), label_col, drop_if_unlabelled=False)
    elif label_col is not None:
        names = label2id
        if names is None:  # no model labels: names are numbered in sorted order, as class folders are
            found = sorted({v for v in map(_name_or_none, raw) if isinstance(v, str)})
            names = {n: i for i, n in enumerate(found)} or None
        labels = _map_labels(raw, where, str(file), label_col, names, None, drop_if_unlabelled=False)
    return ImageDataset(items, labels, str(file), _names(label2id))


def _arrays(file: Path, label2id: dict[str, int] | None) -> ImageDataset:

    from compress.data.arrays import read_npz

    data = read_npz(file, "np.savez(f, images=uint8_array, labels=int_array)")
    if "images" not in data:
        raise DataError(f"{file}: no 'images' array (arrays: {', '.join(data) or '(none)'})",
                        hint="np.savez(f, images=..., labels=...)")
    images = data["images"]
    if images.ndim not in (3, 4) or images.dtype.kind not in "uif":
        raise DataError(f"{file}: 'images' is {images.dtype} {images.shape}; expected N×H×W or N×H×W×C numbers",
                        hint="one image per first index, pixel values 0-255")
    from compress.data.arrays import label_array

    labels = label_array(file, data["labels"], len(images), label2id) if "labels" in data else None
    return ImageDataset(list(images), labels, str(file), _names(label2id))


# --- helpers -------------------------------------------------------------------------------------------------


def _decode(path: Path, where: str) -> None:
    """Decode ``path`` fully: compressed data can be broken behind valid chunks and checksums, which ``verify()``
    does not read."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # over the limit, under twice it
            with Image.open(path) as img:
                img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _bomb(path, where, e) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{where}: {path} cannot be decoded ({type(e).__name__}: {str(e).splitlines()[0][:80]})",
                        hint="re-save it as PNG or JPEG, or remove it") from None


def _label_ids(names: list[str], label2id: dict[str, int] | None, where: str) -> dict[str, int]:
    if label2id is None:
        return {n: i for i, n in enumerate(names)}
    unknown = [n for n in names if n not in label2id]
    if unknown:
        raise DataError(f"{where}: class(es) {', '.join(unknown[:5])} are not among the model's labels "
                        f"({', '.join(list(label2id)[:20])})", hint="rename the folders or labels to the model's")
    return {n: label2id[n] for n in names}


def _name_or_none(value: Any) -> int | str | None:
    """A label cell as data.py parses it; a bad cell is left for its one-line error in ``_map_labels``."""
    from compress.data.tables import _label_id

    try:
        return _label_id(value)
    except ValueError:
        return None


def _names(label2id: dict[str, int] | None) -> list[str] | None:
    if label2id is None:
        return None
    return [n for n, _ in sorted(label2id.items(), key=lambda kv: kv[1])]
