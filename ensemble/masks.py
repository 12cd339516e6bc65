"""Mask fusion of several models' instance predictions of one image: WBF clusters + weighted pixel voting.

Pipeline of :func:`fuse_image` (all work happens inside crop windows, never on per-instance full frames):

1. **Boxes.** Weighted Boxes Fusion (`ensemble.boxes.weighted_boxes_fusion`) of the models' normalized boxes
   gives fused boxes, scores and labels and, per fused box, its *cluster*: the input detections fused into it.
2. **Pixel voting.** Inside a cluster, every member that carries a mask votes with weight
   ``a = model weight * member score``; members of box-only models (``masks is None``) do not vote. When
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
voting and overlap removal); tests and ``benchmarks/bench_ensemble.py`` check that both agree exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import CLASSES
from .boxes import (
    CONF_TYPES,
    denormalize_boxes,
    normalize_boxes,
    weighted_boxes_fusion,
    weighted_boxes_fusion_reference,
)
from .instances import InstanceMasks
from .predictions import ImagePredictions

__all__ = [
    "FusionParams",
    "fuse_image",
    "fuse_image_reference",
    "remove_overlaps",
    "remove_overlaps_reference",
]


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
    semantic: np.ndarray | None  # (H, W) float64 weighted mean of the available maps, or None


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
    semantic = None
    if params.semantic_weight > 0:
        maps = [(w[m], p.semantic) for m, p in enumerate(preds) if p.semantic is not None]
        if maps:
            semantic = np.zeros((h, w_img), dtype=np.float64)
            for wm, s in maps:
                semantic += wm * s.astype(np.float64)
            semantic /= sum(wm for wm, _ in maps)
    return _Prepared(
        first.image_id,
        h,
        w_img,
        w,
        boxes_norm,
        [p.scores.astype(np.float64) for p in preds],
        [p.labels for p in preds],
        semantic,
    )


def _box_window(box_px: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """Integer pixel window ``(x0, y0, x1, y1)`` (exclusive) covering a float pixel box, inside the image."""
    x0 = min(max(int(np.floor(box_px[0])), 0), width)
    y0 = min(max(int(np.floor(box_px[1])), 0), height)
    x1 = min(max(int(np.ceil(box_px[2])), x0), width)
    y1 = min(max(int(np.ceil(box_px[3])), y0), height)
    return x0, y0, x1, y1


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
    masks: InstanceMasks,
) -> ImagePredictions:
    """Sorts by score (descending, stable) and packs the fused result."""
    order = np.argsort(-scores, kind="stable")
    limits = np.array([prep.width, prep.height, prep.width, prep.height], dtype=np.float64)
    return ImagePredictions(
        prep.image_id,
        prep.height,
        prep.width,
        np.clip(boxes_px[order], 0, limits).astype(np.float32),
        scores[order].astype(np.float32),
        labels[order].astype(np.int64),
        masks.subset(order),
        None,
    )


# ----------------------------------------------------------------------------------------------------------------
# fast path
# ----------------------------------------------------------------------------------------------------------------
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
    taken = np.zeros((instances.height, instances.width), dtype=bool)
    kept_crops: dict[int, np.ndarray] = {}
    for i in np.argsort(-scores, kind="stable"):
        crop = instances.crops[i]
        area = int(np.count_nonzero(crop))
        if area == 0:
            continue
        x0, y0, x1, y1 = instances.boxes[i]
        view = taken[y0:y1, x0:x1]
        remain = crop & ~view
        left = int(np.count_nonzero(remain))
        if left == 0 or (area - left) > max_lost_frac * area:
            continue
        view |= remain
        kept_crops[int(i)] = remain
    keep = np.array(sorted(kept_crops), dtype=np.int64)
    out = InstanceMasks(
        instances.height, instances.width, instances.boxes[keep], [kept_crops[int(i)] for i in keep]
    ).tighten()
    return out, keep


def fuse_image(
    preds: Sequence[ImagePredictions], weights: Sequence[float], params: FusionParams | None = None
) -> ImagePredictions:
    """Fuses several models' predictions of one image into non-overlapping instances (module docstring).

    Args:
        preds: one :class:`ImagePredictions` per model, all of the same image.
        weights: positive weight per model.
        params: fusion parameters (defaults: ``FusionParams()``).

    Returns:
        The fused :class:`ImagePredictions` (same image id and size): fused WBF boxes in pixels, final scores
        (descending), labels, masks as tight-crop :class:`InstanceMasks`, ``semantic=None``.

    Raises:
        ValueError: on mismatched images, weights, or invalid parameters.
    """
    params = FusionParams() if params is None else params
    prep = _prepare(preds, weights, params)
    fb, fs, fl, clusters = weighted_boxes_fusion(
        prep.boxes_norm,
        prep.scores,
        prep.labels,
        weights=prep.weights,
        iou_thr=params.iou_thr,
        skip_box_thr=params.skip_box_thr,
        conf_type=params.conf_type,
        allows_overflow=params.allows_overflow,
    )
    if len(fb) == 0:
        return _empty_result(prep)
    h, w_img = prep.height, prep.width
    boxes_px = denormalize_boxes(fb, h, w_img)
    labels = fl.astype(np.int64)
    score_thr = params.score_thr_array()
    min_area = params.min_area_array()
    sem = prep.semantic
    sw = params.semantic_weight
    vote_thr = params.vote_thr
    member_masks = [p.masks for p in preds]

    keep_idx, out_boxes, out_crops, out_scores = [], [], [], []
    for k, members in enumerate(clusters):
        a_all = prep.weights[members[:, 0]] * np.array([prep.scores[m][i] for m, i in members])
        voters = [(a, member_masks[m], i) for a, (m, i) in zip(a_all, members) if member_masks[m] is not None]
        use_sem = sem is not None
        if not voters and not use_sem:
            continue
        # union window of the voters' (non-empty) crops and (for the semantic voter) the fused box
        wins = [mm.boxes[i] for _, mm, i in voters if mm.crops[i].size]
        if use_sem:
            fbw = _box_window(boxes_px[k], h, w_img)
            wins.append(np.array(fbw))
        if not wins:
            continue
        wins_arr = np.array(wins)
        ux0, uy0 = int(wins_arr[:, 0].min()), int(wins_arr[:, 1].min())
        ux1, uy1 = int(wins_arr[:, 2].max()), int(wins_arr[:, 3].max())
        if ux1 <= ux0 or uy1 <= uy0:
            continue
        num = np.zeros((uy1 - uy0, ux1 - ux0), dtype=np.float64)
        den = 0.0
        for a, mm, i in voters:
            den += a
            if mm.crops[i].size == 0:
                continue
            x0, y0, x1, y1 = mm.boxes[i]
            num[y0 - uy0 : y1 - uy0, x0 - ux0 : x1 - ux0] += a * mm.crops[i]
        if use_sem:
            lam = sw * a_all.mean()
            x0, y0, x1, y1 = fbw
            num[y0 - uy0 : y1 - uy0, x0 - ux0 : x1 - ux0] += lam * sem[y0:y1, x0:x1]
            den += lam
        if den <= 0:
            continue
        vote = num / den
        fg = vote >= vote_thr
        area = int(np.count_nonzero(fg))
        lab = int(labels[k])
        if area < min_area[lab]:
            continue
        score = float(fs[k])
        if params.rerank:
            score = score * float(vote[fg].mean())
        if score < score_thr[lab]:
            continue
        keep_idx.append(k)
        out_boxes.append((ux0, uy0, ux1, uy1))
        out_crops.append(fg)
        out_scores.append(score)
    if not keep_idx:
        return _empty_result(prep)
    inst = InstanceMasks(h, w_img, np.array(out_boxes, dtype=np.int32), out_crops)
    scores = np.array(out_scores, dtype=np.float64)
    kept, sel = remove_overlaps(inst, scores, params.max_lost_frac)
    idx = np.array(keep_idx, dtype=np.int64)[sel]
    lab_kept = labels[idx]
    big = kept.areas() >= min_area[lab_kept]
    kept = kept.subset(np.flatnonzero(big))
    return _finish(prep, boxes_px[idx[big]], scores[sel[big]], lab_kept[big], kept)


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
    preds: Sequence[ImagePredictions], weights: Sequence[float], params: FusionParams | None = None
) -> ImagePredictions:
    """Straightforward full-frame implementation of :func:`fuse_image` (slow; for tests and benchmarks).

    Uses the pure-Python `weighted_boxes_fusion_reference`, decodes every member mask to a full ``(H, W)``
    frame, votes on full frames and removes overlaps on full frames. Same arguments and result.
    """
    params = FusionParams() if params is None else params
    prep = _prepare(preds, weights, params)
    fb, fs, fl, clusters = weighted_boxes_fusion_reference(
        prep.boxes_norm,
        prep.scores,
        prep.labels,
        weights=prep.weights,
        iou_thr=params.iou_thr,
        skip_box_thr=params.skip_box_thr,
        conf_type=params.conf_type,
        allows_overflow=params.allows_overflow,
    )
    if len(fb) == 0:
        return _empty_result(prep)
    h, w_img = prep.height, prep.width
    boxes_px = denormalize_boxes(fb, h, w_img)
    labels = fl.astype(np.int64)
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
            num += a * preds[m].masks.mask(i)
            den += a
        if prep.semantic is not None:
            lam = params.semantic_weight * a_all.mean()
            inside = np.zeros((h, w_img), dtype=bool)
            x0, y0, x1, y1 = _box_window(boxes_px[k], h, w_img)
            inside[y0:y1, x0:x1] = True
            num[inside] += lam * prep.semantic[inside]
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
    if not keep_idx:
        return _empty_result(prep)
    scores_arr = np.array(scores)
    kept, sel = remove_overlaps_reference(masks, scores_arr, params.max_lost_frac)
    idx = np.array(keep_idx, dtype=np.int64)[sel]
    big = np.array([m.sum() for m in kept], dtype=np.int64) >= min_area[labels[idx]]
    inst = _instances_from_frames([m for m, b in zip(kept, big) if b], h, w_img)
    return _finish(prep, boxes_px[idx[big]], scores_arr[sel[big]], labels[idx[big]], inst)
