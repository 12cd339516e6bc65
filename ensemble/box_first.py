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

from celldata.instances import InstanceMasks

from .masks import FusionParams, filter_instances
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


def _box_window(box: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    x0 = min(max(int(np.floor(box[0])), 0), width)
    y0 = min(max(int(np.floor(box[1])), 0), height)
    x1 = min(max(int(np.ceil(box[2])), x0), width)
    y1 = min(max(int(np.ceil(box[3])), y0), height)
    return x0, y0, x1, y1


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
    if box_files is None:
        box_files = [len(p) > 0 or p.semantic is None for p in preds]
    box_files = [bool(b) for b in box_files]
    check_same_boxes(preds, names, box_files)
    ref = preds[box_files.index(True)]
    mask_models = [m for m in range(n_models) if box_files[m] and preds[m].masks is not None]
    sw_in = [None] * n_models if semantic_weights is None else list(semantic_weights)
    mean_w = float(np.mean(w[mask_models])) if mask_models else 1.0
    sem = []  # (lambda, map)
    for m, p in enumerate(preds):
        if box_files[m] or p.semantic is None:
            continue
        sigma = params.semantic_weight if sw_in[m] is None else float(sw_in[m])
        if sigma > 0:
            sem.append((sigma * mean_w, p.semantic))
    empty = ImagePredictions(
        first.image_id,
        h,
        w_img,
        np.zeros((0, 4)),
        np.zeros(0),
        np.zeros(0, np.int64),
        InstanceMasks.empty(h, w_img),
    )
    if len(ref) == 0 or not (mask_models or sem):
        return empty
    den = float(sum(w[m] for m in mask_models) + sum(lam for lam, _ in sem))
    windows, crops, scores = [], [], []
    for k in range(len(ref)):
        parts = []  # (weight, window, values)
        for m in mask_models:
            masks = preds[m].masks
            probs = preds[m].mask_probs
            vals = probs[k] if probs is not None else masks.crops[k]
            parts.append((w[m], masks.boxes[k], vals))
        if sem:
            bx0, by0, bx1, by1 = _box_window(ref.boxes[k], h, w_img)
            for lam, smap in sem:
                parts.append((lam, (bx0, by0, bx1, by1), smap[by0:by1, bx0:bx1]))
        parts = [pt for pt in parts if pt[2].size]
        if not parts:
            windows.append((0, 0, 0, 0))
            crops.append(np.zeros((0, 0), bool))
            scores.append(float(ref.scores[k]))
            continue
        win = np.array([pt[1] for pt in parts], dtype=np.int64)
        x0, y0 = int(win[:, 0].min()), int(win[:, 1].min())
        x1, y1 = int(win[:, 2].max()), int(win[:, 3].max())
        num = np.zeros((y1 - y0, x1 - x0), dtype=np.float64)
        for a, (px0, py0, px1, py1), vals in parts:
            num[py0 - y0 : py1 - y0, px0 - x0 : px1 - x0] += a * vals
        vote = num / den
        fg = vote >= params.vote_thr
        score = float(ref.scores[k])
        if params.rerank:
            score *= float(vote[fg].mean()) if fg.any() else 0.0
        windows.append((x0, y0, x1, y1))
        crops.append(fg)
        scores.append(score)
    instances = InstanceMasks(h, w_img, np.array(windows, dtype=np.int32).reshape(-1, 4), crops)
    scores_arr = np.array(scores, dtype=np.float64)
    kept, idx = filter_instances(instances, scores_arr, ref.labels, params)
    if len(idx) == 0:
        return empty
    order = np.argsort(-scores_arr[idx], kind="stable")
    sel = idx[order]
    return ImagePredictions(
        first.image_id,
        h,
        w_img,
        np.clip(ref.boxes[sel], 0, [w_img, h, w_img, h]),
        scores_arr[sel].astype(np.float32),
        ref.labels[sel],
        kept.subset(order),
    )
