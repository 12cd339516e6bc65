"""Image files: the one listing of an image folder or a COCO json's images, and image sizes from the PNG header.

Framework-free (OpenCV only to read the size of a non-PNG file).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2

from celldata.coco import kaggle_id

__all__ = ["IMAGE_EXTENSIONS", "ImageItem", "list_image_files", "list_images", "read_image_size"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class ImageItem:
    """One image to predict: its id (Kaggle id) and file path."""

    image_id: str
    path: str


# ----------------------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------------------
def list_image_files(directory: str | os.PathLike) -> list[Path]:
    """The image files of a folder (:data:`IMAGE_EXTENSIONS`, any case), sorted by name; [] if it does not exist."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def list_images(
    images_dir: str | os.PathLike | None = None,
    ann_file: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
) -> list[ImageItem]:
    """Images of a folder (id = file stem, sorted) or of a COCO json (id: :func:`celldata.coco.kaggle_id`).

    Args:
        images_dir: Folder with images (png, jpg, tif, bmp).
        ann_file: COCO json whose ``images[*].file_name`` are relative to ``data_root``.
        data_root: Root for the json's file names (default: the json's parent's parent, i.e. the data root of
            ``<root>/annotations/x.json``).

    Returns:
        The images, in a deterministic order.

    Raises:
        ValueError: If both or neither source is given, or the source holds no images / duplicate ids.
        FileNotFoundError: If the folder, json or a listed image does not exist.
    """
    if (images_dir is None) == (ann_file is None):
        raise ValueError("give exactly one of images_dir (--images) and ann_file (--ann-file)")
    items: list[ImageItem] = []
    if images_dir is not None:
        d = Path(images_dir)
        if not d.is_dir():
            raise FileNotFoundError(f"image folder not found: {d}")
        items = [ImageItem(p.stem, str(p)) for p in list_image_files(d)]
        if not items:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {d}")
    else:
        a = Path(ann_file)
        if not a.is_file():
            raise FileNotFoundError(f"annotation file not found: {a}")
        with open(a) as f:
            try:
                coco = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{a}: not valid JSON ({e})") from None
        root = Path(data_root) if data_root is not None else a.resolve().parent.parent
        images = coco.get("images") if isinstance(coco, dict) else None
        if not images:
            raise ValueError(f"{a}: no 'images' entries")
        for k, img in enumerate(images):
            if "file_name" not in img:
                raise ValueError(f"{a}: images[{k}] has no file_name")
            path = root / img["file_name"]
            if not path.is_file():
                raise FileNotFoundError(f"{a}: images[{k}] file not found: {path}")
            items.append(ImageItem(kaggle_id(img), str(path)))
    ids = [it.image_id for it in items]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate image ids: {', '.join(dup[:5])}")
    return items


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` of an image file, from the PNG header when possible (no decoding).

    Raises:
        ValueError: the file is not a readable image.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return int(height), int(width)
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    return int(img.shape[0]), int(img.shape[1])
