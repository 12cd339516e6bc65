"""Mask fusion of several models' instance predictions of one image: WBF clusters + weighted pixel voting.

Pipeline of :func:`fuse_image` (all work happens inside crop windows, never on per-instance full frames):

1. **Boxes.** Weighted Boxes Fusion (`ensemble.boxes.weighted_boxes_fusion`) of the models' normalized boxes
   gives fused boxes, scores and labels and, per fused box, its *cluster*: the input detections fused into it.
2. **Pixel voting.** Inside a cluster, every member that carries a mask votes with weight
   ``a = model weight * member score``; members of box-only models (``masks is None``) do not vote. A member's
   vote ``M_i(p)`` is its mask probability when its model provides soft masks (``ImagePredictions.mask_probs``,
   e.g. Mask R-CNN's mask head sigmoid) and its binary mask (p in {0, 1}) otherwise, so the vote averages
   probabilities: ``vote = sum a_i p_i / sum a_i``. When
   ``semantic_weight > 0`` and some model provides a semantic foreground map, the map votes too, only inside the
   fused box (pixel window ``floor(x1), floor(y1), ceil(x2), ceil(y2)``), with weight
   ``lambda = semantic_weight * mean(a over all cluster members)`` (so ``semantic_weight = 1`` gives it the say of
   an average member, independently of the score scale). With several semantic maps their model-weighted mean
   ``S = sum_m w_m S_m / sum_m w_m`` is used. The vote of pixel p is::

       vote(p) = (sum_voters a_i * M_i(p) + lambda * S(p) * [p in fused box]) / (sum_voters a_i + lambda)

   i.e. normalized by the total weight of the cluster's own voters: a detection found by one model only keeps
   that model's mask (how much an incomplete cluster is trusted is the job of the fused *score*, see
   ``conf_type``), and a cluster of three agreeing models gives the same mask as one of them. Pixel p belongs to
   the fused mask when ``vote(p) >= vote_thr``. A cluster without voters (box-only members and no semantic map)
   yields no instance.
3. **Rerank** (optional): ``score *= mean(vote(p) for p in the fused mask)``.
4. **Filters:** per-class ``score_thr``, per-class ``min_area`` (pixels of the fused mask).
5. **Overlap removal** (:func:`remove_overlaps`): in descending score order every instance keeps only pixels not
   taken by a higher-scoring kept instance; instances losing more than ``max_lost_frac`` of their pixels are
   dropped. ``min_area`` is applied again to what remains. The result has no overlapping pixels.

:func:`fuse_image_reference` computes the same thing the straightforward way (pure-Python WBF, full-frame
voting and overlap removal); tests and ``benchmarks/bench_ensemble.py`` check that both agree exactly (the numba
kernels add votes in the same order and reproduce NumPy's pairwise summation for the rerank mean, so scores
are bit-identical, not merely close). Speed: ~40 ms for 3 models x 700 instances on one CPU core.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from celldata.instances import InstanceMasks

from . import CLASSES
from .boxes import (
    CONF_TYPES,
    denormalize_boxes,
    normalize_boxes,
    weighted_boxes_fusion,
    weighted_boxes_fusion_reference,
)
from .predictions import ImagePredictions

__all__ = [
    "FusionParams",
    "fuse_image",
    "fuse_image_reference",
    "remove_overlaps",
    "remove_overlaps_reference",
]


MIN_FUSED_SCORE: float = float(np.finfo(np.float32).tiny)
"""Detections scoring below this (i.e. zero) never enter a fusion, whatever ``skip_box_thr`` says."""


@dataclass
class FusionParams:
    """Parameters of :func:`fuse_image` (see the module docstring for the exact rules).

    Attributes:
        iou_thr: WBF box match threshold (IoU strictly above joins a cluster).
        skip_box_thr: detections with a score below this are ignored.
        conf_type: WBF fused score rule: 'avg', 'max', 'box_and_model_avg' or 'absent_model_aware_avg'.
        allows_overflow: WBF 'avg' scores may exceed 1 for clusters with more members than models.
        vote_thr: a pixel is foreground when its weighted vote (a fraction of the voters' total weight) is
            ``>= vote_thr``; in ``(0, 1]``.
        semantic_weight: weight of the semantic foreground map as one more voter inside the fused box, relative
            to the mean member weight; 0 disables it.
        rerank: multiply each fused score by the mean vote inside its mask.
        score_thr: per-class minimum final score (class name -> threshold; missing classes: no threshold).
        min_area: per-class minimum mask area in pixels (missing classes: 1, i.e. only empty masks dropped).
        max_lost_frac: overlap removal drops an instance that loses more than this fraction of its pixels to
            higher-scoring instances; in ``[0, 1]`` (1 keeps every non-empty remainder).
    """

    iou_thr: float = 0.55
    skip_box_thr: float = 0.0
    conf_type: str = "avg"
    allows_overflow: bool = False
    vote_thr: float = 0.5
    semantic_weight: float = 0.0
    rerank: bool = False
    score_thr: dict[str, float] = field(default_factory=dict)
    min_area: dict[str, int] = field(default_factory=dict)
    max_lost_frac: float = 0.5

    def __post_init__(self) -> None:
        if self.conf_type not in CONF_TYPES:
            raise ValueError(f"FusionParams.conf_type: {self.conf_type!r} is not one of {CONF_TYPES}")
        if not 0.0 <= self.iou_thr <= 1.0:
            raise ValueError(f"FusionParams.iou_thr must be in [0, 1], got {self.iou_thr}")
        if not 0.0 < self.vote_thr <= 1.0:
            raise ValueError(f"FusionParams.vote_thr must be in (0, 1], got {self.vote_thr}")
        if not (np.isfinite(self.semantic_weight) and self.semantic_weight >= 0):
            raise ValueError(f"FusionParams.semantic_weight must be >= 0, got {self.semantic_weight}")
        if not 0.0 <= self.max_lost_frac <= 1.0:
            raise ValueError(f"FusionParams.max_lost_frac must be in [0, 1], got {self.max_lost_frac}")
        for name, table in (("score_thr", self.score_thr), ("min_area", self.min_area)):
            unknown = set(table) - set(CLASSES)
            if unknown:
                raise ValueError(
                    f"FusionParams.{name}: unknown class(es) {sorted(unknown)}; classes are {CLASSES}"
                )
        self.score_thr = {k: float(v) for k, v in self.score_thr.items()}
        self.min_area = {k: int(v) for k, v in self.min_area.items()}

    def score_thr_array(self) -> np.ndarray:
        """Per-label score thresholds, float64 ``(len(CLASSES),)`` (``-inf`` where unset)."""
        return np.array([self.score_thr.get(c, -np.inf) for c in CLASSES], dtype=np.float64)

    def min_area_array(self) -> np.ndarray:
        """Per-label minimum areas, int64 ``(len(CLASSES),)`` (at least 1)."""
        return np.array([max(1, self.min_area.get(c, 1)) for c in CLASSES], dtype=np.int64)


# ----------------------------------------------------------------------------------------------------------------
# shared preparation
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class _Prepared:
    image_id: str
    height: int
    width: int
    weights: np.ndarray  # (M,) float64
    boxes_norm: list[np.ndarray]
    scores: list[np.ndarray]  # float64 per model
    labels: list[np.ndarray]
    sem_maps: np.ndarray | None  # (S, H, W) float32 semantic maps that vote, or None
    sem_weights: np.ndarray  # (S,) float64 their model weights
    sem_total: float  # sum of sem_weights (Python left-to-right sum)

    def semantic_full(self) -> np.ndarray | None:
        """Full-frame weighted mean ``sum_s w_s S_s / sum_s w_s`` (float64 ``(H, W)``), or None."""
        if self.sem_maps is None:
            return None
        out = np.zeros((self.height, self.width), dtype=np.float64)
        for wm, sm in zip(self.sem_weights, self.sem_maps):
            out += wm * sm.astype(np.float64)
        out /= self.sem_total
        return out


def _prepare(preds: Sequence[ImagePredictions], weights: Sequence[float], params: FusionParams) -> _Prepared:
    if len(preds) == 0:
        raise ValueError("fuse_image needs the predictions of at least one model")
    if len(weights) != len(preds):
        raise ValueError(f"{len(preds)} models but {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if not np.isfinite(w).all() or (w <= 0).any():
        raise ValueError(f"model weights must be finite and positive, got {w.tolist()}")
    first = preds[0]
    for m, p in enumerate(preds):
        if (p.image_id, p.height, p.width) != (first.image_id, first.height, first.width):
            raise ValueError(
                f"model {m} predicts image {p.image_id} ({p.height}x{p.width}), model 0 image "
                f"{first.image_id} ({first.height}x{first.width})"
            )
    h, w_img = first.height, first.width
    limits = np.array([w_img, h, w_img, h], dtype=np.float64)
    boxes_norm = [normalize_boxes(np.clip(p.boxes.astype(np.float64), 0, limits), h, w_img) for p in preds]
    sem_maps, sem_w, sem_total = None, np.zeros(0), 0.0
    if params.semantic_weight > 0:
        maps = [(w[m], p.semantic) for m, p in enumerate(preds) if p.semantic is not None]
        if maps:
            sem_w = np.array([wm for wm, _ in maps], dtype=np.float64)
            sem_total = sum(wm for wm, _ in maps)
            sem_maps = maps[0][1][None] if len(maps) == 1 else np.stack([sm for _, sm in maps])
            sem_maps = np.ascontiguousarray(sem_maps, dtype=np.float32)
    return _Prepared(
        first.image_id,
        h,
        w_img,
        w,
        boxes_norm,
        [p.scores.astype(np.float64) for p in preds],
        [p.labels for p in preds],
        sem_maps,
        sem_w,
        float(sem_total),
    )


class _Clock:
    """Adds elapsed seconds per stage to an optional dict (no-op when it is None)."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.t = time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.timings is not None:
            now = time.perf_counter()
            self.timings[stage] = self.timings.get(stage, 0.0) + now - self.t
            self.t = now


def _box_window(box_px: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """Integer pixel window ``(x0, y0, x1, y1)`` (exclusive) covering a float pixel box, inside the image."""
    x0 = min(max(int(np.floor(box_px[0])), 0), width)
    y0 = min(max(int(np.floor(box_px[1])), 0), height)
    x1 = min(max(int(np.ceil(box_px[2])), x0), width)
    y1 = min(max(int(np.ceil(box_px[3])), y0), height)
    return x0, y0, x1, y1


def _box_windows(boxes_px: np.ndarray, height: int, width: int) -> np.ndarray:
    """Vectorized `_box_window` of ``(K, 4)`` float pixel boxes: int64 ``(K, 4)``."""
    lim = np.array([width, height, width, height])
    lo = np.clip(np.floor(boxes_px[:, :2]).astype(np.int64), 0, lim[:2])
    hi = np.clip(np.ceil(boxes_px[:, 2:]).astype(np.int64), lo, lim[2:])
    return np.concatenate([lo, hi], axis=1)


def _fuse_boxes(
    prep: _Prepared, params: FusionParams, wbf: Callable[..., tuple]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Runs a WBF implementation on the prepared boxes with the fusion parameters.

    Args:
        prep: the prepared inputs of one image.
        params: fusion parameters (``iou_thr``, ``skip_box_thr``, ``conf_type``, ``allows_overflow``).
        wbf: `weighted_boxes_fusion` or `weighted_boxes_fusion_reference`.

    Returns:
        ``(boxes_px, scores, labels, clusters)``: fused boxes ``(K, 4)`` float64 xyxy in pixels, scores ``(K,)``,
        labels ``(K,)`` int64 and the ``(model, box index)`` members of each fused box (descending score).
    """
    fb, fs, fl, clusters = wbf(
        prep.boxes_norm,
        prep.scores,
        prep.labels,
        weights=prep.weights,
        iou_thr=params.iou_thr,
        # a zero-score detection has no weight in any fused average (a cluster of them would fuse to 0/0 = NaN)
        skip_box_thr=max(params.skip_box_thr, MIN_FUSED_SCORE),
        conf_type=params.conf_type,
        allows_overflow=params.allows_overflow,
    )
    return denormalize_boxes(fb, prep.height, prep.width), fs, fl.astype(np.int64), clusters


def _empty_result(prep: _Prepared) -> ImagePredictions:
    return ImagePredictions(
        prep.image_id,
        prep.height,
        prep.width,
        np.zeros((0, 4), np.float32),
        np.zeros(0, np.float32),
        np.zeros(0, np.int64),
        InstanceMasks.empty(prep.height, prep.width),
        None,
    )


def _finish(
    prep: _Prepared,
    boxes_px: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    masks: InstanceMasks | Callable[[np.ndarray], InstanceMasks],
) -> ImagePredictions:
    """Sorts by score (descending, stable) and packs the fused result.

    ``masks`` is either the instances in input order or a function building them for a given order.
    """
    order = np.argsort(-scores, kind="stable")
    masks_sorted = masks(order) if callable(masks) else masks.subset(order)
    limits = np.array([prep.width, prep.height, prep.width, prep.height], dtype=np.float64)
    return ImagePredictions(
        prep.image_id,
        prep.height,
        prep.width,
        np.clip(boxes_px[order], 0, limits).astype(np.float32),
        scores[order].astype(np.float32),
        labels[order].astype(np.int64),
        masks_sorted,
        None,
    )


# ----------------------------------------------------------------------------------------------------------------
# numba kernels
# ----------------------------------------------------------------------------------------------------------------
@njit(cache=True)
def _pairwise_sum(a, lo, n):  # pragma: no cover - numba compiled
    """``sum(a[lo:lo + n])`` with NumPy's pairwise summation (bit-identical to ``np.add.reduce``)."""
    if n < 8:
        res = -0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    if n <= 128:
        r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
        r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
        m = n - (n % 8)
        i = 8
        while i < m:
            r0 += a[lo + i]
            r1 += a[lo + i + 1]
            r2 += a[lo + i + 2]
            r3 += a[lo + i + 3]
            r4 += a[lo + i + 4]
            r5 += a[lo + i + 5]
            r6 += a[lo + i + 6]
            r7 += a[lo + i + 7]
            i += 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            res += a[lo + i]
            i += 1
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return _pairwise_sum(a, lo, n2) + _pairwise_sum(a, lo + n2, n - n2)


@njit(cache=True)
def _np_mean(a, lo, n):  # pragma: no cover - numba compiled
    """``np.mean(a[lo:lo + n])`` bit for bit (NumPy sums contiguous float64 in 8192-element buffers)."""
    res = -0.0
    i = 0
    while i < n:
        m = min(8192, n - i)
        res += _pairwise_sum(a, lo + i, m)
        i += m
    return res / n


@njit(cache=True)
def _vote_kernel(
    flat, offs, mboxes, cl_ptr, cl_g, cl_a, fwin, sem, sem_w, sem_total, use_sem, sw, vote_thr
):  # pragma: no cover
    """Weighted pixel voting of every cluster inside its union window.

    Args:
        flat: uint8 (binary masks) or float32 (mask probabilities) concatenation of every member's vote crop
            (row-major), member ``g`` at ``offs[g]``.
        offs: int64 ``(G + 1,)`` crop offsets.
        mboxes: int64 ``(G, 4)`` crop windows ``(x0, y0, x1, y1)``.
        cl_ptr: int64 ``(K + 1,)``: members of cluster k are entries ``cl_ptr[k]:cl_ptr[k + 1]``.
        cl_g: int64 member crop index ``g``, or -1 for a member without a mask (does not vote).
        cl_a: float64 member weight ``model weight * score``.
        fwin: int64 ``(K, 4)`` pixel window of each fused box (semantic voter).
        sem: float32 ``(S, H, W)`` semantic foreground maps (ignored unless ``use_sem``); the voter is their
            weighted mean ``sum_s sem_w[s] * sem[s] / sem_total``, computed per pixel as the reference does.
        sem_w: float64 ``(S,)`` weights of the maps.
        sem_total: their sum.
        use_sem: whether the semantic map votes.
        sw: semantic weight.
        vote_thr: foreground when ``vote >= vote_thr``.

    Returns:
        ``(valid (K,) bool, uwin (K, 4) int64, fg_off (K + 1,) int64, fg uint8, area (K,) int64,
        mean_vote (K,) float64)``: union windows, the foreground crops (row-major in ``fg``), their areas and the
        mean vote over foreground pixels.
    """
    k_n = cl_ptr.shape[0] - 1
    uwin = np.zeros((k_n, 4), dtype=np.int64)
    valid = np.zeros(k_n, dtype=np.bool_)
    fg_off = np.zeros(k_n + 1, dtype=np.int64)
    for k in range(k_n):
        x0 = 1 << 30
        y0 = 1 << 30
        x1 = -1
        y1 = -1
        for j in range(cl_ptr[k], cl_ptr[k + 1]):
            g = cl_g[j]
            if g < 0 or offs[g + 1] == offs[g]:
                continue
            x0 = min(x0, mboxes[g, 0])
            y0 = min(y0, mboxes[g, 1])
            x1 = max(x1, mboxes[g, 2])
            y1 = max(y1, mboxes[g, 3])
        if use_sem and fwin[k, 2] > fwin[k, 0] and fwin[k, 3] > fwin[k, 1]:
            x0 = min(x0, fwin[k, 0])
            y0 = min(y0, fwin[k, 1])
            x1 = max(x1, fwin[k, 2])
            y1 = max(y1, fwin[k, 3])
        size = 0
        if x1 > x0 and y1 > y0:
            valid[k] = True
            uwin[k, 0] = x0
            uwin[k, 1] = y0
            uwin[k, 2] = x1
            uwin[k, 3] = y1
            size = (x1 - x0) * (y1 - y0)
        fg_off[k + 1] = fg_off[k] + size
    fg = np.zeros(fg_off[k_n], dtype=np.uint8)
    area = np.zeros(k_n, dtype=np.int64)
    mean_vote = np.zeros(k_n, dtype=np.float64)
    for k in range(k_n):
        if not valid[k]:
            continue
        ux0 = uwin[k, 0]
        uy0 = uwin[k, 1]
        uw = uwin[k, 2] - ux0
        size = fg_off[k + 1] - fg_off[k]
        num = np.zeros(size, dtype=np.float64)
        den = 0.0
        for j in range(cl_ptr[k], cl_ptr[k + 1]):
            g = cl_g[j]
            if g < 0:
                continue
            a = cl_a[j]
            den += a
            bx0 = mboxes[g, 0]
            by0 = mboxes[g, 1]
            bw = mboxes[g, 2] - bx0
            bh = mboxes[g, 3] - by0
            base = offs[g]
            for yy in range(bh):
                row = (by0 + yy - uy0) * uw + (bx0 - ux0)
                src = base + yy * bw
                for xx in range(bw):
                    num[row + xx] += a * np.float64(flat[src + xx])
        if use_sem:
            n_mem = cl_ptr[k + 1] - cl_ptr[k]
            lam = sw * _np_mean(cl_a, cl_ptr[k], n_mem)
            for y in range(fwin[k, 1], fwin[k, 3]):
                row = (y - uy0) * uw - ux0
                for x in range(fwin[k, 0], fwin[k, 2]):
                    sv = 0.0
                    for si in range(sem.shape[0]):
                        sv += sem_w[si] * np.float64(sem[si, y, x])
                    num[row + x] += lam * (sv / sem_total)
            den += lam
        if not den > 0:
            valid[k] = False
            continue
        votes = np.empty(size, dtype=np.float64)
        cnt = 0
        o = fg_off[k]
        for p in range(size):
            v = num[p] / den
            if v >= vote_thr:
                fg[o + p] = 1
                votes[cnt] = v
                cnt += 1
        area[k] = cnt
        if cnt > 0:
            mean_vote[k] = _np_mean(votes, 0, cnt)
    return valid, uwin, fg_off, fg, area, mean_vote


@njit(cache=True)
def _overlap_kernel(flat, offs, boxes, order, max_lost_frac, height, width):  # pragma: no cover
    """Greedy overlap removal over packed crops (see :func:`remove_overlaps`).

    Args:
        flat: uint8 concatenated crops; crop i at ``offs[i]`` with window ``boxes[i]``.
        offs: int64 ``(N + 1,)``.
        boxes: int64 ``(N, 4)`` crop windows.
        order: int64 visiting order (descending score).
        max_lost_frac: largest tolerated fraction of lost pixels.
        height: image height.
        width: image width.

    Returns:
        ``(keep (N,) bool, remain uint8 like flat, tight (N, 4) int64, left (N,) int64)``: kept flags, the kept
        pixels of each crop, the tight window of the kept pixels in image coordinates, and their count.
    """
    n = offs.shape[0] - 1
    taken = np.zeros((height, width), dtype=np.uint8)
    keep = np.zeros(n, dtype=np.bool_)
    remain = np.zeros(flat.shape[0], dtype=np.uint8)
    tight = np.zeros((n, 4), dtype=np.int64)
    kept_area = np.zeros(n, dtype=np.int64)
    for t in range(order.shape[0]):
        i = order[t]
        x0 = boxes[i, 0]
        y0 = boxes[i, 1]
        bw = boxes[i, 2] - x0
        bh = boxes[i, 3] - y0
        base = offs[i]
        area = 0
        left = 0
        for yy in range(bh):
            for xx in range(bw):
                if flat[base + yy * bw + xx]:
                    area += 1
                    if taken[y0 + yy, x0 + xx] == 0:
                        left += 1
        if area == 0 or left == 0 or (area - left) > max_lost_frac * area:
            continue
        keep[i] = True
        kept_area[i] = left
        tx0 = 1 << 30
        ty0 = 1 << 30
        tx1 = -1
        ty1 = -1
        for yy in range(bh):
            for xx in range(bw):
                if flat[base + yy * bw + xx] and taken[y0 + yy, x0 + xx] == 0:
                    taken[y0 + yy, x0 + xx] = 1
                    remain[base + yy * bw + xx] = 1
                    tx0 = min(tx0, xx)
                    ty0 = min(ty0, yy)
                    tx1 = max(tx1, xx + 1)
                    ty1 = max(ty1, yy + 1)
        tight[i, 0] = x0 + tx0
        tight[i, 1] = y0 + ty0
        tight[i, 2] = x0 + tx1
        tight[i, 3] = y0 + ty1
    return keep, remain, tight, kept_area


def _pack_votes(pred: ImagePredictions) -> tuple[np.ndarray, np.ndarray]:
    """A model's per-member votes packed row-major as float32: its mask probabilities, else its binary masks."""
    crops = pred.mask_probs if pred.mask_probs is not None else pred.masks.crops
    offs = np.zeros(len(crops) + 1, dtype=np.int64)
    np.cumsum([c.size for c in crops], out=offs[1:])
    if offs[-1] == 0:
        return np.zeros(0, dtype=np.float32), offs
    return np.concatenate([c.reshape(-1) for c in crops]).astype(np.float32, copy=False), offs


def _member_vote(pred: ImagePredictions, i: int) -> np.ndarray:
    """Full-frame vote of detection i of a model with masks: float32 probability or bool mask ``(H, W)``."""
    if pred.mask_probs is None:
        return pred.masks.mask(i)
    out = np.zeros((pred.height, pred.width), dtype=np.float32)
    x0, y0, x1, y1 = pred.masks.boxes[i]
    out[y0:y1, x0:x1] = pred.mask_probs[i]
    return out


def _pack_crops(masks: InstanceMasks) -> tuple[np.ndarray, np.ndarray]:
    """Concatenates the crops of ``masks`` row-major: ``(flat uint8, offsets int64 (N + 1,))``."""
    sizes = np.fromiter((c.size for c in masks.crops), dtype=np.int64, count=len(masks))
    offs = np.zeros(len(masks) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offs[1:])
    if len(masks) == 0 or offs[-1] == 0:
        return np.zeros(0, dtype=np.uint8), offs
    flat = np.concatenate([c.reshape(-1) for c in masks.crops]).view(np.uint8)
    return flat, offs


def _remove_overlaps_packed(
    flat: np.ndarray,
    offs: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    max_lost_frac: float,
    height: int,
    width: int,
    candidates: np.ndarray | None = None,
) -> tuple[np.ndarray, Callable[[np.ndarray], list[np.ndarray]], np.ndarray, np.ndarray]:
    """Overlap removal over packed crops; only ``candidates`` (default: all) can be kept.

    Returns:
        ``(idx, crops_of, tight, kept_area)``: kept indices (ascending), a function giving the tight kept crops of
        some of them, and per index the tight window and the kept pixel count.
    """
    cand = np.arange(len(scores)) if candidates is None else np.asarray(candidates, dtype=np.int64)
    order = cand[np.argsort(-scores[cand], kind="stable")].astype(np.int64)
    keep, remain, tight, kept_area = _overlap_kernel(
        flat, offs, boxes.astype(np.int64), order, float(max_lost_frac), height, width
    )

    def crops_of(sel: np.ndarray) -> list[np.ndarray]:
        out = []
        for i in sel.tolist():
            x0, y0, x1, y1 = boxes[i].tolist()
            tx0, ty0, tx1, ty1 = tight[i].tolist()
            full = remain[offs[i] : offs[i + 1]].view(bool).reshape(y1 - y0, x1 - x0)
            out.append(full[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0])
        return out

    return np.flatnonzero(keep).astype(np.int64), crops_of, tight, kept_area


def remove_overlaps(
    instances: InstanceMasks, scores: np.ndarray, max_lost_frac: float = 0.5
) -> tuple[InstanceMasks, np.ndarray]:
    """Makes instance masks non-overlapping: pixels go to the higher-scoring instance.

    Instances are visited in descending score order (ties: lower index first); each keeps the pixels not yet
    taken by a kept instance. An instance that is empty, or loses more than ``max_lost_frac`` of its pixels, is
    dropped (its pixels stay free for lower-scoring ones).

    Args:
        instances: N masks of one image.
        scores: ``(N,)`` scores.
        max_lost_frac: largest tolerated fraction of lost pixels, in ``[0, 1]``.

    Returns:
        ``(kept, keep_idx)``: the trimmed kept masks (tight crops) in increasing index order, and their int64
        indices into ``instances``.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(instances):
        raise ValueError(f"remove_overlaps: {len(instances)} masks but {len(scores)} scores")
    if not 0.0 <= max_lost_frac <= 1.0:
        raise ValueError(f"remove_overlaps: max_lost_frac must be in [0, 1], got {max_lost_frac}")
    flat, offs = _pack_crops(instances)
    idx, crops_of, tight, _ = _remove_overlaps_packed(
        flat, offs, instances.boxes, scores, max_lost_frac, instances.height, instances.width
    )
    return InstanceMasks(instances.height, instances.width, tight[idx].astype(np.int32), crops_of(idx)), idx


def fuse_image(
    preds: Sequence[ImagePredictions],
    weights: Sequence[float],
    params: FusionParams | None = None,
    *,
    timings: dict[str, float] | None = None,
) -> ImagePredictions:
    """Fuses several models' predictions of one image into non-overlapping instances (module docstring).

    Args:
        preds: one :class:`ImagePredictions` per model, all of the same image.
        weights: positive weight per model.
        params: fusion parameters (defaults: ``FusionParams()``).
        timings: if given, seconds spent per stage are added to its keys ``"wbf"``, ``"voting"`` (voting,
            rerank, filters) and ``"overlaps"`` (overlap removal and packing).

    Returns:
        The fused :class:`ImagePredictions` (same image id and size): fused WBF boxes in pixels, final scores
        (descending), labels, masks as tight-crop :class:`InstanceMasks`, ``semantic=None``.

    Raises:
        ValueError: on mismatched images, weights, or invalid parameters.
    """
    clock = _Clock(timings)
    params = FusionParams() if params is None else params
    prep = _prepare(preds, weights, params)
    boxes_px, fs, labels, clusters = _fuse_boxes(prep, params, weighted_boxes_fusion)
    clock.lap("wbf")
    if len(fs) == 0:
        return _empty_result(prep)
    h, w_img = prep.height, prep.width
    score_thr = params.score_thr_array()
    min_area = params.min_area_array()
    # pack every model's mask crops once; member (m, i) has crop index g = first[m] + i (-1: no mask); with soft
    # masks anywhere every vote is packed as float32 probabilities (binary masks as 0/1), else as uint8 bits
    soft = any(p.mask_probs is not None for p in preds if p.masks is not None)
    pack = _pack_votes if soft else (lambda p: _pack_crops(p.masks))
    packs = [(pack(p), p.masks.boxes) for p in preds if p.masks is not None]
    first = np.full(len(preds), -1, dtype=np.int64)
    start = 0
    for m, p in enumerate(preds):
        if p.masks is not None:
            first[m] = start
            start += len(p.masks)
    if packs:
        base = np.cumsum([0] + [int(pk[0][1][-1]) for pk in packs[:-1]])
        flat = np.concatenate([pk[0][0] for pk in packs])
        offs = np.concatenate([pk[0][1][:-1] + b for pk, b in zip(packs, base)] + [[int(flat.size)]])
        mboxes = np.concatenate([pk[1] for pk in packs]).astype(np.int64).reshape(-1, 4)
    else:
        flat, offs, mboxes = np.zeros(0, np.uint8), np.zeros(1, np.int64), np.zeros((0, 4), np.int64)
    sizes = np.fromiter((len(c) for c in clusters), dtype=np.int64, count=len(clusters))
    cl_ptr = np.zeros(len(clusters) + 1, dtype=np.int64)
    np.cumsum(sizes, out=cl_ptr[1:])
    members = np.concatenate(clusters)
    mdl, bidx = members[:, 0], members[:, 1]
    cl_g = np.where(first[mdl] >= 0, first[mdl] + bidx, -1)
    score_of = np.concatenate(prep.scores)
    score_first = np.cumsum([0] + [len(s) for s in prep.scores[:-1]])
    cl_a = prep.weights[mdl] * score_of[score_first[mdl] + bidx]
    fwin = _box_windows(boxes_px, h, w_img)
    use_sem = prep.sem_maps is not None
    sem = prep.sem_maps if use_sem else np.zeros((1, 1, 1), dtype=np.float32)
    valid, uwin, fg_off, fg, area, mean_vote = _vote_kernel(
        flat,
        offs,
        mboxes,
        cl_ptr,
        cl_g,
        cl_a,
        fwin,
        sem,
        prep.sem_weights,
        prep.sem_total,
        use_sem,
        float(params.semantic_weight),
        float(params.vote_thr),
    )
    scores = fs * mean_vote if params.rerank else fs.copy()
    ok = valid & (area >= min_area[labels]) & ~(scores < score_thr[labels])
    keep_idx = np.flatnonzero(ok)
    clock.lap("voting")
    if len(keep_idx) == 0:
        return _empty_result(prep)
    idx, crops_of, tight, kept_area = _remove_overlaps_packed(
        fg, fg_off, uwin, scores, params.max_lost_frac, h, w_img, keep_idx
    )
    idx = idx[kept_area[idx] >= min_area[labels[idx]]]

    def build(order: np.ndarray) -> InstanceMasks:
        sel = idx[order]
        return InstanceMasks(h, w_img, tight[sel].astype(np.int32), crops_of(sel))

    out = _finish(prep, boxes_px[idx], scores[idx], labels[idx], build)
    clock.lap("overlaps")
    return out


# ----------------------------------------------------------------------------------------------------------------
# straightforward reference (full frames)
# ----------------------------------------------------------------------------------------------------------------
def remove_overlaps_reference(
    masks: Sequence[np.ndarray], scores: np.ndarray, max_lost_frac: float = 0.5
) -> tuple[list[np.ndarray], np.ndarray]:
    """Full-frame version of :func:`remove_overlaps`: ``masks`` N bool ``(H, W)`` frames.

    Returns:
        ``(kept_masks, keep)``: the trimmed full-frame masks and their indices, in increasing index order.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if len(masks) == 0:
        return [], np.zeros(0, dtype=np.int64)
    taken = np.zeros(masks[0].shape, dtype=bool)
    kept = {}
    for i in np.argsort(-scores, kind="stable"):
        area = int(masks[i].sum())
        remain = masks[i] & ~taken
        left = int(remain.sum())
        if area == 0 or left == 0 or (area - left) > max_lost_frac * area:
            continue
        taken |= remain
        kept[int(i)] = remain
    keep = np.array(sorted(kept), dtype=np.int64)
    return [kept[int(i)] for i in keep], keep


def _instances_from_frames(frames: Sequence[np.ndarray], height: int, width: int) -> InstanceMasks:
    """Tight-crop :class:`InstanceMasks` from full-frame bool masks ``(H, W)``, one frame at a time."""
    boxes, crops = [], []
    for m in frames:
        one = InstanceMasks.from_full(m[None])
        boxes.append(one.boxes[0])
        crops.append(one.crops[0])
    return InstanceMasks(height, width, np.array(boxes, dtype=np.int32).reshape(-1, 4), crops)


def fuse_image_reference(
    preds: Sequence[ImagePredictions],
    weights: Sequence[float],
    params: FusionParams | None = None,
    *,
    timings: dict[str, float] | None = None,
) -> ImagePredictions:
    """Straightforward full-frame implementation of :func:`fuse_image` (slow; for tests and benchmarks).

    Uses the pure-Python `weighted_boxes_fusion_reference`, decodes every member mask to a full ``(H, W)``
    frame, votes on full frames and removes overlaps on full frames. Same arguments and result.
    """
    clock = _Clock(timings)
    params = FusionParams() if params is None else params
    prep = _prepare(preds, weights, params)
    semantic = prep.semantic_full()
    boxes_px, fs, labels, clusters = _fuse_boxes(prep, params, weighted_boxes_fusion_reference)
    clock.lap("wbf")
    if len(fs) == 0:
        return _empty_result(prep)
    h, w_img = prep.height, prep.width
    score_thr = params.score_thr_array()
    min_area = params.min_area_array()
    keep_idx, masks, scores = [], [], []
    for k, members in enumerate(clusters):
        a_all = np.array([prep.weights[m] * prep.scores[m][i] for m, i in members])
        num = np.zeros((h, w_img), dtype=np.float64)
        den = 0.0
        for a, (m, i) in zip(a_all, members):
            if preds[m].masks is None:
                continue
            num += a * _member_vote(preds[m], i)
            den += a
        if semantic is not None:
            lam = params.semantic_weight * a_all.mean()
            inside = np.zeros((h, w_img), dtype=bool)
            x0, y0, x1, y1 = _box_window(boxes_px[k], h, w_img)
            inside[y0:y1, x0:x1] = True
            num[inside] += lam * semantic[inside]
            den += lam
        if den <= 0:
            continue
        vote = num / den
        fg = vote >= params.vote_thr
        lab = int(labels[k])
        if fg.sum() < min_area[lab]:
            continue
        score = float(fs[k])
        if params.rerank:
            score = score * float(vote[fg].mean())
        if score < score_thr[lab]:
            continue
        keep_idx.append(k)
        masks.append(fg)
        scores.append(score)
    clock.lap("voting")
    if not keep_idx:
        return _empty_result(prep)
    scores_arr = np.array(scores)
    kept, sel = remove_overlaps_reference(masks, scores_arr, params.max_lost_frac)
    idx = np.array(keep_idx, dtype=np.int64)[sel]
    big = np.array([m.sum() for m in kept], dtype=np.int64) >= min_area[labels[idx]]
    inst = _instances_from_frames([m for m, b in zip(kept, big) if b], h, w_img)
    out = _finish(prep, boxes_px[idx[big]], scores_arr[sel[big]], labels[idx[big]], inst)
    clock.lap("overlaps")
    return out
