"""Mask fusion: weighted pixel voting on hand-made cases, semantic voter, thresholds, overlap removal, and the
crop-based fast path against the full-frame reference on random cases."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from ensemble_reference import fuse_image_reference, remove_overlaps_reference

from celldata.instances import InstanceMasks
from ensemble.masks import FusionParams, fuse_image, remove_overlaps
from ensemble.predictions import ImagePredictions

H, W = 40, 48


def _pred(
    rects: list[tuple[int, int, int, int]], scores: list[float], labels=None, with_masks=True, semantic=None
):
    """Rectangle instances (x0, y0, x1, y1) of a small HxW image; the box is the rectangle."""
    n = len(rects)
    boxes = np.array(rects, dtype=np.float32).reshape(-1, 4)
    masks = None
    if with_masks:
        crops = [np.ones((y1 - y0, x1 - x0), dtype=bool) for x0, y0, x1, y1 in rects]
        masks = InstanceMasks(H, W, np.array(rects, dtype=np.int32).reshape(-1, 4), crops)
    labels = np.zeros(n, dtype=np.int64) if labels is None else np.asarray(labels)
    return ImagePredictions("img", H, W, boxes, np.array(scores, np.float32), labels, masks, semantic)


def _full(result: ImagePredictions) -> np.ndarray:
    return result.masks.to_full()


def _rect_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_weighted_vote_hand_made() -> None:
    """Votes a = w * s: A 0.9, B 0.6, C 2 * 0.3; total 2.1. Columns 10-11: A (0.43), 12-13: A+B (0.71),
    14-19: all (1.0), 20-21: B+C (0.57), 22-23: C (0.29)."""
    preds = [
        _pred([(10, 10, 20, 20)], [0.9]),
        _pred([(12, 10, 22, 20)], [0.6]),
        _pred([(14, 10, 24, 20)], [0.3]),
    ]
    weights = [1.0, 1.0, 2.0]
    for thr, (c0, c1) in ((0.5, (12, 22)), (0.4, (10, 22)), (0.25, (10, 24)), (0.75, (14, 20))):
        params = FusionParams(iou_thr=0.4, vote_thr=thr)
        out = fuse_image(preds, weights, params)
        assert len(out) == 1
        np.testing.assert_array_equal(_full(out)[0], _rect_mask(c0, 10, c1, 20), err_msg=f"vote_thr={thr}")
        ref = fuse_image_reference(preds, weights, params)
        np.testing.assert_array_equal(_full(ref)[0], _full(out)[0])
    # fused score: WBF 'avg' = mean(w * s) * min(M, n) / sum(w)
    assert out.scores[0] == pytest.approx((0.9 + 0.6 + 0.6) / 3 * 3 / 4, rel=1e-6)
    # rerank multiplies by the mean vote inside the mask
    out_r = fuse_image(preds, weights, FusionParams(iou_thr=0.4, vote_thr=0.5, rerank=True))
    votes = np.array([1.5, 1.5] + [2.1] * 6 + [1.2, 1.2]) / 2.1
    assert out_r.scores[0] == pytest.approx(out.scores[0] * votes.mean(), rel=1e-6)


def test_single_model_cluster_keeps_its_mask() -> None:
    """A detection of one model only: normalization by the cluster's own voters keeps the mask as it is."""
    preds = [_pred([(5, 5, 15, 15), (30, 20, 40, 30)], [0.8, 0.7]), _pred([(5, 5, 15, 15)], [0.9])]
    out = fuse_image(preds, [1.0, 1.0], FusionParams(vote_thr=0.9))
    assert len(out) == 2
    full = _full(out)
    np.testing.assert_array_equal(full[0], _rect_mask(5, 5, 15, 15))
    np.testing.assert_array_equal(full[1], _rect_mask(30, 20, 40, 30))
    # its score carries the absence of the other model ('avg': 0.7 * 1 / 2)
    assert out.scores[1] == pytest.approx(0.35, rel=1e-6)


def test_semantic_voter() -> None:
    sem = np.zeros((H, W), dtype=np.float32)
    sem[10:20, 14:26] = 1.0  # overlaps the mask (cols 10-19) on 14-19 and extends beyond the box to 25
    p_mask = _pred([(10, 10, 20, 20)], [0.8], semantic=None)
    p_sem = _pred([(10, 10, 22, 20)], [0.8], with_masks=False, semantic=sem)  # box-only + semantic model
    # semantic disabled: the box-only member does not vote, the mask survives as it is
    out = fuse_image([p_mask, p_sem], [1.0, 1.0], FusionParams(semantic_weight=0.0))
    np.testing.assert_array_equal(_full(out)[0], _rect_mask(10, 10, 20, 20))
    # semantic_weight 1: lambda = mean member weight 0.8, den = 0.8 + 0.8; mask-only or semantic-only pixels 0.5
    params = FusionParams(semantic_weight=1.0, vote_thr=0.5)
    out = fuse_image([p_mask, p_sem], [1.0, 1.0], params)
    fused_box = out.boxes[0]
    np.testing.assert_allclose(fused_box, [10, 10, 21, 20], atol=1e-4)  # WBF mean of the two boxes
    np.testing.assert_array_equal(_full(out)[0], _rect_mask(10, 10, 21, 20))  # semantic only inside the box
    out = fuse_image([p_mask, p_sem], [1.0, 1.0], FusionParams(semantic_weight=1.0, vote_thr=0.6))
    np.testing.assert_array_equal(_full(out)[0], _rect_mask(14, 10, 20, 20))
    for vt in (0.5, 0.6):
        ref = fuse_image_reference(
            [p_mask, p_sem], [1.0, 1.0], FusionParams(semantic_weight=1.0, vote_thr=vt)
        )
        out = fuse_image([p_mask, p_sem], [1.0, 1.0], FusionParams(semantic_weight=1.0, vote_thr=vt))
        np.testing.assert_array_equal(_full(ref), _full(out))
    # a box-only model alone: no voters, no instance; with a semantic map: the map inside the box
    assert len(fuse_image([_pred([(10, 10, 22, 20)], [0.8], with_masks=False)], [1.0])) == 0
    out = fuse_image([p_sem], [1.0], FusionParams(semantic_weight=2.0))
    np.testing.assert_array_equal(_full(out)[0], _rect_mask(14, 10, 22, 20))


def test_thresholds_and_min_area() -> None:
    p = _pred([(0, 0, 10, 10), (20, 0, 23, 3), (0, 20, 10, 30)], [0.9, 0.8, 0.3], labels=[0, 1, 2])
    out = fuse_image([p], [1.0], FusionParams(max_lost_frac=1.0, image_class="per_instance"))
    assert len(out) == 3
    out = fuse_image([p], [1.0], FusionParams(score_thr={"cort": 0.5}, image_class="per_instance"))
    assert sorted(out.labels.tolist()) == [0, 1]
    out = fuse_image([p], [1.0], FusionParams(min_area={"astro": 10}, image_class="per_instance"))
    assert sorted(out.labels.tolist()) == [0, 2]
    out = fuse_image([p], [1.0], FusionParams(min_area={"astro": 9}, image_class="per_instance"))
    assert sorted(out.labels.tolist()) == [0, 1, 2]
    with pytest.raises(ValueError, match="unknown class"):
        FusionParams(score_thr={"neuron": 0.5})
    with pytest.raises(ValueError, match="vote_thr"):
        FusionParams(vote_thr=0.0)
    with pytest.raises(ValueError, match="conf_type"):
        FusionParams(conf_type="mean")


def test_remove_overlaps_rules() -> None:
    # B (score 0.8) loses 40 of 100 pixels to A (0.9); C (0.7) loses 60 of 100 to A
    masks = InstanceMasks.from_full(
        np.stack([_rect_mask(0, 0, 10, 10), _rect_mask(6, 0, 16, 10), _rect_mask(0, 4, 10, 14)])
    )
    scores = np.array([0.9, 0.8, 0.7])
    kept, keep = remove_overlaps(masks, scores, max_lost_frac=0.5)
    assert keep.tolist() == [0, 1]
    np.testing.assert_array_equal(kept.mask(1), _rect_mask(10, 0, 16, 10))
    assert kept.areas().tolist() == [100, 60]
    kept, keep = remove_overlaps(masks, scores, max_lost_frac=0.6)
    assert keep.tolist() == [0, 1, 2]
    assert kept.areas().tolist() == [100, 60, 40]
    kept, keep = remove_overlaps(masks, scores, max_lost_frac=0.0)
    assert keep.tolist() == [0]
    # an order change: the low scorer is visited last regardless of its index
    kept, keep = remove_overlaps(masks, np.array([0.1, 0.8, 0.7]), max_lost_frac=0.5)
    assert keep.tolist() == [1, 2]
    with pytest.raises(ValueError, match="scores"):
        remove_overlaps(masks, np.ones(2))


def test_remove_overlaps_random_no_overlap_and_matches_reference() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        inst = _random_instances(rng, int(rng.integers(1, 60)), 60, 80)
        scores = np.round(rng.random(len(inst)), 1)  # ties
        frac = float(rng.uniform(0, 1))
        kept, keep = remove_overlaps(inst, scores, frac)
        cover = kept.to_full().sum(axis=0)
        assert cover.max(initial=0) <= 1
        ref_masks, ref_keep = remove_overlaps_reference(list(inst.to_full()), scores, frac)
        np.testing.assert_array_equal(keep, ref_keep)
        for a, b in zip(kept.to_full(), ref_masks):
            np.testing.assert_array_equal(a, b)
        # every kept instance kept at least (1 - frac) of its pixels
        areas = inst.areas()[keep]
        assert (kept.areas() >= (1 - frac) * areas - 1e-9).all()


def _random_instances(rng: np.random.Generator, n: int, h: int, w: int) -> InstanceMasks:
    boxes, crops = [], []
    for _ in range(n):
        ax, ay = int(rng.integers(2, 14)), int(rng.integers(2, 14))
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        frame = np.zeros((h, w), dtype=np.uint8)
        cv2.ellipse(frame, (cx, cy), (ax, ay), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        one = InstanceMasks.from_full(frame[None].astype(bool))
        boxes.append(one.boxes[0])
        crops.append(one.crops[0])
    return InstanceMasks(h, w, np.array(boxes, dtype=np.int32).reshape(-1, 4), crops)


def _random_models(rng: np.random.Generator, h: int, w: int) -> list[ImagePredictions]:
    """Jittered copies of one random object set per model (some models box-only, some with semantic maps)."""
    n_obj = int(rng.integers(0, 40))
    objs = []
    for _ in range(n_obj):
        objs.append(
            (
                int(rng.integers(0, w)),
                int(rng.integers(0, h)),
                int(rng.integers(3, 12)),
                int(rng.integers(3, 12)),
                float(rng.uniform(0, 180)),
                int(rng.integers(0, 3)),
            )
        )
    preds = []
    n_models = int(rng.integers(1, 4))
    for m in range(n_models):
        boxes, crops, scores, labels = [], [], [], []
        for cx, cy, ax, ay, ang, lab in objs:
            if rng.random() < 0.2:
                continue
            frame = np.zeros((h, w), dtype=np.uint8)
            jx, jy = rng.integers(-2, 3, 2)
            cv2.ellipse(
                frame,
                (cx + int(jx), cy + int(jy)),
                (ax + int(rng.integers(-1, 2)), ay + int(rng.integers(-1, 2))),
                ang,
                0,
                360,
                1,
                -1,
            )
            one = InstanceMasks.from_full(frame[None].astype(bool))
            if one.crops[0].size == 0:
                continue
            boxes.append(one.boxes[0])
            crops.append(one.crops[0])
            scores.append(float(np.round(rng.uniform(0.05, 1.0), 2)))
            labels.append(lab)
        bx = np.array(boxes, dtype=np.float32).reshape(-1, 4)
        masks = InstanceMasks(h, w, np.array(boxes, dtype=np.int32).reshape(-1, 4), crops)
        box_only = m > 0 and rng.random() < 0.25
        sem = None
        if rng.random() < 0.4:
            sem = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 2.0)
            sem = np.clip((sem - sem.min()) / (np.ptp(sem) + 1e-6), 0, 1)
        preds.append(
            ImagePredictions(
                "rand",
                h,
                w,
                bx,
                np.array(scores, np.float32),
                np.array(labels, np.int64).reshape(-1),
                None if box_only else masks,
                sem,
            )
        )
    return preds


def test_fast_path_equals_full_frame_reference() -> None:
    rng = np.random.default_rng(123)
    h, w = 70, 90
    conf_types = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")
    n_nonempty = 0
    for case in range(60):
        preds = _random_models(rng, h, w)
        weights = rng.uniform(0.5, 2.0, len(preds)).tolist()
        params = FusionParams(
            iou_thr=float(rng.uniform(0.3, 0.7)),
            skip_box_thr=float(rng.choice([0.0, 0.2])),
            conf_type=conf_types[case % 4],
            vote_thr=float(rng.choice([0.3, 0.5, 0.51, 0.7, 1.0])),
            semantic_weight=float(rng.choice([0.0, 0.5, 1.0, 3.0])),
            rerank=bool(rng.random() < 0.5),
            score_thr={"astro": float(rng.uniform(0, 0.5))} if rng.random() < 0.5 else {},
            min_area={"shsy5y": int(rng.integers(1, 60))} if rng.random() < 0.5 else {},
            max_lost_frac=float(rng.choice([0.0, 0.3, 0.5, 1.0])),
            image_class=("majority", "per_instance")[case % 2],
        )
        out = fuse_image(preds, weights, params)
        ref = fuse_image_reference(preds, weights, params)
        assert len(out) == len(ref), case
        np.testing.assert_array_equal(out.boxes, ref.boxes)
        np.testing.assert_allclose(out.scores, ref.scores, rtol=1e-6)  # float32 outputs of float64 sums
        np.testing.assert_array_equal(out.labels, ref.labels)
        np.testing.assert_array_equal(out.masks.boxes, ref.masks.boxes)
        for a, b in zip(out.masks.crops, ref.masks.crops):
            np.testing.assert_array_equal(a, b)
        full = out.masks.to_full()
        assert full.sum(axis=0).max(initial=0) <= 1, "fused masks overlap"
        assert (np.diff(out.scores) <= 0).all()
        n_nonempty += len(out) > 0
    assert n_nonempty > 30


def test_bad_input() -> None:
    p = _pred([(0, 0, 10, 10)], [0.9])
    with pytest.raises(ValueError, match="weights"):
        fuse_image([p, p], [1.0])
    with pytest.raises(ValueError, match="positive"):
        fuse_image([p], [0.0])
    with pytest.raises(ValueError, match="at least one model"):
        fuse_image([], [])
    q = ImagePredictions("other", H, W, p.boxes, p.scores, p.labels, p.masks)
    with pytest.raises(ValueError, match="model 1 predicts image other"):
        fuse_image([p, q], [1.0, 1.0])
    empty = ImagePredictions("img", H, W, np.zeros((0, 4)), [], [], InstanceMasks.empty(H, W))
    out = fuse_image([empty, empty], [1.0, 1.0])
    assert len(out) == 0 and out.image_id == "img" and len(out.masks) == 0


def test_fused_result_round_trips_through_prediction_file(tmp_path) -> None:
    from ensemble.predictions import load_predictions, save_predictions

    rng = np.random.default_rng(5)
    preds = _random_models(rng, 70, 90)
    out = fuse_image(preds, [1.0] * len(preds), FusionParams(iou_thr=0.4))
    assert len(out) > 0
    save_predictions(tmp_path / "fused.npz", [out], {"fused": True})
    back, meta = load_predictions(tmp_path / "fused.npz")
    assert meta == {"fused": True}
    q = back[out.image_id]
    np.testing.assert_array_equal(q.scores, out.scores)
    np.testing.assert_array_equal(q.masks.to_full(), out.masks.to_full())


def test_zero_score_detections_never_fuse_to_nan() -> None:
    """Zero-score boxes (e.g. from a barely trained detector) are left out even with skip_box_thr=0."""
    from ensemble.masks import FusionParams, fuse_image
    from ensemble.predictions import ImagePredictions

    h, w = 40, 50
    boxes = np.array([[5.0, 5.0, 15.0, 15.0], [30.0, 20.0, 40.0, 30.0]], np.float32)
    masks = InstanceMasks.from_full(
        np.stack(
            [
                np.pad(np.ones((10, 10), bool), ((5, 25), (5, 35))),
                np.pad(np.ones((10, 10), bool), ((20, 10), (30, 10))),
            ]
        )
    )
    preds = [
        ImagePredictions("x", h, w, boxes, np.array([0.0, 0.8], np.float32), np.array([0, 0]), masks)
        for _ in range(2)
    ]
    fused = fuse_image(preds, [1.0, 1.0], FusionParams(skip_box_thr=0.0, max_lost_frac=1.0))
    assert np.isfinite(fused.boxes).all()
    assert len(fused.boxes) == 1 and np.allclose(fused.boxes[0], [30, 20, 40, 30])


# ---------------------------------------------------------------------------------------- ensemble v2 rules


def test_semantic_only_model_leaves_fused_box_scores_unchanged() -> None:
    """WBF sees only box models: two agreeing box models at 0.9 fuse to 0.9 with or without a semantic model."""
    sem = np.zeros((H, W), dtype=np.float32)
    sem[10:20, 10:20] = 1.0
    a = _pred([(10, 10, 20, 20), (30, 5, 40, 15)], [0.9, 0.6])
    b = _pred([(10, 10, 20, 20), (30, 5, 40, 15)], [0.9, 0.6])
    semantic_only = _pred([], [], with_masks=False, semantic=sem)
    base = fuse_image([a, b], [1.0, 1.0], FusionParams(max_lost_frac=1.0))
    for sw in (0.0, 0.5, 2.0):
        params = FusionParams(max_lost_frac=1.0, semantic_weight=sw)
        out = fuse_image([a, b, semantic_only], [1.0, 1.0, 5.0], params)
        np.testing.assert_array_equal(out.scores, base.scores)
        np.testing.assert_array_equal(out.boxes, base.boxes)
    assert base.scores[0] == pytest.approx(0.9, rel=1e-6)
    # the map still votes in the masks with its own semantic weight (here: it removes nothing, adds nothing
    # outside the box, and at weight 2 a pixel both masks and the map agree on stays)
    out = fuse_image([a, b, semantic_only], [1.0, 1.0, 1.0], FusionParams(semantic_weight=2.0, vote_thr=0.6))
    np.testing.assert_array_equal(_full(out)[0], _rect_mask(10, 10, 20, 20))
    # per-model semantic weight overrides the ensemble's: 0 for this model switches its map off
    sem2 = np.ones((H, W), dtype=np.float32)
    bg = _pred([], [], with_masks=False, semantic=sem2)
    out = fuse_image([a, bg], [1.0, 1.0], FusionParams(semantic_weight=3.0), semantic_weights=[None, 0.0])
    np.testing.assert_array_equal(_full(out)[0], _rect_mask(10, 10, 20, 20))
    out = fuse_image([a, bg], [1.0, 1.0], FusionParams(semantic_weight=0.0), semantic_weights=[None, 3.0])
    assert _full(out)[0].sum() == 100  # the map fills only the fused box, which is the mask


def test_majority_fuses_disagreeing_labels_into_one_instance() -> None:
    """The same cell labelled shsy5y by one model and astro by the other: one cluster, the full score."""
    a = _pred([(10, 10, 20, 20)], [0.9], labels=[0])
    b = _pred([(10, 10, 20, 20)], [0.9], labels=[1])
    c = _pred([(30, 10, 40, 20)], [0.5], labels=[1])  # tips the image to astro
    out = fuse_image([a, b], [1.0, 1.0], FusionParams())
    assert len(out) == 1 and out.scores[0] == pytest.approx(0.9, rel=1e-6)
    assert out.labels.tolist() == [0]  # tie 0.9 vs 0.9: the lower label
    out = fuse_image([a, b, c], [1.0, 1.0, 1.0], FusionParams())
    assert out.labels.tolist() == [1, 1]
    assert out.scores[0] == pytest.approx(0.9 * 2 / 3, rel=1e-6)
    # per_instance: two clusters with halved scores, overlap removal keeps one
    out = fuse_image([a, b], [1.0, 1.0], FusionParams(image_class="per_instance"))
    assert len(out) == 1 and out.scores[0] == pytest.approx(0.45, rel=1e-6)
    # model weights count in the majority; per-class thresholds apply to the image's class
    out = fuse_image([a, b], [1.0, 3.0], FusionParams(score_thr={"astro": 0.95}))
    assert len(out) == 0
    with pytest.raises(ValueError, match="image_class"):
        FusionParams(image_class="vote")


def test_image_class_and_relabel() -> None:
    from ensemble.boxes import image_class, relabel

    scores, labels = [np.array([0.9, 0.2]), np.array([0.5, 0.5])], [np.array([0, 2]), np.array([2, 2])]
    label = image_class(scores, labels)
    labs = relabel(labels, label)
    assert label == 2 and [x.tolist() for x in labs] == [[2, 2], [2, 2]]
    assert image_class([np.array([0.9, 0.2])], [np.array([0, 2])], weights=[1.0]) == 0
    assert image_class([np.zeros(2)], [np.array([0, 1])]) is None  # no positive score: no class
    label = image_class([np.zeros(0)], [np.zeros(0, np.int64)])
    labs = relabel([np.zeros(0, np.int64)], label)
    assert label is None and labs[0].shape == (0,)


def test_no_pixel_unowned_after_overlap_removal_and_min_area() -> None:
    """A (0.9) keeps its 100 px; B (0.8) keeps only 60 px after A, under min_area 90, so it is dropped *inside*
    overlap removal and never takes the 20 px it shares with C (0.7): C keeps all of its pixels. (Dropping B only
    after overlap removal, as before, left those 20 px owned by nobody.)"""
    a = _rect_mask(0, 0, 10, 10)
    b = _rect_mask(0, 4, 10, 16)  # 120 px, 60 of them in A
    c = _rect_mask(0, 14, 10, 26)  # 120 px, shares rows 14-15 with B
    frames = np.stack([a, b, c])
    p = ImagePredictions(
        "img",
        H,
        W,
        np.array([[0, 0, 10, 10], [0, 4, 10, 16], [0, 14, 10, 26]], np.float32),
        np.array([0.9, 0.8, 0.7], np.float32),
        np.zeros(3, np.int64),
        InstanceMasks.from_full(frames),
    )
    params = FusionParams(iou_thr=0.9, max_lost_frac=1.0, min_area={"shsy5y": 90})
    out = fuse_image([p], [1.0], params)
    full = _full(out)
    assert len(out) == 2 and full.sum(axis=0).max() <= 1
    np.testing.assert_array_equal(full[0], a)
    np.testing.assert_array_equal(full[1], c)
    # no pixel is unowned that a kept-or-lower instance claimed
    assert not ((a | c) & ~full.any(axis=0)).any()
    kept, keep = remove_overlaps(InstanceMasks.from_full(frames), np.array([0.9, 0.8, 0.7]), 1.0, 90)
    assert keep.tolist() == [0, 2] and kept.areas().tolist() == [100, 120]
    ref = fuse_image_reference([p], [1.0], params)
    np.testing.assert_array_equal(_full(ref), full)


def test_soft_masks_vote_with_probabilities() -> None:
    """vote = sum a_i p_i / sum a_i with binary masks as p in {0, 1}; rerank uses the soft vote."""
    probs = np.zeros((10, 10), np.float32)
    probs[:, :5] = 0.8
    probs[:, 5:] = 0.4
    soft = _pred([(10, 10, 20, 20)], [1.0])
    if not hasattr(soft, "mask_probs"):
        pytest.skip("ImagePredictions.mask_probs (soft masks) not available yet")
    soft = ImagePredictions("img", H, W, soft.boxes, soft.scores, soft.labels, soft.masks, None, [probs])
    hard = _pred([(10, 10, 20, 20)], [1.0])
    out = fuse_image([soft], [1.0], FusionParams(vote_thr=0.5, rerank=True))
    np.testing.assert_array_equal(_full(out)[0], _rect_mask(10, 10, 15, 20))
    q = np.round(0.8 * 255) / 255  # probabilities are quantized to round(255 p) as in prediction files
    assert out.scores[0] == pytest.approx(1.0 * q, rel=1e-6)  # WBF score 1 x mean vote inside the mask
    out = fuse_image([soft, hard], [1.0, 1.0], FusionParams(vote_thr=0.65))
    # left half (0.8 + 1) / 2 = 0.9, right half (0.4 + 1) / 2 = 0.7: all foreground at 0.65, left only at 0.8
    np.testing.assert_array_equal(_full(out)[0], _rect_mask(10, 10, 20, 20))
    out = fuse_image([soft, hard], [1.0, 1.0], FusionParams(vote_thr=0.8))
    np.testing.assert_array_equal(_full(out)[0], _rect_mask(10, 10, 15, 20))
    ref = fuse_image_reference([soft, hard], [1.0, 1.0], FusionParams(vote_thr=0.8, rerank=True))
    out = fuse_image([soft, hard], [1.0, 1.0], FusionParams(vote_thr=0.8, rerank=True))
    np.testing.assert_array_equal(_full(ref), _full(out))
    np.testing.assert_allclose(out.scores, ref.scores, rtol=1e-6)


def test_vote_cut_decides_every_pixel_as_the_division() -> None:
    """The vote kernel compares ``num >= cut`` instead of ``num / den >= vote_thr``: for random denominators and
    thresholds (also ties such as 2 of 4 equal voters), the numerators around the cut get the same answer."""
    from ensemble.masks import _vote_cut

    rng = np.random.default_rng(0)
    cases = [(4 * 0.7, 0.5), (3 * 0.1, 1 / 3), (1.0, 1.0), (2.6, 0.51)]
    cases += [
        (float(rng.uniform(1e-4, 50)), float(rng.choice([0.5, 0.3, 0.7, 1.0, rng.uniform(0.01, 1)])))
        for _ in range(3000)
    ]
    for den, thr in cases:
        cut = _vote_cut(den, thr)
        near = [cut, np.nextafter(cut, -np.inf), np.nextafter(cut, np.inf), thr * den, 0.5 * den, den]
        for x in near:
            assert (x / den >= thr) == (x >= cut), (den, thr, x)
    a = 0.7  # two of four equal voters: the vote is exactly 0.5 and passes vote_thr 0.5
    assert 2 * a >= _vote_cut(4 * a, 0.5)
