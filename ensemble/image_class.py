"""Image-level cell-type probabilities from a classifier, for ``fusion.image_class: classifier``.

The probability file is written by ``tools/classify_images.py`` (``custom_modules.cls.predict``)::

    {"format": "cell-type-probabilities", "version": 1, "classes": ["shsy5y", "astro", "cort"],
     "images": {"<kaggle id>": [p_shsy5y, p_astro, p_cort], ...}, ...}

Rule (:func:`classifier_label`): an image takes the classifier's most probable class when that probability is at
least ``threshold``; otherwise (or when the image is missing from the file) it keeps the detectors' majority class.

Relabelling every detection to one class turns a model's multi-class outputs for one proposal (Mask R-CNN's box
head scores every class of a proposal; mmdet keeps each class above its threshold, so one cell often comes out
twice, as ``shsy5y`` and as ``cort``, with nearly the same box) into duplicates of ONE model that would both join
the cell's WBF cluster and vote twice. :func:`label_twins` finds them: under one class per image the lower-scored
twin is dropped before fusion (``FusionParams.twin_iou``). Framework-free (numpy + numba).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from numba import njit

from celldata import CLASSES

from .boxes import image_class

__all__ = [
    "FORMAT",
    "read_class_probabilities",
    "load_class_probabilities",
    "classifier_label",
    "image_labels",
    "classifier_image_label",
    "label_twins",
    "majority_without_twins",
    "TWIN_IOU",
]

FORMAT = "cell-type-probabilities"

TWIN_IOU = 0.8
"""Default box IoU at which one model's differently labelled detections are one object (``FusionParams.twin_iou``,
TTA merging). Measured on Mask R-CNN demo predictions of 9 real images: 27 % of the detections scoring >= 0.1 had
such a twin at IoU >= 0.8, all with another label."""


def read_class_probabilities(path: str | os.PathLike) -> tuple[list[str], dict[str, np.ndarray]]:
    """Read and check a class probability file.

    Returns:
        ``(classes, {kaggle id: float64 (C,) probabilities})``.

    Raises:
        ValueError: unreadable file, wrong ``format``, classes not a subset of the known classes, or a row that is
            not ``C`` probabilities summing to 1 (the image id named).
    """
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read class probability file ({e})") from e
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ValueError(f"{path}: field 'format' must be {FORMAT!r}")
    classes = d.get("classes")
    if not isinstance(classes, list) or not classes or not set(classes) <= set(CLASSES):
        raise ValueError(
            f"{path}: field 'classes' must list class names out of {list(CLASSES)}, got {classes!r}"
        )
    images = d.get("images")
    if not isinstance(images, dict):
        raise ValueError(f"{path}: field 'images' must map image ids to probability lists")
    out = {}
    for kid, p in images.items():
        try:
            arr = np.asarray(p, dtype=np.float64)
        except (TypeError, ValueError):
            arr = np.zeros(0)
        if (
            arr.shape != (len(classes),)
            or not np.isfinite(arr).all()
            or (arr < 0).any()
            or abs(arr.sum() - 1) > 1e-4
        ):
            raise ValueError(f"{path}: images[{kid!r}] must be {len(classes)} probabilities summing to 1")
        out[str(kid)] = arr
    return list(classes), out


@functools.lru_cache(maxsize=4)
def _cached(path: str, mtime: float) -> tuple[list[str], dict[str, np.ndarray]]:
    return read_class_probabilities(path)


def load_class_probabilities(path: str | os.PathLike) -> tuple[list[str], dict[str, np.ndarray]]:
    """:func:`read_class_probabilities`, cached per path and modification time (one read per ensemble run).

    Raises:
        ValueError: missing file or bad content.
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise ValueError(f"class probability file not found: {p}")
    return _cached(p, os.path.getmtime(p))


def classifier_label(
    probs: np.ndarray | Sequence[float] | None,
    prob_classes: Sequence[str],
    fallback: int | None,
    threshold: float,
    classes: Sequence[str] = CLASSES,
) -> tuple[int | None, bool]:
    """The image's label under ``image_class: classifier``.

    Args:
        probs: ``(C,)`` class probabilities of the image, or ``None`` when the classifier did not see it.
        prob_classes: Class names of ``probs`` (the file's ``classes``).
        fallback: Label to keep below the threshold (the detectors' majority; may be ``None``).
        threshold: Minimum top probability for the classifier to decide.
        classes: The ensemble's class names (labels index them).

    Returns:
        ``(label, from_classifier)``.
    """
    if probs is None:
        return fallback, False
    p = np.asarray(probs, dtype=np.float64)
    top = int(np.argmax(p))
    if p[top] < threshold:
        return fallback, False
    return list(classes).index(prob_classes[top]), True


def image_labels(
    majority: Mapping[str, int | None], probs_path: str | os.PathLike, threshold: float
) -> dict[str, tuple[int | None, bool]]:
    """:func:`classifier_label` of many images at once (``{image id: majority label}`` in, same keys out)."""
    prob_classes, probs = load_class_probabilities(probs_path)
    return {k: classifier_label(probs.get(k), prob_classes, v, threshold) for k, v in majority.items()}


def classifier_image_label(
    image_id: str, majority: int | None, probs_path: str | os.PathLike, threshold: float
) -> int | None:
    """The label of one image under ``fusion.image_class: classifier`` (used by ``ensemble.masks``).

    Args:
        image_id: Kaggle image id.
        majority: The detectors' score-weighted majority label (the fallback).
        probs_path: Class probability file.
        threshold: Minimum top probability for the classifier to decide.

    Returns:
        The classifier's label, or ``majority``.
    """
    prob_classes, probs = load_class_probabilities(probs_path)
    return classifier_label(probs.get(str(image_id)), prob_classes, majority, threshold)[0]


@njit(cache=True)
def _twin_pairs(
    boxes: np.ndarray, labels: np.ndarray, major: int, iou_thr: float
) -> tuple[np.ndarray, np.ndarray]:
    """Every pair ``(i, j)`` (both directions) of differently labelled boxes with IoU >= ``iou_thr``.

    Such a pair always holds a box whose label is not the most frequent one (``major``), so only those boxes are
    looked up: in the x0-sorted list, IoU(a, b) >= t needs an x-overlap iw >= t * w_a and >= t * w_b, i.e.
    x0_b in [x0_a - (1 - t) / t * w_a, x0_a + (1 - t) * w_a] (padded against rounding; the IoU test decides).
    """
    n = boxes.shape[0]
    by_x = np.argsort(boxes[:, 0], kind="mergesort")
    x0s = boxes[by_x, 0]
    below = (1.0 - iou_thr) / iou_thr
    above = 1.0 - iou_thr
    pa = np.empty(16, dtype=np.int64)
    pb = np.empty(16, dtype=np.int64)
    k = 0
    for i in range(n):
        if labels[i] == major:
            continue
        ax0, ay0, ax1, ay1 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        wa = max(ax1 - ax0, 0.0)
        area_a = wa * max(ay1 - ay0, 0.0)
        if area_a <= 0.0:  # IoU 0 with everything
            continue
        pad = 1e-7 * (abs(ax0) + wa) + 1e-300
        lo = np.searchsorted(x0s, ax0 - below * wa - pad, side="left")
        hi = np.searchsorted(x0s, ax0 + above * wa + pad, side="right")
        for q in range(lo, hi):
            j = by_x[q]
            if labels[j] == labels[i] or (labels[j] != major and j < i):  # other minority box: found from j
                continue
            iw = min(ax1, boxes[j, 2]) - max(ax0, boxes[j, 0])
            ih = min(ay1, boxes[j, 3]) - max(ay0, boxes[j, 1])
            if iw <= 0.0 or ih <= 0.0:
                continue
            inter = iw * ih
            area_b = max(boxes[j, 2] - boxes[j, 0], 0.0) * max(boxes[j, 3] - boxes[j, 1], 0.0)
            union = area_a + area_b - inter
            if union > 0.0 and inter / union >= iou_thr:
                if k + 2 > pa.shape[0]:  # grow both (twins are rare: 16 pairs are usually enough)
                    pa = np.concatenate((pa, np.empty_like(pa)))
                    pb = np.concatenate((pb, np.empty_like(pb)))
                pa[k] = i
                pb[k] = j
                pa[k + 1] = j
                pb[k + 1] = i
                k += 2
    return pa[:k], pb[:k]


@njit(cache=True)
def _greedy_drop(scores: np.ndarray, pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    """The greedy rule on the twin pairs only: in descending score (ties: lower index first) a box not yet dropped
    drops its later partners. Boxes in no pair are never dropped and drop nothing, so they are left out."""
    n = scores.shape[0]
    drop = np.zeros(n, dtype=np.bool_)
    if pa.shape[0] == 0:
        return drop
    by_a = np.argsort(pa, kind="mergesort")
    pa = pa[by_a]
    pb = pb[by_a]
    starts = np.searchsorted(pa, np.arange(n + 1))
    involved = np.unique(pa)  # ascending, so a stable sort by -score breaks ties by index
    order = involved[np.argsort(-scores[involved], kind="mergesort")]
    rank = np.full(n, -1, dtype=np.int64)
    for r in range(order.shape[0]):
        rank[order[r]] = r
    for r in range(order.shape[0]):
        i = order[r]
        if drop[i]:
            continue
        for q in range(starts[i], starts[i + 1]):
            if rank[pb[q]] > r:
                drop[pb[q]] = True
    return drop


def label_twins(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_thr: float) -> np.ndarray:
    """Lower-scored twins of ONE model's detections: same object, another label, box IoU >= ``iou_thr``.

    Greedy in descending score (ties: lower index first): a detection not yet dropped drops every lower-scored
    detection with a different label whose box IoU with it is at least ``iou_thr`` (a class-agnostic NMS among
    differently labelled boxes; same-label pairs are left to the model's own NMS).

    Args:
        boxes: ``(N, 4)`` boxes ``x0, y0, x1, y1`` (any consistent unit).
        scores: ``(N,)`` scores.
        labels: ``(N,)`` integer labels as the model predicted them.
        iou_thr: IoU at which two differently labelled boxes are the same object, in ``(0, 1]``.

    Returns:
        ``(N,)`` bool, True for the detections to drop.

    Raises:
        ValueError: On mismatched lengths or ``iou_thr`` outside ``(0, 1]``.
    """
    b = np.ascontiguousarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    lab = np.asarray(labels).reshape(-1).astype(np.int64)
    if not (len(b) == len(s) == len(lab)):
        raise ValueError(f"label_twins: {len(b)} boxes, {len(s)} scores, {len(lab)} labels")
    if not 0.0 < iou_thr <= 1.0:
        raise ValueError(f"label_twins: iou_thr must be in (0, 1], got {iou_thr}")
    values, counts = np.unique(lab, return_counts=True)
    if len(values) < 2:  # one label: no twins by definition (saves the sweep)
        return np.zeros(len(b), dtype=bool)
    pa, pb = _twin_pairs(b, lab, int(values[np.argmax(counts)]), float(iou_thr))
    return _greedy_drop(s, pa, pb)


def majority_without_twins(
    boxes_list: Sequence[np.ndarray],
    scores_list: Sequence[np.ndarray],
    labels_list: Sequence[np.ndarray],
    weights: Sequence[float] | np.ndarray | None = None,
    twin_iou: float | None = TWIN_IOU,
    min_score: float = 0.0,
    n_classes: int | None = None,
) -> tuple[int | None, list[np.ndarray]]:
    """One cell type per image, as fusion (``ensemble.masks``) and flip-TTA merging decide it.

    Each model's label twins (:func:`label_twins`, box IoU >= ``twin_iou``) get score 0, then the image's class is
    the score-weighted majority (:func:`ensemble.boxes.image_class`) over the detections scoring at least
    ``min_score``. The caller relabels every detection to it (or first lets a classifier decide).

    Args:
        boxes_list: per model (or TTA pass), ``(N_m, 4)`` boxes in one unit.
        scores_list: per model, ``(N_m,)`` scores.
        labels_list: per model, ``(N_m,)`` integer labels as predicted.
        weights: per model weight (``None``: all 1).
        twin_iou: IoU at which a model's differently labelled detections are one object; ``None`` keeps twins.
        min_score: detections scoring below this do not vote (e.g. the fusion's ``skip_box_thr``).
        n_classes: number of classes (default: 1 + the largest label).

    Returns:
        ``(label, scores)``: the majority label (None when no detection votes) and per model its float64 scores
        with the twins set to 0 (so that WBF skips them).
    """
    scores = [np.asarray(s, dtype=np.float64).reshape(-1) for s in scores_list]
    if twin_iou is not None:  # before the vote: a twin is the same object, not a second opinion
        scores = [
            np.where(label_twins(b, s, lab, twin_iou), 0.0, s)
            for b, s, lab in zip(boxes_list, scores, labels_list, strict=True)
        ]
    voting = [np.where(s >= min_score, s, 0.0) for s in scores] if min_score > 0 else scores
    return image_class(voting, labels_list, weights, n_classes=n_classes), scores
