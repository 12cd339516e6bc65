"""Competition metric of the Sartorius Cell Instance Segmentation challenge, plus COCO mAP via pycocotools and the
foreground (semantic) IoU of the stack (:func:`foreground_counts`, used by the mmseg metric, the compression
report and the recipe's semantic score).

Metric (per image):

* IoU between every true object and every predicted object, computed per instance from the cropped masks of
  :class:`~celldata.instances.InstanceMasks` (truth masks may overlap; they are never flattened to a label map).
* For each threshold ``t`` in ``0.50, 0.55, ..., 0.95`` a (truth, prediction) pair is a hit when ``IoU > t``
  (strict). Hits are matched one-to-one (maximum bipartite matching; with non-overlapping masks and ``t >= 0.5``
  every object has at most one hit anyway). ``TP(t)`` = matched pairs, ``FP(t)`` = unmatched predictions,
  ``FN(t)`` = unmatched truths, and ``precision(t) = TP / (TP + FP + FN)``.
* Image score = mean of ``precision(t)`` over the 10 thresholds.

Empty cases (documented convention, applied at every threshold):

* no truth and no prediction -> precision 1.0 (image score 1.0);
* truth but no prediction -> 0.0 (all false negatives);
* prediction but no truth -> 0.0 (all false positives).

Dataset score = mean of the image scores (macro over images, not a micro average of TP/FP/FN counts).
Per-class score = mean of the image scores of the images of one cell type; per-threshold score = mean over images
of ``precision(t)``.

Speed: masks are packed once into one flat ``uint8`` buffer per image (:class:`PackedMasks`); candidate pairs are
pre-filtered by bounding-box overlap, and intersections are counted only over the overlap window of the two boxes
(numba kernel; numba is a required dependency).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

from celldata import CLASSES
from celldata.instances import InstanceMasks, packed_areas

THRESHOLDS: np.ndarray = np.round(np.arange(0.5, 1.0, 0.05), 2)
"""float64[10]: IoU thresholds 0.50, 0.55, ..., 0.95 of the competition metric."""

THRESHOLD_KEYS: tuple[str, ...] = tuple(f"{t:.2f}" for t in THRESHOLDS)
"""Keys of :attr:`ScoreReport.per_threshold`: ``"0.50"`` ... ``"0.95"``."""

__all__ = [
    "THRESHOLDS",
    "THRESHOLD_KEYS",
    "PackedMasks",
    "ScoreReport",
    "pack_masks",
    "iou_matrix",
    "iou_pairs",
    "precisions_from_iou",
    "precisions_from_pairs",
    "image_precisions",
    "image_score",
    "evaluate",
    "ForegroundCounts",
    "foreground_counts",
    "coco_map",
]


# ----------------------------------------------------------------------------------------------------------------
# Packing and IoU
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackedMasks:
    """Instance masks of one image packed for fast pairwise intersection counting.

    Attributes:
        height: Image height H.
        width: Image width W.
        boxes: int64[N, 4] crop boxes (x0, y0, x1, y1), x1/y1 exclusive.
        flat: uint8[sum of crop sizes] all crops raveled row-major and concatenated.
        offsets: int64[N] start of crop ``i`` in ``flat``.
        areas: int64[N] foreground pixels per instance.
    """

    height: int
    width: int
    boxes: np.ndarray
    flat: np.ndarray
    offsets: np.ndarray
    areas: np.ndarray

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def pack_masks(masks: InstanceMasks | PackedMasks) -> PackedMasks:
    """Pack the crops of ``masks`` into one flat buffer (no-op for an already packed object).

    Args:
        masks: N instance masks of one HxW image.

    Returns:
        The packed masks; reuse it when the same masks are scored many times (e.g. the truth during tuning).

    Raises:
        ValueError: If a crop's shape does not match its box.
    """
    if isinstance(masks, PackedMasks):
        return masks
    n = len(masks)
    boxes = np.asarray(masks.boxes, dtype=np.int64).reshape(n, 4)
    flat_all, offs = masks.packed()  # no copy for masks built packed (fused results, decoded truth)
    return PackedMasks(
        int(masks.height), int(masks.width), boxes, flat_all, offs[:-1], packed_areas(flat_all, offs)
    )


@numba.njit(cache=True, nogil=True)
def _candidate_pairs(boxes_t, boxes_p):  # pragma: no cover - jit
    """Index pairs ``(i, j)`` (int64[K] each, row-major order) whose boxes overlap by at least one pixel.

    The predictions are sorted by left edge, so each true box scans only those whose left edge lies in
    ``[tx0 - widest prediction, tx1)`` instead of all of them.
    """
    nt = boxes_t.shape[0]
    np_ = boxes_p.shape[0]
    by_x = np.argsort(boxes_p[:, 0], kind="mergesort")
    bs = np.empty((np_, 4), dtype=np.int64)
    max_w = 0
    for r in range(np_):
        for c in range(4):
            bs[r, c] = boxes_p[by_x[r], c]
        max_w = max(max_w, bs[r, 2] - bs[r, 0])
    lo = np.searchsorted(bs[:, 0], boxes_t[:, 0] - max_w, side="left")
    hi = np.searchsorted(bs[:, 0], boxes_t[:, 2], side="left")
    cap = 0
    for i in range(nt):
        cap += hi[i] - lo[i]
    pi = np.empty(cap, dtype=np.int64)
    pj = np.empty(cap, dtype=np.int64)
    k = 0
    for i in range(nt):
        tx0 = boxes_t[i, 0]
        ty0 = boxes_t[i, 1]
        tx1 = boxes_t[i, 2]
        ty1 = boxes_t[i, 3]
        k0 = k
        for r in range(lo[i], hi[i]):
            if min(tx1, bs[r, 2]) > max(tx0, bs[r, 0]) and min(ty1, bs[r, 3]) > max(ty0, bs[r, 1]):
                pi[k] = i
                pj[k] = by_x[r]
                k += 1
        if k - k0 > 1:
            pj[k0:k].sort()
    return pi[:k].copy(), pj[:k].copy()


@numba.njit(cache=True, nogil=True)
def _pair_intersections(flat_t, off_t, boxes_t, flat_p, off_p, boxes_p, pi, pj):  # pragma: no cover - jit
    """int64[K] intersection pixel counts of the pairs ``(pi[k], pj[k])``, counted over their box overlap."""
    out = np.zeros(pi.size, dtype=np.int64)
    for k in range(pi.size):
        i = pi[k]
        j = pj[k]
        tx0 = boxes_t[i, 0]
        ty0 = boxes_t[i, 1]
        tx1 = boxes_t[i, 2]
        ty1 = boxes_t[i, 3]
        px0 = boxes_p[j, 0]
        py0 = boxes_p[j, 1]
        px1 = boxes_p[j, 2]
        py1 = boxes_p[j, 3]
        x0 = max(tx0, px0)
        y0 = max(ty0, py0)
        x1 = min(tx1, px1)
        y1 = min(ty1, py1)
        if x1 <= x0 or y1 <= y0:
            continue
        wt = tx1 - tx0
        wp = px1 - px0
        s = 0
        for y in range(y0, y1):
            rt = off_t[i] + (y - ty0) * wt - tx0
            rp = off_p[j] + (y - py0) * wp - px0
            for x in range(x0, x1):
                s += flat_t[rt + x] & flat_p[rp + x]
        out[k] = s
    return out


def iou_pairs(
    truth: InstanceMasks | PackedMasks, pred: InstanceMasks | PackedMasks
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """IoU of every (true, predicted) pair whose boxes overlap, in sparse form.

    Args:
        truth: Nt true instance masks (may overlap each other).
        pred: Np predicted instance masks of the same HxW image.

    Returns:
        ``(ti, pj, iou, Nt, Np)``: int64[K] truth and prediction indices, float64[K] their IoU (pairs whose boxes
        do not overlap have IoU 0 and are left out), and the two instance counts.

    Raises:
        ValueError: If the two images' sizes differ.
    """
    t = pack_masks(truth)
    p = pack_masks(pred)
    if (t.height, t.width) != (p.height, p.width):
        raise ValueError(f"image size mismatch: truth {t.height}x{t.width}, prediction {p.height}x{p.width}")
    pi, pj = _candidate_pairs(t.boxes, p.boxes)
    if pi.size == 0:
        return pi, pj, np.zeros(0, dtype=np.float64), len(t), len(p)
    inter = _pair_intersections(t.flat, t.offsets, t.boxes, p.flat, p.offsets, p.boxes, pi, pj)
    union = t.areas[pi] + p.areas[pj] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return pi, pj, iou, len(t), len(p)


def iou_matrix(truth: InstanceMasks | PackedMasks, pred: InstanceMasks | PackedMasks) -> np.ndarray:
    """IoU between every true and every predicted instance of one image.

    Args:
        truth: Nt true instance masks (may overlap each other).
        pred: Np predicted instance masks of the same HxW image.

    Returns:
        float64[Nt, Np] IoU matrix (0 where boxes do not overlap; 0 for two empty masks).

    Raises:
        ValueError: If the two images' sizes differ.
    """
    ti, pj, iou, nt, np_ = iou_pairs(truth, pred)
    out = np.zeros((nt, np_), dtype=np.float64)
    out[ti, pj] = iou
    return out


# ----------------------------------------------------------------------------------------------------------------
# Matching and scores
# ----------------------------------------------------------------------------------------------------------------


def _max_matching(rows: np.ndarray, cols: np.ndarray) -> int:
    """Size of a maximum one-to-one matching of the hit pairs ``(rows[k], cols[k])``."""
    if rows.size == 0:
        return 0
    # A pair whose truth and prediction have no other hit is its own match; the rest (objects with several
    # hits, e.g. overlapping truths) form closed components matched with the Hungarian algorithm.
    conflict = (np.bincount(rows)[rows] > 1) | (np.bincount(cols)[cols] > 1)
    n_simple = int(rows.size - conflict.sum())
    if not conflict.any():
        return n_simple
    from scipy.optimize import linear_sum_assignment

    ur, ri = np.unique(rows[conflict], return_inverse=True)
    uc, ci = np.unique(cols[conflict], return_inverse=True)
    hits = np.zeros((ur.size, uc.size), dtype=np.float64)
    hits[ri, ci] = 1.0
    r, c = linear_sum_assignment(hits, maximize=True)
    return n_simple + int(hits[r, c].sum())


def precisions_from_iou(iou: np.ndarray, thresholds: Sequence[float] | np.ndarray = THRESHOLDS) -> np.ndarray:
    """Per-threshold precision ``TP / (TP + FP + FN)`` of one image from its IoU matrix.

    Args:
        iou: float64[Nt, Np] IoU matrix.
        thresholds: IoU thresholds (a hit is ``IoU > t``).

    Returns:
        float64[T] precision per threshold, with the documented empty-case convention.
    """
    iou = np.asarray(iou, dtype=np.float64)
    nt, np_ = iou.shape
    thr = np.asarray(thresholds, dtype=np.float64)
    if nt == 0 and np_ == 0:
        return np.ones(thr.size, dtype=np.float64)
    out = np.zeros(thr.size, dtype=np.float64)
    if nt == 0 or np_ == 0:
        return out
    ti, pj = np.nonzero(iou > float(thr.min()))  # sparse: at most a few hits per object
    return precisions_from_pairs(ti, pj, iou[ti, pj], nt, np_, thr)


def precisions_from_pairs(
    ti: np.ndarray,
    pj: np.ndarray,
    vals: np.ndarray,
    n_true: int,
    n_pred: int,
    thresholds: Sequence[float] | np.ndarray = THRESHOLDS,
) -> np.ndarray:
    """Per-threshold precision from the sparse (truth, prediction, IoU) pairs above the lowest threshold.

    Args:
        ti: int[K] truth index of each pair.
        pj: int[K] prediction index of each pair.
        vals: float64[K] IoU of each pair (pairs with IoU <= min(thresholds) may be omitted).
        n_true: Number of true objects Nt.
        n_pred: Number of predicted objects Np.
        thresholds: IoU thresholds (a hit is ``IoU > t``).

    Returns:
        float64[T] precision per threshold (same conventions as :func:`precisions_from_iou`).
    """
    thr = np.asarray(thresholds, dtype=np.float64)
    if n_true == 0 and n_pred == 0:
        return np.ones(thr.size, dtype=np.float64)
    out = np.zeros(thr.size, dtype=np.float64)
    if n_true == 0 or n_pred == 0:
        return out
    for k, t in enumerate(thr):
        sel = vals > t
        tp = _max_matching(ti[sel], pj[sel])
        out[k] = tp / (n_true + n_pred - tp)
    return out


def image_precisions(truth: InstanceMasks | PackedMasks, pred: InstanceMasks | PackedMasks) -> np.ndarray:
    """Per-threshold precision of one image.

    Args:
        truth: True instance masks.
        pred: Predicted instance masks.

    Returns:
        float64[10] precision at IoU thresholds 0.50..0.95.
    """
    ti, pj, iou, nt, np_ = iou_pairs(truth, pred)
    hit = iou > THRESHOLDS.min()
    return precisions_from_pairs(ti[hit], pj[hit], iou[hit], nt, np_)


def image_score(truth: InstanceMasks | PackedMasks, pred: InstanceMasks | PackedMasks) -> float:
    """Competition score of one image: mean over thresholds 0.50..0.95 of ``TP / (TP + FP + FN)``.

    Args:
        truth: True instance masks.
        pred: Predicted instance masks.

    Returns:
        Score in [0, 1] (1.0 when both are empty).
    """
    return float(image_precisions(truth, pred).mean())


@dataclass
class ScoreReport:
    """Competition score of a data set with per-class, per-threshold and per-image breakdowns.

    Attributes:
        score: Mean image score over all images.
        per_class: Cell type -> mean image score of its images (empty when cell types are unknown).
        per_threshold: ``"0.50"``..``"0.95"`` -> mean over images of ``precision(t)``.
        per_image: Image id -> image score.
        per_class_n_images: Cell type -> number of images.
        n_images: Number of scored images.
        n_true: Total true instances.
        n_pred: Total predicted instances.
    """

    score: float
    per_class: dict[str, float]
    per_threshold: dict[str, float]
    per_image: dict[str, float]
    per_class_n_images: dict[str, int] = field(default_factory=dict)
    n_images: int = 0
    n_true: int = 0
    n_pred: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of all fields."""
        return {
            "score": self.score,
            "n_images": self.n_images,
            "n_true": self.n_true,
            "n_pred": self.n_pred,
            "per_class": dict(self.per_class),
            "per_class_n_images": dict(self.per_class_n_images),
            "per_threshold": dict(self.per_threshold),
            "per_image": dict(self.per_image),
        }

    def format_table(self) -> str:
        """Short human-readable table: overall, per class, per threshold."""
        lines = [
            f"score  {self.score:.4f}  ({self.n_images} images, {self.n_true} true, {self.n_pred} predicted)"
        ]
        if self.per_class:
            lines.append("per class:")
            for name, value in self.per_class.items():
                lines.append(f"  {name:<8} {value:.4f}  ({self.per_class_n_images.get(name, 0)} images)")
        lines.append("per IoU threshold:")
        lines.append("  " + "  ".join(f"{k}" for k in self.per_threshold))
        lines.append("  " + "  ".join(f"{v:.3f}" for v in self.per_threshold.values()))
        return "\n".join(lines)


def _ordered_classes(names: Iterable[str]) -> list[str]:
    """Known classes in CLASSES order first, then any other names sorted."""
    names = set(names)
    return [c for c in CLASSES if c in names] + sorted(names - set(CLASSES))


def evaluate(
    truth: Mapping[str, InstanceMasks | PackedMasks],
    pred: Mapping[str, InstanceMasks | PackedMasks],
    cell_types: Mapping[str, str] | None = None,
    progress: bool = False,
) -> ScoreReport:
    """Competition score of a data set.

    Every image of ``truth`` is scored; an image missing from ``pred`` counts as "no prediction".

    Args:
        truth: Image id -> true instance masks.
        pred: Image id -> predicted instance masks.
        cell_types: Optional image id -> cell type, for the per-class breakdown.
        progress: Show a tqdm progress bar.

    Returns:
        The score report.

    Raises:
        ValueError: If ``pred`` holds image ids absent from ``truth`` (named in the message), or no truth images.
    """
    unknown = sorted(set(pred) - set(truth))
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise ValueError(f"{len(unknown)} predicted image id(s) not in the ground truth: {shown}")
    if not truth:
        raise ValueError("no ground-truth images to evaluate")
    ids = list(truth)
    it: Iterable[str] = ids
    if progress:
        from tqdm import tqdm

        it = tqdm(ids, desc="scoring", unit="img")
    precisions = np.zeros((len(ids), THRESHOLDS.size), dtype=np.float64)
    n_true = n_pred = 0
    for k, image_id in enumerate(it):
        t = truth[image_id]
        p = pred.get(image_id)
        n_true += len(t)
        if p is None:
            precisions[k] = 1.0 if len(t) == 0 else 0.0
            continue
        n_pred += len(p)
        precisions[k] = image_precisions(t, p)
    scores = precisions.mean(axis=1)
    per_image = {image_id: float(s) for image_id, s in zip(ids, scores)}
    per_threshold = {key: float(v) for key, v in zip(THRESHOLD_KEYS, precisions.mean(axis=0))}
    per_class: dict[str, float] = {}
    per_class_n: dict[str, int] = {}
    if cell_types:
        groups: dict[str, list[float]] = {}
        for image_id, s in per_image.items():
            ct = cell_types.get(image_id)
            if ct is not None:
                groups.setdefault(ct, []).append(s)
        for name in _ordered_classes(groups):
            per_class[name] = float(np.mean(groups[name]))
            per_class_n[name] = len(groups[name])
    return ScoreReport(
        score=float(scores.mean()),
        per_class=per_class,
        per_threshold=per_threshold,
        per_image=per_image,
        per_class_n_images=per_class_n,
        n_images=len(ids),
        n_true=n_true,
        n_pred=n_pred,
    )


# ----------------------------------------------------------------------------------------------------------------
# Foreground (semantic) IoU
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ForegroundCounts:
    """Pixel confusion counts of a foreground (any cell vs background) mask; they add up over images.

    Every ratio with a zero denominator is 1.0 (empty prediction and empty truth agree perfectly).

    Attributes:
        tp: Foreground in both prediction and truth (the intersection).
        fp: Foreground in the prediction only.
        fn: Foreground in the truth only.
        tn: Background in both.
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: ForegroundCounts) -> ForegroundCounts:
        return ForegroundCounts(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn
        )

    @staticmethod
    def _ratio(a: int, b: int) -> float:
        return a / b if b else 1.0

    @property
    def union(self) -> int:
        """Foreground pixels of prediction or truth."""
        return self.tp + self.fp + self.fn

    @property
    def iou(self) -> float:
        """Foreground IoU (Jaccard) ``tp / (tp + fp + fn)``."""
        return self._ratio(self.tp, self.union)

    @property
    def dice(self) -> float:
        """Dice (= F1) ``2 tp / (2 tp + fp + fn)``."""
        return self._ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def accuracy(self) -> float:
        """Pixel accuracy over the counted pixels."""
        return self._ratio(self.tp + self.tn, self.tp + self.tn + self.fp + self.fn)

    @property
    def recall(self) -> float:
        """``tp / (tp + fn)``."""
        return self._ratio(self.tp, self.tp + self.fn)

    @property
    def precision(self) -> float:
        """``tp / (tp + fp)``."""
        return self._ratio(self.tp, self.tp + self.fp)


def foreground_counts(
    pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None
) -> ForegroundCounts:
    """Confusion counts of a predicted foreground mask against the true one (the one foreground IoU of the stack).

    Args:
        pred: ``(H, W)`` predicted foreground (bool, or nonzero = foreground).
        truth: ``(H, W)`` true foreground (bool, or nonzero = foreground).
        valid: ``(H, W)`` bool, pixels to count (``None``: all).

    Returns:
        The counts; ``.iou`` is the image's foreground IoU, and summed counts give the pooled IoU of a set.

    Raises:
        ValueError: on shape mismatch.
    """
    p = np.asarray(pred).astype(bool, copy=False)
    t = np.asarray(truth).astype(bool, copy=False)
    if p.shape != t.shape or (valid is not None and np.shape(valid) != p.shape):
        shapes = [p.shape, t.shape] + ([] if valid is None else [np.shape(valid)])
        raise ValueError(f"foreground masks of different shapes: {shapes}")
    if valid is not None:
        v = np.asarray(valid).astype(bool, copy=False)
        p, t = p & v, t & v
        n = int(v.sum())
    else:
        n = p.size
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(t)) - tp
    return ForegroundCounts(tp, fp, fn, n - tp - fp - fn)


# ----------------------------------------------------------------------------------------------------------------
# COCO mAP (pycocotools)
# ----------------------------------------------------------------------------------------------------------------


def _tight_boxes_xywh(masks: InstanceMasks) -> np.ndarray:
    """float64[N, 4] tight xywh boxes of the foreground of each instance (zeros for empty masks)."""
    out = np.zeros((len(masks), 4), dtype=np.float64)
    for i, crop in enumerate(masks.crops):
        crop = np.asarray(crop, dtype=bool)
        ys = np.flatnonzero(crop.any(axis=1))
        xs = np.flatnonzero(crop.any(axis=0))
        if ys.size == 0:
            continue
        x0, y0 = int(masks.boxes[i][0]), int(masks.boxes[i][1])
        out[i] = (x0 + xs[0], y0 + ys[0], xs[-1] - xs[0] + 1, ys[-1] - ys[0] + 1)
    return out


def coco_map(
    truth: Mapping[str, InstanceMasks],
    pred: Mapping[str, InstanceMasks],
    scores: Mapping[str, np.ndarray],
    truth_labels: Mapping[str, np.ndarray] | None = None,
    pred_labels: Mapping[str, np.ndarray] | None = None,
    pred_boxes: Mapping[str, np.ndarray] | None = None,
    iou_types: Sequence[str] = ("bbox", "segm"),
    max_dets: int = 1000,
) -> dict[str, float]:
    """COCO mAP (bbox and/or segm) through pycocotools' ``COCOeval`` (not re-implemented).

    Class-agnostic (a single "cell" category) unless both ``truth_labels`` and ``pred_labels`` are given.

    Args:
        truth: Image id -> true instance masks.
        pred: Image id -> predicted instance masks (ids must be in ``truth``; missing ids = no detections).
        scores: Image id -> float[Np] confidence of each prediction.
        truth_labels: Optional image id -> int[Nt] 0-based labels into CLASSES.
        pred_labels: Optional image id -> int[Np] 0-based labels.
        pred_boxes: Optional image id -> float[Np, 4] xyxy pixel boxes for the bbox mAP (default: tight boxes
            of the predicted masks).
        iou_types: Subset of ``("bbox", "segm")``.
        max_dets: Maximum detections per image (cell images hold hundreds of objects; COCO's default 100 is
            too small).

    Returns:
        ``{"<type>_mAP", "<type>_mAP_50", "<type>_mAP_75"}`` for each requested type (-1.0 where undefined).

    Note:
        pycocotools matches detections in a Python loop (thresholds x detections x truths per image): expect
        about a second per dense image (~700 cells). Use :func:`evaluate` for the competition metric.

    Raises:
        ValueError: On unknown image ids, length mismatches or an unknown iou type.
    """
    for it in iou_types:
        if it not in ("bbox", "segm"):
            raise ValueError(f"unknown iou type {it!r}; expected 'bbox' or 'segm'")
    unknown = sorted(set(pred) - set(truth))
    if unknown:
        raise ValueError(f"predicted image id(s) not in the ground truth: {', '.join(unknown[:5])}")
    per_class = truth_labels is not None and pred_labels is not None
    categories = (
        [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]
        if per_class
        else [{"id": 1, "name": "cell"}]
    )
    images, anns, dets = [], [], []
    for num, (image_id, t) in enumerate(truth.items(), start=1):
        images.append({"id": num, "height": int(t.height), "width": int(t.width), "file_name": image_id})
        anns += _coco_truth_anns(
            image_id, num, t, truth_labels[image_id] if per_class else None, len(anns) + 1
        )
        p = pred.get(image_id)
        if p is None or len(p) == 0:
            continue
        dets += _coco_detections(
            image_id,
            num,
            p,
            scores[image_id],
            pred_labels[image_id] if per_class else None,
            pred_boxes.get(image_id) if pred_boxes is not None else None,
        )
    return _coco_eval(
        {"images": images, "annotations": anns, "categories": categories}, dets, iou_types, max_dets
    )


def _coco_truth_anns(
    image_id: str, num: int, t: InstanceMasks, labels: np.ndarray | None, first_id: int
) -> list[dict]:
    """COCO annotations of one image's true instances (ids from ``first_id``; ``labels`` None: class 0)."""
    rles = t.to_coco_rles()
    boxes = _tight_boxes_xywh(t)
    areas = t.areas()
    labels = np.asarray(labels) if labels is not None else np.zeros(len(t), dtype=np.int64)
    if len(labels) != len(t):
        raise ValueError(f"image {image_id}: {len(labels)} truth labels for {len(t)} instances")
    return [
        {
            "id": first_id + i,
            "image_id": num,
            "category_id": int(labels[i]) + 1,
            "segmentation": rles[i],
            "area": float(areas[i]),
            "bbox": boxes[i].tolist(),
            "iscrowd": 0,
        }
        for i in range(len(t))
    ]


def _coco_detections(
    image_id: str,
    num: int,
    p: InstanceMasks,
    scores: np.ndarray,
    labels: np.ndarray | None,
    boxes: np.ndarray | None,
) -> list[dict]:
    """COCO results of one image's predictions (boxes: xyxy ``(Np, 4)``, None: the masks' tight boxes)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (len(p),):
        raise ValueError(f"image {image_id}: {s.shape} scores for {len(p)} predicted instances")
    plabels = np.asarray(labels) if labels is not None else np.zeros(len(p), dtype=np.int64)
    if len(plabels) != len(p):
        raise ValueError(f"image {image_id}: {len(plabels)} predicted labels for {len(p)} instances")
    if boxes is not None:
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(b) != len(p):
            raise ValueError(f"image {image_id}: {len(b)} boxes for {len(p)} predicted instances")
        pboxes = np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)
    else:
        pboxes = _tight_boxes_xywh(p)
    prles = p.to_coco_rles()
    return [
        {
            "image_id": num,
            "category_id": int(plabels[i]) + 1,
            "segmentation": prles[i],
            "bbox": pboxes[i].tolist(),
            "score": float(s[i]),
        }
        for i in range(len(p))
    ]


def _coco_eval(dataset: dict, dets: list[dict], iou_types: Sequence[str], max_dets: int) -> dict[str, float]:
    """``COCOeval`` of the detections against the ground-truth dataset, per iou type (all areas)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        for iou_type in iou_types:
            if not dets:
                out.update({f"{iou_type}_mAP": 0.0, f"{iou_type}_mAP_50": 0.0, f"{iou_type}_mAP_75": 0.0})
                continue
            drop = "segmentation" if iou_type == "bbox" else "bbox"
            dt = gt.loadRes([{k: v for k, v in d.items() if k != drop} for d in dets])
            ev = COCOeval(gt, dt, iou_type)
            ev.params.maxDets = [1, 10, int(max_dets)]
            # Only the "all" area range is reported; dropping small/medium/large makes COCOeval's Python
            # matching loop 4x cheaper (it is O(thresholds x detections x truths) per image).
            ev.params.areaRng = [[0.0, 1e10]]
            ev.params.areaRngLbl = ["all"]
            ev.evaluate()
            ev.accumulate()
            prec = ev.eval["precision"]  # [T, R, K, A, M]; area index 0 = all, maxDets index -1
            out[f"{iou_type}_mAP"] = _valid_mean(prec[:, :, :, 0, -1])
            out[f"{iou_type}_mAP_50"] = _valid_mean(prec[0, :, :, 0, -1])
            out[f"{iou_type}_mAP_75"] = _valid_mean(prec[5, :, :, 0, -1])
    return out


def _valid_mean(p: np.ndarray) -> float:
    """Mean of the entries > -1 of a COCOeval precision array (-1.0 when none)."""
    p = p[p > -1]
    return float(p.mean()) if p.size else -1.0
