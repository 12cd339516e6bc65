"""Run-length encodings of binary masks: the Kaggle format and the COCO format, kept strictly apart.

Kaggle RLE (``train.csv`` ``annotation`` column, submission ``predicted`` column)
    A string of space-separated ``start length`` pairs. ``start`` is 1-based; pixels are numbered row-major
    over ``(height, width)`` (C order: pixel ``(y, x)`` has number ``y * width + x + 1``). Runs are sorted,
    do not overlap and have positive lengths. The empty string is the empty mask.

COCO RLE (pycocotools, ``segmentation`` field of COCO json)
    A dict ``{"size": [height, width], "counts": ...}`` whose counts alternate background/foreground run
    lengths over the pixels in column-major (Fortran) order, starting with background. ``counts`` is either
    a list of ints ("uncompressed") or pycocotools' compressed string. This module always *writes* the
    compressed form with ``counts`` as ``str`` (JSON-ready) and *reads* both.

The two orders differ (row-major vs column-major), so never pass one format to the other's decoder; convert
with :func:`kaggle_rle_to_coco_rle` / :func:`coco_rle_to_kaggle_rle`.
"""

from __future__ import annotations

import re

import numpy as np
from pycocotools import mask as mask_utils

__all__ = [
    "kaggle_rle_encode",
    "kaggle_rle_decode",
    "kaggle_rle_runs",
    "kaggle_rle_encode_label_image",
    "coco_rle_encode",
    "coco_rle_decode",
    "coco_rle_area",
    "kaggle_rle_to_coco_rle",
    "coco_rle_to_kaggle_rle",
]

_TOKEN_RE = re.compile(r"^\d+$")


def _runs_to_str(starts: np.ndarray, lengths: np.ndarray) -> str:
    """Formats 1-based starts and lengths as a Kaggle RLE string."""
    if starts.size == 0:
        return ""
    pairs = np.empty(starts.size * 2, dtype=np.int64)
    pairs[0::2] = starts
    pairs[1::2] = lengths
    return " ".join(map(str, pairs.tolist()))


def kaggle_rle_encode(mask: np.ndarray) -> str:
    """Encodes one binary mask as Kaggle RLE.

    Args:
        mask: bool or 0/1 array of shape (H, W).

    Returns:
        The Kaggle RLE string (empty for an empty mask).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"kaggle_rle_encode: mask must be 2-D (H, W), got shape {mask.shape}")
    flat = np.ravel(mask, order="C").astype(bool)
    padded = np.concatenate([[False], flat, [False]])
    changes = np.flatnonzero(padded[1:] != padded[:-1])
    starts = changes[0::2]
    ends = changes[1::2]
    return _runs_to_str(starts + 1, ends - starts)


def kaggle_rle_runs(rle: str, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Parses and validates a Kaggle RLE string.

    Args:
        rle: Kaggle RLE string.
        height: image height H.
        width: image width W.

    Returns:
        ``(starts, lengths)``: int64 arrays of shape (R,), starts 0-based.

    Raises:
        ValueError: odd token count, a non-integer token, a zero or negative length, a start < 1, a run past
            the image end, or runs that are unsorted or overlap. The message names the problem and the run.
    """
    if rle is None:
        raise ValueError("RLE is None")
    if not isinstance(rle, str):
        # pandas reads an empty cell as NaN (float)
        if isinstance(rle, float) and np.isnan(rle):
            rle = ""
        else:
            raise ValueError(f"RLE must be a string, got {type(rle).__name__}")
    tokens = rle.split()
    if not tokens:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    if len(tokens) % 2:
        raise ValueError(f"RLE has an odd number of tokens ({len(tokens)}): expected 'start length' pairs")
    try:
        values = np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError:
        bad = next(t for t in tokens if not re.fullmatch(r"[+-]?\d+", t))
        raise ValueError(f"RLE token {bad!r} is not an integer") from None
    starts = values[0::2]
    lengths = values[1::2]
    n_pixels = int(height) * int(width)
    if (lengths <= 0).any():
        i = int(np.flatnonzero(lengths <= 0)[0])
        raise ValueError(f"RLE run {i} has non-positive length {int(lengths[i])}")
    if (starts < 1).any():
        i = int(np.flatnonzero(starts < 1)[0])
        raise ValueError(f"RLE run {i} has start {int(starts[i])} < 1 (starts are 1-based)")
    ends = starts - 1 + lengths  # exclusive, 0-based
    if (ends > n_pixels).any():
        i = int(np.flatnonzero(ends > n_pixels)[0])
        raise ValueError(
            f"RLE run {i} (start {int(starts[i])}, length {int(lengths[i])}) runs past the image end "
            f"({height}x{width} = {n_pixels} pixels)"
        )
    if starts.size > 1:
        prev_end = ends[:-1]
        nxt = starts[1:] - 1
        if (nxt < prev_end).any():
            i = int(np.flatnonzero(nxt < prev_end)[0]) + 1
            kind = "unsorted" if starts[i] < starts[i - 1] else "overlapping"
            raise ValueError(
                f"RLE runs are {kind}: run {i} starts at {int(starts[i])} before the previous run "
                f"(start {int(starts[i - 1])}, length {int(lengths[i - 1])}) ends"
            )
    return starts - 1, lengths


def kaggle_rle_decode(rle: str, height: int, width: int) -> np.ndarray:
    """Decodes a Kaggle RLE string (validated, see :func:`kaggle_rle_runs`).

    Args:
        rle: Kaggle RLE string.
        height: image height H.
        width: image width W.

    Returns:
        bool array of shape (H, W).
    """
    starts, lengths = kaggle_rle_runs(rle, height, width)
    n = int(height) * int(width)
    # difference array: +1 at run start, -1 at run end, cumulative sum marks the runs
    diff = np.zeros(n + 1, dtype=np.int8)
    np.add.at(diff, starts, 1)
    np.add.at(diff, starts + lengths, -1)
    return (np.cumsum(diff[:-1], dtype=np.int8) > 0).reshape(height, width)


def kaggle_rle_encode_label_image(labels: np.ndarray) -> dict[int, str]:
    """Encodes every instance of a label image in one pass.

    Args:
        labels: int array of shape (H, W); 0 is background, every other value one instance.

    Returns:
        ``{label: kaggle_rle}`` for every label > 0 present in the image, in increasing label order.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label image must be 2-D (H, W), got shape {labels.shape}")
    flat = labels.ravel(order="C")
    # run boundaries of the label sequence (any change of value starts a new run)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    run_starts = np.concatenate([[0], change])
    run_ends = np.concatenate([change, [flat.size]])
    run_vals = flat[run_starts]
    keep = run_vals > 0
    run_starts, run_ends, run_vals = run_starts[keep], run_ends[keep], run_vals[keep]
    order = np.argsort(run_vals, kind="stable")  # stable: runs of one label stay in image order
    run_starts, run_ends, run_vals = run_starts[order], run_ends[order], run_vals[order]
    bounds = np.flatnonzero(np.diff(run_vals)) + 1
    out: dict[int, str] = {}
    for s, e in zip(np.split(run_starts, bounds), np.split(run_ends, bounds)):
        if s.size == 0:
            continue
        out[int(flat[s[0]])] = _runs_to_str(s + 1, e - s)
    return out


def coco_rle_encode(mask: np.ndarray) -> dict:
    """Encodes one binary mask as compressed COCO RLE.

    Args:
        mask: bool or 0/1 array of shape (H, W).

    Returns:
        ``{"size": [H, W], "counts": str}`` (JSON-ready).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"coco_rle_encode: mask must be 2-D (H, W), got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def _coco_rle_compressed(rle: dict) -> dict:
    """Returns a pycocotools-ready compressed RLE (bytes counts) from compressed or uncompressed input."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("COCO RLE must be a dict with 'size' and 'counts'")
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        if sum(counts) != h * w:
            raise ValueError(f"uncompressed COCO RLE counts sum to {sum(counts)}, expected {h}x{w} = {h * w}")
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [h, w], "counts": counts}


def coco_rle_decode(rle: dict) -> np.ndarray:
    """Decodes a COCO RLE (compressed string or uncompressed list counts).

    Args:
        rle: ``{"size": [H, W], "counts": str | bytes | list[int]}``.

    Returns:
        bool array of shape (H, W).
    """
    return mask_utils.decode(_coco_rle_compressed(rle)).astype(bool)


def coco_rle_area(rle: dict) -> int:
    """Pixel count of a COCO RLE without decoding it."""
    return int(mask_utils.area(_coco_rle_compressed(rle)))


def kaggle_rle_to_coco_rle(rle: str, height: int, width: int) -> dict:
    """Converts Kaggle RLE (row-major) to compressed COCO RLE (column-major)."""
    return coco_rle_encode(kaggle_rle_decode(rle, height, width))


def coco_rle_to_kaggle_rle(rle: dict) -> str:
    """Converts a COCO RLE (either counts form) to Kaggle RLE."""
    return kaggle_rle_encode(coco_rle_decode(rle))
