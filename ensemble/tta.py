"""Flip test-time augmentation and fold merging on prediction files: torch-free NumPy arithmetic.

A TTA pass predicts an image mirrored horizontally or vertically; :func:`flip_predictions` maps its result back
(boxes: ``x -> W - x`` with x1/x2 swapped, resp. y; masks and probabilities: crops mirrored and windows mirrored)
and :func:`merge_tta` merges the passes of one image:

* soft masks: WBF clusters (IoU 0.55, ``conf_type='avg'`` so a detection seen in fewer passes loses score), the
  score-weighted mean probability of a cluster's members;
* binary masks: :func:`ensemble.masks.fuse_image` with the passes as equal-weight "models" (per-pixel majority
  vote, overlap removal that drops only emptied instances);
* box-only detectors: WBF of the boxes; segmentors: the mean of the foreground maps.

Before WBF every detection is relabelled to the image's class (the ensemble's ``image_class: majority`` rule).

The same rule merges the predictions of a member's fold networks on the same images
(:func:`merge_fold_files`, used by the recipe's test step and by the Kaggle bundle's offline run), and
:func:`limit_predictions` applies a score threshold and a per-image cap. Nothing here imports torch or OpenMMLab
(``custom_modules.inference`` runs the passes; this module only merges them).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from celldata.instances import InstanceMasks
from ensemble.boxes import denormalize_boxes, normalize_boxes, relabel, weighted_boxes_fusion
from ensemble.image_class import TWIN_IOU, majority_without_twins
from ensemble.masks import MIN_FUSED_SCORE, FusionParams, fuse_image
from ensemble.predictions import ImagePredictions, load_predictions, save_predictions

__all__ = [
    "FLIP_DIRECTIONS",
    "flip_image",
    "flip_boxes",
    "flip_instance_masks",
    "flip_predictions",
    "merge_tta",
    "limit_predictions",
    "merge_fold_files",
]

FLIP_DIRECTIONS = ("horizontal", "vertical")


def _check_direction(direction: str) -> None:
    if direction not in FLIP_DIRECTIONS:
        raise ValueError(f"flip direction must be one of {FLIP_DIRECTIONS}, got {direction!r}")


def flip_image(img: np.ndarray, direction: str) -> np.ndarray:
    """Mirror an (H, W, ...) image horizontally (left-right) or vertically (top-bottom); returns a copy."""
    _check_direction(direction)
    return np.ascontiguousarray(img[:, ::-1] if direction == "horizontal" else img[::-1])


def flip_boxes(boxes: np.ndarray, direction: str, height: int, width: int) -> np.ndarray:
    """Mirror xyxy pixel boxes; flipping twice gives the input back.

    Horizontal: ``(x1, y1, x2, y2) -> (W - x2, y1, W - x1, y2)``; vertical: ``(x1, H - y2, x2, H - y1)``.

    Args:
        boxes: float (N, 4) xyxy in pixels (continuous coordinates, 0..W).
        direction: ``'horizontal'`` or ``'vertical'``.
        height: Image height H.
        width: Image width W.

    Returns:
        float32 (N, 4) mirrored boxes.
    """
    _check_direction(direction)
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    out = b.copy()
    if direction == "horizontal":
        out[:, 0] = width - b[:, 2]
        out[:, 2] = width - b[:, 0]
    else:
        out[:, 1] = height - b[:, 3]
        out[:, 3] = height - b[:, 1]
    return out


def flip_instance_masks(masks: InstanceMasks, direction: str) -> InstanceMasks:
    """Mirror instance masks (crops mirrored, integer windows mirrored: ``x0 -> W - x1``, ``x1 -> W - x0``)."""
    _check_direction(direction)
    b = masks.boxes.copy()
    if direction == "horizontal":
        b[:, 0], b[:, 2] = masks.width - masks.boxes[:, 2], masks.width - masks.boxes[:, 0]
        crops = [np.ascontiguousarray(c[:, ::-1]) for c in masks.crops]
    else:
        b[:, 1], b[:, 3] = masks.height - masks.boxes[:, 3], masks.height - masks.boxes[:, 1]
        crops = [np.ascontiguousarray(c[::-1]) for c in masks.crops]
    return InstanceMasks(masks.height, masks.width, b, crops)


def flip_predictions(pred: ImagePredictions, direction: str) -> ImagePredictions:
    """Mirror every spatial field of a prediction (boxes, masks, semantic map)."""
    h, w = pred.height, pred.width
    boxes = np.clip(flip_boxes(pred.boxes, direction, h, w), 0, [w, h, w, h]).astype(np.float32)
    return ImagePredictions(
        pred.image_id,
        h,
        w,
        boxes,
        pred.scores,
        pred.labels,
        None if pred.masks is None else flip_instance_masks(pred.masks, direction),
        None if pred.semantic is None else flip_image(pred.semantic, direction),
        None if pred.mask_probs is None else [flip_image(c, direction) for c in pred.mask_probs],
    )


def merge_tta(
    preds: Sequence[ImagePredictions],
    iou_thr: float = 0.55,
    image_class: str = "majority",
    twin_iou: float | None = None,
) -> ImagePredictions:
    """Merge the (already un-flipped) predictions of one image's TTA passes (module docstring).

    Args:
        preds: One prediction per pass, all of the same image and of the same kind.
        iou_thr: WBF box match threshold.
        image_class: ``'majority'``: every detection is relabelled to the image's class (score-weighted majority
            over all passes, :func:`ensemble.boxes.image_class`) before WBF, as the ensemble does, so one cell
            labelled differently in two passes forms one cluster; ``'per_instance'``: labels as predicted.
        twin_iou: Under ``'majority'``, a pass's lower-scored detections of one object under another label (box
            IoU >= this, :func:`ensemble.image_class.label_twins`) are dropped before WBF, as the ensemble does
            (default :data:`ensemble.image_class.TWIN_IOU`).

    Returns:
        The merged prediction.
    """
    if not preds:
        raise ValueError("merge_tta: no predictions")
    if len(preds) == 1:
        return preds[0]
    p0 = preds[0]
    semantic = None
    if p0.semantic is not None:
        semantic = np.mean([p.semantic for p in preds], axis=0).astype(np.float32)
    if all(len(p) == 0 for p in preds):
        return ImagePredictions(
            p0.image_id, p0.height, p0.width, np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64),
            None if p0.masks is None else InstanceMasks.empty(p0.height, p0.width), semantic,
        )  # fmt: skip
    if all(p.mask_probs is not None for p in preds):
        merged = _merge_soft_tta(preds, iou_thr, image_class, twin_iou=twin_iou)
        merged.semantic = semantic
        return merged
    if p0.masks is not None:
        params = FusionParams(
            iou_thr=iou_thr, conf_type="avg", vote_thr=0.5, max_lost_frac=1.0, image_class=image_class,
            **({} if twin_iou is None else {"twin_iou": twin_iou}),
        )  # fmt: skip
        fused = fuse_image(list(preds), [1.0] * len(preds), params)
        fused.semantic = semantic
        return fused
    h, w = p0.height, p0.width
    fb, fs, fl, _ = weighted_boxes_fusion(
        [normalize_boxes(p.boxes, h, w) for p in preds],
        *_tta_scores_labels(preds, image_class, twin_iou),
        iou_thr=iou_thr,
        skip_box_thr=MIN_FUSED_SCORE,  # zero-score boxes would fuse to 0/0 = NaN (and dropped twins are 0)
        conf_type="avg",
    )
    boxes = np.clip(denormalize_boxes(fb, h, w), 0, [w, h, w, h])
    return ImagePredictions(p0.image_id, h, w, boxes, fs, fl.astype(np.int64), None, semantic)


def _tta_scores_labels(
    preds: Sequence[ImagePredictions], image_class: str, twin_iou: float | None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The passes' scores and labels for WBF: under ``'majority'`` relabelled to the image's class, each pass's
    label twins (:func:`ensemble.image_class.label_twins`) given score 0 (WBF skips them)."""
    if image_class not in ("majority", "per_instance"):
        raise ValueError(f"image_class must be 'majority' or 'per_instance', got {image_class!r}")
    scores = [p.scores for p in preds]
    if image_class == "per_instance":
        return scores, [p.labels for p in preds]
    labels = [p.labels for p in preds]
    thr = TWIN_IOU if twin_iou is None else twin_iou
    label, scores = majority_without_twins([p.boxes for p in preds], scores, labels, twin_iou=thr)
    return scores, relabel(labels, label)


def _merge_soft_tta(
    preds: Sequence[ImagePredictions],
    iou_thr: float,
    image_class: str = "majority",
    mask_thr: float = 0.5,
    twin_iou: float | None = None,
) -> ImagePredictions:
    """TTA merge of passes with soft masks: WBF clusters (``conf_type='avg'``); each cluster's probability is the
    score-weighted mean of its members' probabilities over the union of their windows (0 outside a member's
    window), its binary mask that mean ``>= mask_thr``. Instances may overlap (the ensemble removes overlaps)."""
    p0 = preds[0]
    h, w = p0.height, p0.width
    fb, fs, fl, clusters = weighted_boxes_fusion(
        [normalize_boxes(p.boxes, h, w) for p in preds],
        *_tta_scores_labels(preds, image_class, twin_iou),
        iou_thr=iou_thr,
        skip_box_thr=MIN_FUSED_SCORE,
        conf_type="avg",
    )
    wins, probs = [], []
    for members in clusters:
        mb = np.array([preds[t].masks.boxes[i] for t, i in members], dtype=np.int64).reshape(-1, 4)
        x0, y0 = mb[:, 0].min(), mb[:, 1].min()
        x1, y1 = max(mb[:, 2].max(), x0), max(mb[:, 3].max(), y0)
        num = np.zeros((y1 - y0, x1 - x0), dtype=np.float64)
        den = 0.0
        for (t, i), (bx0, by0, bx1, by1) in zip(members, mb):
            a = float(preds[t].scores[i])
            num[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0] += a * preds[t].mask_probs[i]
            den += a
        wins.append((x0, y0, x1, y1))
        probs.append((num / den).astype(np.float32) if den > 0 else num.astype(np.float32))
    masks = InstanceMasks(h, w, np.array(wins, dtype=np.int32).reshape(-1, 4), [c >= mask_thr for c in probs])
    boxes = np.clip(denormalize_boxes(fb, h, w), 0, [w, h, w, h])
    return ImagePredictions(p0.image_id, h, w, boxes, fs, fl.astype(np.int64), masks, None, probs)


def limit_predictions(pred: ImagePredictions, score_thr: float, max_per_img: int) -> ImagePredictions:
    """Keep detections with ``score >= score_thr``, at most ``max_per_img`` of them, by decreasing score."""
    if len(pred) == 0:
        return pred
    order = np.argsort(-pred.scores, kind="stable")
    order = order[pred.scores[order] >= score_thr][: max(0, int(max_per_img))]
    return ImagePredictions(
        pred.image_id,
        pred.height,
        pred.width,
        pred.boxes[order],
        pred.scores[order],
        pred.labels[order],
        None if pred.masks is None else pred.masks.subset(order),
        pred.semantic,
        None if pred.mask_probs is None else [pred.mask_probs[int(i)] for i in order],
    )


def merge_fold_files(
    parts: Sequence[str | os.PathLike], out: str | os.PathLike, name: str | None = None
) -> int:
    """Merge the prediction files of a member's fold networks on the same images (the flip-TTA merge rule,
    :func:`merge_tta`), written atomically. One file is copied through unchanged (its ``meta`` kept).

    Args:
        parts: The fold networks' prediction files (the :mod:`ensemble.predictions` format), >= 1.
        out: The merged prediction file.
        name: The member name stored in the merged file's ``meta`` (None: the first part's).

    Returns:
        The number of images merged.

    Raises:
        ValueError: If ``parts`` is empty or the files predict different images (the message names the file).
    """
    if not parts:
        raise ValueError("merge_fold_files: no prediction files")
    loaded = [load_predictions(p) for p in parts]
    ids = list(loaded[0][0])
    for (preds, _), p in zip(loaded[1:], parts[1:]):
        if set(preds) != set(ids):
            raise ValueError(f"{p}: predicts other images than {parts[0]}")
    meta = dict(loaded[0][1])
    if name is not None:
        meta["name"] = name
    if len(parts) > 1:
        meta["folds_merged"] = [str(p) for p in parts]
    merged = [merge_tta([preds[i] for preds, _ in loaded]) for i in ids]
    save_predictions(out, merged, meta=meta)
    return len(ids)
