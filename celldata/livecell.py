"""LIVECell COCO annotations -> the project's COCO layout (compressed RLE, mask area, tight box), for pretraining.

LIVECell (704x520 phase-contrast images of eight cell lines) ships COCO json with polygon segmentations. Two
variants exist: one category per cell line (``a172``, ``bt474``, ``bv2``, ``huh7``, ``mcf7``, ``shsy5y``, ``skbr3``,
``skov3``), or a single ``cell`` category, in which case the cell line is read from the image file name prefix
(``SHSY5Y_Phase_A10_1_00d04h00m_1.tif`` -> ``shsy5y``). ``annotations`` may be a list or a dict keyed by id (the
official files use the dict form). Names are normalised (lower case, ``-``/``_``/spaces removed: ``SH-SY5Y`` ->
``shsy5y``).

Category targets (``categories="sartorius"``, default): the three Sartorius classes (1 shsy5y, 2 astro, 3 cort) so a
pretrained head needs no change for fine-tuning. LIVECell's SH-SY5Y is the same cell line as Sartorius' shsy5y;
the other lines are mapped by rough morphology (:data:`DEFAULT_CLASS_MAP`: large, spread, irregular cells -> astro;
compact, rounded cells -> cort). Override any line with ``class_map`` (target ``shsy5y``/``astro``/``cort`` or
``skip`` to drop it). With ``categories="cell"`` every cell becomes the single category ``1 cell``.

Output (``out_dir``)::

    images/<stem>.png                8-bit grayscale copy of every image referenced
    annotations/<ann file stem>.json COCO: images (file_name ``images/<stem>.png``, ``id`` int, ``kaggle_id``/
                                     ``image_id`` = stem, ``height``, ``width``, ``cell_type`` = target name,
                                     ``livecell_cell_type``), annotations (compressed RLE, ``area`` = mask pixels,
                                     tight xywh ``bbox``, ``iscrowd`` 0), categories

Everything is validated and staged before anything lands in ``out_dir`` (atomic replace per file).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from celldata import CLASSES
from celldata.fileio import atomic_write_json, encode_png, move_staged_files
from celldata.instances import InstanceMasks
from celldata.prepare import coco_categories, instances_to_coco_annotations
from celldata.rle import coco_rle_decode

__all__ = ["DEFAULT_CLASS_MAP", "normalize_name", "parse_class_map", "convert_livecell"]

DEFAULT_CLASS_MAP: dict[str, str] = {
    "shsy5y": "shsy5y",  # same cell line
    "a172": "astro",  # glioblastoma: large, spread, irregular
    "huh7": "astro",  # hepatoma: large, flat
    "skov3": "astro",  # ovarian: large, spread
    "bt474": "cort",  # breast: compact, rounded clusters
    "bv2": "cort",  # microglia: small, round
    "mcf7": "cort",  # breast: compact, rounded
    "skbr3": "cort",  # breast: small, rounded
}
"""Default LIVECell cell line -> Sartorius class (for ``categories="sartorius"``)."""

_TARGETS = (*CLASSES, "skip")


def normalize_name(name: str) -> str:
    """``'SH-SY5Y'`` -> ``'shsy5y'``: lower case without ``-``, ``_``, spaces and dots."""
    return re.sub(r"[-_ .]", "", str(name).lower())


def parse_class_map(text: str | None) -> dict[str, str]:
    """Parse ``'a172=cort,bv2=skip'`` into ``{'a172': 'cort', 'bv2': 'skip'}`` (names normalised).

    Raises:
        ValueError: malformed item or a target outside ``shsy5y``/``astro``/``cort``/``skip``.
    """
    out: dict[str, str] = {}
    if not text:
        return out
    for item in text.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError(f"--class-map item {item!r} is not NAME=TARGET")
        name, target = (s.strip() for s in item.split("=", 1))
        target = normalize_name(target)
        if target not in _TARGETS:
            raise ValueError(f"--class-map item {item!r}: target must be one of {_TARGETS}")
        out[normalize_name(name)] = target
    return out


def _cell_line(img: dict, cat_name: str) -> str:
    """LIVECell cell line of an annotation: its category name, or the image file name prefix for ``cell``."""
    name = normalize_name(cat_name)
    if name not in ("cell", "cells", ""):
        return name
    return normalize_name(Path(str(img["file_name"])).name.split("_")[0])


def _find_image(
    images_dir: Path, file_name: str, index: dict[str, Path] | None
) -> tuple[Path | None, dict[str, Path] | None]:
    """Locate ``file_name`` under ``images_dir`` (as given, or by base name anywhere below it).

    Returns:
        ``(path or None, index)``; the base-name index of ``images_dir`` is built on first need and passed back.
    """
    direct = images_dir / file_name
    if direct.is_file():
        return direct, index
    if index is None:
        index = {p.name: p for p in images_dir.rglob("*") if p.is_file()}
    return index.get(Path(file_name).name), index


def _read_gray8(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2GRAY)
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ValueError(f"{path}: unsupported pixel type {img.dtype}")
    return img


def _decode_segmentation(seg: object, h: int, w: int) -> np.ndarray | None:
    """bool ``(h, w)`` mask of a COCO polygon list or RLE; None for a polygon list without a valid polygon.

    Raises:
        ValueError, TypeError, KeyError, IndexError: undecodable segmentation.
    """
    if isinstance(seg, list):
        polys = [p for p in seg if len(p) >= 6]
        if not polys:
            return None
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w))).astype(bool)
    if isinstance(seg, dict):
        return coco_rle_decode(seg)
    raise ValueError(f"unsupported segmentation type {type(seg).__name__}")


@dataclass
class _Converter:
    """State of one :func:`convert_livecell` run: settings, the staging folder and the running summary."""

    images_dir: Path
    staging: Path
    categories: str
    cmap: dict[str, str]
    out_cats: list[dict]
    show_progress: bool
    summary: dict = field(
        default_factory=lambda: {"files": {}, "per_category": Counter(), "skipped": Counter()}
    )
    written_images: set[str] = field(default_factory=set)
    index: dict[str, Path] | None = None

    def target(self, ann_path: Path, a: dict, img: dict, line: str) -> str:
        """The output class of an annotation of cell line ``line`` (``'cell'``, a class name or ``'skip'``)."""
        if self.categories == "cell":
            return "cell"
        if line in self.cmap:
            return self.cmap[line]
        raise ValueError(
            f"{ann_path}: annotation {a.get('id')} of image {img['file_name']}: unknown cell line "
            f"{line!r}; map it with --class-map {line}=TARGET (known: {', '.join(sorted(self.cmap))})"
        )

    def instances(
        self, ann_path: Path, img: dict, anns: Sequence[dict], cat_name: Mapping[object, str]
    ) -> tuple[InstanceMasks, list[int], set[str]]:
        """The kept instances of one image, their category ids and the image's cell lines."""
        h, w = int(img["height"]), int(img["width"])
        crops, boxes, labels, lines = [], [], [], set()
        for a in anns:
            if a.get("category_id") not in cat_name:
                raise ValueError(
                    f"{ann_path}: annotation {a.get('id')}: category_id {a.get('category_id')} not in categories"
                )
            line = _cell_line(img, cat_name[a["category_id"]])
            lines.add(line)
            target = self.target(ann_path, a, img, line)
            if target == "skip":
                self.summary["skipped"]["class_map_skip"] += 1
                continue
            try:
                m = _decode_segmentation(a.get("segmentation"), h, w)
            except (ValueError, TypeError, KeyError, IndexError) as e:
                raise ValueError(f"{ann_path}: annotation {a.get('id')}: bad segmentation ({e})") from None
            if m is None:
                self.summary["skipped"]["degenerate_polygon"] += 1
                continue
            if m.shape != (h, w):
                raise ValueError(
                    f"{ann_path}: annotation {a.get('id')}: mask size {m.shape} != image size ({h}, {w})"
                )
            ys, xs = np.nonzero(m)
            if ys.size == 0:
                self.summary["skipped"]["empty_mask"] += 1
                continue
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            boxes.append((x0, y0, x1, y1))
            crops.append(m[y0:y1, x0:x1])
            labels.append(1 if target == "cell" else CLASSES.index(target) + 1)
        return InstanceMasks(h, w, np.asarray(boxes, np.int32).reshape(-1, 4), crops), labels, lines

    def convert_file(self, ann_path: Path) -> None:
        """One LIVECell json -> ``annotations/<stem>.json`` (and its images) in the staging folder."""
        try:
            data = json.loads(ann_path.read_text())
            src_images, src_anns, src_cats = data["images"], data["annotations"], data["categories"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{ann_path}: not a readable COCO json ({e})") from e
        if isinstance(src_anns, dict):
            src_anns = list(src_anns.values())
        cat_name = {c["id"]: str(c["name"]) for c in src_cats}
        by_image: dict[object, list[dict]] = {}
        for a in src_anns:
            by_image.setdefault(a["image_id"], []).append(a)
        out_images, out_anns = [], []
        for img in tqdm(
            sorted(src_images, key=lambda r: str(r["file_name"])),
            desc=ann_path.name,
            unit="img",
            disable=not self.show_progress,
        ):
            record, anns = self.convert_image(
                ann_path, img, by_image.get(img["id"], []), cat_name, len(out_images) + 1, len(out_anns) + 1
            )
            out_images.append(record)
            out_anns.extend(anns)
        name = f"{ann_path.stem}.json"
        atomic_write_json(
            self.staging / "annotations" / name,
            {"images": out_images, "annotations": out_anns, "categories": self.out_cats},
        )
        self.summary["files"][f"annotations/{name}"] = {"images": len(out_images), "instances": len(out_anns)}

    def convert_image(
        self,
        ann_path: Path,
        img: dict,
        src_anns: Sequence[dict],
        cat_name: Mapping[object, str],
        int_id: int,
        first_ann_id: int,
    ) -> tuple[dict, list[dict]]:
        """One image: its record (id ``int_id``) and COCO annotations (ids from ``first_ann_id``); the image
        file is staged once."""
        h, w = int(img["height"]), int(img["width"])
        stem = Path(str(img["file_name"])).stem
        path, self.index = _find_image(self.images_dir, str(img["file_name"]), self.index)
        if path is None:
            raise ValueError(
                f"{ann_path}: image {img['id']}: file {img['file_name']} not found under {self.images_dir}"
            )
        instances, labels, lines = self.instances(ann_path, img, src_anns, cat_name)
        image = _read_gray8(path)
        if image.shape != (h, w):
            raise ValueError(
                f"{ann_path}: image {img['id']}: file {path} is {image.shape[1]}x{image.shape[0]} but the "
                f"json says width={w}, height={h}"
            )
        if stem not in self.written_images:
            (self.staging / "images" / f"{stem}.png").write_bytes(encode_png(image))
            self.written_images.add(stem)
        anns = instances_to_coco_annotations(instances, int_id, labels, first_ann_id)
        for a in anns:
            self.summary["per_category"][self.out_cats[a["category_id"] - 1]["name"]] += 1
        line = sorted(lines)[0] if lines else _cell_line(img, "cell")
        record = {
            "id": int_id,
            "file_name": f"images/{stem}.png",
            "kaggle_id": stem,
            "image_id": stem,
            "height": h,
            "width": w,
            "cell_type": "cell" if self.categories == "cell" else self.cmap.get(line, "skip"),
            "livecell_cell_type": line,
        }
        return record, anns


def convert_livecell(
    ann_paths: Sequence[str | os.PathLike],
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    categories: str = "sartorius",
    class_map: Mapping[str, str] | None = None,
    show_progress: bool = True,
) -> dict:
    """Convert LIVECell COCO json files into the project's COCO layout.

    Args:
        ann_paths: LIVECell annotation json files (e.g. train, val, test); each gives ``annotations/<stem>.json``.
        images_dir: Directory holding the images (``file_name`` is looked up as given, then by base name anywhere
            below it).
        out_dir: Output directory.
        categories: ``"sartorius"`` (1 shsy5y, 2 astro, 3 cort via :data:`DEFAULT_CLASS_MAP` and ``class_map``) or
            ``"cell"`` (one category ``1 cell``).
        class_map: Overrides of the cell line -> target map (targets ``shsy5y``/``astro``/``cort``/``skip``).
        show_progress: Show tqdm progress bars.

    Returns:
        Summary: per output file the number of images and instances, instances per target category, skipped
        instances (by reason) and the written paths (relative to ``out_dir``).

    Raises:
        ValueError: unreadable json, unknown cell line, missing image, image size mismatch, undecodable
            segmentation; the message names the json file and the image or annotation id. Nothing is written then.
    """
    if categories not in ("sartorius", "cell"):
        raise ValueError(f"categories must be 'sartorius' or 'cell', got {categories!r}")
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise ValueError(f"{images_dir}: images directory not found")
    cmap = dict(DEFAULT_CLASS_MAP)
    cmap.update({normalize_name(k): v for k, v in (class_map or {}).items()})
    for k, v in cmap.items():
        if v not in _TARGETS:
            raise ValueError(f"class map {k}={v}: target must be one of {_TARGETS}")
    out_cats = (
        coco_categories()
        if categories == "sartorius"
        else [{"id": 1, "name": "cell", "supercategory": "cell"}]
    )

    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".livecell-staging-", dir=out_dir))
    ok = False
    conv = _Converter(images_dir, staging, categories, cmap, out_cats, show_progress)
    try:
        (staging / "images").mkdir()
        (staging / "annotations").mkdir()
        for ann_path in map(Path, ann_paths):
            conv.convert_file(ann_path)
        written = move_staged_files(staging, out_dir)
        ok = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not ok and created and not any(out_dir.iterdir()):
            out_dir.rmdir()
    summary = conv.summary
    summary["per_category"] = dict(summary["per_category"])
    summary["skipped"] = dict(summary["skipped"])
    summary["written"] = written
    return summary
