"""Reading and validating the competition's ``train.csv`` (one row per instance, Kaggle RLE) and its images.

Columns (:data:`KAGGLE_COLUMNS`)::

    id,annotation,width,height,cell_type,plate_time,sample_date,sample_id,elapsed_timedelta

``id`` is the image id (``train/<id>.png``), ``annotation`` the Kaggle RLE of one instance (see
:mod:`celldata.rle`), ``cell_type`` one of :data:`celldata.CLASSES` (one per image). ``plate_time``,
``sample_date`` and ``elapsed_timedelta`` are optional and copied when present.

Errors are ``ValueError`` naming the file, the 1-based data row and the field.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from celldata import CLASSES
from celldata.images import read_image_size
from celldata.instances import InstanceMasks
from celldata.rle import kaggle_rle_runs

__all__ = [
    "KAGGLE_COLUMNS",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "MAX_REPORTED_ERRORS",
    "KaggleImage",
    "TrainCsvError",
    "check_images",
    "read_train_csv",
]

KAGGLE_COLUMNS: tuple[str, ...] = (
    "id",
    "annotation",
    "width",
    "height",
    "cell_type",
    "plate_time",
    "sample_date",
    "sample_id",
    "elapsed_timedelta",
)
"""The columns of the competition's ``train.csv``, in its order."""

REQUIRED_COLUMNS: tuple[str, ...] = ("id", "annotation", "width", "height", "cell_type", "sample_id")
"""Columns ``train.csv`` must have; ``plate_time``, ``sample_date`` and ``elapsed_timedelta`` are copied when present."""

OPTIONAL_COLUMNS: tuple[str, ...] = ("plate_time", "sample_date", "elapsed_timedelta")


@dataclass
class KaggleImage:
    """The rows of ``train.csv`` that belong to one image.

    Attributes:
        image_id: Kaggle image id (file stem).
        height: Image height from the ``height`` column.
        width: Image width from the ``width`` column.
        cell_type: One of ``celldata.CLASSES``.
        sample_id: ``sample_id`` column.
        rles: Kaggle RLE string of every instance, in file order.
        rows: 1-based data row number of every instance.
        meta: Optional columns (``plate_time``, ``sample_date``, ``elapsed_timedelta``) of the first row.
        runs: Parsed runs of every instance, ``(starts, lengths)`` int64 arrays (0-based row-major starts), kept
            from validation so that the RLE strings are parsed once.
    """

    image_id: str
    height: int
    width: int
    cell_type: str
    sample_id: str
    rles: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    runs: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list, repr=False)

    def to_instances(self) -> InstanceMasks:
        """The image's instance masks as tight crops (decoded from the parsed runs, no full frames)."""
        return InstanceMasks.from_runs(self.runs, self.height, self.width)


def _row_error(csv_path: Path, row: int, fld: str, msg: str) -> ValueError:
    return ValueError(f"{csv_path}: row {row}, field '{fld}': {msg}")


def _positive_int(csv_path: Path, row: int, fld: str, value: str) -> int:
    try:
        v = int(str(value).strip())
    except ValueError:
        raise _row_error(csv_path, row, fld, f"{value!r} is not an integer") from None
    if v <= 0:
        raise _row_error(csv_path, row, fld, f"must be > 0, got {v}")
    return v


MAX_REPORTED_ERRORS: int = 50
"""How many bad rows :func:`read_train_csv` lists in its error before it only counts the rest."""


class TrainCsvError(ValueError):
    """Every problem found in a ``train.csv``, in row order.

    Attributes:
        path: The csv file.
        errors: One message per bad row (``"<file>: row N, field 'x': ..."``), at most ``max_reported`` of them.
        n_errors: How many bad rows were found in all.
    """

    def __init__(self, path: Path, errors: list[str], n_errors: int) -> None:
        self.path = path
        self.errors = errors
        self.n_errors = n_errors
        if n_errors == 1:
            msg = errors[0]
        else:
            more = n_errors - len(errors)
            tail = f"\n  ... and {more} more bad row(s)" if more else ""
            msg = f"{path}: {n_errors} bad rows:\n  " + "\n  ".join(errors) + tail
        super().__init__(msg)


def _parse_row(
    csv_path: Path, row_no: int, rec: dict, n_columns: int
) -> tuple[str, int, int, str, str, tuple[np.ndarray, np.ndarray]]:
    """Validate one data row on its own; returns ``(image_id, width, height, cell_type, rle, runs)``."""
    if None in rec or any(rec[c] is None for c in REQUIRED_COLUMNS):
        raise _row_error(csv_path, row_no, "id", f"wrong number of fields (header has {n_columns} columns)")
    image_id = rec["id"].strip()
    if not image_id:
        raise _row_error(csv_path, row_no, "id", "empty image id")
    width = _positive_int(csv_path, row_no, "width", rec["width"])
    height = _positive_int(csv_path, row_no, "height", rec["height"])
    cell_type = rec["cell_type"].strip().lower()
    if cell_type not in CLASSES:
        raise _row_error(
            csv_path,
            row_no,
            "cell_type",
            f"unknown cell type {rec['cell_type']!r}; expected one of {CLASSES}",
        )
    rle = rec["annotation"].strip()
    try:
        starts, lengths = kaggle_rle_runs(rle, height, width)
    except ValueError as e:
        raise _row_error(csv_path, row_no, "annotation", str(e)) from None
    if starts.size == 0:
        raise _row_error(csv_path, row_no, "annotation", "empty mask (no runs)")
    return image_id, width, height, cell_type, rle, (starts, lengths)


def read_train_csv(
    csv_path: str | os.PathLike, show_progress: bool = False, max_errors: int = MAX_REPORTED_ERRORS
) -> list[KaggleImage]:
    """Read and validate a competition ``train.csv``, reporting every bad row.

    Every row is checked: the required columns exist, ``width``/``height`` are positive integers and equal for all
    rows of an image, ``cell_type`` is one of ``celldata.CLASSES`` (case-insensitive) and the same for all rows of
    an image, ``annotation`` is a valid non-empty Kaggle RLE inside ``width x height``. Reading goes on after a bad
    row, so one run lists all problems.

    Args:
        csv_path: Path of ``train.csv``.
        show_progress: Show a tqdm progress bar over the rows.
        max_errors: At most this many bad rows are listed in the error (the rest are counted).

    Returns:
        One :class:`KaggleImage` per image id, sorted by id.

    Raises:
        TrainCsvError: (a ``ValueError``) listing each bad row as ``"<file>: row N, field 'x': ..."`` (1-based data
            rows: the first row after the header is row 1); with one bad row the message is that line alone.
        ValueError: the file is missing, unreadable as UTF-8 CSV, has no data rows or lacks a required column.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ValueError(f"{csv_path}: file not found")
    images: dict[str, KaggleImage] = {}
    errors: list[str] = []
    n_errors = 0
    row_no = 0
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:  # tolerate a byte-order mark
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise ValueError(
                    f"{csv_path}: header: missing column(s) {', '.join(repr(c) for c in missing)} "
                    f"(found {', '.join(header) or 'no header'}; required {', '.join(REQUIRED_COLUMNS)})"
                )
            for row_no, rec in enumerate(
                tqdm(reader, desc="train.csv", unit="row", disable=not show_progress), 1
            ):
                try:
                    image_id, width, height, cell_type, rle, runs = _parse_row(
                        csv_path, row_no, rec, len(header)
                    )
                    img = images.get(image_id)
                    if img is None:
                        img = KaggleImage(
                            image_id=image_id,
                            height=height,
                            width=width,
                            cell_type=cell_type,
                            sample_id=rec["sample_id"].strip(),
                            meta={c: rec[c].strip() for c in OPTIONAL_COLUMNS if rec.get(c) is not None},
                        )
                        images[image_id] = img
                    elif (width, height) != (img.width, img.height):
                        raise _row_error(
                            csv_path,
                            row_no,
                            "width" if width != img.width else "height",
                            f"image {image_id} is {width}x{height} here but {img.width}x{img.height} in row "
                            f"{img.rows[0]}",
                        )
                    elif cell_type != img.cell_type:
                        raise _row_error(
                            csv_path,
                            row_no,
                            "cell_type",
                            f"image {image_id} has cell type {cell_type!r} here but {img.cell_type!r} in row "
                            f"{img.rows[0]} (one cell type per image)",
                        )
                except ValueError as e:
                    n_errors += 1
                    if len(errors) < max_errors:
                        errors.append(str(e))
                    continue
                img.rles.append(rle)
                img.runs.append(runs)
                img.rows.append(row_no)
    except UnicodeDecodeError as e:
        raise ValueError(f"{csv_path}: row {row_no + 1}: not UTF-8 text ({e.reason})") from None
    except csv.Error as e:
        raise ValueError(f"{csv_path}: row {row_no + 1}: malformed CSV ({e})") from None
    if n_errors:
        raise TrainCsvError(csv_path, errors, n_errors)
    if not images:
        raise ValueError(f"{csv_path}: no data rows")
    return [images[k] for k in sorted(images)]


def check_images(images: Sequence[KaggleImage], images_dir: Path, csv_path: Path) -> None:
    """Check that every image file exists and has the size the csv states.

    Raises:
        ValueError: naming the image file, the csv and the first data row of that image.
    """
    for img in images:
        path = images_dir / f"{img.image_id}.png"
        row = img.rows[0]
        if not path.is_file():
            raise _row_error(csv_path, row, "id", f"image file {path} not found")
        try:
            h, w = read_image_size(path)
        except ValueError as e:
            raise _row_error(csv_path, row, "id", str(e)) from None
        if (h, w) != (img.height, img.width):
            fld = "width" if w != img.width else "height"
            raise _row_error(
                csv_path,
                row,
                fld,
                f"image file {path} is {w}x{h} (width x height) but the csv says width={img.width}, "
                f"height={img.height}",
            )
