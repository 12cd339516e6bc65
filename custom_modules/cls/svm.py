"""SVM on hand-crafted object features, the liposome report's incumbent baseline (its section 8.4).

Features per instance (scikit-image ``regionprops`` on the native-resolution mask and image, nothing hand-written):
area, perimeter, circularity ``4 pi area / perimeter^2``, eccentricity, solidity, extent, major/minor axis
length, the central moments mu20, mu02, mu30, mu03 and the 7 Hu moments of the mask, and intensity statistics
inside the object (mean, std, min, max, 10/50/90 % quantiles) plus the mean of a 5-pixel ring around it minus the
object mean (an edge-contrast term standing in for the report's edge density profile). Classifier: scikit-learn
``StandardScaler`` + ``SVC`` with class weights inversely proportional to class frequencies (as the report; its
LIBSVM is one-against-one like ``SVC``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.measure import regionprops
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from celldata import CLASSES

from .data import image_meta, iter_instances
from .folds import grouped_stratified_folds
from .metrics import confusion_matrix

__all__ = ["FEATURE_NAMES", "object_features", "extract_features", "make_svm", "svm_fold_confusions"]

FEATURE_NAMES: tuple[str, ...] = (
    "area",
    "perimeter",
    "circularity",
    "eccentricity",
    "solidity",
    "extent",
    "major_axis",
    "minor_axis",
    "mu20",
    "mu02",
    "mu30",
    "mu03",
    *(f"hu{i}" for i in range(1, 8)),
    "int_mean",
    "int_std",
    "int_min",
    "int_max",
    "int_q10",
    "int_q50",
    "int_q90",
    "ring_minus_object",
)


def object_features(mask: np.ndarray, image: np.ndarray, ring: int = 5) -> np.ndarray:
    """Hand-crafted features of one object.

    Args:
        mask: ``(H, W)`` bool/0-1 mask of the object (any window containing it).
        image: ``(H, W)`` uint8 image of the same window.
        ring: Width in pixels of the surrounding ring for the edge-contrast feature.

    Returns:
        float64 ``(len(FEATURE_NAMES),)``.

    Raises:
        ValueError: empty mask.
    """
    m = np.asarray(mask) > 0
    if not m.any():
        raise ValueError("object_features: empty mask")
    ys, xs = np.nonzero(m)
    y0, y1 = max(ys.min() - ring - 1, 0), ys.max() + ring + 2
    x0, x1 = max(xs.min() - ring - 1, 0), xs.max() + ring + 2
    m = m[y0:y1, x0:x1]
    img = np.asarray(image)[y0:y1, x0:x1].astype(np.float64)
    props = regionprops(m.astype(np.uint8), intensity_image=img)[0]
    area = float(props.area)
    perim = float(props.perimeter)
    circ = 4.0 * np.pi * area / perim**2 if perim > 0 else 1.0
    mu = props.moments_central
    vals = img[m]
    ring_mask = ndimage.binary_dilation(m, iterations=ring) & ~m
    ring_mean = float(img[ring_mask].mean()) if ring_mask.any() else float(vals.mean())
    q10, q50, q90 = np.quantile(vals, [0.1, 0.5, 0.9])
    feats = [
        area,
        perim,
        circ,
        props.eccentricity,
        props.solidity,
        props.extent,
        props.axis_major_length,
        props.axis_minor_length,
        mu[2, 0],
        mu[0, 2],
        mu[3, 0],
        mu[0, 3],
        *props.moments_hu,
        vals.mean(),
        vals.std(),
        vals.min(),
        vals.max(),
        q10,
        q50,
        q90,
        ring_mean - vals.mean(),
    ]
    return np.asarray(feats, dtype=np.float64)


def extract_features(
    ann_file: str, data_root: str, classes: Sequence[str] = CLASSES, min_area: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features, labels, groups and images of every instance of a prepared COCO file (same order, ``min_area``
    filter and ids as :class:`~custom_modules.cls.data.SartoriusInstanceCropDataset`).

    Returns:
        ``X`` ``(N, F)`` float64, ``y`` ``(N,)`` int64, ``groups`` ``(N,)`` sample ids, ``image_ids`` ``(N,)``
        Kaggle ids of the instances' images.
    """
    X, y, g, ids = [], [], [], []
    for im, image, _a, m, label in iter_instances(ann_file, data_root, tuple(classes)):
        if int(m.sum()) < min_area:
            continue
        X.append(object_features(m, image))
        y.append(label)
        image_id, sample_id = image_meta(im)
        g.append(sample_id)
        ids.append(image_id)
    if not X:
        raise ValueError(f"{ann_file}: no annotated instances")
    return np.vstack(X), np.asarray(y, np.int64), np.asarray(g, dtype=object), np.asarray(ids, dtype=object)


def make_svm(params: Mapping[str, Any] | None = None):
    """``StandardScaler`` + ``SVC`` pipeline; ``params`` go to ``SVC`` (default rbf, C=1, balanced weights)."""
    kw = {"kernel": "rbf", "C": 1.0, "gamma": "scale", "class_weight": "balanced"}
    kw.update(dict(params or {}))
    return make_pipeline(StandardScaler(), SVC(**kw))


def svm_fold_confusions(
    ann_file: str,
    data_root: str,
    params: Mapping[str, Any] | None,
    classes: Sequence[str] = CLASSES,
    folds: int = 5,
    seed: int = 0,
    min_area: int = 1,
) -> tuple[list[np.ndarray], list[dict]]:
    """Per-fold confusion matrices of the SVM on the grouped stratified folds of
    :func:`~custom_modules.cls.folds.grouped_stratified_folds` (the detectors' folds of the same images and seed).

    Returns:
        (``folds`` ``(C, C)`` count matrices, per-fold ``{'train': n, 'test': n}``).
    """
    X, y, g, ids = extract_features(ann_file, data_root, classes, min_area)
    out, sizes = [], []
    for tr, te in grouped_stratified_folds(y, g, folds, seed, image_ids=ids, classes=classes):
        clf = make_svm(params).fit(X[tr], y[tr])
        out.append(confusion_matrix(y[te], clf.predict(X[te]), len(classes)))
        sizes.append({"train": int(tr.size), "test": int(te.size)})
    return out, sizes
