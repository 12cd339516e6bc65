"""Kaggle-format CSV I/O: the submission file (``id,predicted``) and the ground truth (``train.csv`` / COCO json).

Submission format (what the Sartorius competition accepts)::

    id,predicted
    <image id>,<Kaggle RLE of one instance>     one row per predicted instance
    <image id>,                                  an image without any instance: one row, empty ``predicted``

Kaggle RLE is row-major and 1-based (see :mod:`celldata.rle`). Masks of one image must not overlap.

Row numbers in error messages are 1-based *data* rows (the first row after the header is row 1), with the file
line number next to them; every error is a single ``ValueError`` naming the file, the row and the image id.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from celldata import IMAGE_HEIGHT, IMAGE_WIDTH
from celldata.coco import kaggle_id
from celldata.fileio import atomic_write_text
from celldata.instances import InstanceMasks
from celldata.rle import coco_rle_to_crop, kaggle_rle_runs, runs_to_crop

__all__ = [
    "SUBMISSION_HEADER",
    "write_submission",
    "read_submission",
    "read_kaggle_truth",
    "read_coco_truth",
    "load_truth",
    "read_sample_ids",
    "find_overlap",
]

SUBMISSION_HEADER: tuple[str, str] = ("id", "predicted")
"""The exact header of a submission file."""

TRUTH_COLUMNS: tuple[str, ...] = ("id", "annotation", "width", "height")
"""Columns a ground-truth ``train.csv``-format file must have (``cell_type`` is optional)."""


def find_overlap(masks: InstanceMasks) -> tuple[int, int] | None:
    """First pair of instances of one image that share a pixel.

    Args:
        masks: N instance masks of one image.

    Returns:
        ``(i, j)`` with ``i < j`` (index order), or None when no two masks overlap.
    """
    owner = np.full((masks.height, masks.width), -1, dtype=np.int32)
    for j, (crop, (x0, y0, x1, y1)) in enumerate(zip(masks.crops, masks.boxes)):
        if crop.size == 0:
            continue
        window = owner[y0:y1, x0:x1]
        taken = window[crop]
        if (taken >= 0).any():
            return int(taken[taken >= 0].min()), j
        window[crop] = j
    return None


def _check_id(image_id: str) -> None:
    if not isinstance(image_id, str) or not image_id.strip():
        raise ValueError(f"image id must be a non-empty string, got {image_id!r}")
    if any(c in image_id for c in ',"\n\r'):
        raise ValueError(f"image id {image_id!r} contains a comma, quote or newline")


def write_submission(
    path: str | os.PathLike,
    image_ids: Sequence[str],
    instances_per_image: Mapping[str, InstanceMasks],
    check_overlaps: bool = True,
) -> int:
    """Write a Kaggle submission CSV atomically (nothing is written when validation fails).

    Args:
        path: Output CSV path (parent directories are created).
        image_ids: Every image id to list, in output order; ids without instances (or absent from
            ``instances_per_image``) get one row with an empty ``predicted``.
        instances_per_image: Image id -> predicted instance masks. Empty masks are skipped.
        check_overlaps: Refuse masks of one image that overlap (Kaggle rejects them).

    Returns:
        The number of instance rows written.

    Raises:
        ValueError: On duplicate or malformed ids, instances for an id not in ``image_ids``, or overlapping masks
            (naming the image and the instance indices).
    """
    ids = list(image_ids)
    dup = [k for k, c in Counter(ids).items() if c > 1]
    if dup:
        raise ValueError(f"duplicate image id(s) in image_ids: {', '.join(map(str, dup[:5]))}")
    for image_id in ids:
        _check_id(image_id)
    extra = sorted(set(instances_per_image) - set(ids))
    if extra:
        raise ValueError(f"instances given for image id(s) not in image_ids: {', '.join(extra[:5])}")
    lines = [",".join(SUBMISSION_HEADER)]
    n_rows = 0
    for image_id in ids:
        masks = instances_per_image.get(image_id)
        rles = []
        if masks is not None and len(masks):
            if check_overlaps:
                pair = find_overlap(masks)
                if pair is not None:
                    raise ValueError(
                        f"image {image_id}: instances {pair[0]} and {pair[1]} overlap "
                        "(remove overlaps before writing a submission)"
                    )
            rles = [r for r in masks.to_kaggle_rles() if r]
        if not rles:
            lines.append(f"{image_id},")
        for r in rles:
            lines.append(f"{image_id},{r}")
        n_rows += len(rles)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return n_rows


def _where(path: Path, row: int, image_id: str | None = None) -> str:
    where = f"{path}: row {row} (line {row + 1})"
    return f"{where}, id {image_id!r}" if image_id is not None else where


def read_submission(
    path: str | os.PathLike,
    height: int = IMAGE_HEIGHT,
    width: int = IMAGE_WIDTH,
    expected_ids: Iterable[str] | None = None,
    heights_widths: Mapping[str, tuple[int, int]] | None = None,
) -> dict[str, InstanceMasks]:
    """Read and validate a submission CSV like Kaggle does.

    Args:
        path: The CSV file.
        height: Image height used to decode the RLEs.
        width: Image width.
        expected_ids: When given, an id outside this set is an error.
        heights_widths: Optional per-image ``(height, width)`` overriding ``height``/``width``.

    Returns:
        Image id -> predicted instance masks, for every id that appears in the file (file order); an id whose
        only row has an empty ``predicted`` maps to zero instances. Ids of ``expected_ids`` missing from the
        file are not added (the metric scores them as "no prediction").

    Raises:
        ValueError: Header not exactly ``id,predicted``, a repeated header row, a row with the wrong number of
            fields, an empty or unknown id, an invalid RLE, or two overlapping masks in one image. The message
            names the file, the row and the id.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: submission file not found")
    expected = set(expected_ids) if expected_ids is not None else None
    runs: dict[str, list[tuple[int, tuple[int, int, int, int], np.ndarray]]] = defaultdict(list)
    sizes: dict[str, tuple[int, int]] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file (expected the header 'id,predicted')")
        if tuple(h.strip() for h in header) != SUBMISSION_HEADER:
            raise ValueError(f"{path}: header is {','.join(header)!r}, expected exactly 'id,predicted'")
        for row_no, rec in enumerate(reader, start=1):
            if not rec:
                continue  # blank line
            if tuple(h.strip() for h in rec) == SUBMISSION_HEADER:
                raise ValueError(f"{_where(path, row_no)}: duplicate header row")
            if len(rec) != 2:
                raise ValueError(f"{_where(path, row_no)}: {len(rec)} fields, expected 2 (id,predicted)")
            image_id, rle = rec[0].strip(), rec[1]
            if not image_id:
                raise ValueError(f"{_where(path, row_no)}: empty id")
            if expected is not None and image_id not in expected:
                raise ValueError(f"{_where(path, row_no, image_id)}: unknown image id")
            h, w = heights_widths.get(image_id, (height, width)) if heights_widths else (height, width)
            sizes[image_id] = (h, w)
            try:
                starts, lengths = kaggle_rle_runs(rle, h, w)
            except ValueError as e:
                raise ValueError(f"{_where(path, row_no, image_id)}, field 'predicted': {e}") from None
            entries = runs[image_id]
            if starts.size:
                box, crop = runs_to_crop(starts, starts + lengths, w)
                entries.append((row_no, box, crop))
    out: dict[str, InstanceMasks] = {}
    for image_id, entries in runs.items():
        h, w = sizes[image_id]
        boxes = np.array([e[1] for e in entries], dtype=np.int32).reshape(-1, 4)
        masks = InstanceMasks(h, w, boxes, [e[2] for e in entries])
        pair = find_overlap(masks)
        if pair is not None:
            first, second = entries[pair[0]][0], entries[pair[1]][0]
            raise ValueError(
                f"{_where(path, second, image_id)}: mask overlaps the mask of row {first} of the same image"
            )
        out[image_id] = masks
    return out


def read_kaggle_truth(train_csv_path: str | os.PathLike) -> tuple[dict[str, InstanceMasks], dict[str, str]]:
    """Read ground truth in the competition's ``train.csv`` format.

    Required columns: ``id``, ``annotation``, ``width``, ``height``; ``cell_type`` is used when present (other
    columns are ignored). Overlapping true instances are kept as they are.

    Args:
        train_csv_path: The CSV file.

    Returns:
        ``(truth, cell_types)``: image id -> true instance masks (sorted by id), image id -> cell type (lower
        case; empty when the column is absent).

    Raises:
        ValueError: Missing columns, a non-positive or non-integer width/height, a width/height or cell type that
            changes within one image, or an empty/invalid annotation; the message names the file, the row and the
            field.
    """
    path = Path(train_csv_path)
    if not path.is_file():
        raise ValueError(f"{path}: ground-truth file not found")
    per_image: dict[str, list[tuple[tuple[int, int, int, int], np.ndarray]]] = defaultdict(list)
    sizes: dict[str, tuple[int, int, int]] = {}
    cell_types: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in TRUTH_COLUMNS if c not in header]
        if missing:
            raise ValueError(
                f"{path}: header: missing column(s) {', '.join(missing)} (found {', '.join(header) or 'nothing'})"
            )
        reader.fieldnames = header
        has_type = "cell_type" in header
        for row_no, rec in enumerate(reader, start=1):
            if None in rec or any(v is None for v in rec.values()):
                raise ValueError(f"{_where(path, row_no)}: wrong number of fields (header has {len(header)})")
            image_id = rec["id"].strip()
            if not image_id:
                raise ValueError(f"{_where(path, row_no)}, field 'id': empty id")
            hw = []
            for fld in ("height", "width"):
                try:
                    v = int(rec[fld].strip())
                except ValueError:
                    raise ValueError(
                        f"{_where(path, row_no, image_id)}, field '{fld}': {rec[fld]!r} is not an integer"
                    ) from None
                if v <= 0:
                    raise ValueError(f"{_where(path, row_no, image_id)}, field '{fld}': must be > 0, got {v}")
                hw.append(v)
            h, w = hw
            if image_id in sizes and sizes[image_id][:2] != (h, w):
                first = sizes[image_id][2]
                raise ValueError(
                    f"{_where(path, row_no, image_id)}, field 'height'/'width': {h}x{w} here but "
                    f"{sizes[image_id][0]}x{sizes[image_id][1]} in row {first}"
                )
            sizes.setdefault(image_id, (h, w, row_no))
            if has_type:
                ct = (rec["cell_type"] or "").strip().lower()
                if image_id in cell_types and cell_types[image_id] != ct:
                    raise ValueError(
                        f"{_where(path, row_no, image_id)}, field 'cell_type': {ct!r} here but "
                        f"{cell_types[image_id]!r} earlier (one cell type per image)"
                    )
                cell_types[image_id] = ct
            try:
                starts, lengths = kaggle_rle_runs(rec["annotation"], h, w)
            except ValueError as e:
                raise ValueError(f"{_where(path, row_no, image_id)}, field 'annotation': {e}") from None
            if starts.size == 0:
                raise ValueError(f"{_where(path, row_no, image_id)}, field 'annotation': empty mask")
            per_image[image_id].append(runs_to_crop(starts, starts + lengths, w))
    if not per_image:
        raise ValueError(f"{path}: no data rows")
    truth = {}
    for image_id in sorted(per_image):
        h, w, _ = sizes[image_id]
        entries = per_image[image_id]
        boxes = np.array([e[0] for e in entries], dtype=np.int32).reshape(-1, 4)
        truth[image_id] = InstanceMasks(h, w, boxes, [e[1] for e in entries])
    return truth, {k: cell_types[k] for k in sorted(cell_types)}


def read_coco_truth(coco_json_path: str | os.PathLike) -> tuple[dict[str, InstanceMasks], dict[str, str]]:
    """Read ground truth from a COCO instance json (as written by ``tools/prepare_sartorius.py``).

    Image ids are the Kaggle ids (:func:`celldata.coco.kaggle_id`: ``kaggle_id``, ``image_id``, file stem). The cell type of an image is its ``cell_type`` field, else the most frequent category of its
    annotations (Sartorius images hold one cell type). Images without annotations have zero instances.

    Args:
        coco_json_path: The json file.

    Returns:
        ``(truth, cell_types)`` as :func:`read_kaggle_truth`.

    Raises:
        ValueError: Malformed json or annotation (naming the file and the annotation id).
    """
    path = Path(coco_json_path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: ground-truth file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid json: {e}") from None
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(f"{path}: not a COCO instance file (needs 'images' and 'annotations')")
    cat_names = {c["id"]: str(c.get("name", c["id"])).lower() for c in data.get("categories", [])}
    key_of: dict = {}
    sizes: dict[str, tuple[int, int]] = {}
    cell_types: dict[str, str] = {}
    for im in data["images"]:
        key = kaggle_id(im)
        key_of[im["id"]] = key
        sizes[key] = (int(im["height"]), int(im["width"]))
        if im.get("cell_type"):
            cell_types[key] = str(im["cell_type"]).lower()
    per_image: dict[str, list] = defaultdict(list)
    votes: dict[str, Counter] = defaultdict(Counter)
    for a in data["annotations"]:
        key = key_of.get(a.get("image_id"))
        if key is None:
            raise ValueError(
                f"{path}: annotation {a.get('id')} refers to unknown image {a.get('image_id')!r}"
            )
        seg = a.get("segmentation")
        if not isinstance(seg, dict):
            raise ValueError(f"{path}: annotation {a.get('id')}: segmentation must be a COCO RLE dict")
        try:
            box, crop = coco_rle_to_crop(seg)
        except ValueError as e:
            raise ValueError(f"{path}: annotation {a.get('id')}: {e}") from None
        if tuple(int(v) for v in seg["size"]) != sizes[key]:
            raise ValueError(f"{path}: annotation {a.get('id')}: size {seg['size']} != image {sizes[key]}")
        per_image[key].append((box, crop))
        votes[key][cat_names.get(a.get("category_id"), str(a.get("category_id")))] += 1
    truth = {}
    for key in sorted(sizes):
        h, w = sizes[key]
        entries = per_image.get(key, [])
        boxes = np.array([e[0] for e in entries], dtype=np.int32).reshape(-1, 4)
        truth[key] = InstanceMasks(h, w, boxes, [e[1] for e in entries])
        if key not in cell_types and votes[key]:
            cell_types[key] = votes[key].most_common(1)[0][0]
    return truth, {k: cell_types[k] for k in sorted(cell_types)}


def load_truth(path: str | os.PathLike) -> tuple[dict[str, InstanceMasks], dict[str, str]]:
    """Ground truth from a ``train.csv``-format file (``.csv``) or a COCO json (``.json``).

    Raises:
        ValueError: Unknown extension or malformed file.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return read_kaggle_truth(path)
    if suffix == ".json":
        return read_coco_truth(path)
    raise ValueError(f"{path}: ground truth must be a train.csv-format .csv or a COCO .json file")


def read_sample_ids(path: str | os.PathLike) -> dict[str, str]:
    """The ``sample_id`` of every image of a ground-truth file (for grouped cross-validation).

    Images of one sample (e.g. time-lapse frames of one well) are near-duplicates and must not be split between
    tuning and held-out parts. Read from the ``sample_id`` column of a ``train.csv``-format file or the
    ``sample_id`` field of COCO images; an image without one is its own group (its id).

    Args:
        path: ``.csv`` or ``.json`` ground truth (already validated by :func:`load_truth`).

    Returns:
        Image id -> sample id.

    Raises:
        ValueError: Unreadable file or an image whose sample id changes between rows.
    """
    path = Path(path)
    out: dict[str, str] = {}
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
            images = data["images"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: cannot read COCO images ({e})") from None
        for im in images:
            key = kaggle_id(im)
            out[key] = str(im.get("sample_id") or key)
        return out
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        for row_no, rec in enumerate(reader, start=1):
            image_id = (rec.get("id") or "").strip()
            if not image_id:
                continue
            sid = (rec.get("sample_id") or "").strip() or image_id
            if out.setdefault(image_id, sid) != sid:
                raise ValueError(
                    f"{_where(path, row_no, image_id)}, field 'sample_id': {sid!r} here but {out[image_id]!r} earlier"
                )
    return out
