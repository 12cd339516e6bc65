"""Straightforward reference implementations of the ensemble path: the oracles of the tests.

Nothing here is used by the library: these are the textbook versions (full frames, Python loops) that the fast
crop-based numba code in :mod:`ensemble` is checked against.

* :func:`weighted_boxes_fusion_reference`: the pure-Python loop of ensemble-boxes with cluster tracking; equal
  to ``ensemble.boxes.weighted_boxes_fusion`` and ensemble-boxes 1.0.9 exactly (a user relies on WBF output).
* :func:`fuse_image_reference` and :func:`remove_overlaps_reference`: full-frame versions of
  ``ensemble.masks.fuse_image`` / ``remove_overlaps`` (same rules, see that module's docstring). Masks agree
  exactly; scores to a relative 1e-9 (sums are accumulated in a different order).
* :func:`candidate_pairs_reference` / :func:`pair_intersections_reference`: NumPy versions of the metric's
  numba kernels.
Tests import this module as ``ensemble_reference`` (``tests/`` is on pytest's ``pythonpath``, set in
``pyproject.toml``); ``benchmarks/bench_ensemble.py`` loads this file by its path for its straightforward path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from celldata.instances import InstanceMasks
from ensemble.boxes import _validate_model, _validate_wbf_args, box_iou
from ensemble.masks import (
    FusionParams,
    _box_windows,
    _empty_result,
    _finish,
    _fuse_boxes,
    _prepare,
)
from ensemble.predictions import ImagePredictions

__all__ = [
    "candidate_pairs_reference",
    "fuse_image_reference",
    "pair_intersections_reference",
    "remove_overlaps_reference",
    "weighted_boxes_fusion_reference",
]


# ----------------------------------------------------------------------------------------------------------------
# WBF
# ----------------------------------------------------------------------------------------------------------------
def weighted_boxes_fusion_reference(
    boxes_list: Sequence[np.ndarray],
    scores_list: Sequence[np.ndarray],
    labels_list: Sequence[np.ndarray],
    weights: Sequence[float] | np.ndarray | None = None,
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    conf_type: str = "avg",
    allows_overflow: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Straightforward pure-Python WBF with cluster tracking (slow; the reference for tests and benchmarks).

    The textbook loop of ensemble-boxes (per label: sort, compare each box with every fused box, recompute the
    fused box from its whole member list) with each member's ``(model, box index)`` carried along. Same
    arguments, returns and errors as `weighted_boxes_fusion` (which must agree with it exactly).
    """
    n_models, w = _validate_wbf_args(boxes_list, scores_list, labels_list, weights, conf_type)
    rows: dict[int, list[list[float]]] = {}
    for t in range(n_models):
        b, s, lab = _validate_model(t, boxes_list[t], scores_list[t], labels_list[t])
        raw = scores_list[t]
        for j in range(len(b)):
            score = raw[j] if isinstance(raw, np.ndarray) else s[j]
            if score < skip_box_thr:
                continue
            x1, y1, x2, y2 = (min(max(float(v), 0.0), 1.0) for v in b[j])
            if (x2 - x1) * (y2 - y1) == 0.0:
                continue
            # [label, score * weight, weight, model, x1, y1, x2, y2, box index]
            rows.setdefault(int(lab[j]), []).append(
                [int(lab[j]), float(s[j]) * w[t], w[t], t, x1, y1, x2, y2, j]
            )
    if not rows:
        return np.zeros((0, 4)), np.zeros((0,)), np.zeros((0,)), []
    fused_rows, clusters = [], []
    for label_rows in rows.values():
        arr = np.array(label_rows)
        arr = arr[arr[:, 1].argsort()[::-1]]
        members: list[list[np.ndarray]] = []
        fused = np.empty((0, 8))
        for row in arr:
            best = -1
            if len(fused):
                ious = box_iou(fused[:, 4:8], row[None, 4:8])[:, 0]
                k = int(np.argmax(ious))
                if ious[k] > iou_thr:
                    best = k
            if best >= 0:
                members[best].append(row)
                box = np.zeros(8, dtype=np.float32)  # ensemble-boxes fuses in float32
                conf = 0.0
                for m in members[best]:
                    box[4:] += m[1] * m[4:8]
                    conf += m[1]
                box[0] = members[best][0][0]
                scores_m = [m[1] for m in members[best]]
                box[1] = max(scores_m) if conf_type == "max" else conf / len(scores_m)
                box[2] = sum(m[2] for m in members[best])
                box[4:] /= conf
                fused[best] = box
            else:
                members.append([row])
                fused = np.vstack([fused, row[:8]])
        for i, mem in enumerate(members):
            mem_arr = np.array(mem)
            n = len(mem_arr)
            used = np.unique(mem_arr[:, 3]).astype(int)
            if conf_type == "box_and_model_avg":
                fused[i, 1] = fused[i, 1] * n / fused[i, 2] * w[used].sum() / w.sum()
            elif conf_type == "absent_model_aware_avg":
                absent = np.setdiff1d(np.arange(n_models), used)
                fused[i, 1] = fused[i, 1] * n / (fused[i, 2] + w[absent].sum())
            elif conf_type == "max":
                fused[i, 1] = fused[i, 1] / w.max()
            else:
                fused[i, 1] = fused[i, 1] * (n if allows_overflow else min(n_models, n)) / w.sum()
            clusters.append(mem_arr[:, [3, 8]].astype(np.int64))
        fused_rows.append(fused)
    out = np.concatenate(fused_rows)
    order = out[:, 1].argsort()[::-1]
    return out[order, 4:8], out[order, 1], out[order, 0], [clusters[i] for i in order]


# ----------------------------------------------------------------------------------------------------------------
# mask fusion (full frames)
# ----------------------------------------------------------------------------------------------------------------
def remove_overlaps_reference(
    masks: Sequence[np.ndarray],
    scores: np.ndarray,
    max_lost_frac: float = 0.5,
    min_area: int | np.ndarray = 1,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Full-frame version of ``ensemble.masks.remove_overlaps``: ``masks`` N bool ``(H, W)`` frames.

    Returns:
        ``(kept_masks, keep)``: the trimmed full-frame masks and their indices, in increasing index order.
    """
    scores = np.asarray(scores, dtype=np.float64)
    amin = np.broadcast_to(np.maximum(np.asarray(min_area, dtype=np.int64), 1), scores.shape)
    if len(masks) == 0:
        return [], np.zeros(0, dtype=np.int64)
    taken = np.zeros(masks[0].shape, dtype=bool)
    kept = {}
    for i in np.argsort(-scores, kind="stable"):
        area = int(masks[i].sum())
        remain = masks[i] & ~taken
        left = int(remain.sum())
        if area == 0 or left == 0 or left < amin[i] or (area - left) > max_lost_frac * area:
            continue
        taken |= remain
        kept[int(i)] = remain
    keep = np.array(sorted(kept), dtype=np.int64)
    return [kept[int(i)] for i in keep], keep


def _instances_from_frames(frames: Sequence[np.ndarray], height: int, width: int) -> InstanceMasks:
    """Tight-crop :class:`InstanceMasks` from full-frame bool masks ``(H, W)``, one frame at a time."""
    boxes, crops = [], []
    for m in frames:
        one = InstanceMasks.from_full(m[None])
        boxes.append(one.boxes[0])
        crops.append(one.crops[0])
    return InstanceMasks(height, width, np.array(boxes, dtype=np.int32).reshape(-1, 4), crops)


def _vote_frame(p: ImagePredictions, i: int) -> np.ndarray:
    """Full-frame float64 vote values of detection i: the binary mask, or its quantized probabilities."""
    probs = getattr(p, "mask_probs", None)
    if probs is None:
        return p.masks.mask(i).astype(np.float64)
    out = np.zeros((p.height, p.width), dtype=np.float64)
    x0, y0, x1, y1 = (int(v) for v in p.masks.boxes[i])
    out[y0:y1, x0:x1] = np.rint(np.asarray(probs[i], np.float32) * np.float32(255.0)) / 255.0
    return out


def fuse_image_reference(
    preds: Sequence[ImagePredictions],
    weights: Sequence[float],
    params: FusionParams | None = None,
    *,
    semantic_weights: Sequence[float | None] | None = None,
    box_models: Sequence[bool] | None = None,
    timings: dict[str, float] | None = None,
) -> ImagePredictions:
    """Straightforward full-frame implementation of ``ensemble.masks.fuse_image`` (slow).

    Uses the pure-Python :func:`weighted_boxes_fusion_reference`, builds every member's vote as a full
    ``(H, W)`` frame, votes on full frames and removes overlaps on full frames. Same arguments and result.
    """
    import time

    t0 = time.perf_counter()
    params = FusionParams() if params is None else params
    prep = _prepare(preds, weights, params, semantic_weights, box_models)
    boxes_px, fs, labels, members, ptr = _fuse_boxes(prep, params, weighted_boxes_fusion_reference)
    clusters = [members[a:b] for a, b in zip(ptr[:-1], ptr[1:])]
    t1 = time.perf_counter()
    if len(fs) == 0:
        return _empty_result(prep)
    h, w_img = prep.height, prep.width
    score_thr = params.score_thr_array()
    min_area = params.min_area_array()
    windows = _box_windows(boxes_px, h, w_img)
    keep_idx, masks, scores = [], [], []
    for k, members in enumerate(clusters):
        a_all = [prep.weights[m] * float(preds[m].scores[i]) for m, i in members]
        num = np.zeros((h, w_img), dtype=np.float64)
        den = 0.0
        for a, (m, i) in zip(a_all, members):
            if preds[m].masks is None:
                continue
            num += a * _vote_frame(preds[m], int(i))
            den += a
        if prep.sem_maps is not None:
            mean_a = 0.0
            for a in a_all:
                mean_a += a
            mean_a /= len(a_all)
            lams = [float(sw) * mean_a for sw in prep.sem_weights]
            sv = np.zeros((h, w_img), dtype=np.float64)
            for lam, sm in zip(lams, prep.sem_maps):
                sv = sv + lam * sm.astype(np.float64)
                den += lam
            x0, y0, x1, y1 = windows[k]
            num[y0:y1, x0:x1] += sv[y0:y1, x0:x1]
        if not den > 0:
            continue
        vote = num / den
        fg = vote >= params.vote_thr
        lab = int(labels[k])
        if fg.sum() < min_area[lab]:
            continue
        score = float(fs[k])
        if params.rerank:
            score = score * float(vote[fg].mean())
        if score < score_thr[lab]:
            continue
        keep_idx.append(k)
        masks.append(fg)
        scores.append(score)
    t2 = time.perf_counter()
    if not keep_idx:
        return _empty_result(prep)
    scores_arr = np.array(scores)
    idx_all = np.array(keep_idx, dtype=np.int64)
    kept, sel = remove_overlaps_reference(masks, scores_arr, params.max_lost_frac, min_area[labels[idx_all]])
    idx = idx_all[sel]
    inst = _instances_from_frames(kept, h, w_img)
    out = _finish(prep, boxes_px[idx], scores_arr[sel], labels[idx], inst)
    if timings is not None:
        timings["wbf"] = timings.get("wbf", 0.0) + t1 - t0
        timings["voting"] = timings.get("voting", 0.0) + t2 - t1
        timings["overlaps"] = timings.get("overlaps", 0.0) + time.perf_counter() - t2
    return out


# ----------------------------------------------------------------------------------------------------------------
# metric kernels (NumPy)
# ----------------------------------------------------------------------------------------------------------------
def candidate_pairs_reference(boxes_t: np.ndarray, boxes_p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) whose boxes overlap by at least one pixel.

    Args:
        boxes_t: int64[Nt, 4] xyxy (exclusive) boxes.
        boxes_p: int64[Np, 4] xyxy (exclusive) boxes.

    Returns:
        Two int64[K] arrays of truth and prediction indices.
    """
    if len(boxes_t) == 0 or len(boxes_p) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    # Dense broadcast in row chunks (~1M pair tests per chunk): a 800 x 800 image costs ~2 ms.
    chunk = max(1, 1_000_000 // max(1, len(boxes_p)))
    ii: list[np.ndarray] = []
    jj: list[np.ndarray] = []
    bp = boxes_p[None, :, :]
    for lo in range(0, len(boxes_t), chunk):
        bt = boxes_t[lo : lo + chunk, None, :]
        ok = (np.minimum(bt[..., 2], bp[..., 2]) > np.maximum(bt[..., 0], bp[..., 0])) & (
            np.minimum(bt[..., 3], bp[..., 3]) > np.maximum(bt[..., 1], bp[..., 1])
        )
        i, j = np.nonzero(ok)
        ii.append(i + lo)
        jj.append(j)
    return np.concatenate(ii).astype(np.int64), np.concatenate(jj).astype(np.int64)


def pair_intersections_reference(
    flat_t: np.ndarray,
    off_t: np.ndarray,
    boxes_t: np.ndarray,
    flat_p: np.ndarray,
    off_p: np.ndarray,
    boxes_p: np.ndarray,
    pi: np.ndarray,
    pj: np.ndarray,
) -> np.ndarray:
    """NumPy version of ``ensemble.metrics._pair_intersections`` (one pair at a time).

    Returns:
        int64[K] intersection pixel counts of the pairs ``(pi[k], pj[k])``.
    """
    out = np.zeros(pi.size, dtype=np.int64)
    for k in range(pi.size):
        i, j = int(pi[k]), int(pj[k])
        tx0, ty0, tx1, ty1 = (int(v) for v in boxes_t[i])
        px0, py0, px1, py1 = (int(v) for v in boxes_p[j])
        x0, y0, x1, y1 = max(tx0, px0), max(ty0, py0), min(tx1, px1), min(ty1, py1)
        if x1 <= x0 or y1 <= y0:
            continue
        ct = flat_t[off_t[i] : off_t[i] + (ty1 - ty0) * (tx1 - tx0)].reshape(ty1 - ty0, tx1 - tx0)
        cp = flat_p[off_p[j] : off_p[j] + (py1 - py0) * (px1 - px0)].reshape(py1 - py0, px1 - px0)
        wt = ct[y0 - ty0 : y1 - ty0, x0 - tx0 : x1 - tx0]
        wp = cp[y0 - py0 : y1 - py0, x0 - px0 : x1 - px0]
        out[k] = int(np.count_nonzero(wt & wp))
    return out
