"""Conversions between mmdet results (torch tensors, full-frame masks) and the ensemble's numpy types.

Framework-light: needs torch only for tensor inputs (numpy arrays are accepted everywhere).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from celldata.instances import InstanceMasks
from ensemble.masks import remove_overlaps as _remove_overlaps

__all__ = [
    "to_numpy",
    "masks_to_instances",
    "boxes_to_instances",
    "remove_overlaps",
]


def to_numpy(x: Any) -> np.ndarray:
    """A torch tensor (any device), mmdet ``BitmapMasks`` or array-like as a numpy array."""
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    if hasattr(x, "masks") and hasattr(x, "to_ndarray"):  # mmdet BitmapMasks
        return x.to_ndarray()
    return np.asarray(x)


def masks_to_instances(masks: Any, height: int | None = None, width: int | None = None) -> InstanceMasks:
    """Full-frame binary masks (e.g. Mask R-CNN's ``pred_instances.masks``) as tight crops.

    The tight boxes are found with vectorised row/column reductions (torch when given a tensor, so a GPU
    result is reduced on the device and only the crops travel to the host).

    Args:
        masks: bool/0-1 tensor or array (N, H, W).
        height: Image height, required only when N == 0 and ``masks`` has no shape information.
        width: Image width, as ``height``.

    Returns:
        The N masks as :class:`InstanceMasks` (empty masks become 0x0 crops at the origin).

    Raises:
        ValueError: If ``masks`` is not 3-D.
    """
    if hasattr(masks, "masks") and hasattr(masks, "to_ndarray"):  # BitmapMasks
        masks = masks.to_ndarray()
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")
    n, h, w = (int(v) for v in masks.shape)
    h = h if height is None else int(height)
    w = w if width is None else int(width)
    if n == 0:
        return InstanceMasks.empty(h, w)
    if hasattr(masks, "detach"):
        m = masks.detach().bool()
        rows = m.any(dim=2).cpu().numpy()
        cols = m.any(dim=1).cpu().numpy()
    else:
        m = np.asarray(masks).astype(bool, copy=False)
        rows = m.any(axis=2)
        cols = m.any(axis=1)
    has = rows.any(axis=1)
    y0 = np.where(has, rows.argmax(axis=1), 0)
    y1 = np.where(has, rows.shape[1] - rows[:, ::-1].argmax(axis=1), 0)
    x0 = np.where(has, cols.argmax(axis=1), 0)
    x1 = np.where(has, cols.shape[1] - cols[:, ::-1].argmax(axis=1), 0)
    boxes = np.stack([x0, y0, x1, y1], axis=1).astype(np.int32)
    crops = []
    for i, (a, b, c, d) in enumerate(boxes):
        crop = m[i, b:d, a:c]
        crops.append(to_numpy(crop).astype(bool, copy=False))
    return InstanceMasks(h, w, boxes, crops)


def boxes_to_instances(boxes: Any, height: int, width: int) -> InstanceMasks:
    """Filled rectangles of xyxy pixel boxes as masks (box-only detectors scored with mask metrics).

    Pixel ``(x, y)`` (its centre at ``x + 0.5``) is inside when its centre lies in the box, i.e. columns
    ``round(x0) .. round(x1) - 1``; boxes are clipped to the image. A box with a non-finite coordinate
    (a diverged detector) gives an empty mask, so the result stays aligned with the scores.

    Args:
        boxes: float (N, 4) xyxy pixels.
        height: Image height H.
        width: Image width W.

    Returns:
        N rectangular masks.
    """
    b = to_numpy(boxes).astype(np.float64).reshape(-1, 4)
    b[~np.isfinite(b).all(axis=1)] = 0.0
    r = np.rint(b).astype(np.int64)
    r[:, [0, 2]] = np.clip(r[:, [0, 2]], 0, width)
    r[:, [1, 3]] = np.clip(r[:, [1, 3]], 0, height)
    r[:, 2] = np.maximum(r[:, 2], r[:, 0])
    r[:, 3] = np.maximum(r[:, 3], r[:, 1])
    crops = [np.ones((y1 - y0, x1 - x0), dtype=bool) for x0, y0, x1, y1 in r]
    return InstanceMasks(height, width, r.astype(np.int32), crops)


def remove_overlaps(
    masks: InstanceMasks, scores: np.ndarray, max_lost_frac: float = 0.5
) -> tuple[InstanceMasks, np.ndarray]:
    """Overlap removal as a submission does it, by :func:`ensemble.masks.remove_overlaps` (pixels go to the
    higher-scoring instance; an instance losing more than ``max_lost_frac`` of its pixels is dropped).

    Args:
        masks: N instance masks of one image.
        scores: float (N,) confidences.
        max_lost_frac: Largest tolerated fraction of lost pixels, in [0, 1].

    Returns:
        ``(kept_masks, kept_indices)`` (int64 indices into the input).
    """
    return _remove_overlaps(masks, np.asarray(scores, dtype=np.float64), max_lost_frac=max_lost_frac)
