"""Cellpose-style flow representation of cell instances: targets from labels, instances from predictions.

Framework-free (NumPy, SciPy, numba). Definitions follow Stringer et al. 2021 (Cellpose) and its reference code:

* **Flow targets** (:func:`labels_to_flows`): for every instance of an integer label image, the heat-diffusion
  solution ``T`` inside the instance's mask from a unit source at its *centre* (the mask pixel nearest the
  coordinate-wise median of the mask's pixels), after ``2 * (ptp(y) + ptp(x))`` Jacobi iterations of the 3x3 mean
  (pixels outside the mask hold 0, the source adds 1 per iteration). The flow is the central-difference gradient
  of ``log(1 + T)``, normalized to unit length: ``flows[0]`` its y component (rows), ``flows[1]`` its x component
  (columns). Flows point up the heat gradient, i.e. toward the centre; they are zero outside every instance (and
  on parts of an instance that the diffusion does not reach: the components not holding the centre).
* **Cell probability target** (:func:`cell_probability`): 1 inside any instance, 0 outside.
* **Decoding** (:func:`flows_to_labels`): threshold the cell probability, move every foreground pixel ``niter``
  Euler steps along the bilinearly interpolated flow (flows are zeroed outside the foreground; positions are
  clamped to the image), take the histogram of the (truncated) end points, seed at its local maxima (5x5 window)
  holding more than 10 end points, grow every seed for 5 steps of 8-connected dilation through histogram bins
  holding more than 2 end points (seeds are painted in decreasing count order, later ones win), label every
  pixel by the region its end point fell into, drop regions covering more than 40 % of the image, then remove
  masks whose recomputed flows disagree with the given ones (:func:`flow_errors`: mean over the mask of the
  squared flow difference summed over both components, removed when above ``flow_threshold``, default 0.4),
  remove masks smaller than ``min_size`` pixels and fill holes (background pixels only).

Flows here are always in *unit scale* (length 1 inside cells). A network trained with the Cellpose loss predicts
``FLOW_SCALE * flows`` (the targets are multiplied by 5); divide its output by :data:`FLOW_SCALE` before
decoding (``custom_modules.seg.flow_head.FlowHead`` does this in ``predict``).

Overlapping annotations (the Sartorius ground truth has a few) do not fit one label image;
:func:`instances_to_labels` resolves them deterministically (see there).

**Inference** (``custom_modules.inference`` on a flow model): the network's map ``(3, H, W)`` (unit flows and the
cell logit) is decoded by :func:`decode_flow_map` (sigmoid, :func:`flows_to_labels` with :data:`DECODE_DEFAULTS`
or a config's ``flow_decode`` dict, :func:`labels_to_instances`); flip test-time augmentation averages the maps of
the passes after :func:`flip_flow_map` mapped each one back (mirror + negated flow component), never instances.
:func:`is_flow_model_config` recognizes a flow model from its config dict (no framework import).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit
from scipy import ndimage

from .instances import InstanceMasks

__all__ = [
    "DECODE_DEFAULTS",
    "FLOW_HEAD_TYPES",
    "FLOW_SCALE",
    "FlowInstances",
    "cell_probability",
    "decode_flow_map",
    "flip_flow_map",
    "is_flow_model_config",
    "flow_errors",
    "flow_targets",
    "flows_to_labels",
    "follow_flows",
    "instances_to_labels",
    "labels_to_flows",
    "labels_to_instances",
    "masks_from_end_points",
    "remove_bad_flow_masks",
    "fill_holes_and_remove_small",
]

FLOW_SCALE: float = 5.0
"""Cellpose's flow target scale: the network is trained on ``FLOW_SCALE * flows`` (MSE), decoding uses unit flows."""

FLOW_HEAD_TYPES: frozenset[str] = frozenset({"FlowHead", "FlowUPerHead"})
"""Registered decode heads that predict flows (``custom_modules.seg.flow_head``)."""

DECODE_DEFAULTS: dict[str, float | int | None] = {
    "prob_threshold": 0.5,
    "niter": 200,
    "flow_threshold": 0.4,
    "min_size": 15,
    "min_seed_count": 10,
    "max_mask_fraction": 0.4,
}
"""Default :func:`flows_to_labels` parameters of :func:`decode_flow_map` (Cellpose's); a flow config's top-level
``flow_decode`` dict overrides any of them at inference."""


def _type_name(t: object) -> str:
    """A registry type without its scope (``'mmseg.FlowHead'`` -> ``'FlowHead'``); '' for non-strings."""
    return t.rsplit(".", 1)[-1] if isinstance(t, str) else ""


def is_flow_model_config(model: object) -> bool:
    """Whether a model config dict describes a flow model (framework-free: reads the dict only).

    Args:
        model: The ``model`` entry of an OpenMMLab config (a mapping).

    Returns:
        True when its ``type`` is ``FlowEncoderDecoder`` or its ``decode_head`` is one of :data:`FLOW_HEAD_TYPES`
        (a registry scope prefix is ignored).
    """
    if not hasattr(model, "get"):
        return False
    if _type_name(model.get("type")) == "FlowEncoderDecoder":
        return True
    head = model.get("decode_head")
    return hasattr(head, "get") and _type_name(head.get("type")) in FLOW_HEAD_TYPES


# ----------------------------------------------------------------------------------------------- labels
def instances_to_labels(instances: InstanceMasks) -> np.ndarray:
    """One label image from possibly overlapping instance masks (deterministic overlap resolution).

    Rule: a pixel claimed by several instances goes to the *smallest* of them (by area; ties to the lower
    index), so a small cell lying on a large one keeps its whole mask and the large one loses the overlap.
    Then every instance keeps only its largest 8-connected component (ties: the first in raster order);
    fragments cut off by the overlap become background (flows could not reach them from the centre anyway).

    Args:
        instances: N masks of an (H, W) image.

    Returns:
        int32 (H, W): 0 background, ``i + 1`` for (what remains of) instance i; instances that lose every pixel
        are absent.
    """
    h, w = instances.height, instances.width
    labels = np.zeros((h, w), dtype=np.int32)
    if len(instances) == 0:
        return labels
    areas = instances.areas()
    order = np.lexsort(
        (-np.arange(len(areas)), -areas)
    )  # largest first, smallest (then lowest index) painted last
    for i in order.tolist():
        x0, y0, x1, y1 = instances.boxes[i]
        view = labels[y0:y1, x0:x1]
        view[instances.crops[i]] = i + 1
    structure = np.ones((3, 3), dtype=bool)
    for i, sl in enumerate(ndimage.find_objects(labels)):
        if sl is None:
            continue
        own = labels[sl] == i + 1
        comp, n = ndimage.label(own, structure=structure)
        if n > 1:
            sizes = np.bincount(comp.ravel())[1:]
            keep = int(np.argmax(sizes)) + 1
            labels[sl][own & (comp != keep)] = 0
    return labels


def _relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """int32 labels renumbered 1..K in increasing order of their old values (0 stays 0)."""
    values = np.unique(labels)
    values = values[values > 0]
    if values.size == 0:
        return np.zeros(labels.shape, dtype=np.int32)
    lut = np.zeros(int(values[-1]) + 1, dtype=np.int32)
    lut[values] = np.arange(1, values.size + 1, dtype=np.int32)
    return lut[labels]


# ------------------------------------------------------------------------------------------------ flows
@njit(cache=True)
def _flows_kernel(labels, boxes, niter_fixed, out):  # pragma: no cover - numba
    """Fills ``out`` (2, H, W) float32 with the unit flows of every label (boxes[k] = y0, x0, y1, x1 of k+1)."""
    h_img, w_img = labels.shape
    for k in range(boxes.shape[0]):
        y0, x0, y1, x1 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        if y1 <= y0:
            continue
        lab = k + 1
        ly = y1 - y0 + 2  # padded crop: a zero ring around the box
        lx = x1 - x0 + 2
        n = 0
        for y in range(y0, y1):
            for x in range(x0, x1):
                if labels[y, x] == lab:
                    n += 1
        if n == 0:
            continue
        ys = np.empty(n, dtype=np.int64)
        xs = np.empty(n, dtype=np.int64)
        j = 0
        for y in range(y0, y1):
            for x in range(x0, x1):
                if labels[y, x] == lab:
                    ys[j] = y - y0 + 1
                    xs[j] = x - x0 + 1
                    j += 1
        ymed = np.median(ys.astype(np.float64))
        xmed = np.median(xs.astype(np.float64))
        best = 0
        bestd = 1e300
        for j in range(n):
            d = (ys[j] - ymed) ** 2 + (xs[j] - xmed) ** 2
            if d < bestd:
                bestd = d
                best = j
        c = ys[best] * lx + xs[best]
        if niter_fixed > 0:
            niter = niter_fixed
        else:
            niter = 2 * ((ys.max() - ys.min()) + (xs.max() - xs.min()))
            if niter < 1:
                niter = 1
        t = np.zeros(ly * lx, dtype=np.float64)
        tmp = np.empty(n, dtype=np.float64)
        idx = ys * lx + xs
        for _ in range(niter):
            t[c] += 1.0
            for j in range(n):
                p = idx[j]
                tmp[j] = (
                    t[p]
                    + t[p - lx]
                    + t[p + lx]
                    + t[p - 1]
                    + t[p + 1]
                    + t[p - lx - 1]
                    + t[p - lx + 1]
                    + t[p + lx - 1]
                    + t[p + lx + 1]
                ) / 9.0
            for j in range(n):
                t[idx[j]] = tmp[j]
        for j in range(n):
            t[idx[j]] = np.log1p(t[idx[j]])
        for j in range(n):
            p = idx[j]
            dy = t[p + lx] - t[p - lx]
            dx = t[p + 1] - t[p - 1]
            norm = np.sqrt(dy * dy + dx * dx)
            yy = ys[j] - 1 + y0
            xx = xs[j] - 1 + x0
            if norm > 0.0 and yy < h_img and xx < w_img:
                out[0, yy, xx] = dy / norm
                out[1, yy, xx] = dx / norm


def _label_boxes(labels: np.ndarray) -> np.ndarray:
    """int64 (K, 4) ``(y0, x0, y1, x1)`` (exclusive) of labels 1..K = max; zeros for absent labels."""
    objs = ndimage.find_objects(labels)
    boxes = np.zeros((len(objs), 4), dtype=np.int64)
    for k, sl in enumerate(objs):
        if sl is not None:
            boxes[k] = (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)
    return boxes


def labels_to_flows(labels: np.ndarray, niter: int | None = None) -> np.ndarray:
    """Unit-norm Cellpose flows of an instance label image (see the module docstring for the definition).

    Args:
        labels: int (H, W), 0 background, instance labels > 0 (need not be consecutive; each label value is one
            instance, which should be 8-connected: only the component holding the centre gets flows).
        niter: Diffusion iterations for every instance; None: ``2 * (ptp(y) + ptp(x))`` per instance (Cellpose).

    Returns:
        float32 (2, H, W): ``(flow_y, flow_x)``, unit length where the diffusion reached (every pixel of a
        connected instance), 0 elsewhere.

    Raises:
        ValueError: if ``labels`` is not 2-D or holds negative values.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels_to_flows: labels must be (H, W), got shape {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels_to_flows: labels must be >= 0")
    lab = np.ascontiguousarray(labels, dtype=np.int32)
    h, w = lab.shape
    out = np.zeros((2, h, w), dtype=np.float32)
    if h == 0 or w == 0 or lab.max() == 0:
        return out
    _flows_kernel(lab, _label_boxes(lab), np.int64(niter or 0), out)
    return out


def cell_probability(labels: np.ndarray) -> np.ndarray:
    """Cell probability target: float32 (H, W), 1 where ``labels > 0``, else 0."""
    return (np.asarray(labels) > 0).astype(np.float32)


def flow_targets(labels: np.ndarray, niter: int | None = None) -> np.ndarray:
    """Both targets stacked: float32 (3, H, W) ``(flow_y, flow_x, cell_probability)`` (unit-scale flows)."""
    out = np.empty((3, *np.asarray(labels).shape), dtype=np.float32)
    out[:2] = labels_to_flows(labels, niter)
    out[2] = cell_probability(labels)
    return out


# --------------------------------------------------------------------------------------------- decoding
@njit(cache=True)
def _follow_kernel(flows, ys, xs, niter):  # pragma: no cover - numba
    """Euler integration of points (float64 ys, xs, modified in place) along bilinearly interpolated flows."""
    h = flows.shape[1]
    w = flows.shape[2]
    for i in range(ys.shape[0]):
        y = ys[i]
        x = xs[i]
        for _ in range(niter):
            yf = int(y)
            xf = int(x)
            if yf > h - 1:
                yf = h - 1
            if xf > w - 1:
                xf = w - 1
            yf1 = min(yf + 1, h - 1)
            xf1 = min(xf + 1, w - 1)
            ty = y - yf
            tx = x - xf
            w00 = (1.0 - ty) * (1.0 - tx)
            w01 = (1.0 - ty) * tx
            w10 = ty * (1.0 - tx)
            w11 = ty * tx
            dy = (
                w00 * flows[0, yf, xf]
                + w01 * flows[0, yf, xf1]
                + w10 * flows[0, yf1, xf]
                + w11 * flows[0, yf1, xf1]
            )
            dx = (
                w00 * flows[1, yf, xf]
                + w01 * flows[1, yf, xf1]
                + w10 * flows[1, yf1, xf]
                + w11 * flows[1, yf1, xf1]
            )
            y = min(h - 1.0, max(0.0, y + dy))
            x = min(w - 1.0, max(0.0, x + dx))
        ys[i] = y
        xs[i] = x


def follow_flows(
    flows: np.ndarray, foreground: np.ndarray, niter: int = 200
) -> tuple[np.ndarray, np.ndarray]:
    """Moves every foreground pixel ``niter`` Euler steps along the bilinearly interpolated flows.

    Flows are zeroed outside ``foreground`` first (as Cellpose does), positions clamped to ``[0, H-1] x [0, W-1]``.

    Args:
        flows: float (2, H, W) unit-scale ``(flow_y, flow_x)``.
        foreground: bool (H, W) pixels to move.
        niter: Number of unit-time Euler steps.

    Returns:
        ``(coords, end)``: int64 (P, 2) ``(y, x)`` of the P foreground pixels in raster order, float64 (P, 2) their
        end points.
    """
    fg = np.asarray(foreground, dtype=bool)
    fl = np.ascontiguousarray(np.asarray(flows, dtype=np.float32) * fg[None])
    coords = np.argwhere(fg)
    ys = coords[:, 0].astype(np.float64)
    xs = coords[:, 1].astype(np.float64)
    if coords.shape[0]:
        _follow_kernel(fl, ys, xs, np.int64(niter))
    return coords.astype(np.int64), np.stack([ys, xs], axis=1)


@njit(cache=True)
def _grow_seeds(hist, seeds_y, seeds_x, n_grow, min_count):  # pragma: no cover - numba
    """Region map (H, W) int32: seed k (in the given order, later wins) grown n_grow 8-connected steps through
    bins with ``hist > min_count``; 0 where no region."""
    h, w = hist.shape
    regions = np.zeros((h, w), dtype=np.int32)
    depth = np.full((h, w), -1, dtype=np.int64)
    stamp = np.full((h, w), -1, dtype=np.int64)
    qy = np.empty((2 * n_grow + 1) ** 2, dtype=np.int64)  # one seed's region fits its (2n+1)^2 window
    qx = np.empty_like(qy)
    for k in range(seeds_y.shape[0]):
        sy, sx = seeds_y[k], seeds_x[k]
        head = 0
        tail = 0
        qy[tail] = sy
        qx[tail] = sx
        tail += 1
        stamp[sy, sx] = k
        depth[sy, sx] = 0
        while head < tail:
            cy, cx = qy[head], qx[head]
            head += 1
            regions[cy, cx] = k + 1
            d = depth[cy, cx]
            if d >= n_grow:
                continue
            for oy in range(-1, 2):
                for ox in range(-1, 2):
                    ny, nx = cy + oy, cx + ox
                    if ny < 0 or nx < 0 or ny >= h or nx >= w:
                        continue
                    if stamp[ny, nx] == k or hist[ny, nx] <= min_count:
                        continue
                    stamp[ny, nx] = k
                    depth[ny, nx] = d + 1
                    qy[tail] = ny
                    qx[tail] = nx
                    tail += 1
    return regions


def masks_from_end_points(
    coords: np.ndarray,
    end: np.ndarray,
    shape: tuple[int, int],
    min_seed_count: int = 10,
    max_mask_fraction: float = 0.4,
) -> np.ndarray:
    """Clusters flow end points into masks (Cellpose's ``get_masks``, vectorized).

    Args:
        coords: int (P, 2) ``(y, x)`` of the moved pixels.
        end: float (P, 2) their end points.
        shape: ``(H, W)``.
        min_seed_count: A histogram local maximum (5x5) seeds a mask only with more end points than this.
        max_mask_fraction: Masks covering more than this fraction of the image are dropped.

    Returns:
        int32 (H, W) labels 1..K (0 background), numbered in decreasing order of their seed's count.
    """
    h, w = shape
    labels = np.zeros((h, w), dtype=np.int32)
    if coords.shape[0] == 0:
        return labels
    ey = np.clip(end[:, 0].astype(np.int64), 0, h - 1)  # truncation, as Cellpose
    ex = np.clip(end[:, 1].astype(np.int64), 0, w - 1)
    hist = np.bincount(ey * w + ex, minlength=h * w).reshape(h, w).astype(np.int64)
    hmax = ndimage.maximum_filter(hist, size=5, mode="constant", cval=0)
    sy, sx = np.nonzero((hist >= hmax) & (hist > min_seed_count))
    if sy.size == 0:
        return labels
    order = np.argsort(-hist[sy, sx], kind="stable")
    regions = _grow_seeds(hist, sy[order].astype(np.int64), sx[order].astype(np.int64), 5, 2)
    lab = regions[ey, ex]
    counts = np.bincount(lab, minlength=sy.size + 1)
    big = np.flatnonzero(counts > max_mask_fraction * h * w)
    big = big[big > 0]
    if big.size:
        lab[np.isin(lab, big)] = 0
    labels[coords[:, 0], coords[:, 1]] = lab
    return _relabel_sequential(labels)


def flow_errors(labels: np.ndarray, flows: np.ndarray) -> np.ndarray:
    """Per-mask disagreement between the flows recomputed from ``labels`` and the given ``flows``.

    Args:
        labels: int (H, W) labels 1..K (0 background).
        flows: float (2, H, W) unit-scale predicted flows.

    Returns:
        float64 (K,): for label k + 1, the mean over its pixels of ``sum_c (recomputed_c - flows_c) ** 2``
        (0 for absent labels).
    """
    k = int(labels.max()) if labels.size else 0
    if k == 0:
        return np.zeros(0, dtype=np.float64)
    rec = labels_to_flows(labels)
    sq = ((rec - np.asarray(flows, dtype=np.float32)) ** 2).sum(axis=0).astype(np.float64)
    lab = labels.ravel()
    sums = np.bincount(lab, weights=sq.ravel(), minlength=k + 1)[1:]
    counts = np.bincount(lab, minlength=k + 1)[1:]
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)


def remove_bad_flow_masks(labels: np.ndarray, flows: np.ndarray, threshold: float = 0.4) -> np.ndarray:
    """Labels with the masks whose :func:`flow_errors` exceed ``threshold`` set to 0 (not renumbered).

    Args:
        labels: int (H, W) labels 1..K.
        flows: float (2, H, W) unit-scale flows.
        threshold: Maximum mean squared flow error of a kept mask.

    Returns:
        int32 (H, W).
    """
    labels = np.asarray(labels, dtype=np.int32)
    err = flow_errors(labels, flows)
    bad = np.flatnonzero(err > threshold) + 1
    if bad.size == 0:
        return labels
    lut = np.arange(int(labels.max()) + 1, dtype=np.int32)
    lut[bad] = 0
    return lut[labels]


def fill_holes_and_remove_small(labels: np.ndarray, min_size: int = 15) -> np.ndarray:
    """Removes masks under ``min_size`` pixels, fills the holes of the others and renumbers them 1..K.

    Holes are filled with background pixels only (a mask enclosed by another survives).

    Args:
        labels: int (H, W).
        min_size: Masks with fewer pixels are removed (0 keeps all).

    Returns:
        int32 (H, W) labels 1..K in the order of the old labels.
    """
    labels = np.array(labels, dtype=np.int32, copy=True)
    out = np.zeros_like(labels)
    j = 0
    for i, sl in enumerate(ndimage.find_objects(labels)):
        if sl is None:
            continue
        msk = labels[sl] == i + 1
        npix = int(msk.sum())
        if npix == 0 or (min_size > 0 and npix < min_size):
            continue
        j += 1
        filled = ndimage.binary_fill_holes(msk)
        view = out[sl]
        view[filled & ((labels[sl] == 0) | msk)] = j
    return out


def flows_to_labels(
    prob: np.ndarray,
    flows: np.ndarray,
    prob_threshold: float = 0.5,
    niter: int = 200,
    flow_threshold: float | None = 0.4,
    min_size: int = 15,
    min_seed_count: int = 10,
    max_mask_fraction: float = 0.4,
) -> np.ndarray:
    """Instance labels from a cell probability map and unit-scale flows (Cellpose's ``compute_masks``).

    Args:
        prob: float (H, W) cell probability in [0, 1] (apply a sigmoid to a logit first).
        flows: float (2, H, W) unit-scale ``(flow_y, flow_x)`` (a network's output divided by :data:`FLOW_SCALE`).
        prob_threshold: Foreground is ``prob > prob_threshold`` (0.5 = Cellpose's logit threshold 0).
        niter: Euler steps of :func:`follow_flows`.
        flow_threshold: Masks with a larger :func:`flow_errors` are removed; None or <= 0 keeps all.
        min_size: Masks with fewer pixels are removed.
        min_seed_count: See :func:`masks_from_end_points`.
        max_mask_fraction: See :func:`masks_from_end_points`.

    Returns:
        int32 (H, W): 0 background, instances 1..K.

    Raises:
        ValueError: on mismatched shapes.
    """
    prob = np.asarray(prob)
    flows = np.asarray(flows)
    if prob.ndim != 2 or flows.shape != (2, *prob.shape):
        raise ValueError(
            f"flows_to_labels: need prob (H, W) and flows (2, H, W), got {prob.shape} and {flows.shape}"
        )
    fg = prob > prob_threshold
    coords, end = follow_flows(flows, fg, niter)
    labels = masks_from_end_points(coords, end, prob.shape, min_seed_count, max_mask_fraction)
    if flow_threshold is not None and flow_threshold > 0 and labels.max() > 0:
        labels = remove_bad_flow_masks(labels, flows * fg[None], flow_threshold)
    return fill_holes_and_remove_small(labels, min_size)


# ------------------------------------------------------------------------------------- per-instance
@dataclass
class FlowInstances:
    """Decoded instances of one image in the arrays of a prediction file (``ensemble.predictions``).

    Attributes:
        boxes: float32 (N, 4) ``(x1, y1, x2, y2)`` in pixels (the masks' tight windows, x2/y2 exclusive).
        scores: float32 (N,) mean cell probability inside each mask.
        masks: the N binary masks (:class:`InstanceMasks`, windows = ``boxes``).
        mask_probs: N float32 crops in [0, 1], crop i = the probability map in window i (pixels of *other*
            instances set to 0 when built with ``exclusive=True``).
        label_values: int32 (N,) the label of each instance in the decoded label image.
    """

    boxes: np.ndarray
    scores: np.ndarray
    masks: InstanceMasks
    mask_probs: list[np.ndarray]
    label_values: np.ndarray

    def __len__(self) -> int:
        return len(self.masks)


def labels_to_instances(labels: np.ndarray, prob: np.ndarray, exclusive: bool = True) -> FlowInstances:
    """Per-instance arrays for a prediction file from a decoded label image and its probability map.

    Args:
        labels: int (H, W), 0 background.
        prob: float (H, W) cell probability in [0, 1].
        exclusive: Zero the soft mask of instance i on pixels labeled as another instance (the prediction file
            defines a soft mask as the probability of belonging to *that* instance); False: the plain crop.

    Returns:
        :class:`FlowInstances` in increasing label order.

    Raises:
        ValueError: on mismatched shapes.
    """
    labels = np.asarray(labels)
    prob = np.asarray(prob, dtype=np.float32)
    if labels.shape != prob.shape or labels.ndim != 2:
        raise ValueError(
            f"labels_to_instances: labels {labels.shape} and prob {prob.shape} must be equal (H, W)"
        )
    h, w = labels.shape
    boxes_l, crops, vals = [], [], []
    if labels.size and labels.max() > 0:
        lab = labels.astype(np.int64, copy=False)
        for i, sl in enumerate(ndimage.find_objects(lab)):
            if sl is None:
                continue
            boxes_l.append((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop))
            crops.append(lab[sl] == i + 1)
            vals.append(i + 1)
    masks = InstanceMasks(h, w, np.asarray(boxes_l, dtype=np.int32).reshape(-1, 4), crops)
    values = np.asarray(vals, dtype=np.int64)
    n = len(values)
    scores = (
        np.asarray(ndimage.mean(prob, labels=labels, index=values), dtype=np.float32).reshape(n)
        if n
        else np.zeros(0, dtype=np.float32)
    )
    probs = []
    for (x0, y0, x1, y1), v in zip(masks.boxes.tolist(), values.tolist()):
        crop = np.clip(prob[y0:y1, x0:x1], 0.0, 1.0).astype(np.float32, copy=True)
        if exclusive:
            sub = labels[y0:y1, x0:x1]
            crop[(sub != v) & (sub != 0)] = 0.0
        probs.append(crop)
    masks = InstanceMasks.from_crops_packed(masks.height, masks.width, masks.boxes, masks.crops)
    return FlowInstances(
        boxes=masks.boxes.astype(np.float32),
        scores=scores,
        masks=masks,
        mask_probs=probs,
        label_values=values.astype(np.int32),
    )


# ------------------------------------------------------------------------------------------- inference
def flip_flow_map(maps: np.ndarray, direction: str) -> np.ndarray:
    """A flow map of a mirrored image mapped to (or from) the mirror: self-inverse.

    Mirrors every channel and negates the flow component along the mirrored axis (``'horizontal'``: left-right,
    flow x; ``'vertical'``: top-bottom, flow y). Applied to the network's map of a flipped image it gives the map
    in the original image's frame, so the maps of flip TTA passes can be averaged before decoding.

    Args:
        maps: float ``(C >= 2, H, W)``: ``(flow_y, flow_x, ...)``; further channels (the cell logit) are only
            mirrored.
        direction: ``'horizontal'`` or ``'vertical'``.

    Returns:
        float32 ``(C, H, W)`` copy.

    Raises:
        ValueError: on a bad direction or shape.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or maps.shape[0] < 2:
        raise ValueError(f"flip_flow_map: need (C >= 2, H, W), got {maps.shape}")
    if direction == "horizontal":
        out = maps[:, :, ::-1].copy()
        out[1] *= -1
    elif direction == "vertical":
        out = maps[:, ::-1, :].copy()
        out[0] *= -1
    else:
        raise ValueError(f"flip_flow_map: direction must be 'horizontal' or 'vertical', got {direction!r}")
    return out


def decode_flow_map(
    maps: np.ndarray, params: dict | None = None, exclusive: bool = True
) -> tuple[FlowInstances, np.ndarray]:
    """Instances of one image from a flow network's output map.

    Args:
        maps: float ``(3, H, W)``: unit-scale flow y, flow x (the network's output divided by
            :data:`FLOW_SCALE`, as ``FlowHead.predict`` returns it) and the cell probability *logit*.
        params: :func:`flows_to_labels` keyword overrides of :data:`DECODE_DEFAULTS` (e.g. a config's
            ``flow_decode``).
        exclusive: See :func:`labels_to_instances` (True: soft masks zero on the other instances' pixels).

    Returns:
        ``(instances, prob)``: :class:`FlowInstances` and the float32 ``(H, W)`` cell probability (sigmoid of
        channel 2).

    Raises:
        ValueError: on a bad shape or an unknown parameter.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or maps.shape[0] != 3:
        raise ValueError(f"decode_flow_map: need a (3, H, W) map, got {maps.shape}")
    kw = dict(DECODE_DEFAULTS)
    unknown = set(params or {}) - set(kw)
    if unknown:
        raise ValueError(f"decode_flow_map: unknown parameter(s) {sorted(unknown)}; known: {sorted(kw)}")
    kw.update(params or {})
    prob = (1.0 / (1.0 + np.exp(-np.clip(maps[2], -60.0, 60.0)))).astype(np.float32)
    labels = flows_to_labels(prob, maps[:2], **kw)
    return labels_to_instances(labels, prob, exclusive=exclusive), prob
