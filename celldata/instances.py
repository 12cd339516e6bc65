"""Compact storage of the N binary instance masks of one image as box-aligned crops.

A dense shsy5y image holds up to ~800 cells; as full frames (N, 520, 704) that is ~290 MB of bools, while the
cells themselves cover a few percent of it. :class:`InstanceMasks` keeps each mask as the crop inside its
integer window ``(x0, y0, x1, y1)`` (x1/y1 exclusive), which every stage of the ensemble (metric, voting,
overlap removal, RLE writing) works on directly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from .rle import coco_rle_encode, coco_rle_to_crop, kaggle_rle_runs, kaggle_rles_from_crops, runs_to_crop

__all__ = ["InstanceMasks", "PackedCrops", "gather_packed", "pack_crops", "packed_areas"]


def pack_crops(crops: Sequence[np.ndarray], boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenates crops row-major into one buffer: ``(flat uint8, offsets int64 (N + 1,))``.

    Crop i is ``flat[offsets[i]:offsets[i + 1]]``; bool crops become 0/1, other dtypes are cast to uint8.

    Args:
        crops: N 2-D arrays.
        boxes: their ``(N, 4)`` integer windows ``(x0, y0, x1, y1)`` (give the sizes without a Python loop).

    Raises:
        ValueError: if the crops hold a different number of pixels than their windows.
    """
    b = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    sizes = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    offs = np.zeros(len(crops) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offs[1:])
    if len(crops) == 0 or offs[-1] == 0:
        return np.zeros(0, dtype=np.uint8), offs
    flat = None
    if all(c.itemsize == 1 for c in crops):  # bool/uint8: one C-level join of the crops' buffers (~8x faster)
        try:
            flat = np.frombuffer(bytearray(b"".join(crops)), dtype=np.uint8)
        except (BufferError, TypeError, ValueError):  # a non-contiguous crop (a view): concatenate below
            flat = None
    if flat is None:
        flat = np.concatenate(crops, axis=None)  # flattens every crop without a Python-level reshape
    if flat.size != offs[-1]:
        raise ValueError(f"{len(crops)} crops hold {flat.size} pixels, their windows {int(offs[-1])}")
    return (flat.view(np.uint8) if flat.dtype == bool else flat.astype(np.uint8, copy=False)), offs


@njit(cache=True)
def _gather_packed(flat, offs, sel):  # pragma: no cover - numba
    """Packed crops ``sel`` (in that order) of a packed buffer: ``(flat uint8, offsets int64 (len(sel) + 1,))``."""
    out_offs = np.zeros(sel.shape[0] + 1, dtype=np.int64)
    for t in range(sel.shape[0]):
        out_offs[t + 1] = out_offs[t] + offs[sel[t] + 1] - offs[sel[t]]
    out = np.empty(out_offs[-1], dtype=np.uint8)
    for t in range(sel.shape[0]):
        out[out_offs[t] : out_offs[t + 1]] = flat[offs[sel[t]] : offs[sel[t] + 1]]
    return out, out_offs


@njit(cache=True)
def _segment_sums(flat, offs):  # pragma: no cover - numba
    """int64 ``(N,)``: the sum of each segment ``flat[offs[i]:offs[i + 1]]`` of a uint8 buffer (vectorized)."""
    n = offs.shape[0] - 1
    out = np.zeros(n, dtype=np.int64)
    for i in range(n):
        s = 0
        for p in range(offs[i], offs[i + 1]):
            s += np.int64(flat[p])
        out[i] = s
    return out


def packed_areas(flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Pixel count of every crop of a packed buffer (0/1 values), int64 ``(N,)`` for ``N + 1`` offsets."""
    return _segment_sums(np.ascontiguousarray(flat).view(np.uint8), np.asarray(offsets, dtype=np.int64))


def gather_packed(flat: np.ndarray, offsets: np.ndarray, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The crops ``sel`` (indices, in that order) of a packed buffer as a new packed buffer.

    Args:
        flat: uint8 buffer; crop i is ``flat[offsets[i]:offsets[i + 1]]``.
        offsets: int64 ``(N + 1,)``.
        sel: int indices into the N crops (repeats allowed).

    Returns:
        ``(flat uint8, offsets int64 (len(sel) + 1,))``.
    """
    sel = np.asarray(sel, dtype=np.int64).reshape(-1)
    return _gather_packed(np.ascontiguousarray(flat).view(np.uint8), np.asarray(offsets, dtype=np.int64), sel)


class PackedCrops(Sequence[np.ndarray]):
    """The crops of an :class:`InstanceMasks` built from one packed buffer: an immutable sequence of bool views.

    Crop i is made (a reshaped view, no copy) when it is read, so building masks of many instances costs nothing
    per instance, and :meth:`InstanceMasks.packed` returns the buffer itself. The views are writable and share
    the buffer, so writing into a crop changes the packed data consistently; the sequence itself cannot be
    changed (assign a new list to ``InstanceMasks.crops`` instead).
    """

    def __init__(
        self, data: np.ndarray, offsets: np.ndarray, heights: np.ndarray, widths: np.ndarray
    ) -> None:
        self.data = data  # uint8 (B,) 0/1
        self.offsets = offsets  # int64 (N + 1,)
        self._view = data.view(bool)
        self._o = offsets[:-1].tolist()
        self._h = heights.tolist()
        self._w = widths.tolist()

    def __reduce__(self):
        # pickle the buffer once (not also its bool view), so unpickled crops share it again
        return (PackedCrops, (self.data, self.offsets, np.array(self._h), np.array(self._w)))

    def __len__(self) -> int:
        return len(self._o)

    def _crop(self, i: int) -> np.ndarray:
        o, h, w = self._o[i], self._h[i], self._w[i]
        return self._view[o : o + h * w].reshape(h, w)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self._crop(k) for k in range(*i.indices(len(self)))]
        return self._crop(range(len(self))[i])  # negative indices, IndexError as a list

    def __iter__(self) -> Iterator[np.ndarray]:
        view = self._view
        for o, h, w in zip(self._o, self._h, self._w):
            yield view[o : o + h * w].reshape(h, w)

    def __repr__(self) -> str:
        return f"PackedCrops({len(self)} crops, {self.data.size} pixels)"


@dataclass
class InstanceMasks:
    """N binary masks of an (H, W) image stored as crops.

    Attributes:
        height: image height H.
        width: image width W.
        boxes: int32 array (N, 4) of crop windows ``(x0, y0, x1, y1)``, x1/y1 exclusive, inside the image.
        crops: N bool arrays, crop i of shape ``(y1 - y0, x1 - x0)``: a list, or a :class:`PackedCrops` for masks
            built from one packed buffer (:meth:`from_packed` and the decoders).
    """

    height: int
    width: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.int32))
    crops: Sequence[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.height = int(self.height)
        self.width = int(self.width)
        self.boxes = np.asarray(self.boxes, dtype=np.int32).reshape(-1, 4)
        self.crops = [np.asarray(c, dtype=bool) for c in self.crops]
        if len(self.crops) != len(self.boxes):
            raise ValueError(f"InstanceMasks: {len(self.boxes)} boxes but {len(self.crops)} crops")
        self._check_windows()
        for i, (c, bb) in enumerate(zip(self.crops, self.boxes)):
            if c.shape != (bb[3] - bb[1], bb[2] - bb[0]):
                raise ValueError(
                    f"InstanceMasks: crop {i} has shape {c.shape}, window {bb.tolist()} needs "
                    f"{(int(bb[3] - bb[1]), int(bb[2] - bb[0]))}"
                )

    def _check_windows(self) -> None:
        """Raises ValueError unless every crop window lies inside the image with x1 >= x0 and y1 >= y0."""
        if len(self.boxes):
            b = self.boxes
            if (
                (b[:, 0] < 0).any()
                or (b[:, 1] < 0).any()
                or (b[:, 2] > self.width).any()
                or (b[:, 3] > self.height).any()
            ):
                i = int(
                    np.flatnonzero(
                        (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > self.width) | (b[:, 3] > self.height)
                    )[0]
                )
                raise ValueError(
                    f"InstanceMasks: crop window {i} {b[i].tolist()} lies outside the "
                    f"{self.height}x{self.width} image"
                )
            if (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
                i = int(np.flatnonzero((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1]))[0])
                raise ValueError(f"InstanceMasks: crop window {i} {b[i].tolist()} has x1 < x0 or y1 < y0")

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.crops)

    @classmethod
    def empty(cls, height: int, width: int) -> InstanceMasks:
        """No instances."""
        return cls(height, width)

    def packed(self) -> tuple[np.ndarray, np.ndarray]:
        """All crops in one row-major buffer, ``(flat uint8 0/1, offsets int64 (N + 1,))`` (:func:`pack_crops`).

        Masks built packed (:meth:`from_packed`, the decoders, :meth:`subset` of packed masks) return their buffer
        without copying; others concatenate their crops on every call.
        """
        crops = self.crops
        if isinstance(crops, PackedCrops):
            return crops.data, crops.offsets
        return pack_crops(crops, self.boxes)

    def areas(self) -> np.ndarray:
        """Pixel counts, int64 (N,)."""
        return packed_areas(*self.packed())

    def tight_boxes(self) -> np.ndarray:
        """Tight integer boxes of the masks, int32 (N, 4) ``(x0, y0, x1, y1)`` exclusive; empty masks give 0s."""
        out = np.zeros((len(self), 4), dtype=np.int32)
        for i, (c, b) in enumerate(zip(self.crops, self.boxes)):
            ys = np.flatnonzero(c.any(axis=1))
            if ys.size == 0:
                continue
            xs = np.flatnonzero(c.any(axis=0))
            out[i] = (b[0] + xs[0], b[1] + ys[0], b[0] + xs[-1] + 1, b[1] + ys[-1] + 1)
        return out

    def tighten(self) -> InstanceMasks:
        """Same masks with every crop cut to its tight box (empty masks become 0x0 crops at the origin)."""
        tb = self.tight_boxes()
        crops = []
        for c, b, t in zip(self.crops, self.boxes, tb):
            crops.append(
                c[t[1] - b[1] : t[3] - b[1], t[0] - b[0] : t[2] - b[0]] if t[2] > t[0] else c[:0, :0]
            )
        return InstanceMasks(self.height, self.width, tb, crops)

    def subset(self, idx: Sequence[int] | np.ndarray) -> InstanceMasks:
        """The instances at ``idx`` (indices or a bool mask), in that order."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        if isinstance(self.crops, PackedCrops):  # stays packed: one gather instead of N crop objects
            idx = np.asarray(idx, dtype=np.int64).reshape(-1)
            flat, offs = gather_packed(self.crops.data, self.crops.offsets, idx)
            return InstanceMasks.from_packed(
                self.height, self.width, self.boxes[idx], flat, offs, validate=False
            )
        return InstanceMasks(self.height, self.width, self.boxes[idx], [self.crops[int(i)] for i in idx])

    def mask(self, i: int) -> np.ndarray:
        """Full-frame bool mask (H, W) of instance i."""
        out = np.zeros((self.height, self.width), dtype=bool)
        x0, y0, x1, y1 = self.boxes[i]
        out[y0:y1, x0:x1] = self.crops[i]
        return out

    def to_full(self) -> np.ndarray:
        """All masks as a full-frame bool array (N, H, W) (memory heavy: for small N or tests)."""
        out = np.zeros((len(self), self.height, self.width), dtype=bool)
        for i, (c, (x0, y0, x1, y1)) in enumerate(zip(self.crops, self.boxes)):
            out[i, y0:y1, x0:x1] = c
        return out

    def to_label_image(self, order: Sequence[int] | None = None) -> np.ndarray:
        """Paints the instances into an int32 label image (H, W), instance i as label i + 1.

        Later instances in ``order`` (default: index order) overwrite earlier ones where they overlap.
        """
        out = np.zeros((self.height, self.width), dtype=np.int32)
        for i in range(len(self)) if order is None else order:
            x0, y0, x1, y1 = self.boxes[i]
            view = out[y0:y1, x0:x1]
            view[self.crops[i]] = i + 1
        return out

    # ------------------------------------------------------------- constructors
    @classmethod
    def from_packed(
        cls,
        height: int,
        width: int,
        boxes: np.ndarray,
        flat: np.ndarray,
        offsets: np.ndarray,
        validate: bool = True,
    ) -> InstanceMasks:
        """From crops packed in one row-major buffer (as :meth:`packed` returns them).

        The crops are a :class:`PackedCrops` of bool views of ``flat`` (no copy, made when read), and
        :meth:`packed` returns the buffer itself, so packing stages (metric, RLE, overlap removal) do not
        concatenate the crops again.

        Args:
            height: image height H.
            width: image width W.
            boxes: ``(N, 4)`` integer crop windows ``(x0, y0, x1, y1)``, inside the image.
            flat: uint8 (0/1) or bool buffer; crop i is ``flat[offsets[i]:offsets[i + 1]]``.
            offsets: ``(N + 1,)`` offsets; ``offsets[i + 1] - offsets[i]`` must be the size of window i.
            validate: check the windows, offsets and 0/1 values (callers that built the buffer from valid
                masks themselves may skip it).

        Raises:
            ValueError: on windows outside the image, offsets that do not match the windows, or values other
                than 0/1 (when ``validate``).
        """
        b = np.asarray(boxes, dtype=np.int32).reshape(-1, 4)
        offs = np.asarray(offsets, dtype=np.int64).reshape(-1)
        flat = np.ascontiguousarray(flat).reshape(-1)
        data = flat.view(np.uint8) if flat.dtype == bool else flat.astype(np.uint8, copy=False)
        hs = (b[:, 3] - b[:, 1]).astype(np.int64)
        ws = (b[:, 2] - b[:, 0]).astype(np.int64)
        out = cls.__new__(cls)
        out.height, out.width, out.boxes = int(height), int(width), b
        if validate:
            if offs.shape != (len(b) + 1,) or (np.diff(offs) != hs * ws).any() or offs[-1] > data.size:
                raise ValueError("InstanceMasks.from_packed: offsets do not match the crop windows")
            if data.size and data.max() > 1:
                raise ValueError("InstanceMasks.from_packed: the buffer must hold 0/1 values")
            out._check_windows()
        out.crops = PackedCrops(data, offs, hs, ws)
        return out

    @classmethod
    def from_crops_packed(
        cls, height: int, width: int, boxes: np.ndarray, crops: Sequence[np.ndarray]
    ) -> InstanceMasks:
        """Like the constructor (same checks), but stored packed: one buffer, crops as :class:`PackedCrops`.

        For masks that are read many times (decoded ground truth, loaded predictions): every later
        :meth:`packed` (metric, RLE, overlap removal, voting) is free.
        """
        checked = cls(height, width, boxes, crops)
        flat, offs = pack_crops(checked.crops, checked.boxes)
        return cls.from_packed(checked.height, checked.width, checked.boxes, flat, offs, validate=False)

    @classmethod
    def from_full(cls, masks: np.ndarray) -> InstanceMasks:
        """From full-frame masks.

        Args:
            masks: bool array (N, H, W).
        """
        masks = np.asarray(masks)
        if masks.ndim != 3:
            raise ValueError(f"from_full: masks must be (N, H, W), got shape {masks.shape}")
        n, h, w = masks.shape
        boxes = np.zeros((n, 4), dtype=np.int32)
        crops = []
        rows = masks.any(axis=2)
        cols = masks.any(axis=1)
        for i in range(n):
            ys = np.flatnonzero(rows[i])
            if ys.size == 0:
                crops.append(np.zeros((0, 0), dtype=bool))
                continue
            xs = np.flatnonzero(cols[i])
            x0, y0, x1, y1 = xs[0], ys[0], xs[-1] + 1, ys[-1] + 1
            boxes[i] = (x0, y0, x1, y1)
            crops.append(masks[i, y0:y1, x0:x1].astype(bool))
        return cls(h, w, boxes, crops)

    @classmethod
    def from_label_image(cls, labels: np.ndarray) -> tuple[InstanceMasks, np.ndarray]:
        """From a label image (0 background).

        Returns:
            ``(instances, label_values)``: one instance per label > 0, in increasing label order.
        """
        labels = np.asarray(labels)
        values = np.unique(labels)
        values = values[values > 0]
        h, w = labels.shape
        boxes = np.zeros((len(values), 4), dtype=np.int32)
        crops = []
        try:
            import cv2  # noqa: PLC0415

            have_cv2 = True
        except ImportError:  # pragma: no cover
            have_cv2 = False
        for i, v in enumerate(values):
            m = labels == v
            if have_cv2:
                x, y, bw, bh = cv2.boundingRect(m.astype(np.uint8))
                x0, y0, x1, y1 = x, y, x + bw, y + bh
            else:  # pragma: no cover
                ys, xs = np.nonzero(m)
                x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            boxes[i] = (x0, y0, x1, y1)
            crops.append(m[y0:y1, x0:x1])
        return cls(h, w, boxes, crops), values

    @classmethod
    def from_kaggle_rles(cls, rles: Sequence[str], height: int, width: int) -> InstanceMasks:
        """From Kaggle RLE strings (validated), decoding each directly into its tight crop."""
        runs = []
        for i, rle in enumerate(rles):
            try:
                runs.append(kaggle_rle_runs(rle, height, width))
            except ValueError as e:
                raise ValueError(f"instance {i}: {e}") from None
        return cls.from_runs(runs, height, width)

    @classmethod
    def from_runs(
        cls, runs: Sequence[tuple[np.ndarray, np.ndarray]], height: int, width: int
    ) -> InstanceMasks:
        """From parsed row-major runs ``(starts, lengths)`` (0-based starts), each decoded into its tight crop."""
        boxes = np.zeros((len(runs), 4), dtype=np.int32)
        crops = []
        for i, (starts, lengths) in enumerate(runs):
            box, crop = runs_to_crop(starts, starts + lengths, width)
            boxes[i] = box
            crops.append(crop)
        return cls.from_crops_packed(height, width, boxes, crops)

    @classmethod
    def from_coco_rles(cls, rles: Sequence[dict]) -> InstanceMasks:
        """From COCO RLE dicts (compressed or uncompressed counts); all must share one size."""
        if not rles:
            raise ValueError("from_coco_rles needs at least one RLE to know the image size; use empty()")
        h, w = (int(v) for v in rles[0]["size"])
        boxes = np.zeros((len(rles), 4), dtype=np.int32)
        crops = []
        for i, rle in enumerate(rles):
            if [int(v) for v in rle["size"]] != [h, w]:
                raise ValueError(f"COCO RLE {i} has size {rle['size']}, expected {[h, w]}")
            try:
                boxes[i], crop = coco_rle_to_crop(rle)
            except ValueError as e:
                raise ValueError(f"COCO RLE {i}: {e}") from None
            crops.append(crop)
        return cls.from_crops_packed(h, w, boxes, crops)

    # --------------------------------------------------------------- encoders
    def kaggle_runs(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Row-major runs of instance i in image coordinates: ``(starts, ends)`` 0-based, ends exclusive."""
        x0, y0, _, _ = self.boxes[i]
        c = self.crops[i]
        if c.size == 0:
            z = np.zeros(0, dtype=np.int64)
            return z, z
        h, w = c.shape
        padded = np.zeros((h, w + 2), dtype=np.int8)
        padded[:, 1:-1] = c
        d = np.diff(padded, axis=1)
        r_s, c_s = np.nonzero(d == 1)
        r_e, c_e = np.nonzero(d == -1)
        base = (np.int64(y0) + r_s.astype(np.int64)) * self.width + x0
        starts = base + c_s
        ends = (np.int64(y0) + r_e.astype(np.int64)) * self.width + x0 + c_e
        if starts.size > 1:  # merge runs that continue across a row end (only when a crop spans the width)
            join = starts[1:] == ends[:-1]
            if join.any():
                keep_start = np.concatenate([[True], ~join])
                keep_end = np.concatenate([~join, [True]])
                starts, ends = starts[keep_start], ends[keep_end]
        return starts, ends

    def to_kaggle_rles(self) -> list[str]:
        """Kaggle RLE string of every instance (see :mod:`celldata.rle` for the format; one numba pass)."""
        if len(self) == 0:
            return []
        flat, offs = self.packed()
        return kaggle_rles_from_crops(flat, offs, self.boxes, self.width)

    def to_coco_rles(self) -> list[dict]:
        """Compressed COCO RLE dict of every instance (JSON-ready)."""
        return [coco_rle_encode(self.mask(i)) for i in range(len(self))]
