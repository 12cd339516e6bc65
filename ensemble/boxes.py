"""Box formats and Weighted Boxes Fusion (WBF) that also reports which input boxes formed each fused box.

`weighted_boxes_fusion` reproduces ``ensemble_boxes.weighted_boxes_fusion`` (ensemble-boxes 1.0.9, Solovyev et
al., "Weighted boxes fusion", 2021) value for value and in the same output order, and additionally returns the
*clusters*: for every fused box the ``(model index, box index)`` pairs of the input boxes that were fused into it.
Mask fusion needs the clusters (each member's mask votes for the fused mask); ensemble-boxes does not expose them.

Exactness notes (why the numbers match ensemble-boxes bit for bit rather than approximately):

* boxes are filtered (``score < skip_box_thr`` dropped), clipped to ``[0, 1]`` and zero-area boxes dropped, then
  grouped per label in the order labels first appear (model by model, box by box) and sorted per label by
  ``score * model weight`` with the same ``argsort()[::-1]`` call as ensemble-boxes (so ties break identically);
* each box is matched greedily against the current fused boxes of its label (first best IoU, strictly above
  ``iou_thr``);
* ensemble-boxes accumulates the fused coordinates of a cluster in float32 (``box[4:] += score * coords``, then
  ``/= sum(score)``) and rounds the fused score and weight to float32, while one-member clusters keep the raw
  float64 input values; the numba kernel below reproduces those roundings, because later matching decisions
  depend on them.

Deliberate differences (documented behaviour, not bugs): bad input raises ``ValueError`` (ensemble-boxes prints and
calls ``exit()`` or silently swaps ``x2 < x1``); a weight list of the wrong length is an error (ensemble-boxes
silently resets all weights to 1); out-of-range coordinates are clipped with a single summarising warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from numba import njit

__all__ = [
    "CONF_TYPES",
    "IMAGE_CLASS_RULES",
    "box_iou",
    "denormalize_boxes",
    "image_class",
    "normalize_boxes",
    "relabel",
    "weighted_boxes_fusion",
    "weighted_boxes_fusion_members",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
]

CONF_TYPES: tuple[str, ...] = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")
_CONF_CODE = {name: code for code, name in enumerate(CONF_TYPES)}

IMAGE_CLASS_RULES: tuple[str, ...] = ("majority", "per_instance", "classifier")
"""How detections are labelled before fusion: one class per image (``'majority'``; ``'classifier'``: an image
classifier's class where it is confident, else the majority) or as predicted."""


# ----------------------------------------------------------------------------------------------------------------
# Box format helpers
# ----------------------------------------------------------------------------------------------------------------
def _as_boxes(boxes: np.ndarray | Sequence, name: str = "boxes") -> np.ndarray:
    arr = np.asarray(boxes)
    if arr.size == 0:
        return arr.reshape(0, 4).astype(np.float64 if arr.dtype.kind not in "f" else arr.dtype)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name}: expected an array of shape (N, 4), got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    return arr


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """Convert corner boxes to COCO ``(x, y, width, height)`` boxes.

    Args:
        boxes: ``(N, 4)`` array of ``(x1, y1, x2, y2)``.

    Returns:
        ``(N, 4)`` float array of ``(x1, y1, x2 - x1, y2 - y1)`` (float32 input stays float32, else float64).
    """
    arr = _as_boxes(boxes)
    out = arr.astype(np.float32 if arr.dtype == np.float32 else np.float64, copy=True)
    out[:, 2:] -= out[:, :2]
    return out


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """Convert COCO ``(x, y, width, height)`` boxes to corner boxes ``(x1, y1, x2, y2)``.

    Args:
        boxes: ``(N, 4)`` array of ``(x, y, w, h)``.

    Returns:
        ``(N, 4)`` float array of ``(x, y, x + w, y + h)``.
    """
    arr = _as_boxes(boxes)
    out = arr.astype(np.float32 if arr.dtype == np.float32 else np.float64, copy=True)
    out[:, 2:] += out[:, :2]
    return out


def _check_size(height: int, width: int) -> None:
    if int(height) <= 0 or int(width) <= 0:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")


def normalize_boxes(boxes_px: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale pixel corner boxes to ``[0, 1]`` coordinates (the input format of WBF).

    Args:
        boxes_px: ``(N, 4)`` pixel ``(x1, y1, x2, y2)``.
        height: image height in pixels.
        width: image width in pixels.

    Returns:
        ``(N, 4)`` float64 array ``(x1 / W, y1 / H, x2 / W, y2 / H)`` (not clipped).
    """
    _check_size(height, width)
    arr = _as_boxes(boxes_px, "boxes_px").astype(np.float64)
    return arr / np.array([width, height, width, height], dtype=np.float64)


def denormalize_boxes(boxes_norm: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale ``[0, 1]`` corner boxes back to pixels (inverse of `normalize_boxes`).

    Args:
        boxes_norm: ``(N, 4)`` normalized ``(x1, y1, x2, y2)``.
        height: image height in pixels.
        width: image width in pixels.

    Returns:
        ``(N, 4)`` float64 pixel boxes.
    """
    _check_size(height, width)
    arr = _as_boxes(boxes_norm, "boxes_norm").astype(np.float64)
    return arr * np.array([width, height, width, height], dtype=np.float64)


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of two sets of corner boxes.

    Args:
        boxes_a: ``(N, 4)`` ``(x1, y1, x2, y2)``.
        boxes_b: ``(M, 4)`` ``(x1, y1, x2, y2)``.

    Returns:
        ``(N, M)`` float64 IoU matrix (0 where the union is empty).
    """
    a = _as_boxes(boxes_a, "boxes_a").astype(np.float64)
    b = _as_boxes(boxes_b, "boxes_b").astype(np.float64)
    xa = np.maximum(a[:, None, 0], b[None, :, 0])
    ya = np.maximum(a[:, None, 1], b[None, :, 1])
    xb = np.minimum(a[:, None, 2], b[None, :, 2])
    yb = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.maximum(xb - xa, 0) * np.maximum(yb - ya, 0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


# ----------------------------------------------------------------------------------------------------------------
# WBF kernel
# ----------------------------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def _grid_range(x1, y1, x2, y2, g):  # pragma: no cover - numba compiled
    """Grid cells ``[cx0, cx1] x [cy0, cy1]`` touched by a box (padded by 1e-6 against float32 rounding)."""
    cx0 = min(max(int(np.floor((x1 - 1e-6) * g)), 0), g - 1)
    cy0 = min(max(int(np.floor((y1 - 1e-6) * g)), 0), g - 1)
    cx1 = min(max(int(np.floor((x2 + 1e-6) * g)), 0), g - 1)
    cy1 = min(max(int(np.floor((y2 + 1e-6) * g)), 0), g - 1)
    return cx0, cy0, cx1, cy1


@njit(cache=True, error_model="numpy")
def _wbf_label_kernel(coords, wscore, wt, iou_thr, conf_code, use_grid):  # pragma: no cover - numba compiled
    """Greedy clustering of one label's boxes (sorted by weighted score, descending), as ensemble-boxes does it.

    Each box is compared with the current fused boxes; the first best IoU wins if it is strictly above
    ``iou_thr``. With ``use_grid`` only fused boxes registered in the grid cells the box touches are compared:
    a cluster is registered in every cell of the bounding hull of its members (the fused box is a convex
    combination of them when weighted scores are positive), so boxes that are skipped have IoU 0 with it, which
    never wins when ``iou_thr >= 0``; ties are broken towards the lower cluster index as ``np.argmax`` does.

    Args:
        coords: ``(n, 4)`` float64 clipped normalized boxes.
        wscore: ``(n,)`` float64 ``score * model weight``.
        wt: ``(n,)`` float64 model weight of each box.
        iou_thr: match threshold (strictly greater matches).
        conf_code: index into ``CONF_TYPES``.
        use_grid: prune candidates with a uniform grid (requires positive weighted scores and ``iou_thr >= 0``).

    Returns:
        ``(fused (k, 4) f8, fused_score (k,) f8, fused_weight (k,) f8, count (k,) i8, assign (n,) i8)``;
        ``fused_score``/``fused_weight`` are the raw (not yet rescaled) ensemble-boxes columns 1 and 2.
    """
    n = coords.shape[0]
    fused = np.empty((n, 4), dtype=np.float64)
    acc = np.empty((n, 4), dtype=np.float32)
    conf = np.empty(n, dtype=np.float64)
    wsum = np.empty(n, dtype=np.float64)
    cmax = np.empty(n, dtype=np.float64)
    fscore = np.empty(n, dtype=np.float64)
    fweight = np.empty(n, dtype=np.float64)
    count = np.zeros(n, dtype=np.int64)
    assign = np.empty(n, dtype=np.int64)
    # grid bookkeeping: per-cell linked lists of cluster ids; per cluster its registered cell range
    g = max(1, min(64, int(np.sqrt(n / 2.0))))
    head = np.full(g * g, -1, dtype=np.int64)
    cap = 4 * n + 16
    ent = np.empty(cap, dtype=np.int64)
    nxt = np.empty(cap, dtype=np.int64)
    n_ent = 0
    reg = np.empty((n, 4), dtype=np.int64)
    hull = np.empty((n, 4), dtype=np.float64)
    stamp = np.full(n, -1, dtype=np.int64)
    k = 0
    for j in range(n):
        bx1 = coords[j, 0]
        by1 = coords[j, 1]
        bx2 = coords[j, 2]
        by2 = coords[j, 3]
        area_b = (bx2 - bx1) * (by2 - by1)
        best = -1
        best_iou = -np.inf
        if use_grid:
            cx0, cy0, cx1, cy1 = _grid_range(bx1, by1, bx2, by2, g)
            for cy in range(cy0, cy1 + 1):
                for cx in range(cx0, cx1 + 1):
                    e = head[cy * g + cx]
                    while e >= 0:
                        i = ent[e]
                        e = nxt[e]
                        if stamp[i] == j:
                            continue
                        stamp[i] = j
                        xa = max(fused[i, 0], bx1)
                        ya = max(fused[i, 1], by1)
                        xb = min(fused[i, 2], bx2)
                        yb = min(fused[i, 3], by2)
                        inter = max(xb - xa, 0.0) * max(yb - ya, 0.0)
                        area_a = (fused[i, 2] - fused[i, 0]) * (fused[i, 3] - fused[i, 1])
                        iou = inter / (area_a + area_b - inter)
                        if iou > best_iou or (iou == best_iou and i < best):
                            best = i
                            best_iou = iou
        else:
            for i in range(k):
                xa = max(fused[i, 0], bx1)
                ya = max(fused[i, 1], by1)
                xb = min(fused[i, 2], bx2)
                yb = min(fused[i, 3], by2)
                inter = max(xb - xa, 0.0) * max(yb - ya, 0.0)
                area_a = (fused[i, 2] - fused[i, 0]) * (fused[i, 3] - fused[i, 1])
                iou = inter / (area_a + area_b - inter)
                if np.isnan(iou):  # np.argmax returns the first NaN, which then counts as a match
                    best = i
                    best_iou = iou
                    break
                if iou > best_iou:
                    best = i
                    best_iou = iou
        s = wscore[j]
        if best >= 0 and not (best_iou <= iou_thr):
            i = best
            count[i] += 1
            conf[i] += s
            wsum[i] += wt[j]
            if s > cmax[i]:
                cmax[i] = s
            for c in range(4):
                acc[i, c] = np.float32(np.float64(acc[i, c]) + s * coords[j, c])
            for c in range(4):
                fused[i, c] = np.float64(np.float32(np.float64(acc[i, c]) / conf[i]))
            if conf_code == 1:
                fscore[i] = np.float64(np.float32(cmax[i]))
            else:
                fscore[i] = np.float64(np.float32(conf[i] / count[i]))
            fweight[i] = np.float64(np.float32(wsum[i]))
            assign[j] = i
            hull[i, 0] = min(hull[i, 0], bx1)
            hull[i, 1] = min(hull[i, 1], by1)
            hull[i, 2] = max(hull[i, 2], bx2)
            hull[i, 3] = max(hull[i, 3], by2)
        else:
            i = k
            k += 1
            count[i] = 1
            conf[i] = s
            wsum[i] = wt[j]
            cmax[i] = s
            for c in range(4):
                acc[i, c] = np.float32(s * coords[j, c])
                fused[i, c] = coords[j, c]
                hull[i, c] = coords[j, c]
            fscore[i] = s
            fweight[i] = wt[j]
            assign[j] = i
            reg[i, 0] = 0
            reg[i, 1] = 0
            reg[i, 2] = -1  # empty range
            reg[i, 3] = -1
        if use_grid:
            # register cluster i in the cells of its hull that it is not registered in yet
            cx0, cy0, cx1, cy1 = _grid_range(hull[i, 0], hull[i, 1], hull[i, 2], hull[i, 3], g)
            ox0, oy0, ox1, oy1 = reg[i, 0], reg[i, 1], reg[i, 2], reg[i, 3]
            for cy in range(cy0, cy1 + 1):
                for cx in range(cx0, cx1 + 1):
                    if ox0 <= cx <= ox1 and oy0 <= cy <= oy1:
                        continue
                    if n_ent == cap:
                        cap *= 2
                        ent2 = np.empty(cap, dtype=np.int64)
                        nxt2 = np.empty(cap, dtype=np.int64)
                        ent2[:n_ent] = ent[:n_ent]
                        nxt2[:n_ent] = nxt[:n_ent]
                        ent = ent2
                        nxt = nxt2
                    ent[n_ent] = i
                    nxt[n_ent] = head[cy * g + cx]
                    head[cy * g + cx] = n_ent
                    n_ent += 1
            reg[i, 0] = cx0
            reg[i, 1] = cy0
            reg[i, 2] = cx1
            reg[i, 3] = cy1
    return fused[:k], fscore[:k], fweight[:k], count[:k], assign


@njit(cache=True, error_model="numpy")
def _wbf_rescale_kernel(
    fscore, fweight, count, assign, model, weights, weights_total, weights_max, conf_code, allows_overflow
):  # pragma: no cover - numba compiled
    """Final score rescaling of ensemble-boxes (per cluster), same operation order."""
    k = fscore.shape[0]
    n_models = weights.shape[0]
    present = np.zeros((k, n_models), dtype=np.bool_)
    for j in range(assign.shape[0]):
        present[assign[j], model[j]] = True
    out = np.empty(k, dtype=np.float64)
    for i in range(k):
        s = fscore[i]
        if conf_code == 2:  # box_and_model_avg
            s = s * count[i] / fweight[i]
            u = 0.0
            for m in range(n_models):
                if present[i, m]:
                    u += weights[m]
            s = s * u / weights_total
        elif conf_code == 3:  # absent_model_aware_avg
            a = 0.0
            for m in range(n_models):
                if not present[i, m]:
                    a += weights[m]
            s = s * count[i] / (fweight[i] + a)
        elif conf_code == 1:  # max
            s = s / weights_max
        elif not allows_overflow:
            s = s * min(n_models, count[i]) / weights_total
        else:
            s = s * count[i] / weights_total
        out[i] = s
    return out


# ----------------------------------------------------------------------------------------------------------------
# Public WBF
# ----------------------------------------------------------------------------------------------------------------
def _validate_wbf_args(
    boxes_list: Sequence[object],
    scores_list: Sequence[object],
    labels_list: Sequence[object],
    weights: Sequence[float] | np.ndarray | None,
    conf_type: str,
) -> tuple[int, np.ndarray]:
    """Checks the per-model list lengths, ``conf_type`` and ``weights`` of a WBF call.

    Returns:
        ``(n_models, w)``: the number of models and the weights as float64 ``(n_models,)`` (ones for ``None``).

    Raises:
        ValueError: on lists of different lengths, an unknown ``conf_type``, or weights that are wrongly sized,
            non-finite or not positive.
    """
    n_models = len(boxes_list)
    if len(scores_list) != n_models or len(labels_list) != n_models:
        raise ValueError(
            f"boxes_list, scores_list and labels_list must have one entry per model, got "
            f"{n_models}, {len(scores_list)} and {len(labels_list)}"
        )
    if conf_type not in _CONF_CODE:
        raise ValueError(f"unknown conf_type {conf_type!r}; expected one of {CONF_TYPES}")
    if weights is None:
        return n_models, np.ones(n_models, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != n_models:
        raise ValueError(f"weights has {len(w)} entries but there are {n_models} models")
    if not np.isfinite(w).all() or (w <= 0).any():
        raise ValueError(f"weights must be finite and positive, got {w.tolist()}")
    return n_models, w


def _validate_model(
    t: int, boxes: object, scores: object, labels: object
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b = np.asarray(boxes, dtype=np.float64) if not isinstance(boxes, np.ndarray) else boxes.astype(np.float64)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    lab = np.asarray(labels)
    if lab.size == 0:
        lab = lab.reshape(0)
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes_list[{t}]: expected shape (N, 4), got {b.shape}")
    if lab.ndim != 1 or lab.dtype.kind not in "fiub":
        raise ValueError(
            f"labels_list[{t}]: expected a 1-D numeric array, got shape {lab.shape} dtype {lab.dtype}"
        )
    if len(b) != len(s):
        raise ValueError(f"model {t}: {len(b)} boxes but {len(s)} scores")
    if len(b) != len(lab):
        raise ValueError(f"model {t}: {len(b)} boxes but {len(lab)} labels")
    bad = ~np.isfinite(b).all(axis=1)
    if bad.any():
        raise ValueError(f"model {t}, box {int(np.flatnonzero(bad)[0])}: non-finite coordinate")
    bad = ~np.isfinite(s)
    if bad.any():
        raise ValueError(f"model {t}, box {int(np.flatnonzero(bad)[0])}: non-finite score {s[bad][0]}")
    labf = lab.astype(np.float64)
    bad = ~np.isfinite(labf)
    if bad.any():
        raise ValueError(f"model {t}, box {int(np.flatnonzero(bad)[0])}: non-finite label")
    bad = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"model {t}, box {j}: x2 < x1 or y2 < y1 in {b[j].tolist()} (expected x1, y1, x2, y2)"
        )
    return b, s, labf.astype(np.int64)  # int() truncation toward zero, like ensemble-boxes


def weighted_boxes_fusion(
    boxes_list: Sequence[np.ndarray],
    scores_list: Sequence[np.ndarray],
    labels_list: Sequence[np.ndarray],
    weights: Sequence[float] | np.ndarray | None = None,
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    conf_type: str = "avg",
    allows_overflow: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Weighted Boxes Fusion of several models' detections of one image, with cluster membership.

    Args:
        boxes_list: per model, ``(N_m, 4)`` normalized ``(x1, y1, x2, y2)`` in ``[0, 1]`` (values outside are
            clipped with a warning; ``x2 < x1`` or ``y2 < y1`` is an error).
        scores_list: per model, ``(N_m,)`` confidence scores.
        labels_list: per model, ``(N_m,)`` integer class labels.
        weights: per model weight (positive); ``None`` means 1 for every model.
        iou_thr: a box joins the best-matching fused box of its label when their IoU is strictly above this.
        skip_box_thr: boxes with ``score < skip_box_thr`` are ignored.
        conf_type: ``'avg'``, ``'max'``, ``'box_and_model_avg'`` or ``'absent_model_aware_avg'`` (see
            ensemble-boxes).
        allows_overflow: for ``'avg'``, allow fused scores above 1 for clusters with more boxes than models.

    Returns:
        ``(boxes, scores, labels, clusters)``: ``boxes`` ``(K, 4)`` float64, ``scores`` ``(K,)`` float64 and
        ``labels`` ``(K,)`` float64 exactly as ensemble-boxes 1.0.9 returns them (sorted by score, descending),
        and ``clusters``, a list of K int64 arrays of shape ``(k_i, 2)`` holding ``(model index, box index)``
        of the members of each fused box, in the order they joined (descending weighted score).

    Raises:
        ValueError: on mismatched list lengths, wrong shapes, non-finite values, ``x2 < x1``/``y2 < y1``,
            non-positive or wrongly sized weights, or an unknown ``conf_type``.
    """
    boxes, scores, labels, members, ptr = weighted_boxes_fusion_members(
        boxes_list,
        scores_list,
        labels_list,
        weights,
        iou_thr,
        skip_box_thr,
        conf_type,
        allows_overflow,
        _stacklevel=3,
    )
    return boxes, scores, labels, [members[a:b] for a, b in zip(ptr[:-1].tolist(), ptr[1:].tolist())]


def _wbf_inputs(
    boxes_list: Sequence[np.ndarray],
    scores_list: Sequence[np.ndarray],
    labels_list: Sequence[np.ndarray],
    skip_box_thr: float,
    checked: bool,
    stacklevel: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All models' boxes after the score filter, clipping to ``[0, 1]`` and the zero-area filter (warned about).

    Returns:
        ``(coords float64 (N, 4), model int64 (N,), box index in its model int64 (N,), scores (N,), labels (N,))``.
    """
    parts_b, parts_s, parts_lab, parts_keep, sizes = [], [], [], [], []
    for t in range(len(boxes_list)):
        if checked:  # the caller passes float64 (N, 4) finite x2 >= x1 boxes, float64 scores, int64 labels
            b, s, lab = boxes_list[t], scores_list[t], labels_list[t]
        else:
            b, s, lab = _validate_model(t, boxes_list[t], scores_list[t], labels_list[t])
        raw = scores_list[t]
        if isinstance(raw, np.ndarray) and raw.dtype in (np.float32, np.float16):
            # ensemble-boxes compares the numpy scalar with a Python float, i.e. at the score's precision.
            parts_keep.append(~(raw.reshape(-1) < raw.dtype.type(skip_box_thr)))
        else:
            parts_keep.append(~(s < skip_box_thr))
        parts_b.append(b)
        parts_s.append(s)
        parts_lab.append(lab)
        sizes.append(len(b))
    # all models at once: the score filter, clipping and the zero-area filter
    model_all = np.repeat(np.arange(len(boxes_list), dtype=np.int64), sizes)
    idx_all = np.arange(int(sum(sizes)), dtype=np.int64) - np.repeat(np.cumsum([0, *sizes[:-1]]), sizes)
    sel = np.flatnonzero(np.concatenate(parts_keep))
    raw_boxes = np.concatenate(parts_b)[sel]
    clipped = np.clip(raw_boxes, 0.0, 1.0)
    n_clipped = int((clipped != raw_boxes).any(axis=1).sum())
    nz = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1]) != 0.0
    n_zero = int(len(nz) - nz.sum())
    if n_clipped:
        warnings.warn(
            f"weighted_boxes_fusion: {n_clipped} box(es) with coordinates outside [0, 1] were clipped; "
            "check that boxes are normalized",
            stacklevel=stacklevel,
        )
    if n_zero:
        warnings.warn(f"weighted_boxes_fusion: {n_zero} zero-area box(es) skipped", stacklevel=stacklevel)
    sel = sel[nz]
    return (
        clipped[nz],
        model_all[sel],
        idx_all[sel],
        np.concatenate(parts_s)[sel],
        np.concatenate(parts_lab)[sel],
    )


def _fused_in_final_order(
    parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Concatenates the per-label results ``(boxes, scores, labels, members, counts)`` and sorts them by score
    (ensemble-boxes' sort call), the member groups following their fused boxes."""
    boxes = np.concatenate([p[0] for p in parts])
    scores = np.concatenate([p[1] for p in parts])
    labels = np.concatenate([p[2] for p in parts])
    key = np.empty((len(scores), 2), dtype=np.float64)
    key[:, 1] = scores
    final = key[:, 1].argsort()[::-1]
    # the member groups in the final order: group k of the output is group final[k] of the concatenation
    count = np.concatenate([p[4] for p in parts])
    start = np.zeros(len(count), dtype=np.int64)
    np.cumsum(count[:-1], out=start[1:])
    ptr = np.zeros(len(count) + 1, dtype=np.int64)
    np.cumsum(count[final], out=ptr[1:])
    take = np.repeat(start[final] - ptr[:-1], count[final]) + np.arange(ptr[-1], dtype=np.int64)
    members = np.concatenate([p[3] for p in parts])[take]
    return boxes[final], scores[final], labels[final], members, ptr


def weighted_boxes_fusion_members(
    boxes_list: Sequence[np.ndarray],
    scores_list: Sequence[np.ndarray],
    labels_list: Sequence[np.ndarray],
    weights: Sequence[float] | np.ndarray | None = None,
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    conf_type: str = "avg",
    allows_overflow: bool = False,
    *,
    _stacklevel: int = 2,
    _checked: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`weighted_boxes_fusion` with the clusters as one flat member array (no per-cluster arrays).

    Arguments and errors as :func:`weighted_boxes_fusion`.

    Returns:
        ``(boxes, scores, labels, members, ptr)``: ``boxes``, ``scores`` and ``labels`` as
        :func:`weighted_boxes_fusion`; ``members`` int64 ``(M, 2)`` ``(model index, box index)`` of every fused
        input box, grouped by fused box: the members of fused box k are ``members[ptr[k]:ptr[k + 1]]`` (in the
        order they joined), ``ptr`` int64 ``(K + 1,)``.
    """
    n_models, w = _validate_wbf_args(boxes_list, scores_list, labels_list, weights, conf_type)

    empty = (
        np.zeros((0, 4)),
        np.zeros((0,)),
        np.zeros((0,)),
        np.zeros((0, 2), np.int64),
        np.zeros(1, np.int64),
    )
    if n_models == 0:
        return empty
    coords, model, box_idx, score, label = _wbf_inputs(
        boxes_list, scores_list, labels_list, skip_box_thr, _checked, _stacklevel + 1
    )
    if len(model) == 0:
        return empty
    wt = w[model]
    wscore = score * wt

    # Labels in order of first appearance (the dict insertion order of ensemble-boxes).
    uniq, first = np.unique(label, return_index=True)
    label_order = uniq[np.argsort(first, kind="stable")]
    weights_total = w.sum()
    weights_max = w.max()
    conf_code = _CONF_CODE[conf_type]

    parts = []
    for lab_value in label_order:
        sel = np.flatnonzero(label == lab_value)
        # Same sort call as ensemble-boxes (on a column view of a 2-D array) so that ties break identically.
        key = np.empty((len(sel), 2), dtype=np.float64)
        key[:, 1] = wscore[sel]
        order = sel[key[:, 1].argsort()[::-1]]
        c = np.ascontiguousarray(coords[order])
        ws = np.ascontiguousarray(wscore[order])
        mdl = np.ascontiguousarray(model[order])
        use_grid = bool(iou_thr >= 0.0 and (ws > 0).all())
        fused, fscore, fweight, count, assign = _wbf_label_kernel(
            c, ws, np.ascontiguousarray(wt[order]), float(iou_thr), conf_code, use_grid
        )
        scores = _wbf_rescale_kernel(
            fscore,
            fweight,
            count,
            assign,
            mdl,
            w,
            weights_total,
            weights_max,
            conf_code,
            bool(allows_overflow),
        )
        # Label column: raw int for one-member clusters, float32-rounded (get_weighted_box) otherwise.
        lab_col = np.where(count > 1, float(np.float32(lab_value)), float(lab_value))
        members = np.stack([mdl, box_idx[order]], axis=1)
        members = members[np.argsort(assign, kind="stable")]  # grouped by cluster, join order kept
        parts.append((fused, scores, lab_col, members, count))
    return _fused_in_final_order(parts)


# ----------------------------------------------------------------------------------------------------------------
# One cell type per image
# ----------------------------------------------------------------------------------------------------------------
def image_class(
    scores_list: Sequence[np.ndarray],
    labels_list: Sequence[np.ndarray],
    weights: Sequence[float] | np.ndarray | None = None,
    n_classes: int | None = None,
) -> int | None:
    """The class of an image: the score-weighted majority over every model's detections.

    A Sartorius image holds one cell type while detectors disagree per instance; fusing per label splits one cell
    into several clusters. Each detection votes for its label with ``model weight * score``; the label with the
    largest total wins (ties: the lowest label).

    Args:
        scores_list: per model, ``(N_m,)`` scores (only positive scores vote).
        labels_list: per model, ``(N_m,)`` integer labels ``>= 0``.
        weights: per model weight (``None``: all 1).
        n_classes: number of classes (default: 1 + the largest label).

    Returns:
        The winning label, or None when no detection has a positive score.

    Raises:
        ValueError: on mismatched lengths or negative labels.
    """
    if len(scores_list) != len(labels_list):
        raise ValueError(f"{len(scores_list)} score arrays but {len(labels_list)} label arrays")
    w = np.ones(len(scores_list)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != len(scores_list):
        raise ValueError(f"weights has {len(w)} entries but there are {len(scores_list)} models")
    parts_l, parts_v = [], []
    for m, (s, lab) in enumerate(zip(scores_list, labels_list)):
        s = np.asarray(s, dtype=np.float64).reshape(-1)
        lab = np.asarray(lab).reshape(-1).astype(np.int64)
        if len(s) != len(lab):
            raise ValueError(f"model {m}: {len(s)} scores but {len(lab)} labels")
        if (lab < 0).any():
            raise ValueError(f"model {m}: negative label {int(lab.min())}")
        pos = s > 0
        parts_l.append(lab[pos])
        parts_v.append(w[m] * s[pos])
    labels = np.concatenate(parts_l) if parts_l else np.zeros(0, np.int64)
    if labels.size == 0:
        return None
    size = max(int(labels.max()) + 1, n_classes or 0)
    totals = np.bincount(labels, weights=np.concatenate(parts_v), minlength=size)
    return int(np.argmax(totals))


def relabel(labels_list: Sequence[np.ndarray], label: int | None) -> list[np.ndarray]:
    """Every model's labels set to ``label`` (one class per image), int64 ``(N_m,)`` each; ``None`` keeps them.

    Args:
        labels_list: per model (or TTA pass), ``(N_m,)`` integer labels.
        label: the image's class, or None (no detection voted).

    Returns:
        Per model an int64 ``(N_m,)`` array.
    """
    if label is None:
        return [np.asarray(lab).reshape(-1).astype(np.int64) for lab in labels_list]
    return [np.full(np.asarray(lab).size, label, dtype=np.int64) for lab in labels_list]
