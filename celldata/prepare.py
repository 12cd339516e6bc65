"""Kaggle-layout Sartorius data -> COCO instance json per fold, semantic label PNGs and split lists.

Input (``data_root``, the competition layout)::

    train.csv                 id,annotation,width,height,cell_type,plate_time,sample_date,sample_id,elapsed_timedelta
    train/<id>.png            one 8-bit grayscale image per id
    train_semi_supervised/    optional, unlabeled images (listed in annotations/semi_supervised.json)
    test/                     optional, test images (listed in annotations/test.json)

Output (all under ``data_root``)::

    annotations/train_all.json        every labeled image
    annotations/fold{k}_train.json    images outside fold k
    annotations/fold{k}_val.json      images of fold k
    annotations/test.json             test images, no annotations (when test/ exists)
    annotations/semi_supervised.json  semi-supervised images, no annotations (when train_semi_supervised/ exists)
    semantic/train/<id>.png           uint8: 0 background, 1 shsy5y, 2 astro, 3 cort
    semantic/train_boundary/<id>.png  same, plus 4 where two instances touch or overlap
    splits/fold{k}_train.txt          image ids, one per line (for mmseg datasets)
    splits/fold{k}_val.txt

COCO conventions: images have an int ``id`` (1-based, in sorted Kaggle-id order, identical in every file),
``file_name`` relative to ``data_root`` (``train/<id>.png``), ``kaggle_id`` and ``image_id`` (the Kaggle id string),
``height``, ``width``, ``cell_type``, ``sample_id`` (plus ``plate_time``, ``sample_date``, ``elapsed_timedelta``
when present). Annotations have a compressed COCO RLE ``segmentation`` (``counts`` a str), ``area`` = the mask's pixel
count, ``bbox`` = the tight box of the mask ``[x0, y0, x1 - x0, y1 - y0]`` (x1/y1 exclusive), ``category_id`` 1..3,
``iscrowd`` 0. Overlapping ground-truth instances are kept as they are.

Folds are grouped by ``sample_id`` (all images of a sample in one fold) and stratified by cell type: the samples of
each cell type are dealt, largest first, to the fold holding the fewest images of that type.

Semantic boundary class: a pixel is boundary (4) when the 3x3 dilations of at least two instances cover it, i.e.
the contact line of touching cells (both sides, plus a one-pixel gap between them) and every overlap.

Validation happens before anything is written; a bad ``train.csv`` or image raises one ``ValueError`` naming the
file, the 1-based data row of ``train.csv`` and the field. Every image (train, test, semi-supervised) is decoded
first: a truncated or corrupt PNG whose header is intact is an error naming the file. Outputs are built in a
staging directory inside ``data_root`` and moved into place file by file (``os.replace``), so an error leaves no
new file behind.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from celldata import CLASSES
from celldata.fileio import atomic_write_json, encode_png, move_staged_files, replace_dir
from celldata.images import list_image_files, read_image_size
from celldata.instances import InstanceMasks
from celldata.kaggle_csv import check_images, read_train_csv
from celldata.rle import coco_rle_encode_crop

__all__ = [
    "check_image_decodes",
    "make_folds",
    "coco_categories",
    "instances_to_coco_annotations",
    "semantic_maps",
    "prepare_sartorius",
]

BOUNDARY_LABEL: int = len(CLASSES) + 1
"""Label of boundary pixels in ``semantic/train_boundary`` (4)."""


def make_folds(
    image_ids: Sequence[str],
    cell_types: Sequence[str],
    groups: Sequence[str],
    n_folds: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """Grouped, stratified folds.

    All images of a group (``sample_id``) go to the same fold. The groups of each cell type (a group's type is its
    most common image type) are shuffled with ``seed``, sorted by size (largest first, stable) and each is dealt to
    the fold that holds the fewest images of that type so far (ties: fewest images overall, then lowest index).

    Args:
        image_ids: N image ids.
        cell_types: N cell types.
        groups: N group keys.
        n_folds: Number of folds (>= 2).
        seed: Shuffle seed.

    Returns:
        int64[N] fold index of every image.

    Raises:
        ValueError: fewer than ``n_folds`` groups, or ``n_folds`` < 2.
    """
    if n_folds < 2:
        raise ValueError(f"folds must be >= 2, got {n_folds}")
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    if len(members) < n_folds:
        raise ValueError(
            f"only {len(members)} distinct sample_id value(s) for {n_folds} folds grouped by sample_id; "
            "use fewer folds or more samples"
        )
    rng = np.random.default_rng(seed)
    by_type: dict[str, list[str]] = defaultdict(list)
    for g in sorted(members):
        ctype = Counter(cell_types[i] for i in members[g]).most_common(1)[0][0]
        by_type[ctype].append(g)
    fold_of = np.full(len(image_ids), -1, dtype=np.int64)
    total = np.zeros(n_folds, dtype=np.int64)
    for ctype in sorted(by_type, key=lambda c: (CLASSES.index(c) if c in CLASSES else len(CLASSES), c)):
        gs = [by_type[ctype][j] for j in rng.permutation(len(by_type[ctype]))]
        gs.sort(key=lambda g: -len(members[g]))
        per_type = np.zeros(n_folds, dtype=np.int64)
        for g in gs:
            k = min(range(n_folds), key=lambda f: (per_type[f], total[f], f))
            n = len(members[g])
            per_type[k] += n
            total[k] += n
            fold_of[members[g]] = k
    return fold_of


def coco_categories() -> list[dict]:
    """COCO categories: ``{"id": i + 1, "name": CLASSES[i], "supercategory": "cell"}``."""
    return [{"id": i + 1, "name": c, "supercategory": "cell"} for i, c in enumerate(CLASSES)]


def instances_to_coco_annotations(
    instances: InstanceMasks, image_int_id: int, category_ids: Sequence[int], first_ann_id: int
) -> list[dict]:
    """COCO annotations (compressed RLE, mask area, tight xywh box) of one image's instances.

    Args:
        instances: The N instance masks of the image.
        image_int_id: COCO image id.
        category_ids: N category ids (1-based).
        first_ann_id: Id of the first annotation; the others follow consecutively.

    Returns:
        N annotation dicts (empty masks are skipped; ids stay consecutive over the ones kept).
    """
    inst = instances.tighten()
    out = []
    for (x0, y0, x1, y1), crop, cat in zip(inst.boxes.tolist(), inst.crops, category_ids):
        area = int(crop.sum())
        if area == 0:
            continue
        rle = coco_rle_encode_crop(crop, (x0, y0, x1, y1), inst.height, inst.width)
        out.append(
            {
                "id": first_ann_id + len(out),
                "image_id": image_int_id,
                "category_id": int(cat),
                "segmentation": rle,
                "area": area,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "iscrowd": 0,
            }
        )
    return out


def semantic_maps(instances: InstanceMasks, label: int) -> tuple[np.ndarray, np.ndarray]:
    """Semantic label images of one image.

    Args:
        instances: The instance masks of an (H, W) image.
        label: Class label painted under every instance (1..3).

    Returns:
        ``(semantic, boundary)``: uint8[H, W] each. ``semantic`` is 0 background / ``label`` foreground;
        ``boundary`` equals it except :data:`BOUNDARY_LABEL` (4) where the 3x3 dilations of two or more instances
        meet (touching or overlapping cells).
    """
    h, w = instances.height, instances.width
    sem = np.zeros((h, w), dtype=np.uint8)
    cover = np.zeros((h, w), dtype=np.uint16)
    kernel = np.ones((3, 3), np.uint8)
    for (x0, y0, x1, y1), crop in zip(instances.boxes.tolist(), instances.crops):
        if crop.size == 0:
            continue
        sem[y0:y1, x0:x1][crop] = label
        px0, py0, px1, py1 = max(x0 - 1, 0), max(y0 - 1, 0), min(x1 + 1, w), min(y1 + 1, h)
        m = np.zeros((py1 - py0, px1 - px0), np.uint8)
        m[y0 - py0 : y1 - py0, x0 - px0 : x1 - px0] = crop
        cover[py0:py1, px0:px1] += cv2.dilate(m, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    boundary = sem.copy()
    boundary[cover >= 2] = BOUNDARY_LABEL
    return sem, boundary


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


def _png_problem(data: bytes) -> str | None:
    """What keeps PNG bytes from decoding completely (``None`` when they decode): every chunk present with a
    valid CRC, and the image data a complete zlib stream of exactly the size the header states."""
    pos, header, idat = len(_PNG_SIGNATURE), None, []
    while True:
        if pos + 8 > len(data):
            return "truncated file (ends before the IEND chunk)"
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data):
            return f"truncated file (chunk {ctype.decode('latin-1')!r} is cut off)"
        body = data[pos + 8 : pos + 8 + length]
        if zlib.crc32(ctype + body) != struct.unpack(">I", data[end - 4 : end])[0]:
            return f"corrupt chunk {ctype.decode('latin-1')!r} (CRC mismatch)"
        if ctype == b"IHDR":
            header = struct.unpack(">IIBBBBB", body[:13])
        elif ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"IEND":
            break
        pos = end
    if header is None or not idat:
        return "no IHDR or IDAT chunk"
    width, height, depth, colour, _, _, interlace = header
    d = zlib.decompressobj()
    try:
        raw = d.decompress(b"".join(idat))
    except zlib.error as e:
        return f"corrupt image data ({e})"
    if not d.eof:
        return "truncated image data"
    row = (width * _PNG_CHANNELS.get(colour, 1) * depth + 7) // 8
    if interlace == 0 and len(raw) != height * (1 + row):
        return f"image data holds {len(raw)} bytes, the {width}x{height} header needs {height * (1 + row)}"
    return None


def check_image_decodes(path: str | os.PathLike) -> None:
    """Check that an image file decodes completely (not only that its header is readable).

    PNGs are checked chunk by chunk (CRCs, a complete image-data stream of the stated size); other formats are
    decoded with OpenCV.

    Args:
        path: The image file.

    Raises:
        ValueError: Naming the file and what is wrong (truncated, corrupt, unreadable).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the image ({e.strerror})") from None
    if data.startswith(_PNG_SIGNATURE):
        problem = _png_problem(data)
    else:
        problem = (
            None
            if cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is not None
            else ("cannot decode the image")
        )
    if problem is not None:
        raise ValueError(f"{path}: {problem}")


def _unlabeled_coco(data_root: Path, directory: Path, first_id: int) -> dict:
    """COCO json (images only) for the images in ``directory``."""
    images = []
    for k, p in enumerate(list_image_files(directory)):
        try:
            h, w = read_image_size(p)
        except ValueError as e:
            raise ValueError(f"{p}: {e}") from None
        images.append(
            {
                "id": first_id + k,
                "file_name": p.relative_to(data_root).as_posix(),
                "kaggle_id": p.stem,
                "image_id": p.stem,
                "height": h,
                "width": w,
            }
        )
    return {"images": images, "annotations": [], "categories": coco_categories()}


def _commit(staging: Path, data_root: Path) -> list[str]:
    """Move every staged file to the same relative path under ``data_root``; whole ``semantic/*`` directories
    replace the old ones (no stale masks of images that left the csv)."""
    written = []
    for sub in ("semantic/train", "semantic/train_boundary"):
        replace_dir(staging / sub, data_root / sub)
        written.append(sub + "/")
    return written + move_staged_files(staging, data_root)


def _stage_train_images(
    images: Sequence, fold_of: np.ndarray, staging: Path, show_progress: bool
) -> tuple[list[dict], list[dict], dict[str, list[int]]]:
    """COCO records and annotations of the labeled images; their semantic PNGs are written to ``staging``.

    Returns:
        ``(coco images, coco annotations, per cell type the instance count of each image)``.
    """
    coco_images, coco_anns = [], []
    per_image_counts: dict[str, list[int]] = {c: [] for c in CLASSES}
    for k, im in enumerate(tqdm(images, desc="prepare", unit="img", disable=not show_progress)):
        int_id = k + 1
        label = CLASSES.index(im.cell_type) + 1
        instances = im.to_instances()
        anns = instances_to_coco_annotations(instances, int_id, [label] * len(instances), len(coco_anns) + 1)
        coco_anns.extend(anns)
        per_image_counts[im.cell_type].append(len(anns))
        record = {
            "id": int_id,
            "file_name": f"train/{im.image_id}.png",
            "kaggle_id": im.image_id,
            "image_id": im.image_id,
            "height": im.height,
            "width": im.width,
            "cell_type": im.cell_type,
            "sample_id": im.sample_id,
            "fold": int(fold_of[k]),
        }
        record.update(im.meta)
        coco_images.append(record)
        sem, boundary = semantic_maps(instances, label)
        (staging / "semantic/train" / f"{im.image_id}.png").write_bytes(encode_png(sem))
        (staging / "semantic/train_boundary" / f"{im.image_id}.png").write_bytes(encode_png(boundary))
    return coco_images, coco_anns, per_image_counts


def _stage_folds(
    images: Sequence,
    fold_of: np.ndarray,
    folds: int,
    coco_images: list[dict],
    coco_anns: list[dict],
    staging: Path,
) -> list[dict]:
    """Writes ``train_all.json``, every fold's train/val json and split lists to ``staging``; returns the
    per-fold summary."""
    cats = coco_categories()
    anns_by_image: dict[int, list[dict]] = defaultdict(list)
    for a in coco_anns:
        anns_by_image[a["image_id"]].append(a)

    def subset(sel: np.ndarray) -> dict:
        imgs = [coco_images[i] for i in np.flatnonzero(sel)]
        return {
            "images": imgs,
            "annotations": [a for im in imgs for a in anns_by_image[im["id"]]],
            "categories": cats,
        }

    atomic_write_json(staging / "annotations/train_all.json", subset(np.ones(len(images), bool)))
    fold_summary = []
    for f in range(folds):
        val = fold_of == f
        atomic_write_json(staging / f"annotations/fold{f}_train.json", subset(~val))
        atomic_write_json(staging / f"annotations/fold{f}_val.json", subset(val))
        ids_train = [images[i].image_id for i in np.flatnonzero(~val)]
        ids_val = [images[i].image_id for i in np.flatnonzero(val)]
        (staging / f"splits/fold{f}_train.txt").write_text("".join(i + "\n" for i in ids_train))
        (staging / f"splits/fold{f}_val.txt").write_text("".join(i + "\n" for i in ids_val))
        fold_summary.append(
            {
                "fold": f,
                "train_images": int((~val).sum()),
                "val_images": int(val.sum()),
                "val_per_class": {
                    c: sum(1 for i in np.flatnonzero(val) if images[i].cell_type == c) for c in CLASSES
                },
                "val_samples": len({images[i].sample_id for i in np.flatnonzero(val)}),
            }
        )
    return fold_summary


def _stage_unlabeled(data_root: Path, staging: Path, next_id: int) -> tuple[int, int]:
    """``test.json`` and ``semi_supervised.json`` (when their folders exist); returns their image counts."""
    n_test = n_semi = 0
    if (data_root / "test").is_dir():
        test = _unlabeled_coco(data_root, data_root / "test", next_id)
        atomic_write_json(staging / "annotations/test.json", test)
        n_test = len(test["images"])
        next_id += n_test
    if (data_root / "train_semi_supervised").is_dir():
        semi = _unlabeled_coco(data_root, data_root / "train_semi_supervised", next_id)
        atomic_write_json(staging / "annotations/semi_supervised.json", semi)
        n_semi = len(semi["images"])
    return n_test, n_semi


def prepare_sartorius(
    data_root: str | os.PathLike, folds: int = 5, seed: int = 0, show_progress: bool = True
) -> dict:
    """Convert a Kaggle-layout dataset into COCO folds, semantic label PNGs and split lists.

    See the module docstring for the input and output layout.

    Args:
        data_root: Dataset directory holding ``train.csv`` and ``train/``.
        folds: Number of folds (>= 2).
        seed: Seed of the fold assignment.
        show_progress: Show tqdm progress bars.

    Returns:
        Summary dict: ``n_images``, ``n_instances``, ``per_class`` ({cell type: {images, instances,
        mean_per_image, max_per_image}}), ``folds`` (per fold: ``train_images``, ``val_images``, ``val_per_class``,
        ``val_samples``), ``n_test``, ``n_semi_supervised``, ``written`` (paths relative to ``data_root``).

    Raises:
        ValueError: bad ``train.csv`` or image (file, row and field named), or too few samples for the folds.
            Nothing is written then.
    """
    data_root = Path(data_root)
    csv_path = data_root / "train.csv"
    images = read_train_csv(csv_path, show_progress=show_progress)
    check_images(images, data_root / "train", csv_path)
    for path in [data_root / "train" / f"{im.image_id}.png" for im in images] + [
        p
        for sub in ("test", "train_semi_supervised")
        if (data_root / sub).is_dir()
        for p in list_image_files(data_root / sub)
    ]:
        check_image_decodes(path)
    fold_of = make_folds(
        [im.image_id for im in images],
        [im.cell_type for im in images],
        [im.sample_id for im in images],
        n_folds=folds,
        seed=seed,
    )

    staging = Path(tempfile.mkdtemp(prefix=".prepare-staging-", dir=data_root))
    try:
        for sub in ("annotations", "semantic/train", "semantic/train_boundary", "splits"):
            (staging / sub).mkdir(parents=True)
        coco_images, coco_anns, per_image_counts = _stage_train_images(
            images, fold_of, staging, show_progress
        )
        fold_summary = _stage_folds(images, fold_of, folds, coco_images, coco_anns, staging)
        n_test, n_semi = _stage_unlabeled(data_root, staging, len(images) + 1)
        written = _commit(staging, data_root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    return {
        "data_root": str(data_root),
        "n_images": len(images),
        "n_instances": len(coco_anns),
        "per_class": {
            c: {
                "images": len(v),
                "instances": int(sum(v)),
                "mean_per_image": round(float(np.mean(v)), 2) if v else 0.0,
                "max_per_image": int(max(v)) if v else 0,
            }
            for c, v in per_image_counts.items()
        },
        "folds": fold_summary,
        "n_test": n_test,
        "n_semi_supervised": n_semi,
        "written": written,
    }
