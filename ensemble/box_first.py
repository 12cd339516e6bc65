"""Box-first fusion (``fusion.mode: box_first``), the design of the Sartorius competition winners (1st place).

Instead of voting the binary masks of independently detected boxes (:func:`ensemble.masks.fuse_image`), the
boxes are fused first and every mask model predicts a soft mask for each fused box:

1. ``python -m ensemble.fuse_boxes --config BOXES.yaml --out fused.npz``: WBF of the box models (YOLOX, Mask
   R-CNN boxes; model weights, ``image_class`` relabelling) into one prediction file of fused boxes, scores and
   labels (:mod:`ensemble.fuse_boxes`).
2. ``python tools/infer.py CFG CKPT --images DIR --mask-head-on fused.npz --out <model>_on_boxes.npz`` per mask
   model: Mask R-CNN's mask head on the fused boxes (its sigmoid pasted into each box), or a segmentor's
   foreground probability cropped to each box. The files keep the fused boxes, scores and labels and add soft
   masks (``mask_probs``).
3. ``python -m ensemble.run --config ENSEMBLE.yaml`` with ``fusion.mode: box_first`` and the step-2 files as models
   (semantic-only files, e.g. UPerNet's full maps, may be added as voters; the fused box file itself too, it only
   supplies boxes): :func:`fuse_image_box_first` per image.

Step 3, for fused box k with score ``s_k`` (the same boxes, scores and labels in every file that has
detections; checked):

* every mask model m (a file with masks) votes with its weight ``w_m`` and its mask probability ``p_mk(x)``
  (a binary mask counts as p in {0, 1}; 0 outside the crop window of its mask);
* every semantic-only model s with semantic weight ``sigma_s > 0`` (its ``semantic_weight``, else
  ``fusion.semantic_weight``) votes with its foreground map ``S_s(x)`` inside the box's pixel window
  (``floor(x1), floor(y1), ceil(x2), ceil(y2)``) and weight ``lambda_s = sigma_s * mean_m(w_m)`` (the mean over
  the mask models; 1 without any), i.e. ``sigma = 1`` gives a map the say of an average mask model, as in the
  vote mode;
* ``vote_k(x) = (sum_m w_m p_mk(x) + sum_s lambda_s S_s(x) [x in box]) / (sum_m w_m + sum_s lambda_s)``, the
  mask is ``vote_k >= vote_thr``; with ``rerank: true`` the score becomes ``s_k * mean(vote_k over the mask)``;
* then the per-class score thresholds, ``min_area`` and overlap removal of the vote mode
  (:func:`ensemble.masks.filter_instances`), so both modes share every rule after the masks are formed.

WBF parameters (``iou_thr``, ``conf_type``, ...) act in step 1 only; in step 3 they are unused.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

from celldata.instances import InstanceMasks

from .masks import FusionParams, _add_crop, _box_windows, filter_instances
from .predictions import ImagePredictions

__all__ = ["check_same_boxes", "fuse_image_box_first"]

_BOX_ATOL = 1e-3  # pixels: files written from the same fused box file carry bit-identical float32 boxes


def check_same_boxes(
    preds: Sequence[ImagePredictions], names: Sequence[str], box_files: Sequence[bool]
) -> None:
    """Checks that every file with detections carries the same boxes, scores and labels for this image.

    Args:
        preds: one model's predictions of the image per model.
        names: model names (for the message).
        box_files: per model, whether its file provides detections.

    Raises:
        ValueError: naming the model, the image and what differs.
    """
    ref = next((m for m, b in enumerate(box_files) if b), None)
    if ref is None:
        raise ValueError(
            "box_first: no model provides the fused boxes; give the files written by tools/infer.py "
            "--mask-head-on FUSED (or the fused box file of python -m ensemble.fuse_boxes)"
        )
    r = preds[ref]
    for m, (p, is_box) in enumerate(zip(preds, box_files)):
        if not is_box or m == ref:
            continue
        same = (
            len(p) == len(r)
            and np.allclose(p.boxes, r.boxes, atol=_BOX_ATOL)
            and np.allclose(p.scores, r.scores, atol=1e-6)
            and np.array_equal(p.labels, r.labels)
        )
        if not same:
            raise ValueError(
                f"box_first: image {p.image_id}: model '{names[m]}' has other boxes/scores/labels ({len(p)}) than "
                f"model '{names[ref]}' ({len(r)}); box-first needs every mask model predicted on the same fused "
                "boxes (tools/infer.py --mask-head-on FUSED)"
            )


@njit(cache=True)
def _box_first_kernel(flat, offs, mwins, mw, n_box, fwin, sem, lam, den, vote_thr):  # pragma: no cover
    """Probability vote of every fused box inside the union of its voters' windows.

    Args:
        flat: float32 concatenated crops of the mask models, crop ``g = t * n_box + k`` (mask model t, box k)
            at ``offs[g]`` with window ``mwins[g]``.
        offs: int64 ``(T * n_box + 1,)``.
        mwins: int64 ``(T * n_box, 4)`` crop windows.
        mw: float64 ``(T,)`` mask model weights.
        n_box: number of fused boxes K.
        fwin: int64 ``(K, 4)`` pixel windows of the boxes (semantic voters).
        sem: float32 ``(S, H, W)`` semantic maps; ``lam`` float64 ``(S,)`` their weights.
        den: total weight ``sum(mw) + sum(lam)``.
        vote_thr: foreground when ``vote >= vote_thr``.

    Returns:
        ``(uwin (K, 4) int64, fg_off (K + 1,) int64, fg uint8, mean_vote (K,) float64)``.
    """
    n_t = mw.shape[0]
    n_s = lam.shape[0]
    uwin = np.zeros((n_box, 4), dtype=np.int64)
    fg_off = np.zeros(n_box + 1, dtype=np.int64)
    for k in range(n_box):
        x0 = 1 << 30
        y0 = 1 << 30
        x1 = -1
        y1 = -1
        for t in range(n_t):
            g = t * n_box + k
            if offs[g + 1] > offs[g]:
                x0 = min(x0, mwins[g, 0])
                y0 = min(y0, mwins[g, 1])
                x1 = max(x1, mwins[g, 2])
                y1 = max(y1, mwins[g, 3])
        if n_s > 0 and fwin[k, 2] > fwin[k, 0] and fwin[k, 3] > fwin[k, 1]:
            x0 = min(x0, fwin[k, 0])
            y0 = min(y0, fwin[k, 1])
            x1 = max(x1, fwin[k, 2])
            y1 = max(y1, fwin[k, 3])
        if x1 > x0 and y1 > y0:
            uwin[k, 0] = x0
            uwin[k, 1] = y0
            uwin[k, 2] = x1
            uwin[k, 3] = y1
        fg_off[k + 1] = fg_off[k] + (uwin[k, 2] - uwin[k, 0]) * (uwin[k, 3] - uwin[k, 1])
    fg = np.zeros(fg_off[n_box], dtype=np.uint8)
    mean_vote = np.zeros(n_box, dtype=np.float64)
    for k in range(n_box):
        size = fg_off[k + 1] - fg_off[k]
        if size == 0:
            continue
        ux0 = uwin[k, 0]
        uy0 = uwin[k, 1]
        uw = uwin[k, 2] - ux0
        num = np.zeros(size, dtype=np.float64)
        for t in range(n_t):
            g = t * n_box + k
            bx0 = mwins[g, 0]
            by0 = mwins[g, 1]
            _add_crop(num, flat, offs[g], bx0, by0, mwins[g, 2] - bx0, mwins[g, 3] - by0, ux0, uy0, uw, mw[t])
        for si in range(n_s):
            for y in range(fwin[k, 1], fwin[k, 3]):
                row = (y - uy0) * uw - ux0
                for x in range(fwin[k, 0], fwin[k, 2]):
                    num[row + x] += lam[si] * np.float64(sem[si, y, x])
        cnt = 0
        total = 0.0
        o = fg_off[k]
        for q in range(size):
            v = num[q] / den
            if v >= vote_thr:
                fg[o + q] = 1
                total += v
                cnt += 1
        if cnt > 0:
            mean_vote[k] = total / cnt
    return uwin, fg_off, fg, mean_vote


def _checked_weights(
    preds: Sequence[ImagePredictions], weights: Sequence[float], names: Sequence[str] | None
) -> tuple[np.ndarray, list[str]]:
    """float64 ``(M,)`` weights and the model names, after checking that every model predicts the same image.

    Raises:
        ValueError: no model, a non-positive weight, or mismatched images.
    """
    if not preds:
        raise ValueError("box_first needs the predictions of at least one model")
    n_models = len(preds)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != n_models or not np.isfinite(w).all() or (w <= 0).any():
        raise ValueError(f"box_first: need {n_models} finite positive weights, got {list(weights)}")
    names = [f"model {m}" for m in range(n_models)] if names is None else list(names)
    first = preds[0]
    h, w_img = first.height, first.width
    for m, p in enumerate(preds):
        if (p.image_id, p.height, p.width) != (first.image_id, h, w_img):
            raise ValueError(
                f"box_first: model '{names[m]}' predicts image {p.image_id} ({p.height}x{p.width}), "
                f"model '{names[0]}' image {first.image_id} ({h}x{w_img})"
            )
    return w, names


def _semantic_voters(
    preds: Sequence[ImagePredictions],
    box_files: Sequence[bool],
    semantic_weights: Sequence[float | None] | None,
    default_weight: float,
    mean_w: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The semantic-only models that vote: float32 ``(S, H, W)`` maps and float64 ``(S,)`` weights
    (``sigma * mean_w``; ``(0, 1, 1)`` / ``(0,)`` when none)."""
    sw_in = [None] * len(preds) if semantic_weights is None else list(semantic_weights)
    sem = []  # (lambda, map)
    for m, p in enumerate(preds):
        if box_files[m] or p.semantic is None:
            continue
        sigma = default_weight if sw_in[m] is None else float(sw_in[m])
        if sigma > 0:
            sem.append((sigma * mean_w, p.semantic))
    if not sem:
        return np.zeros((0, 1, 1), np.float32), np.zeros(0, np.float64)
    maps = np.ascontiguousarray(np.stack([smap for _, smap in sem]), dtype=np.float32)
    return maps, np.array([lam for lam, _ in sem], dtype=np.float64)


def _packed_mask_crops(
    preds: Sequence[ImagePredictions], mask_models: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every mask model's crops (probabilities, or binary masks as 0/1) packed once: crop ``g = t * K + k``.

    Returns:
        ``(flat float32 (P,), offsets int64 (G + 1,), windows int64 (G, 4))``.
    """
    crops_all, wins_all = [], []
    for m in mask_models:
        p = preds[m]
        crops_all.extend(p.mask_probs if p.mask_probs is not None else p.masks.crops)
        wins_all.append(p.masks.boxes)
    offs = np.zeros(len(crops_all) + 1, dtype=np.int64)
    np.cumsum([c.size for c in crops_all], out=offs[1:])
    flat = (
        np.concatenate([c.reshape(-1) for c in crops_all]).astype(np.float32, copy=False)
        if offs[-1]
        else np.zeros(0, np.float32)
    )
    mwins = np.concatenate(wins_all).astype(np.int64) if wins_all else np.zeros((0, 4), np.int64)
    return flat, offs, mwins


def _empty_like(p: ImagePredictions) -> ImagePredictions:
    """No instance in the image of ``p``."""
    return ImagePredictions(
        p.image_id,
        p.height,
        p.width,
        np.zeros((0, 4)),
        np.zeros(0),
        np.zeros(0, np.int64),
        InstanceMasks.empty(p.height, p.width),
    )


def fuse_image_box_first(
    preds: Sequence[ImagePredictions],
    weights: Sequence[float],
    params: FusionParams | None = None,
    *,
    semantic_weights: Sequence[float | None] | None = None,
    box_files: Sequence[bool] | None = None,
    names: Sequence[str] | None = None,
) -> ImagePredictions:
    """Step 3 of box-first fusion for one image (module docstring).

    Args:
        preds: per model its predictions of the image: files with the fused boxes (with or without masks) and
            semantic-only files.
        weights: positive weight per model (the mask models' say in the vote).
        params: ``vote_thr``, ``rerank``, ``semantic_weight`` (default of the semantic models), class
            thresholds, ``min_area``, ``max_lost_frac``.
        semantic_weights: per model its own semantic weight (None: ``params.semantic_weight``).
        box_files: per model whether its file provides the fused boxes (default: it has detections in this
            image or no semantic map).
        names: model names for messages (default ``model <i>``).

    Returns:
        The non-overlapping instances (fused boxes, final scores in descending order, labels, tight masks).

    Raises:
        ValueError: mismatched images, boxes or weights.
    """
    params = FusionParams() if params is None else params
    w, names = _checked_weights(preds, weights, names)
    first = preds[0]
    h, w_img = first.height, first.width
    if box_files is None:
        box_files = [len(p) > 0 or p.semantic is None for p in preds]
    box_files = [bool(b) for b in box_files]
    check_same_boxes(preds, names, box_files)
    ref = preds[box_files.index(True)]
    mask_models = [m for m in range(len(preds)) if box_files[m] and preds[m].masks is not None]
    mean_w = float(np.mean(w[mask_models])) if mask_models else 1.0
    sem_maps, lam = _semantic_voters(preds, box_files, semantic_weights, params.semantic_weight, mean_w)
    n_box = len(ref)
    if n_box == 0 or not (mask_models or len(lam)):
        return _empty_like(first)
    flat, offs, mwins = _packed_mask_crops(preds, mask_models)
    fwin = _box_windows(ref.boxes.astype(np.float64), h, w_img)
    den = float(sum(w[m] for m in mask_models) + lam.sum())
    uwin, fg_off, fg, mean_vote = _box_first_kernel(
        flat,
        offs,
        mwins,
        w[mask_models].astype(np.float64),
        n_box,
        fwin,
        sem_maps,
        lam,
        den,
        float(params.vote_thr),
    )
    scores = ref.scores.astype(np.float64)
    if params.rerank:
        scores = scores * mean_vote
    crops = [
        fg[fg_off[k] : fg_off[k + 1]].view(bool).reshape(uwin[k, 3] - uwin[k, 1], uwin[k, 2] - uwin[k, 0])
        for k in range(n_box)
    ]
    instances = InstanceMasks(h, w_img, uwin.astype(np.int32), crops)
    kept, idx = filter_instances(instances, scores, ref.labels, params)
    if len(idx) == 0:
        return _empty_like(first)
    order = np.argsort(-scores[idx], kind="stable")
    sel = idx[order]
    return ImagePredictions(
        first.image_id,
        h,
        w_img,
        np.clip(ref.boxes[sel], 0, [w_img, h, w_img, h]),
        scores[sel].astype(np.float32),
        ref.labels[sel],
        kept.subset(order),
    )
