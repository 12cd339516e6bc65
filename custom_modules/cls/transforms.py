"""Augmentations of the liposome report (section 5.5) and input packing, registered in
``mmengine.registry.TRANSFORMS`` (mmcv ``BaseTransform`` subclasses operating on ``results['img']``).

The report's settings (each applied at random to every training sample): rotation in [-180, 180] degrees,
horizontal/vertical shift in [-10 %, 10 %] of the size, horizontal and vertical flip with probability 0.5, shear in
[-0.2, 0.2] (radians, Keras ``shear_range=0.2``), zoom in [0.8, 1.0] (zoom-in up to 20 %, independent in x and y as
Keras does). Each is switched on by its own argument of :class:`ClsRandomAffine` / :class:`ClsRandomFlip`, so the
cumulative study (none -> +rotation -> +shift -> +flip -> +shear -> +zoom) is a list of configs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.registry import TRANSFORMS

__all__ = ["ClsRandomAffine", "ClsRandomFlip", "PackClsInputs", "affine_matrix"]


class _SeededTransform(BaseTransform):
    """Random draws from a numpy Generator seeded by torch's seed of the process (mmengine's ``randomness.seed``;
    each dataloader worker gets its own), salted per transform class, so runs repeat exactly."""

    _salt = 0
    _gen: np.random.Generator | None = None
    _gen_seed: int | None = None

    def rng(self) -> np.random.Generator:
        """The Generator of the current process seed."""
        seed = torch.initial_seed()
        if self._gen is None or self._gen_seed != seed:
            self._gen = np.random.default_rng([seed % 2**63, self._salt])
            self._gen_seed = seed
        return self._gen


_BORDER = {
    "constant": cv2.BORDER_CONSTANT,
    "nearest": cv2.BORDER_REPLICATE,
    "reflect": cv2.BORDER_REFLECT_101,
}


def affine_matrix(
    size: tuple[int, int], angle: float, shift: tuple[float, float], shear: float, zoom: tuple[float, float]
) -> np.ndarray:
    """2x3 matrix (for ``cv2.warpAffine``) of a rotation/shear/zoom about the centre followed by a shift.

    Args:
        size: ``(H, W)``.
        angle: Rotation in degrees (counter-clockwise).
        shift: ``(dx, dy)`` in pixels.
        shear: Shear angle in radians.
        zoom: ``(zx, zy)``; < 1 magnifies (Keras convention: output pixel ``p`` samples input ``c + z * (p - c)``).

    Returns:
        ``(2, 3)`` float64 forward matrix.
    """
    h, w = size
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    t = math.radians(angle)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    sh = np.array([[1.0, -math.sin(shear)], [0.0, math.cos(shear)]])
    zm = np.diag([1.0 / zoom[0], 1.0 / zoom[1]])
    a = rot @ sh @ zm
    b = c - a @ c + np.asarray(shift, float)
    return np.hstack([a, b[:, None]])


@TRANSFORMS.register_module()
class ClsRandomAffine(_SeededTransform):
    """Random rotation, shift, shear and zoom in one warp (``results['img']`` and, if present, ``results['mask']``).

    Args:
        rotation: Max absolute angle in degrees (180 = the report's [-180, 180]; 0 = off).
        shift: Max absolute shift as a fraction of width/height (0.1 = the report's 10 %; 0 = off).
        shear: Max absolute shear in radians (0.2; 0 = off).
        zoom: ``(low, high)`` zoom factor range, drawn independently for x and y (``(0.8, 1.0)``; ``(1, 1)`` = off).
        border_mode: ``'nearest'`` (Keras default), ``'constant'`` (zeros; natural for masked crops) or
            ``'reflect'``.
        prob: Probability of applying the warp.
    """

    _salt = 1

    def __init__(
        self,
        rotation: float = 0.0,
        shift: float = 0.0,
        shear: float = 0.0,
        zoom: Sequence[float] = (1.0, 1.0),
        border_mode: str = "nearest",
        prob: float = 1.0,
    ) -> None:
        if border_mode not in _BORDER:
            raise ValueError(f"border_mode must be one of {sorted(_BORDER)}, got {border_mode!r}")
        if len(zoom) != 2 or not 0 < zoom[0] <= zoom[1]:
            raise ValueError(f"zoom must be (low, high) with 0 < low <= high, got {zoom}")
        self.rotation = float(rotation)
        self.shift = float(shift)
        self.shear = float(shear)
        self.zoom = (float(zoom[0]), float(zoom[1]))
        self.border_mode = border_mode
        self.prob = float(prob)

    def transform(self, results: dict) -> dict:
        """Warp ``img`` (bilinear) and ``mask`` (nearest) with one random matrix."""
        rng = self.rng()
        if rng.random() >= self.prob:
            return results
        img = results["img"]
        h, w = img.shape[:2]
        angle = rng.uniform(-self.rotation, self.rotation) if self.rotation else 0.0
        dx = rng.uniform(-self.shift, self.shift) * w if self.shift else 0.0
        dy = rng.uniform(-self.shift, self.shift) * h if self.shift else 0.0
        shear = rng.uniform(-self.shear, self.shear) if self.shear else 0.0
        zoom = tuple(rng.uniform(*self.zoom, size=2)) if self.zoom != (1.0, 1.0) else (1.0, 1.0)
        m = affine_matrix((h, w), angle, (dx, dy), shear, zoom)
        border = _BORDER[self.border_mode]
        results["img"] = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=border)
        if "mask" in results:
            results["mask"] = cv2.warpAffine(
                results["mask"], m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT
            )
        return results

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(rotation={self.rotation}, shift={self.shift}, shear={self.shear}, "
            f"zoom={self.zoom}, border_mode={self.border_mode!r}, prob={self.prob})"
        )


@TRANSFORMS.register_module()
class ClsRandomFlip(_SeededTransform):
    """Independent horizontal and vertical flips, each with probability ``prob``.

    Args:
        horizontal: Enable horizontal flips.
        vertical: Enable vertical flips.
        prob: Probability of each enabled flip (0.5 in the report).
    """

    _salt = 2

    def __init__(self, horizontal: bool = True, vertical: bool = True, prob: float = 0.5) -> None:
        self.horizontal = bool(horizontal)
        self.vertical = bool(vertical)
        self.prob = float(prob)

    def transform(self, results: dict) -> dict:
        """Flip ``img`` (and ``mask``)."""
        rng = self.rng()
        for enabled, axis in ((self.horizontal, 1), (self.vertical, 0)):
            if enabled and rng.random() < self.prob:
                results["img"] = np.ascontiguousarray(np.flip(results["img"], axis))
                if "mask" in results:
                    results["mask"] = np.ascontiguousarray(np.flip(results["mask"], axis))
        return results


@TRANSFORMS.register_module()
class PackClsInputs(BaseTransform):
    """``img`` -> ``inputs`` ``(C, H, W)`` float32 tensor (raw 0..255), metadata -> ``data_samples`` dict.

    Args:
        meta_keys: Keys copied into ``data_samples`` when present (``gt_label`` always is, when present).
    """

    def __init__(self, meta_keys: Sequence[str] = ("image_id", "sample_id", "ann_id")) -> None:
        self.meta_keys = tuple(meta_keys)

    def transform(self, results: dict) -> dict:
        """Pack one sample for ``default_collate``."""
        img = np.asarray(results["img"], dtype=np.float32)
        img = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
        samples = {k: results[k] for k in self.meta_keys if k in results}
        if "gt_label" in results:
            samples["gt_label"] = int(results["gt_label"])
        return {"inputs": torch.from_numpy(np.ascontiguousarray(img)), "data_samples": samples}
