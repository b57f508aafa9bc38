"""Image files as data sets name and check them: the suffixes read, the table columns that hold paths and labels, and
the check that a file is a readable image (Pillow reads its header; a decompression bomb is refused). Shared by
:mod:`compress.data.images` and :mod:`compress.data.boxes`."""

from __future__ import annotations

from pathlib import Path

from compress.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
PATH_COLUMNS = ("path", "image", "file", "filename")
LABEL_COLUMNS = ("label", "labels", "class", "target")

__all__ = ["IMAGE_SUFFIXES", "LABEL_COLUMNS", "PATH_COLUMNS"]


def _check_image(path: Path, where: str) -> tuple[int, int]:
    """``path``'s (width, height), read with its header; a missing or unreadable file, or a bomb, is refused."""
    if not path.is_file():
        raise DataError(f"{where}: image {path} does not exist", hint="check the path (relative paths are read "
                        "against the table's folder)")
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        from compress.errors import MissingBackendError

        raise MissingBackendError("reading images needs Pillow", hint='pip install "edgecompress[images]"') from None
    try:
        with Image.open(path) as img:
            size = img.size
            img.verify()
    except Image.DecompressionBombError as e:
        raise _bomb(path, where, e) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{where}: {path} is not a readable image ({type(e).__name__})",
                        hint="re-save it as PNG or JPEG, or remove it") from None
    return size


def _bomb(path: Path, where: str, e: Exception) -> DataError:
    return DataError(f"{where}: {path} is larger than Pillow allows ({e})".rstrip(". "),
                     hint="resize it, or remove it: a decompression bomb is refused, not decoded")
