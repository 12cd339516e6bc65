"""mmseg transforms that give a training sample Cellpose flow targets consistent with its geometric augmentation.

Design: the expensive part (instance labels and their flows, :mod:`celldata.flows`) is computed **once per image**
at full resolution and cached (in memory, bounded, and optionally on disk under the data root). Geometric
augmentations do not touch the flows: :class:`LoadFlowSource` adds two *source-coordinate maps* to the sample's
``seg_fields`` (float32 ``(H, W)``: the row / column of every pixel, offset by :data:`COORD_OFFSET` so that fill
values of rotations or padding are recognizably invalid), and every mmseg transform that moves label maps (crops,
flips, resizes with nearest interpolation, :class:`RandomRotate90`) moves them along. :class:`GenerateFlowTargets`,
after the augmentations, reads for every output pixel its source pixel, gathers the cached labels and flows there,
and maps the flow vectors through the linear part of the output -> source map (fitted from the coordinate maps:
exactly a signed permutation for flips and 90-degree rotations, a scaling for resizes), renormalized to unit
length. So flips negate a component, 90-degree rotations swap them with a sign, and crops keep every cell's
flows pointing to its full-image centre (as Cellpose, which computes flows once and crops them).

Pipeline (``img_path`` must be ``<data_root>/<file_name>`` with ``file_name`` from the COCO json, as in the prepared
layout, ``celldata/prepare.py``)::

    LoadImageFromFile, LoadAnnotations, LoadFlowSource, [RandomResize], RandomCrop, RandomFlip, RandomRotate90,
    PhotoMetricDistortion, GenerateFlowTargets, PackFlowSegInputs

:class:`PackFlowSegInputs` packs ``gt_flows`` (float32 ``(4, H, W)``: unit flow y, flow x, cell probability 0/1,
validity 0/1) into ``data_sample.gt_flows`` for ``custom_modules.seg.flow_head``.
"""

from __future__ import annotations

import hashlib
import json
import os
import os.path as osp
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.structures import PixelData
from mmseg.datasets.transforms import PackSegInputs
from mmseg.registry import TRANSFORMS

from celldata.coco import kaggle_id
from celldata.fileio import atomic_open
from celldata.flows import instances_to_labels, labels_to_flows
from celldata.instances import InstanceMasks

__all__ = [
    'COORD_OFFSET',
    'FLOW_CACHE_VERSION',
    'GenerateFlowTargets',
    'LoadFlowSource',
    'PackFlowSegInputs',
    'RandomRotate90',
    'flow_source',
]

COORD_OFFSET = 1_000_000.0
"""Added to the source coordinates (exact in float32 up to 16.7M): values below it are fills, not pixels."""
FLOW_CACHE_VERSION = 1
"""Part of every disk-cache key: bump when the flow definition changes."""
_SRC_Y = 'flow_src_y'
_SRC_X = 'flow_src_x'

_COCO_INDEX: dict[tuple[str, float], dict[str, list[dict]]] = {}
_MEMORY: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()


def _coco_index(path: str) -> dict[str, list[dict]]:
    """Kaggle id -> COCO RLE segmentations of a prepared COCO json (read once per process and file version)."""
    key = (path, osp.getmtime(path))
    if key not in _COCO_INDEX:
        with open(path, encoding='utf-8') as f:
            coco = json.load(f)
        by_num: dict[Any, str] = {im['id']: kaggle_id(im) for im in coco.get('images', [])}
        index: dict[str, list[dict]] = {k: [] for k in by_num.values()}
        for ann in coco.get('annotations', []):
            index[by_num[ann['image_id']]].append(ann['segmentation'])
        _COCO_INDEX.clear()
        _COCO_INDEX[key] = index
    return _COCO_INDEX[key]


def flow_source(
    rles: list[dict], height: int, width: int, cache_dir: str | None = None, max_memory_items: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Full-image instance labels and unit flows of one image's annotations, cached.

    Args:
        rles: The image's COCO RLE segmentations (possibly overlapping: resolved by
            :func:`celldata.flows.instances_to_labels`).
        height: Image height H.
        width: Image width W.
        cache_dir: Directory of the disk cache (``<sha1 of the annotations>.npz``), or None for memory only.
        max_memory_items: Images kept in this process's memory cache (least recently used dropped).

    Returns:
        ``(labels int32 (H, W), flows float32 (2, H, W))``; read-only arrays shared with the cache.
    """
    digest = hashlib.sha1(
        json.dumps([FLOW_CACHE_VERSION, height, width, rles], sort_keys=True, default=str).encode()
    ).hexdigest()
    key = (digest,)
    hit = _MEMORY.get(key)
    if hit is not None:
        _MEMORY.move_to_end(key)
        return hit
    path = osp.join(cache_dir, digest + '.npz') if cache_dir else None
    labels = flows = None
    if path and osp.isfile(path):
        try:
            with np.load(path, allow_pickle=False) as z:
                labels, flows = z['labels'].astype(np.int32), z['flows'].astype(np.float32)
        except (OSError, ValueError, KeyError):  # a damaged cache file: recompute and overwrite
            labels = flows = None
    if labels is None or flows is None:
        inst = InstanceMasks.from_coco_rles(rles) if rles else InstanceMasks.empty(height, width)
        labels = instances_to_labels(inst)
        flows = labels_to_flows(labels)
        if path:
            os.makedirs(cache_dir, exist_ok=True)
            with atomic_open(path, 'wb') as f:
                np.savez(f, labels=labels, flows=flows)
    labels.setflags(write=False)
    flows.setflags(write=False)
    _MEMORY[key] = (labels, flows)
    while len(_MEMORY) > max(1, max_memory_items):
        _MEMORY.popitem(last=False)
    return labels, flows


@TRANSFORMS.register_module()
class LoadFlowSource(BaseTransform):
    """Attaches the image's cached full-resolution labels/flows and source-coordinate maps to the sample.

    Args:
        ann_file: Prepared COCO json with the image's annotations (looked up by the Kaggle id = the image file's
            stem); relative paths are relative to the data root, taken as the parent of the image's directory
            (``<data_root>/train/<id>.png`` in the prepared layout).
        cache_dir: Disk cache directory relative to the data root (or absolute); None: memory only.
        max_memory_items: Images kept in each process's memory cache.

    Adds ``flow_source`` (labels, flows), ``flow_src_y`` / ``flow_src_x`` (float32 (H, W), in ``seg_fields``).

    Raises:
        KeyError: the image is not in ``ann_file``.
        ValueError: the image size differs from the annotations'.
    """

    def __init__(
        self,
        ann_file: str = 'annotations/train_all.json',
        cache_dir: str | None = 'flow_cache',
        max_memory_items: int = 32,
    ) -> None:
        self.ann_file = ann_file
        self.cache_dir = cache_dir
        self.max_memory_items = max_memory_items

    def _data_root(self, img_path: str) -> str:
        # prepared layout: img_path = <data_root>/<split dir>/<id>.png
        return str(Path(img_path).parent.parent)

    def transform(self, results: dict) -> dict:
        """Adds the flow source of ``results['img_path']``; see the class docstring."""
        img_path = results['img_path']
        root = self._data_root(img_path)
        ann = self.ann_file if osp.isabs(self.ann_file) else osp.join(root, self.ann_file)
        image_id = Path(img_path).stem
        index = _coco_index(ann)
        if image_id not in index:
            raise KeyError(f'LoadFlowSource: image {image_id!r} ({img_path}) is not in {ann}')
        h, w = results['img'].shape[:2]
        cache = None
        if self.cache_dir:
            cache = self.cache_dir if osp.isabs(self.cache_dir) else osp.join(root, self.cache_dir)
        labels, flows = flow_source(index[image_id], h, w, cache, self.max_memory_items)
        if labels.shape != (h, w):
            raise ValueError(f'LoadFlowSource: image {image_id!r} is {h}x{w}, its annotations {labels.shape}')
        yy, xx = np.mgrid[:h, :w].astype(np.float32)
        results['flow_source'] = (labels, flows)
        results[_SRC_Y] = yy + np.float32(COORD_OFFSET)
        results[_SRC_X] = xx + np.float32(COORD_OFFSET)
        results.setdefault('seg_fields', [])
        for k in (_SRC_Y, _SRC_X):
            if k not in results['seg_fields']:
                results['seg_fields'].append(k)
        return results


@TRANSFORMS.register_module()
class RandomRotate90(BaseTransform):
    """Rotates the image and every ``seg_fields`` map by ``k * 90`` degrees (``np.rot90``, exact).

    Args:
        prob: Probability of rotating; k is then drawn uniformly from ``directions``.
        directions: Allowed k (number of counter-clockwise quarter turns); ``(2,)`` keeps non-square shapes.

    Adds ``rot90_k`` (0 when not rotated).
    """

    def __init__(self, prob: float = 0.5, directions: tuple[int, ...] = (1, 2, 3)) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f'RandomRotate90: prob must be in [0, 1], got {prob}')
        if not directions or any(int(k) % 4 == 0 for k in directions):
            raise ValueError(
                f'RandomRotate90: directions must be non-empty quarter turns 1..3, got {directions}'
            )
        self.prob = prob
        self.directions = tuple(int(k) for k in directions)

    def transform(self, results: dict) -> dict:
        """Rotates ``img`` and the ``seg_fields``; updates ``img_shape``."""
        k = 0
        # the global NumPy RNG, as mmcv transforms: mmengine seeds it per worker (reproducible pipelines)
        if np.random.rand() < self.prob:  # noqa: NPY002
            k = int(self.directions[np.random.randint(len(self.directions))])  # noqa: NPY002
        if k:
            results['img'] = np.ascontiguousarray(np.rot90(results['img'], k))
            for key in results.get('seg_fields', []):
                results[key] = np.ascontiguousarray(np.rot90(results[key], k))
            results['img_shape'] = results['img'].shape[:2]
        results['rot90_k'] = k
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}(prob={self.prob}, directions={self.directions})'


def _source_jacobian(sy: np.ndarray, sx: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """2x2 linear part A of the output (y, x) -> source (y, x) map, fitted on valid pixels (least squares)."""
    oy, ox = np.nonzero(valid)
    if oy.size > 4096:  # a regular subsample is plenty for an affine fit
        step = oy.size // 4096 + 1
        oy, ox = oy[::step], ox[::step]
    if oy.size < 3:
        return np.eye(2)
    design = np.stack([oy, ox, np.ones_like(oy)], axis=1).astype(np.float64)
    rhs = np.stack([sy[oy, ox], sx[oy, ox]], axis=1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, rhs, rcond=None)
    a = coef[:2].T  # rows: source y, source x; columns: output y, output x
    if abs(np.linalg.det(a)) < 1e-9:
        return np.eye(2)
    return a


@TRANSFORMS.register_module()
class GenerateFlowTargets(BaseTransform):
    """Builds ``gt_flows`` float32 ``(4, H, W)`` for the augmented sample from its source-coordinate maps.

    Channels: unit flow y, unit flow x, cell probability (0/1), validity (0/1; 0 where a pixel has no source:
    rotation or padding fills). Removes ``flow_source`` and the coordinate maps from the sample.

    Raises:
        KeyError: ``LoadFlowSource`` did not run before.
    """

    def transform(self, results: dict) -> dict:
        """See the class docstring."""
        if 'flow_source' not in results:
            raise KeyError('GenerateFlowTargets needs LoadFlowSource earlier in the pipeline')
        labels, flows = results.pop('flow_source')
        cy = results.pop(_SRC_Y)
        cx = results.pop(_SRC_X)
        results['seg_fields'] = [k for k in results.get('seg_fields', []) if k not in (_SRC_Y, _SRC_X)]
        h0, w0 = labels.shape
        sy = np.rint(cy.astype(np.float64) - COORD_OFFSET)
        sx = np.rint(cx.astype(np.float64) - COORD_OFFSET)
        valid = (sy >= 0) & (sy < h0) & (sx >= 0) & (sx < w0)
        iy = np.where(valid, sy, 0).astype(np.int64)
        ix = np.where(valid, sx, 0).astype(np.int64)
        a_inv = np.linalg.inv(_source_jacobian(sy, sx, valid))  # source vector -> output vector
        fy = flows[0][iy, ix].astype(np.float64)
        fx = flows[1][iy, ix].astype(np.float64)
        oy = a_inv[0, 0] * fy + a_inv[0, 1] * fx
        ox = a_inv[1, 0] * fy + a_inv[1, 1] * fx
        norm = np.hypot(oy, ox)
        scale = np.where(norm > 0, 1.0 / np.maximum(norm, 1e-12), 0.0) * valid
        out = np.empty((4, *sy.shape), dtype=np.float32)
        out[0] = oy * scale
        out[1] = ox * scale
        out[2] = (labels[iy, ix] > 0) & valid
        out[3] = valid
        results['gt_flows'] = out
        return results


@TRANSFORMS.register_module()
class PackFlowSegInputs(PackSegInputs):
    """``PackSegInputs`` that also packs ``gt_flows`` ``(4, H, W)`` into ``data_sample.gt_flows`` (PixelData)."""

    def transform(self, results: dict) -> dict:
        """See the class docstring."""
        packed = super().transform(results)
        if 'gt_flows' in results:
            packed['data_samples'].gt_flows = PixelData(
                data=torch.from_numpy(np.ascontiguousarray(results['gt_flows']))
            )
        return packed
