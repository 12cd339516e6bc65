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
from collections.abc import Sequence

import numpy as np
from numba import njit
from pycocotools import mask as mask_utils

__all__ = [
    "kaggle_rle_encode",
    "kaggle_rle_decode",
    "kaggle_rle_runs",
    "kaggle_rle_encode_label_image",
    "kaggle_rles_from_crops",
    "coco_rle_encode",
    "coco_rle_encode_crop",
    "coco_rle_decode",
    "coco_rle_area",
    "coco_rle_counts",
    "coco_rle_to_crop",
    "runs_to_crop",
    "kaggle_rle_to_coco_rle",
    "coco_rle_to_kaggle_rle",
]

_TOKEN_RE = re.compile(r"[+-]?[0-9]+", re.ASCII)
_INTS_RE = re.compile(r"[+-]?[0-9]+(?:\s+[+-]?[0-9]+)*", re.ASCII)
_MAX_INT = 2**62
_POW10 = 10 ** np.arange(1, 19, dtype=np.int64)


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


@njit(cache=True, nogil=True)
def _kaggle_rle_kernel(flat, offs, boxes, width):  # pragma: no cover - numba compiled
    """Kaggle RLE text of every packed crop, written as ASCII digits into one byte buffer.

    Runs are found row by row inside each crop window and numbered row-major over the image; a run that ends at
    the right image border and continues at the left border of the next row is merged into one (only possible
    for a crop spanning the full width).

    Args:
        flat: uint8 concatenation of the crops (row-major, nonzero = foreground).
        offs: int64 ``(N + 1,)`` crop i is ``flat[offs[i]:offs[i + 1]]``.
        boxes: int64 ``(N, 4)`` crop windows ``(x0, y0, x1, y1)``.
        width: image width W.

    Returns:
        ``(text uint8, text_offs int64 (N + 1,))``: the RLE of crop i is ``text[text_offs[i]:text_offs[i + 1]]``.
    """
    n = boxes.shape[0]
    # pass 1: runs (1-based start, length), at most one run per two pixels plus one per row
    cap = 16
    for i in range(n):
        cap += (offs[i + 1] - offs[i]) // 2 + (boxes[i, 3] - boxes[i, 1]) + 1
    starts = np.empty(cap, dtype=np.int64)
    lens = np.empty(cap, dtype=np.int64)
    run_offs = np.zeros(n + 1, dtype=np.int64)
    r = 0
    for i in range(n):
        x0 = boxes[i, 0]
        y0 = boxes[i, 1]
        bw = boxes[i, 2] - x0
        bh = boxes[i, 3] - y0
        base = offs[i]
        first = r
        for yy in range(bh):
            row = base + yy * bw
            xx = 0
            while xx < bw:
                if flat[row + xx] == 0:
                    xx += 1
                    continue
                s = xx
                while xx < bw and flat[row + xx] != 0:
                    xx += 1
                start = (y0 + yy) * width + x0 + s  # 0-based
                if r > first and starts[r - 1] - 1 + lens[r - 1] == start:
                    lens[r - 1] += xx - s
                else:
                    starts[r] = start + 1
                    lens[r] = xx - s
                    r += 1
        run_offs[i + 1] = r
    # pass 2: digits
    n_chars = 0
    for k in range(r):
        v = starts[k]
        while True:
            n_chars += 1
            v //= 10
            if v == 0:
                break
        v = lens[k]
        while True:
            n_chars += 1
            v //= 10
            if v == 0:
                break
        n_chars += 2  # two separators (one too many per instance; trimmed by the offsets)
    text = np.empty(n_chars, dtype=np.uint8)
    text_offs = np.zeros(n + 1, dtype=np.int64)
    pos = 0
    digits = np.empty(20, dtype=np.uint8)
    for i in range(n):
        text_offs[i] = pos
        for k in range(run_offs[i], run_offs[i + 1]):
            for j in range(2):
                v = starts[k] if j == 0 else lens[k]
                nd = 0
                while True:
                    digits[nd] = 48 + v % 10
                    nd += 1
                    v //= 10
                    if v == 0:
                        break
                if not (k == run_offs[i] and j == 0):
                    text[pos] = 32
                    pos += 1
                for d in range(nd - 1, -1, -1):
                    text[pos] = digits[d]
                    pos += 1
    text_offs[n] = pos
    return text[:pos], text_offs


def kaggle_rles_from_crops(flat: np.ndarray, offsets: np.ndarray, boxes: np.ndarray, width: int) -> list[str]:
    """Kaggle RLE strings of many packed mask crops of one image at once (numba; the fast encoder).

    Args:
        flat: uint8 or bool concatenation of the crops, row-major, nonzero = foreground.
        offsets: int64 ``(N + 1,)``; crop i is ``flat[offsets[i]:offsets[i + 1]]``.
        boxes: ``(N, 4)`` integer crop windows ``(x0, y0, x1, y1)`` (exclusive) inside an image of width ``width``.
        width: image width W.

    Returns:
        N strings, equal to :func:`kaggle_rle_encode` of each crop pasted into its full frame.

    Raises:
        ValueError: offsets that do not match the windows.
    """
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
    flat = np.asarray(flat).reshape(-1)
    if offsets.shape != (len(boxes) + 1,):
        raise ValueError(f"kaggle_rles_from_crops: {len(offsets)} offsets for {len(boxes)} crops")
    sizes = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    if (np.diff(offsets) != sizes).any() or (len(boxes) and offsets[-1] > flat.size):
        raise ValueError("kaggle_rles_from_crops: offsets do not match the crop windows")
    if len(boxes) == 0:
        return []
    data = flat.view(np.uint8) if flat.dtype == bool else flat.astype(np.uint8, copy=False)
    text, toffs = _kaggle_rle_kernel(np.ascontiguousarray(data), offsets, boxes, int(width))
    s = text.tobytes().decode("ascii")
    return [s[a:b] for a, b in zip(toffs[:-1].tolist(), toffs[1:].tolist())]


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
    if not _INTS_RE.fullmatch(rle.strip()):
        bad = next((t for t in tokens if not _TOKEN_RE.fullmatch(t)), None)
        if bad is None:
            raise ValueError("RLE tokens are separated by non-ASCII whitespace")
        raise ValueError(f"RLE token {bad!r} is not an integer")
    ints = [int(t) for t in tokens]
    if max(ints) > _MAX_INT or min(ints) < -_MAX_INT:
        bad = next(t for t, v in zip(tokens, ints) if abs(v) > _MAX_INT)
        raise ValueError(f"RLE token {bad!r} is out of range")
    values = np.array(ints, dtype=np.int64)
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
    out = np.zeros((int(height), int(width)), dtype=bool)
    if starts.size:
        # rasterize only the runs' bounding window (cost ~ the object's box, not the whole image)
        (x0, y0, x1, y1), crop = runs_to_crop(starts, starts + lengths, int(width))
        out[y0:y1, x0:x1] = crop
    return out


def kaggle_rle_encode_label_image(labels: np.ndarray) -> dict[int, str]:
    """Encodes every instance of a label image in one pass.

    Args:
        labels: int array of shape (H, W); 0 is background, every other value one instance.

    Returns:
        ``{label: kaggle_rle}`` for every label > 0 present in the image, in increasing label order.

    Raises:
        ValueError: If ``labels`` is not 2-D, not integer-typed or holds negative values.

    One pass over the image: the value changes of the raveled label image give all runs of all labels at once;
    a stable sort by label groups them (keeping image order within a label), so the cost is
    O(H*W + R log R) for R runs instead of one full-image scan per label.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label image must be 2-D (H, W), got shape {labels.shape}")
    if labels.dtype.kind not in "iub":
        raise ValueError(f"label image must have an integer dtype, got {labels.dtype}")
    if labels.size == 0:
        return {}
    if labels.dtype.kind == "i" and labels.min() < 0:
        raise ValueError(f"label image has negative label {int(labels.min())}; labels must be >= 0")
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
    if run_vals.size == 0:
        return {}
    # All "start length" tokens of all labels as one string, then one slice per label: token k takes
    # digits(k) + 1 characters (its trailing space), so the character offsets follow from a cumulative sum.
    pairs = np.empty(run_starts.size * 2, dtype=np.int64)
    pairs[0::2] = run_starts + 1
    pairs[1::2] = run_ends - run_starts
    text = " ".join(map(str, pairs.tolist())) + " "
    widths = np.searchsorted(_POW10, pairs, side="right") + 2  # decimal digits + 1 (exact, values >= 1)
    char_off = np.concatenate([[0], np.cumsum(widths)])
    first = np.concatenate([[0], np.flatnonzero(np.diff(run_vals)) + 1])  # first run of each label
    last = np.concatenate([first[1:], [run_vals.size]])
    return {
        int(v): text[char_off[2 * a] : char_off[2 * b] - 1]
        for v, a, b in zip(run_vals[first].tolist(), first.tolist(), last.tolist())
    }


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


def coco_rle_encode_crop(crop: np.ndarray, box: Sequence[int], height: int, width: int) -> dict:
    """Encodes one instance given as a crop of an (H, W) image as compressed COCO RLE, without a full frame.

    Only the columns ``x0:x1`` of the image are rasterized (at full height, column-major), so the cost is
    ``H * (x1 - x0)`` instead of ``H * W``; the result equals :func:`coco_rle_encode` of the full mask.

    Args:
        crop: bool or 0/1 array of shape ``(y1 - y0, x1 - x0)``.
        box: ``(x0, y0, x1, y1)``, x1/y1 exclusive, inside the image.
        height: image height H.
        width: image width W.

    Returns:
        ``{"size": [H, W], "counts": str}`` (JSON-ready).
    """
    x0, y0, x1, y1 = (int(v) for v in box)
    crop = np.asarray(crop)
    if crop.shape != (y1 - y0, x1 - x0) or not (0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height):
        raise ValueError(
            f"coco_rle_encode_crop: crop of shape {crop.shape} does not fit box {(x0, y0, x1, y1)} "
            f"in a {height}x{width} image"
        )
    cols = np.zeros((x1 - x0, height), dtype=np.int8)  # the image's columns x0:x1, each a row (column-major)
    cols[:, y0:y1] = crop.T != 0
    flat = np.concatenate([[0], cols.ravel(), [0]])  # everything outside these columns is background
    bounds = np.flatnonzero(np.diff(flat)) + x0 * height  # run starts and (exclusive) ends, column-major
    counts = np.diff(np.concatenate([[0], bounds, [height * width]])).tolist()
    if (
        len(counts) > 1 and counts[-1] == 0
    ):  # a mask that ends on the last pixel has no closing background run
        counts.pop()
    rle = mask_utils.frPyObjects({"size": [int(height), int(width)], "counts": counts}, height, width)
    return {"size": [int(height), int(width)], "counts": rle["counts"].decode("ascii")}


def _coco_size(rle: dict) -> tuple[int, int]:
    """Validated ``(H, W)`` of a COCO RLE dict."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("COCO RLE must be a dict with 'size' and 'counts'")
    size = rle["size"]
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"COCO RLE 'size' must be [height, width], got {size!r}") from None
    if h < 0 or w < 0:
        raise ValueError(f"COCO RLE 'size' must be non-negative, got {size!r}")
    return h, w


def _counts_from_string(counts: bytes) -> np.ndarray:
    """Decodes pycocotools' compressed counts string (the algorithm of ``rleFrString`` in maskApi.c).

    Each count is written in 5-bit groups, least significant first, as characters ``48 + group`` with bit 0x20
    meaning "more groups follow" and bit 0x10 of the last group the sign; from the third count on, the value is
    stored as the difference to the count two places earlier.

    Raises:
        ValueError: On a character outside the alphabet or a string that ends inside a count.
    """
    out: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x = 0
        k = 0
        more = True
        while more:
            if p >= n:
                raise ValueError("compressed COCO RLE counts string ends inside a count")
            c = counts[p] - 48
            if c < 0 or c > 63:
                raise ValueError(
                    f"compressed COCO RLE counts string has invalid character {chr(counts[p])!r}"
                )
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return np.asarray(out, dtype=np.int64)


def coco_rle_counts(rle: dict) -> np.ndarray:
    """Validated run lengths of a COCO RLE (compressed or uncompressed).

    Args:
        rle: ``{"size": [H, W], "counts": str | bytes | list[int]}``.

    Returns:
        int64 array (K,) of alternating background/foreground run lengths in column-major order, starting with
        background (the first may be 0).

    Raises:
        ValueError: If a count is negative or not an integer, or the counts do not sum to ``H * W``.
    """
    h, w = _coco_size(rle)
    counts = rle["counts"]
    if isinstance(counts, list | tuple | np.ndarray):
        arr = np.asarray(counts)
        if arr.size and arr.dtype.kind not in "iu":
            raise ValueError(f"uncompressed COCO RLE counts must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64).ravel()
    elif isinstance(counts, str | bytes):
        raw = counts.encode("ascii", errors="replace") if isinstance(counts, str) else counts
        arr = _counts_from_string(raw)
    else:
        raise ValueError(f"COCO RLE 'counts' must be a list or a string, got {type(counts).__name__}")
    if (arr < 0).any():
        i = int(np.flatnonzero(arr < 0)[0])
        raise ValueError(f"COCO RLE count {i} is negative ({int(arr[i])})")
    total = int(arr.sum())
    if total != h * w:
        raise ValueError(f"COCO RLE counts sum to {total}, expected {h}x{w} = {h * w}")
    return arr


def _coco_rle_compressed(rle: dict) -> dict:
    """Returns a pycocotools-ready compressed RLE (bytes counts) from compressed or uncompressed input.

    The counts are validated first: pycocotools does not bound-check them and would write past its buffer.
    """
    h, w = _coco_size(rle)
    counts = coco_rle_counts(rle)
    if isinstance(rle["counts"], str | bytes):
        c = rle["counts"]
        return {"size": [h, w], "counts": c.encode("ascii") if isinstance(c, str) else c}
    return mask_utils.frPyObjects({"size": [h, w], "counts": counts.tolist()}, h, w)


def runs_to_crop(
    starts: np.ndarray, ends: np.ndarray, width: int
) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """Rasterizes row-major runs directly into their tight crop (no full-frame mask).

    Args:
        starts: int64 (R,) 0-based run starts over the raveled (H, W) image.
        ends: int64 (R,) exclusive run ends (runs may wrap over row ends).
        width: image width W.

    Returns:
        ``((x0, y0, x1, y1), crop)`` with crop a bool array (y1 - y0, x1 - x0); no runs give a zero box and a
        0x0 crop.
    """
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if starts.size == 0:
        return (0, 0, 0, 0), np.zeros((0, 0), dtype=bool)
    y_first = starts // width
    y_last = (ends - 1) // width
    nseg = y_last - y_first + 1
    run_idx = np.repeat(np.arange(starts.size), nseg)
    offs = np.arange(run_idx.size) - np.repeat(np.cumsum(nseg) - nseg, nseg)
    rows = y_first[run_idx] + offs
    seg_x0 = np.where(offs == 0, starts[run_idx] - rows * width, 0)
    seg_x1 = np.where(rows == y_last[run_idx], ends[run_idx] - rows * width, width)
    y0, y1 = int(rows.min()), int(rows.max()) + 1
    x0, x1 = int(seg_x0.min()), int(seg_x1.max())
    diff = np.zeros((y1 - y0, x1 - x0 + 1), dtype=np.int32)
    np.add.at(diff, (rows - y0, seg_x0 - x0), 1)
    np.add.at(diff, (rows - y0, seg_x1 - x0), -1)
    crop = np.cumsum(diff, axis=1)[:, :-1] > 0
    return (x0, y0, x1, y1), crop


def coco_rle_to_crop(rle: dict) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """Decodes a COCO RLE straight into the tight crop of its mask (validated, no full-frame decode).

    Column-major runs of an (H, W) image are the row-major runs of its (W, H) transpose, so they are rasterized
    with :func:`runs_to_crop` on the transpose and the crop is transposed back.

    Args:
        rle: ``{"size": [H, W], "counts": str | bytes | list[int]}``.

    Returns:
        ``((x0, y0, x1, y1), crop)``, x1/y1 exclusive, crop bool (y1 - y0, x1 - x0); an empty mask gives a zero
        box and a 0x0 crop.
    """
    h, _ = _coco_size(rle)
    counts = coco_rle_counts(rle)
    bounds = np.cumsum(counts)
    fg_starts = bounds[0::2][: counts.size // 2]
    fg_ends = bounds[1::2]
    (ty0, tx0, ty1, tx1), crop_t = runs_to_crop(fg_starts, fg_ends, h)
    # in the transpose, "x" is the original y and "y" the original x
    return (tx0, ty0, tx1, ty1), np.ascontiguousarray(crop_t.T)


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
