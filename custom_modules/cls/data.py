"""Classification datasets built from the prepared Sartorius COCO files (``tools/prepare_sartorius.py``).

* :class:`SartoriusInstanceCropDataset`: one sample per annotated cell, an object-centred square crop with a
  configurable margin of surroundings, optionally masked to the object, resized to ``crop_size``; label = cell type
  (category). The three input modes of the liposome report: *with surroundings* (``margin=50``), *cropped*
  (``margin=0``), *cropped and masked* (``margin=0, masked=True``).
* :class:`SartoriusImageTileDataset`: image-level samples (label = the image's ``cell_type``): every tile of a
  grid, the centre tile (the SEM paper's one sub-image per image) or the whole image resized.

Both keep the decoded samples in memory (uint8), expose ``get_labels()`` / ``get_groups()`` (``sample_id``) for
the imbalance samplers and the grouped cross-validation, and are registered in ``mmengine.registry.DATASETS``.
Each sample dict has ``img`` (``(S, S)`` uint8), ``gt_label`` (int), ``image_id`` (Kaggle id), ``sample_id`` and,
for instance crops, ``mask`` (``(S, S)`` uint8 0/1 of the object), ``ann_id`` and ``area``.
"""

from __future__ import annotations

import functools
import json
import os
import os.path as osp
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from mmengine.dataset import BaseDataset
from mmengine.registry import DATASETS
from pycocotools import mask as mask_utils

from celldata import CLASSES
from celldata.coco import kaggle_id

__all__ = [
    "read_gray",
    "load_coco",
    "object_centred_crop",
    "image_tiles",
    "iter_instances",
    "SartoriusInstanceCropDataset",
    "SartoriusImageTileDataset",
]


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Read an 8-bit grayscale image.

    Raises:
        ValueError: unreadable file.
    """
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ValueError(f"{path}: cannot read image")
    return img


def load_coco(ann_file: str | os.PathLike, classes: Sequence[str] = CLASSES) -> dict:
    """Load a prepared COCO json and check what the classifiers need.

    Returns:
        The json dict plus ``cat_to_label`` ({category id: class index}).

    Raises:
        ValueError: missing keys, unknown category or cell type (file and field named).
    """
    try:
        with open(ann_file) as f:
            coco = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{ann_file}: cannot read COCO json ({e})") from e
    for key in ("images", "categories"):
        if key not in coco:
            raise ValueError(f"{ann_file}: missing top-level key {key!r}")
    cat_to_label = {}
    for c in coco["categories"]:
        if c.get("name") not in classes:
            raise ValueError(
                f"{ann_file}: category {c.get('name')!r} (id {c.get('id')}) not in classes {classes}"
            )
        cat_to_label[int(c["id"])] = list(classes).index(c["name"])
    for im in coco["images"]:
        for key in ("id", "file_name"):
            if key not in im:
                raise ValueError(f"{ann_file}: image {im.get('id')!r} lacks field {key!r}")
    coco["cat_to_label"] = cat_to_label
    return coco


def object_centred_crop(
    image: np.ndarray,
    mask: np.ndarray,
    bbox: Sequence[float],
    crop_size: int,
    margin: int = 0,
    margin_ratio: float = 0.0,
    masked: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Square crop centred on the object's box, zero-padded outside the image, resized to ``crop_size``.

    The side is ``max(w, h) * (1 + 2 * margin_ratio) + 2 * margin`` (at least 1), so the object keeps its aspect
    ratio and its box centre maps to the crop centre.

    Args:
        image: ``(H, W)`` uint8 image.
        mask: ``(H, W)`` bool/uint8 mask of the object.
        bbox: COCO box ``[x, y, w, h]``.
        crop_size: Output side.
        margin: Surroundings in pixels on every side.
        margin_ratio: Surroundings as a fraction of the object's longer side, on every side.
        masked: Zero every pixel outside the object.

    Returns:
        ``(crop_size, crop_size)`` uint8 crop and ``(crop_size, crop_size)`` uint8 0/1 mask.
    """
    x, y, w, h = (float(v) for v in bbox)
    cx, cy = x + w / 2.0, y + h / 2.0
    side = max(1, int(round(max(w, h) * (1.0 + 2.0 * margin_ratio) + 2 * margin)))
    x0 = int(round(cx - side / 2.0))
    y0 = int(round(cy - side / 2.0))
    H, W = image.shape[:2]
    canvas = np.zeros((side, side), np.uint8)
    mcanvas = np.zeros((side, side), np.uint8)
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + side, W), min(y0 + side, H)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
        mcanvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = mask[sy0:sy1, sx0:sx1] > 0
    if masked:
        canvas = canvas * mcanvas
    interp = cv2.INTER_AREA if side > crop_size else cv2.INTER_LINEAR
    crop = cv2.resize(canvas, (crop_size, crop_size), interpolation=interp)
    mcrop = cv2.resize(mcanvas, (crop_size, crop_size), interpolation=cv2.INTER_NEAREST)
    if masked:  # exactly zero outside the resized mask (resampling blurs the native-resolution cut)
        crop = crop * mcrop
    return crop, mcrop


def image_tiles(image: np.ndarray, tile_size: int, mode: str = "grid", stride: int | None = None) -> list:
    """Image-level inputs of one image.

    Args:
        image: ``(H, W)`` uint8 image.
        tile_size: Tile side (the input side of the classifier).
        mode: ``'grid'`` (tiles every ``stride`` pixels; the last row/column is shifted to the border so the
            whole image is covered), ``'center'`` (one centre tile) or ``'whole'`` (the image resized to
            ``tile_size x tile_size``).
        stride: Grid step (default ``tile_size``: no overlap).

    Returns:
        List of ``((y, x), (tile_size, tile_size) uint8)``; ``(y, x)`` is the tile's top-left corner
        (``(0, 0)`` for ``'whole'``).

    Raises:
        ValueError: unknown mode, or an image smaller than a tile.
    """
    H, W = image.shape[:2]
    if mode == "whole":
        return [((0, 0), cv2.resize(image, (tile_size, tile_size), interpolation=cv2.INTER_AREA))]
    if H < tile_size or W < tile_size:
        raise ValueError(f"image {H}x{W} is smaller than the tile size {tile_size}")
    if mode == "center":
        y, x = (H - tile_size) // 2, (W - tile_size) // 2
        return [((y, x), image[y : y + tile_size, x : x + tile_size].copy())]
    if mode != "grid":
        raise ValueError(f"tile mode must be 'grid', 'center' or 'whole', got {mode!r}")
    step = int(stride or tile_size)

    def starts(n: int) -> list[int]:
        s = list(range(0, n - tile_size + 1, step))
        if s[-1] != n - tile_size:
            s.append(n - tile_size)
        return s

    return [
        ((y, x), image[y : y + tile_size, x : x + tile_size].copy()) for y in starts(H) for x in starts(W)
    ]


def iter_instances(ann_file: str, data_root: str, classes: Sequence[str] = CLASSES):
    """Yield every annotated instance of a prepared COCO file with its decoded image.

    Yields:
        ``(image_record, image (H, W) uint8, annotation, mask (H, W) uint8, label)`` per annotation, images in
        file order.
    """
    coco = load_coco(ann_file, classes)
    by_image: dict[int, list[dict]] = {}
    for a in coco.get("annotations", []):
        by_image.setdefault(int(a["image_id"]), []).append(a)
    for im in coco["images"]:
        anns = by_image.get(int(im["id"]), [])
        if not anns:
            continue
        image = read_gray(osp.join(data_root, im["file_name"]))
        for a in anns:
            if int(a["category_id"]) not in coco["cat_to_label"]:
                raise ValueError(
                    f"{ann_file}: annotation {a.get('id')} has unknown category_id {a['category_id']}"
                )
            seg = a["segmentation"]
            if isinstance(seg, dict):
                rle = dict(seg)
                if isinstance(rle["counts"], list):
                    rle = mask_utils.frPyObjects(rle, *rle["size"])
                m = mask_utils.decode(rle)
            else:
                rles = mask_utils.frPyObjects(seg, image.shape[0], image.shape[1])
                m = mask_utils.decode(mask_utils.merge(rles))
            yield im, image, a, m, coco["cat_to_label"][int(a["category_id"])]


def image_meta(im: dict) -> tuple[str, str]:
    """``(Kaggle id, sample_id)`` of a COCO image (:func:`celldata.coco.kaggle_id`; the sample id defaults to it)."""
    image_id = kaggle_id(im)
    return image_id, str(im.get("sample_id", image_id))


@functools.lru_cache(maxsize=8)
def _instance_crops(
    ann_file: str,
    mtime: float,
    data_root: str,
    classes: tuple,
    crop_size: int,
    margin: int,
    margin_ratio: float,
    masked: bool,
    min_area: int,
) -> tuple[dict, ...]:
    out = []
    for im, image, a, m, label in iter_instances(ann_file, data_root, classes):
        area = int(m.sum())
        if area < min_area:
            continue
        crop, mcrop = object_centred_crop(image, m, a["bbox"], crop_size, margin, margin_ratio, masked)
        image_id, sample_id = image_meta(im)
        out.append(
            dict(
                img=crop,
                mask=mcrop,
                gt_label=label,
                image_id=image_id,
                sample_id=sample_id,
                ann_id=int(a.get("id", len(out))),
                area=area,
            )
        )
    return tuple(out)


@functools.lru_cache(maxsize=8)
def _image_tiles(
    ann_file: str, mtime: float, data_root: str, classes: tuple, tile_size: int, mode: str, stride: int | None
) -> tuple[dict, ...]:
    coco = load_coco(ann_file, classes)
    out = []
    for im in coco["images"]:
        if im.get("cell_type") not in classes:
            raise ValueError(
                f"{ann_file}: image {im['id']} has cell_type {im.get('cell_type')!r}, not in {classes}"
            )
        label = list(classes).index(im["cell_type"])
        image = read_gray(osp.join(data_root, im["file_name"]))
        image_id, sample_id = image_meta(im)
        for (y, x), tile in image_tiles(image, tile_size, mode, stride):
            out.append(dict(img=tile, gt_label=label, image_id=image_id, sample_id=sample_id, tile_yx=(y, x)))
    return tuple(out)


class _ClsDatasetMixin:
    """Labels and groups of a classification dataset (after ``indices`` subsetting)."""

    def get_labels(self) -> np.ndarray:
        """int64 ``(len(self),)`` class index of every sample."""
        return np.array([self.get_data_info(i)["gt_label"] for i in range(len(self))], dtype=np.int64)

    def get_groups(self) -> np.ndarray:
        """``(len(self),)`` ``sample_id`` of every sample (the cross-validation groups)."""
        return np.array([self.get_data_info(i)["sample_id"] for i in range(len(self))], dtype=object)

    def get_image_ids(self) -> np.ndarray:
        """``(len(self),)`` Kaggle id of every sample's image (the folds are made over the images)."""
        return np.array([self.get_data_info(i)["image_id"] for i in range(len(self))], dtype=object)

    def get_cat_ids(self, idx: int) -> list[int]:
        """mmengine's class-aware wrappers: the sample's class as a one-element list."""
        return [int(self.get_data_info(idx)["gt_label"])]

    def _select(self, recs: Sequence[dict]) -> list[dict]:
        """Copies of the cached records, restricted to ``self.sample_ids``."""
        keep = self.sample_ids
        return [dict(r) for r in recs if keep is None or r["sample_id"] in keep]

    def _source(self) -> tuple[str, float, str]:
        if not osp.isfile(self.ann_file):
            raise FileNotFoundError(f"annotation file not found: {self.ann_file}")
        return self.ann_file, os.path.getmtime(self.ann_file), self.data_root or ""


@DATASETS.register_module()
class SartoriusInstanceCropDataset(_ClsDatasetMixin, BaseDataset):
    """Object-centred instance crops, label = cell type (see the module docstring).

    Args:
        ann_file: Prepared COCO json (relative to ``data_root`` or absolute).
        data_root: Dataset root (``file_name`` of the images is relative to it).
        crop_size: Output side (28 for LipNet, 32 for LipNet-6).
        margin: Surroundings in pixels on every side of the object's box.
        margin_ratio: Surroundings as a fraction of the box's longer side.
        masked: Zero every pixel outside the object.
        min_area: Skip instances with fewer mask pixels.
        classes: Class names (the COCO categories are mapped by name).
        sample_ids: Keep only samples of these ``sample_id`` values (a cross-validation fold); ``None`` = all.
        **kwargs: :class:`mmengine.dataset.BaseDataset` arguments (``pipeline``, ``indices``, ``test_mode``...).
    """

    METAINFO = dict(classes=CLASSES)

    def __init__(
        self,
        ann_file: str,
        data_root: str = "",
        crop_size: int = 28,
        margin: int = 0,
        margin_ratio: float = 0.0,
        masked: bool = False,
        min_area: int = 1,
        classes: Sequence[str] = CLASSES,
        sample_ids: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.sample_ids = None if sample_ids is None else frozenset(str(s) for s in sample_ids)
        self.crop_size = int(crop_size)
        self.margin = int(margin)
        self.margin_ratio = float(margin_ratio)
        self.masked = bool(masked)
        self.min_area = int(min_area)
        self.classes = tuple(classes)
        kwargs.setdefault(
            "serialize_data", False
        )  # small in-memory arrays; pickling them costs more than it saves
        super().__init__(
            ann_file=ann_file, data_root=data_root, metainfo=dict(classes=self.classes), **kwargs
        )

    def load_data_list(self) -> list[dict]:
        """Decode every instance once (cached per file, modification time and crop settings)."""
        recs = _instance_crops(
            *self._source(),
            self.classes,
            self.crop_size,
            self.margin,
            self.margin_ratio,
            self.masked,
            self.min_area,
        )
        return self._select(recs)


@DATASETS.register_module()
class SartoriusImageTileDataset(_ClsDatasetMixin, BaseDataset):
    """Image-level samples (tiles or the whole image), label = the image's ``cell_type``.

    Args:
        ann_file: Prepared COCO json (relative to ``data_root`` or absolute).
        data_root: Dataset root.
        tile_size: Tile side = classifier input side (128 for the SEM CNN).
        mode: ``'grid'``, ``'center'`` or ``'whole'`` (see :func:`image_tiles`).
        stride: Grid step (default ``tile_size``).
        classes: Class names.
        sample_ids: Keep only samples of these ``sample_id`` values; ``None`` = all.
        **kwargs: :class:`mmengine.dataset.BaseDataset` arguments.
    """

    METAINFO = dict(classes=CLASSES)

    def __init__(
        self,
        ann_file: str,
        data_root: str = "",
        tile_size: int = 128,
        mode: str = "grid",
        stride: int | None = None,
        classes: Sequence[str] = CLASSES,
        sample_ids: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.sample_ids = None if sample_ids is None else frozenset(str(s) for s in sample_ids)
        if mode not in ("grid", "center", "whole"):
            raise ValueError(f"mode must be 'grid', 'center' or 'whole', got {mode!r}")
        self.tile_size = int(tile_size)
        self.mode = mode
        self.stride = None if stride is None else int(stride)
        self.classes = tuple(classes)
        kwargs.setdefault(
            "serialize_data", False
        )  # small in-memory arrays; pickling them costs more than it saves
        super().__init__(
            ann_file=ann_file, data_root=data_root, metainfo=dict(classes=self.classes), **kwargs
        )

    def load_data_list(self) -> list[dict]:
        """Read every image once (cached per file, modification time and tile settings)."""
        recs = _image_tiles(*self._source(), self.classes, self.tile_size, self.mode, self.stride)
        return self._select(recs)
