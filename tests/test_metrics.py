"""Competition metric: parity with a straightforward pycocotools-IoU implementation, hand-computed cases, empties."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from ensemble_reference import candidate_pairs_reference, pair_intersections_reference
from pycocotools import mask as mask_utils

from celldata.instances import InstanceMasks
from ensemble.metrics import (
    THRESHOLD_KEYS,
    THRESHOLDS,
    coco_map,
    evaluate,
    image_precisions,
    image_score,
    iou_matrix,
    pack_masks,
    precisions_from_iou,
)

# ------------------------------------------------------------------------------------------------ reference


def _max_matching_reference(hits: np.ndarray) -> int:
    """Maximum bipartite matching by augmenting paths (Kuhn), independent of the module's implementation."""
    nt, np_ = hits.shape
    match_p = [-1] * np_

    def augment(i: int, seen: list[bool]) -> bool:
        for j in range(np_):
            if hits[i, j] and not seen[j]:
                seen[j] = True
                if match_p[j] < 0 or augment(match_p[j], seen):
                    match_p[j] = i
                    return True
        return False

    return sum(augment(i, [False] * np_) for i in range(nt))


def _reference_iou(truth_rles: list[dict], pred_rles: list[dict]) -> np.ndarray:
    """IoU [Nt, Np] from pycocotools (``maskUtils.iou(dt, gt, iscrowd)`` is indexed [dt, gt])."""
    if not truth_rles or not pred_rles:
        return np.zeros((len(truth_rles), len(pred_rles)))
    return (
        np.asarray(mask_utils.iou(pred_rles, truth_rles, [0] * len(truth_rles)))
        .reshape(len(pred_rles), len(truth_rles))
        .T
    )


def _reference_score(iou: np.ndarray) -> tuple[float, np.ndarray]:
    """Straightforward competition metric from an IoU matrix."""
    nt, np_ = iou.shape
    if nt == 0 and np_ == 0:
        return 1.0, np.ones(10)
    precs = []
    for t in np.arange(0.5, 1.0, 0.05):
        t = round(float(t), 2)
        tp = _max_matching_reference(iou > t) if nt and np_ else 0
        fp, fn = np_ - tp, nt - tp
        precs.append(tp / (tp + fp + fn))
    return float(np.mean(precs)), np.asarray(precs)


def _rles_full(masks: np.ndarray) -> list[dict]:
    return [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]


def _random_masks(rng: np.random.Generator, n: int, h: int = 48, w: int = 64) -> np.ndarray:
    """n random blobby masks (may overlap each other, may be empty)."""
    out = np.zeros((n, h, w), dtype=bool)
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(1, 10), rng.uniform(1, 12)
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        m &= rng.random((h, w)) > 0.1
        out[i] = m
    return out


def _jitter(rng: np.random.Generator, masks: np.ndarray) -> np.ndarray:
    """Predictions close to ``masks``: shifted by up to 2 px, some dropped, some spurious ones added."""
    h, w = masks.shape[1:]
    out = []
    for m in masks:
        if rng.random() < 0.2:
            continue
        dy, dx = rng.integers(-2, 3, size=2)
        out.append(np.roll(np.roll(m, dy, axis=0), dx, axis=1))
    out.extend(_random_masks(rng, int(rng.integers(0, 3)), h, w))
    return np.asarray(out, dtype=bool).reshape(-1, h, w)


# ------------------------------------------------------------------------------------------------ parity


def test_iou_matrix_matches_pycocotools_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        truth = _random_masks(rng, int(rng.integers(0, 9)))
        pred = _jitter(rng, truth)
        got = iou_matrix(InstanceMasks.from_full(truth), InstanceMasks.from_full(pred))
        ref = _reference_iou(_rles_full(truth), _rles_full(pred))
        assert got.shape == (len(truth), len(pred))
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_image_score_matches_reference_on_random_masks() -> None:
    rng = np.random.default_rng(1)
    n_nontrivial = 0
    for _ in range(60):
        truth = _random_masks(rng, int(rng.integers(0, 9)))
        pred = _jitter(rng, truth)
        ref_score, ref_precs = _reference_score(_reference_iou(_rles_full(truth), _rles_full(pred)))
        t, p = InstanceMasks.from_full(truth), InstanceMasks.from_full(pred)
        assert abs(image_score(t, p) - ref_score) < 1e-9
        np.testing.assert_allclose(image_precisions(t, p), ref_precs, rtol=0, atol=1e-9)
        n_nontrivial += 0.0 < ref_score < 1.0
    assert n_nontrivial > 20  # the random cases exercise partial matches


def test_numba_kernel_matches_numpy_fallback() -> None:
    rng = np.random.default_rng(2)
    truth = pack_masks(InstanceMasks.from_full(_random_masks(rng, 12)))
    pred = pack_masks(InstanceMasks.from_full(_random_masks(rng, 12)))
    from ensemble.metrics import _candidate_pairs, _pair_intersections

    pi, pj = _candidate_pairs(truth.boxes, pred.boxes)
    assert pi.size > 0
    args = (truth.flat, truth.offsets, truth.boxes, pred.flat, pred.offsets, pred.boxes, pi, pj)
    np.testing.assert_array_equal(_pair_intersections(*args), pair_intersections_reference(*args))


def test_candidate_pairs_cover_every_overlapping_pair() -> None:
    rng = np.random.default_rng(3)
    from ensemble.metrics import _candidate_pairs

    bt = rng.integers(0, 50, size=(30, 2))
    bt = np.concatenate([bt, bt + rng.integers(1, 15, size=(30, 2))], axis=1)
    bp = rng.integers(0, 50, size=(25, 2))
    bp = np.concatenate([bp, bp + rng.integers(1, 15, size=(25, 2))], axis=1)
    pi, pj = _candidate_pairs(bt.astype(np.int64), bp.astype(np.int64))
    pi2, pj2 = candidate_pairs_reference(bt.astype(np.int64), bp.astype(np.int64))
    np.testing.assert_array_equal(pi, pi2)
    np.testing.assert_array_equal(pj, pj2)
    got = set(zip(pi.tolist(), pj.tolist()))
    want = {
        (i, j)
        for i in range(len(bt))
        for j in range(len(bp))
        if min(bt[i, 2], bp[j, 2]) > max(bt[i, 0], bp[j, 0])
        and min(bt[i, 3], bp[j, 3]) > max(bt[i, 1], bp[j, 1])
    }
    assert got == want


# ------------------------------------------------------------------------------------------------ hand cases


def _row_masks(h: int, w: int, spans: list[tuple[int, int]]) -> InstanceMasks:
    """Masks that are horizontal spans [x0, x1) of row 0."""
    full = np.zeros((len(spans), h, w), dtype=bool)
    for i, (a, b) in enumerate(spans):
        full[i, 0, a:b] = True
    return InstanceMasks.from_full(full)


def test_hand_computed_two_truths_three_predictions() -> None:
    # truth A = 10 px, pred a = 8 px inside A -> IoU 0.8; truth B = 20 px, pred b = 13 px inside B -> IoU 0.65;
    # pred c is spurious. Hits are strict (IoU > t): 0.65 is not a hit at t=0.65, 0.8 not at t=0.80.
    truth = _row_masks(4, 100, [(0, 10), (20, 40)])
    pred = _row_masks(4, 100, [(0, 8), (20, 33), (60, 65)])
    iou = iou_matrix(truth, pred)
    np.testing.assert_array_equal(iou, [[0.8, 0.0, 0.0], [0.0, 0.65, 0.0]])
    # t = 0.50, 0.55, 0.60: TP 2, FP 1, FN 0 -> 2/3; t = 0.65, 0.70, 0.75: TP 1, FP 2, FN 1 -> 1/4; t >= 0.80: 0
    expected = np.array([2 / 3] * 3 + [1 / 4] * 3 + [0.0] * 4)
    np.testing.assert_allclose(image_precisions(truth, pred), expected, rtol=0, atol=1e-15)
    assert image_score(truth, pred) == pytest.approx(0.275, abs=1e-15)


def test_one_to_one_matching_with_overlapping_masks() -> None:
    # Overlapping truths: P0 hits both T0 and T1 above 0.9. Counting "truths with exactly one hit" would give
    # TP 0 at t=0.5; the one-to-one matching pairs T0-P1 and T1-P0 -> TP 2 up to t < 10/12.
    truth = _row_masks(2, 30, [(0, 10), (0, 12)])
    pred = _row_masks(2, 30, [(0, 11), (0, 10)])
    iou = iou_matrix(truth, pred)
    np.testing.assert_allclose(iou, [[10 / 11, 1.0], [11 / 12, 10 / 12]])
    precs = image_precisions(truth, pred)
    # t in 0.50..0.80: two matches; t = 0.85, 0.90: T0-P1 (1.0) and T1-P0 (0.9167) -> still 2; t = 0.95: only 1.0
    np.testing.assert_allclose(precs, [1.0] * 9 + [1 / 3])


def test_empty_cases() -> None:
    e = InstanceMasks.empty(5, 7)
    one = _row_masks(5, 7, [(0, 3)])
    assert image_score(e, e) == 1.0
    assert image_score(one, e) == 0.0
    assert image_score(e, one) == 0.0
    np.testing.assert_array_equal(precisions_from_iou(np.zeros((0, 0))), np.ones(10))
    assert iou_matrix(e, one).shape == (0, 1)


def test_identical_masks_score_one_and_size_mismatch_raises() -> None:
    rng = np.random.default_rng(4)
    m = InstanceMasks.from_full(_random_masks(rng, 6))
    assert image_score(m, m) == 1.0
    with pytest.raises(ValueError, match="size mismatch"):
        iou_matrix(m, InstanceMasks.empty(10, 10))


def test_evaluate_is_macro_average_with_breakdowns() -> None:
    truth = {
        "a": _row_masks(4, 100, [(0, 10), (20, 40)]),
        "b": _row_masks(4, 100, [(0, 10)]),
        "c": InstanceMasks.empty(4, 100),
    }
    pred = {
        "a": _row_masks(4, 100, [(0, 8), (20, 33), (60, 65)]),  # 0.275
        "b": _row_masks(4, 100, [(0, 10)]),  # 1.0
        # "c" missing -> no prediction on an empty image -> 1.0
    }
    rep = evaluate(truth, pred, cell_types={"a": "astro", "b": "shsy5y", "c": "astro"})
    assert rep.score == pytest.approx((0.275 + 1.0 + 1.0) / 3)
    assert rep.per_image == pytest.approx({"a": 0.275, "b": 1.0, "c": 1.0})
    assert list(rep.per_class) == ["shsy5y", "astro"]
    assert rep.per_class == pytest.approx({"shsy5y": 1.0, "astro": (0.275 + 1.0) / 2})
    assert list(rep.per_threshold) == list(THRESHOLD_KEYS) and THRESHOLD_KEYS[0] == "0.50"
    assert rep.per_threshold["0.50"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert rep.per_threshold["0.95"] == pytest.approx((0 + 1 + 1) / 3)
    # macro, not micro: the micro average of counts at t=0.5 would be 3 / (3 + 1 + 0) = 0.75
    d = rep.to_dict()
    json.dumps(d)
    assert d["n_images"] == 3 and d["n_true"] == 3 and d["n_pred"] == 4
    assert "per class" in rep.format_table()
    # missing prediction on an image with truth -> 0
    assert evaluate({"b": truth["b"]}, {}).score == 0.0
    with pytest.raises(ValueError, match="not in the ground truth: zzz"):
        evaluate(truth, {"zzz": truth["b"]})


def test_thresholds() -> None:
    assert THRESHOLDS.tolist() == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]


# ------------------------------------------------------------------------------------------------ real data


def _load_real(path: Path, max_images: int | None = None) -> tuple[dict, dict]:
    data = json.loads(path.read_text())
    by_image = defaultdict(list)
    for a in data["annotations"]:
        by_image[a["image_id"]].append(a)
    images = sorted(data["images"], key=lambda im: len(by_image[im["id"]]))
    if max_images is not None:  # a spread of sparse and dense images
        idx = np.linspace(0, len(images) - 1, max_images).round().astype(int)
        images = [images[i] for i in idx]
    segs = {im["id"]: [a["segmentation"] for a in by_image[im["id"]]] for im in images}
    return data, segs


def _shifted(m: InstanceMasks, rng: np.random.Generator) -> InstanceMasks:
    """Every instance shifted right by one pixel (those touching the right edge dropped), ~5% dropped and
    two spurious instances added."""
    keep = (m.boxes[:, 2] < m.width) & (rng.random(len(m)) > 0.05)
    sub = m.subset(np.flatnonzero(keep))
    boxes = sub.boxes.copy()
    boxes[:, [0, 2]] += 1
    crops = list(sub.crops)
    for k in range(2):
        boxes = np.concatenate([boxes, [[10 + 40 * k, 10, 30 + 40 * k, 25]]])
        crops.append(np.ones((15, 20), dtype=bool))
    return InstanceMasks(m.height, m.width, boxes, crops)


def test_real_ground_truth_shifted_matches_reference(real_coco_path: Path) -> None:
    _, segs = _load_real(real_coco_path, max_images=6)
    rng = np.random.default_rng(0)
    truth, pred, ref_scores = {}, {}, {}
    for image_id, rles in segs.items():
        t = InstanceMasks.from_coco_rles(rles)
        p = _shifted(t, rng)
        truth[image_id], pred[image_id] = t, p
        h, w = t.height, t.width
        truth_rles = [mask_utils.frPyObjects(r, h, w) for r in rles]
        ref_iou = _reference_iou(truth_rles, p.to_coco_rles())
        np.testing.assert_allclose(iou_matrix(t, p), ref_iou, rtol=0, atol=1e-12)
        ref_scores[image_id] = _reference_score(ref_iou)[0]
    rep = evaluate(truth, pred)
    for image_id, s in ref_scores.items():
        assert abs(rep.per_image[image_id] - s) < 1e-9
    assert rep.score == pytest.approx(np.mean(list(ref_scores.values())), abs=1e-12)
    assert 0.3 < rep.score < 0.95  # a one-pixel shift hurts the high thresholds only
    assert rep.per_threshold["0.50"] > 0.85 and rep.per_threshold["0.95"] < 0.2
    # truth vs itself: perfect, including the overlapping ground-truth instances
    assert evaluate(truth, truth).score == 1.0


# ------------------------------------------------------------------------------------------------ COCO mAP


def test_coco_map_perfect_and_degraded() -> None:
    rng = np.random.default_rng(5)
    truth = {f"im{i}": InstanceMasks.from_full(_random_masks(rng, 5)) for i in range(3)}
    truth = {k: v.subset(np.flatnonzero(v.areas() > 0)) for k, v in truth.items()}
    scores = {k: np.linspace(1, 0.5, len(v)) for k, v in truth.items()}
    perfect = coco_map(truth, truth, scores)
    assert perfect["segm_mAP"] == pytest.approx(1.0) and perfect["bbox_mAP"] == pytest.approx(1.0)
    # add high-scoring spurious detections -> precision drops
    spur = {}
    spur_scores = {}
    for k, v in truth.items():
        extra = _row_masks(v.height, v.width, [(0, 5), (30, 40)])
        spur[k] = InstanceMasks(
            v.height, v.width, np.concatenate([extra.boxes, v.boxes]), list(extra.crops) + list(v.crops)
        )
        spur_scores[k] = np.concatenate([[2.0, 2.0], scores[k]])
    worse = coco_map(truth, spur, spur_scores, iou_types=("segm",))
    assert set(worse) == {"segm_mAP", "segm_mAP_50", "segm_mAP_75"}
    assert worse["segm_mAP"] < 0.95
    with pytest.raises(ValueError, match="iou type"):
        coco_map(truth, truth, scores, iou_types=("keypoints",))


def test_foreground_counts_by_hand() -> None:
    """The one foreground IoU: counts, ratios (1.0 on empty denominators), valid mask, pooling by addition."""
    from ensemble.metrics import ForegroundCounts, foreground_counts

    pred = np.array([[1, 1, 0, 0]], bool)
    truth = np.array([[1, 0, 1, 0]], bool)
    c = foreground_counts(pred, truth)
    assert (c.tp, c.fp, c.fn, c.tn) == (1, 1, 1, 1) and c.union == 3
    assert c.iou == pytest.approx(1 / 3) and c.dice == pytest.approx(0.5) and c.accuracy == pytest.approx(0.5)
    v = foreground_counts(pred, truth, valid=np.array([[1, 1, 1, 0]], bool))
    assert (v.tp, v.fp, v.fn, v.tn) == (1, 1, 1, 0)
    empty = foreground_counts(np.zeros((2, 2)), np.zeros((2, 2)))
    assert empty.iou == empty.dice == empty.precision == empty.recall == 1.0
    pooled = sum([c, empty], ForegroundCounts())
    assert pooled.iou == pytest.approx(1 / 3) and pooled.tn == 5
    with pytest.raises(ValueError, match="shapes"):
        foreground_counts(np.zeros((2, 2)), np.zeros((2, 3)))
