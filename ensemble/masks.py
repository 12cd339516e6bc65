"""Mask fusion of several models' instance predictions of one image: WBF clusters + weighted pixel voting.

Models play up to two roles. A *box model* (YOLOX, Mask R-CNN: a file with detections) contributes boxes to WBF
and, when it has instance masks, votes with them; a *semantic model* (UPerNet, U-Net: a foreground probability
map) votes with its map inside the fused boxes. A model's ``weight`` is its say in WBF and in the mask vote; a
semantic map's say is its own ``semantic_weight`` and never enters WBF, so adding a semantic-only model leaves
every fused box and score unchanged.

Pipeline of :func:`fuse_image` (all work happens inside crop windows, never on per-instance full frames):

1. **One cell type per image** (``image_class='majority'``, the default): the image's class is the majority over
   all box models' detections, each voting with ``model weight * score`` (:func:`ensemble.boxes.image_class`),
   and every detection is relabelled to it, so one cell predicted ``shsy5y`` by one model and ``astro`` by
   another forms one cluster. Before the vote, a model's lower-scored detection of the same object under another
   label (box IoU >= ``twin_iou``, :func:`ensemble.image_class.label_twins`) is dropped: relabelled it would be
   a second member of the same model in that cluster. ``'per_instance'`` keeps the predicted labels (WBF then
   fuses per label).
2. **Boxes.** Weighted Boxes Fusion (`ensemble.boxes.weighted_boxes_fusion`) of the box models' normalized boxes
   with their weights gives fused boxes, scores and labels and, per fused box, its *cluster*: the input
   detections fused into it.
3. **Pixel voting.** Inside a cluster, every member that carries a mask votes with weight
   ``a = model weight * member score``: a binary mask votes ``M(p) in {0, 1}``, a soft mask (``mask_probs`` of
   :class:`~ensemble.predictions.ImagePredictions`, e.g. Mask R-CNN's mask-head probabilities) its probability
   ``P(p)`` (quantized to ``round(255 P) / 255`` as in prediction files). Members of box-only models do not
   vote. Each semantic map ``S_m`` with ``semantic_weight_m > 0`` votes too, only inside the fused box (pixel
   window ``floor(x1), floor(y1), ceil(x2), ceil(y2)``), with weight
   ``lambda_m = semantic_weight_m * mean(a over all cluster members)`` (so ``semantic_weight = 1`` gives a map
   the say of an average member, independently of the score scale). The vote of pixel p is::

       vote(p) = (sum_voters a_i * M_i(p) + sum_m lambda_m * S_m(p) * [p in fused box])
                 / (sum_voters a_i + sum_m lambda_m)

   i.e. normalized by the total weight of the cluster's own voters: a detection found by one model only keeps
   that model's mask (how much an incomplete cluster is trusted is the job of the fused *score*, see
   ``conf_type``), and a cluster of three agreeing models gives the same mask as one of them. Pixel p belongs to
   the fused mask when ``vote(p) >= vote_thr``. A cluster without voters (box-only members and no semantic map)
   yields no instance.
4. **Rerank** (optional): ``score *= mean(vote(p) for p in the fused mask)``.
5. **Filters** (before overlap removal): per-class ``score_thr`` and ``min_area`` (pixels of the fused mask).
6. **Overlap removal** (:func:`remove_overlaps`): in descending score order every instance keeps only the pixels
   not taken by a higher-scoring *kept* instance; an instance that loses more than ``max_lost_frac`` of its
   pixels, or keeps fewer than its class's ``min_area``, is dropped and its pixels stay free for the instances
   below it. The result has no overlapping pixels, and no pixel that a lower instance claimed is left unowned
   because a dropped instance had taken it.

``tests/ensemble_reference.py`` holds a straightforward full-frame implementation of the same rules; the
tests compare both (masks exactly, scores to 1e-9 relative). Speed: see ``benchmarks/bench_ensemble.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from celldata.instances import InstanceMasks, gather_packed, pack_crops

from . import CLASSES
from .boxes import (
    CONF_TYPES,
    IMAGE_CLASS_RULES,
    denormalize_boxes,
    normalize_boxes,
    relabel,
    weighted_boxes_fusion_members,
)
from .image_class import TWIN_IOU, classifier_image_label, majority_without_twins
from .predictions import ImagePredictions

__all__ = [
    "FUSION_MODES",
    "MIN_FUSED_SCORE",
    "FusionParams",
    "box_model_flags",
    "filter_instances",
    "fuse_image",
    "remove_overlaps",
]


MIN_FUSED_SCORE: float = float(np.finfo(np.float32).tiny)
"""Detections scoring below this (i.e. zero) never enter a fusion, whatever ``skip_box_thr`` says."""


FUSION_MODES: tuple[str, ...] = ("vote", "box_first")
"""``fusion.mode`` values: WBF + mask voting (:func:`fuse_image`) or box-first (:mod:`ensemble.box_first`)."""


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
        semantic_weight: say of each semantic foreground map in the pixel vote inside a fused box, relative to
            the mean member weight ``model weight * score`` of the cluster; 0 disables the maps. A model may set
            its own (``semantic_weights`` of :func:`fuse_image`, ``semantic_weight`` of a config model entry).
            Never a factor in fused box scores.
        rerank: multiply each fused score by the mean vote inside its mask.
        image_class: ``'majority'``: one class per image (score-weighted majority of all box models'
            detections), every detection relabelled to it before WBF; ``'per_instance'``: labels as predicted;
            ``'classifier'``: one class per image from an image classifier's probability file
            (``class_probabilities``, written by ``tools/classify_images.py``) where its top probability is
            ``>= classifier_threshold``, else (or for an image missing from the file) the majority class.
        class_probabilities: path of the cell-type probability file (:mod:`ensemble.image_class`); required by
            ``image_class='classifier'``.
        classifier_threshold: minimum top probability for the classifier to set an image's class; in ``[0, 1]``.
        twin_iou: under one class per image (``'majority'``, ``'classifier'``), a model's lower-scored detection of
            the same object under another label (box IoU >= ``twin_iou`` with a higher-scored detection of that
            model, :func:`ensemble.image_class.label_twins`) is dropped before the class vote and WBF: relabelled,
            it would join the object's cluster as a second member of the same model (multi-class box heads such
            as Mask R-CNN's output one proposal once per class). ``None`` keeps them; in ``(0, 1]``.
        score_thr: per-class minimum final score (class name -> threshold; missing classes: no threshold).
        min_area: per-class minimum mask area in pixels, before and after overlap removal (missing classes: 1,
            i.e. only empty masks dropped).
        max_lost_frac: overlap removal drops an instance that loses more than this fraction of its pixels to
            higher-scoring instances; in ``[0, 1]`` (1 keeps every remainder of at least ``min_area`` pixels).
        mode: ``'vote'``: this module's fusion; ``'box_first'``: the models' files hold soft masks predicted on
            already fused boxes (:mod:`ensemble.box_first`, dispatched by ``ensemble.pipeline.FuseState``).
    """

    iou_thr: float = 0.55
    skip_box_thr: float = 0.0
    conf_type: str = "avg"
    allows_overflow: bool = False
    vote_thr: float = 0.5
    semantic_weight: float = 0.0
    rerank: bool = False
    image_class: str = "majority"
    class_probabilities: str | None = None
    classifier_threshold: float = 0.5
    twin_iou: float | None = TWIN_IOU
    score_thr: dict[str, float] = field(default_factory=dict)
    min_area: dict[str, int] = field(default_factory=dict)
    max_lost_frac: float = 0.5
    mode: str = "vote"

    def __post_init__(self) -> None:
        if self.mode not in FUSION_MODES:
            raise ValueError(f"FusionParams.mode: {self.mode!r} is not one of {FUSION_MODES}")
        if self.conf_type not in CONF_TYPES:
            raise ValueError(f"FusionParams.conf_type: {self.conf_type!r} is not one of {CONF_TYPES}")
        if self.image_class not in IMAGE_CLASS_RULES:
            raise ValueError(
                f"FusionParams.image_class: {self.image_class!r} is not one of {IMAGE_CLASS_RULES}"
            )
        if self.image_class == "classifier" and not self.class_probabilities:
            raise ValueError(
                "FusionParams.image_class 'classifier' needs class_probabilities (a probability file)"
            )
        if self.twin_iou is not None and not 0.0 < self.twin_iou <= 1.0:
            raise ValueError(f"FusionParams.twin_iou must be in (0, 1] or None, got {self.twin_iou}")
        if not 0.0 <= self.classifier_threshold <= 1.0:
            raise ValueError(
                f"FusionParams.classifier_threshold must be in [0, 1], got {self.classifier_threshold}"
            )
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


def box_model_flags(preds: Sequence[ImagePredictions]) -> list[bool]:
    """Per-image default of which models are box models: those with detections or without a semantic map.

    A model with a semantic map and no detection in this image is taken as semantic-only. Callers that know the
    role of a whole prediction file (``ensemble.pipeline.model_roles``) pass it to :func:`fuse_image` instead, so
    that a box model that found nothing in one image still counts (as a model that saw no cell) in WBF scores.
    """
    return [len(p) > 0 or p.semantic is None for p in preds]


# ----------------------------------------------------------------------------------------------------------------
# shared preparation
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class _Prepared:
    """The inputs of one image, split by role.

    ``box_idx`` lists the box models (model indices); WBF sees only them, with ``box_weights``; its member
    ``(t, i)`` is detection i of model ``box_idx[t]``. ``labels`` are after the image-class rule.
    """

    image_id: str
    height: int
    width: int
    weights: np.ndarray  # (M,) float64, all models
    box_idx: np.ndarray  # (B,) int64 model index of each box model
    box_weights: np.ndarray  # (B,) float64
    boxes_norm: list[np.ndarray]  # per box model
    scores: list[np.ndarray]  # float64 per box model
    labels: list[np.ndarray]  # int64 per box model
    sem_maps: np.ndarray | None  # (S, H, W) float32 semantic maps that vote, or None
    sem_weights: np.ndarray  # (S,) float64 their semantic weights


def _prepare(
    preds: Sequence[ImagePredictions],
    weights: Sequence[float],
    params: FusionParams,
    semantic_weights: Sequence[float | None] | None = None,
    box_models: Sequence[bool] | None = None,
) -> _Prepared:
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
    flags = box_model_flags(preds) if box_models is None else [bool(b) for b in box_models]
    if len(flags) != len(preds):
        raise ValueError(f"{len(preds)} models but {len(flags)} box-model flags")
    sw_in = [None] * len(preds) if semantic_weights is None else list(semantic_weights)
    if len(sw_in) != len(preds):
        raise ValueError(f"{len(preds)} models but {len(sw_in)} semantic weights")
    h, w_img = first.height, first.width
    limits = np.array([w_img, h, w_img, h], dtype=np.float64)
    box_idx = np.array([m for m, f in enumerate(flags) if f], dtype=np.int64)
    boxes_norm = [
        normalize_boxes(np.clip(preds[m].boxes.astype(np.float64), 0, limits), h, w_img) for m in box_idx
    ]
    scores = [preds[m].scores.astype(np.float64) for m in box_idx]
    labels = [preds[m].labels.astype(np.int64) for m in box_idx]
    if params.image_class in ("majority", "classifier") and len(box_idx):
        label, scores = majority_without_twins(
            [preds[m].boxes for m in box_idx],
            scores,
            labels,
            w[box_idx],
            params.twin_iou,
            min_score=max(params.skip_box_thr, MIN_FUSED_SCORE),  # only detections that enter WBF vote
            n_classes=len(CLASSES),
        )
        if params.image_class == "classifier":
            label = classifier_image_label(
                first.image_id, label, params.class_probabilities, params.classifier_threshold
            )
        labels = relabel(labels, label)
    maps, sem_w = [], []
    for m, p in enumerate(preds):
        if p.semantic is None:
            continue
        sw = params.semantic_weight if sw_in[m] is None else float(sw_in[m])
        if not (np.isfinite(sw) and sw >= 0):
            raise ValueError(f"model {m}: semantic weight must be >= 0, got {sw}")
        if sw > 0:
            maps.append(p.semantic)
            sem_w.append(sw)
    if len(maps) == 1:  # a view when the map is already contiguous float32 (the vote kernel only reads it)
        sem_maps = np.ascontiguousarray(maps[0][None], dtype=np.float32)
    else:
        sem_maps = np.ascontiguousarray(np.stack(maps), dtype=np.float32) if maps else None
    return _Prepared(
        first.image_id,
        h,
        w_img,
        w,
        box_idx,
        w[box_idx],
        boxes_norm,
        scores,
        labels,
        sem_maps,
        np.array(sem_w, dtype=np.float64),
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


def _box_windows(boxes_px: np.ndarray, height: int, width: int) -> np.ndarray:
    """Integer pixel windows ``(x0, y0, x1, y1)`` (exclusive, inside the image) of ``(K, 4)`` float pixel boxes:
    ``floor`` of the top-left and ``ceil`` of the bottom-right corner; int64 ``(K, 4)``."""
    lim = np.array([width, height, width, height])
    lo = np.clip(np.floor(boxes_px[:, :2]).astype(np.int64), 0, lim[:2])
    hi = np.clip(np.ceil(boxes_px[:, 2:]).astype(np.int64), lo, lim[2:])
    return np.concatenate([lo, hi], axis=1)


def _fuse_boxes(
    prep: _Prepared, params: FusionParams, wbf: Callable[..., tuple] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Runs WBF on the prepared boxes of the box models with the fusion parameters.

    Args:
        prep: the prepared inputs of one image.
        params: fusion parameters (``iou_thr``, ``skip_box_thr``, ``conf_type``, ``allows_overflow``).
        wbf: a WBF implementation with the signature and result of ``weighted_boxes_fusion`` (the tests and
            the reference path pass one); default: ``weighted_boxes_fusion_members``.

    Returns:
        ``(boxes_px, scores, labels, members, ptr)``: fused boxes ``(K, 4)`` float64 xyxy in pixels, scores
        ``(K,)``, labels ``(K,)`` int64 (descending score), and the ``(model index, box index)`` members of every
        fused box, int64 ``(M, 2)``: those of box k are ``members[ptr[k]:ptr[k + 1]]`` (model indices refer to
        the ``preds`` of :func:`fuse_image`).
    """
    if len(prep.box_idx) == 0:
        return (
            np.zeros((0, 4)),
            np.zeros(0),
            np.zeros(0, np.int64),
            np.zeros((0, 2), np.int64),
            np.zeros(1, np.int64),
        )
    kwargs = dict(
        weights=prep.box_weights,
        iou_thr=params.iou_thr,
        # a zero-score detection has no weight in any fused average (a cluster of them would fuse to 0/0 = NaN)
        skip_box_thr=max(params.skip_box_thr, MIN_FUSED_SCORE),
        conf_type=params.conf_type,
        allows_overflow=params.allows_overflow,
    )
    if wbf is None:
        # checked: _prepare gives float64 clipped boxes of validated predictions, float64 scores, int64 labels
        fb, fs, fl, members, ptr = weighted_boxes_fusion_members(
            prep.boxes_norm, prep.scores, prep.labels, **kwargs, _checked=True
        )
    else:
        fb, fs, fl, clusters = wbf(prep.boxes_norm, prep.scores, prep.labels, **kwargs)
        ptr = np.zeros(len(clusters) + 1, dtype=np.int64)
        np.cumsum([len(c) for c in clusters], out=ptr[1:])
        members = np.concatenate(clusters).astype(np.int64) if clusters else np.zeros((0, 2), np.int64)
    if len(members) and not np.array_equal(prep.box_idx, np.arange(len(prep.box_idx))):
        members = members.copy()  # members refer to the box models; map them to model indices
        members[:, 0] = prep.box_idx[members[:, 0]]
    return denormalize_boxes(fb, prep.height, prep.width), fs, fl.astype(np.int64), members, ptr


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
@njit(cache=True, inline="always")
def _add_crop(num, flat, base, bx0, by0, bw, bh, ux0, uy0, uw, weight):  # pragma: no cover - numba
    """``num[window] += weight * crop`` for a packed crop (``flat[base:]``, ``bh x bw`` at ``(bx0, by0)``) inside
    the flattened union window ``num`` (width ``uw``, origin ``(ux0, uy0)``)."""
    for yy in range(bh):
        row = (by0 + yy - uy0) * uw + (bx0 - ux0)
        dst = num[row : row + bw]
        src = flat[base + yy * bw : base + (yy + 1) * bw]
        for xx in range(bw):  # branch-free (vectorizes): a zero pixel adds exactly +0.0
            dst[xx] += weight * np.float64(src[xx])


@njit(cache=True, error_model="numpy")
def _vote_cut(den, vote_thr):  # pragma: no cover - numba
    """The smallest float64 ``c`` with ``c / den >= vote_thr`` (``den > 0``, ``vote_thr > 0``).

    Correctly rounded division is monotonic in the numerator, so ``num / den >= vote_thr`` exactly when
    ``num >= c``: the vote kernel compares instead of dividing per pixel, with the same result at every tie.
    """
    c = vote_thr * den
    while c > 0.0 and c / den >= vote_thr:
        c = np.nextafter(c, -np.inf)
    while c / den < vote_thr:
        c = np.nextafter(c, np.inf)
    return c


# fast-math limited to reassociation (the sum in any order, so it vectorizes); each quotient stays a true division
@njit(cache=True, error_model="numpy", fastmath={"reassoc", "nsz"})
def _masked_vote_sum(num, mask, den):  # pragma: no cover - numba
    """``sum(num[mask != 0] / den)`` (float64): the votes of the foreground pixels, each exactly as compared."""
    total = 0.0
    for p in range(num.shape[0]):
        total += num[p] / den if mask[p] else 0.0
    return total


@njit(cache=True, error_model="numpy")  # no zero-division check per pixel (den > 0 is tested first)
def _vote_kernel(
    flat, offs, mboxes, mscale, cl_ptr, cl_g, cl_a, fwin, sem, sem_w, use_sem, vote_thr
):  # pragma: no cover
    """Weighted pixel voting of every cluster inside its union window.

    Args:
        flat: uint8 concatenation of every member mask crop (row-major), member crop ``g`` at ``offs[g]``; a
            pixel's vote value is ``flat * mscale[g]`` (binary masks: 0/1 and scale 1; soft masks:
            ``q = round(255 p)`` and scale 1/255).
        offs: int64 ``(G + 1,)`` crop offsets.
        mboxes: int64 ``(G, 4)`` crop windows ``(x0, y0, x1, y1)``.
        mscale: float64 ``(G,)`` value scale of each crop.
        cl_ptr: int64 ``(K + 1,)``: members of cluster k are entries ``cl_ptr[k]:cl_ptr[k + 1]``.
        cl_g: int64 member crop index ``g``, or -1 for a member without a mask (does not vote).
        cl_a: float64 member weight ``model weight * score``.
        fwin: int64 ``(K, 4)`` pixel window of each fused box (semantic voters).
        sem: float32 ``(S, H, W)`` semantic foreground maps (ignored unless ``use_sem``).
        sem_w: float64 ``(S,)`` their semantic weights; map s votes with ``sem_w[s] * mean(cl_a of the cluster)``.
        use_sem: whether the semantic maps vote.
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
    n_sem = sem.shape[0]
    lam = np.zeros(n_sem, dtype=np.float64)
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
            _add_crop(
                num,
                flat,
                offs[g],
                bx0,
                by0,
                mboxes[g, 2] - bx0,
                mboxes[g, 3] - by0,
                ux0,
                uy0,
                uw,
                a * mscale[g],
            )
        if use_sem:
            n_mem = cl_ptr[k + 1] - cl_ptr[k]
            mean_a = 0.0
            for j in range(cl_ptr[k], cl_ptr[k + 1]):
                mean_a += cl_a[j]
            mean_a /= n_mem
            for si in range(n_sem):
                lam[si] = sem_w[si] * mean_a
                den += lam[si]
            for y in range(fwin[k, 1], fwin[k, 3]):
                row = (y - uy0) * uw - ux0
                if n_sem == 1:  # same sums as below (0.0 + v == v), in a loop that vectorizes
                    l0 = lam[0]
                    fx0 = fwin[k, 0]
                    dst = num[row + fx0 : row + fwin[k, 2]]
                    src = sem[0, y, fx0 : fwin[k, 2]]
                    for x in range(dst.shape[0]):
                        dst[x] += l0 * np.float64(src[x])
                    continue
                for x in range(fwin[k, 0], fwin[k, 2]):
                    sv = 0.0
                    for si in range(n_sem):
                        sv += lam[si] * np.float64(sem[si, y, x])
                    num[row + x] += sv
        if not den > 0:
            valid[k] = False
            continue
        # num / den >= vote_thr  <=>  num >= cut (division is monotonic): one comparison per pixel (vectorizes)
        cut = _vote_cut(den, vote_thr)
        fgk = fg[fg_off[k] : fg_off[k + 1]]
        cnt = 0
        for p in range(size):
            m = num[p] >= cut
            fgk[p] = m
            cnt += m
        area[k] = cnt
        if cnt > 0:
            mean_vote[k] = _masked_vote_sum(num, fgk, den) / cnt
    return valid, uwin, fg_off, fg, area, mean_vote


@njit(cache=True)
def _overlap_kernel(flat, offs, boxes, order, max_lost_frac, min_area, height, width):  # pragma: no cover
    """Greedy overlap removal over packed crops (see :func:`remove_overlaps`).

    Args:
        flat: uint8 concatenated crops; crop i at ``offs[i]`` with window ``boxes[i]``.
        offs: int64 ``(N + 1,)``.
        boxes: int64 ``(N, 4)`` crop windows.
        order: int64 visiting order (descending score).
        max_lost_frac: largest tolerated fraction of lost pixels.
        min_area: int64 ``(N,)`` smallest number of kept pixels of each instance (at least 1).
        height: image height.
        width: image width.

    Returns:
        ``(keep (N,) bool, compact uint8, coff (N + 1,) int64, tight (N, 4) int64, left (N,) int64)``: kept flags,
        the kept pixels of each kept instance cropped to their tight window (row-major, instance i at
        ``compact[coff[i]:coff[i + 1]]``; empty for dropped ones), that window in image coordinates, and the kept
        pixel count.
    """
    n = offs.shape[0] - 1
    taken = np.zeros((height, width), dtype=np.uint8)
    keep = np.zeros(n, dtype=np.bool_)
    remain = np.zeros(flat.shape[0], dtype=np.uint8)  # kept pixels in the input crop layout
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
        for yy in range(bh):  # branch-free row loops over 0/1 bytes (they vectorize)
            src = flat[base + yy * bw : base + (yy + 1) * bw]
            tk = taken[y0 + yy, x0 : x0 + bw]
            for xx in range(bw):
                f = np.int64(src[xx])
                area += f
                left += f & (1 - np.int64(tk[xx]))
        if area == 0 or left == 0 or left < min_area[i] or (area - left) > max_lost_frac * area:
            continue
        keep[i] = True
        kept_area[i] = left
        tx0 = 1 << 30
        ty0 = 1 << 30
        tx1 = -1
        ty1 = -1
        for yy in range(bh):
            src = flat[base + yy * bw : base + (yy + 1) * bw]
            tk = taken[y0 + yy, x0 : x0 + bw]
            rem = remain[base + yy * bw : base + (yy + 1) * bw]
            hit = np.uint8(0)
            for xx in range(bw):
                v = src[xx] & (tk[xx] ^ np.uint8(1))
                tk[xx] |= v
                rem[xx] = v
                hit |= v
            if hit:
                ty0 = min(ty0, yy)
                ty1 = yy + 1
                a = 0
                while rem[a] == 0:
                    a += 1
                b = bw - 1
                while rem[b] == 0:
                    b -= 1
                tx0 = min(tx0, a)
                tx1 = max(tx1, b + 1)
        tight[i, 0] = x0 + tx0
        tight[i, 1] = y0 + ty0
        tight[i, 2] = x0 + tx1
        tight[i, 3] = y0 + ty1
    coff = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        size = (tight[i, 2] - tight[i, 0]) * (tight[i, 3] - tight[i, 1]) if keep[i] else 0
        coff[i + 1] = coff[i] + size
    compact = np.empty(coff[n], dtype=np.uint8)
    for i in range(n):
        if not keep[i]:
            continue
        bw = boxes[i, 2] - boxes[i, 0]
        tw = tight[i, 2] - tight[i, 0]
        ox = tight[i, 0] - boxes[i, 0]
        oy = tight[i, 1] - boxes[i, 1]
        for yy in range(tight[i, 3] - tight[i, 1]):
            src = offs[i] + (oy + yy) * bw + ox
            dst = coff[i] + yy * tw
            compact[dst : dst + tw] = remain[src : src + tw]
    return keep, compact, coff, tight, kept_area


def _vote_pack(p: ImagePredictions) -> tuple[np.ndarray, np.ndarray, float]:
    """The packed crops a model votes with, ``(flat uint8, offsets (N + 1,), scale)``: soft masks as
    ``round(255 p)`` (scale 1/255) when the model has mask probabilities, else the binary masks (scale 1).

    Cached on the prediction object (keyed by the identity of its masks), so repeated fusions of the same
    predictions (tuning) pack once.
    """
    probs = getattr(p, "mask_probs", None)
    key = (id(p.masks), id(p.masks.crops), id(probs))
    cached = p.__dict__.get("_vote_pack")
    if cached is not None and cached[0] == key:
        return cached[1]
    if probs is not None:
        crops = [np.rint(np.asarray(c, np.float32) * np.float32(255.0)).astype(np.uint8) for c in probs]
        packed = (*pack_crops(crops, p.masks.boxes), 1 / 255)
    else:
        packed = (*p.masks.packed(), 1.0)
    p.__dict__["_vote_pack"] = (key, packed)
    return packed


def _remove_overlaps_packed(
    flat: np.ndarray,
    offs: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    max_lost_frac: float,
    min_area: np.ndarray,
    height: int,
    width: int,
    candidates: np.ndarray | None = None,
) -> tuple[np.ndarray, Callable[[np.ndarray], InstanceMasks], np.ndarray]:
    """Overlap removal over packed crops; only ``candidates`` (default: all) can be kept.

    Returns:
        ``(idx, masks_of, kept_area)``: kept indices (ascending), a function giving the tight kept masks of some of
        them (in the given order, packed: :meth:`InstanceMasks.packed` costs nothing), and per index the kept pixel
        count.
    """
    cand = np.arange(len(scores)) if candidates is None else np.asarray(candidates, dtype=np.int64)
    order = cand[np.argsort(-scores[cand], kind="stable")].astype(np.int64)
    keep, compact, coff, tight, kept_area = _overlap_kernel(
        flat,
        offs,
        boxes.astype(np.int64),
        order,
        float(max_lost_frac),
        np.maximum(np.asarray(min_area, dtype=np.int64), 1),
        height,
        width,
    )
    idx = np.flatnonzero(keep).astype(np.int64)

    def masks_of(sel: np.ndarray) -> InstanceMasks:
        sel = np.asarray(sel, dtype=np.int64)
        if np.array_equal(sel, idx):  # dropped instances have no pixels in compact: already in this order
            f, o = compact, np.append(coff[idx], coff[-1])
        else:
            f, o = gather_packed(compact, coff, sel)
        return InstanceMasks.from_packed(height, width, tight[sel], f, o, validate=False)

    return idx, masks_of, kept_area


def remove_overlaps(
    instances: InstanceMasks,
    scores: np.ndarray,
    max_lost_frac: float = 0.5,
    min_area: int | np.ndarray = 1,
) -> tuple[InstanceMasks, np.ndarray]:
    """Makes instance masks non-overlapping: pixels go to the higher-scoring instance.

    Instances are visited in descending score order (ties: lower index first); each keeps the pixels not yet
    taken by a kept instance. An instance that is empty, loses more than ``max_lost_frac`` of its pixels, or
    keeps fewer than ``min_area`` pixels is dropped, and its pixels stay free for lower-scoring ones.

    Args:
        instances: N masks of one image.
        scores: ``(N,)`` scores.
        max_lost_frac: largest tolerated fraction of lost pixels, in ``[0, 1]``.
        min_area: smallest number of kept pixels, one for all or int ``(N,)`` per instance.

    Returns:
        ``(kept, keep_idx)``: the trimmed kept masks (tight crops) in increasing index order, and their int64
        indices into ``instances``.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(instances):
        raise ValueError(f"remove_overlaps: {len(instances)} masks but {len(scores)} scores")
    if not 0.0 <= max_lost_frac <= 1.0:
        raise ValueError(f"remove_overlaps: max_lost_frac must be in [0, 1], got {max_lost_frac}")
    amin = np.broadcast_to(np.asarray(min_area, dtype=np.int64), scores.shape)
    flat, offs = instances.packed()
    idx, masks_of, _ = _remove_overlaps_packed(
        flat, offs, instances.boxes, scores, max_lost_frac, amin, instances.height, instances.width
    )
    return masks_of(idx), idx


def filter_instances(
    instances: InstanceMasks, scores: np.ndarray, labels: np.ndarray, params: FusionParams
) -> tuple[InstanceMasks, np.ndarray]:
    """Steps 5 and 6 of the module docstring for instances fused by any means (e.g. box-first fusion).

    Per-class ``score_thr`` and ``min_area`` first, then :func:`remove_overlaps` with ``max_lost_frac`` and the
    per-class ``min_area``.

    Args:
        instances: N masks of one image.
        scores: ``(N,)`` final scores.
        labels: ``(N,)`` int labels into ``CLASSES``.
        params: the thresholds (``score_thr``, ``min_area``, ``max_lost_frac``).

    Returns:
        ``(kept, keep_idx)`` as :func:`remove_overlaps` (increasing index order).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if not len(scores) == len(labels) == len(instances):
        raise ValueError(f"{len(instances)} masks, {len(scores)} scores and {len(labels)} labels")
    min_area = params.min_area_array()[labels]
    cand = np.flatnonzero((instances.areas() >= min_area) & ~(scores < params.score_thr_array()[labels]))
    flat, offs = instances.packed()
    idx, masks_of, _ = _remove_overlaps_packed(
        flat,
        offs,
        instances.boxes,
        scores,
        params.max_lost_frac,
        min_area,
        instances.height,
        instances.width,
        cand,
    )
    return masks_of(idx), idx


def fuse_image(
    preds: Sequence[ImagePredictions],
    weights: Sequence[float],
    params: FusionParams | None = None,
    *,
    semantic_weights: Sequence[float | None] | None = None,
    box_models: Sequence[bool] | None = None,
    timings: dict[str, float] | None = None,
) -> ImagePredictions:
    """Fuses several models' predictions of one image into non-overlapping instances (module docstring).

    Args:
        preds: one :class:`ImagePredictions` per model, all of the same image.
        weights: positive weight per model (WBF and mask vote; unused for semantic-only models).
        params: fusion parameters (defaults: ``FusionParams()``).
        semantic_weights: per model, the say of its semantic map (None: ``params.semantic_weight``).
        box_models: per model, whether it is a box model (its detections enter WBF); default
            :func:`box_model_flags`.
        timings: if given, seconds spent per stage are added to its keys ``"wbf"`` (image class and WBF),
            ``"voting"`` (voting, rerank, filters) and ``"overlaps"`` (overlap removal and packing).

    Returns:
        The fused :class:`ImagePredictions` (same image id and size): fused WBF boxes in pixels, final scores
        (descending), labels, masks as tight-crop :class:`InstanceMasks`, ``semantic=None``.

    Raises:
        ValueError: on mismatched images, weights, or invalid parameters.
    """
    clock = _Clock(timings)
    params = FusionParams() if params is None else params
    prep = _prepare(preds, weights, params, semantic_weights, box_models)
    boxes_px, fs, labels, members, cl_ptr = _fuse_boxes(prep, params)
    clock.lap("wbf")
    if len(fs) == 0:
        return _empty_result(prep)
    h, w_img = prep.height, prep.width
    score_thr = params.score_thr_array()
    min_area = params.min_area_array()
    # pack the voting crops of every model once; member (m, i) has crop index g = first[m] + i (-1: no mask)
    first = np.full(len(preds), -1, dtype=np.int64)
    n_crops = 0
    flat_parts, off_parts, scale_parts, box_parts = [], [], [], []
    base = 0
    for m in prep.box_idx.tolist():
        p = preds[m]
        if p.masks is None:
            continue
        first[m] = n_crops
        f, o, sc = _vote_pack(p)
        flat_parts.append(f)
        off_parts.append(o[:-1] + base)
        base += int(o[-1])
        n_crops += len(p.masks)
        scale_parts.append(np.full(len(p.masks), sc))
        box_parts.append(np.asarray(p.masks.boxes, dtype=np.int64).reshape(-1, 4))
    flat = np.concatenate(flat_parts) if flat_parts else np.zeros(0, np.uint8)
    offs = np.concatenate([*off_parts, [base]]).astype(np.int64)
    mscale = np.concatenate(scale_parts) if scale_parts else np.zeros(0)
    mboxes = np.concatenate(box_parts) if box_parts else np.zeros((0, 4), np.int64)
    mdl, bidx = members[:, 0], members[:, 1]
    cl_g = np.where(first[mdl] >= 0, first[mdl] + bidx, -1)
    score_of = np.concatenate([preds[m].scores.astype(np.float64) for m in range(len(preds))])
    score_first = np.cumsum([0] + [len(p) for p in preds[:-1]])
    cl_a = prep.weights[mdl] * score_of[score_first[mdl] + bidx]
    fwin = _box_windows(boxes_px, h, w_img)
    use_sem = prep.sem_maps is not None
    sem = prep.sem_maps if use_sem else np.zeros((0, 1, 1), dtype=np.float32)
    valid, uwin, fg_off, fg, area, mean_vote = _vote_kernel(
        flat,
        offs,
        mboxes,
        mscale,
        cl_ptr,
        cl_g,
        cl_a,
        fwin,
        sem,
        prep.sem_weights,
        use_sem,
        float(params.vote_thr),
    )
    scores = fs * mean_vote if params.rerank else fs.copy()
    ok = valid & (area >= min_area[labels]) & ~(scores < score_thr[labels])
    keep_idx = np.flatnonzero(ok)
    clock.lap("voting")
    if len(keep_idx) == 0:
        return _empty_result(prep)
    idx, masks_of, _ = _remove_overlaps_packed(
        fg, fg_off, uwin, scores, params.max_lost_frac, min_area[labels], h, w_img, keep_idx
    )
    out = _finish(prep, boxes_px[idx], scores[idx], labels[idx], lambda order: masks_of(idx[order]))
    clock.lap("overlaps")
    return out
