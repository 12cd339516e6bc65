"""Weighted Boxes Fusion: parity with ensemble-boxes 1.0.9, cluster membership, validation, box helpers."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pytest
from ensemble_reference import weighted_boxes_fusion_reference

from ensemble.boxes import (
    CONF_TYPES,
    box_iou,
    denormalize_boxes,
    normalize_boxes,
    weighted_boxes_fusion,
    xywh_to_xyxy,
    xyxy_to_xywh,
)

ensemble_boxes = pytest.importorskip("ensemble_boxes")


def _random_case(rng: np.random.Generator, max_n: int) -> tuple[list, list, list, list | None]:
    """Several models detecting jittered copies of one set of objects (+ a few spurious boxes)."""
    n_models = int(rng.integers(1, 6))
    n_obj = int(rng.integers(0, max_n + 1))
    centers = rng.random((n_obj, 2))
    sizes = rng.uniform(0.005, 0.08, (n_obj, 2))
    n_labels = int(rng.integers(1, 5))
    obj_labels = rng.integers(0, n_labels, n_obj)
    boxes_list, scores_list, labels_list = [], [], []
    for _ in range(n_models):
        keep = rng.random(n_obj) < rng.uniform(0.6, 1.0)
        c = centers[keep] + rng.normal(0, 0.004, (int(keep.sum()), 2))
        s = sizes[keep] * rng.uniform(0.85, 1.15, (int(keep.sum()), 2))
        boxes = np.concatenate([c - s / 2, c + s / 2], axis=1)  # some fall outside [0, 1]: clipped
        labels = obj_labels[keep].copy()
        flip = rng.random(len(labels)) < 0.05
        labels[flip] = rng.integers(0, n_labels, int(flip.sum()))
        scores = rng.random(len(boxes))
        if rng.random() < 0.3:  # many exact ties in scores
            scores = np.round(scores, 1)
        order = rng.permutation(len(boxes))
        boxes_list.append(boxes[order])
        scores_list.append(scores[order])
        labels_list.append(labels[order])
    weights = None if rng.random() < 0.3 else rng.uniform(0.3, 3.0, n_models).tolist()
    return boxes_list, scores_list, labels_list, weights


def _check_same(ref: tuple, ours: tuple) -> None:
    for name, a, b in zip(("boxes", "scores", "labels"), ref, ours[:3]):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(ours[2], ref[2])


def _check_clusters(boxes_list, scores_list, labels_list, weights, skip, conf_type, overflow, out) -> None:
    boxes, scores, labels, clusters = out
    assert len(clusters) == len(boxes)
    n_models = len(boxes_list)
    w = np.ones(n_models) if weights is None else np.asarray(weights, dtype=float)
    seen = []
    for k, members in enumerate(clusters):
        assert members.ndim == 2 and members.shape[1] == 2 and len(members) >= 1
        mb = np.array([np.clip(boxes_list[m][i], 0, 1) for m, i in members])
        ms = np.array([scores_list[m][i] * w[m] for m, i in members])
        ml = np.array([int(labels_list[m][i]) for m, i in members])
        assert (ml == labels[k]).all(), "cluster mixes labels"
        assert (np.diff(ms) <= 0).all(), "members not in descending weighted score order"
        if len(members) == 1:
            np.testing.assert_array_equal(boxes[k], mb[0])
        elif conf_type == "avg" and ms.sum() > 0:
            np.testing.assert_allclose(boxes[k], (ms[:, None] * mb).sum(0) / ms.sum(), atol=1e-6)
            n_eff = len(ms) if overflow else min(n_models, len(ms))
            expected = ms.sum() / len(ms) * n_eff / w.sum()
            np.testing.assert_allclose(scores[k], expected, rtol=1e-6)
        seen.extend(map(tuple, members.tolist()))
    expected = {
        (m, i)
        for m in range(n_models)
        for i in range(len(boxes_list[m]))
        if scores_list[m][i] >= skip
        and np.prod(np.diff(np.clip(np.asarray(boxes_list[m][i]), 0, 1).reshape(2, 2), axis=0)) > 0
    }
    assert len(seen) == len(set(seen)), "an input box is in two clusters"
    assert set(seen) == expected, "clusters do not cover exactly the boxes above skip_box_thr"


@pytest.mark.parametrize(
    "n_cases", [pytest.param(80, id="80-cases"), pytest.param(320, id="320-cases", marks=pytest.mark.slow)]
)
def test_parity_random_cases(n_cases: int) -> None:
    """Exact parity with ensemble-boxes on random cases (80 in ``make test``, 320 in ``make test-slow``)."""
    rng = np.random.default_rng(2024)
    for case in range(n_cases):
        max_n = 700 if case % 40 == 0 else 120
        boxes_list, scores_list, labels_list, weights = _random_case(rng, max_n)
        kw = dict(
            weights=weights,
            iou_thr=float(rng.uniform(0.3, 0.8)),
            skip_box_thr=float(rng.choice([0.0, 0.0, rng.uniform(0, 0.4)])),
            conf_type=CONF_TYPES[case % 4],
            allows_overflow=bool((case // 4) % 2),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = ensemble_boxes.weighted_boxes_fusion(boxes_list, scores_list, labels_list, **kw)
            ours = weighted_boxes_fusion(boxes_list, scores_list, labels_list, **kw)
        _check_same(ref, ours)
        _check_clusters(
            boxes_list,
            scores_list,
            labels_list,
            weights,
            kw["skip_box_thr"],
            kw["conf_type"],
            kw["allows_overflow"],
            ours,
        )


def test_parity_float32_inputs_and_exact_ties() -> None:
    rng = np.random.default_rng(7)
    for case in range(40):
        boxes_list, scores_list, labels_list, weights = _random_case(rng, 200)
        boxes_list = [b.astype(np.float32) for b in boxes_list]
        scores_list = [s.astype(np.float32) for s in scores_list]
        kw = dict(weights=weights, skip_box_thr=0.3, conf_type=CONF_TYPES[case % 4])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = ensemble_boxes.weighted_boxes_fusion(boxes_list, scores_list, labels_list, **kw)
            ours = weighted_boxes_fusion(boxes_list, scores_list, labels_list, **kw)
        _check_same(ref, ours)
    # identical boxes from every model: one cluster per object, every model in it
    b = np.array([[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.7, 0.6]])
    out = weighted_boxes_fusion([b, b, b], [np.array([0.9, 0.8])] * 3, [np.zeros(2)] * 3)
    assert len(out[0]) == 2
    np.testing.assert_allclose(out[0], b, atol=1e-7)
    assert sorted(map(tuple, out[3][0].tolist())) == [(0, 0), (1, 0), (2, 0)]


def test_pure_python_reference_agrees() -> None:
    """The slow reference (used by the mask-fusion reference and the benchmark) gives the same boxes and
    clusters as the numba implementation and ensemble-boxes."""
    rng = np.random.default_rng(11)
    for case in range(24):
        boxes_list, scores_list, labels_list, weights = _random_case(rng, 60)
        kw = dict(weights=weights, iou_thr=0.5, skip_box_thr=0.1, conf_type=CONF_TYPES[case % 4])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = ensemble_boxes.weighted_boxes_fusion(boxes_list, scores_list, labels_list, **kw)
            slow = weighted_boxes_fusion_reference(boxes_list, scores_list, labels_list, **kw)
            fast = weighted_boxes_fusion(boxes_list, scores_list, labels_list, **kw)
        _check_same(ref, slow)
        for a, b in zip(slow[:3], fast[:3]):
            np.testing.assert_array_equal(a, b)
        assert len(slow[3]) == len(fast[3])
        for a, b in zip(slow[3], fast[3]):
            np.testing.assert_array_equal(a, b)


def test_hand_made_fusion() -> None:
    """Two overlapping boxes fuse to their score-weighted mean; a far box stays alone."""
    boxes = [np.array([[0.1, 0.1, 0.3, 0.3], [0.6, 0.6, 0.8, 0.8]]), np.array([[0.12, 0.1, 0.32, 0.3]])]
    scores = [np.array([0.9, 0.5]), np.array([0.3])]
    labels = [np.array([1, 1]), np.array([1])]
    fb, fs, fl, cl = weighted_boxes_fusion(boxes, scores, labels, iou_thr=0.5)
    np.testing.assert_allclose(
        fb[0], [(0.9 * 0.1 + 0.3 * 0.12) / 1.2, 0.1, (0.9 * 0.3 + 0.3 * 0.32) / 1.2, 0.3]
    )
    np.testing.assert_allclose(fs, [(0.9 + 0.3) / 2 * 2 / 2, 0.5 * 1 / 2])
    np.testing.assert_array_equal(fl, [1, 1])
    np.testing.assert_array_equal(cl[0], [[0, 0], [1, 0]])
    np.testing.assert_array_equal(cl[1], [[0, 1]])


def test_empty_and_all_skipped() -> None:
    out = weighted_boxes_fusion([np.zeros((0, 4))], [np.zeros(0)], [np.zeros(0)])
    assert out[0].shape == (0, 4) and out[1].shape == (0,) and out[2].shape == (0,) and out[3] == []
    out = weighted_boxes_fusion([[[0.1, 0.1, 0.2, 0.2]]], [[0.1]], [[0]], skip_box_thr=0.5)
    assert out[0].shape == (0, 4) and out[3] == []


def test_clipping_warns_and_zero_area_skipped() -> None:
    with pytest.warns(UserWarning, match="clipped"):
        fb, *_ = weighted_boxes_fusion([[[-0.1, 0.2, 0.5, 1.3]]], [[0.9]], [[0]])
    np.testing.assert_allclose(fb, [[0.0, 0.2, 0.5, 1.0]])
    with pytest.warns(UserWarning, match="zero-area"):
        fb, _, _, cl = weighted_boxes_fusion(
            [[[0.2, 0.2, 0.2, 0.5], [0.1, 0.1, 0.3, 0.3]]], [[0.9, 0.5]], [[0, 0]]
        )
    assert len(fb) == 1 and cl[0].tolist() == [[0, 1]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            dict(boxes_list=[np.zeros((2, 4))], scores_list=[np.zeros(3)], labels_list=[np.zeros(2)]),
            "2 boxes but 3",
        ),
        (dict(boxes_list=[np.zeros((2, 4))], scores_list=[np.zeros(2)], labels_list=[np.zeros(1)]), "labels"),
        (dict(boxes_list=[np.zeros((1, 4))], scores_list=[], labels_list=[[0]]), "one entry per model"),
        (dict(boxes_list=[np.zeros((1, 3))], scores_list=[[0.5]], labels_list=[[0]]), r"shape \(N, 4\)"),
        (
            dict(boxes_list=[[[0.1, 0.1, np.nan, 0.2]]], scores_list=[[0.5]], labels_list=[[0]]),
            "model 0, box 0",
        ),
        (dict(boxes_list=[[[0.1, 0.1, 0.2, 0.2]]], scores_list=[[np.nan]], labels_list=[[0]]), "score"),
        (
            dict(
                boxes_list=[[[0.1, 0.1, 0.2, 0.2]], [[0.1, 0.1, 0.2, 0.2], [0.5, 0.1, 0.4, 0.2]]],
                scores_list=[[0.5], [0.5, 0.5]],
                labels_list=[[0], [0, 0]],
            ),
            "model 1, box 1: x2 < x1",
        ),
        (
            dict(boxes_list=[[[0.1, 0.1, 0.2, 0.2]]], scores_list=[[0.5]], labels_list=[[0]], weights=[1, 2]),
            "weights",
        ),
        (
            dict(boxes_list=[[[0.1, 0.1, 0.2, 0.2]]], scores_list=[[0.5]], labels_list=[[0]], weights=[0]),
            "positive",
        ),
        (
            dict(
                boxes_list=[[[0.1, 0.1, 0.2, 0.2]]], scores_list=[[0.5]], labels_list=[[0]], conf_type="mean"
            ),
            "conf_type",
        ),
    ],
)
@pytest.mark.parametrize("wbf", [weighted_boxes_fusion, weighted_boxes_fusion_reference])
def test_bad_input_raises(kwargs: dict, match: str, wbf: Callable[..., tuple]) -> None:
    with pytest.raises(ValueError, match=match):
        wbf(**kwargs)


def test_box_helpers_round_trip() -> None:
    rng = np.random.default_rng(0)
    xyxy = np.sort(rng.uniform(0, 500, (20, 4)).reshape(20, 2, 2), axis=1).transpose(0, 2, 1).reshape(20, 4)
    xywh = xyxy_to_xywh(xyxy)
    np.testing.assert_allclose(xywh[:, 2:], xyxy[:, 2:] - xyxy[:, :2])
    np.testing.assert_allclose(xywh_to_xyxy(xywh), xyxy)
    norm = normalize_boxes(xyxy, 520, 704)
    np.testing.assert_allclose(norm[:, 0], xyxy[:, 0] / 704)
    np.testing.assert_allclose(norm[:, 1], xyxy[:, 1] / 520)
    np.testing.assert_allclose(denormalize_boxes(norm, 520, 704), xyxy)
    assert xyxy_to_xywh(xyxy.astype(np.float32)).dtype == np.float32
    assert normalize_boxes(np.zeros((0, 4)), 520, 704).shape == (0, 4)
    with pytest.raises(ValueError, match="shape"):
        xyxy_to_xywh(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="positive"):
        normalize_boxes(xyxy, 0, 704)


def test_box_iou() -> None:
    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15]], dtype=float)
    b = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 5, 10]], dtype=float)
    iou = box_iou(a, b)
    np.testing.assert_allclose(iou, [[1.0, 0.0, 0.5], [25 / 175, 0.0, 0.0]])
